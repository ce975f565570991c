-- The two hottest writes are a job's URLs at submission and the results at ingest. A foreign key costs
-- a trigger and a row lock per inserted row, which is most of the price of those inserts; the store
-- writes these ids only from rows it read in the same transaction and checks reported URL ids as a set
-- (an unknown id fails the whole batch), so the keys guard nothing the code does not.
ALTER TABLE checks DROP CONSTRAINT checks_url_id_fkey;
ALTER TABLE job_urls DROP CONSTRAINT job_urls_job_id_fkey;
ALTER TABLE job_urls DROP CONSTRAINT job_urls_url_id_fkey;
-- Every check rewrites its URL's latest state; room on the page lets that be a heap-only update that
-- touches neither of the table's indexes.
ALTER TABLE urls SET (fillfactor = 70);
-- URLs and host names are ASCII once normalized (punycode, percent-encoding): byte order is the
-- right order, and it spares every index comparison a trip through the locale's collation.
ALTER TABLE urls ALTER COLUMN url TYPE TEXT COLLATE "C", ALTER COLUMN host TYPE TEXT COLLATE "C";
ALTER TABLE job_urls ALTER COLUMN host TYPE TEXT COLLATE "C";
ALTER TABLE hosts ALTER COLUMN host TYPE TEXT COLLATE "C";
ALTER TABLE leases ALTER COLUMN host TYPE TEXT COLLATE "C";
