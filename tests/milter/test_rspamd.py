"""rspamd, a real milter: a private instance of its milter proxy on loopback
(tests/milter/daemons.py) behind the ``milter`` stage, over real SMTP."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from tests.milter.daemons import Rspamd, started
from tests.milter.hosts import message, milter_host, smtp_send

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.fixture
def rspamd(tmp_path, dns_server):
    daemon = started(Rspamd(str(tmp_path / "rspamd"), dns_server.address))
    yield daemon
    daemon.stop()


@pytest.fixture
def host(tmp_path, rspamd):
    host = milter_host(tmp_path, {"rspamd": f"inet:{rspamd.port}@127.0.0.1 command_timeout=60"})
    pytest_twisted.blockon(Deferred.fromCoroutine(host.start()))
    yield host
    pytest_twisted.blockon(Deferred.fromCoroutine(host.stop()))


@pytest_twisted.ensureDeferred
async def test_rspamd_rejects_gtube(host):
    data = message("alice@a.test", "bob@b.test", "gtube", body=f"{GTUBE}\r\n")
    code, text = await smtp_send(host, data)
    assert code == 554 and text == "5.7.1 Gtube pattern", (code, text)
    assert await host.folder("bob@b.test") == []


@pytest_twisted.ensureDeferred
async def test_rspamd_adds_its_score_headers_to_a_clean_message(host):
    data = message("alice@a.test", "bob@b.test", "a clean message",
                   body="Hello Bob,\r\n\r\nsee you at lunch tomorrow.\r\n\r\nAlice\r\n")
    code, text = await smtp_send(host, data)
    assert code == 250, (code, text)
    (got,) = await host.folder("bob@b.test")
    assert got["X-Spamd-Result"] is not None and "default:" in got["X-Spamd-Result"]
    assert got["X-Spam-Status"].startswith("No, score=")
    assert got["X-Rspamd-Queue-Id"]
