"""/v1/adapters: list, publish, roll back, delete and prune adapter versions; their canary
trials (/v1/canaries, /v1/adapters/{name}/canary)."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from npllm.adapters import check_name
from npllm.embeddings import DATABASE_DIM
from services import catalog
from services.api.deps import ServiceDep
from services.api.schemas import AdapterList, Pruned, documented
from services.api.spec import errors

router = APIRouter(responses=errors(404, 409, 413))


class PublishIn(BaseModel):
    """A trained adapter directory to publish as the next version."""

    model_config = ConfigDict(extra="forbid", strict=True)
    path: str = Field(min_length=1, description="Absolute path of a peft adapter directory.")
    description: str = Field("", max_length=2000, description="What the adapter is for.")
    tags: list[str] = Field(default_factory=list, description="Topic tags.")
    dataset: str | None = Field(
        None, description="Imported dataset it was trained on: its questions set the centroid."
    )
    centroid: list[float] | None = Field(
        None,
        description=f"Where to route ({DATABASE_DIM} numbers), as computed by the sleep cycle.",
    )
    metrics: dict[str, Any] = Field(default_factory=dict, description="Stored with the version.")
    sleep_cycle: int | None = Field(
        None,
        description="The sleep cycle publishing it: the switch happens only while that "
        "cycle's worker is still alive.",
    )
    canary: bool | None = Field(
        None,
        description="Try it on canary.share of the adapter's conversations first (a canary "
        "trial); default: only a sleep cycle's versions are tried, a hand publish goes live.",
    )


class RetireIn(BaseModel):
    """Why an adapter stops being served (its versions are kept)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    reason: str = Field(min_length=1, max_length=2000, description="Why, in a sentence.")
    sleep_cycle: int | None = Field(
        None,
        description="The sleep cycle retiring it: done only while that cycle's worker is alive.",
    )


class CanaryAction(BaseModel):
    """A person's decision on a running canary trial."""

    model_config = ConfigDict(extra="forbid", strict=True)
    action: Literal["promote", "abort"] = Field(
        description="promote: the new version serves everyone; abort: roll back to the "
        "previous one."
    )


@router.get("/v1/adapters", responses=documented(AdapterList))
def list_adapters(service: ServiceDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": service.registry.listing(),
        "served": service.served(),
        "canaries": service.canaries.summary(),
        "modulator": service.modulator_status(),
    }


@router.get("/v1/adapters/{name}")
def show_adapter(name: str, service: ServiceDep) -> dict[str, Any]:
    """One adapter: description, tags, dataset, which version is served, and every version
    with its metrics, the training run that made it and the interactions it learned from
    (the questions it was taught)."""
    check_name(name)
    history = catalog.adapter_history(service.database.pool, name)
    return {**history, "served": service.served().get(name)}


@router.post("/v1/adapters/{name}/versions", status_code=201)
async def publish_adapter(name: str, body: PublishIn, service: ServiceDep) -> dict[str, Any]:
    check_name(name)
    return await service.publish_adapter(
        name,
        body.path,
        body.description,
        body.tags,
        body.dataset,
        body.centroid,
        body.metrics,
        body.sleep_cycle,
        body.canary,
    )


@router.delete("/v1/adapters/{name}")
async def delete_adapter(name: str, service: ServiceDep) -> dict[str, Any]:
    check_name(name)
    work = service.queue.submit(lambda: service.delete_adapter(name), always=True)
    return await asyncio.wrap_future(work)


# Declared after /v1/adapters/{name} as before: that one matches DELETE only.
@router.post("/v1/adapters/prune", responses=documented(Pruned))
def prune_adapters(service: ServiceDep) -> dict[str, Any]:
    """Remove the files of inactive versions beyond training.keep_versions (this also
    happens at every publish); the rows stay, status 'pruned'."""
    return {"pruned": service.prune()}


@router.post("/v1/adapters/{name}/rollback")
async def rollback_adapter(name: str, service: ServiceDep) -> dict[str, Any]:
    return await service.rollback_adapter(name)


@router.post("/v1/adapters/{name}/retire")
async def retire_adapter(name: str, body: RetireIn, service: ServiceDep) -> dict[str, Any]:
    """Stop serving the adapter (a sleep cycle merged it into another); its versions are
    kept: `POST /v1/adapters/{name}/rollback` serves the newest again."""
    check_name(name)
    work = service.queue.submit(
        lambda: service.retire_adapter(name, body.reason, body.sleep_cycle), always=True
    )
    return await asyncio.wrap_future(work)


@router.get("/v1/canaries")
def list_canaries(
    service: ServiceDep,
    adapter: str | None = Query(None, description="Only this adapter's trials."),
    limit: int = Query(50, ge=1, le=1000, description="Newest trials first, at most this many."),
) -> dict[str, Any]:
    """Canary trials, newest first: arms, share, decision, by whom, why, the figures."""
    if adapter is not None:
        check_name(adapter)
    return {"object": "list", "data": service.canaries.rows.listing(adapter, limit),
            "running": service.canaries.summary()}  # fmt: skip


@router.post("/v1/canaries/check")
async def check_canaries(service: ServiceDep) -> dict[str, Any]:
    """Decide the running trials that can be, now (the daemon also does every
    canary.check_every_s seconds)."""
    return {"decided": await asyncio.to_thread(service.canaries.check)}


@router.get("/v1/adapters/{name}/canary")
def show_canary(name: str, service: ServiceDep) -> dict[str, Any]:
    """The adapter's running trial with each arm's rated answers so far (404: none), and
    its earlier trials."""
    check_name(name)
    running = [t for t in service.canaries.summary() if t["adapter"] == name]
    if not running:
        service.canaries.running(name)  # raises the 404
    return {**running[0], "history": service.canaries.rows.listing(name, 20)}


@router.post("/v1/adapters/{name}/canary")
async def decide_canary(name: str, body: CanaryAction, service: ServiceDep) -> dict[str, Any]:
    """Promote or abort the adapter's running trial now."""
    check_name(name)
    return await asyncio.to_thread(service.canaries.act, name, body.action)
