"""Parsing of MAIL FROM / RCPT TO arguments: the path and the ESMTP parameters.

Pure functions over ``str`` (the command line decoded as UTF-8), hypothesis-tested.
Syntax follows RFC 5321 section 4.1.2 with the leniency Postfix users expect: a
space after the colon, a missing pair of angle brackets around a bare address, and
consecutive dots in a local part are accepted. A source route (``@a,@b:user@c``) is
stripped as RFC 5321 section 4.1.1.3 asks, so policy judges only the final mailbox.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from mailhost.smtp.reply import Reply

_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]+\Z")
_ATEXT_UTF8 = re.compile(r"(?:[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]|[^\x00-\x7f])+\Z")
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_\-]*[A-Za-z0-9_])?\Z")
_LABEL_UTF8 = re.compile(r"(?:[A-Za-z0-9_]|[^\x00-\x7f])(?:(?:[A-Za-z0-9_\-]|[^\x00-\x7f])*(?:[A-Za-z0-9_]|[^\x00-\x7f]))?\Z")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*\Z")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+\Z")
_VALUE_UTF8 = re.compile(r"(?:[\x21-\x3c\x3e-\x7e]|[^\x00-\x7f])+\Z")
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

MAX_LOCAL_PART = 64 * 4  # RFC 5321 says 64 octets; SMTPUTF8 local parts can be 4x longer
MAX_DOMAIN = 255


@dataclass(frozen=True)
class Address:
    """A mailbox, or the null path (empty ``local`` and ``domain``).

    ``local`` is the unquoted local part: a quoted ``"a@b"@c`` gives local ``a@b``.
    """

    local: str
    domain: str

    @property
    def is_null(self) -> bool:
        return not self.local and not self.domain

    @property
    def is_ascii(self) -> bool:
        return (self.local + self.domain).isascii()

    def __str__(self) -> str:
        return self._text

    @cached_property
    def _text(self) -> str:
        """The path as written (quoted if it must be); kept, as a message's sender and
        recipient are spelled about ten times each (logs, routing, the Received:
        field: issue 18)."""
        if self.is_null:
            return ""
        local = self.local
        if not _ATEXT_UTF8.match(local) or local.startswith(".") or local.endswith("."):
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{local}@{self.domain}" if self.domain else local

    def canonical(self) -> str:
        """Lower-cased form used for directory lookups and dedupe."""
        return str(self).lower()


NULL_ADDRESS = Address("", "")


@dataclass(frozen=True)
class MailParams:
    size: int | None = None
    body: str | None = None  # "7BIT" or "8BITMIME"
    smtputf8: bool = False
    ret: str | None = None  # "FULL" or "HDRS"
    envid: str | None = None
    auth: str | None = None


@dataclass(frozen=True)
class RcptParams:
    notify: frozenset[str] = field(default_factory=frozenset)
    orcpt: str | None = None


def _syntax(text: str, code: int = 501) -> Reply:
    return Reply(code, "5.5.4" if code != 553 else "5.1.3", text)


def split_path(arg: str) -> tuple[str, str]:
    """Split ``<path> params`` into the path text (brackets kept) and the rest."""
    arg = arg.lstrip(" ")
    if arg.startswith("<"):
        end = arg.find(">")
        if end > 0 and '"' not in arg[:end]:  # no quoted part: the first '>' ends it
            return arg[: end + 1], arg[end + 1 :]
        i = 1
        quoted = False
        while i < len(arg):
            c = arg[i]
            if quoted:
                if c == "\\":
                    i += 1
                elif c == '"':
                    quoted = False
            elif c == '"':
                quoted = True
            elif c == ">":
                return arg[: i + 1], arg[i + 1 :]
            i += 1
        raise _syntax("Syntax error: missing '>' in address")
    head, _, rest = arg.partition(" ")
    return head, " " + rest if rest else ""


def _parse_domain(domain: str, utf8: bool) -> str:
    if not domain or len(domain) > MAX_DOMAIN:
        raise _syntax("Syntax error: bad domain", 553)
    if domain.startswith("["):
        if not domain.endswith("]") or _CONTROL.search(domain) or " " in domain:
            raise _syntax("Syntax error: bad address literal", 553)
        inner = domain[1:-1]
        if not inner or "[" in inner or "]" in inner or "\\" in inner:
            raise _syntax("Syntax error: bad address literal", 553)
        return domain
    label = _LABEL_UTF8 if utf8 else _LABEL
    for part in domain.split("."):
        if not label.match(part) or len(part) > 63:
            raise _syntax("Syntax error: bad domain", 553)
    return domain.lower()


def _parse_local(local: str, utf8: bool) -> str:
    if local.startswith('"'):
        if len(local) < 2 or not local.endswith('"'):
            raise _syntax("Syntax error: bad quoted local part", 553)
        out = []
        i = 1
        end = len(local) - 1
        while i < end:
            c = local[i]
            if c == "\\":
                if i + 1 >= end:
                    raise _syntax("Syntax error: bad quoted local part", 553)
                c = local[i + 1]
                i += 1
            elif c == '"':
                raise _syntax("Syntax error: bad quoted local part", 553)
            if _CONTROL.match(c) or (not utf8 and not c.isascii()):
                raise _syntax("Syntax error: bad character in local part", 553)
            out.append(c)
            i += 1
        value = "".join(out)
    else:
        value = local
        if not (_ATEXT_UTF8 if utf8 else _ATEXT).match(value):
            raise _syntax("Syntax error: bad character in local part", 553)
    if not value or len(value.encode("utf-8")) > MAX_LOCAL_PART:
        raise _syntax("Syntax error: bad local part", 553)
    return value


def parse_address(path: str, utf8: bool = False, allow_null: bool = False,
                  allow_postmaster: bool = False) -> Address:
    """Parse a reverse- or forward-path (with or without angle brackets).

    ``utf8`` allows non-ASCII (the client said SMTPUTF8); ``allow_null`` accepts
    ``<>`` (MAIL FROM); ``allow_postmaster`` accepts the bare ``<postmaster>`` that
    RFC 5321 requires for RCPT.
    """
    text = path
    if text.startswith("<"):
        if not text.endswith(">"):
            raise _syntax("Syntax error: missing '>' in address")
        text = text[1:-1]
    if text == "":
        if allow_null:
            return NULL_ADDRESS
        raise _syntax("Syntax error: empty address", 553)
    if _CONTROL.search(text):
        raise _syntax("Syntax error: control character in address", 553)
    if text.startswith("@"):
        # Source route: "@a,@b:mailbox". Validate the hops, keep only the mailbox.
        route, sep, rest = text.partition(":")
        if not sep:
            raise _syntax("Syntax error: bad source route", 553)
        for hop in route.split(","):
            if not hop.startswith("@"):
                raise _syntax("Syntax error: bad source route", 553)
            _parse_domain(hop[1:], utf8)
        text = rest
    if allow_postmaster and text.lower() == "postmaster":
        return Address("postmaster", "")
    if text.startswith('"'):
        # find the closing quote, honouring backslash escapes
        i = 1
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            if text[i] == '"':
                break
            i += 1
        local_raw, rest = text[: i + 1], text[i + 1 :]
        if not rest.startswith("@"):
            raise _syntax("Syntax error: address needs a domain", 553)
        domain_raw = rest[1:]
    else:
        local_raw, sep, domain_raw = text.rpartition("@")
        if not sep:
            raise _syntax("Syntax error: address needs a domain", 553)
    if not utf8 and not text.isascii():
        raise Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
    return Address(_parse_local(local_raw, utf8), _parse_domain(domain_raw, utf8))


def parse_params(text: str, utf8: bool = False) -> dict[str, str | None]:
    """``KEY[=VALUE] ...`` → ``{"KEY": value or None}``; keywords upper-cased."""
    out: dict[str, str | None] = {}
    for word in text.split(" "):
        if not word:
            continue
        key, sep, value = word.partition("=")
        if not _KEYWORD.match(key):
            raise _syntax(f"Syntax error in parameter: {word[:40]}")
        if sep and not (_VALUE_UTF8 if utf8 else _VALUE).match(value):
            raise _syntax(f"Syntax error in parameter value: {key[:40]}")
        key = key.upper()
        if key in out:
            raise _syntax(f"Duplicate parameter: {key[:40]}")
        out[key] = value if sep else None
    return out


def decode_xtext(value: str) -> str:
    """RFC 3461 xtext → text; raises Reply on malformed input."""
    if not _XTEXT.match(value):
        raise _syntax("Syntax error: bad xtext")
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), value)


def _unsupported(key: str) -> Reply:
    return Reply(555, "5.5.4", f"Unsupported option: {key[:40]}")


def parse_mail_params(params: dict[str, str | None]) -> MailParams:
    size = body = ret = envid = auth = None
    smtputf8 = False
    for key, value in params.items():
        if key == "SIZE":
            if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:
                raise _syntax("Syntax error: bad SIZE value")
            size = int(value)
        elif key == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                raise _unsupported(f"BODY={value}")
            body = value.upper()
        elif key == "SMTPUTF8":
            if value is not None:
                raise _syntax("Syntax error: SMTPUTF8 takes no value")
            smtputf8 = True
        elif key == "RET":
            if value is None or value.upper() not in ("FULL", "HDRS"):
                raise _syntax("Syntax error: bad RET value")
            ret = value.upper()
        elif key == "ENVID":
            if value is None or len(value) > 100:
                raise _syntax("Syntax error: bad ENVID value")
            envid = decode_xtext(value)
        elif key == "AUTH":
            # RFC 4954 section 5: accepted and ignored unless we trust the client.
            if value is None:
                raise _syntax("Syntax error: bad AUTH value")
            auth = value
        else:
            raise _unsupported(key)
    return MailParams(size, body, smtputf8, ret, envid, auth)


_NOTIFY = {"SUCCESS", "FAILURE", "DELAY"}


def parse_rcpt_params(params: dict[str, str | None]) -> RcptParams:
    notify: frozenset[str] = frozenset()
    orcpt = None
    for key, value in params.items():
        if key == "NOTIFY":
            if value is None:
                raise _syntax("Syntax error: bad NOTIFY value")
            words = [w.upper() for w in value.split(",")]
            if words == ["NEVER"]:
                notify = frozenset({"NEVER"})
            elif words and all(w in _NOTIFY for w in words) and len(set(words)) == len(words):
                notify = frozenset(words)
            else:
                raise _syntax("Syntax error: bad NOTIFY value")
        elif key == "ORCPT":
            if value is None or ";" not in value or len(value) > 500:
                raise _syntax("Syntax error: bad ORCPT value")
            addr_type, _, addr = value.partition(";")
            if not _KEYWORD.match(addr_type):
                raise _syntax("Syntax error: bad ORCPT value")
            orcpt = f"{addr_type.lower()};{decode_xtext(addr)}"
        else:
            raise _unsupported(key)
    return RcptParams(notify, orcpt)


def parse_mail_arg(arg: str) -> tuple[Address, MailParams]:
    """Argument of ``MAIL FROM:`` → (sender, params)."""
    path, rest = split_path(arg)
    # SMTPUTF8 must be known before the address is judged.
    params = parse_params(rest, utf8=True)
    mail = parse_mail_params(params)
    if not mail.smtputf8 and not rest.isascii():
        raise _syntax("Syntax error: non-ASCII parameter without SMTPUTF8")
    return parse_address(path, utf8=mail.smtputf8, allow_null=True), mail


def parse_rcpt_arg(arg: str, utf8: bool) -> tuple[Address, RcptParams]:
    """Argument of ``RCPT TO:`` → (recipient, params)."""
    path, rest = split_path(arg)
    params = parse_rcpt_params(parse_params(rest, utf8=utf8))
    return parse_address(path, utf8=utf8, allow_postmaster=True), params
