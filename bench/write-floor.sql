-- What each of the ingest's writes costs PostgreSQL at its cheapest, against COPY, for 100,000 rows.
-- Each write runs inside the server as one statement, on tables with urlfleet's columns and indexes,
-- where every update can be heap-only: fillfactor 40 on `job_urls` rather than the store's 50 leaves room
-- on each page for every row's new version, and the tables are just vacuumed. No client, no planning
-- per chunk, no lock waits: a deliberately optimistic floor. An ingest that writes `checks` and
-- finishes `job_urls` per result cannot beat the sum. (100,000 is written out where \copy needs it.)
--   psql postgres://postgres@127.0.0.1:5432/postgres -f bench/write-floor.sql
\set ON_ERROR_STOP on
DROP DATABASE IF EXISTS urlfleet_write_floor;
CREATE DATABASE urlfleet_write_floor;
\c urlfleet_write_floor
CREATE TABLE checks (url_id BIGINT NOT NULL, checked_at BIGINT NOT NULL, lease_id BIGINT NOT NULL,
  kind TEXT NOT NULL, status INTEGER, final_url TEXT, redirects TEXT, attempts INTEGER NOT NULL,
  response_ms BIGINT NOT NULL, content_type TEXT, content_length BIGINT, error TEXT,
  PRIMARY KEY (url_id, checked_at));
CREATE TABLE checks_copy (LIKE checks INCLUDING ALL);
CREATE TABLE urls (id BIGSERIAL PRIMARY KEY, url TEXT COLLATE "C" NOT NULL UNIQUE);
CREATE TABLE job_urls (job_id BIGINT NOT NULL, url_id BIGINT NOT NULL, host TEXT COLLATE "C" NOT NULL,
  state TEXT NOT NULL, url_order SMALLINT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, lease_id BIGINT,
  kind TEXT, waiting BOOLEAN GENERATED ALWAYS AS (state = 'pending') STORED, seq INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (job_id, url_id)) WITH (fillfactor = 40);
CREATE INDEX ON job_urls (host, url_order, seq, url_id) WHERE waiting;
CREATE INDEX ON job_urls (lease_id) WHERE lease_id IS NOT NULL;
CREATE INDEX ON job_urls (url_id);
ALTER TABLE job_urls ADD COLUMN failure TEXT
  GENERATED ALWAYS AS (CASE WHEN kind NOT IN ('ok', 'redirected') THEN kind END) STORED;
CREATE INDEX ON job_urls (job_id, failure, url_id) WHERE failure IS NOT NULL;
INSERT INTO urls (url) SELECT 'https://host' || (k % 100) || '.example/' || k FROM generate_series(1, 100000) k;
INSERT INTO job_urls (job_id, url_id, host, state, url_order, lease_id, seq)
  SELECT 1, id, 'host' || (id % 100) || '.example', 'leased', 30, id / 100 + 1, id FROM urls;
\copy (SELECT k, 1000, k / 100 + 1, 'ok', 200, NULL, NULL, 1, 3, 'text/html', NULL, NULL FROM generate_series(1, 100000) k) TO '/tmp/urlfleet-write-floor.tsv'
VACUUM ANALYZE;
CHECKPOINT;
\timing on
\echo COPY into checks
\copy checks_copy FROM '/tmp/urlfleet-write-floor.tsv'
\echo checks: INSERT
INSERT INTO checks SELECT k, 1000, k / 100 + 1, 'ok', 200, NULL, NULL, 1, 3, 'text/html', NULL, NULL
  FROM generate_series(1, 100000) k;
\echo job_urls: finish
UPDATE job_urls SET state = 'done', kind = 'ok' WHERE state = 'leased';
\timing off
SELECT pg_stat_force_next_flush();
SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'job_urls';
\c postgres
DROP DATABASE urlfleet_write_floor;
\! rm -f /tmp/urlfleet-write-floor.tsv
