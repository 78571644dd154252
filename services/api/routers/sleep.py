"""/v1/sleep: the sleep state machine and its cycles; start one now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from services.api.deps import ServiceDep
from services.api.schemas import SleepState, documented
from services.api.spec import errors

router = APIRouter(responses=errors(409, 413))


class SleepIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    now: bool = Field(description="Start a consolidation cycle as soon as no request runs.")
    seed: int | None = Field(None, description="Sampling seed of that cycle (default: time).")


@router.get("/v1/sleep", responses=documented(SleepState))
async def sleep_status(service: ServiceDep) -> dict[str, Any]:
    return await service.sleep_status()


@router.post("/v1/sleep")
async def sleep_now(body: SleepIn, service: ServiceDep) -> dict[str, Any]:
    return await service.sleep_now(body.now, body.seed)
