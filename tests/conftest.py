"""Shared fixtures: one real embedded PostgreSQL and one load of each real model per session."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from npllm.config import Settings, load_settings
from npllm.db import Database

REPO = Path(__file__).resolve().parent.parent
# The dequantised GGUF is cached once per checkout (under .venv, so `make clean` drops it);
# every test session after the first loads it in about a second.
MODEL_CACHE = Path(os.environ.get("NPLLM_TEST_MODEL_CACHE", REPO / ".venv" / "npllm-model-cache"))


def make_settings(data_dir: Path, **env: str) -> Settings:
    """Test settings: config/npllm.toml, a temp data dir, the shared model cache."""
    environ = {
        "NPLLM_DATA_DIR": str(data_dir),
        "NPLLM_MODELS__CACHE_DIR": str(MODEL_CACHE),
        **env,
    }
    return load_settings(environ=environ)


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for running the `npllm` command in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPLLM_")}
    env.update(NPLLM_DATA_DIR=str(data_dir), NPLLM_MODELS__CACHE_DIR=str(MODEL_CACHE), **extra)
    return env


NPLLM = [sys.executable, "-m", "services.cli"]


def asked(pool: Any, embedder: Any, question: str, answer: str = "It is 80.") -> int:
    """A question asked and answered, stored as the awake path stores it (an interaction and
    its replay row); its interaction id."""
    from npllm import interactions, replay
    from npllm.interactions import Interaction

    embedding = embedder.embed_one(question)
    with pool.connection() as conn, conn.transaction():
        iid = interactions.record(
            conn,
            Interaction([{"role": "user", "content": question}], question, answer, "m", embedding),
        )
        replay.admit(conn, iid, embedding, [])
    return int(iid)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("npllm-data")


@pytest.fixture(scope="session")
def settings(data_dir: Path) -> Settings:
    return make_settings(data_dir)


@pytest.fixture(scope="session")
def database(settings: Settings) -> Iterator[Database]:
    """The real embedded PostgreSQL + pgvector, migrated, for the whole session."""
    db = Database(settings)
    db.open()
    yield db
    db.close(stop_server=True)


_db_names = itertools.count()


@pytest.fixture
def fresh_conn(database: Database) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to a brand-new, empty database on the session server."""
    assert database.embedded is not None
    name = f"fresh_{os.getpid()}_{next(_db_names)}"
    admin = database.embedded.uri("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    conn = psycopg.connect(database.embedded.uri(name), autocommit=True)
    try:
        yield conn
    finally:
        conn.close()
        with psycopg.connect(admin, autocommit=True) as admin_conn:
            admin_conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_database(
    database: Database, data_dir: Path, fresh_conn: psycopg.Connection[Any]
) -> Iterator[Database]:
    """A migrated, empty npllm database reached through `database.dsn`, as an external
    server would be; for tests that need to know every row."""
    assert database.embedded is not None
    name = fresh_conn.info.dbname
    db = Database(make_settings(data_dir, NPLLM_DATABASE__DSN=database.embedded.uri(name)))
    db.open()
    yield db
    db.close()


@pytest.fixture(scope="session")
def base_llm(settings: Settings) -> Any:
    from npllm.llm import load_base_llm

    return load_base_llm(settings)


@pytest.fixture(scope="session")
def embedder(settings: Settings) -> Any:
    from npllm.embeddings import load_embedder

    return load_embedder(settings)


class LiveDaemon:
    """A real `npllm serve` subprocess on a real Unix socket."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        import subprocess

        self.data_dir = data_dir
        self.socket = data_dir / "run" / "npllm.sock"
        self.tcp_port = 0  # set by fixtures that open a TCP port
        self.log = data_dir.parent / f"{data_dir.name}-serve.log"
        self.proc = subprocess.Popen(
            [*NPLLM, "serve"],
            env=cli_env(data_dir, **env),
            cwd=REPO,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 240.0) -> LiveDaemon:
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"npllm serve exited early:\n{self.log.read_text()}")
            if self.socket.exists():
                try:
                    if self.http().get("/v1/status").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"npllm serve not ready after {timeout} s:\n{self.log.read_text()}")

    def http(self, timeout: float = 300.0) -> Any:
        import httpx

        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)),
            base_url="http://npllm",
            timeout=timeout,
        )

    def stop(self, timeout: float = 60.0) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def tiny_llama_config(vocab_size: int) -> Any:
    """A 2-layer Llama of hidden size 32: every tiny test model has this shape."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )


def cached_base() -> Path:
    """The shipped base dequantised into the test model cache (done here if no test has
    loaded the base yet: test order must not matter)."""
    from npllm.config import ModelsConfig
    from npllm.llm import dequantise_gguf
    from npllm.weights import resolve

    return dequantise_gguf(resolve(ModelsConfig().base, "models.base"), MODEL_CACHE)


def save_tiny_llama(path: Path, extra_tokens: tuple[str, ...] = ()) -> Path:
    """A randomly initialised 2-layer Llama with SmolLM2's tokenizer (plus `extra_tokens`),
    saved as a model directory: a loadable "other model" for base and cerebellum tests."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(cached_base())
    if extra_tokens:
        tokenizer.add_tokens(list(extra_tokens))
    LlamaForCausalLM(tiny_llama_config(len(tokenizer))).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def psql(daemon: LiveDaemon, sql: str) -> str:
    """`npllm psql -At -c SQL` on the daemon's database: its output, stripped."""
    import subprocess

    done = subprocess.run(
        [*NPLLM, "psql", "-At", "-c", sql],
        env=cli_env(daemon.data_dir),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def ask_ok(http: Any, question: str, **extra: Any) -> dict[str, Any]:
    """One chat completion (24 tokens unless said otherwise) that must succeed."""
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": 24, **extra}
    reply = http.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaemon]:
    """The shared daemon; it also listens on TCP (`daemon.tcp_port`), as editors need."""
    port = free_port()
    data = tmp_path_factory.mktemp("daemon") / "data"
    live = LiveDaemon(data, NPLLM_SERVER__TCP_PORT=str(port)).wait_ready()
    live.tcp_port = port
    yield live
    live.stop()


# ---- tiny models and LoRA directories (fast unit tests) ---------------------------------


def tiny_model() -> Any:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(128))


def lora_artifact(path: Path, r: int = 16, alpha: int = 32, **extra: Any) -> Path:
    """A (randomly initialised) LoRA adapter directory for a tiny model."""
    from peft import LoraConfig, get_peft_model

    dtype = extra.pop("dtype", None)
    targets = extra.pop("target_modules", ["q_proj", "k_proj", "v_proj", "o_proj"])
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False, **extra
    )
    model = get_peft_model(tiny_model(), config)
    if dtype is not None:
        model.to(dtype)
    model.save_pretrained(str(path))
    return path


DATA = REPO / "tests" / "data"
