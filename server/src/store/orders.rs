//! Orders, their progress samples and settlements.

use pile_api::OrderStatus;

use std::time::Instant;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::commands::{record_answer, NewCommand};
use super::*;
use crate::domain::{Settled, StartState, StopCause, Transition};

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
    pub duration_source: Option<String>,
    pub late_settlement: bool,
    pub stop_cause: Option<StopCause>,
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
    /// The device's handle when the gateway chooses it (AP3000); BKV learns it later.
    pub device_ref: Option<String>,
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

/// A settlement to write: the transition the domain allowed and its figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    pub order_no: String,
    pub device_id: String,
    pub port_no: i64,
    pub transition: Transition,
    pub at_ms: i64,
    /// `device` (an end report) or `gateway` (grace, reconciliation).
    pub source: &'static str,
    pub figures: Settled,
    /// The device's handle of the charge the report named (learnt on the order if unknown).
    pub device_ref: Option<String>,
    /// The raw report (hex), or the gateway's note.
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
        duration_source: r.try_get("duration_source")?,
        late_settlement: r.try_get::<i64, _>("late_settlement")? != 0,
        stop_cause: r
            .try_get::<Option<i64>, _>("stop_cause")?
            .and_then(StopCause::from_code),
    })
}

pub(super) const ORDER_COLS: &str = "order_no, device_id, port_no, status, charge_mode, target_duration, \
    target_energy_wh, amount, price_per_kwh, service_fee, device_ref, created_at_ms, expires_at_ms, \
    started_at_ms, ended_at_ms, last_report_at_ms, duration_sec, energy_wh, current_power_dw, \
    peak_power_dw, energy_fee, service_fee_amount, final_amount, end_reason, device_duration_sec, \
    offline_replayed, was_offline, stop_requested, duration_source, late_settlement, stop_cause";

