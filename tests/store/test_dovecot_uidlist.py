"""dovecot-uidlist (v3): parsing, writing, incremental reads, torn lines, extensions."""

from __future__ import annotations

import os
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.store._maildir.dovecot_uidlist import (
    UIDLIST_FILE,
    UidList,
    parse_header,
    parse_records,
)
from mailhost.store.modes import PRIVATE

BASE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.,=_-", min_size=1,
               max_size=30)
EXT = st.lists(st.tuples(st.sampled_from("SWGPO"),
                         st.text(alphabet="0123456789abcdef", min_size=1, max_size=12)),
               max_size=3)


def fresh(path: str) -> UidList:
    ul = UidList(path, PRIVATE)
    assert ul.refresh()
    return ul


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(BASE, EXT, max_size=40), st.integers(1, 2**31), st.data())
def test_round_trip(tmp_path_factory, records, validity, data):
    """What we write, we (and so Dovecot's parser, which reads the same fields) read
    back: header, UIDs, base names and every extension field, in UID order."""
    path = str(tmp_path_factory.mktemp("u") / UIDLIST_FILE)
    ul = UidList(path, PRIVATE)
    uids = sorted(data.draw(st.sets(st.integers(1, 10**6), min_size=len(records),
                                    max_size=len(records))))
    ul.by_base = dict(zip(records, uids, strict=True))
    ul.ext = {u: "".join(f" {k}{v}" for k, v in ext)
              for u, ext in zip(uids, records.values(), strict=True) if ext}
    ul.max_uid = max(uids, default=0)
    ul.create_header(validity, 1)
    ul.recreate(fsync=False)
    back = fresh(path)
    assert back.by_base == ul.by_base and back.ext == ul.ext
    assert back.validity == validity and back.next_uid == ul.next_uid
    assert re.fullmatch(r"[0-9a-f]{32}", back.header.guid)
    with open(path) as f:
        lines = f.read().splitlines()
    assert [int(line.split()[0]) for line in lines[1:]] == uids  # ascending


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_parser_survives_junk(junk):
    uids, bases, exts, used = parse_records(junk)
    assert len(uids) == len(bases) and used <= len(junk)
    assert set(exts) <= set(uids)
    parse_header(junk.decode("utf-8", "replace").split("\n")[0])


def test_dovecot_header_fields():
    h = parse_header("3 V1700000000 N42 G0123456789abcdef0123456789abcdef Pfoo")
    assert (h.validity, h.next_uid, h.guid, h.extra) == (1700000000, 42,
                                                         "0123456789abcdef0123456789abcdef",
                                                         "Pfoo")
    assert h.line() == "3 V1700000000 N42 G0123456789abcdef0123456789abcdef Pfoo\n"
    v1 = parse_header("1 17 9")
    assert (v1.version, v1.validity, v1.next_uid) == (1, 17, 9)
    assert parse_header("3 V0 N1") is None and parse_header("V5 N6") is None


def test_names_with_info_and_extensions_match_by_base(tmp_path):
    path = str(tmp_path / UIDLIST_FILE)
    with open(path, "w") as f:
        f.write("3 V7 N3 G0123456789abcdef0123456789abcdef\n"
                "1 :1700000000.M1P1.h,S=3,W=3:2,S\n"  # an older Dovecot kept the info
                "2 W1234 Gabc :1700000000.M2P1.h\n")
    ul = fresh(path)
    assert ul.by_base == {"1700000000.M1P1.h,S=3,W=3": 1, "1700000000.M2P1.h": 2}
    assert ul.ext == {2: " W1234 Gabc"}
    ul.recreate(fsync=False)  # written back as Dovecot writes it: no info, keys kept
    with open(path) as f:
        assert f.read().splitlines()[1:] == ["1 :1700000000.M1P1.h,S=3,W=3",
                                             "2 W1234 Gabc :1700000000.M2P1.h"]


