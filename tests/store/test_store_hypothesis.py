"""Property tests for the store's parsers and name rules."""

from __future__ import annotations

import io
import os
import re
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.message.crlf import CRLFNormalizer, CRLFReader
from mailhost.store._maildir import legacy_uidlist
from mailhost.store._maildir.maildir_index import (
    FolderIndex,
    _bulk_sizes,
    name_order,
    sort_by_name_order,
)
from mailhost.store._maildir.maildir_names import (
    Keywords,
    filename,
    info_letters,
    make_info,
    sizes_from_base,
    split_name,
    unique_base,
)
from mailhost.store.interfaces import SYSTEM_FLAGS, InvalidFolderName
from mailhost.store.names import InvalidUserName, canonical_folder, split_user

FAST = settings(max_examples=300, deadline=None)

keyword = st.text(alphabet=string.ascii_letters + string.digits + "$_-", min_size=1,
                  max_size=12)


@FAST
@given(system=st.sets(st.sampled_from(sorted(SYSTEM_FLAGS))),
       # Dovecot matches keyword names case-insensitively: one letter per name.
       keywords=st.lists(keyword, max_size=26, unique_by=str.lower).map(set),
       in_new=st.booleans())
def test_flags_round_trip_through_file_name(system, keywords, in_new):
    kw = Keywords()
    flags = frozenset(system | keywords)
    kw.assign(keywords)
    base = unique_base(1234)
    name = filename(base, make_info(kw.letters_of(flags), in_new))
    got_base, info = split_name(name)
    assert got_base == base
    assert sizes_from_base(got_base) == (1234, 1234)
    letters = info_letters(info)
    assert list(letters) == sorted(letters)  # Maildir wants sorted letters
    # another reader of the same dovecot-keywords file sees the same flags
    again = Keywords.parse(kw.serialize())
    assert again.flags_of(letters) == (flags, "")


@FAST
@given(st.text(max_size=60))
def test_folder_names_never_escape_the_user_root(name):
    root = "/srv/mail/example.test/alice"
    try:
        canon = canonical_folder(name)
    except InvalidFolderName:
        return
    path = os.path.normpath(os.path.join(root, "." + canon))
    assert os.path.dirname(path) == root
    assert os.path.basename(path) == "." + canon
    assert "\x00" not in canon and "/" not in canon
    assert canonical_folder(canon) == canon


@FAST
@given(st.text(max_size=40))
def test_user_names_never_escape_the_store_root(user):
    root = "/srv/mail"
    try:
        local, domain = split_user(user)
    except InvalidUserName:
        return
    path = os.path.normpath(os.path.join(root, domain, local))
    assert os.path.dirname(os.path.dirname(path)) == root
    assert path == os.path.join(root, domain, local)


@FAST
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=8))
def test_crlf_normaliser_is_chunking_invariant(data, cuts):
    """The store's rule (bare CR kept); tests/message/test_crlf.py has the wire's."""
    whole = CRLFNormalizer(keep_bare_cr=True).feed(data)
    norm = CRLFNormalizer(keep_bare_cr=True)
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    pieces = b"".join(norm.feed(data[a:b]) for a, b in zip(points, points[1:], strict=False))
    assert pieces == whole
    assert b"\n" not in whole.replace(b"\r\n", b"")  # no bare LF survives
    assert whole.replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n")


@FAST
@given(data=st.binary(max_size=400), size=st.integers(1, 50), seek=st.integers(0, 500))
def test_crlf_reader_matches_normaliser(data, size, seek):
    want = CRLFNormalizer(keep_bare_cr=True).feed(data)
    reader = io.BufferedReader(CRLFReader(io.BytesIO(data)))
    out = b""
    while part := reader.read(size):
        out += part
    assert out == want
    reader.seek(min(seek, len(want)))
    assert reader.read() == want[min(seek, len(want)):]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=500))
def test_legacy_uidlist_reader_survives_junk(tmp_path_factory, junk):
    path = tmp_path_factory.mktemp("u") / "mailhost-uidlist"
    path.write_bytes(b"V1 N5\n" + junk)
    got = legacy_uidlist.read(str(path))
    assert got is not None
    validity, uid_next, records = got
    assert validity == 1 and uid_next >= 5
    assert all(uid < uid_next for uid, _, _, _ in records.values())
    path.write_bytes(junk)
    legacy_uidlist.read(str(path))  # may be None; must not raise


def test_crlf_normalizer_lone_lf_chunk_after_cr():
    """Regression: chunks 'a\\r', '\\n', '\\nb' gave 'a\\r\\n\\nb' (a bare LF reached the store)."""
    from mailhost.message.crlf import CRLFNormalizer

    for keep in (True, False):
        norm = CRLFNormalizer(keep_bare_cr=keep)
        out = b"".join(norm.feed(c) for c in (b"a\r", b"\n", b"\nb"))
        assert out == b"a\r\n\r\nb"


