-- The read model of projection version 1. Times are milliseconds since the Unix epoch (UTC).

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- The stream position this file reflects, written in the same transaction as the data.
CREATE TABLE checkpoint (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    last_sequence   INTEGER NOT NULL,
    events_applied  INTEGER NOT NULL,
    dead_letters    INTEGER NOT NULL,
    committed_at_ms INTEGER NOT NULL
);
INSERT INTO checkpoint (id, last_sequence, events_applied, dead_letters, committed_at_ms)
VALUES (1, 0, 0, 0, 0);

-- One row per execution, clustered by job so a job's executions sit together. Keys use the
-- job's integer id: narrow keys keep both B-trees small and comparisons cheap.
CREATE TABLE executions (
    job_id          INTEGER NOT NULL,  -- job_stats.job_id
    execution_id    TEXT    NOT NULL,
    state           INTEGER NOT NULL,  -- 0 pending, 1 processing, 2 completed, 3 failed
    enqueued_at     INTEGER,
    started_at      INTEGER,
    finished_at     INTEGER,
    items_processed INTEGER,
    error           TEXT,
    recency_key     INTEGER NOT NULL,  -- started_at, else enqueued_at, else finished_at
    PRIMARY KEY (job_id, execution_id)
) WITHOUT ROWID;

-- Serves "recent executions" as a bounded index range scan, never a history scan.
CREATE INDEX executions_by_recency
    ON executions (job_id, recency_key DESC, execution_id DESC);

-- Incrementally maintained aggregates: one row per (tenant, job) ever seen.
CREATE TABLE job_stats (
    job_id                     INTEGER PRIMARY KEY,  -- assigned in stream order of first event
    tenant_id                  TEXT    NOT NULL,
    job_name                   TEXT    NOT NULL,
    pending                    INTEGER NOT NULL,
    processing                 INTEGER NOT NULL,
    completed                  INTEGER NOT NULL,
    failed                     INTEGER NOT NULL,
    duration_sum_ms            INTEGER NOT NULL,
    duration_count             INTEGER NOT NULL,
    last_finished_at           INTEGER,
    last_finished_execution_id TEXT,
    last_finished_duration_ms  INTEGER,
    last_started_at            INTEGER,
    schedule_cron              TEXT,
    schedule_occurred_at       INTEGER,  -- NULL: no scheduled event seen
    schedule_event_id          TEXT,
    first_sequence             INTEGER NOT NULL,
    last_sequence              INTEGER NOT NULL,
    UNIQUE (tenant_id, job_name)
);

-- Messages that broke the event contract: recorded, acknowledged, never blocking.
CREATE TABLE dead_letters (
    sequence        INTEGER PRIMARY KEY,
    subject         TEXT    NOT NULL,
    reason_code     TEXT    NOT NULL,
    reason          TEXT    NOT NULL,
    payload         BLOB    NOT NULL,  -- the first 4 KiB
    payload_bytes   INTEGER NOT NULL,
    published_at_ms INTEGER
);
