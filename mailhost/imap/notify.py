"""NOTIFY (RFC 5465): the client says which changes it wants to hear of, and where.

``NOTIFY SET [STATUS] (filter events) ...`` replaces what was asked before;
``NOTIFY NONE`` turns it off. Filters: ``selected``, ``selected-delayed``, ``inboxes``
(INBOX: the only folder deliveries go to), ``personal`` (every folder), ``subscribed``,
``subtree`` and ``mailboxes`` (named folders, with their children for subtree). A
folder matched by several groups follows the first. Events: MessageNew (for the
selected mailbox with FETCH attributes, sent as ``* n FETCH`` after ``* n EXISTS``),
MessageExpunge, FlagChange, MailboxName and SubscriptionChange. AnnotationChange and
the METADATA events need annotations this server does not keep: ``NO [BADEVENT
(...)]`` names what it supports.

Where the changes come from:

* the selected mailbox: its ``SelectedMailbox`` listener, as for IDLE; with NOTIFY
  ``selected`` its updates go out whenever no command runs (expunges too; with
  ``selected-delayed`` they wait for a command that allows them, as without NOTIFY);
* other folders: a listener of our own on each watched folder (the store's change
  listeners: another session, an SMTP delivery, or, through the Maildir watch, another
  program such as Dovecot), answered with ``* STATUS``;
* mailbox names and subscriptions: CREATE/DELETE/RENAME/SUBSCRIBE/UNSUBSCRIBE of any
  session of this server for the same user (this module wraps those commands) answered
  with ``* LIST``. A folder another program creates on disk is not reported, nor
  (with ``[server] workers`` above 1) one a session in another worker process
  creates: the hub is per process (message events cross through the Maildir watch).

Nothing is written while a command is sending its own responses: what arrives then
queues and goes out before the command's tagged reply. If the client stops reading
and more than ``MAX_QUEUED`` notifications pile up, the server sends ``* OK
[NOTIFICATIONOVERFLOW]`` and stops notifying, as if ``NOTIFY NONE`` (RFC 5465 5.8).
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailhost.imap import commands_mailbox, context, parser
from mailhost.imap.commands_mailbox import mailbox_name, wire_name
from mailhost.imap.condstore import CONDSTORE
from mailhost.imap.responses import No
from mailhost.imap.rev2 import IMAP4REV2, utf8_names
from mailhost.imap.selected import folder_columns
from mailhost.imap.states import AUTH
from mailhost.store.interfaces import IFolder, IFolderListener, MessageInfo, StoreError

if TYPE_CHECKING:
    from mailhost.imap.server import IMAPServer

log = Logger()

#: Notifications held for a client that is not reading before NOTIFICATIONOVERFLOW.
MAX_QUEUED = 1000
DELIM = "."

MESSAGE_EVENTS = ("MessageNew", "MessageExpunge", "FlagChange", "AnnotationChange")
MAILBOX_EVENTS = ("MailboxName", "SubscriptionChange", "MailboxMetadataChange",
                  "ServerMetadataChange")
SUPPORTED = ("MessageNew", "MessageExpunge", "FlagChange", "MailboxName", "SubscriptionChange")
_CANONICAL = {e.upper(): e for e in MESSAGE_EVENTS + MAILBOX_EVENTS}
_BADEVENT = "[BADEVENT (" + " ".join(SUPPORTED) + ")] "

SELECTED, DELAYED = "SELECTED", "SELECTED-DELAYED"
FILTERS = (SELECTED, DELAYED, "INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES")
_NAMED = ("SUBTREE", "MAILBOXES")


@dataclass(frozen=True)
class Group:
    """One ``(filter events)`` of NOTIFY SET. ``events`` empty is NONE; ``fetch`` the
    FETCH attributes of MessageNew, as the client wrote them."""

    filter: str
    names: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    fetch: tuple[str, ...] = ()

    def matches(self, name: str, subscribed: Iterable[str] = ()) -> bool:
        """Whether this group's filter takes in folder ``name`` (not the selected ones)."""
        if self.filter == "PERSONAL":
            return True
        if self.filter == "INBOXES":
            return name == "INBOX"
        if self.filter == "SUBSCRIBED":
            return name in subscribed
        if self.filter == "MAILBOXES":
            return name in self.names
        if self.filter == "SUBTREE":
            return any(name == n or name.startswith(n + DELIM) for n in self.names)
        return False


