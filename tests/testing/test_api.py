"""The public face of mailhost.testing, and the interfaces its pieces provide."""

from __future__ import annotations

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

import mailhost.testing
from mailhost.outbound.interfaces import IOutboundQueue, IQueueWriter
from mailhost.store.interfaces import IFolderListener
from mailhost.testing import host as host_module


def test_exports_are_pinned():
    assert sorted(mailhost.testing.__all__) == [
        "Fault", "FaultSet", "MailHost", "MailHostTimeout", "OutboundMessage",
        "ReactorConflict", "ReactorInThisThread", "ReceivedMessage", "SyncMailHost", "running"]
    assert issubclass(mailhost.testing.MailHostTimeout, TimeoutError)


def test_interfaces():
    queue = host_module._CaptureQueue()
    assert verifyObject(IOutboundQueue, queue)
    writer = queue.new_message("a@b")
    assert verifyObject(IQueueWriter, writer)
    writer.abort()
    assert verifyObject(IFolderListener, host_module._InboxListener(None, "a@b"))


def test_as_bytes_normalises_line_ends():
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["Subject"] = "x"
    msg.set_content("body\n")
    assert b"\r\n" in host_module.as_bytes(msg)
    assert host_module.as_bytes("a\nb\r\n") == b"a\r\nb\r\n"


@pytest_twisted.ensureDeferred
async def test_deliver_to_unknown_user_is_a_clear_error(mailhost):
    with pytest.raises(KeyError, match="add_user"):
        mailhost.deliver("nobody@example.test", b"x")
    await mailhost.add_user("x@example.test", "pw")
    assert mailhost.users() == ["x@example.test"]


def test_running_from_the_reactor_thread_is_refused():
    from twisted.internet import reactor
    from twisted.python import threadable

    from mailhost.testing.threaded import ReactorInThisThread, call

    # pytest-twisted runs this body inside the reactor (its greenlet, this thread).
    assert reactor.running and threadable.isInIOThread()
    with pytest.raises(ReactorInThisThread, match="mailhost_sync"):
        call(lambda: None)


def test_the_testing_package_patches_no_trial_or_pytest_internals():
    """Issue 14/20: the pytest plugin used to patch trial's private _wait/_cleanUp/... on
    every mailhost_trial TestCase. The hand-over of the reactor uses public APIs only."""
    import re
    from pathlib import Path

    import mailhost.testing

    root = Path(mailhost.testing.__file__).parent
    source = "\n".join(p.read_text() for p in root.glob("*.py"))
    for private in ("._wait", "._cleanUp", "._classCleanUp", "._observer", "._passed",
                    "._removeObserver", "._instances", "._fixtureinfo", "._reactorMethods"):
        assert not re.search(re.escape(private) + r"\b", source), private


def test_a_blocked_reactor_is_an_error_not_a_hang(monkeypatch):
    """A thread waiting on a reactor whose own thread waits for it: ReactorConflict after
    the watchdog, instead of both waiting for ever."""
    import threading

    from mailhost.testing import ownership
    from mailhost.testing.threaded import call

    monkeypatch.setattr(ownership, "WATCHDOG", 0.5)
    errors: list[BaseException] = []

    def worker():
        try:
            call(lambda: None)
        except BaseException as e:
            errors.append(e)

    # This body runs inside pytest-twisted's reactor; joining blocks the reactor.
    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ownership.ReactorConflict)
    assert "did not answer" in str(errors[0])
