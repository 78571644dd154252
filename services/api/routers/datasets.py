"""/v1/datasets: import, list, export and delete datasets of questions and answers."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from consolidation import datasets
from services.api.deps import ServiceDep

router = APIRouter()


def jsonl(examples: list[dict[str, Any]]) -> Response:
    """Examples as JSON Lines, one per line."""
    body = "".join(datasets.to_jsonl(e) for e in examples)
    return Response(body, media_type="application/x-ndjson")


@router.get("/v1/datasets")
def list_datasets(service: ServiceDep) -> dict[str, Any]:
    return {"object": "list", "data": datasets.list_datasets(service.database.pool)}


# {name:path} so that a name with a slash gets the name rule, not a bare 404.
@router.post("/v1/datasets/{name:path}", status_code=201)
async def import_dataset(name: str, request: Request, service: ServiceDep) -> dict[str, Any]:
    data = await request.body()
    return await asyncio.to_thread(datasets.import_dataset, service.database.pool, name, data)


@router.get("/v1/datasets/{name}/examples")
def dataset_export(name: str, service: ServiceDep) -> Response:
    return jsonl(datasets.dataset_examples(service.database.pool, name))


@router.delete("/v1/datasets/{name:path}")
def delete_dataset(name: str, service: ServiceDep) -> dict[str, Any]:
    datasets.delete_dataset(service.database.pool, name)
    return {"name": name, "deleted": True}
