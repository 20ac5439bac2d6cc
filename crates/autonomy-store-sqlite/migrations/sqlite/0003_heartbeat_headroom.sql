-- 0003: the readiness probe after a storage fault writes a 256 KiB blob, so that "ready"
-- means there is room for real writes, not only for a one-row update.
ALTER TABLE heartbeat ADD COLUMN headroom BLOB;
