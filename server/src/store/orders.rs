//! Orders, their progress samples and settlements.

use pile_api::OrderStatus;

use std::time::Instant;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::*;

#[derive(Debug, Clone, PartialEq)]
pub struct OrderRow {
    pub order_no: String,
    pub device_id: String,
    pub port_no: i64,
    pub status: OrderStatus,
    pub charge_mode: i64,
    pub target_duration: i64,
    pub target_energy_wh: i64,
    pub amount: i64,
    pub price_per_kwh: i64,
    pub service_fee: i64,
    pub device_ref: Option<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    pub last_report_at_ms: Option<i64>,
    pub duration_sec: i64,
    pub energy_wh: i64,
    pub current_power_dw: i64,
    pub peak_power_dw: i64,
    pub energy_fee: i64,
    pub service_fee_amount: i64,
    pub final_amount: i64,
    pub end_reason: Option<i64>,
    pub device_duration_sec: Option<i64>,
    pub offline_replayed: bool,
    pub was_offline: bool,
    pub stop_requested: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProgressRow {
    pub at_ms: i64,
    pub duration_sec: i64,
    pub energy_wh: i64,
    pub power_dw: i64,
    pub status: String,
}

/// A new order with its queued command and its `order.created` event.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub order_no: String,
    pub device_id: String,
    pub port_no: i64,
    pub charge_mode: i64,
    pub target_duration: i64,
    pub target_energy_wh: i64,
    pub amount: i64,
    pub price_per_kwh: i64,
    pub service_fee: i64,
    pub device_ref: String,
    pub now_ms: i64,
    pub expires_at_ms: i64,
    /// The start command, serialised; queued in `cmd_logs`.
    pub command: String,
    pub command_payload: String,
}

#[derive(Debug, Clone)]
pub enum CreateOutcome {
    Created {
        order: OrderRow,
        command_id: i64,
    },
    /// The client's `order_no` already exists: the same order back.
    Existing(OrderRow),
}

/// The figures a settlement writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    pub order_no: String,
    pub at_ms: i64,
    /// `device` or `server`.
    pub source: &'static str,
    pub duration_sec: i64,
    pub device_duration_sec: Option<i64>,
    pub energy_wh: i64,
    pub peak_power_dw: i64,
    pub energy_fee: i64,
    pub service_fee_amount: i64,
    pub final_amount: i64,
    pub end_reason: i64,
    pub offline_replayed: bool,
    pub detail: String,
}

pub(super) fn order_from_row(r: &AnyRow) -> Result<OrderRow> {
    let status: String = r.try_get("status")?;
    let status = OrderStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("order status {status}")))?;
    Ok(OrderRow {
        order_no: r.try_get("order_no")?,
        device_id: r.try_get("device_id")?,
        port_no: r.try_get("port_no")?,
        status,
        charge_mode: r.try_get("charge_mode")?,
        target_duration: r.try_get("target_duration")?,
        target_energy_wh: r.try_get("target_energy_wh")?,
        amount: r.try_get("amount")?,
        price_per_kwh: r.try_get("price_per_kwh")?,
        service_fee: r.try_get("service_fee")?,
        device_ref: r.try_get("device_ref")?,
        created_at_ms: r.try_get("created_at_ms")?,
        expires_at_ms: r.try_get("expires_at_ms")?,
        started_at_ms: r.try_get("started_at_ms")?,
        ended_at_ms: r.try_get("ended_at_ms")?,
        last_report_at_ms: r.try_get("last_report_at_ms")?,
        duration_sec: r.try_get("duration_sec")?,
        energy_wh: r.try_get("energy_wh")?,
        current_power_dw: r.try_get("current_power_dw")?,
        peak_power_dw: r.try_get("peak_power_dw")?,
        energy_fee: r.try_get("energy_fee")?,
        service_fee_amount: r.try_get("service_fee_amount")?,
        final_amount: r.try_get("final_amount")?,
        end_reason: r.try_get("end_reason")?,
        device_duration_sec: r.try_get("device_duration_sec")?,
        offline_replayed: r.try_get::<i64, _>("offline_replayed")? != 0,
        was_offline: r.try_get::<i64, _>("was_offline")? != 0,
        stop_requested: r.try_get::<i64, _>("stop_requested")? != 0,
    })
}

pub(super) const ORDER_COLS: &str = "order_no, device_id, port_no, status, charge_mode, target_duration, \
    target_energy_wh, amount, price_per_kwh, service_fee, device_ref, created_at_ms, expires_at_ms, \
    started_at_ms, ended_at_ms, last_report_at_ms, duration_sec, energy_wh, current_power_dw, \
    peak_power_dw, energy_fee, service_fee_amount, final_amount, end_reason, device_duration_sec, \
    offline_replayed, was_offline, stop_requested";

