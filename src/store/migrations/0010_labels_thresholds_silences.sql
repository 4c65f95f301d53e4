-- CONTRACT §11. A job's labels (JSON object text, NULL: none) and thresholds, with the
-- schedule they came on; the latest silence; and the thresholded verdict before the trailing
-- outcome run (kept only while a threshold above 1 is set).
ALTER TABLE job_stats ADD COLUMN schedule_labels TEXT;
ALTER TABLE job_stats ADD COLUMN schedule_failure_threshold INTEGER;
ALTER TABLE job_stats ADD COLUMN schedule_recovery_threshold INTEGER;
ALTER TABLE job_stats ADD COLUMN silence_until INTEGER;
ALTER TABLE job_stats ADD COLUMN silence_reason TEXT;
ALTER TABLE job_stats ADD COLUMN silence_by TEXT;
ALTER TABLE job_stats ADD COLUMN silence_occurred_at INTEGER;
ALTER TABLE job_stats ADD COLUMN silence_event_id TEXT;
ALTER TABLE job_stats ADD COLUMN verdict_failing INTEGER;
ALTER TABLE job_stats ADD COLUMN verdict_since INTEGER;
