"""/v1/replay: the replay buffer by tier, and its examples as JSON Lines."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from consolidation import datasets
from npllm import replay
from npllm.replay import TIERS
from services.api.deps import ServiceDep
from services.api.routers.datasets import jsonl
from services.api.schemas import ObjectList, documented
from services.api.spec import jsonl as jsonl_response

router = APIRouter()


@router.get("/v1/replay", responses=documented(ObjectList))
def replay_overview(service: ServiceDep) -> dict[str, Any]:
    return {"object": "list", "data": replay.overview(service.database.pool)}


@router.get(
    "/v1/replay/examples",
    response_class=Response,
    responses=jsonl_response("The examples, one JSON object per line."),
)
def replay_export(
    service: ServiceDep,
    tier: Annotated[list[str] | None, Query(description=f"One of {TIERS}; repeatable.")] = None,
    tag: Annotated[list[str] | None, Query(description="Topic tag; repeatable.")] = None,
) -> Response:
    examples = datasets.replay_examples(
        service.database.pool, tier or ("premium", "standard"), tag or ()
    )
    return jsonl(examples)
