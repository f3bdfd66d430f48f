"""QUOTA (RFC 9208) over a real socket, with imaplib and imapclient, on the Maildir store:
GETQUOTAROOT/GETQUOTA report the user's usage and limit, SETQUOTA is refused, and an
APPEND (a whole MULTIAPPEND) or COPY that would cross the limit is ``NO [OVERQUOTA]``
with nothing stored; MOVE within the quota root is let through; EXPUNGE frees room."""

from __future__ import annotations

import imaplib
import os

import imapclient
import pytest_twisted
from zope.interface.verify import verifyObject

from mailhost.store.quota import IQuotaRoot, IQuotaStore
from tests.imap.test_multiappend import Raw
from tests.imap.test_server_harness import imap_host_fixture, make_message  # noqa: F401

LIMIT = 20 * 1024  # octets


def kib(octets: int) -> int:
    """RFC 9208 STORAGE units, rounded up (as Dovecot reports them)."""
    return -(-octets // 1024)


def _limit(limit: int):
    return lambda user: limit if user == "alice@example.test" else 0


@pytest_twisted.ensureDeferred
async def test_getquotaroot_and_getquota_with_imaplib(imap_host):
    host = await imap_host(kind="maildir")
    host.store.set_quota_limits(_limit(LIMIT))
    verifyObject(IQuotaStore, host.store)
    verifyObject(IQuotaRoot, await host.store.open_account("alice@example.test"))
    message = make_message("counted", size=3000)

    def run():
        c = imaplib.IMAP4("127.0.0.1", host.port)
        c.login("alice@example.test", "secret")
        caps = c.capability()[1][0].decode().split()
        assert "QUOTA" in caps and "QUOTA=RES-STORAGE" in caps and "QUOTASET" not in caps
        typ, data = c.getquotaroot("INBOX")
        assert typ == "OK"
        assert data == [[b'INBOX ""'], [b'"" (STORAGE 0 20)']], data
        assert c.append("INBOX", None, None, message)[0] == "OK"
        typ, data = c.getquota('""')
        assert typ == "OK" and data == [b'"" (STORAGE %d 20)' % kib(len(message))], data
        typ, data = c.setquota('""', "(STORAGE 100)")
        assert typ == "NO" and b"[NOPERM]" in data[0]
        typ, data = c.getquota('"other"')
        assert typ == "NO"
        typ, data = c.getquotaroot("Nowhere")
        assert typ == "NO" and b"[NONEXISTENT]" in data[0][0], data
        c.logout()
        # bob has no limit: no quota root at all.
        c = imaplib.IMAP4("127.0.0.1", host.port)
        c.login("bob@example.test", "hunter2")
        typ, data = c.getquotaroot("INBOX")
        assert typ == "OK" and data == [[b"INBOX"], [None]], data
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_append_over_quota_is_overquota(imap_host):
    host = await imap_host(kind="maildir")
    host.store.set_quota_limits(_limit(LIMIT))
    fits = make_message("fits", size=12_000)
    too_much = make_message("too much", size=12_000)

    def run():
        c = imapclient.IMAPClient("127.0.0.1", port=host.port, ssl=False, timeout=10)
        c.login("alice@example.test", "secret")
        c.append("INBOX", fits)
        try:
            c.append("INBOX", too_much)
        except imapclient.exceptions.IMAPClientError as e:
            assert "[OVERQUOTA]" in str(e), e
        else:
            raise AssertionError("APPEND over quota succeeded")
        c.select_folder("INBOX")
        assert c.search("ALL") == [1]
        roots, quotas = c.get_quota_root("INBOX")
        assert quotas[0].resource == "STORAGE" and quotas[0].limit == 20
        assert quotas[0].usage == kib(len(fits))
        # Expunging frees the room again.
        c.delete_messages([1])
        c.expunge()
        assert c.get_quota_root("INBOX")[1][0].usage == 0
        c.append("INBOX", too_much)
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_multiappend_is_checked_as_a_whole(imap_host):
    host = await imap_host(kind="maildir")
    host.store.set_quota_limits(_limit(LIMIT))
    parts = [(b"", make_message(f"part {i}", size=8000)) for i in range(3)]  # 24k > 20k

    def run():
        c = Raw(host.port)
        c.cmd(b"L LOGIN alice@example.test secret")
        got = c.append(b"A", b"INBOX", parts)
        assert got[-1].startswith(b"A NO [OVERQUOTA]"), got
        got = c.append(b"B", b"INBOX", parts[:2])
        assert got[-1].startswith(b"B OK [APPENDUID"), got
        status = b"".join(c.cmd(b"S STATUS INBOX (MESSAGES)"))
        assert b"(MESSAGES 2)" in status

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_copy_over_quota_is_overquota_and_move_is_not(imap_host):
    host = await imap_host(kind="maildir")
    host.store.set_quota_limits(_limit(LIMIT))
    message = make_message("copied", size=8000)

    def run():
        c = imapclient.IMAPClient("127.0.0.1", port=host.port, ssl=False, timeout=10)
        c.login("alice@example.test", "secret")
        c.create_folder("Archive")
        c.append("INBOX", message)
        c.append("INBOX", message)  # 16k of 20k
        c.select_folder("INBOX")
        try:
            c.copy([1], "Archive")
        except imapclient.exceptions.IMAPClientError as e:
            assert "[OVERQUOTA]" in str(e), e
        else:
            raise AssertionError("COPY over quota succeeded")
        c.move([1, 2], "Archive")  # same quota root: frees what it takes
        assert c.folder_status("Archive", ["MESSAGES"])[b"MESSAGES"] == 2
        usage = c.get_quota_root("INBOX")[1][0].usage
        assert usage == kib(2 * len(message))
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_usage_is_kept_in_maildirsize(imap_host):
    """The running count is Maildir++'s maildirsize: limits line, then change lines."""
    host = await imap_host(kind="maildir")
    host.store.set_quota_limits(_limit(LIMIT))
    message = make_message("counted", size=5000)

    def run():
        c = imapclient.IMAPClient("127.0.0.1", port=host.port, ssl=False, timeout=10)
        c.login("alice@example.test", "secret")
        c.get_quota_root("INBOX")  # the first look writes the file
        c.append("INBOX", message)
        c.append("INBOX", message)
        c.logout()

    await host.in_thread(run)
    path = os.path.join(host.store.root, "example.test", "alice", "maildirsize")
    with open(path) as f:
        lines = f.read().splitlines()
    assert lines == [f"{LIMIT}S", "0 0", f"{len(message)} 1", f"{len(message)} 1"]


@pytest_twisted.ensureDeferred
async def test_status_deleted_and_deleted_storage(imap_host):
    """RFC 9208 4.2: what an EXPUNGE would free, before it is done."""
    host = await imap_host(kind="maildir")
    small, big = make_message("small", size=1000), make_message("big", size=5000)

    def run():
        c = Raw(host.port)
        c.cmd(b"L LOGIN alice@example.test secret")
        for n, m in enumerate((small, big, small)):
            assert c.append(b"A%d" % n, b"INBOX", [(b"", m)])[-1].startswith(b"A%d OK" % n)
        c.cmd(b"S SELECT INBOX")
        c.cmd(b"F STORE 2:3 +FLAGS (\\Deleted)")
        got = b"".join(c.cmd(b"T STATUS INBOX (DELETED DELETED-STORAGE MESSAGES)"))
        assert b"(DELETED 2 DELETED-STORAGE %d MESSAGES 3)" % (len(big) + len(small)) in got, got

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_append_without_a_limit_reads_no_maildirsize(imap_host, monkeypatch):
    """Under bench/imap_load.py every APPEND read ``maildirsize`` in the thread pool
    (its usage) though the user had no limit to check it against."""
    from mailhost.store._maildir import maildirsize

    host = await imap_host(kind="maildir")
    host.store.set_quota_limits(_limit(LIMIT))  # bob has none
    reads = []
    real = maildirsize.current
    monkeypatch.setattr(maildirsize, "current", lambda *a: reads.append(a) or real(*a))

    def run(user, password):
        c = imaplib.IMAP4("127.0.0.1", host.port)
        c.login(user, password)
        for n in range(3):
            assert c.append("INBOX", None, None, make_message(f"m{n}"))[0] == "OK"
        c.logout()

    await host.in_thread(run, "bob@example.test", "hunter2")
    assert reads == []
    await host.in_thread(run, "alice@example.test", "secret")
    assert len(reads) == 3  # a user with a limit is still checked on every APPEND
