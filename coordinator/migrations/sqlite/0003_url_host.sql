-- A URL's host is part of the URL, and every job's row of it (`job_urls.host`) carries it for the
-- frontier; nothing reads the copy in `urls`.
ALTER TABLE urls DROP COLUMN host;
