-- The fast learner: a correction corrects the hippocampus at once.
-- An exchange memory (a past answer, unverified) now names the interaction that produced
-- it, and a fact learned from a correction names the corrected interaction, so that
--   SELECT id, kind, interaction_id, left(text, 60) FROM npllm.memories;
-- shows where each came from. A correction removes the wrong exchange and stores the
-- corrected answer as a fact; negative feedback removes the exchange (the answer itself
-- stays in npllm.interactions).

ALTER TABLE npllm.memories ADD COLUMN interaction_id bigint
    REFERENCES npllm.interactions (id) ON DELETE SET NULL;

UPDATE npllm.memories m SET interaction_id = i.id
FROM npllm.interactions i
WHERE m.source ~ '^interaction:[0-9]+$'
  AND i.id = substring(m.source FROM 'interaction:([0-9]+)')::bigint;

CREATE INDEX memories_interaction ON npllm.memories (interaction_id)
    WHERE interaction_id IS NOT NULL;
-- Exchanges merged into an identical one are found by their text.
CREATE INDEX memories_exchange_text ON npllm.memories (md5(text)) WHERE kind = 'exchange';

COMMENT ON COLUMN npllm.memories.interaction_id IS
    'exchange: the interaction whose answer it is; fact from a correction: the corrected one.';
