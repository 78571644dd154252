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
from npllm.errors import ClientError, ConfigError, NpllmError

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

    if ctx.obj is not None:  # the sleep worker it starts must read the same file
        import os

        os.environ["NPLLM_CONFIG"] = str(Path(ctx.obj).resolve())
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
    r = _client(ctx).request("POST", "/v1/feedback", json=body)
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


dataset_app = typer.Typer(help="Import and export chat-format JSONL datasets.")
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("export")
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

    client = _client(ctx)
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


@dataset_app.command("import")
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
    r = _client(ctx).request("POST", f"/v1/datasets/{name}", content=data)
    typer.echo(f"imported {r['examples']} example(s) into dataset {r['name']!r}")


@dataset_app.command("list")
def dataset_list(ctx: typer.Context) -> None:
    """List imported datasets."""
    found = _client(ctx).request("GET", "/v1/datasets")["data"]
    if not found:
        typer.echo("no datasets; import one with `npllm dataset import NAME FILE.jsonl`")
    for d in found:
        typer.echo(
            f"{d['name']:<24} {d['examples']:>7} example(s)  {d['origin']:<8} {d['created_at']}"
        )


@dataset_app.command("delete")
def dataset_delete(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The dataset to delete.")]
) -> None:
    """Delete an imported dataset."""
    from consolidation.datasets import check_name

    check_name(name)
    _client(ctx).request("DELETE", f"/v1/datasets/{name}")
    typer.echo(f"deleted dataset {name!r}")


adapter_app = typer.Typer(help="Train, publish, roll back and export LoRA adapters.")
app.add_typer(adapter_app, name="adapter")


@adapter_app.command("list")
def adapter_list(ctx: typer.Context) -> None:
    """Adapters, their versions and which one is served."""
    found = _client(ctx).request("GET", "/v1/adapters")
    if not found["data"]:
        typer.echo("no adapters; train one with `npllm adapter train NAME --dataset D`")
    for a in found["data"]:
        served = found["served"].get(a["name"])
        note = (
            f"serving v{served}"
            if served
            else ("stale: to be rebuilt at next sleep" if a["status"] == "stale" else "not served")
        )
        typer.echo(f"{a['name']:<24} {a['status']:<7} {note}  {a['description'][:40]}")
        for v in a["versions"]:
            reason = f" ({v['reason']})" if v.get("reason") else ""
            typer.echo(f"    v{v['version']:<4} {v['status']:<10}{reason}")
    m = found["modulator"]
    trained = f"trained v{m['version']}" if m.get("version") else "untrained"
    typer.echo(
        f"modulator: {m['parameters']:,} parameters ({trained}), top_k {m['top_k']}, routes to "
        f"{', '.join(m['routable']) or 'nothing yet'}"
    )


@adapter_app.command("publish")
def adapter_publish(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Adapter name: a-z, 0-9, '_' and '-'.")],
    path: Annotated[Path, typer.Argument(help="A peft LoRA adapter directory.")],
    description: Annotated[str, typer.Option(help="What it is for (routes by meaning).")] = "",
    dataset: Annotated[
        str | None, typer.Option(help="Dataset it was trained on (its questions route to it).")
    ] = None,
) -> None:
    """Publish an adapter directory as the next version (hot swap; the old one retires)."""
    from npllm.adapters import check_name

    check_name(name)
    body = {"path": str(path.resolve()), "description": description, "dataset": dataset}
    r = _client(ctx).request("POST", f"/v1/adapters/{name}/versions", json=body)
    typer.echo(_swapped(r))


