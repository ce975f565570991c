-- Query plans of the dashboard's reads on a job of 1,000,000 URLs (32 hosts; 1 % broken, 0.5 %
-- timeouts, 100 invalid entries), on a database the coordinator has migrated:
--   createdb urlfleet_plans && urlfleet coordinator --db postgres://…/urlfleet_plans  (stop it once up)
--   psql postgres://…/urlfleet_plans -f bench/sql/dashboard_plans.sql
-- The statements are those of coordinator/src/store/dashboard.rs and results.rs with their
-- parameters filled in.
\set ON_ERROR_STOP on
\timing off
TRUNCATE jobs, urls, checks, job_urls, job_invalid, hosts, leases, job_samples CASCADE;
INSERT INTO jobs (id, name, state, priority, options, unique_key, unique_active, not_before, total, checked,
                  n_ok, n_broken, n_error, invalid, created_at, sealed_at, finished_at)
VALUES (1, 'million', 'completed', 2, '\x', 'k1', false, 0, 1000100, 1000000, 985000, 10000, 5000, 100, 0, 0, 1);
INSERT INTO jobs (id, name, state, priority, options, unique_key, unique_active, not_before, created_at)
SELECT g, 'job ' || g, 'completed', 2, '\x', 'k' || g, false, 0, g FROM generate_series(2, 2000) g;
INSERT INTO urls (id, url)
SELECT g, 'http://h' || (g % 32) || '.example/page/' || g FROM generate_series(1, 1000000) g;
INSERT INTO checks (url_id, checked_at, lease_id, kind, status, attempts, response_ms)
SELECT g, 1700000000000 + g, g / 1000 + 1,
       CASE WHEN g % 100 = 0 THEN 'broken' WHEN g % 200 = 1 THEN 'timeout' ELSE 'ok' END,
       CASE WHEN g % 100 = 0 THEN 404 WHEN g % 200 = 1 THEN NULL ELSE 200 END, 1, g % 900
FROM generate_series(1, 1000000) g;
INSERT INTO job_urls (job_id, url_id, host, state, url_order, lease_id, kind)
SELECT 1, url_id, 'h' || (url_id % 32) || '.example', 'done', 0, lease_id, kind FROM checks;
INSERT INTO job_invalid (job_id, seq, input, reason)
SELECT 1, g, 'not a url ' || g, 'relative URL without a base' FROM generate_series(1, 100) g;
INSERT INTO hosts (host, pending, active_leases, max_leases, next_allowed_at)
SELECT 'h' || g || '.example', g * 10, g % 2, 2, 0 FROM generate_series(0, 5000) g;
INSERT INTO job_samples (job_id, at, checked, n_ok, n_redirected, n_broken, n_error)
SELECT 1, g * 2000, g * 100, g * 98, 0, g, g FROM generate_series(1, 10000) g;
ANALYZE;

\echo '== the count of a job\'s failures, no filter'
EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, SUMMARY ON)
SELECT COUNT(*) FROM job_urls ju WHERE ju.job_id = 1 AND ju.failure IN ('broken', 'timeout', 'dns', 'connect', 'tls', 'too_many_redirects', 'redirect_loop', 'blocked', 'failed', 'other');
\echo '== a page of failures, no filter, in submission order (the default; the live view reloads it)'
EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, SUMMARY ON)
WITH p AS MATERIALIZED (SELECT ju.url_id, ju.url_id AS sort_key FROM job_urls ju WHERE ju.job_id = 1 AND ju.failure IN ('broken', 'timeout', 'dns', 'connect', 'tls', 'too_many_redirects', 'redirect_loop', 'blocked', 'failed', 'other')
  ORDER BY sort_key ASC, ju.url_id LIMIT 50 OFFSET 0)
SELECT u.id, u.url, ju.kind, ju.state, c.status, c.checked_at
FROM job_urls ju JOIN p ON p.url_id = ju.url_id JOIN urls u ON u.id = ju.url_id LEFT JOIN checks c
  ON c.url_id = ju.url_id AND c.checked_at = COALESCE(CASE WHEN ju.state = 'done' THEN (SELECT MAX(c2.checked_at)
  FROM checks c2 WHERE c2.url_id = ju.url_id AND c2.lease_id = ju.lease_id) END,
  (SELECT MAX(c2.checked_at) FROM checks c2 WHERE c2.url_id = ju.url_id))
WHERE ju.job_id = 1 ORDER BY p.sort_key ASC, ju.url_id;
\echo '== the same, page 200'
EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, SUMMARY ON)
WITH p AS MATERIALIZED (SELECT ju.url_id, ju.url_id AS sort_key FROM job_urls ju WHERE ju.job_id = 1 AND ju.failure IN ('broken', 'timeout', 'dns', 'connect', 'tls', 'too_many_redirects', 'redirect_loop', 'blocked', 'failed', 'other')
  ORDER BY sort_key ASC, ju.url_id LIMIT 50 OFFSET 9950)
