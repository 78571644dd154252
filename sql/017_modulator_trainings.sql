-- The modulator learns from rewards in sleep (modulator.train; consolidation/
-- modulator_training.py and, with modulator.method = 'ppo', consolidation/modulator_ppo.py).
-- One row per night the modulator was considered for training: how many rated decisions,
-- what the off-policy estimates said on the held-out ones, and whether the trained version
-- is to be used, with the reason in words. The version itself (weights, status now) is
-- npllm.modulator_versions.
CREATE TABLE npllm.modulator_trainings (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sleep_cycle        bigint,                 -- NULL: trained outside a cycle
    method             text        NOT NULL CHECK (method IN ('supervised', 'ppo')),
    decisions          integer     NOT NULL,  -- rated routing decisions found
    n_train            integer,                -- NULL: skipped (too few decisions)
    n_eval             integer,                -- held out for the off-policy estimates
    -- estimated mean reward (-1..1) on the held-out decisions, of the modulator routing now
    -- (current) and of the one trained tonight: inverse propensity scoring, doubly robust
    current_ips        real,
    trained_ips        real,
    current_dr         real,                   -- ppo only (NULL: supervised)
    trained_dr         real,
    dr_gain_low        real,                   -- ppo: lower confidence bound of the DR gain
    ess                real,                   -- effective sample size of the trained IPS weights
    reward_model_skill real,                   -- ppo: 1 - held-out MSE / MSE of the mean
    margin             real        NOT NULL,   -- modulator.min_improvement at the time
    served             boolean     NOT NULL,   -- the gate chose it (handed to be published)
    version            integer,                -- the stored version (npllm.modulator_versions)
    parameters         integer,                -- the trained modulator's parameter count
    reason             text        NOT NULL,   -- why served, or why not: a sentence
    metrics            jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- the full report
    at                 timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX modulator_trainings_at ON npllm.modulator_trainings (at DESC);

COMMENT ON TABLE npllm.modulator_trainings IS
    'Modulator trainings in sleep: method, off-policy estimates (IPS, DR), served or why not.';
