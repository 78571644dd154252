"""`npllm adapter`: train, publish, roll back, delete, prune and export LoRA adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from npllm.errors import ClientError, DaemonNotRunning
from services.cli.context import client_of, settings_of

app = typer.Typer(help="Train, publish, roll back and export LoRA adapters.", rich_markup_mode=None)


@app.command("list")
def adapter_list(ctx: typer.Context) -> None:
    """Adapters, their versions and which one is served."""
    found = client_of(ctx).request("GET", "/v1/adapters")
    if not found["data"]:
        typer.echo("no adapters; train one with `npllm adapter train NAME --dataset D`")
    for a in found["data"]:
        served = found["served"].get(a["name"])
        note = (
            f"serving v{served}"
            if served
            else {
                "stale": "stale: to be rebuilt at next sleep",
                "retired": f"retired (unused): `npllm adapter rollback {a['name']}` serves it",
            }.get(a["status"], "not served")
        )
        trial = next((t for t in found.get("canaries", []) if t["adapter"] == a["name"]), None)
        if trial:
            note += f" on canary trial vs v{trial['control']}"
        typer.echo(f"{a['name']:<24} {a['status']:<7} {note}  {a['description'][:40]}")
        for v in a["versions"]:
            reason = f" ({v['reason']})" if v.get("reason") else ""
            if trial and v["version"] == trial["candidate"]:
                reason += f" (canary: {_arm(trial['candidate_arm'], trial['share'])})"
            elif trial and v["version"] == trial["control"]:
                reason += f" (control: {_arm(trial['control_arm'], 1 - trial['share'])})"
            typer.echo(f"    v{v['version']:<4} {v['status']:<10}{reason}")
    m = found["modulator"]
    trained = f"trained v{m['version']}" if m.get("version") else "untrained"
    typer.echo(
        f"modulator: {m['parameters']:,} parameters ({trained}), top_k {m['top_k']}, routes to "
        f"{', '.join(m['routable']) or 'nothing yet'}"
    )


def _arm(stats: dict[str, Any], share: float) -> str:
    mean = f", mean reward {stats['mean']:+.3f}" if stats["n"] else ""
    return f"{share:.0%} of conversations, {stats['n']} rated{mean}"


@app.command("show")
def adapter_show(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The adapter.")]
) -> None:
    """One adapter: description, tags, dataset, its versions (which is served, their
    metrics) and what each version learned from which interactions."""
    from npllm.adapters import check_name

    check_name(name)
    a = client_of(ctx).request("GET", f"/v1/adapters/{name}")
    served = f"serving v{a['served']}" if a["served"] else "not served"
    typer.echo(f"name         {a['name']}")
    typer.echo(f"description  {a['description'] or '-'}")
    typer.echo(f"tags         {', '.join(a['tags']) or '-'}")
    typer.echo(f"dataset      {a['dataset'] or '-'}")
    typer.echo(f"status       {a['status']}, {served} (trained for {a['base_model']})")
    typer.echo("versions")
    for v in a["versions"]:
        typer.echo("  " + "\n    ".join(_version_lines(v, a["served"])))


def _version_lines(v: dict[str, Any], served: int | None) -> list[str]:
    """A version in a few lines: status, where it came from, metrics, what it learned."""
    mark = " (served)" if v["version"] == served else ""
    reason = f": {v['reason']}" if v.get("reason") else ""
    origin = (
        f"sleep cycle {v['sleep_cycle']}"
        if v["sleep_cycle"]
        else (f"dataset {v['dataset']}" if v["dataset"] else "published by hand")
    )
    lines = [f"v{v['version']}{mark}  {v['status']}{reason}; {v['created_at'][:16]}; {origin}"]
    m = v["metrics"]
    facts = []
    if m.get("samples") is not None:
        rehearsed = f" + {m['rehearsed']} rehearsed" if m.get("rehearsed") else ""
        facts.append(f"{m['samples']} sample(s){rehearsed}")
    if m.get("steps_done") is not None:
        facts.append(f"{m['steps_done']} of {m.get('steps', '?')} steps")
    loss = m.get("validation_loss")
    if loss:
        facts.append(f"validation loss {loss['before']:.4f} -> {loss['after']:.4f}")
    elif m.get("final_loss") is not None:
        facts.append(f"loss {m.get('first_loss') or 0:.4f} -> {m['final_loss']:.4f}")
    if m.get("verdict"):
        facts.append(str(m["verdict"]))
    if facts:
        lines.append("metrics: " + "; ".join(facts))
    learned = v["learned_from"]
    if learned:
        lines.append(f"learned from {len(learned)} interaction(s):")
        for item in learned:
            corrected = " (your correction)" if item["corrected"] else ""
            question = item["question"].replace("\n", " ")[:70]
            iid = item["interaction_id"] or "?"
            lines.append(f"  #{iid}{corrected}: {question}")
    elif v["dataset"] or (v["training_run"] or {}).get("dataset"):
        run = v["training_run"] or {}
        examples = f" ({run['examples']} examples)" if run.get("examples") else ""
        lines.append(f"learned from dataset {v['dataset'] or run['dataset']}{examples}")
    return lines


@app.command("publish")
def adapter_publish(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Adapter name: a-z, 0-9, '_' and '-'.")],
    path: Annotated[Path, typer.Argument(help="A peft LoRA adapter directory.")],
    description: Annotated[str, typer.Option(help="What it is for (routes by meaning).")] = "",
    dataset: Annotated[
        str | None, typer.Option(help="Dataset it was trained on (its questions route to it).")
    ] = None,
    canary: Annotated[
        bool,
        typer.Option(
            "--canary", help="Try it on canary.share of the conversations first (a trial)."
        ),
    ] = False,
) -> None:
    """Publish an adapter directory as the next version (hot swap; the old one retires,
    or, with --canary, keeps serving the rest of the conversations until the trial
    decides)."""
    from consolidation.publisher import swapped
    from npllm.adapters import check_name

    check_name(name)
    body: dict[str, Any] = {
        "path": str(path.resolve()), "description": description, "dataset": dataset,
    }  # fmt: skip
    if canary:
        body["canary"] = True
    r = client_of(ctx).request("POST", f"/v1/adapters/{name}/versions", json=body)
    typer.echo(swapped(r))


@app.command("rollback")
def adapter_rollback(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The adapter.")]
) -> None:
    """Serve the adapter's previous version again."""
    from consolidation.publisher import swapped
    from npllm.adapters import check_name

    check_name(name)
    typer.echo(swapped(client_of(ctx).request("POST", f"/v1/adapters/{name}/rollback")))