def _publish_or_register(
    registry: Any,
    client: Any,
    name: str,
    path: Path,
    body: dict[str, Any],
    *,
    centroid: Any,
    metrics: dict[str, Any],
    indent: str = "",
    route: str | None = None,
    offline: bool = True,
) -> int:
    """Publish a trained adapter through the running daemon (hot swap); with no daemon,
    register it as the active version, served from the daemon's next start (unless
    `offline` is False: a sleep worker whose daemon is gone publishes nothing). Its
    version."""
    try:
        r = client.request(
            "POST",
            route or f"/v1/adapters/{name}/versions",
            json={**body, "path": str(path), "metrics": metrics},
        )
    except ClientError as exc:
        if "not running" not in str(exc):
            raise
        if not offline:
            from npllm.errors import CycleStopped

            raise CycleStopped(f"the daemon is not running; {name} was not published") from exc
    else:
        typer.echo(indent + _swapped(r), err=bool(indent))
        return int(r["version"])
    v = registry.add_version(
        name,
        path,
        description=body.get("description", ""),
        centroid=centroid,
        dataset=body.get("dataset"),
        metrics=metrics,
    )
    registry.activate(v)
    typer.echo(
        f"{indent}{name} v{v.version} registered; the daemon serves it when it starts",
        err=bool(indent),
    )
    return v.version


def _swapped(r: dict[str, Any]) -> str:
    replaced = f", replacing v{r['replaced']}" if r["replaced"] else ""
    return f"{r['name']} v{r['version']} is now served{replaced} (swap {r['swap_ms']:.0f} ms)"


@adapter_app.command("rollback")
def adapter_rollback(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The adapter.")]
) -> None:
    """Serve the adapter's previous version again."""
    from npllm.adapters import check_name

    check_name(name)
    typer.echo(_swapped(_client(ctx).request("POST", f"/v1/adapters/{name}/rollback")))


@adapter_app.command("delete")
def adapter_delete(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The adapter to delete.")]
) -> None:
    """Delete an adapter: every version, its files, and its place in routing."""
    from npllm.adapters import check_name

    check_name(name)
    try:
        r = _client(ctx).request("DELETE", f"/v1/adapters/{name}")
    except ClientError as exc:
        if "not running" not in str(exc):
            raise
        versions = _offline_registry(ctx, lambda registry: registry.delete(name))
        r = {"versions": versions, "was_served": None}
    served = f", it served v{r['was_served']}" if r.get("was_served") else ""
    typer.echo(f"deleted adapter {name!r}: {len(r['versions'])} version(s){served}")


@adapter_app.command("prune")
def adapter_prune(ctx: typer.Context) -> None:
    """Remove the files of inactive versions beyond training.keep_versions (rows stay)."""
    try:
        pruned = _client(ctx).request("POST", "/v1/adapters/prune")["pruned"]
    except ClientError as exc:
        if "not running" not in str(exc):
            raise
        pruned = _offline_registry(ctx, lambda registry: registry.prune_all(), kinds=True)
    if not pruned:
        typer.echo("nothing to prune: no inactive version beyond training.keep_versions")
    for name, versions in pruned.items():
        typer.echo(f"{name}: pruned {', '.join(f'v{v}' for v in versions)}")


def _offline_registry(ctx: typer.Context, work: Any, kinds: bool = False) -> Any:
    """Run `work(registry)` on the database directly (no daemon running); with `kinds`, on
    the cerebellum's registry too, merging the dict results."""
    from npllm.adapters import CEREBELLUM, BaseIdentity, Registry
    from npllm.db import Database
    from npllm.llm import model_identity

    settings = settings_of(ctx)
    db = Database(settings)
    db.open(migrate=True)
    try:
        base = BaseIdentity(*model_identity(settings))
        result = work(Registry.for_settings(db.pool, settings, base))
        if kinds:
            result.update(work(Registry.for_settings(db.pool, settings, base, kind=CEREBELLUM)))
        return result
    finally:
        db.close()


