-- What an embedded store must write at least for 100,000 checked URLs, inside SQLite with no client:
-- the URL set (a unique text key), the job's membership and the history, each as one INSERT … SELECT
-- in one transaction, with the pragmas the store runs with. `.timer on` prints each statement's
-- real, user and system time. Run on a new file: sqlite3 floor.db < bench/write-floor-sqlite.sql
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA cache_size = -32768;
PRAGMA temp_store = memory;
CREATE TABLE urls (id INTEGER PRIMARY KEY, url TEXT NOT NULL UNIQUE);
CREATE TABLE job_urls (job_id INTEGER NOT NULL, url_id INTEGER NOT NULL, PRIMARY KEY (job_id, url_id)) WITHOUT ROWID;
CREATE TABLE checks (
    url_id INTEGER NOT NULL, checked_at INTEGER NOT NULL, lease_id INTEGER NOT NULL, kind TEXT NOT NULL,
    status INTEGER, final_url TEXT, redirects TEXT, attempts INTEGER NOT NULL, response_ms INTEGER NOT NULL,
    content_type TEXT, content_length INTEGER, error TEXT,
    PRIMARY KEY (url_id, checked_at)
);
.timer on
BEGIN;
WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i < 99999)
INSERT INTO urls (url) SELECT 'http://127.0.0.1:18092/p/' || i FROM s;
COMMIT;
BEGIN;
INSERT INTO job_urls SELECT 1, id FROM urls;
COMMIT;
BEGIN;
INSERT INTO checks SELECT id, 1764547200000 + id, id / 100, 'ok', 200, NULL, NULL, 1, 3, 'text/plain', 3, NULL FROM urls;
COMMIT;
