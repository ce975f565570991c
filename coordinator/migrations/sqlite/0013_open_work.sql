-- Open work apart from the record (see the PostgreSQL migration of the same name): what waits for a
-- lease in `frontier`, what a lease holds in `lease_urls`, both emptied as the work is done; the
-- record (`job_urls`, `checks`) is not read by URL on any hot path.
CREATE TABLE frontier (
    host      TEXT NOT NULL,
    url_order INTEGER NOT NULL,
    seq       INTEGER NOT NULL,
    url_id    INTEGER NOT NULL,
    job_id    INTEGER NOT NULL,
    PRIMARY KEY (host, url_order, seq, url_id, job_id)
) WITHOUT ROWID;
CREATE INDEX frontier_url ON frontier (url_id);
CREATE TABLE lease_urls (
    url_id   INTEGER NOT NULL,
    lease_id INTEGER NOT NULL,
    job_id   INTEGER NOT NULL,
    PRIMARY KEY (url_id, lease_id, job_id)
) WITHOUT ROWID;
ALTER TABLE job_urls ADD COLUMN checked_at BIGINT;

INSERT OR IGNORE INTO frontier (host, url_order, seq, url_id, job_id)
SELECT host, url_order, seq, url_id, job_id FROM job_urls WHERE state = 'pending';
INSERT OR IGNORE INTO lease_urls (url_id, lease_id, job_id)
SELECT ju.url_id, ju.lease_id, ju.job_id FROM job_urls ju JOIN leases l ON l.id = ju.lease_id
WHERE ju.state = 'leased' AND l.active;
INSERT OR IGNORE INTO frontier (host, url_order, seq, url_id, job_id)
SELECT ju.host, ju.url_order, ju.seq, ju.url_id, ju.job_id FROM job_urls ju
WHERE ju.state = 'leased' AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.id = ju.lease_id AND l.active);
UPDATE job_urls SET state = 'pending', lease_id = NULL WHERE state = 'leased';
UPDATE hosts SET pending = (SELECT COUNT(*) FROM frontier f WHERE f.host = hosts.host);
UPDATE leases SET open = (SELECT COUNT(DISTINCT lu.url_id) FROM lease_urls lu WHERE lu.lease_id = leases.id)
WHERE active;

DROP INDEX job_urls_frontier;
DROP INDEX job_urls_lease;
DROP INDEX job_urls_url;
DROP INDEX leases_expiry;
DROP INDEX leases_holder;
CREATE INDEX leases_live ON leases (id) WHERE active;
