-- Feedback and the replay buffer: every signal about an answer, the reward they add up
-- to, and what the sleep cycle will learn from. Read it with `npllm psql`; recipes are in
-- docs/inspect.md.

-- One row per signal, explicit (sent by the user) or implicit (inferred from the next
-- turn). Raw values are kept so the reward formula can be changed and replayed.
CREATE TABLE npllm.feedback_events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    interaction_id  bigint      NOT NULL REFERENCES npllm.interactions (id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- explicit: POST /v1/feedback or `npllm feedback`; implicit: inferred by npllm.
    origin          text        NOT NULL CHECK (origin IN ('explicit', 'implicit')),
    -- accepted|copied|applied|edited|regenerated|rejected|abandoned (explicit events),
    -- reask|correction|continuation (implicit), rating|comment|tone (emotional only).
    kind            text        NOT NULL,
    -- this signal's contribution to each component, in [-1, 1]; NULL = none.
    implicit        real        CHECK (implicit BETWEEN -1 AND 1),
    emotional       real        CHECK (emotional BETWEEN -1 AND 1),
    rating          real        CHECK (rating BETWEEN -1 AND 1),
    comment         text,
    -- the user's corrected answer (kind 'edited').
    text            text,
    -- how the values were derived: edit distance, similarity, matched pattern, language.
    detail          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- the later interaction whose user turn produced an implicit signal.
    from_interaction bigint     REFERENCES npllm.interactions (id) ON DELETE SET NULL
);

CREATE INDEX feedback_events_interaction ON npllm.feedback_events (interaction_id, id);

COMMENT ON TABLE npllm.feedback_events IS
    'Every feedback signal: explicit events, ratings, comments and implicit signals inferred '
    'from the next user turn. implicit/emotional hold the signal value in [-1, 1].';

-- One row per interaction: the integrated reward and what consolidation does with it.
CREATE TABLE npllm.replay_buffer (
    interaction_id   bigint      PRIMARY KEY
                     REFERENCES npllm.interactions (id) ON DELETE CASCADE,
    -- running sums and counts of each component's signals (mean = sum / n).
    implicit_sum     real        NOT NULL DEFAULT 0,
    implicit_n       integer     NOT NULL DEFAULT 0,
    emotional_sum    real        NOT NULL DEFAULT 0,
    emotional_n      integer     NOT NULL DEFAULT 0,
    -- component means in [-1, 1] (NULL while no signal of that kind arrived).
    implicit         real,
    emotional        real,
    -- 0.7 * implicit + 0.3 * emotional (weights from config; renormalised over the
    -- components that have signals; 0 when none has).
    reward           real        NOT NULL DEFAULT 0 CHECK (reward BETWEEN -1 AND 1),
    -- the user's corrected answer: when set, it is what the sleep cycle learns from.
    corrected_answer text,
    -- quality of the training target: 1 when the user wrote it, else the reward.
    quality          real        NOT NULL DEFAULT 0 CHECK (quality BETWEEN -1 AND 1),
    -- premium / standard / discard (never learned from; where unrated answers start).
    tier             text        NOT NULL DEFAULT 'discard'
                     CHECK (tier IN ('premium', 'standard', 'discard')),
    -- 1 - the highest cosine similarity to an earlier question (1 = a new topic).
    novelty          real        NOT NULL DEFAULT 1 CHECK (novelty BETWEEN 0 AND 1),
    -- topic tags assigned from the question's embedding (feedback.tags in config).
    tags             text[]      NOT NULL DEFAULT '{}',
    times_sampled    integer     NOT NULL DEFAULT 0,
    -- the sleep cycle that last trained on this row (sleep cycles arrive with the sleep
    -- migration; until then it is just the cycle number given to the sampler).
    last_sleep_cycle bigint,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- replay priority: satisfied first, then novel; discarded never; each time a row is
    -- sampled its priority drops (see docs/architecture.md, "Replay priority").
    priority         real GENERATED ALWAYS AS (
        CASE WHEN tier = 'discard' THEN 0
        ELSE (0.1 + 0.9 * ((quality + 1) / 2) ^ 2) * (0.75 + 0.25 * novelty)
             / (1 + times_sampled)
        END
    ) STORED
);

