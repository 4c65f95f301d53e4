-- The dashboard's projection view counts dead letters by reason and pages one reason's newest
-- first: both are ranges of this index instead of scans of every dead letter.
CREATE INDEX IF NOT EXISTS dead_letters_by_reason ON dead_letters (reason_code, sequence);
