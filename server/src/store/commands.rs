//! Durable device commands (`cmd_logs`): `queued → sent → acked | refused | expired |
//! superseded`. A command belongs to its device, not to a connection: whichever session holds
//! the device (after a takeover, a reconnect, a gateway restart) loads the open ones and carries
//! them on.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::*;

/// The states of a command.
pub mod status {
    pub const QUEUED: &str = "queued";
    pub const SENT: &str = "sent";
    pub const ACKED: &str = "acked";
    pub const REFUSED: &str = "refused";
    pub const EXPIRED: &str = "expired";
    pub const SUPERSEDED: &str = "superseded";
}

#[derive(Debug, Clone, PartialEq)]
pub struct CmdRow {
    pub id: i64,
    pub device_id: String,
    pub order_no: Option<String>,
    pub command: String,
    pub payload: String,
    pub status: String,
    pub attempts: i64,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    /// The first write that may have reached the device: the first write, unless a port query
    /// found the port idle afterwards (then the next write; see
    /// [`Store::forget_undelivered_writes`]).
    pub sent_at_ms: Option<i64>,
    pub result: Option<String>,
    pub port_no: Option<i64>,
    /// The last write to the device.
    pub last_sent_at_ms: Option<i64>,
}

const CMD_COLS: &str = "id, device_id, order_no, command, payload, status, attempts, \
    created_at_ms, expires_at_ms, sent_at_ms, result, port_no, last_sent_at_ms";

pub(super) fn cmd_from_row(r: &AnyRow) -> Result<CmdRow> {
    Ok(CmdRow {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        order_no: r.try_get("order_no")?,
        command: r.try_get("command")?,
        payload: r.try_get("payload")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        created_at_ms: r.try_get("created_at_ms")?,
        expires_at_ms: r.try_get("expires_at_ms")?,
        sent_at_ms: r.try_get("sent_at_ms")?,
        result: r.try_get("result")?,
        port_no: r.try_get("port_no")?,
        last_sent_at_ms: r.try_get("last_sent_at_ms")?,
    })
}

/// A command to queue.
#[derive(Debug, Clone)]
pub struct NewCommand {
    pub device_id: String,
    pub order_no: Option<String>,
    pub port_no: Option<i64>,
    /// `start`, `stop`, `query`, `locate`.
    pub command: &'static str,
    pub payload: String,
    pub now_ms: i64,
    pub expires_at_ms: Option<i64>,
}

/// Inserts a queued command inside the caller's transaction; returns its ID.
pub(crate) async fn insert_command(tx: &mut Tx, c: &NewCommand) -> Result<i64> {
    let id: i64 = sqlx::query(
        "INSERT INTO cmd_logs (device_id, order_no, port_no, command, payload, status, attempts, \
         created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5, 'queued', 0, $6, $7) RETURNING id",
    )
    .bind(&c.device_id)
    .bind(c.order_no.clone())
    .bind(c.port_no)
    .bind(c.command)
    .bind(&c.payload)
    .bind(c.now_ms)
    .bind(c.expires_at_ms)
    .fetch_one(&mut **tx)
    .await?
    .try_get("id")?;
    Ok(id)
}

/// Every open command of an order is no longer wanted (the order closed first).
pub(crate) async fn supersede_open_of_order(tx: &mut Tx, order_no: &str) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE cmd_logs SET status = 'superseded' WHERE order_no = $1 \
         AND status IN ('queued', 'sent')",
    )
    .bind(order_no)
    .execute(&mut **tx)
    .await?
    .rows_affected())
}

