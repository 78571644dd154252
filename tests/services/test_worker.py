"""services/worker.py and services/sleep_protocol.py: the worker's control files, how the
daemon starts the worker, and that the daemon, the worker and the CLI import one another
in one direction only. (The publishers: tests/consolidation/test_publisher.py.)"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from npllm.config import SleepConfig
from npllm.errors import CycleStopped
from services.sleep_protocol import PAUSED, worker_control


def test_worker_control_waits_while_paused_and_stops_when_told(tmp_path: Path) -> None:
    import threading
    import time

    control = worker_control(tmp_path, os.getppid())
    control()  # nothing asked: returns at once
    (tmp_path / "sleep.pause").touch()
    done = threading.Event()
    thread = threading.Thread(target=lambda: (control(), done.set()))
    thread.start()
    deadline = time.monotonic() + 5
    while not (tmp_path / PAUSED).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (tmp_path / PAUSED).exists() and not done.is_set()  # paused, and says so
    (tmp_path / "sleep.pause").unlink()
    thread.join(5)
    assert done.is_set() and not (tmp_path / PAUSED).exists()
    (tmp_path / "sleep.stop").touch()
    with pytest.raises(CycleStopped, match="the daemon asked the cycle to stop"):
        control()
    with pytest.raises(CycleStopped, match=r"the daemon that started this cycle \(pid 1\) is"):
        worker_control(tmp_path / "nowhere", parent=1)()  # not this process's parent


def test_the_daemon_starts_the_worker_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services import sleep

    started: list[list[str]] = []
    monkeypatch.setattr(
        sleep.subprocess, "Popen", lambda argv, **kwargs: started.append(argv) or object()
    )
    sleeper = sleep.Sleeper(SimpleNamespace(sleep=SleepConfig(), data_path=tmp_path))
    sleeper.seed = 5
    sleeper._act("start")
    assert started == [
        [sys.executable, "-m", "services.worker", "--seed", "5", "--trigger", "manual"]
    ]


def test_the_daemon_the_worker_and_the_cli_import_one_another_one_way() -> None:
    """No import circle among npllm, consolidation and services, counting the imports inside
    functions (the sleep worker imported the CLI for its summary, and the daemon's sleep
    module imported the worker for a file name, which imported it back)."""
    import ast
    import graphlib

    root = Path(__file__).resolve().parents[2]
    modules = {}
    for package in ("npllm", "consolidation", "services"):
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    imported.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        graph[name] = {m for m in imported if m in modules and m != name}
    assert "services.sleep_protocol" in graph["services.worker"]  # the graph is read
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the circle
    assert not any(m.split(".")[:2] == ["services", "cli"] for m in graph["services.worker"])
