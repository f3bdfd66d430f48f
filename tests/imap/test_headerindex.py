"""The header table keeps raw header values and derives each column on first read
(issue 16: the first SEARCH SUBJECT on 100k messages derived every field of every
message, ~100 us each, and held them twice)."""

from __future__ import annotations

import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.imap import headerindex
from mailhost.imap.headerindex import HeaderTable, parse_fields, raw_record
from mailhost.store.memory import MemoryStore
from tests.imap.test_fetch import deliver

BLOCKS = [
    b"From: Sender 6 <s6@example.test>\r\nTo: alice@example.test\r\nSubject: Re: bench 1\r\n"
    b"Date: Sat, 05 Dec 2026 03:00:00 +0000\r\nMessage-ID: <b6@example.test>\r\n"
    b"In-Reply-To: <b5@example.test>\r\nReferences: <b5@example.test>\r\n\r\n",
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\nSubject: second\r\nFrom: \"A, B\" <a@x>, c@y\r\n"
    b"Cc: group: d@z;\r\nDate: 1 Nov 26 23:30 EST\r\n\r\n",
    b"Subject: 8bit \xc3\xa9t\xc3\xa9 \xff and \x00 nul\r\nTo: <user (c)@ (c) dom.org>\r\n"
    b"References: <a@x>\r\n <b@x>\r\nIn-Reply-To: <c@x>\r\n\r\n",
    b"\r\n",
    b"X-Other: 1\r\nFrom:\r\nDate: nonsense\r\n\r\n",
]


def _row_fields(block: bytes) -> tuple:
    """The Fields a table row shows for ``block`` (through its cache text)."""
    table = HeaderTable()
    table._add(7, raw_record(block))
    row = table.fields[7]
    return tuple(getattr(row, name) for name in headerindex.Fields._fields)


def test_table_rows_equal_parse_fields():
    for block in BLOCKS:
        assert _row_fields(block) == tuple(parse_fields(block)), block


@given(st.lists(st.tuples(st.sampled_from(
    ["Subject", "subject", "From", "To", "Cc", "Date", "Message-ID", "References",
     "In-Reply-To", "X-Any"]), st.binary(max_size=40)), max_size=8))
@settings(max_examples=200, deadline=None)
def test_raw_record_round_trips(fields):
    block = b"".join(name.encode() + b": " + value.replace(b"\n", b" ") + b"\r\n"
                     for name, value in fields) + b"\r\n"
    assert headerindex._record_values(raw_record(block)) == headerindex._raw_values(block)
    assert _row_fields(block) == tuple(parse_fields(block))


@pytest_twisted.ensureDeferred
async def test_first_search_subject_derives_only_the_subject():
    """Regression (issue 16, first UID SEARCH SUBJECT 3.2x Dovecot): filling the table
    derives nothing; reading subjects derives the subject group only, and the cache
    text is the table's own record, held once."""
    folder, uids = await deliver(MemoryStore(), *(b + b"body\r\n" for b in BLOCKS[:3]))
    table = HeaderTable()
    rows = await table.get(folder, uids)
    assert table._columns == {}
    assert [rows[u].subject for u in uids] == [parse_fields(b).subject for b in BLOCKS[:3]]
    assert set(table._columns) == {"subject"}
    assert folder.get_cached(uids[0], headerindex.CACHE_KEY) is table._records[0]
    # A second table (another process after a restart) reads the cache, no file.
    again = HeaderTable()
    rows = await again.get(folder, uids)
    assert again.files_read == 0
    assert rows[uids[2]].parents == ("a@x", "b@x")


def test_stray_close_paren_in_an_address_ends():
    """Regression (found by test_raw_record_round_trips): a ')' outside any comment,
    as in ``To: :x)``, made envelope's tokenizer append empty atoms forever until the
    process ran out of memory (ENVELOPE, SORT and SEARCH of such a message)."""
    from mailhost.imap import envelope

    assert envelope.parse_addresses("a@b)") == envelope.parse_addresses("a@b)")
    assert parse_fields(b"To: :\xc1'r)\r\nCc: x)\r\n\r\n").cc_text is not None


def _fields_line_by_line(block: bytes) -> list:
    """``_raw_values`` as it was before one regex found the wanted lines: every line of
    the unfolded block split at its first colon (the reference for the regex)."""
    values: list = [None] * len(headerindex._SLOTS)
    for line in headerindex._FOLD.sub(b"", block).split(b"\n"):
        name, colon, value = line.partition(b":")
        if not (colon and name):
            continue
        i = headerindex._SLOT.get(name.strip().decode("ascii", "replace").lower())
        if i == 1:
            values[1] = (values[1] or []) + [value.strip()]
        elif i is not None and values[i] is None:
            values[i] = value.strip()
    return values


_NAMES = st.sampled_from(["Subject", "SUBJECT", "subject", " Subject", "Subject ",
                          "Subject\t", "From", "fRoM", "To", "Cc", "Date", "Message-ID",
                          "References", "In-Reply-To", "X-Subject", "Subjects", "Resent-From",
                          "Received", ""])
