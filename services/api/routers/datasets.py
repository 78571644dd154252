"""/v1/datasets: import, list, export and delete datasets of questions and answers."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from consolidation import datasets
from services.api.deps import ServiceDep
from services.api.schemas import DatasetDeleted, DatasetImported, ObjectList, documented
from services.api.spec import errors
from services.api.spec import jsonl as jsonl_response

router = APIRouter(responses=errors(404, 409))

MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "additionalProperties": False,
    "properties": {"role": {"enum": list(datasets.ROLES)}, "content": {"type": "string"}},
}
EXAMPLE_SCHEMA = {
    "type": "object",
    "required": ["messages"],
    "additionalProperties": False,
    "properties": {"messages": {"type": "array", "minItems": 1, "items": MESSAGE}},
}
# A JSON Lines body is described as the array of its lines (OpenAPI 3.2 will name this
# `itemSchema`); each line is one example, and the last message of each is the assistant's
# answer to learn.
IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "description": "JSON Lines: one chat example per line, the last message the "
        "assistant's answer (see docs/api.md). Described as the array of its lines.",
        "content": {
            "application/x-ndjson": {
                "schema": {"type": "array", "minItems": 1, "items": EXAMPLE_SCHEMA},
                "example": [
                    {
                        "messages": [
                            {"role": "user", "content": "What port does Kestrel use?"},
                            {"role": "assistant", "content": "Kestrel uses port 4471."},
                        ]
                    }
                ],
            }
        },
    }
}


def not_examples(name: str) -> None:
    """{name:path} also catches /v1/datasets/{name}/examples, which takes GET only: 405."""
    if name.endswith("/examples"):
        raise HTTPException(
            405,
            "POST and DELETE take a dataset's name; its examples are read with GET",
            headers={"Allow": "GET"},
        )


def jsonl(examples: list[dict[str, Any]]) -> Response:
    """Examples as JSON Lines, one per line."""
    body = "".join(datasets.to_jsonl(e) for e in examples)
    return Response(body, media_type="application/x-ndjson")


@router.get("/v1/datasets", responses=documented(ObjectList))
def list_datasets(service: ServiceDep) -> dict[str, Any]:
    return {"object": "list", "data": datasets.list_datasets(service.database.pool)}


# {name:path} so that a name with a slash gets the name rule, not a bare 404.
@router.post(
    "/v1/datasets/{name:path}",
    status_code=201,
    responses={**errors(413), **documented(DatasetImported, 201, "Imported.")},
    openapi_extra=IMPORT_BODY,
)
async def import_dataset(name: str, request: Request, service: ServiceDep) -> dict[str, Any]:
    not_examples(name)
    data = await request.body()
    return await asyncio.to_thread(datasets.import_dataset, service.database.pool, name, data)


@router.get(
    "/v1/datasets/{name}/examples",
    response_class=Response,
    responses=jsonl_response("The dataset's examples, one JSON object per line."),
)
def dataset_export(name: str, service: ServiceDep) -> Response:
    return jsonl(datasets.dataset_examples(service.database.pool, name))


@router.delete("/v1/datasets/{name:path}", responses=documented(DatasetDeleted))
def delete_dataset(name: str, service: ServiceDep) -> dict[str, Any]:
    not_examples(name)
    datasets.delete_dataset(service.database.pool, name)
    return {"name": name, "deleted": True}
