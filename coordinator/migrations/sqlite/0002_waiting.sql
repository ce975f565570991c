-- The frontier index names `waiting` rather than `state`, as on PostgreSQL (where it lets a finish
-- be a heap-only update), so that both stores run the same queries.
ALTER TABLE job_urls ADD COLUMN waiting INTEGER GENERATED ALWAYS AS (state = 'pending') VIRTUAL;
-- A URL's position in its submission: jobs of equal priority on one host advance in turn.
ALTER TABLE job_urls ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
DROP INDEX job_urls_frontier;
CREATE INDEX job_urls_frontier ON job_urls (host, url_order, seq, url_id) WHERE waiting;
DROP INDEX job_urls_lease;
CREATE INDEX job_urls_lease ON job_urls (lease_id) WHERE lease_id IS NOT NULL;
-- A lease counts its open URLs and ends when the count reaches zero.
ALTER TABLE leases ADD COLUMN open INTEGER NOT NULL DEFAULT 0;
