"""Maildir++ ``maildirsize`` (Courier's README.maildirquota, Dovecot's quota-maildir.c):
the file format, when it is rebuilt, and hypothesis round-trips for its parsers and for
the size spellings of the passwd ``quota=`` field."""

from __future__ import annotations

import os
import threading
import time

from hypothesis import given
from hypothesis import strategies as st

from mailhost.store._maildir import maildirsize
from mailhost.store.modes import PRIVATE
from mailhost.store.quota import QuotaUsage, format_size, parse_size

LOCK = threading.Lock()


def maildir(root, folders=("",)):
    for folder in folders:
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(root, folder, sub), exist_ok=True)
    return str(root)


def drop(root, folder, sub, name, size):
    with open(os.path.join(root, folder, sub, name), "wb") as f:
        f.write(b"x" * size)


def test_parse_size_spellings():
    assert parse_size("0") == 0 and parse_size("") == 0
    assert parse_size("10240") == 10240
    assert parse_size("64K") == 64 * 1024
    assert parse_size("500M") == 500 * 1024 ** 2 and parse_size("500MB") == 500 * 1024 ** 2
    assert parse_size("2g") == 2 * 1024 ** 3
    for bad in ("-1", "1.5G", "ten", "5X"):
        try:
            parse_size(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


@given(st.integers(min_value=0, max_value=2 ** 50))
def test_format_size_round_trips(octets):
    assert parse_size(format_size(octets)) == octets


@given(st.integers(min_value=0, max_value=2 ** 62), st.integers(min_value=0, max_value=2 ** 31),
       st.lists(st.tuples(st.integers(min_value=0, max_value=2 ** 40),
                          st.integers(min_value=0, max_value=1000)), max_size=20))
def test_file_round_trips(storage, messages, changes):
    text = maildirsize.header(storage, messages) + "\n" + "".join(
        f"{o} {n}\n" for o, n in changes)
    parsed = maildirsize.parse(text.encode())
    assert parsed == ((storage, messages), sum(o for o, _ in changes),
                      sum(n for _, n in changes))


@given(st.binary(max_size=200))
def test_parse_never_raises(data):
    maildirsize.parse(data)


def test_header_as_dovecot_writes_it():
    assert maildirsize.header(0) == "0S"
    assert maildirsize.header(1048576) == "1048576S"
    assert maildirsize.header(0, 100) == "100C"
    assert maildirsize.header(5000, 100) == "5000S,100C"


def test_parse_rules():
    assert maildirsize.parse(b"100S\n10 1\n-5 -1\n") == ((100, 0), 5, 0)
    assert maildirsize.parse(b"100S\n10 1\n7 1") == ((100, 0), 10, 1)  # half-written line
    assert maildirsize.parse(b"100S\n-10 -1\n") is None  # negative total: corrupt
    assert maildirsize.parse(b"100X\n") is None
    assert maildirsize.parse(b"100S\n1 2 3\n") is None
    assert maildirsize.parse(b"") is None


def test_rebuild_counts_every_folder_from_file_names(tmp_path):
    root = maildir(tmp_path / "u", ("", ".Sent", ".Trash", ".A.B"))
    drop(root, "", "new", "1.M1P1.h,S=1000,W=1020:2,", 3)  # the name's S= wins
    drop(root, "", "cur", "2.M2P2.h:2,S", 500)  # no S=: its size
    drop(root, ".Sent", "cur", "3.M3P3.h,S=300:2,S", 300)
    drop(root, ".A.B", "new", "4.M4P4.h,S=20", 20)
    drop(root, "", "tmp", "5.M5P5.h,S=9999", 1)  # tmp/ is not mail yet
    os.makedirs(os.path.join(root, ".NotAFolder"))  # no cur/
    drop(root, ".NotAFolder", "", "6,S=777", 1)
    assert maildirsize.current(root, (10_000, 0), time.time(), PRIVATE, LOCK) == (1820, 4)
    with open(os.path.join(root, "maildirsize")) as f:
        assert f.read() == "10000S\n1820 4\n"


def test_changes_are_appended_and_summed(tmp_path):
    root = maildir(tmp_path / "u")
    maildirsize.add(root, 100, 1, LOCK)  # no file yet: nothing written, rebuilt on read
    assert not os.path.exists(os.path.join(root, "maildirsize"))
    assert maildirsize.current(root, (0, 0), time.time(), PRIVATE, LOCK) == (0, 0)
    maildirsize.add(root, 100, 1, LOCK)
    maildirsize.add(root, 50, 1, LOCK)
    maildirsize.add(root, -100, -1, LOCK)
    # The lines are trusted (no file with 100 octets exists: no rebuild happened).
    assert maildirsize.current(root, (0, 0), time.time(), PRIVATE, LOCK) == (50, 1)
    with open(os.path.join(root, "maildirsize")) as f:
        assert f.read() == "0S\n0 0\n100 1\n50 1\n-100 -1\n"


def test_a_batch_appends_one_line_per_maildir(tmp_path):
    """A batch of deliveries opens each account's file once (issue 18)."""
    a, b = maildir(tmp_path / "a"), maildir(tmp_path / "b")
    for root in (a, b):
        maildirsize.current(root, (0, 0), time.time(), PRIVATE, LOCK)
    Change = maildirsize.Change
    maildirsize.add_all([Change(a, 100, 1, LOCK), Change(b, 7, 1, LOCK),
                         Change(a, 50, 2, LOCK), Change(str(tmp_path / "gone"), 1, 1, LOCK)])
    with open(os.path.join(a, "maildirsize")) as f:
        assert f.read() == "0S\n0 0\n150 3\n"
    with open(os.path.join(b, "maildirsize")) as f:
        assert f.read() == "0S\n0 0\n7 1\n"


def test_rebuilt_when_stale_too_long_or_limits_changed(tmp_path):
    root = maildir(tmp_path / "u")
    path = os.path.join(root, "maildirsize")
    drop(root, "", "new", "1.M1P1.h,S=700", 700)
    now = time.time()
    assert maildirsize.current(root, (0, 0), now, PRIVATE, LOCK) == (700, 1)
    drop(root, "", "new", "2.M2P2.h,S=300", 300)  # another program: no line for it
    assert maildirsize.current(root, (0, 0), now, PRIVATE, LOCK) == (700, 1)
    # Older than 15 minutes: rebuilt.
    assert maildirsize.current(root, (0, 0), now + 15 * 60 + 5, PRIVATE, LOCK) == (1000, 2)
    # Other limits (the admin changed the quota): rebuilt with ours.
    maildirsize.add(root, 1, 0, LOCK)  # a wrong line a rebuild drops
    assert maildirsize.current(root, (4096, 0), time.time(), PRIVATE, LOCK) == (1000, 2)
    with open(path) as f:
        assert f.read() == "4096S\n1000 2\n"
    # 5120 octets or more: rebuilt.
    for _ in range(600):
        maildirsize.add(root, 100_000, 0, LOCK)
    assert os.path.getsize(path) >= maildirsize.MAX_LENGTH
    assert maildirsize.current(root, (4096, 0), time.time(), PRIVATE, LOCK) == (1000, 2)
    assert os.path.getsize(path) < 100
    # A broken file: rebuilt.
    with open(path, "w") as f:
        f.write("garbage\n")
    assert maildirsize.current(root, (4096, 0), time.time(), PRIVATE, LOCK) == (1000, 2)


def test_peek_writes_nothing(tmp_path):
    root = maildir(tmp_path / "u")
    drop(root, "", "cur", "1.M1P1.h,S=10:2,", 10)
    assert maildirsize.peek(root, time.time()) == (10, 1)
    assert not os.path.exists(os.path.join(root, "maildirsize"))


def test_usage_room_and_full():
    u = QuotaUsage(900, 3, 1000)
    assert u.room_for(100) and not u.room_for(101) and not u.full
    assert QuotaUsage(1000, 3, 1000).full and not QuotaUsage(10**9, 3, 0).full
    assert not QuotaUsage(0, 5, 0, 5).room_for(1)
