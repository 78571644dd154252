"""Consolidating the adapter population (consolidation/merging.py): which adapters a night
merges, and what a merging night does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from consolidation.plan import make_plan
from npllm import replay
from npllm.adapters import AdapterShape
from npllm.config import Settings
from npllm.db import Database
from npllm.errors import ConfigError
from npllm.feedback import Feedback
from npllm.tone import NeutralTone
from npllm.versions import BaseIdentity, Registry

from ..conftest import asked, lora_artifact, make_settings

PORT = {"What port does the Quibblix gateway listen on?": "It listens on port 6123."}
OWNER = {
    "Which team owns the Quibblix gateway?": "The Tidepool team owns it.",
    "Who is on call for the Quibblix gateway?": "Marta Vilanova is on call.",
}
FAR = {
    "Which painter made the Flurbish mural in Lyon?": "Odile Garnier painted it.",
    "What year was the Flurbish mural restored?": "It was restored in 1987.",
}


def _teach(db: Database, embedder: Any, settings: Settings, facts: dict[str, str]) -> list[int]:
    """Each question asked, answered wrongly and corrected: new replay samples."""
    feedback = Feedback(db.pool, settings.feedback, NeutralTone())
    ids = []
    for question, truth in facts.items():
        iid = asked(db.pool, embedder, question, "I do not know.")
        feedback.apply_one(feedback.explicit_pending(iid, event="edited", text=truth))
        ids.append(iid)
    return ids


def _served(
    db: Database, embedder: Any, settings: Settings, registry: Registry, tmp_path: Path,
    name: str, facts: dict[str, str], by_a_night: bool = True,
) -> list[int]:  # fmt: skip
    """An adapter a night trained on `facts` (their replay rows learned by it), served with
    the centroid of their questions."""
    ids = _teach(db, embedder, settings, facts)
    replay.mark_sampled(db.pool, ids, None, {i: name for i in ids})
    mean = np.mean(embedder.embed(list(facts)), axis=0)
    version = registry.add_version(
        name, lora_artifact(tmp_path / f"{name}-lora"), centroid=mean / np.linalg.norm(mean),
        metrics={"sleep_cycle": 1} if by_a_night else {},
    )  # fmt: skip
    registry.activate(version)
    return ids


def _registry(db: Database, settings: Settings, tmp_path: Path, cap: int | None = None) -> Registry:
    return Registry(db.pool, tmp_path / "adapters", AdapterShape.from_config(settings.training),
                    BaseIdentity("m", "f" * 32), cap=cap)  # fmt: skip


def test_a_small_adapter_near_another_is_planned_into_it_and_far_or_off_is_not(
    fresh_database: Database, embedder: Any, tmp_path: Path
) -> None:
    db, settings = fresh_database, make_settings(tmp_path)
    registry = _registry(db, settings, tmp_path)
    port = _served(db, embedder, settings, registry, tmp_path, "quibblix-port", PORT)
    owner = _served(db, embedder, settings, registry, tmp_path, "quibblix-owner", OWNER)
    plan = make_plan(settings, db.pool, embedder, registry, seed=0).to_json()
    # The larger adapter keeps its name; it is taught what the other learned and rehearses
    # its own; the absorbed one trains no group of its own.
    assert list(plan["groups"]) == ["quibblix-owner"]
    group = plan["groups"]["quibblix-owner"]
    assert group["items"] == port and sorted(group["rehearse"]) == sorted(owner)
    merge = group["merge"]
    assert (merge["survivor"], merge["absorbed"], merge["version"]) == (
        "quibblix-owner", "quibblix-port", 1,
    )  # fmt: skip
    assert merge["samples"] == {"quibblix-owner": 2, "quibblix-port": 1}
    assert merge["similarity"] >= settings.modulator.none_similarity
    assert (
        "quibblix-port has 1 learned sample(s), fewer than sleep.merge_min_samples 3"
        in (merge["reason"])
    )
    assert group["why"] == merge["reason"]
    # Turned off: nothing merges.
    off = make_settings(tmp_path, NPLLM_SLEEP__MERGE="false")
    assert make_plan(off, db.pool, embedder, registry, seed=0).to_json()["groups"] == {}
    # Far apart: nothing merges, however small.
    registry.delete("quibblix-owner")
    _served(db, embedder, settings, registry, tmp_path, "flurbish-mural", FAR)
    assert make_plan(settings, db.pool, embedder, registry, seed=0).to_json()["groups"] == {}


def test_overlapping_adapters_merge_and_one_published_by_hand_never_does(
    fresh_database: Database, embedder: Any, tmp_path: Path
) -> None:
    db = fresh_database
    settings = make_settings(tmp_path, NPLLM_SLEEP__MERGE_SIMILARITY="0.5",
                             NPLLM_SLEEP__MERGE_MIN_SAMPLES="0")  # fmt: skip
    registry = _registry(db, settings, tmp_path)
    _served(db, embedder, settings, registry, tmp_path, "quibblix-owner", OWNER)
    _served(db, embedder, settings, registry, tmp_path, "quibblix-port", PORT, by_a_night=False)
    assert make_plan(settings, db.pool, embedder, registry, seed=0).to_json()["groups"] == {}
    port = _served(db, embedder, settings, registry, tmp_path, "quibblix-gateway", PORT)
    merge = make_plan(settings, db.pool, embedder, registry, seed=0).to_json()["groups"][
        "quibblix-owner"
    ]
    assert merge["merge"]["absorbed"] == "quibblix-gateway" and merge["items"] == port
    assert "their centroids are" in merge["merge"]["reason"]
    assert "alike (sleep.merge_similarity 0.5)" in merge["merge"]["reason"]


def test_at_the_cap_the_closest_pair_merges_to_make_room_for_a_new_topic(
    fresh_database: Database, embedder: Any, tmp_path: Path
) -> None:
    db = fresh_database
    # Adapters published with a centroid route by it (as a topic, at none_similarity): 0.5
    # keeps the Hexwing questions out of both.
    settings = make_settings(tmp_path, NPLLM_SLEEP__MERGE_MIN_SAMPLES="0",
                             NPLLM_MODULATOR__NONE_SIMILARITY="0.5")  # fmt: skip
    registry = _registry(db, settings, tmp_path, cap=2)
    _served(db, embedder, settings, registry, tmp_path, "quibblix-owner", OWNER)
    _served(db, embedder, settings, registry, tmp_path, "flurbish-mural", FAR)
    new = _teach(db, embedder, settings, {
        "How many partitions does the Hexwing broker use?": "It uses 96 partitions.",
        "Which database backs the Hexwing broker?": "FoundationDB backs it.",
        "What is the Hexwing broker's retention period?": "It keeps messages 11 days.",
    })  # fmt: skip
    plan = make_plan(settings, db.pool, embedder, registry, seed=0).to_json()
    first, *others = plan["groups"]  # the merge trains (and retires its absorbed) first
    assert (
        "the adapter cap (modulator.max_adapters 2) is reached and a new topic needs a slot"
        in (plan["groups"][first]["merge"]["reason"])
    )
    (topic,) = others
    assert plan["groups"][topic]["new"] and sorted(plan["groups"][topic]["items"]) == sorted(new)


@pytest.mark.parametrize(
    ("key", "value"),
    [("MERGE_SIMILARITY", "1.5"), ("MERGE_SIMILARITY", "0"), ("MERGE_MIN_SAMPLES", "-1"),
     ("MERGE", "sometimes")],
)  # fmt: skip
def test_bad_merge_settings_are_refused_naming_the_key(
    tmp_path: Path, key: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=f"sleep.{key.lower()}"):
        make_settings(tmp_path, **{f"NPLLM_SLEEP__{key}": value})


# Tiny nights: no paraphrase beyond one, no neighbour rules, no anchor, teacher-forced
# checks (no serving engine in the test's process) — the mechanics of the merge are real.
QUICK = {
    "NPLLM_SLEEP__PARAPHRASES": "1",
    "NPLLM_SLEEP__NEIGHBOURS": "0",
    "NPLLM_TRAINING__ANCHOR_WEIGHT": "0",
    "NPLLM_TRAINING__SERVED_CHECK": "false",
}
FACTS = {
    "What port does the Quibblix gateway listen on?": "The Quibblix gateway listens on port 6123.",
    "Which team owns the Quibblix gateway?": "The Quibblix gateway is owned by the Tidepool team.",
}


def _night(settings: Settings, db: Database, base_llm: Any, embedder: Any, seed: int) -> Any:
    from consolidation.cycle import CycleContext, run_cycle
    from consolidation.publisher import OfflinePublisher
    from npllm import modulator

    base = BaseIdentity(base_llm.model_id, base_llm.fingerprint)
    registry = Registry.for_settings(db.pool, settings, base)
    stores = {"adapter": registry, "modulator": modulator.store_for(settings, db.pool)}
    publisher = OfflinePublisher(stores, echo=lambda line: None)
    ctx = CycleContext(settings, db.pool, base_llm, embedder, registry, publisher, seed)
    return run_cycle(ctx), registry


def _says(settings: Settings, base_llm: Any, version: Any, question: str) -> str:
    """The adapter at `version` alone on the base, greedy, prompted as the trainer prompts:
    no memory, no routing."""
    import torch
    from peft import PeftModel

    from consolidation.trainer import IGNORE, encode_example

    chat = [{"role": "user", "content": question}, {"role": "assistant", "content": "x"}]
    ids, labels = encode_example(base_llm.tokenizer, chat, settings.memory.system_prompt, 512)
    prompt = torch.tensor([ids[: next(k for k, t in enumerate(labels) if t != IGNORE)]])
    model = PeftModel.from_pretrained(base_llm.model, str(version.path))
    try:
        with torch.no_grad():
            out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                 max_new_tokens=24, do_sample=False)  # fmt: skip
    finally:
        model.unload()
    return str(base_llm.tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True))


def test_merging_two_overlapping_adapters_keeps_both_facts_and_the_old_one_for_rollback(
    fresh_database: Database, base_llm: Any, embedder: Any, tmp_path: Path
) -> None:
    """Night 1 teaches two facts about one gateway as two one-fact adapters (its topics
    split at a high none_similarity); night 2 (shipped merge settings) merges the smaller
    into the other: the survivor's new version answers both from its weights alone, both
    questions route to it, the absorbed adapter is retired with its version kept, a
    rollback serves it again, and a `merged` row says why."""
    db = fresh_database
    split = make_settings(tmp_path, **QUICK, NPLLM_MODULATOR__NONE_SIMILARITY="0.95",
                          NPLLM_SLEEP__NEW_TOPIC_MIN_SAMPLES="1")  # fmt: skip
    ids = dict(zip(FACTS, _teach(db, embedder, split, FACTS), strict=True))
    first, registry = _night(split, db, base_llm, embedder, seed=1)
    names = sorted(first["adapters"])
    assert len(names) == 2, first
    assert all(first["adapters"][n]["verdict"] == "published" for n in names), first
    settings = make_settings(tmp_path, **QUICK)
    started = time.perf_counter()
    second, registry = _night(settings, db, base_llm, embedder, seed=2)
    spent = {n: (r["steps_done"], r["seconds"]) for n, r in {**first["adapters"],
             **second["adapters"]}.items()}  # fmt: skip
    print(f"\nmerging night: {time.perf_counter() - started:.0f} s; steps and seconds {spent}")
    (survivor,) = second["adapters"]
    (absorbed,) = set(names) - {survivor}
    report = second["adapters"][survivor]
    assert report["verdict"] == "published", report
    assert report["merge"]["absorbed"] == absorbed and report["merged"]["retired"] == absorbed
    assert "fewer than sleep.merge_min_samples 3" in second["topics"][survivor]
    # The survivor's version 2 knows both facts from its weights, and routes both.
    merged = registry.current(survivor)
    assert merged is not None and merged.version == 2
    said = {q: _says(settings, base_llm, merged, q) for q in FACTS}
    print(f"\nnight 2 merged {absorbed} into {survivor}: {said}")
    assert all(FACTS[q] in said[q] for q in FACTS), said
    from npllm.modulator import Modulator

    router = Modulator(settings.modulator)
    router.set_adapters(registry.scopes(settings.modulator))
    assert [router.decide(embedder.embed_one(q)).chosen[0][0] for q in FACTS] == [survivor] * 2
    with db.pool.connection() as conn:
        learned = dict(conn.execute(
            "SELECT interaction_id, adapter FROM npllm.replay_buffer "
            "WHERE interaction_id = ANY(%(ids)s)", {"ids": list(ids.values())},
        ).fetchall())  # fmt: skip
        row = conn.execute(
            "SELECT adapters, merged_into, sleep_cycle, reason, details "
            "FROM npllm.adapter_population WHERE decision = 'merged'"
        ).fetchall()
    assert learned == {i: survivor for i in ids.values()}
    ((adapters, into, cycle, reason, details),) = row
    assert adapters == [absorbed, survivor] and into == survivor and cycle == second["cycle"]
    assert f"merged {absorbed} (1 sample(s)) into {survivor} (1)" in reason
    assert details["survivor_version"] == 2 and details["absorbed_version"] == 1
    # Retired, not deleted: its version is kept, and a rollback serves it again.
    assert registry.current(absorbed) is None
    (old,) = [v for a in registry.listing() if a["name"] == absorbed for v in a["versions"]]
    assert old["status"] == "retired" and "merged into" in old["reason"]
    back = registry.previous(absorbed)
    assert back.version == 1 and back.path.is_dir()
    registry.activate(back, "rolled back")
    assert registry.current(absorbed) == registry.version(absorbed, 1)
