"""No NUL in an IMAP literal (issue 17, item 8).

RFC 3501 section 4.3 excludes NUL from a literal (only BINARY's literal8 may carry
one). Before the fix a message with ``Subject: nul\\0hdr`` came back with raw NULs in
``BODY[]``, ``BODY[HEADER]`` and the ENVELOPE's subject literal. Now mailhost does
what Dovecot 2.3 does, byte for byte (the last test asks Dovecot itself, over a copy
of the same Maildir): in message data each NUL goes out as the octet 0x80, so a
literal keeps its length and ``RFC822.SIZE`` and partial offsets stay true; in an
ENVELOPE or BODYSTRUCTURE string a NUL becomes U+FFFD.
"""

from __future__ import annotations

import imaplib
import os
import shutil

import imapclient
import pytest

from tests.dovecot_process import Dovecot, world_dir
from tests.mailhost_process import MailHostProcess

A = "alice@example.test"
PW = "alice-pw"
MESSAGE = (b"From: a@b.test\r\nSubject: nul\0hdr\r\nTo: c@d.test\r\n"
           b"Content-Type: text/plain; name=\"x\0y\"\r\n\r\nbody\0nul here\r\n\0\r\n")
#: Larger than fetch.INLINE_MAX: its BODY[] is streamed from the file, not held.
BIG = b"Subject: big\r\n\r\n" + b"0123456789abcd\0\r\n" * 8000
ITEMS = "(RFC822.SIZE BODY.PEEK[] BODY.PEEK[HEADER] BODY.PEEK[TEXT] BODY.PEEK[]<3.40> " \
        "BODY.PEEK[HEADER.FIELDS (SUBJECT)] ENVELOPE BODYSTRUCTURE)"


@pytest.fixture(scope="module")
def host():
    # A world-traversable dir: the last test copies the Maildir for Dovecot's mail user.
    workdir = world_dir("mailhost-nul-")
    h = MailHostProcess(workdir, users={A: PW})
    h.start()
    # Stored with their NULs as another program (procmail) would drop them in new/: IMAP
    # APPEND refuses NUL in a plain literal and re-encodes a literal8's (RFC 3516 4.4,
    # tests/imap/test_rfc_leftovers.py), so only mail that came another way holds NUL.
    c = imaplib.IMAP4("127.0.0.1", h.ports["imap"], timeout=30)
    c.login(A, PW)  # the account (and its Maildir) exists from here on
    new = os.path.join(h.maildir(A), "new")
    for n, m in enumerate((MESSAGE, BIG)):
        path = os.path.join(new, f"100000000{n}.M{n}P1.nul-test")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(m)
    typ, data = c.select("INBOX")  # the folder's sync gives them UIDs 1 and 2
    assert typ == "OK" and data == [b"2"], data
    c.logout()
    yield h
    h.kill()
    shutil.rmtree(workdir, ignore_errors=True)


def fetch_raw(port: int, login: tuple[str, str]) -> list:
    c = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    c.login(*login)
    c.select("INBOX", readonly=True)
    typ, data = c.fetch("1", ITEMS)
    c.logout()
    assert typ == "OK"
    return data


def test_fetched_literals_carry_no_nul_and_sizes_stay_true(host):
    data = fetch_raw(host.ports["imap"], (A, PW))
    literals = [x[1] for x in data if isinstance(x, tuple)]
    assert literals and not any(b"\0" in lit for lit in literals), literals
    body = MESSAGE.replace(b"\0", b"\x80")
    assert body in literals  # BODY[]: same length, 0x80 for NUL
    head = b"".join(x[0] if isinstance(x, tuple) else x for x in data)
    assert b"RFC822.SIZE %d" % len(MESSAGE) in head  # what is sent is that long
    assert body[3:43] in literals  # a partial fetch is cut at the same offsets
    assert b"nul\xef\xbf\xbdhdr" in literals  # the ENVELOPE subject


def test_a_streamed_body_carries_no_nul_either(host):
    c = imaplib.IMAP4("127.0.0.1", host.ports["imap"], timeout=30)
    c.login(A, PW)
    c.select("INBOX", readonly=True)
    typ, data = c.fetch("2", "(RFC822.SIZE BODY.PEEK[])")
    c.logout()
    assert typ == "OK"
    assert data[0][1] == BIG.replace(b"\0", b"\x80")
    assert b"RFC822.SIZE %d " % len(BIG) in data[0][0]


def test_imapclient_reads_the_message_with_0x80_for_nul(host):
    c = imapclient.IMAPClient("127.0.0.1", port=host.ports["imap"], ssl=False, timeout=30)
    try:
        c.login(A, PW)
        c.select_folder("INBOX", readonly=True)
        msg = c.fetch([1], ["BODY.PEEK[]", "RFC822.SIZE", "ENVELOPE"])
        (_, got), = msg.items()
        assert got[b"BODY[]"] == MESSAGE.replace(b"\0", b"\x80")
        assert got[b"RFC822.SIZE"] == len(got[b"BODY[]"])
        assert got[b"ENVELOPE"].subject == b"nul\xef\xbf\xbdhdr"
    finally:
        c.logout()


def test_fetch_answers_as_dovecot_does_on_the_same_maildir(host):
    if shutil.which("dovecot") is None:
        pytest.fail("dovecot is not installed (CI: apt-get install -y dovecot-imapd)")
    ours = fetch_raw(host.ports["imap"], (A, PW))
    mail_root = os.path.join(host.data_dir, "mail")
    for d in (host.workdir, host.data_dir, mail_root):
        os.chmod(d, 0o755)  # Dovecot's copy is made as root, then owned by the mail user
    dv = Dovecot(mail_root, {A: PW})
    try:
        dv.start()
        theirs = fetch_raw(dv.port, (A, PW))
    finally:
        dv.stop()

    def literals(data: list) -> list[bytes]:
        return [x[1] for x in data if isinstance(x, tuple)]

    # BODYSTRUCTURE differs in case and defaults between the servers; the literals
    # (every body section and the envelope's subject) must be the same octets.
    assert literals(theirs)[:6] == literals(ours)[:6]
