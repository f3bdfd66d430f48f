"""MaildirStore and Dovecot read each other's Maildir (both directions).

Dovecot is the real reference reader/writer of Maildir++: our sizes (S=/W=),
INTERNALDATE (mtime), flags and dovecot-keywords must mean the same to it, and a
Maildir Dovecot wrote (LF on disk, its own names and keywords) must read back
through our store CRLF-exact. Uses the throwaway Dovecot of tests/e2e.
"""

from __future__ import annotations

import imaplib
import os
import re
import shutil

import pytest
import pytest_twisted
from twisted.internet import threads

from mailhost.store.interfaces import DeliveryTarget
from mailhost.store.maildir import MaildirStore
from tests.e2e.test_imap_dovecot import Dovecot

A = "alice@example.test"
PW = "secret"


def need_dovecot() -> None:
    if shutil.which("dovecot") is None:
        pytest.fail("dovecot is not installed (CI: apt-get install -y dovecot-imapd)")


def fetch_all(c: imaplib.IMAP4, folder: str) -> dict[bytes, tuple[int, set[bytes], bytes]]:
    """Message-ID -> (RFC822.SIZE, flags without \\Recent, INTERNALDATE)."""
    typ, data = c.select(folder, readonly=True)
    assert typ == "OK", data
    typ, data = c.fetch("1:*", "(RFC822.SIZE FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS "
                               "(MESSAGE-ID)])")
    out = {}
    for item in data:
        if not isinstance(item, tuple):
            continue
        head, body = item
        size = int(re.search(rb"RFC822\.SIZE (\d+)", head).group(1))
        flags = set(re.search(rb"FLAGS \(([^)]*)\)", head).group(1).split()) - {b"\\Recent"}
        date = re.search(rb'INTERNALDATE "([^"]+)"', head).group(1)
        out[body.split(b":", 1)[1].strip()] = (size, flags, date)
    return out


def msg(n: int, lf: bool = False) -> bytes:
    data = (b"From: a@example.test\r\nMessage-ID: <m%d@test>\r\nSubject: %d\r\n\r\n"
            b"line one\r\n.dot line\r\n" % (n, n))
    return data.replace(b"\r\n", b"\n") if lf else data


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_dovecot_reads_our_store(tmp_path):
    need_dovecot()
    root = str(tmp_path / "mail")
    store = MaildirStore(root)
    w = store.new_message()
    w.write(msg(1, lf=True))
    await w.commit([DeliveryTarget(A, internal_date=1_700_000_000)])
    w = store.new_message()
    w.write(msg(2))
    await w.commit([DeliveryTarget(A, flags=frozenset({"\\Seen", "$Label1", "project"}))])
    account = await store.open_account(A)
    await account.create_folder("Work.Sub")
    await account.create_folder("Entw\u00fcrfe.R&D")
    w = store.new_message()
    w.write(msg(4))
    await w.commit([DeliveryTarget(A, folder="Entw\u00fcrfe.R&D")])
    box = await account.open_folder("INBOX")
    await box.claim_recent()
    await box.set_flags([1], ["\\Answered", "later"], "add")
    sizes = {i.uid: i.size for i in box.messages()}
    await store.close()
    dv = Dovecot(root, {A: PW})

    def theirs():
        dv.start()
        try:
            c = imaplib.IMAP4("127.0.0.1", dv.port, timeout=10)
            c.login(A, PW)
            names = b" ".join(c.list()[1])
            got = fetch_all(c, "INBOX")
            got.update(fetch_all(c, '"Entw&APw-rfe.R&-D"'))
            c.logout()
            return names, got
        finally:
            dv.stop()

    names, got = await threads.deferToThread(theirs)
    assert b"Work.Sub" in names and b"Sent" in names
    # Folder directories are spelt in modified UTF-7, as Dovecot spells them.
    assert b"Entw&APw-rfe.R&-D" in names
    assert b"<m4@test>" in got
    assert got[b"<m1@test>"][0] == sizes[1]
    assert got[b"<m1@test>"][1] == {b"\\Answered", b"later"}
    assert got[b"<m1@test>"][2].startswith(b"14-Nov-2023")
    assert got[b"<m2@test>"][0] == sizes[2]
    assert got[b"<m2@test>"][1] == {b"\\Seen", b"$Label1", b"project"}


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_our_store_reads_dovecots_maildir(tmp_path):
    need_dovecot()
    seed = str(tmp_path / "seed")
    os.makedirs(os.path.join(seed, "example.test", "alice", "cur"))
    dv = Dovecot(seed, {A: PW})
    copy = str(tmp_path / "mail")

    def theirs():
        dv.start()
        try:
            c = imaplib.IMAP4("127.0.0.1", dv.port, timeout=10)
            c.login(A, PW)
            c.create("Lists")
            c.create('"&ZeVnLIqe-"')  # Japanese, in modified UTF-7 on the wire
            c.append('"&ZeVnLIqe-"', None, None, msg(4))
            c.append("INBOX", "(\\Seen $Forwarded)", '"01-Feb-2024 10:00:00 +0000"', msg(1))
            c.append("INBOX", None, None, msg(2))
            c.append("Lists", "(\\Flagged)", None, msg(3))
            c.select("INBOX")
            c.store("2", "+FLAGS", "(todo)")
            got = {**fetch_all(c, "INBOX"), **fetch_all(c, "Lists"),
                   **fetch_all(c, '"&ZeVnLIqe-"')}
            c.logout()
            dv.proc.terminate()
            dv.proc.wait(10)
            shutil.copytree(dv.mail_root, copy, symlinks=True)
            return got
        finally:
            dv.stop()

    got = await threads.deferToThread(theirs)
    store = MaildirStore(copy)
    account = await store.open_account(A)
    assert {"Lists", "\u65e5\u672c\u8a9e"} <= set(await account.list_folders())
    mine = {}
    for name in ("INBOX", "Lists", "\u65e5\u672c\u8a9e"):
        folder = await account.open_folder(name)
        for info in folder.messages():
            f = await folder.open_message(info.uid)
            data = f.read()
            f.close()
            assert len(data) == info.size  # Dovecot stored LF; we serve CRLF, exactly
            mid = re.search(rb"Message-ID: (\S+)", data).group(1)
            mine[mid] = (info, data)
    assert set(mine) == set(got)
    for n in (1, 2, 3, 4):
        info, data = mine[b"<m%d@test>" % n]
        size, flags, _ = got[b"<m%d@test>" % n]
        assert data == msg(n)
        assert info.size == size
        assert {f.encode() for f in info.flags} == flags
