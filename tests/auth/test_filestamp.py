"""FileStamp: the passwd and aliases files are stat'ed at most once per reactor turn,
and an edit is seen from the next turn on (issue 18)."""

from __future__ import annotations

import os

from twisted.internet import task

from mailhost.auth import filestamp
from mailhost.auth.filestamp import FileStamp
from mailhost.auth.passwd import PasswdEntry, PasswdFile


def test_a_stamp_is_kept_for_the_rest_of_the_turn_only(tmp_path, monkeypatch):
    monkeypatch.setattr(filestamp, "isInIOThread", lambda: True)
    clock = task.Clock()
    path = tmp_path / "aliases"
    path.write_text("a")
    stamp = FileStamp(str(path), clock)
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(filestamp.os, "stat", lambda p: stats.append(p) or real_stat(p))
    first = stamp.current()
    assert stamp.current() == first and len(stats) == 1
    path.write_text("bb")  # an edit during the turn: seen from the next one on
    assert stamp.current() == first
    clock.advance(0)  # the turn is over
    assert stamp.current() != first and len(stats) == 2
    path.unlink()
    clock.advance(0)
    assert stamp.current() is None


def test_off_the_reactor_thread_every_look_stats(tmp_path, monkeypatch):
    monkeypatch.setattr(filestamp, "isInIOThread", lambda: False)
    path = tmp_path / "aliases"
    path.write_text("a")
    stamp = FileStamp(str(path), task.Clock())
    first = stamp.current()
    path.write_text("bb")
    assert stamp.current() != first


def test_passwd_save_is_seen_in_the_same_turn(tmp_path, monkeypatch):
    monkeypatch.setattr(filestamp, "isInIOThread", lambda: True)
    clock = task.Clock()
    passwd = PasswdFile(str(tmp_path / "passwd"), reactor=clock)
    assert passwd.get("a@example.test") is None
    passwd.save({"a@example.test": PasswdEntry("a@example.test", "x")})
    assert passwd.get("a@example.test") is not None  # our own write: no wait for a turn
