# test_lifecycle_sync.py: one blocking host per class, module or session
import smtplib

import pytest


def send(port, to, subject):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail("app@example.test", [to], f"Subject: {subject}\r\n\r\nx\r\n".encode())


pytestmark = pytest.mark.mailhost(users={"module@example.test": "pw"})  # module scope


def test_module_host_is_shared(mailhost_sync_module):
    mailhost_sync_module.reset()  # a shared host: start from a clean slate
    send(mailhost_sync_module.smtp_port, "module@example.test", "first")
    assert [m.subject for m in mailhost_sync_module.wait_for_messages(1)] == ["first"]


def test_module_host_kept_its_mail(mailhost_sync_module):
    assert [m.subject for m in mailhost_sync_module.received] == ["first"]


@pytest.mark.mailhost(users={"class@example.test": "pw"})  # class scope
class TestOneHostPerClass:
    def test_send(self, mailhost_sync_class):
        send(mailhost_sync_class.smtp_port, "class@example.test", "hello")
        assert len(mailhost_sync_class.wait_for_messages(1)) == 1

    def test_same_host(self, mailhost_sync_class):
        assert len(mailhost_sync_class.received) == 1
        mailhost_sync_class.reset()
        assert mailhost_sync_class.received == []


def test_session_host(mailhost_sync_session):
    mailhost_sync_session.add_user("session@example.test", "pw")
    send(mailhost_sync_session.smtp_port, "session@example.test", "once")
    assert len(mailhost_sync_session.wait_for_messages(1)) == 1
    mailhost_sync_session.reset()
