"""ESEARCH, SEARCHRES, WITHIN, CHARSET/I18NLEVEL, SORT, SORT=DISPLAY, ESORT and THREAD
over a real socket (imaplib raw lines, imapclient's ``sort()``/``thread()``), and the
header table that lets a repeated SORT or SEARCH open no message file."""

from __future__ import annotations

import time

import imapclient
import pytest_twisted

from tests.imap.test_server_harness import ALICE, imap_host_fixture, raw  # noqa: F401


def msg(subject: str, frm: str = "bob@example.test", to: str = "alice@example.test",
        date: str = "Fri, 27 Nov 2026 12:00:00 +0000", mid: str | None = None,
        refs: str | None = None, cc: str | None = None, body: str = "Hello.\r\n",
        in_reply_to: str | None = None) -> bytes:
    head = [f"From: {frm}", f"To: {to}", f"Subject: {subject}", f"Date: {date}",
            "Content-Type: text/plain; charset=utf-8"]
    if cc is not None:
        head.append(f"Cc: {cc}")
    if mid is not None:
        head.append(f"Message-ID: <{mid}>")
    if refs is not None:
        head.append(f"References: {refs}")
    if in_reply_to is not None:
        head.append(f"In-Reply-To: {in_reply_to}")
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


def _data(lines: list[bytes], name: bytes) -> list[bytes]:
    return [line for line in lines if line.startswith(b"* " + name)]


SORT_SET = [
    # subject, from, to, cc, date, body size
    msg("Re: beta", "Zed <zed@example.test>", "Carol <carol@example.test>",
        "Mon, 02 Nov 2026 10:00:00 +0000", cc="x@example.test", body="a" * 300),
    msg("alpha", "amy@example.test", "bob@example.test",
        "Sun, 01 Nov 2026 10:00:00 -0500", cc="b@example.test", body="a"),
    msg("[list] Beta (fwd)", "Mike <mike@example.test>", "Anna <zz@example.test>",
        "Sun, 01 Nov 2026 12:00:00 +0000", body="a" * 100),
    msg("gamma", "=?utf-8?q?=C3=89mile?= <emile@example.test>", "dave@example.test",
        "bogus date", body="a" * 50),
]


