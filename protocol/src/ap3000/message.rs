//! Typed AP3000 messages: the data part of a frame, per command and direction.
//!
//! All multi-byte fields are little-endian. The vendor added fields at the end
//! of several messages over the years and says to tell them apart by length
//! (vendor §2.0.1), so trailing fields that older firmware omits are `Option`s
//! read while bytes remain, and whatever is left after the last known field is
//! kept in `extra` so that re-encoding is byte-exact. Once one optional field
//! is missing, all later ones are `None` (a partial field goes to `extra`);
//! when encoding, optional fields after the first `None` are not written.

use bytes::{BufMut, BytesMut};
use serde::{Serialize, Serializer};

use super::codes::{PortStatus, StartResult, StopReason};
use super::ids::OrderNo;
use crate::DecodeError;

/// Who sent a frame. The AP3000 header does not say, and several commands
/// (0x20, 0x21, 0x82, …) mean different things in each direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Device → server (what the gateway decodes).
    FromDevice,
    /// Server → device (what the simulator decodes).
    FromServer,
}

pub(crate) fn ser_hex<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

/// Temperature byte → °C: value − 65; 0 means "no sensor".
pub fn temperature_c(raw: u8) -> Option<i16> {
    (raw != 0).then(|| i16::from(raw) - 65)
}

/// Port statuses of a heartbeat, stored inline so decoding does not allocate.
#[derive(Clone, Copy)]
pub struct PortStatuses {
    len: u8,
    items: [PortStatus; PortStatuses::CAPACITY],
}

impl PortStatuses {
    /// The largest port count accepted (the biggest AP3000 pile has 16 ports;
    /// twice that leaves room without allocating).
    pub const CAPACITY: usize = 32;

    /// `None` if more than [`Self::CAPACITY`] statuses are given.
    pub fn new(statuses: &[PortStatus]) -> Option<Self> {
        let mut out = PortStatuses {
            len: 0,
            items: [PortStatus(0); Self::CAPACITY],
        };
        out.items
            .get_mut(..statuses.len())?
            .copy_from_slice(statuses);
        out.len = u8::try_from(statuses.len()).ok()?;
        Some(out)
    }

    fn from_wire(bytes: &[u8]) -> Option<Self> {
        let mut out = PortStatuses {
            len: 0,
            items: [PortStatus(0); Self::CAPACITY],
        };
        for (slot, b) in out.items.get_mut(..bytes.len())?.iter_mut().zip(bytes) {
            *slot = PortStatus(*b);
        }
        out.len = u8::try_from(bytes.len()).ok()?;
        Some(out)
    }

    pub fn as_slice(&self) -> &[PortStatus] {
        self.items.get(..usize::from(self.len)).unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Status of a wire port (0-based).
    pub fn get(&self, port: u8) -> Option<PortStatus> {
        self.as_slice().get(usize::from(port)).copied()
    }
}

impl PartialEq for PortStatuses {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl std::fmt::Debug for PortStatuses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl Serialize for PortStatuses {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(s)
    }
}

/// `0x20` register (device → server, after power-on).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Register {
    /// Firmware version, e.g. 100 = V1.00.
    pub firmware: u16,
    pub port_count: u8,
    /// Local address in a 485/LoRa network, 0 if not networked.
    pub virtual_id: u8,
    /// Module type from the vendor's table (not the physical ID type byte).
    pub device_type: u8,
    /// Bit 0: 0 networked / 1 card; bit 1 metering chip; bit 2 short-circuit
    /// precheck; bit 3 lamp mode. Added in V7.0.
    pub work_mode: Option<u8>,
    /// Added in V7.8.
    pub power_board_version: Option<u16>,
    #[serde(serialize_with = "ser_hex")]
    pub extra: Vec<u8>,
}

/// `0x21` heartbeat (device → server, every 3 minutes by default).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Heartbeat {
    pub voltage_dv: u16,
    /// One status per port; the wire count byte is `ports.len()`.
    pub ports: PortStatuses,
    /// Radio signal between extension and host; 0 when wired / not supported.
    pub signal: u8,
    pub temperature_raw: u8,
    #[serde(serialize_with = "ser_hex")]
    pub extra: Vec<u8>,
}

impl Heartbeat {
    /// `None` if more than [`PortStatuses::CAPACITY`] ports are given.
    pub fn new(
        voltage_dv: u16,
        ports: &[PortStatus],
        signal: u8,
        temperature_raw: u8,
    ) -> Option<Self> {
        Some(Heartbeat {
            voltage_dv,
            ports: PortStatuses::new(ports)?,
            signal,
            temperature_raw,
            extra: Vec::new(),
        })
    }

    pub fn temperature_c(&self) -> Option<i16> {
        temperature_c(self.temperature_raw)
    }
}

/// `0x01` legacy heartbeat (device → server; superseded by 0x20 + 0x21).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LegacyHeartbeat {
    pub firmware: u16,
    pub voltage_dv: u16,
    pub ports: PortStatuses,
    pub current_power_dw: Vec<u16>,
    pub peak_power_dw: Vec<u16>,
    pub virtual_id: u8,
    pub signal: u8,
    pub device_type: u8,
    /// Added in V5.6.
    pub temperature_raw: Option<u8>,
    /// Added in V7.0, removed again in V8.6.
    pub work_mode: Option<u8>,
    #[serde(serialize_with = "ser_hex")]
    pub extra: Vec<u8>,
}

/// `0x06` charging power heartbeat (device → server, every 5 minutes while a
/// port charges; no answer).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PowerHeartbeat {
    pub port: u8,
    /// 1 charging, 2 waiting for a charger (cabinets), 3 full, 5 float.
    pub status: PortStatus,
    pub duration_s: u16,
    pub energy_cwh: u16,
    /// 0 started offline, 1 online, 3 verification code.
    pub start_mode: u8,
    pub power_dw: u16,
    pub max_power_dw: u16,
    pub min_power_dw: u16,
    pub avg_power_dw: u16,
    pub order_no: OrderNo,
    /// Debug figure (divide by 4800), ignored by servers.
    pub period_energy_raw: Option<u16>,
    pub peak_power_dw: Option<u16>,
    pub voltage_dv: Option<u16>,
    pub current_ma: Option<u16>,
    pub ambient_temperature_raw: Option<u8>,
    pub port_temperature_raw: Option<u8>,
    pub timestamp: Option<u32>,
    /// Cabinets only: minutes occupied after full.
    pub occupancy_min: Option<u16>,
    #[serde(serialize_with = "ser_hex")]
    pub extra: Vec<u8>,
}

impl PowerHeartbeat {
    pub fn port_no(&self) -> Option<u16> {
        crate::port::ap3000_port_no(self.port)
    }
    pub fn ambient_temperature_c(&self) -> Option<i16> {
        self.ambient_temperature_raw.and_then(temperature_c)
    }
    pub fn port_temperature_c(&self) -> Option<i16> {
        self.port_temperature_raw.and_then(temperature_c)
    }
}

