"""NOTIFY (RFC 5465) over a real socket: STATUS for other mailboxes, pushed EXISTS/FETCH/
EXPUNGE for the selected one (with MessageNew's FETCH attributes), selected-delayed,
MailboxName and SubscriptionChange from a second session, IDLE, a message another
program drops into the Maildir, BADEVENT, NOTIFICATIONOVERFLOW; the parser round-tripped
with hypothesis."""

from __future__ import annotations

import imaplib
import os
import re
import select

import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st

from mailhost.imap import notify, parser
from tests.imap.test_server_harness import imap_host_fixture, raw  # noqa: F401
from tests.imap.test_server_sort_thread import msg


def _lines(c: imaplib.IMAP4, n: int) -> list[bytes]:
    """``n`` unsolicited lines, sent without any command of ours (bounded by the
    client's 10 s socket timeout)."""
    return [c.readline().rstrip(b"\r\n") for _ in range(n)]


def _nothing(c: imaplib.IMAP4, wait: float = 0.5) -> bool:
    """Nothing arrives for ``wait`` seconds (the socket, not a read that could time out
    and spoil imaplib's file object)."""
    readable, _, _ = select.select([c.sock], [], [], wait)
    return not readable


@pytest_twisted.ensureDeferred
async def test_badevent_and_bad_combinations(imap_host):
    host = await imap_host()

    def run():
        c = host.client()
        caps = c.capability()[1][0].decode().split()
        assert "NOTIFY" in caps
        out = raw(c, b"N1 NOTIFY SET (selected (MessageNew MessageExpunge AnnotationChange))")
        assert out[-1] == (b"N1 NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName "
                           b"SubscriptionChange)] Unsupported event AnnotationChange"), out
        out = raw(c, b"N2 NOTIFY SET (personal (MailboxMetadataChange))")
        assert out[-1].startswith(b"N2 NO [BADEVENT"), out
        for bad in (b"(selected (MessageNew))", b"(selected (FlagChange))",
                    b"(personal (MessageNew (FLAGS) MessageExpunge))",
                    b"(selected (MessageNew MessageExpunge)) (selected-delayed NONE)",
                    b"(subtree (MessageNew MessageExpunge))", b"(elsewhere NONE)",
                    b"(selected (MailboxName))",
                    b"(selected (MessageNew (NOSUCHITEM) MessageExpunge))"):
            out = raw(c, b"N3 NOTIFY SET " + bad)
            assert out[-1].startswith(b"N3 BAD"), (bad, out)
        assert raw(c, b"N4 NOTIFY NONE")[-1].startswith(b"N4 OK")
        c.logout()

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_status_for_other_mailboxes_between_commands(imap_host):
    host = await imap_host()
    await host.deliver(msg("one"))
    account = await host.store.open_account("alice@example.test")
    await account.create_folder("Lists")

    def start():
        a, b = host.client(), host.client()
        raw(a, b"S1 SELECT Lists")
        out = raw(a, b"N1 NOTIFY SET STATUS (selected (MessageNew MessageExpunge)) "
                     b"(personal (MessageNew MessageExpunge FlagChange))")
        statuses = [x for x in out if x.startswith(b"* STATUS")]
        assert any(x.startswith(b"* STATUS INBOX (MESSAGES 1 UIDNEXT 2 UIDVALIDITY ")
                   for x in statuses), out
        assert not any(b"Lists" in x for x in statuses), out  # the selected one: no STATUS
        return a, b

    a, b = await host.in_thread(start)
    await host.deliver(msg("two"))

    def later():
        # No command sent: the STATUS comes between commands.
        assert _lines(a, 1) == [b"* STATUS INBOX (MESSAGES 2 UIDNEXT 3 UNSEEN 2)"]
        raw(b, b"B1 SELECT INBOX")
        raw(b, b"B2 STORE 1 +FLAGS (\\Seen)")
        assert _lines(a, 1) == [b"* STATUS INBOX (UNSEEN 1)"]
        raw(b, b"B3 STORE 2 +FLAGS (\\Deleted)")
        assert _lines(a, 1) == [b"* STATUS INBOX (UNSEEN 1)"]
        raw(b, b"B4 EXPUNGE")
        assert _lines(a, 1) == [b"* STATUS INBOX (MESSAGES 1 UIDNEXT 3 UNSEEN 0)"]
        # During IDLE too.
        a.send(b"I1 IDLE\r\n")
        assert a.readline().startswith(b"+ ")
        raw(b, b"B5 STORE 1 -FLAGS (\\Seen)")
        assert _lines(a, 1) == [b"* STATUS INBOX (UNSEEN 1)"]
        a.send(b"DONE\r\n")
        assert a.readline().startswith(b"I1 OK")
        # NOTIFY NONE: silence.
        raw(a, b"N2 NOTIFY NONE")
        raw(b, b"B6 STORE 1 +FLAGS (\\Seen)")
        assert _nothing(a)

    await host.in_thread(later)


