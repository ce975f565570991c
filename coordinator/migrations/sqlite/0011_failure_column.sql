-- The failures index reads `failure`, which is `kind` for the failing kinds and NULL otherwise (the
-- same column as on PostgreSQL, where it keeps a good URL's finish a heap-only update).
ALTER TABLE job_urls ADD COLUMN failure TEXT
    GENERATED ALWAYS AS (CASE WHEN kind NOT IN ('ok', 'redirected') THEN kind END) VIRTUAL;
DROP INDEX job_urls_failures;
CREATE INDEX job_urls_failures ON job_urls (job_id, failure, url_id) WHERE failure IS NOT NULL;
