//! The webhook dispatcher. One round ([`Dispatcher::deliver_next`]): read the due events
//! (each order's oldest undelivered one, so each order at most once), `POST` them at the same
//! time with bounded concurrency, write every result in one transaction. A round waits at most
//! `round_wait` for its answers; a slower request stays in flight (its order waits for it) and
//! is recorded by a later round. The loop around it ([`Dispatcher::run`]) only sleeps when
//! there is nothing due and stops on shutdown.
//!
//! A result is written after the receiver answered; a crash in between means the event is sent
//! again after the restart with the same `event_id` (at-least-once: receivers dedupe by ID).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{signing, EventClock, BACKLOG, DEAD_LETTERS, DELIVERIES, DELIVERY_DURATION};
use crate::store::outbox::{DeliveryResult, DispatchLock, OutboxRow};
use crate::store::{Store, StoreError};

/// Waits after failed attempts 1…5; a sixth failure is final.
pub const BACKOFF_SECS: [u64; 5] = [1, 2, 4, 8, 16];

/// Where and how to deliver.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub url: String,
    pub secret: String,
    /// Per request, connect to last body byte.
    pub timeout: Duration,
    /// Events read per round.
    pub batch: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// `device.heartbeat` is off by default.
    pub include_heartbeats: bool,
    /// How long the loop sleeps when nothing is due (a replay wakes it at once).
    pub idle_poll: Duration,
    /// How long a round waits for its slowest answers before recording the others; the
    /// stragglers stay in flight and are recorded by a later round.
    pub round_wait: Duration,
}

impl WebhookSettings {
    pub fn new(url: &str, secret: &str) -> Self {
        WebhookSettings {
            url: url.to_string(),
            secret: secret.to_string(),
            timeout: Duration::from_secs(10),
            batch: 512,
            concurrency: 64,
            include_heartbeats: false,
            idle_poll: Duration::from_millis(100),
            round_wait: Duration::from_millis(500),
        }
    }
}

/// What a round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing was due.
    Idle,
    Worked {
        delivered: usize,
        retried: usize,
        dead: usize,
    },
}

/// How one HTTP attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered with this status.
    Status(u16),
    /// Network error or timeout.
    Failed(String),
}

/// The retry rule: 2xx delivered; 5xx, 429, network errors and timeouts retried on the
/// backoff schedule; any other status, or a failure after the last retry, dead.
/// `attempts_before` counts the attempts already made before this one.
pub fn classify(
    id: i64,
    attempt: &Attempt,
    attempts_before: i64,
    now_ms: i64,
    latency_ms: i64,
) -> DeliveryResult {
    let (retryable, status, error) = match attempt {
        Attempt::Status(s) if (200..300).contains(s) => {
            return DeliveryResult::Delivered {
                id,
                at_ms: now_ms,
                latency_ms,
                status: i64::from(*s),
            }
        }
        Attempt::Status(s) => (
            *s >= 500 || *s == 429,
            Some(i64::from(*s)),
            format!("HTTP {s}"),
        ),
        Attempt::Failed(e) => (true, None, e.clone()),
    };
    let done = attempts_before.max(0) as usize + 1;
    match BACKOFF_SECS.get(done - 1) {
        Some(wait) if retryable => DeliveryResult::Retry {
            id,
            next_at_ms: now_ms + (*wait as i64) * 1000,
            error,
            status,
        },
        _ => DeliveryResult::Dead {
            id,
            at_ms: now_ms,
            error: if retryable {
                format!("{error} (after {done} attempts)")
            } else {
                error
            },
            status,
        },
    }
}

/// The webhook body, `{event_id, event_type, device_phy_id, order_no?, timestamp, nonce,
/// data}`, with `data` copied as stored.
pub fn body_of(row: &OutboxRow, nonce: &str) -> String {
    let s = |v: &str| serde_json::Value::from(v).to_string();
    let data = if row.payload.trim().is_empty() {
        "{}"
    } else {
        row.payload.as_str()
    };
    let mut body = String::with_capacity(160 + row.payload.len());
    body.push_str("{\"event_id\":");
    body.push_str(&s(&row.event_id));
    body.push_str(",\"event_type\":");
    body.push_str(&s(&row.event_type));
    body.push_str(",\"device_phy_id\":");
    body.push_str(&s(&row.device_id));
    if let Some(no) = &row.order_no {
        body.push_str(",\"order_no\":");
        body.push_str(&s(no));
    }
    body.push_str(",\"timestamp\":");
    body.push_str(&(row.created_at_ms / 1000).to_string());
    body.push_str(",\"nonce\":");
    body.push_str(&s(nonce));
    body.push_str(",\"data\":");
    body.push_str(data);
    body.push('}');
    body
}

