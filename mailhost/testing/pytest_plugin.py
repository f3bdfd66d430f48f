"""pytest fixtures for the test mail host (loaded through the ``pytest11`` entry point).

Fixtures, at four scopes (a wider-scoped host is shared: call ``reset()`` for a clean
slate):

=========================  ==========================  ==============================
scope                      Twisted API (Deferreds)     blocking API (``SyncMailHost``)
=========================  ==========================  ==============================
function                   ``mailhost``                ``mailhost_sync``
class                      ``mailhost_class``          ``mailhost_sync_class``
module                     ``mailhost_module``         ``mailhost_sync_module``
session                    ``mailhost_session``        ``mailhost_sync_session``
=========================  ==========================  ==============================

Options: ``@pytest.mark.mailhost(users={...}, tls=True, ...)`` (the MailHost arguments)
on the test (function scope), its class (class scope) or module (``pytestmark``, module
scope); for the session hosts, override the ``mailhost_session_options`` fixture.

How the reactor is shared (see ``mailhost.testing.ownership``):

- The Twisted-API fixtures need pytest-twisted, which runs each test inside the reactor;
  without it (``-p no:twisted``) they fail at once, saying so.
- The blocking fixtures work with and without pytest-twisted. Under pytest-twisted the
  body of a test that uses one runs in a worker thread while the reactor serves (a
  blocking client inside the reactor would freeze the host).
- Each trial ``TestCase`` gets the reactor to itself: trial spins it for each test, so
  pytest-twisted's loop is paused around it (no trial internals are touched). Where that
  is impossible (a wider-scoped host still runs in the reactor), the test fails with a
  ``ReactorConflict`` naming the fix.

This module imports nothing heavy at import time: pytest loads it for every run, and it
must never fail to import.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from typing import Any

import pytest

SYNC_FIXTURES = frozenset({"mailhost_sync", "mailhost_sync_class", "mailhost_sync_module",
                           "mailhost_sync_session"})


def _pytest_twisted_active(config: Any) -> bool:
    return bool(config.pluginmanager.hasplugin("twisted"))


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers",
        "mailhost(**options): MailHost arguments for the mailhost fixtures of this test, "
        "class (class-scoped fixtures) or module (module-scoped fixtures)",
    )
    if _pytest_twisted_active(config):
        from mailhost.testing import ownership

        ownership.use_pytest_twisted(True)


def pytest_unconfigure(config: Any) -> None:
    if "mailhost.testing.ownership" in sys.modules:
        sys.modules["mailhost.testing.ownership"].use_pytest_twisted(False)


def _options(request: Any) -> dict[str, Any]:
    marker = request.node.get_closest_marker("mailhost")
    return dict(marker.kwargs) if marker is not None else {}


def _twisted_host(request: Any, options: dict[str, Any]) -> Iterator[Any]:
    if not _pytest_twisted_active(request.config):
        pytest.fail(
            f"{request.fixturename} is the Twisted API (Deferreds) and needs pytest-twisted, "
            "which is not active (-p no:twisted?). Fix: run with pytest-twisted, or use the "
            f"blocking {request.fixturename.replace('mailhost', 'mailhost_sync', 1)} fixture.",
            pytrace=False)
    from mailhost.testing.host import MailHost
    from mailhost.testing.ownership import block

    host = MailHost(**options)
    block(host.start)
    try:
        yield host
    finally:
        if host.running:
            block(host.stop)


def _sync_host(options: dict[str, Any]) -> Iterator[Any]:
    from mailhost.testing.threaded import start_sync

    # Unguarded: under pytest-twisted this runs beside the reactor's greenlet, and the
    # bodies of the tests that use it run in a worker thread (pytest_pyfunc_call).
    host = start_sync(options, guard=False)
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture
def mailhost(request: Any) -> Iterator[Any]:
    """A started MailHost for this test (Twisted API); stopped afterwards."""
    yield from _twisted_host(request, _options(request))


@pytest.fixture(scope="class")
def mailhost_class(request: Any) -> Iterator[Any]:
    """One MailHost (Twisted API) for the tests of a class; call ``reset()``."""
    yield from _twisted_host(request, _options(request))


@pytest.fixture(scope="module")
def mailhost_module(request: Any) -> Iterator[Any]:
    """One MailHost (Twisted API) for the tests of a module; call ``reset()``."""
    yield from _twisted_host(request, _options(request))


@pytest.fixture(scope="session")
def mailhost_session_options() -> dict[str, Any]:
    """The MailHost arguments of the session hosts; override it in a conftest.py."""
    return {}


@pytest.fixture(scope="session")
def mailhost_session(request: Any, mailhost_session_options: dict[str, Any]) -> Iterator[Any]:
    """One MailHost (Twisted API) for the session; call ``reset()`` for a clean slate."""
    yield from _twisted_host(request, dict(mailhost_session_options))


@pytest.fixture
def mailhost_sync(request: Any) -> Iterator[Any]:
    """A started SyncMailHost (blocking API) for this test; stopped afterwards."""
    yield from _sync_host(_options(request))


@pytest.fixture(scope="class")
def mailhost_sync_class(request: Any) -> Iterator[Any]:
    """One SyncMailHost for the tests of a class; call ``reset()``."""
    yield from _sync_host(_options(request))


@pytest.fixture(scope="module")
def mailhost_sync_module(request: Any) -> Iterator[Any]:
    """One SyncMailHost for the tests of a module; call ``reset()``."""
    yield from _sync_host(_options(request))


@pytest.fixture(scope="session")
def mailhost_sync_session(mailhost_session_options: dict[str, Any]) -> Iterator[Any]:
    """One SyncMailHost for the session; call ``reset()`` for a clean slate."""
    yield from _sync_host(dict(mailhost_session_options))


def _is_trial_case(item: Any) -> bool:
    """A ``twisted.trial.unittest.TestCase`` (which spins the reactor) item."""
    trial = sys.modules.get("twisted.trial.unittest")
    cls = getattr(item, "cls", None)
    return trial is not None and isinstance(cls, type) and issubclass(cls, trial.TestCase)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: Any) -> Any:
    """Give each trial TestCase the reactor to itself (trial spins it per test)."""
    if not _is_trial_case(item):
        return (yield)
    from mailhost.testing.ownership import trial_turn

    with trial_turn(f"trial TestCase {item.nodeid}"):
        return (yield)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: Any) -> bool | None:
    """Under pytest-twisted, run the body of a plain test that uses a blocking host in a
    worker thread, while the reactor (in this thread) serves."""
    if not SYNC_FIXTURES & set(getattr(pyfuncitem, "fixturenames", ())):
        return None
    if not _pytest_twisted_active(pyfuncitem.config):
        return None
    func = pyfuncitem.obj
    if inspect.iscoroutinefunction(func) or inspect.isgeneratorfunction(inspect.unwrap(func)):
        return None  # a Twisted test (async, inlineCallbacks): pytest-twisted runs it
    from mailhost.testing import ownership

    if not (ownership.reactor_here() and ownership.pytest_twisted_drives()):
        return None
    from twisted.internet import threads

    names = inspect.signature(func).parameters
    kwargs = {name: value for name, value in pyfuncitem.funcargs.items() if name in names}
    ownership.block(threads.deferToThread, func, **kwargs)
    return True
