//! The sans-IO session core: one state machine per device connection.
//!
//! [`SessionCore`] takes bytes, ticks and commands in (`handle_bytes`, `handle_timeout`,
//! `handle_command`, `handle_result`) and is polled for what to do: frames to write
//! (`poll_transmit`), store intents (`poll_intent`), when to wake it (`poll_timeout`) and whether
//! the connection is over (`close_reason`). It never awaits, never reads a clock (every input
//! carries `now_ms`) and never touches a socket or the database, so the socket shell in
//! `crate::device` and the seeded fault simulation drive the same code.
//!
//! Family specifics (BKV, AP3000) are strategies of the core (`bkv.rs`, `ap3000.rs`): they turn
//! frames into family-neutral [`DeviceEvent`]s and commands into frames; everything that decides
//! money or order state (identification, commands and their resends, which charge a report is
//! about, acknowledgement after commit, reconciliation) is family-neutral and lives here.
//!
//! Contract with the driver: every [`Intent`] that carries a [`Token`] gets exactly one
//! [`IntentResult`] back through `handle_result`; the driver applies intents in the order they
//! were polled. A result that never comes (the gateway crashed) leaves the device un-acknowledged,
//! which is what makes a crash safe: the device resends.

mod ap3000;
mod bkv;
mod session;

pub use ap3000::device_order_ref;
pub use bkv::{bcd_time, business_ref};
pub use session::{FrameSink, Note};

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use pile_api::PortStatus;
use serde::{Deserialize, Serialize};

use crate::domain::{DeviceReason, StopCause};

pub use session::{CloseReason, CoreConfig, SessionCore};

/// Correlates an intent with its result.
pub type Token = u64;

/// What a durable command asks of a device (stored as JSON in `cmd_logs.payload`; the
/// `start` / `stop` shapes are those of the rows written before this module existed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommandSpec {
    Start {
        order_no: String,
        port_no: u32,
        /// API `charge_mode` (1 time, 2 energy, 3 amount, 4 full).
        charge_mode: u8,
        duration_sec: i64,
        energy_wh: i64,
        amount: i64,
        price_per_kwh: i64,
        service_fee: i64,
        /// AP3000: the 16-byte order number as hex, derived from the order.
        device_ref: String,
    },
    Stop {
        order_no: String,
        port_no: u32,
        device_ref: String,
    },
    /// Ask the device for a port's state (BKV 0x1D for the port's socket; AP3000 0x81, which
    /// makes the device send its registration and a heartbeat).
    Query { port_no: Option<u32> },
    /// Sound and light on the pile for `seconds` (AP3000 0x96; BKV has no such command and
    /// the command is refused as not supported).
    Locate {
        port_no: Option<u32>,
        #[serde(default = "default_locate_seconds")]
        seconds: u8,
    },
}

fn default_locate_seconds() -> u8 {
    10
}

impl CommandSpec {
    pub fn name(&self) -> &'static str {
        match self {
            CommandSpec::Start { .. } => "start",
            CommandSpec::Stop { .. } => "stop",
            CommandSpec::Query { .. } => "query",
            CommandSpec::Locate { .. } => "locate",
        }
    }

    pub fn order_no(&self) -> Option<&str> {
        match self {
            CommandSpec::Start { order_no, .. } | CommandSpec::Stop { order_no, .. } => {
                Some(order_no)
            }
            _ => None,
        }
    }

    pub fn port_no(&self) -> Option<u32> {
        match self {
            CommandSpec::Start { port_no, .. } | CommandSpec::Stop { port_no, .. } => {
                Some(*port_no)
            }
            CommandSpec::Query { port_no } | CommandSpec::Locate { port_no, .. } => *port_no,
        }
    }

    pub fn is_start(&self) -> bool {
        matches!(self, CommandSpec::Start { .. })
    }
}

