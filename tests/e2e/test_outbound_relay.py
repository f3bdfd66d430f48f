"""End to end: two ``twistd -n mailhost`` processes relaying to each other through a
real twisted.names DNS server, plus scripted remotes for 451/550/unreachable/null MX.

A (127.0.0.1, domain a.test) relays; B (127.0.0.2, domain b.test) receives. Every
MX host listens on the same port number (A's ``outbound.port``) at its own loopback
address. Clients are smtplib (in a thread) and the ``mailhost queue`` CLI.
"""

from __future__ import annotations

import email
import email.policy
import os
import smtplib
import subprocess
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads

from tests.mailhost_process import MailHostProcess, free_port
from tests.outbound.dnsserver import a, mx, start_dns
from tests.outbound.remote import ScriptedFactory

pytestmark = pytest.mark.slow

# One sender per test, so tests sharing the two processes never see each other's DSNs.
# Everyone's password is "pw"; its hash is computed once (argon2 costs ~1 s).
A_USERS = [f"{n}@a.test" for n in (
    "alice", "tina", "rita", "ursula", "nadia", "sam", "kim", "quinn", "bounce")]
B_USERS = ["bob@b.test"]


def prewrite_passwd(proc: MailHostProcess, users, hashes) -> None:
    from mailhost.auth.passwd import PasswdEntry, PasswdFile

    os.makedirs(proc.data_dir, exist_ok=True)
    PasswdFile(os.path.join(proc.data_dir, "passwd")).save(
        {u: PasswdEntry(u, hashes[u]) for u in users})
    proc.users = {}


def _port_free_on(hosts, port):
    import socket

    for h in hosts:
        with socket.socket() as s:
            try:
                s.bind((h, port))
            except OSError:
                return False
    return True


def pick_mx_port(hosts):
    for _ in range(50):
        p = free_port("127.0.0.2")
        if _port_free_on(hosts, p):
            return p
    raise RuntimeError("no common free port")


MX_HOSTS = {
    "b.test": "127.0.0.2",
    "temp.test": "127.0.0.3",
    "reject.test": "127.0.0.4",
    "unreach.test": "127.0.0.5",
    "slow.test": "127.0.0.6",
    "hold.test": "127.0.0.7",
}