@app.command("retire")
def adapter_retire(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The adapter.")],
    reason: Annotated[
        str, typer.Option("--reason", help="Why, for the row in npllm.adapter_population.")
    ] = "retired by hand",
) -> None:
    """Stop serving and routing to the adapter; every version is kept (`npllm adapter
    rollback NAME` or a publish serves it again)."""
    from npllm.adapters import check_name

    check_name(name)
    if not reason.strip():
        raise typer.BadParameter(
            "must say why (it is stored with the decision)", param_hint="--reason"
        )
    done = client_of(ctx).request("POST", f"/v1/adapters/{name}/retire", json={"reason": reason})
    typer.echo(
        f"{name} retired (v{done['version']} and every earlier version kept; "
        f"`npllm adapter rollback {name}` serves it again)"
    )


@app.command("canary")
def adapter_canary(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The adapter.")],
    promote: Annotated[
        bool, typer.Option("--promote", help="End the trial: the new version serves all.")
    ] = False,
    abort: Annotated[
        bool, typer.Option("--abort", help="End the trial: roll back to the previous version.")
    ] = False,
) -> None:
    """The adapter's canary trial: each arm's rated answers so far and its deadline; or
    decide it now with --promote or --abort."""
    from consolidation.publisher import swapped
    from npllm.adapters import check_name

    check_name(name)
    if promote and abort:
        raise ClientError("give --promote or --abort, not both")
    client = client_of(ctx)
    if promote or abort:
        action = {"action": "promote" if promote else "abort"}
        typer.echo(swapped(client.request("POST", f"/v1/adapters/{name}/canary", json=action)))
        return
    t = client.request("GET", f"/v1/adapters/{name}/canary")
    typer.echo(f"canary trial {t['id']} of {name}: v{t['candidate']} against v{t['control']}")
    typer.echo(f"  candidate v{t['candidate']}: {_arm(t['candidate_arm'], t['share'])}")
    typer.echo(f"  control   v{t['control']}: {_arm(t['control_arm'], 1 - t['share'])}")
    typer.echo(f"  decides at {t['deadline'][:16]} at the latest (canary.max_hours)")


