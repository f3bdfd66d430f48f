"""The streaming MIME scanner, ENVELOPE and BODY/BODYSTRUCTURE rendering."""

import email
import email.policy

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.imap import bodystructure, envelope, mime

# RFC 3501 section 8 sample message (headers), as a single text part.
RFC3501 = (
    b"Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
    b"From: Terry Gray <gray@cac.washington.edu>\r\n"
    b"Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
    b"To: imap@cac.washington.edu\r\n"
    b"cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\r\n"
    b"Message-Id: <B27397-0100000@cac.washington.edu>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
    b"\r\n" + b"x" * 3026 + (b"\r\n" + b"y" * 40) * 91 + b"\r\n"
)

NESTED = (
    b"From: a@example.test\r\n"
    b"Content-Type: multipart/mixed; boundary=outer\r\n"
    b"\r\n"
    b"This is the preamble.\r\n"
    b"--outer\r\n"
    b"Content-Type: multipart/alternative; Boundary=\"in ner\"\r\n"
    b"\r\n"
    b"--in ner\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"caf=C3=A9\r\n"
    b"--in ner\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<p>cafe</p>\r\n"
    b"--in ner--\r\n"
    b"--outer\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"Content-Disposition: attachment; filename=\"fwd.eml\"\r\n"
    b"\r\n"
    b"Subject: inner\r\n"
    b"From: Bob <bob@example.test>\r\n"
    b"Content-Type: multipart/mixed; boundary=x\r\n"
    b"\r\n"
    b"--x\r\n"
    b"\r\n"
    b"default typed\r\n"
    b"--x\r\n"
    b"Content-Type: application/octet-stream; name=\"a.bin\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-ID: <id1@x>\r\n"
    b"Content-Description: some bytes\r\n"
    b"Content-Language: en, de\r\n"
    b"Content-Location: http://x/a.bin\r\n"
    b"Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n"
    b"\r\n"
    b"AAECAw==\r\n"
    b"--x--\r\n"
    b"--outer--\r\n"
    b"epilogue\r\n"
)


def body(data, part):
    return data[part.body_start:part.body_end]


def test_single_part_rfc3501():
    p = mime.scan_bytes(RFC3501)
    assert (p.type, p.subtype, p.params) == ("TEXT", "PLAIN", [["CHARSET", "US-ASCII"]])
    assert body(RFC3501, p).startswith(b"xxx") and p.size == 3026 + 42 * 91 + 2
    assert p.lines == 92
    assert p.env["subject"] == "IMAP4rev1 WG mtg summary and minutes"
    assert bodystructure.render(p, extended=False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 6850 92)')
    assert envelope.render_envelope(p.env) == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
        b'NIL NIL "<B27397-0100000@cac.washington.edu>")')


def test_regression_bodystructure_defaults_and_param_case():
    """Twisted's getBodyStructure lacked the RFC 2045 defaults and lower-cased parameters."""
    data = b"Subject: x\r\n\r\nhello\r\n"
    p = mime.scan_bytes(data)
    assert bodystructure.render(p, extended=True) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 7 1 NIL NIL NIL NIL)')


def test_nested_structure_offsets():
    p = mime.scan_bytes(NESTED)
    assert p.type == "MULTIPART" and len(p.children) == 2
    alt, fwd = p.children
    assert alt.subtype == "ALTERNATIVE" and len(alt.children) == 2
    assert body(NESTED, alt.children[0]) == b"caf=C3=A9"
    assert body(NESTED, alt.children[1]) == b"<p>cafe</p>"
    assert fwd.message is not None and fwd.message.env["subject"] == "inner"
    inner = fwd.message
    assert len(inner.children) == 2
    assert body(NESTED, inner.children[0]) == b"default typed"
    assert body(NESTED, inner.children[1]) == b"AAECAw=="
    assert NESTED[inner.children[1].header_start:].startswith(b"Content-Type: application")
    assert body(NESTED, fwd).startswith(b"Subject: inner\r\n")
    assert body(NESTED, fwd).endswith(b"--x--\r\n")  # a close delimiter keeps its CRLF
    assert body(NESTED, p).endswith(b"epilogue\r\n")
    # section paths (RFC 3501 6.4.5)
    assert p.find((1, 2)) is alt.children[1]
    assert p.find((2,)) is fwd
    assert p.find((2, 2)) is inner.children[1]
    assert p.find((3,)) is None and p.find((1, 1, 2)) is None
    assert p.find((1, 1, 1)) is alt.children[0]  # a leaf part's part 1 is itself
    single = mime.scan_bytes(RFC3501)
    assert single.find((1,)) is single and single.find((2,)) is None


