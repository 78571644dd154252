"""The TCP listener's guard (ASGI middleware): who may talk to the daemon over TCP.

The Unix socket is guarded by its permissions (0600 in a 0700 directory) and passes
through untouched. A request that came over TCP must pass, in this order:

1. **Host** — its Host header names this machine's loopback (localhost, 127.0.0.1, [::1])
   or one of ``server.allowed_hosts``. A DNS-rebinding page reaches 127.0.0.1 under its
   own name (``evil.example``), so its Host gives it away (cf. Ollama's CVE-2024-28224).
2. **Origin** — a request that carries an Origin (every cross-site request a browser
   sends) comes from a page this listener served: an allowed host *on this listener's
   port* (a page on another localhost port is another site, which any local user may
   run); a page elsewhere cannot plant a memory or a correction, nor read the history,
   whatever the content type.
3. **Key** — ``Authorization: Bearer <key>`` (the `openai` client's ``api_key``, editors'
   ``apiKey``), compared in constant time, or the session cookie a browser got by
   opening a one-time login URL (``POST /v1/auth/login``: ``/?token=…``): HttpOnly,
   SameSite=Strict, a random value kept by the daemon for 12 hours (not derived from the
   key: browsers do not keep cookies apart by port, so another server on this host could
   be handed it), ended by a restart or a key rotation, and accepted only on requests the
   browser marks as coming from npllm's own pages (``Sec-Fetch-Site``).

Refusals name what to do; nothing reaches a route before all three passed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from fastapi.responses import JSONResponse, RedirectResponse
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from npllm.config import is_loopback
from services.api.errors import error_response
from services.auth import KeyFile, matches

log = logging.getLogger("npllm.api")

COOKIE = "npllm_session"
LOGIN_TTL_S = 300.0
SESSION_TTL_S = 12 * 3600.0
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def over_tcp(scope: Scope) -> bool:
    """False only for a request that came over the Unix socket, whose server address
    uvicorn gives as (socket path, None); anything else is guarded (fails closed)."""
    server = scope.get("server")
    unix = (
        isinstance(server, (tuple, list))
        and len(server) == 2
        and isinstance(server[0], str)
        and server[1] is None
    )
    return not unix


def host_name(value: str) -> str:
    """The host of a Host header (``[::1]:8080`` → ``::1``, ``Localhost.:80`` → ``localhost``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0].rstrip(".") if value.count(":") == 1 else value.rstrip(".")


