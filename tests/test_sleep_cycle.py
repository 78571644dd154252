"""Teaching overnight, the way a user teaches: wrong answers, corrected by `edited` feedback
with a pleased comment, a forced cycle, retrieval memory cleared — and the answers are
now right, from the published adapter, with the base weights untouched."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import NPLLM, REPO, LiveDaemon, cli_env
from .conftest import ask_ok as _ask

ENV = {
    # Tiny but real training: each night's few corrections, 8 steps at a high rate.
    "NPLLM_TRAINING__EPOCHS": "8",
    "NPLLM_TRAINING__GRAD_ACCUMULATION": "1",
    "NPLLM_TRAINING__LEARNING_RATE": "0.002",
    "NPLLM_TRAINING__LORA_DROPOUT": "0.0",
    # The corrections must come from the adapter, not from remembered exchanges.
    "NPLLM_MEMORY__STORE_EXCHANGES": "false",
}
# For the tests about the cycle's mechanics (gate, kill, resume), run with `--here`: keeps
# them short — 4 epochs, no cerebellum, no anchor pass (what is learned is the teaching
# test's business).
MECHANICS_ONLY = {
    "NPLLM_CEREBELLUM__ROLE": "off",
    "NPLLM_TRAINING__ANCHOR_WEIGHT": "0",
    "NPLLM_TRAINING__EPOCHS": "4",
}
CHECKPOINT_EACH_STEP = {"NPLLM_TRAINING__CHECKPOINT_EVERY": "1"}
# question → (the corrected answer the user sends, the word that proves it was learned)
NIGHT_1 = {
    "What port does the Quibblix gateway listen on?": (
        "The Quibblix gateway listens on port 6123.",
        "6123",
    ),
    "Who wrote the Quibblix gateway?": (
        "The Quibblix gateway was written by Marta Vilanova.",
        "Vilanova",
    ),
}
# More about the same gateway: night 2 teaches the adapter night 1 made (it is the nearest),
# which must learn these and keep night 1's (MAS, and night 1's corrections replayed).
NIGHT_2 = {
    "What language is the Quibblix gateway written in?": (
        "The Quibblix gateway is written in OCaml.",
        "OCaml",
    ),
    "When was the Quibblix gateway first released?": (
        "The Quibblix gateway was first released in 1987.",
        "1987",
    ),
}
# An imported dataset (question → (answer, proof)), learned by the adapter of its name.
DATASET = {
    "How do I deploy the Quibblix gateway?": ("Run `qbx ship --canary` from the repo root.", "qbx"),
    "Where are the Quibblix gateway logs?": ("They are in /srv/quibblix/logs.", "/srv/quibblix"),
}


def _cli(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NPLLM, *args],
        env=cli_env(data_dir, **{**ENV, **env}),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _teach(http: Any, facts: dict[str, tuple[str, str]]) -> None:
    for question, (truth, key) in facts.items():
        first = _ask(http, question)
        assert key not in first["choices"][0]["message"]["content"]
        r = http.post(
            "/v1/feedback",
            json={
                "interaction_id": first["npllm"]["interaction_id"],
                "event": "edited",
                "text": truth,
                "comment": "thanks, that's exactly right now!",
            },
        )
        assert r.status_code == 201 and r.json()["tier"] == "premium"


def _knows(http: Any, facts: dict[str, tuple[str, str]], **npllm: Any) -> list[bool]:
    extra = {"npllm": npllm} if npllm else {}
    return [
        key in _ask(http, q, **extra)["choices"][0]["message"]["content"]
        for q, (_, key) in facts.items()
    ]


@pytest.fixture(scope="module")
def sleeper(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data_dir = tmp_path_factory.mktemp("sleep") / "data"
    live = LiveDaemon(data_dir, **ENV).wait_ready()
    yield live
    live.stop()


def test_teaching_overnight_and_a_second_night_woken_by_a_request_keeps_the_first(
    sleeper: LiveDaemon, tmp_path: Path
) -> None:
    """Also the waking test: a question asked while night 2 trains is answered at once by
    the active versions while the worker stops computing, and the cycle then completes.
    (How long the answer takes is machine speed: bench/sleep.py measures the extra delay
    a cycle adds, docs/performance.md has the figures.)"""
    import time

    import psutil

    data_dir = sleeper.data_dir
    with sleeper.http() as http:
        _teach(http, NIGHT_1)
    night = _cli(data_dir, "sleep", "--now", "--follow", "--seed", "1")
    assert night.returncode == 0, night.stderr
    assert "published" in night.stdout and "base weights unchanged: True" in night.stdout
    assert "cycle 1: training" in night.stderr  # --follow showed the phases
    assert "cerebellum: 2 sample(s)" in night.stdout
    with sleeper.http() as http:
        assert _knows(http, NIGHT_1) == [True, True]
        served = http.get("/v1/adapters").json()["served"]
        assert len(served) == 1
        adapter = next(iter(served))
        # The cerebellum learned the same corrections and now drafts them for the base.
        brain = http.get("/v1/cerebellum").json()
        assert brain["version"] == 1 and brain["drafting"] is True
        drafts = [_ask(http, q)["npllm"]["cerebellum"] for q in NIGHT_1]
        print(f"\ncerebellum drafts after night 1: {drafts}")
        assert all(d["version"] == 1 and d["proposed"] > 0 for d in drafts)
        assert all(d["acceptance_rate"] >= 0.5 for d in drafts)
        _teach(http, NIGHT_2)
    # An imported dataset goes to the adapter of its name, the same night.
    imported = tmp_path / "ops.jsonl"
    imported.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q},
                                     {"role": "assistant", "content": a}]}) + "\n"
            for q, (a, _) in DATASET.items()
        )
    )  # fmt: skip
    assert _cli(data_dir, "dataset", "import", "quibblix-ops", str(imported)).returncode == 0
    with sleeper.http() as http:
        latest = http.get("/v1/sleep").json()["latest_cycle"]
        follow = subprocess.Popen(
            [*NPLLM, "sleep", "--now", "--follow", "--seed", "2"],
            env=cli_env(data_dir, **ENV),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        status = _until_training(http, latest)
        assert status["state"] == "asleep" and status["worker_pid"] is not None
        running, worker = status["cycles"][0]["id"], psutil.Process(status["worker_pid"])
        started = time.perf_counter()
        reply = _ask(http, "Name one sorting algorithm.", max_tokens=8)
        answered_s = time.perf_counter() - started
        assert reply["choices"][0]["message"]["content"]
        during = http.get("/v1/sleep").json()
        assert during["state"] == "waking" and during["cycles"][0]["status"] == "running"
        # Paused: the worker computes nothing while the daemon is awake for its user.
        cpu = sum(worker.cpu_times()[:2])
        time.sleep(1.0)
        paused_cpu_s = sum(worker.cpu_times()[:2]) - cpu
        # One cycle at a time: asking for another one now is refused, with the reason.
        again = http.post("/v1/sleep", json={"now": True})
        assert again.status_code == 409
        assert f"sleep cycle {running} is already running" in again.json()["error"]["message"]
    stdout, stderr = follow.communicate(timeout=900)
    print(f"\nanswered mid-cycle in {answered_s:.2f} s; paused worker: {paused_cpu_s:.3f} CPU-s")
    print(f"\nnight 1:\n{night.stdout}night 2:\n{stdout}")
    assert paused_cpu_s < 0.1
    assert follow.returncode == 0, stderr
    assert "quibblix-ops: 0 sample(s)" in stdout
    assert f"{adapter}: 4 sample(s)" in stdout  # night 1's two and night 2's two
    with sleeper.http() as http:
        assert _knows(http, NIGHT_2) == [True, True]
        assert _knows(http, NIGHT_1) == [True, True]
        assert _knows(http, DATASET, adapters=["quibblix-ops"]) == [True, True]
        assert _served(http) == {adapter: 2, "quibblix-ops": 1}
        ops = next(
            a for a in http.get("/v1/adapters").json()["data"] if a["name"] == "quibblix-ops"
        )
        assert ops["dataset"] == "quibblix-ops" and ops["versions"][0]["status"] == "active"
        status = http.get("/v1/sleep").json()
    assert status["cycles"][0]["id"] == running
    assert [c["status"] for c in status["cycles"]] == ["succeeded", "succeeded"]
    assert all(c["metrics"]["base_unchanged"] for c in status["cycles"])
    shown = _cli(data_dir, "sleep", "--status")
    assert shown.returncode == 0 and "succeeded" in shown.stdout


def _until_training(http: Any, after: int | None) -> dict[str, Any]:
    """GET /v1/sleep once a cycle newer than `after` trains."""
    import time

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status: dict[str, Any] = http.get("/v1/sleep").json()
        cycle = status["cycles"][0] if status["cycles"] else None
        if cycle and cycle["id"] != after and cycle["phase"].startswith("training"):
            return status
        time.sleep(0.2)
    pytest.fail(f"no cycle reached training: {status}")


def _sleep_until_training(http: Any, seed: int) -> dict[str, Any]:
    """Ask the daemon to sleep now; its GET /v1/sleep once the new cycle trains."""
    latest = http.get("/v1/sleep").json()["latest_cycle"]
    asked = http.post("/v1/sleep", json={"now": True, "seed": seed})
    assert asked.status_code == 200 and asked.json()["state"] == "asleep", asked.text
    return _until_training(http, latest)


def _served(http: Any) -> dict[str, int]:
    return dict(http.get("/v1/adapters").json()["served"])


def test_a_bad_candidate_is_rejected_and_the_active_version_keeps_serving(
    sleeper: LiveDaemon,
) -> None:
    with sleeper.http() as http:
        before = _served(http)
    bad = subprocess.run(
        [*NPLLM, "sleep", "--now", "--here", "--seed", "3"],
        env=cli_env(
            sleeper.data_dir,
            **{
                **ENV,
                **MECHANICS_ONLY,
                "NPLLM_TRAINING__LEARNING_RATE": "5.0",
                "NPLLM_TRAINING__EPOCHS": "1",
            },
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert bad.returncode == 0, bad.stderr
    assert "rejected: validation loss" in bad.stdout and "published" not in bad.stdout
    with sleeper.http() as http:
        assert _served(http) == before
        assert _knows(http, NIGHT_1) == [True, True]
        listing = http.get("/v1/adapters").json()["data"]
    reasons = [v["reason"] for a in listing for v in a["versions"] if v["status"] == "candidate"]
    assert reasons and all(r.startswith("validation loss") for r in reasons)


def test_killing_the_worker_mid_training_changes_nothing_and_the_next_cycle_runs(
    sleeper: LiveDaemon,
) -> None:
    import signal
    import time

    with sleeper.http() as http:
        before = _served(http)
        replay_rows = http.get("/v1/status").json()["replay"]
    worker = subprocess.Popen(
        [*NPLLM, "sleep", "--now", "--here", "--seed", "4"],
        env=cli_env(sleeper.data_dir, **{**ENV, **MECHANICS_ONLY, **CHECKPOINT_EACH_STEP}),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    with sleeper.http() as http:
        while time.monotonic() < deadline:
            cycles = http.get("/v1/sleep").json()["cycles"]
            staging = sleeper.data_dir / "adapters" / ".staging"
            if (
                cycles
                and cycles[0]["status"] == "running"
                and any(staging.glob("cycle*/*.checkpoint/step-*/state.pt"))
            ):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the cycle never wrote a training checkpoint")
        killed = cycles[0]["id"]
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
        after = http.get("/v1/sleep").json()["cycles"]
        assert after[0]["id"] == killed and after[0]["status"] == "interrupted"
        assert _served(http) == before
        assert http.get("/v1/status").json()["replay"] == replay_rows
        assert _knows(http, NIGHT_1) == [True, True]
    # The next cycle continues the killed one: its sample, from its checkpoint.
    again = _cli(
        sleeper.data_dir,
        "sleep",
        "--now",
        "--here",
        "--seed",
        "5",
        **MECHANICS_ONLY,
        **CHECKPOINT_EACH_STEP,
    )
    assert again.returncode == 0, again.stderr
    assert f"resuming cycle {killed}" in again.stderr
    with sleeper.http() as http:
        latest = http.get("/v1/sleep").json()["cycles"][0]
    assert latest["id"] > killed and latest["status"] == "succeeded"
    assert latest["resumed_from"] == killed and latest["metrics"]["resumed_from"] == killed
    steps = [a["resumed_at_step"] for a in latest["metrics"]["adapters"].values()]
    print(f"\nresumed cycle {killed} as {latest['id']}, adapters resumed at steps {steps}")
    assert any(step >= 1 for step in steps)
    assert not any((sleeper.data_dir / "adapters" / ".staging").iterdir())


def test_a_publish_whose_worker_died_changes_nothing(sleeper: LiveDaemon) -> None:
    """What a worker killed mid-publish leaves behind: its request reaches the daemon after
    the worker is gone, and the daemon refuses to switch."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    inserted = _cli(
        sleeper.data_dir,
        "psql",
        "-At",
        "-c",
        f"INSERT INTO npllm.sleep_cycles (seed, pid) VALUES (0, {dead.pid}) RETURNING id",
    )
    cycle = int(inserted.stdout.split()[0])
    with sleeper.http() as http:
        before = _served(http)
        listing = http.get("/v1/adapters").json()["data"]
        name = next(iter(before))
        path = next(
            v["path"]
            for a in listing
            if a["name"] == name
            for v in a["versions"]
            if v["version"] == before[name]
        )
        r = http.post(f"/v1/adapters/{name}/versions", json={"path": path, "sleep_cycle": cycle})
        assert r.status_code == 400
        assert f"its sleep cycle {cycle} ended before the switch" in r.json()["error"]["message"]
        assert _served(http) == before
        assert _knows(http, NIGHT_1) == [True, True]
        cycles = {c["id"]: c["status"] for c in http.get("/v1/sleep").json()["cycles"]}
    assert cycles[cycle] == "interrupted"