def test_bodystructure_nested():
    p = mime.scan_bytes(NESTED)
    bs = bodystructure.render(p, extended=True)
    assert bs.startswith(
        b'((("TEXT" "PLAIN" ("charset" "utf-8") NIL NIL "QUOTED-PRINTABLE" 9 0 NIL NIL NIL NIL)'
        b'("TEXT" "HTML" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 11 0 NIL NIL NIL NIL) "ALTERNATIVE" '
        b'("Boundary" "in ner") NIL NIL NIL)'
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" ')
    assert (b'("APPLICATION" "OCTET-STREAM" ("name" "a.bin") "<id1@x>" "some bytes" "BASE64" 8 '
            b'"Q2hlY2sgSW50ZWdyaXR5IQ==" NIL ("en" "de") "http://x/a.bin")') in bs
    assert b'("attachment" ("filename" "fwd.eml")) NIL NIL)' in bs
    assert bs.endswith(b' "MIXED" ("boundary" "outer") NIL NIL NIL)')
    plain = bodystructure.render(p, extended=False)
    assert b'"BASE64" 8)' in plain and plain.endswith(b' "MIXED")')
    assert b'(NIL "inner" (("Bob" NIL "bob" "example.test"))' in plain


def test_missing_final_boundary_and_empty_parts():
    data = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\none\r\n--b\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\ntwo")
    p = mime.scan_bytes(data)
    assert [body(data, c) for c in p.children] == [b"one", b"", b"two"]
    # Lines count LFs in the body, as Dovecot does.
    assert [c.lines for c in p.children] == [0, 0, 0]
    assert mime.scan_bytes(b"S: x\r\n\r\na\r\nb\r\n").lines == 2


def test_multipart_without_boundary_or_parts_gets_one_empty_part():
    """BODYSTRUCTURE needs 1+ parts; Dovecot gives such a multipart one empty part."""
    for data in (b"Content-Type: multipart/mixed\r\n\r\n--x\r\nhi\r\n",
                 b"Content-Type: multipart/mixed; boundary=b\r\n\r\npreamble only\r\n"):
        p = mime.scan_bytes(data)
        assert (p.type, len(p.children), p.children[0].size) == ("MULTIPART", 1, 0)
        assert bodystructure.render(p, False).startswith(b'(("TEXT" "PLAIN" ("CHARSET" ')


def test_digest_default_is_message():
    data = (b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\n"
            b"Subject: s\r\n\r\nbody\r\n--d--\r\n")
    p = mime.scan_bytes(data)
    child = p.children[0]
    assert (child.type, child.subtype) == ("MESSAGE", "RFC822")
    assert child.message.env == {"subject": "s"}


def test_regression_8bit_header_envelope_no_unicode_error():
    """8-bit header bytes crashed Twisted's FETCH ENVELOPE with UnicodeEncodeError."""
    data = b"Subject: caf\xe9 \xff\r\nFrom: J\xc3\xb6rg <j@x>\r\n\r\nbody\r\n"
    p = mime.scan_bytes(data)
    env = envelope.render_envelope(mime.loads(mime.dumps(p)).env)
    assert b"{6}\r\ncaf\xe9 \xff" in env
    assert b'(({5}\r\nJ\xc3\xb6rg NIL "j" "x"))' in env


def test_regression_group_syntax_and_rfc2047_left_as_sent():
    """Twisted's getEnvelope had no group syntax."""
    env = envelope.render_envelope({
        "from": "=?utf-8?q?J=C3=B6rg?= <j@x>",
        "to": "undisclosed-recipients:;",
        "cc": "Team: a@x, \"B, b\" <b@x>;, c@x",
    })
    assert b'(("=?utf-8?q?J=C3=B6rg?=" NIL "j" "x"))' in env
    assert b'((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))' in env
    assert (b'((NIL NIL "Team" NIL)(NIL NIL "a" "x")("B, b" NIL "b" "x")(NIL NIL NIL NIL)'
            b'(NIL NIL "c" "x"))') in env


def test_empty_envelope():
    assert envelope.render_envelope({}) == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_huge_header_is_bounded_but_offsets_exact():
    big = b"X-Big: " + b"a" * 200_000 + b"\r\n"
    data = b"Subject: s\r\n" + big + b"X-Fold: a\r\n" + b" b\r\n" * 50_000 + b"\r\nbody"
    p = mime.scan_bytes(data)
    assert body(data, p) == b"body" and p.env["subject"] == "s"
    assert len(mime.dumps(p)) < 1000


def test_message_rfc822_header_ending_at_eof():
    data = b"Content-Type: message/rfc822\r\n\r\nSubject: cut"
    p = mime.scan_bytes(data)
    assert p.message is not None and p.message.env == {"subject": "cut"}
    assert p.message.size == 0
    bodystructure.render(p, extended=True)


def test_message_rfc822_parsed_whatever_its_encoding():
    """Like Dovecot: an (illegally) encoded message/rfc822 is still parsed as a message."""
    data = (b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b"U3ViamVjdDogeA0KDQp5\r\n")
    p = mime.scan_bytes(data)
    assert p.message is not None
    bs = bodystructure.render(p, extended=False)
    assert bs.startswith(b'("MESSAGE" "RFC822" NIL NIL NIL "BASE64" 22 (NIL NIL')
    assert bodystructure.render(mime.Part(0), extended=False).startswith(b'("TEXT" "PLAIN"')


def test_cache_round_trip_and_bad_cache():
    p = mime.scan_bytes(NESTED)
    q = mime.loads(mime.dumps(p))
    assert bodystructure.render(q, True) == bodystructure.render(p, True)
    assert mime.dumps(q) == mime.dumps(p)
    assert mime.loads("garbage") is None and mime.loads("[99, []]") is None


def test_long_lines_in_body_and_boundary_lookalikes():
    data = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n"
            + b"z" * 300_000 + b"\r\n-- b\r\n-b\r\n--b \t\r\n\r\nsecond\r\n--bb\r\n\r\nthird\r\n"
            b"--b--")
    p = mime.scan_bytes(data)
    assert len(p.children) == 3
    assert body(data, p.children[0]) == b"z" * 300_000 + b"\r\n-- b\r\n-b"
    # Like Dovecot, "--b" is matched as a line prefix ("--bb" is a delimiter too).
    assert [body(data, c) for c in p.children[1:]] == [b"second", b"third"]


