"""OpenDKIM, a real milter: a private instance signs mail of a.test as A's
``milter`` stage; B (a second mail host, with our own DKIM verifier and the test's
DNS server holding the public key) records ``dkim=pass``."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.internet.defer import Deferred

from mailhost.mailauth.dkim_keys import generate_pem, key_from_pem
from tests.e2e.test_pipeline import Host, message, ours, send, wait_for
from tests.milter.daemons import OpenDKIM, started


@pytest.fixture(params=["internal host", "authenticated"])
def world(request, tmp_path, dns_server):
    """OpenDKIM signs for a client in its InternalHosts; or, with no internal host
    but 192.0.2.1, for an authenticated client (the {auth_type} and {auth_authen}
    macros, as Postfix sends them)."""
    pem = generate_pem("rsa")
    internal = "127.0.0.0/8" if request.param == "internal host" else "192.0.2.1"
    dkim = started(OpenDKIM(str(tmp_path / "opendkim"), "a.test", "m1", pem, internal))
    dns = dns_server.address
    a = Host(tmp_path, "a", "127.0.0.1", "a.test", {"alice@a.test": "pw"}, dns)
    b = Host(tmp_path, "b", "127.0.0.2", "b.test", {"bob@b.test": "pw"}, dns)
    a.config.pipeline.stages = ["milter"]
    a.config.pipeline.milters = {"opendkim": f"inet:{dkim.port}@127.0.0.1"}
    a.config.outbound.smarthost = f"127.0.0.2:{b.port}"
    b.config.pipeline.stages = ["spf", "dkim", "dmarc", "auth_results"]
    dns_server.zones.update({
        "a.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "_dmarc.a.test": {"TXT": ["v=DMARC1; p=reject"]},
        "m1._domainkey.a.test": {"TXT": [key_from_pem("a.test", "m1", pem).public_record]},
    })
    for host in (a, b):
        pytest_twisted.blockon(Deferred.fromCoroutine(host.start()))
    yield a, b
    for host in (a, b):
        pytest_twisted.blockon(Deferred.fromCoroutine(host.stop()))
    dkim.stop()


@pytest_twisted.ensureDeferred
async def test_opendkim_signs_through_the_milter_stage_and_b_verifies(world):
    a, b = world
    data = message("alice@a.test", "bob@b.test", "signed by opendkim",
                   body="Hello Bob,\r\n\r\nsigned by a milter.\r\n")
    await threads.deferToThread(send, a, "alice@a.test", ["bob@b.test"], data,
                                login=("alice@a.test", "pw"), submission=True)
    got = (await wait_for(lambda: b.folder("bob@b.test")))[-1]
    (signature,) = got.get_all("DKIM-Signature")
    assert "d=a.test" in str(signature) and "s=m1" in str(signature)
    (ar,) = ours(got, "mx.b.test")
    assert "dkim=pass" in ar and "header.d=a.test" in ar
    assert "dmarc=pass" in ar
