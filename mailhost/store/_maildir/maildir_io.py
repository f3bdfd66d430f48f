"""The blocking file-system work of MaildirStore. Every function here runs in a
worker thread, never on the reactor thread. Everything it creates gets the store's
``FileModes`` (``modes``), never the umask's."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO

from twisted.logger import Logger

from mailhost.groupsync import GroupSync
from mailhost.message.crlf import crlf_size
from mailhost.store import mutf7
from mailhost.store._maildir import maildirsize
from mailhost.store._maildir.dovecot_uidlist import UIDLIST_FILE
from mailhost.store._maildir.maildir_names import sizes_from_base
from mailhost.store.interfaces import (
    DEFAULT_SPECIAL_FOLDERS,
    FolderExists,
    InvalidFolderName,
    NoSuchFolder,
)
from mailhost.store.modes import FileModes
from mailhost.store.names import INBOX, canonical_folder

if TYPE_CHECKING:  # it imports this module
    from mailhost.store._maildir.maildir_uids import FolderUids

#: One copy for ``deliver_files``: (folder path, its path under the folder: ``new/``
#: or ``cur/`` and the file name, base name, CRLF size, FolderUids, ticket); see there.
DeliveryJob = tuple[str, str, str, int, "FolderUids | None", "list[int] | None"]
#: One file for ``transfer_files``: (source path, destination path, base, date, CRLF
#: size, wrap).
TransferOp = tuple[str, str, str, float, int, bool]

log = Logger()

SUBSCRIPTIONS_FILE = "subscriptions"
SPECIAL_USE_FILE = "mailhost-special-use"


@contextlib.contextmanager
def subdir_fds(path: str, subs: Sequence[str]) -> Iterator[dict[str, int]]:
    """Open directory fds of ``path``'s ``subs`` (those that exist), closed on exit: a
    pass over many files opens or stats each relative to its directory, no path walk."""
    fds: dict[str, int] = {}
    try:
        for sub in subs:
            try:
                fds[sub] = os.open(os.path.join(path, sub), os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                pass
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)


def fdatasync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def make_maildir(path: str, folder: bool, modes: FileModes) -> None:
    for sub in ("cur", "new", "tmp"):
        modes.makedirs(os.path.join(path, sub))
    if folder:  # Maildir++ marks subfolders so deliverers know they are folders
        modes.touch(os.path.join(path, "maildirfolder"))


def write_atomic(path: str, text: str, fsync: bool, modes: FileModes) -> None:
    modes.write_atomic(path, text.encode("utf-8"), fsync)


def copy_durable(src: str, dest: str, fsync: bool, modes: FileModes) -> None:
    """Copy for when a hard link is impossible (EXDEV): tmp copy, fsync, rename. The
    copy gets our mode and the source's times (its mtime is the INTERNALDATE)."""
    tmp = dest + ".copying"
    with open(src, "rb") as s, os.fdopen(modes.open_new(tmp), "wb") as d:
        shutil.copyfileobj(s, d, 1024 * 1024)
        if fsync:
            d.flush()
            fdatasync(d.fileno())
        st = os.fstat(s.fileno())
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(tmp, dest)