@pytest_twisted.ensureDeferred
async def test_capabilities_advertised(imap_host):
    host = await imap_host()

    def run():
        c = host.client()
        caps = set(c.capabilities) | set(c.capability()[1][0].decode().upper().split())
        for cap in ("ESEARCH", "SEARCHRES", "WITHIN", "I18NLEVEL=1", "SORT", "SORT=DISPLAY",
                    "ESORT", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "CONTEXT=SEARCH",
                    "CONTEXT=SORT"):
            assert cap in caps, cap
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_esearch_return_options(imap_host):
    host = await imap_host()
    uids = [await host.deliver(msg(f"s{i}" if i % 2 else "other")) for i in range(6)]

    def run():
        c = host.client()
        c.select("INBOX")
        out = raw(c, b"A282 SEARCH RETURN (MIN COUNT) SUBJECT s")
        assert out[0] == b'* ESEARCH (TAG "A282") MIN 2 COUNT 3', out
        out = raw(c, b"A283 SEARCH RETURN () NOT SUBJECT s")
        assert out[0] == b'* ESEARCH (TAG "A283") ALL 1,3,5', out
        out = raw(c, b"A284 UID SEARCH RETURN (MIN MAX ALL COUNT) ALL")
        assert out[0] == b'* ESEARCH (TAG "A284") UID MIN %d MAX %d ALL %d:%d COUNT 6' % (
            uids[0], uids[-1], uids[0], uids[-1]), out
        out = raw(c, b"A285 SEARCH RETURN (MIN MAX ALL COUNT) SUBJECT nothing-here")
        assert out[0] == b'* ESEARCH (TAG "A285") COUNT 0', out
        out = raw(c, b"A286 SEARCH RETURN (BOGUS) ALL")
        assert out[-1].startswith(b"A286 BAD"), out
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_searchres_dollar_in_later_commands(imap_host):
    host = await imap_host()
    for i in range(5):
        await host.deliver(msg(f"zq{i}" if i in (1, 3, 4) else "other"))

    def run():
        c = host.client()
        c.select("INBOX")
        out = raw(c, b"A1 SEARCH RETURN (SAVE) SUBJECT zq")
        assert out == [b"A1 OK SEARCH completed"], out  # SAVE alone: no ESEARCH
        out = raw(c, b"A2 FETCH $ (UID)")
        assert [line.split()[1] for line in out if line.startswith(b"* ")] == [b"2", b"4", b"5"]
        out = raw(c, b"A3 UID SEARCH $")
        assert out[0] == b"* SEARCH 2 4 5", out
        out = raw(c, b"A4 SEARCH NOT $")
        assert out[0] == b"* SEARCH 1 3", out
        out = raw(c, b"A5 STORE $ +FLAGS.SILENT (\\Deleted)")
        assert out[-1].startswith(b"A5 OK"), out
        # MIN and MAX: only those two are saved.
        out = raw(c, b"A6 SEARCH RETURN (SAVE MIN MAX) ALL")
        assert out[0] == b'* ESEARCH (TAG "A6") MIN 1 MAX 5', out
        out = raw(c, b"A7 SEARCH $")
        assert out[0] == b"* SEARCH 1 5", out
        # EXPUNGE removes what is gone from $.
        raw(c, b"A8 EXPUNGE")
        out = raw(c, b"A9 UID SEARCH $")
        assert out[0] == b"* SEARCH 1", out
        # A failing SAVE search leaves $ empty.
        out = raw(c, b"B1 SEARCH RETURN (SAVE) CHARSET KOI8-R ALL")
        assert out[-1].startswith(b"B1 NO [BADCHARSET"), out
        out = raw(c, b"B2 SEARCH $")
        assert out[0] == b"* SEARCH", out
        # So does a SAVE search that is BAD, and a SAVE sort with a bad program.
        raw(c, b"B4 SEARCH RETURN (SAVE) ALL")
        assert raw(c, b"B5 SEARCH RETURN (SAVE) SINCE 99-Foo-2026")[-1].startswith(b"B5 BAD")
        assert raw(c, b"B6 SEARCH $")[0] == b"* SEARCH", "BAD SAVE left $ set"
        raw(c, b"B7 SEARCH RETURN (SAVE) ALL")
        assert raw(c, b"B8 SORT RETURN (SAVE) (BOGUS) UTF-8 ALL")[-1].startswith(b"B8 BAD")
        assert raw(c, b"B9 SEARCH $")[0] == b"* SEARCH"
        # UID COPY $ with an empty result: nothing, OK.
        assert raw(c, b"B3 UID COPY $ Trash")[-1].startswith(b"B3 OK")
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_within_older_younger(imap_host):
    host = await imap_host()

    def run():
        c = host.client()
        old = time.time() - 3 * 86400
        c.append("INBOX", None, old, msg("old"))
        c.append("INBOX", None, None, msg("new"))
        c.select("INBOX")
        assert raw(c, b"W1 SEARCH OLDER 86400")[0] == b"* SEARCH 1"
        assert raw(c, b"W2 SEARCH YOUNGER 86400")[0] == b"* SEARCH 2"
        assert raw(c, b"W3 SEARCH YOUNGER 0")[-1].startswith(b"W3 BAD")
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_search_charset_and_unicode_casemap(imap_host):
    host = await imap_host()
    await host.deliver(msg("=?utf-8?q?Gr=C3=BC=C3=9Fe_aus_M=C3=BCnchen?=",
                           body="Stra\u00dfe in K\u00d6LN\r\n"))
    await host.deliver(msg("plain"))

    def run():
        c = host.client()
        c.select("INBOX")
        word = "MÜNCHEN".encode()
        c.send(b"C1 SEARCH CHARSET UTF-8 SUBJECT {%d}\r\n" % len(word))
        assert c.readline().startswith(b"+")
        c.send(word + b"\r\n")
        out = [c.readline().rstrip(), c.readline().rstrip()]
        assert out == [b"* SEARCH 1", b"C1 OK SEARCH completed"], out
        word = "köln".encode()
        c.send(b"C2 SEARCH CHARSET utf-8 BODY {%d+}\r\n" % len(word) + word + b"\r\n")
        assert c.readline().rstrip() == b"* SEARCH 1"
        c.readline()
        assert raw(c, b"C3 SEARCH CHARSET US-ASCII SUBJECT PLAIN")[0] == b"* SEARCH 2"
        out = raw(c, b"C4 SEARCH CHARSET ISO-2022-JP ALL")
        assert out[-1] == b"C4 NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset", out
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_sort_every_key(imap_host):
    host = await imap_host()
    uids = [await host.deliver(m) for m in SORT_SET]

    def run():
        c = host.client()
        c.select("INBOX")

        def sort(program: bytes, cmd: bytes = b"SORT") -> list[int]:
            out = raw(c, b"S " + cmd + b" " + program + b" UTF-8 ALL")
            assert out[-1].startswith(b"S OK"), out
            return [int(n) for n in _data(out, b"SORT")[0].split()[2:]]

        # base subjects: beta, alpha, beta, gamma; ties by sequence number
        assert sort(b"(SUBJECT)") == [2, 1, 3, 4]
        assert sort(b"(REVERSE SUBJECT)") == [4, 1, 3, 2]
        # sent dates: 2 Nov 10:00, 1 Nov 15:00Z, 1 Nov 12:00Z; #4 has none: INTERNALDATE
        assert sort(b"(DATE)") == [3, 2, 1, 4]
        assert sort(b"(REVERSE DATE)") == [4, 1, 2, 3]
        assert sort(b"(ARRIVAL)") == [1, 2, 3, 4]
        assert sort(b"(SIZE)") == [2, 4, 3, 1]
        assert sort(b"(REVERSE SIZE)") == [1, 3, 4, 2]
        assert sort(b"(FROM)") == [2, 4, 3, 1]  # amy, emile, mike, zed
        assert sort(b"(TO)") == [2, 1, 4, 3]  # bob, carol, dave, zz: the mailbox part
        assert sort(b"(CC)") == [3, 4, 2, 1]  # "", "", b, x
        assert sort(b"(DISPLAYFROM)") == [2, 4, 3, 1]  # amy@, Émile, Mike, Zed
        assert sort(b"(DISPLAYTO)") == [3, 2, 1, 4]  # Anna, bob@, Carol, dave@
        assert sort(b"(SUBJECT REVERSE DATE)") == [2, 1, 3, 4]
        assert sort(b"(SUBJECT)", b"UID SORT") == [uids[1], uids[0], uids[2], uids[3]]
        out = raw(c, b"S2 SORT (SUBJECT) UTF-8 SUBJECT beta")
        assert out[0] == b"* SORT 1 3", out
        out = raw(c, b"S3 SORT (SUBJECT) KOI8-R ALL")
        assert out[-1].startswith(b"S3 NO [BADCHARSET"), out
        out = raw(c, b"S4 SORT (BOGUS) UTF-8 ALL")
        assert out[-1].startswith(b"S4 BAD"), out
        out = raw(c, b"S5 SORT (REVERSE) UTF-8 ALL")
        assert out[-1].startswith(b"S5 BAD"), out
        # ESORT: the result in sort order
        out = raw(c, b"E1 SORT RETURN (MIN MAX COUNT ALL) (REVERSE SIZE) UTF-8 ALL")
        assert out[0] == b'* ESEARCH (TAG "E1") MIN 1 MAX 2 ALL 1,3:4,2 COUNT 4', out
        out = raw(c, b"E2 UID SORT RETURN (COUNT) (DATE) UTF-8 ALL")
        assert out[0] == b'* ESEARCH (TAG "E2") UID COUNT 4', out
        out = raw(c, b"E3 SORT RETURN (SAVE MIN) (DATE) UTF-8 ALL")
        assert out[0] == b'* ESEARCH (TAG "E3") MIN 3', out
        assert raw(c, b"E4 SEARCH $")[0] == b"* SEARCH 3"
        c.logout()

    await host.in_thread(run)