@pytest_twisted.ensureDeferred
async def test_selected_pushes_exists_fetch_and_expunge(imap_host):
    host = await imap_host()
    for i in range(3):
        await host.deliver(msg(f"m{i}"))

    def start():
        a, b = host.client(), host.client()
        raw(b, b"S1 SELECT INBOX")  # b has the \Recent of the first three
        raw(a, b"S1 SELECT INBOX")
        out = raw(a, b"N1 NOTIFY SET (selected (MessageNew (UID FLAGS BODY[HEADER.FIELDS "
                     b"(SUBJECT)]) MessageExpunge FlagChange))")
        assert out[-1].startswith(b"N1 OK"), out
        return a, b

    a, b = await host.in_thread(start)
    await host.deliver(msg("fresh news"))

    def later():
        lines = _lines(a, 3)
        assert lines[:2] == [b"* 4 EXISTS", b"* 1 RECENT"], lines
        assert lines[2].startswith(b"* 4 FETCH (UID 4 FLAGS (\\Recent) BODY[HEADER.FIELDS "
                                   b"(SUBJECT)] {"), lines
        body = a.read(int(lines[2].rsplit(b"{", 1)[1].rstrip(b"}")))
        assert body == b"Subject: fresh news\r\n\r\n"
        assert a.readline() == b")\r\n"
        # Not marked \Seen by the notification's BODY[].
        out = raw(a, b"F1 FETCH 4 (FLAGS)")
        assert out[0] == b"* 4 FETCH (FLAGS (\\Recent))", out
        raw(b, b"B1 STORE 2 +FLAGS (\\Flagged)")
        assert _lines(a, 1) == [b"* 2 FETCH (FLAGS (\\Flagged))"]
        raw(b, b"B2 STORE 1 +FLAGS (\\Deleted)")
        assert _lines(a, 1) == [b"* 1 FETCH (FLAGS (\\Deleted))"]
        raw(b, b"B3 EXPUNGE")
        assert _lines(a, 1) == [b"* 1 EXPUNGE"]  # between commands, at once
        assert raw(a, b"N2 NOOP") == [b"N2 OK NOOP completed"]

    await host.in_thread(later)


