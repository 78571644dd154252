"""What one adapter learns in a night, as training examples and as routing keys.

A correction is an edit (DESIGN.md, "Learning precisely"). Tonight's lesson for one
adapter is:

- **taught**: each new sample (a correction, or a liked answer) and each earlier one it
  rehearses, in the conversation it came from — these must be reproduced exactly, as the
  serving engine will answer them (consolidation/served.py);
- **variants**: each new question rephrased by rule (`sleep.paraphrases`,
  npllm/variants.py) with the same answer — trained, never checked;
- **keys** (npllm/scope.py): where the version answers — every question the adapter has
  learned and not seen superseded (from the replay buffer, so a rebuilt or upgraded adapter
  keeps them), the paraphrases, its dataset's questions and centroid (as a topic) — and the
  neighbours it must leave to the base: questions about the same subject with another
  relation, the public default behind a team's setting (`sleep.neighbours` by rule), and
  the user's own questions near a taught one that were answered and never corrected;
- **checks**: other neighbouring questions (other relations, the topic's general
  questions) whose served answers the gate compares before and after the night.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from consolidation import datasets
from consolidation.runs import split_held_out
from npllm import replay, variants
from npllm.adapters import CEREBELLUM
from npllm.config import Settings
from npllm.errors import NotFoundError
from npllm.memory import content
from npllm.versions import Keys, Registry, Version

Chat = list[dict[str, str]]
# Neighbouring questions from the user's own history, per taught question, at most.
HISTORY = 8
# The gate's general questions per taught question (PROBES nearest to it).
PROBES_PER_QUESTION = 2

# The questions an adapter has learned and that nothing superseded since, with their
# embeddings (interactions keep them): its question keys.
_LEARNED = """
SELECT r.interaction_id, i.question, i.question_embedding
FROM npllm.replay_buffer r JOIN npllm.interactions i ON i.id = r.interaction_id
WHERE r.adapter = %(adapter)s AND r.trained_at IS NOT NULL AND r.superseded_by IS NULL
  AND i.question_embedding IS NOT NULL
ORDER BY r.interaction_id
"""
# Questions the user asked near this one that were answered and never corrected nor
# disliked, and not learned by this adapter: neighbours to leave alone.
_HISTORY = """
SELECT i.id, i.question, i.answer, i.question_embedding,
       1 - (i.question_embedding <=> %(embedding)s) AS alike
FROM npllm.interactions i JOIN npllm.replay_buffer r ON r.interaction_id = i.id
WHERE i.question_embedding IS NOT NULL AND i.id <> ALL(%(taught)s)
  AND r.corrected_answer IS NULL AND r.reward >= 0 AND r.superseded_by IS NULL
  AND (r.adapter IS NULL OR r.adapter <> ALL(%(adapters)s)) AND i.created_at < %(taught_at)s
ORDER BY i.question_embedding <=> %(embedding)s
LIMIT %(k)s
"""
# A taught question's embedding, and when it was first taught (corrected, or last rated):
# a question corrected again (a changed fact) counts from the earliest correction it
# superseded, so the user's askings of the earlier value are not taken for neighbours.
_TAUGHT = """
WITH RECURSIVE chain(id, at) AS (
    SELECT r.interaction_id, coalesce(r.corrected_at, r.updated_at)
    FROM npllm.replay_buffer r WHERE r.interaction_id = %(id)s
  UNION
    SELECT r.interaction_id, coalesce(r.corrected_at, r.updated_at)
    FROM npllm.replay_buffer r JOIN chain c ON r.superseded_by = c.id
)
SELECT i.question_embedding, (SELECT min(at) FROM chain)
FROM npllm.interactions i
WHERE i.id = %(id)s AND i.question_embedding IS NOT NULL
"""


@dataclass(frozen=True)
class Lesson:
    """What one adapter (or the cerebellum) learns tonight, and on which model."""

    name: str
    llm: Any  # npllm.llm.BaseLLM
    registry: Registry
    items: list[replay.ReplayItem]  # tonight's new samples
    rehearse: list[replay.ReplayItem] = field(default_factory=list)  # earlier ones it learned
    centroid: np.ndarray | None = None  # where the modulator routes from now on
    dataset: dict[str, Any] | None = None  # {"dataset", "sha256"}: new or changed
    # A stale adapter's version under the base it was trained for: rebuilt tonight for this
    # base, it keeps that version's paraphrase and neighbour keys.
    rebuilds: Version | None = None
    # A merge (consolidation/merging.py): the absorbed adapter's active version. Its learned
    # questions and carried keys become this version's too.
    absorbs: Version | None = None

    @property
    def learned_by(self) -> list[str]:
        """The adapters whose learned questions are this version's keys."""
        return [self.name] + ([self.absorbs.adapter] if self.absorbs is not None else [])

    @property
    def kind(self) -> Literal["adapter", "cerebellum"]:
        return "cerebellum" if self.name == CEREBELLUM else "adapter"

    @property
    def dataset_name(self) -> str | None:
        return None if self.dataset is None else self.dataset["dataset"]


