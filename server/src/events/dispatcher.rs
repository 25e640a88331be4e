//! The webhook dispatcher. One round ([`Dispatcher::deliver_next`]): read the due events
//! (each order's oldest undelivered one, so each order at most once), `POST` them at the same
//! time with bounded concurrency, write every result in one transaction. A round waits at most
//! `round_wait` for its answers; a slower request stays in flight (its order waits for it) and
//! is recorded by a later round. The loop around it ([`Dispatcher::run`]) only sleeps when
//! there is nothing due and stops on shutdown.
//!
//! Outages: a failed attempt is retried on the [retry schedule](DEFAULT_RETRY_SCHEDULE)
//! (5 s … 10 h, about 27.6 h in all). The endpoint has a circuit [`Breaker`]: after
//! `breaker_failures` failures in a row it opens, and then events wait without spending
//! attempts while one probe (the oldest event first in its order) goes out at most every
//! `probe_interval` — a failed probe counts against its event only if the event's retry was
//! due anyway. The first answer closes it; retries scheduled meanwhile are pulled forward and
//! the backlog drains at full speed.
//!
//! A result is written after the receiver answered; a crash in between means the event is sent
//! again after the restart with the same `event_id` (at-least-once: receivers dedupe by ID).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use pile_api::{BreakerState, WebhookEndpointStatus};

use super::{
    signing, EventClock, BACKLOG, BREAKER_STATE, DEAD_LETTERS, DELIVERIES, DELIVERY_DURATION,
    OLDEST_PENDING,
};
use crate::store::outbox::{DeliveryResult, DispatchLock, OutboxRow};
use crate::store::{Store, StoreError};

/// Waits after failed attempts 1…7 (in the spirit of Standard Webhooks: 5 s, 5 min, 30 min,
/// 2 h, 5 h, 10 h, 10 h); the failure after the last wait is final, about 27.6 h after the
/// first attempt.
pub const DEFAULT_RETRY_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];

/// Failures in a row that open the endpoint's circuit breaker.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// While the breaker is open, one probe at most this often.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(30);

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
    /// Waits after failed attempts; one more failure after the last is final (dead letter).
    pub retry_schedule: Vec<Duration>,
    /// Failed attempts in a row that open the circuit breaker (at least 1).
    pub breaker_failures: u32,
    /// While the breaker is open, one probe at most this often.
    pub probe_interval: Duration,
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
            retry_schedule: DEFAULT_RETRY_SCHEDULE.to_vec(),
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            probe_interval: DEFAULT_PROBE_INTERVAL,
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

impl Attempt {
    /// The endpoint is up: it answered with something other than 5xx or 429 (a 4xx is about
    /// the event, not the endpoint).
    pub fn endpoint_ok(&self) -> bool {
        matches!(self, Attempt::Status(s) if *s < 500 && *s != 429)
    }
}

