use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::schema;

/// Every JSON response is wrapped in this envelope.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Envelope<T> {
    /// 0 on success, else the HTTP status.
    #[schema(examples(0))]
    pub code: u16,
    #[schema(examples("ok"))]
    pub message: String,
    pub data: Option<T>,
    /// The `X-Request-Id` of the request (echoed, or generated when it had none).
    #[schema(examples("3f1c2a9e-6d1b-4c55-9a0e-0b7f2f4c1d2e"))]
    pub request_id: String,
    /// Unix seconds.
    #[schema(examples(1732400000))]
    pub timestamp: i64,
}

/// The envelope of every error answer, whatever its status: `code` is the HTTP status,
/// `message` says what went wrong (a 400 names the field), `data` is null.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[schema(examples(json!({"code": 400, "message": "invalid field `port_no`: must be between 1 and 4",
    "data": null, "request_id": "3f1c2a9e-6d1b-4c55-9a0e-0b7f2f4c1d2e", "timestamp": 1732400000})))]
pub struct ErrorEnvelope {
    /// The HTTP status.
    #[schema(minimum = 400, maximum = 599)]
    pub code: u16,
    pub message: String,
    /// Always null.
    #[schema(schema_with = schema::null)]
    pub data: Option<()>,
    pub request_id: String,
    /// Unix seconds.
    pub timestamp: i64,
}

/// `charge_mode` of a charge request.
pub mod charge_mode {
    pub const BY_TIME: u8 = 1;
    pub const BY_ENERGY: u8 = 2;
    pub const BY_AMOUNT: u8 = 3;
    pub const UNTIL_FULL: u8 = 4;
}

/// `POST /api/v1/third/devices/{device_id}/charge`.
///
/// Billing needs (a 400 names the missing field otherwise):
/// - without prices (`price_per_kwh` and `service_fee` both 0 or absent), `amount` is
///   required: the order costs `amount` pro rata of its target (0 makes it free);
/// - `charge_mode` 3 needs `amount` ≥ 1 and a price; `charge_mode` 4 needs a price (it is
///   billed by energy);
/// - with prices, `amount` caps the bill; absent or 0 means no cap.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
#[schema(examples(json!({"port_no": 1, "charge_mode": 1, "duration": 300, "amount": 500,
    "price_per_kwh": 150, "service_fee": 50, "order_no": "platform-0001"})))]
pub struct ChargeRequest {
    /// The device's port, 1-based; at most the device's port count.
    #[schema(minimum = 1, maximum = 500)]
    pub port_no: u32,
    #[schema(schema_with = schema::charge_mode)]
    pub charge_mode: u8,
    /// Seconds, for mode 1 (required ≥ 1 there; ignored otherwise).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 54000, default = 0)]
    pub duration: i64,
    /// Wh, for mode 2 (required ≥ 1 there).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 65535, default = 0)]
    pub energy_wh: i64,
    /// Fen: the prepaid amount (see the billing rules above).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100000000)]
    pub amount: i64,
    /// Fen per kWh.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100000, default = 0)]
    pub price_per_kwh: i64,
    /// Service fee, fen per kWh.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100000, default = 0)]
    pub service_fee: i64,
    /// A client order number: the same one twice returns the same order (idempotent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub order_no: Option<String>,
    /// `false` makes a charge for an offline device fail with 503 instead of queueing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(default = true)]
    pub queue_if_offline: Option<bool>,
}

/// `POST /api/v1/third/devices/{device_id}/stop`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
#[schema(examples(json!({"port_no": 1, "order_no": "platform-0001"})))]
pub struct StopRequest {
    /// The device's port, 1-based; at most the device's port count.
    #[schema(minimum = 1, maximum = 500)]
    pub port_no: u32,
    /// When given, the order running on the port must be this one (else 409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub order_no: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Charging,
    Completed,
    Failed,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Pending,
        OrderStatus::Charging,
        OrderStatus::Completed,
        OrderStatus::Failed,
        OrderStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Charging => "charging",
            OrderStatus::Completed => "completed",
            OrderStatus::Failed => "failed",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Pending and charging orders hold their port.
    pub fn is_active(self) -> bool {
        matches!(self, OrderStatus::Pending | OrderStatus::Charging)
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Answer of the charge route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[schema(examples(json!({"order_no": "platform-0001", "device_id": "82210225000520",
    "port_no": 1, "status": "pending"})))]
pub struct OrderRef {
    pub order_no: String,
    pub device_id: String,
    pub port_no: u32,
    pub status: OrderStatus,
}

/// What a stop did to the order.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StopStatus {
    /// The stop command is on its way to the device (or waits for it to reconnect); the
    /// order settles — `completed`, `end_reason` 3 — when the device reports its end.
    Stopping,
    /// The order had not reached the device and was cancelled at once (`end_reason` 3).
    Cancelled,
    /// The order had already ended.
    Completed,
    /// The order had already failed.
    Failed,
}

impl StopStatus {
    /// The answer for an order in `status` after its stop was requested.
    pub fn of(status: OrderStatus) -> Self {
        match status {
            OrderStatus::Pending | OrderStatus::Charging => StopStatus::Stopping,
            OrderStatus::Completed => StopStatus::Completed,
            OrderStatus::Failed => StopStatus::Failed,
            OrderStatus::Cancelled => StopStatus::Cancelled,
        }
    }
}

/// Answer of the stop route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[schema(examples(json!({"order_no": "platform-0001", "device_id": "82210225000520",
    "port_no": 1, "status": "stopping"})))]