@dataclass(frozen=True)
class Examples:
    taught: list[Chat]  # tonight's samples and the rehearsed ones: each must be reproduced
    sources: list[int]  # the interaction each taught chat comes from
    variants: list[Chat]  # tonight's questions rephrased, with their answers
    imported: list[Chat]  # the adapter's dataset
    imported_train: list[Chat]
    held_out: list[Chat]  # 1 in 5 of a large dataset; corrections are never held out
    keys: Keys | None = None  # where the version answers (None: the cerebellum, not routed)
    checks: list[Chat] = field(default_factory=list)  # neighbours the gate compares
    # Of the checks, the user's own questions as alike to a taught one as a question asked
    # again: routing cannot keep them apart, so a change to one counts against the version.
    firm: frozenset[str] = frozenset()

    @property
    def train(self) -> list[Chat]:
        return self.taught + self.variants + self.imported_train

    @property
    def validation(self) -> list[Chat]:
        return self.held_out or self.taught + self.imported_train


def question(chat: Chat) -> str:
    """A chat's last user message: the question its answer answers ("" without one)."""
    return next((m["content"] for m in reversed(chat) if m["role"] == "user"), "")


def _rephrased(chat: Chat, question: str) -> Chat:
    """`chat` (ending with its answer) with its last user turn replaced by `question`."""
    *context, answer = chat
    last = max(k for k, m in enumerate(context) if m["role"] == "user")
    return [*context[:last], {"role": "user", "content": question}, *context[last + 1 :], answer]


def build(
    settings: Settings, pool: Any, embedder: Any, lesson: Lesson, previous: Version | None
) -> Examples:
    """Tonight's examples, keys and checks for `lesson` (see the module docstring);
    `previous`: the version it continues (its paraphrase and neighbour keys carry over)."""
    items = lesson.items + lesson.rehearse
    taught = [item.chat()["messages"] for item in items]
    imported: list[Chat] = []
    if lesson.dataset is not None:  # the adapter's imported dataset is trained with its samples
        try:
            rows = datasets.dataset_examples(pool, lesson.dataset["dataset"])
        except NotFoundError:  # deleted since the cycle was planned
            rows = []
        imported = [e["messages"] for e in rows[: settings.sleep.max_samples]]
    imported_train, held_out = split_held_out(imported, settings.training)
    new = [(item, item.chat()["messages"]) for item in lesson.items]
    count = settings.sleep.paraphrases
    rephrasings = [
        (item, p) for item, chat in new for p in variants.paraphrases(question(chat), count)
    ]
    chats = {item.interaction_id: chat for item, chat in new}
    extra = [_rephrased(chats[item.interaction_id], p) for item, p in rephrasings]
    examples = Examples(taught, [i.interaction_id for i in items], extra, imported,
                        imported_train, held_out)  # fmt: skip
    if lesson.kind == "cerebellum":  # a draft model: never routed, nothing to keep apart
        return examples
    apart, firm = _history(settings, pool, lesson, examples.sources)
    known = [question(chat) for chat in imported]
    keys = _keys(settings, pool, embedder, lesson, previous, rephrasings, apart, known)
    asked = [*_checks(settings, embedder, lesson), *firm]
    checks = [[{"role": "user", "content": q}] for q in dict.fromkeys(asked)]
    return Examples(taught, examples.sources, extra, imported, imported_train, held_out,
                    keys, checks, frozenset(firm))  # fmt: skip


