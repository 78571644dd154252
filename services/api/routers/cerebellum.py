"""/v1/cerebellum: the draft model's status, and publishing its versions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from services.api.deps import ServiceDep
from services.api.routers.adapters import PublishIn
from services.api.spec import errors

router = APIRouter(responses=errors(404, 409, 413))


@router.post("/v1/cerebellum/versions", status_code=201)
async def publish_cerebellum(body: PublishIn, service: ServiceDep) -> dict[str, Any]:
    return await service.add_cerebellum(body.path, body.description, body.metrics, body.sleep_cycle)


@router.get("/v1/cerebellum")
def cerebellum_status(service: ServiceDep) -> dict[str, Any]:
    return service.cerebellum_status()
