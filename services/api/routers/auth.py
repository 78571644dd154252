"""POST /v1/auth/login: a one-time link that logs a browser in to the TCP listener."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from npllm.errors import ConflictError
from services.api.deps import ServiceDep
from services.api.guard import SESSION_TTL_S
from services.api.spec import errors
from services.auth import tcp_address

router = APIRouter()


@router.post("/v1/auth/login", responses=errors(409))
def login_link(service: ServiceDep) -> dict[str, Any]:
    """A URL that works once, for `login.expires_in` seconds: opened in a browser it sets
    an HttpOnly, SameSite=Strict session cookie and drops the token from the address
    (services/api/guard.py). Asked over the Unix socket or with the key."""
    if service.key_file is None:
        raise ConflictError(
            "no TCP listener: set server.tcp_port (and restart) to open npllm in a browser"
        )
    token, ttl = service.logins.issue()
    return {
        "url": f"http://{tcp_address(service.settings)}/?token={token}",
        # The browser's session (a cookie) lasts this long, or until restart or rotation.
        "session_s": SESSION_TTL_S,
        "token": token,
        "expires_in": ttl,
    }
