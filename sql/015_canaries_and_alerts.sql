-- Canary trials of new adapter versions, and alerts (issue 24).

-- One row per trial: a version a sleep cycle published (the candidate) serving `share` of
-- the conversations about its adapter's earlier knowledge while the version it replaces
-- (the control) serves the rest; then the decision, by whom and on what figures.
CREATE TABLE npllm.canaries (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    adapter     text        NOT NULL REFERENCES npllm.adapters (name) ON DELETE CASCADE,
    candidate   integer     NOT NULL,   -- the new version (active in model_versions)
    control     integer     NOT NULL,   -- the version it replaces, still served to the rest
    share       real        NOT NULL CHECK (share > 0 AND share <= 1),
    sleep_cycle bigint,                 -- the cycle that published it (NULL: by hand)
    status      text        NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'promoted', 'rolled_back', 'superseded')),
    -- test: the arms' rewards decided; deadline: canary.max_hours passed without enough
    -- ratings; user: `npllm adapter canary --promote|--abort`; superseded: a newer version
    -- of the adapter was published; deleted: the adapter was.
    decided_by  text        CHECK (decided_by IN ('test', 'deadline', 'user', 'superseded')),
    reason      text,
    -- per arm {n, mean, sd}; the difference, Welch's t, df and one-sided p
    stats       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    started_at  timestamptz NOT NULL DEFAULT now(),
    deadline    timestamptz NOT NULL,
    decided_at  timestamptz,
    CHECK ((status = 'running') = (decided_at IS NULL))
);

CREATE UNIQUE INDEX canaries_one_running ON npllm.canaries (adapter) WHERE status = 'running';

COMMENT ON TABLE npllm.canaries IS
    'Canary trials of new adapter versions: arms, share, decision (promoted/rolled_back), why.';

-- Alerts: one row each time a condition is raised (again after alerts.repeat_hours while it
-- still holds); `resolved_at` is set when the condition no longer holds.
CREATE TABLE npllm.alerts (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- satisfaction_drop | canary_rolled_back | failed_cycles | low_disk | database_unreachable
    kind         text        NOT NULL,
    severity     text        NOT NULL DEFAULT 'warning' CHECK (severity IN ('warning', 'critical')),
    message      text        NOT NULL,
    details      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- what the configured command did: {"exit": 0, "stderr": "..."} or {"error": "..."}
    command      jsonb,
    raised_at    timestamptz NOT NULL DEFAULT now(),
    resolved_at  timestamptz
);

CREATE INDEX alerts_open ON npllm.alerts (kind) WHERE resolved_at IS NULL;

COMMENT ON TABLE npllm.alerts IS
    'Alerts raised: kind, message, details, what the alerts.command did, when resolved.';
