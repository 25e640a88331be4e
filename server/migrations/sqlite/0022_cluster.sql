-- Several gateway instances on one PostgreSQL (issue #17). SQLite stays single-instance: the
-- tables exist so both schemas match, but no SQLite gateway reads or writes them.
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

CREATE TABLE cluster_leases (
    device_id      TEXT PRIMARY KEY,
    owner          TEXT NOT NULL,
    conn_id        BIGINT NOT NULL,
    acquired_at_ms BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL
);
CREATE INDEX cluster_leases_by_owner ON cluster_leases (owner);