# RFC 5256's own threading situations, each a (subject, message-id, references) list.
THREAD_SET = [
    ("hello", "a@x", None),            # 1
    ("Re: hello", "b@x", "<a@x>"),     # 2: reply to 1
    ("Re: hello", "c@x", "<a@x> <b@x>"),  # 3: reply to 2
    ("Re: hello", "d@x", "<a@x>"),     # 4: second reply to 1
    ("other", "e@x", "<missing@x>"),   # 5: parent not here -> dummy pruned
    ("Re: other", "f@x", "<missing@x>"),  # 6: sibling of 5 under a dummy root
    ("lonely", "g@x", None),           # 7
    ("Re: lonely", "h@x", "<nothere@x>"),  # 8: joins 7 by subject
]


@pytest_twisted.ensureDeferred
async def test_thread_references_and_orderedsubject(imap_host):
    host = await imap_host()
    uids = []
    for i, (subject, mid, refs) in enumerate(THREAD_SET):
        date = f"Sun, 01 Nov 2026 10:{i:02d}:00 +0000"
        uids.append(await host.deliver(msg(subject, mid=mid, refs=refs, date=date)))

    def run():
        c = host.client()
        c.select("INBOX")
        out = raw(c, b"T1 THREAD REFERENCES UTF-8 ALL")
        assert out[0] == b"* THREAD (1 (2 3)(4))((5)(6))(7 8)", out
        out = raw(c, b"T2 THREAD ORDEREDSUBJECT UTF-8 ALL")
        assert out[0] == b"* THREAD (1 (2)(3)(4))(5 6)(7 8)", out
        out = raw(c, b"T3 UID THREAD REFERENCES UTF-8 SUBJECT lonely")
        assert out[0] == b"* THREAD (%d %d)" % (uids[6], uids[7]), out
        out = raw(c, b"T4 THREAD REFERENCES UTF-8 SUBJECT nothing")
        assert out[0] == b"* THREAD", out
        out = raw(c, b"T5 THREAD BOGUS UTF-8 ALL")
        assert out[-1].startswith(b"T5 BAD"), out
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_thread_and_sort_date_after_an_expunge_and_without_date_headers(imap_host):
    """THREAD answers sequence numbers, not UIDs, once they differ (the answer is
    renumbered unless the UIDs are 1..n); SORT (DATE) and THREAD take INTERNALDATE
    for a message without a usable Date header, and read no other's."""
    host = await imap_host(kind="maildir")
    await host.deliver(msg("gone", mid="g@x"))
    for i, (subject, mid, refs) in enumerate(THREAD_SET):
        date = "no date here" if i == 4 else f"Sun, 01 Nov 2026 10:{i:02d}:00 +0000"
        await host.deliver(msg(subject, mid=mid, refs=refs, date=date))

    def run():
        c = host.client()
        c.select("INBOX")
        c.store("1", "+FLAGS", "(\\Deleted)")
        c.expunge()
        out = raw(c, b"T1 THREAD REFERENCES UTF-8 ALL")
        # message 5 has no Date: delivered now, after every 1 Nov date
        assert out[0] == b"* THREAD (1 (2 3)(4))((6)(5))(7 8)", out
        out = raw(c, b"T2 UID THREAD REFERENCES UTF-8 ALL")
        assert out[0] == b"* THREAD (2 (3 4)(5))((7)(6))(8 9)", out
        out = raw(c, b"S1 SORT (DATE) UTF-8 ALL")
        assert out[0] == b"* SORT 1 2 3 4 6 7 8 5", out
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_imapclient_sort_and_thread(imap_host):
    host = await imap_host()
    uids = [await host.deliver(m) for m in SORT_SET]

    def run():
        c = imapclient.IMAPClient("127.0.0.1", port=host.port, ssl=False, timeout=10)
        c.login(*ALICE)
        c.select_folder("INBOX")
        assert c.has_capability("SORT") and c.has_capability("THREAD=REFERENCES")
        assert c.sort(["SUBJECT"]) == [uids[1], uids[0], uids[2], uids[3]]
        assert c.sort(["REVERSE", "DATE"], ["SUBJECT", "beta"]) == [uids[0], uids[2]]
        def flat(t):
            return [x for y in t for x in (flat(y) if isinstance(y, tuple) else [y])]

        assert sorted(flat(c.thread("REFERENCES"))) == sorted(uids)
        # one thread: #3 (1 Nov) is the parent of #1 (2 Nov)
        assert c.thread("ORDEREDSUBJECT", ["SUBJECT", "beta"]) == ((uids[2], uids[0]),)
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_repeated_sort_and_search_open_no_message_file(imap_host, tmp_path):
    n = 600
    host = await imap_host(kind="maildir")
    for i in range(n):
        await host.deliver(msg(f"subject {i % 37}", frm=f"u{i % 11}@example.test",
                               date=f"Sun, 01 Nov 2026 {i % 24:02d}:{i % 60:02d}:00 +0000"))
    folder = await host.folder()
    opened: list[int] = []
    real_open, real_read = folder.open_message, folder.read_message
    real_headers = folder.read_headers

    def count_open(uid, *a, **kw):
        opened.append(uid)
        return real_open(uid, *a, **kw)

    def count_read(uid, *a, **kw):
        opened.append(uid)
        return real_read(uid, *a, **kw)

    def count_headers(uids, fn):
        opened.extend(uids)
        return real_headers(uids, fn)

    folder.open_message, folder.read_message = count_open, count_read
    folder.read_headers = count_headers

    def sort_and_search():
        c = host.client()
        c.select("INBOX")
        out = raw(c, b"S1 SORT (DATE SUBJECT) UTF-8 ALL")
        assert len(out[0].split()) == 2 + n, out[-1]
        out = raw(c, b"S2 UID SEARCH SUBJECT \"subject 3\"")
        assert len(out[0].split()) == 2 + len([i for i in range(n)
                                               if str(i % 37).startswith("3")]), out
        out = raw(c, b"S3 THREAD REFERENCES UTF-8 FROM u1")
        assert out[-1].startswith(b"S3 OK")
        c.logout()

    await host.in_thread(sort_and_search)
    assert len(set(opened)) == n  # the first SORT read every message once
    opened.clear()
    await host.in_thread(sort_and_search)
    assert opened == []  # the second reads none
    # Kept across a restart: a new store over the same Maildir reads no file either.
    await host.store.close()
    host2 = await imap_host(kind="maildir")
    folder2 = await host2.folder()
    assert folder2 is not folder

    def no_files(*a, **kw):
        raise AssertionError("a message file was opened after the restart")

    folder2.open_message = folder2.read_message = folder2.read_headers = no_files
    await host2.in_thread(sort_and_search)


