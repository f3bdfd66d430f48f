"""Threaded mode: the test mail host for code that knows nothing of Twisted.

``running()`` runs the reactor in a daemon thread (started once per process, since a
reactor cannot be restarted; reused if it is already running in another thread) and
returns a ``SyncMailHost``: the ``MailHost`` API, blocking. Under pytest-twisted the
reactor lives in a greenlet of the main thread; calls from that thread then go
through ``pytest_twisted.blockon`` (see ``mailhost_sync`` in the pytest plugin).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet import defer, threads
from twisted.python import threadable

from mailhost.testing.host import MailHost

_start_lock = threading.Lock()
_reactor_thread: threading.Thread | None = None


class ReactorInThisThread(RuntimeError):
    """Blocking calls here would deadlock: this thread runs the reactor."""


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _greenlet_blockon() -> Callable[[defer.Deferred], Any] | None:
    """pytest-twisted's ``blockon`` when we are in its main greenlet, else None."""
    try:
        import greenlet
        import pytest_twisted
    except ImportError:
        return None
    gr_twisted = getattr(pytest_twisted._instances, "gr_twisted", None)
    if gr_twisted is None or gr_twisted.dead or greenlet.getcurrent() is gr_twisted:
        return None
    return pytest_twisted.blockon


def ensure_reactor_thread(timeout: float = 10.0) -> Any:
    """Make sure some thread runs the reactor; start a daemon thread if none does."""
    global _reactor_thread
    reactor = _reactor()
    with _start_lock:
        if reactor.running or _greenlet_blockon() is not None:
            return reactor
        if _reactor_thread is not None and _reactor_thread.is_alive():
            return reactor
        started = threading.Event()
        reactor.callWhenRunning(started.set)
        thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False},
                                  name="mailhost-reactor", daemon=True)
        thread.start()
        if not started.wait(timeout):
            raise RuntimeError("the Twisted reactor did not start (was it stopped before? "
                               "a reactor cannot be restarted)")
        _reactor_thread = thread
        return reactor


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` on the reactor and block for its (Deferred) result."""
    reactor = _reactor()
    if reactor.running and not threadable.isInIOThread():
        return threads.blockingCallFromThread(reactor, fn, *args, **kwargs)
    blockon = _greenlet_blockon()
    if blockon is not None:
        d: defer.Deferred = defer.Deferred()
        reactor.callLater(0, lambda: defer.maybeDeferred(fn, *args, **kwargs).chainDeferred(d))
        return blockon(d)
    if reactor.running:
        raise ReactorInThisThread(
            "the Twisted reactor runs in this thread, so blocking calls would deadlock. "
            "Use MailHost (Deferreds) here; under pytest-twisted use the mailhost_sync "
            "fixture, which runs the test body in a worker thread, or -p no:twisted.")
    raise RuntimeError("the Twisted reactor is not running (use mailhost.testing.running())")


class SyncMailHost:
    """The ``MailHost`` API, blocking: every call runs on the reactor thread and waits."""

    def __init__(self, host: MailHost) -> None:
        self._host = host
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

    def start(self) -> SyncMailHost:
        call(self._host.start)
        return self

    def stop(self) -> None:
        call(self._host.stop)

    def add_user(self, address: str, password: str) -> None:
        call(self._host.add_user, address, password)

    def users(self) -> list[str]:
        return call(self._host.users)

    def messages(self, address: str, folder: str = "INBOX") -> list:
        return call(self._host.messages, address, folder)

    def deliver(self, address: str, message: Any, folder: str = "INBOX") -> list[int]:
        return call(self._host.deliver, address, message, folder)

    def wait_for_messages(self, n: int, timeout: float = 5.0) -> list:
        return call(self._host.wait_for_messages, n, timeout)

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

    Takes the ``MailHost`` arguments (``users=``, ``domains=``, ``tls=``, ...).
    """
    ensure_reactor_thread()
    host = SyncMailHost(call(MailHost, **kwargs))
    host.start()
    try:
        yield host
    finally:
        host.stop()
