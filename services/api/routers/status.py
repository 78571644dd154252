"""GET /v1/status: models, database, counts, queue and sleep state at a glance; GET / (and
HEAD /): a one-line liveness answer, where Ollama's clients look for one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from services.api.deps import ServiceDep
from services.api.schemas import Status, documented

router = APIRouter()


@router.get("/v1/status", responses=documented(Status))
async def status(service: ServiceDep) -> dict[str, Any]:
    return await service.status()


@router.api_route(
    "/",
    methods=["GET", "HEAD"],
    response_class=PlainTextResponse,
    responses={200: {"description": "npllm is running", "content": {"text/plain": {}}}},
)
async def alive() -> str:
    return "npllm is running"
