"""The mail store contract: users, folders, messages, UIDs and flags.

Every protocol adapts these interfaces; none of them knows a protocol. Operations
that touch disk (or, later, a network database) return Deferreds. Cheap metadata
(the message list, flags, UIDVALIDITY) comes synchronously from an in-memory index
that the store keeps current, so SELECT on 100k messages opens no file.

Conventions shared by every implementation:
- User names are full addresses, lower-cased by the caller (``alice@example.test``).
- Folder names are unicode, ``.``-separated (``Archive.2024``); ``INBOX`` is the root.
  IMAP's modified UTF-7 is the IMAP layer's business, not the store's.
- Flags are IMAP spellings: ``\\Seen``, ``\\Answered``, ``\\Flagged``, ``\\Deleted``,
  ``\\Draft`` and keywords (atoms without a backslash). ``\\Recent`` is not a stored
  flag; see ``MessageInfo.recent``.
- Message bytes are CRLF-terminated on every read path, whatever is on disk, and
  ``MessageInfo.size`` is the exact number of octets ``open_message`` yields.
- Protocols read messages through ``IFolder.read_message`` (an ``IMessageReader``:
  bounded chunks, reads off the reactor thread by one policy, ``mailhost.store.reader``),
  never by reading a file object themselves.
- A protocol reaches the store only through what these interfaces declare: the
  logged-in user's ``IMailAccount`` (folders, APPEND) and, for SMTP delivery, the
  ``IMailStore``'s message writer. Optional powers are declared interfaces
  (``IIndexedFolder``), tested with ``providedBy``, never probed with ``getattr``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NamedTuple, TypeVar

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

_T = TypeVar("_T")

SYSTEM_FLAGS = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"})

#: Folders every new account gets, with their RFC 6154 special-use attribute.
DEFAULT_SPECIAL_FOLDERS = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
}


class StoreError(Exception):
    """Base of every store failure a protocol maps to a NO/-ERR/4xx reply."""


class NoSuchFolder(StoreError):
    pass


class FolderExists(StoreError):
    pass


class InvalidFolderName(StoreError):
    """The name is empty, escapes the Maildir, or uses a reserved spelling."""


class NoSuchMessage(StoreError):
    pass


class QuotaExceeded(StoreError):
    pass


class StoreUnavailable(StoreError, ConnectionError):
    """The store's backend cannot be reached now (its database is down): temporary, so
    protocols answer ``451 4.3.0``, ``NO [UNAVAILABLE]`` or ``-ERR [SYS/TEMP]``. A
    ConnectionError too, so code that treats OSErrors as the environment's fault (one
    log line, no traceback) treats this one alike."""


@dataclass(frozen=True)
class MessageInfo:
    """A snapshot of one message's index entry; cheap, no file is opened."""

    uid: int
    key: str  # the Maildir unique base name (stable across flag changes)
    size: int  # exact CRLF octet count that open_message yields
    flags: frozenset[str]
    internal_date: float  # POSIX timestamp (IMAP INTERNALDATE)
    recent: bool = False  # still in new/ (never seen by any IMAP session)
    #: RFC 7162 mod-sequence of the last change to this message (its append or a flag
    #: change); 0 from a store that has none.
    modseq: int = 0


@dataclass(frozen=True)
class DeliveryTarget:
    """Where one copy of a message goes when a writer commits."""

    user: str
    folder: str = "INBOX"
    flags: frozenset[str] = field(default_factory=frozenset)
    internal_date: float | None = None  # None: now
    #: False: the caller needs no UID back (SMTP), so the store may number this copy
    #: later, as it numbers mail another program drops into new/ (the Maildir store:
    #: in a batch right after, or when the folder is next opened). The copy is durable
    #: when ``commit`` fires either way; the commit's list then holds None for it.
    want_uid: bool = True
    #: A role (``\\Junk``): the copy goes to the account's folder with this RFC 6154
    #: attribute, or to ``folder``, created with it, when the account has none (as
    #: Dovecot's LDA with ``lda_mailbox_autocreate``). Resolved by the mailbox target.
    special_use: str | None = None
    #: False: the copy is recent to no session but the caller's. An IMAP session
    #: appending to the folder it has selected shows the message's \Recent itself
    #: (RFC 3501 2.3.2: one session sees it recent), so no other session may, and
    #: nothing is left to claim: a Maildir store saves the file in cur/ at once, where
    #: a claim would have renamed it from new/ (issue 16: that rename, its uidlist
    #: lock and its inotify events were a fifth of an APPEND's reactor time).
    recent: bool = True


class Columns(NamedTuple):
    """The whole index of a folder as position-aligned sequences in UID order, with no
    per-message object (``IIndexedFolder.columns``)."""

    uids: Sequence[int]
    flags: Sequence[frozenset[str]]
    recent: Sequence[int]  # true (non-zero) while the message is recent
    sizes: Sequence[int]
    dates: Sequence[float]