def test_appended_records_are_read_incrementally_and_a_replaced_file_whole(tmp_path):
    path = str(tmp_path / UIDLIST_FILE)
    with open(path, "w") as f:
        f.write("3 V7 N5 G0123456789abcdef0123456789abcdef\n1 :a\n")
    ul = fresh(path)
    assert ul.next_uid == 5
    with open(path, "r+") as f:
        f.seek(len(f.readline()) + 3)
        f.write("z")  # proves the next read starts at the old end, not at the top
    with open(path, "a") as f:
        f.write("5 :b\n6 :c\n")  # another process appends; the header is not rewritten
    assert ul.refresh()
    assert ul.by_base == {"a": 1, "b": 5, "c": 6} and ul.next_uid == 7
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("3 V7 N9 G0123456789abcdef0123456789abcdef\n6 :c\n8 :d\n")
    os.rename(tmp, path)  # Dovecot's recreate: dropped the expunged, new inode
    assert ul.refresh()
    assert ul.by_base == {"c": 6, "d": 8} and ul.next_uid == 9


def test_torn_last_line_is_ignored_then_dropped_by_a_recreate(tmp_path):
    path = str(tmp_path / UIDLIST_FILE)
    with open(path, "w") as f:
        f.write("3 V7 N2 G0123456789abcdef0123456789abcdef\n1 :a\n2 :b")  # crash
    ul = fresh(path)
    assert ul.by_base == {"a": 1} and ul.torn
    ul.handed = 1
    uids, recreate = ul.assign(["c"])
    assert uids == [2] and recreate  # never append after a fragment
    ul.write(recreate, fsync=False)
    with open(path) as f:
        assert f.read().splitlines()[1:] == ["1 :a", "2 :c"]


def test_assign_keeps_recorded_uids_and_renumbers_only_below_handed(tmp_path):
    path = str(tmp_path / UIDLIST_FILE)
    with open(path, "w") as f:
        f.write("3 V7 N3 G0123456789abcdef0123456789abcdef\n1 :a\n4 :late\n")
    ul = fresh(path)
    ul.handed = 1
    assert ul.assign(["late", "new"]) == ([4, 5], False)  # Dovecot's UID kept
    ul.write(False, fsync=False)
    ul.handed = 5
    uids, recreate = ul.assign(["a"])  # "a" reappeared below what the index showed
    assert uids == [6] and recreate
    ul.write(recreate, fsync=False)
    assert fresh(path).by_base == {"a": 6, "late": 4, "new": 5}


def test_newcomers_are_records_above_handed_that_are_not_ours_and_a_kept_one_stays(tmp_path):
    """Regression (issue 13): Dovecot's records between what the index was handed and
    our new UID go to the index with it instead of being renumbered later."""
    path = str(tmp_path / UIDLIST_FILE)
    with open(path, "w") as f:
        f.write("3 V7 N3 G0123456789abcdef0123456789abcdef\n1 :a\n2 :b\n")
    ul = fresh(path)
    ul.handed = 2
    ul.trim_arrived()
    assert ul.newcomers(set()) == []
    with open(path, "a") as f:
        f.write("3 :dv0\n4 :dv1\n5 :mine\n")
    ul.refresh()
    assert ul.newcomers({"mine"}) == [(3, "dv0"), (4, "dv1")]
    assert ul.newcomers(set()) == []  # each is handed once
    ul.handed = 5
    assert ul.assign(["dv0"], keep={"dv0"}) == ([3], False)  # already handed: kept


HEAD = "3 V1796419000 N1 G0123456789abcdef0123456789abcdef\n"


