"""A real `npllm serve` in a temp data dir, for the benchmarks (not the tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Live:
    env: dict[str, str]  # what `python -m services.cli ...` needs to reach this daemon
    socket: Path
    http: Any  # an httpx.Client on the socket
    pid: int = 0


@contextmanager
def live_daemon(
    model_cache: Path, timeout: float = 240.0, keep: Path | None = None, **extra: str
) -> Iterator[Live]:
    """Start the daemon (`extra`: more NPLLM_* variables), wait until /v1/status answers,
    stop it (SIGTERM) on exit. `keep`: a directory to run in and leave behind (its data dir,
    the daemon's and the worker's logs), to look into afterwards; default a temp dir."""
    import httpx

    with tempfile.TemporaryDirectory() as tmp:
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
        data = (keep or Path(tmp)) / "data"
        env = {
            "NPLLM_DATA_DIR": str(data),
            "NPLLM_MODELS__CACHE_DIR": str(model_cache),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            **extra,
        }
        log = (keep or Path(tmp)) / "serve.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve"],
            env=env,
            cwd=REPO,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        sock = data / "run" / "npllm.sock"
        http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://npllm", timeout=300
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"npllm serve did not start:\n{log.read_text()}")
                try:
                    if http.get("/v1/status").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            yield Live(env, sock, http, proc.pid)
        finally:
            http.close()
            proc.terminate()
            proc.wait(60)
