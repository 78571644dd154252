"""POST /v1/auth/login: a one-time link that logs a browser in to the TCP listener."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from npllm.errors import ConflictError, RequestError
from services.api.deps import ServiceDep
from services.api.guard import SESSION_TTL_S
from services.api.spec import errors
from services.auth import tcp_address

router = APIRouter()

# A page of this server: one leading slash ("//host" is another host to a browser), then
# path characters only (no query, fragment, backslash, space or percent-escape).
PATH_PATTERN = "^/([A-Za-z0-9._~-][A-Za-z0-9._~/-]*)?$"
LOCAL_PATH = re.compile(PATH_PATTERN)


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    path: str = Field(
        "/",
        max_length=200,
        description="The page the link opens, a path on this server (e.g. /dashboard).",
        json_schema_extra={"pattern": PATH_PATTERN},
    )


@router.post("/v1/auth/login", responses=errors(409))
def login_link(service: ServiceDep, body: LoginIn | None = None) -> dict[str, Any]:
    """A URL that works once, for `login.expires_in` seconds: opened in a browser it sets
    an HttpOnly, SameSite=Strict session cookie and drops the token from the address
    (services/api/guard.py). Asked over the Unix socket or with the key; `path` names the
    page it opens (default /; the dashboard: /dashboard)."""
    path = "/" if body is None else body.path
    if not LOCAL_PATH.match(path):
        raise RequestError(
            f"path {path!r} is not a page of this server: give an absolute path such as "
            "/dashboard (one leading slash; letters, digits and . _ ~ / - only)",
            param="path",
        )
    if service.key_file is None:
        raise ConflictError(
            "no TCP listener: set server.tcp_port (and restart) to open npllm in a browser"
        )
    token, ttl = service.logins.issue()
    return {
        "url": f"http://{tcp_address(service.settings)}{path}?token={token}",
        # The browser's session (a cookie) lasts this long, or until restart or rotation.
        "session_s": SESSION_TTL_S,
        "token": token,
        "expires_in": ttl,
    }
