"""The `npllm` command. Each subcommand is one typed function.

Errors a user can cause or fix (NpllmError) are printed as one line on stderr
with a non-zero exit code; only bugs show a traceback.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Annotated

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
