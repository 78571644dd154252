"""Feedback: explicit events and implicit signals, integrated into a reward per interaction.

Each signal becomes one ``npllm.feedback_events`` row holding its implicit and/or
emotional value in [-1, 1]; the interaction's ``npllm.replay_buffer`` row keeps the
running sums and the integrated result, updated in the same transaction (row-locked,
so concurrent events never lose an update):

    implicit  = mean of the implicit values     emotional = mean of the emotional values
    reward    = (w_i * implicit + w_e * emotional) / (w_i + w_e), over the components
                that have at least one signal (0 when none has); with both present this
                is exactly 0.7 * implicit + 0.3 * emotional (feedback.*_weight)
    quality   = 1 when the user sent a corrected answer (it becomes the training
                target), else the reward
    tier      = premium if quality >= premium_threshold, discard if quality <=
                discard_threshold (never learned from; an unrated answer has quality 0),
                else standard

Signal values are in :data:`EVENT_VALUES` and :data:`IMPLICIT_VALUES`; ``edited`` is
graded by the normalised Levenshtein distance d between answer and correction:
0.6 - 1.6 * d (a near-copy is like ``accepted``, a full rewrite like ``rejected``).

One concept, over ~400 lines: turning signals into rewards (the events, their integration
and the implicit detectors that produce them).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool
from rapidfuzz.distance import Levenshtein

from npllm.config import FeedbackConfig
from npllm.errors import NotFoundError, RequestError
from npllm.memory import MemoryStore
from npllm.tone import ToneScorer

# Implicit value of each explicit event ("edited" is graded, see edit_value).
EVENT_VALUES: dict[str, float] = {
    "accepted": 0.7,
    "copied": 0.6,
    "applied": 0.9,
    "regenerated": -0.6,
    "rejected": -1.0,
    "abandoned": -0.5,
}
EVENTS: tuple[str, ...] = (*EVENT_VALUES, "edited")
# Implicit value of what the next user turn says about the previous answer.
IMPLICIT_VALUES: dict[str, float] = {"reask": -0.7, "correction": -0.8, "continuation": 0.3}
# Below this magnitude a message's tone counts as neutral and adds no emotional signal.
NEUTRAL_TONE = 0.05

# What a user types when the previous answer was wrong, in English and Portuguese, or
# pastes when it failed. Matched case-insensitively on the next user turn.
CORRECTION_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(rx, re.IGNORECASE | re.MULTILINE))
    for name, rx in (
        ("en_wrong", r"\b(that'?s|this is|it'?s|that is|you'?re|you are)\s+(wrong|incorrect)\b"),
        ("en_no", r"^\s*(no|nope|wrong)\b[,.!]"),
        ("en_not_right", r"\b(that'?s|this is|it'?s|that is) not (right|correct|it|true)\b"),
        ("en_not_work", r"\b(doesn'?t|does not|didn'?t|did not|won'?t|isn'?t) (work|compile|run)"),
        ("en_not_working", r"\b(not working|still (fails|failing|broken|crashes|errors?))\b"),
        ("en_not_asked", r"\bnot what i (asked|meant|wanted)\b"),
        ("pt_not_work", r"\bn[ãa]o (funciona|funcionou|deu certo|compila|roda|rodou)\b"),
        ("pt_wrong", r"\b(est[áa]|t[áa]|isso [ée]|resposta) (errad[oa]|incorret[oa])\b"),
        ("pt_no", r"^\s*(n[ãa]o|errado)\b[,.!]"),
        ("pt_not_asked", r"\bn[ãa]o (era|[ée]) (isso|o que eu)"),
        ("pt_still", r"\bainda (d[áa]|est[áa] dando|continua|n[ãa]o)\b"),
        ("trace_python", r"Traceback \(most recent call last\)"),
        ("trace_error", r"^\s*\w*(Error|Exception)(: |\b$)"),
        ("trace_rust", r"\berror\[E\d{4}\]|\bpanicked at\b"),
        ("trace_other", r"\bsegmentation fault\b|\bnpm ERR!|\bcore dumped\b"),
    )
)


def detect_correction(text: str) -> str | None:
    """The name of the first correction pattern the text matches, else None. An error's
    name inside a one-line question ("How do I debug a segmentation fault?", "What does
    `KeyError: 'x'` mean?") asks about that error; only pasted output (a trace, or a line
    that is the error) says the previous answer failed."""
    asks = _one_line_question(text)
    for name, pattern in CORRECTION_PATTERNS:
        if asks and name.startswith("trace_"):
            continue
        if pattern.search(text):
            return name
    return None


def _one_line_question(text: str) -> bool:
    """One line ending in a question mark: a question, not pasted output."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].rstrip().endswith("?")


