//! The outbox's SQL: writing events inside the caller's transaction (with the order or device
//! context a receiver needs), and the webhook dispatcher's reads and writes — due events in
//! per-order order, delivery results in one transaction per round, dead letters and replay,
//! the figures `/api/v1/admin/stats` reports, and the tail the live stream follows.
//!
//! Ordering rule: an event is due only when no earlier event of the same order (or, for
//! events without an order, of the same device) is still pending — delivered, retrying or
//! waiting for the endpoint's circuit breaker. So a later event of an order is never
//! delivered before an earlier one that may still arrive; a dead event does not hold the rest
//! of its order (each event carries its per-order `sequence`, so the receiver sees the gap,
//! and the dead letter stays listed and replayable); different orders are independent.

use serde_json::{json, Map, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Result, Store, Tx};
use crate::domain::EndReason;

/// One event to put in the outbox.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_type: &'static str,
    pub device_id: String,
    pub order_no: Option<String>,
    pub data: Value,
}

/// One outbox row as the dispatcher, the dead-letter list and the stream read it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: String,
    pub event_type: String,
    pub device_id: String,
    pub order_no: Option<String>,
    /// The event's `data`, JSON text.
    pub payload: String,
    pub created_at_ms: i64,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at_ms: i64,
    pub delivered_at_ms: Option<i64>,
    pub dead_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_status: Option<i64>,
    /// Position among the events of its order (or, without an order, of its device), from 1;
    /// `None` for events written before the column existed.
    pub sequence: Option<i64>,
}

const OUTBOX_COLS: &str = "id, event_id, event_type, device_id, order_no, payload, created_at_ms, \
    status, attempts, next_attempt_at_ms, delivered_at_ms, dead_at_ms, last_error, last_status, \
    sequence";

fn outbox_from_row(r: &AnyRow) -> Result<OutboxRow> {
    Ok(OutboxRow {
        id: r.try_get("id")?,
        event_id: r.try_get("event_id")?,
        event_type: r.try_get("event_type")?,
        device_id: r.try_get("device_id")?,
        order_no: r.try_get("order_no")?,
        payload: r.try_get("payload")?,
        created_at_ms: r.try_get("created_at_ms")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at_ms: r.try_get("next_attempt_at_ms")?,
        delivered_at_ms: r.try_get("delivered_at_ms")?,
        dead_at_ms: r.try_get("dead_at_ms")?,
        last_error: r.try_get("last_error")?,
        last_status: r.try_get("last_status")?,
        sequence: r.try_get("sequence")?,
    })
}

/// What one delivery attempt came to; written by [`Store::record_deliveries`].
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryResult {
    Delivered {
        id: i64,
        at_ms: i64,
        latency_ms: i64,
        status: i64,
    },
    /// Try again at `next_at_ms`.
    Retry {
        id: i64,
        next_at_ms: i64,
        error: String,
        status: Option<i64>,
    },
    /// Not retryable, or retries exhausted.
    Dead {
        id: i64,
        at_ms: i64,
        error: String,
        status: Option<i64>,
    },
    /// A switched-off event type (e.g. `device.heartbeat`): never sent.
    Skipped { id: i64 },
    /// Not sent: the endpoint's circuit breaker opened before its turn. Nothing is written;
    /// the event stays due and spends no attempt.
    Deferred { id: i64 },
    /// A breaker probe sent ahead of the event's own retry time failed: the error is kept,
    /// the event's schedule and attempt budget are not touched.
    Probed {
        id: i64,
        error: String,
        status: Option<i64>,
    },
}

impl DeliveryResult {
    /// The outbox row it is about.
    pub fn id(&self) -> i64 {
        match self {
            DeliveryResult::Delivered { id, .. }
            | DeliveryResult::Retry { id, .. }
            | DeliveryResult::Dead { id, .. }
            | DeliveryResult::Skipped { id }
            | DeliveryResult::Deferred { id }
            | DeliveryResult::Probed { id, .. } => *id,
        }
    }
}

/// Outcome of a replay request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    Replayed,
    NotDead,
    NotFound,
}

/// Outbox figures for `/api/v1/admin/stats` and the metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushFigures {
    /// Events not delivered yet (pending).
    pub backlog: i64,
    /// Delivered since the counters started (they outlive retention).
    pub delivered: i64,
    pub dead: i64,
    /// Successful attempts / all attempts; 1.0 when nothing was attempted.
    pub success_rate: f64,
    /// Mean time from the event to the receiver's 2xx over the last 1,000 deliveries.
    pub mean_latency_ms: f64,
}

