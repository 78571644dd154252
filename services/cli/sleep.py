"""`npllm sleep`: run a consolidation cycle (in the daemon's sleep worker, or here), follow
its progress, print its summary, show the sleep state."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from npllm.errors import DaemonNotRunning
from services.cli.context import client_of, settings_of


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
) -> None:
    """Consolidate what was learned: sample the replay buffer, train adapters (MAS), gate,
    publish. With the daemon running, --now makes it start its sleep worker (a separate,
    low-priority process; requests pause it); without, the cycle runs in this process."""
    if now == show:
        raise typer.BadParameter("give --now or --status")
    if show:
        _sleep_status(ctx)
        return
    if not here:
        client = client_of(ctx)
        try:
            started = client.request("POST", "/v1/sleep", json={"now": True, "seed": seed})
        except DaemonNotRunning:
            pass  # no daemon: the cycle runs here
        else:
            if not follow:
                typer.echo(
                    f"state {started['state']}: the daemon's sleep worker runs the cycle; "
                    "watch it with `npllm sleep --status` (or use --follow)"
                )
                return
            raise typer.Exit(_follow(client, started["latest_cycle"]))
    from services.worker import print_summary, run_cycle_here

    print_summary(run_cycle_here(settings_of(ctx), seed))


def _follow(client: Any, after: int | None) -> int:
    """Print the phases of the cycle after `after` until it ends; its exit code."""
    import re
    import sys
    import time

    from services.worker import print_summary

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
                print_summary(cycle["metrics"], cycle["status"])
                return 0 if cycle["status"] == "succeeded" else 1
        time.sleep(1.0)


def window_line(s: dict[str, Any]) -> str | None:
    """The sleep window as `npllm sleep --status` words it (None: no window, always open)."""
    if not s.get("next_window"):
        return None
    when = s["next_window"].replace("T", " ")[:16]
    if s.get("window_open"):
        until = (s.get("window") or "-").split("-")[-1]
        return f"window open now (since {when}, until {until})"
    return f"window opens next at {when}"


def _sleep_status(ctx: typer.Context) -> None:
    s = client_of(ctx).request("GET", "/v1/sleep")
    typer.echo(f"state  {s['state']}")
    typer.echo(f"why    {s['reason']}")
    line = window_line(s)
    if line:
        typer.echo(line)
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
