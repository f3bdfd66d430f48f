"""``[server] workers = N``: N reactor processes serving the same listeners.

How (Twisted's documented pattern, "Deploying Twisted with multiple processes"): the
twistd process becomes a *supervisor* (``supervisor.py``). It binds every listener
of the config itself, in ``privilegedStartService`` (so before ``--uid`` drops root,
and so a taken port fails the start in one line, as with one process), never reads
from them, and spawns N ``twistd -n mailhost --worker I`` children that receive the
listening sockets as inherited file descriptors and ``adoptStreamPort`` them. The
kernel then spreads new connections over the workers accepting on the same socket.

Why not ``SO_REUSEPORT``: every worker binding its own socket would need every
endpoint type to grow the option (Twisted's endpoints have none), would not work for
systemd socket activation (one inherited socket), and a worker that dies takes its
socket's queued connections with it (the kernel hashes connections to sockets); with
one shared socket, queued connections wait for the next ``accept`` of any worker,
and a dead worker loses only the connections it had already accepted.

What must hold for the whole server is kept so (see ``shared.py``): the login
throttle, the per-user rate limits and the connection counts are replicated between
the workers through the supervisor (each worker tells it what it counted, it tells
the others; ``channel.py``), the POP3 maildrop lock is a file lock, the Maildir store
is already safe with other writers (it is shared live with Dovecot), and only worker
0 runs the outbound scheduler; the others write to the spool and tell it each new
message id (with ``[queue] backend = "postgresql"`` every worker runs one, a node of
the shared queue of its own: claims and leases share the work). The supervisor restarts a worker that dies, forwards SIGHUP, and on
SIGTERM has every worker drain before it exits.

``mailhost.testing`` and ``workers = 1`` never come here: one process, as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

#: The first file descriptor number the listening sockets get in a worker (0-2 are
#: stdio, 3 and 4 the channel to the supervisor).
FIRST_LISTEN_FD = 10
#: The channel: the worker writes to fd 3 and reads fd 4.
CHANNEL_OUT, CHANNEL_IN = 3, 4


def worker_count(setting: int | str) -> int:
    """``server.workers`` as a number: "auto" is the cores this process may use."""
    if setting == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)
    return int(setting)


def listen_key(key: str, description: str) -> str:
    """How a listener is named between supervisor and worker: config key and endpoint."""
    return f"{key} {description}"


@dataclass
class WorkerContext:
    """What ``makeService`` needs to build one worker: its number, the inherited
    listening sockets (``listen_key`` -> (fd, address family)) and the channel."""

    index: int
    fds: dict[str, tuple[int, int]] = field(default_factory=dict)
    channel: Any = None

    def metrics_endpoint(self, reactor: Any, run_dir: str) -> Any:
        """Where this worker serves its own metrics for the supervisor to merge
        (``metrics.py``): a UNIX socket only its user can reach."""
        from twisted.internet.endpoints import UNIXServerEndpoint

        from mailhost.workers.metrics import worker_metrics_path

        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        path = worker_metrics_path(run_dir, self.index)
        try:
            os.unlink(path)  # left by this worker's previous life (killed)
        except FileNotFoundError:
            pass
        return UNIXServerEndpoint(reactor, path, mode=0o600)

    @property
    def owns_scheduler(self) -> bool:
        """Worker 0 runs the outbound scheduler (a restarted worker 0 again)."""
        return self.index == 0
