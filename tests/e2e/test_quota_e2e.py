"""Quota end to end: a real ``twistd mailhost``, limits set with ``mailhost user quota``.

- SMTP (smtplib): a recipient at or over its limit gets ``452 4.2.2`` at RCPT, with
  the other recipients of the transaction still taken; a message larger than the
  whole quota gets ``552 5.2.2`` at RCPT when ``SIZE=`` says so, else at the end of
  the data;
- the usage survives a restart of the host, and mail another program drops into
  ``new/`` is counted once ``maildirsize`` is older than 15 minutes (Maildir++);
- the CLI shows usage and limit, and sets the limit the running server then applies;
- Dovecot with its ``quota = maildir`` backend on the same Maildir reports the same
  usage, and what it appends counts for mailhost at once.
"""

from __future__ import annotations

import imaplib
import os
import shutil
import smtplib
import subprocess
import sys
import time

import pytest
from imapclient import IMAPClient

from tests.dovecot_process import Dovecot, check_mail_user_can_run_mailhost, mail_user, world_dir
from tests.mailhost_process import MailHostProcess

MAILHOST = os.path.join(os.path.dirname(sys.executable), "mailhost")
HOST = "127.0.0.1"
USERS = {"alice@example.test": "alice-pw", "bob@example.test": "bob-pw",
         "carol@example.test": "carol-pw"}


