-- replay_overview's '(all)' row is a tier's total, but 002 computed it over the rows
-- unnested per tag (GROUPING SETS over the join): an interaction with two tags counted
-- twice there, and its reward, quality and times_sampled weighed twice. The per-tag rows
-- still come from the unnested tags (an interaction appears under each of its tags); the
-- '(all)' rows now come from the buffer itself, one row per interaction. Same columns,
-- types and order as before, so CREATE OR REPLACE keeps the view's comment and grants.
CREATE OR REPLACE VIEW npllm.replay_overview AS
SELECT tier, tag, interactions, mean_reward, mean_quality, corrected, rated, times_sampled
FROM (
    SELECT r.tier,
           t.tag,
           count(*)                                       AS interactions,
           round(avg(r.reward)::numeric, 3)               AS mean_reward,
           round(avg(r.quality)::numeric, 3)              AS mean_quality,
           count(r.corrected_answer)                      AS corrected,
           count(*) FILTER (WHERE r.implicit_n + r.emotional_n > 0) AS rated,
           sum(r.times_sampled)                           AS times_sampled
    FROM npllm.replay_buffer r
    CROSS JOIN LATERAL unnest(
        CASE WHEN cardinality(r.tags) = 0 THEN ARRAY['untagged'] ELSE r.tags END
    ) AS t(tag)
    GROUP BY r.tier, t.tag
    UNION ALL
    SELECT r.tier,
           '(all)',
           count(*),
           round(avg(r.reward)::numeric, 3),
           round(avg(r.quality)::numeric, 3),
           count(r.corrected_answer),
           count(*) FILTER (WHERE r.implicit_n + r.emotional_n > 0),
           sum(r.times_sampled)
    FROM npllm.replay_buffer r
    GROUP BY r.tier
) AS per
ORDER BY CASE tier WHEN 'premium' THEN 0 WHEN 'standard' THEN 1 ELSE 2 END,
         tag <> '(all)',  -- a tier's total first, then its tags
         tag;

COMMENT ON VIEW npllm.replay_overview IS
    'Replay buffer by tier and tag: counts, mean reward and quality, corrections, sampling. '
    'Tag ''(all)'' is the tier''s total, each interaction counted once whatever its tags.';