pub struct StopResult {
    pub order_no: String,
    pub device_id: String,
    pub port_no: u32,
    pub status: StopStatus,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PortStatus {
    Offline,
    Idle,
    Plugged,
    Charging,
    Fault,
}

impl PortStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PortStatus::Offline => "offline",
            PortStatus::Idle => "idle",
            PortStatus::Plugged => "plugged",
            PortStatus::Charging => "charging",
            PortStatus::Fault => "fault",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            PortStatus::Offline,
            PortStatus::Idle,
            PortStatus::Plugged,
            PortStatus::Charging,
            PortStatus::Fault,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PortView {
    /// 1-based platform port number.
    pub port_no: u32,
    /// BKV radio socket (1–250); `None` for AP3000.
    pub socket_no: Option<u32>,
    /// BKV hole (0 = A, 1 = B); `None` for AP3000.
    pub hole: Option<u32>,
    pub status: PortStatus,
    pub power_w: f64,
    pub order_no: Option<String>,
}

/// `GET /api/v1/third/devices/{device_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct DeviceView {
    #[schema(examples("82210225000520"))]
    pub device_id: String,
    /// `"bkv"` or `"ap3000"`.
    #[schema(schema_with = schema::protocol)]
    pub protocol: String,
    pub online: bool,
    pub last_seen_at: Option<i64>,
    pub connected_at: Option<i64>,
    pub remote_addr: Option<String>,
    pub firmware: Option<String>,
    pub signal: Option<i64>,
    pub ports: Vec<PortView>,
}

/// `GET /api/v1/third/orders/{order_no}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct OrderView {
    pub order_no: String,
    pub device_id: String,
    pub port_no: u32,
    pub status: OrderStatus,
    #[schema(schema_with = schema::charge_mode)]
    pub charge_mode: u8,
    pub target_duration: i64,
    pub amount: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub duration_sec: i64,
    pub total_kwh: f64,
    /// W.
    pub current_power: f64,
    /// W.
    pub peak_power: f64,
    pub energy_fee: i64,
    pub service_fee_amount: i64,
    pub final_amount: i64,
    pub end_reason: Option<i64>,
    pub end_reason_name: Option<String>,
    pub end_reason_text: Option<String>,
    pub offline_replayed: bool,
}

/// One element of `GET /api/v1/third/orders/{order_no}/progress`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ProgressSample {
    pub at: i64,
    pub duration_sec: i64,
    pub energy_wh: i64,
    pub power_w: f64,
    pub status: String,
}

/// Every paged list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// All matches, not only this page.
    pub total: i64,
    pub page: u32,
    pub size: u32,
}

/// Query of `GET /api/v1/third/devices`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceListQuery {
    /// Only devices online (`true`) or offline (`false`); all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// 1-based page, default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 1000000)]
    pub page: Option<u32>,
    /// Items per page, default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 1000)]
    pub size: Option<u32>,
}

/// Query of `GET /api/v1/third/orders`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderListQuery {
    /// Only orders in this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<OrderStatus>)]
    pub status: Option<String>,
    /// Only orders of this device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(pattern = r"^[A-Za-z0-9]{1,64}$")]
    pub device_id: Option<String>,
    /// 1-based page, default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 1000000)]
    pub page: Option<u32>,
    /// Items per page, default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 1000)]
    pub size: Option<u32>,
}

