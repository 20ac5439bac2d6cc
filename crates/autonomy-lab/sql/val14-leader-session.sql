-- VAL14-04: the backend holding the control plane's leader lock (autonomy-store-postgres
-- LEADER_LOCK 0x6175746f6e6f0002: pg_locks shows a bigint advisory key as classid = high half,
-- objid = low half), with the client it serves.
SELECT l.pid, coalesce(host(a.client_addr), 'local'), coalesce(a.client_port, 0)
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory'
  AND l.granted
  AND a.application_name = 'autonomy'
  AND l.classid = 1635087471
  AND l.objid = 1852768258
