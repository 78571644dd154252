"""The documented shapes of the main answers (`responses=` of their routes; the routes still
build their JSON themselves, so these document and never filter). The fuzzer
(tests/e2e/test_fuzz.py) validates every answer it gets against them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Open(BaseModel):
    """Documents the fields listed; more may come (additionalProperties)."""

    model_config = ConfigDict(extra="allow")


class Message(Open):
    role: Literal["assistant"]
    content: str


class Choice(Open):
    index: int
    message: Message
    finish_reason: str = Field(description="stop, length or cancelled.")


class Usage(Open):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class NpllmAnswer(Open):
    interaction_id: int | None = Field(description="Send it to POST /v1/feedback.")
    memories: list[dict[str, Any]] = Field(description="The memories put in the prompt.")
    adapters: list[dict[str, Any]] = Field(description="The adapters used, with weights.")
    cached: bool


class ChatCompletion(Open):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    npllm: NpllmAnswer


class ModelCard(Open):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(Open):
    object: Literal["list"]
    data: list[ModelCard]


class StoredChunk(Open):
    id: int
    chunk_index: int
    merged: bool = Field(description="True: merged into a near-duplicate memory.")
    replaced: int | None = Field(
        None,
        description="The memory this one updates (the same note or fact with other values), "
        "now deleted; null when none.",
    )


class MemoryStored(Open):
    document_id: str | None
    data: list[StoredChunk]


class FoundMemory(Open):
    id: int
    text: str
    score: float
    kind: str
    source: str
    created_at: str
    use_count: int


class MemoryList(Open):
    object: Literal["list"]
    data: list[FoundMemory]


class MemoryDeleted(Open):
    id: int
    deleted: Literal[True]


class FeedbackApplied(Open):
    interaction_id: int
    event_ids: list[int]
    reward: float
    quality: float
    tier: str
    priority: float
    corrected: bool


class DatasetImported(Open):
    name: str
    examples: int
    sha256: str
    created_at: str


class DatasetDeleted(Open):
    name: str
    deleted: Literal[True]


class Status(Open):
    status: str
    state: str = Field(description="awake, drowsy, asleep or waking (the sleep state).")
    base_model: str
    counts: dict[str, int]
    queue: dict[str, int]
    engine: dict[str, Any] | None = None
    database: dict[str, Any] | None = None
    replay: dict[str, int] | None = None
    adapters: dict[str, Any] | None = None
    alerts: list[dict[str, Any]] | None = Field(
        None, description="Alert conditions that hold now (GET /v1/alerts?open=true)."
    )


class SleepState(Open):
    state: str
    reason: str | None
    next_window: str | None
    worker_pid: int | None
    latest_cycle: dict[str, Any] | None
    cycles: list[dict[str, Any]]


class ModulatorState(Open):
    parameters: int
    routable: list[str]
    top_k: int
    version: int | None = Field(description="None: untrained (routes by adapter centroids).")
    train: bool


class ModulatorVersions(ModulatorState):
    versions: list[dict[str, Any]]


class AdapterList(Open):
    object: Literal["list"]
    data: list[dict[str, Any]]
    served: dict[str, int] = Field(description="Adapter name → the version served.")
    modulator: ModulatorState


class Pruned(Open):
    pruned: dict[str, Any]


class ObjectList(Open):
    object: Literal["list"]
    data: list[dict[str, Any]]


def documented(
    model: type[BaseModel], status: int = 200, why: str = "Success"
) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": model, "description": why}}
