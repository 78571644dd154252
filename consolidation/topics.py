"""Which adapter each of a night's new samples joins: topic adapters, not one per sample.

1. **The modulator decides first.** Each sample goes where the daemon's own modulator
   (its trained version if one is active, else the adapters' centroids) would route its
   question: one rule for serving and for learning, none of its own here.
2. **A new topic needs support.** The samples the modulator sends to no adapter are
   grouped greedily by meaning (a sample joins the group whose mean question is at least
   ``modulator.none_similarity`` alike — the similarity at which the modulator would route
   it there). A group of at least ``sleep.new_topic_min_samples`` samples becomes a new
   adapter, named for a person (its dominant topic tag and terms, e.g.
   ``debugging-quibblix-gateway``), while the population stays within the hard cap
   ``modulator.max_adapters``.
3. **Everything else joins the nearest adapter** (by centroid, however far); only on a
   fresh install, with no adapter at all, do the leftover samples form one first adapter
   together — one sample is not yet a topic.

Every decision is kept as a sentence (`Topic.why`) in the cycle's metrics.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from npllm.adapters import NAME
from npllm.modulator import Modulator
from npllm.replay import ReplayItem

# Words that say nothing about a topic (names are built from the others).
_STOPWORDS = (
    "a about after all also an and any are as at be been but by can could did do does doing "
    "done for from get got had has have how i if in into is it its just like make me my need "
    "no not now of on one or our please should so some than that the their them then there "
    "these this those to too up us use using was we were what when where which while who "
    "whom why will with would you your yes set tell know show give want"
)
STOPWORDS = frozenset(_STOPWORDS.split())
_WORD = re.compile(r"[a-z][a-z0-9]{2,}")


@dataclass
class Topic:
    """The samples one adapter learns tonight."""

    name: str
    items: list[ReplayItem] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)  # their question embeddings
    new: bool = False  # the adapter is created tonight
    why: str = ""

    def add(self, item: ReplayItem, vector: np.ndarray) -> None:
        self.items.append(item)
        self.vectors.append(vector)

    @property
    def mean(self) -> np.ndarray:
        mean = np.mean(self.vectors, axis=0)
        return np.asarray(mean / max(float(np.linalg.norm(mean)), 1e-8), np.float32)


def assign(
    items: list[ReplayItem],
    vectors: np.ndarray,
    router: Modulator,
    centroids: dict[str, np.ndarray],
    *,
    cap: int,
    population: int,
    min_support: int,
    similarity: float,
    taken: set[str],
) -> tuple[dict[str, Topic], list[ReplayItem]]:
    """(adapter name → its Topic tonight, the samples no adapter can take) — see the module
    docstring. `vectors`: the items' question embeddings, (items, dim); `centroids`: every
    adapter that can take samples (active or stale); `population`: the adapters served now
    (the cap counts those and tonight's new ones); `taken`: names already used (no new
    adapter may take one). A sample no adapter can take (the cap is reached and none is
    routable) stays new for a later night."""
    topics: dict[str, Topic] = {}
    unrouted: list[int] = []
    for k, item in enumerate(items):
        chosen = router.decide(vectors[k]).chosen
        if chosen:
            name = chosen[0][0]
            topic = topics.setdefault(name, Topic(name, why="routed by the modulator"))
            topic.add(item, vectors[k])
        else:
            unrouted.append(k)
    groups = _group(unrouted, vectors, similarity)
    leftovers: list[int] = []
    for group in sorted(groups, key=len, reverse=True):
        if len(group) >= min_support and population < cap:
            name = topic_name([items[k] for k in group], taken)
            taken.add(name)
            topic = Topic(name, new=True, why=f"new topic: {len(group)} samples alike")
            for k in group:
                topic.add(items[k], vectors[k])
            topics[name] = topic
            population += 1
        else:
            leftovers += group
    known = {**centroids, **{n: t.mean for n, t in topics.items() if t.new}}
    if leftovers and not known and population < cap:  # a fresh install: its first adapter
        name = topic_name([items[k] for k in leftovers], taken)
        taken.add(name)
        first = Topic(name, new=True, why=f"first adapter: {len(leftovers)} samples, no topic "
                      f"with {min_support} yet")  # fmt: skip
        for k in leftovers:
            first.add(items[k], vectors[k])
        topics[name] = first
        return topics, []
    if leftovers and not known:  # at the cap with nothing routable: nowhere to go tonight
        return topics, [items[k] for k in leftovers]
    names = list(known)
    matrix = np.stack([known[n] for n in names]) if names else np.zeros((0, vectors.shape[1]))
    for k in leftovers:
        scores = matrix @ vectors[k]  # (adapters,)
        best = int(np.argmax(scores))
        name = names[best]
        topic = topics.setdefault(name, Topic(name))
        if not topic.why:
            topic.why = "joined as the nearest adapter"
        topic.add(items[k], vectors[k])
    return topics, []


def _group(indices: list[int], vectors: np.ndarray, similarity: float) -> list[list[int]]:
    """Greedy grouping by meaning: each sample joins the group whose mean it is most alike,
    if at least `similarity`, else starts one."""
    groups: list[list[int]] = []
    sums: list[np.ndarray] = []
    for k in indices:
        best, score = None, similarity
        for g, total in enumerate(sums):
            mean = total / max(float(np.linalg.norm(total)), 1e-8)
            s = float(mean @ vectors[k])
            if s >= score:
                best, score = g, s
        if best is None:
            groups.append([k])
            sums.append(vectors[k].astype(np.float64).copy())
        else:
            groups[best].append(k)
            sums[best] += vectors[k]
    return groups


def topic_name(items: list[ReplayItem], taken: set[str]) -> str:
    """A name a person can read: the topic tag most of the questions have (else
    ``general``) and the two commonest terms shared by most of them, e.g.
    ``debugging-quibblix-gateway``; made unique with ``-2``, ``-3``. Samples with nothing in
    common are named ``general``."""
    half = max(1, (len(items) + 1) // 2)
    tags = Counter(item.tags[0] for item in items if item.tags)
    tag = next((t for t, n in tags.most_common(1) if n >= half), "general")
    words: Counter[str] = Counter()
    first: dict[str, int] = {}  # ties keep the order the words are written in
    for item in items:
        found = [w for w in _WORD.findall(item.question.lower()) if w not in STOPWORDS]
        for w in found:
            first.setdefault(w, len(first))
        words.update(set(found) - {tag})
    shared = [(w, n) for w, n in words.items() if n >= half and (n > 1 or len(items) == 1)]
    terms = [w for w, _ in sorted(shared, key=lambda kv: (-kv[1], first[kv[0]]))[:2]]
    base = "-".join([tag, *terms])[:56].strip("-_")
    name, n = base, 1
    while name in taken or not NAME.fullmatch(name):
        n += 1
        name = f"{base}-{n}"
    return name
