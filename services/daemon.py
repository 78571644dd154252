"""`npllm serve`: the long-running daemon, shaped like uvicorn's server.

startup()   lock the data dir, open the database (migrations), load the models once,
            bind the Unix socket (0600 inside a 0700 directory)
main_loop() uvicorn serves the API on that socket until SIGTERM/SIGINT
shutdown()  in-flight requests get server.shutdown_timeout_s, then are cancelled;
            the embedded PostgreSQL is stopped; the socket and lock are removed
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Iterator
from typing import IO, Any

import uvicorn

from npllm.config import Settings
from npllm.errors import DaemonError
from services.auth import KeyFile, key_path, tcp_address
from services.sleep_protocol import run_dir

log = logging.getLogger("npllm.daemon")


class _Server(uvicorn.Server):
    """uvicorn's server, logging when shutdown begins and how many requests are in flight."""

    def __init__(self, config: uvicorn.Config, daemon: Daemon) -> None:
        super().__init__(config)
        self.daemon = daemon

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Handle SIGINT/SIGTERM as a graceful stop and restore the old handlers after.

        Unlike uvicorn's own, this does not re-raise the signal on the way out: the
        daemon still has to stop PostgreSQL and remove its socket (Daemon.shutdown)."""
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def on_tick(self, counter: int) -> bool:
        """uvicorn calls this every 0.1 s; every 5 s the sleep state machine advances."""
        if counter % 50 == 0 and self.daemon.service is not None:
            try:
                self.daemon.service.sleeper.tick()
            except Exception:
                log.exception("sleep tick failed")
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        service = self.daemon.service
        if service is not None:  # answers cut short from now on were not abandoned
            service.awake.stopping = True
        in_flight = len(service.in_flight) if service else 0
        log.info(json.dumps({"event": "shutting_down", "in_flight": in_flight}))
        await super().shutdown(sockets)


def _payload(record: logging.LogRecord) -> dict[str, Any]:
    """A log call's fields: npllm logs a JSON object per line; other text is its message."""
    message = record.getMessage()
    try:
        payload = json.loads(message)
    except ValueError:
        return {"message": message}
    return payload if isinstance(payload, dict) else {"message": message}


