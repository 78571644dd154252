"""/v1/alerts: the alerts raised (services/alerts.py), and a check of their conditions now."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field

from npllm.errors import ConflictError
from services.alerts import Alerts
from services.api.deps import ServiceDep
from services.api.schemas import Open, documented
from services.api.service import Service
from services.api.spec import errors
from services.watch import Watcher

router = APIRouter()


class AlertOut(Open):
    id: int | None = Field(description="None: raised while the database was down, not stored yet.")
    kind: str = Field(
        description="satisfaction_drop, canary_rolled_back, failed_cycles, low_disk or "
        "database_unreachable."
    )
    severity: Literal["warning", "critical"]
    message: str
    details: dict[str, Any]
    command: dict[str, Any] | None = Field(
        description='What alerts.command did: {"exit", "stderr"} or {"error"}; None: none ran '
        "(or it is still running)."
    )
    raised_at: str
    resolved_at: str | None


class AlertList(Open):
    object: Literal["list"]
    data: list[AlertOut]


class Checked(Open):
    raised: list[AlertOut] = Field(description="The alerts this check raised.")
    open: list[AlertOut] = Field(description="The conditions that hold now.")


def _alerts(service: Service) -> tuple[Alerts, Watcher]:
    if service.alerts is None or service.watcher is None:
        raise ConflictError("alerts are not checked in this process (no daemon watcher)")
    return service.alerts, service.watcher


@router.get("/v1/alerts", responses={**documented(AlertList), **errors(409)})
def list_alerts(
    service: ServiceDep,
    open_only: Annotated[
        bool,
        Query(alias="open", description="Only the conditions that hold now (their newest alert)."),
    ] = False,
    limit: Annotated[int, Query(ge=1, le=1000, description="How many, newest first.")] = 100,
) -> dict[str, Any]:
    alerts, _ = _alerts(service)
    return {"object": "list", "data": alerts.listing(open_only=open_only, limit=limit)}


@router.post("/v1/alerts/check", responses={**documented(Checked), **errors(409)})
def check_alerts(service: ServiceDep) -> dict[str, Any]:
    """Check every alert condition now (the watcher does it every alerts.check_every_s)."""
    alerts, watcher = _alerts(service)
    raised = watcher.run_now("alerts")
    return {"raised": [a.as_json() for a in raised], "open": alerts.open_alerts()}
