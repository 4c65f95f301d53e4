-- CONTRACT §12. The job's latest silenced events (JSON `[[occurredAt, eventId, until], ...]`,
-- NULL: none), so that uptime leaves out every silenced stretch, not only the latest.
ALTER TABLE job_stats ADD COLUMN silence_marks TEXT;
