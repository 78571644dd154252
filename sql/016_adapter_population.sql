-- The adapter population over time (issue 25): every decision a night (or the watcher)
-- takes about which adapters exist, and exchange memories that decayed out of retrieval.

-- One row per decision, readable in psql:
--   merged:    `adapters` were consolidated into `merged_into` (trained from the union of their
--              samples and datasets); the old ones retired, their versions kept for rollback
--   retired:   `adapters` (one) unused for sleep.retire_idle_days: no longer served, its
--              versions kept; publishing a version (or `npllm adapter rollback`) serves it again
--   restored:  a retired adapter served again
--   centroid:  where an adapter routes from moved (cosine between old and new centroid)
CREATE TABLE npllm.adapter_population (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    decision    text        NOT NULL
                CHECK (decision IN ('merged', 'retired', 'restored', 'centroid')),
    adapters    text[]      NOT NULL,   -- the adapters the decision is about
    merged_into text,                   -- merged: the adapter that now holds their knowledge
    sleep_cycle bigint,                 -- the cycle that took it (NULL: the watcher or a user)
    reason      text        NOT NULL,   -- a sentence: why
    details     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX adapter_population_at ON npllm.adapter_population (at DESC);

COMMENT ON TABLE npllm.adapter_population IS
    'Adapter population decisions: merged, retired, restored, centroid moved — with why.';

-- Exchange memories never recalled again decay out of retrieval (memory.decay_days): the
-- row stays (and the interaction it came from is never touched), `decayed_at` says when it
-- left retrieval; recalling is done only over rows with decayed_at IS NULL.
ALTER TABLE npllm.memories ADD COLUMN decayed_at timestamptz;
COMMENT ON COLUMN npllm.memories.decayed_at IS
    'When this exchange memory left retrieval (unused for memory.decay_days); NULL: recalled.';
