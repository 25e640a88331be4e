//! Downlink commands (`cmd_logs`).

use sqlx::any::AnyRow;
use sqlx::Row;

use super::*;

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
}

fn cmd_from_row(r: &AnyRow) -> Result<CmdRow> {
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
    })
}

impl Store {
    /// Queues another command (e.g. a stop) for an order.
    pub async fn queue_command(
        &self,
        device_id: &str,
        order_no: Option<&str>,
        command: &str,
        payload: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<i64> {
        let id: i64 = sqlx::query(
            "INSERT INTO cmd_logs (device_id, order_no, command, payload, status, attempts, \
             created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, 'queued', 0, $5, $6) RETURNING id",
        )
        .bind(device_id)
        .bind(order_no.map(str::to_string))
        .bind(command)
        .bind(payload)
        .bind(now_ms)
        .bind(expires_at_ms)
        .fetch_one(&self.pool)
        .await?
        .try_get("id")?;
        Ok(id)
    }

    /// Commands waiting for this device, oldest first.
    pub async fn queued_commands(&self, device_id: &str, now_ms: i64) -> Result<Vec<CmdRow>> {
        let rows = sqlx::query(
            "SELECT id, device_id, order_no, command, payload, status, attempts, created_at_ms, \
             expires_at_ms FROM cmd_logs WHERE device_id = $1 AND status = 'queued' \
             AND (expires_at_ms IS NULL OR expires_at_ms >= $2) ORDER BY id",
        )
        .bind(device_id)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cmd_from_row).collect()
    }

    pub async fn command(&self, id: i64) -> Result<Option<CmdRow>> {
        let row = sqlx::query(
            "SELECT id, device_id, order_no, command, payload, status, attempts, created_at_ms, \
             expires_at_ms FROM cmd_logs WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(cmd_from_row).transpose()
    }

    /// A command went out on the wire (first time or resend).
    pub async fn command_sent(
        &self,
        id: i64,
        seq: i64,
        request_hex: &str,
        at_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE cmd_logs SET status = 'sent', seq = $2, request_hex = $3, \
             sent_at_ms = COALESCE(sent_at_ms, $4), attempts = attempts + 1 WHERE id = $1",
        )
        .bind(id)
        .bind(seq)
        .bind(request_hex)
        .bind(at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The device answered a command.
    pub async fn command_replied(
        &self,
        id: i64,
        reply_hex: &str,
        result: &str,
        at_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE cmd_logs SET status = 'replied', reply_hex = $2, result = $3, replied_at_ms = $4, \
             latency_ms = $4 - COALESCE(sent_at_ms, $4) WHERE id = $1",
        )
        .bind(id)
        .bind(reply_hex)
        .bind(result)
        .bind(at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// No reply after the resend.
    pub async fn command_unanswered(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE cmd_logs SET status = 'unanswered' WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
