-- Projection version 3: percentiles, queue wait, items processed and trailing windows
-- (CONTRACT §6). Sketches are DurationSketch encodings (src/projection/sketch.rs).

ALTER TABLE job_stats ADD COLUMN duration_sketch   BLOB;
ALTER TABLE job_stats ADD COLUMN queue_wait_sum_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE job_stats ADD COLUMN queue_wait_count  INTEGER NOT NULL DEFAULT 0;
ALTER TABLE job_stats ADD COLUMN queue_wait_sketch BLOB;
ALTER TABLE job_stats ADD COLUMN items_total       INTEGER NOT NULL DEFAULT 0;
ALTER TABLE job_stats ADD COLUMN items_count       INTEGER NOT NULL DEFAULT 0;

-- Finished executions by job, bucket width (0 minute, 1 hour, 2 day) and bucket start (finish
-- time, UTC edges). A window is one range of this key.
CREATE TABLE rollups (
    job_id          INTEGER NOT NULL,
    granularity     INTEGER NOT NULL,
    bucket_start    INTEGER NOT NULL,
    completed       INTEGER NOT NULL,
    failed          INTEGER NOT NULL,
    duration_sum_ms INTEGER NOT NULL,
    duration_count  INTEGER NOT NULL,
    duration_sketch BLOB    NOT NULL,
    PRIMARY KEY (job_id, granularity, bucket_start)
) WITHOUT ROWID;