class LoginTokens:
    """One-time login tokens for a browser (Jupyter's token URL, but each works once and for
    LOGIN_TTL_S), and the browser sessions they open: random values kept here (a restart
    ends them), each valid for SESSION_TTL_S and only under the key it was opened with, so
    `npllm key --rotate` ends them all. Not derived from the key: a session cookie a
    browser hands to another server on this host (cookies are not kept apart by port)
    never reveals the key and stops working by itself."""

    def __init__(self) -> None:
        self._tokens: dict[str, float] = {}
        self._sessions: dict[str, tuple[float, str]] = {}  # value → (expiry, key digest)

    def issue(self) -> tuple[str, float]:
        now = time.monotonic()
        self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
        token = secrets.token_urlsafe(24)
        self._tokens[token] = now + LOGIN_TTL_S
        return token, LOGIN_TTL_S

    def redeem(self, token: str) -> bool:
        expires = self._tokens.pop(token, None)
        return expires is not None and expires > time.monotonic()

    def open_session(self, key: str) -> str:
        now = time.monotonic()
        self._sessions = {v: e for v, e in self._sessions.items() if e[0] > now}
        value = secrets.token_urlsafe(32)
        self._sessions[value] = (now + SESSION_TTL_S, _digest(key))
        return value

    def session_valid(self, value: str, key: str) -> bool:
        found = self._sessions.get(value)
        return (
            found is not None
            and found[0] > time.monotonic()
            and hmac.compare_digest(found[1], _digest(key))
        )


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class TcpGuard:
    """ASGI middleware: Host, Origin and key checks for requests over TCP (module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        key_file: KeyFile | None,
        allowed_hosts: tuple[str, ...],
        logins: LoginTokens,
    ) -> None:
        self.app = app
        self.key_file = key_file
        self.extra = {h.lower().strip("[]").rstrip(".") for h in allowed_hosts}
        self.allowed = {*LOOPBACK_NAMES, *self.extra}
        self.logins = logins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not over_tcp(scope):
            await self.app(scope, receive, send)
            return
        refusal = self.check(scope)
        if refusal is not None and scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation
            return
        if refusal is not None:
            client = scope.get("client") or ("?", 0)
            log.warning(
                json.dumps(
                    {
                        "event": "refused",
                        "method": scope.get("method", "WEBSOCKET"),
                        "path": scope["path"],
                        "status": refusal.status_code,
                        "client": f"{client[0]}:{client[1]}",
                    }
                )
            )
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed_host(self, host: str) -> bool:
        return host in self.allowed or is_loopback(host)

    def _own_origin(self, origin: str, scope: Scope) -> bool:
        """A page served by this listener: an allowed host on this listener's port. A page
        on another port of localhost is another site's (any local user may run one); only
        a name in server.allowed_hosts (a proxy in front) may carry another port."""
        try:
            parts = urlsplit(origin)
            port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        except ValueError:
            return False
        host = (parts.hostname or "").lower().rstrip(".")
        if parts.scheme not in ("http", "https") or not self._allowed_host(host):
            return False
        if host in self.extra:
            return True
        server = scope.get("server")
        return isinstance(server, (tuple, list)) and len(server) == 2 and port == server[1]

    def check(self, scope: Scope) -> Any:
        headers: dict[bytes, bytes] = {}
        method = scope.get("method", "GET")  # a websocket's handshake is a GET
        for k, v in scope.get("headers") or []:
            headers.setdefault(k, v)  # the first of repeated headers counts
        host = headers.get(b"host", b"").decode("latin-1")
        if not host:
            return _refuse(400, "a request over TCP must send a Host header", "no_host")
        if not self._allowed_host(host_name(host)):
            return _refuse(
                403,
                f"Host {host!r} is not this server (it answers to localhost, 127.0.0.1 and "
                "[::1], plus server.allowed_hosts): refused as a possible DNS-rebinding attack",
                "host_not_allowed",
            )
        origin = headers.get(b"origin")
        if origin is not None and not self._own_origin(origin.decode("latin-1"), scope):
            return _refuse(
                403,
                f"requests from web pages at {origin.decode('latin-1')!r} are refused: only "
                "pages served by this machine (localhost) may call npllm",
                "origin_not_allowed",
            )
        key = self.key_file.current() if self.key_file is not None else None
        if key is None:
            return _refuse(
                503,
                "the API key file is missing or unreadable; `npllm key --rotate` writes a new one",
                "no_api_key",
            )
        given = _bearer(headers.get(b"authorization", b"").decode("latin-1"))
        if given is not None and matches(given, key):
            return None
        cookie = _cookie(headers.get(b"cookie", b"").decode("latin-1"))
        if cookie is not None and self.logins.session_valid(cookie, key):
            # A browser says where a request comes from: a session's requests must come
            # from its own pages (or be typed in), not from another site on this host.
            site = headers.get(b"sec-fetch-site", b"same-origin").decode("latin-1").lower()
            if site not in ("same-origin", "none"):
                return _refuse(
                    403,
                    f"a browser request from another site ({site}) is refused: open npllm's "
                    "own pages",
                    "cross_site",
                )
            return None
        token = _query_token(scope)
        if token is not None and method == "GET":
            if self.logins.redeem(token):
                return _login(scope, self.logins.open_session(key))
            return _refuse(
                401,
                "this login link was used already or has expired; ask for a new one with "
                "`npllm dashboard`",
                "login_expired",
            )
        what = "a wrong API key" if given is not None else "no API key"
        return _refuse(
            401,
            f"{what}: requests over TCP need `Authorization: Bearer <key>`; "
            "`npllm key` shows the key (the Unix socket needs none)",
            "invalid_api_key",
            {"WWW-Authenticate": 'Bearer realm="npllm"'},
        )


def _bearer(value: str) -> str | None:
    scheme, _, credentials = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def _cookie(value: str) -> str | None:
    # Starlette's parser, as browsers parse: Python's SimpleCookie drops every cookie of a
    # header holding one it finds malformed (another local app's), ours with it.
    return cookie_parser(value).get(COOKIE) if value else None


def _query_token(scope: Scope) -> str | None:
    query = scope.get("query_string", b"").decode("latin-1")
    for k, v in parse_qsl(query, keep_blank_values=True):
        if k == "token":
            return v
    return None


def _login(scope: Scope, session: str) -> RedirectResponse:
    """A redeemed login token: set the session cookie and send the browser to the same
    page without the token (it leaves the address bar and the history)."""
    query = [
        (k, v)
        for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        if k != "token"
    ]
    # One leading slash: "//evil.example/" would send the browser to another host.
    target = "/" + scope["path"].lstrip("/\\") + (f"?{urlencode(query)}" if query else "")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE, session, max_age=int(SESSION_TTL_S), httponly=True, samesite="strict", path="/"
    )
    return response


def _refuse(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    # Under /api/ it goes out in Ollama's shape, {"error": "..."} (errors.ErrorJSON).
    return error_response(status, message, code=code, headers=headers)
