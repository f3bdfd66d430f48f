"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256 section 3).

Both take the matching messages as ``Node``s (the number to answer with, which also
breaks ties, the sent date, the base subject) and return the thread tree,
which ``format_threads`` writes as the ``* THREAD`` data: ``(3 6 (4 23)(44 7 96))``,
a dummy parent written as a bare list of its children ``((3)(5))``.

REFERENCES is the RFC's algorithm step by step (after Jamie Zawinski's): link the
References chains without making loops, give every message its parent, gather the
parentless, prune dummies, sort the root set by sent date, merge roots with the same
base subject (steps 5 and 6), and sort every sibling list by sent date, children
before parents, a dummy taking its first child's date. Ties go by sequence number.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import zip_longest

from mailhost.imap.headerindex import Fields

#: Bounds the parent walks that look for loops.
MAX_DEPTH = 100_000


@dataclass(eq=False, slots=True)
class Node:
    """A thread tree node: one message to thread, holding what the algorithms read of
    it and nothing else, or a dummy (``number`` 0: a message referred to, not here).

    One object per message (issue 16: peak RSS; a 100k-message THREAD once made an
    ``Item``, a ``Node`` and an empty child list per message, ~22 MB). The message-id and
    References chain are not kept here: ``references`` reads them once, as it links.
    ``children`` is None for a leaf and the node itself for an only child (most
    messages have at most one reply): a list only from two children on; ``kids()``
    reads it as a sequence. Ties go by ``number``, which follows sequence order (UIDs
    and sequence numbers both ascend with it)."""

    number: int = 0  # what the answer shows: a sequence number or a UID; 0: a dummy
    date: float = 0.0  # sent date (the Date header, else INTERNALDATE)
    base: str = ""  # the base subject
    reply: bool = False  # the subject is a reply or forward
    parent: Node | None = None
    children: Node | list[Node] | None = None  # none, the only one, or two and more

    @property
    def dummy(self) -> bool:
        return self.number == 0

    def kids(self) -> Sequence[Node]:
        """The children, in order."""
        c = self.children
        if c is None:
            return ()
        if isinstance(c, Node):
            return (c,)
        return c

    def sort_key(self) -> tuple[float, int]:
        node: Node = self
        for _ in range(MAX_DEPTH):
            if node.number:
                return node.date, node.number
            c = node.children
            if c is None:
                break
            node = c if isinstance(c, Node) else c[0]
        return 0.0, 0


def item(number: int, date: float, fields: Fields | None) -> Node:
    """The Node of a message with these header ``Fields`` (None: none known); its
    message-id and parents go to ``references`` beside it."""
    if fields is None:
        return Node(number, date)
    return Node(number, date, fields.base, fields.reply)


# ------------------------------------------------------------------ ORDEREDSUBJECT


def ordered_subject(nodes: Sequence[Node]) -> list[Node]:
    """Messages grouped by base subject; each group's first (by sent date) is the parent
    of the rest, in sent-date order; the groups go by their first message's date.
    ``nodes`` are in sequence order (two stable sorts: no key tuple per message)."""
    ordered = sorted(nodes, key=_date)
    ordered.sort(key=_base)
    roots: list[Node] = []
    current: Node | None = None
    for n in ordered:
        if current is None or n.base != current.base:
            current = n
            roots.append(current)
        else:
            _append(current, n)
    roots.sort(key=Node.sort_key)
    return roots


def _date(n: Node) -> float:
    return n.date


def _base(n: Node) -> str:
    return n.base


# ----------------------------------------------------------------------- REFERENCES


def _is_ancestor(a: Node, b: Node) -> bool:
    """Whether ``a`` is ``b`` or above it."""
    node: Node | None = b
    for _ in range(MAX_DEPTH):
        if node is None:
            return False
        if node is a:
            return True
        node = node.parent
    return True  # too deep to tell: treat as a loop, make no link


def _append(parent: Node, child: Node) -> None:
    child.parent = parent
    c = parent.children
    if c is None:
        parent.children = child
    elif isinstance(c, Node):
        parent.children = [c, child]
    else:
        c.append(child)


def _packed(kids: list[Node]) -> Node | list[Node] | None:
    """``Node.children`` holding these."""
    if not kids:
        return None
    return kids[0] if len(kids) == 1 else kids


def _unlink(child: Node) -> None:
    parent = child.parent
    if parent is not None:
        c = parent.children
        if c is child:
            parent.children = None
        else:
            assert isinstance(c, list)
            c.remove(child)
            if len(c) == 1:
                parent.children = c[0]
        child.parent = None


def _link(parent: Node, child: Node) -> None:
    _unlink(child)
    _append(parent, child)


