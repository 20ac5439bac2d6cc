-- 0005: Idempotency-Keys are scoped per actor (one operator cannot squat another's key), expire
-- after 24 h (an index by age lets the writer purge them), and never keep a secret: the answers
-- of token creations lose their `token` on the way over (json_remove), and the old table goes
-- with secure_delete on, so the secrets' bytes are overwritten. Rows from before have no actor
-- (''); they match any actor until they expire.
PRAGMA secure_delete = ON;
CREATE TABLE idempotency_v2 (
    actor       TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    reply       TEXT    NOT NULL,
    created_us  INTEGER NOT NULL,
    PRIMARY KEY (actor, key)
) STRICT;
CREATE INDEX idempotency_by_age ON idempotency_v2 (created_us);
INSERT INTO idempotency_v2 (actor, key, fingerprint, reply, created_us)
    SELECT '', key, fingerprint,
           CASE WHEN json_extract(reply, '$.kind') = 'token_created'
                THEN json_remove(reply, '$.body.token') ELSE reply END,
           created_us
    FROM idempotency;
DROP TABLE idempotency;