/// Query of `GET /api/v1/admin/devices/{device_id}/frames`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FramesQuery {
    /// The newest `limit` frames (oldest first), default all that are kept (200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct TableCounts {
    pub devices: i64,
    pub orders: i64,
    pub cmd_logs: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PoolStats {
    pub in_use: u32,
    pub idle: u32,
    pub max: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct LogCounts {
    pub error: u64,
    pub warn: u64,
    pub info: u64,
    pub debug: u64,
    pub trace: u64,
}

/// `GET /api/v1/admin/stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Stats {
    pub tables: TableCounts,
    pub db_pool: PoolStats,
    /// Queries slower than the slow-query threshold since start.
    pub slow_queries: u64,
    pub slow_query_threshold_ms: u64,
    pub slowest_query_ms: u64,
    pub log_counts: LogCounts,
    /// Outbox events not yet delivered.
    pub event_backlog: i64,
    /// Delivered / attempted, 1.0 when nothing was attempted.
    pub push_success_rate: f64,
    pub mean_push_latency_ms: f64,
    pub active_sessions: u64,
    pub online_devices: i64,
    pub orders_by_status: std::collections::BTreeMap<String, i64>,
    pub uptime_sec: u64,
    /// The webhook endpoint's delivery state; `None` when no webhook URL is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookEndpointStatus>,
    /// This instance's identity when the gateway runs as several instances (scale-out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

/// The circuit breaker of a webhook endpoint.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Deliveries flow.
    #[default]
    Closed,
    /// The endpoint fails: events wait without spending attempts; one probe at most every 30 s.
    Open,
    /// A probe is out; the first success closes the breaker.
    HalfOpen,
}

/// Delivery state of the configured webhook endpoint (`Stats::webhook`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct WebhookEndpointStatus {
    /// The endpoint URL without credentials or query string.
    pub url: String,
    pub state: BreakerState,
    /// Failed attempts in a row (0 after a success).
    pub consecutive_failures: u32,
    /// Events waiting for delivery (pending, including those waiting for a retry).
    pub backlog: i64,
    /// Age of the oldest pending event, seconds.
    #[serde(default)]
    pub oldest_pending_age_sec: Option<i64>,
    /// Events dead-lettered and not replayed.
    pub dead_letters: i64,
    /// When the breaker next lets a probe through (Unix seconds), while open.
    #[serde(default)]
    pub next_probe_at: Option<i64>,
    /// Unix seconds of the last successful delivery.
    #[serde(default)]
    pub last_success_at: Option<i64>,
}

/// One gateway instance sharing the database (`GET /api/v1/admin/instances`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct InstanceView {
    pub instance_id: String,
    /// Where its HTTP API and device listener are reachable, as it advertised them.
    pub http_addr: String,
    pub device_addr: String,
    /// Unix seconds.
    pub started_at: i64,
    /// Last liveness beat, Unix seconds.
    pub last_beat_at: i64,
    /// Beating within its lease time.
    pub alive: bool,
    /// Device sessions whose lease it holds.
    pub sessions: i64,
    /// Process CPU, % of one core, and resident memory, as it last reported them.
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    /// Holds the webhook dispatcher's advisory lock.
    #[serde(default)]
    pub dispatcher: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct CommandMatch {
    /// Downlink commands sent.
    pub sent: i64,
    /// Of those, how many got their reply.
    pub matched: i64,
    /// `matched / sent`, 1.0 when nothing was sent.
    pub match_rate: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PortMismatch {
    pub device_id: String,
    pub port_no: u32,
    pub stored_status: String,
    pub reported_status: String,
}

/// `GET /api/v1/admin/consistency`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Consistency {
    /// Orders whose device is unknown.
    pub orphan_orders: Vec<String>,
    /// Orders pending or charging longer than their limit.
    pub stale_orders: Vec<String>,
    pub commands: CommandMatch,
    pub port_mismatches: Vec<PortMismatch>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Up,
    Down,
}

/// One element of `GET /api/v1/admin/devices/{id}/frames`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct FrameRecord {
    /// Unix milliseconds.
    pub at_ms: i64,
    pub direction: Direction,
    pub hex: String,
    pub summary: String,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Health {
    /// `"ok"` or `"unavailable"`.
    pub status: String,
    /// Check name → `"ok"` or the failure.
    #[serde(default)]
    pub checks: std::collections::BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------------
// Events (webhooks, dead letters, live stream)

/// One event as a webhook body and as the `data` of a live-stream message:
/// `{event_id, event_type, device_phy_id, order_no?, timestamp, nonce, data}`.
/// `nonce` is per delivery attempt (signed); the live stream leaves it empty.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct EventMessage {
    pub event_id: String,
    pub event_type: String,
    pub device_phy_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_no: Option<String>,
    /// When the event happened, Unix seconds.
    pub timestamp: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nonce: String,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// One element of `GET /api/v1/admin/webhooks/dead`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct DeadLetter {
    pub event_id: String,
    pub event_type: String,
    pub device_id: String,
    #[serde(default)]
    pub order_no: Option<String>,
    /// Delivery attempts made.
    pub attempts: i64,
    /// The receiver's last HTTP status, if it answered.
    #[serde(default)]
    pub last_status: Option<u16>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    #[serde(default)]
    pub dead_at: Option<i64>,
    #[serde(default)]
    pub data: serde_json::Value,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// 1-based page, default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 1000000)]
    pub page: Option<u32>,
    /// Items per page, default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 1000)]
    pub size: Option<u32>,
}

