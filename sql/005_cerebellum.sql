-- The cerebellum (the draft model of generation) keeps its versions in the same tables as
-- the LoRA adapters: one npllm.adapters row named 'cerebellum' with kind 'cerebellum'.
-- It is never routed to; only the serving path's draft model loads it.

ALTER TABLE npllm.adapters
    ADD COLUMN kind text NOT NULL DEFAULT 'adapter' CHECK (kind IN ('adapter', 'cerebellum'));

ALTER TABLE npllm.adapters
    ADD CONSTRAINT adapters_cerebellum_name CHECK ((kind = 'cerebellum') = (name = 'cerebellum'));

COMMENT ON COLUMN npllm.adapters.kind IS
    'adapter: a LoRA adapter the modulator routes to; cerebellum: the draft model''s LoRA.';

-- A cycle that continues the training of an interrupted one (from its checkpoints).
ALTER TABLE npllm.sleep_cycles ADD COLUMN resumed_from bigint
    REFERENCES npllm.sleep_cycles (id) ON DELETE SET NULL;