/// Inserts `key` only when the event's own data does not already say it.
fn put(map: &mut Map<String, Value>, key: &str, value: Value) {
    if !map.contains_key(key) && !value.is_null() {
        map.insert(key.to_string(), value);
    }
}

/// The event's data plus the order's (or device's) context, read in the same transaction,
/// so a receiver can bill from any single event: order, port, mode, prices, times, end
/// reason with its name and text.
async fn enrich(tx: &mut Tx, ev: &Event) -> Result<Value> {
    let mut data = ev.data.clone();
    let Value::Object(map) = &mut data else {
        return Ok(data);
    };
    if let Some(order_no) = &ev.order_no {
        let row = sqlx::query(
            "SELECT port_no, charge_mode, status, target_duration, target_energy_wh, amount, \
             price_per_kwh, service_fee, created_at_ms, started_at_ms, ended_at_ms, end_reason \
             FROM orders WHERE order_no = $1",
        )
        .bind(order_no)
        .fetch_optional(&mut **tx)
        .await?;
        put(map, "order_no", json!(order_no));
        if let Some(r) = row {
            let secs = |col: &str| -> Result<Value> {
                Ok(json!(r.try_get::<Option<i64>, _>(col)?.map(|ms| ms / 1000)))
            };
            put(map, "port_no", json!(r.try_get::<i64, _>("port_no")?));
            put(
                map,
                "charge_mode",
                json!(r.try_get::<i64, _>("charge_mode")?),
            );
            put(map, "status", json!(r.try_get::<String, _>("status")?));
            for col in [
                "target_duration",
                "target_energy_wh",
                "amount",
                "price_per_kwh",
                "service_fee",
            ] {
                put(map, col, json!(r.try_get::<i64, _>(col)?));
            }
            put(map, "created_at", secs("created_at_ms")?);
            put(map, "started_at", secs("started_at_ms")?);
            put(map, "ended_at", secs("ended_at_ms")?);
            put(
                map,
                "end_reason",
                json!(r.try_get::<Option<i64>, _>("end_reason")?),
            );
        }
        if let Some(code) = map.get("end_reason").and_then(Value::as_i64) {
            let reason = EndReason::from_code(code);
            put(map, "end_reason_name", json!(reason.name()));
            put(map, "end_reason_text", json!(reason.text_zh()));
        }
        if let Some(wh) = map.get("energy_wh").and_then(Value::as_i64) {
            put(map, "total_kwh", json!(wh as f64 / 1000.0));
            if let Some(d) = map.get("duration_sec").and_then(Value::as_i64) {
                if d > 0 && ev.event_type != "charging.progress" {
                    put(map, "avg_power", json!((wh * 3600 / d) as f64));
                }
            }
        }
    } else {
        let row = sqlx::query(
            "SELECT protocol, firmware, iccid, signal, port_count, created_at FROM devices \
             WHERE device_id = $1",
        )
        .bind(&ev.device_id)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(r) = row {
            put(map, "protocol", json!(r.try_get::<String, _>("protocol")?));
            put(
                map,
                "firmware",
                json!(r.try_get::<Option<String>, _>("firmware")?),
            );
            put(
                map,
                "iccid",
                json!(r.try_get::<Option<String>, _>("iccid")?),
            );
            put(map, "signal", json!(r.try_get::<Option<i64>, _>("signal")?));
            let ports = r.try_get::<i64, _>("port_count")?;
            if ports > 0 {
                put(map, "port_count", json!(ports));
            }
            if ev.event_type == "device.registered" {
                put(
                    map,
                    "registered_at",
                    json!(r.try_get::<i64, _>("created_at")?),
                );
            }
        }
    }
    Ok(data)
}