/// `0x03` settlement (device → server at the end of a charge; the server must
/// answer, else the device resends it). Also the layout of `0x43` (cabinet
/// "finished, not settled"), which stops after `order_no`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settlement {
    pub duration_s: u16,
    pub max_power_dw: u16,
    pub energy_cwh: u16,
    pub port: u8,
    /// 0 offline card, 1 online (server 0x82), 3 verification code.
    pub start_mode: u8,
    /// Card ID (offline) or verification code; all zero for online starts.
    pub card_id: u32,
    pub stop_reason: StopReason,
    pub order_no: OrderNo,
    /// Highest power in the first 5 minutes.
    pub second_max_power_dw: Option<u16>,
    pub timestamp: Option<u32>,
    /// Cabinets only: minutes occupied after full.
    pub occupancy_min: Option<u16>,
    #[serde(serialize_with = "ser_hex")]
    pub extra: Vec<u8>,
}

impl Settlement {
    pub fn port_no(&self) -> Option<u16> {
        crate::port::ap3000_port_no(self.port)
    }
    /// The platform `end_reason` (PROTOCOL.md §3).
    pub fn platform_end_reason(&self) -> u8 {
        self.stop_reason.platform_end_reason()
    }
}

/// `0x82` start/stop (server → device).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StartStop {
    /// 0 time, 1 monthly, 2 energy, 3 per use.
    pub rate_mode: u8,
    /// Balance in fen (or, for monthly, the expiry unix time); only spoken.
    pub balance_fen: u32,
    /// Wire port (0-based); 0xFF lets the device choose.
    pub port: u8,
    /// 1 start, 0 stop.
    pub command: u8,
    /// Seconds (rate modes 0, 1, 3) or 0.01 kWh (rate mode 2); 0 = until full.
    pub amount: u16,
    pub order_no: OrderNo,
    /// 0 = keep the device's setting. Added in V7.5.
    pub max_duration_s: Option<u16>,
    /// 0 = keep the device's setting. Added in V7.5.
    pub overload_power_dw: Option<u16>,
    /// 0 light on, 1 off. Added in V8.0.
    pub qr_light: Option<u8>,
    /// Optional extension (vendor §4.2), kept raw: long-charge u8, extra float
    /// time s u16, short-circuit check u8, ignore unplug u8, force auto-stop
    /// u8, full power W u8, full-power max judging time min u8. Also holds
    /// whatever follows the last whole field of a shorter command.
    #[serde(serialize_with = "ser_hex")]
    pub extension: Vec<u8>,
}

impl StartStop {
    pub const STOP: u8 = 0;
    pub const START: u8 = 1;
    pub const RATE_TIME: u8 = 0;
    pub const RATE_ENERGY: u8 = 2;

    pub fn is_start(&self) -> bool {
        self.command == Self::START
    }
    /// `amount` read as a duration (every rate mode except energy).
    pub fn duration_s(&self) -> Option<u16> {
        (self.rate_mode != Self::RATE_ENERGY).then_some(self.amount)
    }
    /// `amount` read as energy (rate mode 2).
    pub fn energy_cwh(&self) -> Option<u16> {
        (self.rate_mode == Self::RATE_ENERGY).then_some(self.amount)
    }
    pub fn port_no(&self) -> Option<u16> {
        crate::port::ap3000_port_no(self.port)
    }
}

impl StartStop {
    /// The typed view of [`StartStop::extension`].
    pub fn extension_fields(&self) -> StartExtension {
        StartExtension::parse(&self.extension)
    }
}

/// The optional `0x82` extension (vendor §4.2), each field present only if
/// the bytes reach it: long-charge u8 | extra float time s u16 |
/// short-circuit check u8 | ignore unplug u8 | force auto-stop u8 |
/// full power W u8 (1 W, not 0.1 W) | full-power max judging time min u8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct StartExtension {
    /// 1 = keep power after float charging.
    pub long_charge: Option<u8>,
    /// 0xFFFF cancels float charging.
    pub extra_float_s: Option<u16>,
    /// 2 = check for short circuits; 0 and 1 = do not.
    pub short_circuit_check: Option<u8>,
    /// 1 = do not detect unplugging.
    pub ignore_unplug: Option<u8>,
    /// 1 = stop when full even with a duration.
    pub force_auto_stop: Option<u8>,
    /// 0 or 0xFF = off.
    pub full_power_w: Option<u8>,
    pub full_power_max_min: Option<u8>,
}

impl StartExtension {
    /// Reads as many fields as `bytes` holds; bytes beyond the last field are
    /// ignored here (they stay in `StartStop::extension`).
    pub fn parse(bytes: &[u8]) -> Self {
        let r = &mut Reader::new(bytes, "start_stop extension");
        StartExtension {
            long_charge: r.opt_u8(),
            extra_float_s: r.opt_u16(),
            short_circuit_check: r.opt_u8(),
            ignore_unplug: r.opt_u8(),
            force_auto_stop: r.opt_u8(),
            full_power_w: r.opt_u8(),
            full_power_max_min: r.opt_u8(),
        }
    }

    /// Wire bytes for `StartStop::extension` (fields up to the first `None`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = BytesMut::new();
        Tail::new(&mut out)
            .u8(self.long_charge)
            .u16(self.extra_float_s)
            .u8(self.short_circuit_check)
            .u8(self.ignore_unplug)
            .u8(self.force_auto_stop)
            .u8(self.full_power_w)
            .u8(self.full_power_max_min);
        out.to_vec()
    }
}

/// The device's `0x82` reply.
///
/// Before V6.2 the answer is the result byte alone ("设备应答82指令，增加订单编号、
/// 端口号、待充端口字段" — V6.2 added the order number, port and waiting ports);
/// such answers decode with those fields `None`. Bytes that do not make up a
/// whole field (a 2-byte answer's second byte) are kept in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StartStopReply {
    pub result: StartResult,
    /// V6.2 on.
    pub order_no: Option<OrderNo>,
    /// V6.2 on.
    pub port: Option<u8>,
    /// V6.2 on. Bit per port waiting for a start; meaningful only when result = 5.
    pub waiting_ports: Option<u16>,
    #[serde(serialize_with = "ser_hex")]
    pub extra: Vec<u8>,
}

impl StartStopReply {
    /// A pre-V6.2 answer: the result byte only.
    pub fn result_only(result: StartResult) -> Self {
        StartStopReply {
            result,
            order_no: None,
            port: None,
            waiting_ports: None,
            extra: Vec::new(),
        }
    }

    pub fn port_no(&self) -> Option<u16> {
        self.port.and_then(crate::port::ap3000_port_no)
    }
}

