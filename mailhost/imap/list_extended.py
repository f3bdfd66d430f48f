"""LIST's extended syntax: LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819) and the
SPECIAL-USE selection and return options (RFC 6154).

``LIST (selection options) reference (patterns) RETURN (return options)``; the basic
``LIST reference pattern`` is the same request with no options. Parsing is kept apart
from running (``commands_mailbox.list_``) so hypothesis can drive it alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailhost.imap import parser, rev2
from mailhost.imap.responses import Bad

SELECT_OPTIONS = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
RETURN_OPTIONS = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})


@dataclass(frozen=True)
class ListRequest:
    reference: str
    patterns: tuple[str, ...]
    select: frozenset[str] = frozenset()
    returns: frozenset[str] = frozenset()
    status_items: tuple[str, ...] = ()

    @property
    def extended(self) -> bool:
        """Selection options narrow the answer to what they select."""
        return bool(self.select - {"REMOTE"})


def _atoms(token: object, what: str) -> list[str]:
    if not isinstance(token, list):
        raise Bad(f"LIST {what} must be a parenthesized list")
    out = []
    for item in token:
        if not isinstance(item, parser.Atom):
            raise Bad(f"LIST {what}: {item!r} is not an option name")
        out.append(item.upper())
    return out


def _name(token: object, what: str, utf8: bool) -> str:
    return rev2.decode_name(parser.as_string(token, what), utf8)


def parse_list(args: list[object], utf8: bool = False) -> ListRequest:
    """The LIST command's arguments as a request; ``Bad`` for anything RFC 5258's
    grammar does not allow (unknown options, RECURSIVEMATCH alone, no pattern).
    ``utf8``: names are UTF-8, not modified UTF-7 (mailhost.imap.rev2)."""
    args = list(args)
    select: list[str] = []
    # RFC 5258 3 (RFC 9051 6.3.9): selection options, a list of patterns or return
    # options make the syntax extended, where an empty pattern means nothing at all.
    extended = len(args) > 2 or any(isinstance(a, list) for a in args[:2])
    if args and isinstance(args[0], list):
        select = _atoms(args.pop(0), "selection options")
        unknown = set(select) - SELECT_OPTIONS
        if unknown:
            raise Bad(f"Unknown LIST selection option {sorted(unknown)[0]}")
        if "RECURSIVEMATCH" in select and not set(select) - {"RECURSIVEMATCH", "REMOTE"}:
            raise Bad("RECURSIVEMATCH needs another selection option")
    if len(args) < 2:
        raise Bad("LIST expects a reference and a mailbox pattern")
    reference = _name(args.pop(0), "reference", utf8)
    pattern = args.pop(0)
    if isinstance(pattern, list):
        if not pattern:
            raise Bad("LIST expects at least one pattern")
        patterns = tuple(_name(p, "mailbox pattern", utf8) for p in pattern)
    else:
        patterns = (_name(pattern, "mailbox pattern", utf8),)
    if extended:
        patterns = tuple(p for p in patterns if p)
    returns: list[str] = []
    items: list[str] = []
    if args:
        keyword = args.pop(0)
        if not (isinstance(keyword, parser.Atom) and keyword.upper() == "RETURN") or not args:
            raise Bad("LIST expects RETURN (options) after the patterns")
        options = args.pop(0)
        if not isinstance(options, list):
            raise Bad("LIST return options must be a parenthesized list")
        i = 0
        while i < len(options):
            option = options[i]
            if not isinstance(option, parser.Atom) or option.upper() not in RETURN_OPTIONS:
                raise Bad(f"Unknown LIST return option {option!r}")
            if option.upper() == "STATUS":
                if i + 1 >= len(options):
                    raise Bad("LIST RETURN (STATUS) expects a list of items")
                items = parser.parse_status_items(options[i + 1])
                i += 1
            returns.append(option.upper())
            i += 1
    if args:
        raise Bad("LIST: unexpected arguments after the return options")
    return ListRequest(reference, patterns, frozenset(select), frozenset(returns), tuple(items))
