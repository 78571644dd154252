"""Tonight's plan: what a sleep cycle learns, decided before anything trains.

`make_plan` samples what is **new** in the replay buffer (rows no night has trained on,
or changed since; prioritised, premium + standard, seeded, at most ``sleep.max_samples``)
and keeps what can be learned (`learnable`: a correction, or an answer with a positive
reward); places each sample with the adapter the daemon's own modulator would route its
question to, or a new topic adapter within ``modulator.max_adapters``
(consolidation/topics.py); adds what each adapter **rehearses** (``sleep.rehearsal_ratio``
earlier samples per new one, at most ``sleep.max_rehearsal``) and the imported datasets to
learn (new or changed); and says where each adapter routes from now on (its centroid).
At most one pair of adapters is merged (consolidation/merging.py): the survivor's group
is first, holds both adapters' samples and says what it absorbs (``"merge"``).

The plan is JSON, written to ``<data_dir>/adapters/.staging/cycle<id>/plan.json`` before
training (`write_plan`) and after each adapter finishes, so that the next cycle can resume
an interrupted one with the same sample and routing (`resumable`). `mark_learned` marks
the samples with the adapter that learned them once the cycle succeeded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from consolidation import bookkeeping, datasets, merging, topics
from npllm import modulator, replay
from npllm.adapters import CEREBELLUM
from npllm.artifacts import write_file_atomically
from npllm.config import Settings
from npllm.errors import AdapterError
from npllm.versions import Registry

# Most samples a stale adapter is rebuilt from in one night (everything it learned, usually).
REBUILD_LIMIT = 1000


@dataclass
class Group:
    """What one adapter learns tonight: its new samples and those it rehearses (interaction
    ids), where it routes from now on, why it was chosen, whether it is a new adapter, and
    the merge it carries out (consolidation/merging.py `Merge.to_dict`), if any."""

    items: list[int]
    rehearse: list[int]
    centroid: list[float]
    why: str
    new: bool
    merge: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "items": self.items,
            "rehearse": self.rehearse,
            "centroid": self.centroid,
            "why": self.why,
            "new": self.new,
        }
        if self.merge is not None:
            out["merge"] = self.merge
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Group:
        return cls([int(k) for k in d.get("items", [])], [int(k) for k in d.get("rehearse", [])],
                   [float(x) for x in d.get("centroid", [])], str(d.get("why", "")),
                   bool(d.get("new", False)), d.get("merge"))  # fmt: skip


@dataclass
class Plan:
    """Tonight's plan (plan.json): the new samples, the duplicates each stands for, one
    :class:`Group` per adapter, the datasets to learn (adapter → {"dataset", "sha256"}), what
    is skipped and why; as the night goes, the finished adapters' reports (`done`: adapter or
    the cerebellum → its report, as the cycle's metrics hold it) and the modulator's."""

    seed: int
    items: list[int]
    groups: dict[str, Group]
    duplicates: dict[str, list[int]] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    modulator: dict[str, Any] | None = None
    cycle: int | None = None  # the cycle running it (a resumed plan: the one it continues)
    base_sha256: str | None = None  # the base weights it was made for (resumed only on them)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seed": self.seed, "items": self.items, "duplicates": self.duplicates,
            "groups": {name: g.to_json() for name, g in self.groups.items()},
            "datasets": self.datasets, "skipped": self.skipped, "done": self.done,
        }  # fmt: skip
        for key in ("modulator", "cycle", "base_sha256"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        return cls(
            seed=int(d["seed"]),
            items=[int(k) for k in d.get("items", [])],
            groups={name: Group.from_json(g) for name, g in d.get("groups", {}).items()},
            duplicates={str(k): [int(t) for t in v] for k, v in d.get("duplicates", {}).items()},
            datasets=dict(d.get("datasets", {})),
            skipped=dict(d.get("skipped", {})),
            done=dict(d.get("done", {})),
            modulator=d.get("modulator"),
            cycle=d.get("cycle"),
            base_sha256=d.get("base_sha256"),
        )


def learnable(item: replay.ReplayItem) -> bool:
    """What a night can learn from: the user's correction, or an answer they liked."""
    return item.corrected_answer is not None or item.reward > 0