/// A durable command as a session holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub id: i64,
    pub spec: CommandSpec,
    /// Written to a device before (on any connection, by any gateway process): its outcome is
    /// unknown, so resending must be safe (AP3000 carries the order number; BKV asks the port
    /// first).
    pub sent_before: bool,
    /// When it was first written, by the gateway's clock.
    pub first_sent_at_ms: Option<i64>,
}

/// The shared live figures of a connected device, updated by its session without a lock and
/// read by the API.
#[derive(Debug, Default)]
pub struct LiveCell {
    pub last_seen_ms: AtomicI64,
    pub signal: AtomicI64,
}

impl LiveCell {
    pub fn seen(&self, now_ms: i64) {
        self.last_seen_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    pub fn last_seen_ms(&self) -> i64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }
}

/// An open order of the device, as the session needs it (reconciliation, exact-second stops,
/// knowing whether an end was seen live).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveOrder {
    pub order_no: String,
    pub port_no: u32,
    pub device_ref: Option<String>,
    /// The device confirmed it (`charging`), by the gateway's clock.
    pub started_at_ms: Option<i64>,
    pub charge_mode: u8,
    pub target_duration_sec: i64,
}

/// The first valid frame of a connection names the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub device_id: String,
    pub protocol: &'static str,
    pub remote_addr: String,
    pub firmware: Option<String>,
    pub iccid: Option<String>,
    pub signal: Option<i64>,
    pub conn_id: u64,
    pub at_ms: i64,
}

/// A port's state as a report gave it (1-based `port_no`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortObs {
    pub port_no: u32,
    pub socket_no: Option<u32>,
    pub hole: Option<u32>,
    pub status: PortStatus,
    pub power_dw: i64,
    /// The charge the device says runs on the port (BKV business number), if it names one.
    pub device_ref: Option<String>,
}

/// A port state that changed, with what it was before on this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortChange {
    pub obs: PortObs,
    /// The status this connection last saw; `None` for the first report of the port on it.
    pub previous: Option<PortStatus>,
}

/// A progress sample of a charging port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressObs {
    pub port_no: u32,
    pub device_ref: Option<String>,
    /// The device's duration, seconds, and its unit (1 or 60).
    pub device_duration_sec: i64,
    pub duration_resolution_sec: i64,
    pub energy_wh: i64,
    pub power_dw: i64,
    pub peak_power_dw: Option<i64>,
    /// When the sample was taken by the device's clock (Unix ms), when the frame says
    /// (AP3000 replays progress kept while offline).
    pub device_at_ms: Option<i64>,
}

/// A device's end report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndObs {
    pub port_no: u32,
    pub device_ref: Option<String>,
    pub energy_wh: i64,
    pub device_duration_sec: Option<i64>,
    pub duration_resolution_sec: i64,
    pub device_end_at_ms: Option<i64>,
    pub peak_power_dw: Option<i64>,
    pub reason: DeviceReason,
    /// The gateway saw this charge running on this connection (see `domain::Observation`).
    pub seen_live: bool,
    /// When this connection wrote a stop for the port that the device answered as done (set
    /// with `seen_live`).
    pub stop_written_at_ms: Option<i64>,
    pub raw_hex: String,
}

/// How a device answered a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done. A start's answer may carry the device's handle of the charge (BKV business
    /// number).
    Done { device_ref: Option<String> },
    /// Not done, with the device's reason (`"no charger plugged"`, …).
    Refused { reason: String },
    /// AP3000 "port already in that state", with the order number the answer carries (V6.2+
    /// firmware): for a start, the device may be running this very order.
    SameState { device_ref: Option<String> },
}

/// What a port query found for a start whose first send may or may not have reached the
/// device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSeen {
    Idle,
    Charging {
        device_ref: Option<String>,
    },
    /// No answer.
    Unknown,
}

