"""`npllm memories`: search and delete memories in the running daemon."""

from __future__ import annotations

from typing import Annotated

import typer

from services.cli.context import client_of

app = typer.Typer(help="Search and delete memories in the running daemon.")


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


@app.command("delete")
def memories_delete(
    ctx: typer.Context, memory_id: Annotated[int, typer.Argument(help="The memory's id.")]
) -> None:
    """Forget one memory."""
    client_of(ctx).request("DELETE", f"/v1/memories/{memory_id}")
    typer.echo(f"deleted memory #{memory_id}")
