"""Replies never carry control characters, NULs, CR/LF or exception texts (issue 17, item 7).

Before the fix: IMAP ``CREATE`` of a literal ``a\\nb`` answered ``NO [CANNOT] a`` LF ``b``
(a second, forged line); ``CREATE x&AAA-y`` answered with a NUL; SMTP echoed a bare CR
in a ``501``; and ``LOGIN a@b@example.test`` (a user the CLI let in, the store refuses)
answered ``NO 'a@b@example.test'``, the text of an exception. All reply paths clean
their text through ``mailhost.replytext``; backend errors at login are logged and
answered with the protocol's temporary failure. (Since issue 17 item 11 the CLI and the
passwd loader refuse such a name too: the line is written here by hand, and skipped.)
"""

from __future__ import annotations

import os
import re

import pytest

from mailhost.auth.hashing import hash_password
from tests.mailhost_process import MailHostProcess
from tests.security.wire import Wire

CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = MailHostProcess(str(tmp_path_factory.mktemp("replies")), users={
        "alice@example.test": "alice-pw"}, extra={"auth": {"max_failures": 0}})
    h.configure()
    with open(os.path.join(h.data_dir, "passwd"), "a") as f:  # the writer refuses it
        f.write(f"a@b@example.test:{hash_password('odd-pw')}\n")
    h.start()
    yield h
    h.kill()


def imap_session(host):
    w = Wire(host.ports["imap"])
    w.line()
    w.send(b"a0 LOGIN alice@example.test alice-pw\r\n")
    assert w.tagged(b"a0")[-1].startswith(b"a0 OK")
    return w


def assert_clean(lines: list[bytes], tag: bytes) -> None:
    for line in lines:
        assert line.startswith((b"* ", tag + b" ")), f"forged line {line!r} in {lines!r}"
        assert line.endswith(b"\r\n") and b"\r" not in line[:-2], line
        assert not CONTROL.search(line[:-2]), line


def test_imap_create_with_a_newline_literal_answers_one_clean_line(host):
    with imap_session(host) as w:
        w.send(b"a1 CREATE {3+}\r\na\nb\r\n")
        lines = w.tagged(b"a1")
        assert_clean(lines, b"a1")
        assert lines[-1].startswith(b"a1 NO")
        w.send(b"a2 NOOP\r\n")
        assert w.tagged(b"a2")[-1].startswith(b"a2 OK")


def test_imap_create_of_an_encoded_nul_answers_without_nul(host):
    with imap_session(host) as w:
        w.send(b"a1 CREATE x&AAA-y\r\n")
        lines = w.tagged(b"a1")
        assert_clean(lines, b"a1")
        assert lines[-1].startswith(b"a1 NO")


def test_imap_login_of_a_name_the_store_refuses_gives_no_exception_text(host):
    with Wire(host.ports["imap"]) as w:
        w.line()
        w.send(b'a1 LOGIN "a@b@example.test" "odd-pw"\r\n')
        last = w.tagged(b"a1")[-1]
    assert last.startswith(b"a1 NO ["), last
    assert b"'" not in last and b"a@b@example.test" not in last, last


def test_smtp_bare_cr_is_not_echoed(host):
    with Wire(host.ports["smtp"]) as w:
        w.line()
        w.send(b"EHLO client.example\r\n")
        w.smtp_reply()
        w.send(b"MAIL FROM:<s@remote.test> X\rY=1\r\n")
        reply = w.smtp_reply()
        assert reply[-1][:1] in (b"5",), reply
        for line in reply:
            assert b"\r" not in line[:-2] and not CONTROL.search(line[:-2]), line
        w.send(b"NOOP\r\n")
        assert w.smtp_reply()[-1].startswith(b"250")


def test_pop3_user_with_controls_is_not_echoed(host):
    with Wire(host.ports["pop3"]) as w:
        w.line()
        w.send(b"USER a\x01b\x00c\r\n")
        line = w.line()
        assert not CONTROL.search(line[:-2]), line