/// Something the session needs done by the store or the registry.
#[derive(Debug, Clone, PartialEq)]
pub enum Intent {
    /// Register the connection for the device (a newer connection takes over at once), mark it
    /// online and load its open commands and orders. Result: [`IntentResult::Identified`].
    Identify { token: Token, hello: Hello },
    /// Registration data worth keeping (batched, no result).
    DeviceInfo {
        firmware: Option<String>,
        signal: Option<i64>,
        port_count: Option<i64>,
    },
    /// Port states that changed (batched, no result).
    Ports(Vec<PortChange>),
    /// A progress sample. Result: [`IntentResult::Progress`].
    Progress { token: Token, obs: ProgressObs },
    /// An end report: settle it (once) and say whether it is committed, so the ack may go.
    /// Result: [`IntentResult::End`].
    End { token: Token, obs: EndObs },
    /// About to write a command: record it as sent (attempt, key, bytes) first, so that a
    /// crash between the write and the reply leaves a command known to be maybe-delivered.
    /// Result: [`IntentResult::MarkSent`].
    MarkSent {
        token: Token,
        command_id: i64,
        key: u32,
        request_hex: String,
        conn_id: u64,
    },
    /// The device answered a command. Result: [`IntentResult::Replied`].
    Replied {
        token: Token,
        command: Command,
        reply: Reply,
        reply_hex: String,
    },
    /// No answer after the resend: the outcome stays unknown (the command stays `sent`; a
    /// later connection verifies it). No result.
    Unanswered { command_id: i64 },
    /// A start sent before was checked against the port: decide. Result:
    /// [`IntentResult::Resolved`].
    Resolve {
        token: Token,
        command: Command,
        seen: PortSeen,
    },
    /// The device keeps reporting the port of an open order idle: settle the lost charge.
    /// No result (the next reports show whether it closed).
    Reconcile { order_no: String, port_no: u32 },
    /// The gateway itself stops a port (target second, money used up, an orphan charge).
    /// Result: [`IntentResult::Queued`].
    GatewayStop {
        token: Token,
        order_no: String,
        port_no: u32,
        cause: StopCause,
    },
    /// A device alarm (no result).
    Alarm(serde_json::Value),
}

/// The store's or registry's answer to an intent.
#[derive(Debug, Clone)]
pub enum IntentResult {
    Identified {
        live: Arc<LiveCell>,
        commands: Vec<Command>,
        active: Vec<ActiveOrder>,
    },
    /// The device may not use this gateway (not on the allowlist, held off for flapping):
    /// the connection closes.
    Refused {
        reason: String,
    },
    Progress {
        /// The open order the sample belongs to, as it stands now.
        order: Option<ActiveOrder>,
        /// Its money is used up: stop the port.
        money_used_up: bool,
    },
    End {
        /// Committed: acknowledge. `false`: do not (the device resends).
        committed: bool,
        /// The order it settled, if it settled one now.
        settled: Option<String>,
    },
    MarkSent {
        /// Write it. `false`: the command is no longer wanted (its order ended, another
        /// connection took the device over); drop it.
        proceed: bool,
    },
    Replied {
        /// The order a start was for, now charging.
        started: Option<ActiveOrder>,
        /// The order of a confirmed start is closed (cancelled meanwhile): stop the port.
        stop_orphan: Option<(String, u32)>,
    },
    Resolved(Resolution),
    Queued(Option<Command>),
    /// The store failed; the session retries later what can be retried.
    Failed,
}

/// What to do with a start whose first send may have reached the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The device may not be running it (no answer, or another charge holds the port): send
    /// it again.
    Resend,
    /// The device's port is idle: no write so far took effect. Send it again; a charge it
    /// starts is timed from that write.
    NotDelivered,
    /// The device runs it: it was delivered; the order is charging now.
    Running(ActiveOrder),
    /// The order is closed or stopped meanwhile: drop the start.
    Drop,
}

/// A frame to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub bytes: Bytes,
    /// `reply`, `command`, `resend`, `ack` — the label of `outbound_messages_sent_total`.
    pub kind: &'static str,
}

