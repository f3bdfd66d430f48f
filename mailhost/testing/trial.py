"""A per-test mail host for ``twisted.trial.unittest.TestCase``."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from mailhost.testing.host import MailHost


def start_mailhost(testcase: Any, **kwargs: Any) -> defer.Deferred:
    """Start a MailHost for ``testcase``, stopped by ``addCleanup``; Deferred with it.

    Under pytest-twisted, give the TestCase class ``mailhost_trial = True``.
    """
    host = MailHost(**kwargs)
    d = host.start()

    def started(result: MailHost) -> MailHost:
        testcase.addCleanup(host.stop)
        return result

    return d.addCallback(started)


class MailHostTestMixin:
    """Mix into a trial ``TestCase``: ``self.mailhost`` is a started MailHost per test.

    Set ``mailhost_options`` (the MailHost arguments) on the class to configure it.
    ``mailhost_trial`` lets the pytest plugin run these tests under pytest-twisted too.
    """

    mailhost_options: dict[str, Any] = {}
    mailhost_trial = True
    mailhost: MailHost

    def setUp(self) -> defer.Deferred:  # noqa: N802
        d = defer.maybeDeferred(super().setUp)  # type: ignore[misc, call-overload]

        def start(_: Any) -> defer.Deferred:
            return start_mailhost(self, **self.mailhost_options)

        def keep(host: MailHost) -> None:
            self.mailhost = host

        return d.addCallback(start).addCallback(keep)