/// [`ORDER_COLS`] qualified by the alias `o`, for joins.
pub(super) const ORDER_COLS_O: &str =
    "o.order_no, o.device_id, o.port_no, o.status, o.charge_mode, \
    o.target_duration, o.target_energy_wh, o.amount, o.price_per_kwh, o.service_fee, o.device_ref, \
    o.created_at_ms, o.expires_at_ms, o.started_at_ms, o.ended_at_ms, o.last_report_at_ms, \
    o.duration_sec, o.energy_wh, o.current_power_dw, o.peak_power_dw, o.energy_fee, \
    o.service_fee_amount, o.final_amount, o.end_reason, o.device_duration_sec, o.offline_replayed, \
    o.was_offline, o.stop_requested, o.duration_source, o.late_settlement, o.stop_cause";

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
        .bind(o.device_ref.clone())
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
        let command_id = super::commands::insert_command(
            &mut tx,
            &super::commands::NewCommand {
                device_id: o.device_id.clone(),
                order_no: Some(o.order_no.clone()),
                port_no: Some(o.port_no),
                command: "start",
                payload: o.command_payload.clone(),
                now_ms: o.now_ms,
                expires_at_ms: Some(o.expires_at_ms),
            },
        )
        .await?;
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

    /// Records the device's handle of an order learnt from a report or a reply (only where
    /// none is known: a handle never moves to another order).
    pub async fn learn_device_ref(&self, order_no: &str, device_ref: &str) -> Result<bool> {
        self.check_write()?;
        let n = sqlx::query(
            "UPDATE orders SET device_ref = $2 WHERE order_no = $1 AND device_ref IS NULL",
        )
        .bind(order_no)
        .bind(device_ref)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// The orders a report about this port may concern: the newest orders on the port and
    /// the order holding `device_ref`, with how far each one's start command got. Two indexed
    /// lookups (`orders_by_port`, `orders_by_device_ref`), so the cost of a report does not
    /// grow with the device's order history (#13).
    pub async fn report_candidates(
        &self,
        device_id: &str,
        port_no: i64,
        device_ref: Option<&str>,
    ) -> Result<Vec<(OrderRow, StartState)>> {
        let start_state = "(SELECT MAX(CASE WHEN c.status IN ('acked', 'refused') THEN 2 \
             WHEN c.attempts > 0 THEN 1 ELSE 0 END) FROM cmd_logs c \
             WHERE c.order_no = o.order_no AND c.command = 'start') AS start_state";
        let rows = sqlx::query(&format!(
            "SELECT {ORDER_COLS_O}, {start_state} FROM orders o WHERE o.id IN \
             (SELECT id FROM (SELECT id FROM orders WHERE device_id = $1 AND port_no = $2 \
                 ORDER BY id DESC LIMIT 20) newest \
              UNION SELECT id FROM orders WHERE device_id = $1 AND device_ref = $3) \
             ORDER BY o.id DESC LIMIT 20"
        ))
        .bind(device_id)
        .bind(port_no)
        .bind(device_ref.map(str::to_string))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let state: Option<i64> = r.try_get("start_state")?;
                let state = match state {
                    Some(2) => StartState::Answered,
                    Some(1) => StartState::Sent,
                    _ => StartState::Queued,
                };
                Ok((order_from_row(r)?, state))
            })
            .collect()
    }

    /// pending → charging, with `order.confirmed` and `charging.started`, and the start's
    /// answer when one confirmed it. Returns false when the order was no longer pending.
    pub async fn confirm_order(
        &self,
        order_no: &str,
        device_id: &str,
        t: Transition,
        started_at_ms: i64,
        device_ref: Option<&str>,
        answer: Option<&CommandAnswer>,
    ) -> Result<bool> {
        let started = Instant::now();
        let mut tx = self.begin().await?;
        if let Some(a) = answer {
            record_answer(&mut tx, a.id, true, &a.reply_hex, &a.result, a.at_ms).await?;
        }
        let n = sqlx::query(
            "UPDATE orders SET status = $3, started_at_ms = $2, last_report_at_ms = $2, \
             device_ref = COALESCE(device_ref, $4), updated_at_ms = $2 \
             WHERE order_no = $1 AND status = $5",
        )
        .bind(order_no)
        .bind(started_at_ms)
        .bind(t.to.as_str())
        .bind(device_ref.map(str::to_string))
        .bind(t.from.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            for event_type in ["order.confirmed", "charging.started"] {
                insert_event(
                    &mut tx,
                    &Event {
                        event_type,
                        device_id: device_id.to_string(),
                        order_no: Some(order_no.to_string()),
                        data: serde_json::json!({"started_at": started_at_ms.div_euclid(1000)}),
                    },
                    started_at_ms,
                )
                .await?;
            }
        }
        tx.commit().await?;
        self.observe(started);
        Ok(n == 1)
    }

    /// pending → failed (12) or cancelled (3, 11), costing 0; its open commands are
    /// superseded. Returns false when the order was no longer pending.
    pub async fn close_order(
        &self,
        order_no: &str,
        device_id: &str,
        t: Transition,
        end_reason: i64,
        at_ms: i64,
        answer: Option<&CommandAnswer>,
    ) -> Result<bool> {
        let event_type = match t.to {
            OrderStatus::Failed => "order.failed",
            _ => "order.cancelled",
        };
        let mut tx = self.begin().await?;
        if let Some(a) = answer {
            record_answer(&mut tx, a.id, a.acked, &a.reply_hex, &a.result, a.at_ms).await?;
        }
        let n = sqlx::query(
            "UPDATE orders SET status = $2, end_reason = $3, ended_at_ms = $4, updated_at_ms = $4, \
             final_amount = 0 WHERE order_no = $1 AND status = $5",
        )
        .bind(order_no)
        .bind(t.to.as_str())
        .bind(end_reason)
        .bind(at_ms)
        .bind(t.from.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            super::commands::supersede_open_of_order(&mut tx, order_no).await?;
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

    /// Flags an open order as asked to stop (by whom) and queues its stop command, in one
    /// transaction. Returns the stop's command ID, or `None` when the order is not open.
    pub async fn request_stop(
        &self,
        order_no: &str,
        cause: StopCause,
        stop: &NewCommand,
    ) -> Result<Option<i64>> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE orders SET stop_requested = 1, stop_cause = COALESCE(stop_cause, $2) \
             WHERE order_no = $1 AND status IN ('pending', 'charging')",
        )
        .bind(order_no)
        .bind(cause.code())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(None);
        }
        let id = super::commands::insert_command(&mut tx, stop).await?;
        tx.commit().await?;
        Ok(Some(id))
    }

    /// Settles an order exactly once: the transition the domain allowed, its figures, the end
    /// report that caused it, and `charging.ended` + `order.completed`, in one transaction.
    /// Returns false when another settlement won (the report is then kept as a duplicate).
    pub async fn settle(&self, s: &Settlement) -> Result<bool> {
        let started = Instant::now();
        let f = &s.figures;
        let mut tx = self.begin().await?;
        let peak = match self.backend {
            Backend::Sqlite => "MAX(peak_power_dw, $6)",
            Backend::Postgres => "GREATEST(peak_power_dw, $6)",
        };
        let n = sqlx::query(&format!(
            "UPDATE orders SET status = 'completed', ended_at_ms = $2, duration_sec = $3, \
             device_duration_sec = $4, energy_wh = $5, peak_power_dw = {peak}, energy_fee = $7, \
             service_fee_amount = $8, final_amount = $9, end_reason = $10, offline_replayed = $11, \
             duration_source = $12, late_settlement = $13, current_power_dw = 0, \
             device_ref = COALESCE(device_ref, $14), updated_at_ms = $2 \
             WHERE order_no = $1 AND status = $15"
        ))
        .bind(&s.order_no)
        .bind(s.at_ms)
        .bind(f.duration_sec)
        .bind(f.device_duration_sec)
        .bind(f.energy_wh)
        .bind(f.peak_power_dw)
        .bind(f.bill.energy_fee)
        .bind(f.bill.service_fee_amount)
        .bind(f.bill.final_amount)
        .bind(f.reason.code())
        .bind(flag(f.offline_replayed))
        .bind(f.duration_source.as_str())
        .bind(flag(s.transition.late))
        .bind(s.device_ref.clone())
        .bind(s.transition.from.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let applied = n == 1;
        let outcome = match (applied, s.transition.late) {
            (true, true) => "late",
            (true, false) => "settled",
            (false, _) => "duplicate",
        };
        // A device's report is kept whatever became of it; the gateway's own settlement
        // (grace, reconciliation) has no report to keep.
        if s.source == "device" {
            insert_end_report(
                &mut tx,
                &EndReportRow {
                    order_no: Some(s.order_no.clone()),
                    device_id: s.device_id.clone(),
                    port_no: s.port_no,
                    at_ms: s.at_ms,
                    applied,
                    outcome,
                    device_ref: s.device_ref.clone(),
                    detail: s.detail.clone(),
                },
            )
            .await?;
        }
        if applied {
            sqlx::query(
                "INSERT INTO settlements (order_no, settled_at_ms, source, duration_sec, \
                 device_duration_sec, energy_wh, energy_fee, service_fee_amount, final_amount, \
                 end_reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&s.order_no)
            .bind(s.at_ms)
            .bind(s.source)
            .bind(f.duration_sec)
            .bind(f.device_duration_sec)
            .bind(f.energy_wh)
            .bind(f.bill.energy_fee)
            .bind(f.bill.service_fee_amount)
            .bind(f.bill.final_amount)
            .bind(f.reason.code())
            .execute(&mut *tx)
            .await?;
            super::commands::supersede_open_of_order(&mut tx, &s.order_no).await?;
            if !s.transition.late {
                // The port stopped with the order; the next report refreshes it. A late
                // settlement leaves the port alone: it may hold the next customer's charge.
                sqlx::query(
                    "UPDATE ports SET status = 'idle', power_dw = 0 \
                     WHERE device_id = $1 AND port_no = $2 AND status = 'charging'",
                )
                .bind(&s.device_id)
                .bind(s.port_no)
                .execute(&mut *tx)
                .await?;
            }
            let data = serde_json::json!({
                "port_no": s.port_no,
                "duration_sec": f.duration_sec,
                "duration_source": f.duration_source.as_str(),
                "total_kwh": f.energy_wh as f64 / 1000.0,
                "energy_wh": f.energy_wh,
                "peak_power": f.peak_power_dw as f64 / 10.0,
                "energy_fee": f.bill.energy_fee,
                "service_fee_amount": f.bill.service_fee_amount,
                "final_amount": f.bill.final_amount,
                "end_reason": f.reason.code(),
                "end_reason_name": f.reason.name(),
                "end_reason_text": f.reason.text_zh(),
                "offline_replayed": f.offline_replayed,
                "late_settlement": s.transition.late,
                "ended_at": s.at_ms.div_euclid(1000),
            });
            for event_type in ["charging.ended", "order.completed"] {
                insert_event(
                    &mut tx,
                    &Event {
                        event_type,
                        device_id: s.device_id.clone(),
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

    /// Keeps an end report that changed no order (unmatched, duplicate, after the gateway's
    /// own settlement): nothing a device sent is dropped unread.
    pub async fn record_end_report(&self, r: &EndReportRow) -> Result<()> {
        let mut tx = self.begin().await?;
        insert_end_report(&mut tx, r).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Charging orders of devices that are offline and were last seen before `seen_before`
    /// (Unix seconds): the offline grace counts from when the device went silent.
    pub async fn charging_of_silent_devices(&self, seen_before: i64) -> Result<Vec<OrderRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ORDER_COLS_O} FROM orders o JOIN devices d ON d.device_id = o.device_id \
             WHERE o.status = 'charging' AND d.online = 0 \
             AND COALESCE(d.last_seen_at, 0) < $1 ORDER BY o.id"
        ))
        .bind(seen_before)
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

/// A device's answer to the command that caused a transition, written with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandAnswer {
    pub id: i64,
    pub acked: bool,
    pub reply_hex: String,
    pub result: String,
    pub at_ms: i64,
}

/// One row of `end_reports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndReportRow {
    pub order_no: Option<String>,
    pub device_id: String,
    pub port_no: i64,
    pub at_ms: i64,
    pub applied: bool,
    /// `settled`, `late`, `duplicate`, `after_gateway`, `unmatched`.
    pub outcome: &'static str,
    pub device_ref: Option<String>,
    pub detail: String,
}

async fn insert_end_report(tx: &mut Tx, r: &EndReportRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO end_reports (order_no, device_id, port_no, received_at_ms, applied, detail, \
         outcome, device_ref) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(r.order_no.clone())
    .bind(&r.device_id)
    .bind(r.port_no)
    .bind(r.at_ms)
    .bind(flag(r.applied))
    .bind(&r.detail)
    .bind(r.outcome)
    .bind(r.device_ref.clone())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