/// What sends one event: cheap to clone into a task.
#[derive(Clone)]
struct Sender {
    http: reqwest::Client,
    url: reqwest::Url,
    secret: Arc<str>,
    clock: EventClock,
    include_heartbeats: bool,
}

impl Sender {
    /// One signed `POST` of `body`; returns how it ended and the round trip.
    async fn post(&self, event_id: &str, nonce: &str, body: String) -> (Attempt, Duration) {
        let timestamp = self.clock.now_ms() / 1000;
        let signature = signing::sign(
            self.secret.as_bytes(),
            self.url.path(),
            timestamp,
            nonce,
            body.as_bytes(),
        );
        let started = Instant::now();
        let sent = self
            .http
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("X-Event-Id", event_id)
            .header("X-Timestamp", timestamp.to_string())
            .header("X-Nonce", nonce)
            .header("X-Signature", signature)
            .body(body)
            .send()
            .await;
        let attempt = match sent {
            // Read the answer so the connection goes back to the pool; the status decides.
            Ok(resp) => {
                let status = resp.status().as_u16();
                let _ = resp.bytes().await;
                Attempt::Status(status)
            }
            Err(e) if e.is_timeout() => Attempt::Failed(format!("timeout: {e}")),
            Err(e) => Attempt::Failed(format!("network: {e}")),
        };
        (attempt, started.elapsed())
    }

    async fn attempt(&self, row: OutboxRow) -> DeliveryResult {
        if row.event_type == "device.heartbeat" && !self.include_heartbeats {
            return DeliveryResult::Skipped { id: row.id };
        }
        let nonce = signing::nonce();
        let body = body_of(&row, &nonce);
        let (attempt, took) = self.post(&row.event_id, &nonce, body).await;
        let result = classify(
            row.id,
            &attempt,
            row.attempts,
            self.clock.now_ms(),
            took.as_millis() as i64,
        );
        let label = match &result {
            DeliveryResult::Delivered { .. } => "delivered",
            DeliveryResult::Retry { .. } => "retry",
            DeliveryResult::Dead { .. } => "dead",
            DeliveryResult::Skipped { .. } => "skipped",
        };
        metrics::histogram!(DELIVERY_DURATION, "result" => label).record(took.as_secs_f64());
        match &result {
            DeliveryResult::Retry { error, .. } => {
                tracing::info!(event_id = %row.event_id, attempt = row.attempts + 1, %error, "webhook attempt failed; will retry")
            }
            DeliveryResult::Dead { error, .. } => {
                tracing::warn!(event_id = %row.event_id, event_type = %row.event_type, %error, "webhook event dead-lettered")
            }
            _ => {}
        }
        result
    }
}

/// Attempts started and not recorded yet; a slow one may outlive its round.
struct InFlight {
    ids: HashSet<i64>,
    done: mpsc::UnboundedReceiver<DeliveryResult>,
}

pub struct Dispatcher {
    store: Store,
    sender: Sender,
    settings: WebhookSettings,
    clock: EventClock,
    wake: Notify,
    permits: Arc<Semaphore>,
    done_tx: mpsc::UnboundedSender<DeliveryResult>,
    in_flight: tokio::sync::Mutex<InFlight>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("url", &self.settings.url)
            .finish()
    }
}