/// `0x02` card swipe (device → server).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CardSwipe {
    pub card_id: u32,
    /// 0 old card, 1 new card, 3 UID only, 4 social-security card.
    pub card_type: u8,
    /// Wire port; 0xFF = balance enquiry only.
    pub port: u8,
    /// Balance stored on the card.
    pub balance_fen: u16,
    /// Added in V8.0.
    pub timestamp: Option<u32>,
    /// Card number 2 (2023-12-11: long card numbers such as social-security
    /// cards): a length byte, then that many bytes.
    #[serde(serialize_with = "ser_opt_hex")]
    pub card_no2: Option<Vec<u8>>,
    #[serde(serialize_with = "ser_hex")]
    pub extra: Vec<u8>,
}

fn ser_opt_hex<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(b) => s.serialize_some(&hex::encode(b)),
        None => s.serialize_none(),
    }
}

impl CardSwipe {
    /// `None` for 0xFF (a balance enquiry, not a port request).
    pub fn port_no(&self) -> Option<u16> {
        crate::port::ap3000_port_no(self.port)
    }
}

/// Server's `0x02` answer to a card swipe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CardReply {
    pub card_id: u32,
    /// 0 ok, 1 unregistered, 2 bind card, 3 unbind, 6 balance too low, …
    pub account_status: u8,
    pub rate_mode: u8,
    /// Balance in fen, or expiry unix time for monthly users.
    pub balance: u32,
    pub port: u8,
    #[serde(serialize_with = "ser_hex")]
    pub extra: Vec<u8>,
}

/// `0x84` run parameters 1.2. Powers and temperatures are in the units the
/// vendor's defaults suggest but does not state; they are kept raw.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunParams2 {
    pub dynamic_overload_power: u16,
    pub dynamic_overload_detect_s: u16,
    pub dynamic_overload_start_s: u16,
    pub unplug_noise_power: u8,
    pub unplug_noise_detect_s: u16,
    pub float_second_point_s: u16,
    pub float_second_detect_s: u16,
    pub min_power: u16,
    pub min_power_point_s: u16,
    pub second_max_power_point_s: u16,
    pub ambient_alarm_c: u8,
    pub port_alarm_c: u8,
    /// 0 = detect unplugging (opto-coupler), other = off (a reserved byte
    /// before V6.3).
    pub unplug_detect: u8,
    /// Added in V8.0.
    pub qr_light: Option<u8>,
    #[serde(serialize_with = "ser_hex")]
    pub extra: Vec<u8>,
}

/// Every AP3000 message, in both directions.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    // ---- device → server ----
    /// 0x01
    LegacyHeartbeat(LegacyHeartbeat),
    /// 0x02
    CardSwipe(CardSwipe),
    /// 0x03
    Settlement(Settlement),
    /// 0x04 (old firmware, before 0x06): port order confirmation.
    OrderConfirm {
        port: u8,
        start_mode: u8,
        card_id: u32,
        duration_s: u16,
        order_no: OrderNo,
        #[serde(serialize_with = "ser_hex")]
        extra: Vec<u8>,
    },
    /// 0x05: device asks to be upgraded.
    UpgradeRequest {
        device_type: u8,
        firmware: u16,
        package_type: u32,
        #[serde(serialize_with = "ser_hex")]
        extra: Vec<u8>,
    },
    /// 0x06
    PowerHeartbeat(PowerHeartbeat),
    /// 0x20
    Register(Register),
    /// 0x21
    Heartbeat(Heartbeat),
    /// 0x22 from the device: asks for the time.
    TimeRequest,
    /// 0x41: cabinet heartbeat, door and fan bit sets.
    CabinetHeartbeat {
        port_count: u8,
        doors: u32,
        fans: u32,
        #[serde(serialize_with = "ser_hex")]
        extra: Vec<u8>,
    },
    /// 0x42: alarm push (1 power cut, 2 water, 3 hot-melt, 4 smoke, 5 heat,
    /// 6 water level, 7 door sprung).
    Alarm {
        kind: u8,
        port: u8,
        trigger: u8,
        #[serde(serialize_with = "ser_hex")]
        extra: Vec<u8>,
    },
    /// 0x43: cabinet charge finished, not settled (0x03 layout up to order no).
    ChargeFinished(Settlement),
    /// 0x44: port push (1 = door not closed).
    PortPush {
        kind: u8,
        port: u8,
        order_no: OrderNo,
        #[serde(serialize_with = "ser_hex")]
        extra: Vec<u8>,
    },
    /// 0x82 from the device.
    StartStopReply(StartStopReply),

    // ---- either direction ----
    /// A one-byte answer: the server's to 0x01, 0x20, 0x21, 0x03; the
    /// device's to 0x83–0x8F and 0x8A (0 = success). For 0x8B the EEPROM
    /// bytes follow in `extra`.
    Ack {
        command: u8,
        result: u8,
        #[serde(serialize_with = "ser_hex")]
        extra: Vec<u8>,
    },

    // ---- server → device ----
    /// 0x02 from the server.
    CardReply(CardReply),
    /// 0x04 from the server.
    OrderConfirmAck {
        port: u8,
        result: u8,
        #[serde(serialize_with = "ser_hex")]
        extra: Vec<u8>,
    },
    /// 0x22 from the server.
    TimeReply { unix_time: u32 },
    /// 0x81: the device re-sends 0x20 and 0x21.
    Query,
    /// 0x82 from the server.
    StartStop(StartStop),
    /// 0x83: run parameters 1.1 (unit of the unplug power is not stated).
    SetRunParams1 {
        unplug_power: u16,
        unplug_detect_s: u16,
        float_percent: u8,
        float_detect_s: u16,
        float_time_s: u16,
        heartbeat_interval_s: u16,
        #[serde(serialize_with = "ser_hex")]
        extra: Vec<u8>,
    },
    /// 0x84
    SetRunParams2(RunParams2),
    /// 0x85: max charge time and overload power (+ over/under voltage).
    SetLimits {
        max_duration_s: u16,
        overload_power_dw: u16,
        over_voltage_dv: Option<u16>,
        under_voltage_dv: Option<u16>,
        #[serde(serialize_with = "ser_hex")]
        extra: Vec<u8>,
    },
    /// 0x86: user-card sector and keys.
    SetCardParams {
        sector: u8,
        #[serde(serialize_with = "ser_hex")]
        user_key: [u8; 6],
        #[serde(serialize_with = "ser_hex")]
        new_card_key: [u8; 6],
        #[serde(serialize_with = "ser_hex")]
        extra: Vec<u8>,
    },
    /// 0x87
    Reboot,
    /// 0x88
    ClearMemory,
    /// 0x89 (reserved by the vendor): play voice segments.
    PlayVoice {
        interrupt: u8,
        count: u8,
        #[serde(serialize_with = "ser_hex")]
        segments: Vec<u8>,
    },
    /// 0x8A: change the running order's duration or energy.
    ChangeDuration {
        /// 0 time without auto-stop, 1 time with auto-stop, 2 energy.
        rate_mode: u8,
        port: u8,
        amount: u16,
        #[serde(serialize_with = "ser_hex")]
        extra: Vec<u8>,
    },
    /// 0x8B: read up to 32 EEPROM bytes.
    ReadEeprom {
        address: u16,
        len: u8,
        #[serde(serialize_with = "ser_hex")]
        extra: Vec<u8>,
    },
    /// 0x8C: write EEPROM bytes.
    WriteEeprom {
        address: u16,
        len: u8,
        #[serde(serialize_with = "ser_hex")]
        data: Vec<u8>,
    },
    /// 0x8D: 0 networked, 1 card.
    SetWorkMode {
        mode: u8,
        #[serde(serialize_with = "ser_hex")]
        extra: Vec<u8>,
    },
    /// 0x8E: QR code text (a 72-byte NUL-padded buffer on the wire).
    SetQrCode {
        main_screen: u8,
        #[serde(serialize_with = "ser_hex")]
        reserved: [u8; 3],
        #[serde(serialize_with = "ser_hex")]
        qr: Vec<u8>,
    },
    /// 0x8F: card-mode rate (0 time, 1 per use, 3 energy, …).
    SetCardMode {
        mode: u8,
        #[serde(serialize_with = "ser_hex")]
        extra: Vec<u8>,
    },
    /// 0x96 (V8.6): sound-and-light locate — the device plays a voice prompt
    /// and flashes for `seconds`; it answers with a one-byte [`Message::Ack`]
    /// (0 = done). Older firmware does not know the command and stays silent.
    Locate { seconds: u8 },
    /// 0x97 (2023-05-08): mute mode, 0 sound on, 1 muted.
    SetMute {
        mode: u8,
        #[serde(serialize_with = "ser_hex")]
        extra: Vec<u8>,
    },
    /// 0xE4: trigger a self-downloading upgrade.
    TriggerUpgrade,

    /// A command this crate does not type (or a known empty command that
    /// unexpectedly carries data), kept whole.
    Unknown {
        command: u8,
        #[serde(serialize_with = "ser_hex")]
        data: Vec<u8>,
    },
}