def cli(mh: MailHostProcess, *args: str) -> str:
    r = subprocess.run([sys.executable, MAILHOST, "--config", mh.config_path, *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def message(subject: str, size: int) -> bytes:
    head = (f"From: sender@remote.test\r\nTo: someone@example.test\r\n"
            f"Subject: {subject}\r\n\r\n").encode()
    line = b"x" * 78 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def imap_storage(mh: MailHostProcess, user: str) -> tuple[int, int]:
    """(usage KiB, limit KiB) from GETQUOTAROOT over IMAP."""
    with IMAPClient(HOST, port=mh.ports["imap"], ssl=False, timeout=30) as c:
        c.login(user, USERS[user])
        _, quotas = c.get_quota_root("INBOX")
        assert quotas and quotas[0].resource == "STORAGE", quotas
        return quotas[0].usage, quotas[0].limit


def test_smtp_quota_restart_dropped_mail_and_cli(mailhost_factory):
    mh = mailhost_factory(users=USERS)
    mh.configure()
    assert "20K" in cli(mh, "user", "quota", "bob@example.test", "--set", "20K")
    cli(mh, "user", "quota", "carol@example.test", "--set", "20K")
    mh.start()
    port = mh.ports["smtp"]
    with smtplib.SMTP(HOST, port, timeout=30) as s:
        s.ehlo("client.test")
        # SIZE= says it can never fit: 552 5.2.2 at RCPT.
        assert s.mail("sender@remote.test", ["SIZE=30000"])[0] == 250
        code, text = s.rcpt("bob@example.test")
        assert (code, text[:5]) == (552, b"5.2.2"), (code, text)
        s.rset()
        # 15K, then 10K: the second crosses the limit but bob was under it at RCPT.
        s.sendmail("sender@remote.test", ["bob@example.test"], message("one", 15_000))
        s.sendmail("sender@remote.test", ["bob@example.test"], message("two", 10_000))
        # Now bob is full: 452 4.2.2 at RCPT, alice in the same transaction still taken.
        assert s.mail("sender@remote.test")[0] == 250
        assert s.rcpt("alice@example.test")[0] == 250
        code, text = s.rcpt("bob@example.test")
        assert (code, text[:5]) == (452, b"4.2.2") and b"Mailbox full" in text, (code, text)
        assert s.data(message("three", 2000))[0] == 250
        # No SIZE= (sendmail would send one), bigger than carol's whole quota: 552 5.2.2
        # at the end of the data.
        assert s.mail("sender@remote.test")[0] == 250
        assert s.rcpt("carol@example.test")[0] == 250
        code, text = s.data(message("big", 30_000))
        assert (code, text[:5]) == (552, b"5.2.2"), (code, text)
    usage, limit = imap_storage(mh, "bob@example.test")
    assert limit == 20 and usage >= 24, usage
    assert imap_storage(mh, "carol@example.test")[0] == 0
    shown = cli(mh, "user", "quota", "bob@example.test")
    assert "of 20480 octets" in shown and "2 messages" in shown and "20K" in shown, shown

    # The usage survives a restart.
    mh.stop()
    mh.start()
    assert imap_storage(mh, "bob@example.test") == (usage, 20)
    with smtplib.SMTP(HOST, port if mh.ports["smtp"] == port else mh.ports["smtp"],
                      timeout=30) as s:
        s.ehlo("client.test")
        s.mail("sender@remote.test")
        assert s.rcpt("bob@example.test")[0] == 452

    # Raising the limit with the CLI takes effect on the running server.
    cli(mh, "user", "quota", "bob@example.test", "--set", "1M")
    assert imap_storage(mh, "bob@example.test") == (usage, 1024)

    # Mail another program drops into new/ (procmail, say, which does not update
    # maildirsize) is counted once the file is older than 15 minutes.
    root = mh.maildir("carol@example.test")
    dropped = message("dropped", 8192)
    with open(os.path.join(root, "new", "1700000000.M1P1.other"), "wb") as f:
        f.write(dropped)
    size_file = os.path.join(root, "maildirsize")
    assert os.path.exists(size_file)
    old = time.time() - 16 * 60
    os.utime(size_file, (old, old))
    assert imap_storage(mh, "carol@example.test")[0] == -(-len(dropped) // 1024)
    with open(size_file) as f:
        assert f.read() == f"20480S\n{len(dropped)} 1\n"


@pytest.fixture
def shared(request):
    """mailhost (twistd as the mail user) and Dovecot with its Maildir++ quota backend
    (``quota = maildir``, limits read from ``maildirsize``) on one Maildir."""
    why = check_mail_user_can_run_mailhost()
    if why is not None:
        pytest.fail(why)
    for tool in ("dovecot", "doveadm"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (CI: apt-get install -y dovecot-imapd)")
    if not os.path.exists("/usr/lib/dovecot/modules/lib10_quota_plugin.so"):
        pytest.fail("Dovecot's quota plugin is missing (Debian: dovecot-core)")
    user = mail_user()
    world = world_dir("mailhost-quota-")
    mh = dv = None
    try:
        mh = MailHostProcess(os.path.join(world, "mailhost"),
                             users={"alice@example.test": "alice-pw"},
                             uid=user.uid, gid=user.gid)
        mh.configure()
        cli(mh, "user", "quota", "alice@example.test", "--set", "1M")
        mh.start()
        assert imap_storage(mh, "alice@example.test") == (0, 1024)  # makes the Maildir
        dv = Dovecot(os.path.join(mh.data_dir, "mail"), {"alice@example.test": "alice-pw"},
                     share=True, workdir=os.path.join(world, "dovecot"), extra_config="""
mail_plugins = $mail_plugins quota
protocol imap {
  mail_plugins = $mail_plugins quota imap_quota
}
plugin {
  quota = maildir:User quota
}
""").start()
        yield mh, dv
    finally:
        if dv is not None:
            dv.stop()
        if mh is not None:
            mh.stop()
        shutil.rmtree(world, ignore_errors=True)


def _dovecot_storage(dv: Dovecot) -> tuple[int, int, int]:
    """(usage KiB, limit KiB, messages) from ``doveadm quota get``."""
    r = dv.doveadm("-f", "tab", "quota", "get", "-u", "alice@example.test")
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.strip().splitlines()]
    head = rows[0]
    by_type = {row[head.index("Type")]: row for row in rows[1:]}
    storage, messages = by_type["STORAGE"], by_type["MESSAGE"]
    return (int(storage[head.index("Value")]), int(storage[head.index("Limit")]),
            int(messages[head.index("Value")]))


def test_dovecot_maildir_quota_sees_the_same_usage(shared):
    mh, dv = shared
    with smtplib.SMTP(HOST, mh.ports["smtp"], timeout=30) as s:
        for n in range(5):
            s.sendmail("sender@remote.test", ["alice@example.test"],
                       message(f"m{n}", 9000 + 1000 * n))
    usage, limit = imap_storage(mh, "alice@example.test")
    assert usage > 50
    assert _dovecot_storage(dv) == (usage, limit, 5)
    # Dovecot's own IMAP GETQUOTAROOT agrees.
    c = imaplib.IMAP4(HOST, dv.port, timeout=30)
    c.login("alice@example.test", "alice-pw")
    typ, data = c.getquotaroot("INBOX")
    assert typ == "OK" and f"STORAGE {usage} {limit}".encode() in data[1][0], data
    # A message Dovecot appends counts for mailhost at once (its delta line).
    appended = message("through dovecot", 40_000)
    assert c.append("INBOX", None, None, appended)[0] == "OK"
    c.logout()
    after, _ = imap_storage(mh, "alice@example.test")
    assert _dovecot_storage(dv)[0] == after
    assert after >= usage + 39
    with open(os.path.join(mh.maildir("alice@example.test"), "maildirsize")) as f:
        lines = f.read().splitlines()
    assert lines[0] == "1048576S" and len(lines) >= 7, lines
    log = open(dv.log_path).read()
    assert "Error" not in log and "Warning" not in log, log
