"""`npllm dashboard`: a one-time login link to the dashboard in a browser (and, with
--open, the browser opened on it)."""

from __future__ import annotations

from typing import Annotated

import typer

from services.cli.context import client_of


def dashboard(
    ctx: typer.Context,
    open_: Annotated[
        bool, typer.Option("--open", help="Open the link in the default web browser.")
    ] = False,
) -> None:
    """Print a link that opens the dashboard in a browser (works once, for 5 minutes)."""
    # The daemon knows whether it listens on TCP (its configuration may not be this
    # shell's): without a port it refuses, saying to set server.tcp_port.
    link = client_of(ctx).request("POST", "/v1/auth/login", json={"path": "/dashboard"})
    typer.echo(link["url"])
    typer.echo(
        f"the link works once, within {int(link['expires_in'])} s; the browser then stays "
        f"logged in for {int(link['session_s']) // 3600} h",
        err=True,
    )
    if open_:
        import webbrowser

        if not webbrowser.open(link["url"]):
            typer.echo("no web browser found here: open the link above yourself", err=True)
