"""The supervisor: binds the listeners, runs N workers on them, relays, restarts.

See the package docstring for the design. This process serves no connection
itself: it holds the listening sockets (so they stay open while a worker restarts),
the workers' pipes, and a short memory of the replicated facts, which a new or
restarted worker is given first so it starts with the server's view (the throttle's
failures and the rate limits of the last hour, the other workers' connections).

Workers send their facts in batches (``channel.py``); what arrives from all of them in
one reactor turn goes to each worker in one write.

**One log.** Workers log to their standard output. When the supervisor logs there too
(``-n``, journald) they simply share it. When it logs to a file (``--logfile``, or
daemonised to ``twistd.log``), their output comes to it through a pipe and it writes
their lines into its own file, whole lines at a time: one file, rotated by one process
(``server.log_max_bytes``, SIGUSR1), as Dovecot's log process and syslog give a
Postfix or Dovecot admin. Several processes each rotating one file would rename it
from under each other.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger

from mailhost.config import Config
from mailhost.logs import log_output
from mailhost.workers import CHANNEL_IN, CHANNEL_OUT, FIRST_LISTEN_FD, listen_key

log = Logger()

#: Facts a new worker is told first: (kinds, how long they matter).
REPLAYED = ("throttle.failed", "throttle.ok", "rate.take")
REPLAY_SECONDS = 3600.0
REPLAY_MAX = 100_000
#: A worker that dies sooner than this after its start is restarted after a growing
#: pause (1 s doubling, at most MAX_BACKOFF) instead of at once.
STABLE_SECONDS = 10.0
MAX_BACKOFF = 30.0
#: After SIGTERM, workers get shutdown_grace plus this long before SIGKILL.
KILL_AFTER = 15.0
#: A worker's log output without a newline for this long goes to the log as it is.
LOG_LINE_MAX = 64 * 1024


def listener_specs(config: Config) -> list[tuple[str, str]]:
    """(config key, endpoint description) of every listener the workers share."""
    out = []
    for section in ("smtp", "submission", "pop3", "imap"):
        sec = getattr(config, section)
        out += [(f"{section}.listen", d) for d in sec.listen]
        out += [(f"{section}.listen_tls", d) for d in sec.listen_tls]
    if config.web.listen:
        out.append(("web.listen", config.web.listen))
    return out  # metrics.listen is the supervisor's own (workers/metrics.py)


def _family(port: Any) -> int:
    host = port.getHost()
    if isinstance(host, UNIXAddress):
        return socket.AF_UNIX
    if isinstance(host, IPv6Address):
        return socket.AF_INET6
    if isinstance(host, IPv4Address):
        return socket.AF_INET
    raise ValueError(f"cannot hand a {type(host).__name__} listener to workers")


class _Unused(protocol.Factory):
    """The supervisor's own ports never accept (they stop reading at once)."""

    noisy = False

    def buildProtocol(self, addr: Any) -> None:  # noqa: N802 (Twisted hook)
        return None


class WorkerProcess(protocol.ProcessProtocol):
    """One worker: its pipe (JSON lines on the worker's fd 3) and its end."""

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.started = time.monotonic()
        self.buffer = b""
        self.ended: defer.Deferred = defer.Deferred()
        self.pid: int | None = None
        self.log_tails: dict[int, bytes] = {}  # stdout/stderr since their last newline
        # False once the worker's end of CHANNEL_IN is closed: it exited (or closed
        # it), and its processEnded may come turns later, after other workers' ends
        # have been relayed to it (a write then raised KeyError and hung SIGTERM).
        self.channel_open = True

    def childDataReceived(self, fd: int, data: bytes) -> None:  # noqa: N802
        if fd in (1, 2):
            self.supervisor.worker_log(self, fd, data)
            return
        if fd != CHANNEL_OUT:
            return
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if line:
                self.supervisor.from_worker(self, line)

    def signal(self, name: str) -> None:
        """Send signal ``name`` ("TERM", "HUP", "KILL"), unless it is gone already."""
        if self.transport is not None and not self.ended.called:
            try:
                self.transport.signalProcess(name)
            except ProcessExitedAlready:
                pass

    def send(self, line: bytes) -> None:
        self.send_lines([line])

    def send_lines(self, lines: list[bytes]) -> None:
        """One write of ``lines`` to the worker; nothing once its channel is closed."""
        if (lines and self.channel_open and self.transport is not None
                and self.transport.pid is not None):
            self.transport.writeToChild(CHANNEL_IN, b"\n".join(lines) + b"\n")

    def childConnectionLost(self, childFD: int) -> None:  # noqa: N802
        if childFD == CHANNEL_IN:
            self.channel_open = False

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        try:
            for fd, tail in list(self.log_tails.items()):
                if tail:
                    self.supervisor.worker_log(self, fd, b"\n")
            self.supervisor.worker_ended(self, reason)
        finally:
            # Whatever went wrong above, this worker has ended: a stop waiting for it
            # must not wait for ever (SIGKILL cannot end a process already gone).
            self.ended.callback(None)