class JsonLines(logging.Formatter):
    """One JSON object per log line, so logs can be grepped and parsed."""

    def format(self, record: logging.LogRecord) -> str:
        payload = _payload(record)
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            **payload,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class Readable(logging.Formatter):
    """One line a person reads on a terminal: time, level, event, then key=value."""

    def format(self, record: logging.LogRecord) -> str:
        payload = _payload(record)
        when = time.strftime("%H:%M:%S", time.localtime(record.created))
        event = payload.pop("event", None) or payload.pop("message", "")
        fields = " ".join(
            f"{k}={v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"
            for k, v in payload.items()
            if v is not None
        )
        line = f"{when} {record.levelname.lower():<7} {event} {fields}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(log_format: str = "auto") -> None:
    """JSON lines (for files, journald, grep/jq) unless stderr is a terminal, where each
    line is written to be read (`server.log_format` chooses: auto, json or text)."""
    handler = logging.StreamHandler()
    readable = log_format == "text" or (log_format == "auto" and handler.stream.isatty())
    handler.setFormatter(Readable() if readable else JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("npllm").setLevel(logging.INFO)


def single_threaded_torch() -> None:
    """Keep torch (the embedder, the modulator) on one thread in a process that serves with
    llama.cpp. torch's wheel and llama.cpp's ggml share one OpenMP runtime (the first
    ``libgomp.so.1`` loaded, torch's); a second thread team in it (torch's, made by the first
    multi-threaded embedding) makes libgomp count more threads than cores and switch every
    team to its "throttled" waits, which sleep at each of ggml's barriers: decoding fell
    from ~100 to ~37 tokens/s here after one embedding (bench/engines.py, docs/performance.md).
    One torch thread never opens a team, so ggml keeps its spinning barriers."""
    import torch

    torch.set_num_threads(1)


class Daemon:
    """One npllm daemon on one data directory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.socket_path = settings.socket_path
        self.lock_path = settings.data_path / "npllm.lock"
        self._lock_file: IO[str] | None = None
        self._sockets: list[socket.socket] = []
        self.database: Any = None
        self.service: Any = None

    # ---- startup ----------------------------------------------------------------------------

    def startup(self) -> None:
        started = time.perf_counter()
        self._take_lock()
        from npllm import interactions
        from npllm.awake import AwakePath
        from npllm.db import Database
        from npllm.embeddings import load_embedder
        from npllm.engines import load_engine
        from npllm.llm import untrainable_reason
        from npllm.versions import BaseIdentity, Registry
        from npllm.weights import resolve
        from services.alerts import Alerts
        from services.api import Service
        from services.canaries import held_at_start
        from services.feedback_writer import FeedbackWriter
        from services.queue import GenerationQueue
        from services.sleep import Sleeper
        from services.watch import Job, Watcher

        self.database = Database(self.settings)
        applied = self.database.open(migrate=True)
        if applied:
            log.info(json.dumps({"event": "migrated", "applied": applied}))
        engine = load_engine(self.settings)
        if engine.name == "llama.cpp":
            single_threaded_torch()
        embedder = load_embedder(self.settings)
        awake = AwakePath(self.settings, self.database.pool, engine, embedder)
        registry = Registry.for_settings(
            self.database.pool, self.settings, BaseIdentity(engine.model_id, engine.fingerprint)
        )
        changed = registry.sync_staleness()
        # Running canary trials keep their controls loaded beside the active versions.
        loaded = awake.load_adapters(
            registry, held_at_start(self.database.pool, self.settings, registry)
        )
        cerebellum_registry = self._load_cerebellum(awake, engine)
        log.info(
            json.dumps(
                {
                    "event": "adapters",
                    "loaded": [v.key for v in loaded],
                    "status_changed": changed,
                    "modulator_parameters": awake.modulator.parameter_count,
                }
            )
        )
        # The TCP listener's key exists before anything listens (made on first use).
        key_file = KeyFile(self.settings) if self.settings.server.tcp_port else None
        alerts = Alerts(self.database.pool, self.settings, self.settings.data_path)
        self.service = Service(
            settings=self.settings,
            database=self.database,
            awake=awake,
            queue=GenerationQueue(self.settings.server.queue_size),
            versions=self.database.versions(),
            feedback_writer=FeedbackWriter(awake.feedback),
            registry=registry,
            sleeper=Sleeper(
                self.settings, count_new=lambda: interactions.since_last_cycle(self.database.pool)
            ),
            cerebellum_registry=cerebellum_registry,
            untrainable=untrainable_reason(resolve(self.settings.models.base, "models.base")),
            key_file=key_file,
            alerts=alerts,
        )
        self.service.canaries.restore()
        # The periodic jobs, off the event loop (services/watch.py).
        self.service.watcher = Watcher(
            [
                Job("canary", self.settings.canary.check_every_s, self.service.canaries.check),
                Job("alerts", self.settings.alerts.check_every_s, alerts.check),
            ]
        )
        self.service.watcher.start()
        self._bind()
        log.info(
            json.dumps(
                {
                    "event": "ready",
                    "socket": str(self.socket_path),
                    "tcp_port": self.settings.server.tcp_port or None,
                    "base_model": engine.model_id,
                    "engine": engine.info(),
                    "embedder": embedder.model_id,
                    "database": self.database.url,
                    "startup_s": round(time.perf_counter() - started, 2),
                }
            )
        )

    def _load_cerebellum(self, awake: Any, engine: Any) -> Any:
        """With cerebellum.role = draft: its model, registry and active version (a version
        that fails to load is logged and skipped: the daemon serves without drafting)."""
        from npllm import cerebellum
        from npllm.adapters import CEREBELLUM

        if self.settings.cerebellum.role == "off":
            return None
        own = cerebellum.load_model(self.settings, engine)
        registry = cerebellum.registry_for(self.settings, self.database.pool, own)
        registry.sync_staleness()
        awake.cerebellum = cerebellum.Cerebellum(self.settings, own, engine)
        current = registry.current(CEREBELLUM)
        if current is not None:
            try:
                awake.cerebellum.activate(awake.cerebellum.build(current))
            except Exception as exc:
                log.error(json.dumps({"event": "cerebellum_not_loaded", "error": str(exc)}))
        log.info(json.dumps({"event": "cerebellum", **awake.cerebellum.status()}))
        return registry

    def _take_lock(self) -> None:
        self.settings.data_path.mkdir(parents=True, exist_ok=True)
        lock = self.lock_path.open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise DaemonError(
                f"another npllm serve (pid {holder}) is already running on data dir "
                f"{self.settings.data_path}; stop it first, or set data_dir for a second one"
            ) from exc
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        self._lock_file = lock

    def _bind(self) -> None:
        path = self.socket_path
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
        elif path.parent == run_dir(self.settings.data_path):
            path.parent.chmod(0o700)  # our own directory; a user-chosen one is left as it is
        if path.exists() or path.is_symlink():
            # We hold the data dir's lock, so no live daemon owns it: a crashed run left it.
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise DaemonError(
                    f"{path} exists and is not a socket; remove it or set server.socket"
                )
            log.info(json.dumps({"event": "stale_socket_removed", "socket": str(path)}))
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            sock.bind(str(path))
        except OSError as exc:
            sock.close()
            raise DaemonError(f"cannot bind the socket {path}: {exc}; set server.socket") from exc
        finally:
            os.umask(old_umask)
        path.chmod(0o600)
        self._sockets.append(sock)
        server = self.settings.server
        if server.tcp_port:
            family = socket.AF_INET6 if ":" in server.tcp_host else socket.AF_INET
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            where = tcp_address(self.settings)
            try:
                tcp.bind((server.tcp_host, server.tcp_port))
            except OSError as exc:
                tcp.close()
                raise DaemonError(
                    f"cannot listen on {where}: {exc}; change server.tcp_port or set it to 0"
                ) from exc
            self._sockets.append(tcp)
            log.info(
                json.dumps(
                    {
                        "event": "tcp_listening",
                        "address": where,
                        "key_file": str(key_path(self.settings)),
                        "remote": server.allow_remote,
                    }
                )
            )

    # ---- main loop --------------------------------------------------------------------------

    def main_loop(self) -> None:
        from services.api import create_app

        config = uvicorn.Config(
            create_app(self.service),
            log_config=None,
            access_log=False,
            # uvicorn types it int, but hands it to asyncio.timeout (a float is fine there)
            timeout_graceful_shutdown=self.settings.server.shutdown_timeout_s,  # type: ignore[arg-type]
            # No X-Forwarded-For from 127.0.0.1 rewrites a client's address in the log.
            proxy_headers=False,
            lifespan="off",
        )
        server = _Server(config, self)
        server.run(sockets=self._sockets)

    # ---- shutdown ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Release everything, whatever state startup reached."""
        if self.service is not None:
            if self.service.watcher is not None:
                self.service.watcher.stop()
            if self.service.alerts is not None:  # an alert command still writing its result
                self.service.alerts.wait_commands(timeout=5.0)
            self.service.cancel_all()
            self.service.sleeper.stop()
            self.service.queue.shutdown()
            self.service.feedback_writer.close()
            try:  # llama.cpp's server threads, and their sockets in run/
                self.service.awake.engine.close()
            except Exception:
                log.exception("closing the engine failed")
        for sock in self._sockets:
            sock.close()
        if self._sockets:
            self.socket_path.unlink(missing_ok=True)
        if self.database is not None:
            self.database.close(stop_server=True)
        if self._lock_file is not None:
            self.lock_path.unlink(missing_ok=True)
            self._lock_file.close()
            # Only a daemon that got its data dir stopped: one refused at the lock (another
            # is running) never started.
            log.info(json.dumps({"event": "stopped"}))

    def run(self) -> None:
        try:
            self.startup()
            self.main_loop()
        finally:
            self.shutdown()


def serve(settings: Settings) -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT."""
    configure_logging(settings.server.log_format)
    Daemon(settings).run()