@pytest_twisted.ensureDeferred
async def test_selected_delayed_holds_expunges_for_a_command(imap_host):
    host = await imap_host()
    for i in range(3):
        await host.deliver(msg(f"m{i}"))

    def run():
        a, b = host.client(), host.client()
        raw(b, b"S1 SELECT INBOX")
        raw(a, b"S1 SELECT INBOX")
        raw(a, b"N1 NOTIFY SET (selected-delayed (MessageNew MessageExpunge FlagChange))")
        raw(b, b"B1 STORE 3 +FLAGS (\\Deleted)")
        assert _lines(a, 1) == [b"* 3 FETCH (FLAGS (\\Deleted))"]
        raw(b, b"B2 EXPUNGE")
        assert _nothing(a)
        # Not during FETCH (RFC 3501 7.4.1), then at NOOP.
        out = raw(a, b"F1 FETCH 3 (FLAGS)")
        assert b"* 3 EXPUNGE" not in out, out
        assert raw(a, b"N2 NOOP")[0] == b"* 3 EXPUNGE"

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_mailbox_name_and_subscription_change_from_another_session(imap_host):
    host = await imap_host()

    def run():
        a, b = host.client(), host.client()
        raw(a, b"N1 NOTIFY SET (personal (MailboxName SubscriptionChange))")
        raw(b, b"B1 CREATE Projects")
        assert _lines(a, 1) == [b'* LIST () "." Projects']
        raw(b, b"B2 SUBSCRIBE Projects")
        assert _lines(a, 1) == [b'* LIST (\\Subscribed) "." Projects']
        raw(b, b"B2a CREATE Projects.Q1")
        assert _lines(a, 1) == [b'* LIST () "." Projects.Q1']
        raw(b, b"B3 RENAME Projects Done")
        assert sorted(_lines(a, 2)) == [b'* LIST () "." Done ("OLDNAME" (Projects))',
                                        b'* LIST () "." Done.Q1 ("OLDNAME" (Projects.Q1))']
        raw(b, b"B4 UNSUBSCRIBE Done")
        assert _lines(a, 1) == [b'* LIST () "." Done']
        raw(b, b"B4a DELETE Done.Q1")
        assert _lines(a, 1) == [b'* LIST (\\NonExistent) "." Done.Q1']
        raw(b, b"B5 DELETE Done")
        assert _lines(a, 1) == [b'* LIST (\\NonExistent) "." Done']
        # The session's own CREATE is reported too, before its tagged OK.
        out = raw(a, b"A1 CREATE Mine")
        assert out[0] == b'* LIST () "." Mine' and len(out) == 2, out
        assert re.fullmatch(rb"A1 OK \[MAILBOXID \([0-9a-f]{32}\)\] CREATE completed", out[1]), out
        # subtree: only names under it.
        raw(a, b'N2 NOTIFY SET (subtree Work (MailboxName))')
        raw(b, b"B6 CREATE Other")
        raw(b, b"B7 CREATE Work.Q1")
        assert _lines(a, 1) == [b'* LIST () "." Work.Q1']

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_mailbox_events_reach_a_rev2_session_in_utf8_and_its_own_rename_once(imap_host):
    """Each session hears mailbox names in its own encoding: UTF-8 after ENABLE IMAP4rev2,
    modified UTF-7 otherwise; a rev2 RENAME's OLDNAME LIST is not sent twice."""
    host = await imap_host()

    def run():
        a, b = host.client(), host.client()
        assert raw(a, b"E1 ENABLE IMAP4rev2")[-1].startswith(b"E1 OK")
        raw(a, b"N1 NOTIFY SET (personal (MailboxName SubscriptionChange))")
        raw(b, b"N1 NOTIFY SET (personal (MailboxName SubscriptionChange))")
        raw(b, b"B1 CREATE R&AOk-sum&AOk-")
        assert _lines(a, 1) == ['* LIST () "." "Résumé"'.encode()]
        out = raw(a, 'A1 RENAME "Résumé" "Café"'.encode())
        assert out == ['* LIST () "." "Café" ("OLDNAME" ("Résumé"))'.encode(),
                       b"A1 OK RENAME completed"], out
        assert _lines(b, 1) == [b'* LIST () "." Caf&AOk- ("OLDNAME" (R&AOk-sum&AOk-))']
        # NOTIFY's own mailbox names are UTF-8 for this session too.
        raw(a, 'N2 NOTIFY SET (mailboxes "Café" (MailboxName))'.encode())
        raw(b, b"B2 DELETE Caf&AOk-")
        assert _lines(a, 1) == ['* LIST (\\NonExistent) "." "Café"'.encode()]

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_a_message_another_program_drops_into_the_maildir(imap_host, tmp_path):
    """Dovecot, procmail or mutt writing the Maildir: the store's watch reports it."""
    host = await imap_host(kind="maildir")
    account = await host.store.open_account("alice@example.test")
    await account.create_folder("Archive")

    def run():
        a = host.client()
        out = raw(a, b"N1 NOTIFY SET (mailboxes Archive (MessageNew MessageExpunge))")
        assert out[-1].startswith(b"N1 OK"), out
        new = tmp_path / "mail" / "example.test" / "alice" / ".Archive" / "new"
        assert new.is_dir()
        tmp = new.parent / "tmp" / "1700000000.P1Q1.elsewhere"
        tmp.write_bytes(msg("dropped"))
        os.rename(tmp, new / tmp.name)
        line = _lines(a, 1)[0]
        assert re.fullmatch(rb"\* STATUS Archive \(MESSAGES 1 UIDNEXT \d+ UNSEEN 1\)", line), line

    await host.in_thread(run)


@pytest_twisted.ensureDeferred
async def test_notificationoverflow_when_the_client_does_not_read(imap_host, monkeypatch):
    host = await imap_host()
    monkeypatch.setattr(notify, "MAX_QUEUED", 3)

    def start():
        a = host.client()
        raw(a, b"N1 NOTIFY SET (inboxes (MessageNew MessageExpunge FlagChange))")
        return a

    a = await host.in_thread(start)
    (session,) = [s for s in host.factory.sessions if s.notifier is not None]
    session.gate.pauseProducing()  # as the transport does when the client stops reading
    for i in range(5):
        await host.deliver(msg(f"flood{i}"))
    assert session.notifier is None
    session.gate.resumeProducing()

    def later():
        assert _lines(a, 1) == [b"* OK [NOTIFICATIONOVERFLOW] Too many notifications; "
                                b"NOTIFY is off"]
        assert _nothing(a)

    await host.in_thread(later)


# -- the parser, round-tripped ----------------------------------------------------------

