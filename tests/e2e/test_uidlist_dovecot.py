"""mailhost and Dovecot number the same Maildir the same way (dovecot-uidlist).

Runs Debian's Dovecot (the ``Dovecot`` helper of test_imap_dovecot: ``dovecot -F`` on
a loopback port, as ``nobody``, over a copy of the Maildir): what mailhost wrote,
Dovecot shows with the same UIDVALIDITY, UIDs and UIDNEXT; what Dovecot wrote (its
APPENDs, records appended to our file, files it created itself), mailhost reads with
Dovecot's UIDs; and Dovecot waits for our dotlock.
"""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import threads

from mailhost.store._maildir.dotlock import DotLock
from mailhost.store._maildir.dovecot_uidlist import UIDLIST_FILE, UidList
from mailhost.store.interfaces import DeliveryTarget
from mailhost.store.maildir import MaildirStore
from tests.e2e.test_imap_dovecot import Dovecot

A = "alice@example.test"
PW = "secret"


def need_dovecot() -> None:
    if shutil.which("dovecot") is None:
        pytest.fail("dovecot is not installed (CI: apt-get install -y dovecot-imapd)")


def msg(n: int) -> bytes:
    return b"From: a@example.test\r\nMessage-ID: <u%d@test>\r\nSubject: %d\r\n\r\nbody\r\n" % (
        n, n)


def dovecot_view(c: imaplib.IMAP4, folder: str = "INBOX") -> tuple[int, int, dict]:
    """(UIDVALIDITY, UIDNEXT, Message-ID -> UID) as a Dovecot session sees them."""
    typ, data = c.select(folder)
    assert typ == "OK", data
    validity = int(c.untagged_responses["UIDVALIDITY"][-1])
    uid_next = int(c.untagged_responses["UIDNEXT"][-1])
    typ, data = c.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    uids = {}
    for item in data:
        if isinstance(item, tuple):
            uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
            uids[item[1].split(b":", 1)[1].strip()] = uid
    return validity, uid_next, uids


def our_view(box) -> tuple[int, int, dict]:
    out = {}
    for info in box.messages():
        path = os.path.join(box._path, box._index.relpath_at(box._index.pos(info.uid)))
        with open(path, "rb") as f:
            out[re.search(rb"Message-ID: (\S+)", f.read()).group(1)] = info.uid
    return box.uid_validity, box.uid_next, out


async def deliver(store, n: int) -> int:
    w = store.new_message()
    w.write(msg(n))
    [uid] = await w.commit([DeliveryTarget(A)])
    return uid


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_dovecot_shows_our_uids_and_we_show_dovecots(tmp_path):
    need_dovecot()
    root = str(tmp_path / "mail")
    store = MaildirStore(root)
    for n in range(1, 6):
        await deliver(store, n)
    box = await (await store.open_account(A)).open_folder("INBOX")
    await box.set_flags([2, 5], ["\\Deleted"], "add")
    await box.expunge()  # a gap, and the last UID gone: UIDNEXT must stay 6
    for n in (6, 7):
        await deliver(store, n)
    ours = our_view(box)
    assert ours[1] == 8 and sorted(ours[2].values()) == [1, 3, 4, 6, 7]
    await store.close()
    dv = Dovecot(root, {A: PW})
    back = str(tmp_path / "back")

    def theirs():
        dv.start()
        try:
            c = imaplib.IMAP4("127.0.0.1", dv.port, timeout=10)
            c.login(A, PW)
            seen = dovecot_view(c)
            # Dovecot numbers what it saves in our file: records appended to it.
            c.append("INBOX", None, None, msg(8))
            c.append("INBOX", "(\\Seen)", None, msg(9))
            c.select("INBOX")
            c.uid("STORE", "9", "+FLAGS", "(\\Deleted)")
            c.expunge()
            after = dovecot_view(c)
            c.logout()
            dv.proc.terminate()
            dv.proc.wait(10)
            shutil.copytree(dv.mail_root, back, symlinks=True)
            return seen, after
        finally:
            dv.stop()

    seen, after = await threads.deferToThread(theirs)
    assert seen == ours  # same UIDVALIDITY, UIDNEXT and UID for every message
    assert after[0] == ours[0] and after[2][b"<u8@test>"] == 8 and after[1] == 10
    assert b"<u9@test>" not in after[2]
    mine = await (await MaildirStore(back).open_account(A)).open_folder("INBOX")
    assert our_view(mine) == after  # Dovecot's UIDs, and UIDNEXT past its expunge
    ul = UidList(os.path.join(home(back), UIDLIST_FILE))
    assert ul.refresh() and ul.validity == ours[0]


def home(root: str) -> str:
    return os.path.join(root, "example.test", "alice")


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_we_read_a_uidlist_dovecot_created(tmp_path):
    """A folder only Dovecot ever numbered: its own v3 file, read with its UIDs."""
    need_dovecot()
    seed = str(tmp_path / "seed")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(home(seed), sub))
    dv = Dovecot(seed, {A: PW})
    copy = str(tmp_path / "copy")

    def theirs():
        dv.start()
        try:
            c = imaplib.IMAP4("127.0.0.1", dv.port, timeout=10)
            c.login(A, PW)
            for n in range(1, 5):
                c.append("INBOX", "(\\Flagged)" if n == 2 else None, None, msg(n))
            c.select("INBOX")
            c.uid("STORE", "1", "+FLAGS", "(\\Deleted)")
            c.expunge()
            view = dovecot_view(c)
            c.logout()
            dv.proc.terminate()
            dv.proc.wait(10)
            shutil.copytree(dv.mail_root, copy, symlinks=True)
            return view
        finally:
            dv.stop()

    view = await threads.deferToThread(theirs)
    with open(os.path.join(home(copy), UIDLIST_FILE)) as f:
        text = f.read()
    assert re.match(r"3 V\d+ N\d+ G[0-9a-f]{32}\n", text)  # what Dovecot 2.3 writes
    box = await (await MaildirStore(copy).open_account(A)).open_folder("INBOX")
    assert our_view(box) == view
    assert box.get(view[2][b"<u2@test>"]).flags == {"\\Flagged"}


@pytest.mark.slow
def test_dovecot_waits_for_our_lock(tmp_path):
    """While we hold dovecot-uidlist.lock, Dovecot's APPEND (which must give a UID)
    waits; it goes on once we let go."""
    need_dovecot()
    root = str(tmp_path / "mail")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(home(root), sub))
    dv = Dovecot(root, {A: PW}).start()
    try:
        c = imaplib.IMAP4("127.0.0.1", dv.port, timeout=30)
        c.login(A, PW)
        c.append("INBOX", None, None, msg(1))  # Dovecot creates its uidlist
        lock = DotLock(os.path.join(home(dv.mail_root), UIDLIST_FILE))
        lock.acquire()
        released = []

        def let_go():
            time.sleep(2)
            released.append(time.monotonic())
            lock.release()

        t = threading.Thread(target=let_go)
        t.start()
        typ, data = c.append("INBOX", None, None, msg(2))
        done = time.monotonic()
        t.join()
        assert typ == "OK" and b"APPENDUID" in data[0]
        assert done >= released[0]  # not before we released the lock
        c.logout()
    finally:
        dv.stop()