class Supervisor(service.Service):
    """Runs ``count`` workers over the listeners of ``config`` (see module docstring).

    ``worker_args(index, fds)`` is the argument list of one worker process.
    """

    def __init__(self, config: Config, count: int, reactor: Any = None,
                 argv: Sequence[str] | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.config = config
        self.count = count
        self.reactor = reactor
        self.argv = list(argv) if argv is not None else None
        self.ports: list[tuple[str, Any, int]] = []  # (listen key, port, family)
        self.workers: dict[int, WorkerProcess] = {}
        self.failures: Counter[int] = Counter()
        self.stopping = False
        self.restarts = 0
        self._replay: deque[tuple[float, bytes]] = deque(maxlen=REPLAY_MAX)
        # Connections each worker holds now (for a worker that starts after them).
        self._connections: dict[int, Counter[tuple[str, str]]] = {}
        self._pending: dict[int, Any] = {}
        # Facts to relay at the end of this reactor turn: (source index, line).
        self._outbox: list[tuple[int, bytes]] = []
        self._relay_call: Any = None
        self._previous_sighup: Any = None
        self.metrics_port: Any = None
        # The log file the workers' output is written into (see the module docstring);
        # None: they share the supervisor's standard output and stderr.
        self.log_file: Any = None
        self.setName("workers")

    # Start.

    def privilegedStartService(self) -> None:
        """Bind every listener here, as the one-process server does (before --uid)."""
        super().privilegedStartService()
        from mailhost.service import ListenError, parse_endpoint

        for key, description in listener_specs(self.config):
            endpoint = parse_endpoint(self.reactor, description, key)
            d = endpoint.listen(_Unused())
            failure: list[Any] = []
            ports: list[Any] = []
            d.addCallbacks(ports.append, failure.append)
            if failure or not ports:
                reason = failure[0].getErrorMessage() if failure else "not bound at once"
                log.critical("{key} {description}: cannot listen: {reason}; not starting",
                             key=key, description=description, reason=reason,
                             event="listen_failed")
                raise SystemExit(1) from ListenError(reason)
            port = ports[0]
            port.stopReading()  # the workers accept; we only hold the socket open
            self.ports.append((key + " " + description, port, _family(port)))
        if self.config.metrics.listen:
            from mailhost.workers.metrics import metrics_site

            site = metrics_site(self, self.config.data_path("run"), self.reactor)
            d = parse_endpoint(self.reactor, self.config.metrics.listen,
                               "metrics.listen").listen(site)
            d.addCallback(lambda port: setattr(self, "metrics_port", port))
            d.addErrback(lambda f: log.error("metrics.listen {description}: cannot listen: "
                                             "{reason}", description=self.config.metrics.listen,
                                             reason=f.getErrorMessage()))

    def startService(self) -> None:
        super().startService()
        if not self.ports:
            self.privilegedStartService()
        for index in range(self.count):
            self._spawn(index)
        self._previous_sighup = signal.signal(
            signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))
        log.info("started {count} workers", count=self.count, event="workers_started")

    def _args(self, index: int, fds: dict[str, tuple[int, int]]) -> list[str]:
        if self.argv is not None:
            base = list(self.argv)
        else:
            base = [sys.executable, "-c",
                    "import sys; from twisted.scripts.twistd import run; "
                    "sys.argv[0] = 'twistd'; run()",
                    "-n", "--pidfile=", "mailhost"]
            if self.config.source:
                base += ["--config", self.config.source]
            for override in self.config.overrides:
                base += ["--set", override]
        return base + ["--worker", str(index), "--worker-fds", json.dumps(fds)]

    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        fds: dict[str, tuple[int, int]] = {}
        output = log_output()
        self.log_file = output if output is not None and output is not sys.stdout else None
        logs: Any = "r" if self.log_file is not None else None
        child_fds: dict[int, Any] = {1: logs or 1, 2: logs or 2,
                                     CHANNEL_OUT: "r", CHANNEL_IN: "w"}
        for i, (name, port, family) in enumerate(self.ports):
            child_fds[FIRST_LISTEN_FD + i] = port.fileno()
            fds[name] = (FIRST_LISTEN_FD + i, family)
        worker = WorkerProcess(self, index)
        args = self._args(index, fds)
        transport = self.reactor.spawnProcess(worker, args[0], args, env=os.environ.copy(),
                                              childFDs=child_fds)
        worker.pid = transport.pid
        log.info("worker {index} started pid={pid}", index=index, pid=worker.pid,
                 event="worker_started")
        self._join(worker)

    def _join(self, worker: WorkerProcess) -> None:
        """Add ``worker`` to those relayed to, briefed: facts still waiting to be relayed
        go to the others first (the brief already counts them; relayed to the new worker
        too they would count twice)."""
        self._relay()
        self.workers[worker.index] = worker
        self._brief(worker)

    def _brief(self, worker: WorkerProcess) -> None:
        """Tell a new worker what the others counted: recent facts, open connections."""
        now = time.monotonic()
        while self._replay and now - self._replay[0][0] > REPLAY_SECONDS:
            self._replay.popleft()
        lines = [line for _, line in self._replay]
        for source, counts in self._connections.items():
            if source == worker.index or not counts:
                continue
            rows = [[kind, host, n, 0] for (kind, host), n in counts.items()]
            lines.append(json.dumps(["conns", source, rows], separators=(",", ":")).encode())
        worker.send_lines(lines)

    # Logs.

    def worker_log(self, worker: WorkerProcess, fd: int, data: bytes) -> None:
        """A worker's standard output or error, into the supervisor's log file, in whole
        lines (two workers' lines never interleave mid-line)."""
        text = worker.log_tails.get(fd, b"") + data
        end = text.rfind(b"\n") + 1
        if len(text) - end > LOG_LINE_MAX:
            end = len(text)
        worker.log_tails[fd] = text[end:]
        if end and self.log_file is not None:
            try:  # text, as the supervisor's own observer writes (LogFile encodes it)
                self.log_file.write(text[:end].decode("utf-8", "replace"))
                self.log_file.flush()
            except (OSError, ValueError):  # a full disk or a closed file: not fatal
                pass

    # Relay.

    def from_worker(self, worker: WorkerProcess, line: bytes) -> None:
        try:
            kind, *args = json.loads(line)
        except ValueError:
            log.warn("worker {index}: unreadable line {line!r}", index=worker.index,
                     line=line[:200])
            return
        if kind == "conns":  # [[protocol, client address, opens, closes], ...]
            counts = self._connections.setdefault(worker.index, Counter())
            for conn_kind, host, opens, closes in args[0]:
                key = (conn_kind, host)
                counts[key] += opens - closes
                if counts[key] <= 0:
                    del counts[key]
        out = json.dumps([kind, worker.index, *args], separators=(",", ":")).encode()
        if kind in REPLAYED:
            self._replay.append((time.monotonic(), out))
        self._outbox.append((worker.index, out))
        if self._relay_call is None:
            self._relay_call = self.reactor.callLater(0, self._relay)

    def _relay(self) -> None:
        """Every fact that arrived this turn, to every worker but its source, in one
        write each."""
        if self._relay_call is not None and self._relay_call.active():
            self._relay_call.cancel()
        self._relay_call = None
        outbox, self._outbox = self._outbox, []
        for index, other in self.workers.items():
            other.send_lines([line for source, line in outbox if source != index])

    # Ends and restarts.

    def worker_ended(self, worker: WorkerProcess, reason: Any) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        self._connections.pop(worker.index, None)
        # After its last facts, which may still wait for this turn's relay.
        self._outbox.append((worker.index, json.dumps(["worker.gone", worker.index]).encode()))
        self._relay()
        status = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        if self.stopping:
            log.info("worker {index} pid={pid} stopped (exit {status})", index=worker.index,
                     pid=worker.pid, status=status)
            return
        lived = time.monotonic() - worker.started
        if lived < STABLE_SECONDS:
            self.failures[worker.index] += 1
        else:
            self.failures[worker.index] = 0
        failures = self.failures[worker.index]
        delay = 0.0 if failures == 0 else min(MAX_BACKOFF, 2.0 ** (failures - 1))
        self.restarts += 1
        log.error("worker {index} pid={pid} died (exit status {status}, signal {signal}) "
                  "after {lived:.1f}s; restarting it in {delay:.0f}s", index=worker.index,
                  pid=worker.pid,
                  status=status, signal=sig, lived=lived, delay=delay, event="worker_died")
        self._pending[worker.index] = self.reactor.callLater(delay, self._spawn, worker.index)

    # Signals.

    def reload(self) -> None:
        """SIGHUP: every worker re-reads the config (each logs what it applied)."""
        log.info("reload: telling {count} workers", count=len(self.workers), event="reload")
        for worker in self.workers.values():
            worker.signal("HUP")

    def stopService(self) -> defer.Deferred:
        """SIGTERM: every worker drains (mailhost.service's graceful stop), then the
        sockets close; a worker still running after the grace is killed."""
        super().stopService()
        self.stopping = True
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        workers = list(self.workers.values())
        for worker in workers:
            worker.signal("TERM")
        kill = self.reactor.callLater(self.config.server.shutdown_grace + KILL_AFTER,
                                      self._kill, workers)
        d = defer.DeferredList([w.ended for w in workers])

        def done(_: Any) -> Any:
            if kill.active():
                kill.cancel()
            ports = [p for _, p, _ in self.ports]
            self.ports = []
            if self.metrics_port is not None:
                ports.append(self.metrics_port)
                self.metrics_port = None
            return defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in ports])

        return d.addCallback(done)

    def _kill(self, workers: list[WorkerProcess]) -> None:
        for worker in workers:
            if not worker.ended.called:
                log.warn("worker {index} still running after the grace; killing it",
                         index=worker.index)
                worker.signal("KILL")


def listener_names(config: Config) -> list[str]:
    """The ``listen_key`` of every shared listener (for tests and docs)."""
    return [listen_key(k, d) for k, d in listener_specs(config)]
