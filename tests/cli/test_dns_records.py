"""``mailhost dns-records``: the printed zone lines, served by a DNS server, make our own
SPF, DKIM and DMARC checks pass, and the TLSA digest is OpenSSL's."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import pytest_twisted

from mailhost.mailauth.dkim import DKIMSigner, DKIMVerifier
from mailhost.mailauth.dkim_keys import load_key
from mailhost.mailauth.dmarc import DMARCChecker
from mailhost.mailauth.spf import SPFChecker

MAILHOST = os.path.join(os.path.dirname(sys.executable), "mailhost")
IP = "198.51.100.25"
CONFIG = """
[server]
hostname = "mx.example.test"
domains = ["example.test", "example.org"]
data_dir = "data"
[tls]
cert = "tls/cert.pem"
key = "tls/key.pem"
[submission]
listen = ["tcp:587"]
listen_tls = ["tcp:465"]
[imap]
listen = []
listen_tls = ["ssl:993:privateKey=tls/key.pem"]
"""


def mailhost(cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, MAILHOST, *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


@pytest.fixture
def site(tmp_path):
    (tmp_path / "m.toml").write_text(CONFIG)
    assert mailhost(tmp_path, "cert", "selfsigned", "--hostname", "mx.example.test",
                    "--out", "tls").returncode == 0
    for selector, algorithm in (("r1", "rsa"), ("e1", "ed25519")):
        done = mailhost(tmp_path, "-c", "m.toml", "dkim", "keygen", "--domain", "example.test",
                        "--selector", selector, "--algorithm", algorithm)
        assert done.returncode == 0, done.stderr
    return tmp_path


def zones(stdout: str) -> dict[str, dict[str, list]]:
    """The zone lines as the test DNS server's zones (comments skipped)."""
    out: dict[str, dict[str, list]] = {}
    for line in stdout.splitlines():
        if not line or line.startswith(";"):
            continue
        name, _ttl, klass, rtype, rdata = line.split(None, 4)
        assert klass == "IN" and name.endswith("."), line
        if rtype == "TXT":
            value: object = "".join(re.findall(r'"([^"]*)"', rdata))
        elif rtype == "MX":
            pref, host = rdata.split()
            value = (int(pref), host)
        else:
            value = rdata
        out.setdefault(name.rstrip("."), {}).setdefault(rtype, []).append(value)
    return out


@pytest_twisted.ensureDeferred
async def test_printed_records_make_spf_dkim_and_dmarc_pass(site, dns_server):
    from mailhost.dns import StubLookup

    done = mailhost(site, "-c", "m.toml", "dns-records", "--ipv4", IP)
    assert done.returncode == 0, done.stderr
    dns_server.zones.update(zones(done.stdout))
    lookup = StubLookup([dns_server.address], timeout=2.0)

    spf = await SPFChecker(lookup).check_mail_from(IP, "alice@example.test", "mx.example.test")
    assert spf.result == "pass"
    stranger = await SPFChecker(lookup).check_mail_from("192.0.2.9", "alice@example.test", "x")
    assert stranger.result == "fail"

    keys = [load_key("example.test", s, str(site / "data" / "dkim" / "example.test" / f"{s}.pem"))
            for s in ("r1", "e1")]
    message = (b"From: alice@example.test\r\nTo: bob@example.net\r\nSubject: records\r\n"
               b"\r\nHello.\r\n")
    signed = DKIMSigner(keys).sign(message, "example.test") + message
    dkim = await DKIMVerifier(lookup).verify(signed)
    assert sorted(r.result for r in dkim) == ["pass", "pass"]

    dmarc = await DMARCChecker(lookup).check("example.test", spf, dkim)
    assert dmarc.result == "pass"
    assert "p=none" in done.stdout and "rua=mailto:postmaster@example.test" in done.stdout

    assert dns_server.zones["example.org"]["MX"] == [(10, "mx.example.test.")]
    assert "; no DKIM key for example.org" in done.stdout
    # RFC 6186/8314 SRV from the listeners: submission 587 and 465, IMAP only on 993.
    srv = {n: z["SRV"] for n, z in zones(done.stdout).items() if "SRV" in z}
    assert srv["_submission._tcp.example.test"] == ["0 1 587 mx.example.test."]
    assert srv["_submissions._tcp.example.test"] == ["0 1 465 mx.example.test."]
    assert srv["_imaps._tcp.example.test"] == ["0 1 993 mx.example.test."]
    assert "_imap._tcp.example.test" not in srv


def test_tlsa_is_the_certificates_key_digest_as_openssl_computes_it(site):
    done = mailhost(site, "-c", "m.toml", "dns-records")
    (tlsa,) = [line for line in done.stdout.splitlines() if " TLSA " in line]
    assert tlsa.startswith("_25._tcp.mx.example.test. 3600 IN TLSA 3 1 1 ")
    pubkey = subprocess.run(["openssl", "x509", "-in", str(site / "tls" / "cert.pem"), "-pubkey",
                             "-noout"], capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pubkey,
                         capture_output=True, check=True).stdout
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-r"], input=der,
                            capture_output=True, check=True).stdout.split()[0].decode()
    assert tlsa.split()[-1] == digest


def test_mta_sts_id_changes_with_the_policy_and_the_policy_is_printed(site):
    testing = mailhost(site, "-c", "m.toml", "dns-records").stdout
    enforce = mailhost(site, "-c", "m.toml", "dns-records", "--mta-sts-mode", "enforce").stdout

    def sts_id(out: str) -> str:
        return re.search(r'_mta-sts\.example\.test\. \d+ IN TXT "v=STSv1; id=(\w+)"', out)[1]

    assert sts_id(testing) == sts_id(mailhost(site, "-c", "m.toml", "dns-records").stdout)
    assert sts_id(testing) != sts_id(enforce)
    assert ";   mode: enforce" in enforce and ";   mx: mx.example.test" in enforce
    assert "https://mta-sts.example.test/.well-known/mta-sts.txt" in enforce


def test_a_configured_selector_without_its_key_is_an_error(site):
    done = mailhost(site, "-c", "m.toml", "--set", 'pipeline.dkim_selectors={"example.test"="r1 gone"}',
                    "dns-records")
    assert done.returncode == 1
    assert "r1._domainkey.example.test." in done.stdout
    assert "DKIM key example.test/gone" in done.stderr
