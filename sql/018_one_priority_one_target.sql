-- The replay priority and the training target, each defined once, here: the generated
-- column, the views, npllm's queries and the priority a feedback answer reports all call
-- these functions (npllm/replay.py, npllm/feedback.py, consolidation/datasets.py).

-- Satisfied first, then novel; discarded never; each replay lowers it (docs/architecture.md,
-- "Replay priority"). In double precision, as 002's column expression computed it.
CREATE FUNCTION npllm.replay_priority(
    tier text, quality double precision, novelty double precision, times_sampled integer
) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN tier = 'discard' THEN 0
            ELSE (0.1 + 0.9 * ((quality + 1) / 2) ^ 2) * (0.75 + 0.25 * novelty)
                 / (1 + times_sampled)
       END;

COMMENT ON FUNCTION npllm.replay_priority(text, double precision, double precision, integer) IS
    'Replay priority of a replay_buffer row (its generated column priority): 0 if discarded, '
    'else satisfaction (0.1 + 0.9 * ((quality + 1) / 2)^2) * novelty (0.75 + 0.25 * novelty) '
    '/ (1 + times_sampled).';

ALTER TABLE npllm.replay_buffer ALTER COLUMN priority
    SET EXPRESSION AS (npllm.replay_priority(tier, quality, novelty, times_sampled));

-- What a sample teaches: the user's correction when there is one, else the answer.
CREATE FUNCTION npllm.training_target(corrected_answer text, answer text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce(corrected_answer, answer);

COMMENT ON FUNCTION npllm.training_target(text, text) IS
    'The training target of an interaction: its correction (replay_buffer.corrected_answer) '
    'when there is one, else its answer.';

CREATE OR REPLACE VIEW npllm.replay_top AS
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
       npllm.training_target(r.corrected_answer, i.answer) AS target,
       r.times_sampled,
       r.last_sleep_cycle,
       i.created_at
FROM npllm.replay_buffer r
JOIN npllm.interactions i ON i.id = r.interaction_id
ORDER BY r.priority DESC, r.interaction_id DESC;