/// Cursor over a message's data. Every read is bounds-checked and reports
/// `ShortPayload`; optional reads stop for good at the first one that does
/// not fit.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
    ended: bool,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8], what: &'static str) -> Self {
        Reader {
            data,
            pos: 0,
            what,
            ended: false,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.saturating_add(n);
        let s = self
            .data
            .get(self.pos..end)
            .ok_or(DecodeError::ShortPayload {
                what: self.what,
                need: end,
                have: self.data.len(),
            })?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_le_bytes(self.array()?))
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn order_no(&mut self) -> Result<OrderNo, DecodeError> {
        Ok(OrderNo(self.array()?))
    }

    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn opt<T>(&mut self, n: usize, read: fn(&mut Self) -> Result<T, DecodeError>) -> Option<T> {
        if self.ended || self.remaining() < n {
            self.ended = true;
            return None;
        }
        read(self).ok()
    }
    fn opt_u8(&mut self) -> Option<u8> {
        self.opt(1, Self::u8)
    }
    fn opt_u16(&mut self) -> Option<u16> {
        self.opt(2, Self::u16)
    }
    fn opt_u32(&mut self) -> Option<u32> {
        self.opt(4, Self::u32)
    }
    /// A length byte and that many bytes, if both are there (else nothing is
    /// read and the rest stays for `extra`).
    fn opt_counted(&mut self) -> Option<Vec<u8>> {
        if self.ended {
            return None;
        }
        let n = usize::from(*self.data.get(self.pos)?);
        if self.remaining() < 1 + n {
            self.ended = true;
            return None;
        }
        self.pos += 1;
        self.take(n).ok().map(<[u8]>::to_vec)
    }

    fn rest(&mut self) -> Vec<u8> {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        self.pos = self.data.len();
        rest.to_vec()
    }
}

/// Writes optional trailing fields in order and stops at the first `None`:
/// a later field can only be on the wire if every earlier one is, so a later
/// `Some` after a gap is dropped rather than written into the wrong slot.
struct Tail<'a> {
    out: &'a mut BytesMut,
    open: bool,
}

impl<'a> Tail<'a> {
    fn new(out: &'a mut BytesMut) -> Self {
        Tail { out, open: true }
    }
    fn u8(&mut self, v: Option<u8>) -> &mut Self {
        match v {
            Some(v) if self.open => self.out.put_u8(v),
            _ => self.open = false,
        }
        self
    }
    fn u16(&mut self, v: Option<u16>) -> &mut Self {
        match v {
            Some(v) if self.open => self.out.put_u16_le(v),
            _ => self.open = false,
        }
        self
    }
    fn u32(&mut self, v: Option<u32>) -> &mut Self {
        match v {
            Some(v) if self.open => self.out.put_u32_le(v),
            _ => self.open = false,
        }
        self
    }
    fn order_no(&mut self, v: Option<OrderNo>) -> &mut Self {
        match v {
            Some(v) if self.open => self.out.put_slice(&v.0),
            _ => self.open = false,
        }
        self
    }
    fn bytes(&mut self, v: Option<&[u8]>) -> &mut Self {
        match v {
            Some(v) if self.open => self.out.put_slice(v),
            _ => self.open = false,
        }
        self
    }
}

fn read_settlement(r: &mut Reader<'_>, with_tail: bool) -> Result<Settlement, DecodeError> {
    // duration u16 | max power u16 | energy u16 | port u8 | start mode u8 |
    // card id u32 | stop reason u8 | order no [16] | (0x03 only, newer
    // firmware:) second max power u16 | timestamp u32 | occupancy u16
    let mut s = Settlement {
        duration_s: r.u16()?,
        max_power_dw: r.u16()?,
        energy_cwh: r.u16()?,
        port: r.u8()?,
        start_mode: r.u8()?,
        card_id: r.u32()?,
        stop_reason: StopReason(r.u8()?),
        order_no: r.order_no()?,
        second_max_power_dw: None,
        timestamp: None,
        occupancy_min: None,
        extra: Vec::new(),
    };
    if with_tail {
        s.second_max_power_dw = r.opt_u16();
        s.timestamp = r.opt_u32();
        s.occupancy_min = r.opt_u16();
    }
    s.extra = r.rest();
    Ok(s)
}

fn write_settlement(s: &Settlement, out: &mut BytesMut) {
    out.put_u16_le(s.duration_s);
    out.put_u16_le(s.max_power_dw);
    out.put_u16_le(s.energy_cwh);
    out.put_u8(s.port);
    out.put_u8(s.start_mode);
    out.put_u32_le(s.card_id);
    out.put_u8(s.stop_reason.0);
    out.put_slice(&s.order_no.0);
    Tail::new(out)
        .u16(s.second_max_power_dw)
        .u32(s.timestamp)
        .u16(s.occupancy_min);
    out.put_slice(&s.extra);
}

