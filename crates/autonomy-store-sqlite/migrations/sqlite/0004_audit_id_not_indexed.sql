-- 0004: event ids are 80-bit random and never looked up, so the UNIQUE index on them only cost
-- write amplification (measured by the benchmark: ~25% of the writer's page writes). Rebuild
-- the table without it; the secondary indexes the queries use stay.
CREATE TABLE audit_events_new (
    seq        INTEGER PRIMARY KEY,
    id         TEXT    NOT NULL,
    time_us    INTEGER NOT NULL,
    event_type TEXT    NOT NULL,
    actor      TEXT    NOT NULL,
    resource   TEXT    NOT NULL,
    outcome    TEXT    NOT NULL,
    hash       TEXT    NOT NULL,
    line       TEXT    NOT NULL
) STRICT;
INSERT INTO audit_events_new SELECT seq, id, time_us, event_type, actor, resource, outcome, hash, line FROM audit_events;
DROP TABLE audit_events;
ALTER TABLE audit_events_new RENAME TO audit_events;
CREATE INDEX audit_by_time ON audit_events (time_us);
CREATE INDEX audit_by_type ON audit_events (event_type, time_us);
CREATE INDEX audit_by_actor ON audit_events (actor, time_us);
CREATE INDEX audit_by_resource ON audit_events (resource, time_us);
