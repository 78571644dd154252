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
from services.cli import adapter, alerts, chat, dashboard, dataset, feedback, memories, sleep
from services.cli.answer import adapters_used, memories_used, notices, stream_answer
from services.cli.context import client_of, settings_of

app = typer.Typer(
    name="npllm",
    help="npllm: a local sleep-cycle memory daemon around a frozen base LLM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # typer's rich help shows a type after every option, flags too ("--good <bool>");
    # its plain help leaves flags bare, as click does.
    rich_markup_mode=None,
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
    question: Annotated[
        str,
        typer.Argument(
            help="What to ask; - reads the whole question from stdin. Text piped in "
            "otherwise comes before the question, as its context."
        ),
    ],
    max_tokens: Annotated[
        int | None, typer.Option(min=1, help="Longest answer, in tokens.")
    ] = None,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0, help="0 = greedy.")] = 0.0,
) -> None:
    """Ask the running daemon; the answer streams to the terminal, Ctrl-C stops it."""
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": _question(question)}],
        "stream": True,
        "temperature": temperature,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    got = stream_answer(client_of(ctx), body)
    typer.echo()
    iid = got.interaction_id
    if got.meta:
        typer.echo(
            f"[interaction {iid}; adapters: {adapters_used(got.meta)}; memories: "
            f"{memories_used(got.meta)}; {got.meta['timings']['total_ms']:.0f} ms]",
            err=True,
        )
    for line in notices(got, f"npllm feedback {iid} --good, --bad or --text 'BETTER ANSWER'"):
        typer.echo(line, err=True)
    if got.stopped:
        raise typer.Exit(130)


def _question(question: str) -> str:
    """The question to send: `-` is all of stdin; text piped in goes before the question."""
    if question == "-":
        whole = sys.stdin.read() if sys.stdin is not None else ""
        if not whole.strip():
            raise typer.BadParameter("stdin is empty: `npllm ask -` reads the question from it")
        return whole
    if not question.strip():
        raise typer.BadParameter("the question is empty")
    if sys.stdin is None or sys.stdin.isatty():
        return question
    piped = sys.stdin.read()
    return f"{piped.rstrip()}\n\n{question}" if piped.strip() else question


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


app.command("feedback")(feedback.feedback)
app.command("chat")(chat.chat)
app.command("sleep")(sleep.sleep)
app.command("alerts")(alerts.alerts)


@app.command()
def status(ctx: typer.Context) -> None:
    """Show the running daemon's health, models, database and counts."""
    s = client_of(ctx).request("GET", "/v1/status")
    db = s["database"]
    typer.echo(f"state        {s['state']} (up {s['uptime_s']:.0f} s)")
    for k, alert in enumerate(s.get("alerts") or [None]):
        shown = "none" if alert is None else alerts.line(alert)
        typer.echo(f"{'alerts' if k == 0 else '':<13}{shown}")
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
    for t in s.get("canaries", []):
        c, k = t["candidate_arm"], t["control_arm"]
        typer.echo(
            f"canary       {t['adapter']} v{t['candidate']} ({t['share']:.0%}, {c['n']} rated, "
            f"mean {c['mean']:+.2f}) vs v{t['control']} ({k['n']} rated, mean "
            f"{k['mean']:+.2f}); decides by {t['deadline'][:16]}"
        )
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


@app.command("list")
def list_models(ctx: typer.Context) -> None:
    """The base model and the adapters on it, with the version served (like `ollama list`)."""
    client = client_of(ctx)
    base = client.request("GET", "/v1/status")["base_model"]
    found = client.request("GET", "/v1/adapters")
    rows = [(base, "base", "yes", "-", "-")]
    for a in found["data"]:
        served = found["served"].get(a["name"])
        newest = a["versions"][-1]["created_at"][:16].replace("T", " ") if a["versions"] else "-"
        state = f"v{served}" if served else (a["status"] if a["status"] != "active" else "no")
        rows.append((a["name"], "adapter", state, str(len(a["versions"])), newest))
    width = max(len(r[0]) for r in rows) + 2
    typer.echo(f"{'NAME':<{width}}{'KIND':<9}{'SERVED':<8}{'VERSIONS':<10}UPDATED")
    for name, kind, served_as, versions, updated in rows:
        typer.echo(f"{name:<{width}}{kind:<9}{served_as:<8}{versions:<10}{updated}")


@app.command()
def ps(ctx: typer.Context) -> None:
    """What is loaded and running: base model, engine, adapters, queue, sleep state."""
    s = client_of(ctx).request("GET", "/v1/status")
    e, q = s["engine"], s["queue"]
    served = ", ".join(f"{n} v{v}" for n, v in s["adapters"]["served"].items()) or "none"
    c = s["cerebellum"]
    drafting = "off" if c["role"] == "off" else (f"v{c['version']}" if c["drafting"] else "idle")
    typer.echo(f"base model  {s['base_model']}")
    typer.echo(
        f"engine      {e['engine']} {e['version']}, {e['threads']} threads, "
        f"context {e.get('context_length', '?')}"
    )
    typer.echo(f"adapters    {served}")
    typer.echo(f"cerebellum  {drafting}")
    typer.echo(f"queue       {q['running']} running, {q['waiting']} waiting (size {q['size']})")
    typer.echo(f"state       {s['state']} (up {s['uptime_s']:.0f} s)")


@app.command()
def key(
    ctx: typer.Context,
    rotate: Annotated[
        bool, typer.Option("--rotate", help="Replace the key; the old one stops working now.")
    ] = False,
) -> None:
    """Print the API key TCP clients must send (made on first use; no daemon needed)."""
    from services import auth

    settings = settings_of(ctx)
    value = auth.rotate(settings) if rotate else auth.load_or_create(settings)
    typer.echo(value)
    port = settings.server.tcp_port
    where = (
        f"to http://127.0.0.1:{port}"
        if port
        else "once server.tcp_port is set (it is 0: only the Unix socket, which needs no key)"
    )
    rotated = "new key: the old one no longer works. " if rotate else ""
    typer.echo(
        f"{rotated}Send it as the header `Authorization: Bearer <key>` {where}; "
        f"kept in {auth.key_path(settings)}",
        err=True,
    )


app.command("dashboard")(dashboard.dashboard)
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
