//! Events: the outbox's way out. State changes write their events into the `outbox` table
//! in their own transaction (`store::outbox`); from there
//!
//! * the [`Dispatcher`] delivers them as signed webhooks — at-least-once, in order per order,
//!   different orders in parallel, retried over about 27.6 h (5 s … 10 h) behind a per-endpoint
//!   circuit breaker, then dead-lettered (a dead event does not hold its order's later ones;
//!   the per-order `sequence` shows the gap) — one round per [`Dispatcher::deliver_next`]
//!   call, so tests drive it without sleeping;
//! * the [`Hub`] tails the table and fans events out to live-stream (SSE) clients through a
//!   bounded broadcast channel: a client that falls behind is dropped, delivery never waits;
//! * [`routes`] serves dead letters, replay, the webhook connectivity test and the stream.
//!
//! All delivery state lives in the table, so a restart resumes where the last one stopped.

pub mod dispatcher;
pub mod routes;
pub mod signing;
pub mod stream;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use dispatcher::{Breaker, Dispatcher, Step, WebhookSettings};
pub use routes::router;
pub use stream::{Filter, Hub};

use crate::clock::Clock;
use crate::config::Config;
use crate::store::Store;

pub const DELIVERIES: &str = "webhook_deliveries_total";
pub use crate::metrics::DELIVERY_DURATION;
pub const BACKLOG: &str = "webhook_backlog";
pub const DEAD_LETTERS: &str = "webhook_dead_letters";
pub const OLDEST_PENDING: &str = "webhook_oldest_pending_age_seconds";
pub const BREAKER_STATE: &str = "webhook_breaker_state";
pub const STREAM_CLIENTS: &str = "event_stream_clients";
pub const STREAM_DROPPED: &str = "event_stream_dropped_total";

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        DELIVERIES,
        "Webhook delivery attempts, by result (delivered, retry, dead, skipped)"
    );
    describe_histogram!(
        DELIVERY_DURATION,
        Unit::Seconds,
        "Webhook HTTP round trip, by result"
    );
    describe_gauge!(BACKLOG, "Outbox events not delivered yet");
    describe_gauge!(DEAD_LETTERS, "Dead-lettered webhook events");
    describe_gauge!(
        OLDEST_PENDING,
        Unit::Seconds,
        "Age of the oldest webhook event not delivered yet"
    );
    describe_gauge!(
        BREAKER_STATE,
        "Webhook endpoint circuit breaker: 0 closed, 1 open, 2 half-open (a probe is out)"
    );
    describe_gauge!(STREAM_CLIENTS, "Live event stream clients");
    describe_counter!(
        STREAM_DROPPED,
        "Live-stream clients dropped because they fell behind"
    );
    for result in ["delivered", "retry", "dead", "deferred"] {
        metrics::counter!(DELIVERIES, "result" => result).increment(0);
    }
}

/// Unix milliseconds for delivery times: the gateway's clock (which follows tokio's, so
/// paused-time tests move it), or a hand-moved one for tests of the retry schedule.
#[derive(Debug, Clone)]
pub enum EventClock {
    System(Clock),
    Manual(Arc<AtomicI64>),
}

impl EventClock {
    pub fn manual(start_ms: i64) -> Self {
        EventClock::Manual(Arc::new(AtomicI64::new(start_ms)))
    }

    pub fn now_ms(&self) -> i64 {
        match self {
            EventClock::System(c) => c.now_ms(),
            EventClock::Manual(t) => t.load(Ordering::SeqCst),
        }
    }

    /// Moves a manual clock forward (no effect on the system clock).
    pub fn advance(&self, by: Duration) {
        if let EventClock::Manual(t) = self {
            t.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
        }
    }
}

/// The running events subsystem: what the HTTP routes need.
#[derive(Clone)]
pub struct Events {
    pub store: Store,
    pub hub: Hub,
    /// `None` without `--webhook-url`: events stay in the outbox (and on the stream).
    pub dispatcher: Option<Arc<Dispatcher>>,
    pub clock: EventClock,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("webhook", &self.dispatcher.as_ref().map(|d| d.url()))
            .finish()
    }
}

impl Events {
    /// Starts the stream's tail and, with a webhook URL, the dispatcher; both stop when
    /// `shutdown` fires and are tracked by `tracker` (so they end before the store closes).
    /// Delivery times read `clock`, the gateway's (a manual one in tests).
    pub fn start(
        config: &Config,
        store: Store,
        clock: Clock,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> anyhow::Result<Events> {
        describe();
        let clock = EventClock::System(clock);
        let hub = Hub::new(stream::CAPACITY, shutdown.clone());
        tracker.spawn(stream::tail(
            store.clone(),
            hub.clone(),
            Duration::from_millis(100),
            shutdown.clone(),
        ));
        let dispatcher = match &config.webhook_url {
            Some(url) => {
                if config.webhook_secret.is_none() {
                    tracing::warn!(
                        "--webhook-url without --webhook-secret: signing with an empty key"
                    );
                }
                let settings = WebhookSettings {
                    retry_schedule: config.delivery.retry_schedule.clone(),
                    breaker_failures: config.delivery.breaker_failures,
                    probe_interval: config.delivery.probe_interval,
                    ..WebhookSettings::new(
                        url,
                        config
                            .webhook_secret
                            .as_ref()
                            .map_or("", secrecy::ExposeSecret::expose_secret),
                    )
                };
                let d = Arc::new(Dispatcher::new(store.clone(), settings, clock.clone())?);
                tracker.spawn(d.clone().run(shutdown));
                tracing::info!(%url, "webhook dispatcher started");
                Some(d)
            }
            None => {
                tracing::info!("no --webhook-url: events stay in the outbox");
                None
            }
        };
        Ok(Events {
            store,
            hub,
            dispatcher,
            clock,
        })
    }
}