def make_plan(settings: Settings, pool: Any, embedder: Any, registry: Registry, seed: int) -> Plan:
    """Tonight's work, written to plan.json before training: the new samples, the adapter
    each joins (consolidation/topics.py) with what it rehearses, and the datasets to learn."""
    sleep = settings.sleep
    new = [i for i in replay.sample(pool, sleep.max_samples, seed=seed, new_only=True,
                                    liked_tries=sleep.liked_tries)
           if learnable(i)]  # fmt: skip
    centroids: dict[str, np.ndarray] = {v.adapter: c for v, c in registry.active() if c is not None}
    scopes = registry.scopes(settings.modulator)
    # Stale adapters (trained for another base) take part with the scope and centroid of the
    # version they serve under that base, and are rebuilt from everything they learned.
    stale = registry.stale_versions()
    centroids.update(registry.stale_centroids())
    for version in stale:
        keys = registry.keys(version)
        if keys.texts:
            scopes[version.adapter] = keys.scope(settings.modulator)
        elif version.adapter in centroids:
            scopes[version.adapter] = centroids[version.adapter]  # type: ignore[assignment]
    router, _ = modulator.routing(settings, pool, scopes)
    listing = {a["name"]: a for a in registry.listing()}
    vectors = np.asarray(embedder.embed([i.question for i in new])) if new else None

    def place(population: int) -> tuple[dict[str, topics.Topic], list[replay.ReplayItem]]:
        if vectors is None:
            return {}, []
        return topics.assign(
            new,
            vectors,
            router,
            centroids,
            cap=registry.cap or len(centroids) + len(new),
            population=population,
            min_support=sleep.new_topic_min_samples,
            similarity=settings.modulator.none_similarity,
            taken={*listing, CEREBELLUM},
        )

    population = len(registry.population())
    assigned, unplaced = place(population)
    merge = merging.find(settings, pool, registry)
    if merge is None and sleep.merge and registry.cap is not None:
        # A new topic the cap leaves out wants a slot: the closest pair merges to free one.
        freed, _ = place(population - 1)
        if sum(t.new for t in freed.values()) > sum(t.new for t in assigned.values()):
            merge = merging.find(settings, pool, registry, crowded=True)
    if merge is not None:  # the absorbed adapter retires first (its group trains first)
        assigned, unplaced = place(population - 1)
        assigned = _absorb(pool, embedder, registry, assigned, merge, seed)
    for version in stale:  # rebuilt for this base from everything it was taught
        taught = [i for i in replay.sample(pool, REBUILD_LIMIT, seed=seed, adapter=version.adapter)
                  if learnable(i)]  # fmt: skip
        topic = assigned.setdefault(version.adapter, topics.Topic(version.adapter))
        known = {i.interaction_id for i in topic.items}
        for item in taught:
            if item.interaction_id not in known:
                topic.add(item, embedder.embed_one(item.question))
        topic.why = (topic.why + "; " if topic.why else "") + (
            f"rebuilt for this base from the {len(taught)} sample(s) it learned for "
            f"another (v{version.version})"
        )
    groups: dict[str, Group] = {}
    rebuilt = {v.adapter for v in stale}
    for name, topic in assigned.items():
        if not topic.items and (merge is None or name != merge.survivor):
            continue  # a stale adapter that learned only its dataset (added below)
        rehearse: list[replay.ReplayItem] = []
        budget = min(math.ceil(sleep.rehearsal_ratio * len(topic.items)), sleep.max_rehearsal)
        if merge is not None and name == merge.survivor:  # a merge rehearses all it learned
            rehearse = [
                i
                for i in replay.sample(pool, REBUILD_LIMIT, seed=seed, adapter=name,
                                       exclude=[t.interaction_id for t in topic.items])
                if learnable(i)
            ]  # fmt: skip
        elif not topic.new and budget and name not in rebuilt:
            rehearse = [
                i
                for i in replay.sample(pool, budget, seed=seed, adapter=name,
                                       exclude=[t.interaction_id for t in topic.items])
                if learnable(i)
            ]  # fmt: skip
        groups[name] = Group(
            items=[i.interaction_id for i in topic.items],
            rehearse=[i.interaction_id for i in rehearse],
            centroid=_centroid(pool, topic, centroids.get(name), listing.get(name)).tolist(),
            why=topic.why,
            new=topic.new,
        )
    wanted = _datasets_to_train(pool, registry, set(groups))
    if merge is not None:
        tonight = [v for i, v in zip(new, vectors if vectors is not None else [], strict=False)
                   if i.interaction_id in set(groups[merge.survivor].items)]  # fmt: skip
        groups[merge.survivor].centroid = merging.centroid(registry, merge, tonight).tolist()
        groups[merge.survivor].merge = merge.to_dict()
        _merge_datasets(pool, wanted, listing, merge)
    skipped = {}
    if unplaced:
        skipped["samples"] = (
            f"{len(unplaced)} sample(s) not learned tonight (they stay new): the adapter cap "
            f"is reached and no served adapter is routable to take them "
            f"(interactions {', '.join(str(i.interaction_id) for i in unplaced)})"
        )
    coming = {name for name, g in groups.items() if g.new}  # the cap counts them too
    for name, d in list(wanted.items()):
        if name in groups:
            continue
        try:  # trained from its dataset alone: a new adapter must fit under the cap
            registry.check_capacity(name, coming=coming)
        except AdapterError as exc:
            skipped[name] = f"dataset {d['dataset']!r} not learned: {exc}"
            del wanted[name]
            continue
        coming.add(name)
        groups[name] = Group(
            items=[],
            rehearse=[],
            centroid=datasets.dataset_centroid(pool, embedder, d["dataset"]).tolist(),
            why=f"its dataset {d['dataset']!r} is new or changed",
            new=name not in listing,
        )
    return Plan(
        seed=seed,
        items=[i.interaction_id for i in new],
        groups=groups,
        # Rows each sample stands for (its duplicates): learned with it, marked with it.
        duplicates={str(i.interaction_id): i.duplicates for i in new if i.duplicates},
        datasets=wanted,
        skipped=skipped,
    )


