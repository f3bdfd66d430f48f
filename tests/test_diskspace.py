"""mailhost.diskspace: the free-space guard and the sorting of storage errors (issue 17,
item 12). The real full and read-only disks are in tests/e2e/test_full_disk.py."""

from __future__ import annotations

import errno
import os
from types import SimpleNamespace

import pytest
from twisted.internet import defer, task
from twisted.logger import globalLogPublisher

from mailhost.diskspace import (
    FULL,
    OTHER,
    READ_ONLY,
    FreeSpace,
    check_writable,
    describe,
    storage_problem,
)

MiB = 1024 * 1024


class FakeDisk:
    """statvfs of a pretend file system whose free space and flags the test sets."""

    def __init__(self) -> None:
        self.free = 100 * MiB
        self.read_only = False
        self.error: OSError | None = None
        self.calls = 0

    def __call__(self, path: str):
        self.calls += 1
        if self.error is not None:
            raise self.error
        return SimpleNamespace(f_bavail=self.free // 4096, f_frsize=4096,
                               f_flag=os.ST_RDONLY if self.read_only else 0)


def make(tmp_path, minimum=10 * MiB):
    disk, clock, setting = FakeDisk(), task.Clock(), {"min": minimum}
    space = FreeSpace([str(tmp_path), str(tmp_path / "queue")], lambda: setting["min"],
                      reactor=clock, statvfs=disk,
                      in_thread=lambda f, *a: defer.maybeDeferred(f, *a))
    return space, disk, clock, setting


@pytest.fixture
def events():
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def test_nothing_is_refused_before_the_first_measurement(tmp_path):
    space, disk, _clock, _ = make(tmp_path)
    disk.free = 0
    assert space.shortage() is None


def test_below_the_minimum_or_minimum_plus_size_is_full(tmp_path, events):
    space, disk, clock, setting = make(tmp_path)
    space.startService()
    assert space.shortage() is None and space.shortage(size=50 * MiB) is None
    assert space.shortage(size=95 * MiB) == FULL  # declared SIZE must fit on top
    disk.free = 9 * MiB
    clock.advance(1.0)
    assert space.shortage() == FULL
    setting["min"] = 0  # reloaded: 0 switches the check off
    assert space.shortage() is None
    setting["min"] = 10 * MiB
    disk.free = 20 * MiB
    clock.advance(1.0)
    assert space.shortage() is None
    texts = [e.get("log_format", "") for e in events if e.get("event", "").startswith("storage.")]
    assert len(texts) == 2  # one line when it went short, one when it recovered
    space.stopService()


def test_read_only_wins_over_free_space(tmp_path):
    space, disk, clock, _ = make(tmp_path)
    disk.read_only = True
    space.startService()
    assert space.shortage() == READ_ONLY
    space.stopService()


def test_measured_in_a_loop_not_per_question(tmp_path):
    space, disk, clock, _ = make(tmp_path)
    space.startService()
    first = disk.calls
    for _ in range(100):
        space.shortage()
    assert disk.calls == first  # asking costs no statvfs
    clock.advance(1.0)
    assert disk.calls == 2 * first
    space.stopService()
    clock.advance(5.0)
    assert disk.calls == 2 * first  # stopped with the service


def test_a_failing_statvfs_refuses_nothing(tmp_path, events):
    space, disk, clock, _ = make(tmp_path)
    disk.free = 0
    disk.error = OSError(errno.EIO, "Input/output error")
    space.startService()
    assert space.shortage() is None
    assert any(e.get("event") == "storage.statvfs_failed" for e in events)
    space.stopService()


def test_one_measurement_at_a_time(tmp_path):
    pending: list[defer.Deferred] = []
    space = FreeSpace([str(tmp_path)], lambda: 1, reactor=task.Clock(), statvfs=FakeDisk(),
                      in_thread=lambda f, *a: pending.append(defer.Deferred()) or pending[-1])
    d1, d2 = space.refresh(), space.refresh()
    assert d1 is d2 and len(pending) == 1


@pytest.mark.parametrize(("err", "kind"), [
    (OSError(errno.ENOSPC, "No space left on device"), FULL),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), FULL),
    (OSError(errno.EROFS, "Read-only file system"), READ_ONLY),
    (OSError(errno.EIO, "Input/output error"), OTHER),
    (OSError("no errno"), OTHER),
    (ValueError("a bug"), None),
])
def test_storage_problem(err, kind):
    assert storage_problem(err) == kind
    assert "\n" not in describe(err)


def test_check_writable_passes_a_writable_tree(tmp_path):
    check_writable([str(tmp_path), str(tmp_path / "not" / "yet" / "made")])
    assert os.listdir(tmp_path) == []  # the probe is gone
