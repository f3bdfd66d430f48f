"""Web UI latency: from SMTP's 250 to the message's row in the page's DOM.

    python bench/web_latency.py [--messages 100] [--store memory|maildir] [--standalone]

A test host (``MailHost(web=True)``, or with ``--standalone`` a ``twistd mailhost`` with
``[web]`` on a Maildir store) and headless Chromium with the page open and its event
stream connected. For each message: smtplib sends it (the time is taken when DATA's
250 arrives), and a MutationObserver in the page stamps the moment the row with its
subject is inserted into the list (``performance.timeOrigin + performance.now()``,
the same wall clock as Python's ``time.time()`` on this machine). The next message is
sent only once the row is there, so this is latency, not throughput. Prints one JSON
object: median, p95 and max in milliseconds. Not a timed assertion: a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import smtplib
import statistics
import sys
import tempfile
import time
from email.message import EmailMessage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

OBSERVER = """
window.__seen = {};
new MutationObserver((records) => {
  const now = performance.timeOrigin + performance.now();
  for (const r of records) for (const node of r.addedNodes) {
    const s = node.querySelector && node.querySelector('.subject');
    if (s && s.textContent.startsWith('bench ') && !(s.textContent in window.__seen))
      window.__seen[s.textContent] = now;
  }
}).observe(document.getElementById('messages'), {childList: true});
"""


def _message(n: int) -> EmailMessage:
    m = EmailMessage()
    m["From"] = "bench@example.test"
    m["To"] = "alice@example.test"
    m["Subject"] = f"bench {n}"
    m.set_content(f"message {n}\n" + "x" * 2000)
    return m


def measure(web_url: str, smtp_port: int, count: int) -> list[float]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.web.browser import chromium

    latencies = []
    with chromium() as driver:
        driver.get(web_url)
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "live").text == "live")
        driver.execute_script(OBSERVER)
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp:
            for n in range(count):
                subject = f"bench {n}"
                smtp.send_message(_message(n))
                sent = time.time() * 1000.0
                deadline = time.monotonic() + 30
                seen = None
                while seen is None:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{subject} never appeared in the page")
                    seen = driver.execute_script("return window.__seen[arguments[0]]", subject)
                latencies.append(seen - sent)
    return latencies


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100)
    ap.add_argument("--store", choices=("memory", "maildir"), default="memory")
    ap.add_argument("--standalone", action="store_true",
                    help="a twistd mailhost on Maildir instead of the in-process test host")
    args = ap.parse_args()
    if args.standalone:
        from tests.mailhost_process import MailHostProcess, free_port

        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            proc = MailHostProcess(tmp, extra={"web": {"listen": f"tcp:{port}:interface=127.0.0.1"}})
            proc.configure()
            proc.ports["web"] = port
            proc.start()
            try:
                lat = measure(f"http://127.0.0.1:{port}", proc.ports["smtp"], args.messages)
            finally:
                proc.stop()
        what = "twistd mailhost, Maildir"
    else:
        from mailhost.testing import running

        with running(users={"alice@example.test": "pw"}, store=args.store, web=True) as host:
            lat = measure(host.web_url, host.smtp_port, args.messages)
        what = f"MailHost(web=True), {args.store} store"
    ordered = sorted(lat)
    p95 = ordered[max(0, int(round(0.95 * len(ordered))) - 1)]
    print(json.dumps({"host": what, "messages": len(lat),
                      "median_ms": round(statistics.median(lat), 2),
                      "p95_ms": round(p95, 2), "max_ms": round(max(lat), 2),
                      "min_ms": round(min(lat), 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
