"""Threaded mode: the test mail host for code that knows nothing of Twisted.

``running()`` and ``SyncMailHost`` give the ``MailHost`` API, blocking. The host lives
in Twisted's global reactor, which some other thread must drive meanwhile: the
application's, pytest-twisted's (from a fixture; the test body then runs in a worker
thread) or, when nobody drives it, a background thread started for as long as a
blocking host runs (``mailhost.testing.ownership`` says who drives it when, and
refuses instead of deadlocking where a blocking call would block the reactor itself).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

from mailhost.testing import ownership
from mailhost.testing.host import MailHost
from mailhost.testing.ownership import ReactorConflict, ReactorInThisThread

__all__ = ["ReactorConflict", "ReactorInThisThread", "SyncMailHost", "call", "running"]


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` on the reactor and block for its (Deferred) result."""
    return ownership.block(fn, *args, **kwargs)


class SyncMailHost:
    """The ``MailHost`` API, blocking: every call runs on the reactor thread and waits."""

    def __init__(self, host: MailHost) -> None:
        self._host = host
        self._held = False
        self.smtp = _SyncFaults(host.smtp)
        self.pop3 = _SyncFaults(host.pop3)
        self.imap = _SyncFaults(host.imap)

    @property
    def host(self) -> str:
        return self._host.host

    def __getattr__(self, name: str) -> Any:
        # Ports, ca_file, domains...: plain reads, safe from any thread.
        if name.endswith("_port") or name in ("ca_file", "domains", "hostname", "running",
                                              "protocols", "ports", "capture", "web_url"):
            return getattr(self._host, name)
        raise AttributeError(name)

    @property
    def received(self) -> list:
        return call(lambda: list(self._host.received))

    def start(self, _guard: bool = True) -> SyncMailHost:
        """Start the host; refused (``ReactorInThisThread``) where this thread drives the
        reactor, since a blocking client here would then freeze the host."""
        ownership.hold(guard=_guard)
        self._held = True
        try:
            call(self._host.start)
        except BaseException:
            self._release()
            raise
        return self

    def stop(self) -> None:
        try:
            if self._host.running:
                call(self._host.stop)
        finally:
            self._release()

    def _release(self) -> None:
        if self._held:
            self._held = False
            ownership.release()

    def add_user(self, address: str, password: str) -> None:
        call(self._host.add_user, address, password)

    def users(self) -> list[str]:
        return call(self._host.users)

    def messages(self, address: str, folder: str = "INBOX") -> list:
        return call(self._host.messages, address, folder)

    def deliver(self, address: str, message: Any, folder: str = "INBOX") -> list[int]:
        return call(self._host.deliver, address, message, folder)

    def wait_for_messages(self, n: int, timeout: float = 5.0) -> list:
        return call(self._host.wait_for_messages, n, timeout=timeout)

    def outbound_messages(self) -> list:
        return call(self._host.outbound_messages)

    def metric(self, name: str, **labels: str) -> float:
        return call(self._host.metric, name, **labels)

    def faults(self) -> list:
        return call(self._host.faults)

    def clear_faults(self) -> None:
        call(self._host.clear_faults)

    def reset(self, keep_users: bool = False) -> None:
        call(self._host.reset, keep_users)

    def messages_for_domain(self, domain: str) -> list:
        return call(self._host.messages_for_domain, domain)

    def purge(self) -> int:
        return call(self._host.purge)

    @property
    def mail_view(self) -> SyncMailView:
        """The host's mail view, blocking (``mailhost.mailview.IMailView``'s methods)."""
        return SyncMailView(call(lambda: self._host.mail_view))


class SyncMailView:
    """An ``IMailView`` whose methods block for their result (run on the reactor)."""

    def __init__(self, view: Any) -> None:
        self._view = view

    def mailboxes(self) -> list[str]:
        return call(self._view.mailboxes)

    def messages(self, query: Any = None, **filters: Any) -> list:
        """``query`` (a ``MessageQuery``) or its fields as keywords."""
        if query is None and filters:
            from mailhost.mailview import MessageQuery

            query = MessageQuery(**filters)
        return call(self._view.messages, query)

    def summary(self, message_id: str) -> Any:
        return call(self._view.summary, message_id)

    def raw(self, message_id: str) -> bytes:
        return call(self._view.raw, message_id)

    def delete(self, message_id: str) -> None:
        call(self._view.delete, message_id)

    def purge(self, query: Any = None, **filters: Any) -> int:
        if query is None and filters:
            from mailhost.mailview import MessageQuery

            query = MessageQuery(**filters)
        return call(self._view.purge, query)

    def release(self, message_id: str, endpoint: str, recipients: Any = None,
                sender: str | None = None) -> None:
        call(self._view.release, message_id, endpoint, recipients, sender)

    def subscribe(self, listener: Callable[[Any], None]) -> Callable[[], None]:
        """``listener`` is called on the reactor thread; the unsubscribe blocks."""
        unsubscribe = call(self._view.subscribe, listener)
        return lambda: call(unsubscribe)


class _SyncFaults:
    """A FaultSet whose methods run on the reactor thread."""

    def __init__(self, faults: Any) -> None:
        self._faults = faults

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._faults, name)
        if not callable(method):
            return method
        return functools.partial(call, method)


@contextlib.contextmanager
def running(**kwargs: Any) -> Iterator[SyncMailHost]:
    """A started test mail host for blocking code; stopped on exit.

    Takes the ``MailHost`` arguments (``users=``, ``domains=``, ``tls=``, ...). Raises
    ``ReactorInThisThread`` where this thread drives the reactor (a callback, or the main
    thread under pytest-twisted) instead of deadlocking; the message names the fix.
    """
    host = start_sync(kwargs)
    try:
        yield host
    finally:
        host.stop()


def start_sync(options: dict[str, Any], guard: bool = True) -> SyncMailHost:
    """A started ``SyncMailHost`` with ``options`` (the MailHost arguments)."""
    if guard and ownership.reactor_here():
        raise ownership.refuse_here("running()")
    return SyncMailHost(MailHost(**options)).start(_guard=guard)
