"""Shared fixtures: a real ``twistd mailhost`` subprocess on free loopback ports."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from tests.mailhost_process import MailHostProcess

# Hypothesis's per-example deadline is a timed assertion: on a shared 2-core machine a
# 200 ms budget fails for load, not for a bug; so does the "generation is slow" check.
# Examples are bounded by max_examples.
settings.register_profile("mailhost", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("mailhost")


@pytest.fixture
def mailhost_proc(tmp_path):
    """A started ``twistd -n mailhost`` with alice@ and bob@example.test; stopped after."""
    proc = MailHostProcess(str(tmp_path)).start()
    yield proc
    proc.kill()


@pytest.fixture
def mailhost_factory(tmp_path):
    """Build (not start) MailHostProcess objects; every one is killed after the test."""
    made: list[MailHostProcess] = []

    def make(name: str = "mh", **kwargs) -> MailHostProcess:
        workdir = tmp_path / name
        workdir.mkdir(exist_ok=True)
        proc = MailHostProcess(str(workdir), **kwargs)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.kill()


@pytest.fixture
def dns_server():
    """A started ``mailhost.testing.dns.TestDNSServer`` with no zones; fill
    ``dns_server.zones`` in the test. Stopped after."""
    import pytest_twisted
    from twisted.internet.defer import Deferred

    from mailhost.testing.dns import TestDNSServer

    server = TestDNSServer()
    pytest_twisted.blockon(Deferred.fromCoroutine(server.start()))
    yield server
    pytest_twisted.blockon(Deferred.fromCoroutine(server.stop()))


@pytest.fixture(scope="session")
def pg_cluster():
    """A private PostgreSQL cluster (tests/pg_cluster.py), one per test process, started
    on first use and torn down at the end of the session."""
    from tests.pg_cluster import PgCluster

    cluster = PgCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_dsn(pg_cluster):
    """The DSN of a fresh, empty database of ``pg_cluster``: the test's own."""
    return pg_cluster.new_database()