def _absorb(
    pool: Any,
    embedder: Any,
    registry: Registry,
    assigned: dict[str, topics.Topic],
    merge: merging.Merge,
    seed: int,
) -> dict[str, topics.Topic]:
    """`assigned` with the merge's two adapters as one topic, first (it trains and retires
    the absorbed adapter before a new topic takes its slot): tonight's samples of both,
    and every sample the absorbed adapter learned, taught anew."""
    survivor = assigned.pop(merge.survivor, None) or topics.Topic(merge.survivor)
    absorbed = assigned.pop(merge.absorbed, None) or topics.Topic(merge.absorbed)
    topic = topics.Topic(merge.survivor, why=merge.reason)
    for item, vector in [*zip(survivor.items, survivor.vectors, strict=True),
                         *zip(absorbed.items, absorbed.vectors, strict=True)]:  # fmt: skip
        topic.add(item, vector)
    known = {i.interaction_id for i in topic.items}
    taught = [i for i in replay.sample(pool, merging.MERGE_LIMIT, seed=seed, adapter=merge.absorbed)
              if learnable(i) and i.interaction_id not in known]  # fmt: skip
    if taught:
        for item, vector in zip(taught, embedder.embed([i.question for i in taught]), strict=True):
            topic.add(item, np.asarray(vector, np.float32))
    return {merge.survivor: topic, **assigned}


def _merge_datasets(
    pool: Any, wanted: dict[str, dict[str, Any]], listing: dict[str, Any], merge: merging.Merge
) -> None:
    """The absorbed adapter's dataset is learned by the survivor tonight (a merge is never
    planned when both have one)."""
    wanted.pop(merge.absorbed, None)
    name = listing.get(merge.absorbed, {}).get("dataset")
    if name and merge.survivor not in wanted:
        found = {d["name"]: d for d in datasets.list_datasets(pool)}
        if name in found:
            wanted[merge.survivor] = {"dataset": name, "sha256": found[name]["sha256"]}


def _centroid(
    pool: Any,
    topic: topics.Topic,
    old: np.ndarray | None,
    adapter: dict[str, Any] | None,
) -> np.ndarray:
    """Where the modulator sends questions from now on: the mean of every question the
    adapter has learned — its earlier ones (the stored centroid, weighted by how many it
    stands for) and tonight's."""
    total = np.sum(topic.vectors, axis=0).astype(np.float64)
    if old is not None:
        earlier = replay.learned_count(pool, topic.name)
        if adapter is not None and adapter.get("dataset"):
            sizes = {d["name"]: d["examples"] for d in datasets.list_datasets(pool)}
            earlier += sizes.get(adapter["dataset"], 0)
        total += max(earlier, 1) * old
    return np.asarray(total / max(float(np.linalg.norm(total)), 1e-8), np.float32)


