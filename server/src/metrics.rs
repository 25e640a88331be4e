//! Prometheus metrics and log-level counters.
//!
//! Names required by the acceptance record: `tcp_connections_accepted_total`,
//! `active_sessions`, `orders_created_total`, `orders_settled_total`,
//! `outbound_messages_sent_total`. Labels stay low-cardinality (protocol, command, route,
//! reason — never a device ID).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

pub const TCP_CONNECTIONS_ACCEPTED: &str = "tcp_connections_accepted_total";
pub const TCP_CONNECTIONS_REJECTED: &str = "tcp_connections_rejected_total";
pub const ACTIVE_SESSIONS: &str = "active_sessions";
pub const ORDERS_CREATED: &str = "orders_created_total";
pub const ORDERS_SETTLED: &str = "orders_settled_total";
pub const OUTBOUND_MESSAGES: &str = "outbound_messages_sent_total";
pub const INBOUND_FRAMES: &str = "inbound_frames_total";
pub const HEARTBEATS: &str = "heartbeats_total";
pub const FRAME_ERRORS: &str = "frame_errors_total";
pub const END_REPORTS: &str = "end_reports_total";
pub const COMMANDS: &str = "device_commands_total";
pub const BATCH_OPS: &str = "batch_writer_ops_total";
pub const BATCH_QUEUE: &str = "batch_writer_queue";
pub const BATCH_BLOCKED: &str = "batch_writer_blocked_microseconds_total";
pub const RECONCILED: &str = "orders_reconciled_total";
/// The webhook round-trip histogram (named here so metrics does not depend on events).
pub const DELIVERY_DURATION: &str = "webhook_delivery_duration_seconds";
pub const DROPPED: &str = "dropped_total";
pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
// #13 limits/keys
pub const AUTH_FAILURES: &str = "api_key_failures_total";
pub const HTTP_CONNECTIONS_REJECTED: &str = "http_connections_rejected_total";
pub const HTTP_CONNECTIONS: &str = "http_connections";
pub const DEVICES_REFUSED: &str = "device_connections_refused_total";
pub const DEVICES_FLAPPING: &str = "device_flapping_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once (tests start many gateways in one process) and
/// returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(HTTP_DURATION.to_string()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(DELIVERY_DURATION.to_string()),
                        &[
                            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                            10.0,
                        ],
                    )
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding program's); then ours
            // only renders what it sees, which is nothing — still a valid exposition.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(TCP_CONNECTIONS_ACCEPTED, "Device TCP connections accepted");
    describe_counter!(
        TCP_CONNECTIONS_REJECTED,
        "Device TCP connections refused or closed early, by reason"
    );
    describe_gauge!(ACTIVE_SESSIONS, "Device sessions currently identified");
    describe_counter!(ORDERS_CREATED, "Orders created through the API");
    describe_counter!(ORDERS_SETTLED, "Orders settled, by source");
    describe_counter!(
        OUTBOUND_MESSAGES,
        "Frames sent to devices, by protocol and kind"
    );
    describe_counter!(INBOUND_FRAMES, "Valid frames received, by protocol");
    describe_counter!(HEARTBEATS, "Heartbeats received, by protocol");
    describe_counter!(
        FRAME_ERRORS,
        "Bytes skipped or frames rejected, by protocol and kind"
    );
    describe_counter!(END_REPORTS, "End reports received, by outcome");
    describe_counter!(COMMANDS, "Device commands, by outcome");
    describe_counter!(
        DROPPED,
        "Dropped work, by reason (must stay 0 for transaction records)"
    );
    describe_counter!(HTTP_REQUESTS, "HTTP requests, by route and status");
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency, by route"
    );
    // #13 limits/keys
    describe_counter!(
        AUTH_FAILURES,
        "Refused API keys, by outcome (unauthorized, throttled)"
    );
    describe_counter!(
        HTTP_CONNECTIONS_REJECTED,
        "HTTP connections closed at once: the HTTP connection cap was reached"
    );
    describe_gauge!(HTTP_CONNECTIONS, "Open HTTP connections");
    describe_counter!(
        DEVICES_REFUSED,
        "Device identifications refused, by reason (allowlist, registration_rate, flapping)"
    );
    describe_counter!(
        DEVICES_FLAPPING,
        "Device IDs put on hold for reconnecting too often"
    );
    // Register the required series at zero so they are present from the start.
    metrics::counter!(TCP_CONNECTIONS_ACCEPTED).increment(0);
    metrics::gauge!(ACTIVE_SESSIONS).set(0.0);
    metrics::counter!(ORDERS_CREATED).increment(0);
    metrics::counter!(ORDERS_SETTLED, "source" => "device").increment(0);
    metrics::counter!(OUTBOUND_MESSAGES, "protocol" => "bkv", "kind" => "reply").increment(0);
    metrics::counter!(HEARTBEATS, "protocol" => "bkv").increment(0);
    metrics::counter!(FRAME_ERRORS, "protocol" => "bkv", "kind" => "skipped").increment(0);
}

/// Log lines by level since start, for `/api/v1/admin/stats`.
#[derive(Debug, Default)]
pub struct LogCounts {
    pub error: AtomicU64,
    pub warn: AtomicU64,
    pub info: AtomicU64,
    pub debug: AtomicU64,
    pub trace: AtomicU64,
}

pub static LOG_COUNTS: LogCounts = LogCounts {
    error: AtomicU64::new(0),
    warn: AtomicU64::new(0),
    info: AtomicU64::new(0),
    debug: AtomicU64::new(0),
    trace: AtomicU64::new(0),
};

impl LogCounts {
    pub fn snapshot(&self) -> pile_api::LogCounts {
        pile_api::LogCounts {
            error: self.error.load(Ordering::Relaxed),
            warn: self.warn.load(Ordering::Relaxed),
            info: self.info.load(Ordering::Relaxed),
            debug: self.debug.load(Ordering::Relaxed),
            trace: self.trace.load(Ordering::Relaxed),
        }
    }
}

/// A tracing layer that counts events per level (into [`LOG_COUNTS`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingLayer;

impl<S: Subscriber> Layer<S> for CountingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let c = match *event.metadata().level() {
            Level::ERROR => &LOG_COUNTS.error,
            Level::WARN => &LOG_COUNTS.warn,
            Level::INFO => &LOG_COUNTS.info,
            Level::DEBUG => &LOG_COUNTS.debug,
            Level::TRACE => &LOG_COUNTS.trace,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}
