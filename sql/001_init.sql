-- npllm's hippocampus: what it remembers and what happened.
-- Read it with `npllm psql`, e.g.  SELECT id, kind, left(text, 60) FROM npllm.memories;

CREATE EXTENSION IF NOT EXISTS vector;
CREATE SCHEMA IF NOT EXISTS npllm;

-- Long-term memories: facts, documents (chunked) and past exchanges, searched by meaning.
CREATE TABLE npllm.memories (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    text          text        NOT NULL CHECK (length(text) > 0),
    kind          text        NOT NULL DEFAULT 'note'
                  CHECK (kind IN ('note', 'fact', 'document', 'exchange')),
    source        text        NOT NULL DEFAULT 'user',
    -- all-MiniLM-L6-v2 embeddings, L2-normalised.
    embedding     vector(384) NOT NULL,
    -- a long document is stored as chunks sharing one document_id, in chunk_index order.
    document_id   uuid,
    chunk_index   integer     NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    use_count     integer     NOT NULL DEFAULT 0,
    -- how many near-duplicates were merged into this row instead of being stored again.
    merged_count  integer     NOT NULL DEFAULT 0
);

CREATE INDEX memories_embedding_hnsw ON npllm.memories
    USING hnsw (embedding vector_cosine_ops);
CREATE INDEX memories_document ON npllm.memories (document_id, chunk_index)
    WHERE document_id IS NOT NULL;

COMMENT ON TABLE npllm.memories IS
    'Long-term memories searched by cosine similarity (HNSW). kind: note|fact|document|exchange.';

-- Every answered request: what was asked, what the base LLM answered, with what help.
CREATE TABLE npllm.interactions (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- the request's messages as sent: [{"role": ..., "content": ...}, ...]
    messages       jsonb       NOT NULL,
    -- the latest user turn, for reading in psql and for feedback inference.
    question       text        NOT NULL,
    answer         text        NOT NULL,
    base_model     text        NOT NULL,
    -- [{"name": ..., "version": ..., "weight": ...}]; empty when no adapter was used.
    adapters_used  jsonb       NOT NULL DEFAULT '[]'::jsonb,
    memory_ids     bigint[]    NOT NULL DEFAULT '{}',
    memory_scores  real[]      NOT NULL DEFAULT '{}',
    -- {"embed_ms", "retrieve_ms", "generate_ms", "total_ms", "tokens_per_s", ...}
    timings        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    prompt_tokens      integer NOT NULL DEFAULT 0,
    completion_tokens  integer NOT NULL DEFAULT 0,
    finish_reason  text,
    -- request parameters: max_tokens, temperature, top_p, stop, seed, stream.
    params         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    question_embedding vector(384)
);

CREATE INDEX interactions_created ON npllm.interactions (created_at DESC);

COMMENT ON TABLE npllm.interactions IS
    'One row per answered request. Feedback, replay buffer, adapters, model versions, '
    'training runs and sleep cycles are added by later migrations and refer to these ids.';
