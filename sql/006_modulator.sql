-- Trained modulator versions (modulator.train; off by default). Until one is active the
-- modulator routes by the adapters' centroids alone.

CREATE TABLE npllm.modulator_versions (
    version      integer     PRIMARY KEY,
    -- <data_dir>/modulator/v<N>/modulator.safetensors: the network's weights; `slots`
    -- names the adapter each output slot was trained for.
    path         text        NOT NULL,
    slots        text[]      NOT NULL DEFAULT '{}',
    -- candidate: trained, not (yet) used; active: routes questions; retired: replaced.
    status       text        NOT NULL DEFAULT 'candidate'
                 CHECK (status IN ('candidate', 'active', 'retired')),
    -- why it is not used (off-policy estimate not better, too few decisions, ...).
    reason       text,
    -- training loss, off-policy estimates of the current and the new policy, sample sizes.
    metrics      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    sleep_cycle  bigint      REFERENCES npllm.sleep_cycles (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz
);

CREATE UNIQUE INDEX modulator_versions_one_active ON npllm.modulator_versions (status)
    WHERE status = 'active';

COMMENT ON TABLE npllm.modulator_versions IS
    'Trained modulator versions: weights file, output slots, status, off-policy evaluation.';
