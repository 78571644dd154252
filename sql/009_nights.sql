-- Sleep cycles say truthfully why they ran: manual (`npllm sleep --now`), scheduled (the
-- sleep window opened on an idle machine) or idle (the window is "any": an idle machine).
ALTER TABLE npllm.sleep_cycles DROP CONSTRAINT sleep_cycles_trigger_check;
UPDATE npllm.sleep_cycles SET trigger = 'manual' WHERE trigger = 'forced';
ALTER TABLE npllm.sleep_cycles ALTER COLUMN trigger SET DEFAULT 'manual';
ALTER TABLE npllm.sleep_cycles ADD CONSTRAINT sleep_cycles_trigger_check
    CHECK (trigger IN ('manual', 'scheduled', 'idle'));
COMMENT ON COLUMN npllm.sleep_cycles.trigger IS
    'manual: npllm sleep --now; scheduled: the sleep window on an idle machine; idle: window "any".';

-- Training runs show their budget and why they stopped (consolidation/trainer.py):
--   SELECT adapter, steps AS budget_steps, steps_done, budget, stopped FROM npllm.training_runs;
ALTER TABLE npllm.training_runs ADD COLUMN budget text;
ALTER TABLE npllm.training_runs ADD COLUMN steps_done integer;
ALTER TABLE npllm.training_runs ADD COLUMN stopped text;
COMMENT ON COLUMN npllm.training_runs.steps IS 'the step budget (the run may stop before it)';
COMMENT ON COLUMN npllm.training_runs.budget IS 'how the budget was set (initial/incremental, floor, cap)';
COMMENT ON COLUMN npllm.training_runs.stopped IS 'why training stopped: recalled, held-out plateau, or budget spent';

-- A night learns what is new (rows never trained, or changed since: a correction that came
-- later) and rehearses a bounded share of what each adapter learned before:
--   SELECT adapter, count(*) FROM npllm.replay_buffer GROUP BY adapter;
ALTER TABLE npllm.replay_buffer ADD COLUMN adapter text;
ALTER TABLE npllm.replay_buffer ADD COLUMN trained_at timestamptz;
UPDATE npllm.replay_buffer SET trained_at = updated_at WHERE last_sleep_cycle IS NOT NULL;
CREATE INDEX replay_buffer_adapter ON npllm.replay_buffer (adapter) WHERE adapter IS NOT NULL;
COMMENT ON COLUMN npllm.replay_buffer.adapter IS
    'the adapter that learned it (the last night that trained on it), NULL: never trained';
COMMENT ON COLUMN npllm.replay_buffer.trained_at IS
    'when a night last trained on it; a row updated after that is new again';

-- Versions beyond training.keep_versions keep their row (history) but lose their files.
ALTER TABLE npllm.model_versions DROP CONSTRAINT model_versions_status_check;
ALTER TABLE npllm.model_versions ADD CONSTRAINT model_versions_status_check
    CHECK (status IN ('candidate', 'active', 'retired', 'stale', 'pruned'));
COMMENT ON COLUMN npllm.model_versions.status IS
    'candidate (not published, status_reason says why) | active | retired | stale | pruned (files removed)';