@pytest_twisted.ensureDeferred
async def test_sort_and_thread_build_no_object_per_message_and_stat_no_file(
        imap_host, monkeypatch):
    """Regression (issue 16: peak RSS 269 MB on 100k messages): SORT and THREAD read
    whole columns of the header table; they make no row view per message (only the
    SEARCH SUBJECT matcher does), and SORT (DATE)/THREAD of messages that all have a
    Date header read no INTERNALDATE, so a folder whose dates the store has not read
    yet is not stat'ed file by file. The message-id and parent columns THREAD derives
    are not kept."""
    from mailhost.imap import headerindex

    n = 300
    host = await imap_host(kind="maildir")
    for i in range(n):
        refs = f"<m{i - 1}@x>" if i % 3 else None
        await host.deliver(msg(f"{'Re: ' if i % 3 else ''}topic {i // 3}", mid=f"m{i}@x",
                               refs=refs, date=f"Sun, 01 Nov 2026 10:{i % 60:02d}:00 +0000"))
    folder = await host.folder()
    made = [0]
    real_init = headerindex._Row.__init__

    def counting_init(self, table, row):
        made[0] += 1
        real_init(self, table, row)

    monkeypatch.setattr(headerindex._Row, "__init__", counting_init)
    dates_asked: list[object] = []
    real_fill = folder.fill_dates

    def fill_dates(uids=None):
        dates_asked.append(uids)
        return real_fill(uids)

    folder.fill_dates = fill_dates

    def run():
        c = host.client()
        c.select("INBOX")
        for tag, line in ((b"S1", b"SORT (DATE) UTF-8 ALL"),
                          (b"S2", b"SORT (SUBJECT REVERSE FROM) UTF-8 ALL"),
                          (b"T1", b"THREAD REFERENCES UTF-8 ALL"),
                          (b"T2", b"THREAD ORDEREDSUBJECT UTF-8 ALL")):
            out = raw(c, tag + b" " + line)
            assert out[-1].startswith(tag + b" OK"), out
        c.logout()

    await host.in_thread(run)
    assert made[0] == 0
    assert dates_asked == []
    table = host.factory.header_tables.table(folder)
    assert not {"message_id", "parents"} & set(table._columns)