SELECT u.id, u.url, ju.kind, ju.state, c.status, c.checked_at
FROM job_urls ju JOIN p ON p.url_id = ju.url_id JOIN urls u ON u.id = ju.url_id LEFT JOIN checks c
  ON c.url_id = ju.url_id AND c.checked_at = COALESCE(CASE WHEN ju.state = 'done' THEN (SELECT MAX(c2.checked_at)
  FROM checks c2 WHERE c2.url_id = ju.url_id AND c2.lease_id = ju.lease_id) END,
  (SELECT MAX(c2.checked_at) FROM checks c2 WHERE c2.url_id = ju.url_id))
WHERE ju.job_id = 1 ORDER BY p.sort_key ASC, ju.url_id;
\echo '== sorted by URL (on demand), page 200'
EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, SUMMARY ON)
WITH p AS MATERIALIZED (SELECT ju.url_id, u.url || '' AS sort_key FROM job_urls ju JOIN urls u ON u.id = ju.url_id WHERE ju.job_id = 1 AND ju.failure IN ('broken', 'timeout', 'dns', 'connect', 'tls', 'too_many_redirects', 'redirect_loop', 'blocked', 'failed', 'other')
  ORDER BY sort_key ASC, ju.url_id LIMIT 50 OFFSET 9950)
SELECT u.id, u.url, ju.kind, ju.state, c.status, c.checked_at
FROM job_urls ju JOIN p ON p.url_id = ju.url_id JOIN urls u ON u.id = ju.url_id LEFT JOIN checks c
  ON c.url_id = ju.url_id AND c.checked_at = COALESCE(CASE WHEN ju.state = 'done' THEN (SELECT MAX(c2.checked_at)
  FROM checks c2 WHERE c2.url_id = ju.url_id AND c2.lease_id = ju.lease_id) END,
  (SELECT MAX(c2.checked_at) FROM checks c2 WHERE c2.url_id = ju.url_id))
WHERE ju.job_id = 1 ORDER BY p.sort_key ASC, ju.url_id;
\echo '== broken only, status 404, one host, by status, page 20'
EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, SUMMARY ON)
WITH p AS MATERIALIZED (SELECT ju.url_id, (SELECT c.status FROM checks c WHERE c.url_id = ju.url_id ORDER BY c.checked_at DESC LIMIT 1) AS sort_key FROM job_urls ju WHERE ju.job_id = 1 AND ju.failure IN ('broken') AND (SELECT c.status FROM checks c WHERE c.url_id = ju.url_id ORDER BY c.checked_at DESC LIMIT 1) = 404 AND ju.host = 'h4.example'
  ORDER BY sort_key DESC, ju.url_id LIMIT 50 OFFSET 950)
SELECT u.id, u.url, ju.kind, ju.state, c.status, c.checked_at
FROM job_urls ju JOIN p ON p.url_id = ju.url_id JOIN urls u ON u.id = ju.url_id LEFT JOIN checks c
  ON c.url_id = ju.url_id AND c.checked_at = COALESCE(CASE WHEN ju.state = 'done' THEN (SELECT MAX(c2.checked_at)
  FROM checks c2 WHERE c2.url_id = ju.url_id AND c2.lease_id = ju.lease_id) END,
  (SELECT MAX(c2.checked_at) FROM checks c2 WHERE c2.url_id = ju.url_id))
WHERE ju.job_id = 1 ORDER BY p.sort_key DESC, ju.url_id;

\echo '== search within the failures'
EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, SUMMARY ON)
SELECT COUNT(*) FROM job_urls ju JOIN urls u ON u.id = ju.url_id WHERE ju.job_id = 1
  AND ju.failure IN ('broken', 'timeout') AND u.url LIKE '%/page/12%' ESCAPE '\';

\echo '== invalid entries (after the URL failures)'
EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, SUMMARY ON)
SELECT seq, input, reason FROM job_invalid WHERE job_id = 1 ORDER BY seq LIMIT 50 OFFSET 0;

\echo '== the jobs list (live view)'
EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, SUMMARY ON)
SELECT * FROM jobs WHERE id < 9223372036854775807 ORDER BY id DESC LIMIT 50;

\echo '== a job (live view)'
EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, SUMMARY ON)
SELECT * FROM jobs WHERE id = 1;

\echo '== the chart samples'
EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, SUMMARY ON)
SELECT at, checked, n_ok, n_redirected, n_broken, n_error FROM job_samples WHERE job_id = 1 ORDER BY at DESC LIMIT 2000;

\echo '== the hosts page'
EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, SUMMARY ON)
SELECT host, pending, active_leases, max_leases, next_allowed_at, holder FROM hosts
WHERE pending > 0 OR active_leases > 0 OR next_allowed_at > 1700000000000
ORDER BY active_leases DESC, pending DESC, host LIMIT 500;

\echo '== a URL page (its history)'
EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, SUMMARY ON)
SELECT checked_at, kind, status FROM checks WHERE url_id = (SELECT id FROM urls WHERE url = 'http://h4.example/page/500')
ORDER BY checked_at DESC LIMIT 200;
