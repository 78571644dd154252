"""`npllm alerts`: the alerts the running daemon raised (services/alerts.py)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from services.cli.context import client_of


def line(alert: dict[str, Any]) -> str:
    """One alert on one line: id, when, severity, kind, open or resolved, message."""
    when = alert["raised_at"][:16].replace("T", " ")
    ident = "#-" if alert["id"] is None else f"#{alert['id']}"
    resolved = alert["resolved_at"]
    state = "open" if resolved is None else f"resolved {resolved[:16].replace('T', ' ')}"
    return f"{ident:<7}{when}  {alert['severity']:<8}  {alert['kind']}, {state}: {alert['message']}"


def alerts(
    ctx: typer.Context,
    open_only: Annotated[
        bool, typer.Option("--open", help="Only the conditions that hold now.")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Check every condition now, before listing.")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many, newest first.")] = 20,
) -> None:
    """The alerts the daemon raised, newest first (the table npllm.alerts)."""
    client = client_of(ctx)
    if check:
        raised = client.request("POST", "/v1/alerts/check")["raised"]
        typer.echo(f"checked: {len(raised)} new alert(s)", err=True)
    params = {"open": "true" if open_only else "false", "limit": limit}
    found = client.request("GET", "/v1/alerts", params=params)["data"]
    if not found:
        typer.echo("no open alerts" if open_only else "no alerts yet")
    for alert in found:
        typer.echo(line(alert))