class IMessageReader(Interface):
    """One stored message (or a byte range of it), read asynchronously in bounded chunks.

    Every consumer of message bytes uses one: IMAP (FETCH, SEARCH), POP3 (RETR, TOP),
    the relay client and DSNs. The reader, not its caller, decides where a read runs
    (``mailhost.store.reader``: a small whole read at once, everything else in the
    thread pool, one chunk ahead), so no caller blocks the reactor on a big read.
    """

    size = Attribute("int: the octets this reader yields in all (the range's length; for "
                     "a whole message, its index size: the reader reads to the end).")

    def read() -> Deferred[bytes]:
        """Deferred firing with the next chunk (at most the reader's chunk size), or
        ``b""`` at the end. One read at a time."""

    def start() -> IMessageReader:
        """Begin reading the first chunk now, before anyone asks (POP3 opens the next
        message while the current one is on the wire)."""

    def call(fn: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """Deferred firing with ``fn(file, *args)`` run in the thread pool, ``file``
        being the message as a blocking binary file (seekable, positioned at the
        range's start the first time): for parsers that read the message their own
        way (a MIME scan, a header search). Not mixed with ``read`` on one reader."""

    def close() -> None:
        """Release the message (at once, or when a read in flight lands); idempotent."""


class IFolderListener(Interface):
    """Told about changes to a folder, whoever made them (IMAP IDLE, other sessions).

    Called on the reactor thread after the change is durable in the index.
    """

    def messages_added(folder: IFolder, infos: Sequence[MessageInfo]) -> None:
        """New messages were appended or delivered, in UID order."""

    def flags_changed(folder: IFolder, infos: Sequence[MessageInfo]) -> None:
        """These messages now carry the flags in the given infos."""

    def messages_expunged(folder: IFolder, uids: Sequence[int]) -> None:
        """These UIDs are gone for good (``folder.highest_modseq`` is the expunge's
        mod-sequence)."""


class IMessageWriter(Interface):
    """One message being received: stream it in, then commit it to one or more folders.

    Like maddy's delivery transaction: ``write`` puts bytes in a temporary file,
    ``commit`` makes every copy durable (fsync, rename, directory fsync, off the
    reactor thread) and only then fires. Nothing is visible before ``commit`` fires;
    a copy whose target has ``want_uid=False`` may become visible a little after.
    """

    size = Attribute("Octets written so far (after CRLF normalisation).")

    def write(data: bytes) -> None:
        """Append raw message bytes. Bare LF is normalised to CRLF; the caller does no
        dot-unstuffing here (that is the protocol's job)."""

    def commit(targets: Sequence[DeliveryTarget]) -> Deferred[list[int | None]]:
        """Deliver one copy per target. Returns a Deferred firing with the list of
        new UIDs, one per target, in order (None for a target with ``want_uid=False``
        that the store numbers later). Fails with NoSuchFolder/QuotaExceeded."""

    def abort() -> None:
        """Throw the message away; idempotent, safe after commit."""


class IFolder(Interface):
    """One folder of one user. There is one live object per (user, folder) in a store,
    so listeners registered by one session hear changes made by another."""

    name = Attribute("Folder name, e.g. 'INBOX' or 'Archive.2024'.")
    uid_validity = Attribute("int; changes only if UIDs cannot be kept.")
    uid_next = Attribute("int; the UID the next message will get.")
    special_use = Attribute("'\\\\Sent' etc., or None.")
    highest_modseq = Attribute(
        "int: RFC 7162 HIGHESTMODSEQ, the mod-sequence of the folder's latest change "
        "(append, flag change or expunge, whoever made it). Never decreases, not even "
        "across a restart; a change another program made on disk gets a new one when "
        "the store sees it. MessageInfo.modseq is each message's own.")

    mailbox_id = Attribute(
        "str: the folder's RFC 8474 MAILBOXID (1-255 of ALPHA, DIGIT, '_', '-'): the same "
        "for the folder's whole life, across RENAME and restarts; a folder created anew "
        "under an old name gets a new one. Maildir: the mailbox GUID in dovecot-uidlist's "
        "header, as Dovecot shows it (mailhost.store.objectid).")

    def save_dates(uids: Iterable[int]) -> Deferred[dict[int, float]]:
        """Deferred firing with RFC 8514 save dates (POSIX seconds) of these messages:
        when each was saved into this folder (append, delivery, COPY or MOVE), which
        never changes afterwards. A UID that is gone, or whose date cannot be known, is
        left out. Maildir does as Dovecot does (the file's ctime, read off the reactor
        thread) and keeps the value once read, so a later rename does not move it."""

    def messages() -> list[MessageInfo]:
        """Every message, ascending by UID, from the index (synchronous, no file I/O)."""

    def get(uid: int) -> MessageInfo | None:
        """One message's index entry, or None."""

    def refresh() -> Deferred[None]:
        """Pick up what other programs added, renamed (flags) or removed; Deferred firing
        with None. Listeners hear about what changed. Cheap when nothing changed (a
        store that watches the folder answers from its watch). A ``claim_recent`` in
        flight, whoever made it, is no reason to wait: a claim has taken effect when
        it returns, so a refresh with nothing else to apply fires without waiting for
        the claim's own work (issue 16: NOOPs queued behind other sessions' claims).
        A store may still queue a refresh behind it for work of its own (a listing)."""

    def open_message(uid: int) -> Deferred[BinaryIO]:
        """Deferred firing with a readable binary file object positioned at 0 that yields
        exactly ``info.size`` CRLF-normalised octets. The caller closes it and reads it
        in bounded chunks; the whole message is never loaded by the store. Blocking:
        for work already in a thread; protocols use ``read_message``."""

    def read_message(uid: int, offset: int = 0,
                     length: int | None = None) -> Deferred[IMessageReader]:
        """Deferred firing with an ``IMessageReader`` of ``length`` octets (to the end if
        None) from ``offset`` of the message; NoSuchMessage if it is gone. A store
        wraps its file with ``mailhost.store.reader.reader_for``."""

    def set_flags(uids: Iterable[int], flags: Iterable[str],
                  mode: str) -> Deferred[list[MessageInfo]]:
        """mode is 'add', 'remove' or 'replace'. Deferred firing with the updated
        MessageInfos (unknown UIDs are skipped). Listeners hear flags_changed."""

    def expunge(uids: Iterable[int] | None = None) -> Deferred[list[int]]:
        """Remove messages flagged \\Deleted (restricted to ``uids`` if given).
        Deferred firing with the sorted list of removed UIDs."""

    def copy(uids: Iterable[int], dest: IFolder) -> Deferred[list[tuple[int, int]]]:
        """Copy messages with their flags. Deferred firing with [(src_uid, dest_uid)].
        Each copy keeps its source's RFC 8474 EMAILID (``objectid.carry``)."""

    def move(uids: Iterable[int], dest: IFolder) -> Deferred[list[tuple[int, int]]]:
        """Atomic move (a rename on Maildir). Deferred firing with [(src_uid, dest_uid)];
        this folder's listeners hear messages_expunged. The EMAILID goes along, as in
        ``copy``."""

    def claim_recent() -> Deferred[set[int]]:
        """Deferred firing with the set of UIDs that were recent; they stop being recent
        for everyone (Maildir: new/ -> cur/). At once: before this returns, ``get``,
        ``messages`` and ``columns`` show them not recent to every session, whatever
        work (a rename, a database UPDATE) is still in flight, so the next session to
        look (NOOP, SELECT, EXAMINE, STATUS) sees them old without waiting for that
        work; two claims in one process never both get a UID."""

    def add_listener(listener: IFolderListener) -> None:
        """Hear of every change from now on, ours or (within about a second, without
        any call) another program's; a store may watch the folder only while it has
        listeners."""

    def remove_listener(listener: IFolderListener) -> None:
        pass

    def modseq_of(uid: int) -> int:
        """The message's mod-sequence (``MessageInfo.modseq``), 0 if there is no such
        message; synchronous, from the index."""

    def changed_since(modseq: int) -> list[int]:
        """Ascending UIDs of the messages whose mod-sequence is above ``modseq``
        (appended or flagged since): CONDSTORE's CHANGEDSINCE."""

    def expunged_since(modseq: int) -> list[int] | None:
        """Ascending UIDs expunged with a mod-sequence above ``modseq`` (QRESYNC's
        VANISHED), or None when the folder no longer remembers that far back (it keeps
        a bounded number of expunges, as Dovecot does): the caller then counts every
        UID it knows of that is not in the folder as expunged."""

    def get_cached(uid: int, key: str) -> str | None:
        """Per-message metadata cached in the index (IMAP stores ENVELOPE and
        BODYSTRUCTURE here so a second FETCH opens no file)."""

    def set_cached(uid: int, key: str, value: str) -> None:
        """Cache a value; persisted lazily and dropped with the message."""


class IIndexedFolder(IFolder):
    """An IFolder with a compact index: bulk reads for big folders (optional).

    IMAP SELECT and ``FETCH 1:* (FLAGS)`` and a POP3 login on 100k messages read these
    columns instead of building a MessageInfo per message. Protocols test
    ``IIndexedFolder.providedBy(folder)`` and fall back to ``messages()``.
    """

    def columns() -> Columns:
        """Every message as ``Columns`` (synchronous, no file I/O; a date the store has
        not read yet may be read on first access to ``dates``, so call ``fill_dates``
        before reading many)."""

    def fill_dates(uids: Iterable[int] | None = None) -> Deferred[None]:
        """Deferred firing once the INTERNALDATE of every message (or of ``uids``) is
        known, read in bulk off the reactor thread: for SEARCH or FETCH about to read
        many dates."""


class IHeaderBlocks(IFolder):
    """An IFolder that reads many messages' header blocks at once (optional; tested with
    ``providedBy``). Where each message opened costs a round trip (PostgreSQL: one query
    per body), SORT, THREAD and SEARCH fill their header index through this instead, a
    few queries per thousand messages (issue 19: the first ``SEARCH SUBJECT`` on 20k
    messages took 47 s, one query per message). Maildir offers it too: one thread job
    per batch, a few system calls per file, instead of a file object and a Deferred
    per message on the reactor thread."""

    def read_headers(uids: Sequence[int],
                     fn: Callable[[BinaryIO], _T]) -> Deferred[list[tuple[int, _T]]]:
        """Deferred firing with ``(uid, fn(file))`` for each of ``uids`` still in the
        folder, in the order asked. ``fn`` runs in the store's thread pool, once per
        message; ``file`` is blocking and yields the message from its start through at
        least the empty line that ends its header block (perhaps nothing after it; the
        whole message if it has no such line). The store closes it after ``fn``."""


class IMailAccount(Interface):
    """One user's folders and subscriptions, and APPEND into them: a logged-in session's
    one route to the store."""

    user = Attribute("The user's address.")

    def new_message() -> IMessageWriter:
        """Start receiving a message to ``append`` (IMAP streams a big APPEND literal
        into it as it arrives, before the command is parsed)."""

    def append(name: str, message: IMessageWriter, flags: Iterable[str] = (),
               internal_date: float | None = None, recent: bool = True,
               ) -> Deferred[tuple[int, int]]:
        """Commit ``message`` (from ``new_message``) into folder ``name`` with these
        flags and date (None: now). Deferred firing with ``(uid_validity, uid)`` for
        APPENDUID; NoSuchFolder if absent (then the message is aborted). ``recent``
        False: recent to no other session (``DeliveryTarget.recent``)."""

    def list_folders() -> Deferred[list[str]]:
        """Deferred firing with every folder name, INBOX first, then sorted."""

    def open_folder(name: str) -> Deferred[IFolder]:
        """Deferred firing with the IFolder; NoSuchFolder if absent. 'inbox' in any case
        means INBOX."""

    def create_folder(name: str, special_use: str | None = None) -> Deferred[None]:
        """Deferred; FolderExists, InvalidFolderName. Creates missing parents."""

    def delete_folder(name: str) -> Deferred[None]:
        """Deferred; NoSuchFolder; deleting INBOX is InvalidFolderName."""

    def rename_folder(old: str, new: str) -> Deferred[None]:
        """Deferred. Renames children too. Renaming INBOX moves its messages into a new
        folder and leaves INBOX empty (RFC 3501)."""

    def subscriptions() -> Deferred[set[str]]:
        """Deferred firing with the set of subscribed names."""

    def subscribe(name: str) -> Deferred[None]:
        """Deferred."""

    def unsubscribe(name: str) -> Deferred[None]:
        """Deferred."""


class IMailStore(Interface):
    """The root of the store: accounts and message writers."""

    def open_account(user: str) -> Deferred[IMailAccount]:
        """Deferred firing with the IMailAccount, created (with INBOX and the default
        special folders) on first use."""

    def new_message() -> IMessageWriter:
        """Start receiving a message; see IMessageWriter."""

    def start() -> Deferred[None]:
        """Finish what a crash interrupted (the Maildir store: multi-folder commit
        journals) before anything is served; Deferred. Called on service start, so a
        crash's leftovers are settled then, not when some user next logs in; opening an
        account waits for it too. Calling it again is harmless."""

    def close() -> Deferred[None]:
        """Flush indexes; Deferred. Called on service stop."""



class IAccountListener(Interface):
    """Told when a store first serves an account in this process (``IAccountListing``)."""

    def account_opened(user: str) -> None:
        """``user``'s account was opened for the first time since the store started:
        made by its first delivery or login, or an existing one first used. Called on
        the reactor thread; a failing listener never breaks the store."""


class IAccountListing(Interface):
    """A store that can name its accounts (optional; ``providedBy``): the operator's
    view across every mailbox (``mailhost.mailview``) needs it, protocols never do."""

    def accounts() -> Deferred[list[str]]:
        """Deferred firing with every account the store holds, sorted (Maildir: its
        ``<domain>/<localpart>`` Maildirs, listed off the reactor thread)."""

    def add_account_listener(listener: IAccountListener) -> None:
        """Hear of every account opened from now on."""

    def remove_account_listener(listener: IAccountListener) -> None:
        pass
