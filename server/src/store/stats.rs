//! Figures for the stats and consistency routes.

use sqlx::Row;

use super::*;

impl Store {
    /// Row counts of devices, orders and cmd_logs.
    pub async fn table_counts(&self) -> Result<(i64, i64, i64)> {
        let r = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM devices) AS d, (SELECT COUNT(*) FROM orders) AS o, \
             (SELECT COUNT(*) FROM cmd_logs) AS c",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((r.try_get("d")?, r.try_get("o")?, r.try_get("c")?))
    }

    pub async fn orders_by_status(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM orders GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }

    pub async fn online_count(&self) -> Result<i64> {
        Ok(
            sqlx::query("SELECT COUNT(*) AS n FROM devices WHERE online = 1")
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?,
        )
    }

    /// (backlog, delivered, failed attempts) of the outbox.
    pub async fn outbox_figures(&self) -> Result<(i64, i64, i64)> {
        let r = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM outbox WHERE status = 'pending') AS b, \
             (SELECT COUNT(*) FROM outbox WHERE status = 'delivered') AS d, \
             (SELECT COUNT(*) FROM outbox WHERE status = 'dead') AS f",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((r.try_get("b")?, r.try_get("d")?, r.try_get("f")?))
    }

    /// Events of one order, oldest first (type names), for tests and diagnostics.
    pub async fn event_types_of_order(&self, order_no: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT event_type FROM outbox WHERE order_no = $1 ORDER BY id")
            .bind(order_no)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("event_type")?))
            .collect()
    }

    /// How many end reports arrived for an order, and how many were applied.
    pub async fn end_report_counts(&self, order_no: &str) -> Result<(i64, i64)> {
        let r = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM end_reports WHERE order_no = $1) AS n, \
             (SELECT COUNT(*) FROM end_reports WHERE order_no = $1 AND applied = 1) AS a",
        )
        .bind(order_no)
        .fetch_one(&self.pool)
        .await?;
        Ok((r.try_get("n")?, r.try_get("a")?))
    }

    pub async fn settlement_count(&self, order_no: &str) -> Result<i64> {
        Ok(
            sqlx::query("SELECT COUNT(*) AS n FROM settlements WHERE order_no = $1")
                .bind(order_no)
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?,
        )
    }

    /// Orders whose device is unknown.
    pub async fn orphan_orders(&self) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT order_no FROM orders o WHERE NOT EXISTS \
             (SELECT 1 FROM devices d WHERE d.device_id = o.device_id) ORDER BY id LIMIT 1000",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("order_no")?))
            .collect()
    }

    /// Pending orders past their TTL, charging orders past their target plus `grace_ms`.
    pub async fn stale_orders(&self, now_ms: i64, grace_ms: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT order_no FROM orders WHERE \
             (status = 'pending' AND expires_at_ms IS NOT NULL AND expires_at_ms + 60000 < $1) OR \
             (status = 'charging' AND target_duration > 0 AND \
              COALESCE(started_at_ms, created_at_ms) + target_duration * 1000 + $2 < $1) \
             ORDER BY id LIMIT 1000",
        )
        .bind(now_ms)
        .bind(grace_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("order_no")?))
            .collect()
    }

    /// (sent, matched) downlink commands.
    pub async fn command_match(&self) -> Result<(i64, i64)> {
        let r = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM cmd_logs WHERE attempts > 0) AS s, \
             (SELECT COUNT(*) FROM cmd_logs WHERE attempts > 0 AND status IN ('acked', 'refused')) AS m",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((r.try_get("s")?, r.try_get("m")?))
    }

    /// Ports stored as charging without an active order, or idle with one charging.
    pub async fn port_mismatches(&self) -> Result<Vec<(String, i64, String, String)>> {
        let rows = sqlx::query(
            "SELECT p.device_id, p.port_no, p.status, o.status AS order_status FROM ports p \
             LEFT JOIN orders o ON o.device_id = p.device_id AND o.port_no = p.port_no \
             AND o.status IN ('pending', 'charging') \
             JOIN devices d ON d.device_id = p.device_id AND d.online = 1 \
             WHERE (p.status = 'charging' AND o.status IS NULL) \
             OR (p.status IN ('idle', 'plugged') AND o.status = 'charging') LIMIT 1000",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let order_status: Option<String> = r.try_get("order_status")?;
                Ok((
                    r.try_get("device_id")?,
                    r.try_get("port_no")?,
                    order_status.unwrap_or_else(|| "none".into()),
                    r.try_get("status")?,
                ))
            })
            .collect()
    }
}
