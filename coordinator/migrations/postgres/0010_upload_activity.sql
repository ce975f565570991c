-- When a receiving job's upload last showed it is alive (ms): the coordinator taking the upload
-- touches it while the stream lasts, so an upload is judged abandoned by inactivity, not by age.
-- NULL: never touched (the creation time counts).
ALTER TABLE jobs ADD COLUMN touched_at BIGINT;
