//! Several instances on one PostgreSQL (issue #17): the instance registry, device session
//! leases and the notifications that wake a device's owner. PostgreSQL only (the statements
//! use `FOR UPDATE`, CTEs with `INSERT … RETURNING` and `pg_notify`); see `crate::cluster`.

use sqlx::Row;

use super::*;

/// An instance row.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    pub instance_id: String,
    pub http_addr: String,
    pub device_addr: String,
    pub started_at_ms: i64,
    pub heartbeat_at_ms: i64,
    pub stopped_at_ms: Option<i64>,
    pub sessions: i64,
    pub rss_bytes: Option<i64>,
}

/// The lease a device had before a new connection took it.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviousLease {
    pub owner: String,
    pub conn_id: i64,
    pub expires_at_ms: i64,
}

/// Key of the webhook dispatcher's advisory lock (`outbox.rs`), to tell who holds it.
const DISPATCH_LOCK_KEY: i64 = 7_055_001;

impl Store {
    /// Registers (or re-registers, after a restart with the same ID) an instance.
    pub async fn register_instance(
        &self,
        id: &str,
        http_addr: &str,
        device_addr: &str,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO cluster_instances (instance_id, http_addr, device_addr, started_at_ms, \
             heartbeat_at_ms, stopped_at_ms, sessions) VALUES ($1, $2, $3, $4, $4, NULL, 0) \
             ON CONFLICT (instance_id) DO UPDATE SET http_addr = $2, device_addr = $3, \
             started_at_ms = $4, heartbeat_at_ms = $4, stopped_at_ms = NULL, sessions = 0",
        )
        .bind(id)
        .bind(http_addr)
        .bind(device_addr)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One liveness beat: the instance row and, in one statement, every lease it holds, up to
    /// `expires_at_ms`. Returns the leases renewed.
    pub async fn beat(
        &self,
        id: &str,
        now_ms: i64,
        expires_at_ms: i64,
        sessions: i64,
        rss_bytes: Option<i64>,
    ) -> Result<u64> {
        sqlx::query(
            "UPDATE cluster_instances SET heartbeat_at_ms = $2, sessions = $3, rss_bytes = $4 \
             WHERE instance_id = $1",
        )
        .bind(id)
        .bind(now_ms)
        .bind(sessions)
        .bind(rss_bytes)
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query("UPDATE cluster_leases SET expires_at_ms = $2 WHERE owner = $1")
                .bind(id)
                .bind(expires_at_ms)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// A graceful stop: the instance's leases expire now (any live instance, or the next
    /// connection, takes them) and its row says it stopped.
    pub async fn instance_stopped(&self, id: &str, now_ms: i64) -> Result<u64> {
        let n = sqlx::query("UPDATE cluster_leases SET expires_at_ms = $2 - 1 WHERE owner = $1")
            .bind(id)
            .bind(now_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        sqlx::query(
            "UPDATE cluster_instances SET stopped_at_ms = $2, heartbeat_at_ms = $2, sessions = 0 \
             WHERE instance_id = $1",
        )
        .bind(id)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(n)
    }

    /// A connection of this instance identified the device: the lease is its own now,
    /// whoever held it. Returns the previous lease when another instance (or another
    /// connection) held it, so that its holder can be told to close.
    pub async fn acquire_lease(
        &self,
        device_id: &str,
        owner: &str,
        conn_id: u64,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<Option<PreviousLease>> {
        let row = sqlx::query(
            "WITH old AS (SELECT owner, conn_id, expires_at_ms FROM cluster_leases \
               WHERE device_id = $1 FOR UPDATE), \
             up AS (INSERT INTO cluster_leases (device_id, owner, conn_id, acquired_at_ms, \
               expires_at_ms) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id) DO UPDATE \
               SET owner = EXCLUDED.owner, conn_id = EXCLUDED.conn_id, \
               acquired_at_ms = EXCLUDED.acquired_at_ms, expires_at_ms = EXCLUDED.expires_at_ms \
               RETURNING device_id) \
             SELECT o.owner, o.conn_id, o.expires_at_ms, (SELECT count(*) FROM up) AS n FROM old o",
        )
        .bind(device_id)
        .bind(owner)
        .bind(conn_id as i64)
        .bind(now_ms)
        .bind(expires_at_ms)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(None);
        };
        let prev = PreviousLease {
            owner: r.try_get("owner")?,
            conn_id: r.try_get("conn_id")?,
            expires_at_ms: r.try_get("expires_at_ms")?,
        };
        Ok((prev.owner != owner || prev.conn_id != conn_id as i64).then_some(prev))
    }

    /// The device went offline on this instance: its lease goes, if this instance holds it.
    /// Returns `Some(owner)` when a live lease of another instance holds the device (then
    /// this instance must not mark it offline), `None` otherwise.
    pub async fn release_lease(
        &self,
        device_id: &str,
        owner: &str,
        now_ms: i64,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "WITH gone AS (DELETE FROM cluster_leases WHERE device_id = $1 AND owner = $2 \
               RETURNING device_id) \
             SELECT owner, (SELECT count(*) FROM gone) AS n FROM cluster_leases \
             WHERE device_id = $1 AND owner <> $2 AND expires_at_ms >= $3",
        )
        .bind(device_id)
        .bind(owner)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("owner")).transpose()?)
    }

    /// The live lease of a device, if any: (owner, connection).
    pub async fn lease_of(&self, device_id: &str, now_ms: i64) -> Result<Option<(String, i64)>> {
        let row = sqlx::query(
            "SELECT owner, conn_id FROM cluster_leases WHERE device_id = $1 AND expires_at_ms >= $2",
        )
        .bind(device_id)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get("owner")?, r.try_get("conn_id")?)))
            .transpose()
    }

    /// Wakes the instance holding the device's live lease, when it is not `me`: `payload` on
    /// its channel. Returns the owner woken.
    pub async fn notify_owner(
        &self,
        device_id: &str,
        me: &str,
        payload: &str,
        now_ms: i64,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "WITH o AS (SELECT owner FROM cluster_leases WHERE device_id = $1 AND owner <> $3 \
               AND expires_at_ms >= $4) \
             SELECT o.owner FROM o, LATERAL pg_notify('pile_' || o.owner, $2)",
        )
        .bind(device_id)
        .bind(payload)
        .bind(me)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get("owner")).transpose()?)
    }

    /// Sends `payload` on the instance's channel.
    pub async fn notify_instance(&self, instance_id: &str, payload: &str) -> Result<()> {
        sqlx::query("SELECT 1 AS sent FROM pg_notify('pile_' || $1, $2)")
            .bind(instance_id)
            .bind(payload)
            .fetch_one(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes the leases nobody holds any more (expired: their owner died or stopped) of
    /// devices still marked online, and, with `unleased`, those online devices that have no
    /// lease at all (a first start on this schema). Returns (device, protocol, last seen s).
    /// Leases of devices already offline are dropped.
    pub async fn claim_orphans(
        &self,
        me: &str,
        now_ms: i64,
        expires_at_ms: i64,
        unleased: bool,
    ) -> Result<Vec<(String, String, Option<i64>)>> {
        sqlx::query(
            "DELETE FROM cluster_leases l USING devices d WHERE d.device_id = l.device_id \
             AND d.online = 0 AND l.expires_at_ms < $1",
        )
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        let rows = sqlx::query(
            "WITH claimed AS (INSERT INTO cluster_leases (device_id, owner, conn_id, \
               acquired_at_ms, expires_at_ms) \
               SELECT d.device_id, $1, 0, $2, $3 FROM devices d WHERE d.online = 1 AND \
               (EXISTS (SELECT 1 FROM cluster_leases l WHERE l.device_id = d.device_id \
                  AND l.expires_at_ms < $2) \
                OR ($4 = 1 AND NOT EXISTS (SELECT 1 FROM cluster_leases l \
                  WHERE l.device_id = d.device_id))) \
               ON CONFLICT (device_id) DO UPDATE SET owner = EXCLUDED.owner, conn_id = 0, \
               acquired_at_ms = EXCLUDED.acquired_at_ms, expires_at_ms = EXCLUDED.expires_at_ms \
               WHERE cluster_leases.expires_at_ms < $2 \
               RETURNING device_id) \
             SELECT d.device_id, d.protocol, d.last_seen_at FROM devices d \
             JOIN claimed c ON c.device_id = d.device_id",
        )
        .bind(me)
        .bind(now_ms)
        .bind(expires_at_ms)
        .bind(i64::from(unleased))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("device_id")?,
                    r.try_get("protocol")?,
                    r.try_get("last_seen_at")?,
                ))
            })
            .collect()
    }

    /// The devices this instance holds a lease for.
    pub async fn leased_by(&self, owner: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT device_id FROM cluster_leases WHERE owner = $1")
            .bind(owner)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("device_id")?)).collect()
    }

    /// Queued commands (not past their TTL) of the devices this instance holds, oldest first:
    /// what a lost notification would have announced.
    pub async fn queued_for_owner(&self, owner: &str, now_ms: i64) -> Result<Vec<CmdRow>> {
        let rows = sqlx::query(
            "SELECT c.id, c.device_id, c.order_no, c.command, c.payload, c.status, c.attempts, \
             c.created_at_ms, c.expires_at_ms, c.sent_at_ms, c.result, c.port_no, c.last_sent_at_ms \
             FROM cmd_logs c \
             WHERE c.status = 'queued' AND (c.expires_at_ms IS NULL OR c.expires_at_ms >= $2) \
             AND EXISTS (SELECT 1 FROM cluster_leases l WHERE l.device_id = c.device_id \
               AND l.owner = $1) ORDER BY c.id LIMIT 1000",
        )
        .bind(owner)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(super::commands::cmd_from_row).collect()
    }

    /// Every instance, newest start first, and the application name of the connection that
    /// holds the webhook dispatcher's advisory lock, if any.
    pub async fn instances(&self) -> Result<(Vec<InstanceRow>, Option<String>)> {
        let rows = sqlx::query(
            "SELECT instance_id, http_addr, device_addr, started_at_ms, heartbeat_at_ms, \
             stopped_at_ms, sessions, rss_bytes FROM cluster_instances \
             ORDER BY started_at_ms DESC, instance_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let list = rows
            .iter()
            .map(|r| {
                Ok(InstanceRow {
                    instance_id: r.try_get("instance_id")?,
                    http_addr: r.try_get("http_addr")?,
                    device_addr: r.try_get("device_addr")?,
                    started_at_ms: r.try_get("started_at_ms")?,
                    heartbeat_at_ms: r.try_get("heartbeat_at_ms")?,
                    stopped_at_ms: r.try_get("stopped_at_ms")?,
                    sessions: r.try_get("sessions")?,
                    rss_bytes: r.try_get("rss_bytes")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let holder = sqlx::query(
            "SELECT a.application_name AS app FROM pg_locks l JOIN pg_stat_activity a \
             ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted \
             AND ((l.classid::bigint << 32) | l.objid::bigint) = $1 LIMIT 1",
        )
        .bind(DISPATCH_LOCK_KEY)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_get::<String, _>("app"))
        .transpose()?;
        Ok((list, holder))
    }
}