impl Message {
    /// Decodes the data part of a frame carrying `command`, sent in `dir`.
    pub fn decode(command: u8, data: &[u8], dir: Direction) -> Result<Message, DecodeError> {
        use Direction::*;
        let what = command_name(command, dir);
        let r = &mut Reader::new(data, what);
        let unknown = || Message::Unknown {
            command,
            data: data.to_vec(),
        };
        let msg = match (dir, command) {
            (FromDevice, 0x01) => {
                // firmware u16 | voltage u16 | n u8 | status × n | current
                // power u16 × n | peak power u16 × n | virtual id u8 |
                // signal u8 | device type u8 | temperature u8 | work mode u8
                let firmware = r.u16()?;
                let voltage_dv = r.u16()?;
                let n = usize::from(r.u8()?);
                let ports = port_statuses(r.take(n)?, what)?;
                let mut current = Vec::with_capacity(n);
                for _ in 0..n {
                    current.push(r.u16()?);
                }
                let mut peak = Vec::with_capacity(n);
                for _ in 0..n {
                    peak.push(r.u16()?);
                }
                Message::LegacyHeartbeat(LegacyHeartbeat {
                    firmware,
                    voltage_dv,
                    ports,
                    current_power_dw: current,
                    peak_power_dw: peak,
                    virtual_id: r.u8()?,
                    signal: r.u8()?,
                    device_type: r.u8()?,
                    temperature_raw: r.opt_u8(),
                    work_mode: r.opt_u8(),
                    extra: r.rest(),
                })
            }
            // card id u32 | card type u8 | port u8 | balance u16 |
            // (newer:) timestamp u32 | card-no-2 length u8 + bytes
            (FromDevice, 0x02) => Message::CardSwipe(CardSwipe {
                card_id: r.u32()?,
                card_type: r.u8()?,
                port: r.u8()?,
                balance_fen: r.u16()?,
                timestamp: r.opt_u32(),
                card_no2: r.opt_counted(),
                extra: r.rest(),
            }),
            (FromDevice, 0x03) => Message::Settlement(read_settlement(r, true)?),
            // port u8 | start mode u8 | card id u32 | duration u16 | order no
            (FromDevice, 0x04) => Message::OrderConfirm {
                port: r.u8()?,
                start_mode: r.u8()?,
                card_id: r.u32()?,
                duration_s: r.u16()?,
                order_no: r.order_no()?,
                extra: r.rest(),
            },
            // device type u8 | firmware u16 | package type u32
            (FromDevice, 0x05) => Message::UpgradeRequest {
                device_type: r.u8()?,
                firmware: r.u16()?,
                package_type: r.u32()?,
                extra: r.rest(),
            },
            // port u8 | status u8 | duration u16 | energy u16 | start mode u8 |
            // power u16 | max u16 | min u16 | avg u16 | order no [16] |
            // (newer:) period energy u16 | peak power u16 | voltage u16 |
            // current u16 | ambient temp u8 | port temp u8 | timestamp u32 |
            // occupancy u16
            (FromDevice, 0x06) => Message::PowerHeartbeat(PowerHeartbeat {
                port: r.u8()?,
                status: PortStatus(r.u8()?),
                duration_s: r.u16()?,
                energy_cwh: r.u16()?,
                start_mode: r.u8()?,
                power_dw: r.u16()?,
                max_power_dw: r.u16()?,
                min_power_dw: r.u16()?,
                avg_power_dw: r.u16()?,
                order_no: r.order_no()?,
                period_energy_raw: r.opt_u16(),
                peak_power_dw: r.opt_u16(),
                voltage_dv: r.opt_u16(),
                current_ma: r.opt_u16(),
                ambient_temperature_raw: r.opt_u8(),
                port_temperature_raw: r.opt_u8(),
                timestamp: r.opt_u32(),
                occupancy_min: r.opt_u16(),
                extra: r.rest(),
            }),
            // firmware u16 | port count u8 | virtual id u8 | device type u8 |
            // work mode u8 | (newer:) power-board version u16
            (FromDevice, 0x20) => Message::Register(Register {
                firmware: r.u16()?,
                port_count: r.u8()?,
                virtual_id: r.u8()?,
                device_type: r.u8()?,
                work_mode: r.opt_u8(),
                power_board_version: r.opt_u16(),
                extra: r.rest(),
            }),
            // voltage u16 | n u8 | status × n | signal u8 | temperature u8
            (FromDevice, 0x21) => {
                let voltage_dv = r.u16()?;
                let n = usize::from(r.u8()?);
                let ports = port_statuses(r.take(n)?, what)?;
                Message::Heartbeat(Heartbeat {
                    voltage_dv,
                    ports,
                    signal: r.u8()?,
                    temperature_raw: r.u8()?,
                    extra: r.rest(),
                })
            }
            (FromDevice, 0x22) if data.is_empty() => Message::TimeRequest,
            // port count u8 | doors u32 (bit set) | fans u32 (bit set)
            (FromDevice, 0x41) => Message::CabinetHeartbeat {
                port_count: r.u8()?,
                doors: r.u32()?,
                fans: r.u32()?,
                extra: r.rest(),
            },
            // kind u8 | port u8 | trigger u8
            (FromDevice, 0x42) => Message::Alarm {
                kind: r.u8()?,
                port: r.u8()?,
                trigger: r.u8()?,
                extra: r.rest(),
            },
            (FromDevice, 0x43) => Message::ChargeFinished(read_settlement(r, false)?),
            // kind u8 | port u8 | order no [16]
            (FromDevice, 0x44) => Message::PortPush {
                kind: r.u8()?,
                port: r.u8()?,
                order_no: r.order_no()?,
                extra: r.rest(),
            },
            // result u8 | order no [16] | port u8 | waiting ports u16
            (FromDevice, 0x82) => Message::StartStopReply(StartStopReply {
                result: StartResult(r.u8()?),
                order_no: r.opt(16, Reader::order_no),
                port: r.opt_u8(),
                waiting_ports: r.opt_u16(),
                extra: r.rest(),
            }),
            // result u8 (+ data for 0x8B)
            (FromDevice, 0x83..=0x8F | 0x95..=0x98) | (FromServer, 0x01 | 0x03 | 0x20 | 0x21) => {
                Message::Ack {
                    command,
                    result: r.u8()?,
                    extra: r.rest(),
                }
            }
            // card id u32 | account status u8 | rate mode u8 | balance u32 | port u8
            (FromServer, 0x02) => Message::CardReply(CardReply {
                card_id: r.u32()?,
                account_status: r.u8()?,
                rate_mode: r.u8()?,
                balance: r.u32()?,
                port: r.u8()?,
                extra: r.rest(),
            }),
            // port u8 | result u8
            (FromServer, 0x04) => Message::OrderConfirmAck {
                port: r.u8()?,
                result: r.u8()?,
                extra: r.rest(),
            },
            // unix time u32, exactly
            (FromServer, 0x22) if data.len() == 4 => Message::TimeReply {
                unix_time: r.u32()?,
            },
            (FromServer, 0x22) if data.len() < 4 => {
                return Err(DecodeError::ShortPayload {
                    what,
                    need: 4,
                    have: data.len(),
                })
            }
            (FromServer, 0x81) if data.is_empty() => Message::Query,
            // rate mode u8 | balance u32 | port u8 | command u8 | amount u16 |
            // order no [16] | max duration u16 | overload power u16 |
            // (newer:) QR light u8 | extension (see `StartStop::extension`)
            (FromServer, 0x82) => Message::StartStop(StartStop {
                rate_mode: r.u8()?,
                balance_fen: r.u32()?,
                port: r.u8()?,
                command: r.u8()?,
                amount: r.u16()?,
                order_no: r.order_no()?,
                max_duration_s: r.opt_u16(),
                overload_power_dw: r.opt_u16(),
                qr_light: r.opt_u8(),
                extension: r.rest(),
            }),
            // unplug power u16 | unplug time u16 | float % u8 | float detect
            // u16 | float time u16 | heartbeat interval u16
            (FromServer, 0x83) => Message::SetRunParams1 {
                unplug_power: r.u16()?,
                unplug_detect_s: r.u16()?,
                float_percent: r.u8()?,
                float_detect_s: r.u16()?,
                float_time_s: r.u16()?,
                heartbeat_interval_s: r.u16()?,
                extra: r.rest(),
            },
            // the fields of `RunParams2`, in order, widths as typed
            (FromServer, 0x84) => Message::SetRunParams2(RunParams2 {
                dynamic_overload_power: r.u16()?,
                dynamic_overload_detect_s: r.u16()?,
                dynamic_overload_start_s: r.u16()?,
                unplug_noise_power: r.u8()?,
                unplug_noise_detect_s: r.u16()?,
                float_second_point_s: r.u16()?,
                float_second_detect_s: r.u16()?,
                min_power: r.u16()?,
                min_power_point_s: r.u16()?,
                second_max_power_point_s: r.u16()?,
                ambient_alarm_c: r.u8()?,
                port_alarm_c: r.u8()?,
                unplug_detect: r.u8()?,
                qr_light: r.opt_u8(),
                extra: r.rest(),
            }),
            // max duration u16 | overload power u16 | (newer:) over-voltage
            // u16 | under-voltage u16
            (FromServer, 0x85) => Message::SetLimits {
                max_duration_s: r.u16()?,
                overload_power_dw: r.u16()?,
                over_voltage_dv: r.opt_u16(),
                under_voltage_dv: r.opt_u16(),
                extra: r.rest(),
            },
            // sector u8 | user key [6] | new-card key [6]
            (FromServer, 0x86) => Message::SetCardParams {
                sector: r.u8()?,
                user_key: r.array()?,
                new_card_key: r.array()?,
                extra: r.rest(),
            },
            (FromServer, 0x87) if data.is_empty() => Message::Reboot,
            (FromServer, 0x88) if data.is_empty() => Message::ClearMemory,
            // interrupt u8 | segment count u8 | segments
            (FromServer, 0x89) => Message::PlayVoice {
                interrupt: r.u8()?,
                count: r.u8()?,
                segments: r.rest(),
            },
            // rate mode u8 | port u8 | duration or energy u16
            (FromServer, 0x8A) => Message::ChangeDuration {
                rate_mode: r.u8()?,
                port: r.u8()?,
                amount: r.u16()?,
                extra: r.rest(),
            },
            // address u16 | length u8
            (FromServer, 0x8B) => Message::ReadEeprom {
                address: r.u16()?,
                len: r.u8()?,
                extra: r.rest(),
            },
            // address u16 | length u8 | bytes
            (FromServer, 0x8C) => Message::WriteEeprom {
                address: r.u16()?,
                len: r.u8()?,
                data: r.rest(),
            },
            (FromServer, 0x8D) => Message::SetWorkMode {
                mode: r.u8()?,
                extra: r.rest(),
            },
            // main screen u8 | reserved [3] | QR text (72 bytes, NUL padded)
            (FromServer, 0x8E) => Message::SetQrCode {
                main_screen: r.u8()?,
                reserved: r.array()?,
                qr: r.rest(),
            },
            (FromServer, 0x8F) => Message::SetCardMode {
                mode: r.u8()?,
                extra: r.rest(),
            },
            (FromServer, 0x96) if data.len() == 1 => Message::Locate { seconds: r.u8()? },
            (FromServer, 0x97) => Message::SetMute {
                mode: r.u8()?,
                extra: r.rest(),
            },
            (FromServer, 0xE4) if data.is_empty() => Message::TriggerUpgrade,
            _ => unknown(),
        };
        Ok(msg)
    }

