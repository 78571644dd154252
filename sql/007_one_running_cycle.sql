-- One sleep cycle runs at a time: two would train the same adapters and publish over each
-- other. A second 'running' row cannot be inserted; a cycle whose worker died is marked
-- 'interrupted' (consolidation/cycle.py) before a new one starts.

-- Rows left 'running' by killed workers, but the newest (only it can still be alive).
UPDATE npllm.sleep_cycles
SET status = 'interrupted', finished_at = coalesce(finished_at, now()),
    error = coalesce(error, 'its worker stopped without finishing (killed or crashed)')
WHERE status = 'running'
  AND id < (SELECT max(id) FROM npllm.sleep_cycles WHERE status = 'running');

CREATE UNIQUE INDEX sleep_cycles_one_running ON npllm.sleep_cycles ((true))
    WHERE status = 'running';
