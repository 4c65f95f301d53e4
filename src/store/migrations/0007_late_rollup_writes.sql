-- The stream sequence of the job's last event that changed a rollup bucket of an hour before
-- the hour of its latest finish (a late finish, or a finished run that moved). Every bucket
-- before that hour stays as it is until this changes, so readers keep those buckets merged
-- per window ("closed hours") and read only the rest.
ALTER TABLE job_stats ADD COLUMN late_write_sequence INTEGER NOT NULL DEFAULT 0;