@pytest_twisted.ensureDeferred
async def test_first_search_subject_on_maildir_decodes_every_kind_of_subject(imap_host,
                                                                            tmp_path):
    """Regression (issue 16): the first header SEARCH on Maildir reads header blocks in
    bulk (maildir_headers) and finds the Subject lines with one regex; the subjects it
    matches are decoded as before: RFC 2047 encoded words, folded lines, raw UTF-8 and
    invalid 8-bit octets, several Subject fields, none at all, and an LF-only file
    another program dropped in. The same searches answer the same from the header
    table's cache afterwards."""
    host = await imap_host(kind="maildir")
    heads = [
        b"Subject: =?utf-8?q?caf=C3=A9_cr=C3=A8me?= and =?iso-8859-1?q?na=EFve?=",
        b"Subject: a long\r\n  folded\r\n\tsubject",
        b"Subject: Gr\xc3\xbc\xc3\x9fe aus M\xc3\xbcnchen",
        b"Subject: caf\xe9 latin-1 octets",
        b"X-Note: no subject at all",
        b"Subject: first\r\nsubject: second one",
        b"Subject: =?x-unknown?q?raw=20word?= plain",
    ]
    uids = [await host.deliver(h + b"\r\nFrom: a@example.test\r\n\r\nbody\r\n") for h in heads]
    new = tmp_path / "mail" / "example.test" / "alice" / "new"  # (the harness's store)
    with open(new / "1600000000.lf.host", "wb") as f:
        f.write(b"From: b@example.test\nSubject: lf only\n line ends\n\nbody\n")
    queries = [
        (b"SUBJECT \"CAF\xc3\x89 CR\xc3\x88ME\"", [1]),
        (b"SUBJECT \"na\xc3\xafve\"", [1]),
        (b"SUBJECT \"long  folded\tsubject\"", [2]),
        (b"SUBJECT \"gr\xc3\xbc\xc3\x9fe aus m\xc3\xbcnchen\"", [3]),
        (b"SUBJECT \"latin-1 octets\"", [4]),
        (b"SUBJECT \"\"", [1, 2, 3, 4, 6, 7, 8]),
        (b"NOT SUBJECT \"\"", [5]),
        (b"SUBJECT \"second one\"", [6]),
        (b"SUBJECT \"=?x-unknown?q?raw=20word?=\"", [7]),
        (b"SUBJECT \"lf only line ends\"", [8]),
    ]

    def search_all():
        c = host.client()
        c.select("INBOX")
        answers = []
        for n, (key, _) in enumerate(queries):
            line = b"S%d UID SEARCH CHARSET UTF-8 " % n
            out = []
            # 8-bit strings go as literals (LITERAL+)
            if any(b > 127 for b in key):
                word = key.split(b" ", 1)[1].strip(b'"')
                c.send(line + key.split(b" ", 1)[0] + b" {%d+}\r\n" % len(word) + word + b"\r\n")
                for _ in range(100):
                    resp = c.readline().rstrip(b"\r\n")
                    out.append(resp)
                    if resp.startswith(b"S%d " % n):
                        break
            else:
                out = raw(c, line + key)
            assert out[-1].startswith(b"S%d OK" % n), out
            found = [line for line in out if line.startswith(b"* SEARCH")]
            answers.append(sorted(int(x) for x in found[0].split()[2:]))
        c.logout()
        return answers

    first = await host.in_thread(search_all)
    assert first == [[uids[i - 1] if i <= len(uids) else i for i in want]
                     for _, want in queries]
    assert await host.in_thread(search_all) == first
