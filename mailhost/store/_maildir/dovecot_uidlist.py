"""A folder's ``dovecot-uidlist`` (version 3), read and written as Dovecot does.

The format (src/lib-storage/index/maildir/maildir-uidlist.c, Dovecot 2.3.19)::

    3 V<uidvalidity> N<nextuid> G<mailbox guid, 32 hex> [<key><value> ...]
    <uid> [<key><value> ...] :<file name>

Record keys are capital letters: ``S`` physical size, ``W`` virtual (CRLF) size (both
written only when the name lacks ``,S=``/``,W=``), ``G`` message GUID, ``P`` POP3 UIDL,
``O`` POP3 order. We keep each record's keys verbatim and write them back on every
rewrite, whether we use them or not. Dovecot writes the name without its ``:2,``
info; older files may carry it, so a record matches a file by the *base* name (the
part before ``:``), as Dovecot's hash does.

How Dovecot changes the file, and so how we do, always under ``dovecot-uidlist.lock``
(dotlock.py) and after re-reading what changed:

- **Append**: new records go to the end of the file in place, in ascending UID order
  and above every UID in the file; the header's N is left alone (a reader takes
  ``max(N, last uid + 1)``). Dovecot re-reads only the appended bytes while the inode
  is unchanged, and *skips* an appended UID not above the last one it saw, so UIDs
  are handed out strictly upwards.
- **Recreate**: write ``dovecot-uidlist.tmp`` (every live record, a fresh header with
  N), fsync, rename over the file. Readers notice the new inode and read it all.
  Records of expunged files are dropped here, never UIDs above them (N keeps them
  from coming back). A file without a G header is recreated by Dovecot on sight, so
  ours always have one.

Noticing a new inode is only sound while the old one cannot come back: on ext4 two
tmp + rename replacements in a row hand the first file's inode number to the third
once nobody holds the first open, and a reader comparing numbers alone then takes the
new file for the old one (same size: "unchanged"; larger: it reads from its old offset
into the middle of the new file) and misses records. So, as Dovecot does (it keeps
the uidlist fd and compares the path's inode with the open fd's), ``UidList`` keeps
the file it last read open, also the one its own recreate wrote, and reads through
that fd: while we hold it, no other file can have its inode number. Belt and braces,
a file that shrank or whose header line changed under the same inode is read whole.
``close`` lets go of it (the folder was deleted, or the store closed).

A torn last line (a crash mid-append) is not read; the next writer recreates the file
instead of appending after it (an append would glue its record to the fragment).
Everything here blocks: worker threads only.
"""

from __future__ import annotations

import os
import re
import threading
import time
from bisect import bisect_right
from collections.abc import Collection, Iterable
from itertools import pairwise

from mailhost.store.modes import PRIVATE, FileModes

UIDLIST_FILE = "dovecot-uidlist"
TEMP_SUFFIX = ".tmp"

#: One record: uid, the extension fields (each " <KEY><value>"), the name after ':'.
_RECORD = re.compile(rb"^(\d+)((?: +[A-Z][^ \n]*)*) +:([^\n]+)\n", re.M)


class Header:
    """The first line: version, UIDVALIDITY, next UID, mailbox GUID, other fields."""

    __slots__ = ("version", "validity", "next_uid", "guid", "extra")

    def __init__(self, validity: int, next_uid: int, guid: str = "", extra: str = "",
                 version: int = 3) -> None:
        self.version = version
        self.validity = validity
        self.next_uid = next_uid
        self.guid = guid
        self.extra = extra

    def line(self) -> str:
        extra = f" {self.extra}" if self.extra else ""
        return f"3 V{self.validity} N{self.next_uid} G{self.guid}{extra}\n"


def parse_header(line: str) -> Header | None:
    """The header line (without its newline), or None if it is not one Dovecot reads."""
    if len(line) < 2 or not line[0].isdigit() or line[1] != " ":
        return None
    version, rest = int(line[0]), line[2:]
    if version == 1:
        parts = rest.split()
        if len(parts) < 2 or not parts[0].isdecimal() or not parts[1].isdecimal():
            return None
        validity, next_uid = int(parts[0]), int(parts[1])
        return Header(validity, next_uid, version=1) if validity and next_uid else None
    if version != 3:
        return None
    validity = next_uid = 0
    guid, extra = "", []
    for field in rest.split(" "):
        if not field:
            continue
        key, value = field[0], field[1:]
        if key in "VN":
            if not value.isdecimal():
                return None
            if key == "V":
                validity = int(value)
            else:
                next_uid = int(value)
        elif key == "G":
            guid = value if re.fullmatch(r"[0-9a-fA-F]{32}", value) else ""
        else:
            extra.append(field)
    if not validity or not next_uid:
        return None
    return Header(validity, next_uid, guid, " ".join(extra))


