//! What a pile says and hears, independent of the wire family.
//!
//! The pile state machine ([`crate::pile`]) works on these semantic messages;
//! a family codec ([`crate::wire`]) turns [`Up`] into bytes with the protocol
//! crate's encoders and decoded server frames into [`Down`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::billing::{Billing, EndBilling};

/// The order handle of a charge, as the family carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum Order {
    /// BKV business number, chosen by the device (or by the server for 0x1007).
    Bkv(u16),
    /// AP3000 order number: 16 opaque bytes chosen by the server.
    Ap3000([u8; 16]),
}

impl Order {
    /// A printable form: the business number, or the order bytes in hex.
    pub fn display(&self) -> String {
        match self {
            Order::Bkv(n) => n.to_string(),
            Order::Ap3000(b) => hex::encode_upper(b),
        }
    }
}

/// The inverse of [`Order::display`]: 32 hex digits are an AP3000 order
/// number, a decimal number a BKV business number.
impl TryFrom<String> for Order {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.len() == 32 {
            let bytes = hex::decode(&s).map_err(|e| e.to_string())?;
            let b: [u8; 16] = bytes.try_into().map_err(|_| "16 bytes".to_string())?;
            return Ok(Order::Ap3000(b));
        }
        s.parse::<u16>()
            .map(Order::Bkv)
            .map_err(|_| format!("not an order: {s:?}"))
    }
}

impl Serialize for Order {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.display())
    }
}

/// What ends a charge by itself.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Target {
    /// Until the battery is full.
    Full,
    /// For a fixed time from the start command.
    Time { secs: u64 },
    /// Until this much energy has flowed, in Wh.
    Energy { wh: f64 },
}

/// Which command started a charge (it decides the end report's form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// BKV 0x0015/0x07: ends with 0x02.
    Bkv07,
    /// BKV 0x0015/0x17 (power tiers): ends with 0x18.
    Bkv17,
    /// BKV 0x1007: ends with 0x1004.
    Bkv1007,
    /// AP3000 0x82 with its rate mode.
    Ap3000 { rate_mode: u8 },
}

/// Which port a start or stop addresses (platform numbering, 1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSel {
    Port(u16),
    /// AP3000 `0xFF`: the device picks the port with a charger plugged in.
    Any,
    /// A wire port that maps to no platform number.
    Invalid,
}

/// A start command as the pile understands it.
#[derive(Debug, Clone, PartialEq)]
pub struct StartRequest {
    pub port: PortSel,
    /// The server's order number (AP3000, BKV 0x1007); BKV 0x07 lets the pile choose.
    pub order: Option<Order>,
    pub target: Target,
    /// Whether a full battery ends the charge before the target.
    pub stop_on_full: bool,
    /// Upper bound on the charge time, if any.
    pub max_duration: Option<Duration>,
    pub origin: Origin,
    /// How the socket bills the charge itself (BKV 0x17 and 0x1007): it stops
    /// when the money is used up.
    pub billing: Option<Billing>,
}

/// How a start or stop command was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandResult {
    Done,
    NoChargerPlugged,
    SameState,
    PortFault,
    NoSuchPort,
    SeveralWaiting { ports: u16 },
    OverPower,
}

impl CommandResult {
    /// The AP3000 0x82 result code.
    pub fn ap3000_code(self) -> u8 {
        match self {
            CommandResult::Done => 0,
            CommandResult::NoChargerPlugged => 1,
            CommandResult::SameState => 2,
            CommandResult::PortFault => 3,
            CommandResult::NoSuchPort => 4,
            CommandResult::SeveralWaiting { .. } => 5,
            CommandResult::OverPower => 6,
        }
    }

    /// The BKV result byte: 1 OK, 0 failed.
    pub fn bkv_code(self) -> u8 {
        u8::from(self == CommandResult::Done)
    }
}

/// Why a charge ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Full,
    MaxTime,
    TimeReached,
    EnergyReached,
    Unplugged,
    RemoteStop,
    NoLoad,
    PowerOutage,
    /// A BKV charge by money (0x17, 0x1007) used up what was paid.
    AmountUsedUp,
}

impl EndReason {
    /// The AP3000 0x03 stop reason.
    pub fn ap3000_code(self) -> u8 {
        match self {
            EndReason::Full => 1,
            EndReason::MaxTime => 2,
            EndReason::TimeReached => 3,
            EndReason::EnergyReached => 4,
            EndReason::Unplugged => 5,
            EndReason::RemoteStop => 7,
            EndReason::NoLoad => 9,
            EndReason::PowerOutage => 0x0E,
            // The AP3000 has no money stop; a socket that converts money into
            // time reports its preset time as reached.
            EndReason::AmountUsedUp => 3,
        }
    }
}

