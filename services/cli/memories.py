"""`npllm memories`: search and delete memories in the running daemon."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from services.cli.context import client_of

app = typer.Typer(
    help="List, search and delete memories in the running daemon.", rich_markup_mode=None
)


@app.command("search")
def memories_search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option(help="How many results.")] = 5,
) -> None:
    """Semantic search over stored memories."""
    found = client_of(ctx).request("GET", "/v1/memories", params={"query": query, "k": k})
    if not found["data"]:
        typer.echo("no memories found")
    for m in found["data"]:
        text = m["text"].replace("\n", " ")
        typer.echo(f"#{m['id']:<6} {m['score']:.3f}  [{m['kind']}] {text[:100]}")


@app.command("list")
def memories_list(
    ctx: typer.Context,
    kind: Annotated[
        Literal["note", "fact", "document", "exchange"] | None,
        typer.Option(help="Only this kind: note, fact, document or exchange."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many.")] = 20,
) -> None:
    """The most recent memories, newest first."""
    params: dict[str, str | int] = {"limit": limit}
    if kind is not None:
        params["kind"] = kind
    found = client_of(ctx).request("GET", "/v1/memories/recent", params=params)["data"]
    if not found:
        typer.echo(f"no {kind or ''} memories yet".replace("  ", " "))
    for m in found:
        text = m["text"].replace("\n", " ")
        when = m["created_at"][:16].replace("T", " ")
        gone = m.get("decayed_at")
        decayed = f" (decayed {gone[:10]}: no longer recalled)" if gone else ""
        typer.echo(f"#{m['id']:<6} {when}  [{m['kind']}]{decayed} {text[:90]}")


@app.command("delete")
def memories_delete(
    ctx: typer.Context, memory_id: Annotated[int, typer.Argument(help="The memory's id.")]
) -> None:
    """Forget one memory."""
    client_of(ctx).request("DELETE", f"/v1/memories/{memory_id}")
    typer.echo(f"deleted memory #{memory_id}")
