"""The daemon's life: socket permissions, one daemon per data dir, busy queue, clean stop."""

from __future__ import annotations

import stat
import subprocess
import threading
from pathlib import Path

import psutil

from ..conftest import NPLLM, REPO, LiveDaemon, cli_env


def _postgres_running(data_dir: Path) -> bool:
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] == "postgres" and str(data_dir / "pgdata") in cmdline:
            return True
    return False


def test_socket_is_private(daemon: LiveDaemon) -> None:
    mode = daemon.socket.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(daemon.socket.parent.stat().st_mode) == 0o700


def test_second_daemon_on_the_same_data_dir_is_refused(daemon: LiveDaemon) -> None:
    proc = subprocess.run(
        [*NPLLM, "serve"],
        env=cli_env(daemon.data_dir),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "another npllm serve (pid " in proc.stderr
    assert f"is already running on data dir {daemon.data_dir}" in proc.stderr
    assert '"stopped"' not in proc.stderr  # it never started, so it does not say it stopped
    assert daemon.http().get("/v1/status").status_code == 200  # the first one is unharmed


def test_cli_client_talks_to_the_daemon(daemon: LiveDaemon) -> None:
    env = cli_env(daemon.data_dir)
    run = lambda *a: subprocess.run(  # noqa: E731
        [*NPLLM, *a], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    stored = run("remember", "The gizmotron build uses the flag --turbo-llama.")
    assert stored.returncode == 0, stored.stderr
    assert "stored as memory #" in stored.stdout
    found = run("memories", "search", "gizmotron build flag")
    assert "--turbo-llama" in found.stdout
    asked = run("ask", "Say hello.", "--max-tokens", "8")
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.strip()
    assert "[interaction " in asked.stderr
    status = run("status")
    assert "state        awake" in status.stdout


def test_cli_says_clearly_when_the_daemon_is_not_running(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*NPLLM, "ask", "hello"],
        env=cli_env(tmp_path),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"npllm: npllm is not running (nothing answers on {tmp_path}/run/npllm.sock); "
        "start it with `npllm serve` or `make run`"
    )


def test_full_queue_answers_503_then_sigterm_cleans_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # A stale socket file from a "crashed" run must not stop the start.
    (data / "run").mkdir(parents=True)
    import socket as socketlib

    stale = socketlib.socket(socketlib.AF_UNIX)
    stale.bind(str(data / "run" / "npllm.sock"))
    stale.close()
    # In-flight answers get 1 s to finish at SIGTERM, then are cancelled: the clean-up is
    # under test here, not how long a 200-token story takes.
    live = LiveDaemon(
        data, NPLLM_SERVER__QUEUE_SIZE="1", NPLLM_SERVER__SHUTDOWN_TIMEOUT_S="1"
    ).wait_ready()
    try:
        # Long enough to be running at SIGTERM on any machine (cancelled after the grace).
        story = [{"role": "user", "content": "Tell a long story."}]
        body = {"messages": story, "max_tokens": 1000}
        statuses: list[int] = []

        def send() -> None:
            with live.http() as http:
                statuses.append(http.post("/v1/chat/completions", json=body).status_code)

        threads = [threading.Thread(target=send) for _ in range(2)]
        for t in threads:
            t.start()
        import time

        time.sleep(1.5)  # one running, one waiting: the queue (size 1) is full
        with live.http() as http:
            busy = http.post("/v1/chat/completions", json=body)
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "2"
        assert busy.json()["error"]["code"] == "queue_full"
        assert "npllm is busy" in busy.json()["error"]["message"]
        assert _postgres_running(data)
    finally:
        code = live.stop(timeout=120)
    for t in threads:
        t.join(timeout=60)
    assert code == 0, live.log.read_text()
    assert not live.socket.exists()
    assert not (data / "npllm.lock").exists()
    assert not _postgres_running(data)
    log = live.log.read_text()
    assert '"event": "stale_socket_removed"' in log
    assert '"event": "stopped"' in log
    # The story running at SIGTERM was cut short after the grace period (not generated to
    # its end while the daemon waited), and that says nothing about what its user thought.
    stopped = subprocess.run(
        [*NPLLM, "psql", "-At", "-c",
         "SELECT i.finish_reason, i.completion_tokens < 1000, count(f.id) "
         "FROM npllm.interactions i LEFT JOIN npllm.feedback_events f "
         "ON f.interaction_id = i.id GROUP BY i.id"],
        env=cli_env(data), cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert stopped.stdout.split() == ["cancelled|t|0"], stopped.stderr


def test_log_lines_are_json_for_machines_and_text_for_people() -> None:
    import json
    import logging

    from services.daemon import JsonLines, Readable

    record = logging.LogRecord(
        "npllm.daemon",
        logging.INFO,
        __file__,
        1,
        json.dumps(
            {
                "event": "ready",
                "tcp_port": 8,
                "socket": "/run/x.sock",
                "engine": {"threads": 2},
                "skipped": None,
            }
        ),
        None,
        None,
    )
    assert json.loads(JsonLines().format(record))["event"] == "ready"
    line = Readable().format(record)
    assert line.split(" ", 2)[1:] == ["info", line.split(" ", 2)[2]]
    assert 'ready tcp_port=8 socket=/run/x.sock engine={"threads": 2}' in line
    assert "skipped" not in line
