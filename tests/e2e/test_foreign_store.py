"""A store written in the tests serves SMTP, POP3 and IMAP: the contract is complete.

``DictStore`` (tests/store/dictstore.py) knows only ``mailhost.store.interfaces``; it
is handed to ``makeService(config, store=...)`` and nothing else changes: the default
passwd checker, realm and directory, real loopback listeners, and clients no one
here wrote (smtplib, poplib, imaplib).
"""

from __future__ import annotations

import imaplib
import io
import os
import poplib
import smtplib

import pytest_twisted
from twisted.internet import threads

from mailhost.auth.hashing import hash_password
from mailhost.auth.passwd import PasswdEntry, PasswdFile
from mailhost.config import Config
from mailhost.service import makeService
from tests.store.dictstore import DictStore

USER, PASSWORD = "alice@example.test", "alice-pw"
SMALL = b"Subject: small\r\nFrom: bob@remote.test\r\n\r\nhello from SMTP\r\n"
BIG = (b"Subject: big\r\nFrom: bob@remote.test\r\n\r\n"
       + b"".join(b".line %06d of a big message\r\n" % i for i in range(20_000)))  # ~600 KB
DRAFT = b"Subject: draft\r\nFrom: alice@example.test\r\n\r\nappended over IMAP\r\n"


def config_in(data_dir: str) -> Config:
    config = Config()
    config.server.data_dir = data_dir
    config.server.domains = ["example.test"]
    config.server.allow_plaintext_auth = "yes"
    config.auth.create_postmaster = False
    for section in (config.smtp, config.submission, config.pop3, config.imap):
        section.listen = ["tcp:0:interface=127.0.0.1"]
    passwd = PasswdFile(config.data_path(config.auth.passwd_file))
    os.makedirs(os.path.dirname(passwd.path), exist_ok=True)
    passwd.save({USER: PasswdEntry(USER, hash_password(PASSWORD))})
    return config


def clients(ports: dict[str, int]) -> dict[str, object]:
    seen: dict[str, object] = {}
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as s:
        s.sendmail("bob@remote.test", [USER], SMALL)
        s.sendmail("bob@remote.test", [USER], BIG)

    p = poplib.POP3("127.0.0.1", ports["pop3"], timeout=30)
    p.user(USER)
    p.pass_(PASSWORD)
    seen["pop3_stat"] = p.stat()
    seen["pop3_uidl"] = p.uidl()[1]
    seen["pop3_list"] = [int(line.split()[1]) for line in p.list()[1]]
    seen["pop3_retr"] = [b"\r\n".join(p.retr(n)[1]) + b"\r\n" for n in (1, 2)]
    seen["pop3_top"] = p.top(2, 2)[1]
    p.quit()

    m = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=30)
    m.login(USER, PASSWORD)
    seen["append"] = m.append("Drafts", r"(\Draft)", None, DRAFT)
    seen["select"] = m.select("INBOX")
    seen["fetch"] = m.uid("FETCH", "1:*", "(FLAGS RFC822.SIZE BODY.PEEK[] BODYSTRUCTURE)")
    seen["partial"] = m.uid("FETCH", "2", "(BODY.PEEK[TEXT]<100000.70000>)")
    seen["search"] = m.uid("SEARCH", "BODY", "\"line 019999\"")
    seen["copy"] = m.uid("COPY", "1", "Trash")
    seen["store"] = m.uid("STORE", "1", "+FLAGS", r"(\Deleted)")
    seen["expunge"] = m.expunge()
    seen["drafts"] = m.select("Drafts")
    seen["draft"] = m.fetch("1", "(FLAGS BODY.PEEK[])")
    m.logout()
    return seen


@pytest_twisted.inlineCallbacks
def test_a_store_written_in_the_test_serves_smtp_pop3_and_imap(tmp_path):
    config = config_in(str(tmp_path))
    store = DictStore()
    svc = makeService(config, store=store)
    svc.startService()
    try:
        ports = yield svc.wait_listening()
        seen = yield threads.deferToThread(
            clients, {kind: ports[kind][0].getHost().port for kind in ("smtp", "pop3", "imap")})
    finally:
        yield svc.stopService()

    # SMTP delivered into the DictStore (with our trace fields in front).
    assert USER in store._accounts
    account = store._accounts[USER]
    inbox, drafts, trash = (account._folders[n] for n in ("INBOX", "Drafts", "Trash"))
    # POP3: both messages, byte for byte, stuffing undone by poplib.
    count, _ = seen["pop3_stat"]
    assert count == 2
    assert seen["pop3_retr"][0].endswith(SMALL) and seen["pop3_retr"][1].endswith(BIG)
    assert [len(m) for m in seen["pop3_retr"]] == seen["pop3_list"]
    assert seen["pop3_top"][-3:] == [b"", b".line 000000 of a big message",
                                     b".line 000001 of a big message"]
    assert all(b"%08x" % inbox.uid_validity in line for line in seen["pop3_uidl"])
    # IMAP: APPEND through the account, FETCH streaming a 600 KB literal, SEARCH, COPY.
    typ, data = seen["append"]
    assert typ == "OK" and b"APPENDUID %d 1" % drafts.uid_validity in data[0]
    assert seen["select"] == ("OK", [b"2"])
    typ, data = seen["fetch"]
    assert typ == "OK"
    literals = [part[1] for part in data if isinstance(part, tuple)]
    assert literals[0].endswith(SMALL) and literals[1].endswith(BIG)
    assert b"\\Seen" in data[0][0]  # RETR set it, IMAP sees it
    typ, data = seen["partial"]
    body = BIG[BIG.index(b"\r\n\r\n") + 4:]
    assert typ == "OK" and data[0][1] == body[100_000:170_000]
    assert seen["search"] == ("OK", [b"2"])
    assert seen["copy"][0] == "OK" and len(trash.messages()) == 1
    assert seen["expunge"] == ("OK", [b"1"])
    assert [i.uid for i in inbox.messages()] == [2]
    assert seen["drafts"] == ("OK", [b"1"])
    typ, data = seen["draft"]
    assert typ == "OK" and data[0][1] == DRAFT and b"\\Draft" in data[0][0]


@pytest_twisted.inlineCallbacks
def test_no_big_message_is_read_on_the_reactor_thread(tmp_path, monkeypatch):
    """Regression (issue 14): IMAP streamed FETCH literals with reads on the reactor
    thread. Every read of a message larger than the reader's inline limit, by IMAP
    (FETCH, a partial FETCH, SEARCH, BODYSTRUCTURE) and POP3 (RETR, TOP), now runs in
    the thread pool."""
    import threading

    from mailhost.store.reader import INLINE_READ
    from tests.store import dictstore

    reads: list[tuple[int, bool]] = []  # (message size, read on the reactor thread)

    class Recording(io.BytesIO):
        def read(self, n=-1):
            reads.append((len(self.getbuffer()), threading.current_thread() is reactor_thread))
            return super().read(n)

    reactor_thread = threading.current_thread()
    monkeypatch.setattr(dictstore._Body, "open", lambda body: Recording(body.data))
    config = config_in(str(tmp_path))
    svc = makeService(config, store=DictStore())
    svc.startService()
    try:
        ports = yield svc.wait_listening()
        yield threads.deferToThread(
            clients, {kind: ports[kind][0].getHost().port for kind in ("smtp", "pop3", "imap")})
    finally:
        yield svc.stopService()
    big = [on_reactor for size, on_reactor in reads if size > INLINE_READ]
    assert len(big) > 10 and not any(big)
    assert any(on_reactor for size, on_reactor in reads if size <= INLINE_READ)  # by policy
