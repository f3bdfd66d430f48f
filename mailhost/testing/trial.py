"""A per-test mail host for ``twisted.trial.unittest.TestCase``.

trial spins the global reactor itself for each test. Under pytest (with or without
pytest-twisted) the mailhost plugin hands the reactor to trial for each trial
``TestCase`` (``mailhost.testing.ownership.trial_turn``); nothing here touches trial's
internals.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from mailhost.testing import ownership
from mailhost.testing.host import MailHost


def start_mailhost(testcase: Any, **kwargs: Any) -> defer.Deferred:
    """Start a MailHost for ``testcase``, stopped by ``addCleanup``; Deferred with it."""
    if ownership.background_thread_runs():
        raise ownership.ReactorConflict(
            "a trial TestCase cannot start a MailHost while blocking mail hosts "
            "(running(), mailhost_sync_*) keep the Twisted reactor in their background "
            "thread: trial spins the reactor in its own thread. Fix: close those running() "
            "blocks (or use function-scoped fixtures) before trial TestCases run, or run "
            "the trial TestCases in a separate process.")
    host = MailHost(**kwargs)
    d = host.start()

    def started(result: MailHost) -> MailHost:
        testcase.addCleanup(host.stop)
        return result

    return d.addCallback(started)


class MailHostTestMixin:
    """Mix into a trial ``TestCase``: ``self.mailhost`` is a started MailHost per test.

    Set ``mailhost_options`` (the MailHost arguments) on the class to configure it.
    """

    mailhost_options: dict[str, Any] = {}
    mailhost: MailHost

    def setUp(self) -> defer.Deferred:  # noqa: N802
        d = defer.maybeDeferred(super().setUp)  # type: ignore[misc, call-overload]

        def start(_: Any) -> defer.Deferred:
            return start_mailhost(self, **self.mailhost_options)

        def keep(host: MailHost) -> None:
            self.mailhost = host

        return d.addCallback(start).addCallback(keep)
