"""bench/month.py's `--resume`: a kept run goes on where it stopped, and a run it cannot
continue is refused with a message that says why (no daemon is started here)."""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from bench import month

REPO = Path(__file__).resolve().parents[2]


def _facts(seed: int = 0) -> list[month.Fact]:
    data = json.loads(month.DATA.read_text())
    return month.plan_month(data, 3, (2, 3), 5, seed)


def _kept(tmp_path: Path, facts: list[month.Fact], **over: object) -> tuple[Path, Path]:
    keep = tmp_path / "keep"
    (keep / "data").mkdir(parents=True)
    out = tmp_path / "month-3n-seed0.json"
    report = {
        "nights_asked": 3,
        "nights_run": 1,
        "keep": str(keep.resolve()),
        "facts": [asdict(f) for f in facts],
        "state": {"rng": month._rng_state(random.Random(1)), "before": {}, "asked": {}},
        **over,
    }
    out.write_text(json.dumps(report))
    return keep, out


def test_the_users_random_state_survives_the_json() -> None:
    rng = random.Random(7)
    rng.random()
    state = json.loads(json.dumps(month._rng_state(rng)))
    again = random.Random()
    month._set_rng_state(again, state)
    assert [again.random() for _ in range(5)] == [rng.random() for _ in range(5)]


def test_a_kept_run_with_nights_left_is_resumable(tmp_path: Path) -> None:
    facts = _facts()
    keep, out = _kept(tmp_path, facts)
    assert month.resume_from(keep, out, facts)["nights_run"] == 1


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no keep", "--resume needs --keep DIR"),
        ("no data dir", "holds no kept run"),
        ("no report", "no report at"),
        ("not json", "is not JSON"),
        ("no night", "has no finished night"),
        ("other dir", "was kept in"),
        ("other seed", "its facts differ"),
        ("all run", "has run all its 3 nights"),
    ],
)
def test_a_run_that_cannot_be_continued_is_refused_saying_why(
    tmp_path: Path, case: str, message: str
) -> None:
    facts = _facts()
    over: dict[str, object] = {
        "no night": {"nights_run": 0},
        "other dir": {"keep": "/elsewhere"},
        "all run": {"nights_run": 3},
    }.get(case, {})
    keep, out = _kept(tmp_path, facts, **over)
    if case == "no data dir":
        (keep / "data").rmdir()
    if case == "no report":
        out.unlink()
    if case == "not json":
        out.write_text("{half")
    with pytest.raises(ValueError, match=message):
        month.resume_from(
            None if case == "no keep" else keep,
            out,
            _facts(seed=1) if case == "other seed" else facts,
        )


def test_the_command_line_refuses_resume_without_a_kept_run(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "bench/month.py", "--resume", "--nights", "2", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert "--resume needs --keep DIR" in run.stderr


def test_a_stopped_run_says_where_it_is_and_draws_no_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(month, "PLOT", tmp_path / "month.png")
    args = argparse.Namespace(plot=True)
    month._end(args, tmp_path / "m.json", {"nights_run": 3}, finished=False)
    assert "holds nights 1-3; the plot waits for the end" in capsys.readouterr().out
    assert not (tmp_path / "month.png").exists()
