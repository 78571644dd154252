"""The `npllm` command: help, migrate, doctor and psql against the real parts."""

from __future__ import annotations

import subprocess
from pathlib import Path

from npllm.db import Database

from ..conftest import NPLLM, REPO, cli_env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NPLLM, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_help_lists_the_commands(tmp_path: Path) -> None:
    proc = _run(["--help"], cli_env(tmp_path))
    assert proc.returncode == 0
    for command in ("migrate", "doctor", "psql"):
        assert command in proc.stdout


def test_migrate_then_psql_reads_the_tables(database: Database) -> None:
    env = cli_env(database.settings.data_path)
    proc = _run(["migrate"], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "database is up to date; nothing to apply"
    proc = _run(["psql", "-At", "-c", "SELECT name FROM npllm.schema_migrations"], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "001_init.sql"


def test_psql_passes_psql_errors_through(database: Database) -> None:
    env = cli_env(database.settings.data_path)
    proc = _run(["psql", "-v", "ON_ERROR_STOP=1", "-c", "SELECT * FROM npllm.nope"], env)
    assert proc.returncode != 0
    assert 'relation "npllm.nope" does not exist' in proc.stderr


def test_doctor_is_all_green_with_the_real_parts(database: Database) -> None:
    proc = _run(["doctor"], cli_env(database.settings.data_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "embedded postgresql://" in out
    assert "PostgreSQL 18" in out and "pgvector 0.8" in out
    assert "SmolLM2-135M-Instruct" in out and "frozen" in out
    assert "engine       ok   llama.cpp 2026." in out and "AVX2 yes" in out
    assert "(384-dim)" in out
    assert out.strip().endswith("all green")


def test_doctor_fails_with_the_reason_when_a_model_is_missing(database: Database) -> None:
    env = cli_env(database.settings.data_path, NPLLM_MODELS__BASE="package:not_a_model_pkg")
    proc = _run(["doctor"], env)
    assert proc.returncode == 1
    assert "engine       FAIL models.base = 'package:not_a_model_pkg'" in proc.stdout
    assert "base model   FAIL models.base = 'package:not_a_model_pkg'" in proc.stdout
    assert "not ready: engine, base model failed" in proc.stdout


def test_migrate_on_a_new_data_dir_starts_and_stops_its_own_server(tmp_path: Path) -> None:
    proc = _run(["migrate"], cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    every = sorted(p.name for p in (REPO / "sql").glob("*.sql"))
    assert proc.stdout.strip() == f"applied {len(every)} migration(s): {', '.join(every)}"
    # The command started the embedded server, so it stopped it on the way out.
    assert not (tmp_path / "pgdata" / "postmaster.pid").exists()
