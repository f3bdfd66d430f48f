"""The header block as a milter sees it, and the milter's edits applied to it.

A milter sees each field as (name, value) with folded lines joined by a bare LF, as
Postfix sends them (it keeps lines without CR), and the value's leading space
removed unless it negotiated ``SMFIP_HDR_LEADSPC``. Its edits address fields by
name and occurrence (``SMFIR_CHGHEADER``) or by position (``SMFIR_INSHEADER``) in
the same list, so they are applied to the same parse of the block.

A value a milter sends is never trusted to be well formed: LF becomes CRLF, a line
that does not start with white space is folded (so an edit cannot add a field of
its own), and a NUL or bare CR becomes a space.
"""

from __future__ import annotations

from collections.abc import Iterator

from mailhost.milter.protocol import HeaderChange


def split_fields(block: bytes) -> tuple[list[bytes], bytes]:
    """The header block's fields (each with its continuation lines and CRLF) and what
    follows them (the empty line, or b"" for a block cut short)."""
    fields: list[bytes] = []
    lines = block.split(b"\r\n")
    tail = b""
    # block ends with CRLF CRLF → lines end with ["", ""]; cut short → last is partial.
    if block.endswith(b"\r\n\r\n") or block == b"\r\n":
        lines = lines[:-2]
        tail = b"\r\n"
    elif block.endswith(b"\r\n"):
        lines = lines[:-1]
    elif lines and lines[-1] == b"":
        lines = lines[:-1]
    for line in lines:
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields, tail


def field_name(raw: bytes) -> bytes:
    name, colon, _ = raw.partition(b":")
    return name.strip() if colon else b""


def for_milter(raw: bytes, leading_space: bool) -> tuple[bytes, bytes]:
    """(name, value) of a field as it goes to a milter."""
    name, _, value = raw.partition(b":")
    value = value[:-2] if value.endswith(b"\r\n") else value
    value = value.replace(b"\r\n", b"\n")
    if not leading_space and value[:1] in (b" ", b"\t"):
        value = value[1:]
    return name.strip().replace(b"\0", b" "), value.replace(b"\0", b" ")


def fields_for_milter(block: bytes, leading_space: bool) -> Iterator[tuple[bytes, bytes]]:
    fields, _ = split_fields(block)
    for raw in fields:
        if field_name(raw):
            yield for_milter(raw, leading_space)


def make_field(name: bytes, value: bytes, leading_space: bool) -> bytes:
    """A field from a milter's name and value, made safe (see the module docstring)."""
    name = bytes(c for c in name if 33 <= c <= 126 and c != 58) or b"X-Milter"
    value = value.replace(b"\0", b" ").replace(b"\r\n", b"\n").replace(b"\r", b" ")
    lines = value.split(b"\n")
    folded = [lines[0]] + [ln if ln[:1] in (b" ", b"\t") else b"\t" + ln for ln in lines[1:]]
    value = b"\r\n".join(folded)
    sep = b":" if leading_space else b": "
    return name + sep + value + b"\r\n"


class HeaderEditor:
    """Applies a milter's header changes to one header block, in the order sent."""

    def __init__(self, block: bytes, leading_space: bool = False) -> None:
        self.fields, self.tail = split_fields(block)
        self.leading_space = leading_space

    def add(self, change: HeaderChange) -> None:
        """SMFIR_ADDHEADER: at the end of the header."""
        self.fields.append(make_field(change.name, change.value, self.leading_space))

    def insert(self, change: HeaderChange) -> None:
        """SMFIR_INSHEADER: before the field at ``index`` (0: at the top)."""
        index = min(change.index, len(self.fields))
        self.fields.insert(index, make_field(change.name, change.value, self.leading_space))

    def change(self, change: HeaderChange) -> None:
        """SMFIR_CHGHEADER: the ``index``-th field (from 1) named ``name`` gets the value;
        an empty value deletes it; a missing one is added (as libmilter documents)."""
        wanted = change.name.strip().lower()
        seen = 0
        for i, raw in enumerate(self.fields):
            if field_name(raw).lower() == wanted:
                seen += 1
                if seen == max(change.index, 1):
                    if change.value:
                        self.fields[i] = make_field(change.name, change.value, self.leading_space)
                    else:
                        del self.fields[i]
                    return
        if change.value:
            self.add(change)

    @property
    def block(self) -> bytes:
        return b"".join(self.fields) + self.tail
