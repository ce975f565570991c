-- A polite host's leases hold about a lease span of work at its pace (one request per second: five
-- URLs for five seconds), so an urgent job waits seconds for the lease in progress, and a worker's
-- credits spread over many slow hosts instead of a few. 0: no bound of the host's own.
ALTER TABLE hosts ADD COLUMN lease_urls INTEGER NOT NULL DEFAULT 0;
