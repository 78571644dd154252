"""/v1/modulator: the router's status, and publishing or rolling back its trained versions."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from services.api.deps import ServiceDep
from services.api.schemas import ModulatorVersions, documented
from services.api.spec import errors

router = APIRouter(responses=errors(404, 409, 413))


class ModulatorIn(BaseModel):
    """A trained modulator version (stored by a sleep cycle) to route with."""

    model_config = ConfigDict(extra="forbid", strict=True)
    version: int = Field(ge=1, description="The npllm.modulator_versions version.")
    sleep_cycle: int | None = Field(
        None, description="The sleep cycle publishing it (refused if it is no longer running)."
    )


@router.get("/v1/modulator", responses=documented(ModulatorVersions))
def modulator_status(service: ServiceDep) -> dict[str, Any]:
    return service.modulator_status(versions=True)


@router.post("/v1/modulator/versions", status_code=201)
async def publish_modulator(body: ModulatorIn, service: ServiceDep) -> dict[str, Any]:
    return await asyncio.to_thread(service.publish_modulator, body.version, body.sleep_cycle)


@router.post("/v1/modulator/rollback")
async def rollback_modulator(service: ServiceDep) -> dict[str, Any]:
    return await service.rollback_modulator()
