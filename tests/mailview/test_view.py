"""StoreMailView over the memory and Maildir stores: listing, search, summary, raw,
delete, purge, subscribe, and release to a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from zope.interface.verify import verifyObject

from mailhost.mailview import (
    IMailView,
    MessageQuery,
    NoSuchMessageId,
    ReleaseFailed,
    StoreMailView,
)
from mailhost.mailview.ids import MessageRef, decode_id, encode_id
from mailhost.store.interfaces import DeliveryTarget, IAccountListing
from mailhost.store.maildir import MaildirStore
from mailhost.store.memory import MemoryStore


@pytest.fixture(params=["memory", "maildir"])
def store(request, tmp_path):
    if request.param == "memory":
        return MemoryStore()
    return MaildirStore(str(tmp_path / "mail"), fsync=False)


def message(subject: str, *, frm: str = "app@shop.test", to: str = "x@y.test",
            body: str = "hello", cc: str | None = None, sender: str | None = "app@shop.test",
            ) -> bytes:
    lines = []
    if sender is not None:
        lines.append(f"Return-Path: <{sender}>")
    lines += [f"From: {frm}", f"To: {to}"]
    if cc:
        lines.append(f"Cc: {cc}")
    lines += [f"Subject: {subject}", "MIME-Version: 1.0",
              "Content-Type: text/plain; charset=utf-8",
              "Content-Transfer-Encoding: quoted-printable", "", body, ""]
    return "\r\n".join(lines).encode()


async def put(store, user: str, data: bytes, when: float | None = None, folder="INBOX"):
    writer = store.new_message()
    writer.write(data)
    return (await writer.commit([DeliveryTarget(user, folder, internal_date=when)]))[0]


@pytest_twisted.ensureDeferred
async def test_view_and_store_provide_their_interfaces(store):
    view = StoreMailView(store)
    assert verifyObject(IMailView, view)
    assert verifyObject(IAccountListing, store)


def test_a_store_that_cannot_list_accounts_has_no_view():
    from tests.store.dictstore import DictStore

    with pytest.raises(TypeError, match="IAccountListing"):
        StoreMailView(DictStore())


def test_ids_round_trip_and_foreign_ids_are_no_such_message():
    ref = MessageRef("ünï@example.test", "Archive.2024", 1234, 7)
    assert decode_id(encode_id(ref)) == ref
    assert all(c.isalnum() or c in "-_" for c in encode_id(ref))
    for bad in ("", "!!", "aGVsbG8", encode_id(MessageRef("a@b.test", "INBOX", 1, 1))[:-3]):
        with pytest.raises(NoSuchMessageId):
            decode_id(bad)


@pytest_twisted.ensureDeferred
async def test_list_search_summary_raw(store):
    view = StoreMailView(store)
    now = 1_800_000_000.0
    await put(store, "ann@a.test", message("Welcome Ann", to="ann@a.test"), now - 300)
    await put(store, "bob@b.test", message("Your receipt", to="bob@b.test",
                                           body="Total: 42 =E2=82=AC", cc="Boss <boss@b.test>"),
              now - 200)
    await put(store, "cid@b.test", message("Reset password", frm="Security <sec@bank.test>",
                                           to="cid@b.test", sender=None), now - 100)
    assert await view.mailboxes() == ["ann@a.test", "bob@b.test", "cid@b.test"]

    every = await view.messages()
    assert [m.subject for m in every] == ["Reset password", "Your receipt", "Welcome Ann"]
    newest = every[0]
    assert newest.mailbox == "cid@b.test" and newest.folder == "INBOX"
    assert newest.sender is None and newest.from_ == "Security <sec@bank.test>"
    assert newest.to == ("cid@b.test",)
    assert newest.received == datetime.fromtimestamp(now - 100, tz=UTC)
    assert every[1].to == ("bob@b.test", "boss@b.test")
    assert every[1].sender == "app@shop.test"

    async def subjects(**kw):
        return [m.subject for m in await view.messages(MessageQuery(**kw))]

    assert await subjects(limit=2) == ["Reset password", "Your receipt"]
    assert await subjects(domain="B.test") == ["Reset password", "Your receipt"]
    assert await subjects(mailbox="ann@a.test") == ["Welcome Ann"]
    assert await subjects(sender="BANK") == ["Reset password"]
    assert await subjects(sender="app@shop") == ["Your receipt", "Welcome Ann"]
    assert await subjects(recipient="boss@") == ["Your receipt"]
    assert await subjects(subject="receipt") == ["Your receipt"]
    assert await subjects(body="42 €") == ["Your receipt"]  # decoded quoted-printable
    assert await subjects(body="=E2") == []
    assert await subjects(text="42 €") == ["Your receipt"]
    assert await subjects(text="welcome") == ["Welcome Ann"]
    since = datetime.fromtimestamp(now - 250, tz=UTC)
    assert await subjects(since=since) == ["Reset password", "Your receipt"]
    assert await subjects(before=since) == ["Welcome Ann"]
    naive = datetime.fromtimestamp(now - 150, tz=UTC).replace(tzinfo=None)
    assert await subjects(since=naive, folder="inbox") == ["Reset password"]
    assert await subjects(folder="Junk") == []
    assert await subjects(limit=0) == []

    one = await view.summary(every[1].id)
    assert one == every[1]
    raw = await view.raw(every[1].id)
    assert raw == message("Your receipt", to="bob@b.test", body="Total: 42 =E2=82=AC",
                          cc="Boss <boss@b.test>")


@pytest_twisted.ensureDeferred
async def test_delete_and_purge(store):
    view = StoreMailView(store)
    for i in range(6):
        await put(store, f"u{i % 3}@{'ab'[i % 2]}.test", message(f"m{i}"), 1_800_000_000.0 + i)
    ids = [m.id for m in await view.messages()]
    assert len(ids) == 6
    await view.delete(ids[0])
    with pytest.raises(NoSuchMessageId):
        await view.delete(ids[0])
    with pytest.raises(NoSuchMessageId):
        await view.raw(ids[0])
    with pytest.raises(NoSuchMessageId):
        await view.summary(ids[0])
    assert len(await view.messages()) == 5
    assert await view.purge(MessageQuery(subject="m4")) == 1
    assert await view.purge(MessageQuery(domain="b.test")) == 2  # m1, m3 (m5 is gone)
    assert [m.subject for m in await view.messages()] == ["m2", "m0"]
    assert await view.purge() == 2
    assert await view.messages() == []
    assert await view.purge() == 0
    # The mailboxes stay; only the messages go.
    assert len(await view.mailboxes()) == 6


@pytest_twisted.ensureDeferred
async def test_renumbered_folder_invalidates_ids(store):
    view = StoreMailView(store)
    await put(store, "ann@a.test", message("old"))
    (old,) = await view.messages()
    ref = decode_id(old.id)
    stale = encode_id(MessageRef(ref.mailbox, ref.folder, ref.uid_validity + 1, ref.uid))
    with pytest.raises(NoSuchMessageId):
        await view.raw(stale)
    with pytest.raises(NoSuchMessageId):
        await view.raw(encode_id(MessageRef("nobody@a.test", "INBOX", 1, 1)))


@pytest_twisted.ensureDeferred
async def test_subscribe_hears_new_messages_in_new_and_old_accounts(store):
    await put(store, "old@a.test", message("before"))
    view = StoreMailView(store)
    heard = []
    unsubscribe = view.subscribe(heard.append)
    for _ in range(50):  # the existing account's folders are being watched
        await task.deferLater(reactor, 0.01, lambda: None)
    await put(store, "old@a.test", message("one"))
    await put(store, "new@b.test", message("two"))
    await put(store, "new@b.test", message("three"))
    for _ in range(3000):  # at most 30 s on a loaded machine
        if len(heard) >= 3:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    assert sorted(s.subject for s in heard) == ["one", "three", "two"]
    assert {s.mailbox for s in heard} == {"old@a.test", "new@b.test"}
    unsubscribe()
    await put(store, "new@b.test", message("unheard"))
    await task.deferLater(reactor, 0.2, lambda: None)
    assert len(heard) == 3


class _Sink:
    """An aiosmtpd handler that keeps what it was given."""

    def __init__(self) -> None:
        self.got: list[tuple[str, list[str], bytes]] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.got.append((envelope.mail_from, list(envelope.rcpt_tos),
                         envelope.original_content))
        self.arrived.set()
        return "250 OK"


@pytest.fixture
def smtp_sink():
    from aiosmtpd.controller import Controller

    from tests.mailhost_process import free_port

    sink = _Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield sink, port
    controller.stop()


@pytest_twisted.ensureDeferred
async def test_release_sends_the_message_byte_for_byte(store, smtp_sink):
    sink, port = smtp_sink
    view = StoreMailView(store)
    # Dots at line starts, a long line, 8-bit text and a bigger body than one chunk.
    body = ".leading dot\r\n..two\r\n" + "é" * 400 + "\r\n" + "line\r\n" * 40000
    original = message("Release me", to="ann@a.test", body=body)
    await put(store, "ann@a.test", original)
    (summary,) = await view.messages()
    await view.release(summary.id, f"tcp:host=127.0.0.1:port={port}")
    await wait_until(sink.arrived.is_set)
    sender, rcpts, data = sink.got[0]
    assert sender == "app@shop.test" and rcpts == ["ann@a.test"]
    stored = await view.raw(summary.id)
    assert stored == original
    # Byte for byte, less the Return-Path final delivery wrote (RFC 5321 §4.4).
    assert data == original[original.index(b"\r\n") + 2:]

    await view.release(summary.id, f"tcp:host=127.0.0.1:port={port}",
                       recipients=["qa@elsewhere.test", "dev@elsewhere.test"], sender="")
    await wait_until(lambda: len(sink.got) == 2)
    assert sink.got[1][:2] == ("<>", ["qa@elsewhere.test", "dev@elsewhere.test"])
    assert sink.got[1][2] == data


@pytest_twisted.ensureDeferred
async def test_release_to_a_closed_port_fails_clearly(store):
    from tests.mailhost_process import free_port  # a port nobody listens on

    view = StoreMailView(store)
    await put(store, "ann@a.test", message("nowhere"))
    (summary,) = await view.messages()
    with pytest.raises(ReleaseFailed, match="cannot connect"):
        await view.release(summary.id, f"tcp:host=127.0.0.1:port={free_port()}:timeout=5")


async def wait_until(check, timeout: float = 10.0) -> None:
    """Poll ``check`` on the reactor until it holds, for at most ``timeout`` seconds."""
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    raise TimeoutError("the SMTP sink got nothing")
