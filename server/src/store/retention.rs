//! Retention's SQL (#13): deletes in small batches, each statement its own short transaction,
//! so the hot path (reports, deliveries) never waits behind a long delete.
//!
//! Each pass first finds, by binary search over the primary key (a few dozen indexed point
//! reads), the first row written at or after the cutoff; every batch then stays below that
//! id. Row IDs grow with time, so a batch reads only old rows — never the retained window —
//! and needs no index on the time column. The time column is checked as well, so a row is
//! never deleted early.

use sqlx::Row;

use super::{Result, Store};

/// The tables retention prunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainedTable {
    Outbox,
    CmdLogs,
    OrderProgress,
}

/// Row counts of the tables retention keeps flat (tests and diagnostics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetainedCounts {
    pub outbox: i64,
    pub cmd_logs: i64,
    pub order_progress: i64,
    pub orders: i64,
    pub settlements: i64,
}

impl Store {
    /// The smallest ID at or above which `table`'s rows were written at or after `cutoff_ms`
    /// (by `time_col`), assuming IDs grow with time; `0` for an empty table.
    async fn id_bound(&self, table: &str, time_col: &str, cutoff_ms: i64) -> Result<i64> {
        let r = sqlx::query(&format!("SELECT MIN(id) AS lo, MAX(id) AS hi FROM {table}"))
            .fetch_one(&self.pool)
            .await?;
        let (Some(mut lo), Some(hi)) = (
            r.try_get::<Option<i64>, _>("lo")?,
            r.try_get::<Option<i64>, _>("hi")?,
        ) else {
            return Ok(0);
        };
        let mut hi = hi + 1;
        let probe =
            format!("SELECT id, {time_col} AS t FROM {table} WHERE id >= $1 ORDER BY id LIMIT 1");
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match sqlx::query(&probe)
                .bind(mid)
                .fetch_optional(&self.pool)
                .await?
            {
                Some(r) if r.try_get::<i64, _>("t")? < cutoff_ms => {
                    lo = r.try_get::<i64, _>("id")? + 1;
                }
                _ => hi = mid,
            }
        }
        Ok(lo)
    }

    /// The ID bound of one retention pass over `table` (`outbox`, `cmd_logs` or
    /// `order_progress`): rows below it were written before `cutoff_ms`.
    pub async fn retention_bound(&self, table: RetainedTable, cutoff_ms: i64) -> Result<i64> {
        let (name, col) = match table {
            RetainedTable::Outbox => ("outbox", "created_at_ms"),
            RetainedTable::CmdLogs => ("cmd_logs", "created_at_ms"),
            RetainedTable::OrderProgress => ("order_progress", "at_ms"),
        };
        self.id_bound(name, col, cutoff_ms).await
    }

    /// Deletes up to `limit` outbox rows below `bound` delivered (or switched off) before
    /// `cutoff_ms` — and, with `undelivered_too` (no webhook configured: nobody will deliver
    /// them), pending ones written before it. Dead letters are kept.
    pub async fn prune_events(
        &self,
        bound: i64,
        cutoff_ms: i64,
        undelivered_too: bool,
        limit: u32,
    ) -> Result<u64> {
        self.check_write()?;
        let statuses = if undelivered_too {
            "'delivered', 'skipped', 'pending'"
        } else {
            "'delivered', 'skipped'"
        };
        Ok(sqlx::query(&format!(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE id < $1 \
             AND status IN ({statuses}) AND COALESCE(delivered_at_ms, created_at_ms) < $2 \
             LIMIT $3)"
        ))
        .bind(bound)
        .bind(cutoff_ms)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Deletes up to `limit` finished command-log rows below `bound` written before
    /// `cutoff_ms`, of devices (no order) or of orders that are no longer active. Queued and
    /// sent commands are kept whatever their age.
    pub async fn prune_command_logs(&self, bound: i64, cutoff_ms: i64, limit: u32) -> Result<u64> {
        self.check_write()?;
        Ok(sqlx::query(
            "DELETE FROM cmd_logs WHERE id IN (SELECT c.id FROM cmd_logs c WHERE c.id < $1 \
             AND c.created_at_ms < $2 AND c.status NOT IN ('queued', 'sent') \
             AND (c.order_no IS NULL OR NOT EXISTS (SELECT 1 FROM orders o \
                 WHERE o.order_no = c.order_no AND o.status IN ('pending', 'charging'))) \
             ORDER BY c.id LIMIT $3)",
        )
        .bind(bound)
        .bind(cutoff_ms)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Deletes up to `limit` progress samples below `bound` taken before `cutoff_ms` of orders
    /// that are no longer active (settled, cancelled, failed). Orders, settlements and end
    /// reports are never deleted.
    pub async fn prune_progress(&self, bound: i64, cutoff_ms: i64, limit: u32) -> Result<u64> {
        self.check_write()?;
        Ok(sqlx::query(
            "DELETE FROM order_progress WHERE id IN (SELECT p.id FROM order_progress p \
             WHERE p.id < $1 AND p.at_ms < $2 AND NOT EXISTS (SELECT 1 FROM orders o \
                 WHERE o.order_no = p.order_no AND o.status IN ('pending', 'charging')) \
             ORDER BY p.id LIMIT $3)",
        )
        .bind(bound)
        .bind(cutoff_ms)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Row counts of the pruned tables and of the kept ones (full counts: tests only).
    pub async fn retained_counts(&self) -> Result<RetainedCounts> {
        let r = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM outbox) AS e, (SELECT COUNT(*) FROM cmd_logs) AS c, \
             (SELECT COUNT(*) FROM order_progress) AS p, (SELECT COUNT(*) FROM orders) AS o, \
             (SELECT COUNT(*) FROM settlements) AS s",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(RetainedCounts {
            outbox: r.try_get("e")?,
            cmd_logs: r.try_get("c")?,
            order_progress: r.try_get("p")?,
            orders: r.try_get("o")?,
            settlements: r.try_get("s")?,
        })
    }
}
