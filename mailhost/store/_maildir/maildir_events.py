"""What a run of inotify events says became of a folder's messages, without a listing.

The watch reports every name that appeared in or vanished from new/ and cur/, in
order (a rename is its two halves, queued together). Another program's flag change
(Dovecot's STORE, or another worker of ours) is such a pair; following the names a
message's base went through tells its current name exactly, where a rescan lists the
whole folder under the locks (a 100k-message folder shared with Dovecot was listed
again after every flag change Dovecot made; with ``workers = 2`` each worker listed
after the other's STOREs and EXPUNGEs).

A base that ends with more than one name (a hard link, a duplicate) is not decided
here: the caller rescans, as it does when the kernel's queue overflowed.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field

from mailhost.store._maildir.maildir_names import filename

#: (subdir, file name).
Name = tuple[str, str]


@dataclass
class Folded:
    """``moved``: (base, subdir, file name) of indexed messages now under another
    name; ``gone``: indexed bases no file has any more; ``unknown``: (subdir, file
    name) of bases the index does not have that now have one file."""

    moved: list[tuple[str, str, str]] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    unknown: list[Name] = field(default_factory=list)


def fold_events(events: Iterable[tuple[str, str, bool]],
                current: Callable[[str], tuple[str, str | None] | None],
                skip: Container[str] = ()) -> Folded | None:
    """Fold (subdir, file name, appeared) events, oldest first, into what changed.

    ``current(base)``: the (subdir, info part) the index has for a base, or None for a
    base it does not have; ``skip``: bases whose files we are linking in ourselves
    (their writer settles them). Names that vanish without having been known (the old
    name of a rename of ours the index already shows) change nothing. None: some base
    ends with two or more files, which only a listing can sort out.
    """
    trail: dict[str, set[Name]] = {}
    for sub, name, appeared in events:
        base = name.partition(":")[0]
        if base in skip:
            continue
        names = trail.get(base)
        if names is None:
            now = current(base)
            names = trail[base] = set() if now is None else {(now[0], filename(base, now[1]))}
        if appeared:
            names.add((sub, name))
        else:
            names.discard((sub, name))
    out = Folded()
    for base, names in trail.items():
        if len(names) > 1:
            return None
        now = current(base)
        if now is None:
            out.unknown.extend(names)
        elif not names:
            out.gone.append(base)
        else:
            ((sub, name),) = names
            if (sub, name) != (now[0], filename(base, now[1])):
                out.moved.append((base, sub, name))
    return out
