"""What every command gets from the root options: its settings and a client to the daemon."""

from __future__ import annotations

from typing import Any

import typer

from npllm.config import Settings, load_settings


def settings_of(ctx: typer.Context) -> Settings:
    """Load the configuration once per command (fails with a one-line ConfigError)."""
    return load_settings(ctx.obj)


def client_of(ctx: typer.Context) -> Any:
    """A client to the running daemon on this configuration's socket."""
    from services.client import Client

    return Client(settings_of(ctx).socket_path)