def link_or_copy(src: str, dest: str, fsync: bool, modes: FileModes) -> None:
    """A link keeps the source's inode, so its mode: ours for files we created,
    whatever an older version or another program gave the rest."""
    try:
        os.link(src, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        copy_durable(src, dest, fsync, modes)


def move_or_copy(src: str, dest: str, fsync: bool, modes: FileModes) -> bool:
    """Rename ``src`` to ``dest`` (True), or copy it where a rename cannot cross file
    systems (False: ``src`` is still there). One system call where a link and the
    tmp file's unlink took two: in a worker thread each call hands the GIL to the
    reactor and back (issue 18). The name is unique, so nothing is overwritten."""
    try:
        os.rename(src, dest)
        return True
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    copy_durable(src, dest, fsync, modes)
    return False


#: How far a file's mtime may lag the clock (``time.time()``): the kernel stamps files
#: from its coarse clock, at most one tick (10 ms at HZ=100) behind; twice that is
#: allowed. A write whose clock reads (the first less this) fall in one second gave
#: the file that second.
MTIME_LAG = 0.02


def deliver_files(file: BinaryIO | None, tmp_path: str, date: float,
                  jobs: Sequence[DeliveryJob], syncer: GroupSync | None, modes: FileModes,
                  data: bytes | None = None, sync_later: bool = False,
                  fits: bool = False) -> set[str]:
    """Make the tmp file durable, move it into its target's new/ (or cur/: an IMAP
    APPEND to the folder its session has selected) (link it into each of
    several targets'), give it a UID there
    (dovecot-uidlist, under its lock) unless the job says later, and (through the
    group commit ``syncer``, None when fsync is off) make the links and uidlist records
    durable.

    One target: one rename into new/ (cur/), which is atomic. Several: the copies are committed
    as one unit through a commit journal (``_commit_all``), so a crash at any instant
    leaves the message, once recovery has run, in every target or in none.

    ``date`` becomes the file's mtime, which is its INTERNALDATE for Dovecot too.
    ``jobs``: (folder path, ``new/<file name>`` or ``cur/<file name>``, base name, CRLF
    size, FolderUids, ticket list
    that receives the UID handed out); the FolderUids and ticket are None for a copy
    numbered later. (Keywords need nothing here: ``KeywordFile.learn`` writes new
    letters before any file name can use them.)
    ``data``: the whole message when it was kept in memory (``file`` is then None and
    the tmp file is written here). The tmp file is closed and removed whatever happens.
    ``sync_later``: a single-folder delivery leaves its last group-commit round to the
    caller and returns the paths that round must fsync (``deliver_batch``); the links
    are not durable until then. Otherwise the returned set is empty.
    ``fits``: a file created with ``modes`` gets its mode from the umask already
    (``FileModes.created_fits``): the one written from ``data`` is not fstat'ed, and
    the second of its mtime is read off the clock around the write (see
    ``MTIME_LAG``).
    """
    fsync = syncer is not None
    journal = None
    fd = -1  # the tmp file written from ``data`` (no buffered file object needed)
    later: set[str] = set()
    moved = False  # the tmp file was renamed into new/ (cur/): nothing left to unlink
    dated = False  # the file's mtime is in the second of ``date`` already
    synced = False  # that file's data and inode are durable already (O_SYNC)
    try:
        if data is not None:
            # One target, fsync on: the write itself is synchronous (O_SYNC: data and
            # inode durable when it returns, as fsync would make them), which spares
            # the fsync call. Every system call of a worker thread hands the GIL to
            # the reactor and back (issue 18). The journal commit of several targets
            # fsyncs the file itself.
            sync = os.O_SYNC if fsync and len(jobs) == 1 else 0
            before = time.time()
            fd = modes.open_new(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | sync,
                                fix=False)  # closed in finally
            _write_all(fd, data)
            if fits:  # our mode already; the write's mtime is between the clock reads
                after = time.time()
                dated = int(before - MTIME_LAG) == int(after) == int(date)
                if not dated and int(before - MTIME_LAG) <= int(date) <= int(after):
                    # The reads straddle a second (an O_SYNC write may wait long on a
                    # busy disk): the file's own mtime tells, for one fstat instead of
                    # a utime and a file fsync.
                    dated = int(os.fstat(fd).st_mtime) == int(date)
                synced = bool(sync)
            else:
                written = modes.fix_fd(fd)  # our mode, and the mtime the write gave
                dated = int(written.st_mtime) == int(date)
                # A mode or group the fix changed is a change after the synchronous write.
                synced = bool(sync) and modes.fits(written)
        else:
            assert file is not None  # given when ``data`` is not
            file.flush()
        fileno = fd if file is None else file.fileno()
        if len(jobs) > 1:
            if file is None:  # the journal commit wants a file object
                file = os.fdopen(fd, "wb")
                fd = -1
            journal = _commit_all(file, tmp_path, date,
                                  [(p, name) for p, name, *_ in jobs], syncer, modes)
        else:
            for folder_path, rel, *_ in jobs:
                moved = move_or_copy(tmp_path, os.path.join(folder_path, rel), fsync, modes)
            # The date goes on after the move (the tmp cleaner would take a file with
            # an old mtime for a crash's leftover), before the fsync (which makes it
            # durable, hence fsync, not fdatasync) and before anyone is told a UID.
            # Not when the write gave the file that second already (a delivery dated
            # now): whole seconds are all Dovecot and the index read (issue 18).
            if not dated:
                os.utime(fileno, (date, date))
                synced = False
            if fsync and not synced:
                os.fsync(fileno)
        for _path, _name, base, size, uids, ticket in jobs:
            if uids is not None:
                uids.assign([base], ticket, [(date, size, False)])
        if syncer is not None:
            paths = ({os.path.dirname(os.path.join(p, rel)) for p, rel, *_ in jobs}
                     | {os.path.join(p, UIDLIST_FILE) for p, *_, u, _t in jobs
                        if u is not None})
            if sync_later and journal is None:
                later = paths
            else:
                syncer.sync(paths)
        if journal is not None:
            os.unlink(tmp_path + JOURNAL_SUFFIX)  # done: nothing left to recover
    finally:
        if journal is not None:
            os.close(journal)  # releases its lock; a journal left behind is recovered
        try:
            if file is not None:
                file.close()  # may raise (ENOSPC flushing the last bytes)
            elif fd >= 0:
                os.close(fd)
        finally:
            try:
                if not moved:
                    os.unlink(tmp_path)  # never left for the tmp cleaner on a full disk
            except FileNotFoundError:
                pass
    return later


#: One message for ``deliver_batch``: ``deliver_files``' arguments but ``syncer``, then
#: the quota changes to count once it is durable (``maildirsize.add_all``).
BatchJob = tuple["BinaryIO | None", str, float, Sequence[DeliveryJob], FileModes,
                 "bytes | None", bool, Sequence[maildirsize.Change]]


def deliver_batch(batch: Sequence[BatchJob], syncer: GroupSync | None
                  ) -> list[BaseException | None]:
    """``deliver_files`` for several messages in one thread hop, with one group-commit
    round for all of them at the end; each message's outcome (None: durable) in order.

    Why: a thread hop per message cost more CPU than the message's own work under
    load (every worker woke for every round, and each one's system calls handed the
    GIL to and fro). A message that failed does not fail the others; a failed final
    round fails every message that waited for it.
    """
    results: list[BaseException | None] = []
    paths: set[str] = set()
    for file, tmp_path, date, jobs, modes, data, fits, _after in batch:
        try:
            paths |= deliver_files(file, tmp_path, date, jobs, syncer, modes, data,
                                   sync_later=True, fits=fits)
            results.append(None)
        except BaseException as e:  # reported to this message's caller only
            results.append(e)
    if syncer is not None and paths:
        try:
            syncer.sync(paths)
        except BaseException as e:
            results = [r if r is not None else e for r in results]
    maildirsize.add_all(change for (*_, changes), result in zip(batch, results, strict=True)
                        if result is None for change in changes)
    return results


# -- committing one message to several folders as one unit -----------------------------
#
# A message for several local recipients must not end up in some of their mailboxes
# only: the client, which got no 250, sends it again, and the mailboxes that had it
# would hold it twice. One link is atomic, several are not, so the copies go through
# a journal beside the tmp file in the store's .tmp/ (``<tmp name>.commit``):
#
#   1. the journal lists every (target tmp/ path, target new/ path);
#   2. the file is linked into every target's tmp/, invisible to every reader;
#   3. the file and those tmp/ directories are fsynced (and .tmp/, the journal's);
#   4. ``commit`` is appended to the journal and fdatasynced: the commit point;
#   5. every tmp/ link is renamed into new/; the new/ directories are fsynced (the
#      delivery's usual group-commit round); the journal is unlinked; then the 250.
#
# ``recover_commits`` (run before the store opens its first account) finishes what a
# crash interrupted: a journal without ``commit`` is rolled back (its tmp/ links are
# removed), one with ``commit`` is rolled forward (the tmp/ links still there are
# renamed into new/). A journal whose writer is alive holds an flock, and is left
# alone. Steps 3 and 4 order the disk for a power cut; for a killed process the order
# of the system calls alone gives the same guarantee. What stays non-atomic is said in
# docs/operations.md ("A message for several local recipients").

#: The suffix of a commit journal in the store's .tmp/.
JOURNAL_SUFFIX = ".commit"
_JOURNAL_HEAD = b"mailhost-commit 1\n"
_JOURNAL_COMMIT = b"commit\n"


def _commit_all(file: BinaryIO, tmp_path: str, date: float, targets: list[tuple[str, str]],
                syncer: GroupSync | None, modes: FileModes) -> int:
    """Steps 1-5 above but the last fsync round and the unlink; returns the journal's
    (locked) descriptor. ``targets``: (folder path, ``new/`` or ``cur/`` and the file
    name)."""
    fsync = syncer is not None
    pairs = [(os.path.join(p, "tmp", os.path.basename(rel)), os.path.join(p, rel))
             for p, rel in targets]
    journal_path = tmp_path + JOURNAL_SUFFIX
    fd = modes.open_new(journal_path)
    committed = False
    linked: list[str] = []
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _write_all(fd, _JOURNAL_HEAD + b"".join(
            json.dumps(pair).encode() + b"\n" for pair in pairs))
        for tmp, _new in pairs:
            try:
                link_or_copy(tmp_path, tmp, fsync, modes)
            except FileNotFoundError:
                # A Maildir another program made without tmp/ (a single-folder delivery
                # never needs it): make it. A folder that is gone stays an error.
                if not os.path.isdir(os.path.dirname(os.path.dirname(tmp))):
                    raise
                modes.makedirs(os.path.dirname(tmp))
                link_or_copy(tmp_path, tmp, fsync, modes)
            linked.append(tmp)
        os.utime(file.fileno(), (date, date))  # see deliver_files
        if syncer is not None:
            os.fsync(file.fileno())
            syncer.sync({os.path.dirname(t) for t, _ in pairs}
                        | {os.path.dirname(journal_path)})
        _write_all(fd, _JOURNAL_COMMIT)
        if fsync:
            fdatasync(fd)
        committed = True
        for tmp, new in pairs:
            os.rename(tmp, new)
    except BaseException:
        if not committed:  # roll back: no reader has seen any copy
            unlink_all(linked)
            try:
                os.unlink(journal_path)
            except FileNotFoundError:
                pass
        # Committed but a rename failed: the journal stays, and the next start rolls
        # the rest forward.
        os.close(fd)
        raise
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_journal(data: bytes) -> tuple[list[tuple[str, str]], bool]:
    """(pairs, committed) of a journal; a line cut short by a crash is ignored."""
    lines = data.split(b"\n")[:-1]  # the part after the last newline is incomplete
    if not lines or lines[0] + b"\n" != _JOURNAL_HEAD:
        return [], False
    pairs, committed = [], False
    for line in lines[1:]:
        if line + b"\n" == _JOURNAL_COMMIT:
            committed = True
            break
        try:
            tmp, new = json.loads(line)
        except ValueError:
            break
        pairs.append((tmp, new))
    return pairs, committed


def recover_commits(tmp_dir: str, syncer: GroupSync | None) -> list[tuple[str, bool, int]]:
    """Finish the multi-folder commits a crash interrupted (see above); returns
    (journal, rolled forward, copies moved or removed) for each one handled. Run
    before any folder of the store is read; ``syncer`` None: fsync off."""
    done: list[tuple[str, bool, int]] = []
    try:
        names = os.listdir(tmp_dir)
    except FileNotFoundError:
        return done
    for name in names:
        if not name.endswith(JOURNAL_SUFFIX):
            continue
        path = os.path.join(tmp_dir, name)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its writer is alive and finishing it
            if os.fstat(fd).st_nlink == 0:
                continue  # finished and unlinked while we opened it
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            pairs, committed = _read_journal(b"".join(chunks))
            count = 0
            if committed:
                for tmp, new in pairs:
                    if not os.path.lexists(tmp):
                        continue  # renamed before the crash
                    if os.path.lexists(new):
                        os.unlink(tmp)
                    else:
                        os.rename(tmp, new)
                    count += 1
                if syncer is not None and count:
                    syncer.sync({os.path.dirname(n) for _, n in pairs})
            else:
                count = len(pairs) - len(unlink_all([t for t, _ in pairs]))
            for leftover in (path[:-len(JOURNAL_SUFFIX)], path):
                try:
                    os.unlink(leftover)
                except FileNotFoundError:
                    pass
            done.append((path, committed, count))
        finally:
            os.close(fd)
    return done


#: Maildir convention: a tmp file untouched this long was left by a crash.
TMP_MAX_AGE = 36 * 3600


def clean_tmp(path: str) -> None:
    """Remove messages a crashed process left half-received in the store's tmp dir."""
    cutoff = time.time() - TMP_MAX_AGE
    with os.scandir(path) as it:
        for entry in it:
            if entry.name.endswith(JOURNAL_SUFFIX):
                continue  # never aged out: recover_commits finishes it
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
            except FileNotFoundError:
                continue


def list_names(path: str) -> tuple[list[str], list[str]]:
    """(cur/ names, new/ names), dot files skipped; NoSuchFolder if the folder is gone.

    new/ is listed first: files only ever move from new/ to cur/, so a move between
    the two listings shows the file twice, never not at all (a missed file would look
    expunged and come back under a new UID)."""
    out = {}
    for sub in ("new", "cur"):
        try:
            out[sub] = [n for n in os.listdir(os.path.join(path, sub)) if n[:1] != "."]
        except FileNotFoundError:
            raise NoSuchFolder(path) from None
    return out["cur"], out["new"]


def stream_names(path: str) -> tuple[Iterator[str], list[str]]:
    """``list_names`` without a list of every name in cur/: (cur/ names as they are
    read, new/ names). A rescan compares each name with the index as it comes (issue
    16: the names of a 100k-message cur/ were ~10 MB of a QRESYNC SELECT's peak).
    new/ is listed whole first, for the reason ``list_names`` gives; NoSuchFolder
    before anything is read if either directory is gone."""
    try:
        new = [n for n in os.listdir(os.path.join(path, "new")) if n[:1] != "."]
        entries = os.scandir(os.path.join(path, "cur"))
    except FileNotFoundError:
        raise NoSuchFolder(path) from None

    def cur() -> Iterator[str]:
        with entries:
            for entry in entries:
                if entry.name[:1] != ".":
                    yield entry.name

    return cur(), new


#: Where a message another program saved is found: (base name, in new/, info part or
#: None, needs CRLF wrap, CRLF size, mtime), as the folder's index rows.
Located = tuple[str, bool, str | None, bool, int, float]


def locate_files(path: str, bases: list[str]) -> dict[str, Located]:
    """Find these base names in new/ or cur/ (base -> row; a file not there is left
    out): first where Dovecot saves them (``new/<base>``, ``cur/<base>:2,``), then one
    listing of both directories for the rest (flagged names, or renamed meanwhile)."""
    out: dict[str, Located] = {}
    rest = []
    for base in bases:
        for sub, name in (("new", base), ("cur", base + ":2,")):
            row = _located(path, sub, name)
            if row is not None:
                out[base] = row
                break
        else:
            rest.append(base)
    if rest:
        try:
            where = names_by_base(path)
        except NoSuchFolder:
            where = {}
        for base in rest:
            if base in where:
                row = _located(path, *where[base])
                if row is not None:
                    out[base] = row
    return out


def names_by_base(path: str) -> dict[str, tuple[str, str]]:
    """base -> (subdir, name) of every message file, new/ listed before cur/: a file
    another program moves from new/ to cur/ meanwhile (Dovecot, mutt) is seen in one
    of them (the other order can miss it). cur/ wins for a base in both."""
    out = {}
    for sub in ("new", "cur"):
        try:
            names = os.listdir(os.path.join(path, sub))
        except FileNotFoundError:
            raise NoSuchFolder(path) from None
        for name in names:
            if name[:1] != ".":
                out[name.partition(":")[0]] = (sub, name)
    return out


def _located(path: str, sub: str, name: str) -> Located | None:
    full = os.path.join(path, sub, name)
    base, sep, part = name.partition(":")
    s, w = sizes_from_base(base)
    try:
        mtime = float(int(os.stat(full).st_mtime))
        if s is not None and w is not None:
            size, wrap = w, s != w  # Dovecot: S= on disk, W= with CRLF
        else:
            size, raw = crlf_size(full)
            wrap = size != raw
    except FileNotFoundError:
        return None
    return base, sub == "new", part if sep else None, wrap, size, mtime


def rename_all(path: str, renames: Iterable[tuple[str, str]]) -> list[bool]:
    """Rename files inside a folder; False where the file vanished meanwhile."""
    ok = []
    for old, new in renames:
        try:
            os.rename(os.path.join(path, old), os.path.join(path, new))
            ok.append(True)
        except FileNotFoundError:
            ok.append(False)
    return ok


def unlink_all(paths: list[str]) -> list[str]:
    """Unlink files; returns those that were not there (renamed or removed by another
    program)."""
    missing = []
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            missing.append(p)
    return missing


def transfer_files(ops: Sequence[TransferOp], move: bool, dest_path: str, uids: FolderUids,
                   ticket: list[int], syncer: GroupSync | None, modes: FileModes,
                   src_uids: FolderUids | None = None) -> tuple[list[bool], list[int]]:
    """Link (COPY) or rename (MOVE) files into dest/new/, give them UIDs there
    (``uids``: the destination's FolderUids, handing them out through ``ticket``), and
    make that durable through ``syncer`` (None: fsync off). ``ops``: (source path,
    destination path, base, date, CRLF size, wrap). Returns (done per op, the UIDs of
    the done ones). Links and renames keep the file's inode and so its mode; a
    cross-device copy gets ``modes``. A MOVE renames out of the source folder under
    its ``src_uids`` lock (see FolderUids.locked); the destination's lock is taken
    after, never both at once."""
    fsync = syncer is not None
    ok: list[bool] = []
    bases: list[str] = []
    rows: list[tuple[float, int, bool]] = []

    def place() -> None:
        for src, dst, base, date, size, wrap in ops:
            try:
                if move:
                    os.rename(src, dst)
                else:
                    link_or_copy(src, dst, fsync, modes)
                ok.append(True)
                bases.append(base)
                rows.append((date, size, wrap))
            except FileNotFoundError:
                ok.append(False)

    if move and src_uids is not None:
        src_uids.locked(place)
    else:
        place()
    got = uids.assign(bases, ticket, rows) if bases else []
    if bases and syncer is not None:
        dirs = {os.path.dirname(op[0]) for op in ops} if move else set()
        syncer.sync(dirs | {os.path.join(dest_path, "new"),
                            os.path.join(dest_path, UIDLIST_FILE)})
    return ok, got


# -- account level ------------------------------------------------------------------

def setup_account(root: str, fsync: bool, modes: FileModes,
                  ) -> tuple[dict[str, str], set[str]]:
    """Create the Maildir (and its domain directory) and default folders on first use;
    read special-use and subscriptions. Returns (folder -> special-use, subscribed
    names)."""
    make_maildir(root, folder=False, modes=modes)
    respell_folder_dirs(root)
    special_path = os.path.join(root, SPECIAL_USE_FILE)
    subs_path = os.path.join(root, SUBSCRIPTIONS_FILE)
    if not os.path.exists(special_path):
        for name in DEFAULT_SPECIAL_FOLDERS:
            make_maildir(os.path.join(root, folder_dir_name(name)), folder=True, modes=modes)
        if not os.path.exists(subs_path):
            write_atomic(subs_path, "".join(f"{n}\n" for n in [INBOX, *DEFAULT_SPECIAL_FOLDERS]),
                         fsync, modes)
        write_atomic(special_path, "".join(f"{n}\t{u}\n"
                                           for n, u in DEFAULT_SPECIAL_FOLDERS.items()),
                     fsync, modes)
    special = {}
    with open(special_path, encoding="utf-8") as f:
        for line in f:
            name, _, use = line.rstrip("\n").partition("\t")
            if name and use:
                special[name] = use
    subs = set()
    try:
        with open(subs_path, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                if not line or line.startswith("V\t"):
                    continue  # Dovecot 2.3's versioned header
                try:
                    subs.add(canonical_folder(line.replace("\t", ".")))
                except InvalidFolderName:
                    continue
    except FileNotFoundError:
        pass
    return special, subs


def folder_dir_name(name: str) -> str:
    """Maildir++ directory of a (canonical, non-INBOX) folder: '.' + modified UTF-7."""
    return "." + mutf7.encode(name)


def _folder_of_dir(dirname: str) -> str | None:
    """The folder a '.name' directory holds, or None if it is not one of ours."""
    try:
        canon = canonical_folder(mutf7.decode(dirname[1:]))
    except (ValueError, InvalidFolderName):
        return None  # ..deleted leftovers, foreign junk, pre-mUTF-7 names
    if canon == INBOX or folder_dir_name(canon) != dirname:
        return None
    return canon


def list_folder_names(root: str) -> list[str]:
    names = []
    with os.scandir(root) as it:
        for d in it:
            if d.name.startswith(".") and d.is_dir():
                canon = _folder_of_dir(d.name)
                if canon is not None:
                    names.append(canon)
    return names


def respell_folder_dirs(root: str) -> list[tuple[str, str]]:
    """Rename folder directories written with their raw (UTF-8) name, as mailhost
    did before folder directories were spelt in modified UTF-7. Returns the renames.

    Never raises: a directory it cannot rename stays where it is, unlisted, and the
    log says which and why (its mail is untouched).
    """
    done = []
    with os.scandir(root) as it:
        dirs = [d.name for d in it if d.name.startswith(".") and not d.name.startswith("..")
                and d.is_dir()]
    for dirname in dirs:
        raw = dirname[1:]
        if _folder_of_dir(dirname) is not None or (raw.isascii() and "&" not in raw):
            continue  # current spelling, or not a folder of ours
        try:
            target = folder_dir_name(canonical_folder(raw))
        except InvalidFolderName:
            why = "its name is too long in modified UTF-7, or not a valid folder name"
        else:
            if os.path.lexists(os.path.join(root, target)):
                why = f"{target} exists too; merge the two by hand"
            else:
                try:
                    os.rename(os.path.join(root, dirname), os.path.join(root, target))
                except OSError as e:
                    why = f"renaming it to {target} failed: {e.strerror}"
                else:
                    done.append((dirname, target))
                    continue
        log.warn("folder directory {dir} in {root} is not listed: {why}",
                 dir=dirname, root=root, why=why, event="folder_respell_skipped")
    return done


def create_dirs(paths: list[tuple[str, str]], target: str, modes: FileModes) -> None:
    for name, path in paths:
        if name == target and (name == INBOX or os.path.isdir(path)):
            raise FolderExists(name)
        if not os.path.isdir(path):
            make_maildir(path, folder=True, modes=modes)


def delete_dir(path: str, root: str, name: str) -> None:
    if not os.path.isdir(path):
        raise NoSuchFolder(name)
    # Rename first so a crash mid-delete never leaves a half-deleted, listed folder;
    # "..x" is never listed (its folder name would start with '.').
    trash = os.path.join(root, f"..deleted.{os.getpid()}.{threading.get_ident()}.{time.time()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def rename_dirs(renames: list[tuple[str, str]], parent_dirs: list[str],
                modes: FileModes) -> None:
    for path in parent_dirs:
        if not os.path.isdir(path):
            make_maildir(path, folder=True, modes=modes)
    for old, new in renames:
        if os.path.exists(new):
            raise FolderExists(os.path.basename(new)[1:])
        os.rename(old, new)