_SIZE_RE = re.compile(r",([SW])=(\d+)")


def _sizes_reference(base):
    """The plain regex reading of S=/W= (what sizes_from_base must agree with)."""
    found = dict(_SIZE_RE.findall(base))
    s, w = found.get("S"), found.get("W")
    return (int(s) if s else None), (int(w) if w else None)


name_text = st.text(alphabet=",SW=0123456789.:xM", max_size=30)


@FAST
@given(st.one_of(name_text, st.text(max_size=30),
                 st.builds(lambda a, s, w: f"{a},S={s},W={w}", name_text,
                           st.integers(0, 10**9), st.integers(0, 10**9))))
def test_sizes_from_base_agrees_with_the_regex(base):
    assert sizes_from_base(base) == _sizes_reference(base)


@FAST
@given(st.one_of(
    st.lists(st.one_of(
        st.builds(lambda s, u, r: f"{s}.M{u}P1Q{r}.host", st.integers(0, 2 * 10**9),
                  st.integers(0, 10**7), st.integers(0, 99)),
        st.text(alphabet="0123456789.MPQ:,xa", max_size=20)), max_size=30),
    # one width of seconds, few distinct: the string-sort fast path and its tie runs
    st.lists(st.builds(lambda s, u, r: f"{s}.M{u}P1Q{r}.host{':2,S' if r % 2 else ''}",
                       st.integers(1_700_000_000, 1_700_000_003), st.integers(0, 10**6),
                       st.integers(0, 99)), max_size=40)))
def test_bulk_name_sort_matches_the_dovecot_key(names):
    expected = sorted(names, key=name_order)
    sort_by_name_order(names)
    assert names == expected


@FAST
@given(st.lists(st.one_of(name_text, st.text(max_size=20),
                          st.builds(lambda a, s, w: f"{a},S={s},W={w}", name_text,
                                    st.integers(0, 10**9), st.integers(0, 10**9))),
                max_size=10))
def test_bulk_sizes_agree_with_sizes_from_base(bases):
    bases = [b.replace("/", "") for b in bases]
    sizes, wraps = _bulk_sizes(bases)
    for base, size, wrap in zip(bases, sizes, wraps, strict=True):
        s, w = sizes_from_base(base)
        if s is None or w is None:
            assert size == -1
        else:
            assert (size, wrap) == (w, s != w)


@FAST
@given(st.lists(st.tuples(st.integers(1, 200), st.sampled_from([None, "2,S", "2,FS", "2,a"]),
                          st.booleans()), max_size=40),
       st.sets(st.integers(1, 200), max_size=60))
def test_folder_index_matches_a_dict_model(rows, removed):
    index = FolderIndex(Keywords({0: "$Label"}))
    model = {}
    for uid, part, recent in rows:
        index.add(uid, f"k{uid}", uid * 10, float(uid), index.state(part, recent), uid % 3 == 0)
        model[uid] = (f"k{uid}", part, recent)
    assert sorted(index.remove(removed)) == sorted(set(removed) & model.keys())
    for uid in removed:
        model.pop(uid, None)
    assert list(index.uids) == sorted(model)
    assert index.by_base == {key: uid for uid, (key, _, _) in model.items()}
    for uid, (key, part, recent) in model.items():
        info = index.get(uid)
        assert (info.key, info.size, info.internal_date, info.recent) == \
            (key, uid * 10, float(uid), recent)
        assert info.flags == Keywords({0: "$Label"}).flags_of(info_letters(part))[0]
        assert index.wrap[index.pos(uid)] == (uid % 3 == 0)
    cols = index.columns()
    assert list(cols.uids) == sorted(model) and len(cols.flags) == len(model)
    assert index.infos() == [index.get(u) for u in sorted(model)]


_PARTS = ["2," + "".join(c for i, c in enumerate("abcdefghij") if n >> i & 1)
          for n in range(1024)]


@FAST
@given(st.integers(0, 700),
       st.lists(st.tuples(st.integers(0, 1023), st.booleans()), max_size=60),
       st.data())
def test_recent_uids_are_what_a_scan_of_every_state_finds(before, rows, data):
    """``FolderIndex.recent_uids`` marks the states in new/ by their low byte: with
    state ids past 255 (made first here), a state in cur/ can share the low byte of
    one in new/, and must not count."""
    index = FolderIndex(Keywords({0: "$Label"}))
    for n in range(before):
        index.state(_PARTS[n], n % 3 == 0)
    for uid, (part, recent) in enumerate(rows, 1):
        index.add(uid, f"k{uid}", 10, 1.0, index.state(_PARTS[part], recent), False)
    if rows:
        index.claimed.update(data.draw(st.sets(st.integers(1, len(rows)))))
    scan = [u for u, s in zip(index.uids, index.states, strict=True)
            if index.table[s].recent and u not in index.claimed]
    assert index.recent_uids() == scan
