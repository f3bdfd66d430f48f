"""The test host's shape (issue 20): ``ports=``, ``protocols=``, ``reset(keep_users=)``,
GreenMail-style ``messages_for_domain`` and ``purge``, and the mail view, on the
Deferred host and the sync host alike."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket

import pytest
import pytest_twisted
from twisted.internet import threads
from zope.interface.verify import verifyObject

from mailhost.mailview import IMailView, MessageQuery
from mailhost.testing import MailHost, running
from tests.mailhost_process import free_port
from tests.testing import clients


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_protocols_and_ports_choose_the_listeners(mailhost_sync):
    smtp, imap = free_port(), free_port()
    with running(users={"a@example.test": "pw"}, protocols=("smtp", "imap"),
                 ports={"smtp": smtp, "imap": imap}) as host:
        assert (host.smtp_port, host.imap_port) == (smtp, imap)
        assert host.protocols == ("smtp", "imap")
        clients.smtp_send(smtp, "a@example.test", "chosen ports")
        host.wait_for_messages(1, timeout=60)
        assert clients.imap_subjects(imap, "a@example.test", "pw") == ["chosen ports"]
        for name in ("pop3_port", "submission_port"):
            with pytest.raises(AttributeError, match="protocols="):
                getattr(host, name)
    assert _refused(smtp) and _refused(imap)  # stopped: the ports are free again


def test_tls_ports_can_be_chosen_too(mailhost_sync):
    imaps = free_port()
    with running(tls=True, protocols=["imap"], ports={"imaps": imaps},
                 users={"a@example.test": "pw"}) as host:
        assert host.imaps_port == imaps and host.imap_port not in (0, imaps)
        import ssl

        context = ssl.create_default_context(cafile=host.ca_file)
        with imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=context, timeout=10) as imap:
            imap.login("a@example.test", "pw")


@pytest.mark.parametrize("kwargs, needle", [
    ({"protocols": ("smtp", "gopher")}, "protocols must name"),
    ({"protocols": ()}, "protocols must name"),
    ({"protocols": ("imap",), "ports": {"smtp": 2525}}, "no such listener"),
    ({"ports": {"imaps": 2993}}, "no such listener"),  # TLS ports need tls=True
])
def test_bad_shapes_are_refused_at_once(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        MailHost(**kwargs)


def test_a_taken_port_fails_the_start_in_one_line(mailhost_sync):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(Exception, match=f"smtp.listen tcp:{port}.*cannot listen"):
            with running(protocols=["smtp"], ports={"smtp": port}):
                pass


def test_sync_reset_keeps_users_when_asked_and_helpers(mailhost_sync):
    with running(domains=["a.test", "b.test"], users={"ann@a.test": "pw"}) as host:
        host.add_user("bob@b.test", "pw2")
        clients.smtp_send(host.smtp_port, ["ann@a.test", "bob@b.test"], "one")
        clients.smtp_send(host.smtp_port, "bob@b.test", "two")
        host.wait_for_messages(3, timeout=60)
        got = host.messages_for_domain("b.test")
        assert [(m.user, m.subject) for m in got] == [("bob@b.test", "one"), ("bob@b.test", "two")]
        assert [m.subject for m in host.messages_for_domain("A.TEST")] == ["one"]
        assert host.messages_for_domain("c.test") == []
        view = host.mail_view
        assert view.mailboxes() == ["ann@a.test", "bob@b.test"]
        assert [m.subject for m in view.messages(MessageQuery(domain="b.test", limit=1))] == \
            ["two"]

        host.reset(keep_users=True)
        assert host.users() == ["ann@a.test", "bob@b.test"]
        assert host.received == [] and view.messages() == []
        assert clients.pop3_subjects(host.pop3_port, "bob@b.test", "pw2") == []

        clients.smtp_send(host.smtp_port, "bob@b.test", "three")
        host.wait_for_messages(1, timeout=60)
        assert host.purge() == 1
        assert host.received == [] and view.messages() == []
        assert host.users() == ["ann@a.test", "bob@b.test"]  # purge keeps users

        host.reset()
        assert host.users() == ["ann@a.test"]
        with smtplib.SMTP("127.0.0.1", host.smtp_port, timeout=10) as smtp:
            smtp.ehlo()
            smtp.mail("x@remote.test")
            assert smtp.rcpt("bob@b.test")[0] == 550  # gone with reset()


def test_capture_reset_empties_every_mailbox(mailhost_sync):
    with running(capture=True) as host:
        clients.smtp_send(host.smtp_port, ["x@one.test", "y@two.test"], "captured")
        host.wait_for_messages(2, timeout=60)
        host.reset()
        assert host.mail_view.messages() == [] and host.received == []
        clients.smtp_send(host.smtp_port, "x@one.test", "again")
        assert [m.subject for m in host.wait_for_messages(1, timeout=60)] == ["again"]


@pytest_twisted.ensureDeferred
async def test_deferred_host_has_the_same_shape():
    host = MailHost(domains=["a.test"], users={"ann@a.test": "pw"}, protocols=["smtp", "pop3"])
    await host.start()
    try:
        assert verifyObject(IMailView, host.mail_view)
        with pytest.raises(AttributeError):
            _ = host.imap_port
        await host.add_user("bob@a.test", "pw")
        await threads.deferToThread(clients.smtp_send, host.smtp_port,
                                    ["ann@a.test", "bob@a.test"], "hello")
        await host.wait_for_messages(2, timeout=60)
        got = await host.messages_for_domain("a.test")
        assert sorted(m.user for m in got) == ["ann@a.test", "bob@a.test"]
        assert await host.purge() == 2
        assert await host.mail_view.messages() == []
        await host.reset(keep_users=True)
        assert host.users() == ["ann@a.test", "bob@a.test"]
        await host.reset()
        assert host.users() == ["ann@a.test"]

        def pop_login() -> None:
            p = poplib.POP3("127.0.0.1", host.pop3_port, timeout=10)
            p.user("ann@a.test")
            p.pass_("pw")
            p.quit()

        await threads.deferToThread(pop_login)
    finally:
        await host.stop()


def test_the_capture_example_of_the_docs_runs(mailhost_sync):
    """The capture-mode snippet of docs/testing.md runs as written."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "testing.md").read_text()
    section = doc[doc.index("## Capture mode, chosen ports"):]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    exec(compile(code, "docs/testing.md", "exec"), {})
