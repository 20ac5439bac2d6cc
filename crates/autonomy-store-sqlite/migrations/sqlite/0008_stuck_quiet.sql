-- 0008 (issue 13): the stuck scan's silent and non-converging counts without joining each
-- in-flight assignment to its device row, and narrower indexes for device reports.
--
-- `assignments.seen_us` mirrors `devices.last_seen_us` on the device's current assignment (the
-- one `devices.plan_id` names; an in-flight assignment is always the current one, since an
-- unsettled assignment holds its device, SPEC §8.2). A trigger keeps it in the same
-- transaction as every change of `last_seen_us` or `plan_id`, so it cannot disagree with the
-- device row, not even after a SIGKILL. What the scan asks of a device is then on the
-- assignment row: its "quiet since" time `coalesce(seen_us, dispatched_at_us, 0)` (the last
-- poll, or the dispatch if it never polled) and `state_since_us`, both in one partial index of
-- the in-flight devices, so each count is a walk of index entries of one plan, never a table or
-- device lookup.
ALTER TABLE assignments ADD COLUMN seen_us INTEGER;

UPDATE assignments SET seen_us = (
    SELECT d.last_seen_us FROM devices d
    WHERE d.id = assignments.device_id AND d.plan_id = assignments.plan_id
);

CREATE TRIGGER assignments_seen AFTER UPDATE OF last_seen_us, plan_id ON devices
WHEN NEW.plan_id IS NOT NULL
    AND (NEW.last_seen_us IS NOT OLD.last_seen_us OR NEW.plan_id IS NOT OLD.plan_id)
BEGIN
    UPDATE assignments SET seen_us = NEW.last_seen_us
    WHERE plan_id = NEW.plan_id AND device_id = NEW.id;
END;

-- The in-flight devices by "quiet since": the silent ones are the range `quiet <= cut` (count,
-- and the sample by device id, covered), walked without visiting the devices that poll.
CREATE INDEX assignments_in_flight_quiet
    ON assignments (plan_id, coalesce(seen_us, dispatched_at_us, 0), state_since_us, device_id)
    WHERE (state = 'dispatched' OR state = 'downloading' OR state = 'installing'
        OR state = 'rebooting' OR state = 'verifying');

-- The in-flight devices by their last change, in dispatch order among equal times (as before):
-- the devices that moved after the cut-off are the range `state_since_us > cut-off`, and the
-- non-converging sample walks it from the oldest, skipping silent devices inside the index.
-- Replaces `assignments_in_flight_since (plan_id, state_since_us)`.
DROP INDEX assignments_in_flight_since;
CREATE INDEX assignments_in_flight_since
    ON assignments (plan_id, state_since_us, ord, coalesce(seen_us, dispatched_at_us, 0))
    WHERE (state = 'dispatched' OR state = 'downloading' OR state = 'installing'
        OR state = 'rebooting' OR state = 'verifying');

-- Only the old silent query read this one, and every heartbeat flush moved its entries.
DROP INDEX devices_by_plan_seen;

-- Assignments by state, only for the states outside flight (the queries that read it name
-- `pending`, `failed`, `drifted`, ... and carry the same `NOT IN` term so the planner can use
-- it). A report moving a device between in-flight states (the most common write of a rollout)
-- then changes no entry here.
DROP INDEX assignments_by_state;
CREATE INDEX assignments_by_state ON assignments (plan_id, state, stage, ord)
    WHERE NOT (state = 'dispatched' OR state = 'downloading' OR state = 'installing'
        OR state = 'rebooting' OR state = 'verifying');

-- The in-flight devices by dispatch time (the promoter's time-out scan), as in 0006 but with its
-- condition spelled as comparisons like the others: an `IN` list of more than two constants
-- makes SQLite build a temporary b-tree each time a statement runs, and every update of an
-- assignment evaluates the condition of each partial index (a fifth of a report's writer time).
DROP INDEX assignments_in_flight;
CREATE INDEX assignments_in_flight ON assignments (plan_id, dispatched_at_us)
    WHERE (state = 'dispatched' OR state = 'downloading' OR state = 'installing'
        OR state = 'rebooting' OR state = 'verifying');
