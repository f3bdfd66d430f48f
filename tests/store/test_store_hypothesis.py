"""Property tests for the store's parsers and name rules."""

from __future__ import annotations

import io
import os
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.store import uidlist
from mailhost.store.crlf import CRLFNormalizer, CRLFReader
from mailhost.store.interfaces import SYSTEM_FLAGS, InvalidFolderName
from mailhost.store.maildir_names import (
    Keywords,
    filename,
    info_letters,
    make_info,
    sizes_from_base,
    split_name,
    unique_base,
)
from mailhost.store.names import InvalidUserName, canonical_folder, split_user

FAST = settings(max_examples=300, deadline=None)

keyword = st.text(alphabet=string.ascii_letters + string.digits + "$_-", min_size=1,
                  max_size=12)


@FAST
@given(system=st.sets(st.sampled_from(sorted(SYSTEM_FLAGS))),
       keywords=st.sets(keyword, max_size=26), in_new=st.booleans())
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
    whole = CRLFNormalizer().feed(data)
    norm = CRLFNormalizer()
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    pieces = b"".join(norm.feed(data[a:b]) for a, b in zip(points, points[1:], strict=False))
    assert pieces == whole
    assert b"\n" not in whole.replace(b"\r\n", b"")  # no bare LF survives
    assert whole.replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n")


@FAST
@given(data=st.binary(max_size=400), size=st.integers(1, 50), seek=st.integers(0, 500))
def test_crlf_reader_matches_normaliser(data, size, seek):
    want = CRLFNormalizer().feed(data)
    reader = io.BufferedReader(CRLFReader(io.BytesIO(data)))
    out = b""
    while part := reader.read(size):
        out += part
    assert out == want
    reader.seek(min(seek, len(want)))
    assert reader.read() == want[min(seek, len(want)):]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=500))
def test_uidlist_reader_survives_junk(tmp_path_factory, junk):
    path = tmp_path_factory.mktemp("u") / "mailhost-uidlist"
    path.write_bytes(b"V1 N5\n" + junk)
    got = uidlist.read(str(path))
    assert got is not None
    validity, uid_next, records, _ = got
    assert validity == 1 and uid_next >= 5
    assert all(uid < uid_next for uid, _, _, _ in records.values())
    path.write_bytes(junk)
    uidlist.read(str(path))  # may be None; must not raise


def test_crlf_normalizer_lone_lf_chunk_after_cr():
    """Regression: chunks 'a\\r', '\\n', '\\nb' gave 'a\\r\\n\\nb' (a bare LF reached the store)."""
    from mailhost.store.crlf import CRLFNormalizer

    norm = CRLFNormalizer()
    out = b"".join(norm.feed(c) for c in (b"a\r", b"\n", b"\nb"))
    assert out == b"a\r\n\r\nb"