/// Identifies a stored record for de-duplication and acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordKey {
    pub kind: RecordKind,
    pub port_no: u16,
    pub order: Order,
    /// Distinguishes progress samples of one charge.
    pub n: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    End,
    Progress,
}

/// A charge's end as the pile stores it until the server acknowledges it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndRecord {
    pub port_no: u16,
    pub order: Order,
    pub origin: Origin,
    pub reason: EndReason,
    /// From the start command to the end.
    pub duration_s: u64,
    pub energy_wh: f64,
    pub power_w: f64,
    pub max_power_w: f64,
    pub current_a: f64,
    pub voltage_v: f64,
    pub start_unix: u64,
    pub end_unix: u64,
    /// AP3000: the message ID every resend reuses.
    pub msg_id: u16,
    /// What a charge by money cost (BKV 0x18 / 0x1004 fields).
    #[serde(default)]
    pub billing: Option<EndBilling>,
}

/// A progress sample of a running charge (AP3000 0x06).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgressRecord {
    pub port_no: u16,
    pub order: Order,
    pub origin: Origin,
    pub duration_s: u64,
    pub energy_wh: f64,
    pub period_energy_wh: f64,
    pub power_w: f64,
    pub max_power_w: f64,
    pub min_power_w: f64,
    pub avg_power_w: f64,
    pub voltage_v: f64,
    pub current_a: f64,
    pub at_unix: u64,
    pub msg_id: u16,
}

/// A record in the pile's EEPROM.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    End(EndRecord),
    Progress(ProgressRecord),
}

/// What to echo when answering a server command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyCtx {
    /// BKV frame sequence, or AP3000 message ID.
    pub seq: u32,
    /// BKV 0x1000 packets: the TLV frame sequence (tag 0x02).
    pub tlv_seq: u64,
}

/// A message the pile sends, before encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Up {
    /// AP3000: the SIM ICCID before the first frame.
    Iccid,
    /// AP3000 0x20.
    Register,
    /// AP3000 0x22.
    GetTime,
    /// BKV 0x0000 / AP3000 0x21.
    Heartbeat,
    /// AP3000 ASCII `link`.
    Link,
    /// BKV 0x1017 for one socket (1-based).
    Status { socket: u8 },
    /// AP3000 0x06.
    Progress(ProgressRecord),
    /// BKV 0x02 / 0x1004, AP3000 0x03.
    End(EndRecord),
    /// Answer to a start (BKV 0x07 / 0x1007, AP3000 0x82).
    StartReply {
        ctx: ReplyCtx,
        origin: Origin,
        port_no: Option<u16>,
        result: CommandResult,
        order: Option<Order>,
    },
    /// Answer to a stop.
    StopReply {
        ctx: ReplyCtx,
        origin: Origin,
        port_no: Option<u16>,
        result: CommandResult,
        order: Option<Order>,
    },
    /// BKV 0x1C, the answer to 0x1D.
    SocketState { ctx: ReplyCtx, socket: u8 },
    /// The answer to [`Down::Locate`] / [`Down::Setting`].
    SettingAck {
        ctx: ReplyCtx,
        command: u16,
        socket: Option<u8>,
        ok: bool,
    },
}

impl Up {
    /// Whether this message answers a server command (subject to the
    /// delayed/missing-answer faults).
    pub fn is_answer(&self) -> bool {
        matches!(
            self,
            Up::StartReply { .. }
                | Up::StopReply { .. }
                | Up::SocketState { .. }
                | Up::SettingAck { .. }
        )
    }
}

/// How the server acknowledged a stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMatch {
    /// AP3000 0x03 answer: the settlement's message ID.
    MsgId(u16),
    /// BKV: the end report of this port started by this kind of command.
    Port { port_no: u16, origin: Origin },
}

/// A server frame as the pile understands it.
#[derive(Debug, Clone, PartialEq)]
pub enum Down {
    HeartbeatAck,
    RegisterAck,
    TimeAck,
    StatusAck,
    Start {
        ctx: ReplyCtx,
        req: StartRequest,
    },
    Stop {
        ctx: ReplyCtx,
        origin: Origin,
        port: PortSel,
        order: Option<Order>,
    },
    QuerySocket {
        ctx: ReplyCtx,
        socket: u8,
    },
    EndAck(AckMatch),
    /// AP3000 0x81: send 0x20 and 0x21 again.
    Query,
    /// AP3000 0x96: play the locate prompt and flash for `seconds`.
    Locate {
        ctx: ReplyCtx,
        seconds: u8,
    },
    /// A setting the pile accepts and answers (AP3000 0x97 mute, BKV 0x1013
    /// mute): `command` is the family's command code.
    Setting {
        ctx: ReplyCtx,
        command: u16,
        socket: Option<u8>,
    },
    /// A valid frame the pile has no behaviour for.
    Ignored,
}