/// Records a device's answer to a command inside the caller's transaction.
pub(crate) async fn record_answer(
    tx: &mut Tx,
    id: i64,
    acked: bool,
    reply_hex: &str,
    result: &str,
    at_ms: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE cmd_logs SET status = $2, reply_hex = $3, result = $4, replied_at_ms = $5, \
         latency_ms = $5 - COALESCE(last_sent_at_ms, sent_at_ms, $5) WHERE id = $1",
    )
    .bind(id)
    .bind(if acked {
        status::ACKED
    } else {
        status::REFUSED
    })
    .bind(reply_hex)
    .bind(result)
    .bind(at_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Queues a command on its own (a stop of the API, a query, a locate).
    pub async fn queue_command(&self, c: &NewCommand) -> Result<i64> {
        let mut tx = self.begin().await?;
        let id = insert_command(&mut tx, c).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// The device's open commands (queued, or sent with an unknown outcome), oldest first.
    /// A queued command past its TTL is not offered (the sweeper expires it).
    pub async fn open_commands(&self, device_id: &str, now_ms: i64) -> Result<Vec<CmdRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {CMD_COLS} FROM cmd_logs WHERE device_id = $1 AND status IN ('queued', 'sent') \
             AND (status = 'sent' OR expires_at_ms IS NULL OR expires_at_ms >= $2) ORDER BY id"
        ))
        .bind(device_id)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cmd_from_row).collect()
    }

    pub async fn command(&self, id: i64) -> Result<Option<CmdRow>> {
        let row = sqlx::query(&format!("SELECT {CMD_COLS} FROM cmd_logs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(cmd_from_row).transpose()
    }

    /// Commands of an order, oldest first.
    pub async fn commands_of_order(&self, order_no: &str) -> Result<Vec<CmdRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {CMD_COLS} FROM cmd_logs WHERE order_no = $1 ORDER BY id"
        ))
        .bind(order_no)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cmd_from_row).collect()
    }

    /// A port query found the port of this start idle: none of its writes so far took effect,
    /// so the charge, if the next write starts it, is timed from that write (seed 11216: a
    /// start written into a dead socket at 172.9 s and again after the reconnect at 186.0 s
    /// was billed from the first).
    pub async fn forget_undelivered_writes(&self, id: i64) -> Result<()> {
        self.check_write()?;
        sqlx::query("UPDATE cmd_logs SET sent_at_ms = NULL WHERE id = $1 AND status = 'sent'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a write of the command (first or later), before the bytes go out. Returns
    /// false when the command is no longer open (superseded, expired, answered): then it must
    /// not be written.
    pub async fn mark_sent(
        &self,
        id: i64,
        key: i64,
        request_hex: &str,
        conn_id: u64,
        at_ms: i64,
    ) -> Result<bool> {
        self.check_write()?;
        let n = sqlx::query(
            "UPDATE cmd_logs SET status = 'sent', seq = $2, request_hex = $3, conn_id = $4, \
             sent_at_ms = COALESCE(sent_at_ms, $5), last_sent_at_ms = $5, attempts = attempts + 1 \
             WHERE id = $1 AND status IN ('queued', 'sent')",
        )
        .bind(id)
        .bind(key)
        .bind(request_hex)
        .bind(conn_id as i64)
        .bind(at_ms)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// The device answered a command that changes no order (a stop, a query, a locate).
    pub async fn command_answered(
        &self,
        id: i64,
        acked: bool,
        reply_hex: &str,
        result: &str,
        at_ms: i64,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        record_answer(&mut tx, id, acked, reply_hex, result, at_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A command that can no longer be delivered (its TTL passed while queued).
    pub async fn expire_command(&self, id: i64) -> Result<bool> {
        self.check_write()?;
        let n = sqlx::query(
            "UPDATE cmd_logs SET status = 'expired' WHERE id = $1 AND status IN ('queued', 'sent')",
        )
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Queued commands without an order (queries, locates) past their TTL.
    pub async fn expire_orderless_commands(&self, now_ms: i64) -> Result<u64> {
        self.check_write()?;
        Ok(sqlx::query(
            "UPDATE cmd_logs SET status = 'expired' WHERE order_no IS NULL \
             AND status IN ('queued', 'sent') AND expires_at_ms IS NOT NULL AND expires_at_ms < $1",
        )
        .bind(now_ms)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