def parse_records(data: bytes) -> tuple[list[int], list[str], dict[int, str], int]:
    """(uids, base names, uid -> extension text for records that have one, bytes
    consumed) of the complete record lines in ``data``. Lines that are not records are
    skipped; an unterminated last line is left unconsumed (a torn append)."""
    end = data.rfind(b"\n") + 1
    if not end:
        return [], [], {}, 0
    text = data[:end].decode("utf-8", "surrogateescape")
    # The common file: every line "<uid> :<name>". One split at C speed, checked.
    flat = text.replace("\n", " :").split(" :")
    flat.pop()
    uid_texts, names = flat[0::2], flat[1::2]
    exts: dict[int, str] = {}
    if (len(uid_texts) == len(names) == text.count("\n")
            and "".join(uid_texts).isdecimal() and all(names)):
        uids = list(map(int, uid_texts))
    else:
        found = _RECORD.findall(data, 0, end)
        uids = list(map(int, [f[0] for f in found]))
        names = (b"\n".join([f[2] for f in found]).decode("utf-8", "surrogateescape")
                 .split("\n") if found else [])
        for uid, f in zip(uids, found, strict=True):
            if f[1]:
                exts[uid] = f[1].decode("utf-8", "surrogateescape")
    if ":" in "".join(names):  # names written with their info (older versions)
        names = [n.partition(":")[0] for n in names]
    return uids, names, exts, end


def format_record(uid: int, base: str, ext: str = "") -> str:
    return f"{uid}{ext} :{base}\n"


def new_guid() -> str:
    """A mailbox GUID for the header (Dovecot: 128 bits, written as 32 hex digits)."""
    return os.urandom(16).hex()


_validity_lock = threading.Lock()
_last_validity = 0


def new_uid_validity() -> int:
    """A UIDVALIDITY never handed out before by this process (time based)."""
    global _last_validity
    with _validity_lock:
        _last_validity = max(_last_validity + 1, int(time.time()))
        return _last_validity


class _Pin:
    """The open fd of the uidlist file a UidList mirrors, and that file's (inode,
    device): while it is open, no other file can take that inode number (see the
    module docstring). Closed by ``close`` or, for a UidList that was dropped without
    one, when collected."""

    __slots__ = ("fd", "ident")

    def __init__(self, fd: int, st: os.stat_result) -> None:
        self.fd = fd
        self.ident = (st.st_ino, st.st_dev)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    __del__ = close


