-- A finish sets `kind`: with `kind` in the failures index, every finish was a new row version with
-- a new entry in each of the table's indexes, not a heap-only update. `failure` is `kind` for the
-- failing kinds and NULL otherwise, so finishing a URL that answered well changes no indexed value.
ALTER TABLE job_urls ADD COLUMN failure TEXT
    GENERATED ALWAYS AS (CASE WHEN kind NOT IN ('ok', 'redirected') THEN kind END) STORED;
DROP INDEX job_urls_failures;
CREATE INDEX job_urls_failures ON job_urls (job_id, failure, url_id) WHERE failure IS NOT NULL;
-- Room on each page for the rows' new versions within one ingest transaction, where nothing can be
-- pruned: a URL inserted without a state grows to its full latest state at its first check (about
-- twice its size), and a leased `job_urls` row is rewritten once more at its finish, at its size.
ALTER TABLE urls SET (fillfactor = 35);
ALTER TABLE job_urls SET (fillfactor = 50);
