-- The dashboard: a job's failures found by index (they are few among many URLs), and a job's
-- progress sampled over time for its charts.
CREATE INDEX job_urls_failures ON job_urls (job_id, kind, url_id)
    WHERE kind IS NOT NULL AND kind NOT IN ('ok', 'redirected');

CREATE TABLE job_samples (
    job_id       BIGINT NOT NULL,
    at           BIGINT NOT NULL,
    checked      BIGINT NOT NULL,
    n_ok         BIGINT NOT NULL,
    n_redirected BIGINT NOT NULL,
    n_broken     BIGINT NOT NULL,
    n_error      BIGINT NOT NULL,
    PRIMARY KEY (job_id, at)
);
