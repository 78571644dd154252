"""GET /v1/status: models, database, counts, queue and sleep state at a glance."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from services.api.deps import ServiceDep
from services.api.schemas import Status, documented

router = APIRouter()


@router.get("/v1/status", responses=documented(Status))
async def status(service: ServiceDep) -> dict[str, Any]:
    return await service.status()
