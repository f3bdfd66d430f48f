"""Dovecot reads the Maildir our IMAP server wrote: same messages, flags, keywords.

``Dovecot`` (tests/dovecot_process.py, re-exported here for older importers) is a
throwaway ``dovecot -F`` on a free loopback port, here over a copy of the Maildir.
"""

from __future__ import annotations

import imaplib
import shutil

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.dovecot_process import Dovecot
from tests.imap.test_server_harness import imap_host_fixture, make_message  # noqa: F401


def _snapshot(c: imaplib.IMAP4, folder: str) -> list[tuple[bytes, frozenset[bytes]]]:
    """(Message-ID, flags without \\Recent) for every message, in order."""
    typ, data = c.select(folder, readonly=True)
    assert typ == "OK", (folder, data)
    if data == [b"0"]:
        return []
    typ, data = c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    out = []
    for item in data:
        if not isinstance(item, tuple):
            continue
        head, body = item
        flags = head.split(b"FLAGS (", 1)[1].split(b")", 1)[0].split()
        out.append((body.strip().split(b":", 1)[1].strip(),
                    frozenset(f for f in flags if f != b"\\Recent")))
    return out


@pytest_twisted.ensureDeferred
async def test_dovecot_reads_what_we_wrote(imap_host, tmp_path):
    if shutil.which("dovecot") is None:
        pytest.fail("dovecot is not installed (CI: apt-get install -y dovecot-imapd)")
    host = await imap_host(kind="maildir")
    for i in range(4):
        await host.deliver(make_message(f"dv {i}"))

    def ours():
        c = host.client()
        c.create("Work.Sub")
        c.select("INBOX")
        c.store("1", "+FLAGS", "(\\Seen $Label1)")
        c.store("2", "+FLAGS", "(\\Flagged \\Answered project)")
        c.store("3", "+FLAGS", "(\\Deleted)")
        c.expunge()
        c.append("Work.Sub", "(\\Seen \\Draft)", None, make_message("in sub"))
        c.copy("1", "Work")
        snap = {f: _snapshot(c, f) for f in ("INBOX", "Work", "Work.Sub")}
        c.logout()
        return snap

    expected = await threads.deferToThread(ours)
    assert len(expected["INBOX"]) == 3
    await host.store.close()
    dv = Dovecot(str(tmp_path / "mail"), {"alice@example.test": "secret"})

    def theirs():
        dv.start()
        try:
            c = imaplib.IMAP4("127.0.0.1", dv.port, timeout=10)
            c.login("alice@example.test", "secret")
            names = b" ".join(c.list()[1])
            assert b"Work.Sub" in names and b"Sent" in names
            snap = {f: _snapshot(c, f) for f in ("INBOX", "Work", "Work.Sub")}
            c.logout()
            return snap
        finally:
            dv.stop()

    got = await threads.deferToThread(theirs)
    assert got == expected