# ------------------------------------------------------------------------ hypothesis


def _check_tree(p, size, depth=0):
    assert 0 <= p.header_start <= p.body_start <= p.body_end <= size
    assert p.lines >= 0
    for c in p.children:
        assert p.body_start <= c.header_start and c.body_end <= p.body_end
        _check_tree(c, size, depth + 1)
    if p.message is not None:
        assert p.message.header_start == p.body_start
        assert p.message.body_end <= p.body_end
        _check_tree(p.message, size, depth + 1)
    bodystructure.render(p, extended=True)
    bodystructure.render(p, extended=False)
    if p.env is not None:
        envelope.render_envelope(p.env)


_pieces = st.sampled_from([
    b"--b\r\n", b"--b--\r\n", b"--c\r\n", b"--c--\r\n", b"\r\n", b"Content-Type: multipart/mixed;"
    b" boundary=c\r\n", b"Content-Type: message/rfc822\r\n", b"Content-Type: text/plain\r\n",
    b"Subject: hi\r\n", b" folded\r\n", b"From: \"a\" <b@c>, g: x@y;\r\n", b"body line\r\n",
    b"\n", b"\r", b"-", b"--", b"no colon\r\n", b"\xff\xfe\r\n", b"Content-Type: multipart/"
    b"digest; boundary=b\r\n", b"To: (((\r\n",
])