@adapter_app.command("train")
def adapter_train(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Adapter name: a-z, 0-9, '_' and '-'.")],
    dataset: Annotated[str, typer.Option(help="An imported dataset (npllm dataset import).")],
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
) -> None:
    """Train an adapter on a dataset in this process (not the daemon's), then publish it."""
    import shutil

    from consolidation.runs import record_version, train_from_dataset
    from npllm.adapters import Registry, check_name
    from npllm.db import Database
    from services.client import Client

    check_name(name)
    settings = settings_of(ctx)
    db = Database(settings)
    db.open(migrate=True)
    try:
        typer.echo(
            f"training {name!r} on dataset {dataset!r} (this process, low priority)", err=True
        )

        def progress(p: Any) -> None:
            typer.echo(
                f"  step {p.step}/{p.steps}  loss {p.loss:.4f}  "
                f"elapsed {p.elapsed_s:.0f} s  eta {p.eta_s:.0f} s",
                err=True,
            )

        trained = train_from_dataset(settings, db.pool, name, dataset, on_progress=progress)
        m = trained.metrics
        typer.echo(
            f"trained: {m['steps_done']} of {m['steps']} steps ({m['budget']}); {m['stopped']}; "
            f"loss {m['first_loss']:.4f} -> {m['final_loss']:.4f}, {m['seconds']:.0f} s; "
            f"base weights unchanged (sha256 {m['base_sha256_after'][:12]})",
            err=True,
        )
        version = _publish_or_register(
            Registry.for_settings(db.pool, settings, trained.base),
            Client(settings.socket_path),
            name,
            trained.path,
            {"description": description, "dataset": dataset},
            centroid=trained.centroid,
            metrics=m,
        )
        record_version(db.pool, trained.run_id, version)
        shutil.rmtree(trained.path, ignore_errors=True)
    finally:
        db.close()


@adapter_app.command("export")
def adapter_export(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The adapter (its active version).")],
    merged: Annotated[
        Path, typer.Option("--merged", help="Directory to write the merged model to (new).")
    ],
) -> None:
    """Write base + adapter merged into one standalone transformers model."""
    from npllm.adapters import BaseIdentity, Registry, check_name
    from npllm.db import Database
    from npllm.llm import load_base_llm

    check_name(name)
    if merged.exists() and any(merged.iterdir()):
        raise typer.BadParameter(f"{merged} exists and is not empty")
    settings = settings_of(ctx)
    db = Database(settings)
    db.open(migrate=False)
    try:
        llm = load_base_llm(settings)  # this process's own copy: the daemon's is untouched
        registry = Registry.for_settings(
            db.pool, settings, BaseIdentity(llm.model_id, llm.fingerprint)
        )
        version = registry.current(name)
        if version is None:
            raise ClientError(f"adapter {name!r} has no active version to export")
        from peft import PeftModel

        model = PeftModel.from_pretrained(llm.model, str(version.path)).merge_and_unload()
        model.save_pretrained(str(merged), safe_serialization=True)
        llm.tokenizer.save_pretrained(str(merged))
        typer.echo(f"wrote {name} v{version.version} merged into the base model to {merged}")
    finally:
        db.close()


@app.command()
def sleep(
    ctx: typer.Context,
    now: Annotated[bool, typer.Option("--now", help="Run a consolidation cycle now.")] = False,
    show: Annotated[bool, typer.Option("--status", help="Show the state and last cycles.")] = False,
    follow: Annotated[
        bool, typer.Option("--follow", help="With --now: show progress until the cycle ends.")
    ] = False,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (default: time).")] = None,
    here: Annotated[
        bool,
        typer.Option(
            "--here",
            help="With --now: run the cycle in this process, not the "
            "daemon's worker (this shell's environment and config apply).",
        ),
    ] = False,
    worker: Annotated[bool, typer.Option("--worker", hidden=True)] = False,
    trigger: Annotated[str, typer.Option("--trigger", hidden=True)] = "manual",
) -> None:
    """Consolidate what was learned: sample the replay buffer, train adapters (MAS), gate,
    publish. With the daemon running, --now makes it start its sleep worker (a separate,
    low-priority process; requests pause it); without, the cycle runs in this process."""
    if now == show:
        raise typer.BadParameter("give --now or --status")
    if show:
        _sleep_status(ctx)
        return
    if not worker and not here:
        from services.client import Client

        client = Client(settings_of(ctx).socket_path)
        try:
            started = client.request("POST", "/v1/sleep", json={"now": True, "seed": seed})
        except ClientError as exc:
            if "not running" not in str(exc):
                raise
        else:
            if not follow:
                typer.echo(
                    f"state {started['state']}: the daemon's sleep worker runs the cycle; "
                    "watch it with `npllm sleep --status` (or use --follow)"
                )
                return
            raise typer.Exit(_follow(client, started["latest_cycle"]))
    _run_cycle_here(ctx, seed, worker, trigger)


