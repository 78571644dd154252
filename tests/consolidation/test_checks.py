"""The gate's neighbour check (consolidation/cycle.py: `_Checks`), with the real embedder and
a serving engine that changes the answers we say: which changed neighbours count against the
version, which are taken out of its scope, which are too alike to tell."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from consolidation import cycle
from consolidation.gate import judge
from npllm.config import Settings
from npllm.versions import Keys

from ..conftest import asked

TAUGHT = "What port does the Tessel relay listen on?"
KEPT = "What port does the Tessel relay listen on by default?"  # the user's, asked and kept
RULE = "What port does the Tessel relay listen on in production?"  # made by rule, as alike
FAR = "Who maintains the Tessel relay?"  # same subject, another relation
ELSEWHERE = "How do I reverse a list in Python?"  # no version's scope takes it


class _Served:
    """Answers 'old' unless the candidate is asked one of the questions it changes."""

    def __init__(self, changes: set[str]) -> None:
        self.changes, self.asked = changes, []

    def load(self, adapters: dict[str, Path], snapshot: bool = False) -> dict[str, str]:
        return {name: name for name in adapters}

    def answers(self, chats: list[Any], adapter: str | None, tokens: int) -> list[str]:
        out = []
        for chat in chats:
            question = chat[-1]["content"]
            self.asked.append((question, adapter))
            out.append("new" if adapter == "candidate" and question in self.changes else "old")
        return out


def _checks(settings: Settings, embedder: Any, served: _Served, firm: set[str]) -> Any:
    questions = [KEPT, RULE, FAR, ELSEWHERE]
    keys = Keys(["question"], [TAUGHT], np.asarray(embedder.embed([TAUGHT]), np.float32), [1])
    ctx = SimpleNamespace(settings=settings, embedder=embedder, served=served, pool=None,
                          on_phase=None)  # fmt: skip
    lesson = SimpleNamespace(name="general", registry=SimpleNamespace(keys=lambda v: None))
    ex = SimpleNamespace(checks=[[{"role": "user", "content": q}] for q in questions],
                         keys=keys, firm=firm)  # fmt: skip
    return cycle._Checks(ctx, 1, lesson, ex, None)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _no_bookkeeping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cycle.bookkeeping, "set_phase", lambda *a: None)


def test_a_changed_question_the_user_kept_counts_and_a_far_one_leaves_the_scope(
    settings: Settings, embedder: Any, tmp_path: Path
) -> None:
    served = _Served({KEPT, RULE, FAR})
    checks = _checks(settings, embedder, served, firm={KEPT})
    # Nothing served these before (no previous version): only what the new scope takes is
    # asked — the question about lists in Python is the base's either way.
    assert all(q != ELSEWHERE for q, _ in served.asked)
    locality, keys = checks.after(tmp_path)
    assert checks.routed_after[2]  # its scope took the far one
    assert locality.changed == [KEPT]  # the user's own, as alike as a re-ask: counts
    assert locality.excluded == [FAR]  # changed, and routing can tell it apart: left out
    assert locality.unclear == [RULE]  # rule-made and as alike: no evidence either way
    assert keys.texts == [TAUGHT, FAR] and keys.kinds == ["question", "neighbour"]
    verdict = judge((2.0, None), (1.0, None), settings.training, locality=locality)
    assert not verdict.passed
    assert verdict.reasons[0].startswith("it changed the answers to 1 of 4 neighbouring")
    assert repr(KEPT) in verdict.reasons[0]


def test_a_version_that_changes_nothing_it_should_not_passes_with_its_scope_as_taught(
    settings: Settings, embedder: Any, tmp_path: Path
) -> None:
    served = _Served(set())
    checks = _checks(settings, embedder, served, firm={KEPT})
    locality, keys = checks.after(tmp_path)
    assert locality.changed == locality.excluded == locality.unclear == []
    assert keys.texts == [TAUGHT]
    assert judge((2.0, None), (1.0, None), settings.training, locality=locality).passed


def test_a_version_refused_for_forgetting_alone_is_retrained_rehearsing_what_it_forgot(
    fresh_database: Any, embedder: Any, settings: Settings
) -> None:
    """The night retries once, rehearsing the replay samples behind the earlier answers the
    refused version no longer gives — only when that alone refused it."""
    from consolidation.gate import Verdict

    ids = [asked(fresh_database.pool, embedder, q, "Team A.")
           for q in ("Who owns Sorrel?", "What port does Vintrel use?")]  # fmt: skip
    probe = [
        ([{"role": "user", "content": q}, {"role": "assistant", "content": "Team A."}], i)
        for q, i in zip(("Who owns Sorrel?", "What port does Vintrel use?"), ids, strict=True)
    ]
    ctx = SimpleNamespace(pool=fresh_database.pool)
    lesson = SimpleNamespace(items=[], rehearse=[])
    forgot = Verdict(False, ["retention score fell …"], (1.0, 0.1), (0.5, 0.2), 0.9, 0.8,
                     forgotten=["What port does Vintrel use?"])  # fmt: skip
    again = cycle._rehearse_again(ctx, lesson, probe, forgot)  # type: ignore[arg-type]
    assert [i.interaction_id for i in again] == [ids[1]]
    # Refused for something else too, or passed, or nothing forgotten: no second attempt.
    more = Verdict(False, ["retention …", "it changed the answers …"], (1.0, 0.1), (0.5, 0.2),
                   0.9, 0.8, forgotten=["What port does Vintrel use?"])  # fmt: skip
    assert cycle._rehearse_again(ctx, lesson, probe, more) == []  # type: ignore[arg-type]
    passed = Verdict(True, [], (1.0, 0.1), (0.5, 0.1), 0.9, 0.9, forgotten=[])
    assert cycle._rehearse_again(ctx, lesson, probe, passed) == []  # type: ignore[arg-type]
    # Already rehearsed tonight: nothing to add.
    lesson.rehearse = again
    assert cycle._rehearse_again(ctx, lesson, probe, forgot) == []  # type: ignore[arg-type]


def test_a_night_waits_for_its_corrections_and_gives_them_twice_the_share() -> None:
    """What the trainer is told to wait for (consolidation/cycle.py: `_required`, `_repeat`):
    on a night with corrections, the corrections and every rehearsed answer (an earlier
    night's, which the gate protects), not tonight's new liked answers; on a night without
    corrections, every answer. Corrections appear twice in a pass beside new liked ones."""
    liked, fixed = SimpleNamespace(corrected_answer=None), SimpleNamespace(corrected_answer="x")
    mixed = SimpleNamespace(items=[liked, fixed], rehearse=[fixed, liked])
    assert cycle._required(mixed) == [False, True, True, True]
    ex = SimpleNamespace(train=[[]] * 7)  # 4 taught, 3 paraphrases
    assert cycle._repeat(ex, mixed, cycle._required(mixed)) == [1, 2, 2, 1, 1, 1, 1]
    only_liked = SimpleNamespace(items=[liked, liked], rehearse=[liked])
    assert cycle._required(only_liked) == [True, True, True]
    assert cycle._repeat(
        SimpleNamespace(train=[[]] * 4), only_liked, cycle._required(only_liked)
    ) == [1, 1, 1, 1]
    only_fixed = SimpleNamespace(items=[fixed], rehearse=[fixed])
    assert cycle._repeat(
        SimpleNamespace(train=[[]] * 2), only_fixed, cycle._required(only_fixed)
    ) == [1, 1]
