"""A per-test blocking mail host for a plain ``unittest.TestCase`` (Django's too).

``SyncMailHostTestMixin`` gives ``self.mailhost``, a started ``SyncMailHost``, to each
test. Where the current thread drives the Twisted reactor (the main thread under
pytest-twisted), the whole test (setUp, the test, tearDown, cleanups) runs in a worker
thread while the reactor serves, so the test's blocking mail client never freezes the
host; elsewhere the test runs as usual and the reactor runs in a background thread.
"""

from __future__ import annotations

import unittest
from typing import Any

from mailhost.testing import ownership
from mailhost.testing.threaded import SyncMailHost, start_sync


class SyncMailHostTestMixin:
    """Mix into a ``unittest.TestCase``: ``self.mailhost`` is a started ``SyncMailHost``.

    Set ``mailhost_options`` (the MailHost arguments) on the class to configure it.
    """

    mailhost_options: dict[str, Any] = {}
    mailhost: SyncMailHost

    def setUp(self) -> None:  # noqa: N802
        super().setUp()  # type: ignore[misc]
        self.mailhost = start_sync(dict(self.mailhost_options))
        self.addCleanup(self.mailhost.stop)  # type: ignore[attr-defined]

    def run(self, result: unittest.TestResult | None = None) -> Any:
        run = super().run  # type: ignore[misc]
        if not (ownership.reactor_here() and ownership.pytest_twisted_drives()):
            return run(result)
        from twisted.internet import threads

        return ownership.block(threads.deferToThread, run, result)
