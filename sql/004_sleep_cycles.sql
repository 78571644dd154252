-- Sleep cycles: one row per consolidation cycle, with its phase, progress and outcome.

CREATE TABLE npllm.sleep_cycles (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- forced: `npllm sleep --now`; scheduled: the sleep window and idle machine.
    trigger            text        NOT NULL DEFAULT 'forced'
                       CHECK (trigger IN ('forced', 'scheduled')),
    status             text        NOT NULL DEFAULT 'running'
                       CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted')),
    -- sampling | training <adapter> | gating <adapter> | publishing <adapter> | done
    phase              text        NOT NULL DEFAULT 'starting',
    seed               bigint      NOT NULL,
    -- the worker process running it (a 'running' cycle whose worker is gone was killed).
    pid                integer,
    samples            integer,
    -- per adapter: examples, losses, validation and retention before/after, verdict
    metrics            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    base_sha256_before text,
    base_sha256_after  text,
    error              text,
    started_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz
);

COMMENT ON TABLE npllm.sleep_cycles IS
    'Consolidation cycles: trigger, status, phase, per-adapter metrics and gate verdicts.';

ALTER TABLE npllm.training_runs ADD COLUMN sleep_cycle bigint
    REFERENCES npllm.sleep_cycles (id) ON DELETE SET NULL;
ALTER TABLE npllm.replay_buffer ADD CONSTRAINT replay_buffer_last_sleep_cycle_fkey
    FOREIGN KEY (last_sleep_cycle) REFERENCES npllm.sleep_cycles (id) ON DELETE SET NULL;
