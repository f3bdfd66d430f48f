# check_signup.py: plain Python, no Twisted in sight
import smtplib

from mailhost.testing import running


def send_welcome(port, to):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail("app@example.test", [to], b"Subject: Welcome\r\n\r\nHello!\r\n")


for _attempt in range(2):  # re-enterable as often as you like
    with running(users={"alice@example.test": "secret"}) as mail:
        send_welcome(mail.smtp_port, "alice@example.test")
        [msg] = mail.wait_for_messages(1, timeout=5)
        assert msg.subject == "Welcome"
print("ok")
