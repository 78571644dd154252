"""Migrations: fresh apply, idempotent re-apply, and a failing file leaves nothing behind."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from npllm.errors import MigrationError
from npllm.migrations import SQL_DIR, apply_migrations, discover


def _tables(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'npllm'"
    ).fetchall()
    return {r[0] for r in rows}


def _has_schema(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'npllm'").fetchone()
    return row is not None


def test_fresh_apply_creates_the_schema(fresh_conn: psycopg.Connection[Any]) -> None:
    applied = apply_migrations(fresh_conn)
    assert applied == [m.name for m in discover()]
    assert {"memories", "interactions", "schema_migrations"} <= _tables(fresh_conn)
    index = fresh_conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'memories_embedding_hnsw'"
    ).fetchone()
    assert index is not None and "hnsw" in index[0] and "vector_cosine_ops" in index[0]
    dim = fresh_conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'npllm.memories'::regclass AND attname = 'embedding'"
    ).fetchone()
    assert dim == ("vector(384)",)


def test_reapply_is_a_no_op(fresh_conn: psycopg.Connection[Any]) -> None:
    apply_migrations(fresh_conn)
    query = "SELECT version, applied_at FROM npllm.schema_migrations"
    before = fresh_conn.execute(query).fetchall()
    assert apply_migrations(fresh_conn) == []
    after = fresh_conn.execute(query).fetchall()
    assert before == after


def _copy_sql(tmp_path: Path) -> Path:
    target = tmp_path / "sql"
    shutil.copytree(SQL_DIR, target)
    return target


def test_broken_later_migration_leaves_no_partial_schema(
    fresh_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    sql_dir = _copy_sql(tmp_path)
    (sql_dir / "900_broken.sql").write_text(
        "CREATE TABLE npllm.half_done (id int);\nSELECT no_such_function();\n"
    )
    with pytest.raises(MigrationError) as err:
        apply_migrations(fresh_conn, sql_dir)
    assert "900_broken.sql" in str(err.value)
    assert "no_such_function" in str(err.value)
    assert "half_done" not in _tables(fresh_conn)
    versions = fresh_conn.execute("SELECT version FROM npllm.schema_migrations").fetchall()
    assert (900,) not in versions
    # Fixing the file lets the next start apply it.
    (sql_dir / "900_broken.sql").write_text("CREATE TABLE npllm.half_done (id int);\n")
    assert apply_migrations(fresh_conn, sql_dir) == ["900_broken.sql"]


def test_broken_first_migration_leaves_database_untouched(
    fresh_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    sql_dir = tmp_path / "sql"
    sql_dir.mkdir()
    (sql_dir / "001_init.sql").write_text(
        (SQL_DIR / "001_init.sql").read_text() + "\nCREATE TABLE npllm.memories (id int);\n"
    )
    with pytest.raises(MigrationError, match=r"001_init.sql failed and was rolled back: .*exists"):
        apply_migrations(fresh_conn, sql_dir)
    assert not _has_schema(fresh_conn)


def test_edited_applied_migration_is_refused(
    fresh_conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    sql_dir = _copy_sql(tmp_path)
    apply_migrations(fresh_conn, sql_dir)
    path = sql_dir / "001_init.sql"
    path.write_text(path.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="001_init.sql was changed after it was applied"):
        apply_migrations(fresh_conn, sql_dir)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["1_init.sql"], "1_init.sql is misnamed; expected NNN_lowercase_name.sql"),
        (["002_a.sql", "002_b.sql"], "share the number 002"),
    ],
)
def test_badly_named_files_are_refused(tmp_path: Path, files: list[str], message: str) -> None:
    for name in files:
        (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=message):
        discover(tmp_path)