_name = st.sampled_from(["INBOX", "Archive", "Lists.Python", "Sent Items", "Ünïcode"])
_message_events = st.sampled_from([(), ("MessageNew", "MessageExpunge"),
                                   ("MessageNew", "MessageExpunge", "FlagChange"),
                                   ("MessageExpunge", "FlagChange", "MessageNew")])
_mailbox_events = st.lists(st.sampled_from(["MailboxName", "SubscriptionChange"]),
                           unique=True, max_size=2)
_fetch = st.lists(st.sampled_from(["UID", "FLAGS", "ENVELOPE", "BODY.PEEK[HEADER]",
                                   "RFC822.SIZE", "BODY[1.MIME]"]), unique=True, max_size=3)


@st.composite
def _group(draw, selected: bool):
    kind = draw(st.sampled_from(["SELECTED", "SELECTED-DELAYED"] if selected else
                                ["INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES"]))
    names = tuple(draw(st.lists(_name, min_size=1, max_size=3, unique=True))) \
        if kind in ("SUBTREE", "MAILBOXES") else ()
    events = draw(_message_events) + (() if selected else tuple(draw(_mailbox_events)))
    fetch = tuple(draw(_fetch)) if selected and "MessageNew" in events else ()
    return notify.Group(kind, names, events, fetch)


@st.composite
def _spec(draw):
    groups = draw(st.lists(_group(False), min_size=0, max_size=3))
    if draw(st.booleans()) or not groups:
        groups.insert(draw(st.integers(0, len(groups))), draw(_group(True)))
    return notify.Spec(draw(st.booleans()), tuple(groups))


@given(st.one_of(st.none(), _spec()))
def test_notify_round_trip(spec):
    line = b"t NOTIFY " + notify.format_spec(spec)
    cmd = parser.parse_command([line])
    assert notify.parse_notify(cmd.args) == spec


def test_unknown_event_is_badevent_not_bad():
    cmd = parser.parse_command([b"t NOTIFY SET (personal (Wibble))"])
    try:
        notify.parse_notify(cmd.args)
    except notify.No as e:
        assert e.text.startswith("[BADEVENT (")
    else:
        raise AssertionError("accepted")



@pytest_twisted.ensureDeferred
async def test_the_first_group_that_takes_a_mailbox_decides(imap_host):
    """RFC 5465 3: ``(mailboxes INBOX NONE)`` before ``personal`` silences INBOX only."""
    host = await imap_host()
    account = await host.store.open_account("alice@example.test")
    await account.create_folder("Lists")

    def start():
        a = host.client()
        out = raw(a, b"N1 NOTIFY SET (mailboxes INBOX NONE) (personal (MessageNew MessageExpunge))")
        assert out[-1].startswith(b"N1 OK"), out
        return a

    a = await host.in_thread(start)
    await host.deliver(msg("quiet"))
    await host.deliver(msg("loud"), folder="Lists")

    def later():
        assert _lines(a, 1) == [b"* STATUS Lists (MESSAGES 1 UIDNEXT 2 UNSEEN 1)"]
        assert _nothing(a)

    await host.in_thread(later)


@pytest_twisted.ensureDeferred
async def test_idle_under_selected_delayed_and_selected_none(imap_host):
    """IDLE allows expunges, so selected-delayed pushes them there; (selected NONE)
    silences even IDLE until a command asks."""
    host = await imap_host()
    for i in range(3):
        await host.deliver(msg(f"m{i}"))

    def run():
        a, b = host.client(), host.client()
        raw(b, b"S1 SELECT INBOX")
        raw(a, b"S1 SELECT INBOX")
        raw(a, b"N1 NOTIFY SET (selected-delayed (MessageNew MessageExpunge))")
        a.send(b"I1 IDLE\r\n")
        assert a.readline().startswith(b"+ ")
        raw(b, b"B1 STORE 3 +FLAGS (\\Deleted)")
        raw(b, b"B2 EXPUNGE")
        assert _lines(a, 2) == [b"* 3 FETCH (FLAGS (\\Deleted))", b"* 3 EXPUNGE"]
        a.send(b"DONE\r\n")
        assert a.readline().startswith(b"I1 OK")
        raw(a, b"N2 NOTIFY SET (selected NONE)")
        a.send(b"I2 IDLE\r\n")
        assert a.readline().startswith(b"+ ")
        raw(b, b"B3 STORE 2 +FLAGS (\\Deleted)")
        raw(b, b"B4 EXPUNGE")
        assert _nothing(a)
        a.send(b"DONE\r\n")  # the end of a command reports it, as IMAP requires
        assert _lines(a, 2) == [b"* 2 EXPUNGE", b"I2 OK IDLE terminated"]

    await host.in_thread(run)
