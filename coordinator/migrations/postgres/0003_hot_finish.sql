-- Finishing a checked URL is the hottest update of all: one per result. It changes `state` (and
-- `kind`), so no index may name either column, or every finish becomes a new row version with a new
-- entry in each index. `waiting` mirrors `state = 'pending'` for the frontier index: a leased row
-- that finishes keeps it false, and its finish stays a heap-only update. A finished row keeps its
-- lease id, so the lease index holds every row ever leased, not only the open ones.
ALTER TABLE job_urls ADD COLUMN waiting BOOLEAN GENERATED ALWAYS AS (state = 'pending') STORED;
-- `seq`: the URL's position in its submission. Within a priority and class a host's URLs are leased
-- by it, so jobs of equal priority on one host advance in turn.
ALTER TABLE job_urls ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
DROP INDEX job_urls_frontier;
CREATE INDEX job_urls_frontier ON job_urls (host, url_order, seq, url_id) WHERE waiting;
DROP INDEX job_urls_lease;
CREATE INDEX job_urls_lease ON job_urls (lease_id) WHERE lease_id IS NOT NULL;
-- With finished rows in the lease index, "does this lease hold a leased URL?" would read every row
-- it ever held; the lease counts its open URLs instead, and ends when the count reaches zero.
ALTER TABLE leases ADD COLUMN open INTEGER NOT NULL DEFAULT 0;
-- Room on each page for the new versions of its rows: leasing and finishing rewrite every row.
ALTER TABLE job_urls SET (fillfactor = 75);