def _datasets_to_train(
    pool: Any, registry: Registry, routed: set[str]
) -> dict[str, dict[str, Any]]:
    """Imported datasets go to their adapter — the one trained on it (`adapters.dataset`),
    else the adapter of the dataset's name — when that adapter trains this cycle anyway,
    or has no version for this base yet, or its active version predates the dataset's
    import; never to a retired adapter (npllm/population.py) that does not train tonight
    anyway: having no active version, it would otherwise be trained afresh every night.
    adapter name → {"dataset", "sha256"}."""
    listing = {a["name"]: a for a in registry.listing()}
    served = registry.population()
    owner: dict[str, str] = {}  # a merged-away (retired) adapter's dataset is the survivor's
    for a in listing.values():
        if a["dataset"] and (a["dataset"] not in owner or a["name"] in served):
            owner[a["dataset"]] = a["name"]
    wanted = {}
    for d in datasets.list_datasets(pool):
        name = owner.get(d["name"], d["name"])
        if name == CEREBELLUM:  # not an adapter name: `npllm adapter train` can use it
            continue
        if listing.get(name, {}).get("status") == "retired" and name not in routed:
            continue  # unused, retired from serving: its dataset does not revive it
        active = next(
            (v for v in listing.get(name, {}).get("versions", []) if v["status"] == "active"),
            None,
        )
        current = registry.current(name)
        learned = (
            current is not None
            and active is not None
            and (
                active["metrics"].get("dataset_sha256") == d["sha256"]
                or (
                    listing[name]["dataset"] == d["name"]
                    and datetime.fromisoformat(active["created_at"])
                    >= datetime.fromisoformat(d["created_at"])
                )
            )
        )
        if name in routed or not learned:
            wanted[name] = {"dataset": d["name"], "sha256": d["sha256"]}
    return wanted


def resumable(pool: Any, staging_root: Path, sha: str) -> tuple[int, Plan] | None:
    """The latest cycle, if it was interrupted and left its plan (and checkpoints) for
    the same base weights: (its id, its plan)."""
    row = bookkeeping.latest_cycle(pool)
    if row is None or row[1] != "interrupted":
        return None
    plan = read_plan(staging_root / f"cycle{row[0]}")
    if plan is None or plan.base_sha256 != sha:
        return None
    return row[0], plan


def read_plan(staging: Path) -> Plan | None:
    """The plan a cycle wrote to `staging`, None when it is missing or unreadable."""
    try:
        return Plan.from_json(dict(json.loads((staging / "plan.json").read_text())))
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return None


def write_plan(staging: Path, plan: Plan) -> None:
    """The cycle's sample, routing and finished adapters, written atomically."""
    write_file_atomically(staging / "plan.json", json.dumps(plan.to_json()))


def mark_learned(pool: Any, plan: Plan, cycle: int | None) -> None:
    """Each sample (and the duplicates it stands for) marked with the adapter that learned
    it — only where that adapter's version was published, and only the samples its served
    check reproduced (the report's "unlearned" lists the others). A rejected or refused
    night's samples, and those not reproduced, stay new: the next night tries them again
    (a liked answer, no more than `sleep.liked_tries` nights: each published night that
    missed it counts, `replay.mark_missed`); a rehearsed sample the published version no
    longer reproduces becomes new again."""
    learned: dict[int, str] = {}
    forgotten: list[int] = []
    missed_new: list[int] = []
    for name, g in plan.groups.items():
        report = plan.done.get(name) or {}
        if report.get("verdict") != "published":
            continue
        missed = set(report.get("unlearned", []))
        learned.update({k: name for k in g.items + g.rehearse if k not in missed})
        forgotten += [k for k in g.rehearse if k in missed]
        missed_new += [k for k in g.items if k in missed]
    for rep, twins in plan.duplicates.items():
        learned.update({twin: learned[int(rep)] for twin in twins if int(rep) in learned})
    if learned:
        replay.mark_sampled(pool, list(learned), cycle, learned)
    if forgotten:  # an earlier answer the published version no longer serves: taught again
        replay.mark_new(pool, forgotten)
    if missed_new:
        replay.mark_missed(pool, missed_new)
