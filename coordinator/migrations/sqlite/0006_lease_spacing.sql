-- The spacing a lease's politeness asks between two requests to its host: when the lease ends (its
-- last URL reported, cancelled or expired), the host's next lease waits that long, so that two
-- workers taking turns on one host keep to its interval.
ALTER TABLE leases ADD COLUMN spacing_ms BIGINT NOT NULL DEFAULT 0;
