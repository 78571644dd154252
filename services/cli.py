"""The `npllm` command. Each subcommand is one typed function.

Errors a user can cause or fix (NpllmError) are printed as one line on stderr
with a non-zero exit code; only bugs show a traceback.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

import npllm
from npllm.config import Settings, load_settings
from npllm.errors import ConfigError, NpllmError

app = typer.Typer(
    name="npllm",
    help="npllm: a local sleep-cycle memory daemon around a frozen base LLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML file whose keys win over config/npllm.toml and NPLLM_* variables.",
        envvar="NPLLM_CONFIG",
        show_default=False,
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"npllm {npllm.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: ConfigOption = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    ctx.obj = config


def settings_of(ctx: typer.Context) -> Settings:
    """Load the configuration once per command (fails with a one-line ConfigError)."""
    return load_settings(ctx.obj)


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Start (or reach) the database and apply pending sql/ migrations."""
    from npllm.db import Database

    db = Database(settings_of(ctx))
    try:
        applied = db.open(migrate=True)
    finally:
        db.close()
    if applied:
        typer.echo(f"applied {len(applied)} migration(s): {', '.join(applied)}")
    else:
        typer.echo("database is up to date; nothing to apply")


@app.command()
def doctor(ctx: typer.Context) -> None:
    """Check config, database and models; exit non-zero with the reason if something is missing."""
    from services.doctor import run_doctor

    ok = run_doctor(settings_of(ctx), typer.echo)
    raise typer.Exit(0 if ok else 1)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def psql(ctx: typer.Context) -> None:
    """Open the bundled psql on npllm's database (extra arguments go to psql, e.g. -c 'SQL')."""
    from npllm.db import Database, psql_executable

    db = Database(settings_of(ctx))
    try:
        db.open(migrate=False)
        code = subprocess.call([str(psql_executable()), db.dsn, *ctx.args])
    finally:
        db.close()
    raise typer.Exit(code)


@app.command()
def serve(ctx: typer.Context) -> None:
    """Run the daemon in the foreground on its Unix socket (SIGTERM/SIGINT stop it)."""
    from services.daemon import serve as run_daemon

    run_daemon(settings_of(ctx))


def _client(ctx: typer.Context) -> Any:
    from services.client import Client

    return Client(settings_of(ctx).socket_path)


@app.command()
def ask(
    ctx: typer.Context,
    question: Annotated[str, typer.Argument(help="What to ask.")],
    max_tokens: Annotated[int | None, typer.Option(help="Longest answer, in tokens.")] = None,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
) -> None:
    """Ask the running daemon; the answer streams to the terminal."""
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": question}],
        "stream": True,
        "temperature": temperature,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    meta: dict[str, Any] = {}
    for event in _client(ctx).stream_chat(body):
        delta = event["choices"][0]["delta"].get("content")
        if delta:
            typer.echo(delta, nl=False)
        meta = event.get("npllm", meta)
    typer.echo()
    if meta:
        used = ", ".join(f"#{m['id']} ({m['score']:.2f})" for m in meta["memories"]) or "none"
        typer.echo(
            f"[interaction {meta['interaction_id']}; memories used: {used}; "
            f"{meta['timings']['total_ms']:.0f} ms]",
            err=True,
        )


@app.command()
def remember(
    ctx: typer.Context,
    text: Annotated[str | None, typer.Argument(help="The text to remember.")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Remember a whole file (chunked).")
    ] = None,
    source: Annotated[str | None, typer.Option(help="Where it came from.")] = None,
) -> None:
    """Store a memory (TEXT, or --file F) in the running daemon."""
    if (text is None) == (file is None):
        raise typer.BadParameter("give either TEXT or --file F")
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise typer.BadParameter(f"cannot read {file}: {exc}") from exc
        source = source or str(file)
    kind = "document" if file is not None else "note"
    result = _client(ctx).request(
        "POST", "/v1/memories", json={"text": text, "source": source or "cli", "kind": kind}
    )
    for chunk in result["data"]:
        state = "merged into existing" if chunk["merged"] else "stored as"
        typer.echo(f"chunk {chunk['chunk_index']}: {state} memory #{chunk['id']}")


memories_app = typer.Typer(help="Search and delete memories in the running daemon.")
app.add_typer(memories_app, name="memories")


@memories_app.command("search")
def memories_search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option(help="How many results.")] = 5,
) -> None:
    """Semantic search over stored memories."""
    found = _client(ctx).request("GET", "/v1/memories", params={"query": query, "k": k})
    if not found["data"]:
        typer.echo("no memories found")
    for m in found["data"]:
        text = m["text"].replace("\n", " ")
        typer.echo(f"#{m['id']:<6} {m['score']:.3f}  [{m['kind']}] {text[:100]}")


@memories_app.command("delete")
def memories_delete(
    ctx: typer.Context, memory_id: Annotated[int, typer.Argument(help="The memory's id.")]
) -> None:
    """Forget one memory."""
    _client(ctx).request("DELETE", f"/v1/memories/{memory_id}")
    typer.echo(f"deleted memory #{memory_id}")


@app.command()
def status(ctx: typer.Context) -> None:
    """Show the running daemon's health, models, database and counts."""
    s = _client(ctx).request("GET", "/v1/status")
    db = s["database"]
    typer.echo(f"state        {s['state']} (up {s['uptime_s']:.0f} s)")
    typer.echo(f"base model   {s['base_model']}")
    typer.echo(f"embedder     {s['embedder']}")
    versions = f"PostgreSQL {db['postgresql']}, pgvector {db['pgvector']}"
    typer.echo(f"database     {db['url']} ({versions})")
    counts = s["counts"]
    typer.echo(f"memories     {counts['memories']}")
    typer.echo(f"interactions {counts['interactions']}")
    q = s["queue"]
    typer.echo(f"queue        {q['running']} running, {q['waiting']} waiting (size {q['size']})")
    typer.echo(f"socket       {s['socket']}")


def main() -> None:
    """Console-script entry point: the only place that calls sys.exit."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        # standalone_mode=False: click hands back Exit codes as the return value and lets
        # our errors through, so they can be printed as one line below.
        result = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except ConfigError as exc:
        typer.echo(f"npllm: {exc}", err=True)
        sys.exit(2)
    except NpllmError as exc:
        typer.echo(f"npllm: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
