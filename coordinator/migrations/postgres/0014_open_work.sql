-- Open work apart from the record. `job_urls` is a job's record of each URL: inserted once, finished
-- once (a heap-only update: no index names what a finish writes). What waits for a lease and what a
-- lease holds live in two small tables whose rows are deleted as the work is done, so no hot path
-- reads a URL's history and a grant writes nothing to the record.
--
-- `frontier`: one row per (job, URL) waiting for a lease, in lease order per host. `job_id` is in
-- the key, so the grant's test of a job's eligibility reads the index, not the table. A grant moves
-- a URL's rows of every job out of it (found through `frontier_url`): a URL is checked once for all
-- the jobs that want it.
CREATE TABLE frontier (
    host      TEXT COLLATE "C" NOT NULL,
    url_order SMALLINT NOT NULL,
    seq       INTEGER NOT NULL,
    url_id    BIGINT NOT NULL,
    job_id    BIGINT NOT NULL,
    PRIMARY KEY (host, url_order, seq, url_id, job_id)
);
CREATE INDEX frontier_url ON frontier (url_id);
-- `lease_urls`: what each live lease holds, per job, until its result is stored (or the lease is
-- reaped, or the job cancelled). Keyed by URL first: the fence asks "does lease L hold URL u", and a
-- grant asks "is URL u out in any lease" (a URL another job added while it was out is not leased
-- twice; its row waits and the lease's result finishes it).
CREATE TABLE lease_urls (
    url_id   BIGINT NOT NULL,
    lease_id BIGINT NOT NULL,
    job_id   BIGINT NOT NULL,
    PRIMARY KEY (url_id, lease_id, job_id)
);
-- The check that answered the job's URL, found through the history's primary key.
ALTER TABLE job_urls ADD COLUMN checked_at BIGINT;

-- Work open when the database was written by the earlier model is carried forward: waiting rows into
-- the frontier, rows of live leases into `lease_urls` (their state is `pending` again: open), and a
-- row whose lease had ended without its result back to the frontier.
INSERT INTO frontier (host, url_order, seq, url_id, job_id)
SELECT host, url_order, seq, url_id, job_id FROM job_urls WHERE state = 'pending'
ON CONFLICT DO NOTHING;
INSERT INTO lease_urls (url_id, lease_id, job_id)
SELECT ju.url_id, ju.lease_id, ju.job_id FROM job_urls ju JOIN leases l ON l.id = ju.lease_id
WHERE ju.state = 'leased' AND l.active
ON CONFLICT DO NOTHING;
INSERT INTO frontier (host, url_order, seq, url_id, job_id)
SELECT ju.host, ju.url_order, ju.seq, ju.url_id, ju.job_id FROM job_urls ju
WHERE ju.state = 'leased' AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.id = ju.lease_id AND l.active)
ON CONFLICT DO NOTHING;
UPDATE job_urls SET state = 'pending', lease_id = NULL WHERE state = 'leased';
UPDATE hosts SET pending = (SELECT COUNT(*) FROM frontier f WHERE f.host = hosts.host);
UPDATE leases SET open = (SELECT COUNT(DISTINCT lu.url_id) FROM lease_urls lu WHERE lu.lease_id = leases.id)
WHERE active;

-- The record's indexes that served the open work go: the URL index made every grant, fence and
-- finish read every row a URL ever had, in every job.
DROP INDEX job_urls_frontier;
DROP INDEX job_urls_lease;
DROP INDEX job_urls_url;
ALTER TABLE job_urls DROP COLUMN waiting;
-- A heartbeat rewrites `expires_at`: with no index naming it, each renewal is a heap-only update.
-- The reaper and the metrics read the live leases through this index, which no renewal changes.
DROP INDEX leases_expiry;
DROP INDEX leases_holder;
CREATE INDEX leases_live ON leases (id) WHERE active;
