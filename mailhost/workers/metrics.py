"""One ``/metrics`` for all workers: the supervisor sums what each worker serves.

Each worker serves its own registry (``mailhost.metrics``) on a private UNIX socket,
``<data_dir>/run/metrics-<worker>.sock``; the supervisor serves ``metrics.listen``
and answers a scrape by fetching every worker's page and adding the samples up,
series by series (counters, histogram buckets, sums and counts, and the gauges,
which are all totals: open connections, queued messages; the queue's gauges are
non-zero in worker 0 only). A ``_created`` sample keeps the earliest value. Why not
prometheus_client's multiprocess mode: it needs the environment set before the
library is imported, cannot serve ``Gauge.set_function`` (the queue gauges), and
leaves files per pid to clean after every worker restart.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.logger import Logger
from twisted.web.client import Agent, readBody
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

log = Logger()

#: How long a scrape waits for a worker (a busy or restarting worker is left out).
FETCH_TIMEOUT = 5.0


def worker_metrics_path(run_dir: str, index: int) -> str:
    return os.path.join(run_dir, f"metrics-{index}.sock")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def merge(pages: Iterable[str]) -> str:
    """The exposition text of the sum of ``pages`` (Prometheus text format)."""
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.utils import floatToGoString

    families: dict[str, tuple[str, str, dict[tuple[str, tuple], float]]] = {}
    for page in pages:
        for family in text_string_to_metric_families(page):
            _, _, samples = families.setdefault(
                family.name, (family.type, family.documentation, {}))
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key in samples and sample.name.endswith("_created"):
                    samples[key] = min(samples[key], sample.value)
                else:
                    samples[key] = samples.get(key, 0.0) + sample.value
    out = []
    for name, (kind, doc, samples) in families.items():
        out.append(f"# HELP {name} {doc}")
        out.append(f"# TYPE {name} {kind}")
        for (sample_name, labels), value in samples.items():
            text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels)
            out.append(f"{sample_name}{{{text}}} {floatToGoString(value)}" if text
                       else f"{sample_name} {floatToGoString(value)}")
    return "\n".join(out) + "\n"


@implementer(IAgentEndpointFactory)
class _UNIXSockets:
    """http://worker-<n>/metrics -> that worker's UNIX socket."""

    def __init__(self, reactor: Any, run_dir: str) -> None:
        self.reactor = reactor
        self.run_dir = run_dir

    def endpointForURI(self, uri: Any) -> Any:  # noqa: N802 (Twisted interface)
        index = int(uri.host.decode().rpartition("-")[2])
        return UNIXClientEndpoint(self.reactor, worker_metrics_path(self.run_dir, index),
                                  timeout=FETCH_TIMEOUT)


class MergedMetrics(Resource):
    """``/metrics`` of the supervisor: every live worker's, summed, plus its own."""

    isLeaf = True

    def __init__(self, supervisor: Any, run_dir: str, reactor: Any) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.agent = Agent.usingEndpointFactory(reactor, _UNIXSockets(reactor, run_dir))
        self.reactor = reactor

    def _fetch(self, index: int) -> defer.Deferred:
        d = self.agent.request(b"GET", f"http://worker-{index}/metrics".encode())

        def body(response: Any) -> Any:
            if response.code != 200:
                raise ValueError(f"worker {index} answered {response.code}")
            return readBody(response)

        d.addCallback(body)
        d.addTimeout(FETCH_TIMEOUT, self.reactor)
        return d

    def render_GET(self, request: Any) -> Any:  # noqa: N802 (twisted.web hook)
        indexes = sorted(self.supervisor.workers)
        d = defer.DeferredList([self._fetch(i) for i in indexes], consumeErrors=True)

        def answer(results: list) -> None:
            pages = [body.decode() for ok, body in results if ok]
            pages.append(self._own())
            missing = [i for i, (ok, _) in zip(indexes, results, strict=True) if not ok]
            if missing:
                log.warn("metrics: workers {missing} did not answer", missing=missing)
            request.setHeader(b"Content-Type", b"text/plain; version=0.0.4; charset=utf-8")
            request.write(merge(pages).encode())
            request.finish()

        def failed(f: Any) -> None:
            log.failure("metrics: merging", f)
            request.setResponseCode(500)
            request.finish()

        d.addCallback(answer).addErrback(failed)
        return NOT_DONE_YET

    def _own(self) -> str:
        s = self.supervisor
        return (
            "# HELP mailhost_workers Worker processes running\n"
            "# TYPE mailhost_workers gauge\n"
            f"mailhost_workers {len(s.workers)}\n"
            "# HELP mailhost_worker_restarts Workers restarted after dying\n"
            "# TYPE mailhost_worker_restarts counter\n"
            f"mailhost_worker_restarts_total {s.restarts}\n"
        )


class WorkerPage(Resource):
    """A worker's own ``/metrics``, for the supervisor only (over its UNIX socket,
    where prometheus_client's WSGI resource finds no client address to report)."""

    isLeaf = True

    def __init__(self, registry: Any) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Any) -> bytes:  # noqa: N802 (twisted.web hook)
        from prometheus_client import generate_latest

        request.setHeader(b"Content-Type", b"text/plain; version=0.0.4; charset=utf-8")
        return generate_latest(self.registry)


def worker_resource(metrics: Any) -> Any:
    root = Resource()
    root.putChild(b"metrics", WorkerPage(metrics.registry))
    return root


def metrics_site(supervisor: Any, run_dir: str, reactor: Any) -> Any:
    from twisted.web.server import Site

    root = Resource()
    root.putChild(b"metrics", MergedMetrics(supervisor, run_dir, reactor))
    site = Site(root)
    site.noisy = False
    return site
