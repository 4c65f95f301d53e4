-- CONTRACT §10. The zone a job's cron is evaluated in (NULL: UTC), with the schedule.
ALTER TABLE job_stats ADD COLUMN schedule_timezone TEXT;
-- A finished run's exit code, shown in every list of executions.
ALTER TABLE executions ADD COLUMN exit_code INTEGER;
-- A finished run's output tail (up to 16 KiB): in a table of its own, so the executions
-- table stays narrow for the index ranges and pages that never show it; read only by the
-- one-execution query. Written once, by the first terminal event (CONTRACT §2).
CREATE TABLE execution_outputs (
    job_id INTEGER NOT NULL,
    execution_id TEXT NOT NULL,
    output TEXT NOT NULL,
    PRIMARY KEY (job_id, execution_id)
);