@dataclass(frozen=True)
class Spec:
    """What NOTIFY SET asked for."""

    status: bool
    groups: tuple[Group, ...]

    @property
    def selected(self) -> Group | None:
        return next((g for g in self.groups if g.filter in (SELECTED, DELAYED)), None)

    @property
    def others(self) -> tuple[Group, ...]:
        return tuple(g for g in self.groups if g.filter not in (SELECTED, DELAYED))


# -- parsing ---------------------------------------------------------------------------


def parse_notify(args: list, utf8: bool = False) -> Spec | None:
    """NOTIFY's arguments: None for NONE, else the Spec. ParseError (BAD) for bad
    syntax or a combination RFC 5465 forbids; ``No`` with BADEVENT for an event this
    server does not support. ``utf8``: mailbox names are UTF-8 (``rev2.utf8_names``)."""
    if len(args) == 1 and isinstance(args[0], parser.Atom) and args[0].upper() == "NONE":
        return None
    if not args or not isinstance(args[0], parser.Atom) or args[0].upper() != "SET":
        raise parser.ParseError(None, "NOTIFY expects SET or NONE")
    rest = args[1:]
    status = bool(rest) and isinstance(rest[0], parser.Atom) and rest[0].upper() == "STATUS"
    if status:
        rest = rest[1:]
    if not rest:
        raise parser.ParseError(None, "NOTIFY SET expects event groups")
    groups = tuple(_parse_group(g, utf8) for g in rest)
    if sum(1 for g in groups if g.filter in (SELECTED, DELAYED)) > 1:
        raise parser.ParseError(None, "selected and selected-delayed may be given once")
    return Spec(status, groups)


def _parse_group(token: object, utf8: bool = False) -> Group:
    if not isinstance(token, list) or len(token) < 2 or not isinstance(token[0], parser.Atom):
        raise parser.ParseError(None, "An event group is (filter events)")
    kind = token[0].upper()
    if kind not in FILTERS:
        raise parser.ParseError(None, f"Unknown NOTIFY filter {token[0]!s}")
    names: tuple[str, ...] = ()
    rest = token[1:]
    if kind in _NAMED:
        if len(rest) != 2:
            raise parser.ParseError(None, f"{kind.lower()} expects mailboxes and events")
        one = rest[0] if isinstance(rest[0], list) else [rest[0]]
        if not one:
            raise parser.ParseError(None, f"{kind.lower()} expects at least one mailbox")
        names = tuple(mailbox_name(m, utf8) for m in one)
        rest = rest[1:]
    if len(rest) != 1:
        raise parser.ParseError(None, "An event group is (filter events)")
    events, fetch = _parse_events(rest[0], kind in (SELECTED, DELAYED))
    return Group(kind, names, events, fetch)


