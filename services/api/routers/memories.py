"""/v1/memories: add, search and delete long-term memories."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from npllm.errors import RequestError
from services import catalog
from services.api.deps import ServiceDep
from services.api.errors import error_response
from services.api.schemas import MemoryDeleted, MemoryList, MemoryStored, Open, documented
from services.api.spec import errors

router = APIRouter(responses=errors(404, 413))


class MemoryIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str = Field(min_length=1, description="A note, fact or whole document (chunked).")
    source: str = Field("user", min_length=1, max_length=200)
    kind: Literal["note", "fact", "document"] = "note"


@router.post("/v1/memories", status_code=201, responses=documented(MemoryStored, 201, "Stored."))
def add_memory(body: MemoryIn, service: ServiceDep) -> dict[str, Any]:
    if not body.text.strip():
        raise RequestError("text is only whitespace", param="text")
    return service.awake.remember(body.text, body.source, body.kind)


@router.get("/v1/memories", responses=documented(MemoryList))
def search_memories(
    query: Annotated[str, Query(min_length=1, description="What to look for.")],
    service: ServiceDep,
    k: Annotated[int, Query(ge=1, le=100)] = 5,
    min_score: Annotated[float, Query(ge=-1.0, le=1.0)] = -1.0,
) -> dict[str, Any]:
    found = service.search_memories(query, k, min_score)
    return {
        "object": "list",
        "data": [
            {
                "id": m.id,
                "text": m.text,
                "score": round(float(m.score), 4),
                "kind": m.kind,
                "source": m.source,
                "created_at": m.created_at.isoformat(),
                "use_count": m.use_count,
            }
            for m in found
        ],
    }


class RecentMemory(Open):
    id: int
    text: str
    kind: str
    source: str
    created_at: str
    use_count: int
    decayed_at: str | None = Field(
        None, description="When it left retrieval (memory.decay_days unused); null: it is found."
    )


class RecentMemories(Open):
    object: Literal["list"]
    data: list[RecentMemory]


@router.get("/v1/memories/recent", responses=documented(RecentMemories))
def recent_memories(
    service: ServiceDep,
    kind: Annotated[
        Literal["note", "fact", "document", "exchange"] | None,
        Query(description="Only memories of this kind."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="How many, newest first.")] = 20,
) -> dict[str, Any]:
    """The newest memories first (GET /v1/memories searches them by meaning)."""
    return {"object": "list", "data": catalog.recent_memories(service.database.pool, kind, limit)}


# Before the id route, which would take "recent" for an id and answer 400 (not an integer).
@router.delete("/v1/memories/recent", include_in_schema=False)
def delete_recent() -> JSONResponse:
    return error_response(
        405,
        "/v1/memories/recent lists memories (GET); delete one with DELETE /v1/memories/{id}",
        headers={"allow": "GET"},
    )


@router.delete("/v1/memories/{memory_id}", responses=documented(MemoryDeleted))
def delete_memory(memory_id: int, service: ServiceDep) -> JSONResponse:
    if not service.awake.forget(memory_id):
        return error_response(
            404, f"no memory with id {memory_id}", type_="not_found_error", param="memory_id"
        )
    return JSONResponse({"id": memory_id, "deleted": True})
