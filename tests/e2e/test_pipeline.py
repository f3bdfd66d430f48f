"""The message pipeline end to end (issue 15): two mail hosts, A relaying to B.

A (127.0.0.1, a.test) and B (127.0.0.2, b.test) are whole ``makeService`` hosts in
this process, with real listeners, A's real outbound queue and relay client
(smarthost: B), and one in-process authoritative DNS server (``TestDNSServer``)
serving SPF, DKIM and DMARC records. Clients are smtplib in a thread; a client from
127.0.0.3 stands for an address no SPF record authorises.
"""

from __future__ import annotations

import email
import email.policy
import os
import smtplib
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads
from twisted.internet.defer import Deferred

from mailhost.auth.directory import UserDirectory
from mailhost.config import Config
from mailhost.mailauth.dkim_keys import generate_pem, key_from_pem, write_key
from mailhost.service import makeService
from mailhost.store.memory import MemoryStore
from tests.mailhost_process import free_port

STAGES = ["spf", "dkim", "dmarc", "auth_results", "dkim_sign"]
STRANGER = "127.0.0.3"  # no SPF record lists it


class Host:
    """One mail host of the test: its config, store and running service."""

    def __init__(self, tmp_path, name: str, ip: str, domain: str, users: dict[str, str],
                 dns: tuple[str, int], smarthost: str = "", dmarc_mode: str = "enforce",
                 selectors: dict[str, str] | None = None) -> None:
        self.ip, self.domain = ip, domain
        self.port, self.sub_port = free_port(ip), free_port(ip)
        c = self.config = Config()
        c.server.hostname = f"mx.{domain}"
        c.server.domains = [domain]
        c.server.data_dir = str(tmp_path / name)
        c.server.allow_plaintext_auth = "yes"
        c.server.shutdown_grace = 0.0
        c.auth.create_postmaster = False
        c.auth.max_failures = 0
        c.limits.connection_rate = 0.0
        c.store.backend = "memory"
        c.smtp.listen = [f"tcp:{self.port}:interface={ip}"]
        c.submission.listen = [f"tcp:{self.sub_port}:interface={ip}"]
        c.pop3.listen = c.imap.listen = []
        c.outbound.queue_dir = str(tmp_path / name / "queue")
        c.outbound.fsync = False
        c.outbound.smarthost = smarthost or "127.0.0.1:9"
        c.outbound.resolver = f"{dns[0]}:{dns[1]}"
        c.outbound.retry_initial = c.outbound.retry_max = 1.0
        c.dns.nameservers = [f"{dns[0]}:{dns[1]}"]
        c.pipeline.stages = list(STAGES)
        c.pipeline.dmarc_mode = dmarc_mode
        c.pipeline.dkim_selectors = dict(selectors or {})
        os.makedirs(c.server.data_dir, exist_ok=True)
        self.store = MemoryStore()
        self.directory = UserDirectory.in_memory([domain], users)
        self.service = None

    def add_key(self, selector: str, algorithm: str) -> str:
        """A key as ``mailhost dkim keygen`` writes it; returns its TXT record."""
        folder = os.path.join(self.config.server.data_dir, "dkim", self.domain)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        pem = generate_pem(algorithm)  # type: ignore[arg-type]
        write_key(os.path.join(folder, f"{selector}.pem"), pem)
        return key_from_pem(self.domain, selector, pem).public_record

    async def start(self) -> Host:
        self.service = makeService(self.config, store=self.store,
                                   checkers=[self.directory.checker],
                                   directory=self.directory, reactor=reactor)
        self.service.startService()
        await self.service.wait_listening()
        return self

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stopService()

    async def folder(self, user: str, name: str = "INBOX") -> list[email.message.EmailMessage]:
        account = await self.store.open_account(user)
        folder = await account.open_folder(name)
        out = []
        for info in folder.messages():
            f = await folder.open_message(info.uid)
            out.append(email.message_from_bytes(f.read(), policy=email.policy.default))
            f.close()
        return out


