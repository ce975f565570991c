-- Job options are domain data stored as JSON (the fields of `JobOptions`), not encoded protobuf.
-- Jobs stored before carry no readable options: they get the defaults, which are the polite ones.
ALTER TABLE jobs DROP COLUMN options;
ALTER TABLE jobs ADD COLUMN options TEXT NOT NULL DEFAULT '{}';