def edit_value(answer: str, corrected: str) -> tuple[float, float]:
    """(implicit value, normalised Levenshtein distance) of a user's edit of an answer."""
    distance = float(Levenshtein.normalized_distance(answer.strip(), corrected.strip()))
    return round(max(-1.0, 0.6 - 1.6 * distance), 4), round(distance, 4)


@dataclass
class Signal:
    """One feedback_events row."""

    origin: Literal["explicit", "implicit"]
    kind: str
    implicit: float | None = None
    emotional: float | None = None
    rating: float | None = None
    comment: str | None = None
    text: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    from_interaction: int | None = None

    def row(self, interaction_id: int) -> dict[str, Any]:
        """The feedback_events columns (spelled out: asdict deep-copies, slow in bulk)."""
        return {
            "interaction_id": interaction_id,
            "origin": self.origin,
            "kind": self.kind,
            "implicit": self.implicit,
            "emotional": self.emotional,
            "rating": self.rating,
            "comment": self.comment,
            "text": self.text,
            "detail": Jsonb(self.detail),
            "from_interaction": self.from_interaction,
        }


@dataclass(frozen=True)
class Score:
    implicit: float | None
    emotional: float | None
    reward: float
    quality: float
    tier: str


def integrate(
    implicit_sum: float,
    implicit_n: int,
    emotional_sum: float,
    emotional_n: int,
    corrected: bool,
    config: FeedbackConfig,
) -> Score:
    """The reward, quality and tier of an interaction from its component sums."""
    implicit = implicit_sum / implicit_n if implicit_n else None
    emotional = emotional_sum / emotional_n if emotional_n else None
    weighted = [
        (config.implicit_weight, implicit),
        (config.emotional_weight, emotional),
    ]
    present = [(w, v) for w, v in weighted if v is not None and w > 0]
    total = sum(w for w, _ in present)
    reward = sum(w * v for w, v in present) / total if total else 0.0
    reward = max(-1.0, min(1.0, reward))
    quality = 1.0 if corrected else reward
    if quality >= config.premium_threshold:
        tier = "premium"
    elif quality <= config.discard_threshold:
        tier = "discard"
    else:
        tier = "standard"
    return Score(implicit, emotional, round(reward, 6), round(quality, 6), tier)


@dataclass(frozen=True)
class Result:
    """The state of an interaction's replay row after feedback was applied."""

    interaction_id: int
    event_ids: list[int]
    implicit: float | None
    emotional: float | None
    reward: float
    quality: float
    tier: str
    priority: float
    corrected: bool
    signals: int
    # Memories this feedback changed: {"removed": [ids], "added": [ids]} (the fast learner).
    memories: dict[str, list[int]] = field(default_factory=lambda: {"removed": [], "added": []})

    def to_dict(self) -> dict[str, Any]:
        # Spelled out: dataclasses.asdict deep-copies, which shows at thousands of events/s.
        return {
            "interaction_id": self.interaction_id,
            "event_ids": list(self.event_ids),
            "implicit": self.implicit,
            "emotional": self.emotional,
            "reward": self.reward,
            "quality": self.quality,
            "tier": self.tier,
            "priority": self.priority,
            "corrected": self.corrected,
            "signals": self.signals,
            "memories": self.memories,
        }


