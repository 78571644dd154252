"""The TCP listener's guard (ASGI middleware): who may talk to the daemon over TCP.

The Unix socket is guarded by its permissions (0600 in a 0700 directory) and passes
through untouched. A request that came over TCP must pass, in this order:

1. **Host** — its Host header names this machine's loopback (localhost, 127.0.0.1, [::1])
   or one of ``server.allowed_hosts``. A DNS-rebinding page reaches 127.0.0.1 under its
   own name (``evil.example``), so its Host gives it away (cf. Ollama's CVE-2024-28224).
2. **Origin** — a request that carries an Origin (every cross-site request a browser
   sends) comes from a page served by an allowed host; a page elsewhere cannot plant a
   memory or a correction, nor read the history, whatever the content type.
3. **Key** — ``Authorization: Bearer <key>`` (the `openai` client's ``api_key``, editors'
   ``apiKey``), compared in constant time, or the session cookie a browser got by
   opening a one-time login URL (``POST /v1/auth/login``: ``/?token=…``), HttpOnly and
   SameSite=Strict so no other site's page can send it.

Refusals name what to do; nothing reaches a route before all three passed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from fastapi.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from services.api.errors import error_response
from services.auth import KeyFile, matches

log = logging.getLogger("npllm.api")

COOKIE = "npllm_session"
LOGIN_TTL_S = 300.0
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def over_tcp(scope: Scope) -> bool:
    """True when the request came over TCP: uvicorn gives a Unix socket's requests no
    (host, port) server address."""
    server = scope.get("server")
    return isinstance(server, (tuple, list)) and len(server) == 2 and server[1] is not None


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(value: str) -> str:
    """The host of a Host header (``[::1]:8080`` → ``::1``, ``Localhost.:80`` → ``localhost``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0].rstrip(".") if value.count(":") == 1 else value.rstrip(".")


def session_value(key: str) -> str:
    """The browser session's cookie: derived from the key, so rotating the key ends it."""
    return hmac.new(key.encode(), b"npllm-browser-session", hashlib.sha256).hexdigest()


class LoginTokens:
    """One-time login tokens for a browser (Jupyter's token URL, but each works once and
    for LOGIN_TTL_S): `npllm dashboard` asks for one over the socket or with the key."""

    def __init__(self) -> None:
        self._tokens: dict[str, float] = {}

    def issue(self) -> tuple[str, float]:
        now = time.monotonic()
        self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
        token = secrets.token_urlsafe(24)
        self._tokens[token] = now + LOGIN_TTL_S
        return token, LOGIN_TTL_S

    def redeem(self, token: str) -> bool:
        expires = self._tokens.pop(token, None)
        return expires is not None and expires > time.monotonic()


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
        self.allowed = {h.lower().strip("[]") for h in (*LOOPBACK_NAMES, *allowed_hosts)}
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

    def check(self, scope: Scope) -> Any:
        headers: dict[bytes, bytes] = {}
        method = scope.get("method", "GET")  # a websocket's handshake is a GET
        for k, v in scope.get("headers") or []:
            headers.setdefault(k, v)  # the first of repeated headers counts
        path = scope["path"]
        host = headers.get(b"host", b"").decode("latin-1")
        if not host:
            return _refuse(path, 400, "a request over TCP must send a Host header", "no_host")
        if not self._allowed_host(host_name(host)):
            return _refuse(
                path,
                403,
                f"Host {host!r} is not this server (it answers to localhost, 127.0.0.1 and "
                "[::1], plus server.allowed_hosts): refused as a possible DNS-rebinding attack",
                "host_not_allowed",
            )
        origin = headers.get(b"origin")
        if origin is not None:
            origin_host = urlsplit(origin.decode("latin-1")).hostname or ""
            if not self._allowed_host(origin_host.lower()):
                return _refuse(
                    path,
                    403,
                    f"requests from web pages at {origin.decode('latin-1')!r} are refused: only "
                    "pages served by this machine (localhost) may call npllm",
                    "origin_not_allowed",
                )
        key = self.key_file.current() if self.key_file is not None else None
        if key is None:
            return _refuse(
                path,
                503,
                "the API key file is missing or unreadable; `npllm key --rotate` writes a new one",
                "no_api_key",
            )
        given = _bearer(headers.get(b"authorization", b"").decode("latin-1"))
        if given is not None and matches(given, key):
            return None
        cookie = _cookie(headers.get(b"cookie", b"").decode("latin-1"))
        if cookie is not None and matches(cookie, session_value(key)):
            return None
        token = _query_token(scope)
        if token is not None and method == "GET":
            if self.logins.redeem(token):
                return _login(scope, key)
            return _refuse(
                path,
                401,
                "this login link was used already or has expired; ask for a new one with "
                "`npllm dashboard`",
                "login_expired",
            )
        what = "a wrong API key" if given is not None else "no API key"
        return _refuse(
            path,
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
    if not value:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(value)
    except Exception:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else None


def _query_token(scope: Scope) -> str | None:
    query = scope.get("query_string", b"").decode("latin-1")
    for k, v in parse_qsl(query, keep_blank_values=True):
        if k == "token":
            return v
    return None


def _login(scope: Scope, key: str) -> RedirectResponse:
    """A redeemed login token: set the session cookie and send the browser to the same
    page without the token (it leaves the address bar and the history)."""
    query = [
        (k, v)
        for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        if k != "token"
    ]
    target = scope["path"] + (f"?{urlencode(query)}" if query else "")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, session_value(key), httponly=True, samesite="strict", path="/")
    return response


def _refuse(
    path: str, status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    # Under /api/ it goes out in Ollama's shape, {"error": "..."} (errors.ErrorJSON).
    return error_response(status, message, code=code, headers=headers)