    /// Appends the data part (everything between the command byte and the
    /// checksum).
    pub fn encode_data(&self, out: &mut BytesMut) {
        match self {
            Message::LegacyHeartbeat(m) => {
                out.put_u16_le(m.firmware);
                out.put_u16_le(m.voltage_dv);
                put_statuses(out, &m.ports);
                m.current_power_dw.iter().for_each(|p| out.put_u16_le(*p));
                m.peak_power_dw.iter().for_each(|p| out.put_u16_le(*p));
                out.put_slice(&[m.virtual_id, m.signal, m.device_type]);
                Tail::new(out).u8(m.temperature_raw).u8(m.work_mode);
                out.put_slice(&m.extra);
            }
            Message::CardSwipe(m) => {
                out.put_u32_le(m.card_id);
                out.put_u8(m.card_type);
                out.put_u8(m.port);
                out.put_u16_le(m.balance_fen);
                let len = m.card_no2.as_ref().and_then(|c| u8::try_from(c.len()).ok());
                Tail::new(out)
                    .u32(m.timestamp)
                    .u8(len)
                    .bytes(len.and(m.card_no2.as_deref()));
                out.put_slice(&m.extra);
            }
            Message::Settlement(s) | Message::ChargeFinished(s) => write_settlement(s, out),
            Message::OrderConfirm {
                port,
                start_mode,
                card_id,
                duration_s,
                order_no,
                extra,
            } => {
                out.put_u8(*port);
                out.put_u8(*start_mode);
                out.put_u32_le(*card_id);
                out.put_u16_le(*duration_s);
                out.put_slice(&order_no.0);
                out.put_slice(extra);
            }
            Message::UpgradeRequest {
                device_type,
                firmware,
                package_type,
                extra,
            } => {
                out.put_u8(*device_type);
                out.put_u16_le(*firmware);
                out.put_u32_le(*package_type);
                out.put_slice(extra);
            }
            Message::PowerHeartbeat(m) => {
                out.put_u8(m.port);
                out.put_u8(m.status.0);
                out.put_u16_le(m.duration_s);
                out.put_u16_le(m.energy_cwh);
                out.put_u8(m.start_mode);
                out.put_u16_le(m.power_dw);
                out.put_u16_le(m.max_power_dw);
                out.put_u16_le(m.min_power_dw);
                out.put_u16_le(m.avg_power_dw);
                out.put_slice(&m.order_no.0);
                Tail::new(out)
                    .u16(m.period_energy_raw)
                    .u16(m.peak_power_dw)
                    .u16(m.voltage_dv)
                    .u16(m.current_ma)
                    .u8(m.ambient_temperature_raw)
                    .u8(m.port_temperature_raw)
                    .u32(m.timestamp)
                    .u16(m.occupancy_min);
                out.put_slice(&m.extra);
            }
            Message::Register(m) => {
                out.put_u16_le(m.firmware);
                out.put_slice(&[m.port_count, m.virtual_id, m.device_type]);
                Tail::new(out).u8(m.work_mode).u16(m.power_board_version);
                out.put_slice(&m.extra);
            }
            Message::Heartbeat(m) => {
                out.put_u16_le(m.voltage_dv);
                put_statuses(out, &m.ports);
                out.put_u8(m.signal);
                out.put_u8(m.temperature_raw);
                out.put_slice(&m.extra);
            }
            Message::TimeRequest
            | Message::Query
            | Message::Reboot
            | Message::ClearMemory
            | Message::TriggerUpgrade => {}
            Message::CabinetHeartbeat {
                port_count,
                doors,
                fans,
                extra,
            } => {
                out.put_u8(*port_count);
                out.put_u32_le(*doors);
                out.put_u32_le(*fans);
                out.put_slice(extra);
            }
            Message::Alarm {
                kind,
                port,
                trigger,
                extra,
            } => {
                out.put_slice(&[*kind, *port, *trigger]);
                out.put_slice(extra);
            }
            Message::PortPush {
                kind,
                port,
                order_no,
                extra,
            } => {
                out.put_slice(&[*kind, *port]);
                out.put_slice(&order_no.0);
                out.put_slice(extra);
            }
            Message::StartStopReply(m) => {
                out.put_u8(m.result.0);
                Tail::new(out)
                    .order_no(m.order_no)
                    .u8(m.port)
                    .u16(m.waiting_ports);
                out.put_slice(&m.extra);
            }
            Message::Ack { result, extra, .. } => {
                out.put_u8(*result);
                out.put_slice(extra);
            }
            Message::CardReply(m) => {
                out.put_u32_le(m.card_id);
                out.put_u8(m.account_status);
                out.put_u8(m.rate_mode);
                out.put_u32_le(m.balance);
                out.put_u8(m.port);
                out.put_slice(&m.extra);
            }
            Message::OrderConfirmAck {
                port,
                result,
                extra,
            } => {
                out.put_slice(&[*port, *result]);
                out.put_slice(extra);
            }
            Message::TimeReply { unix_time } => out.put_u32_le(*unix_time),
            Message::StartStop(m) => {
                out.put_u8(m.rate_mode);
                out.put_u32_le(m.balance_fen);
                out.put_u8(m.port);
                out.put_u8(m.command);
                out.put_u16_le(m.amount);
                out.put_slice(&m.order_no.0);
                Tail::new(out)
                    .u16(m.max_duration_s)
                    .u16(m.overload_power_dw)
                    .u8(m.qr_light);
                // Whatever follows the last field read (the extension, or the
                // partial bytes of a short command) is written back as is.
                out.put_slice(&m.extension);
            }
            Message::SetRunParams1 {
                unplug_power,
                unplug_detect_s,
                float_percent,
                float_detect_s,
                float_time_s,
                heartbeat_interval_s,
                extra,
            } => {
                out.put_u16_le(*unplug_power);
                out.put_u16_le(*unplug_detect_s);
                out.put_u8(*float_percent);
                out.put_u16_le(*float_detect_s);
                out.put_u16_le(*float_time_s);
                out.put_u16_le(*heartbeat_interval_s);
                out.put_slice(extra);
            }
            Message::SetRunParams2(p) => {
                out.put_u16_le(p.dynamic_overload_power);
                out.put_u16_le(p.dynamic_overload_detect_s);
                out.put_u16_le(p.dynamic_overload_start_s);
                out.put_u8(p.unplug_noise_power);
                out.put_u16_le(p.unplug_noise_detect_s);
                out.put_u16_le(p.float_second_point_s);
                out.put_u16_le(p.float_second_detect_s);
                out.put_u16_le(p.min_power);
                out.put_u16_le(p.min_power_point_s);
                out.put_u16_le(p.second_max_power_point_s);
                out.put_slice(&[p.ambient_alarm_c, p.port_alarm_c, p.unplug_detect]);
                Tail::new(out).u8(p.qr_light);
                out.put_slice(&p.extra);
            }
            Message::SetLimits {
                max_duration_s,
                overload_power_dw,
                over_voltage_dv,
                under_voltage_dv,
                extra,
            } => {
                out.put_u16_le(*max_duration_s);
                out.put_u16_le(*overload_power_dw);
                Tail::new(out).u16(*over_voltage_dv).u16(*under_voltage_dv);
                out.put_slice(extra);
            }
            Message::SetCardParams {
                sector,
                user_key,
                new_card_key,
                extra,
            } => {
                out.put_u8(*sector);
                out.put_slice(user_key);
                out.put_slice(new_card_key);
                out.put_slice(extra);
            }
            Message::PlayVoice {
                interrupt,
                count,
                segments,
            } => {
                out.put_slice(&[*interrupt, *count]);
                out.put_slice(segments);
            }
            Message::ChangeDuration {
                rate_mode,
                port,
                amount,
                extra,
            } => {
                out.put_slice(&[*rate_mode, *port]);
                out.put_u16_le(*amount);
                out.put_slice(extra);
            }
            Message::ReadEeprom {
                address,
                len,
                extra,
            } => {
                out.put_u16_le(*address);
                out.put_u8(*len);
                out.put_slice(extra);
            }
            Message::WriteEeprom { address, len, data } => {
                out.put_u16_le(*address);
                out.put_u8(*len);
                out.put_slice(data);
            }
            Message::Locate { seconds } => out.put_u8(*seconds),
            Message::SetWorkMode { mode, extra }
            | Message::SetCardMode { mode, extra }
            | Message::SetMute { mode, extra } => {
                out.put_u8(*mode);
                out.put_slice(extra);
            }
            Message::SetQrCode {
                main_screen,
                reserved,
                qr,
            } => {
                out.put_u8(*main_screen);
                out.put_slice(reserved);
                out.put_slice(qr);
            }
            Message::Unknown { data, .. } => out.put_slice(data),
        }
    }

