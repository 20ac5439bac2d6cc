-- 0007: robot-aware gates (SPEC §8.7). The conditions of each device's last poll, flushed with
-- its heartbeat (JSON object; NULL: the device never sent any, or its last poll sent none), so
-- the promoter can match them against `policy.require` and `GET /v1/devices/{id}` shows them.
-- `waiting_ready` is one more assignment state (no schema change: states are text).
ALTER TABLE devices ADD COLUMN conditions TEXT;
