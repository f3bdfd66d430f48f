"""A running ``twistd mailhost`` whose Maildir another program changes (issue 13).

As a user saw it: a file dropped into alice/new/ by another MDA gave no EXISTS in
10 s of IDLE, and after mutt renamed ``cur/x:2,`` to ``x:2,S`` FETCH answered OK with
no data and curl said "Remote file not found", until a NOOP. Here, through the
configured ``[store] watch`` (inotify, and the poll fallback), an IMAPClient in IDLE
hears of both within a second, and FETCH and curl return the message.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import time

import pytest
from imapclient import IMAPClient

ALICE = "alice@example.test"


def _idle_until(c: IMAPClient, wanted, timeout: float) -> tuple[list, float]:
    """IDLE responses until ``wanted(response)`` holds or ``timeout``: (seen, seconds)."""
    start = time.monotonic()
    seen: list = []
    while (left := start + timeout - time.monotonic()) > 0:
        got = c.idle_check(timeout=left)
        seen.extend(got)
        if any(wanted(r) for r in got):
            break
    return seen, time.monotonic() - start


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_idle_and_fetch_see_another_programs_drop_and_flag_rename(mailhost_factory, mode):
    proc = mailhost_factory(extra={"store": {"watch": mode, "fsync": False}}).start()
    with smtplib.SMTP(proc.host, proc.ports["smtp"], timeout=30) as s:
        s.sendmail("bob@example.test", [ALICE],
                   f"From: bob@example.test\r\nTo: {ALICE}\r\nSubject: first\r\n\r\nhi\r\n")
    home = proc.maildir(ALICE)
    c = IMAPClient(proc.host, port=proc.ports["imap"], ssl=False, timeout=30)
    c.login(ALICE, "alice-pw")
    c.select_folder("INBOX")  # first -> cur/<base>:2,
    c.idle()
    time.sleep(0.3)

    body = b"From: procmail@example.test\r\nSubject: dropped\r\n\r\nFrom another MDA.\r\n"
    name = f"{int(time.time())}.M1P4242.otherhost"
    with open(os.path.join(home, "tmp", name), "wb") as f:
        f.write(body)
    os.rename(os.path.join(home, "tmp", name), os.path.join(home, "new", name))
    seen, waited = _idle_until(c, lambda r: r == (2, b"EXISTS"), 5)
    assert (2, b"EXISTS") in seen, seen
    assert waited < 1.0

    (first,) = [n for n in os.listdir(os.path.join(home, "cur")) if not n.startswith(name)]
    assert first.endswith(":2,")
    os.rename(os.path.join(home, "cur", first), os.path.join(home, "cur", first + "S"))
    seen, waited = _idle_until(c, lambda r: r[:2] == (1, b"FETCH"), 5)
    fetches = [r for r in seen if r[:2] == (1, b"FETCH")]
    assert fetches and b"\\Seen" in fetches[0][2][fetches[0][2].index(b"FLAGS") + 1], seen
    assert waited < 1.0
    c.idle_done()

    got = c.fetch([2], ["BODY.PEEK[]"])
    assert got[2][b"BODY[]"] == body
    c.logout()

    # Renamed again with nobody selected and no NOOP: curl still gets it.
    (current,) = [n for n in os.listdir(os.path.join(home, "cur")) if n.startswith(first[:-3])]
    os.rename(os.path.join(home, "cur", current), os.path.join(home, "cur", first + "FS"))
    out = subprocess.run(["curl", "-sS", "--max-time", "20", "--user", f"{ALICE}:alice-pw",
                          f"imap://{proc.host}:{proc.ports['imap']}/INBOX;UID=1"],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert b"Subject: first" in out.stdout
    proc.stop()