async def wait_for(pred, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await pred()
        if value:
            return value
        await task.deferLater(reactor, 0.05)
    raise AssertionError("timed out")


def send(host: Host, sender: str, rcpts: list[str], message: bytes, source: str = "127.0.0.1",
         login: tuple[str, str] | None = None, submission: bool = False) -> None:
    port = host.sub_port if submission else host.port
    with smtplib.SMTP(host.ip, port, source_address=(source, 0), timeout=30) as s:
        s.ehlo("client.example")
        if login:
            s.login(*login)
        s.sendmail(sender, rcpts, message)


def message(sender: str, to: str, subject: str, body: str = "Hello.\r\n", extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@test>\r\nDate: Sat, 05 Dec 2026 00:00:00 +0000\r\n"
            f"{extra}\r\n{body}").encode()


def ours(msg, authserv_id: str) -> list[str]:
    return [str(v) for v in msg.get_all("Authentication-Results", [])
            if str(v).split(";")[0].strip() == authserv_id]


@pytest.fixture
def world(tmp_path, dns_server):
    """DNS, A (signs a.test with an RSA and an Ed25519 key) and B; yields (A, B)."""
    dns = dns_server.address
    a = Host(tmp_path, "a", "127.0.0.1", "a.test", {"alice@a.test": "pw"}, dns,
             selectors={"a.test": "r1 e1"})
    b = Host(tmp_path, "b", "127.0.0.2", "b.test", {"bob@b.test": "pw"}, dns)
    a.config.outbound.smarthost = f"127.0.0.2:{b.port}"
    rsa_record = a.add_key("r1", "rsa")
    ed_record = a.add_key("e1", "ed25519")
    dns_server.zones.update({
        "a.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "mx.a.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"], "A": ["127.0.0.1"]},
        "_dmarc.a.test": {"TXT": ["v=DMARC1; p=reject"]},
        "r1._domainkey.a.test": {"TXT": [rsa_record]},
        "e1._domainkey.a.test": {"TXT": [ed_record]},
        "q.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "_dmarc.q.test": {"TXT": ["v=DMARC1; p=quarantine"]},
    })
    for host in (a, b):
        pytest_twisted.blockon(Deferred.fromCoroutine(host.start()))
    yield a, b
    for host in (a, b):
        pytest_twisted.blockon(Deferred.fromCoroutine(host.stop()))


async def relay_one(a: Host, b: Host, subject: str) -> email.message.EmailMessage:
    """alice submits to A from an address outside a.test's SPF (a submission is not
    checked against its own domain's policy); A signs and relays to B."""
    await threads.deferToThread(
        send, a, "alice@a.test", ["bob@b.test"], message("alice@a.test", "bob@b.test", subject),
        source=STRANGER, login=("alice@a.test", "pw"), submission=True)
    return (await wait_for(lambda: b.folder("bob@b.test")))[-1]


@pytest_twisted.ensureDeferred
async def test_a_signs_and_b_records_dkim_spf_dmarc_pass(world):
    a, b = world
    got = await relay_one(a, b, "signed relay")
    signatures = got.get_all("DKIM-Signature")
    assert len(signatures) == 2
    assert {"rsa-sha256", "ed25519-sha256"} == {
        s.split("a=")[1].split(";")[0].strip() for s in map(str, signatures)}
    (ar,) = ours(got, "mx.b.test")
    assert "spf=pass" in ar and "smtp.mailfrom=alice@a.test" in ar
    assert ar.count("dkim=pass") == 2 and "header.d=a.test" in ar
    assert "dmarc=pass" in ar and "header.from=a.test" in ar
    # A added no Authentication-Results of its own to a submission (nothing checked).
    assert ours(got, "mx.a.test") == []


@pytest_twisted.ensureDeferred
async def test_body_changed_on_the_way_gives_dkim_fail(world):
    """A's real signatures on a message whose body was changed after A sent it (as a
    relay in between would), replayed to B from A's address: dkim=fail on both
    signatures; a forged A-R claiming B's authserv-id is removed on the way in."""
    a, b = world
    got = await relay_one(a, b, "to be tampered")
    raw = got.as_bytes(policy=email.policy.SMTP)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    start = next(i for i, line in enumerate(lines) if line.lower().startswith(b"dkim-signature"))
    head = b"\r\n".join(lines[start:])  # drop what B added on top (Return-Path, A-R, ...)
    head = b"Authentication-Results: mx.b.test; dkim=pass header.d=a.test\r\n" + head
    tampered = head + b"\r\n\r\n" + body.replace(b"Hello.", b"Hello, changed.")
    await threads.deferToThread(send, b, "alice@a.test", ["bob@b.test"], tampered)
    (_, second) = await wait_for(lambda: _at_least(b.folder("bob@b.test"), 2))
    (ar,) = ours(second, "mx.b.test")
    assert ar.count("dkim=fail") == 2 and "dkim=pass" not in ar
    assert "spf=pass" in ar and "dmarc=pass" in ar  # aligned SPF from A's address
    assert "Hello, changed." in second.get_content()


async def _at_least(d, n):
    found = await d
    return found if len(found) >= n else None


@pytest_twisted.ensureDeferred
async def test_forged_from_of_a_reject_domain_gets_550_5_7_1(world):
    a, b = world
    forged = message("ceo@a.test", "bob@b.test", "wire money")
    with pytest.raises(smtplib.SMTPDataError) as e:
        await threads.deferToThread(send, b, "ceo@a.test", ["bob@b.test"], forged,
                                    source=STRANGER)
    assert e.value.smtp_code == 550
    assert e.value.smtp_error.startswith(b"5.7.1 ")
    assert b"DMARC" in e.value.smtp_error
    assert await b.folder("bob@b.test") == []
    assert await b.folder("bob@b.test", "Junk") == []


@pytest_twisted.ensureDeferred
async def test_quarantine_domain_lands_in_junk(world):
    a, b = world
    await threads.deferToThread(send, b, "news@q.test", ["bob@b.test"],
                                message("news@q.test", "bob@b.test", "offer"), source=STRANGER)
    (junk,) = await wait_for(lambda: b.folder("bob@b.test", "Junk"))
    (ar,) = ours(junk, "mx.b.test")
    assert "dmarc=fail" in ar and "spf=fail" in ar
    assert await b.folder("bob@b.test") == []


@pytest_twisted.ensureDeferred
async def test_regression_quarantine_without_a_junk_folder_was_451(world):
    """The user deleted Junk: quarantined mail re-creates it (marked \\Junk) and is
    filed there, where it used to be refused with 451."""
    a, b = world
    account = await b.store.open_account("bob@b.test")
    await account.delete_folder("Junk")
    await threads.deferToThread(send, b, "news@q.test", ["bob@b.test"],
                                message("news@q.test", "bob@b.test", "offer"), source=STRANGER)
    (junk,) = await wait_for(lambda: b.folder("bob@b.test", "Junk"))
    assert junk["Subject"] == "offer"
    assert (await account.open_folder("Junk")).special_use == "\\Junk"
    assert await b.folder("bob@b.test") == []


@pytest_twisted.ensureDeferred
async def test_quarantine_goes_to_the_folder_marked_junk_whatever_its_name(world):
    a, b = world
    account = await b.store.open_account("bob@b.test")
    await account.delete_folder("Junk")
    await account.create_folder("Spam", "\\Junk")
    await threads.deferToThread(send, b, "news@q.test", ["bob@b.test"],
                                message("news@q.test", "bob@b.test", "offer"), source=STRANGER)
    (spam,) = await wait_for(lambda: b.folder("bob@b.test", "Spam"))
    assert spam["Subject"] == "offer"
    assert "Junk" not in await account.list_folders()


@pytest_twisted.ensureDeferred
async def test_monitor_mode_only_records(tmp_path, dns_server):
    dns_server.zones.update({
        "a.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "_dmarc.a.test": {"TXT": ["v=DMARC1; p=reject"]},
    })
    c = await Host(tmp_path, "c", "127.0.0.2", "c.test", {"carol@c.test": "pw"},
                   dns_server.address, dmarc_mode="monitor").start()
    try:
        await threads.deferToThread(send, c, "ceo@a.test", ["carol@c.test"],
                                    message("ceo@a.test", "carol@c.test", "monitored"),
                                    source=STRANGER)
        (got,) = await wait_for(lambda: c.folder("carol@c.test"))
        (ar,) = ours(got, "mx.c.test")
        assert "dmarc=fail" in ar and "policy.dmarc=reject" in ar
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_large_message_is_held_on_disk_and_still_verifies(world):
    """3 MB: both hosts hold it in a spool file (past the in-memory limit), A signs
    it, B verifies it."""
    a, b = world
    body = "".join(f"line {i:07d} of a large message, long enough to matter\r\n"
                   for i in range(55_000))
    await threads.deferToThread(
        send, a, "alice@a.test", ["bob@b.test"],
        message("alice@a.test", "bob@b.test", "large", body=body),
        login=("alice@a.test", "pw"), submission=True)
    (got,) = await wait_for(lambda: b.folder("bob@b.test"), timeout=60)
    (ar,) = ours(got, "mx.b.test")
    assert ar.count("dkim=pass") == 2
    assert got.get_content().replace("\r\n", "\n") == body.replace("\r\n", "\n")


def bdat(host: Host, sender: str, rcpt: str, message: bytes, source: str) -> bytes:
    """One message in two BDAT chunks over a raw socket; the reply to BDAT LAST."""
    import socket

    with socket.create_connection((host.ip, host.port), timeout=30,
                                  source_address=(source, 0)) as s:
        f = s.makefile("rb")

        def reply() -> bytes:
            while True:
                line = f.readline()
                if line[3:4] != b"-":
                    return line

        reply()
        s.sendall(b"EHLO client.example\r\n")
        reply()
        s.sendall(f"MAIL FROM:<{sender}>\r\nRCPT TO:<{rcpt}>\r\n".encode())
        reply(), reply()
        half = len(message) // 2
        s.sendall(b"BDAT %d\r\n" % half + message[:half])
        assert reply().startswith(b"250")
        s.sendall(b"BDAT %d LAST\r\n" % (len(message) - half) + message[half:])
        return reply()


@pytest_twisted.ensureDeferred
async def test_bdat_forged_from_of_a_reject_domain_gets_550_5_7_1(world):
    a, b = world
    answer = await threads.deferToThread(
        bdat, b, "ceo@a.test", "bob@b.test", message("ceo@a.test", "bob@b.test", "chunked"),
        STRANGER)
    assert answer.startswith(b"550 5.7.1 "), answer
    assert await b.folder("bob@b.test") == []
