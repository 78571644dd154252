"""`npllm doctor`: check every part a start needs and say what is missing."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from npllm.config import Settings
from npllm.errors import NpllmError


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _data_dir(settings: Settings) -> Check:
    path = settings.data_path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return Check("data dir", False, f"{path}: cannot create it ({exc}); set data_dir")
    if not os.access(path, os.W_OK):
        return Check("data dir", False, f"{path} is not writable; set data_dir")
    return Check("data dir", True, str(path))


def _running_daemon(settings: Settings) -> Check | None:
    """A failed check when an `npllm serve` already holds this data dir, else None.

    The daemon holds an flock on <data_dir>/npllm.lock with its pid in it for as long as
    it runs (services/daemon.py, Daemon._take_lock); the file outlives a crash, the lock
    does not. Probed with a shared lock released at once, so a stale file is no daemon."""
    path = settings.data_path / "npllm.lock"
    try:
        lock = path.open()
    except OSError:  # none (no daemon ever ran here, or it stopped cleanly) or unreadable
        return None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = lock.read().strip() or "?"
        else:
            fcntl.flock(lock, fcntl.LOCK_UN)
            return None
    return Check(
        "daemon",
        False,
        f"npllm serve (pid {pid}) is already running on {settings.data_path}: ask it with "
        f"`npllm status`, or stop it (kill {pid}) before `npllm serve` or doctor",
    )


def _database(settings: Settings) -> list[Check]:
    from npllm.db import Database
    from npllm.migrations import applied_versions, discover

    db = Database(settings)
    started = time.perf_counter()
    try:
        db.open(migrate=False)
        versions = db.versions()
        with db.pool.connection() as conn:
            done = applied_versions(conn)
        pending = [m.name for m in discover() if m.version not in done]
    except NpllmError as exc:
        return [Check("database", False, str(exc))]
    finally:
        db.close()
    kind = "external" if settings.database.dsn else "embedded"
    checks = [
        Check(
            "database",
            True,
            f"{kind} {db.url} (PostgreSQL {versions.postgresql}, pgvector {versions.pgvector}) "
            f"in {time.perf_counter() - started:.1f} s",
        )
    ]
    if pending:
        checks.append(
            Check(
                "migrations",
                True,
                f"{len(pending)} pending, applied at the next start: " + ", ".join(pending),
            )
        )
    else:
        checks.append(Check("migrations", True, f"{len(done)} applied, up to date"))
    return checks


def _engine(settings: Settings) -> list[Check]:
    """The serving engine: loaded, named, and answering."""
    from npllm.engines import engine_name, load_engine

    try:
        engine = load_engine(settings)
    except NpllmError as exc:
        return [Check("engine", False, str(exc))]
    checks = [Check("engine", True, _engine_detail(engine.info(), engine.context_length))]
    if engine_name(settings) == "transformers":
        engine.close()
        return checks
    from npllm.generation import GenerationParams

    ids = engine.encode_chat([{"role": "user", "content": "Say hello."}])
    gen = engine.generate(ids, GenerationParams(max_new_tokens=8))
    engine.close()
    checks.append(_generated(gen))
    return checks


def _engine_detail(info: dict[str, Any], context_length: int) -> str:
    """The engine line: each library named with its own version."""
    detail = f"{info['engine']} {info['version']}"
    if "torch" in info:
        detail += f" (torch {info['torch']})"
    detail += f", {info['threads']} threads"
    if "avx2" in info:
        detail += f", AVX2 {'yes' if info['avx2'] else 'NO (slow)'}"
    return f"{detail}, context {context_length} tokens"


def _generated(gen: Any) -> Check:
    return Check(
        "generation",
        bool(gen.text.strip()),
        f"{gen.completion_tokens} tokens in {gen.seconds:.2f} s: {gen.text.strip()[:40]!r}"
        if gen.text.strip()
        else "the base model produced an empty answer",
    )


def _base_model(settings: Settings) -> list[Check]:
    """The training copy (torch, dequantised): what the sleep cycle learns on."""
    from npllm.engines import engine_name
    from npllm.llm import load_base_llm, untrainable_reason
    from npllm.weights import resolve

    try:
        reason = untrainable_reason(resolve(settings.models.base, "models.base"))
    except NpllmError as exc:
        return [Check("base model", False, str(exc))]
    if reason is not None:
        return [Check("training", True, f"NOT TRAINABLE: {reason}")]
    try:
        llm = load_base_llm(settings)
    except NpllmError as exc:
        return [Check("base model", False, str(exc))]
    params = sum(p.numel() for p in llm.model.parameters())
    trainable = sum(p.numel() for p in llm.model.parameters() if p.requires_grad)
    checks = [
        Check(
            "base model",
            trainable == 0,
            f"{llm.model_id} ({llm.source.kind}, {params / 1e6:.1f} M params, frozen, "
            f"{llm.device}) loaded in {llm.load_seconds:.1f} s"
            if trainable == 0
            else f"{trainable} parameters are trainable; the base LLM must be frozen",
        )
    ]
    if engine_name(settings) == "transformers":  # it is the serving engine too
        gen = llm.generate([{"role": "user", "content": "Say hello."}], max_new_tokens=8)
        checks.append(_generated(gen))
    return checks


def _embedder(settings: Settings) -> Check:
    from npllm.embeddings import load_embedder

    try:
        emb = load_embedder(settings)
    except NpllmError as exc:
        return Check("embedder", False, str(exc))
    return Check(
        "embedder", True, f"{emb.model_id} ({emb.dim}-dim) loaded in {emb.load_seconds:.1f} s"
    )


def _line(check: Check) -> str:
    return f"{check.name:<12} {'ok  ' if check.ok else 'FAIL'} {check.detail}"


def run_doctor(settings: Settings, echo: Callable[[str], None]) -> bool:
    """Run every check, print one line each; True when all pass."""
    echo(f"config       {', '.join(settings.sources) or 'built-in defaults'}")
    running = _running_daemon(settings)
    if running is not None:  # its models and database are in use: checking them says nothing
        echo(_line(running))
        return False
    checks = [_data_dir(settings)]
    if checks[0].ok:
        checks += _database(settings)
        checks += _engine(settings)
        checks += _base_model(settings)
        checks.append(_embedder(settings))
    for check in checks:
        echo(_line(check))
    failed = [c.name for c in checks if not c.ok]
    echo("all green" if not failed else f"not ready: {', '.join(failed)} failed")
    return not failed
