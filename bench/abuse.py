"""Abuse scenario: trickling connections against one ``twistd mailhost``, and its victims.

    python bench/abuse.py [--connections 200] [--sources 10] [--duration 60]
                          [--interval 3] [--every 5]

``--connections`` slowloris connections from ``--sources`` loopback addresses
(127.0.0.2 and up; 20 each is the default per-address cap) send one byte every
``--interval`` seconds to the SMTP port, never finishing a line, and reconnect
whenever the server closes one. Meanwhile a normal smtplib client on 127.0.0.1 sends
one message per session every ``--every`` seconds. The server runs with its default
limits except that loopback is not exempt from the per-address ones (as a remote
attacker would not be). Prints one JSON object: legitimate sessions served and
failed, their worst latency, the trickler's connects and the server's goodbyes, and
the server's RSS at the start, at the end and at its peak (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> int:
    from tests.mailhost_process import MailHostProcess, rss_kib
    from tests.security.slowloris import LegitimateSender, Trickler

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--sources", type=int, default=10)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=3.0)
    ap.add_argument("--every", type=float, default=5.0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="mailhost-abuse-") as workdir:
        host = MailHostProcess(workdir, extra={"limits": {"exempt_networks": []}})
        host.start()
        try:
            rss_start = rss_kib(host.pid)
            sources = [f"127.0.0.{n}" for n in range(2, 2 + args.sources)]
            trickler = Trickler(host.ports["smtp"], sources, args.connections,
                                interval=args.interval).start()
            deadline = time.monotonic() + 20
            while trickler.open_count() < args.connections and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)
            legit = LegitimateSender(host.ports["smtp"], interval=args.every)
            worker = threading.Thread(target=legit.run, args=(args.duration,))
            worker.start()
            samples = []
            while worker.is_alive():
                samples.append(rss_kib(host.pid))
                worker.join(5)
            trickler.stop()
            result = {
                "legitimate_served": legit.served,
                "legitimate_failed": len(legit.failures),
                "first_failures": legit.failures[:3],
                "worst_latency_s": round(max(legit.latencies, default=0.0), 3),
                "trickler_connects": trickler.stats.connects,
                "trickler_closed_by_server": trickler.stats.closed_by_server,
                "server_goodbyes": trickler.stats.goodbyes,
                "rss_mib_start": round(rss_start / 1024, 1),
                "rss_mib_max_sampled": round(max(samples, default=rss_start) / 1024, 1),
                "rss_mib_end": round(rss_kib(host.pid) / 1024, 1),
                "rss_mib_peak": round(rss_kib(host.pid, "VmHWM") / 1024, 1),
                "server_alive": host.proc.poll() is None,
            }
        finally:
            host.kill()
    print(json.dumps(result, indent=1))
    return 0 if result["legitimate_failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