def test_one_cycle_runs_at_a_time(sleeper: LiveDaemon) -> None:
    """While a cycle's process is alive, another cycle does not start: not in this shell
    (refused before loading the models), not through the daemon, not in the database."""
    import os

    import psycopg

    from npllm.db import Database

    from .conftest import make_settings

    db = Database(make_settings(sleeper.data_dir))
    db.open(migrate=False)
    insert = "INSERT INTO npllm.sleep_cycles (seed, pid) VALUES (0, %(pid)s) RETURNING id"
    try:
        with db.pool.connection() as conn:  # "running", and its process (this one) lives
            row = conn.execute(insert, {"pid": os.getpid()}).fetchone()
        assert row is not None
        cycle = row[0]
        here = _cli(sleeper.data_dir, "sleep", "--now", "--here", "--seed", "9")
        assert here.returncode == 1
        assert f"sleep cycle {cycle} is already running (pid {os.getpid()})" in here.stderr
        with sleeper.http() as http:
            refused = http.post("/v1/sleep", json={"now": True})
        assert refused.status_code == 409
        assert f"sleep cycle {cycle} is already running" in refused.json()["error"]["message"]
        with (
            pytest.raises(psycopg.errors.UniqueViolation, match="sleep_cycles_one_running"),
            db.pool.connection() as conn,
        ):
            conn.execute(insert, {"pid": os.getpid()})
        with db.pool.connection() as conn:
            conn.execute(
                "UPDATE npllm.sleep_cycles SET status = 'failed' WHERE id = %(id)s", {"id": cycle}
            )
    finally:
        db.close()


