-- A URL's latest state is its newest check: read from the history through its primary key
-- (url_id, checked_at) instead of copied into `urls` by every ingest. A result is written once, and
-- the latest state is monotonic by construction. Every state the dropped columns held came from a
-- `checks` row, so nothing is lost.
ALTER TABLE urls DROP COLUMN kind;
ALTER TABLE urls DROP COLUMN status;
ALTER TABLE urls DROP COLUMN final_url;
ALTER TABLE urls DROP COLUMN redirects;
ALTER TABLE urls DROP COLUMN attempts;
ALTER TABLE urls DROP COLUMN response_ms;
ALTER TABLE urls DROP COLUMN content_type;
ALTER TABLE urls DROP COLUMN content_length;
ALTER TABLE urls DROP COLUMN error;
ALTER TABLE urls DROP COLUMN checked_at;
-- Each URL's latest state, for reading by hand and in reports.
CREATE VIEW latest_checks AS
SELECT u.id AS url_id, u.url, c.checked_at, c.lease_id, c.kind, c.status, c.final_url, c.redirects,
       c.attempts, c.response_ms, c.content_type, c.content_length, c.error
FROM urls u
JOIN checks c ON c.url_id = u.id
    AND c.checked_at = (SELECT MAX(c2.checked_at) FROM checks c2 WHERE c2.url_id = u.id);
