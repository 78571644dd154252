-- The latest correction of a question wins everywhere (replay buffer, rehearsal, exported
-- datasets, memories). When a correction arrives, every other trainable row of the same
-- question (its question at least feedback.reask_similarity alike) is superseded by it;
-- a liked answer supersedes earlier liked answers of its question, never a correction.
-- Superseded rows stay (history) but are never trained, rehearsed or exported again:
--   SELECT interaction_id, superseded_by, corrected_answer FROM npllm.replay_buffer
--   WHERE superseded_by IS NOT NULL;
ALTER TABLE npllm.replay_buffer ADD COLUMN superseded_by bigint
    REFERENCES npllm.interactions (id) ON DELETE SET NULL;
ALTER TABLE npllm.replay_buffer ADD COLUMN corrected_at timestamptz;
UPDATE npllm.replay_buffer SET corrected_at = updated_at WHERE corrected_answer IS NOT NULL;
COMMENT ON COLUMN npllm.replay_buffer.superseded_by IS
    'a later correction (or liked answer) of the same question: this row is no longer trained';
COMMENT ON COLUMN npllm.replay_buffer.corrected_at IS 'when the user sent its corrected answer';
