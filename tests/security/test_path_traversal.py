"""Folder names and addresses cannot reach outside the mail store.

Real clients (imaplib, smtplib, poplib) against ``twistd mailhost`` try to create,
select, rename and append to folders named like paths, deliver to and log in as
path-like addresses. Afterwards nothing may exist outside ``data/mail/<domain>/<user>``
that was not there before, and no file name may contain the marker.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import smtplib

import pytest

from tests.security.hosts import HOST, PASSWORD, USER, TLSHost

MARKER = "evilzz"
FOLDERS = [
    f"../../{MARKER}", f"../../../../../../tmp/{MARKER}", f"a/../../{MARKER}",
    f"INBOX/../../{MARKER}", f"/tmp/{MARKER}", f"~root/{MARKER}", "..", ".", "../..",
    f".{MARKER}/../..", f"&AC4ALgAv-{MARKER}",  # modified UTF-7 for "../"
    f"..\\..\\{MARKER}", f"{MARKER}/.", f".../{MARKER}",
]
ADDRESSES = [
    f"../../{MARKER}@example.test", f'"../../{MARKER}"@example.test',
    f"{MARKER}@../../example.test", f"{MARKER}@example.test/../..", f"a/../{MARKER}@example.test",
]


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = TLSHost(str(tmp_path_factory.mktemp("traversal")), plaintext="yes").start()
    yield h
    h.kill()


def attempt(call, *args):
    """Refusals (NO or BAD, which imaplib raises for) are the expected outcome."""
    try:
        return call(*args)
    except imaplib.IMAP4.error:
        return None


def snapshot(root: str) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def test_folder_and_address_names_stay_inside_the_store(host, tmp_path):
    workdir = os.path.dirname(host.proc.data_dir)
    before = snapshot(workdir)
    tmp_before = set(os.listdir("/tmp"))
    imap = imaplib.IMAP4(HOST, host.ports["imap"], timeout=30)
    try:
        imap.login(USER, PASSWORD)
        for name in FOLDERS:
            quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
            attempt(imap.create, quoted)
            attempt(imap.select, quoted)
            attempt(imap.rename, quoted, f'"{MARKER}-renamed/../../.."')
            attempt(imap.append, quoted, None, None, b"Subject: x\r\n\r\ntraversal\r\n")
            if imap.state == "SELECTED":
                attempt(imap.copy, "1", quoted)
            attempt(imap.delete, quoted)
        imap.logout()
    finally:
        try:
            imap.shutdown()
        except OSError:
            pass
    with smtplib.SMTP(HOST, host.ports["smtp"], timeout=30) as smtp:
        smtp.ehlo("client.test")
        for address in ADDRESSES:
            smtp.mail("bob@example.test")
            smtp.rcpt(address)
            smtp.rset()
    for address in ADDRESSES:
        pop = poplib.POP3(HOST, host.ports["pop3"], timeout=30)
        try:
            pop.user(address)
            with pytest.raises(poplib.error_proto):
                pop.pass_(PASSWORD)
        finally:
            pop.quit()
    after = snapshot(workdir)
    mail_root = os.path.relpath(host.proc.maildir(USER), workdir)
    new = after - before
    outside = sorted(p for p in new if not p.startswith(mail_root + os.sep)
                     and not p.startswith(os.path.join("data", "queue"))
                     and not p.endswith(".log"))
    assert not [p for p in new if MARKER in p and ".." in p], new
    assert not [p for p in outside if MARKER in p], outside
    assert not any(MARKER in n for n in set(os.listdir("/tmp")) - tmp_before)
    assert not os.path.exists(os.path.join(os.path.dirname(workdir), MARKER))
    assert host.alive()
