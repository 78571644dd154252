-- The memories' HNSW index rebuilt with m = 24 and ef_construction = 128 (pgvector's
-- defaults are 16 and 64). Chosen by bench/serve.py on 100k memories of real text embedded
-- by MiniLM, the daemon's own filtered query, single-row inserts running beside it
-- (docs/performance.md): with memory.hnsw_ef_search = 100, recall@10 0.9925 at p95 4.2 ms,
-- against 0.983 with the defaults; 16/128 needs ef_search 200 (p95 4.8 ms) for 0.99.
-- The build uses maintenance_work_mem (database.maintenance_work_mem): about a minute per
-- 100k memories on two cores.
DROP INDEX IF EXISTS npllm.memories_embedding_hnsw;
CREATE INDEX memories_embedding_hnsw ON npllm.memories
    USING hnsw (embedding vector_cosine_ops) WITH (m = 24, ef_construction = 128);