@settings(max_examples=250, deadline=None)
@given(st.lists(_pieces, max_size=40), st.integers(1, 50))
def test_garbled_mime_never_raises(pieces, chunk):
    data = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"".join(pieces)
    p = mime.scan_bytes(data)
    _check_tree(p, len(data))
    s = mime.Scanner()
    for i in range(0, len(data), chunk):
        s.feed(data[i:i + chunk])
    assert mime.dumps(s.finish()) == mime.dumps(p)  # chunking never changes the result
    assert mime.dumps(mime.loads(mime.dumps(p))) == mime.dumps(p)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 64))
def test_random_bytes_never_raise(data, chunk):
    s = mime.Scanner()
    for i in range(0, len(data), chunk):
        s.feed(data[i:i + chunk])
    p = s.finish()
    _check_tree(p, len(data))
    assert mime.dumps(p) == mime.dumps(mime.scan_bytes(data))


_text = st.text(alphabet="abc xyz-\u00e9", max_size=30)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(_text, st.sampled_from(["plain", "html"])), min_size=1, max_size=4),
       st.booleans())
def test_agrees_with_stdlib_email(parts, nest):
    """Leaf bodies found by offsets equal the payloads the stdlib parser finds."""
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["Subject"] = "t"
    msg.set_content("first")
    for text, sub in parts:
        msg.add_attachment(text, subtype=sub)
    if nest:
        outer = EmailMessage()
        outer["Subject"] = "outer"
        outer.set_content("x")
        outer.add_attachment(msg)
        msg = outer
    data = msg.as_bytes(policy=email.policy.SMTP)
    p = mime.scan_bytes(data)
    _check_tree(p, len(data))
    ours = [_decode(q, body(data, q)) for q in p.walk()
            if q.type != "MULTIPART" and q.message is None]
    theirs = [m.get_payload(decode=True)
              for m in email.message_from_bytes(data, policy=email.policy.compat32).walk()
              if not m.is_multipart()]
    assert [o.rstrip(b"\r\n") for o in ours] == [t.replace(b"\r\n", b"\n").rstrip(b"\n")
                                                 .replace(b"\n", b"\r\n") for t in theirs]


def _decode(part, data):
    import base64
    import binascii

    if part.encoding == "BASE64":
        return base64.b64decode(data).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if part.encoding == "QUOTED-PRINTABLE":
        return binascii.a2b_qp(data)
    return data


# ------------------------------------------- Dovecot as the oracle (differential test)

DOVECOT_IMAP = "/usr/lib/dovecot/imap"

_WEIRD_BUT_VALID = [
    b"Subject: hi\r\n\r\nhello\r\nworld",
    b"Subject: x\r\n\r\nhello",
    b"Content-Type: text/html; format=flowed\r\n\r\nx",
    b"Content-Type: text/plain; Charset=\"UTF-8\"; Format=flowed\r\n\r\nhello\r\n",
    # a multipart without parts, and one without a boundary
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\njust a preamble\r\n",
    b"Content-Type: multipart/alternative\r\n\r\n--x\r\nhi\r\n",
    # empty parts, a missing close delimiter, transport padding, prefix-matched delimiters
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\none\r\n--b\r\n--b\r\n"
    b"Content-Type: text/plain\r\n\r\ntwo",
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b  \r\n\r\none\r\n--bx\r\ntwo\r\n--b--",
    # the CRLF after a close delimiter stays in the enclosing part
    b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: multipart/mixed;"
    b" boundary=x\r\n\r\n--x\r\n\r\nA\r\n--x--\r\n--o--\r\n",
    b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: multipart/mixed;"
    b" boundary=x\r\n\r\n--x\r\n\r\nA\r\n--x--\r\nepilogue\r\n--o--\r\n",
    # a header cut short by a boundary, and an embedded message cut short
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n"
    b"\r\nContent-Type: text/plain\r\n--b\r\nContent-Language: en, de\r\n\r\nx\r\n--b--\r\n",
    b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: s\r\n\r\nbody\r\n"
    b"--d\r\nContent-Type: text/plain\r\n\r\nnot a message\r\n--d--\r\n",
    # header lines without a colon are skipped; folded and unquoted parameters
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nno colon here\r\n"
    b"Content-Type: application/pdf; name=x.pdf\r\n folded\r\n"
    b"Content-Transfer-Encoding: base64\r\n folded\r\n\r\nAAAA\r\n--b--\r\n",
    b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"U3ViamVjdDogeA0KDQp5\r\n",
    b"Subject: caf\xc3\xa9 \xff\r\nFrom: J\xc3\xb6rg <j@x>\r\nContent-Type: text/plain; name=\"\xe9\"\r\n"
    b"\r\nbody\r\n",
]