/// `POST /api/v1/admin/webhooks/dead/{event_id}/replay`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ReplayResult {
    pub event_id: String,
    /// `"pending"`: queued for delivery again.
    pub status: String,
}

/// `POST /api/v1/admin/webhooks/test`: what the receiver answered to a signed `webhook.test`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct WebhookTestResult {
    pub url: String,
    pub event_id: String,
    /// The receiver answered 2xx.
    pub delivered: bool,
    #[serde(default)]
    pub status: Option<u16>,
    pub latency_ms: f64,
    #[serde(default)]
    pub error: Option<String>,
}

/// Filters of `GET /api/v1/events/stream`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventStreamQuery {
    /// Only this device's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// An event type (`order.completed`), a prefix (`charging.*`), or several, comma-separated.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// Resume after this event: the events written since (up to 1,000) come first. The
    /// `Last-Event-ID` header does the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_request_leaves_out_what_it_does_not_set() {
        let req = ChargeRequest {
            port_no: 1,
            charge_mode: charge_mode::BY_TIME,
            duration: 300,
            amount: 500,
            ..ChargeRequest::default()
        };
        let v = serde_json::to_value(&req).unwrap_or_default();
        assert_eq!(v["port_no"], 1);
        assert!(v.get("order_no").is_none());
        assert!(v.get("queue_if_offline").is_none());
        let back: ChargeRequest =
            serde_json::from_str(r#"{"port_no":2,"charge_mode":4}"#).unwrap_or_default();
        assert_eq!((back.port_no, back.charge_mode, back.amount), (2, 4, 0));
    }

    #[test]
    fn statuses_are_lowercase_on_the_wire() {
        assert_eq!(
            serde_json::to_string(&OrderStatus::Charging).unwrap_or_default(),
            "\"charging\""
        );
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(PortStatus::parse("plugged"), Some(PortStatus::Plugged));
        assert_eq!(OrderStatus::parse("lost"), None);
        assert!(OrderStatus::Pending.is_active() && !OrderStatus::Completed.is_active());
    }

    #[test]
    fn an_error_envelope_has_null_data() {
        let env: Envelope<OrderRef> = serde_json::from_str(
            r#"{"code":409,"message":"port is busy","data":null,"request_id":"r","timestamp":1}"#,
        )
        .expect("envelope");
        assert_eq!((env.code, env.data), (409, None));
    }
}

/// Body of `POST /api/v1/third/devices/{device_id}/locate` (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct LocateRequest {
    /// How long the pile sounds and flashes, 1–255 s (default 10).
    #[schema(minimum = 1, maximum = 255, example = 10)]
    pub seconds: Option<u8>,
}

/// Body of `POST /api/v1/third/devices/{device_id}/query` (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PortQueryRequest {
    /// The port to ask about (BKV asks per socket; default 1). AP3000 answers for every port.
    #[schema(minimum = 1, example = 1)]
    pub port_no: Option<u32>,
}

/// Where a device command is in its life: `queued` (waiting for the device), `sent`
/// (written, waiting for its answer), then `acked`, `refused`, `expired` or `superseded`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CommandStatus {
    Queued,
    Sent,
    Acked,
    Refused,
    Expired,
    Superseded,
}

impl CommandStatus {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" | "pending" => CommandStatus::Queued,
            "sent" => CommandStatus::Sent,
            "acked" | "ok" => CommandStatus::Acked,
            "refused" | "failed" => CommandStatus::Refused,
            "expired" => CommandStatus::Expired,
            "superseded" => CommandStatus::Superseded,
            _ => return None,
        })
    }

    /// Whether the command is over (answered, refused, expired or replaced).
    pub fn is_final(self) -> bool {
        !matches!(self, CommandStatus::Queued | CommandStatus::Sent)
    }
}

/// A device command as the gateway tracks it (answer of the locate and query routes and of
/// `GET /api/v1/third/devices/{device_id}/commands/{command_id}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[schema(examples(json!({"id": 42, "device_id": "82210225000520", "command": "locate",
    "port_no": null, "order_no": null, "status": "acked", "attempts": 1,
    "created_at": 1796172801, "sent_at": 1796172801, "result": "ok"})))]
pub struct CommandView {
    pub id: i64,
    pub device_id: String,
    /// `start`, `stop`, `query` or `locate`.
    pub command: String,
    pub port_no: Option<u32>,
    pub order_no: Option<String>,
    pub status: CommandStatus,
    /// How many times it was written to the device.
    pub attempts: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last write to the device.
    pub sent_at: Option<i64>,
    /// The device's answer (`ok`, or why it refused) once there is one.
    pub result: Option<String>,
}
