-- 0006: the rollout engine (SPEC §8, §9): the device registry, enroll keys, each plan's engine
-- record, one assignment per (plan, device), per-stage counters kept in the same transaction as
-- the assignments they count (a promoter tick reads O(stages), never O(devices)), and the last
-- reports of each device (kept here, not in the audit chain).

CREATE TABLE devices (
    id               TEXT    PRIMARY KEY,
    token_hash       TEXT    UNIQUE,            -- blake3 of the device token; NULL: none
    labels           TEXT    NOT NULL,          -- JSON object
    installed_digest TEXT,
    boot_id          TEXT,
    last_seen_us     INTEGER,
    created_us       INTEGER NOT NULL,
    revoked_us       INTEGER,
    plan_id          TEXT,                      -- the plan of its latest assignment
    revision         INTEGER NOT NULL DEFAULT 0 -- rises whenever what a poll shows changes
) STRICT;
-- A plan's devices by their last poll (never polled: 0): the stuck scan's silent devices.
CREATE INDEX devices_by_plan_seen ON devices (plan_id, ifnull(last_seen_us, 0));

CREATE TABLE enroll_keys (
    id         TEXT    PRIMARY KEY,
    hash       TEXT    NOT NULL UNIQUE,
    labels     TEXT    NOT NULL,
    max_uses   INTEGER NOT NULL,
    uses       INTEGER NOT NULL DEFAULT 0,
    created_us INTEGER NOT NULL,
    expires_us INTEGER NOT NULL
) STRICT;

CREATE TABLE engine_plans (
    plan_id          TEXT    PRIMARY KEY,
    target_digest    TEXT    NOT NULL,
    artifact_ref     TEXT    NOT NULL,
    reboot_required  INTEGER NOT NULL,
    device_timeout_s INTEGER NOT NULL,
    doc              TEXT    NOT NULL           -- autonomy_core::engine::EnginePlan (JSON)
) STRICT;

CREATE TABLE assignments (
    plan_id            TEXT    NOT NULL,
    device_id          TEXT    NOT NULL,
    stage              INTEGER NOT NULL,
    ord                INTEGER NOT NULL,        -- dispatch order within the plan
    state              TEXT    NOT NULL,
    attempt            INTEGER NOT NULL,
    last_seq           INTEGER NOT NULL,
    step               TEXT,
    boot_id_at_install TEXT,
    installed_digest   TEXT,
    previous_digest    TEXT,
    dispatched_at_us   INTEGER,
    updated_at_us      INTEGER NOT NULL,
    state_since_us     INTEGER NOT NULL,
    message            TEXT    NOT NULL,
    PRIMARY KEY (plan_id, device_id)
) STRICT;
CREATE INDEX assignments_by_state ON assignments (plan_id, state, stage, ord);
CREATE INDEX assignments_by_ord ON assignments (plan_id, ord);
CREATE INDEX assignments_by_device ON assignments (device_id);
-- The devices in flight by dispatch time: what a promoter tick scans for time-outs (the
-- condition is the one every in-flight query writes, so the planner can use it).
CREATE INDEX assignments_in_flight ON assignments (plan_id, dispatched_at_us)
    WHERE state IN ('dispatched','downloading','installing','rebooting','verifying');
-- The devices in flight by the time of their last change: the stuck scan's non-converging
-- devices, without visiting the ones that moved lately.
CREATE INDEX assignments_in_flight_since ON assignments (plan_id, state_since_us)
    WHERE state IN ('dispatched','downloading','installing','rebooting','verifying');

CREATE TABLE stage_counters (
    plan_id TEXT    NOT NULL,
    stage   INTEGER NOT NULL,
    state   TEXT    NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (plan_id, stage, state)
) STRICT;

CREATE TABLE device_reports (
    id        INTEGER PRIMARY KEY,
    device_id TEXT    NOT NULL,
    plan_id   TEXT    NOT NULL,
    attempt   INTEGER NOT NULL,
    seq       INTEGER NOT NULL,
    state     TEXT    NOT NULL,
    result    TEXT    NOT NULL,
    body      TEXT    NOT NULL,                 -- the report as received (JSON)
    at_us     INTEGER NOT NULL
) STRICT;
CREATE INDEX device_reports_by_device ON device_reports (device_id, id);

-- The leader epoch: raised by every start of the writer (one writer per data dir, under its
-- lock); promoter writes carry the epoch they read and are refused under another.
CREATE TABLE leader (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    epoch INTEGER NOT NULL
) STRICT;
