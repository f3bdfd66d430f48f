"""Soak: 10,000+ hostile sessions against one ``twistd mailhost``, with RSS sampled.

    python bench/fuzz_soak.py [--sessions 10000] [--workers 4]

The sessions are the ones tests/security/test_fuzz.py draws (junk commands, overlong
lines, NULs, bare CR/LF, huge/negative literals, deep parentheses, cut DATA and
literals, half-closes, resets), spread over SMTP, POP3 and IMAP and over ``workers``
client processes, each with its own hypothesis seed. The server must answer or close
every session, survive, and keep its resident memory bounded. Prints a summary and
exits non-zero on a hang, a dead server or a traceback in its log.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def worker(ports: dict[str, int], count: int, seed: int) -> int:
    """One client process: ``count`` sessions; prints a JSON line of outcomes."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    from tests.security.fuzz_sessions import SessionHang, run_session, sessions

    outcomes: dict[str, int] = {}
    hangs: list[str] = []

    @hseed(seed)
    @settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(sessions())
    def one(session) -> None:
        try:
            how = run_session(session, ports[session.proto])
        except SessionHang as e:
            how = "hang"
            hangs.append(f"{e} :: {session!r}"[:2000])
        except OSError as e:  # connection refused etc.: the server is in trouble
            how = f"oserror:{type(e).__name__}"
        outcomes[f"{session.proto}:{how}"] = outcomes.get(f"{session.proto}:{how}", 0) + 1

    one()
    print(json.dumps({"outcomes": outcomes, "hangs": hangs[:5]}), flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(json.loads(args.worker), args.count, args.seed)

    from tests.mailhost_process import rss_kib
    from tests.security.hosts import TLSHost

    workdir = tempfile.mkdtemp(prefix="mailhost-soak-")
    host = TLSHost(workdir, plaintext="yes").start()
    try:
        import smtplib

        with smtplib.SMTP("127.0.0.1", host.ports["smtp"], timeout=30) as smtp:
            for i in range(3):
                smtp.sendmail("bob@example.test", ["alice@example.test"],
                              f"Subject: seed {i}\r\n\r\nhello {i}\r\n".encode())
        rss_start = rss_kib(host.pid)
        ports = {p: host.ports[p] for p in ("smtp", "pop3", "imap")}
        per_worker = -(-args.sessions // args.workers)
        started = time.monotonic()
        procs = [
            subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(ports),
                              "--count", str(per_worker), "--seed", str(1000 + i)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
            for i in range(args.workers)
        ]
        samples = []
        while any(p.poll() is None for p in procs):
            if not host.alive():
                break
            samples.append((round(time.monotonic() - started), rss_kib(host.pid)))
            time.sleep(2.0)
        results = []
        for p in procs:
            out, err = p.communicate(timeout=600)
            lines = out.decode().strip().splitlines()
            results.append(json.loads(lines[-1]) if lines else {"error": err.decode()[-2000:]})
        duration = time.monotonic() - started
        alive = host.alive()
        rss_end = rss_kib(host.pid) if alive else -1
        peak = rss_kib(host.pid, "VmHWM") if alive else -1
        outcomes: dict[str, int] = {}
        hangs = []
        for r in results:
            for k, v in r.get("outcomes", {}).items():
                outcomes[k] = outcomes.get(k, 0) + v
            hangs += r.get("hangs", [])
            if "error" in r:
                hangs.append("worker failed: " + r["error"])
        log = host.log_text()
        tracebacks = log.count("Traceback") + log.count("Unhandled Error")
        total = sum(outcomes.values())
        summary = {
            "sessions": total, "duration_s": round(duration, 1),
            "sessions_per_s": round(total / duration, 1) if duration else 0,
            "rss_kib": {"start": rss_start, "end": rss_end, "peak_hwm": peak,
                        "max_sampled": max((s[1] for s in samples), default=-1)},
            "rss_samples": samples[:: max(1, len(samples) // 20)],
            "outcomes": dict(sorted(outcomes.items())), "hangs": hangs[:10],
            "server_alive": alive, "tracebacks_in_log": tracebacks, "workdir": workdir,
        }
        print(json.dumps(summary, indent=2))
        ok = alive and not hangs and tracebacks == 0 and total >= args.sessions
        return 0 if ok else 1
    finally:
        host.kill()


if __name__ == "__main__":
    sys.exit(main())