def references(nodes: Sequence[Node], ids: Iterable[str | None] = (),
               parents: Iterable[tuple[str, ...]] = ()) -> list[Node]:
    """The REFERENCES threads of ``nodes`` (in sequence order); ``ids`` and ``parents``
    give each one's Message-ID and References chain (``Fields.parents``), in the same
    order, read one at a time (iterators: no list of 100k parent tuples)."""
    table: dict[str, Node] = {}
    unique = 0
    for node, mid, chain in zip_longest(nodes, ids, parents):
        if node is None:
            break
        other = table.get(mid) if mid is not None else None
        if other is not None and other.number == 0:
            # a dummy made for an earlier reference: this message takes its place
            node.parent, node.children = other.parent, other.children
            up = other.parent
            if up is not None:
                if up.children is other:
                    up.children = node
                else:
                    assert isinstance(up.children, list)
                    up.children[up.children.index(other)] = node
            for c in other.kids():
                c.parent = node
            table[mid] = node  # type: ignore[index]
        else:
            # new, or a duplicate Message-ID: this one gets an id of its own
            unique += 1
            table[mid if mid is not None and other is None else f"\0{unique}"] = node
        # (1A) link the References chain, never making a loop or moving a parent
        prev: Node | None = None
        for ref in chain or ():
            ref_node = table.get(ref)
            if ref_node is None:
                ref_node = table[ref] = Node()
            if (prev is not None and ref_node.parent is None
                    and not _is_ancestor(ref_node, prev)):
                _link(prev, ref_node)
            prev = ref_node
        # (1B) the last reference is this message's parent
        if prev is not None and prev is not node and not _is_ancestor(node, prev):
            _link(prev, node)
        elif prev is None and node.parent is not None:
            _unlink(node)
    # (2) the root set; (3) the id table is no longer needed
    roots = [n for n in table.values() if n.parent is None]
    del table
    # (4) prune dummies
    roots = _prune(roots)
    # (5) sort the root set by sent date (children first, for dummies' dates)
    _sort_tree(roots)
    # (6) merge roots by base subject
    roots = _group_by_subject(roots)
    # (7) sort every sibling list, the root set too
    _sort_tree(roots)
    return roots


def _prune(roots: list[Node]) -> list[Node]:
    """(4) Dummies without children go; a dummy's children take its place, except at
    the root when it has more than one. Iterative, children before parents, so a
    deep thread cannot exhaust the stack."""
    order: list[Node] = []
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n.children is not None:
            order.append(n)
            stack.extend(n.kids())
    for n in reversed(order):
        if all(c.number for c in n.kids()):
            continue
        kept: list[Node] = []
        for c in n.kids():
            if c.number == 0:
                for g in c.kids():
                    g.parent = n
                kept.extend(c.kids())  # already pruned: no dummy among them
            else:
                kept.append(c)
        n.children = _packed(kept)
    out: list[Node] = []
    for n in roots:
        if n.number == 0:
            if n.children is None:
                continue
            if isinstance(n.children, Node):
                n.children.parent = None
                out.append(n.children)
                continue
        out.append(n)
    return out


def _sort_tree(nodes: list[Node]) -> None:
    """Sort ``nodes`` and every sibling list under them (an only child has none)."""
    order: list[list[Node]] = [nodes]
    stack = list(nodes)
    while stack:
        c = stack.pop().children
        if c is None:
            continue
        if isinstance(c, Node):
            stack.append(c)
        else:
            order.append(c)  # after the list holding its parent
            stack.extend(c)
    for siblings in reversed(order):  # children before parents
        siblings.sort(key=Node.sort_key)


def _subject_of(n: Node) -> tuple[str, bool, bool]:
    """(base subject, reply?, dummy?) of a root: a dummy's is its first child's."""
    dummy = n.number == 0
    it = n if not dummy else (n.kids()[0] if n.children is not None else None)
    if it is None or it.number == 0:
        return "", False, dummy
    return it.base, it.reply, dummy


def _group_by_subject(roots: list[Node]) -> list[Node]:
    table: dict[str, Node] = {}
    for n in roots:  # (6B)
        subject, reply, dummy = _subject_of(n)
        if not subject:
            continue
        old = table.get(subject)
        if old is None:
            table[subject] = n
            continue
        _, old_reply, old_dummy = _subject_of(old)
        if (dummy and not old_dummy) or (old_reply and not reply and not old_dummy):
            table[subject] = n
    out: list[Node] = []
    replaced: dict[int, Node] = {}  # id(table node) -> the dummy now standing for it
    for n in roots:  # (6C)
        subject, reply, dummy = _subject_of(n)
        old = table.get(subject) if subject else None
        if old is None or old is n:
            out.append(replaced.get(id(n), n))
            continue
        _, old_reply, old_dummy = _subject_of(old)
        target = replaced.get(id(old), old)
        if target is not old:
            # the table's message already shares a new dummy: this one joins it
            _link(target, n)
        elif old_dummy and dummy:
            for c in list(n.kids()):
                _link(old, c)
        elif old_dummy:
            _link(old, n)
        elif reply and not old_reply:
            _link(old, n)
        else:
            parent = Node()
            replaced[id(old)] = parent
            if old in out:
                out[out.index(old)] = parent
            old.parent = None
            _link(parent, old)
            _link(parent, n)
    return out


# --------------------------------------------------------------------------- output


def format_threads(roots: Iterable[Node], numbers: Mapping[int, int] | None = None) -> bytes:
    """The thread list of ``* THREAD`` (without the ``* THREAD`` itself); ``numbers``
    maps each item's number to the one to show (UIDs to sequence numbers). Written
    into one buffer, not a list of a small bytes object per message."""
    out = bytearray()
    for n in roots:
        out += b"("
        _format(n, numbers, out)
        out += b")"
    return bytes(out)


def _format(node: Node, numbers: Mapping[int, int] | None, out: bytearray) -> None:
    """One thread's list contents; iterative for the same reason as ``_prune``."""
    stack: list[Node | bytes] = [node]
    while stack:
        w = stack.pop()
        if isinstance(w, bytes):
            out += w
            continue
        n = w
        first = True
        for _ in range(MAX_DEPTH):
            if n.number:
                if not first:
                    out += b" "
                out += b"%d" % (n.number if numbers is None else numbers[n.number])
                first = False
            if isinstance(n.children, Node) and n.number:
                n = n.children
                continue
            break
        if n.children is not None:
            if not first:
                out += b" "
            pending: list[Node | bytes] = []
            for c in n.kids():
                pending += [b"(", c, b")"]
            stack.extend(reversed(pending))
