"""FileStamp: one stat per moment for the passwd and aliases files (issue 18)."""

from __future__ import annotations

import os

from mailhost.auth.filestamp import FileStamp


def test_stamp_is_reused_within_its_ttl_and_taken_again_after(tmp_path, monkeypatch):
    path = tmp_path / "passwd"
    path.write_text("one\n")
    now = [100.0]
    stamp = FileStamp(str(path), ttl=0.002, clock=lambda: now[0])
    first = stamp.current()
    assert first == (os.stat(path).st_mtime_ns, 4)
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p: stats.append(p) or real_stat(p))
    path.write_text("longer\n")
    now[0] += 0.001
    assert stamp.current() == first  # within the ttl: no stat
    assert stats == []
    now[0] += 0.002
    assert stamp.current()[1] == 7  # past it: looked again
    assert len(stats) == 1


def test_forget_looks_again_at_once(tmp_path):
    path = tmp_path / "aliases"
    stamp = FileStamp(str(path), clock=lambda: 5.0)
    assert stamp.current() is None  # missing file
    path.write_text("a: b\n")
    assert stamp.current() is None  # same moment: reused
    stamp.forget()
    assert stamp.current() is not None
