//! The batched writer's operations, applied in one transaction per batch.

use std::time::Instant;

use sqlx::Row;

use super::devices::{device_offline_tx, device_online_tx, UPDATE_DEVICE_INFO};
use super::*;

/// Work the batched writer hands in; one transaction per batch.
#[derive(Debug, Clone)]
pub enum BatchOp {
    /// A device connected: created (with `device.registered`) when new, refreshed when known,
    /// with its `device.online` event; the same rows and events as [`Store::device_online`].
    Online(DeviceOnline),
    /// Registration data (firmware, signal, port count); queued behind the device's `Online`
    /// so it lands on the row even when that row is created in the same batch.
    Info {
        device_id: String,
        firmware: Option<String>,
        signal: Option<i64>,
        port_count: Option<i64>,
        now: i64,
    },
    /// A device went away.
    Offline {
        device_id: String,
        last_seen_at: i64,
        now: i64,
    },
    Liveness {
        device_id: String,
        last_seen_at: i64,
    },
    Port {
        device_id: String,
        port_no: i64,
        socket_no: Option<i64>,
        hole: Option<i64>,
        status: String,
        power_dw: i64,
        at: i64,
        /// The status the reporting connection saw before (its true previous state); `None`
        /// for the first report on a connection, when the stored status stands in.
        previous: Option<String>,
    },
    Progress {
        order_no: String,
        device_id: String,
        at_ms: i64,
        duration_sec: i64,
        energy_wh: i64,
        power_dw: i64,
        status: String,
    },
}

impl BatchOp {
    /// The device the operation writes.
    pub fn device_id(&self) -> &str {
        match self {
            BatchOp::Online(d) => &d.device_id,
            BatchOp::Info { device_id, .. }
            | BatchOp::Offline { device_id, .. }
            | BatchOp::Liveness { device_id, .. }
            | BatchOp::Port { device_id, .. }
            | BatchOp::Progress { device_id, .. } => device_id,
        }
    }
}

impl Store {
    /// Applies a batch in one transaction. Progress samples also update their order's live
    /// figures and write `charging.progress` events.
    pub async fn apply_batch(&self, ops: &[BatchOp]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let peak = match self.backend {
            Backend::Sqlite => "MAX(peak_power_dw, $5)",
            Backend::Postgres => "GREATEST(peak_power_dw, $5)",
        };
        let mut tx = self.begin().await?;
        for op in ops {
            match op {
                BatchOp::Online(d) => {
                    device_online_tx(&mut tx, d).await?;
                }
                BatchOp::Info {
                    device_id,
                    firmware,
                    signal,
                    port_count,
                    now,
                } => {
                    sqlx::query(UPDATE_DEVICE_INFO)
                        .bind(device_id)
                        .bind(firmware.clone())
                        .bind(*signal)
                        .bind(*port_count)
                        .bind(*now)
                        .execute(&mut *tx)
                        .await?;
                }
                BatchOp::Offline {
                    device_id,
                    last_seen_at,
                    now,
                } => {
                    device_offline_tx(&mut tx, device_id, *last_seen_at, *now).await?;
                }
                BatchOp::Liveness {
                    device_id,
                    last_seen_at,
                } => {
                    sqlx::query("UPDATE devices SET last_seen_at = $2 WHERE device_id = $1")
                        .bind(device_id)
                        .bind(*last_seen_at)
                        .execute(&mut *tx)
                        .await?;
                }
                BatchOp::Port {
                    device_id,
                    port_no,
                    socket_no,
                    hole,
                    status,
                    power_dw,
                    at,
                    previous,
                } => {
                    let previous = match previous {
                        Some(p) => Some(p.clone()),
                        // Only for a connection's first report, so the read stays rare.
                        None => sqlx::query(
                            "SELECT status FROM ports WHERE device_id = $1 AND port_no = $2",
                        )
                        .bind(device_id)
                        .bind(port_no)
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| r.try_get::<String, _>("status"))
                        .transpose()?,
                    };
                    if previous.as_deref() != Some(status.as_str()) {
                        insert_event(
                            &mut tx,
                            &Event {
                                event_type: "socket.state_changed",
                                device_id: device_id.clone(),
                                order_no: None,
                                data: serde_json::json!({
                                    "port_no": port_no, "socket_no": socket_no, "hole": hole,
                                    "from": previous, "to": status, "status": status,
                                    "power_w": *power_dw as f64 / 10.0, "changed_at": at,
                                }),
                            },
                            *at * 1000,
                        )
                        .await?;
                    }
                    sqlx::query(
                        "INSERT INTO ports (device_id, port_no, socket_no, hole, status, power_dw, \
                         reported_status, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $5, $7) \
                         ON CONFLICT (device_id, port_no) DO UPDATE SET socket_no = $3, hole = $4, \
                         status = $5, power_dw = $6, reported_status = $5, updated_at = $7",
                    )
                    .bind(device_id)
                    .bind(*port_no)
                    .bind(*socket_no)
                    .bind(*hole)
                    .bind(status)
                    .bind(*power_dw)
                    .bind(*at)
                    .execute(&mut *tx)
                    .await?;
                }
                BatchOp::Progress {
                    order_no,
                    device_id,
                    at_ms,
                    duration_sec,
                    energy_wh,
                    power_dw,
                    status,
                } => {
                    sqlx::query(
                        "INSERT INTO order_progress (order_no, at_ms, duration_sec, energy_wh, \
                         power_dw, status) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(order_no)
                    .bind(*at_ms)
                    .bind(*duration_sec)
                    .bind(*energy_wh)
                    .bind(*power_dw)
                    .bind(status)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(&format!(
                        "UPDATE orders SET energy_wh = $2, current_power_dw = $3, \
                         last_report_at_ms = $4, peak_power_dw = {peak}, updated_at_ms = $4 \
                         WHERE order_no = $1 AND status IN ('pending', 'charging')"
                    ))
                    .bind(order_no)
                    .bind(*energy_wh)
                    .bind(*power_dw)
                    .bind(*at_ms)
                    .bind(*power_dw)
                    .execute(&mut *tx)
                    .await?;
                    insert_event(
                        &mut tx,
                        &Event {
                            event_type: "charging.progress",
                            device_id: device_id.clone(),
                            order_no: Some(order_no.clone()),
                            data: serde_json::json!({
                                "duration_sec": duration_sec, "energy_wh": energy_wh,
                                "power_w": *power_dw as f64 / 10.0, "status": status,
                            }),
                        },
                        *at_ms,
                    )
                    .await?;
                }
            }
        }
        tx.commit().await?;
        self.observe(started);
        Ok(())
    }
}
