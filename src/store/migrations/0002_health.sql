-- Projection version 2: what job health (CONTRACT §5) reads.

-- The outcome of the last finished execution, the schedule's settings and when its cron
-- took effect, and the trailing run of same-outcome executions (by finish time).
ALTER TABLE job_stats ADD COLUMN last_finished_failed    INTEGER;
ALTER TABLE job_stats ADD COLUMN schedule_grace_ms       INTEGER;
ALTER TABLE job_stats ADD COLUMN schedule_max_runtime_ms INTEGER;
ALTER TABLE job_stats ADD COLUMN schedule_since          INTEGER;
ALTER TABLE job_stats ADD COLUMN run_failed              INTEGER;
ALTER TABLE job_stats ADD COLUMN run_length              INTEGER;
ALTER TABLE job_stats ADD COLUMN run_first_at            INTEGER;
ALTER TABLE job_stats ADD COLUMN run_first_id            TEXT;
ALTER TABLE job_stats ADD COLUMN run_boundary_at         INTEGER;
ALTER TABLE job_stats ADD COLUMN run_boundary_id         TEXT;

-- The stream publish time of the last applied message: the instant a lagging projection can
-- vouch for.
ALTER TABLE checkpoint ADD COLUMN last_published_at_ms INTEGER;

-- Recounting an outcome run after a late arrival: finished executions by finish time.
CREATE INDEX executions_by_finish
    ON executions (job_id, finished_at, execution_id) WHERE finished_at IS NOT NULL;

-- Stuck executions: those processing, oldest start first.
CREATE INDEX executions_processing
    ON executions (job_id, started_at, execution_id) WHERE state = 1;
