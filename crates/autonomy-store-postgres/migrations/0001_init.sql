-- The PostgreSQL schema, in one migration: the same tables as SQLite's 0001–0006 (SPEC §7:
-- one contract, two stores), in PostgreSQL's types. Times are microseconds since the epoch.

CREATE TABLE plans (
    pk               BIGSERIAL PRIMARY KEY,    -- creation order; the list cursor
    id               TEXT   NOT NULL UNIQUE,
    phase            TEXT   NOT NULL,
    generation       BIGINT NOT NULL,
    phase_changed_us BIGINT NOT NULL,
    last_progress_us BIGINT NOT NULL,
    doc              TEXT   NOT NULL           -- the whole resource as served (JSON)
);
CREATE INDEX plans_by_phase ON plans (phase, pk);
CREATE INDEX plans_by_progress ON plans (phase, last_progress_us);

-- The one audit chain of every replica: events are sealed under a row lock on audit_head,
-- so seq is gap-free in commit order (SPEC §7).
CREATE TABLE audit_events (
    seq        BIGINT PRIMARY KEY,
    id         TEXT   NOT NULL,
    time_us    BIGINT NOT NULL,
    event_type TEXT   NOT NULL,
    actor      TEXT   NOT NULL,
    resource   TEXT   NOT NULL,
    outcome    TEXT   NOT NULL,
    hash       TEXT   NOT NULL,
    line       TEXT   NOT NULL
);
CREATE INDEX audit_by_time ON audit_events (time_us);
CREATE INDEX audit_by_type ON audit_events (event_type, time_us);
CREATE INDEX audit_by_actor ON audit_events (actor, time_us);
CREATE INDEX audit_by_resource ON audit_events (resource, time_us);

CREATE TABLE audit_head (
    id      INT    PRIMARY KEY CHECK (id = 1),
    seq     BIGINT NOT NULL,
    hash    TEXT   NOT NULL,
    time_us BIGINT NOT NULL
);

CREATE TABLE tokens (
    id         TEXT   PRIMARY KEY,
    hash       TEXT   NOT NULL UNIQUE,         -- blake3 of the secret; the secret is never stored
    operator   TEXT   NOT NULL,
    role       TEXT   NOT NULL,
    created_us BIGINT NOT NULL,
    revoked_us BIGINT
);

CREATE TABLE idempotency (
    actor       TEXT   NOT NULL,
    key         TEXT   NOT NULL,
    fingerprint TEXT   NOT NULL,
    reply       TEXT   NOT NULL,
    created_us  BIGINT NOT NULL,
    PRIMARY KEY (actor, key)
);
CREATE INDEX idempotency_by_age ON idempotency (created_us);

CREATE TABLE devices (
    id               TEXT   PRIMARY KEY,
    token_hash       TEXT   UNIQUE,            -- blake3 of the device token; NULL: none
    labels           JSONB  NOT NULL,
    installed_digest TEXT,
    boot_id          TEXT,
    last_seen_us     BIGINT,
    created_us       BIGINT NOT NULL,
    revoked_us       BIGINT,
    plan_id          TEXT,                     -- the plan of its latest assignment
    revision         BIGINT NOT NULL DEFAULT 0 -- rises whenever what a poll shows changes
);
CREATE INDEX devices_by_plan_seen ON devices (plan_id, (coalesce(last_seen_us, 0)));
CREATE INDEX devices_by_labels ON devices USING gin (labels jsonb_path_ops);

CREATE TABLE enroll_keys (
    id         TEXT   PRIMARY KEY,
    hash       TEXT   NOT NULL UNIQUE,
    labels     JSONB  NOT NULL,
    max_uses   BIGINT NOT NULL,
    uses       BIGINT NOT NULL DEFAULT 0,
    created_us BIGINT NOT NULL,
    expires_us BIGINT NOT NULL
);

CREATE TABLE engine_plans (
    plan_id          TEXT    PRIMARY KEY,
    target_digest    TEXT    NOT NULL,
    artifact_ref     TEXT    NOT NULL,
    reboot_required  BOOLEAN NOT NULL,
    device_timeout_s BIGINT  NOT NULL,
    doc              TEXT    NOT NULL          -- autonomy_core::engine::EnginePlan (JSON)
);

CREATE TABLE assignments (
    plan_id            TEXT   NOT NULL,
    device_id          TEXT   NOT NULL,
    stage              BIGINT NOT NULL,
    ord                BIGINT NOT NULL,        -- dispatch order within the plan
    state              TEXT   NOT NULL,
    attempt            BIGINT NOT NULL,
    last_seq           BIGINT NOT NULL,
    step               TEXT,
    boot_id_at_install TEXT,
    installed_digest   TEXT,
    previous_digest    TEXT,
    dispatched_at_us   BIGINT,
    updated_at_us      BIGINT NOT NULL,
    state_since_us     BIGINT NOT NULL,
    message            TEXT   NOT NULL,
    PRIMARY KEY (plan_id, device_id)
);
CREATE INDEX assignments_by_state ON assignments (plan_id, state, stage, ord);
CREATE INDEX assignments_by_ord ON assignments (plan_id, ord);
CREATE INDEX assignments_by_device ON assignments (device_id);
CREATE INDEX assignments_in_flight ON assignments (plan_id, dispatched_at_us)
    WHERE state IN ('dispatched','downloading','installing','rebooting','verifying');
CREATE INDEX assignments_in_flight_since ON assignments (plan_id, state_since_us)
    WHERE state IN ('dispatched','downloading','installing','rebooting','verifying');

CREATE TABLE stage_counters (
    plan_id TEXT   NOT NULL,
    stage   BIGINT NOT NULL,
    state   TEXT   NOT NULL,
    n       BIGINT NOT NULL,
    PRIMARY KEY (plan_id, stage, state)
);

CREATE TABLE device_reports (
    id        BIGSERIAL PRIMARY KEY,
    device_id TEXT   NOT NULL,
    plan_id   TEXT   NOT NULL,
    attempt   BIGINT NOT NULL,
    seq       BIGINT NOT NULL,
    state     TEXT   NOT NULL,
    result    TEXT   NOT NULL,
    body      TEXT   NOT NULL,                 -- the report as received (JSON)
    at_us     BIGINT NOT NULL
);
CREATE INDEX device_reports_by_device ON device_reports (device_id, id);

-- The fenced leader (SPEC §7): the epoch rises at each acquisition of the advisory lock;
-- every promoter write checks it in its own transaction.
CREATE TABLE leader (
    id       INT    PRIMARY KEY CHECK (id = 1),
    epoch    BIGINT NOT NULL,
    replica  TEXT   NOT NULL,
    since_us BIGINT NOT NULL
);
