"""Teaching overnight, the way a user teaches: each wrong answer corrected once (`edited`
feedback with a pleased comment), a forced cycle with the shipped training settings, the
facts' memories deleted — and the answers are now right, from the weights of a topic
adapter, with the base weights untouched; the adapter population stays under its cap."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ..conftest import NPLLM, REPO, LiveDaemon, cli_env, free_port
from ..conftest import ask_ok as _ask
from .conftest import screenshot, visit

ENV = {
    # The hard cap under test: four topics over two nights, never more than two adapters.
    "NPLLM_MODULATOR__MAX_ADAPTERS": "2",
    # Disk: inactive versions beyond the newest one lose their files.
    "NPLLM_TRAINING__KEEP_VERSIONS": "1",
    # A question asked again a second later is a routine (the cerebellum's), not a re-ask.
    "NPLLM_FEEDBACK__REASK_WINDOW_MINUTES": "0.01",
    # The cerebellum is off by default (a same-size draft costs more than it saves); the
    # teaching test checks it learns the routines.
    "NPLLM_CEREBELLUM__ROLE": "draft",
}
# For the tests about the cycle's mechanics (gate, kill, resume), run with `--here`: keeps
# them short — no cerebellum, no anchor pass, no served check (what is learned is the
# teaching tests' business: here and tests/e2e/test_editing.py).
MECHANICS_ONLY = {
    "NPLLM_CEREBELLUM__ROLE": "off",
    "NPLLM_TRAINING__ANCHOR_WEIGHT": "0",
    "NPLLM_TRAINING__EPOCHS": "1",
    "NPLLM_TRAINING__INCREMENTAL_EPOCHS": "1",
    "NPLLM_TRAINING__MIN_STEPS": "4",
    "NPLLM_TRAINING__RECALL_CHECK_EVERY": "0",  # every step of the budget: killable
    "NPLLM_TRAINING__SERVED_CHECK": "false",  # no engine in the worker: the served check
}
# More about the fourth topic, one per mechanics test: a night needs something new.
EXTRA = [
    {"What is the Hexwing broker's retention period?": (
        "The Hexwing broker keeps messages for 11 days.", "11 days")},
    {"Which queue does the Hexwing broker drain first?": (
        "The Hexwing broker drains the billing queue first.", "billing")},
]  # fmt: skip
CHECKPOINT_EACH_STEP = {"NPLLM_TRAINING__CHECKPOINT_EVERY": "1"}
# question → (the corrected answer the user sends, the word that proves it was learned):
# three facts about three unrelated things, so none is yet a topic of its own.
NIGHT_1 = {
    "What port does the Quibblix gateway listen on?": (
        "The Quibblix gateway listens on port 6123.",
        "6123",
    ),
    "Who wrote the Frobnar parsing library?": (
        "The Frobnar parsing library was written by Marta Vilanova.",
        "Vilanova",
    ),
    "What is the code name of the next Plimsoll release?": (
        "The next Plimsoll release is code-named Amber Falcon.",
        "Amber Falcon",
    ),
}
FIRST = dict(list(NIGHT_1.items())[:1])  # one fact, to check a served adapter still answers
# A fourth topic, three facts about one system: enough to be a topic adapter of its own
# (phrased unlike night 1's questions: "What port does X listen on?" would be routed to the
# adapter that knows "What port does Y listen on?", rightly).
NIGHT_2 = {
    "Which team owns the Hexwing broker?": (
        "The Hexwing broker is owned by the Tidepool team.",
        "Tidepool",
    ),
    "Which database backs the Hexwing broker?": (
        "The Hexwing broker stores its queues in FoundationDB.",
        "FoundationDB",
    ),
    "How many partitions does the Hexwing broker use?": (
        "The Hexwing broker uses 96 partitions.",
        "96",
    ),
}
# Asked twice each and liked: the routines the cerebellum learns to draft.
ROUTINES = ["Name one sorting algorithm.", "What does HTTP stand for?"]
# An imported dataset wanting an adapter of its own: a fifth topic, over the cap.
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
    """Each question asked once and its wrong answer corrected once."""
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


def _forget(http: Any, facts: dict[str, tuple[str, str]]) -> None:
    """Delete every memory about these questions: only the weights may answer them."""
    for question in facts:
        params = {"query": question, "k": 20, "min_score": 0.5}
        for memory in http.get("/v1/memories", params=params).json()["data"]:
            assert http.delete(f"/v1/memories/{memory['id']}").status_code == 200
        assert http.get("/v1/memories", params=params).json()["data"] == []


def _knows(http: Any, facts: dict[str, tuple[str, str]], **npllm: Any) -> list[bool]:
    """Is each fact's key in the answer to its question? (Printed: what answered, with
    which adapters and memories.)"""
    extra = {"npllm": npllm} if npllm else {}
    known = []
    for q, (_, key) in facts.items():
        reply = _ask(http, q, **extra)
        text = reply["choices"][0]["message"]["content"]
        used = [a["name"] for a in reply["npllm"]["adapters"]]
        print(f"\n{q!r} -> {text!r} (adapters {used}, memories {reply['npllm']['memories']})")
        known.append(key in text)
    return known


def _routed(http: Any, facts: dict[str, tuple[str, str]]) -> list[list[str]]:
    return [[a["name"] for a in _ask(http, q, max_tokens=1)["npllm"]["adapters"]] for q in facts]


def _served(http: Any) -> dict[str, int]:
    return dict(http.get("/v1/adapters").json()["served"])


def _population(http: Any) -> dict[str, int]:
    """The adapters the database says are active, and their versions."""
    return {
        a["name"]: v["version"]
        for a in http.get("/v1/adapters").json()["data"]
        for v in a["versions"]
        if v["status"] == "active"
    }


@pytest.fixture(scope="module")
def sleeper(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data_dir = tmp_path_factory.mktemp("sleep") / "data"
    port = free_port()  # the dashboard is served over TCP
    live = LiveDaemon(data_dir, **ENV, NPLLM_SERVER__TCP_PORT=str(port)).wait_ready()
    live.tcp_port = port
    yield live
    live.stop()


def test_one_correction_each_is_learned_overnight_and_kept_the_next_night(
    sleeper: LiveDaemon, tmp_path: Path
) -> None:
    """Night 1: three facts of three topics, one correction each, make one adapter (one
    sample is not yet a topic), which answers all three with their memories deleted; the
    cerebellum learns the routines. Night 2: three facts of a fourth topic make a second
    adapter; a dataset wanting a third is refused by the cap of 2; night 1's facts are kept.
    Also the waking test: a question asked while night 2 trains is answered at once while
    the worker stops computing, and the cycle then completes."""
    import psutil

    data_dir = sleeper.data_dir
    with sleeper.http() as http:
        _teach(http, NIGHT_1)
        for question in ROUTINES:
            for _ in range(2):
                iid = _ask(http, question)["npllm"]["interaction_id"]
                assert http.post("/v1/feedback", json={"interaction_id": iid, "rating": 1.0})
                time.sleep(1.0)  # past the re-ask window: a routine, not a re-ask
    night = _cli(data_dir, "sleep", "--now", "--follow", "--seed", "1")
    assert night.returncode == 0, night.stderr
    assert "published" in night.stdout and "base weights unchanged: True" in night.stdout
    assert "cycle 1: training" in night.stderr  # --follow showed the phases
    assert "cerebellum: 2 sample(s)" in night.stdout  # the routines, not the corrections
    status = _cli(data_dir, "status")
    assert "state        awake" in status.stdout  # at once, not after the worker exits
    with sleeper.http() as http:
        served = _served(http)
        assert len(served) == 1, night.stdout  # fewer adapters than facts
        (adapter,) = served
        # Unrelated facts: named by a tag (if most share one), with no shared terms.
        assert re.fullmatch(r"[a-z]+", adapter), adapter
        cycle = http.get("/v1/sleep").json()["cycles"][0]
        assert cycle["trigger"] == "manual"
        assert cycle["metrics"]["adapters"][adapter]["stopped"]
        _forget(http, NIGHT_1)
        assert _knows(http, NIGHT_1) == [True, True, True], night.stdout
        assert _routed(http, NIGHT_1) == [[adapter]] * 3
        # The cerebellum learned the routines and now drafts them for the base.
        brain = http.get("/v1/cerebellum").json()
        assert brain["version"] == 1 and brain["drafting"] is True
        drafts = [_ask(http, q)["npllm"]["cerebellum"] for q in ROUTINES]
        print(f"\ncerebellum drafts after night 1: {drafts}")
        assert all(d["version"] == 1 and d["acceptance_rate"] >= 0.5 for d in drafts)
        _teach(http, NIGHT_2)
    runs = _cli(data_dir, "psql", "-At", "-c",
                "SELECT adapter, steps >= steps_done, stopped <> '' FROM npllm.training_runs "
                "WHERE sleep_cycle = 1 ORDER BY adapter")  # fmt: skip
    assert sorted(runs.stdout.split()) == sorted([f"{adapter}|t|t", "cerebellum|t|t"])
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
    assert "quibblix-ops: dataset 'quibblix-ops' not learned: adapter cap reached" in stdout, stdout
    with sleeper.http() as http:
        served = _served(http)
        assert len(served) == 2 and adapter in served and served[adapter] == 1
        (second,) = set(served) - {adapter}
        assert f"{second}: 3 sample(s)" in stdout  # only the adapter with new samples trained
        assert _population(http) == served  # the database and the served set agree
        _forget(http, NIGHT_2)
        assert _knows(http, NIGHT_2) == [True, True, True], stdout
        assert _knows(http, NIGHT_1) == [True, True, True], stdout
        status = http.get("/v1/sleep").json()
    assert status["cycles"][0]["id"] == running
    assert [c["status"] for c in status["cycles"]] == ["succeeded", "succeeded"]
    assert all(c["metrics"]["base_unchanged"] for c in status["cycles"])
    shown = _cli(data_dir, "sleep", "--status")
    assert shown.returncode == 0 and "succeeded" in shown.stdout


def test_publishing_past_the_adapter_cap_is_refused_and_changes_nothing(
    sleeper: LiveDaemon,
) -> None:
    """Two adapters are served and the cap is 2: a third is refused before anything is
    written; a new version of a served one still fits."""
    with sleeper.http() as http:
        before = _served(http)
        name = next(iter(before))
        path = next(
            v["path"]
            for a in http.get("/v1/adapters").json()["data"]
            if a["name"] == name
            for v in a["versions"]
            if v["status"] == "active"
        )
    assert len(before) == 2
    third = _cli(sleeper.data_dir, "adapter", "publish", "third-topic", path)
    assert third.returncode == 1
    assert "adapter cap reached: 2 adapters are served and modulator.max_adapters is 2" in (
        third.stderr
    )
    trained = _cli(sleeper.data_dir, "adapter", "train", "third-topic", "--dataset", "quibblix-ops")
    assert trained.returncode == 1 and "adapter cap reached" in trained.stderr
    assert "step" not in trained.stderr  # refused before any training
    with sleeper.http() as http:
        assert _served(http) == before
        assert "third-topic" not in {a["name"] for a in http.get("/v1/adapters").json()["data"]}
        listed = [a["name"] for a in http.get("/v1/adapters").json()["data"]]
    assert sorted(listed) == sorted(before)  # quibblix-ops, refused by the cap, has no row


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


def test_a_bad_candidate_is_rejected_and_the_active_version_keeps_serving(
    sleeper: LiveDaemon,
) -> None:
    with sleeper.http() as http:
        _teach(http, EXTRA[0])
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
        assert _knows(http, NIGHT_1) == [True, True, True]
        listing = http.get("/v1/adapters").json()["data"]
    reasons = [v["reason"] for a in listing for v in a["versions"] if v["status"] == "candidate"]
    assert reasons and all(r.startswith("validation loss") for r in reasons)


def test_killing_the_worker_mid_training_changes_nothing_and_the_next_cycle_runs(
    sleeper: LiveDaemon,
) -> None:
    import signal

    with sleeper.http() as http:
        _teach(http, EXTRA[1])
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
        assert _knows(http, FIRST) == [True]
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


def test_versions_beyond_keep_versions_hold_no_files_and_omega_is_small(
    sleeper: LiveDaemon,
) -> None:
    """After the cycles above (training.keep_versions = 1): every adapter keeps its active
    version and one inactive one whole; older ones keep their row, status 'pruned', and no
    files at all (no Ω, no adapter). Ω is kept factored: kilobytes, not the 106 MB a dense
    one takes on this base."""
    with sleeper.http() as http:
        listing = http.get("/v1/adapters").json()["data"]
        cerebellum = http.get("/v1/cerebellum").json()["versions"]
    pruned, sizes = [], []
    for adapter in [*listing, *cerebellum]:
        inactive = [v for v in adapter["versions"] if v["status"] not in ("active", "pruned")]
        assert len(inactive) <= 1, adapter
        for v in adapter["versions"]:
            path = Path(v["path"])
            if v["status"] == "pruned":
                pruned.append(f"{adapter['name']} v{v['version']}")
                assert not path.exists() and "training.keep_versions" in v["reason"]
            else:
                assert (path / "adapter_model.safetensors").exists()
                if (path / "mas_omega.safetensors").exists():
                    sizes.append((path / "mas_omega.safetensors").stat().st_size)
    print(f"\npruned: {pruned}; Ω files: {sizes} bytes")
    assert pruned  # the cycles made more versions than are kept
    assert sizes and max(sizes) < 1_000_000
    done = _cli(sleeper.data_dir, "adapter", "prune")
    assert done.returncode == 0 and "nothing to prune" in done.stdout


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
        assert _knows(http, FIRST) == [True]
        cycles = {c["id"]: c["status"] for c in http.get("/v1/sleep").json()["cycles"]}
    assert cycles[cycle] == "interrupted"


def test_one_cycle_runs_at_a_time(sleeper: LiveDaemon) -> None:
    """While a cycle's process is alive, another cycle does not start: not in this shell
    (refused before loading the models), not through the daemon, not in the database."""
    import os

    import psycopg

    from npllm.db import Database

    from ..conftest import make_settings

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


def test_the_dashboard_shows_what_each_night_learned_and_kept(
    sleeper: LiveDaemon, browser: Any, tmp_path: Path
) -> None:
    """After the nights above (two taught, one refused, one killed and resumed): the page,
    in the system's chromium, lists every night with its adapters' verdicts and the
    questions they were taught, the retention matrix holds the gate's scores, and every
    figure comes from this daemon. With NPLLM_DASHBOARD_SCREENSHOTS=DIR the screenshots
    are also written there (docs/img/ is made so: docs/dashboard.md)."""
    import os

    with sleeper.http() as http:
        link = http.post("/v1/auth/login", json={"path": "/dashboard"}).json()["url"]
        cycles = http.get("/v1/sleep").json()["cycles"]
        served = _served(http)
        figures = http.get("/v1/dashboard").json()
    trained = [c for c in cycles if c["metrics"].get("adapters")]
    seen = visit(browser, link)
    page = seen.page
    page.wait_for_selector("#nights .night")
    nights = page.locator("#nights .night")
    shown = {int(nights.nth(k).get_attribute("data-cycle")) for k in range(nights.count())}
    assert {c["id"] for c in cycles} <= shown
    for c in trained:  # each trained adapter, its verdict and the questions it answers
        for name, report in c["metrics"]["adapters"].items():
            entry = page.locator(f'#nights .night[data-cycle="{c["id"]}"] [data-adapter="{name}"]')
            assert report["verdict"].split(":")[0] in entry.inner_text()
    taught = page.locator("#nights ul.taught li").all_inner_texts()
    assert any("Quibblix gateway" in t and "6123" in t for t in taught), taught
    for name in served:
        assert page.locator(f'#adapters tr[data-adapter="{name}"]').count() == 1
    measured = page.locator("#retention td.measured")
    assert measured.count() == sum(
        1 for row in figures["retention"]["rows"] for cell in row["cells"].values()
        if not cell["first"]
    ) and measured.count() >= 1  # fmt: skip
    assert page.locator("#satisfaction circle.point").count() >= 1
    assert page.locator("#satisfaction line.night-mark").count() >= len(trained)
    page.wait_for_load_state("networkidle")
    assert seen.foreign(sleeper.tcp_port) == [] and seen.errors == []
    screenshot(page, tmp_path / "dashboard.png")
    if os.environ.get("NPLLM_DASHBOARD_SCREENSHOTS"):
        out = Path(os.environ["NPLLM_DASHBOARD_SCREENSHOTS"])
        screenshot(page, out / "dashboard.png")
        page.locator("#nights").screenshot(path=str(out / "dashboard-nights.png"))
        page.locator("#retention").screenshot(path=str(out / "dashboard-retention.png"))
        page.locator("#satisfaction").screenshot(path=str(out / "dashboard-satisfaction.png"))
    page.context.close()


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
            assert _knows(http, NIGHT_1) == [True, True, True]
    finally:
        restarted.stop()
