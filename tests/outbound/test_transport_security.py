"""MTA-STS and DANE end to end in process: the relay client over real loopback sockets,
the in-process DNS server (AD bit by ``authenticated``), an HTTPS policy host and
scripted receiving servers with certificates from a test CA."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor

from mailhost.dns import CachingLookup, StubLookup
from mailhost.outbound.service import OutboundService
from mailhost.settings import OutboundSettings
from mailhost.store.memory import MemoryStore
from tests.outbound.remote import ScriptedFactory, listen
from tests.outbound.test_service import _async, directory, make_config, send, started, wait_for
from tests.outbound.testca import (
    PolicyResource,
    TestCA,
    cert_sha256,
    listen_https,
    policy_text,
    server_options_for,
    spki_sha256,
)


@pytest.fixture
def ca():
    return TestCA()


def lookup_for(dns_server):
    return CachingLookup(StubLookup([dns_server.address], timeout=3.0), clock=reactor)


class Site:
    """A recipient domain: its DNS, an HTTPS policy host and a scripted MX."""

    def __init__(self, dns_server, ca, domain, tmp_path):
        self.dns = dns_server
        self.ca = ca
        self.domain = domain
        self.mx = f"mx.{domain}"
        self.tmp_path = tmp_path
        self.ports = []
        self.policy = None

    async def start_mx(self, tls_options, **kw):
        self.remote = ScriptedFactory(hostname=self.mx, tls_options=tls_options, **kw)
        port = await listen(self.remote)
        self.ports.append(port)
        self.smtp_port = port.getHost().port
        self.dns.zones[self.domain] = {"MX": [(10, self.mx)]}
        self.dns.zones[self.mx] = {"A": ["127.0.0.1"]}

    def serve_policy(self, text, policy_id="20261205"):
        if self.policy is None:
            self.policy = PolicyResource(text)
            port = listen_https(reactor, self.policy,
                                self.ca.server_options(f"mta-sts.{self.domain}"))
            self.ports.append(port)
            self.https_port = port.getHost().port
        self.policy.policy = text
        self.dns.zones[f"_mta-sts.{self.domain}"] = {"TXT": [f"v=STSv1; id={policy_id}"]}
        self.dns.zones[f"mta-sts.{self.domain}"] = {"A": ["127.0.0.1"]}

    def service(self, data_dir, **outbound):
        config = make_config(data_dir, port=self.smtp_port, **outbound)
        if self.policy is not None:
            config.outbound.mta_sts = True
            config.outbound.mta_sts_port = self.https_port
            config.outbound.mta_sts_ca_file = self.ca.write(self.tmp_path / "ca.pem")
        svc = OutboundService(OutboundSettings.from_config(config), MemoryStore(), directory(),
                              lookup=lookup_for(self.dns))
        self.records = []
        svc.tls_reports.observers.append(self.records.append)
        return svc

    async def stop(self):
        for p in self.ports:
            await p.stopListening()


@pytest.fixture
def site(dns_server, ca, tmp_path):
    s = Site(dns_server, ca, "sts.test", tmp_path)
    yield s
    pytest_twisted.blockon(_stop(s))


def _stop(s):
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(s.stop())


async def queued_status(svc, qid):
    async def check():
        env = svc.scheduler.envelopes.get(qid)
        if env and env.recipients[0].attempts >= 1:
            return env.recipients[0]
        return None

    return await wait_for(check)


def no_mail_command(remote):
    return not any(c.upper().startswith("MAIL") for c in remote.commands)


# MTA-STS.


@pytest_twisted.ensureDeferred
async def test_sts_enforce_with_mismatched_certificate_keeps_mail_queued_4_7_5(site, ca, tmp_path):
    await site.start_mx(ca.server_options("wrong.example"))
    site.serve_policy(policy_text("enforce", site.mx))
    svc = await started(site.service(tmp_path / "a"))
    try:
        qid = await send(svc, "alice@example.test", ["x@sts.test"])
        r = await queued_status(svc, qid)
        assert r.status == "pending" and r.status_code == "4.7.5"
        assert "certificate-host-mismatch" in r.last_error
        # The MX was asked for STARTTLS, and heard nothing of the mail in clear or not.
        assert any(c.upper() == "STARTTLS" for c in site.remote.commands)
        assert no_mail_command(site.remote) and not site.remote.received
        assert any(rec.result == "certificate-host-mismatch" and rec.policy_type == "sts"
                   for rec in site.records)
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_sts_enforce_without_starttls_never_sends_in_clear(site, ca, tmp_path):
    await site.start_mx(None)  # offers no STARTTLS
    site.serve_policy(policy_text("enforce", site.mx))
    svc = await started(site.service(tmp_path / "a"))
    try:
        qid = await send(svc, "alice@example.test", ["x@sts.test"])
        r = await queued_status(svc, qid)
        assert r.status_code == "4.7.5" and "STARTTLS" in r.last_error
        assert no_mail_command(site.remote)
        assert any(rec.result == "starttls-not-supported" for rec in site.records)
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_sts_enforce_mx_not_in_policy_is_not_used(site, ca, tmp_path):
    await site.start_mx(ca.server_options(site.mx))
    site.serve_policy(policy_text("enforce", "other.sts.example"))
    svc = await started(site.service(tmp_path / "a"))
    try:
        qid = await send(svc, "alice@example.test", ["x@sts.test"])
        r = await queued_status(svc, qid)
        assert r.status_code == "4.7.5" and "not allowed by the MTA-STS policy" in r.last_error
        assert site.remote.connections == 0
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_sts_enforce_good_policy_delivers_over_verified_tls(site, ca, tmp_path):
    await site.start_mx(ca.server_options(site.mx))
    site.serve_policy(policy_text("enforce", "*.sts.test"))
    svc = await started(site.service(tmp_path / "a"))
    try:
        await send(svc, "alice@example.test", ["x@sts.test"])
        (got,) = await site.remote.wait_for(1)
        assert got.tls and got.rcpts == ["x@sts.test"]
        await wait_for(lambda: _async(site.records))
        assert [(r.policy_type, r.result) for r in site.records] == [("sts", "success")]
        assert site.records[0].policy_string[1] == "mode: enforce"
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_sts_testing_mode_delivers_and_records_the_failure(site, ca, tmp_path):
    await site.start_mx(ca.server_options("wrong.example"))
    site.serve_policy(policy_text("testing", site.mx))
    svc = await started(site.service(tmp_path / "a"))
    try:
        await send(svc, "alice@example.test", ["x@sts.test"])
        (got,) = await site.remote.wait_for(1)
        assert got.tls
        await wait_for(lambda: _async(site.records))
        (rec,) = site.records
        assert (rec.domain, rec.policy_type, rec.result) == (
            "sts.test", "sts", "certificate-host-mismatch")
        await svc.tls_reports.drain()
        day_files = os.listdir(tmp_path / "a" / "tls-reports")
        (line,) = open(tmp_path / "a" / "tls-reports" / day_files[0]).read().splitlines()
        assert json.loads(line)["result"] == "certificate-host-mismatch"
        # The day's report in RFC 8460's shape, by the admin command.
        (tmp_path / "m.toml").write_text(
            '[server]\nhostname = "mail.example.test"\ndomains = ["example.test"]\n'
            f'data_dir = "{tmp_path / "a"}"\n')
        day = day_files[0].removesuffix(".jsonl")
        done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "mailhost"),
                               "-c", str(tmp_path / "m.toml"), "tls-report", "--day", day],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        rpt = json.loads(done.stdout)
        assert rpt["date-range"]["start-datetime"] == f"{day}T00:00:00Z"
        (pol,) = rpt["policies"]
        assert pol["policy"]["policy-type"] == "sts"
        assert pol["policy"]["policy-domain"] == "sts.test"
        assert "mode: testing" in pol["policy"]["policy-string"]
        assert pol["summary"] == {"total-successful-session-count": 0,
                                  "total-failure-session-count": 1}
        (detail,) = pol["failure-details"]
        assert detail["result-type"] == "certificate-host-mismatch"
        assert detail["receiving-mx-hostname"] == "mx.sts.test"
        assert detail["receiving-ip"] == "127.0.0.1"
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_sts_policy_cache_is_honoured_across_a_restart(site, ca, tmp_path):
    await site.start_mx(ca.server_options("wrong.example"))
    site.serve_policy(policy_text("enforce", site.mx))
    data = tmp_path / "a"
    svc = await started(site.service(data))
    try:
        qid = await send(svc, "alice@example.test", ["x@sts.test"])
        await queued_status(svc, qid)
    finally:
        await svc.stopService()
    assert len(site.policy.requests) == 1
    assert json.load(open(data / "mta-sts" / "sts.test.json"))["mode"] == "enforce"
    # The policy host now fails (and would say "none"): the cached enforce policy holds.
    site.policy.status = 500
    site.policy.policy = policy_text("none")
    svc = await started(site.service(data))
    try:
        qid = await send(svc, "alice@example.test", ["y@sts.test"])
        r = await queued_status(svc, qid)
        assert r.status_code == "4.7.5"
        assert len(site.policy.requests) == 0 + 1  # the same TXT id: not fetched again
        assert no_mail_command(site.remote)
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_sts_new_txt_id_refetches_and_a_redirect_is_not_followed(site, ca, tmp_path):
    await site.start_mx(ca.server_options(site.mx))
    site.serve_policy(policy_text("enforce", site.mx), policy_id="one")
    svc = await started(site.service(tmp_path / "a"))
    try:
        await send(svc, "alice@example.test", ["x@sts.test"])
        await site.remote.wait_for(1)
        await wait_for(lambda: _async(site.remote.open == 0))  # the idle connection went
        site.serve_policy(policy_text("enforce", site.mx), policy_id="two")
        site.policy.status = 302
        svc.dns_lookup()._entries.clear()  # the TXT TTL, cut short
        await send(svc, "alice@example.test", ["y@sts.test"])
        await site.remote.wait_for(2)  # the cached policy still applies
        assert len(site.policy.requests) == 2
        await wait_for(lambda: _async(any(r.result == "sts-policy-fetch-error"
                                          for r in site.records)))
    finally:
        await svc.stopService()


# DANE.


class DaneSite(Site):
    def tlsa(self, *records, authenticated=True):
        name = f"_{self.smtp_port}._tcp.{self.mx}"
        self.dns.zones[name] = {"TLSA": list(records)}
        if authenticated:
            self.dns.authenticated.update({self.domain, self.mx, name})
        else:
            self.dns.authenticated.update({self.domain, self.mx})


@pytest.fixture
def dane_site(dns_server, ca, tmp_path):
    s = DaneSite(dns_server, ca, "dane.test", tmp_path)
    yield s
    pytest_twisted.blockon(_stop(s))


@pytest_twisted.ensureDeferred
async def test_dane_ee_match_delivers(dane_site, ca, tmp_path):
    cert, key = ca.issue("anything.example")  # DANE-EE checks no name
    await dane_site.start_mx(server_options_for(cert, key))
    dane_site.tlsa((3, 1, 1, spki_sha256(cert)))
    svc = await started(dane_site.service(tmp_path / "a", dane=True))
    try:
        await send(svc, "alice@example.test", ["x@dane.test"])
        (got,) = await dane_site.remote.wait_for(1)
        assert got.tls
        await wait_for(lambda: _async(dane_site.records))
        assert [(r.policy_type, r.result) for r in dane_site.records] == [("tlsa", "success")]
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_dane_ta_match_delivers(dane_site, ca, tmp_path):
    await dane_site.start_mx(ca.server_options("mx.dane.test"))
    dane_site.tlsa((2, 0, 1, cert_sha256(ca.cert)))
    svc = await started(dane_site.service(tmp_path / "a", dane=True))
    try:
        await send(svc, "alice@example.test", ["x@dane.test"])
        (got,) = await dane_site.remote.wait_for(1)
        assert got.tls
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_dane_mismatch_defers_4_7_5_and_sends_nothing(dane_site, ca, tmp_path):
    await dane_site.start_mx(ca.server_options(dane_site.mx))
    dane_site.tlsa((3, 1, 1, b"\x00" * 32))
    svc = await started(dane_site.service(tmp_path / "a", dane=True))
    try:
        qid = await send(svc, "alice@example.test", ["x@dane.test"])
        r = await queued_status(svc, qid)
        assert r.status == "pending" and r.status_code == "4.7.5"
        assert no_mail_command(dane_site.remote)
        assert any(rec.policy_type == "tlsa" and rec.result == "validation-failure"
                   for rec in dane_site.records)
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_dane_tlsa_without_ad_bit_is_ignored(dane_site, ca, tmp_path):
    await dane_site.start_mx(ca.server_options(dane_site.mx))
    dane_site.tlsa((3, 1, 1, b"\x00" * 32), authenticated=False)
    svc = await started(dane_site.service(tmp_path / "a", dane=True))
    try:
        await send(svc, "alice@example.test", ["x@dane.test"])
        (got,) = await dane_site.remote.wait_for(1)
        assert got.tls  # opportunistic TLS, certificate not checked
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_dane_needs_a_secure_mx_answer(dane_site, ca, tmp_path):
    await dane_site.start_mx(ca.server_options(dane_site.mx))
    dane_site.tlsa((3, 1, 1, b"\x00" * 32))
    dane_site.dns.authenticated.discard(dane_site.domain)  # MX answer without AD
    svc = await started(dane_site.service(tmp_path / "a", dane=True))
    try:
        await send(svc, "alice@example.test", ["x@dane.test"])
        await dane_site.remote.wait_for(1)
        assert not any(q[1] == "TLSA" for q in dane_site.dns.queries)
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_dane_unusable_tlsa_still_requires_tls(dane_site, ca, tmp_path):
    await dane_site.start_mx(None)  # no STARTTLS
    dane_site.tlsa((0, 0, 1, b"\x00" * 32))  # PKIX-TA: unusable for SMTP
    svc = await started(dane_site.service(tmp_path / "a", dane=True))
    try:
        qid = await send(svc, "alice@example.test", ["x@dane.test"])
        r = await queued_status(svc, qid)
        assert r.status_code == "4.7.5" and no_mail_command(dane_site.remote)
        results = {rec.result for rec in dane_site.records}
        assert {"tlsa-invalid", "starttls-not-supported"} <= results
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_dane_beats_mta_sts(dane_site, ca, tmp_path):
    cert, key = ca.issue("not-the-mx.example")
    await dane_site.start_mx(server_options_for(cert, key))
    dane_site.serve_policy(policy_text("enforce", dane_site.mx))
    dane_site.tlsa((3, 1, 1, spki_sha256(cert)))
    svc = await started(dane_site.service(tmp_path / "a", dane=True))
    try:
        await send(svc, "alice@example.test", ["x@dane.test"])
        (got,) = await dane_site.remote.wait_for(1)  # MTA-STS alone would refuse the name
        assert got.tls
    finally:
        await svc.stopService()


# Wired by makeService: the [dns] resolver routes, and the metrics count the results.


@pytest_twisted.ensureDeferred
async def test_make_service_routes_through_dns_nameservers_and_counts_tls_results(
        dane_site, ca, tmp_path):
    import urllib.request

    from twisted.internet import threads

    from mailhost import InMemoryChecker, load, makeService
    from mailhost.outbound.interfaces import QueueRecipient

    cert, key = ca.issue("mx.dane.test")
    await dane_site.start_mx(server_options_for(cert, key))
    dane_site.tlsa((3, 1, 1, spki_sha256(cert)))
    config = load(None, [
        'server.domains=["example.test"]', f'server.data_dir="{tmp_path / "h"}"',
        'smtp.listen=["tcp:0:interface=127.0.0.1"]', "submission.listen=[]", "pop3.listen=[]",
        "imap.listen=[]", 'metrics.listen="tcp:0:interface=127.0.0.1"',
        f'dns.nameservers=["{dane_site.dns.nameserver}"]', "outbound.dane=true",
        f"outbound.port={dane_site.smtp_port}", "outbound.fsync=false"])
    svc = makeService(config, store=MemoryStore(),
                      checkers=[InMemoryChecker({"alice@example.test": "pw"})])
    svc.startService()
    try:
        await svc.wait_listening()
        w = svc.queue.new_message("alice@example.test")
        w.write(b"Subject: hi\r\n\r\nhello\r\n")
        await w.commit([QueueRecipient("x@dane.test")])
        (got,) = await dane_site.remote.wait_for(1)
        assert got.tls
        assert ("_%d._tcp.mx.dane.test" % dane_site.smtp_port, "TLSA") in dane_site.dns.queries
        port = next(s for s in svc if type(s).__name__ == "MetricsService").port.getHost().port

        async def counted():
            def fetch():
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                    return r.read().decode()

            page = await threads.deferToThread(fetch)
            return ('mailhost_outbound_tls_results_total{domain="dane.test",policy="tlsa",'
                    'result="success"} 1.0') in page

        await wait_for(counted)
    finally:
        await svc.stopService()


@pytest_twisted.ensureDeferred
async def test_sts_policy_host_with_untrusted_certificate_gives_no_policy(site, ca, tmp_path):
    await site.start_mx(None)
    site.serve_policy(policy_text("enforce", site.mx))
    site.ca = TestCA("a CA nobody trusts")  # what the MTA-STS client is told to trust
    svc = await started(site.service(tmp_path / "a"))
    try:
        await send(svc, "alice@example.test", ["x@sts.test"])
        (got,) = await site.remote.wait_for(1)  # no policy: delivered as usual
        assert not got.tls
        await wait_for(lambda: _async(site.records))
        assert site.records[0].result == "sts-webpki-invalid"
    finally:
        await svc.stopService()
