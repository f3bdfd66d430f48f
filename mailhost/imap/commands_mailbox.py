"""Authenticated-state commands: mailboxes, LIST/LSUB, STATUS, APPEND (RFC 3501 6.3).

Mailbox names are modified UTF-7 on the wire and unicode in the store; ``inbox`` in
any case is INBOX. The hierarchy delimiter is the store's ``.``. LIST carries
CHILDREN (RFC 3348) and SPECIAL-USE (RFC 6154) attributes, and takes LIST-EXTENDED's
options (RFC 5258, mailhost.imap.list_extended) with LIST-STATUS (RFC 5819).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress
from typing import TYPE_CHECKING

from mailhost.imap import objects, parser, rev2
from mailhost.imap.binary_append import without_nul
from mailhost.imap.list_extended import parse_list
from mailhost.imap.quota import check_room
from mailhost.imap.responses import Bad, No, format_set
from mailhost.imap.selected import SelectedMailbox, folder_columns
from mailhost.imap.states import AUTH
from mailhost.store.interfaces import (
    SYSTEM_FLAGS,
    IFolder,
    IMailAccount,
    IMessageWriter,
    NoSuchFolder,
)

if TYPE_CHECKING:
    from mailhost.imap.server import IMAPServer

DELIM = "."
APPEND_CHUNK = 64 * 1024


def mailbox_name(token: object, utf8: bool = False) -> str:
    """Wire mailbox name → store name (INBOX case-folded, trailing delimiter dropped);
    ``utf8``: the session enabled UTF-8 names (``rev2.utf8_names``)."""
    name = rev2.decode_name(parser.as_string(token, "mailbox name"), utf8)
    if name.upper() == "INBOX":
        return "INBOX"
    if name.upper().startswith("INBOX" + DELIM):
        name = "INBOX" + name[5:]
    return name


def wire_name(name: str, utf8: bool = False) -> bytes:
    return rev2.encode_name(name, utf8)


async def _select(s: IMAPServer, cmd: parser.Command, readonly: bool) -> bytes:
    if len(cmd.args) != 1:
        raise Bad(f"{cmd.name} expects a mailbox name")
    name = mailbox_name(cmd.args[0], rev2.utf8_names(s))
    s.unselect()  # RFC 3501 6.3.1: a failed SELECT leaves no mailbox selected
    try:
        folder = await s.account.open_folder(name)
    except NoSuchFolder:
        raise No("[NONEXISTENT] Mailbox does not exist") from None
    await folder.refresh()  # files other programs added, renamed or removed
    claimed = None if readonly else set(await folder.claim_recent())
    uids, flags, in_new, _, _ = folder_columns(folder)
    recent = claimed if claimed is not None else set(compress(uids, in_new))
    sel = SelectedMailbox(folder, readonly, notify=s.on_folder_event)
    new_rev = sel.rev2 = rev2.is_rev2(s)  # RFC 9051: no RECENT, no [UNSEEN], a LIST
    sel.load_columns(uids, flags, () if new_rev else recent)
    s.select(sel)
    first_unseen = next((n for n, f in enumerate(flags, 1) if "\\Seen" not in f), None)
    out = sel.flags_lines()
    out.append(b"* %d EXISTS\r\n" % len(uids))
    if new_rev:
        out.append(await rev2.select_list(s, folder, parser.as_string(cmd.args[0])))
    else:
        out.append(b"* %d RECENT\r\n" % len(recent))
    if first_unseen is not None and not new_rev:
        out.append(b"* OK [UNSEEN %d] First unseen\r\n" % first_unseen)
    out.append(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % folder.uid_validity)
    out.append(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % folder.uid_next)
    out.append(objects.mailbox_id_line(folder))  # RFC 8474
    if s.settings.urlauth_dir:  # RFC 4467 8: the URLAUTH mechanisms, at SELECT/EXAMINE
        out.append(b"* OK [URLMECH INTERNAL] URLAUTH mechanisms\r\n")
    s.send(b"".join(out))
    mode = b"[READ-ONLY]" if readonly else b"[READ-WRITE]"
    return mode + b" " + cmd.name.encode("ascii") + b" completed"


async def select(s: IMAPServer, cmd: parser.Command) -> bytes:
    return await _select(s, cmd, readonly=False)


async def examine(s: IMAPServer, cmd: parser.Command) -> bytes:
    return await _select(s, cmd, readonly=True)


#: Special uses a real folder can carry (RFC 6154 2); \\All and \\Flagged would be
#: virtual folders, which this store has not.
CREATABLE_USES = {u.upper(): u for u in ("\\Archive", "\\Drafts", "\\Junk", "\\Sent", "\\Trash")}


async def create(s: IMAPServer, cmd: parser.Command) -> bytes:
    if len(cmd.args) not in (1, 2):
        raise Bad("CREATE expects a mailbox name")
    name = mailbox_name(cmd.args[0], rev2.utf8_names(s)).rstrip(DELIM)
    use = _create_use(cmd.args[1]) if len(cmd.args) == 2 else None
    if name == "INBOX":
        raise No("[ALREADYEXISTS] INBOX always exists")
    rev2.check_new_name(name)
    await s.account.create_folder(name, use)
    s.send(rev2.oldname_line(s, parser.as_string(cmd.args[0]), name))
    return objects.mailbox_id_code(await s.account.open_folder(name)) + b"CREATE completed"


def _create_use(token: object) -> str | None:
    """CREATE-SPECIAL-USE (RFC 6154 3): ``(USE (\\Drafts))``; one use per folder here."""
    if not (isinstance(token, list) and len(token) == 2 and isinstance(token[0], parser.Atom)
            and token[0].upper() == "USE" and isinstance(token[1], list)):
        raise Bad("CREATE parameters must be (USE (attributes))")
    uses = [u for u in token[1] if isinstance(u, parser.Atom)]
    if len(uses) != len(token[1]):
        raise Bad("USE expects attribute names")
    if not uses:
        return None
    if len(uses) > 1:
        raise No("[USEATTR] A mailbox can have one special use here")
    use = CREATABLE_USES.get(uses[0].upper())
    if use is None:
        raise No(f"[USEATTR] {uses[0]} is not a special use a mailbox can be created with")
    return use


async def delete(s: IMAPServer, cmd: parser.Command) -> bytes:
    if len(cmd.args) != 1:
        raise Bad("DELETE expects a mailbox name")
    name = mailbox_name(cmd.args[0], rev2.utf8_names(s))
    if name == "INBOX":
        raise No("[CANNOT] INBOX cannot be deleted")
    if s.selected is not None and s.selected.folder.name == name:
        s.unselect()
    await s.account.delete_folder(name)
    s.send(rev2.oldname_line(s, parser.as_string(cmd.args[0]), name, b"\\NonExistent"))
    return b"DELETE completed"


async def rename(s: IMAPServer, cmd: parser.Command) -> bytes:
    if len(cmd.args) != 2:
        raise Bad("RENAME expects two mailbox names")
    utf8 = rev2.utf8_names(s)
    old = mailbox_name(cmd.args[0], utf8)
    new = mailbox_name(cmd.args[1], utf8).rstrip(DELIM)
    if new == "INBOX":
        raise No("[ALREADYEXISTS] INBOX always exists")
    rev2.check_new_name(new)
    await s.account.rename_folder(old, new)
    # OLDNAME: the name as given, if it was normalized (RFC 9051 6.3.6). Not for INBOX:
    # "it is assumed that a new INBOX is created", so nothing tells INBOX went away.
    if rev2.is_rev2(s) and old != "INBOX":
        given = rev2.denormalized(s, parser.as_string(cmd.args[0]))
        s.send(rev2.renamed_line(old if given is None else given, new))
    return b"RENAME completed"


async def subscribe(s: IMAPServer, cmd: parser.Command) -> bytes:
    if len(cmd.args) != 1:
        raise Bad("SUBSCRIBE expects a mailbox name")
    await s.account.subscribe(mailbox_name(cmd.args[0], rev2.utf8_names(s)))
    return b"SUBSCRIBE completed"


async def unsubscribe(s: IMAPServer, cmd: parser.Command) -> bytes:
    if len(cmd.args) != 1:
        raise Bad("UNSUBSCRIBE expects a mailbox name")
    await s.account.unsubscribe(mailbox_name(cmd.args[0], rev2.utf8_names(s)))
    return b"UNSUBSCRIBE completed"


class ListPattern:
    """A LIST/LSUB pattern: ``*`` matches anything, ``%`` anything but the delimiter.

    Matched by simulating the pattern as an NFA, in O(len(name) * len(pattern)) time.
    (A translation to a regex backtracks exponentially: ``%%%%%%%%%%x`` against a
    30-character name took 19 s on the reactor thread.) Runs of wildcards collapse.
    """

    def __init__(self, pattern: str) -> None:
        if pattern.upper().startswith("INBOX") and (len(pattern) == 5 or pattern[5] == DELIM):
            pattern = "INBOX" + pattern[5:]
        tokens: list[str] = []
        for ch in pattern:
            if ch in "*%" and tokens and tokens[-1] in "*%":
                tokens[-1] = "*" if "*" in (ch, tokens[-1]) else "%"
            else:
                tokens.append(ch)
        self.tokens = tokens

    def _closure(self, states: set[int]) -> set[int]:
        out, todo = set(states), list(states)
        while todo:
            i = todo.pop()
            if i < len(self.tokens) and self.tokens[i] in "*%" and i + 1 not in out:
                out.add(i + 1)
                todo.append(i + 1)
        return out

    def fullmatch(self, name: str) -> bool:
        tokens, end = self.tokens, len(self.tokens)
        states = self._closure({0})
        for ch in name:
            nxt: set[int] = set()
            for i in states:
                if i == end:
                    continue
                tok = tokens[i]
                if tok == "*" or (tok == "%" and ch != DELIM):
                    nxt.add(i)
                elif tok == ch:
                    nxt.add(i + 1)
            if not nxt:
                return False
            states = self._closure(nxt)
        return end in states


def pattern_regex(pattern: str) -> ListPattern:
    """The matcher for a LIST pattern (kept under its old name for callers)."""
    return ListPattern(pattern)


def _list_pattern(s: IMAPServer, cmd: parser.Command) -> tuple[str, str]:
    if len(cmd.args) != 2:
        raise Bad(f"{cmd.name} expects a reference and a mailbox pattern")
    utf8 = rev2.utf8_names(s)
    ref = rev2.decode_name(parser.as_string(cmd.args[0], "reference"), utf8)
    pat = rev2.decode_name(parser.as_string(cmd.args[1], "mailbox pattern"), utf8)
    return ref, pat


def _ancestors(name: str) -> list[str]:
    parts = name.split(DELIM)
    return [DELIM.join(parts[:i]) for i in range(1, len(parts))]


def _sort_key(name: str) -> tuple[int, str]:
    return (0 if name == "INBOX" else 1, name)


async def list_(s: IMAPServer, cmd: parser.Command) -> bytes:
    req = parse_list(cmd.args, rev2.utf8_names(s))
    utf8, new_rev = rev2.utf8_names(s), rev2.is_rev2(s)
    rev2.check_status_items(s, req.status_items)
    if req.patterns == ("",) and not req.extended:
        s.send(b'* LIST (\\Noselect) "." ""\r\n')
        return b"LIST completed"
    matchers = [pattern_regex(req.reference + p) for p in req.patterns]

    def matches(name: str) -> bool:
        return any(m.fullmatch(name) for m in matchers)

    names = list(await s.account.list_folders())
    real = set(names)
    candidates = set(real)
    for n in names:
        candidates.update(_ancestors(n))
    parents = set()
    for n in candidates:
        parents.update(_ancestors(n))
    wants_subs = "SUBSCRIBED" in req.select or "SUBSCRIBED" in req.returns
    subs = set(await s.account.subscriptions()) if wants_subs else set()
    uses = {n: await _special_use(s, n) for n in real} if (
        "SPECIAL-USE" in req.select) else {}
    # RFC 5258 3.1: what the selection options select; a parent that matches while
    # only a descendant is selected is listed with CHILDINFO (RECURSIVEMATCH).
    if "SUBSCRIBED" in req.select:
        selected, criterion = subs, b"SUBSCRIBED"
    elif "SPECIAL-USE" in req.select:
        selected, criterion = {n for n, u in uses.items() if u}, b"SPECIAL-USE"
    else:
        selected, criterion = candidates, b""
    shown = {n for n in selected if matches(n)}
    childinfo: set[str] = set()
    if "RECURSIVEMATCH" in req.select:
        # RFC 9051 6.3.9.6 (RFC 5258 3.5): CHILDINFO for a listed name with a selected
        # descendant, whether the descendant matches the pattern or not (Table 3, and
        # "eps2" in example 8); a name that is listed only for its CHILDINFO is left
        # out when every such descendant is listed anyway ("suppress redundant").
        for n in selected:
            up = [a for a in _ancestors(n) if matches(a)]
            childinfo.update(a for a in up if a in shown or not matches(n))
    out = []
    for name in sorted(shown | childinfo, key=_sort_key):
        attrs = []
        if name not in real:
            # rev2 (RFC 9051 7.3.1) says \NonExistent for a hierarchy name that is no mailbox
            attrs.append(b"\\NonExistent" if name not in candidates or new_rev
                         else b"\\Noselect")
        attrs.append(b"\\HasChildren" if name in parents else b"\\HasNoChildren")
        if wants_subs and name in subs:
            attrs.append(b"\\Subscribed")
        if name in real:
            use = uses[name] if name in uses else await _special_use(s, name)
            if use:
                attrs.append(use.encode("ascii"))
        # LIST-STATUS (RFC 5819 2, RFC 9051 6.3.9.2): for selectable mailboxes that meet
        # the selection options, not for those listed only for CHILDINFO (example 11);
        # one that went away meanwhile is listed \Noselect, without STATUS.
        status = b""
        if req.status_items and name in real and name in shown:
            try:
                folder = await s.account.open_folder(name)
            except NoSuchFolder:
                attrs.insert(0, b"\\Noselect")
            else:
                status = await status_response(s, folder, req.status_items)
        line = b"* LIST (" + b" ".join(attrs) + b') "." ' + wire_name(name, utf8)
        if name in childinfo and criterion:
            line += b' ("CHILDINFO" ("' + criterion + b'"))'
        out.append(line + b"\r\n" + status)
    s.send(b"".join(out))
    return b"LIST completed"


async def _special_use(s: IMAPServer, name: str) -> str | None:
    if name == "INBOX":
        return None
    try:
        folder = await s.account.open_folder(name)
    except NoSuchFolder:
        return None
    return folder.special_use


async def lsub(s: IMAPServer, cmd: parser.Command) -> bytes:
    ref, pat = _list_pattern(s, cmd)
    if pat == "":
        s.send(b'* LSUB (\\Noselect) "." ""\r\n')
        return b"LSUB completed"
    rx = pattern_regex(ref + pat)
    subs = set(await s.account.subscriptions())
    out = []
    shown = set()
    for name in sorted(subs, key=_sort_key):
        if rx.fullmatch(name):
            shown.add(name)
            out.append((name, b""))
            continue
        # RFC 3501 6.3.9: "%" must return an unsubscribed parent as \Noselect.
        for anc in _ancestors(name):
            if anc not in subs and anc not in shown and rx.fullmatch(anc):
                shown.add(anc)
                out.append((anc, b"\\Noselect"))
    utf8 = rev2.utf8_names(s)
    s.send(b"".join(b"* LSUB (" + attrs + b') "." ' + wire_name(n, utf8) + b"\r\n"
                    for n, attrs in sorted(out, key=lambda x: _sort_key(x[0]))))
    return b"LSUB completed"


async def status(s: IMAPServer, cmd: parser.Command) -> bytes:
    if len(cmd.args) != 2:
        raise Bad("STATUS expects a mailbox name and a list of items")
    name = mailbox_name(cmd.args[0], rev2.utf8_names(s))
    items = parser.parse_status_items(cmd.args[1])
    rev2.check_status_items(s, items)
    try:
        folder = await s.account.open_folder(name)
    except NoSuchFolder:
        raise No("[NONEXISTENT] Mailbox does not exist") from None
    s.send(await status_response(s, folder, items))
    return b"STATUS completed"


async def status_response(s: IMAPServer, folder: IFolder, items: Sequence[str]) -> bytes:
    """One ``* STATUS`` line (STATUS and LIST-STATUS): SIZE is RFC 8438's, APPENDLIMIT
    RFC 7889's, DELETED and DELETED-STORAGE RFC 9208's."""
    await folder.refresh()  # files other programs added, renamed or removed
    _, flags, in_new, sizes, _ = folder_columns(folder)
    values = {
        "MESSAGES": lambda: len(flags),
        "RECENT": lambda: sum(1 for r in in_new if r),
        "UIDNEXT": lambda: folder.uid_next,
        "UIDVALIDITY": lambda: folder.uid_validity,
        "UNSEEN": lambda: sum(1 for f in flags if "\\Seen" not in f),
        "SIZE": lambda: sum(sizes),
        "APPENDLIMIT": lambda: s.settings.max_literal_size,
        # RFC 9051 and RFC 9208 (QUOTA): what an EXPUNGE would free.
        "DELETED": lambda: sum(1 for f in flags if "\\Deleted" in f),
        "DELETED-STORAGE": lambda: sum(n for f, n in zip(flags, sizes, strict=True)
                                       if "\\Deleted" in f),
        "HIGHESTMODSEQ": lambda: folder.highest_modseq,
        "MAILBOXID": lambda: objects.status_value(folder),  # RFC 8474
    }
    body = b" ".join(b"%s %s" % (it.encode("ascii"), b"%d" % v if isinstance(v, int) else v)
                     for it in items for v in [values[it]()])
    return (b"* STATUS " + wire_name(folder.name, rev2.utf8_names(s)) + b" (" + body
            + b")\r\n")


async def namespace(s: IMAPServer, cmd: parser.Command) -> bytes:
    if cmd.args:
        raise Bad("NAMESPACE takes no arguments")
    s.send(b'* NAMESPACE (("" ".")) NIL NIL\r\n')
    return b"NAMESPACE completed"


async def append(s: IMAPServer, cmd: parser.Command) -> bytes:
    """APPEND of one message, or several at once (MULTIAPPEND, RFC 3502): all or none."""
    raw_name, messages = parser.parse_append(rev2.unwrap_append(s, cmd.args))
    name = mailbox_name(raw_name, rev2.utf8_names(s))
    streamed = list(s.append_writers)  # literals streamed as they arrived, in order
    account = s.account
    plan: list[tuple[IMessageWriter, frozenset[str], float | None]] = []
    for flags, date, message in messages:
        stream = streamed.pop(0) if not message and streamed else None
        if not message and (stream is None or stream.size == 0):
            raise No("Cannot append an empty message")
        for f in flags:
            if f.startswith("\\") and f not in SYSTEM_FLAGS and f != "\\Recent":
                raise Bad(f"Invalid flag {f}")
        writer: IMessageWriter
        if stream is not None:
            if stream.nul:  # a plain literal, streamed as it came: NUL is not CHAR8
                raise Bad("NUL in a literal: binary data goes in a literal8, ~{n} (RFC 3516)")
            writer = stream
        else:
            message = without_nul(message)  # only a literal8 can hold NUL (RFC 3516 4.4)
            writer = account.new_message()
            for i in range(0, len(message), APPEND_CHUNK):
                writer.write(message[i:i + APPEND_CHUNK])
        plan.append((writer, frozenset(f for f in flags if f != "\\Recent"), date))
    done = await commit_appends(account, name, plan, s.selected)
    s.send(rev2.oldname_line(s, parser.as_string(raw_name), name))  # RFC 9051 6.3.12
    return done


async def commit_appends(account: IMailAccount, name: str,
                         plan: list[tuple[IMessageWriter, frozenset[str], float | None]],
                         selected: SelectedMailbox | None = None) -> bytes:
    """Commit APPEND's messages (one, a MULTIAPPEND's, or CATENATE's) all or none; the
    tagged OK's text. Into the folder the session has selected read-write, the
    messages are this session's \\Recent and no other's (``DeliveryTarget.recent``):
    nothing is left for a claim to rename (issue 16)."""
    own = selected if selected is not None and not selected.readonly \
        and selected.folder.name == name else None
    uids: list[int] = []
    validity = 0
    try:  # the whole MULTIAPPEND must fit
        await check_room(account, sum(w.size for w, _, _ in plan), len(plan))
    except BaseException:
        for writer, _, _ in plan:
            writer.abort()
        raise
    try:
        for n, (writer, keep, date) in enumerate(plan):
            try:
                validity, uid = await account.append(name, writer, keep, date,
                                                     recent=own is None)
                if own is not None and not own.rev2:  # RFC 9051: no \Recent
                    own.recent.add(uid)
            except BaseException:
                for later, _, _ in plan[n + 1:]:
                    later.abort()
                raise
            uids.append(uid)
    except NoSuchFolder:
        raise No("[TRYCREATE] Mailbox does not exist") from None
    except BaseException:
        await _take_back(account, name, uids)
        raise
    return b"[APPENDUID %d %s] APPEND completed" % (validity, format_set(uids))


async def _take_back(account: IMailAccount, name: str, uids: list[int]) -> None:
    """A later message of a MULTIAPPEND failed: the earlier ones go too (RFC 3502 6.3.11)."""
    if not uids:
        return
    folder = await account.open_folder(name)
    await folder.set_flags(uids, ["\\Deleted"], "add")
    await folder.expunge(uids)


HANDLERS = {
    "SELECT": (AUTH, select),
    "EXAMINE": (AUTH, examine),
    "CREATE": (AUTH, create),
    "DELETE": (AUTH, delete),
    "RENAME": (AUTH, rename),
    "SUBSCRIBE": (AUTH, subscribe),
    "UNSUBSCRIBE": (AUTH, unsubscribe),
    "LIST": (AUTH, list_),
    "LSUB": (AUTH, lsub),
    "STATUS": (AUTH, status),
    "NAMESPACE": (AUTH, namespace),
    "APPEND": (AUTH, append),
}