/// What a family strategy makes of one uplink frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DeviceEvent {
    /// The first valid frame names its device (`device_id`); later ones carry registration
    /// data only when it changed.
    Hello {
        device_id: Option<String>,
        firmware: Option<String>,
        signal: Option<i64>,
        iccid: Option<String>,
        port_count: Option<i64>,
    },
    Ports(Vec<PortObs>),
    Progress(ProgressObs),
    /// An end report and the ack to write once it is committed.
    End(EndObs, Bytes),
    /// An answer to the command written with this key.
    Reply {
        key: u32,
        reply: Reply,
    },
    /// An answer to a port query written with this key.
    QueryAnswer {
        key: u32,
        ports: Vec<PortObs>,
    },
    Alarm(serde_json::Value),
}

/// One item a strategy took off the front of the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A valid frame (its events were pushed).
    Frame { raw: Bytes },
    /// A valid frame naming another device than the connection's first frame did.
    Foreign,
    /// Skipped bytes and why (`kind`: the `frame_errors_total` label).
    Diagnostic {
        raw: Bytes,
        text: String,
        kind: &'static str,
    },
    /// AP3000 ICCID preamble.
    Iccid(String),
    /// AP3000 `link` keep-alive.
    KeepAlive,
}

/// Metric handles resolved once, so a frame costs no label lookup.
pub(crate) struct Meters {
    pub heartbeat_bkv: metrics::Counter,
    pub heartbeat_ap3000: metrics::Counter,
    /// By family (0 BKV, 1 AP3000).
    pub inbound: [metrics::Counter; 2],
    /// By family, then [`OUT_KINDS`].
    pub outbound: [[metrics::Counter; 5]; 2],
    /// By family (0 BKV, 1 AP3000, 2 unknown), then [`ERROR_KINDS`].
    pub frame_errors: [[metrics::Counter; 6]; 3],
}

pub(crate) const OUT_KINDS: [&str; 5] = ["reply", "command", "resend", "ack", "query"];
pub(crate) const ERROR_KINDS: [&str; 6] = [
    "bad_checksum",
    "garbage",
    "too_long",
    "invalid",
    "overflow",
    "foreign_device_id",
];

pub(crate) fn family_index(f: Option<pile_protocol::Family>) -> usize {
    match f {
        Some(pile_protocol::Family::Bkv) => 0,
        Some(pile_protocol::Family::Ap3000) => 1,
        None => 2,
    }
}

pub(crate) fn error_kind(e: &pile_protocol::DecodeError) -> &'static str {
    match e {
        pile_protocol::DecodeError::BadChecksum { .. } => "bad_checksum",
        pile_protocol::DecodeError::Garbage { .. } => "garbage",
        pile_protocol::DecodeError::TooLong { .. } => "too_long",
        _ => "invalid",
    }
}

pub(crate) fn meters() -> &'static Meters {
    static METERS: std::sync::OnceLock<Meters> = std::sync::OnceLock::new();
    METERS.get_or_init(|| {
        use crate::metrics as m;
        m::install();
        let fams = ["bkv", "ap3000", "unknown"];
        Meters {
            heartbeat_bkv: metrics::counter!(m::HEARTBEATS, "protocol" => "bkv"),
            heartbeat_ap3000: metrics::counter!(m::HEARTBEATS, "protocol" => "ap3000"),
            inbound: [0, 1].map(|f| metrics::counter!(m::INBOUND_FRAMES, "protocol" => fams[f])),
            outbound: [0, 1].map(|f| {
                OUT_KINDS.map(
                    |k| metrics::counter!(m::OUTBOUND_MESSAGES, "protocol" => fams[f], "kind" => k),
                )
            }),
            frame_errors: [0, 1, 2].map(|f| {
                ERROR_KINDS
                    .map(|k| metrics::counter!(m::FRAME_ERRORS, "protocol" => fams[f], "kind" => k))
            }),
        }
    })
}

#[cfg(test)]
mod tests;
