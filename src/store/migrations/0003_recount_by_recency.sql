-- Recounting a split outcome run without a finish-time index (it cost every execution insert
-- a third B-tree write, ~20% of the writer's throughput, to serve a rare recount).

DROP INDEX executions_by_finish;

-- The largest (finished_at - recency_key) of the job's finished executions, never below 0, and
-- never lowered: every execution finished at or after T has recency_key >= T - finish_lead_ms,
-- so a recount reads the recency index from there instead of the job's whole history.
ALTER TABLE job_stats ADD COLUMN finish_lead_ms INTEGER NOT NULL DEFAULT 0;
UPDATE job_stats SET finish_lead_ms = COALESCE(
    (SELECT MAX(MAX(finished_at - recency_key, 0)) FROM executions
     WHERE executions.job_id = job_stats.job_id AND finished_at IS NOT NULL), 0);
