"""Schema migrations: numbered ``sql/NNN_name.sql`` files applied in order.

Each pending file runs in its own transaction together with its row in
``npllm.schema_migrations``, so a failing file leaves the database exactly as
it was and the start stops with the file name and PostgreSQL's error.
Re-running is a no-op. An advisory lock keeps two processes from migrating at
once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from npllm.errors import MigrationError

# sql/ of the checkout, through the link npllm/sql (a wheel carries the files themselves
# there; see pyproject.toml).
SQL_DIR = Path(__file__).resolve().parent / "sql"
_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x6E706C6C6D  # "npllm"

_BOOKKEEPING = """
CREATE SCHEMA IF NOT EXISTS npllm;
CREATE TABLE IF NOT EXISTS npllm.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(sql_dir: Path = SQL_DIR) -> list[Migration]:
    """The migration files of `sql_dir`, in order; misnamed or duplicated numbers are errors."""
    if not sql_dir.is_dir():
        raise MigrationError(f"migration directory {sql_dir} does not exist")
    found: dict[int, Migration] = {}
    for path in sorted(sql_dir.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(
                f"migration file {path.name} is misnamed; expected NNN_lowercase_name.sql"
            )
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                f"migrations {found[version].name} and {path.name} share the number {version:03d}"
            )
        found[version] = Migration(version, path.name, path)
    return [found[v] for v in sorted(found)]


def applied_versions(conn: psycopg.Connection[Any]) -> dict[int, str]:
    """version -> checksum of every migration already applied."""
    row = conn.execute("SELECT to_regclass('npllm.schema_migrations')").fetchone()
    if row is None or row[0] is None:
        return {}
    return dict(conn.execute("SELECT version, checksum FROM npllm.schema_migrations").fetchall())


def apply_migrations(conn: psycopg.Connection[Any], sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply every pending migration; return the names applied now."""
    migrations = discover(sql_dir)
    if not conn.autocommit:
        raise MigrationError("apply_migrations needs an autocommit connection")
    conn.execute("SELECT pg_advisory_lock(%(key)s)", {"key": _LOCK_KEY})
    try:
        done = applied_versions(conn)
        for m in migrations:
            if m.version in done and done[m.version] != m.checksum:
                raise MigrationError(
                    f"migration {m.name} was changed after it was applied; restore the file "
                    "and put the change in a new migration"
                )
        applied = []
        for m in migrations:
            if m.version not in done:
                _apply_one(conn, m)
                applied.append(m.name)
        return applied
    finally:
        conn.execute("SELECT pg_advisory_unlock(%(key)s)", {"key": _LOCK_KEY})


def _apply_one(conn: psycopg.Connection[Any], m: Migration) -> None:
    try:
        with conn.transaction():
            conn.execute(_BOOKKEEPING)
            # No parameters: psycopg sends the file as one multi-statement query.
            conn.execute(m.sql)
            conn.execute(
                "INSERT INTO npllm.schema_migrations (version, name, checksum) "
                "VALUES (%(version)s, %(name)s, %(checksum)s)",
                {"version": m.version, "name": m.name, "checksum": m.checksum},
            )
    except psycopg.Error as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MigrationError(f"migration {m.name} failed and was rolled back: {detail}") from exc
