"""Every IMAP4rev1 command and extension, driven by Python's imaplib over a real socket."""

from __future__ import annotations

import base64
import imaplib
import re

import pytest_twisted

from tests.imap.test_server_harness import ALICE, imap_host_fixture, make_message, raw  # noqa: F401


def _untagged(c: imaplib.IMAP4, name: str) -> list:
    return c.untagged_responses.pop(name, [])


@pytest_twisted.ensureDeferred
async def test_greeting_capability_and_states(imap_host):
    host = await imap_host()

    def run():
        c = host.client(login=False)
        assert c.welcome.startswith(b"* OK [CAPABILITY IMAP4rev1")
        caps = set(c.capabilities)
        for cap in ("IMAP4REV1", "LITERAL+", "SASL-IR", "IDLE", "NAMESPACE", "UIDPLUS", "MOVE",
                    "UNSELECT", "CHILDREN", "ID", "ENABLE", "SPECIAL-USE", "AUTH=PLAIN"):
            assert cap in caps, cap
        assert "STARTTLS" not in caps  # no TLS configured
        # Wrong state: SELECT before login is BAD.
        assert raw(c, b"S1 SELECT INBOX")[-1].startswith(b"S1 BAD")
        assert c.noop()[0] == "OK"
        try:
            c.login("alice@example.test", "wrong")
        except imaplib.IMAP4.error as e:
            assert "AUTHENTICATIONFAILED" in str(e)
        typ, data = c.login(*ALICE)
        assert typ == "OK" and b"CAPABILITY" in data[0]
        # LOGIN again once authenticated: BAD (wrong state).
        assert raw(c, b"L2 LOGIN a b")[-1].startswith(b"L2 BAD")
        typ, data = c.xatom("ID", '("name" "imaplib")')
        assert typ == "OK"
        assert b"mailhost" in _untagged(c, "ID")[0]
        typ, data = c.xatom("ENABLE", "CONDSTORE")
        assert typ == "OK"
        typ, data = c.namespace()
        assert data[0] == b'(("" ".")) NIL NIL'
        assert c.logout()[0] == "BYE"

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_logindisabled_without_tls(imap_host):
    host = await imap_host(allow_plaintext="no")

    def run():
        c = host.client(login=False)
        assert "LOGINDISABLED" in c.capabilities
        assert "AUTH=PLAIN" not in c.capabilities
        typ, data = c._simple_command("LOGIN", "alice@example.test", "secret")
        assert typ == "NO" and b"PRIVACYREQUIRED" in data[0]
        typ, data = c._simple_command("AUTHENTICATE", "PLAIN", "AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=")
        assert typ == "NO" and b"PRIVACYREQUIRED" in data[0]
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_authenticate_plain_continuation_sasl_ir_and_cancel(imap_host):
    host = await imap_host()
    blob = b"\0alice@example.test\0secret"

    def run():
        c = host.client(login=False)
        assert c.authenticate("PLAIN", lambda _: blob)[0] == "OK"
        c.logout()
        # SASL-IR: the initial response on the command line.
        c = host.client(login=False)
        typ, data = c._simple_command("AUTHENTICATE", "PLAIN", base64.b64encode(blob).decode())
        assert typ == "OK"
        c.logout()
        # "*" cancels: tagged BAD.
        c = host.client(login=False)
        c.send(b"A1 AUTHENTICATE PLAIN\r\n")
        assert c.readline().startswith(b"+")
        c.send(b"*\r\n")
        assert c.readline().startswith(b"A1 BAD")
        c.send(b"A2 AUTHENTICATE PLAIN " + base64.b64encode(b"\0alice@example.test\0no") + b"\r\n")
        assert c.readline().startswith(b"A2 NO [AUTHENTICATIONFAILED]")
        c.send(b"A3 AUTHENTICATE CRAM-MD5\r\n")
        assert c.readline().startswith(b"A3 NO")
        c.shutdown()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_select_examine_responses(imap_host):
    host = await imap_host()
    await host.deliver(make_message("one"), flags={"\\Seen"})
    await host.deliver(make_message("two"))
    await host.deliver(make_message("three"), flags={"$Label1"})

    def run():
        c = host.client()
        typ, data = c.select("inbox")  # any case means INBOX
        assert typ == "OK" and data == [b"3"]
        flags = _untagged(c, "FLAGS")[0]
        assert b"\\Seen" in flags and b"$Label1" in flags
        assert b"\\*" in _untagged(c, "PERMANENTFLAGS")[0]
        assert _untagged(c, "RECENT") == [b"3"]
        assert _untagged(c, "UNSEEN") == [b"2"]
        assert _untagged(c, "UIDVALIDITY")[0].isdigit()
        assert _untagged(c, "UIDNEXT") == [b"4"]
        assert "READ-WRITE" in c.untagged_responses
        c.close()
        # A second session sees them as no longer recent (claimed), EXAMINE is read-only.
        c2 = host.client()
        typ, data = c2.select("INBOX", readonly=True)
        assert typ == "OK"
        assert _untagged(c2, "RECENT") == [b"0"]
        assert _untagged(c2, "PERMANENTFLAGS") == [b"()"]
        assert "READ-ONLY" in c2.untagged_responses
        typ, data = c2.store("1", "+FLAGS", "(\\Deleted)")
        assert typ == "NO"
        assert c2.expunge()[0] == "NO"
        # Non-PEEK fetch in EXAMINE does not set \Seen.
        c2.fetch("2", "(BODY[TEXT])") if _has_fetch() else None
        typ, data = c2.fetch("2", "(FLAGS)")
        assert b"\\Seen" not in data[0]
        assert c2.select("Nope")[0] == "NO"
        # A failed SELECT leaves nothing selected.
        assert raw(c2, b"F1 FETCH 1 FLAGS")[-1].startswith(b"F1 BAD")
        c2.logout()

    await host.in_thread(run)