impl Dispatcher {
    pub fn new(store: Store, settings: WebhookSettings, clock: EventClock) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(&settings.url)
            .map_err(|e| anyhow::anyhow!("webhook URL {}: {e}", settings.url))?;
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(settings.concurrency.max(1))
            .user_agent(concat!("pilekit-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let (done_tx, done) = mpsc::unbounded_channel();
        Ok(Dispatcher {
            store,
            sender: Sender {
                http,
                url,
                secret: settings.secret.as_str().into(),
                clock: clock.clone(),
                include_heartbeats: settings.include_heartbeats,
            },
            permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            settings,
            clock,
            wake: Notify::new(),
            done_tx,
            in_flight: tokio::sync::Mutex::new(InFlight {
                ids: HashSet::new(),
                done,
            }),
        })
    }

    pub fn url(&self) -> &str {
        &self.settings.url
    }

    /// Ends an idle wait now (after a replay).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// One round: starts every due event (each order's oldest undelivered one) at once,
    /// bounded by the concurrency, waits for them — up to `round_wait`, so one slow receiver
    /// answer does not hold up other orders; a straggler is recorded by a later round and its
    /// order waits for it — and records the results in one transaction.
    pub async fn deliver_next(&self) -> Result<Step, StoreError> {
        let mut fl = self.in_flight.lock().await;
        let now = self.clock.now_ms();
        let limit = (self.settings.batch + fl.ids.len()) as i64;
        let rows: Vec<OutboxRow> = self
            .store
            .due_events(now, limit)
            .await?
            .into_iter()
            .filter(|r| !fl.ids.contains(&r.id))
            .take(self.settings.batch)
            .collect();
        let mut results: Vec<DeliveryResult> = Vec::new();
        while let Ok(r) = fl.done.try_recv() {
            results.push(r);
        }
        if rows.is_empty() && results.is_empty() && fl.ids.is_empty() {
            return Ok(Step::Idle);
        }
        let mut waiting: HashSet<i64> = HashSet::with_capacity(rows.len());
        for row in rows {
            fl.ids.insert(row.id);
            waiting.insert(row.id);
            let (sender, permits, done) = (
                self.sender.clone(),
                self.permits.clone(),
                self.done_tx.clone(),
            );
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                let _ = done.send(sender.attempt(row).await);
            });
        }
        // Wait for this round's attempts (or, with none started, for any one in flight).
        let deadline = tokio::time::Instant::now() + self.settings.round_wait;
        let mut wait_any = waiting.is_empty() && results.is_empty();
        while !waiting.is_empty() || wait_any {
            tokio::select! {
                r = fl.done.recv() => match r {
                    Some(r) => {
                        waiting.remove(&r.id());
                        results.push(r);
                        wait_any = false;
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        self.store.record_deliveries(&results).await?;
        for r in &results {
            fl.ids.remove(&r.id());
        }
        let (mut delivered, mut retried, mut dead) = (0, 0, 0);
        for r in &results {
            match r {
                DeliveryResult::Delivered { .. } | DeliveryResult::Skipped { .. } => delivered += 1,
                DeliveryResult::Retry { .. } => retried += 1,
                DeliveryResult::Dead { .. } => dead += 1,
            }
        }
        metrics::counter!(DELIVERIES, "result" => "delivered").increment(delivered as u64);
        metrics::counter!(DELIVERIES, "result" => "retry").increment(retried as u64);
        metrics::counter!(DELIVERIES, "result" => "dead").increment(dead as u64);
        Ok(Step::Worked {
            delivered,
            retried,
            dead,
        })
    }

    /// Rounds until nothing is due (tests and the benchmark).
    pub async fn drain(&self) -> Result<usize, StoreError> {
        let mut delivered_total = 0;
        while let Step::Worked { delivered, .. } = self.deliver_next().await? {
            delivered_total += delivered;
        }
        Ok(delivered_total)
    }

    /// The delivery loop: rounds back to back while there is work, a short idle wait (or a
    /// wake-up) otherwise; the gauges refresh about once a second. Stops on `shutdown`,
    /// abandoning a round in flight (its events are sent again later, same IDs).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        // One dispatcher per database: on a shared PostgreSQL the others stand by.
        let mut told = false;
        let _lock = loop {
            let pause = match self.store.try_dispatch_lock().await {
                Ok(DispatchLock::Busy) => {
                    if !told {
                        tracing::info!("another gateway delivers the webhooks; standing by");
                        told = true;
                    }
                    Duration::from_secs(5)
                }
                Ok(lock) => break lock,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook dispatcher lock failed");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => return,
            }
        };
        let mut gauges_at: Option<Instant> = None;
        loop {
            if gauges_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                gauges_at = Some(Instant::now());
                if let Ok((backlog, dead)) = self.store.backlog_and_dead().await {
                    metrics::gauge!(BACKLOG).set(backlog as f64);
                    metrics::gauge!(DEAD_LETTERS).set(dead as f64);
                }
            }
            let step = tokio::select! {
                s = self.deliver_next() => s,
                _ = shutdown.cancelled() => break,
            };
            let pause = match step {
                Ok(Step::Worked { .. }) => continue,
                Ok(Step::Idle) => self.settings.idle_poll,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook round failed");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => break,
            }
        }
        tracing::info!("webhook dispatcher stopped");
    }

    /// Sends a signed `webhook.test` event now (not through the outbox) and reports what
    /// the receiver answered: the acceptance record's webhook connectivity check.
    pub async fn send_test(&self) -> pile_api::WebhookTestResult {
        let now = self.clock.now_ms();
        let row = OutboxRow {
            id: 0,
            event_id: uuid::Uuid::new_v4().to_string(),
            event_type: "webhook.test".into(),
            device_id: String::new(),
            order_no: None,
            payload:
                serde_json::json!({"message": "webhook connectivity test", "sent_at": now / 1000})
                    .to_string(),
            created_at_ms: now,
            status: "pending".into(),
            attempts: 0,
            next_attempt_at_ms: now,
            delivered_at_ms: None,
            dead_at_ms: None,
            last_error: None,
            last_status: None,
        };
        let nonce = signing::nonce();
        let (attempt, took) = self
            .sender
            .post(&row.event_id, &nonce, body_of(&row, &nonce))
            .await;
        let (status, error) = match attempt {
            Attempt::Status(s) => (Some(s), None),
            Attempt::Failed(e) => (None, Some(e)),
        };
        pile_api::WebhookTestResult {
            url: self.settings.url.clone(),
            event_id: row.event_id,
            delivered: status.is_some_and(|s| (200..300).contains(&s)),
            status,
            latency_ms: took.as_secs_f64() * 1000.0,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next_at(r: &DeliveryResult) -> Option<i64> {
        match r {
            DeliveryResult::Retry { next_at_ms, .. } => Some(*next_at_ms),
            _ => None,
        }
    }

    #[test]
    fn failures_retry_at_1_2_4_8_16_seconds_then_die() {
        let waits: Vec<Option<i64>> = (0..6)
            .map(|before| next_at(&classify(1, &Attempt::Status(500), before, 0, 3)))
            .collect();
        assert_eq!(
            waits,
            [
                Some(1000),
                Some(2000),
                Some(4000),
                Some(8000),
                Some(16000),
                None
            ]
        );
        assert!(matches!(
            classify(1, &Attempt::Status(503), 5, 0, 3),
            DeliveryResult::Dead { .. }
        ));
    }

    #[test]
    fn timeouts_network_errors_5xx_and_429_retry_other_4xx_die_at_once() {
        for a in [
            Attempt::Status(500),
            Attempt::Status(502),
            Attempt::Status(429),
            Attempt::Failed("timeout".into()),
            Attempt::Failed("connection refused".into()),
        ] {
            assert!(
                matches!(classify(1, &a, 0, 0, 0), DeliveryResult::Retry { .. }),
                "{a:?}"
            );
        }
        for s in [400, 401, 403, 404, 410, 422, 301] {
            assert!(
                matches!(
                    classify(1, &Attempt::Status(s), 0, 0, 0),
                    DeliveryResult::Dead { status: Some(x), .. } if x == i64::from(s)
                ),
                "{s}"
            );
        }
        assert!(matches!(
            classify(1, &Attempt::Status(204), 3, 7, 2),
            DeliveryResult::Delivered {
                at_ms: 7,
                latency_ms: 2,
                status: 204,
                ..
            }
        ));
    }

    #[test]
    fn the_body_has_the_contract_fields_with_data_as_stored() {
        let row = OutboxRow {
            id: 1,
            event_id: "e-1".into(),
            event_type: "order.completed".into(),
            device_id: "dev\"1".into(),
            order_no: Some("o-1".into()),
            payload: r#"{"final_amount":24}"#.into(),
            created_at_ms: 1_704_067_200_999,
            status: "pending".into(),
            attempts: 0,
            next_attempt_at_ms: 0,
            delivered_at_ms: None,
            dead_at_ms: None,
            last_error: None,
            last_status: None,
        };
        let body = body_of(&row, "n1");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event_id": "e-1", "event_type": "order.completed",
                "device_phy_id": "dev\"1", "order_no": "o-1", "timestamp": 1_704_067_200,
                "nonce": "n1", "data": {"final_amount": 24}})
        );
        let no_order = OutboxRow {
            order_no: None,
            ..row
        };
        let v: serde_json::Value = serde_json::from_str(&body_of(&no_order, "n")).unwrap();
        assert!(v.get("order_no").is_none());
    }
}
