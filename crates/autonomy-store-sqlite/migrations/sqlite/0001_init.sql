-- 0001: plans, the audit outbox/index, tokens, idempotency records.
-- Applied migrations are never edited; add 0002_… instead.

CREATE TABLE plans (
    pk               INTEGER PRIMARY KEY,      -- creation order; the list cursor
    id               TEXT    NOT NULL UNIQUE,
    phase            TEXT    NOT NULL,
    phase_changed_us INTEGER NOT NULL,
    last_progress_us INTEGER NOT NULL,
    doc              TEXT    NOT NULL          -- the whole resource as served (JSON)
) STRICT;
CREATE INDEX plans_by_phase ON plans (phase, pk);
CREATE INDEX plans_by_progress ON plans (phase, last_progress_us);

-- Every audit event, sealed into the hash chain inside the transaction of the change it
-- records. `line` is the exact JSON line of the retained store; rows past the retained
-- store's last seq are the outbox that start-up replays.
CREATE TABLE audit_events (
    seq        INTEGER PRIMARY KEY,
    id         TEXT    NOT NULL UNIQUE,
    time_us    INTEGER NOT NULL,
    event_type TEXT    NOT NULL,
    actor      TEXT    NOT NULL,
    resource   TEXT    NOT NULL,
    outcome    TEXT    NOT NULL,
    hash       TEXT    NOT NULL,
    line       TEXT    NOT NULL
) STRICT;
CREATE INDEX audit_by_time ON audit_events (time_us);
CREATE INDEX audit_by_type ON audit_events (event_type, time_us);
CREATE INDEX audit_by_actor ON audit_events (actor, time_us);
CREATE INDEX audit_by_resource ON audit_events (resource, time_us);

CREATE TABLE tokens (
    id         TEXT    PRIMARY KEY,
    hash       TEXT    NOT NULL UNIQUE,        -- blake3 of the secret; the secret is never stored
    operator   TEXT    NOT NULL,
    role       TEXT    NOT NULL,
    created_us INTEGER NOT NULL,
    revoked_us INTEGER
) STRICT;

CREATE TABLE idempotency (
    key         TEXT    PRIMARY KEY,
    fingerprint TEXT    NOT NULL,              -- what the first request was
    reply       TEXT    NOT NULL,              -- its answer, replayed for retries
    created_us  INTEGER NOT NULL
) STRICT;
