-- One version store for every kind: the modulator's versions join the adapters' and the
-- cerebellum's in npllm.model_versions (the table's name now says what it holds: versions
-- of every model npllm trains), under one npllm.adapters row named 'modulator' of kind
-- 'modulator'. npllm.modulator_versions stays as a view with its old columns, so psql
-- recipes keep working:
--   SELECT a.kind, v.adapter, v.version, v.status FROM npllm.model_versions v
--   JOIN npllm.adapters a ON a.name = v.adapter ORDER BY a.kind, v.adapter, v.version;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM npllm.adapters WHERE name = 'modulator') THEN
        RAISE EXCEPTION 'an adapter is named "modulator", a name now reserved for the '
            'modulator''s versions: delete it with an earlier npllm '
            '(`npllm adapter delete modulator`), then migrate again';
    END IF;
END $$;

ALTER TABLE npllm.adapters DROP CONSTRAINT adapters_kind_check;
ALTER TABLE npllm.adapters ADD CONSTRAINT adapters_kind_check
    CHECK (kind IN ('adapter', 'cerebellum', 'modulator'));
ALTER TABLE npllm.adapters DROP CONSTRAINT adapters_cerebellum_name;
ALTER TABLE npllm.adapters ADD CONSTRAINT adapters_reserved_names
    CHECK ((kind = 'cerebellum') = (name = 'cerebellum')
           AND (kind = 'modulator') = (name = 'modulator'));
COMMENT ON COLUMN npllm.adapters.kind IS
    'adapter: a LoRA adapter the modulator routes to; cerebellum: the draft model''s LoRA; '
    'modulator: the routing network (its versions fit any base: base_fingerprint ''any'').';
COMMENT ON TABLE npllm.model_versions IS
    'Versions of every kind (adapters.kind: adapter, cerebellum, modulator): artifact '
    'directory, metrics, status candidate|active|retired|stale|pruned.';

INSERT INTO npllm.adapters (name, kind, description, base_model, base_fingerprint, shape)
SELECT 'modulator', 'modulator', 'routes each question to adapters (modulator.train)',
       'any base LLM (routes query embeddings)', 'any', '{}'::jsonb
WHERE EXISTS (SELECT 1 FROM npllm.modulator_versions);

-- path was <dir>/v<N>/modulator.safetensors; versions are directories in the store.
INSERT INTO npllm.model_versions (adapter, version, artifact_path, base_fingerprint, metrics,
                                  status, status_reason, created_at, activated_at)
SELECT 'modulator', version, regexp_replace(path, '/modulator\.safetensors$', ''), 'any',
       metrics || jsonb_build_object('slots', to_jsonb(slots), 'sleep_cycle', sleep_cycle),
       status, reason, created_at, activated_at
FROM npllm.modulator_versions;

DROP TABLE npllm.modulator_versions;

CREATE VIEW npllm.modulator_versions AS
SELECT v.version,
       v.artifact_path || '/modulator.safetensors' AS path,
       ARRAY(SELECT jsonb_array_elements_text(coalesce(v.metrics -> 'slots', '[]'::jsonb)))
           AS slots,
       v.status,
       v.status_reason AS reason,
       v.metrics - 'slots' - 'sleep_cycle' AS metrics,
       (v.metrics ->> 'sleep_cycle')::bigint AS sleep_cycle,
       v.created_at,
       v.activated_at
FROM npllm.model_versions v
WHERE v.adapter = 'modulator';

COMMENT ON VIEW npllm.modulator_versions IS
    'The modulator''s versions in npllm.model_versions, with the columns of the old table.';