@app.command("delete")
def adapter_delete(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The adapter to delete.")]
) -> None:
    """Delete an adapter: every version, its files, and its place in routing."""
    from npllm.adapters import check_name

    check_name(name)
    try:
        r = client_of(ctx).request("DELETE", f"/v1/adapters/{name}")
    except DaemonNotRunning:
        versions = _offline_registry(ctx, lambda registry: registry.delete(name))
        r = {"versions": versions, "was_served": None}
    served = f", it served v{r['was_served']}" if r.get("was_served") else ""
    typer.echo(f"deleted adapter {name!r}: {len(r['versions'])} version(s){served}")


@app.command("prune")
def adapter_prune(ctx: typer.Context) -> None:
    """Remove the files of inactive versions beyond training.keep_versions (rows stay)."""
    try:
        pruned = client_of(ctx).request("POST", "/v1/adapters/prune")["pruned"]
    except DaemonNotRunning:
        pruned = _offline_registry(ctx, lambda registry: registry.prune_all(), kinds=True)
    if not pruned:
        typer.echo("nothing to prune: no inactive version beyond training.keep_versions")
    for name, versions in pruned.items():
        typer.echo(f"{name}: pruned {', '.join(f'v{v}' for v in versions)}")


def _offline_registry(ctx: typer.Context, work: Any, kinds: bool = False) -> Any:
    """Run `work(registry)` on the database directly (no daemon running); with `kinds`, on
    the cerebellum's registry too, merging the dict results."""
    from npllm.adapters import CEREBELLUM
    from npllm.db import Database
    from npllm.llm import model_identity
    from npllm.versions import BaseIdentity, Registry

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


@app.command("train")
def adapter_train(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Adapter name: a-z, 0-9, '_' and '-'.")],
    dataset: Annotated[str, typer.Option(help="An imported dataset (npllm dataset import).")],
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
) -> None:
    """Train an adapter on a dataset in this process (not the daemon's), then publish it."""
    import shutil

    from consolidation.publisher import DaemonPublisher, OfflinePublisher
    from consolidation.runs import record_version, train_from_dataset
    from npllm.adapters import check_name
    from npllm.db import Database
    from npllm.versions import Registry
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

        run = train_from_dataset(
            settings, db.pool, name, dataset, on_progress=progress, description=description
        )
        m = run.trained.metrics
        typer.echo(
            f"trained: {m['steps_done']} of {m['steps']} steps ({m['budget']}); {m['stopped']}; "
            f"loss {m['first_loss']:.4f} -> {m['final_loss']:.4f}, {m['seconds']:.0f} s; "
            f"base weights unchanged (sha256 {m['base_sha256_after'][:12]})",
            err=True,
        )
        # Through the running daemon (hot swap); with none, registered as the active
        # version, served from the daemon's next start.
        offline = OfflinePublisher(
            {"adapter": Registry.for_settings(db.pool, settings, run.base)}, echo=typer.echo
        )
        publisher = DaemonPublisher(Client(settings.socket_path), offline=offline, echo=typer.echo)
        version = publisher.publish(run.trained)
        record_version(db.pool, run.run_id, version)
        shutil.rmtree(run.staging, ignore_errors=True)
    finally:
        db.close()


@app.command("export")
def adapter_export(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The adapter (its active version).")],
    merged: Annotated[
        Path, typer.Option("--merged", help="Directory to write the merged model to (new).")
    ],
) -> None:
    """Write base + adapter merged into one standalone transformers model."""
    from npllm.adapters import check_name
    from npllm.db import Database
    from npllm.llm import load_base_llm
    from npllm.versions import BaseIdentity, Registry

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
