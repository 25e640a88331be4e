-- Several gateway instances on one PostgreSQL (issue #17).
--
-- cluster_instances: one row per gateway instance that ever started on this database, with
-- its liveness (heartbeat_at_ms, renewed every lease period) and where it can be reached.
-- cluster_leases: which instance holds a device's session (owner, its connection ID) and
-- until when (expires_at_ms, renewed in one statement per instance and period). A lease past
-- its expiry belongs to nobody: the next connection, or any live instance's sweep, takes it.
-- Commands stay in cmd_logs (the source of truth); LISTEN/NOTIFY only wakes their owner.
CREATE TABLE cluster_instances (
    instance_id     TEXT PRIMARY KEY,
    http_addr       TEXT NOT NULL,
    device_addr     TEXT NOT NULL,
    started_at_ms   BIGINT NOT NULL,
    heartbeat_at_ms BIGINT NOT NULL,
    stopped_at_ms   BIGINT,
    sessions        BIGINT NOT NULL DEFAULT 0,
    rss_bytes       BIGINT
);

-- Renewals touch only expires_at_ms (not indexed), so they stay heap-only updates.
CREATE TABLE cluster_leases (
    device_id      TEXT PRIMARY KEY,
    owner          TEXT NOT NULL,
    conn_id        BIGINT NOT NULL,
    acquired_at_ms BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL
) WITH (fillfactor = 70);
CREATE INDEX cluster_leases_by_owner ON cluster_leases (owner);