def dovecot_recreate(path: str, text: str) -> None:
    """What Dovecot does: write dovecot-uidlist.tmp, rename it over the file."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def test_two_dovecot_recreates_that_bring_the_old_inode_back_are_read(tmp_path):
    """Found by tests/e2e/test_dovecot_sharing.py: refresh identified the file by its
    (inode, device) only and held nothing open, so after two tmp + rename recreates
    ext4 gave the third file the first one's inode; at equal size refresh called it
    unchanged and missed record 2 (next_uid stayed 2, a UID Dovecot had given out)."""
    path = str(tmp_path / UIDLIST_FILE)
    dovecot_recreate(path, HEAD + "1 :1796419000.M1P1.vm,S=10,W=10\n")
    ul = fresh(path)
    first = os.stat(path).st_ino
    dovecot_recreate(path, HEAD + "1 :1796419000.M1P1.vm,S=10,W=10\n"
                     "2 :1796419000.M2P1.vm,S=10,W=10\n")
    # Dovecot expunges message 1: same size as what we read.
    dovecot_recreate(path, HEAD + "2 :1796419000.M2P1.vm,S=10,W=10\n")
    assert ul.refresh()
    assert ul.by_base == {"1796419000.M2P1.vm,S=10,W=10": 2}
    assert ul.max_uid == 2 and ul.next_uid == 3
    assert os.stat(path).st_ino != first  # we hold it: the number cannot come back
    ul.close()


def test_after_our_own_recreate_a_dovecot_recreate_is_read(tmp_path):
    """Our recreate keeps the file it wrote open too: a Dovecot recreate right after
    it (and another after that, which on ext4 would get our file's inode back if we
    had closed it) is read whole, also when it is larger and so would otherwise be
    read from our old offset, in the middle of its records."""
    path = str(tmp_path / UIDLIST_FILE)
    ul = UidList(path, PRIVATE)
    assert not ul.refresh()
    ul.create_header(1796419000)
    ul.header.guid = "0123456789abcdef0123456789abcdef"
    ul.assign(["a"])
    ul.write(True, fsync=False)
    ours = os.stat(path).st_ino
    with open(path) as f:
        assert f.read() == HEAD.replace("N1", "N2") + "1 :a\n"
    dovecot_recreate(path, HEAD + "1 :a\n2 :b\n")
    dovecot_recreate(path, HEAD.replace("N1", "N4") + "3 :c\n")
    assert ul.refresh()
    assert ul.by_base == {"c": 3} and ul.next_uid == 4
    assert os.stat(path).st_ino != ours
    # Appends go to the file now held, and are read back from it.
    ul.handed = 3
    assert ul.assign(["d"]) == ([4], False)
    ul.write(False, fsync=False)
    assert ul.refresh() and fresh(path).by_base == {"c": 3, "d": 4}
    ul.close()


def test_a_file_rewritten_in_place_is_read_whole(tmp_path):
    """Belt and braces for writers that are not Dovecot: under one inode, a file that
    shrank, or whose header line changed while it grew, is read from the top, not
    from where the last read stopped."""
    path = str(tmp_path / UIDLIST_FILE)
    with open(path, "w") as f:
        f.write(HEAD + "1 :a\n2 :b\n")
    ul = fresh(path)
    with open(path, "w") as f:  # truncated and rewritten, same inode, smaller
        f.write(HEAD + "2 :b\n")
    assert ul.refresh() and ul.by_base == {"b": 2}
    with open(path, "w") as f:  # a new header (UIDVALIDITY), larger
        f.write(HEAD.replace("V1796419000", "V1796419001") + "2 :b\n5 :e\n")
    assert ul.refresh() and ul.by_base == {"b": 2, "e": 5}
    assert ul.validity == 1796419001
    ul.close()


def test_close_lets_go_of_the_file_and_a_refresh_after_it_reads_it_whole(tmp_path):
    path = str(tmp_path / UIDLIST_FILE)
    with open(path, "w") as f:
        f.write(HEAD + "1 :a\n")
    before = len(os.listdir("/proc/self/fd"))
    ul = fresh(path)
    assert len(os.listdir("/proc/self/fd")) == before + 1 and ul.exists
    ul.close()
    assert len(os.listdir("/proc/self/fd")) == before and not ul.exists
    dovecot_recreate(path, HEAD + "2 :b\n")
    assert ul.refresh() and ul.by_base == {"b": 2}
    ul.close()
    os.unlink(path)
    assert not ul.refresh()  # gone: nothing held
    assert len(os.listdir("/proc/self/fd")) == before
