"""SORT, THREAD and ESEARCH answers compared with Dovecot's on the same Maildir.

Messages with every feature the RFC 5256 rules look at (Re:/Fwd:/[blob]/(fwd)
subjects, encoded words, display names, missing and unparsable dates, missing and
duplicate Message-IDs, References with missing, looping and truncated chains) go into
a Maildir through our store; both servers answer the same commands over a socket.
"""

from __future__ import annotations

import imaplib
import shutil

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.dovecot_process import Dovecot
from tests.imap.test_server_harness import imap_host_fixture, raw  # noqa: F401
from tests.imap.test_server_sort_thread import msg

_D = "Sun, 01 Nov 2026 {:02d}:{:02d}:00 {}"


def _corpus() -> list[bytes]:
    out = []
    subjects = ["hello", "Re: hello", "RE: Re: hello", "Fwd: hello", "[list] hello",
                "hello (fwd)", "[fwd: hello]", "Re: [list] other", "other", "[list]",
                "=?utf-8?q?=C3=A9t=C3=A9?=", "Re: =?utf-8?q?=C3=89T=C3=89?=", "", "zebra",
                "Apple", "apple pie", "Re: apple pie"]
    froms = ["Zed <zed@example.test>", "amy@example.test", '"Bob, Jr." <bob@example.test>',
             "=?utf-8?q?=C3=89mile?= <emile@example.test>", "carl@EXAMPLE.test",
             "undisclosed-recipients:;", "<noname@example.test>"]
    for i in range(34):
        subject = subjects[i % len(subjects)]
        frm = froms[i % len(froms)]
        to = froms[(i * 3 + 1) % len(froms)]
        cc = froms[(i * 5 + 2) % len(froms)] if i % 3 else None
        zone = ["+0000", "-0500", "+0930"][i % 3]
        date = _D.format((i * 7) % 24, (i * 13) % 60, zone) if i % 9 != 4 else "garbage"
        mid = f"m{i}@x" if i % 11 != 5 else None
        if i in (20, 21):
            mid = "dup@x"
        refs = None
        if i % 4 == 1:
            refs = f"<m{i - 1}@x>"
        elif i % 4 == 2:
            refs = f"<m{i - 2}@x> <gone{i}@x> <m{i - 1}@x>"
        elif i % 4 == 3 and i > 10:
            refs = f"<nothere{i % 2}@x>"
        if i == 30:
            refs = "<m31@x>"  # 31 refers back to 30: a loop
        if i == 31:
            refs = "<m30@x>"
        out.append(msg(subject, frm=frm, to=to, cc=cc, date=date, mid=mid, refs=refs,
                       body="x" * (i * 37 % 200)))
    return out


COMMANDS = [
    b"SORT (ARRIVAL) UTF-8 ALL", b"SORT (SIZE) UTF-8 ALL", b"SORT (REVERSE SIZE) UTF-8 ALL",
    b"SORT (DATE) UTF-8 ALL", b"SORT (REVERSE DATE) UTF-8 ALL", b"SORT (SUBJECT) UTF-8 ALL",
    b"SORT (SUBJECT DATE) UTF-8 ALL", b"SORT (FROM) UTF-8 ALL", b"SORT (TO) UTF-8 ALL",
    b"SORT (CC) UTF-8 ALL", b"SORT (DISPLAYFROM) UTF-8 ALL", b"SORT (DISPLAYTO) UTF-8 ALL",
    b"SORT (REVERSE ARRIVAL) UTF-8 SUBJECT hello", b"UID SORT (SUBJECT) UTF-8 FROM example",
    b"THREAD ORDEREDSUBJECT UTF-8 ALL", b"THREAD REFERENCES UTF-8 ALL",
    b"UID THREAD REFERENCES UTF-8 NOT SUBJECT apple",
    b"SEARCH RETURN (MIN MAX COUNT ALL) SUBJECT hello",
    b"UID SEARCH RETURN (COUNT) FROM example", b"SEARCH RETURN (ALL) SENTBEFORE 1-Nov-2026",
    b"SORT RETURN (MIN MAX COUNT) (DATE) UTF-8 ALL",
]


def _answers(c: imaplib.IMAP4) -> dict[bytes, list[bytes]]:
    c.select("INBOX")
    out = {}
    for n, command in enumerate(COMMANDS):
        tag = b"Q%d" % n
        lines = raw(c, tag + b" " + command, tag)
        assert lines[-1].startswith(tag + b" OK"), (command, lines)
        out[command] = [line.replace(b'"' + tag + b'"', b'"T"') for line in lines[:-1]
                        if line.startswith((b"* SORT", b"* THREAD", b"* ESEARCH",
                                            b"* SEARCH"))]
    return out


@pytest_twisted.ensureDeferred
async def test_sort_thread_and_esearch_match_dovecot(imap_host, tmp_path):
    if shutil.which("dovecot") is None:
        pytest.fail("dovecot is not installed (CI: apt-get install -y dovecot-imapd)")
    host = await imap_host(kind="maildir")
    for data in _corpus():
        await host.deliver(data)

    def ours():
        c = host.client()
        try:
            return _answers(c)
        finally:
            c.logout()

    expected = await threads.deferToThread(ours)
    await host.store.close()
    dv = Dovecot(str(tmp_path / "mail"), {"alice@example.test": "secret"})

    def theirs():
        dv.start()
        try:
            c = imaplib.IMAP4("127.0.0.1", dv.port, timeout=10)
            c.login("alice@example.test", "secret")
            try:
                return _answers(c)
            finally:
                c.logout()
        finally:
            dv.stop()

    got = await threads.deferToThread(theirs)
    differ = {k: (expected[k], got[k]) for k in COMMANDS if expected[k] != got[k]}
    assert not differ, "\n".join(f"{k!r}:\n  ours   {v[0]!r}\n  dovecot {v[1]!r}"
                                 for k, v in differ.items())