# The priority each result reports, by the one definition (sql/018_one_priority_one_target.sql).
_PRIORITY = """
SELECT npllm.replay_priority(u.tier, u.quality, u.novelty, u.times_sampled)
FROM unnest(%(tier)s::text[], %(quality)s::float8[], %(novelty)s::float8[],
            %(times_sampled)s::int[]) WITH ORDINALITY AS u(tier, quality, novelty, times_sampled, k)
ORDER BY u.k
"""
_LOCK = """
SELECT r.interaction_id, r.implicit_sum, r.implicit_n, r.emotional_sum, r.emotional_n,
       r.corrected_answer IS NOT NULL, r.novelty, r.times_sampled, i.answer, i.question
FROM npllm.replay_buffer r
JOIN npllm.interactions i ON i.id = r.interaction_id
WHERE r.interaction_id = ANY(%(ids)s)
ORDER BY r.interaction_id
FOR UPDATE OF r
"""
# Batches are written with one statement each: rows go in as arrays.
_INSERT_EVENTS = """
INSERT INTO npllm.feedback_events (
    interaction_id, origin, kind, implicit, emotional, rating, comment, text, detail,
    from_interaction
)
SELECT interaction_id, origin, kind, implicit, emotional, rating, comment, text, detail,
       from_interaction
FROM unnest(
    %(interaction_id)s::bigint[], %(origin)s::text[], %(kind)s::text[], %(implicit)s::real[],
    %(emotional)s::real[], %(rating)s::real[], %(comment)s::text[], %(text)s::text[],
    %(detail)s::jsonb[], %(from_interaction)s::bigint[]
) WITH ORDINALITY AS e(interaction_id, origin, kind, implicit, emotional, rating, comment,
                        text, detail, from_interaction, ord)
ORDER BY ord
RETURNING id
"""
_UPDATE_REPLAY = """
UPDATE npllm.replay_buffer r
SET implicit_sum = u.implicit_sum, implicit_n = u.implicit_n,
    emotional_sum = u.emotional_sum, emotional_n = u.emotional_n,
    implicit = u.implicit, emotional = u.emotional, reward = u.reward,
    quality = u.quality, tier = u.tier,
    corrected_answer = coalesce(u.corrected_answer, r.corrected_answer),
    corrected_at = CASE WHEN u.corrected_answer IS NULL THEN r.corrected_at ELSE now() END,
    superseded_by = CASE WHEN u.corrected_answer IS NULL THEN r.superseded_by END,
    updated_at = now()
FROM unnest(
    %(id)s::bigint[], %(implicit_sum)s::real[], %(implicit_n)s::int[], %(emotional_sum)s::real[],
    %(emotional_n)s::int[], %(implicit)s::real[], %(emotional)s::real[], %(reward)s::real[],
    %(quality)s::real[], %(tier)s::text[], %(corrected_answer)s::text[]
) AS u(id, implicit_sum, implicit_n, emotional_sum, emotional_n, implicit, emotional, reward,
       quality, tier, corrected_answer)
WHERE r.interaction_id = u.id
"""
# A new correction (or liked answer) of interaction %(id)s supersedes the trainable rows of
# the same question (among its 64 nearest): a correction supersedes any, a liked answer only
# liked answers that say something else (never a correction; identical answers are
# duplicates, learned once).
_SUPERSEDE = """
WITH me AS (
    SELECT question_embedding AS e, btrim(answer) AS answer FROM npllm.interactions
    WHERE id = %(id)s AND question_embedding IS NOT NULL
), near AS (
    SELECT i.id FROM npllm.interactions i, me
    WHERE i.question_embedding IS NOT NULL AND i.id <> %(id)s
      AND 1 - (i.question_embedding <=> me.e) >= %(similarity)s
      AND (%(correction)s OR btrim(i.answer) <> me.answer)
    ORDER BY i.question_embedding <=> me.e LIMIT 64
)
UPDATE npllm.replay_buffer r SET superseded_by = %(id)s
FROM near
WHERE r.interaction_id = near.id AND r.superseded_by IS NULL
  AND (r.corrected_answer IS NOT NULL OR r.reward > 0)
  AND (%(correction)s OR r.corrected_answer IS NULL)
RETURNING r.interaction_id
"""
_BY_ANSWER = """
SELECT id, question_embedding, created_at > now() - make_interval(secs => %(window_s)s)
FROM npllm.interactions
WHERE md5(btrim(answer)) = md5(btrim(%(answer)s)) AND id < %(id)s
ORDER BY id DESC
LIMIT 1
"""
_LATEST = """
SELECT id, question_embedding, true
FROM npllm.interactions
WHERE id < %(id)s AND created_at > now() - make_interval(secs => %(window_s)s)
ORDER BY id DESC
LIMIT 1
"""


