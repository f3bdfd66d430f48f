"""Commands of any state and of the not-authenticated state (RFC 3501 6.1, 6.2).

CAPABILITY, NOOP, LOGOUT, ID (RFC 2971), ENABLE (RFC 5161), COMPRESS (RFC 4978), STARTTLS, LOGIN and
AUTHENTICATE PLAIN (with SASL-IR, RFC 4959). Authentication always goes through
``LoginService`` so throttling and logging are the same as for SMTP and POP3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailhost.auth.login import LoginFailed
from mailhost.auth.sasl import SASLError, decode_plain
from mailhost.imap import parser
from mailhost.imap.responses import AlreadyReplied, Bad, No
from mailhost.imap.states import ANY, AUTH, LOGOUT, NOAUTH

if TYPE_CHECKING:
    from mailhost.imap.server import IMAPServer


def _no_args(cmd: parser.Command) -> None:
    if cmd.args:
        raise Bad(f"{cmd.name} takes no arguments")


async def capability(s: IMAPServer, cmd: parser.Command) -> bytes:
    _no_args(cmd)
    s.send(b"* CAPABILITY " + s.capability_string() + b"\r\n")
    return b"CAPABILITY completed"


async def noop(s: IMAPServer, cmd: parser.Command) -> bytes:
    _no_args(cmd)
    sel = s.selected
    if sel is not None:
        # Pick up files other programs dropped into the Maildir.
        await sel.folder.refresh()
    return b"NOOP completed"


async def logout(s: IMAPServer, cmd: parser.Command) -> bytes:
    _no_args(cmd)
    s.send(b"* BYE Logging out\r\n")
    s.unselect()
    s.state = LOGOUT
    return b"LOGOUT completed"


async def id_(s: IMAPServer, cmd: parser.Command) -> bytes:
    if len(cmd.args) != 1 or not (isinstance(cmd.args[0], list) or
                                  (isinstance(cmd.args[0], parser.Atom) and cmd.args[0].is_nil)):
        raise Bad("ID expects NIL or a parameter list")
    s.send(b'* ID ("name" "mailhost" "vendor" "mailhost")\r\n')
    return b"ID completed"


async def enable(s: IMAPServer, cmd: parser.Command) -> bytes:
    """ENABLE (RFC 5161): each extension that needs enabling switches itself on
    (CONDSTORE and QRESYNC: ``condstore.enable``; IMAP4rev2 and UTF8=ACCEPT:
    ``rev2.enable``); other names are ignored."""
    from mailhost.imap import condstore, rev2

    if not cmd.args or not all(isinstance(a, parser.Atom) for a in cmd.args):
        raise Bad("ENABLE expects capability names")
    names = [a.upper() for a in cmd.args]
    done = rev2.enable(s, names) + condstore.enable(s, names)
    s.send(b"* ENABLED" + b"".join(b" " + n.encode("ascii") for n in done) + b"\r\n")
    return b"ENABLE completed"


async def starttls(s: IMAPServer, cmd: parser.Command) -> bytes | None:
    _no_args(cmd)
    if s.tls_options is None:
        raise Bad("STARTTLS not available")
    if s.tls_active:
        raise Bad("TLS is already active")
    s.send(cmd.tag.encode("ascii") + b" OK Begin TLS negotiation now\r\n")
    s.start_tls()
    raise AlreadyReplied()


async def compress(s: IMAPServer, cmd: parser.Command) -> bytes | None:
    """RFC 4978: the OK goes out plain, everything after it compressed."""
    if len(cmd.args) != 1 or not isinstance(cmd.args[0], parser.Atom):
        raise Bad("COMPRESS expects a mechanism")
    if cmd.args[0].upper() != "DEFLATE":
        raise Bad("Unknown compression mechanism")
    if s.compressing:
        raise No("[COMPRESSIONACTIVE] DEFLATE is already active")
    s.send(cmd.tag.encode("ascii") + b" OK DEFLATE active\r\n")
    s.start_compress()
    raise AlreadyReplied()


def _text(token: object, what: str) -> str:
    raw = parser.as_string(token, what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Bad(f"{what} is not UTF-8") from None


async def _login(s: IMAPServer, user: str, password: str) -> bytes:
    try:
        avatar = await s.login_service.login(user, password, s.peer, "imap")
    except LoginFailed as e:
        if e.reason == "throttled":
            raise No("[UNAVAILABLE] Too many failed logins; try again later") from None
        if e.reason == "error":  # logged by the LoginService
            raise No("[UNAVAILABLE] Temporary server failure; try again later") from None
        raise No("[AUTHENTICATIONFAILED] Authentication failed") from None
    s.logged_in(avatar)
    return b"[CAPABILITY " + s.capability_string() + b"] Logged in"


async def login(s: IMAPServer, cmd: parser.Command) -> bytes:
    if len(cmd.args) != 2:
        raise Bad("LOGIN expects a user name and a password")
    if not s.plaintext_allowed():
        raise No("[PRIVACYREQUIRED] Plaintext authentication disallowed without TLS")
    return await _login(s, _text(cmd.args[0], "user name"), _text(cmd.args[1], "password"))


async def authenticate(s: IMAPServer, cmd: parser.Command) -> bytes:
    if not cmd.args or len(cmd.args) > 2 or not isinstance(cmd.args[0], parser.Atom):
        raise Bad("AUTHENTICATE expects a mechanism")
    if cmd.args[0].upper() != "PLAIN":
        raise No("[CANNOT] Unsupported authentication mechanism")
    if not s.plaintext_allowed():
        raise No("[PRIVACYREQUIRED] Plaintext authentication disallowed without TLS")
    if len(cmd.args) == 2:
        response = parser.as_string(cmd.args[1], "initial response")
    else:
        s.send(b"+ \r\n")
        response = await s.read_line()
        if response is None:
            raise No("Connection closed")
    try:
        authc, password = decode_plain(response)
    except SASLError as e:
        if e.kind == "cancelled":
            raise Bad("AUTHENTICATE cancelled") from None
        if e.kind == "encoding":
            raise Bad("Invalid base64 in AUTHENTICATE response") from None
        if e.kind == "authzid":
            raise No("[AUTHORIZATIONFAILED] Proxy authentication is not supported") from None
        raise No("[AUTHENTICATIONFAILED] Malformed PLAIN response") from None
    return await _login(s, authc, password)


HANDLERS = {
    "CAPABILITY": (ANY, capability),
    "NOOP": (ANY, noop),
    "LOGOUT": (ANY, logout),
    "ID": (ANY, id_),
    "ENABLE": (AUTH, enable),
    "STARTTLS": (NOAUTH, starttls),
    "COMPRESS": (AUTH, compress),
    "LOGIN": (NOAUTH, login),
    "AUTHENTICATE": (NOAUTH, authenticate),
}
