"""The dashboard: GET /dashboard (the page), its script and style, and GET /v1/dashboard (the
figures the page draws, services/dashboard.py).

Everything the page needs is inside the package (services/api/static/dashboard/): no CDN,
no font, no request to another host; its Content-Security-Policy says so to the browser
too. Over TCP the page is reached through a one-time login link (`npllm dashboard`), as
every route there is guarded (services/api/guard.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from npllm.errors import NotFoundError
from services.api.deps import ServiceDep

router = APIRouter()

STATIC = Path(__file__).resolve().parent.parent / "static" / "dashboard"
# The page's own files and their types: nothing else is served from the folder.
FILES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# Only this origin, no inline script or style, no plugin, no frame, no form anywhere.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _file(name: str, media_type: str) -> Response:
    return Response((STATIC / name).read_bytes(), media_type=media_type, headers=HEADERS)


@router.get("/dashboard", include_in_schema=False)
async def page() -> Response:
    return _file("index.html", "text/html; charset=utf-8")


@router.get("/dashboard/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    """The page's script, style and icon; any other name is not found."""
    if name not in FILES:
        raise NotFoundError(f"no dashboard file {name!r}", param="name")
    return _file(name, FILES[name])


@router.get("/v1/dashboard")
async def figures(
    service: ServiceDep,
    days: Annotated[
        int,
        Query(ge=1, le=366, description="How many days back satisfaction and routing go."),
    ] = 14,
) -> dict[str, Any]:
    """What the dashboard draws: satisfaction over time per adapter and version, canary
    trials, each night's learning report and the retention (R) matrix, the adapters, the
    replay buffer's tiers, routing shares, alerts and the sleep state (docs/dashboard.md)."""
    return await service.dashboard(days)