class Feedback:
    """Records feedback signals and keeps each interaction's reward up to date.

    With `memory` (the hippocampus), feedback also corrects what is retrieved, in the same
    transaction: a corrected answer replaces the answer's exchange memory with a fact, and
    an answer whose reward turns negative loses its exchange memory
    (npllm/memory.py); `on_memory_change` is called after such a commit (the awake path
    clears its answer cache)."""

    def __init__(
        self,
        pool: ConnectionPool,
        config: FeedbackConfig,
        tone: ToneScorer,
        memory: MemoryStore | None = None,
        on_memory_change: Callable[[], None] | None = None,
    ) -> None:
        self.pool = pool
        self.config = config
        self.tone = tone
        self.memory = memory
        self.on_memory_change = on_memory_change

    def explicit_pending(
        self,
        interaction_id: int,
        event: str | None = None,
        rating: float | None = None,
        comment: str | None = None,
        text: str | None = None,
    ) -> Pending:
        """Check explicit feedback (RequestError if wrong) and prepare it for :meth:`apply`
        (the daemon batches it through services/feedback_writer.py; :meth:`apply_one` applies
        it alone)."""
        check_explicit(event, rating, comment, text)
        if rating is not None:
            # Kept to 4 decimals, like every value derived from it: a rating is stored as a
            # PostgreSQL real, which refuses a denormal such as 1e-320 ("underflow").
            rating = round(rating, 4) + 0.0  # + 0.0: -0.0 is stored as 0
        tone = self.tone.score(comment) if comment else None

        def build(answer: str) -> list[Signal]:
            signal = Signal("explicit", event or ("rating" if rating is not None else "comment"))
            signal.rating, signal.comment, signal.text = rating, comment, text
            if event == "edited" and text is not None:
                signal.implicit, distance = edit_value(answer, text)
                signal.detail["edit_distance"] = distance
            elif event is not None:
                signal.implicit = EVENT_VALUES[event]
            emotions = [] if rating is None else [rating]
            if tone is not None:
                signal.detail["comment_tone"] = round(tone, 4)
                emotions.append(tone)
            if emotions:
                signal.emotional = round(sum(emotions) / len(emotions), 4)
            return [signal]

        return Pending(interaction_id, build, corrected_answer=text)

    def abandoned(self, interaction_id: int) -> Result:
        """The client went away before the answer finished (an implicit 'abandoned')."""
        signal = Signal("implicit", "abandoned", implicit=EVENT_VALUES["abandoned"])
        return self.apply_one(Pending(interaction_id, lambda _: [signal]))

    def infer(
        self,
        interaction_id: int,
        messages: list[dict[str, str]],
        question: str,
        embedding: np.ndarray,
    ) -> Result | None:
        """What the new user turn of `interaction_id` says about the answer before it.

        The earlier answer is the assistant turn the conversation carries (matched by its
        text), or, for a fresh conversation, the latest interaction within
        feedback.reask_window_minutes. Returns None when there is nothing to record."""
        previous = self._previous(interaction_id, messages)
        if previous is None:
            return None
        previous_id, previous_embedding, in_window, followed = previous
        similarity = (
            float(np.dot(np.asarray(previous_embedding.to_list()), embedding))
            if previous_embedding is not None
            else 0.0
        )
        tone = self.tone.score(question)
        pattern = detect_correction(question)
        detail: dict[str, Any] = {
            "similarity": round(similarity, 4),
            "tone": round(tone, 4),
            "linked_by": "conversation" if followed else "time",
        }
        if similarity >= self.config.reask_similarity and in_window:
            kind: str | None = "reask"
        elif pattern is not None:
            kind = "correction"
            detail["pattern"] = pattern
        elif followed:
            kind = "continuation"
        else:
            kind = "tone" if _is_reaction(question) and abs(tone) >= NEUTRAL_TONE else None
        if kind is None:
            return None
        signal = Signal(
            "implicit",
            kind,
            implicit=IMPLICIT_VALUES.get(kind),
            emotional=round(tone, 4) if abs(tone) >= NEUTRAL_TONE else None,
            detail=detail,
            from_interaction=interaction_id,
        )
        return self.apply_one(Pending(previous_id, lambda _: [signal]))

    def _previous(
        self, interaction_id: int, messages: list[dict[str, str]]
    ) -> tuple[int, Any, bool, bool] | None:
        window_s = self.config.reask_window_minutes * 60
        earlier = [m for m in messages[:-1] if m["role"] == "assistant" and m["content"].strip()]
        with self.pool.connection() as conn:
            if earlier:
                args = {
                    "answer": earlier[-1]["content"],
                    "id": interaction_id,
                    "window_s": window_s,
                }
                row = conn.execute(_BY_ANSWER, args).fetchone()
                return None if row is None else (row[0], row[1], bool(row[2]), True)
            row = conn.execute(_LATEST, {"id": interaction_id, "window_s": window_s}).fetchone()
        return None if row is None else (row[0], row[1], True, False)

    def apply_one(self, pending: Pending) -> Result:
        """Apply one piece of feedback now (a batch of one); NotFoundError if unknown."""
        outcome = self.apply([pending])[0]
        if isinstance(outcome, NotFoundError):
            raise outcome
        return outcome

    def apply(self, batch: list[Pending]) -> list[Result | NotFoundError]:
        """Apply many pieces of feedback in one transaction (one commit, one fsync).

        Rows are locked in id order, so concurrent batches cannot deadlock and no update
        is lost; each result is the interaction's state right after its own signals.
        An unknown interaction id gives a NotFoundError in its place, not for the batch."""
        with self.pool.connection() as conn, conn.transaction():
            ids = sorted({p.interaction_id for p in batch})
            states = {
                row[0]: _State(*row[1:]) for row in conn.execute(_LOCK, {"ids": ids}).fetchall()
            }
            outcomes: list[Result | NotFoundError] = []
            events: list[dict[str, Any]] = []
            owners: list[int] = []  # index into outcomes of each event
            asked: list[dict[str, Any]] = []  # each result's priority inputs, in order
            for p in batch:
                state = states.get(p.interaction_id)
                if state is None:
                    outcomes.append(_not_found(p.interaction_id))
                    continue
                signals = p.build(state.answer)
                for sig in signals:
                    events.append(sig.row(p.interaction_id))
                    owners.append(len(outcomes))
                    state.add(sig)
                if p.corrected_answer is not None:
                    state.corrected, state.corrected_answer = True, p.corrected_answer
                outcomes.append(state.result(p.interaction_id, self.config))
                asked.append(state.priority_row(self.config))
            _report_priorities(conn, outcomes, asked)
            if not events:
                return outcomes
            inserted = conn.execute(_INSERT_EVENTS, _columns(events)).fetchall()
            # Identity ids grow in insertion order, which is the batch's order.
            event_ids = sorted(row[0] for row in inserted)
            rows = [state.row(i, self.config) for i, state in states.items() if state.touched]
            conn.execute(_UPDATE_REPLAY, _columns(rows))
            superseded = self._supersede(conn, states)
            changed = self._correct_memories(conn, states, superseded)
        for owner, event_id in zip(owners, event_ids, strict=True):
            result = outcomes[owner]
            if isinstance(result, Result):
                result.event_ids.append(event_id)
                if result.interaction_id in changed:
                    result.memories.update(changed[result.interaction_id])
        if changed and self.on_memory_change is not None:
            self.on_memory_change()
        return outcomes

    def _supersede(self, conn: Any, states: dict[int, _State]) -> dict[int, list[int]]:
        """The latest correction of a question wins: each interaction corrected in this batch
        supersedes the trainable rows of the same question; one whose reward turned positive
        supersedes earlier liked answers of it. Its id → the rows it superseded."""
        out: dict[int, list[int]] = {}
        for interaction_id, state in states.items():
            correction = state.corrected_answer is not None
            if not correction and not (state.touched and state.score(self.config).reward > 0):
                continue
            rows = conn.execute(
                _SUPERSEDE,
                {"id": interaction_id, "correction": correction,
                 "similarity": self.config.reask_similarity},
            ).fetchall()  # fmt: skip
            if rows:
                out[interaction_id] = [int(r[0]) for r in rows]
        return out

    def _correct_memories(
        self, conn: Any, states: dict[int, _State], superseded: dict[int, list[int]]
    ) -> dict[int, dict[str, list[int]]]:
        """The fast learner (see the class docstring): interaction id → memory ids removed
        and added, for the interactions whose retrievable memories changed."""
        if self.memory is None:
            return {}
        changed: dict[int, dict[str, list[int]]] = {}
        negative = []
        for interaction_id, state in states.items():
            if state.corrected_answer is not None:  # corrected in this batch
                gone = self.memory.forget_superseded(conn, superseded.get(interaction_id, []))
                changed[interaction_id] = self.memory.correct(
                    conn, interaction_id, state.question, state.corrected_answer
                )
                changed[interaction_id]["removed"] += gone
            elif state.touched and state.score(self.config).reward < 0:
                negative.append(interaction_id)
        for interaction_id, removed in self.memory.forget_exchanges(conn, negative).items():
            changed[interaction_id] = {"removed": removed, "added": []}
        return changed