def _parse_events(token: object, selected: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if isinstance(token, parser.Atom) and token.upper() == "NONE":
        return (), ()
    if not isinstance(token, list) or not token:
        raise parser.ParseError(None, "Events are NONE or a list")
    events: list[str] = []
    fetch: tuple[str, ...] = ()
    unsupported: list[str] = []
    items = list(token)
    i = 0
    while i < len(items):
        t = items[i]
        i += 1
        if not isinstance(t, parser.Atom):
            raise parser.ParseError(None, "An event is an atom")
        name = _CANONICAL.get(t.upper())
        if name is None or name not in SUPPORTED:
            unsupported.append(str(t))
            continue
        if name in events:
            raise parser.ParseError(None, f"{name} given twice")
        events.append(name)
        if name == "MessageNew" and i < len(items) and isinstance(items[i], list):
            if not selected:
                raise parser.ParseError(
                    None, "FETCH attributes are for the selected mailbox only")
            atts = items[i]
            i += 1
            if not atts or not all(isinstance(a, parser.Atom) for a in atts):
                raise parser.ParseError(None, "MessageNew expects FETCH attributes")
            parser.parse_fetch_items([list(atts)])  # BAD now, not at the first message
            fetch = tuple(str(a) for a in atts)
    if unsupported:
        raise No(_BADEVENT + "Unsupported event " + unsupported[0])
    have = set(events)
    if selected and have - set(MESSAGE_EVENTS):
        raise parser.ParseError(None, "selected takes message events only")
    if ("MessageNew" in have) != ("MessageExpunge" in have):
        raise parser.ParseError(None, "MessageNew and MessageExpunge go together")
    if "FlagChange" in have and "MessageNew" not in have:
        raise parser.ParseError(None, "FlagChange needs MessageNew and MessageExpunge")
    return tuple(events), fetch


def format_spec(spec: Spec | None, utf8: bool = False) -> bytes:
    """NOTIFY's arguments for ``spec`` (the inverse of ``parse_notify``)."""
    if spec is None:
        return b"NONE"
    out = [b"SET"]
    if spec.status:
        out.append(b"STATUS")
    for g in spec.groups:
        head = g.filter.lower().encode("ascii")
        if g.names:
            head += b" (" + b" ".join(wire_name(n, utf8) for n in g.names) + b")"
        if not g.events:
            out.append(b"(" + head + b" NONE)")
            continue
        evs = []
        for e in g.events:
            evs.append(e.encode("ascii"))
            if e == "MessageNew" and g.fetch:
                evs.append(b"(" + " ".join(g.fetch).encode("ascii") + b")")
        out.append(b"(" + head + b" (" + b" ".join(evs) + b"))")
    return b" ".join(out)


# -- mailbox-name and subscription events between sessions ------------------------------

_HUB: weakref.WeakKeyDictionary[Any, dict[str, weakref.WeakSet[Notifier]]] = \
    weakref.WeakKeyDictionary()


def _peers(s: IMAPServer) -> weakref.WeakSet[Notifier]:
    """The notifiers of this user's sessions on this server: keyed by the login service,
    which every IMAP listener of one host shares (143 and 993 have a factory each)."""
    by_user = _HUB.setdefault(s.login_service, {})
    return by_user.setdefault(s.user or "", weakref.WeakSet())


def _list_line(attrs: bytes, name: str, old: str | None = None, utf8: bool = False) -> bytes:
    line = b"* LIST (" + attrs + b') "." ' + wire_name(name, utf8)
    if old is not None:
        line += b' ("OLDNAME" (' + wire_name(old, utf8) + b"))"
    return line + b"\r\n"


def publish(s: IMAPServer, event: str, name: str, attrs: bytes, old: str | None = None) -> None:
    """Tell this user's notifying sessions (this one too) a mailbox changed; each
    builds its ``* LIST`` line in its own name encoding (UTF-8 or modified UTF-7)."""
    for n in list(_peers(s)):
        n.mailbox_event(event, name, attrs, old, origin=s)


# -- one session's notifications --------------------------------------------------------


@implementer(IFolderListener)
class Watch:
    """Implements: IFolderListener, on one watched folder that is not selected."""

    def __init__(self, notifier: Notifier, folder: IFolder, group: Group) -> None:
        self.notifier, self.folder, self.group = notifier, folder, group

    def messages_added(self, folder: IFolder, infos: Sequence[MessageInfo]) -> None:
        if "MessageNew" in self.group.events:
            self.notifier.folder_changed(self.folder, counts=True)

    def messages_expunged(self, folder: IFolder, uids: Sequence[int]) -> None:
        if "MessageExpunge" in self.group.events:
            self.notifier.folder_changed(self.folder, counts=True)

    def flags_changed(self, folder: IFolder, infos: Sequence[MessageInfo]) -> None:
        if "FlagChange" in self.group.events:
            self.notifier.folder_changed(self.folder, counts=False)


class Notifier:
    """One session's NOTIFY SET: the folders it watches and what it holds back."""

    def __init__(self, s: IMAPServer, spec: Spec) -> None:
        self.s = s
        self.spec = spec
        self.watches: dict[str, Watch] = {}
        self.subscribed: set[str] = set()
        self._pending: dict[str, bool] = {}  # folder name -> message counts changed
        self._lines: list[bytes] = []  # LIST lines not sent yet
        self._queued = 0
        self._waiting = False  # for the client to read (gate paused)
        self.stopped = False

    # -- set-up ---------------------------------------------------------------------

    async def start(self) -> None:
        """Watch every folder an event group names (listeners on each)."""
        _peers(self.s).add(self)
        await self.resolve()
        if self.spec.status:
            for name in sorted(self.watches):
                if not self._is_selected(name):
                    # RFC 5465 3: with FlagChange, HIGHESTMODSEQ too (this server
                    # has CONDSTORE), as Dovecot sends it.
                    self.s.send(self._status_line(
                        self.watches[name].folder, True, with_validity=True,
                        with_modseq=self._wants("FlagChange", name)))

    async def resolve(self) -> None:
        """(Re)compute the watched folders: at SET, and after a mailbox-name change."""
        others = self.spec.others
        account = self.s.account
        watching = any(set(g.events) & set(MESSAGE_EVENTS) for g in others)
        names = await account.list_folders() if watching else []
        if any(g.filter == "SUBSCRIBED" for g in self.spec.groups):
            self.subscribed = set(await account.subscriptions())
        wanted: dict[str, Group] = {}
        for name in names:  # the first group that takes a folder in decides (RFC 5465 3)
            g = next((g for g in others if g.matches(name, self.subscribed)), None)
            if g is not None and set(g.events) & set(MESSAGE_EVENTS):
                wanted[name] = g
        for name in list(self.watches):
            if name not in wanted or self.watches[name].group != wanted[name]:
                self._unwatch(name)
        for name, g in wanted.items():
            if name in self.watches or self.stopped:
                continue
            try:
                folder = await account.open_folder(name)
            except StoreError:
                continue
            if self.stopped or name in self.watches:
                continue
            w = self.watches[name] = Watch(self, folder, g)
            folder.add_listener(w)

    def _unwatch(self, name: str) -> None:
        w = self.watches.pop(name, None)
        if w is not None:
            try:
                w.folder.remove_listener(w)
            except (KeyError, ValueError):
                pass

    def stop(self) -> None:
        """NOTIFY NONE, a new NOTIFY SET, overflow or the end of the session."""
        self.stopped = True
        for name in list(self.watches):
            self._unwatch(name)
        _peers(self.s).discard(self)
        self._pending.clear()
        self._lines.clear()

    # -- the selected mailbox ---------------------------------------------------------

    def selected_push(self) -> bool | None:
        """How the selected mailbox's changes go out between commands: None not at all
        (no ``selected`` group, or its events are NONE or have no message events),
        True expunges included (``selected``), False held (``selected-delayed``)."""
        g = self.spec.selected
        if g is None or "MessageNew" not in g.events:
            return None
        return g.filter == SELECTED

    def selected_silent(self) -> bool:
        """``(selected NONE)``: nothing about the selected mailbox unless a command
        asks, not even in IDLE."""
        g = self.spec.selected
        return g is not None and not g.events

    async def after_updates(self, last: int) -> None:
        """After the selected mailbox's EXISTS and friends: FETCH for messages above
        UID ``last`` (MessageNew's attributes), then whatever else is held back."""
        g = self.spec.selected
        sel = self.s.selected
        if g is not None and g.fetch and sel is not None:
            new = sel.uids[bisect.bisect_right(sel.uids, last):]
            if new:
                await self._fetch(new, g)
        self.flush(now=True)

    async def _fetch(self, uids: list[int], g: Group) -> None:
        items = parser.parse_fetch_items([[parser.Atom(a) for a in g.fetch]])
        await context.push_fetch(self.s, uids, items)

    def _is_selected(self, name: str) -> bool:
        sel = self.s.selected
        return sel is not None and sel.folder.name == name

    # -- other folders ----------------------------------------------------------------

    def folder_changed(self, folder: IFolder, counts: bool) -> None:
        if self.stopped or self._is_selected(folder.name):
            return
        self._pending[folder.name] = self._pending.get(folder.name, False) or counts
        self._queued += 1
        self.flush()

    def mailbox_event(self, event: str, name: str, attrs: bytes, old: str | None,
                      origin: IMAPServer | None = None) -> None:
        """Another (or this) session created, deleted, renamed, (un)subscribed ``name``."""
        if self.stopped:
            return
        if event == "SubscriptionChange":
            if attrs == b"\\Subscribed":
                self.subscribed.add(name)
            else:
                self.subscribed.discard(name)
        names = [name] if old is None else [name, old]
        utf8 = utf8_names(self.s)
        # A rev2 session's own RENAME already answered with this LIST (OLDNAME).
        own_rename = origin is self.s and old is not None and IMAP4REV2 in self.s.enabled
        if not own_rename and any(self._wants(event, n) for n in names):
            self._lines.append(_list_line(attrs, name, old, utf8))
            self._queued += 1
        d = defer.ensureDeferred(self.resolve())  # folders to watch may have changed
        d.addErrback(lambda f: log.failure("NOTIFY: watching folders failed", f))
        self.flush()

    def _wants(self, event: str, name: str) -> bool:
        g = next((g for g in self.spec.others if g.matches(name, self.subscribed)), None)
        return g is not None and event in g.events

    def flush(self, now: bool = False) -> None:
        """Send what is held back, unless a command is sending (``now``: it is done
        and its tagged reply is next) or the client is not reading; too much held
        back for a client that is not reading: overflow."""
        s = self.s
        if self.stopped or not (self._pending or self._lines):
            self._queued = 0
            return
        if s.gate.paused:
            if self._queued > MAX_QUEUED:
                self.overflow()
            elif not self._waiting:
                self._waiting = True
                s.gate.wait().addCallback(self._resumed)
            return
        if s.busy and not now:
            return
        out = list(self._lines)
        self._lines.clear()
        pending, self._pending = self._pending, {}
        for name in sorted(pending):
            w = self.watches.get(name)
            if w is not None and not self._is_selected(name):
                out.append(self._status_line(w.folder, pending[name]))
        self._queued = 0
        if out:
            s.send(b"".join(out))

    def _resumed(self, _: object) -> None:
        self._waiting = False
        self.flush()

    def overflow(self) -> None:
        self.s.send(b"* OK [NOTIFICATIONOVERFLOW] Too many notifications; NOTIFY is off\r\n")
        self.stop()
        if self.s.notifier is self:
            self.s.notifier = None

    def _status_line(self, folder: IFolder, counts: bool, with_validity: bool = False,
                     with_modseq: bool = False) -> bytes:
        """``* STATUS``: HIGHESTMODSEQ once CONDSTORE is enabled (or ``with_modseq``),
        and then UIDVALIDITY with it (RFC 5465 5.1: "at least HIGHESTMODSEQ and
        UIDVALIDITY")."""
        cols = folder_columns(folder)
        modseq = with_modseq or CONDSTORE in self.s.enabled
        items = []
        if counts:
            items += [b"MESSAGES %d" % len(cols.uids), b"UIDNEXT %d" % folder.uid_next]
        if with_validity or modseq:
            items.append(b"UIDVALIDITY %d" % folder.uid_validity)
        items.append(b"UNSEEN %d" % sum(1 for f in cols.flags if "\\Seen" not in f))
        if modseq:
            items.append(b"HIGHESTMODSEQ %d" % folder.highest_modseq)
        return (b"* STATUS " + wire_name(folder.name, utf8_names(self.s)) + b" ("
                + b" ".join(items) + b")\r\n")


# -- commands ---------------------------------------------------------------------------


async def notify(s: IMAPServer, cmd: parser.Command) -> bytes:
    spec = parse_notify(cmd.args, utf8_names(s))
    if s.notifier is not None:
        s.notifier.stop()
        s.notifier = None
    if spec is None:
        return b"NOTIFY completed"
    notifier = Notifier(s, spec)
    s.notifier = notifier
    await notifier.start()
    return b"NOTIFY completed"


def _wrap(name: str, event: str) -> Any:
    """A mailbox command that also tells NOTIFY sessions what it changed."""
    inner = commands_mailbox.HANDLERS[name][1]

    async def handler(s: IMAPServer, cmd: parser.Command) -> bytes | None:
        utf8 = utf8_names(s)
        names = [mailbox_name(a, utf8) for a in cmd.args[:2] if isinstance(a, (bytes, str))]
        result = await inner(s, cmd)
        if names:
            target = names[-1].rstrip(DELIM) if name in ("CREATE", "RENAME") else names[0]
            if name == "CREATE":
                attrs = b""
            elif name == "DELETE":
                attrs = b"\\NonExistent"
            elif name == "RENAME":  # the children moved with it: one LIST each
                if _peers(s):
                    prefix = target + DELIM
                    for child in await s.account.list_folders():
                        if child.startswith(prefix):
                            was = names[0] + DELIM + child[len(prefix):]
                            publish(s, event, child, b"", old=was)
                attrs = b""
            elif name == "SUBSCRIBE":
                attrs = b"\\Subscribed"
            else:
                attrs = b""
            # Renaming INBOX leaves a new, empty INBOX (RFC 9051 6.3.6): "Old" is news,
            # INBOX is not gone, so no OLDNAME (INBOX).
            renamed = name == "RENAME" and names[0] != "INBOX"
            publish(s, event, target, attrs, old=names[0] if renamed else None)
        return result

    handler.__name__ = name.lower()
    return handler


HANDLERS = {
    "NOTIFY": (AUTH, notify),
    **{name: (AUTH, _wrap(name, "MailboxName")) for name in ("CREATE", "DELETE", "RENAME")},
    **{name: (AUTH, _wrap(name, "SubscriptionChange"))
       for name in ("SUBSCRIBE", "UNSUBSCRIBE")},
}