/// The retry rule: 2xx delivered; 5xx, 429, network errors and timeouts retried on the
/// `schedule`; any other status, or a failure after the last wait, dead.
/// `attempts_before` counts the attempts already made before this one.
pub fn classify(
    id: i64,
    attempt: &Attempt,
    attempts_before: i64,
    now_ms: i64,
    latency_ms: i64,
    schedule: &[Duration],
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
    match schedule.get(done - 1) {
        Some(wait) if retryable => DeliveryResult::Retry {
            id,
            next_at_ms: now_ms + wait.as_millis() as i64,
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

/// The webhook body, `{event_id, event_type, device_phy_id, order_no?, sequence?, timestamp,
/// nonce, data}`, with `data` copied as stored. `sequence` counts the events of the order (of
/// the device, without an order) from 1: a receiver that sees a gap knows an earlier event
/// was dead-lettered (or is still on its way, if it was retried past a later one's delivery).
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
    if let Some(seq) = row.sequence {
        body.push_str(",\"sequence\":");
        body.push_str(&seq.to_string());
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

/// The URL without credentials or query string, for stats.
fn public_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => String::new(),
    }
}

/// What sends one event: cheap to clone into a task.
#[derive(Clone)]
struct Sender {
    http: reqwest::Client,
    url: reqwest::Url,
    secret: Arc<str>,
    clock: EventClock,
    include_heartbeats: bool,
    schedule: Arc<[Duration]>,
    breaker: Arc<std::sync::Mutex<Breaker>>,
}

impl Sender {
    /// One signed `POST` of `body`; returns how it ended and the round trip.
    async fn post(
        &self,
        event_id: &str,
        sequence: Option<i64>,
        nonce: &str,
        body: String,
    ) -> (Attempt, Duration) {
        let timestamp = self.clock.now_ms() / 1000;
        let signature = signing::sign(
            self.secret.as_bytes(),
            self.url.path(),
            timestamp,
            nonce,
            body.as_bytes(),
        );
        let started = Instant::now();
        let mut req = self
            .http
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("X-Event-Id", event_id)
            .header("X-Timestamp", timestamp.to_string())
            .header("X-Nonce", nonce)
            .header("X-Signature", signature);
        if let Some(seq) = sequence {
            req = req.header("X-Event-Sequence", seq.to_string());
        }
        let sent = req.body(body).send().await;
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
            self.breaker.lock().unwrap().release_probe(row.id);
            return DeliveryResult::Skipped { id: row.id };
        }
        // The breaker may have opened since the round picked this event: then it waits.
        if !self.breaker.lock().unwrap().may_send(row.id) {
            return DeliveryResult::Deferred { id: row.id };
        }
        // A probe may go ahead of the event's own retry time; failing, it costs the event
        // nothing.
        let early = row.next_attempt_at_ms > self.clock.now_ms();
        let nonce = signing::nonce();
        let body = body_of(&row, &nonce);
        let (attempt, took) = self.post(&row.event_id, row.sequence, &nonce, body).await;
        let now = self.clock.now_ms();
        self.breaker.lock().unwrap().observe(row.id, &attempt, now);
        let mut result = classify(
            row.id,
            &attempt,
            row.attempts,
            now,
            took.as_millis() as i64,
            &self.schedule,
        );
        if early && !attempt.endpoint_ok() {
            if let DeliveryResult::Retry { error, status, .. }
            | DeliveryResult::Dead { error, status, .. } = &result
            {
                result = DeliveryResult::Probed {
                    id: row.id,
                    error: error.clone(),
                    status: *status,
                };
            }
        }
        let label = match &result {
            DeliveryResult::Delivered { .. } => "delivered",
            DeliveryResult::Retry { .. } => "retry",
            DeliveryResult::Dead { .. } => "dead",
            DeliveryResult::Skipped { .. } => "skipped",
            DeliveryResult::Deferred { .. } => "deferred",
            DeliveryResult::Probed { .. } => "retry",
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

/// The endpoint's circuit breaker. Closed: events flow. After `threshold` failed attempts in
/// a row it opens: no event is sent (none spends an attempt) except one probe at most every
/// `probe_interval`; while the probe is out it is half-open. The probe's answer (any answer
/// but 5xx/429) closes it; a failed probe opens it for another interval.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: BreakerState,
    failures: u32,
    threshold: u32,
    probe_interval_ms: i64,
    /// While open: the earliest time of the next probe.
    next_probe_at_ms: i64,
    /// While half-open: the event sent as the probe.
    probe_id: Option<i64>,
    last_success_ms: Option<i64>,
    /// Set when it closes after being open; taken by the round that pulls retries forward.
    just_closed: bool,
}

/// What a round may send, by the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Everything due, up to the batch size.
    All,
    /// One probe.
    Probe,
    /// Nothing (open, the next probe is not due; or half-open, a probe is out).
    Wait,
}

impl Breaker {
    pub fn new(threshold: u32, probe_interval: Duration) -> Self {
        Breaker {
            state: BreakerState::Closed,
            failures: 0,
            threshold: threshold.max(1),
            probe_interval_ms: probe_interval.as_millis() as i64,
            next_probe_at_ms: 0,
            probe_id: None,
            last_success_ms: None,
            just_closed: false,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    fn plan(&self, now_ms: i64) -> Plan {
        match self.state {
            BreakerState::Closed => Plan::All,
            BreakerState::Open if now_ms >= self.next_probe_at_ms => Plan::Probe,
            _ => Plan::Wait,
        }
    }

    /// The round sends `id` as its probe.
    fn probing(&mut self, id: i64) {
        self.state = BreakerState::HalfOpen;
        self.probe_id = Some(id);
    }

    /// The round picked a probe but none was due: it stays open.
    fn no_probe(&mut self) {
        if self.state == BreakerState::HalfOpen && self.probe_id.is_none() {
            self.state = BreakerState::Open;
        }
    }

    /// The probe was not sent after all (a switched-off event type): probe with another.
    fn release_probe(&mut self, id: i64) {
        if self.state == BreakerState::HalfOpen && self.probe_id == Some(id) {
            self.state = BreakerState::Open;
            self.probe_id = None;
        }
    }

    fn may_send(&self, id: i64) -> bool {
        match self.state {
            BreakerState::Closed => true,
            _ => self.probe_id == Some(id),
        }
    }

    fn observe(&mut self, id: i64, attempt: &Attempt, now_ms: i64) {
        if attempt.endpoint_ok() {
            if self.state != BreakerState::Closed {
                self.just_closed = true;
                tracing::info!("webhook endpoint answers again; circuit breaker closed");
            }
            self.state = BreakerState::Closed;
            self.failures = 0;
            self.probe_id = None;
            self.last_success_ms = Some(now_ms);
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let open = match self.state {
            BreakerState::Closed => self.failures >= self.threshold,
            BreakerState::HalfOpen => self.probe_id == Some(id),
            BreakerState::Open => false,
        };
        if open {
            if self.state == BreakerState::Closed {
                tracing::warn!(
                    failures = self.failures,
                    "webhook endpoint failing; circuit breaker open, probing every {} s",
                    self.probe_interval_ms / 1000
                );
            }
            self.state = BreakerState::Open;
            self.probe_id = None;
            self.next_probe_at_ms = now_ms + self.probe_interval_ms;
        }
    }

    fn take_just_closed(&mut self) -> bool {
        std::mem::take(&mut self.just_closed)
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
    breaker: Arc<std::sync::Mutex<Breaker>>,
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
        let breaker = Arc::new(std::sync::Mutex::new(Breaker::new(
            settings.breaker_failures,
            settings.probe_interval,
        )));
        Ok(Dispatcher {
            store,
            sender: Sender {
                http,
                url,
                secret: settings.secret.as_str().into(),
                clock: clock.clone(),
                include_heartbeats: settings.include_heartbeats,
                schedule: settings.retry_schedule.clone().into(),
                breaker: breaker.clone(),
            },
            breaker,
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

    /// The circuit breaker as it stands.
    pub fn breaker(&self) -> Breaker {
        self.breaker.lock().unwrap().clone()
    }

    /// The endpoint's delivery state for `/api/v1/admin/stats`: breaker, backlog, oldest
    /// pending age and dead letters (indexed reads of the pending and dead rows only).
    pub async fn endpoint_status(&self) -> Result<WebhookEndpointStatus, StoreError> {
        let q = self.store.webhook_queue().await?;
        let now = self.clock.now_ms();
        let b = self.breaker();
        Ok(WebhookEndpointStatus {
            url: public_url(&self.settings.url),
            state: b.state,
            consecutive_failures: b.failures,
            backlog: q.backlog,
            oldest_pending_age_sec: q.oldest_pending_ms.map(|t| (now - t).max(0) / 1000),
            dead_letters: q.dead,
            next_probe_at: (b.state != BreakerState::Closed)
                .then_some(b.next_probe_at_ms.div_euclid(1000)),
            last_success_at: b.last_success_ms.map(|t| t.div_euclid(1000)),
        })
    }

    /// Sets the gauges of `/metrics`: backlog, dead letters, oldest pending age, breaker.
    pub async fn refresh_gauges(&self) -> Result<(), StoreError> {
        let s = self.endpoint_status().await?;
        metrics::gauge!(BACKLOG).set(s.backlog as f64);
        metrics::gauge!(DEAD_LETTERS).set(s.dead_letters as f64);
        metrics::gauge!(OLDEST_PENDING).set(s.oldest_pending_age_sec.unwrap_or(0) as f64);
        metrics::gauge!(BREAKER_STATE).set(match s.state {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        });
        Ok(())
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
        let plan = self.breaker.lock().unwrap().plan(now);
        let take = match plan {
            Plan::All => self.settings.batch,
            Plan::Probe => 1,
            Plan::Wait => 0,
        };
        let rows: Vec<OutboxRow> = if take == 0 {
            Vec::new()
        } else {
            let limit = (take + fl.ids.len()) as i64;
            // The probe is the oldest event first in its order, due or not: the endpoint is
            // probed while anything waits (a probe ahead of its event's retry time does not
            // spend the event's attempts).
            let due_at = if plan == Plan::Probe { i64::MAX } else { now };
            self.store
                .due_events(due_at, limit)
                .await?
                .into_iter()
                .filter(|r| !fl.ids.contains(&r.id))
                .take(take)
                .collect()
        };
        if plan == Plan::Probe {
            let mut b = self.breaker.lock().unwrap();
            match rows.first() {
                Some(r) => b.probing(r.id),
                None => b.no_probe(),
            }
        }
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
        if self.breaker.lock().unwrap().take_just_closed() {
            // Retries scheduled while the endpoint failed need not wait out their backoff.
            let moved = self.store.retry_now(self.clock.now_ms()).await?;
            tracing::info!(moved, "webhook backlog drains at full speed");
        }
        let (mut delivered, mut retried, mut dead) = (0, 0, 0);
        for r in &results {
            match r {
                DeliveryResult::Delivered { .. } | DeliveryResult::Skipped { .. } => delivered += 1,
                DeliveryResult::Retry { .. } | DeliveryResult::Probed { .. } => retried += 1,
                DeliveryResult::Dead { .. } => dead += 1,
                DeliveryResult::Deferred { .. } => {}
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
                if let Err(e) = self.refresh_gauges().await {
                    tracing::debug!(error = %e, "webhook gauges not refreshed");
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
            sequence: None,
        };
        let nonce = signing::nonce();
        let (attempt, took) = self
            .sender
            .post(&row.event_id, None, &nonce, body_of(&row, &nonce))
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

    const S: &[Duration] = &DEFAULT_RETRY_SCHEDULE;

    #[test]
    fn failures_retry_over_hours_then_die() {
        let waits: Vec<Option<i64>> = (0..8)
            .map(|before| next_at(&classify(1, &Attempt::Status(500), before, 0, 3, S)))
            .collect();
        let (m, h) = (60_000, 3_600_000);
        assert_eq!(
            waits,
            [
                Some(5_000),
                Some(5 * m),
                Some(30 * m),
                Some(2 * h),
                Some(5 * h),
                Some(10 * h),
                Some(10 * h),
                None
            ]
        );
        let total: i64 = waits.iter().flatten().sum();
        assert!(total > 27 * h && total < 28 * h, "about 27.6 h in all");
        assert!(matches!(
            classify(1, &Attempt::Status(503), 7, 0, 3, S),
            DeliveryResult::Dead { .. }
        ));
        let short = [Duration::from_secs(1)];
        assert!(matches!(
            classify(1, &Attempt::Status(503), 1, 0, 3, &short),
            DeliveryResult::Dead { .. }
        ));
    }

    #[test]
    fn the_breaker_opens_after_failures_in_a_row_probes_once_per_interval_and_closes_on_an_answer()
    {
        let mut b = Breaker::new(3, Duration::from_secs(30));
        let fail = Attempt::Status(503);
        b.observe(1, &fail, 0);
        b.observe(2, &fail, 0);
        b.observe(3, &Attempt::Status(200), 0);
        assert_eq!(
            (b.state(), b.consecutive_failures()),
            (BreakerState::Closed, 0)
        );
        for id in 1..=3 {
            b.observe(id, &Attempt::Failed("network".into()), 1_000);
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.may_send(7), "open: nothing goes out");
        assert_eq!(b.plan(30_999), Plan::Wait);
        assert_eq!(b.plan(31_000), Plan::Probe);
        b.probing(7);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.may_send(7) && !b.may_send(8), "only the probe");
        assert_eq!(b.plan(31_000), Plan::Wait, "one probe at a time");
        b.observe(7, &Attempt::Status(500), 31_500);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.plan(61_499),
            Plan::Wait,
            "next probe 30 s after the failed one"
        );
        assert_eq!(b.plan(61_500), Plan::Probe);
        b.probing(9);
        // A 4xx is the receiver's verdict on the event: the endpoint is up.
        b.observe(9, &Attempt::Status(400), 61_600);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.take_just_closed() && !b.take_just_closed());
        assert_eq!(b.plan(61_600), Plan::All);
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
                matches!(classify(1, &a, 0, 0, 0, S), DeliveryResult::Retry { .. }),
                "{a:?}"
            );
        }
        for s in [400, 401, 403, 404, 410, 422, 301] {
            assert!(
                matches!(
                    classify(1, &Attempt::Status(s), 0, 0, 0, S),
                    DeliveryResult::Dead { status: Some(x), .. } if x == i64::from(s)
                ),
                "{s}"
            );
        }
        assert!(matches!(
            classify(1, &Attempt::Status(204), 3, 7, 2, S),
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
            sequence: Some(3),
        };
        let body = body_of(&row, "n1");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event_id": "e-1", "event_type": "order.completed",
                "device_phy_id": "dev\"1", "order_no": "o-1", "sequence": 3, "timestamp": 1_704_067_200,
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
