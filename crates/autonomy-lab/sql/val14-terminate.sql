-- VAL14-04: end the leader's lock session ($1: its backend pid, digits only).
SELECT pg_terminate_backend($1)
