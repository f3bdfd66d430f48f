"""dovecot-uidlist.lock: waiting, stale locks, kill -9, and two processes assigning UIDs.

The other processes are real ones (``python -c``), killed by PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from mailhost.store._maildir.dotlock import DotLock, LockTimeout
from mailhost.store._maildir.dovecot_uidlist import UIDLIST_FILE, UidList
from mailhost.store._maildir.maildir_index import load_folder
from mailhost.store._maildir.maildir_uids import FolderUids

HOLDER = """
import sys, time
from mailhost.store._maildir.dotlock import DotLock
lock = DotLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""


def holder(path: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, path, str(seconds)],
                            stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"held\n"
    return proc


def lock_body(path: str) -> str:
    with open(path + ".lock") as f:
        return f.read()


def test_lock_file_says_pid_and_host_and_is_private(tmp_path):
    path = str(tmp_path / UIDLIST_FILE)
    old = os.umask(0o022)
    try:
        with DotLock(path):
            assert lock_body(path) == f"{os.getpid()}:{socket.gethostname()}"
            assert os.stat(path + ".lock").st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    assert not os.path.exists(path + ".lock")


def test_we_wait_for_a_holder_then_proceed(tmp_path):
    path = str(tmp_path / UIDLIST_FILE)
    proc = holder(path, 1.0)
    try:
        started = time.monotonic()
        with DotLock(path, timeout=20):
            waited = time.monotonic() - started
            assert lock_body(path).startswith(f"{os.getpid()}:")
        assert 0.5 < waited < 15, waited
    finally:
        proc.kill()
        proc.wait()


def test_a_live_holder_is_never_broken(tmp_path):
    path = str(tmp_path / UIDLIST_FILE)
    proc = holder(path, 30)
    try:
        old = time.time() - 600
        os.utime(path + ".lock", (old, old))  # old, but its process lives
        with pytest.raises(LockTimeout):
            DotLock(path, stale_timeout=1, timeout=2.5).acquire()
        assert lock_body(path).startswith(f"{proc.pid}:")
    finally:
        proc.kill()
        proc.wait()


def test_kill_9_while_holding_the_next_opener_recovers(tmp_path):
    path = str(tmp_path / UIDLIST_FILE)
    proc = holder(path, 600)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert os.path.exists(path + ".lock")
    started = time.monotonic()
    lock = DotLock(path, timeout=20)
    with lock:  # the dead pid is seen once the lock is 2 s old, as Dovecot checks it
        assert lock.broke == 1
    assert time.monotonic() - started < 10


def test_stale_lock_of_another_host_is_broken_after_the_stale_timeout(tmp_path):
    path = str(tmp_path / UIDLIST_FILE)
    with open(path + ".lock", "w") as f:
        f.write("4242:some-other-host")
    started = time.monotonic()
    lock = DotLock(path, stale_timeout=1.5, timeout=20)
    with lock:
        assert lock.broke == 1
    waited = time.monotonic() - started
    assert 0.4 < waited < 10, waited  # whole seconds, as Dovecot counts them


def test_dead_local_pid_in_an_old_lock_is_broken_at_once(tmp_path):
    path = str(tmp_path / UIDLIST_FILE)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(path + ".lock", "w") as f:
        f.write(f"{dead.pid}:{socket.gethostname()}")
    old = time.time() - 60
    os.utime(path + ".lock", (old, old))
    started = time.monotonic()
    with DotLock(path, timeout=20) as lock:
        assert lock.broke == 1
    assert time.monotonic() - started < 2


def _assign_many(args: tuple[str, str, int]) -> list[tuple[str, int]]:
    """One process: link files into new/ one by one and give each a UID."""
    path, tag, n = args
    uids = FolderUids(path, fsync=False)
    load_folder(path, False, uids=uids)
    out = []
    for i in range(n):
        base = f"1700000000.M{i}P{os.getpid()}Q{tag}.h,S=3,W=3"
        with open(os.path.join(path, "new", base), "wb") as f:
            f.write(b"x\r\n")
        [uid] = uids.assign([base], [])
        out.append((base, uid))
    return out


def test_two_processes_assigning_never_give_one_uid_to_two_files(tmp_path):
    path = str(tmp_path / "box")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub))
    with ProcessPoolExecutor(3) as pool:
        results = list(pool.map(_assign_many, [(path, t, 150) for t in "abc"]))
    given = [pair for result in results for pair in result]
    assert len({uid for _, uid in given}) == len(given) == 450
    ul = UidList(os.path.join(path, UIDLIST_FILE))
    assert ul.refresh()
    assert ul.by_base == dict(given)
    assert ul.next_uid == 451
    with open(os.path.join(path, UIDLIST_FILE)) as f:
        uids = [int(line.split()[0]) for line in f.read().splitlines()[1:]]
    assert uids == sorted(uids) == list(range(1, 451))  # appended in order, no gaps
