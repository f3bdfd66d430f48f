"""Every fault type as a real client sees it (smtplib, poplib, imaplib, raw sockets)."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket
import time

import pytest

from tests.testing import clients

pytestmark = pytest.mark.mailhost(users={"alice@example.test": "secret",
                                         "bob@example.test": "secret"})


def test_fail_rcpt_with_match_and_times(mailhost_sync):
    mailhost_sync.smtp.fail("RCPT", code=451, message="4.3.0 try later", match="bob@", times=1)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        clients.smtp_send(mailhost_sync.smtp_port, "bob@example.test", "refused")
    assert info.value.recipients["bob@example.test"] == (451, b"4.3.0 try later")
    # times=1: the retry goes through, and alice was never affected.
    assert clients.smtp_send(mailhost_sync.smtp_port, "bob@example.test", "retry") == {}
    [fault] = mailhost_sync.faults()
    assert fault.hits == 1


def test_fail_one_of_two_recipients(mailhost_sync):
    mailhost_sync.smtp.fail("RCPT", code=452, message="4.2.2 mailbox full", match="bob@",
                            times=None)
    refused = clients.smtp_send(mailhost_sync.smtp_port,
                                ["alice@example.test", "bob@example.test"], "partial")
    assert refused == {"bob@example.test": (452, b"4.2.2 mailbox full")}
    got = mailhost_sync.wait_for_messages(1)
    assert [(m.user, m.subject) for m in got] == [("alice@example.test", "partial")]


def test_delay_greeting_is_measured(mailhost_sync):
    mailhost_sync.smtp.delay("greeting", 1.0)
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", mailhost_sync.smtp_port, timeout=10) as s:
        elapsed = time.monotonic() - started
        assert s.noop()[0] == 250
    assert 0.9 <= elapsed < 5
    # times=1: the next connection is greeted at once.
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", mailhost_sync.smtp_port, timeout=10):
        assert time.monotonic() - started < 0.5


def test_delay_command(mailhost_sync):
    mailhost_sync.smtp.delay("MAIL", 0.5)
    with smtplib.SMTP("127.0.0.1", mailhost_sync.smtp_port, timeout=10) as s:
        s.ehlo()
        started = time.monotonic()
        assert s.mail("x@remote.test")[0] == 250
        assert time.monotonic() - started >= 0.45
        started = time.monotonic()
        assert s.rcpt("alice@example.test")[0] == 250
        assert time.monotonic() - started < 0.4


def test_drop_after_data_stores_nothing(mailhost_sync):
    mailhost_sync.smtp.drop_after("DATA")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        clients.smtp_send(mailhost_sync.smtp_port, "alice@example.test", "lost")
    with pytest.raises(TimeoutError):
        mailhost_sync.wait_for_messages(1, timeout=0.5)
    assert mailhost_sync.messages("alice@example.test") == []
    # The fault was used up; the client's retry is delivered once.
    clients.smtp_send(mailhost_sync.smtp_port, "alice@example.test", "retried")
    assert [m.subject for m in mailhost_sync.wait_for_messages(1)] == ["retried"]


def test_drop_after_rcpt(mailhost_sync):
    mailhost_sync.smtp.drop_after("RCPT")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        clients.smtp_send(mailhost_sync.smtp_port, "alice@example.test", "cut")


def test_fail_greeting(mailhost_sync):
    mailhost_sync.smtp.fail("greeting", code=421, message="4.3.2 go away")
    with pytest.raises(smtplib.SMTPConnectError) as info:
        smtplib.SMTP("127.0.0.1", mailhost_sync.smtp_port, timeout=10)
    assert info.value.smtp_code == 421


def test_reject_auth(mailhost_sync):
    mailhost_sync.smtp.reject_auth()
    with smtplib.SMTP("127.0.0.1", mailhost_sync.submission_port, timeout=10) as s:
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            s.login("alice@example.test", "secret")
        assert info.value.smtp_code == 535
    mailhost_sync.clear_faults()
    with smtplib.SMTP("127.0.0.1", mailhost_sync.submission_port, timeout=10) as s:
        assert s.login("alice@example.test", "secret")[0] == 235


def test_pop3_fault(mailhost_sync):
    mailhost_sync.deliver("alice@example.test", "Subject: one\n\nx\n")
    mailhost_sync.pop3.fail("RETR", message="[SYS/TEMP] disk on fire")
    p = poplib.POP3("127.0.0.1", mailhost_sync.pop3_port, timeout=10)
    try:
        p.user("alice@example.test")
        p.pass_("secret")
        with pytest.raises(poplib.error_proto) as info:
            p.retr(1)
        assert b"disk on fire" in info.value.args[0]
        # The session goes on; the next RETR is the real one (multi-line tracking).
        assert b"Subject: one" in b"\r\n".join(p.retr(1)[1])
        assert p.stat()[0] == 1
    finally:
        p.quit()


def test_pop3_reject_auth(mailhost_sync):
    mailhost_sync.pop3.reject_auth()
    p = poplib.POP3("127.0.0.1", mailhost_sync.pop3_port, timeout=10)
    try:
        p.user("alice@example.test")
        with pytest.raises(poplib.error_proto, match="AUTH"):
            p.pass_("secret")
    finally:
        p.close()


def test_imap_fault(mailhost_sync):
    mailhost_sync.imap.fail("LOGIN", message="[UNAVAILABLE] maintenance")
    mailhost_sync.imap.fail("SELECT", message="[UNAVAILABLE] try later")
    m = imaplib.IMAP4("127.0.0.1", mailhost_sync.imap_port, timeout=10)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="maintenance"):
            m.login("alice@example.test", "secret")
        assert m.login("alice@example.test", "secret")[0] == "OK"
        # imaplib returns NO for SELECT rather than raising.
        assert m.select("INBOX") == ("NO", [b"[UNAVAILABLE] try later"])
        assert m.select("INBOX")[0] == "OK"
    finally:
        m.logout()


def test_imap_reject_auth(mailhost_sync):
    mailhost_sync.imap.reject_auth()
    m = imaplib.IMAP4("127.0.0.1", mailhost_sync.imap_port, timeout=10)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            m.login("alice@example.test", "secret")
    finally:
        m.shutdown()


def test_imap_literal_is_not_read_as_a_command(mailhost_sync):
    mailhost_sync.imap.fail("SELECT", times=None)
    body = b"Subject: lit\r\n\r\na2 SELECT INBOX\r\nx\r\n"
    m = imaplib.IMAP4("127.0.0.1", mailhost_sync.imap_port, timeout=10)
    try:
        m.login("alice@example.test", "secret")
        assert m.append("INBOX", None, None, body)[0] == "OK"
        assert m.select("INBOX")[0] == "NO"
    finally:
        m.logout()
    [msg] = mailhost_sync.messages("alice@example.test")
    assert "a2 SELECT INBOX" in msg.get_content()
    assert mailhost_sync.faults()[0].hits == 1


def _read_replies(sock: socket.socket, n: int) -> list[bytes]:
    buf, replies = b"", []
    deadline = time.monotonic() + 10
    while len(replies) < n and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
        while b"\r\n" in buf:
            line, buf = buf.split(b"\r\n", 1)
            if line[3:4] == b" ":
                replies.append(line)
    return replies


def test_pipelined_commands_and_body_that_looks_like_commands(mailhost_sync):
    mailhost_sync.smtp.fail("RCPT", code=451, message="4.7.1 greylisted", match="bob@",
                            times=None)
    mailhost_sync.smtp.fail("MAIL", code=421, message="never", match="inside@", times=None)
    with socket.create_connection(("127.0.0.1", mailhost_sync.smtp_port), timeout=10) as s:
        assert _read_replies(s, 1)[0].startswith(b"220")
        s.sendall(b"EHLO client.test\r\n")
        assert _read_replies(s, 1)[0].startswith(b"250")
        # One packet: MAIL, RCPT (ok), RCPT (fault), RCPT (ok), DATA.
        s.sendall(b"MAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
                  b"RCPT TO:<bob@example.test>\r\nRCPT TO:<alice+tag@example.test>\r\nDATA\r\n")
        codes = [r[:3] for r in _read_replies(s, 5)]
        assert codes == [b"250", b"250", b"451", b"250", b"354"]
        s.sendall(b"Subject: piped\r\n\r\nMAIL FROM:<inside@x>\r\nRCPT TO:<bob@example.test>\r\n"
                  b"..leading dot\r\n.\r\nQUIT\r\n")
        codes = [r[:3] for r in _read_replies(s, 2)]
        assert codes == [b"250", b"221"]
    [msg] = mailhost_sync.messages("alice@example.test")
    text = msg.get_content()
    assert "MAIL FROM:<inside@x>" in text and "RCPT TO:<bob@example.test>" in text
    assert ".leading dot" in text
    hits = {f.command: f.hits for f in mailhost_sync.faults()}
    assert hits == {"RCPT": 1, "MAIL": 0}


def test_list_and_clear(mailhost_sync):
    mailhost_sync.smtp.fail("RCPT", code=451, match="bob@")
    mailhost_sync.pop3.delay("greeting", 1.5)
    mailhost_sync.imap.drop_after("FETCH", times=None)
    described = [f.describe() for f in mailhost_sync.faults()]
    assert described == ["smtp fail RCPT -> 451 4.3.0 Requested action aborted: injected fault "
                         "(match 'bob@'), 1 left",
                         "pop3 delay GREETING 1.5s, 1 left",
                         "imap drop_after FETCH, always"]
    assert [f.protocol for f in mailhost_sync.pop3.faults()] == ["pop3"]
    mailhost_sync.pop3.clear()
    assert len(mailhost_sync.faults()) == 2
    mailhost_sync.clear_faults()
    assert mailhost_sync.faults() == []
    clients.smtp_send(mailhost_sync.smtp_port, "bob@example.test", "no faults now")
    assert len(mailhost_sync.wait_for_messages(1)) == 1


def test_imap_idle_and_sasl_pass_through(mailhost_sync):
    from imapclient import IMAPClient

    mailhost_sync.imap.fail("NOOP", message="noop fault", times=None)
    with IMAPClient("127.0.0.1", port=mailhost_sync.imap_port, ssl=False, timeout=10) as c:
        c.plain_login("alice@example.test", "secret")  # AUTHENTICATE PLAIN
        c.select_folder("INBOX")
        c.idle()
        mailhost_sync.deliver("alice@example.test", "Subject: pushed\n\nx\n")
        responses = c.idle_check(timeout=5)
        c.idle_done()
        assert any(r[1] == b"EXISTS" for r in responses)
        # After IDLE/DONE the wrapper is back in command mode: NOOP hits the fault.
        with pytest.raises(IMAPClient.Error, match="noop fault"):
            c.noop()
        assert list(c.search("ALL")) == [1]


def test_imap_literal_plus_of_a_failed_command_is_swallowed(mailhost_sync):
    mailhost_sync.imap.fail("APPEND", message="append refused")
    body = b"Subject: lp\r\n\r\na9 LOGOUT\r\n"
    with socket.create_connection(("127.0.0.1", mailhost_sync.imap_port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"* OK")
        s.sendall(b"a1 LOGIN alice@example.test secret\r\n")
        assert f.readline().startswith(b"a1 OK")
        # Pipelined: a failed APPEND with a LITERAL+ body, then a real APPEND.
        s.sendall(b"a2 APPEND INBOX {%d+}\r\n%s\r\na3 APPEND INBOX {%d+}\r\n%s\r\n"
                  % (len(body), body, len(body), body))
        lines = [f.readline() for _ in range(2)]
        assert lines[0] == b"a2 NO append refused\r\n"
        assert lines[1].startswith(b"a3 OK")
        s.sendall(b"a4 LOGOUT\r\n")
    assert len(mailhost_sync.messages("alice@example.test")) == 1


def test_pop3_drop_after_dele_deletes_nothing(mailhost_sync):
    mailhost_sync.deliver("alice@example.test", "Subject: keep me\n\nx\n")
    mailhost_sync.pop3.drop_after("DELE")
    p = poplib.POP3("127.0.0.1", mailhost_sync.pop3_port, timeout=10)
    p.user("alice@example.test")
    p.pass_("secret")
    with pytest.raises((poplib.error_proto, OSError)):
        p.dele(1)
    p.close()
    # No QUIT was processed, so POP3 deleted nothing.
    assert [m["Subject"] for m in mailhost_sync.messages("alice@example.test")] == ["keep me"]


def test_imap_drop_after_store_runs_the_command(mailhost_sync):
    mailhost_sync.deliver("alice@example.test", "Subject: flagged\n\nx\n")
    mailhost_sync.imap.drop_after("STORE")
    m = imaplib.IMAP4("127.0.0.1", mailhost_sync.imap_port, timeout=10)
    m.login("alice@example.test", "secret")
    m.select("INBOX")
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        m.store("1", "+FLAGS", "(\\Flagged)")
    m.shutdown()
    m = imaplib.IMAP4("127.0.0.1", mailhost_sync.imap_port, timeout=10)
    try:
        m.login("alice@example.test", "secret")
        m.select("INBOX")
        typ, data = m.fetch("1", "(FLAGS)")
        assert b"\\Flagged" in data[0]  # it ran; only the reply was lost
    finally:
        m.logout()
