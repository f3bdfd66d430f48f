"""pytest fixtures for the test mail host (loaded through the ``pytest11`` entry point).

- ``mailhost``: a started ``MailHost`` per test, for pytest-twisted tests (Deferreds).
- ``mailhost_session``: one ``MailHost`` for the whole session (call ``reset()``).
- ``mailhost_sync``: a blocking ``SyncMailHost`` per test; no Twisted in the test.
  Under pytest-twisted every test body runs inside the reactor, where a blocking
  client would freeze the server, so a test using this fixture has its body run in
  a worker thread while the reactor keeps serving.

- trial ``TestCase``s using ``MailHostTestMixin`` (or with ``mailhost_trial = True``)
  also run under pytest-twisted: trial would spin the reactor itself, which pytest-twisted
  already runs in a greenlet, so their waits go through ``pytest_twisted.blockon``.

Options: ``@pytest.mark.mailhost(tls=True, users={...}, ...)`` (the MailHost
arguments) on a test. This module imports nothing heavy at import time: pytest loads
it for every run, and it must never fail to import.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers",
        "mailhost(**options): MailHost arguments for the mailhost/mailhost_sync fixtures",
    )


def _options(request: Any) -> dict[str, Any]:
    marker = request.node.get_closest_marker("mailhost")
    return dict(marker.kwargs) if marker is not None else {}


def _block(fn: Any, *args: Any) -> Any:
    from mailhost.testing.threaded import call, ensure_reactor_thread

    ensure_reactor_thread()
    return call(fn, *args)


@pytest.fixture
def mailhost(request: Any):
    """A started MailHost for this test (Twisted API); stopped afterwards."""
    from mailhost.testing.host import MailHost

    host = MailHost(**_options(request))
    _block(host.start)
    yield host
    _block(host.stop)


@pytest.fixture(scope="session")
def mailhost_session():
    """One MailHost shared by the session; call ``reset()`` for a clean slate."""
    from mailhost.testing.host import MailHost

    host = MailHost()
    _block(host.start)
    yield host
    _block(host.stop)


@pytest.fixture
def mailhost_sync(request: Any):
    """A started SyncMailHost (blocking API) for this test; stopped afterwards."""
    from mailhost.testing.host import MailHost
    from mailhost.testing.threaded import SyncMailHost

    host = SyncMailHost(MailHost(**_options(request)))
    _block(host._host.start)
    yield host
    _block(host._host.stop)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: Any) -> None:
    """Let a trial TestCase with ``mailhost_trial`` wait through pytest-twisted's reactor."""
    testcase = getattr(item, "_testcase", None)
    if testcase is None or not getattr(testcase, "mailhost_trial", False):
        return
    try:
        from mailhost.testing.threaded import _greenlet_blockon
    except Exception:
        return
    blockon = _greenlet_blockon()
    if blockon is None:
        return  # no pytest-twisted: trial spins the reactor itself, as usual
    from twisted.internet import defer

    def wait(d: defer.Deferred, running: Any = None) -> None:
        # Trial's own _wait runs reactor.run(); pytest-twisted's reactor is already
        # running in its greenlet, so switch to it until d has fired instead.
        done: defer.Deferred = defer.Deferred()

        def settled(result: object) -> object:
            if not done.called:
                done.callback(None)
            return result

        d.addBoth(settled)
        if not done.called:
            blockon(done)

    def clean_up(result: Any) -> None:
        # Trial's janitor would iterate the reactor from outside its greenlet (running
        # callbacks twice) and cancel every timer of the shared reactor; keep only its
        # logged-error check. MailHost.stop() already leaves nothing behind.
        for error in testcase._observer.getErrors():
            result.addError(testcase, error)
            testcase._passed = False
        testcase.flushLoggedErrors()
        testcase._removeObserver()
        if testcase._passed:
            result.addSuccess(testcase)

    # Private trial hooks, patched on this one instance only.
    testcase._wait = wait
    testcase._cleanUp = clean_up
    testcase._classCleanUp = lambda result: None


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: Any) -> bool | None:
    """Run the body of a plain test that uses ``mailhost_sync`` in a worker thread
    when pytest-twisted runs the reactor in this thread."""
    if "mailhost_sync" not in getattr(pyfuncitem, "fixturenames", ()):
        return None
    func = pyfuncitem.obj
    if inspect.iscoroutinefunction(func) or getattr(func, "_pytest_twisted_mark", None):
        return None
    try:
        from mailhost.testing.threaded import _greenlet_blockon
    except Exception:
        return None
    blockon = _greenlet_blockon()
    if blockon is None:
        return None
    from twisted.internet import threads

    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    blockon(threads.deferToThread(func, **kwargs))
    return True
