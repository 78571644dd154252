"""GET /v1/models: the one base LLM npllm serves."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from services.api.deps import ServiceDep
from services.api.schemas import ModelList, documented

router = APIRouter()


@router.get("/v1/models", responses=documented(ModelList))
async def models(service: ServiceDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": service.awake.engine.model_id,
                "object": "model",
                "created": int(service.started_at),
                "owned_by": "npllm",
            }
        ],
    }