def _keys(
    settings: Settings, pool: Any, embedder: Any, lesson: Lesson, previous: Version | None,
    rephrasings: list[tuple[replay.ReplayItem, str]], history: list[tuple[str, np.ndarray]],
    known: Sequence[str] = (),
) -> Keys:  # fmt: skip
    """The version's routing keys (the module docstring); `known`: the questions of the
    adapter's dataset, which it answers as much as those it learned from the replay buffer
    (question keys, so no rule-made neighbour as alike as a re-ask of one is left to the
    base: "Who maintains Zorblax?" beside a dataset that teaches who maintains it)."""
    tonight = {i.interaction_id for i in lesson.items}
    with pool.connection() as conn:
        learned = [r for name in lesson.learned_by
                   for r in conn.execute(_LEARNED, {"adapter": name}).fetchall()
                   if r[0] not in tonight]  # fmt: skip
    kinds = ["question"] * len(learned)
    texts = [r[1] for r in learned]
    vectors = [np.asarray(r[2].to_list(), np.float32) for r in learned]
    sources: list[int | None] = [int(r[0]) for r in learned]
    carried = _carried(pool, lesson.registry, previous, tonight)
    if lesson.absorbs is not None:
        more = _carried(pool, lesson.registry, lesson.absorbs, tonight)
        carried = Keys(carried.kinds + more.kinds, carried.texts + more.texts,
                       np.concatenate([carried.embeddings, more.embeddings]),
                       carried.interactions + more.interactions)  # fmt: skip
    fresh: list[tuple[str, str, int | None]] = []
    for item in lesson.items:
        fresh.append(("question", item.question, item.interaction_id))
    fresh += [("question", q, None) for q in dict.fromkeys(known) if q.strip()]
    fresh += [("paraphrase", p, item.interaction_id) for item, p in rephrasings]
    for item in lesson.items:
        around = variants.neighbours(item.question, settings.sleep.neighbours)
        fresh += [("neighbour", n, item.interaction_id) for n in around]
    embedded: Any = np.asarray(embedder.embed([t for _, t, _ in fresh])) if fresh else []
    kinds += [k for k, _, _ in fresh] + carried.kinds
    texts += [t for _, t, _ in fresh] + carried.texts
    vectors += [np.asarray(v, np.float32) for v in embedded] + list(carried.embeddings)
    sources += [s for _, _, s in fresh] + carried.interactions
    if settings.sleep.neighbours:
        for text, vector in history:
            kinds.append("neighbour")
            texts.append(text)
            vectors.append(vector)
            sources.append(None)
    if lesson.dataset is not None:
        try:
            centre = datasets.dataset_centroid(pool, embedder, lesson.dataset["dataset"])
            kinds.append("topic")
            texts.append(f"dataset {lesson.dataset['dataset']}")
            vectors.append(np.asarray(centre, np.float32))
            sources.append(None)
        except NotFoundError:
            pass
    matrix = np.stack(vectors) if vectors else np.zeros((0, 384), np.float32)
    return _apart(Keys(kinds, texts, matrix, sources), settings.feedback.reask_similarity)


def _apart(keys: Keys, same: float) -> Keys:
    """`keys` without the neighbours that are the same question (at least `same` alike) as
    one the adapter answers: a neighbour of one taught fact can be another fact it learned
    ("What port does X listen on?" beside a taught "Who owns X?"), and a tie leaves both
    to the base."""
    taught = keys.embeddings[[k != "neighbour" for k in keys.kinds]]
    if not len(taught):
        return keys
    alike = (keys.embeddings @ taught.T).max(axis=1)
    return keys.only(
        [k for k, kind in enumerate(keys.kinds) if kind != "neighbour" or alike[k] < same]
    )