def _has_fetch() -> bool:
    try:
        import mailhost.imap.fetch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest_twisted.ensureDeferred
async def test_folders_create_delete_rename_list_lsub(imap_host):
    host = await imap_host()
    await host.deliver(make_message("inbox msg"))

    def run():
        c = host.client()
        assert c.create("Work.2024")[0] == "OK"
        assert c.create("Work.2024")[0] == "NO"
        assert c.create("Caf&AOk-")[0] == "OK"
        assert c.create("MixedCase.&ZeVnLIqe-")[0] == "OK"  # case kept, CJK round-trips
        bad = raw(c, b"M1 CREATE Bad&Jjo")  # malformed modified UTF-7
        assert bad[-1].startswith(b"M1 BAD")
        typ, data = c.list()
        lines = [d.decode() for d in data]
        assert '(\\HasNoChildren) "." INBOX' in lines
        assert '(\\HasChildren) "." Work' in lines
        assert '(\\HasNoChildren) "." Work.2024' in lines
        assert any(line.endswith("Caf&AOk-") for line in lines)
        assert '(\\HasNoChildren) "." MixedCase.&ZeVnLIqe-' in lines
        assert any("\\Sent" in line and line.endswith("Sent") for line in lines)
        # % stops at the delimiter; reference names are prefixed.
        typ, data = c.list('""', "%")
        assert not any(d.endswith(b"Work.2024") for d in data)
        typ, data = c.list("Work.", "%")
        assert [d.decode() for d in data] == ['(\\HasNoChildren) "." Work.2024']
        typ, data = c.list('""', '""')
        assert data == [b'(\\Noselect) "." ""']
        typ, data = c.list('""', "inBOX")
        assert data == [b'(\\HasNoChildren) "." INBOX']
        # Subscriptions, with a \Noselect parent in LSUB %.
        assert c.subscribe("Work.2024")[0] == "OK"
        typ, data = c.lsub('""', "*")
        assert b'() "." Work.2024' in data
        typ, data = c.lsub('""', "%")
        assert b'(\\Noselect) "." Work' in data and b'() "." Work.2024' not in data
        assert c.unsubscribe("Work.2024")[0] == "OK"
        assert not any(b"Work" in d for d in c.lsub('""', "*")[1])
        # Rename with children, delete.
        assert c.rename("Work", "Job")[0] == "OK"
        names = [d.decode().rsplit(" ", 1)[1] for d in c.list()[1]]
        assert "Job.2024" in names and "Work.2024" not in names
        assert c.delete("Job.2024")[0] == "OK"
        assert c.delete("Job.2024")[0] == "NO"
        assert c.delete("INBOX")[0] == "NO"
        # RENAME INBOX moves its messages and leaves INBOX empty.
        assert c.rename("INBOX", "Old")[0] == "OK"
        assert c.status("Old", "(MESSAGES)")[1] == [b"Old (MESSAGES 1)"]
        assert c.status("INBOX", "(MESSAGES)")[1] == [b"INBOX (MESSAGES 0)"]
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_traversal_names_refused(imap_host):
    host = await imap_host()

    def run():
        c = host.client()
        for bad in ("..", "a/b", ".hidden", "../../etc", "a..b"):
            typ, data = c.create(f'"{bad}"')
            assert typ == "NO", (bad, data)
            assert c.select(f'"{bad}"')[0] == "NO"
            assert c.rename("Sent", f'"{bad}"')[0] == "NO"
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_status_quotes_names(imap_host):
    host = await imap_host()
    await host.deliver(make_message("a"))
    await host.deliver(make_message("b"), flags={"\\Seen"})

    def run():
        c = host.client()
        assert c.create('"My Folder"')[0] == "OK"
        typ, data = c.status('"My Folder"', "(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)")
        assert data[0].startswith(b'"My Folder" (MESSAGES 0 RECENT 0 UIDNEXT 1 UIDVALIDITY ')
        typ, data = c.status("INBOX", "(MESSAGES UNSEEN RECENT)")
        assert data == [b"INBOX (MESSAGES 2 UNSEEN 1 RECENT 2)"]
        assert c.status("Nope", "(MESSAGES)")[0] == "NO"
        assert raw(c, b"S9 STATUS INBOX (BOGUS)")[-1].startswith(b"S9 BAD")
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_append_flags_date_appenduid_trycreate(imap_host):
    host = await imap_host()
    msg = make_message("appended")

    def run():
        c = host.client()
        typ, data = c.append("INBOX", "(\\Seen $Work)", '"05-Mar-2024 10:20:30 +0100"', msg)
        assert typ == "OK"
        m = re.match(rb"\[APPENDUID (\d+) (\d+)\]", data[0])
        assert m and m.group(2) == b"1"
        typ, data = c.append("Nope", None, None, msg)
        assert typ == "NO" and b"TRYCREATE" in data[0]
        c.select("INBOX")
        typ, data = c.fetch("1", "(FLAGS INTERNALDATE RFC822.SIZE)")
        assert b"\\Seen" in data[0] and b"$Work" in data[0]
        assert b'INTERNALDATE "05-Mar-2024 09:20:30 +0000"' in data[0]
        assert b"RFC822.SIZE %d" % len(msg) in data[0]
        # APPEND to the selected mailbox: EXISTS arrives with the completion.
        c.append("INBOX", None, None, msg)
        assert _untagged(c, "EXISTS")[-1] == b"2"
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_store_flags_keywords_silent(imap_host):
    host = await imap_host()
    for i in range(3):
        await host.deliver(make_message(f"m{i}"))

    def run():
        c = host.client()
        c.select("INBOX")
        typ, data = c.store("1:2", "+FLAGS", "(\\Flagged $Important)")
        assert typ == "OK" and len(data) == 2
        assert b"\\Flagged" in data[0] and b"$Important" in data[0]
        typ, data = c.store("1", "-FLAGS", "($Important)")
        assert b"$Important" not in data[0]
        typ, data = c.store("3", "FLAGS.SILENT", "(\\Answered)")
        assert typ == "OK" and data == [None]
        typ, data = c.uid("STORE", "3", "+FLAGS", "(\\Seen)")
        assert b"UID 3" in data[0] and b"\\Seen" in data[0]
        typ, data = c.fetch("1:3", "(FLAGS)")
        assert b"\\Answered" in data[2] and b"\\Seen" in data[2]
        assert raw(c, b"S8 STORE 9 +FLAGS (\\Seen)")[-1].startswith(b"S8 BAD")  # beyond EXISTS
        assert raw(c, b"S9 STORE 1 +FLAGS (\\Bogus)")[-1].startswith(b"S9 BAD")
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_copy_move_expunge_uidplus(imap_host):
    host = await imap_host()
    for i in range(5):
        await host.deliver(make_message(f"m{i}"))

    def run():
        c = host.client()
        c.create("Archive")
        c.select("INBOX")
        typ, data = c.copy("1:2", "Archive")
        assert typ == "OK" and re.match(rb"\[COPYUID \d+ 1:2 1:2\]", data[0])
        typ, data = c.copy("1", "Missing")
        assert typ == "NO" and b"TRYCREATE" in data[0]
        typ, data = c._simple_command("MOVE", "2", "Archive")
        assert typ == "OK"
        assert _untagged(c, "EXPUNGE") == [b"2"]
        assert any(b"COPYUID" in x for x in _untagged(c, "OK"))
        typ, data = c.uid("MOVE", "4", "Archive")
        assert typ == "OK" and _untagged(c, "EXPUNGE") == [b"3"]
        # now INBOX has uids 1,3,5 at seqs 1,2,3
        c.store("1:3", "+FLAGS", "(\\Deleted)")
        typ, data = c.uid("EXPUNGE", "3")
        assert typ == "OK" and _untagged(c, "EXPUNGE") == [b"2"]
        typ, data = c.expunge()
        assert typ == "OK" and sorted(data) == [b"1", b"1"] or data == [b"2", b"1"]
        typ, data = c.select("INBOX")
        assert data == [b"0"]
        assert c.status("Archive", "(MESSAGES)")[1] == [b"Archive (MESSAGES 4)"]
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_close_expunges_silently_unselect_does_not(imap_host):
    host = await imap_host()
    for i in range(3):
        await host.deliver(make_message(f"m{i}"), flags={"\\Deleted"})

    def run():
        c = host.client()
        c.select("INBOX")
        assert c._simple_command("UNSELECT")[0] == "OK"
        assert c.select("INBOX")[1] == [b"3"]
        assert c.check()[0] == "OK"
        typ, data = c.close()
        assert typ == "OK" and "EXPUNGE" not in c.untagged_responses
        assert c.select("INBOX")[1] == [b"0"]
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_uid_fetch_flags_index_only(imap_host):
    host = await imap_host()
    for i in range(20):
        await host.deliver(make_message(f"m{i}"), flags={"\\Seen"} if i % 2 else set())

    def run():
        c = host.client()
        c.select("INBOX")
        typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
        assert len(data) == 20
        assert data[0].startswith(b"1 (UID 1 FLAGS (\\Recent))")
        typ, data = c.uid("FETCH", "5:4294967295", "(UID RFC822.SIZE)")
        assert len(data) == 16
        typ, data = c.uid("FETCH", "100:200", "(FLAGS)")
        assert typ == "OK" and data == [None]
        typ, data = c.fetch("*", "(UID)")
        assert data == [b"20 (UID 20)"]
        assert raw(c, b"F9 FETCH 21 (UID)")[-1].startswith(b"F9 BAD")
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_connection_cap_and_session_end_log_event(imap_host):
    from twisted.internet import reactor, task
    from twisted.logger import globalLogPublisher

    host = await imap_host(max_connections=1)
    events = []

    def observer(event):
        if event.get("event") == "imap_session_end":
            events.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        def run():
            c = host.client()
            try:  # the cap refuses the second connection with BYE
                imaplib.IMAP4("127.0.0.1", host.port, timeout=5)
                refused = False
            except imaplib.IMAP4.error as e:
                refused = "Too many connections" in str(e)
            c.noop()
            c.logout()
            return refused

        assert await host.in_thread(run)
        for _ in range(50):
            if any(e.get("user") == ALICE[0] for e in events):
                break
            await task.deferLater(reactor, 0.05, lambda: None)
    finally:
        globalLogPublisher.removeObserver(observer)
    mine = [e for e in events if e.get("user") == ALICE[0]]
    assert len(mine) == 1
    assert mine[0]["client"] == "127.0.0.1" and mine[0]["commands"] == 4  # CAPABILITY LOGIN NOOP LOGOUT
    assert "password" not in repr(mine[0]) and "secret" not in repr(mine[0])