_ADDRESSES = [
    b"Terry Gray <gray@cac.washington.edu>", b'"Doe, John" <j@x.org>, b@y',
    b"undisclosed-recipients:;", b"Friends: a@b, C <c@d>;, e@f", b"=?utf-8?q?J=C3=B6rg?= <j@x>",
    b"x@y (Comment Name)", b"<@r1,@r2:u@h>", b"bogus", b"<>", b"a.b.c <x.y@z.w>",
    b"Mr.  Smith   <s@x>", b"a @ b", b'"quoted"@x', b"Pete(A nice \\) chap) <pete(his account)"
    b"@silly.test(his host)>", b"A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;",
    b'"Giant; \\"Big\\" Box" <sysservices@example.net>', b"J\xc3\xb6rg <j@x>", b"a@[127.0.0.1]",
    b"group: ;",
]


def _oracle_corpus():
    msgs = [RFC3501, NESTED, *_WEIRD_BUT_VALID]
    for a in _ADDRESSES:
        msgs.append(b"From: " + a + b"\r\nCc: " + a + b"\r\nSubject: s\r\n\r\nx\r\n")
    for subj in (b"", b"=?utf-8?b?w6k=?=", b"a\r\n b", b'with "quotes" \\ and backslash '):
        msgs.append(b"Subject: " + subj + b"\r\nDate: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
                    b"Message-ID:  <a@b> \r\nIn-Reply-To: <x@y>\r\nSender: \r\nReply-To: r@x\r\n"
                    b"\r\nbody")
    return msgs


def _dovecot_fetch(msgs, items):
    """Run Dovecot's imap binary in PREAUTH mode on a Maildir of ``msgs``; returns, for
    each message in order, the text of its FETCH response after ``BODY[]``."""
    import os
    import pwd
    import re
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    assert os.path.exists(DOVECOT_IMAP), "needs Debian package dovecot-imapd"
    # Not under pytest's tmp_path: its parents are private, and as root we run
    # Dovecot as nobody, who must reach the Maildir.
    top = Path(tempfile.mkdtemp(prefix="mailhost-dovecot-"))
    try:
        return _run_dovecot(top, msgs, items, os, pwd, re, subprocess)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _run_dovecot(top, msgs, items, os, pwd, re, subprocess):
    out = _dovecot_session(top, msgs, b"".join(
        b"f%d FETCH %d (BODY.PEEK[] %s)\r\n" % (n, n, items) for n in range(1, len(msgs) + 1)
    ), os, pwd, subprocess)
    assert b"f%d OK" % len(msgs) in out, out
    answers: list = [None] * len(msgs)
    for data, rest in _fetch_responses(out, len(msgs), re).values():
        answers[msgs.index(data)] = rest
    return answers


def _dovecot_session(top, msgs, commands, os, pwd, subprocess):
    """Dovecot's imap binary in PREAUTH mode on a Maildir of ``msgs`` in ``top``, fed
    ``commands`` after SELECT INBOX; returns everything it wrote."""
    os.chmod(top, 0o755)
    root = top / "dovecot"
    for d in ("cur", "new", "tmp"):
        (root / "Maildir" / d).mkdir(parents=True)
    for i, m in enumerate(msgs):
        (root / "Maildir" / "cur" / f"{1000 + i}.m:2,S").write_bytes(m)
    cmd = [DOVECOT_IMAP, "-o", f"mail_location=maildir:{root}/Maildir",
           "-o", "first_valid_uid=1", "-o", "first_valid_gid=1"]
    user = pwd.getpwuid(os.getuid()).pw_name
    if os.geteuid() == 0:  # Dovecot refuses to serve mail as root: run it as nobody
        subprocess.run(["chown", "-R", "nobody:nogroup", str(root)], check=True)
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd]
        user = "nobody"
    script = b"a SELECT INBOX\r\n" + commands + b"z LOGOUT\r\n"
    env = {"USER": user, "HOME": str(root), "PATH": os.environ.get("PATH", "")}
    out = subprocess.run(cmd, input=script, capture_output=True, timeout=60, env=env)
    assert b"z OK" in out.stdout, out.stdout + out.stderr
    return out.stdout