def _carried(pool: Any, registry: Registry, previous: Version | None, tonight: set[int]) -> Keys:
    """The paraphrase and neighbour keys of the version this one continues, for questions
    not superseded since (its question keys come from the replay buffer)."""
    empty = Keys([], [], np.zeros((0, 384), np.float32), [])
    if previous is None:
        return empty
    old = registry.keys(previous)
    gone = replay.superseded(pool, [i for i in old.interactions if i is not None]) | tonight
    keep = [k for k, (kind, source) in enumerate(zip(old.kinds, old.interactions, strict=True))
            if kind in ("paraphrase", "neighbour") and source not in gone]  # fmt: skip
    return old.only(keep) if keep else empty


def _history(
    settings: Settings, pool: Any, lesson: Lesson, taught: list[int]
) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """The user's own questions near tonight's, asked before it was taught, answered and
    never corrected or disliked: neighbours this adapter leaves to the base — (those
    routing can keep apart, as keys; those as alike to a taught question as a question
    asked again, which only the gate can check). A question asked after the teaching is no
    evidence (the user may be trying the correction out), nor one whose answer already says
    what the correction says, nor the taught question itself asked earlier (the same
    keywords): its correction is what the user wants it answered with now. Nor one nearer
    another question the adapter learned than this one: it is about that question (often
    the user trying it in other words), whose own night weighed it — a neighbour key there
    would send that question's paraphrases to the base."""
    apart: dict[str, np.ndarray] = {}
    firm: list[str] = []
    same = settings.feedback.reask_similarity
    with pool.connection() as conn:
        taught_rows = {i.interaction_id: conn.execute(_TAUGHT, {"id": i.interaction_id})
                       .fetchone() for i in lesson.items}  # fmt: skip
        learned = {
            int(r[0]): np.asarray(r[2].to_list(), np.float32)
            for name in lesson.learned_by
            for r in conn.execute(_LEARNED, {"adapter": name}).fetchall()
        }
        learned.update({k: np.asarray(r[0].to_list(), np.float32)
                        for k, r in taught_rows.items() if r is not None})  # fmt: skip
        for item in lesson.items:
            row = taught_rows[item.interaction_id]
            if row is None:
                continue
            others = [v for k, v in learned.items() if k != item.interaction_id]
            other = np.stack(others) if others else np.zeros((0, len(learned[item.interaction_id])))
            values = _values(item.question, item.target)
            rows = conn.execute(_HISTORY, {
                "taught": taught, "adapters": lesson.learned_by, "embedding": row[0],
                "taught_at": row[1], "k": HISTORY,
            }).fetchall()  # fmt: skip
            asked = _words(item.question)
            for _, question, answer, vector, alike in rows:
                if values and values <= set(content(answer)):  # answered with the correction
                    continue
                embedding = np.asarray(vector.to_list(), np.float32)
                if len(other) and float((other @ embedding).max()) > alike:
                    continue  # about another question the adapter learned
                if alike >= same:
                    if _words(question) != asked:  # not the same question asked earlier
                        firm.append(question)
                else:
                    apart.setdefault(question, embedding)
    return list(apart.items()), list(dict.fromkeys(firm))


def _words(question: str) -> set[str]:
    """A question's keywords, lower case: two questions with the same ones ask the same."""
    return {w.lower() for w in variants.keywords(question)}


def _values(question: str, answer: str) -> set[str]:
    """What an answer says that its question does not: its words absent from the question."""
    asked = set(content(question))
    return {w for w in content(answer) if w not in asked and w not in variants.STOP}


def _checks(settings: Settings, embedder: Any, lesson: Lesson) -> list[str]:
    """The gate's neighbouring questions: other relations about each new question's subject
    than the keys use, and the general questions of its topic (`variants.PROBES`)."""
    if not lesson.items or settings.training.max_changed_neighbours >= 1.0:
        return []
    probes = embedder.embed(list(variants.PROBES))
    found: list[str] = []
    for item in lesson.items:
        found += variants.checks(item.question)
        found += variants.nearest_probes(embedder.embed_one(item.question), probes,
                                         PROBES_PER_QUESTION)  # fmt: skip
    return list(dict.fromkeys(found))