CREATE INDEX replay_buffer_priority ON npllm.replay_buffer (priority DESC);
CREATE INDEX replay_buffer_tier ON npllm.replay_buffer (tier);

COMMENT ON TABLE npllm.replay_buffer IS
    'One row per interaction: reward components, integrated reward, quality tier, topic tags '
    'and replay priority. The sleep cycle samples it by priority.';

-- Interactions answered before this migration join the buffer unrated.
INSERT INTO npllm.replay_buffer (interaction_id, created_at)
SELECT id, created_at FROM npllm.interactions;

-- Near-identical questions (re-asks) and novelty are found by meaning.
CREATE INDEX interactions_question_hnsw ON npllm.interactions
    USING hnsw (question_embedding vector_cosine_ops);

-- A follow-up turn names the answer it follows; find that interaction by its text.
CREATE INDEX interactions_answer_md5 ON npllm.interactions (md5(btrim(answer)));

-- Counts and mean reward per tier and tag; tag '(all)' is the tier's total.
CREATE VIEW npllm.replay_overview AS
SELECT r.tier,
       coalesce(t.tag, '(all)')                       AS tag,
       count(*)                                       AS interactions,
       round(avg(r.reward)::numeric, 3)               AS mean_reward,
       round(avg(r.quality)::numeric, 3)              AS mean_quality,
       count(r.corrected_answer)                      AS corrected,
       count(*) FILTER (WHERE r.implicit_n + r.emotional_n > 0) AS rated,
       sum(r.times_sampled)                           AS times_sampled
FROM npllm.replay_buffer r
CROSS JOIN LATERAL unnest(
    CASE WHEN cardinality(r.tags) = 0 THEN ARRAY['untagged'] ELSE r.tags END
) AS t(tag)
GROUP BY GROUPING SETS ((r.tier, t.tag), (r.tier))
ORDER BY CASE r.tier WHEN 'premium' THEN 0 WHEN 'standard' THEN 1 ELSE 2 END,
         t.tag NULLS FIRST;

COMMENT ON VIEW npllm.replay_overview IS
    'Replay buffer by tier and tag: counts, mean reward and quality, corrections, sampling.';

-- The buffer in the order the sleep cycle prefers it, with the texts to read.
CREATE VIEW npllm.replay_top AS
SELECT r.interaction_id,
       round(r.priority::numeric, 3)  AS priority,
       r.tier,
       round(r.reward::numeric, 3)    AS reward,
       round(r.implicit::numeric, 3)  AS implicit,
       round(r.emotional::numeric, 3) AS emotional,
       r.tags,
       i.question,
       i.answer,
       r.corrected_answer,
       coalesce(r.corrected_answer, i.answer) AS target,
       r.times_sampled,
       r.last_sleep_cycle,
       i.created_at
FROM npllm.replay_buffer r
JOIN npllm.interactions i ON i.id = r.interaction_id
ORDER BY r.priority DESC, r.interaction_id DESC;

COMMENT ON VIEW npllm.replay_top IS
    'Replay buffer, highest priority first, with question, answer and correction.';

-- Named datasets in the chat "messages" format, imported by the user (or built later by
-- the sleep cycle); an adapter can be trained on one.
CREATE TABLE npllm.datasets (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    origin      text        NOT NULL DEFAULT 'import',
    examples    integer     NOT NULL DEFAULT 0,
    -- sha256 of the imported file, to tell two imports apart.
    sha256      text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE npllm.dataset_examples (
    dataset_id  bigint  NOT NULL REFERENCES npllm.datasets (id) ON DELETE CASCADE,
    -- the line number in the imported file (1-based).
    line_no     integer NOT NULL,
    -- [{"role": "system"|"user"|"assistant", "content": ...}, ...]
    messages    jsonb   NOT NULL,
    PRIMARY KEY (dataset_id, line_no)
);

COMMENT ON TABLE npllm.datasets IS
    'Named chat-format datasets (npllm dataset import NAME FILE); rows in dataset_examples.';
