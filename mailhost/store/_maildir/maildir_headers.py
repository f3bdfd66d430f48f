"""Many messages' header blocks read at once: ``IHeaderBlocks`` on a Maildir folder.

The first SORT, THREAD or header SEARCH on a folder reads the header block of every
message (issue 16: the first ``UID SEARCH SUBJECT`` on 100k messages took ~2x
Dovecot's CPU). Opened one by one through ``open_message``, each message cost a
Python file object, a coroutine and a Deferred on the reactor thread, and five system
calls (open, fstat, ioctl, lseek, then a seek and the reads in a thread). Here one
thread job reads a whole batch: each file opened relative to its directory's fd (no
path walk), one ``read`` of ``HEAD_CHUNK`` octets (a whole header block for nearly
every message), its mtime from ``fstat`` when the index does not know the date yet (the
background date pass then has nothing left to stat), and closed. A header block longer
than that is handed over as the open file, so memory stays bounded by the reader.

A file not found under the name the index has (a rename of ours or of another program
in flight, an expunge) goes through ``open_message``, which waits for our renames and
looks the name up again, as every other read does.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from typing import BinaryIO, TypeVar

from mailhost.message.crlf import CRLFNormalizer, CRLFReader
from mailhost.store._maildir.maildir_io import subdir_fds

_T = TypeVar("_T")

#: Octets read of each message at first: a header block within them is passed as
#: bytes; a longer one as the open file.
HEAD_CHUNK = 16 * 1024

#: One message of a batch: (uid, subdirectory, file name, needs CRLF wrapping, date not
#: known yet).
HeaderJob = tuple[int, str, str, bool, bool]


def _has_header_end(data: bytes) -> bool:
    """Whether ``data`` holds the empty line that ends a header block (LF or CRLF
    line ends, as the readers that parse it look for)."""
    return b"\n\n" in data or b"\n\r\n" in data


def read_blocks(path: str, jobs: Sequence[HeaderJob], fn: Callable[[BinaryIO], _T],
                ) -> tuple[list[tuple[int, _T]], list[int], list[tuple[int, float]]]:
    """Run in a worker thread: ``fn(file)`` of each message of ``jobs``, ``file``
    yielding the message (CRLF-normalised where it needs wrapping) from its start
    through at least its header block.

    Returns ((uid, result) in the order of ``jobs``, UIDs whose file was not found, and
    (uid, mtime) of the messages whose date was asked for)."""
    out: list[tuple[int, _T]] = []
    missing: list[int] = []
    dates: list[tuple[int, float]] = []
    with subdir_fds(path, ("cur", "new")) as dirs:
        for uid, sub, name, wrap, want_date in jobs:
            dir_fd = dirs.get(sub)
            if dir_fd is None:
                missing.append(uid)
                continue
            try:
                fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
            except FileNotFoundError:
                missing.append(uid)
                continue
            file: BinaryIO | None = None
            try:
                if want_date:
                    dates.append((uid, float(int(os.fstat(fd).st_mtime))))
                try:
                    data = os.read(fd, HEAD_CHUNK)
                except OSError:
                    continue  # unreadable: no header fields, as for a failed read
                if len(data) < HEAD_CHUNK or _has_header_end(data):
                    if wrap:
                        data = CRLFNormalizer(keep_bare_cr=True).feed(data)
                    result = fn(io.BytesIO(data))
                else:
                    os.lseek(fd, 0, os.SEEK_SET)
                    file = open(fd, "rb")  # noqa: SIM115 - closed below
                    fd = -1  # the file object owns it now
                    result = fn(io.BufferedReader(CRLFReader(file)) if wrap else file)
            finally:
                if file is not None:
                    file.close()
                elif fd >= 0:
                    os.close(fd)
            out.append((uid, result))
    return out, missing, dates
