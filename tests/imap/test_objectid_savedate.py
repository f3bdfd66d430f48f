"""OBJECTID (RFC 8474) and SAVEDATE (RFC 8514) over a real socket, after the RFCs'
examples: MAILBOXID on CREATE, SELECT and STATUS and across RENAME and a restart;
EMAILID/THREADID in FETCH and SEARCH; FETCH SAVEDATE and SEARCH SAVEDBEFORE/SAVEDON/
SAVEDSINCE/SAVEDATESUPPORTED; and the ids and dates Dovecot shows for the same Maildir."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import time

import pytest_twisted
from imapclient import IMAPClient

from mailhost.imap.encoding import format_datetime
from mailhost.store.interfaces import DeliveryTarget
from mailhost.store.maildir import MaildirStore
from mailhost.store.objectid import is_objectid
from tests.dovecot_process import Dovecot, mail_user, world_dir
from tests.imap.test_server_harness import imap_host_fixture, raw  # noqa: F401

MSG = b"From: a@example.test\r\nSubject: one\r\n\r\nbody\r\n"
ID = re.compile(rb"\[MAILBOXID \(([A-Za-z0-9_-]+)\)\]")


def _day(ts: float) -> bytes:
    d = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return d.strftime("%d-%b-%Y").encode()


def _mailbox_ids(c) -> dict[bytes, bytes]:
    """The RFC 8474 section 4 example, step by step; returns name -> id."""
    ids = {}
    for tag, name in ((b"3", b"foo"), (b"4", b"bar")):
        out = raw(c, tag + b" CREATE " + name)
        m = ID.search(out[-1])
        assert out[-1].startswith(tag + b" OK [MAILBOXID (") and m, out
        ids[name] = m.group(1)
    assert ids[b"foo"] != ids[b"bar"]
    out = raw(c, b"5 STATUS foo (MAILBOXID)")
    assert out[0] == b"* STATUS foo (MAILBOXID (" + ids[b"foo"] + b"))", out
    out = raw(c, b"6 RENAME foo renamed")
    assert out[-1].startswith(b"6 OK"), out
    out = raw(c, b"7 STATUS renamed (MAILBOXID UIDNEXT)")
    assert out[0] == b"* STATUS renamed (MAILBOXID (" + ids[b"foo"] + b") UIDNEXT 1)", out
    assert raw(c, b"8 STATUS foo (MAILBOXID)")[-1].startswith(b"8 NO")
    out = raw(c, b"9 SELECT renamed")
    assert b"* OK [MAILBOXID (" + ids[b"foo"] + b")] Ok" in out, out
    return ids


@pytest_twisted.ensureDeferred
async def test_objectid_rfc8474_examples(imap_host):
    host = await imap_host(kind="maildir")
    for _ in range(2):
        await host.deliver(MSG)

    def run():
        c = host.client()
        caps = raw(c, b"C CAPABILITY")[0].split()
        assert b"OBJECTID" in caps and b"SAVEDATE" in caps
        ids = _mailbox_ids(c)
        out = raw(c, b"S SELECT INBOX")
        inbox_id = ID.search(b"\n".join(out)).group(1)
        assert inbox_id not in ids.values() and is_objectid(inbox_id.decode())
        out = raw(c, b"F FETCH 1:2 (EMAILID THREADID)")
        got = [re.match(rb"\* (\d) FETCH \(EMAILID \(([A-Za-z0-9_-]+)\) THREADID NIL\)", ln)
               for ln in out[:2]]
        assert all(got) and out[2].startswith(b"F OK"), out
        e1, e2 = got[0].group(2), got[1].group(2)
        assert e1 != e2 and is_objectid(e1.decode()) and e1[:1].isalpha()
        # SEARCH EMAILID / THREADID (RFC 8474 6)
        assert raw(c, b"S1 UID SEARCH EMAILID " + e2)[0] == b"* SEARCH 2"
        assert raw(c, b"S2 SEARCH EMAILID Mnothing")[0] == b"* SEARCH"
        assert raw(c, b"S3 SEARCH THREADID T1")[0] == b"* SEARCH"
        assert raw(c, b"S4 SEARCH NOT THREADID T1")[0] == b"* SEARCH 1 2"
        # EMAILID is immutable: a flag change, MOVE and COPY keep it (RFC 8474 5.1).
        raw(c, b"T STORE 1 +FLAGS (\\Seen)")
        assert raw(c, b"F2 FETCH 1 EMAILID")[0] == b"* 1 FETCH (EMAILID (" + e1 + b"))"
        assert raw(c, b"M UID MOVE 2 renamed")[-1].startswith(b"M OK")
        raw(c, b"S5 SELECT renamed")
        assert raw(c, b"F3 FETCH 1 EMAILID")[0] == b"* 1 FETCH (EMAILID (" + e2 + b"))"
        assert raw(c, b"S6 SEARCH EMAILID " + e2)[0] == b"* SEARCH 1"
        # Syntax errors are BAD.
        assert raw(c, b"B1 SEARCH EMAILID")[-1].startswith(b"B1 BAD")
        assert raw(c, b"B2 STATUS renamed (MAILBOXID")[-1].startswith(b"B2 BAD")
        c.logout()
        return ids, inbox_id, e1

    ids, inbox_id, e1 = await host.in_thread(run)
    # The same ids from a fresh store on the same Maildir (a restart).
    await host.store.close()
    again = await imap_host(store=MaildirStore(host.store.root, fsync=False))

    def after_restart():
        c = again.client()
        assert raw(c, b"A STATUS renamed (MAILBOXID)")[0] == \
            b"* STATUS renamed (MAILBOXID (" + ids[b"foo"] + b"))"
        out = raw(c, b"B EXAMINE INBOX")
        assert b"* OK [MAILBOXID (" + inbox_id + b")] Ok" in out, out
        assert raw(c, b"C FETCH 1 EMAILID")[0] == b"* 1 FETCH (EMAILID (" + e1 + b"))"
        c.logout()

    await again.in_thread(after_restart)


@pytest_twisted.ensureDeferred
async def test_savedate_rfc8514(imap_host):
    host = await imap_host()
    await host.deliver(MSG)
    old = time.mktime((2001, 2, 3, 4, 5, 6, 0, 0, 0))
    writer = host.store.new_message()
    writer.write(MSG)
    await writer.commit([DeliveryTarget("alice@example.test", "INBOX", internal_date=old)])

    def run():
        c = host.client()
        raw(c, b"S SELECT INBOX")
        out = raw(c, b"F FETCH 1:2 (SAVEDATE INTERNALDATE)")
        dates = [re.search(rb'SAVEDATE ("[^"]+")', ln).group(1) for ln in out[:2]]
        now = time.time()
        # The save date is when it was stored, whatever its INTERNALDATE says.
        assert abs(time.mktime(time.strptime(dates[1].decode()[1:21], "%d-%b-%Y %H:%M:%S"))
                   - time.mktime(time.gmtime(now))) < 60, dates
        assert format_datetime(old) in out[1]
        today = _day(now)
        tomorrow = _day(now + 86400)
        assert raw(c, b"A SEARCH SAVEDON " + today)[0] in (b"* SEARCH 1 2",)
        assert raw(c, b"B SEARCH SAVEDSINCE " + today)[0] == b"* SEARCH 1 2"
        assert raw(c, b"C SEARCH SAVEDBEFORE " + today)[0] == b"* SEARCH"
        assert raw(c, b"D SEARCH SAVEDBEFORE " + tomorrow)[0] == b"* SEARCH 1 2"
        assert raw(c, b"E SEARCH SAVEDSINCE " + tomorrow)[0] == b"* SEARCH"
        # SAVEDATESUPPORTED: every message, since the mailbox keeps save dates.
        assert raw(c, b"G SEARCH SAVEDATESUPPORTED")[0] == b"* SEARCH 1 2"
        assert raw(c, b"H SEARCH OR SAVEDBEFORE 1-Jan-2000 UID 2")[0] == b"* SEARCH 2"
        assert raw(c, b"I SEARCH BEFORE 1-Jan-2002 SAVEDSINCE " + today)[0] == b"* SEARCH 2"
        # A flag change does not move it (Maildir renames the file).
        raw(c, b"T STORE 1:2 +FLAGS (\\Flagged)")
        again = raw(c, b"F2 FETCH 1:2 SAVEDATE")
        assert [re.search(rb'SAVEDATE ("[^"]+")', ln).group(1) for ln in again[:2]] == dates
        assert raw(c, b"B1 SEARCH SAVEDON 31-Feb-2020")[-1].startswith(b"B1 BAD")
        c.logout()
        with IMAPClient("127.0.0.1", port=host.port, ssl=False, timeout=10) as ic:
            ic.login("alice@example.test", "secret")
            ic.select_folder("INBOX")
            assert set(ic.search(["SAVEDSINCE", datetime.date.fromtimestamp(now - 86400)])) \
                == {1, 2}

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_dovecot_shows_the_same_mailbox_guid_and_save_date():
    """Dovecot 2.3 has no OBJECTID, but ``doveadm`` shows a folder's GUID and a message's
    save date: on the same Maildir, they are ours."""
    user = mail_user()
    world = world_dir("mailhost-objectid-")
    root = os.path.join(world, "mail")
    store = MaildirStore(root, fsync=True)
    w = store.new_message()
    w.write(MSG)
    await w.commit([DeliveryTarget("alice@example.test")])
    box = await (await store.open_account("alice@example.test")).open_folder("INBOX")
    ours_id = box.mailbox_id
    await store.close()
    subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", root], check=True)
    dv = Dovecot(root, {"alice@example.test": "secret"}, share=True).start()
    try:
        r = dv.doveadm("mailbox", "status", "-u", "alice@example.test", "guid", "INBOX")
        assert r.returncode == 0, r.stderr
        assert f"guid={ours_id}" in r.stdout.split(), r.stdout
        r = dv.doveadm("-f", "flow", "fetch", "-u", "alice@example.test", "date.saved.unixtime",
                       "mailbox", "INBOX", "uid", "1")
        assert r.returncode == 0, r.stderr
        # Read ours only now: the chown above moved every file's ctime, which is the save
        # date both servers read (a save date read before it was a second off sometimes).
        store = MaildirStore(root, fsync=True)
        box = await (await store.open_account("alice@example.test")).open_folder("INBOX")
        ours_saved = (await box.save_dates([1]))[1]
        await store.close()
        assert r.stdout.split() == [f"date.saved.unixtime={int(ours_saved)}"], r.stdout
    finally:
        dv.stop()
        subprocess.run(["rm", "-rf", world], check=True)
