"""`npllm doctor`'s own logic: a running daemon found first, each library named rightly.

The full run against the real parts is in tests/services/test_cli.py."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import pytest

from services import doctor

from ..conftest import make_settings


def _nothing_loaded(*args: Any) -> Any:
    raise AssertionError("doctor went on to load the database or a model")


def test_a_running_daemon_is_named_at_once_without_loading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(tmp_path)
    for check in ("_database", "_engine", "_base_model", "_embedder"):
        monkeypatch.setattr(doctor, check, _nothing_loaded)
    # What Daemon._take_lock leaves while it serves: the file locked, its pid inside.
    with (tmp_path / "npllm.lock").open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        lines: list[str] = []
        ok = doctor.run_doctor(settings, lines.append)
    assert not ok
    assert len(lines) == 2  # the config line, then the one reason
    assert lines[1].startswith("daemon       FAIL npllm serve (pid 4242) is already running")
    assert "npllm status" in lines[1] and "kill 4242" in lines[1]


def test_a_lock_file_left_by_a_crash_is_no_daemon(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    (tmp_path / "npllm.lock").write_text(str(os.getpid()))  # nobody holds its lock
    assert doctor._running_daemon(settings) is None
    (tmp_path / "npllm.lock").unlink()
    assert doctor._running_daemon(settings) is None


def test_the_transformers_engine_line_names_transformers_and_torch_versions() -> None:
    import torch
    import transformers

    from npllm.engines.transformers import TransformersEngine

    settings = make_settings(Path("/nonexistent"))
    engine = TransformersEngine(settings, llm=type("LLM", (), {"device": "cpu"})())
    info = engine.info()
    assert info["version"] == transformers.__version__
    assert info["torch"] == torch.__version__
    line = doctor._engine_detail(info, 8192)
    assert line.startswith(f"transformers {transformers.__version__} (torch {torch.__version__}), ")
    assert line.endswith("context 8192 tokens")
