-- A version owns where it routes; the adapter row shows the active version's.
--
-- Each version keeps the centroid and dataset it was trained for, and its routing keys
-- (npllm.routing_keys: the questions it was taught, the paraphrases the night made of
-- them, the centroid of a topic it was trained on). The adapter row's centroid, dataset,
-- base and status change only when a version is activated: a version the gate rejected,
-- or the daemon refused, moves nothing that routes.
--
-- One active version per adapter *per base*: after a base swap the versions trained for
-- the first base stay active for it, and swapping back serves them again without
-- retraining. An adapter is 'stale' when it has an active version for another base and
-- none for this one (npllm adapter list shows it "to be rebuilt").
ALTER TABLE npllm.model_versions ADD COLUMN centroid vector(384);
ALTER TABLE npllm.model_versions ADD COLUMN dataset text;
UPDATE npllm.model_versions v SET centroid = a.centroid, dataset = a.dataset
FROM npllm.adapters a WHERE a.name = v.adapter AND v.status = 'active';
COMMENT ON COLUMN npllm.model_versions.centroid IS
    'the mean question it was trained on; the adapter row takes it when the version is activated';

DROP INDEX npllm.model_versions_one_active;
CREATE UNIQUE INDEX model_versions_one_active ON npllm.model_versions (adapter, base_fingerprint)
    WHERE status = 'active';

CREATE TABLE npllm.routing_keys (
    id             bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    adapter        text    NOT NULL,
    version        integer NOT NULL,
    -- question: a question the version was taught (a correction or a liked answer);
    -- paraphrase: one the night made of it (consolidation/variants.py);
    -- topic: the centroid of a topic it was trained on (an imported dataset);
    -- neighbour: a question it must leave to the base (the same subject with another
    -- relation, a public default, a question the user asked and did not correct): a
    -- question nearer a neighbour than to every other key is not routed to it.
    kind           text    NOT NULL
                   CHECK (kind IN ('question', 'paraphrase', 'topic', 'neighbour')),
    text           text    NOT NULL,
    embedding      vector(384) NOT NULL,
    interaction_id bigint  REFERENCES npllm.interactions (id) ON DELETE SET NULL,
    FOREIGN KEY (adapter, version) REFERENCES npllm.model_versions (adapter, version)
        ON DELETE CASCADE
);
CREATE INDEX routing_keys_version ON npllm.routing_keys (adapter, version);
COMMENT ON TABLE npllm.routing_keys IS
    'Where each version answers: a question is routed to an adapter when it is at least '
    'modulator.scope_similarity alike to one of its question/paraphrase keys (or '
    'modulator.none_similarity to a topic key) of its active version, and nearer that key '
    'than to any of its neighbour keys.';