def _fetch_responses(out, count, re):
    """{seq: (BODY[] data, the other items)} from the FETCH responses in ``out``."""
    result = {}
    for n in range(1, count + 1):
        # Dovecot runs pipelined FETCHes in parallel: find the end of this response by
        # skipping its literals, not by the tagged OK.
        start = pos = out.index(b"\r\n* %d FETCH (" % n) + 2
        while True:
            eol = out.index(b"\r\n", pos)
            m = re.search(rb"\{(\d+)\}$", out[pos:eol])
            if m is None:
                break
            pos = eol + 2 + int(m.group(1))
        chunk = out[start:eol]
        lit = chunk.index(b"BODY[] {")
        head_end = chunk.index(b"}\r\n", lit)
        size = int(chunk[lit + 8:head_end])
        data = chunk[head_end + 3:head_end + 3 + size]
        before = chunk[len(b"* %d FETCH (" % n):lit]
        after = chunk[head_end + 3 + size:-1]
        # Drop BODY[] and its one separating space; literal contents stay intact.
        result[n] = (data, b" ".join(x for x in (before[:-1], after[1:]) if x))
    return result


def _unliteral(data):
    """Literals rewritten as quoted strings, so both sides compare alike."""
    import re

    out, pos = b"", 0
    for m in re.finditer(rb"\{(\d+)\}\r\n", data):
        if m.start() < pos:
            continue
        n = int(m.group(1))
        lit = data[m.end():m.end() + n]
        out += data[pos:m.start()] + b'"' + lit.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        pos = m.end() + n
    return out + data[pos:]


def test_bodystructure_envelope_and_sections_match_dovecot():
    """Dovecot (which passes the external compliance suite) is the oracle: every
    BODYSTRUCTURE, BODY and ENVELOPE we compute must equal its answer (types compared
    case-insensitively, since Dovecot 2.3 lower-cases them and we upper-case them)."""

    msgs = _oracle_corpus()
    answers = _dovecot_fetch(msgs, b"ENVELOPE BODY BODYSTRUCTURE")
    for msg, answer in zip(msgs, answers, strict=True):
        theirs = _unliteral(answer)
        p = mime.scan_bytes(msg)
        p = mime.loads(mime.dumps(p))  # what a cached FETCH would use
        ours = _unliteral(b"ENVELOPE " + envelope.render_envelope(p.env)
                          + b" BODY " + bodystructure.render(p, extended=False)
                          + b" BODYSTRUCTURE " + bodystructure.render(p, extended=True))
        assert ours.upper() == theirs.upper(), (msg, ours, theirs)


def test_scan_is_constant_memory():
    """Structure of a 20 MB multipart message is found holding only small buffers."""
    import io
    import tracemalloc

    att = (b"QUJD" * 19 + b"\r\n") * 260_000
    data = (b"Subject: big\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nhi\r\n"
            b"--b\r\nContent-Transfer-Encoding: base64\r\n\r\n" + att + b"--b--\r\n")
    f = io.BytesIO(data)
    tracemalloc.start()
    try:
        p = mime.scan_file(f)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert p.children[1].size == len(att) - 2 and p.children[1].lines == 260_000 - 1
    assert peak < 1024 * 1024, peak


def test_empty_rfc822_part_stays_inside_its_multipart_part():
    """Regression (hypothesis): an empty message/rfc822 part's body ran 2 bytes past
    its enclosing part, taking the CRLF that belongs to the next boundary."""
    data = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: message/rfc822\r\n\r\n\r\n--b\r\n")
    p = mime.scan_bytes(data)
    _check_tree(p, len(data))
    s = mime.Scanner()
    for i in range(0, len(data), 3):
        s.feed(data[i:i + 3])
    assert mime.dumps(s.finish()) == mime.dumps(p)
