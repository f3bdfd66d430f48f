"""Who drives Twisted's global reactor in a test process, and the hand-overs between them.

The reactor is one event loop, spun by one thread at a time. In a test process it may be
driven by:

- **trial**: ``twisted.trial.unittest.TestCase`` spins it in its own thread for each test
  and crashes it afterwards, then checks that nothing was left in it;
- **pytest-twisted**: spins it in a greenlet of the main thread, from the first test it
  wraps until the end of the session (each pytest test body runs inside it);
- **the threaded host's background thread** (``running()``, ``SyncMailHost``): started
  when a blocking host starts and nobody else drives the reactor, and crashed again (the
  way trial does it between tests) when the last blocking host stops, so that trial can
  have the reactor back;
- **the application**, which already runs it in a thread of its own.

Rules that follow, and are enforced here instead of deadlocking:

- blocking calls wait for the reactor from *another* thread; from the thread that drives
  it (or, under pytest-twisted, the main thread) they raise ``ReactorInThisThread``;
- before a trial ``TestCase`` runs, the pytest plugin hands the reactor to it
  (``trial_turn``): pytest-twisted's greenlet is let go (``reactor.crash()``, as trial
  itself does) and a fresh one is made afterwards (``pytest_twisted.init_twisted_greenlet``);
  where the reactor cannot be handed over (a mail host from a wider-scoped fixture is
  still running in it, or another thread runs it), ``ReactorConflict`` names the fix.

Only public APIs of Twisted, greenlet and pytest-twisted are used.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python import failure, threadable

log = Logger()

#: The fixes, named once for every message.
SYNC_FIXES = ("use the mailhost_sync fixture (or mailhost_sync_class/_module/_session), whose "
              "test body runs in a worker thread; in a unittest.TestCase, mix in "
              "mailhost.testing.unittest.SyncMailHostTestMixin; or run pytest with -p no:twisted")


class ReactorInThisThread(RuntimeError):
    """Blocking here would deadlock: this thread drives the Twisted reactor."""


class ReactorConflict(RuntimeError):
    """Two drivers would need the reactor at once; the message names the fix."""


_lock = threading.RLock()
_thread: threading.Thread | None = None  # our background reactor thread, while it runs
_holders = 0  # blocking hosts running now
_pytest_twisted = False  # pytest-twisted drives the reactor (in the main thread)
_live: weakref.WeakSet[Any] = weakref.WeakSet()  # started MailHosts, on any reactor
_trial_turn = False  # a trial TestCase has the reactor (trial_turn)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def use_pytest_twisted(active: bool) -> None:
    """Called by the pytest plugin: pytest-twisted drives the reactor in the main thread."""
    global _pytest_twisted
    _pytest_twisted = active


def pytest_twisted_drives() -> bool:
    """True under pytest-twisted in its usual mode (its greenlet, in the main thread)."""
    reactor = _reactor()
    return (_pytest_twisted and not _trial_turn
            and not (reactor.running and not threadable.isInIOThread()))


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _in_reactor_greenlet() -> bool:
    """True inside pytest-twisted's reactor greenlet (any greenlet but the main one)."""
    try:
        import greenlet
    except ImportError:
        return False
    return greenlet.getcurrent().parent is not None


def reactor_here() -> bool:
    """True when blocking this thread would block the reactor."""
    reactor = _reactor()
    if reactor.running and threadable.isInIOThread():
        return True
    return pytest_twisted_drives() and _in_main_thread()


def refuse_here(what: str) -> ReactorInThisThread:
    """The ``ReactorInThisThread`` for ``what``, naming the fix for where we are."""
    if pytest_twisted_drives() and _in_main_thread():
        return ReactorInThisThread(
            f"{what}: pytest-twisted runs the Twisted reactor in this thread (test bodies "
            "inside it, fixtures and unittest setUp beside it), so a blocking mail client "
            f"here would freeze the server. Fix: {SYNC_FIXES}; or use the Twisted API "
            "(the mailhost fixture, MailHost's Deferreds).")
    return ReactorInThisThread(
        f"{what}: the Twisted reactor runs in this thread, so blocking calls would deadlock. "
        "Use MailHost (Deferreds) here, or call from another thread.")


