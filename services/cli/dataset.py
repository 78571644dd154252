"""`npllm dataset`: import and export chat-format JSONL datasets."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from services.cli.context import client_of

app = typer.Typer(help="Import and export chat-format JSONL datasets.", rich_markup_mode=None)


@app.command("export")
def dataset_export(
    ctx: typer.Context,
    tier: Annotated[
        list[str] | None,
        typer.Option(
            help="premium, standard or discard (repeatable; default: premium and standard)."
        ),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="Only these topic tags (repeatable).")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Export an imported dataset instead of the replay buffer.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Write the replay buffer (or a dataset) as JSONL: one {"messages": [...]} per line."""
    from consolidation.datasets import check_name

    client = client_of(ctx)
    if dataset is not None:
        check_name(dataset)
        if tier or tag:
            raise typer.BadParameter("--tier/--tag filter the replay buffer, not --dataset")
        text = client.request_text("GET", f"/v1/datasets/{dataset}/examples")
    else:
        text = client.request_text(
            "GET", "/v1/replay/examples", params={"tier": tier or [], "tag": tag or []}
        )
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {text.count(chr(10))} example(s) to {output}", err=True)


@app.command("import")
def dataset_import(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Dataset name: a-z, 0-9, '_' and '-'.")],
    file: Annotated[Path, typer.Argument(help='A JSONL file, one {"messages": [...]} per line.')],
) -> None:
    """Validate a JSONL file and import it whole as a named dataset (or nothing at all)."""
    from consolidation.datasets import check_name

    check_name(name)  # before the name goes into a URL path
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {file}: {exc}") from exc
    r = client_of(ctx).request(
        "POST",
        f"/v1/datasets/{name}",
        content=data,
        headers={"content-type": "application/x-ndjson"},
    )
    typer.echo(f"imported {r['examples']} example(s) into dataset {r['name']!r}")


@app.command("list")
def dataset_list(ctx: typer.Context) -> None:
    """List imported datasets."""
    found = client_of(ctx).request("GET", "/v1/datasets")["data"]
    if not found:
        typer.echo("no datasets; import one with `npllm dataset import NAME FILE.jsonl`")
    for d in found:
        typer.echo(
            f"{d['name']:<24} {d['examples']:>7} example(s)  {d['origin']:<8} {d['created_at']}"
        )


@app.command("delete")
def dataset_delete(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The dataset to delete.")]
) -> None:
    """Delete an imported dataset."""
    from consolidation.datasets import check_name

    check_name(name)
    client_of(ctx).request("DELETE", f"/v1/datasets/{name}")
    typer.echo(f"deleted dataset {name!r}")
