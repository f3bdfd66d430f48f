"""Mod-sequences when Dovecot changes the shared Maildir, and across mailhost restarts
and a crash (issue 16), with a real ``twistd mailhost`` and a real Dovecot on one
Maildir (the ``pair`` of tests/e2e/test_dovecot_sharing.py).

A flag Dovecot sets (a Maildir rename) gets a new modseq in mailhost, whether mailhost
is running (its watch sees the rename) or stopped (its next start compares the files
with its journal). HIGHESTMODSEQ never goes back: not after a clean restart, not
after a kill -9.
"""

from __future__ import annotations

import imaplib
import re
import time

from tests.e2e.test_dovecot_sharing import HOST, PASSWORD, USER, pair  # noqa: F401


def _raw(c: imaplib.IMAP4, line: bytes) -> list[bytes]:
    tag = line.split(b" ", 1)[0]
    c.send(line + b"\r\n")
    out = []
    for _ in range(10000):
        resp = c.readline()
        if not resp:
            break
        out.append(resp.rstrip(b"\r\n"))
        if resp.startswith(tag + b" "):
            break
    return out


def _mailhost(p) -> imaplib.IMAP4:
    c = imaplib.IMAP4(HOST, p.mh.ports["imap"], timeout=30)
    c.login(USER, PASSWORD)
    _raw(c, b"E ENABLE CONDSTORE")
    return c


def _modseqs(c: imaplib.IMAP4) -> dict[int, int]:
    out = _raw(c, b"F UID FETCH 1:* (MODSEQ)")
    assert out[-1].startswith(b"F OK"), out
    return {int(re.search(rb"UID (\d+)", line).group(1)):
            int(re.search(rb"MODSEQ \((\d+)\)", line).group(1))
            for line in out if line.startswith(b"* ") and b" FETCH " in line}


def _highest(c: imaplib.IMAP4) -> int:
    out = _raw(c, b"T STATUS INBOX (HIGHESTMODSEQ)")
    return int(re.search(rb"HIGHESTMODSEQ (\d+)", out[0]).group(1))


def _dovecot_store(p, uid: int, flag: str) -> None:
    d = p.imap("dovecot")
    d.select("INBOX")
    typ, _ = d.uid("STORE", str(uid), "+FLAGS", f"({flag})")
    assert typ == "OK"
    d.logout()


def test_dovecot_flag_changes_get_new_modseqs_running_stopped_and_after_a_crash(pair):  # noqa: F811
    for i in range(3):
        pair.deliver(f"<cs{i}@remote.test>", f"condstore {i}")
    c = _mailhost(pair)
    out = _raw(c, b"S SELECT INBOX")
    assert any(b"HIGHESTMODSEQ" in line for line in out)
    first = _modseqs(c)
    assert sorted(first) == [1, 2, 3]
    h0 = _highest(c)

    # 1. While mailhost runs: Dovecot flags UID 2; mailhost's watch sees the rename.
    _dovecot_store(pair, 2, "\\Flagged")
    deadline = time.monotonic() + 5
    update = []
    while time.monotonic() < deadline and not update:
        update = [line for line in _raw(c, b"N NOOP") if b"FETCH" in line]
        time.sleep(0.1)
    assert update, "mailhost never reported Dovecot's flag change"
    m = re.search(rb"UID 2 FLAGS \(([^)]*)\) MODSEQ \((\d+)\)", update[0])
    assert m and b"\\Flagged" in m.group(1) and int(m.group(2)) > h0, update
    h1 = _highest(c)
    assert h1 == int(m.group(2))
    c.logout()

    # 2. While mailhost is stopped (cleanly): Dovecot flags UID 3.
    pair.mh.stop()
    _dovecot_store(pair, 3, "\\Answered")
    pair.mh.start()
    c = _mailhost(pair)
    _raw(c, b"S SELECT INBOX")
    after = _modseqs(c)
    assert after[1] == first[1]  # unchanged message: unchanged modseq
    assert after[3] > h1  # the change made while down: a new one
    h2 = _highest(c)
    assert h2 >= h1 and h2 == max(after.values())
    # A change through mailhost, then a crash before any clean close.
    _raw(c, b"S2 UID STORE 1 +FLAGS (\\Seen)")
    h3 = _highest(c)
    assert h3 > h2
    c.logout()
    pair.mh.kill()
    _dovecot_store(pair, 1, "\\Draft")
    pair.mh.start()
    c = _mailhost(pair)
    _raw(c, b"S SELECT INBOX")
    final = _modseqs(c)
    assert _highest(c) > h3  # never back, whatever the journal lost
    assert final[1] > h3  # Dovecot's change while mailhost was down
    c.logout()
    pair.assert_logs_clean()
