"""The one twisted.web resource of the web UI: access control, the page, the API.

Access: with ``web.username`` and ``web.password`` every request needs HTTP basic
auth; without them only loopback clients are served, and only with a loopback
``Host:`` header, so a web page on another site cannot reach the API through DNS
rebinding. The page is three static files in ``static/`` (no build step, nothing
from the network) and talks only to the REST API, as any other client would.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from importlib import resources
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from mailhost.web.api import Api, ApiError
from mailhost.web.settings import WebSettings

log = Logger()

_STATIC = {
    "": ("index.html", b"text/html; charset=utf-8"),
    "index.html": ("index.html", b"text/html; charset=utf-8"),
    "app.js": ("app.js", b"text/javascript; charset=utf-8"),
    "app.css": ("app.css", b"text/css; charset=utf-8"),
}
#: The page's own CSP: its script and style only, the API of this origin, frames of
#: this origin (the sandboxed HTML body).
PAGE_CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            b"connect-src 'self'; frame-src 'self'; form-action 'none'; base-uri 'none'; "
            b"frame-ancestors 'none'")
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def _static(name: str) -> bytes:
    return resources.files("mailhost.web").joinpath("static", name).read_bytes()


class WebRoot(Resource):
    """Implements: twisted.web IResource for ``/``, ``/static/…`` and ``/api/…``."""

    isLeaf = True

    def __init__(self, api: Api, settings: WebSettings) -> None:
        super().__init__()
        self.api = api
        self.settings = settings

    def render(self, request: Request) -> Any:
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"no-store")
        try:
            self._check_access(request)
            segments = [s.decode("utf-8") for s in request.postpath or []]
        except ApiError as e:
            return self._error(request, e)
        except UnicodeDecodeError:
            return self._error(request, ApiError(400, "the path must be UTF-8"))
        if segments and segments[0] == "api":
            return self._api(request, segments[1:])
        return self._page(request, segments)

    # -- access ---------------------------------------------------------------------

    def _check_access(self, request: Request) -> None:
        if self.settings.basic_auth:
            user, password = request.getUser(), request.getPassword()
            ok_user = hmac.compare_digest(user, self.settings.username.encode())
            ok_password = hmac.compare_digest(password, self.settings.password.encode())
            if not (ok_user and ok_password):
                request.setHeader(b"www-authenticate", b'Basic realm="mailhost"')
                raise ApiError(401, "authentication required")
            return
        peer = request.getClientAddress()
        host = getattr(peer, "host", "")
        if not _is_loopback(host):
            raise ApiError(403, "only loopback clients (set web.username and web.password)")
        name = (request.getRequestHostname() or b"").decode("ascii", "replace").lower()
        if name not in _LOOPBACK_NAMES and not _is_loopback(name.strip("[]")):
            raise ApiError(403, "only a loopback Host: header is served")

    # -- the page -------------------------------------------------------------------

    def _page(self, request: Request, segments: list[str]) -> bytes:
        name = "/".join(segments)
        if name.startswith("static/"):
            name = name[len("static/"):]
        found = _STATIC.get(name)
        if found is None or name == "" and segments not in ([], [""]):
            return self._error(request, ApiError(404, "not found"))
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return self._error(request, ApiError(405, "method not allowed"))
        filename, ctype = found
        request.setHeader(b"content-type", ctype)
        request.setHeader(b"content-security-policy", PAGE_CSP)
        request.setHeader(b"x-frame-options", b"DENY")
        return _static(filename)

    # -- the API --------------------------------------------------------------------

    def _api(self, request: Request, segments: list[str]) -> Any:
        try:
            handler, args = self.api.route(request.method, segments)
        except ApiError as e:
            return self._error(request, e)
        done = [False]
        request.notifyFinish().addBoth(lambda _: done.__setitem__(0, True))
        d: defer.Deferred[Any] = defer.ensureDeferred(handler(request, *args))

        def answer(result: Any) -> None:
            if done[0] or result is None:  # gone, or an open event stream
                return
            if isinstance(result, bytes):
                body = result
            else:
                request.setHeader(b"content-type", b"application/json")
                body = json.dumps(result, separators=(",", ":")).encode()
            request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            if done[0]:
                return
            if failure.check(ApiError):
                error = failure.value
            else:
                log.failure("web API {method} {path} failed", failure,
                            method=request.method.decode(), path=request.path.decode())
                error = ApiError(500, "internal error (see the server log)")
            request.write(self._error(request, error))
            request.finish()

        d.addCallbacks(answer, failed)
        d.addErrback(lambda f: log.failure("answering a web API request failed", f))
        return NOT_DONE_YET

    def _error(self, request: Request, error: ApiError) -> bytes:
        request.setResponseCode(error.status)
        if error.allow:
            request.setHeader(b"allow", error.allow.encode())
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"error": error.message, "status": error.status}).encode()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
