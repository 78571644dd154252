"""Consolidating the adapter population: small or overlapping adapters merged into one.

A night may merge **one pair** of served adapters (``sleep.merge``; both trained by nights,
for this base, not both with an imported dataset of their own):

1. **Overlapping**: their centroids are at least ``sleep.merge_similarity`` alike — the
   modulator can hardly tell their topics apart.
2. **Small**: one has fewer than ``sleep.merge_min_samples`` learned samples (and dataset
   examples) and its nearest adapter is at least ``modulator.none_similarity`` alike (the
   similarity at which a question is routed to a topic).
3. **Crowded**: the population is at the cap ``modulator.max_adapters`` and a new topic
   wants a slot: the closest pair merges and the new topic takes the slot it frees.

The adapter with more samples survives (its name stays: names are stable and readable);
it trains tonight as its next version from the union of what both learned — the absorbed
adapter's learned samples are taught anew (paraphrases, keys, recall, the gate's
"learned" check), the survivor's own are rehearsed, its MAS penalty and probe set keep the
rest — and the absorbed adapter's dataset. Its routing keys are the union of both
(consolidation/lesson.py). Only when the gate passed and the version was published is the
absorbed adapter retired (`complete`): it stops being served, its versions are kept, so a
rollback (`npllm adapter rollback NAME`) serves it again; its replay rows move to the
survivor; and a ``merged`` row in ``npllm.adapter_population`` says why. A rejected merge
changes nothing: both stay served, the reason is in the night's metrics.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from consolidation import datasets
from npllm import population, replay
from npllm.config import Settings
from npllm.versions import Registry

# A merge teaches at most this many of the absorbed adapter's samples (everything, usually).
MERGE_LIMIT = 1000

_MOVE = """
UPDATE npllm.replay_buffer SET adapter = %(survivor)s, updated_at = now()
WHERE adapter = %(absorbed)s
"""


@dataclass(frozen=True)
class Merge:
    """One planned merge, as plan.json keeps it (an interrupted night resumes it)."""

    survivor: str  # keeps its name; trains as its next version
    absorbed: str  # retired once the survivor's version is published
    version: int  # the absorbed adapter's active version (kept: a rollback serves it)
    similarity: float  # cosine of the two centroids
    samples: dict[str, int]  # adapter → learned samples and dataset examples
    reason: str  # a sentence: why

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Merge:
        return cls(str(d["survivor"]), str(d["absorbed"]), int(d["version"]),
                   float(d["similarity"]), dict(d["samples"]), str(d["reason"]))  # fmt: skip


@dataclass(frozen=True)
class _Adapter:
    name: str
    version: int
    centroid: np.ndarray  # unit vector
    samples: int
    dataset: str | None


def find(settings: Settings, pool: Any, registry: Registry, crowded: bool = False) -> Merge | None:
    """Tonight's merge, if any (the module docstring); `crowded`: a new topic wants a slot
    and the population is at the cap."""
    if not settings.sleep.merge:
        return None
    found = _mergeable(pool, registry)
    pairs = []
    for a, b in itertools.combinations(found, 2):
        if a.dataset and b.dataset and a.dataset != b.dataset:
            continue  # a version learns one dataset (one topic key, one adapters.dataset)
        pairs.append((float(a.centroid @ b.centroid), a, b))
    if not pairs:
        return None
    pairs.sort(key=lambda p: (-p[0], p[1].name, p[2].name))
    sleep, modulator = settings.sleep, settings.modulator
    for s, a, b in pairs:
        if s >= sleep.merge_similarity:
            return _merge(a, b, s, f"their centroids are {s:.2f} alike (sleep.merge_similarity "
                          f"{sleep.merge_similarity:g})")  # fmt: skip
    for small in sorted(found, key=lambda x: (x.samples, x.name)):
        if small.samples >= sleep.merge_min_samples:
            break
        near = [(s, a, b) for s, a, b in pairs if small in (a, b)]
        if near and near[0][0] >= modulator.none_similarity:
            s, a, b = near[0]
            other = b if a is small else a
            return _merge(a, b, s, f"{small.name} has {small.samples} learned sample(s), fewer "
                          f"than sleep.merge_min_samples {sleep.merge_min_samples}, and its "
                          f"nearest adapter {other.name} is {s:.2f} alike "
                          f"(modulator.none_similarity {modulator.none_similarity:g})")  # fmt: skip
    if crowded:
        s, a, b = pairs[0]
        why = (f"the adapter cap (modulator.max_adapters {registry.cap}) is reached and a new "
               f"topic needs a slot: the closest pair, {s:.2f} alike")  # fmt: skip
        return _merge(a, b, s, why)
    return None


def _merge(a: _Adapter, b: _Adapter, similarity: float, why: str) -> Merge:
    """The larger adapter survives (on a tie, the name that sorts first)."""
    survivor, absorbed = sorted((a, b), key=lambda x: (-x.samples, x.name))
    reason = (f"merged {absorbed.name} ({absorbed.samples} sample(s)) into {survivor.name} "
              f"({survivor.samples}): {why}")  # fmt: skip
    sizes = {survivor.name: survivor.samples, absorbed.name: absorbed.samples}
    return Merge(survivor.name, absorbed.name, absorbed.version, round(similarity, 4), sizes,
                 reason)  # fmt: skip


def _mergeable(pool: Any, registry: Registry) -> list[_Adapter]:
    """Served adapters (for this base, with a centroid) whose active version a night
    trained: everything they know is in the replay buffer and their dataset, so a merge can
    teach it again. A version published by hand is never merged."""
    listing = {a["name"]: a for a in registry.listing()}
    sizes = {d["name"]: int(d["examples"]) for d in datasets.list_datasets(pool)}
    found = []
    for version, centroid in registry.active():
        entry = listing.get(version.adapter)
        if centroid is None or entry is None:
            continue
        active = next((v for v in entry["versions"] if v["version"] == version.version), None)
        if active is None or active["metrics"].get("sleep_cycle") is None:
            continue
        dataset = entry["dataset"]
        samples = replay.learned_count(pool, version.adapter) + sizes.get(dataset or "", 0)
        unit = centroid / max(float(np.linalg.norm(centroid)), 1e-8)
        found.append(_Adapter(version.adapter, version.version, unit, samples, dataset))
    return found


def centroid(registry: Registry, merge: Merge, tonight: list[np.ndarray]) -> np.ndarray:
    """Where the merged adapter routes from: both centroids weighted by the samples each
    stands for, and tonight's new questions."""
    centroids = {v.adapter: c for v, c in registry.active() if c is not None}
    total = np.sum(tonight, axis=0).astype(np.float64) if tonight else np.zeros(0)
    for name in (merge.survivor, merge.absorbed):
        part = max(merge.samples.get(name, 0), 1) * centroids[name].astype(np.float64)
        total = part if not total.size else total + part
    return np.asarray(total / max(float(np.linalg.norm(total)), 1e-8), np.float32)