def _follow(client: Any, after: int | None) -> int:
    """Print the phases of the cycle after `after` until it ends; its exit code."""
    import re
    import sys
    import time

    shown, last = "", ""
    tty = sys.stderr.isatty()
    while True:
        status = client.request("GET", "/v1/sleep")
        cycle = next((c for c in status["cycles"] if after is None or c["id"] > after), None)
        if cycle is not None:
            line = f"cycle {cycle['id']}: {cycle['phase']}"
            step = re.search(r"step (\d+)/(\d+)", line)
            if line != last:
                last = line
                if step:  # a progress bar: redrawn in place on a terminal
                    done, total = int(step[1]), int(step[2])
                    bar = "#" * (24 * done // total) + "." * (24 - 24 * done // total)
                    line = f"{line[: step.start()]}[{bar}] {line[step.start() :]}"
                if not tty:
                    typer.echo(line, err=True)
                elif step and shown.startswith(line.split("[")[0]):  # same bar: redraw it
                    typer.echo("\r" + line.ljust(len(shown)), err=True, nl=False)
                else:
                    typer.echo(("\n" if shown else "") + line, err=True, nl=False)
                shown = line
            if cycle["status"] != "running":
                if tty:
                    typer.echo("", err=True)
                _summary(cycle["metrics"], cycle["status"])
                return 0 if cycle["status"] == "succeeded" else 1
        time.sleep(1.0)


def _summary(metrics: dict[str, Any], status: str = "succeeded") -> None:
    if not metrics.get("adapters"):
        typer.echo("nothing to learn: no corrected or well-rated answers in the replay buffer")
    reports = list(metrics.get("adapters", {}).items())
    if metrics.get("cerebellum"):
        reports.append(("cerebellum", metrics["cerebellum"]))
    topics = metrics.get("topics", {})
    for name, report in reports:
        if "validation_loss" not in report:
            typer.echo(f"{name}: {report['verdict']}")
            continue
        v = report["validation_loss"]
        rehearsed = f" + {report['rehearsed']} rehearsed" if report.get("rehearsed") else ""
        why = f" [{topics[name]}]" if name in topics else ""
        typer.echo(
            f"{name}: {report['samples']} sample(s){rehearsed}{why}, "
            f"{report.get('steps_done', '?')} of {report.get('steps', '?')} steps "
            f"({report.get('stopped', '')}), validation loss {v['before']:.4f} -> "
            f"{v['after']:.4f}: {report['verdict']}"
        )
    for name, why in metrics.get("skipped", {}).items():
        typer.echo(f"{name}: {why}")
    if metrics.get("modulator"):
        m = metrics["modulator"]
        estimate = (
            f", estimated mean reward {m['current']['value']:+.3f} -> {m['trained']['value']:+.3f}"
            if "trained" in m
            else ""
        )
        decisions = f"{m['decisions']} rated decisions" if "decisions" in m else "not trained"
        typer.echo(f"modulator: {decisions}{estimate}: {m['verdict']}")
    typer.echo(
        f"cycle {metrics.get('cycle')} {status}; base weights unchanged: "
        f"{metrics.get('base_unchanged')}"
    )


def _run_cycle_here(ctx: typer.Context, seed: int | None, worker: bool, trigger: str) -> None:
    import time

    from consolidation.bookkeeping import refuse_if_running, refuse_untrainable
    from consolidation.cycle import run_cycle
    from npllm.adapters import CEREBELLUM, BaseIdentity, Registry
    from npllm.db import Database
    from npllm.embeddings import load_embedder
    from npllm.llm import load_base_llm
    from services.client import Client

    settings = settings_of(ctx)
    db = Database(settings)
    db.open(migrate=True)
    try:
        import os

        refuse_if_running(db.pool)  # before loading the models: say it at once
        refuse_untrainable(db.pool, settings, trigger, seed)
        os.nice(10)
        llm = load_base_llm(settings)
        embedder = load_embedder(settings)
        registry = Registry.for_settings(
            db.pool, settings, BaseIdentity(llm.model_id, llm.fingerprint)
        )
        client = Client(settings.socket_path)
        from services.sleep import worker_control

        # The daemon starts the worker: it stops with it (see worker_control).
        control = worker_control(settings.data_path / "run", os.getppid()) if worker else None
        cerebellum = None
        if settings.cerebellum.role == "draft":
            from npllm import cerebellum as cb

            own = cb.load_model(settings, llm)
            cerebellum = (own, cb.registry_for(settings, db.pool, own))

        def publish(name: str, path: Path, centroid: Any, metrics: dict[str, Any]) -> int:
            body: dict[str, Any] = {
                "description": "learned while asleep",
                "sleep_cycle": metrics.get("sleep_cycle"),
            }
            if metrics.get("dataset"):
                body["dataset"] = metrics["dataset"]
            if control is not None:
                control()  # a worker whose daemon is gone stops here
            if cerebellum is not None and name == CEREBELLUM:
                return _publish_or_register(
                    cerebellum[1],
                    client,
                    name,
                    path,
                    body,
                    centroid=None,
                    metrics=metrics,
                    indent="  ",
                    route="/v1/cerebellum/versions",
                    offline=not worker,
                )
            body["centroid"] = [float(x) for x in centroid]
            return _publish_or_register(
                registry,
                client,
                name,
                path,
                body,
                centroid=centroid,
                metrics=metrics,
                indent="  ",
                offline=not worker,
            )

        def publish_modulator(version: int, cycle: int) -> int:
            if control is not None:
                control()
            try:
                body = {"version": version, "sleep_cycle": cycle}
                r = client.request("POST", "/v1/modulator/versions", json=body)
            except ClientError as exc:
                if "not running" not in str(exc):
                    raise
                if worker:
                    from npllm.errors import CycleStopped

                    raise CycleStopped(
                        f"the daemon is not running; modulator v{version} was not published"
                    ) from exc
                from npllm import modulator

                modulator.activate(db.pool, version)
                typer.echo(
                    f"  modulator v{version} registered; the daemon routes with it when it starts",
                    err=True,
                )
                return version
            typer.echo(f"  modulator v{r['version']} now routes questions", err=True)
            return version

        started = time.perf_counter()
        metrics = run_cycle(
            settings,
            db.pool,
            llm,
            embedder,
            registry,
            publish,
            seed=seed if seed is not None else int(time.time()),
            on_phase=lambda p: typer.echo(
                f"[{time.perf_counter() - started:6.1f} s] {p}", err=True
            ),
            control=control,
            trigger=trigger,
            cerebellum=cerebellum,
            publish_modulator=publish_modulator,
        )
        _summary(metrics)
    finally:
        db.close()


def _sleep_status(ctx: typer.Context) -> None:
    s = _client(ctx).request("GET", "/v1/sleep")
    typer.echo(f"state  {s['state']}")
    typer.echo(f"why    {s['reason']}")
    if s.get("next_window"):
        typer.echo(f"window opens next at {s['next_window'][:16]}")
    if not s["cycles"]:
        typer.echo("no sleep cycle yet; run one with `npllm sleep --now`")
    for c in s["cycles"]:
        adapters = ", ".join(
            f"{n}: {r.get('verdict', '?')}" for n, r in c["metrics"].get("adapters", {}).items()
        )
        typer.echo(
            f"cycle {c['id']:<4} {c['status']:<11} {c['phase']:<20} {c['started_at'][:19]}  "
            f"{c['samples'] if c['samples'] is not None else '-'} samples  {adapters}"
        )


@app.command()
def status(ctx: typer.Context) -> None:
    """Show the running daemon's health, models, database and counts."""
    s = _client(ctx).request("GET", "/v1/status")
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
    except Exception as exc:  # usage errors carry their own exit code
        import click

        # typer >= 0.26 vendors click: its usage errors derive from TyperException.
        if isinstance(exc, click.ClickException | typer.TyperException) and hasattr(exc, "show"):
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2))
        raise
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