class World:
    """DNS server, remotes and the two mail hosts."""

    def __init__(self, factory_fn):
        from mailhost.auth.hashing import hash_password

        self.factory_fn = factory_fn
        shared = hash_password("pw")
        self.hashes = {u: shared for u in A_USERS + B_USERS}
        self.mx_port = pick_mx_port(list(MX_HOSTS.values()))
        records = {"nullmx.test": [mx(0, "")]}
        for domain, ip in MX_HOSTS.items():
            records[domain] = [mx(10, f"mx.{domain}")]
            records[f"mx.{domain}"] = [a(ip)]
        self.dns_port, self.stop_dns = start_dns(records)
        self.remotes = {}
        self.listening = []
        for domain in ("temp.test", "reject.test", "slow.test", "hold.test"):
            f = ScriptedFactory(hostname=f"mx.{domain}")
            self.remotes[domain] = f
            self.listening.append(
                reactor.listenTCP(self.mx_port, f, interface=MX_HOSTS[domain]))
        # MX routing asks the [dns] resolver, as in production (outbound.resolver's
        # "host:port" form is deprecated).
        self.dns = {"nameservers": [f"127.0.0.1:{self.dns_port}"]}
        self.outbound = outbound = {
            "port": self.mx_port,
            "retry_initial": 1.0,
            "retry_max": 2.0,
            "lifetime": 5.0,
            "scan_interval": 1.0,
            "connect_timeout": 2.0,
            "command_timeout": 5.0,
            "tls_policy": "opportunistic",
        }
        self.b = factory_fn(
            "b", host="127.0.0.2", domains=["b.test"],
            extra={"server": {"hostname": "mail.b.test"}, "outbound": dict(outbound),
                   "dns": self.dns},
            ports={"smtp": self.mx_port, "submission": free_port("127.0.0.2"),
                   "pop3": free_port("127.0.0.2"), "imap": free_port("127.0.0.2")},
        )
        self.a = factory_fn(
            "a", host="127.0.0.1", domains=["a.test"],
            extra={"server": {"hostname": "mail.a.test"}, "outbound": dict(outbound),
                   "dns": self.dns, "smtp": {"relay_networks": ["127.0.0.1/32"]}},
        )

        prewrite_passwd(self.a, A_USERS, self.hashes)
        prewrite_passwd(self.b, B_USERS, self.hashes)

    def make_a2(self):
        """A second relay with a long backoff, for the queue CLI."""
        outbound = dict(self.outbound, retry_initial=3600.0, retry_max=3600.0, lifetime=86400.0)
        a2 = self.factory_fn(
            "a2", host="127.0.0.1", domains=["a.test"],
            extra={"server": {"hostname": "mail2.a.test"}, "outbound": outbound,
                   "dns": self.dns},
        )
        prewrite_passwd(a2, ["quinn@a.test"], self.hashes)
        return a2

    def close(self):
        self.stop_dns()
        for p in self.listening:
            p.stopListening()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Shared by the tests of this module: starting two twistd processes costs seconds."""
    made = []

    def make(name, **kwargs):
        proc = MailHostProcess(str(tmp_path_factory.mktemp(name)), **kwargs)
        made.append(proc)
        return proc

    w = World(make)
    try:
        w.b.start()
        w.a.start()
        yield w
    finally:
        for proc in made:
            proc.kill()
        w.close()


def submit(proc: MailHostProcess, user, password, sender, rcpts, body: bytes):
    with smtplib.SMTP(proc.host, proc.ports["submission"], timeout=10) as s:
        s.ehlo("client.a.test")
        s.login(user, password)
        return s.sendmail(sender, rcpts, body)


def relay_unauthenticated(proc: MailHostProcess, sender, rcpts, body: bytes):
    with smtplib.SMTP(proc.host, proc.ports["smtp"], timeout=10) as s:
        return s.sendmail(sender, rcpts, body)


def maildir_files(path):
    out = []
    for sub in ("new", "cur"):
        d = os.path.join(path, sub)
        if os.path.isdir(d):
            out += [os.path.join(d, n) for n in sorted(os.listdir(d))]
    return out


async def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await task.deferLater(reactor, 0.1)
    raise AssertionError(f"timed out waiting for {what}")


def message(subject: str, sender="alice@a.test", to="bob@b.test") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@a.test>\r\n\r\n"
            f"Hello from {subject}.\r\n.leading dot\r\n").encode()


def queue_cli(proc: MailHostProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mailhost.cli.main", "--config", proc.config_path, "queue", *args],
        capture_output=True, text=True, timeout=30,
    )


def spool(proc: MailHostProcess):
    """The queued envelopes, read straight from the spool (cheaper than the CLI)."""
    from mailhost.outbound.spool import SpoolFiles

    files = SpoolFiles(os.path.join(proc.data_dir, "queue"))
    # An unreadable envelope is one being replaced right now: skip it.
    return [env for _name, env in files.iter_sync() if not isinstance(env, Exception)]


def not_queued(proc: MailHostProcess, address: str):
    return lambda: not any(r.address == address for e in spool(proc) for r in e.recipients)


def dsns(proc: MailHostProcess, user: str):
    out = []
    for path in maildir_files(proc.maildir(user)):
        with open(path, "rb") as f:
            msg = email.message_from_binary_file(f, policy=email.policy.default)
        if msg.get_content_type() == "multipart/report":
            out.append(msg)
    return out


def status_fields(msg):
    parts = msg.get_payload()
    return parts[1].get_payload()


@pytest_twisted.ensureDeferred
async def test_a_relays_to_b_through_mx(world):
    await threads.deferToThread(submit, world.a, "alice@a.test", "pw", "alice@a.test",
                                ["bob@b.test"], message("a to b"))
    files = await wait_for(lambda: maildir_files(world.b.maildir("bob@b.test")),
                           what="delivery in B's Maildir")
    with open(files[0], "rb") as f:
        raw = f.read()
    # Byte for byte behind the two Received: fields (A sends it as one BDAT chunk).
    assert raw.endswith(message("a to b")) and raw.count(b"\r\n.leading dot\r\n") == 1
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "a to b"
    assert ".leading dot" in msg.get_content()
    assert any("mail.a.test" in r for r in msg.get_all("Received"))
    await wait_for(not_queued(world.a, "bob@b.test"), what="dequeued")


@pytest_twisted.ensureDeferred
async def test_451_then_250_is_delivered_after_retry(world):
    remote = world.remotes["temp.test"]
    answers = iter(["451 4.3.0 try again later"])
    remote.rcpt_reply = lambda addr: next(answers, "250 2.1.5 ok")
    await threads.deferToThread(submit, world.a, "tina@a.test", "pw", "tina@a.test",
                                ["carl@temp.test"], message("retry me", to="carl@temp.test"))
    await wait_for(lambda: remote.received, what="delivery after the retry")
    rcpt_cmds = [c for c in remote.commands if c.startswith("RCPT")]
    assert len(rcpt_cmds) == 2
    assert remote.received[0].rcpts == ["carl@temp.test"]
    assert not dsns(world.a, "tina@a.test")


@pytest_twisted.ensureDeferred
async def test_550_bounces_with_a_dsn_to_the_sender(world):
    remote = world.remotes["reject.test"]
    remote.rcpt_reply = lambda addr: "550 5.1.1 <%s>: no such user" % addr
    await threads.deferToThread(submit, world.a, "rita@a.test", "pw", "rita@a.test",
                                ["nobody@reject.test"], message("rejected", to="nobody@reject.test"))
    (dsn,) = await wait_for(lambda: dsns(world.a, "rita@a.test"), what="a DSN")
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["Return-Path"] == "<>"
    per_msg, rcpt = status_fields(dsn)
    assert per_msg["Reporting-MTA"] == "dns; mail.a.test"
    assert per_msg["Arrival-Date"]
    assert rcpt["Final-Recipient"] == "rfc822; nobody@reject.test"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"] == "dns; mx.reject.test"
    assert "550 5.1.1" in rcpt["Diagnostic-Code"]
    headers = dsn.get_payload()[2]
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Subject: rejected" in headers.get_content()


@pytest_twisted.ensureDeferred
async def test_unreachable_mx_retries_then_bounces(world):
    start = time.monotonic()
    await threads.deferToThread(submit, world.a, "ursula@a.test", "pw", "ursula@a.test",
                                ["x@unreach.test"], message("unreachable", to="x@unreach.test"))
    assert not not_queued(world.a, "x@unreach.test")()
    (dsn,) = await wait_for(lambda: dsns(world.a, "ursula@a.test"), timeout=30, what="expiry DSN")
    assert time.monotonic() - start >= 4  # lifetime 5 s
    _, rcpt = status_fields(dsn)
    assert rcpt["Action"] == "failed" and rcpt["Status"].startswith("4.")
    assert "unreach.test" in rcpt["Diagnostic-Code"] or "cannot connect" in rcpt["Diagnostic-Code"]


@pytest_twisted.ensureDeferred
async def test_null_mx_bounces_at_once(world):
    await threads.deferToThread(submit, world.a, "nadia@a.test", "pw", "nadia@a.test",
                                ["x@nullmx.test"], message("null mx", to="x@nullmx.test"))
    (dsn,) = await wait_for(lambda: dsns(world.a, "nadia@a.test"), what="null MX DSN")
    _, rcpt = status_fields(dsn)
    assert rcpt["Status"] == "5.1.10" and rcpt["Action"] == "failed"


@pytest_twisted.ensureDeferred
async def test_null_sender_bounce_never_bounces(world):
    remote = world.remotes["reject.test"]
    remote.rcpt_reply = lambda addr: "550 5.1.1 no such user"
    await threads.deferToThread(relay_unauthenticated, world.a, "", ["nullsender@reject.test"],
                                message("a bounce", sender="MAILER-DAEMON@b.test",
                                        to="nullsender@reject.test"))
    await wait_for(lambda: "RCPT TO:<nullsender@reject.test>" in remote.commands, what="attempt")
    await wait_for(not_queued(world.a, "nullsender@reject.test"), what="dequeued")
    await task.deferLater(reactor, 1.0)
    listed = queue_cli(world.a, "list").stdout
    assert "MAILER-DAEMON" not in listed and "nullsender" not in listed
    assert "null sender" in world.a.log()

@pytest_twisted.ensureDeferred
async def test_sender_spoofing_on_submission_is_refused(world):
    with pytest.raises(smtplib.SMTPSenderRefused):
        await threads.deferToThread(submit, world.a, "alice@a.test", "pw", "bounce@a.test",
                                    ["bob@b.test"], message("spoof", sender="bounce@a.test"))


@pytest_twisted.ensureDeferred
async def test_kill_9_during_delivery_then_restart_delivers(world):
    remote = world.remotes["slow.test"]
    held: list[bytes] = []
    # The whole message in, its reply held: the delivery is in flight. (Waiting for
    # the DATA command only, the body could still be in the remote's socket at the
    # kill, and be answered 250 below as if the restarted server had sent it.)
    remote.data_reply = lambda rcpts, data: held.append(data)  # None: no reply
    await threads.deferToThread(submit, world.a, "kim@a.test", "pw", "kim@a.test",
                                ["dana@slow.test"], message("survive", to="dana@slow.test"))
    await wait_for(lambda: held, what="the message in flight")
    world.a.kill()  # SIGKILL
    remote.data_reply = lambda rcpts, data: "250 2.0.0 ok"
    # In a thread: this reactor serves A's DNS and the remote while A starts again.
    await threads.deferToThread(world.a.start)
    got = await wait_for(lambda: remote.received, what="delivery after restart")
    assert got[0].rcpts == ["dana@slow.test"]
    assert b"Subject: survive" in got[0].data
    await wait_for(not_queued(world.a, "dana@slow.test"), what="dequeued")
    # Tried again, not expired: a restart later than the lifetime (5 s here, often
    # reached under load) is no reason to bounce a message untried.
    assert not dsns(world.a, "kim@a.test")


@pytest_twisted.ensureDeferred
async def test_queue_cli_list_show_retry_delete_flush(world):
    import re

    a2 = world.make_a2()
    a2.start()
    remote = world.remotes["hold.test"]
    remote.rcpt_reply = lambda addr: "451 4.2.1 later"

    def rcpts():
        return len([c for c in remote.commands if c.startswith("RCPT")])

    for i in range(2):
        await threads.deferToThread(submit, a2, "quinn@a.test", "pw", "quinn@a.test",
                                    [f"q{i}@hold.test"], message(f"queued {i}", to=f"q{i}@hold.test"))
    await wait_for(lambda: rcpts() >= 2, what="first attempts")
    await wait_for(lambda: sum(r.attempts for e in spool(a2) for r in e.recipients) == 2,
                   what="attempts recorded")
    out = queue_cli(a2, "list")
    assert out.returncode == 0, out.stderr
    ids = re.findall(r"^([0-9A-F]{19})\s", out.stdout, re.M)
    assert len(ids) == 2 and "451 4.2.1 later" in out.stdout

    show = queue_cli(a2, "show", ids[0])
    assert show.returncode == 0, show.stderr
    assert '"attempts": 1' in show.stdout and "Subject: queued" in show.stdout
    assert queue_cli(a2, "show", "0" * 19).returncode == 1

    before = rcpts()
    assert queue_cli(a2, "retry", ids[0]).returncode == 0
    await wait_for(lambda: rcpts() == before + 1, timeout=5, what="retry within seconds")

    assert queue_cli(a2, "delete", ids[0]).returncode == 0
    await task.deferLater(reactor, 1.5)
    assert ids[0] not in queue_cli(a2, "list").stdout

    remote.rcpt_reply = lambda addr: "250 ok"
    assert queue_cli(a2, "flush").returncode == 0
    got = await wait_for(lambda: remote.received, timeout=5, what="flush delivers")
    assert [r.rcpts for r in got] == [["q1@hold.test"]]
    await wait_for(lambda: not spool(a2), what="empty queue")
    assert "-- 0 messages" in queue_cli(a2, "list").stdout