class UidList:
    """The thread-side mirror of one folder's dovecot-uidlist.

    Holds what was read (base -> UID, the extension fields of records that have some,
    the header), the file it was read from (kept open: ``_Pin``) and where reading
    stopped, so ``refresh`` reads only what was appended while the path still names
    that file. ``handed`` is the highest UID given to the folder's index. Before a
    new UID goes to the index, every record above ``handed`` that another program
    wrote meanwhile (``newcomers``) goes with it, in ascending order, so it keeps its
    UID. Only a record at or below ``handed`` for a file the index does not have (a
    file that reappeared) gets a new UID instead, as Dovecot does ("Expunged message
    reappeared, giving a new UID"), so a session never sees a UID below one it has
    seen.

    Not thread-safe: the folder serialises every use (MaildirFolder's UID lock).
    """

    def __init__(self, path: str, modes: FileModes = PRIVATE) -> None:
        self.path = path
        self.modes = modes
        self.header: Header | None = None
        self.by_base: dict[str, int] = {}
        self.ext: dict[int, str] = {}
        self.max_uid = 0
        self.handed = 0
        self._pin: _Pin | None = None  # the file we read, held open
        self._head = b""  # its header line as read (with the newline)
        self._offset = 0
        self.torn = False  # the file ends in an unterminated line
        self.dirty = False  # the file needs a recreate (old version, no GUID, disorder)
        self._appending: list[tuple[int, str]] = []  # what ``assign`` added, for ``write``
        #: Records read since ``newcomers`` last looked: (uids, bases, ascending) chunks,
        #: the parsed lists themselves (no copy: a load reads 100k records at once).
        self._arrived: list[tuple[list[int], list[str], bool]] = []

    # -- reading ---------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return self._pin is not None

    @property
    def validity(self) -> int:
        return self.header.validity if self.header else 0

    @property
    def next_uid(self) -> int:
        if self.header is None:
            return max(1, self.max_uid + 1)
        return max(self.header.next_uid, self.max_uid + 1)

    def _reset(self) -> None:
        self.header = None
        self.by_base = {}
        self.ext = {}
        self.max_uid = 0
        self._head = b""
        self._offset = 0
        self.torn = False
        self.dirty = False
        self._arrived = []

    def _repin(self, fd: int, st: os.stat_result) -> _Pin:
        """Hold ``fd`` (the file now at the path) instead of the file read before."""
        self._unpin()
        self._pin = pin = _Pin(fd, st)
        return pin

    def _unpin(self) -> None:
        pin, self._pin = self._pin, None
        if pin is not None:
            pin.close()

    def close(self) -> None:
        """Let go of the file (the folder is forgotten). The mirror stays; the next
        ``refresh``, if any, reads the file whole again."""
        self._unpin()
        self._offset = 0

    def refresh(self) -> bool:
        """Read what changed since the last read: the appended records, or everything
        if the file was replaced. False if the file does not exist (the mirror keeps
        what it had, for a recreate)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.close()
            return False
        pin = self._pin
        if pin is not None and (st.st_ino, st.st_dev) == pin.ident:
            # The very file we hold open (nothing else can have its inode now).
            if st.st_size == self._offset:
                return True  # unchanged (the common case: one stat)
            if st.st_size > self._offset and self._head_unchanged(pin.fd):
                self._ingest(_read_from(pin.fd, self._offset), self._offset)
            else:  # shrank, or its header was rewritten in place: no Dovecot does so
                self._read_all(pin.fd)
            return True
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            self.close()
            return False
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        self._read_all(self._repin(fd, st).fd)
        return True

    def _head_unchanged(self, fd: int) -> bool:
        return os.pread(fd, len(self._head), 0) == self._head

    def _read_all(self, fd: int) -> None:
        old = self.header
        handed = self.handed
        self._reset()
        self.handed = handed
        data = _read_from(fd, 0)
        nl = data.find(b"\n")
        header = parse_header(data[:nl].decode("ascii", "replace")) if nl >= 0 else None
        if header is None:
            # Empty, torn or unreadable header: nothing to trust. A writer recreates it
            # (keeping what our previous read knew: UIDs must not go backwards).
            self.header = old
            self.dirty = True
            self._offset = len(data)
            return
        self.header = header
        self._head = data[:nl + 1]
        if header.version != 3 or not header.guid:
            self.dirty = True
        self._ingest(data[nl + 1:], nl + 1)

    def _ingest(self, data: bytes, start: int) -> None:
        uids, bases, exts, used = parse_records(data)
        self._offset = start + used
        self.torn = used < len(data)
        if not uids:
            return
        by_base, ext = self.by_base, self.ext
        disorder = any(a >= b for a, b in pairwise(uids))
        if disorder:
            self._arrived.append((uids, bases, False))
        elif uids[-1] > self.handed:  # only what is above ``handed`` (usually a few)
            i = bisect_right(uids, self.handed)
            self._arrived.append((uids[i:], bases[i:], True) if i else (uids, bases, True))
        if uids[0] <= self.max_uid or disorder:
            self.dirty = True  # out of order: Dovecot recreates it; so do we
            for uid, base in zip(uids, bases, strict=True):
                old = by_base.get(base)
                if old is not None and old != uid:
                    ext.pop(old, None)
        by_base.update(zip(bases, uids, strict=True))
        ext.update(exts)
        self.max_uid = max(self.max_uid, max(uids))

    # -- writing (the caller holds the dotlock and has just refreshed) ----------------

    def create_header(self, validity: int, next_uid: int = 1) -> None:
        """Start a file that does not exist yet (written by the next ``recreate``)."""
        self.header = Header(validity, max(next_uid, self.max_uid + 1), new_guid())
        self.dirty = True

    def trim_arrived(self) -> None:
        """Forget records read so far at or below ``handed`` (the loader calls this
        once it set ``handed``; what is above stays for ``newcomers``)."""
        handed, kept = self.handed, []
        for uids, bases, ascending in self._arrived:
            if ascending:
                i = bisect_right(uids, handed)
                if i < len(uids):
                    kept.append((uids[i:], bases[i:], True))
            else:
                pairs = [(u, b) for u, b in zip(uids, bases, strict=True) if u > handed]
                if pairs:
                    kept.append(([u for u, _ in pairs], [b for _, b in pairs], False))
        self._arrived = kept

    def newcomers(self, ours: Collection[str]) -> list[tuple[int, str]]:
        """[(uid, base)], ascending, of the records read since the last call that are
        above ``handed`` and name none of ``ours``: another program's messages (Dovecot's
        APPEND, or its sync numbering a file) that the index must take, keeping their
        UIDs, before any UID above them becomes visible. Forgets what it read."""
        self.trim_arrived()
        arrived, self._arrived = self._arrived, []
        get = self.by_base.get
        out = {u: b for uids, bases, _ in arrived for u, b in zip(uids, bases, strict=True)
               if b not in ours and get(b) == u}
        return sorted(out.items())

    def assign(self, bases: Iterable[str], keep: Collection[str] = ()
               ) -> tuple[list[int], bool]:
        """UIDs for these base names (in this order): the one a record already gives
        it if above ``handed`` (or the base is in ``keep``: already handed to the
        index), else a new one. Returns (uids, whether the file must be recreated
        rather than appended to). Call ``write`` next."""
        uids = []
        recreate = self.dirty or self.torn or not self.exists
        pending = []
        nxt = self.next_uid
        for base in bases:
            uid = self.by_base.get(base)
            if uid is not None and (uid > self.handed or base in keep):
                uids.append(uid)
                continue
            if uid is not None:
                self.ext.pop(uid, None)
                recreate = True  # the old record must go: a base has one record
            uid = nxt
            nxt += 1
            self.by_base[base] = uid
            pending.append((uid, base))
            uids.append(uid)
        if pending:
            self.max_uid = max(self.max_uid, pending[-1][0])
        self._appending = pending
        return uids, recreate

    def write(self, recreate: bool, fsync: bool, live: set[str] | None = None) -> None:
        """Make the file hold what ``assign`` added: append the new records, or recreate
        the whole file (dropping records whose base is not in ``live``, when given)."""
        pending, self._appending = self._appending, []
        if not recreate:
            if pending:
                self._append("".join(format_record(u, b) for u, b in pending))
            return
        self.recreate(fsync, live)

    def _append(self, text: str) -> None:
        data = text.encode("utf-8", "surrogateescape")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            st = os.fstat(fd)
            pin = self._pin
            if pin is None or (st.st_ino, st.st_dev) != pin.ident or st.st_size != self._offset:
                raise RuntimeError(f"{self.path} changed under its lock")
            _write_all(fd, data)
        finally:
            os.close(fd)
        self._offset += len(data)

    def recreate(self, fsync: bool, live: set[str] | None = None) -> int:
        """Replace the file as Dovecot does (tmp file, rename), with the records whose
        base is in ``live`` (all when None). Returns how many records were dropped."""
        if self.header is None:
            raise RuntimeError("recreate before a header exists")
        if not self.header.guid:
            self.header.guid = new_guid()
        self.header.next_uid = self.next_uid
        self.header.version = 3
        by_base = self.by_base
        if live is not None:
            dropped = [b for b in by_base if b not in live]
            for base in dropped:
                self.ext.pop(by_base.pop(base), None)
        else:
            dropped = []
        pairs = sorted(zip(by_base.values(), by_base.keys(), strict=True))
        ext = self.ext
        lines = [self.header.line()]
        if ext:
            lines += [format_record(u, b, ext.get(u, "")) for u, b in pairs]
        else:
            lines += ["%d :%s\n" % p for p in pairs]
        data = "".join(lines).encode("utf-8", "surrogateescape")
        tmp = self.path + TEMP_SUFFIX
        try:
            os.unlink(tmp)  # a crashed writer's leftover: ours gets our mode
        except FileNotFoundError:
            pass
        # Readable: the new file is the one we hold (and read appends from) from now on.
        fd = self.modes.open_new(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        try:
            _write_all(fd, data)
            if fsync:
                os.fsync(fd)
            st = os.fstat(fd)
            os.rename(tmp, self.path)
        except BaseException:
            os.close(fd)
            raise
        self._repin(fd, st)
        self._head = data[:data.index(b"\n") + 1]
        self._offset = len(data)
        self.torn = self.dirty = False
        return len(dropped)


def _read_from(fd: int, offset: int) -> bytes:
    """Everything from ``offset`` to the end (pread: the fd's position is not used)."""
    chunks: list[bytes] = []
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError("short write")
        view = view[n:]