impl Store {
    /// Active (pending or charging) order numbers by port of one device.
    pub async fn active_orders_of(&self, device_id: &str) -> Result<Vec<OrderRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ORDER_COLS} FROM orders WHERE device_id = $1 \
             AND status IN ('pending', 'charging') ORDER BY port_no"
        ))
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(order_from_row).collect()
    }

    pub async fn order(&self, order_no: &str) -> Result<Option<OrderRow>> {
        let started = Instant::now();
        let row = sqlx::query(&format!(
            "SELECT {ORDER_COLS} FROM orders WHERE order_no = $1"
        ))
        .bind(order_no)
        .fetch_optional(&self.pool)
        .await?;
        self.observe(started);
        row.as_ref().map(order_from_row).transpose()
    }

    pub async fn order_by_device_ref(
        &self,
        device_id: &str,
        device_ref: &str,
    ) -> Result<Option<OrderRow>> {
        let row = sqlx::query(&format!(
            "SELECT {ORDER_COLS} FROM orders WHERE device_id = $1 AND device_ref = $2 \
             ORDER BY id DESC LIMIT 1"
        ))
        .bind(device_id)
        .bind(device_ref)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(order_from_row).transpose()
    }

    /// The newest order on a port whatever its state (to match an end report without a reference).
    pub async fn latest_order_on_port(
        &self,
        device_id: &str,
        port_no: i64,
    ) -> Result<Option<OrderRow>> {
        let row = sqlx::query(&format!(
            "SELECT {ORDER_COLS} FROM orders WHERE device_id = $1 AND port_no = $2 \
             ORDER BY id DESC LIMIT 1"
        ))
        .bind(device_id)
        .bind(port_no)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(order_from_row).transpose()
    }

    pub async fn orders(
        &self,
        status: Option<OrderStatus>,
        device_id: Option<&str>,
        page: u32,
        size: u32,
    ) -> Result<(Vec<OrderRow>, i64)> {
        let started = Instant::now();
        // Placeholders are numbered by position; unused filters compare against NULL.
        let filter = "WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR device_id = $2)";
        let status = status.map(|s| s.as_str().to_string());
        let device_id = device_id.map(str::to_string);
        let total: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM orders {filter}"))
            .bind(status.clone())
            .bind(device_id.clone())
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        let offset = i64::from(page.saturating_sub(1)) * i64::from(size);
        let rows = sqlx::query(&format!(
            "SELECT {ORDER_COLS} FROM orders {filter} ORDER BY id DESC LIMIT $3 OFFSET $4"
        ))
        .bind(status)
        .bind(device_id)
        .bind(i64::from(size))
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        self.observe(started);
        let rows = rows.iter().map(order_from_row).collect::<Result<_>>()?;
        Ok((rows, total))
    }

    pub async fn progress(&self, order_no: &str) -> Result<Vec<ProgressRow>> {
        let rows = sqlx::query(
            "SELECT at_ms, duration_sec, energy_wh, power_dw, status FROM order_progress \
             WHERE order_no = $1 ORDER BY at_ms, id",
        )
        .bind(order_no)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ProgressRow {
                    at_ms: r.try_get("at_ms")?,
                    duration_sec: r.try_get("duration_sec")?,
                    energy_wh: r.try_get("energy_wh")?,
                    power_dw: r.try_get("power_dw")?,
                    status: r.try_get("status")?,
                })
            })
            .collect()
    }

    /// Creates an order, its queued start command and its `order.created` event in one
    /// transaction. The same `order_no` again returns the existing order; another active
    /// order on the port is [`StoreError::PortBusy`].
    pub async fn create_order(&self, o: &NewOrder) -> Result<CreateOutcome> {
        let started = Instant::now();
        if let Some(existing) = self.order(&o.order_no).await? {
            return Ok(CreateOutcome::Existing(existing));
        }
        let mut tx = self.begin().await?;
        let busy = sqlx::query(
            "SELECT order_no FROM orders WHERE device_id = $1 AND port_no = $2 \
             AND status IN ('pending', 'charging')",
        )
        .bind(&o.device_id)
        .bind(o.port_no)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = busy {
            return Err(StoreError::PortBusy {
                order_no: row.try_get("order_no")?,
            });
        }
        let inserted = sqlx::query(
            "INSERT INTO orders (order_no, device_id, port_no, status, charge_mode, target_duration, \
             target_energy_wh, amount, price_per_kwh, service_fee, device_ref, created_at_ms, \
             expires_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9, $10, $11, $12, $11)",
        )
        .bind(&o.order_no)
        .bind(&o.device_id)
        .bind(o.port_no)
        .bind(o.charge_mode)
        .bind(o.target_duration)
        .bind(o.target_energy_wh)
        .bind(o.amount)
        .bind(o.price_per_kwh)
        .bind(o.service_fee)
        .bind(&o.device_ref)
        .bind(o.now_ms)
        .bind(o.expires_at_ms)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            let e = StoreError::from(e);
            drop(tx);
            if e.is_unique_violation() {
                // A concurrent request won the race: same order_no → that order; else busy.
                if let Some(existing) = self.order(&o.order_no).await? {
                    return Ok(CreateOutcome::Existing(existing));
                }
                return Err(StoreError::PortBusy {
                    order_no: String::new(),
                });
            }
            return Err(e);
        }
        let command_id: i64 = sqlx::query(
            "INSERT INTO cmd_logs (device_id, order_no, command, payload, status, attempts, \
             created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, 'queued', 0, $5, $6) RETURNING id",
        )
        .bind(&o.device_id)
        .bind(&o.order_no)
        .bind(&o.command)
        .bind(&o.command_payload)
        .bind(o.now_ms)
        .bind(o.expires_at_ms)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        insert_event(
            &mut tx,
            &Event {
                event_type: "order.created",
                device_id: o.device_id.clone(),
                order_no: Some(o.order_no.clone()),
                data: serde_json::json!({
                    "port_no": o.port_no, "charge_mode": o.charge_mode,
                    "target_duration": o.target_duration, "amount": o.amount,
                }),
            },
            o.now_ms,
        )
        .await?;
        tx.commit().await?;
        self.observe(started);
        let order = self
            .order(&o.order_no)
            .await?
            .ok_or_else(|| StoreError::Corrupt("order vanished after insert".into()))?;
        Ok(CreateOutcome::Created { order, command_id })
    }

    /// Replaces the device's handle of an order (BKV: the business number from the reply).
    pub async fn set_device_ref(&self, order_no: &str, device_ref: &str) -> Result<()> {
        sqlx::query("UPDATE orders SET device_ref = $2 WHERE order_no = $1")
            .bind(order_no)
            .bind(device_ref)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn mark_stop_requested(&self, order_no: &str) -> Result<()> {
        sqlx::query("UPDATE orders SET stop_requested = 1 WHERE order_no = $1")
            .bind(order_no)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// pending → charging, with `order.confirmed` and `charging.started`. Returns false when the
    /// order was not pending (a repeated confirmation).
    pub async fn confirm_order(&self, order_no: &str, device_id: &str, at_ms: i64) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE orders SET status = 'charging', started_at_ms = $2, last_report_at_ms = $2, \
             updated_at_ms = $2 WHERE order_no = $1 AND status = 'pending'",
        )
        .bind(order_no)
        .bind(at_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            for t in ["order.confirmed", "charging.started"] {
                insert_event(
                    &mut tx,
                    &Event {
                        event_type: t,
                        device_id: device_id.to_string(),
                        order_no: Some(order_no.to_string()),
                        data: serde_json::json!({"started_at": at_ms / 1000}),
                    },
                    at_ms,
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// pending → failed (12) or cancelled (11 etc.), costing 0. Returns false when the order was
    /// no longer pending.
    pub async fn close_pending(
        &self,
        order_no: &str,
        device_id: &str,
        to: OrderStatus,
        end_reason: i64,
        at_ms: i64,
    ) -> Result<bool> {
        let event_type = match to {
            OrderStatus::Failed => "order.failed",
            _ => "order.cancelled",
        };
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE orders SET status = $2, end_reason = $3, ended_at_ms = $4, updated_at_ms = $4, \
             final_amount = 0 WHERE order_no = $1 AND status = 'pending'",
        )
        .bind(order_no)
        .bind(to.as_str())
        .bind(end_reason)
        .bind(at_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            sqlx::query(
                "UPDATE cmd_logs SET status = 'expired' WHERE order_no = $1 AND status = 'queued'",
            )
            .bind(order_no)
            .execute(&mut *tx)
            .await?;
            insert_event(
                &mut tx,
                &Event {
                    event_type,
                    device_id: device_id.to_string(),
                    order_no: Some(order_no.to_string()),
                    data: serde_json::json!({"end_reason": end_reason}),
                },
                at_ms,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Settles an order exactly once. Every report is kept in `end_reports`; only the first
    /// one for an active order changes it (the settlements primary key makes sure).
    /// Returns true when this call settled the order.
    pub async fn settle(&self, s: &Settlement, device_id: &str, port_no: i64) -> Result<bool> {
        let started = Instant::now();
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE orders SET status = 'completed', ended_at_ms = $2, duration_sec = $3, \
             device_duration_sec = $4, energy_wh = $5, peak_power_dw = MAX(peak_power_dw, $6), \
             energy_fee = $7, service_fee_amount = $8, final_amount = $9, end_reason = $10, \
             offline_replayed = $11, current_power_dw = 0, updated_at_ms = $2 \
             WHERE order_no = $1 AND status IN ('pending', 'charging')"
                .replace(
                    "MAX(peak_power_dw, $6)",
                    match self.backend {
                        Backend::Sqlite => "MAX(peak_power_dw, $6)",
                        Backend::Postgres => "GREATEST(peak_power_dw, $6)",
                    },
                )
                .as_str(),
        )
        .bind(&s.order_no)
        .bind(s.at_ms)
        .bind(s.duration_sec)
        .bind(s.device_duration_sec)
        .bind(s.energy_wh)
        .bind(s.peak_power_dw)
        .bind(s.energy_fee)
        .bind(s.service_fee_amount)
        .bind(s.final_amount)
        .bind(s.end_reason)
        .bind(flag(s.offline_replayed))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let applied = n == 1;
        sqlx::query(
            "INSERT INTO end_reports (order_no, device_id, port_no, received_at_ms, applied, detail) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&s.order_no)
        .bind(device_id)
        .bind(port_no)
        .bind(s.at_ms)
        .bind(flag(applied))
        .bind(&s.detail)
        .execute(&mut *tx)
        .await?;
        if applied {
            sqlx::query(
                "INSERT INTO settlements (order_no, settled_at_ms, source, duration_sec, \
                 device_duration_sec, energy_wh, energy_fee, service_fee_amount, final_amount, \
                 end_reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&s.order_no)
            .bind(s.at_ms)
            .bind(s.source)
            .bind(s.duration_sec)
            .bind(s.device_duration_sec)
            .bind(s.energy_wh)
            .bind(s.energy_fee)
            .bind(s.service_fee_amount)
            .bind(s.final_amount)
            .bind(s.end_reason)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE cmd_logs SET status = 'expired' WHERE order_no = $1 AND status = 'queued'",
            )
            .bind(&s.order_no)
            .execute(&mut *tx)
            .await?;
            // The port stopped with the order; the next report refreshes it.
            sqlx::query(
                "UPDATE ports SET status = 'idle', power_dw = 0 \
                 WHERE device_id = $1 AND port_no = $2 AND status = 'charging'",
            )
            .bind(device_id)
            .bind(port_no)
            .execute(&mut *tx)
            .await?;
            let data = serde_json::json!({
                "port_no": port_no,
                "duration_sec": s.duration_sec,
                "total_kwh": s.energy_wh as f64 / 1000.0,
                "energy_wh": s.energy_wh,
                "peak_power": s.peak_power_dw as f64 / 10.0,
                "energy_fee": s.energy_fee,
                "service_fee_amount": s.service_fee_amount,
                "final_amount": s.final_amount,
                "end_reason": s.end_reason,
                "end_reason_name": crate::domain::EndReason::from_code(s.end_reason).name(),
                "end_reason_text": crate::domain::EndReason::from_code(s.end_reason).text_zh(),
                "offline_replayed": s.offline_replayed,
                "ended_at": s.at_ms / 1000,
            });
            for t in ["charging.ended", "order.completed"] {
                insert_event(
                    &mut tx,
                    &Event {
                        event_type: t,
                        device_id: device_id.to_string(),
                        order_no: Some(s.order_no.clone()),
                        data: data.clone(),
                    },
                    s.at_ms,
                )
                .await?;
            }
        }
        tx.commit().await?;
        self.observe(started);
        Ok(applied)
    }

    /// Charging orders whose device is away and whose target plus `grace_ms` has passed.
    pub async fn overdue_charging(&self, now_ms: i64, grace_ms: i64) -> Result<Vec<OrderRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ORDER_COLS} FROM orders o WHERE status = 'charging' AND EXISTS \
             (SELECT 1 FROM devices d WHERE d.device_id = o.device_id AND d.online = 0) \
             AND COALESCE(started_at_ms, created_at_ms) + target_duration * 1000 + $2 < $1"
        ))
        .bind(now_ms)
        .bind(grace_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(order_from_row).collect()
    }

    /// Pending orders whose command TTL has passed.
    pub async fn expired_pending(&self, now_ms: i64) -> Result<Vec<OrderRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ORDER_COLS} FROM orders WHERE status = 'pending' AND expires_at_ms IS NOT NULL \
             AND expires_at_ms < $1"
        ))
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(order_from_row).collect()
    }
}