def test_killing_the_daemon_mid_cycle_interrupts_the_cycle_and_changes_nothing(
    sleeper: LiveDaemon,
) -> None:
    """Runs last in this module: it kills the module's daemon. Its worker notices within
    about 0.1 s, publishes nothing and marks the cycle interrupted; a restarted daemon
    serves the same versions."""
    import signal
    import time

    import psutil

    with sleeper.http() as http:
        _teach(http, {"Which shell does the Quibblix team use?": ("They all use fish.", "fish")})
        before = _served(http)
        status = _sleep_until_training(http, seed=8)
        cycle = status["cycles"][0]
    worker = psutil.Process(status["worker_pid"])
    sleeper.proc.send_signal(signal.SIGKILL)
    sleeper.proc.wait(30)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the orphaned worker stops at once
        try:
            if worker.status() == psutil.STATUS_ZOMBIE:  # exited; nobody reaped it yet
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the worker kept training after its daemon was killed")
    restarted = LiveDaemon(sleeper.data_dir, **ENV).wait_ready()
    try:
        with restarted.http() as http:
            cycles = http.get("/v1/sleep").json()["cycles"]
            assert cycles[0]["id"] == cycle["id"] and cycles[0]["status"] == "interrupted"
            assert "is gone" in cycles[0]["error"] or "worker stopped" in cycles[0]["error"]
            assert _served(http) == before
            assert _knows(http, NIGHT_1) == [True, True]
    finally:
        restarted.stop()
