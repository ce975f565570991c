-- The worker that holds a host's latest lease. A polite host is leased to one worker at a time; that
-- worker may take the host's next lease while its current one only waits on retries (its own gate
-- keeps the host's spacing), so a failing page's back-off never idles its host.
ALTER TABLE hosts ADD COLUMN holder TEXT;
