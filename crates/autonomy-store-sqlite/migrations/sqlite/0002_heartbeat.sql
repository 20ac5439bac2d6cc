-- 0002: a one-row table that /v1/ready writes to after a storage fault, to prove the store
-- is writable again.
CREATE TABLE heartbeat (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    at_us INTEGER NOT NULL
) STRICT;