_VALUES = st.binary(max_size=30).map(lambda b: b.replace(b"\n", b" "))
_SEPARATORS = st.sampled_from([b"\r\n", b"\n", b"\r\n ", b"\n\t", b"\r\r\n", b"\r\n\r\n "])


@given(st.lists(st.tuples(_NAMES, st.sampled_from([b":", b" :", b"", b"::"]), _VALUES,
                          _SEPARATORS), max_size=10))
@settings(max_examples=400, deadline=None)
def test_wanted_lines_regex_reads_what_a_line_loop_reads(lines):
    """The regex behind ``_raw_values`` (issue 16) against the line-by-line reading it
    replaced: names in any case, white space around them, folded lines, bare CRs, lines
    without a colon, any octet in the values."""
    block = b"".join(name.encode() + colon + value + sep for name, colon, value, sep in lines)
    assert headerindex._raw_values(block) == _fields_line_by_line(block)
    assert headerindex._record_values(raw_record(block)) == headerindex._raw_values(block)


def test_records_cached_as_json_by_an_older_mailhost_are_still_read():
    """Records were JSON lists (``sortf2`` entries written before issue 16's line
    format); the same cache key still reads them, every column the same."""
    import json

    for block in BLOCKS:
        values = headerindex._raw_values(block)
        legacy = json.dumps([None if v is None else [x.decode("latin-1") for x in v]
                             if i == 1 else v.decode("latin-1")
                             for i, v in enumerate(values)],
                            ensure_ascii=False, separators=(",", ":"))
        assert headerindex._record_values(legacy) == values
        table = HeaderTable()
        table._add(7, legacy)
        row = table.fields[7]
        assert tuple(getattr(row, n) for n in headerindex.Fields._fields) == tuple(
            parse_fields(block)), block


def test_records_that_are_not_records_read_as_empty():
    for text in ["", "garbage", "=a\n=b", "x\n\n\n\n\n\n\n=s", "\n\n\n\n\n\n\nsubject"]:
        table = HeaderTable()
        table._add(1, text)
        assert table.fields[1].subject is None, text
        assert table.fields[1].base == "", text


class _Blocks:
    """A folder of header blocks whose reads take ``delay`` seconds each (0: at once,
    as from the page cache); counts the reads in flight, and fails the read of
    ``fail_at`` (a UID) when set."""

    def __init__(self, n: int, delay: float, fail_at: int = 0) -> None:
        self.block = BLOCKS[0]
        self.uids = list(range(1, n + 1))
        self.delay, self.fail_at = delay, fail_at
        self.in_flight = self.most = 0
        self.cache: dict = {}

    def get_cached(self, uid, key):
        return self.cache.get((uid, key))

    def set_cached(self, uid, key, value):
        self.cache[(uid, key)] = value

    def read_headers(self, uids, fn):
        import io

        from twisted.internet import reactor, task

        self.in_flight += 1
        self.most = max(self.most, self.in_flight)

        def done():
            self.in_flight -= 1
            if self.fail_at in uids:
                raise OSError(5, "Input/output error")
            return [(u, fn(io.BytesIO(self.block))) for u in uids]

        return task.deferLater(reactor, self.delay, done)


def _blocks_folder(n: int, delay: float, fail_at: int = 0) -> _Blocks:
    from zope.interface import directlyProvides

    from mailhost.store.interfaces import IHeaderBlocks

    folder = _Blocks(n, delay, fail_at)
    directlyProvides(folder, IHeaderBlocks)
    return folder


@pytest_twisted.ensureDeferred
async def test_header_batches_go_in_parallel_only_when_the_disk_is_slow(monkeypatch):
    """Issue 16: from the page cache (a batch well under DISK_BOUND a message) one
    batch is read at a time: batches in parallel only contended for the GIL and the
    directory (100k messages, first SEARCH SUBJECT: 2.9 s one at a time, 4.8 s three
    at a time). Batches that wait on the disk bring more into flight, up to
    PARALLEL (cold: 9.0 s one at a time, 7.8 s three at a time). Every message is read
    either way, and a failed read fails the fill once all reads are over."""
    monkeypatch.setattr(headerindex, "BULK", 10)
    monkeypatch.setattr(headerindex, "DISK_BOUND", 0.001)  # 10 ms a batch of 10
    warm = _blocks_folder(100, 0.0)
    rows = await HeaderTable().get(warm, warm.uids)
    assert warm.most == 1 and sorted(rows) == warm.uids

    cold = _blocks_folder(100, 0.02)
    rows = await HeaderTable().get(cold, cold.uids)
    assert cold.most == headerindex.PARALLEL and sorted(rows) == cold.uids

    broken = _blocks_folder(100, 0.02, fail_at=35)
    try:
        await HeaderTable().get(broken, broken.uids)
    except OSError as e:
        assert e.errno == 5
    else:
        raise AssertionError("the failed read did not fail the fill")
    assert broken.in_flight == 0
