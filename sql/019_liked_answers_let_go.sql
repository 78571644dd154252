-- A liked answer a night cannot serve as liked is let go after sleep.liked_tries nights
-- (consolidation/plan.py: mark_learned; npllm/replay.py: sample). Copied everyday answers,
-- often long or sampled at a temperature, were tried again every night and the new samples
-- of each night grew with history (the month benchmark, docs/performance.md).
ALTER TABLE npllm.replay_buffer ADD COLUMN missed_nights integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN npllm.replay_buffer.missed_nights IS
    'Nights whose published version was trained on this sample as new and did not serve it '
    'as taught. A row without a correction is no longer sampled as new once this reaches '
    'sleep.liked_tries; a correction is tried every night until it is learned.';
