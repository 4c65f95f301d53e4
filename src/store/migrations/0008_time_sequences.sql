-- The stream sequences of the events that set each execution's enqueue, start and finish
-- times, and of the one its recency key comes from. A start moves a pending execution in the
-- newest-first order; pages after the first are read as of the stream position of the first
-- (the key each row had then, from these), so no row is skipped or repeated while events
-- arrive. Rows from before this migration read as set at sequence 0 (before any position a
-- page can name), which is what they were for every page read from now on.
ALTER TABLE executions ADD COLUMN enqueued_seq INTEGER;
ALTER TABLE executions ADD COLUMN started_seq INTEGER;
ALTER TABLE executions ADD COLUMN finished_seq INTEGER;
ALTER TABLE executions ADD COLUMN recency_seq INTEGER NOT NULL DEFAULT 0;
-- The rows whose place changed after a position: few, read beside the recency index range.
CREATE INDEX executions_by_recency_change ON executions (job_id, recency_seq);