@dataclass
class Pending:
    """Feedback waiting to be applied: `build` turns the answer into signals."""

    interaction_id: int
    build: Callable[[str], list[Signal]]
    corrected_answer: str | None = None


@dataclass
class _State:
    """An interaction's replay row while a batch is applied to it."""

    implicit_sum: float
    implicit_n: int
    emotional_sum: float
    emotional_n: int
    corrected: bool
    novelty: float
    times_sampled: int
    answer: str
    question: str
    corrected_answer: str | None = None
    touched: bool = False

    def add(self, signal: Signal) -> None:
        self.touched = True
        if signal.implicit is not None:
            self.implicit_sum += signal.implicit
            self.implicit_n += 1
        if signal.emotional is not None:
            self.emotional_sum += signal.emotional
            self.emotional_n += 1

    def score(self, config: FeedbackConfig) -> Score:
        return integrate(
            self.implicit_sum,
            self.implicit_n,
            self.emotional_sum,
            self.emotional_n,
            self.corrected,
            config,
        )

    def result(self, interaction_id: int, config: FeedbackConfig) -> Result:
        score = self.score(config)
        return Result(
            interaction_id=interaction_id,
            event_ids=[],
            implicit=score.implicit,
            emotional=score.emotional,
            reward=score.reward,
            quality=score.quality,
            tier=score.tier,
            priority=0.0,  # set from the database's definition (_report_priorities)
            corrected=self.corrected,
            signals=self.implicit_n + self.emotional_n,
        )

    def priority_row(self, config: FeedbackConfig) -> dict[str, Any]:
        """The inputs of npllm.replay_priority for the state right now."""
        score = self.score(config)
        return {
            "tier": score.tier,
            "quality": score.quality,
            "novelty": self.novelty,
            "times_sampled": self.times_sampled,
        }

    def row(self, interaction_id: int, config: FeedbackConfig) -> dict[str, Any]:
        score = self.score(config)
        return {
            "id": interaction_id,
            "implicit_sum": self.implicit_sum,
            "implicit_n": self.implicit_n,
            "emotional_sum": self.emotional_sum,
            "emotional_n": self.emotional_n,
            "implicit": score.implicit,
            "emotional": score.emotional,
            "reward": score.reward,
            "quality": score.quality,
            "tier": score.tier,
            "corrected_answer": self.corrected_answer,
        }