/// Writes one outbox row inside the caller's transaction (the state change's own).
pub(super) async fn insert_event(tx: &mut Tx, ev: &Event, now_ms: i64) -> Result<()> {
    let event_id = uuid::Uuid::new_v4().to_string();
    let data = enrich(tx, ev).await?;
    let sequence = next_sequence(tx, ev).await?;
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, device_id, order_no, payload, created_at_ms, \
         status, attempts, next_attempt_at_ms, sequence) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $6, $7)",
    )
    .bind(event_id)
    .bind(ev.event_type)
    .bind(&ev.device_id)
    .bind(ev.order_no.clone())
    .bind(data.to_string())
    .bind(now_ms)
    .bind(sequence)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The event's position among its order's events (or its device's, without an order): a
/// counter on the order (device) row, bumped in the event's own transaction — which also
/// serialises two writers of one order on PostgreSQL. An event of an order or device that has
/// no row (imports, tests) continues from the outbox's highest number.
async fn next_sequence(tx: &mut Tx, ev: &Event) -> Result<i64> {
    let bumped = match &ev.order_no {
        Some(order_no) => sqlx::query(
            "UPDATE orders SET event_seq = event_seq + 1 WHERE order_no = $1 RETURNING event_seq",
        )
        .bind(order_no)
        .fetch_optional(&mut **tx)
        .await?,
        None => {
            sqlx::query(
                "UPDATE devices SET event_seq = event_seq + 1 WHERE device_id = $1 \
             RETURNING event_seq",
            )
            .bind(&ev.device_id)
            .fetch_optional(&mut **tx)
            .await?
        }
    };
    if let Some(r) = bumped {
        return Ok(r.try_get("event_seq")?);
    }
    let r = match &ev.order_no {
        Some(order_no) => {
            sqlx::query(
                "SELECT CAST(COALESCE(MAX(sequence), 0) + 1 AS BIGINT) AS n FROM outbox \
             WHERE order_no = $1",
            )
            .bind(order_no)
            .fetch_one(&mut **tx)
            .await?
        }
        None => {
            sqlx::query(
                "SELECT CAST(COALESCE(MAX(sequence), 0) + 1 AS BIGINT) AS n FROM outbox \
             WHERE device_id = $1 AND order_no IS NULL",
            )
            .bind(&ev.device_id)
            .fetch_one(&mut **tx)
            .await?
        }
    };
    Ok(r.try_get("n")?)
}

/// Who may run the webhook dispatcher (one per database).
#[derive(Debug)]
pub enum DispatchLock {
    /// SQLite: one gateway per database file, nothing to coordinate.
    NotNeeded,
    /// PostgreSQL: this session holds the advisory lock until the connection is dropped.
    Held(sqlx::pool::PoolConnection<sqlx::Any>),
    /// Another gateway's dispatcher holds it.
    Busy,
}

/// The advisory-lock key of the webhook dispatcher.
const DISPATCH_LOCK_KEY: i64 = 7_055_001;

impl Store {
    /// Several gateways may share one PostgreSQL: only the one holding this lock delivers
    /// webhooks (the others stand by), so an event is not sent by two of them at once.
    pub async fn try_dispatch_lock(&self) -> Result<DispatchLock> {
        if self.backend == super::Backend::Sqlite {
            return Ok(DispatchLock::NotNeeded);
        }
        let mut conn = self.pool.acquire().await?;
        let got: bool = sqlx::query("SELECT pg_try_advisory_lock($1) AS ok")
            .bind(DISPATCH_LOCK_KEY)
            .fetch_one(&mut *conn)
            .await?
            .try_get("ok")?;
        Ok(if got {
            DispatchLock::Held(conn)
        } else {
            DispatchLock::Busy
        })
    }

    /// Writes one event in its own transaction, for changes that have no other state
    /// (`device.alarm`, `device.heartbeat` when switched on).
    pub async fn insert_event_now(&self, ev: &Event, now_ms: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        insert_event(&mut tx, ev, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes many events in one transaction (imports, benchmarks).
    pub async fn insert_events_now(&self, events: &[Event], now_ms: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        for ev in events {
            insert_event(&mut tx, ev, now_ms).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Pending events due at `now_ms` whose order (or device, for order-less events) has no
    /// earlier event still pending (a dead one does not hold them); oldest first, at most
    /// `limit`. Each order appears at most once, so the caller may deliver all of them at the
    /// same time.
    pub async fn due_events(&self, now_ms: i64, limit: i64) -> Result<Vec<OutboxRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLS} FROM outbox o \
             WHERE o.status = 'pending' AND o.next_attempt_at_ms <= $1 \
             AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.order_no = o.order_no \
                 AND p.id < o.id AND p.status = 'pending') \
             AND NOT EXISTS (SELECT 1 FROM outbox p WHERE o.order_no IS NULL \
                 AND p.device_id = o.device_id AND p.id < o.id \
                 AND p.status = 'pending' AND p.order_no IS NULL) \
             ORDER BY o.id LIMIT $2"
        ))
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(outbox_from_row).collect()
    }

    /// The earliest `next_attempt_at_ms` of a pending event, to know how long to sleep.
    pub async fn next_due_at(&self) -> Result<Option<i64>> {
        Ok(
            sqlx::query("SELECT MIN(next_attempt_at_ms) AS t FROM outbox WHERE status = 'pending'")
                .fetch_one(&self.pool)
                .await?
                .try_get("t")?,
        )
    }

    /// Writes a round's results in one transaction. Only pending rows change (a row replayed
    /// or delivered meanwhile keeps its state).
    pub async fn record_deliveries(&self, results: &[DeliveryResult]) -> Result<()> {
        let (mut delivered, mut attempts) = (0i64, 0i64);
        for r in results {
            match r {
                DeliveryResult::Delivered { .. } => {
                    delivered += 1;
                    attempts += 1;
                }
                DeliveryResult::Retry { .. }
                | DeliveryResult::Dead { .. }
                | DeliveryResult::Probed { .. } => attempts += 1,
                DeliveryResult::Skipped { .. } | DeliveryResult::Deferred { .. } => {}
            }
        }
        if results
            .iter()
            .all(|r| matches!(r, DeliveryResult::Deferred { .. }))
        {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        if attempts > 0 {
            sqlx::query(
                "UPDATE webhook_counters SET delivered = delivered + $1, attempts = attempts + $2 \
                 WHERE id = 1",
            )
            .bind(delivered)
            .bind(attempts)
            .execute(&mut *tx)
            .await?;
        }
        for r in results {
            let q = match r {
                DeliveryResult::Deferred { .. } => continue,
                DeliveryResult::Delivered {
                    id,
                    at_ms,
                    latency_ms,
                    status,
                } => sqlx::query(
                    "UPDATE outbox SET status = 'delivered', attempts = attempts + 1, \
                     delivered_at_ms = $2, latency_ms = $3, last_status = $4 \
                     WHERE id = $1 AND status = 'pending'",
                )
                .bind(*id)
                .bind(*at_ms)
                .bind(*latency_ms)
                .bind(*status),
                DeliveryResult::Retry {
                    id,
                    next_at_ms,
                    error,
                    status,
                } => sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at_ms = $2, \
                     last_error = $3, last_status = $4 WHERE id = $1 AND status = 'pending'",
                )
                .bind(*id)
                .bind(*next_at_ms)
                .bind(error.clone())
                .bind(*status),
                DeliveryResult::Dead {
                    id,
                    at_ms,
                    error,
                    status,
                } => sqlx::query(
                    "UPDATE outbox SET status = 'dead', attempts = attempts + 1, dead_at_ms = $2, \
                     last_error = $3, last_status = $4 WHERE id = $1 AND status = 'pending'",
                )
                .bind(*id)
                .bind(*at_ms)
                .bind(error.clone())
                .bind(*status),
                DeliveryResult::Probed { id, error, status } => sqlx::query(
                    "UPDATE outbox SET last_error = $2, last_status = $3 \
                     WHERE id = $1 AND status = 'pending'",
                )
                .bind(*id)
                .bind(error.clone())
                .bind(*status),
                DeliveryResult::Skipped { id } => sqlx::query(
                    "UPDATE outbox SET status = 'skipped' WHERE id = $1 AND status = 'pending'",
                )
                .bind(*id),
            };
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A page of dead letters, newest first, and the count of all of them.
    pub async fn dead_letters(&self, page: u32, size: u32) -> Result<(Vec<OutboxRow>, i64)> {
        let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM outbox WHERE status = 'dead'")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        let offset = i64::from(page.saturating_sub(1)) * i64::from(size);
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLS} FROM outbox WHERE status = 'dead' ORDER BY id DESC \
             LIMIT $1 OFFSET $2"
        ))
        .bind(i64::from(size))
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        let rows = rows.iter().map(outbox_from_row).collect::<Result<_>>()?;
        Ok((rows, total))
    }

    /// Puts a dead event back in the queue, due at once (whatever the dispatcher's clock
    /// says), with a fresh retry budget.
    pub async fn replay_dead(&self, event_id: &str) -> Result<Replay> {
        let n = sqlx::query(
            "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at_ms = 0, \
             dead_at_ms = NULL WHERE event_id = $1 AND status = 'dead'",
        )
        .bind(event_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n == 1 {
            return Ok(Replay::Replayed);
        }
        Ok(match self.outbox_event(event_id).await? {
            Some(_) => Replay::NotDead,
            None => Replay::NotFound,
        })
    }

    pub async fn outbox_event(&self, event_id: &str) -> Result<Option<OutboxRow>> {
        let row = sqlx::query(&format!(
            "SELECT {OUTBOX_COLS} FROM outbox WHERE event_id = $1"
        ))
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(outbox_from_row).transpose()
    }

    /// Events written after `after_id`, oldest first (the live stream's tail).
    pub async fn outbox_after(&self, after_id: i64, limit: i64) -> Result<Vec<OutboxRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLS} FROM outbox WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(outbox_from_row).collect()
    }

    /// Events written after the one with `event_id` (none when it is unknown), oldest first.
    pub async fn outbox_after_event(&self, event_id: &str, limit: i64) -> Result<Vec<OutboxRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLS} FROM outbox WHERE id > \
             (SELECT id FROM outbox WHERE event_id = $1) ORDER BY id LIMIT $2"
        ))
        .bind(event_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(outbox_from_row).collect()
    }

    pub async fn outbox_max_id(&self) -> Result<i64> {
        let id: Option<i64> = sqlx::query("SELECT MAX(id) AS m FROM outbox")
            .fetch_one(&self.pool)
            .await?
            .try_get("m")?;
        Ok(id.unwrap_or(0))
    }

    /// Pulls every waiting retry forward to `now_ms`: the endpoint's circuit breaker just
    /// closed, so retries scheduled while it failed need not wait out their backoff (the
    /// backlog drains at full speed). Returns how many rows moved.
    pub async fn retry_now(&self, now_ms: i64) -> Result<u64> {
        self.check_write()?;
        Ok(sqlx::query(
            "UPDATE outbox SET next_attempt_at_ms = $1 \
             WHERE status = 'pending' AND next_attempt_at_ms > $1",
        )
        .bind(now_ms)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// (pending, dead) counts, for the gauges.
    pub async fn backlog_and_dead(&self) -> Result<(i64, i64)> {
        let q = self.webhook_queue().await?;
        Ok((q.backlog, q.dead))
    }

    /// The webhook queue from indexed reads only (the pending and dead rows, never the
    /// delivered ones): backlog, dead letters, the oldest pending event's time.
    pub async fn webhook_queue(&self) -> Result<WebhookQueue> {
        let r = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM outbox WHERE status = 'pending') AS b, \
             (SELECT COUNT(*) FROM outbox WHERE status = 'dead') AS f, \
             (SELECT created_at_ms FROM outbox WHERE status = 'pending' ORDER BY id LIMIT 1) AS o",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(WebhookQueue {
            backlog: r.try_get("b")?,
            dead: r.try_get("f")?,
            oldest_pending_ms: r.try_get("o")?,
        })
    }

    /// Backlog and dead counts, success rate per attempt (from the delivery counters, which
    /// survive retention) and mean push latency over the last 1,000 deliveries.
    pub async fn push_figures(&self) -> Result<PushFigures> {
        let q = self.webhook_queue().await?;
        let r =
            sqlx::query("SELECT delivered AS d, attempts AS a FROM webhook_counters WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        let (delivered, attempts): (i64, i64) = match r {
            Some(r) => (r.try_get("d")?, r.try_get("a")?),
            None => (0, 0),
        };
        let latencies: Vec<i64> = sqlx::query(
            "SELECT delivered_at_ms - created_at_ms AS l FROM outbox WHERE status = 'delivered' \
             ORDER BY id DESC LIMIT 1000",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>("l"))
        .collect::<std::result::Result<_, _>>()?;
        let mean_latency_ms = if latencies.is_empty() {
            0.0
        } else {
            latencies.iter().map(|l| (*l).max(0) as f64).sum::<f64>() / latencies.len() as f64
        };
        Ok(PushFigures {
            backlog: q.backlog,
            delivered,
            dead: q.dead,
            success_rate: if attempts == 0 {
                1.0
            } else {
                (delivered as f64 / attempts as f64).min(1.0)
            },
            mean_latency_ms,
        })
    }
}

/// The webhook queue (`Store::webhook_queue`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookQueue {
    pub backlog: i64,
    pub dead: i64,
    /// `created_at_ms` of the oldest pending event.
    pub oldest_pending_ms: Option<i64>,
}