    /// The command byte this message travels under.
    pub fn command(&self) -> u8 {
        match self {
            Message::LegacyHeartbeat(_) => 0x01,
            Message::CardSwipe(_) | Message::CardReply(_) => 0x02,
            Message::Settlement(_) => 0x03,
            Message::OrderConfirm { .. } | Message::OrderConfirmAck { .. } => 0x04,
            Message::UpgradeRequest { .. } => 0x05,
            Message::PowerHeartbeat(_) => 0x06,
            Message::Register(_) => 0x20,
            Message::Heartbeat(_) => 0x21,
            Message::TimeRequest | Message::TimeReply { .. } => 0x22,
            Message::CabinetHeartbeat { .. } => 0x41,
            Message::Alarm { .. } => 0x42,
            Message::ChargeFinished(_) => 0x43,
            Message::PortPush { .. } => 0x44,
            Message::Query => 0x81,
            Message::StartStop(_) | Message::StartStopReply(_) => 0x82,
            Message::SetRunParams1 { .. } => 0x83,
            Message::SetRunParams2(_) => 0x84,
            Message::SetLimits { .. } => 0x85,
            Message::SetCardParams { .. } => 0x86,
            Message::Reboot => 0x87,
            Message::ClearMemory => 0x88,
            Message::PlayVoice { .. } => 0x89,
            Message::ChangeDuration { .. } => 0x8A,
            Message::ReadEeprom { .. } => 0x8B,
            Message::WriteEeprom { .. } => 0x8C,
            Message::SetWorkMode { .. } => 0x8D,
            Message::SetQrCode { .. } => 0x8E,
            Message::SetCardMode { .. } => 0x8F,
            Message::Locate { .. } => 0x96,
            Message::SetMute { .. } => 0x97,
            Message::TriggerUpgrade => 0xE4,
            Message::Ack { command, .. } | Message::Unknown { command, .. } => *command,
        }
    }

