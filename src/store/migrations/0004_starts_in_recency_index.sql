-- Health reads the start times of a job's executions over its judged window (8 days of fires)
-- from the recency index. Without more in the index every row costs a lookup in the
-- executions table, whose primary key orders executions by id, not time: after a long history
-- those lookups land on pages spread over the whole table, and the read grew ~1.5x with
-- history although the window did not. A start time is the recency key of a started
-- execution, so the index only needs to say whether the execution started: one more column
-- holding 0 or 1, which SQLite stores in the record header alone (no payload bytes). The
-- read is then one contiguous index range, and the index stays nearly as small.

-- (SQLite does not read an expression or a generated column from an index as covering, so
-- the flag is a stored column the writer sets.)
ALTER TABLE executions ADD COLUMN started INTEGER NOT NULL DEFAULT 0;  -- started_at IS NOT NULL
UPDATE executions SET started = 1 WHERE started_at IS NOT NULL;
DROP INDEX executions_by_recency;
CREATE INDEX executions_by_recency
    ON executions (job_id, recency_key DESC, execution_id DESC, started);