def block(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` in the reactor's thread (it may return a Deferred); wait for its result."""
    reactor = _reactor()
    if reactor.running and not threadable.isInIOThread():
        return _from_thread(reactor, fn, *args, **kwargs)
    if pytest_twisted_drives() and _in_main_thread():
        if _in_reactor_greenlet():
            raise refuse_here("a blocking mail host call")
        import pytest_twisted

        # From the main greenlet: switch to the reactor's greenlet until it is done.
        d: defer.Deferred = defer.Deferred()
        reactor.callLater(0, lambda: defer.maybeDeferred(fn, *args, **kwargs).chainDeferred(d))
        return pytest_twisted.blockon(d)
    if reactor.running:
        raise refuse_here("a blocking mail host call")
    raise RuntimeError("the Twisted reactor is not running: start a blocking host with "
                       "mailhost.testing.running() or SyncMailHost.start()")


#: How long a blocking call waits for the reactor's thread beyond the call's own timeout.
WATCHDOG = 120.0


def _from_thread(reactor: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``blockingCallFromThread`` with a watchdog: a reactor whose thread is itself blocked
    (say, a test body inside the reactor waiting for this thread) is an error, not a hang."""
    results: queue.Queue[Any] = queue.Queue()

    def run() -> None:
        defer.maybeDeferred(fn, *args, **kwargs).addBoth(results.put)

    reactor.callFromThread(run)
    limit = WATCHDOG + float(kwargs.get("timeout") or 0)
    try:
        result = results.get(timeout=limit)
    except queue.Empty:
        raise ReactorConflict(
            f"the Twisted reactor did not answer within {limit:g}s: the thread that runs it "
            "is blocked (a blocking call inside the reactor, such as a test body that waits "
            "for this thread?). Run blocking code in a worker thread and wait for it there "
            "with a Deferred (threads.deferToThread).") from None
    if isinstance(result, failure.Failure):
        result.raiseException()
    return result


def hold(guard: bool = True) -> None:
    """A blocking host is starting: make sure a thread drives the reactor until ``release``.

    With ``guard``, refuse (``ReactorInThisThread``) where this thread drives the reactor:
    a blocking client here would freeze the host. The pytest fixtures pass
    ``guard=False``: they start hosts from the main greenlet and run test bodies in a
    worker thread.
    """
    global _holders
    reactor = _reactor()
    beside_pytest_twisted = (pytest_twisted_drives() and _in_main_thread()
                             and not _in_reactor_greenlet())
    if reactor_here() and (guard or not beside_pytest_twisted):
        raise refuse_here("starting a blocking mail host")
    if _trial_turn and _in_main_thread():
        raise ReactorInThisThread(
            "starting a blocking mail host: this trial TestCase spins the Twisted reactor in "
            "this thread. Use MailHostTestMixin or start_mailhost (Deferreds), or start the "
            "blocking host from a worker thread (threads.deferToThread).")
    with _lock:
        if _thread is not None or (reactor.running and not threadable.isInIOThread()):
            _holders += 1  # our thread, or the application's, drives it already
            return
        if pytest_twisted_drives():
            if not _in_main_thread():
                raise ReactorConflict(
                    "pytest-twisted has not started the Twisted reactor yet, and will run "
                    "it in the main thread: start blocking mail hosts from a fixture or a "
                    "test (mailhost_sync), not from another thread before that")
            _holders += 1  # block() waits through pytest-twisted's greenlet
            return
        _start_thread(reactor)
        _holders += 1


def _start_thread(reactor: Any) -> None:
    global _thread
    started = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            reactor.run(installSignalHandlers=False)
        except BaseException as e:  # e.g. ReactorNotRestartable after reactor.stop()
            failed.append(e)
            started.set()

    reactor.callWhenRunning(started.set)
    thread = threading.Thread(target=run, name="mailhost-reactor", daemon=True)
    thread.start()
    if not started.wait(30) or failed:
        raise RuntimeError("the Twisted reactor did not start in the background thread "
                           f"({failed[0]!r} — was it stopped for good with reactor.stop()? "
                           "a stopped reactor cannot be restarted)" if failed else
                           "the Twisted reactor did not start in the background thread")
    _thread = thread


def release() -> None:
    """A blocking host stopped; the last one hands the reactor back (crash, join)."""
    global _thread, _holders
    with _lock:
        _holders = max(0, _holders - 1)
        if _holders or _thread is None:
            return
        thread, _thread = _thread, None
        reactor = _reactor()
        if thread is threading.current_thread():
            reactor.crash()  # stopped from a reactor callback: the loop ends after it
            return
        reactor.callFromThread(reactor.crash)
        # Joined under the lock: a hold() meanwhile must not start a second loop.
        thread.join(30)


def background_thread_runs() -> bool:
    """True while our background thread drives the reactor (blocking hosts run)."""
    with _lock:
        return _thread is not None and _thread is not threading.current_thread()


def host_started(host: Any) -> None:
    """A MailHost started; those in the global reactor are what trial would trip on."""
    if getattr(host, "reactor", None) is _reactor():
        _live.add(host)


def host_stopped(host: Any) -> None:
    _live.discard(host)


def live_hosts() -> list[Any]:
    return list(_live)


def _describe(hosts: list[Any]) -> str:
    parts = []
    for host in hosts:
        try:
            parts.append(f"SMTP port {host.smtp_port}")
        except Exception:
            parts.append("a starting host")
    return ", ".join(parts)


def _set_aside(reactor: Any) -> list[tuple[Any, bool, bool]]:
    """What earlier non-trial tests left in the reactor, out of trial's way.

    trial judges a test by what is in the reactor after it, and removes all of it; under
    pytest the reactor may hold what pytest-twisted tests left behind (they are not held
    to that rule). So each test is judged by its own framework: timers still pending are
    cancelled now (trial's janitor would cancel them after the test anyway, and blame
    it), and sockets are taken out and put back after the test (public IReactorFDSet).
    """
    for call in reactor.getDelayedCalls():
        if call.active():
            log.warn("cancelled a timer left in the reactor before trial TestCase: {call}",
                     call=str(call))
            call.cancel()
    readers, writers = set(reactor.getReaders()), set(reactor.getWriters())
    return [(s, s in readers, s in writers) for s in reactor.removeAll()]


@contextlib.contextmanager
def trial_turn(what: str = "a trial TestCase") -> Iterator[None]:
    """Hand the global reactor to ``what`` (trial spins and crashes it itself), and back.

    Raises ``ReactorConflict`` where it cannot: mail hosts still run in the reactor (trial
    would find them and remove their listeners), or another thread runs it.
    """
    reactor = _reactor()
    hosts = live_hosts()
    with _lock:
        ours = _thread is not None
    if hosts or ours:
        raise ReactorConflict(
            f"{what} cannot run now: {len(hosts) or 'a'} mail host(s) still running in the "
            f"Twisted reactor ({_describe(hosts) or 'running() in the background thread'}), "
            "started by a wider-scoped fixture (mailhost_session, mailhost_module, "
            "mailhost_sync_session, ...) or a running() block that is still open. trial "
            "spins the reactor itself and removes whatever it finds in it after each test. "
            "Fix: use function-scoped fixtures (mailhost, mailhost_sync) in runs that "
            "contain trial TestCases, or run the trial TestCases in a separate pytest run "
            "(or with python -m twisted.trial).")
    if reactor.running and not threadable.isInIOThread():
        raise ReactorConflict(
            f"{what} cannot run now: another thread runs the Twisted reactor (an application "
            "or pytest-twisted's external-reactor mode), and trial spins the reactor in its "
            "own thread. Fix: run trial TestCases in a process of their own "
            "(python -m twisted.trial, or a separate pytest run).")
    global _trial_turn
    taken = False
    if reactor.running:
        if not _pytest_twisted or _in_reactor_greenlet():
            raise ReactorConflict(f"{what} cannot run inside a running reactor")
        import greenlet
        import pytest_twisted

        # pytest-twisted's greenlet is parked inside the reactor loop: learn which it is,
        # crash the loop (trial's own way to pause a reactor) and let its run() return.
        loop = pytest_twisted.blockon(task.deferLater(reactor, 0, greenlet.getcurrent))
        reactor.crash()
        loop.switch()
        taken = True
    hidden = _set_aside(reactor)
    _trial_turn = True
    try:
        yield
    finally:
        _trial_turn = False
        for selectable, reading, writing in hidden:
            if reading:
                reactor.addReader(selectable)
            if writing:
                reactor.addWriter(selectable)
        if taken:
            import pytest_twisted

            # A new greenlet for pytest-twisted; it restarts the loop at its next test.
            pytest_twisted.init_twisted_greenlet()
