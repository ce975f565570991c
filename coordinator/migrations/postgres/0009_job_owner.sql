-- The name of the token that submitted a job: a submitter reads and cancels only its own jobs. Jobs
-- submitted without tokens, and those from before, belong to '' (the anonymous admin).
ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
CREATE INDEX jobs_owner ON jobs (owner, id);
