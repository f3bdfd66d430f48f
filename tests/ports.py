"""Ports for the listeners tests start, from below the kernel's ephemeral range.

A port ``bind(("127.0.0.1", 0))`` gets comes from the ephemeral range, the range every
outgoing connection takes its source port from too. Between that pick and the
listener's own bind, any client connection on the machine (another xdist worker's,
or this test's own) may take the port: CI saw ``Address already in use`` that way.
Ports below the range are never handed out by the kernel; each xdist worker takes
its own slice of them, and checks each with a bind before handing it out.
"""

from __future__ import annotations

import itertools
import os
import socket

#: Above the fixed ports of the peers the tests run (memcached 11211, rspamd 11332-11335,
#: PostgreSQL 5432); the bind check skips any other listener found in the way.
_LOWEST = 20000
_SLICES = 8  # xdist workers (gw0, gw1, ...) before two share a slice


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _worker() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw3", or unset
    return int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0


_size = max(256, (_ephemeral_start() - _LOWEST) // _SLICES)
_base = _LOWEST + (_worker() % _SLICES) * _size
# Two processes of one slice (a test run without xdist beside a benchmark) start
# at different places in it.
_next = itertools.count(os.getpid() % _size)


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing listens on or holds now, and that no outgoing
    connection will take (see the module docstring)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(_size):
        port = _base + next(_next) % _size
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))  # without SO_REUSEADDR: a TIME_WAIT port is skipped
            except OSError:
                continue
        return port
    raise OSError(f"no free port in {_base}-{_base + _size - 1} on {host}")