    /// Who sends this message; `None` for `Ack` (both do) and `Unknown`.
    pub fn direction(&self) -> Option<Direction> {
        match self {
            Message::Ack { command, .. } => Some(match command {
                0x01 | 0x03 | 0x20 | 0x21 => Direction::FromServer,
                _ => Direction::FromDevice,
            }),
            Message::Unknown { .. } => None,
            Message::LegacyHeartbeat(_)
            | Message::CardSwipe(_)
            | Message::Settlement(_)
            | Message::OrderConfirm { .. }
            | Message::UpgradeRequest { .. }
            | Message::PowerHeartbeat(_)
            | Message::Register(_)
            | Message::Heartbeat(_)
            | Message::TimeRequest
            | Message::CabinetHeartbeat { .. }
            | Message::Alarm { .. }
            | Message::ChargeFinished(_)
            | Message::PortPush { .. }
            | Message::StartStopReply(_) => Some(Direction::FromDevice),
            _ => Some(Direction::FromServer),
        }
    }

    /// Short snake_case name, for logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Ack { command, .. } => match command {
                0x01 => "legacy_heartbeat_ack",
                0x03 => "settlement_ack",
                0x20 => "register_ack",
                0x21 => "heartbeat_ack",
                0x96 => "locate_ack",
                _ => "ack",
            },
            Message::Unknown { .. } => "unknown",
            m => command_name(m.command(), m.direction().unwrap_or(Direction::FromDevice)),
        }
    }
}

/// Name of a command in a direction (used for messages and error reports).
pub fn command_name(command: u8, dir: Direction) -> &'static str {
    use Direction::*;
    match (dir, command) {
        (FromDevice, 0x01) => "legacy_heartbeat",
        (FromDevice, 0x02) => "card_swipe",
        (FromDevice, 0x03) => "settlement",
        (FromDevice, 0x04) => "order_confirm",
        (FromDevice, 0x05) => "upgrade_request",
        (FromDevice, 0x06) => "power_heartbeat",
        (FromDevice, 0x20) => "register",
        (FromDevice, 0x21) => "heartbeat",
        (FromDevice, 0x22) => "time_request",
        (FromDevice, 0x41) => "cabinet_heartbeat",
        (FromDevice, 0x42) => "alarm",
        (FromDevice, 0x43) => "charge_finished",
        (FromDevice, 0x44) => "port_push",
        (FromDevice, 0x82) => "start_stop_reply",
        (FromDevice, 0x83..=0x8F | 0x95..=0x98) => "ack",
        (FromServer, 0x01 | 0x03 | 0x20 | 0x21) => "ack",
        (FromServer, 0x02) => "card_reply",
        (FromServer, 0x04) => "order_confirm_ack",
        (FromServer, 0x22) => "time_reply",
        (FromServer, 0x81) => "query",
        (FromServer, 0x82) => "start_stop",
        (FromServer, 0x83) => "set_run_params1",
        (FromServer, 0x84) => "set_run_params2",
        (FromServer, 0x85) => "set_limits",
        (FromServer, 0x86) => "set_card_params",
        (FromServer, 0x87) => "reboot",
        (FromServer, 0x88) => "clear_memory",
        (FromServer, 0x89) => "play_voice",
        (FromServer, 0x8A) => "change_duration",
        (FromServer, 0x8B) => "read_eeprom",
        (FromServer, 0x8C) => "write_eeprom",
        (FromServer, 0x8D) => "set_work_mode",
        (FromServer, 0x8E) => "set_qr_code",
        (FromServer, 0x8F) => "set_card_mode",
        (FromServer, 0x96) => "locate",
        (FromServer, 0x97) => "set_mute",
        (FromServer, 0xE4) => "trigger_upgrade",
        _ => "unknown",
    }
}

fn port_statuses(bytes: &[u8], what: &'static str) -> Result<PortStatuses, DecodeError> {
    PortStatuses::from_wire(bytes).ok_or_else(|| DecodeError::InvalidField {
        what,
        field: "port count",
        reason: format!(
            "{} ports, at most {} supported",
            bytes.len(),
            PortStatuses::CAPACITY
        ),
    })
}

fn put_statuses(out: &mut BytesMut, ports: &PortStatuses) {
    // The count is bounded by CAPACITY, so it always fits the u8.
    out.put_u8(u8::try_from(ports.len()).unwrap_or(u8::MAX));
    for s in ports.as_slice() {
        out.put_u8(s.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_extension_reads_what_is_there_and_writes_it_back() {
        let bytes = [1, 0x2C, 0x01, 2, 0, 1, 5];
        let ext = StartExtension::parse(&bytes);
        assert_eq!(ext.extra_float_s, Some(300));
        assert_eq!(ext.full_power_w, Some(5));
        assert_eq!(ext.full_power_max_min, None);
        assert_eq!(ext.to_bytes(), bytes);
        assert_eq!(StartExtension::parse(&[]), StartExtension::default());
    }

    #[test]
    fn temperature_zero_means_no_sensor() {
        assert_eq!(temperature_c(0), None);
        assert_eq!(temperature_c(65), Some(0));
        assert_eq!(temperature_c(1), Some(-64));
    }
}