def _report_priorities(
    conn: Any, outcomes: list[Result | NotFoundError], asked: list[dict[str, Any]]
) -> None:
    """Each result's priority, as the database defines it (one query for the batch)."""
    if not asked:
        return
    values = iter(row[0] for row in conn.execute(_PRIORITY, _columns(asked)).fetchall())
    for k, outcome in enumerate(outcomes):
        if isinstance(outcome, Result):
            outcomes[k] = replace(outcome, priority=round(float(next(values)), 6))


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Rows (dicts with the same keys) as one list per key, for unnest()."""
    return {key: [row[key] for row in rows] for key in rows[0]}


def _not_found(interaction_id: int) -> NotFoundError:
    return NotFoundError(
        f"no interaction with id {interaction_id} (ids are in the `npllm` metadata of each "
        "completion)",
        param="interaction_id",
    )


def check_explicit(
    event: str | None, rating: float | None, comment: str | None, text: str | None
) -> None:
    """Refuse explicit feedback that says nothing or mixes fields wrongly."""
    if event is None and rating is None and not comment:
        raise RequestError("send at least one of event, rating or comment", param="event")
    if event is not None and event not in EVENTS:
        raise RequestError(f"unknown event {event!r}; events are {', '.join(EVENTS)}", "event")
    if rating is not None and not -1.0 <= rating <= 1.0:
        raise RequestError(f"rating must be between -1 and 1, got {rating}", param="rating")
    if event == "edited" and (text is None or not text.strip()):
        raise RequestError("event 'edited' needs text: the corrected answer", param="text")
    if text is not None and event != "edited":
        raise RequestError("text (a corrected answer) goes only with event 'edited'", "text")


def _is_reaction(text: str) -> bool:
    """A short remark, not a new question (e.g. "thanks, that worked")."""
    return "?" not in text and len(text.split()) <= 12
