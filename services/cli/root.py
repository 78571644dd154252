"""The `npllm` command. Each subcommand is one typed function.

Errors a user can cause or fix (NpllmError) are printed as one line on stderr
with a non-zero exit code; only bugs show a traceback. The groups' commands live in their
own modules (memories, dataset, adapter), `npllm sleep` in sleep.py.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

import npllm
from npllm.errors import ConfigError, NpllmError
from services.cli import adapter, dataset, memories, sleep
from services.cli.context import client_of, settings_of

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

    if ctx.obj is not None:  # the sleep worker it starts must read the same file
        import os

        os.environ["NPLLM_CONFIG"] = str(Path(ctx.obj).resolve())
    run_daemon(settings_of(ctx))


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
    for event in client_of(ctx).stream_chat(body):
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
    result = client_of(ctx).request(
        "POST", "/v1/memories", json={"text": text, "source": source or "cli", "kind": kind}
    )
    for chunk in result["data"]:
        state = "merged into existing" if chunk["merged"] else "stored as"
        updated = f" (replaces #{chunk['replaced']})" if chunk.get("replaced") else ""
        typer.echo(f"chunk {chunk['chunk_index']}: {state} memory #{chunk['id']}{updated}")


@app.command()
def feedback(
    ctx: typer.Context,
    interaction_id: Annotated[int, typer.Argument(help="The interaction (shown after `ask`).")],
    good: Annotated[bool, typer.Option("--good", help="The answer was good (rating 1).")] = False,
    bad: Annotated[bool, typer.Option("--bad", help="The answer was bad (rating -1).")] = False,
    rating: Annotated[
        float | None, typer.Option(help="A rating from -1 (bad) to 1 (good).")
    ] = None,
    comment: Annotated[str | None, typer.Option(help="What you think, in words.")] = None,
    event: Annotated[
        str | None,
        typer.Option(help="accepted|copied|applied|edited|regenerated|rejected|abandoned"),
    ] = None,
    edit: Annotated[
        Path | None,
        typer.Option(help="A file with your corrected answer (sends event 'edited')."),
    ] = None,
) -> None:
    """Tell npllm what you thought of an answer; it learns from it while asleep."""
    if good and bad:
        raise typer.BadParameter("give --good or --bad, not both")
    if (good or bad) and rating is not None:
        raise typer.BadParameter("give --good/--bad or --rating, not both")
    body: dict[str, Any] = {"interaction_id": interaction_id}
    if good or bad:
        body["rating"] = 1.0 if good else -1.0
    elif rating is not None:
        body["rating"] = rating
    if comment is not None:
        body["comment"] = comment
    if edit is not None:
        if event not in (None, "edited"):
            raise typer.BadParameter("--edit sends event 'edited'; drop --event")
        body["event"], body["text"] = "edited", _read_text(edit)
    elif event is not None:
        body["event"] = event
    if len(body) == 1:
        raise typer.BadParameter(
            "say something: --good, --bad, --rating, --comment, --event or --edit"
        )
    r = client_of(ctx).request("POST", "/v1/feedback", json=body)
    implicit = "-" if r["implicit"] is None else f"{r['implicit']:+.2f}"
    emotional = "-" if r["emotional"] is None else f"{r['emotional']:+.2f}"
    memories = r.get("memories", {})
    typer.echo(
        f"interaction {r['interaction_id']}: reward {r['reward']:+.3f} (implicit {implicit}, "
        f"emotional {emotional}), tier {r['tier']}, priority {r['priority']:.3f}"
        + (", learns your corrected answer" if r["corrected"] else "")
    )
    if memories.get("added"):
        typer.echo(
            f"remembered your correction as memory #{memories['added'][0]}; it answers the "
            "same question from now on (and is learned at the next sleep)"
        )
    elif memories.get("removed"):
        typer.echo("that answer's memory is forgotten: it will not be recalled again")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from exc


app.command("sleep")(sleep.sleep)


@app.command()
def status(ctx: typer.Context) -> None:
    """Show the running daemon's health, models, database and counts."""
    s = client_of(ctx).request("GET", "/v1/status")
    db = s["database"]
    typer.echo(f"state        {s['state']} (up {s['uptime_s']:.0f} s)")
    typer.echo(f"base model   {s['base_model']}")
    e = s["engine"]
    typer.echo(f"engine       {e['engine']} {e['version']}, {e['threads']} threads")
    if not s["training"]["trainable"]:
        typer.echo(f"training     NOT TRAINABLE: {s['training']['reason']}")
    typer.echo(f"embedder     {s['embedder']}")
    versions = f"PostgreSQL {db['postgresql']}, pgvector {db['pgvector']}"
    typer.echo(f"database     {db['url']} ({versions})")
    counts = s["counts"]
    typer.echo(f"memories     {counts['memories']}")
    typer.echo(f"interactions {counts['interactions']}")
    tiers = ", ".join(f"{n} {tier}" for tier, n in s["replay"].items())
    typer.echo(f"replay       {tiers}")
    served = ", ".join(f"{n} v{v}" for n, v in s["adapters"]["served"].items()) or "none"
    typer.echo(f"adapters     {served}")
    if s["adapters"]["stale"]:
        stale = ", ".join(s["adapters"]["stale"])
        typer.echo(f"stale        {stale} (trained for another base; to be rebuilt at next sleep)")
    c = s["cerebellum"]
    if c["role"] == "off":
        typer.echo("cerebellum   off")
    else:
        drafting = f"v{c['version']} drafting" if c["drafting"] else "not trained yet"
        typer.echo(f"cerebellum   {drafting} ({c['model']})")
    q = s["queue"]
    typer.echo(f"queue        {q['running']} running, {q['waiting']} waiting (size {q['size']})")
    typer.echo(f"socket       {s['socket']}")


app.add_typer(memories.app, name="memories")
app.add_typer(dataset.app, name="dataset")
app.add_typer(adapter.app, name="adapter")


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
    except typer.TyperException as exc:  # usage errors: shown, with their own exit code
        # typer >= 0.26 vendors click: its usage errors (BadParameter, NoSuchOption, ...)
        # derive from TyperException; the TyperException base itself has no show().
        if not hasattr(exc, "show"):
            raise
        exc.show()
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(result if isinstance(result, int) else 0)