def complete(
    pool: Any, publisher: Any, merge: Merge, cycle: int, report: dict[str, Any]
) -> dict[str, Any]:
    """After the survivor's version was published: the absorbed adapter retired (through
    the publisher: the daemon stops serving it; its versions are kept), its replay rows
    moved to the survivor (those the new version did not reproduce are learned again),
    and the ``merged`` row. What the night's metrics say of it."""
    published = report.get("published")
    reason = f"merged into {merge.survivor} v{published} by sleep cycle {cycle}"
    publisher.retire(merge.absorbed, reason, cycle,
                     {"merged_into": merge.survivor, "survivor_version": published})  # fmt: skip
    unlearned = [int(k) for k in report.get("unlearned", [])]
    with pool.connection() as conn, conn.transaction():
        moved = conn.execute(_MOVE, {"survivor": merge.survivor, "absorbed": merge.absorbed})
        rows = moved.rowcount
    if unlearned:
        replay.mark_new(pool, unlearned)
    details = {
        "samples": merge.samples,
        "similarity": merge.similarity,
        "survivor_version": published,
        "absorbed_version": merge.version,
        "replay_rows_moved": rows,
        "taught": report.get("samples"),
        "rehearsed": report.get("rehearsed"),
        "unlearned": len(unlearned),
    }
    population.record(pool, "merged", [merge.absorbed, merge.survivor], merge.reason,
                      sleep_cycle=cycle, merged_into=merge.survivor, details=details)  # fmt: skip
    return {"retired": merge.absorbed, "replay_rows_moved": rows}
