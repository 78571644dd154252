-- LoRA adapters, their versions, the runs that trained them, and every routing decision.
-- Artifacts are files under <data_dir>/adapters/<name>/v<N>/; rows hold their paths.

CREATE TABLE npllm.adapters (
    name             text        PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    description      text        NOT NULL DEFAULT '',
    tags             text[]      NOT NULL DEFAULT '{}',
    -- mean embedding of the questions it was trained on: where the modulator sends
    -- similar questions (NULL: only used when a request names it).
    centroid         vector(384),
    -- the base LLM it was trained for; another base makes it 'stale'.
    base_model       text        NOT NULL,
    base_fingerprint text        NOT NULL,
    -- {"r", "alpha", "target_modules"}: the one shape every adapter shares.
    shape            jsonb       NOT NULL,
    -- the dataset it was last trained on, if any.
    dataset          text,
    -- active: served; stale: trained for another base, to be rebuilt at the next sleep.
    status           text        NOT NULL DEFAULT 'active'
                     CHECK (status IN ('active', 'stale')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE npllm.adapters IS
    'LoRA adapters on the frozen base: purpose, tags, centroid for routing, base fingerprint.';

CREATE TABLE npllm.model_versions (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    adapter          text        NOT NULL REFERENCES npllm.adapters (name) ON DELETE CASCADE,
    version          integer     NOT NULL CHECK (version > 0),
    artifact_path    text        NOT NULL,
    base_fingerprint text        NOT NULL,
    -- training metrics, smoke-test result, why it is not active, ...
    metrics          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status           text        NOT NULL
                     CHECK (status IN ('candidate', 'active', 'retired', 'stale')),
    status_reason    text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    activated_at     timestamptz,
    UNIQUE (adapter, version)
);

-- At most one active version per adapter: publishing and rollback flip it in one
-- transaction.
CREATE UNIQUE INDEX model_versions_one_active ON npllm.model_versions (adapter)
    WHERE status = 'active';

COMMENT ON TABLE npllm.model_versions IS
    'Versions of each adapter: artifact path, metrics, status candidate|active|retired|stale.';

CREATE TABLE npllm.training_runs (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- adapter | cerebellum | modulator
    kind               text        NOT NULL DEFAULT 'adapter',
    adapter            text,
    version            integer,
    dataset            text,
    status             text        NOT NULL DEFAULT 'running'
                       CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted')),
    examples           integer,
    steps              integer,
    -- losses per step, final loss, seconds, settings used
    metrics            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- the base LLM's weights, hashed before and after: they must be equal.
    base_sha256_before text,
    base_sha256_after  text,
    error              text,
    started_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz
);

COMMENT ON TABLE npllm.training_runs IS
    'Every training run, with its metrics and the base weights hash before and after.';

-- What the modulator decided for each answered request, with the probability of every
-- option, so a new modulator can later be evaluated on old decisions.
CREATE TABLE npllm.routing_decisions (
    interaction_id bigint      PRIMARY KEY
                   REFERENCES npllm.interactions (id) ON DELETE CASCADE,
    -- modulator: chosen by the modulator; pinned: the request named adapters;
    -- disabled: the request asked for none.
    mode           text        NOT NULL CHECK (mode IN ('modulator', 'pinned', 'disabled')),
    -- {"none": p, "<adapter>": p, ...}
    probabilities  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- [{"name", "version", "weight"}]
    chosen         jsonb       NOT NULL DEFAULT '[]'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE npllm.routing_decisions IS
    'Per-request adapter routing: mode, the probability of every option, what was used.';
