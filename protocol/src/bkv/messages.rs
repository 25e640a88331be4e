//! Typed BKV messages, chosen by command, sub-command and direction.
//!
//! Fixed layouts are declared with `fixed_layout!` (fields in wire order,
//! big-endian); variable ones (counted lists, optional tails, TLV views) have
//! hand-written `read`/`write` below.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Serialize, Serializer};

use super::lazy::write_packet_raw;
pub use super::lazy::{ChargeEndFields, ChargeEndReport, SocketView, StatusReport};
use super::tlv::{self, merge, ExtraTlv, Tlv, TlvHeader, TlvRef, View};
use super::wire::{fixed_layout, Reader, Wire};
use super::{BcdTime, BinTime, Direction, EndReasonCode, GatewayId, HourMinute, Mac, SocketStatus};
use crate::port::bkv_port_no;
use crate::DecodeError;

/// Command codes (frame offset 4).
pub mod cmd {
    pub const HEARTBEAT: u16 = 0x0000;
    pub const NETWORK: u16 = 0x0005;
    pub const OTA: u16 = 0x0007;
    pub const CONTROL: u16 = 0x0015;
    pub const TLV: u16 = 0x1000;
}

/// Sub-commands of the 0x0015 / 0x0005 families (the byte after `inner_len`).
pub mod sub {
    pub const CHARGE_END: u8 = 0x02;
    pub const CONTROL: u8 = 0x07;
    pub const NET_REFRESH: u8 = 0x08;
    pub const NET_ADD: u8 = 0x09;
    pub const CARD_SWIPE: u8 = 0x0B;
    pub const CARD_END: u8 = 0x0C;
    pub const CARD_ORDER_ACK: u8 = 0x0F;
    pub const POWER_CHARGE: u8 = 0x17;
    pub const POWER_END: u8 = 0x18;
    pub const BALANCE: u8 = 0x1A;
    pub const VOICE: u8 = 0x1B;
    pub const SOCKET_STATE: u8 = 0x1C;
    pub const QUERY_SOCKET: u8 = 0x1D;
}

/// BKV commands inside a 0x1000 packet (TLV tag 0x01).
pub mod bkv_cmd {
    pub const CHARGE_END: u16 = 0x1004;
    pub const FEE_CHARGE: u16 = 0x1007;
    pub const EXCEPTION: u16 = 0x1010;
    pub const PARAM_SET: u16 = 0x1011;
    pub const PARAM_QUERY: u16 = 0x1012;
    /// Not described by the guide; read as the V1.7 mute command (see
    /// [`super::Message::Mute`]).
    pub const MUTE: u16 = 0x1013;
    pub const STATUS: u16 = 0x1017;
}

fn serialize_ascii<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&ascii_lossy(bytes))
}

fn ascii_lossy(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(bytes.get(..end).unwrap_or(bytes)).into_owned()
}

fn serialize_hex<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

/// 0x0000 up: the gateway's heartbeat. Fixed arrays, so decoding allocates
/// nothing.
///
/// ```text
/// iccid[20] ASCII · firmware[8] ASCII, NUL-padded · signal u8
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heartbeat {
    #[serde(serialize_with = "serialize_ascii")]
    pub iccid: [u8; 20],
    #[serde(serialize_with = "serialize_ascii")]
    pub firmware: [u8; 8],
    pub signal: u8,
}

impl Heartbeat {
    /// `iccid` and `firmware` are truncated/NUL-padded to their wire sizes.
    pub fn new(iccid: &str, firmware: &str, signal: u8) -> Self {
        let mut hb = Heartbeat {
            iccid: [b'0'; 20],
            firmware: [0; 8],
            signal,
        };
        for (o, b) in hb.iccid.iter_mut().zip(iccid.bytes()) {
            *o = b;
        }
        for (o, b) in hb.firmware.iter_mut().zip(firmware.bytes()) {
            *o = b;
        }
        hb
    }

    /// The ICCID as text (`""` if it is not UTF-8).
    pub fn iccid_str(&self) -> &str {
        std::str::from_utf8(&self.iccid).unwrap_or("")
    }

    /// The firmware string without its NUL padding (`""` if not UTF-8).
    pub fn firmware_str(&self) -> &str {
        let end = self
            .firmware
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(self.firmware.len());
        self.firmware
            .get(..end)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }
}

impl Wire for Heartbeat {
    #[inline]
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Heartbeat {
            iccid: r.array()?,
            firmware: r.array()?,
            signal: r.u8()?,
        })
    }
    fn write(&self, out: &mut BytesMut) {
        out.put_slice(&self.iccid);
        out.put_slice(&self.firmware);
        out.put_u8(self.signal);
    }
}

fixed_layout! {
    /// 0x0015/0x07 down: start or stop charging by time or energy.
    ///
    /// `socket · hole · switch (1 on, 0 off) · mode (1 time, 0 energy) ·
    /// minutes u16 (1–900) · energy_wh u16`. Switch 0 stops; the rest is ignored.
    Control { socket: u8, hole: u8, switch: u8, mode: u8, minutes: u16, energy_wh: u16 }
}

fixed_layout! {
    /// 0x0015/0x07 up (and our reading of 0x17 up): `result (1 OK) · socket ·
    /// hole · business_no u16` — the device's order handle for this charge.
    ControlReply { result: u8, socket: u8, hole: u8, business_no: u16 }
}

fixed_layout! {
    /// 0x0015/0x02 up: charge (by time/energy) ended.
    ///
    /// `socket · socket_version u16 · temperature · rssi · hole · status ·
    /// business_no u16 · power_dw u16 · current_ma u16 · energy_wh u16 · minutes u16`
    ChargeEnd {
        socket: u8, socket_version: u16, temperature_c: u8, rssi: u8, hole: u8,
        status: SocketStatus, business_no: u16, power_dw: u16, current_ma: u16,
        energy_wh: u16, minutes: u16,
    }
}

fixed_layout! {
    /// `socket · hole · result (1 OK)`: our 0x02 ack (down, PROTOCOL.md rule),
    /// the 0x0F card-order ack (up) and the 0x1B voice-window reply (up).
    PortResult { socket: u8, hole: u8, result: u8 }
}

fixed_layout! {
    /// 0x0015/0x0C down: `socket · result` — acknowledges a card charge end.
    SocketResult { socket: u8, result: u8 }
}

fixed_layout! {
    /// 0x0015/0x1D down: query one socket's state.
    QuerySocket { socket: u8 }
}

fixed_layout! {
    /// One hole's state inside 0x1C (14 bytes on the wire; 0x1017 carries
    /// the same fields as TLVs).
    ///
    /// `hole · status · business_no u16 · voltage_dv u16 · power_dw u16 ·
    /// current_ma u16 · energy_wh u16 · minutes u16`
    HoleState {
        hole: u8, status: SocketStatus, business_no: u16, voltage_dv: u16,
        power_dw: u16, current_ma: u16, energy_wh: u16, minutes: u16,
    }
}

/// 0x0015/0x1C up (reply to 0x1D), and one 0x94 cluster of a 0x1017 report.
///
/// ```text
/// socket · version u16 · temperature · rssi · HoleState × n (to the end)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SocketState {
    pub socket: u8,
    pub socket_version: u16,
    pub temperature_c: u8,
    pub rssi: u8,
    pub holes: Vec<HoleState>,
}

impl Wire for SocketState {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut s = SocketState {
            socket: r.u8()?,
            socket_version: r.u16()?,
            temperature_c: r.u8()?,
            rssi: r.u8()?,
            holes: Vec::new(),
        };
        while r.remaining() > 0 {
            s.holes.push(HoleState::read(r)?);
        }
        Ok(s)
    }
    fn write(&self, out: &mut BytesMut) {
        out.put_u8(self.socket);
        out.put_u16(self.socket_version);
        out.put_u8(self.temperature_c);
        out.put_u8(self.rssi);
        for h in &self.holes {
            h.write(out);
        }
    }
}

fixed_layout! {
    /// One power tier of 0x17 / 0x0B: `power_dw u16 · price_fen u16 · minutes u16`.
    PowerTier { power_dw: u16, price_fen: u16, minutes: u16 }
}

fn read_counted<T: Wire>(r: &mut Reader<'_>) -> Result<Vec<T>, DecodeError> {
    let n = r.u8()?;
    (0..n).map(|_| T::read(r)).collect()
}

/// Writes `count u8 · items`; more than 255 items are cut to 255 so the count
/// stays truthful.
fn write_counted<T: Wire>(items: &[T], out: &mut BytesMut) {
    let items = items.get(..255).unwrap_or(items);
    out.put_u8(items.len() as u8);
    for i in items {
        i.write(out);
    }
}

/// 0x0015/0x17 down (the vendor example sends it under 0x0005): charge by
/// power tiers.
///
/// ```text
/// socket · hole · switch · amount_fen u16 · count u8 · PowerTier × count
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PowerCharge {
    pub socket: u8,
    pub hole: u8,
    pub switch: u8,
    pub amount_fen: u16,
    pub tiers: Vec<PowerTier>,
    /// True when carried by command 0x0005 (vendor erratum); kept so the frame
    /// re-encodes as received.
    pub via_network_cmd: bool,
}

impl PowerCharge {
    fn read(r: &mut Reader<'_>, via_network_cmd: bool) -> Result<Self, DecodeError> {
        Ok(PowerCharge {
            socket: r.u8()?,
            hole: r.u8()?,
            switch: r.u8()?,
            amount_fen: r.u16()?,
            tiers: read_counted(r)?,
            via_network_cmd,
        })
    }
    fn write(&self, out: &mut BytesMut) {
        out.put_slice(&[self.socket, self.hole, self.switch]);
        out.put_u16(self.amount_fen);
        write_counted(&self.tiers, out);
    }
}

/// 0x0015/0x18 up: a power-tier charge ended.
///
/// ```text
/// socket · version u16 · temperature · rssi · hole · status · business_no u16 ·
/// power_dw u16 · current_ma u16 · energy_wh u16 · minutes u16 ·
/// end_time (year u16, month, day, h, m, s) · end_reason · amount_fen u16 ·
/// settle_power_dw u16 · count u8 · tier minutes u16 × count
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PowerChargeEnd {
    pub socket: u8,
    pub socket_version: u16,
    pub temperature_c: u8,
    pub rssi: u8,
    pub hole: u8,
    pub status: SocketStatus,
    pub business_no: u16,
    pub power_dw: u16,
    pub current_ma: u16,
    pub energy_wh: u16,
    pub minutes: u16,
    pub end_time: BinTime,
    /// The explicit end-reason byte (see [`EndReasonCode`]: no codes listed).
    pub end_reason: EndReasonCode,
    /// Amount spent: the sum over tiers of minutes × price.
    pub amount_fen: u16,
    pub settle_power_dw: u16,
    pub tier_minutes: Vec<u16>,
}

impl Wire for PowerChargeEnd {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(PowerChargeEnd {
            socket: r.u8()?,
            socket_version: r.u16()?,
            temperature_c: r.u8()?,
            rssi: r.u8()?,
            hole: r.u8()?,
            status: SocketStatus::read(r)?,
            business_no: r.u16()?,
            power_dw: r.u16()?,
            current_ma: r.u16()?,
            energy_wh: r.u16()?,
            minutes: r.u16()?,
            end_time: BinTime::read(r)?,
            end_reason: EndReasonCode::read(r)?,
            amount_fen: r.u16()?,
            settle_power_dw: r.u16()?,
            tier_minutes: read_counted(r)?,
        })
    }
    fn write(&self, out: &mut BytesMut) {
        out.put_u8(self.socket);
        out.put_u16(self.socket_version);
        out.put_slice(&[self.temperature_c, self.rssi, self.hole, self.status.0]);
        for v in [
            self.business_no,
            self.power_dw,
            self.current_ma,
            self.energy_wh,
            self.minutes,
        ] {
            out.put_u16(v);
        }
        self.end_time.write(out);
        self.end_reason.write(out);
        out.put_u16(self.amount_fen);
        out.put_u16(self.settle_power_dw);
        write_counted(&self.tier_minutes, out);
    }
}

fixed_layout! {
    /// 0x0015/0x0B up: a card was swiped.
    ///
    /// `socket · hole · business_no u16 · status · card_no[6] · offline_params[20]`
    CardSwipe {
        socket: u8, hole: u8, business_no: u16, status: SocketStatus,
        #[serde(serialize_with = "serialize_hex")]
        card_no: [u8; 6],
        #[serde(serialize_with = "serialize_hex")]
        offline_params: [u8; 20],
    }
}

/// The power-tier tail of a 0x0B card order (billing mode 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CardPowerTiers {
    pub amount_fen: u16,
    pub tiers: Vec<PowerTier>,
}

/// 0x0015/0x0B down: the server's order for a swiped card.
///
/// ```text
/// socket · hole · business_no u16 · switch · mode (1 time, 2 energy, 3 power) ·
/// duration u16 · energy_wh u16 [· amount_fen u16 · count u8 · PowerTier × count]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CardOrder {
    pub socket: u8,
    pub hole: u8,
    pub business_no: u16,
    pub switch: u8,
    pub mode: u8,
    /// The vendor does not state the unit (its example says 0xBB80).
    pub duration: u16,
    pub energy_wh: u16,
    pub power: Option<CardPowerTiers>,
}

impl Wire for CardOrder {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut o = CardOrder {
            socket: r.u8()?,
            hole: r.u8()?,
            business_no: r.u16()?,
            switch: r.u8()?,
            mode: r.u8()?,
            duration: r.u16()?,
            energy_wh: r.u16()?,
            power: None,
        };
        if r.remaining() > 0 {
            o.power = Some(CardPowerTiers {
                amount_fen: r.u16()?,
                tiers: read_counted(r)?,
            });
        }
        Ok(o)
    }
    fn write(&self, out: &mut BytesMut) {
        out.put_slice(&[self.socket, self.hole]);
        out.put_u16(self.business_no);
        out.put_slice(&[self.switch, self.mode]);
        out.put_u16(self.duration);
        out.put_u16(self.energy_wh);
        if let Some(p) = &self.power {
            out.put_u16(p.amount_fen);
            write_counted(&p.tiers, out);
        }
    }
}

/// 0x0015/0x0C up: a card charge ended.
///
/// ```text
/// socket · version u16 · temperature · rssi · hole · status · business_no u16 ·
/// power_dw u16 · current_ma u16 · energy_wh u16 · minutes u16 · card_no[6] ·
/// card_type (0 online) · [billing_mode (1 time, 2 energy, 3 power) ·
/// amount_fen u16 · settle_power_dw u16 · count u8 · tier minutes u16 × count]
/// ```
///
/// The bracketed billing tail came with card charging by power tiers (guide
/// V1.5, which also corrected this example): a report that ends after the
/// card type decodes with `billing: None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CardChargeEnd {
    pub socket: u8,
    pub socket_version: u16,
    pub temperature_c: u8,
    pub rssi: u8,
    pub hole: u8,
    pub status: SocketStatus,
    pub business_no: u16,
    pub power_dw: u16,
    pub current_ma: u16,
    pub energy_wh: u16,
    pub minutes: u16,
    #[serde(serialize_with = "serialize_hex")]
    pub card_no: [u8; 6],
    pub card_type: u8,
    pub billing: Option<CardBilling>,
}

/// The billing tail of a 0x0C card end (V1.5 on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CardBilling {
    /// 1 time, 2 energy, 3 power tiers.
    pub billing_mode: u8,
    /// Power tiers only: amount spent.
    pub amount_fen: u16,
    /// Power tiers only.
    pub settle_power_dw: u16,
    /// Power tiers only: minutes per tier.
    pub tier_minutes: Vec<u16>,
}

impl Wire for CardChargeEnd {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(CardChargeEnd {
            socket: r.u8()?,
            socket_version: r.u16()?,
            temperature_c: r.u8()?,
            rssi: r.u8()?,
            hole: r.u8()?,
            status: SocketStatus::read(r)?,
            business_no: r.u16()?,
            power_dw: r.u16()?,
            current_ma: r.u16()?,
            energy_wh: r.u16()?,
            minutes: r.u16()?,
            card_no: r.array()?,
            card_type: r.u8()?,
            billing: if r.remaining() == 0 {
                None
            } else {
                Some(CardBilling {
                    billing_mode: r.u8()?,
                    amount_fen: r.u16()?,
                    settle_power_dw: r.u16()?,
                    tier_minutes: read_counted(r)?,
                })
            },
        })
    }
    fn write(&self, out: &mut BytesMut) {
        out.put_u8(self.socket);
        out.put_u16(self.socket_version);
        out.put_slice(&[self.temperature_c, self.rssi, self.hole, self.status.0]);
        for v in [
            self.business_no,
            self.power_dw,
            self.current_ma,
            self.energy_wh,
            self.minutes,
        ] {
            out.put_u16(v);
        }
        out.put_slice(&self.card_no);
        out.put_u8(self.card_type);
        if let Some(b) = &self.billing {
            out.put_u8(b.billing_mode);
            out.put_u16(b.amount_fen);
            out.put_u16(b.settle_power_dw);
            write_counted(&b.tier_minutes, out);
        }
    }
}

fixed_layout! {
    /// 0x0015/0x1A up: balance query for a card: `socket · hole · card_no[6]`.
    BalanceQuery {
        socket: u8, hole: u8,
        #[serde(serialize_with = "serialize_hex")]
        card_no: [u8; 6],
    }
}

fixed_layout! {
    /// 0x0015/0x1A down: `socket · hole · card_no[6] · balance_fen u32`.
    BalanceReply {
        socket: u8, hole: u8,
        #[serde(serialize_with = "serialize_hex")]
        card_no: [u8; 6],
        balance_fen: u32,
    }
}

fixed_layout! {
    /// A time window `start hh mm · end hh mm`.
    TimeWindow { start: HourMinute, end: HourMinute }
}

/// 0x0015/0x1B down: when the device may beep and speak.
///
/// ```text
/// socket (254 = all) · hole · buzzer (0/1) · voice (0/1) · count u8 · TimeWindow × count
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VoiceWindow {
    pub socket: u8,
    pub hole: u8,
    pub buzzer: u8,
    pub voice: u8,
    pub windows: Vec<TimeWindow>,
}

impl Wire for VoiceWindow {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(VoiceWindow {
            socket: r.u8()?,
            hole: r.u8()?,
            buzzer: r.u8()?,
            voice: r.u8()?,
            windows: read_counted(r)?,
        })
    }
    fn write(&self, out: &mut BytesMut) {
        out.put_slice(&[self.socket, self.hole, self.buzzer, self.voice]);
        write_counted(&self.windows, out);
    }
}

fixed_layout! {
    /// A socket number and its radio MAC, as listed in 0x08 / 0x09.
    SocketMac { socket: u8, mac: Mac }
}

/// 0x0005/0x08 down: replace the gateway's socket list.
///
/// ```text
/// channel (1–15) · SocketMac × n (to the end)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetRefresh {
    pub channel: u8,
    pub sockets: Vec<SocketMac>,
}

impl Wire for NetRefresh {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let channel = r.u8()?;
        let mut sockets = Vec::new();
        while r.remaining() > 0 {
            sockets.push(SocketMac::read(r)?);
        }
        Ok(NetRefresh { channel, sockets })
    }
    fn write(&self, out: &mut BytesMut) {
        out.put_u8(self.channel);
        for s in &self.sockets {
            s.write(out);
        }
    }
}

fixed_layout! {
    /// 0x0007 down: firmware update from an FTP server.
    ///
    /// `target (1 = gateway) · ip[4] · port u16 · file_name[13] ASCII, NUL-padded`
    Ota {
        target: u8, ip: [u8; 4], port: u16,
        #[serde(serialize_with = "serialize_ascii")]
        file_name: [u8; 13],
    }
}

// ---------------------------------------------------------------------------
// 0x1000 typed views
// ---------------------------------------------------------------------------

/// 0x1017 down: the server's ack, `0x0F result (1 OK, 0 error)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlvAck {
    pub header: TlvHeader,
    pub result: u8,
    pub extra: Vec<ExtraTlv>,
}

impl TlvAck {
    fn from_tlv(header: TlvHeader, body: Vec<TlvRef<'_>>) -> Result<Self, DecodeError> {
        let mut v = View::new(body, "BKV-TLV ack");
        Ok(TlvAck {
            header,
            result: v.u8(0x0F)?,
            extra: v.extra()?,
        })
    }
    fn to_tlv(&self) -> Vec<Tlv> {
        merge(vec![Tlv::u8(0x0F, self.result)], &self.extra)
    }
}

/// 0x1004 down (and, by our reading, 0x1007 up): `0x0F result · 0x4A socket ·
/// 0x08 hole`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlvPortAck {
    pub header: TlvHeader,
    pub result: u8,
    pub socket: u8,
    pub hole: u8,
    pub extra: Vec<ExtraTlv>,
}

impl TlvPortAck {
    fn from_tlv(header: TlvHeader, body: Vec<TlvRef<'_>>) -> Result<Self, DecodeError> {
        let mut v = View::new(body, "BKV-TLV port ack");
        Ok(TlvPortAck {
            header,
            result: v.u8(0x0F)?,
            socket: v.u8(0x4A)?,
            hole: v.u8(0x08)?,
            extra: v.extra()?,
        })
    }
    fn to_tlv(&self) -> Vec<Tlv> {
        let known = vec![
            Tlv::u8(0x0F, self.result),
            Tlv::u8(0x4A, self.socket),
            Tlv::u8(0x08, self.hole),
        ];
        merge(known, &self.extra)
    }
}

fixed_layout! {
    /// One 0x1007 fee tier (6 bytes): `hh mm · energy_price_fen u16 (per kWh) ·
    /// service_fee_fen u16`. The vendor calls the time the tier's start but its
    /// only example is `23:59` for a whole-day tier and says the list must end
    /// at 23:59, so it reads as the tier's end.
    FeeTier { time: HourMinute, energy_price_fen: u16, service_fee_fen: u16 }
}

/// 0x1007 down: charge with energy price + service fee.
///
/// Tags in wire order: `0x4A socket · 0x08 hole · 0x13 switch · 0x12 mode ·
/// 0x47 control type · 0x88 paid_fen u16 · 0x80 service-fee mode (0 time,
/// 1 energy) · 0x89 tier count · 0x83 FeeTier × n`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeeCharge {
    pub header: TlvHeader,
    pub socket: u8,
    pub hole: u8,
    pub switch: u8,
    pub mode: u8,
    pub control_type: u8,
    pub paid_fen: u16,
    pub service_fee_mode: u8,
    pub tier_count: u8,
    pub tiers: Vec<FeeTier>,
    pub extra: Vec<ExtraTlv>,
}

impl FeeCharge {
    fn from_tlv(header: TlvHeader, body: Vec<TlvRef<'_>>) -> Result<Self, DecodeError> {
        let mut v = View::new(body, "0x1007 fee charge");
        let socket = v.u8(0x4A)?;
        let hole = v.u8(0x08)?;
        let switch = v.u8(0x13)?;
        let mode = v.u8(0x12)?;
        let control_type = v.u8(0x47)?;
        let paid_fen = v.u16(0x88)?;
        let service_fee_mode = v.u8(0x80)?;
        let tier_count = v.u8(0x89)?;
        let raw = v.bytes(0x83)?;
        let mut r = Reader::new(raw, "0x1007 tiers (0x83)");
        let mut tiers = Vec::new();
        while r.remaining() > 0 {
            tiers.push(FeeTier::read(&mut r)?);
        }
        Ok(FeeCharge {
            header,
            socket,
            hole,
            switch,
            mode,
            control_type,
            paid_fen,
            service_fee_mode,
            tier_count,
            tiers,
            extra: v.extra()?,
        })
    }
    fn to_tlv(&self) -> Vec<Tlv> {
        let mut tiers = BytesMut::new();
        for t in &self.tiers {
            t.write(&mut tiers);
        }
        let known = vec![
            Tlv::u8(0x4A, self.socket),
            Tlv::u8(0x08, self.hole),
            Tlv::u8(0x13, self.switch),
            Tlv::u8(0x12, self.mode),
            Tlv::u8(0x47, self.control_type),
            Tlv::u16(0x88, self.paid_fen),
            Tlv::u8(0x80, self.service_fee_mode),
            Tlv::u8(0x89, self.tier_count),
            Tlv::bytes(0x83, tiers.to_vec()),
        ];
        merge(known, &self.extra)
    }
}

/// 0x1010 (exception event + ack), 0x1011 (parameter set + reply) and 0x1012
/// (parameter query + reply): `0x4A socket · [0x0F result] · parameters…`.
///
/// The parameters are kept as TLVs in wire order (the vendor lists e.g.
/// 0x21 full-charge delay s, 0x22 no-load delay s, 0x23 full-charge power
/// 0.1 W, 0x24 no-load power 0.1 W, 0x25 over-temperature threshold, 0x11
/// power limit 0.1 W, 0x59 max charge minutes; for 0x1010 0x54/0x4B socket
/// event reason/state, 0x55/0x4C and 0x56/0x4D per-hole reason/state, 0x4E/0x4F
/// over/under-voltage, 0x50/0x51 leakage, 0x52/0x53 over-temperature,
/// 0x57/0x58 per-hole status); [`SocketParams::param`] reads one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SocketParams {
    pub header: TlvHeader,
    pub socket: u8,
    pub result: Option<u8>,
    pub params: Vec<Tlv>,
}

impl SocketParams {
    fn from_tlv(header: TlvHeader, body: Vec<TlvRef<'_>>) -> Result<Self, DecodeError> {
        let mut iter = body.iter().peekable();
        let socket = match iter.next() {
            Some(t) if t.tag == 0x4A => match t.value {
                [s] => *s,
                _ => return Err(field_err("BKV-TLV socket params", "tag 0x4A is not 1 byte")),
            },
            _ => {
                return Err(field_err(
                    "BKV-TLV socket params",
                    "tag 0x4A (socket) must come first",
                ))
            }
        };
        let result = match iter.peek() {
            Some(t) if t.tag == 0x0F => match t.value {
                [r] => {
                    let r = *r;
                    iter.next();
                    Some(r)
                }
                _ => None,
            },
            _ => None,
        };
        Ok(SocketParams {
            header,
            socket,
            result,
            params: iter.map(|t| t.owned(0)).collect::<Result<_, _>>()?,
        })
    }
    fn to_tlv(&self) -> Vec<Tlv> {
        let mut list = vec![Tlv::u8(0x4A, self.socket)];
        list.extend(self.result.map(|r| Tlv::u8(0x0F, r)));
        list.extend(self.params.iter().cloned());
        list
    }

    /// A parameter's value as an unsigned big-endian number (1–8 bytes).
    pub fn param(&self, tag: u8) -> Option<u64> {
        let bytes = self.params.iter().find(|t| t.tag == tag)?.as_bytes()?;
        if bytes.is_empty() || bytes.len() > 8 {
            return None;
        }
        Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }
}

fn field_err(what: &'static str, reason: &str) -> DecodeError {
    DecodeError::InvalidField {
        what,
        field: "tlv",
        reason: reason.to_string(),
    }
}

/// A 0x1000 packet whose BKV command has no typed view: the whole tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlvPacket {
    pub bkv_cmd: u16,
    pub header: TlvHeader,
    pub body: Vec<Tlv>,
}

// ---------------------------------------------------------------------------
// Message
// ---------------------------------------------------------------------------

/// Every BKV message either side sends, typed by command, sub-command and
/// direction. The variant fixes the command (see [`Message::cmd`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "body", rename_all = "snake_case")]
pub enum Message {
    /// 0x0000 up.
    Heartbeat(Heartbeat),
    /// 0x0000 down: server time.
    HeartbeatReply(BcdTime),
    /// 0x0015/0x07 down.
    Control(Control),
    /// 0x0015/0x07 up.
    ControlReply(ControlReply),
    /// 0x0015/0x02 up.
    ChargeEnd(ChargeEnd),
    /// 0x0015/0x02 down (our rule, PROTOCOL.md).
    ChargeEndAck(PortResult),
    /// 0x0015/0x1D down.
    QuerySocket(QuerySocket),
    /// 0x0015/0x1C up.
    SocketState(SocketState),
    /// 0x0015/0x17 down (or 0x0005/0x17, vendor erratum).
    PowerCharge(PowerCharge),
    /// 0x0015/0x17 up: the vendor omits it; read like the 0x07 reply.
    PowerChargeReply(ControlReply),
    /// 0x0015/0x18 up.
    PowerChargeEnd(PowerChargeEnd),
    /// 0x0015/0x18 down: the server's acknowledgement. The guide omits it (as
    /// for 0x02); our rule, modelled on the 0x0C card-end reply and our 0x02
    /// ack: `socket · hole · result (1 OK)`, echoing the report's sequence.
    PowerChargeEndAck(PortResult),
    /// 0x0015/0x0B up.
    CardSwipe(CardSwipe),
    /// 0x0015/0x0B down.
    CardOrder(CardOrder),
    /// 0x0015/0x0F up.
    CardOrderAck(PortResult),
    /// 0x0015/0x0C up.
    CardChargeEnd(CardChargeEnd),
    /// 0x0015/0x0C down.
    CardChargeEndAck(SocketResult),
    /// 0x0015/0x1A up.
    BalanceQuery(BalanceQuery),
    /// 0x0015/0x1A down.
    BalanceReply(BalanceReply),
    /// 0x0015/0x1B down.
    VoiceWindow(VoiceWindow),
    /// 0x0015/0x1B up.
    VoiceWindowReply(PortResult),
    /// 0x0005/0x08 down.
    NetRefresh(NetRefresh),
    /// 0x0005/0x08 up: result (1 OK).
    NetRefreshReply(u8),
    /// 0x0005/0x09 down.
    NetAdd(SocketMac),
    /// 0x0005/0x09 up: result (1 OK).
    NetAddReply(u8),
    /// 0x0007 down.
    Ota(Ota),
    /// 0x1000/0x1017 up.
    StatusReport(StatusReport),
    /// 0x1000/0x1017 down.
    StatusReportAck(TlvAck),
    /// 0x1000/0x1004 up.
    ChargeEndReport(ChargeEndReport),
    /// 0x1000/0x1004 down.
    ChargeEndReportAck(TlvPortAck),
    /// 0x1000/0x1007 down.
    FeeCharge(FeeCharge),
    /// 0x1000/0x1007 up (layout not given by the vendor; read like the 0x1004 ack).
    FeeChargeReply(TlvPortAck),
    /// 0x1000/0x1010 up.
    ExceptionEvent(SocketParams),
    /// 0x1000/0x1010 down.
    ExceptionAck(SocketParams),
    /// 0x1000/0x1011 down.
    ParamSet(SocketParams),
    /// 0x1000/0x1011 up.
    ParamSetReply(SocketParams),
    /// 0x1000/0x1012 down.
    ParamQuery(SocketParams),
    /// 0x1000/0x1012 up.
    ParamQueryReply(SocketParams),
    /// 0x1000/0x1013 down. The V1.7 changelog adds "异常事件上报/参数设置/静音
    /// BKV 命令" — exception event (0x1010), parameter set (0x1011) and *mute* —
    /// but the guide has no section for the mute command; 0x1013 follows
    /// 0x1010–0x1012 and is the only BKV command seen from real gateways that the
    /// guide does not describe, so it is read as the mute command with the
    /// shape of its siblings: `0x4A socket · parameters…` (kept as TLVs).
    Mute(SocketParams),
    /// 0x1000/0x1013 up: `0x4A socket · 0x0F result · parameters…`.
    MuteReply(SocketParams),
    /// 0x1000 with a BKV command that has no typed view.
    TlvPacket(TlvPacket),
    /// Any other command, or a known family with an unknown sub-command (or one
    /// not expected in this direction). `payload` is the body after the
    /// sub-command when `sub` is set, else the whole payload.
    Unknown {
        cmd: u16,
        sub: Option<u8>,
        #[serde(serialize_with = "serialize_hex")]
        payload: Vec<u8>,
    },
}

impl Message {
    /// Short snake_case name for logs and metrics.
    pub fn name(&self) -> &'static str {
        use Message::*;
        match self {
            Heartbeat(_) => "heartbeat",
            HeartbeatReply(_) => "heartbeat_reply",
            Control(_) => "control",
            ControlReply(_) => "control_reply",
            ChargeEnd(_) => "charge_end",
            ChargeEndAck(_) => "charge_end_ack",
            QuerySocket(_) => "query_socket",
            SocketState(_) => "socket_state",
            PowerCharge(_) => "power_charge",
            PowerChargeReply(_) => "power_charge_reply",
            PowerChargeEnd(_) => "power_charge_end",
            PowerChargeEndAck(_) => "power_charge_end_ack",
            CardSwipe(_) => "card_swipe",
            CardOrder(_) => "card_order",
            CardOrderAck(_) => "card_order_ack",
            CardChargeEnd(_) => "card_charge_end",
            CardChargeEndAck(_) => "card_charge_end_ack",
            BalanceQuery(_) => "balance_query",
            BalanceReply(_) => "balance_reply",
            VoiceWindow(_) => "voice_window",
            VoiceWindowReply(_) => "voice_window_reply",
            NetRefresh(_) => "net_refresh",
            NetRefreshReply(_) => "net_refresh_reply",
            NetAdd(_) => "net_add",
            NetAddReply(_) => "net_add_reply",
            Ota(_) => "ota",
            StatusReport(_) => "status_report",
            StatusReportAck(_) => "status_report_ack",
            ChargeEndReport(_) => "charge_end_report",
            ChargeEndReportAck(_) => "charge_end_report_ack",
            FeeCharge(_) => "fee_charge",
            FeeChargeReply(_) => "fee_charge_reply",
            ExceptionEvent(_) => "exception_event",
            ExceptionAck(_) => "exception_ack",
            ParamSet(_) => "param_set",
            ParamSetReply(_) => "param_set_reply",
            ParamQuery(_) => "param_query",
            ParamQueryReply(_) => "param_query_reply",
            Mute(_) => "mute",
            MuteReply(_) => "mute_reply",
            TlvPacket(_) => "tlv_packet",
            Unknown { .. } => "unknown",
        }
    }

    /// The frame command that carries this message.
    pub fn cmd(&self) -> u16 {
        use Message::*;
        match self {
            Heartbeat(_) | HeartbeatReply(_) => cmd::HEARTBEAT,
            PowerCharge(p) if p.via_network_cmd => cmd::NETWORK,
            NetRefresh(_) | NetRefreshReply(_) | NetAdd(_) | NetAddReply(_) => cmd::NETWORK,
            Ota(_) => cmd::OTA,
            StatusReport(_)
            | StatusReportAck(_)
            | ChargeEndReport(_)
            | ChargeEndReportAck(_)
            | FeeCharge(_)
            | FeeChargeReply(_)
            | ExceptionEvent(_)
            | ExceptionAck(_)
            | ParamSet(_)
            | ParamSetReply(_)
            | ParamQuery(_)
            | ParamQueryReply(_)
            | Mute(_)
            | MuteReply(_)
            | TlvPacket(_) => cmd::TLV,
            Unknown { cmd, .. } => *cmd,
            _ => cmd::CONTROL,
        }
    }

    /// Which generation of its command the layout is, where the guide shows
    /// the layout changing (see the crate README); `None` otherwise.
    pub fn generation(&self) -> Option<&'static str> {
        use Message::*;
        Some(match self {
            ChargeEndReport(r) => r.generation(),
            CardChargeEnd(e) => match e.billing {
                None => "before V1.5 (no billing tail)",
                Some(_) => "V1.5+ (billing mode, amount, settle power, tiers)",
            },
            CardOrder(o) => match o.power {
                None => "by time/energy",
                Some(_) => "V1.5+ by power tiers",
            },
            ParamSet(_) | ParamSetReply(_) | ParamQuery(_) | ParamQueryReply(_) => "V1.6+",
            ExceptionEvent(_) | ExceptionAck(_) | Mute(_) | MuteReply(_) => "V1.7",
            _ => return None,
        })
    }

    /// The sub-command byte (0x0015 / 0x0005 families) or the BKV command
    /// (0x1000), if any.
    pub fn sub(&self) -> Option<u16> {
        use Message::*;
        let s = match self {
            Heartbeat(_) | HeartbeatReply(_) | Ota(_) => return None,
            Control(_) | ControlReply(_) => sub::CONTROL,
            ChargeEnd(_) | ChargeEndAck(_) => sub::CHARGE_END,
            QuerySocket(_) => sub::QUERY_SOCKET,
            SocketState(_) => sub::SOCKET_STATE,
            PowerCharge(_) | PowerChargeReply(_) => sub::POWER_CHARGE,
            PowerChargeEnd(_) | PowerChargeEndAck(_) => sub::POWER_END,
            CardSwipe(_) | CardOrder(_) => sub::CARD_SWIPE,
            CardOrderAck(_) => sub::CARD_ORDER_ACK,
            CardChargeEnd(_) | CardChargeEndAck(_) => sub::CARD_END,
            BalanceQuery(_) | BalanceReply(_) => sub::BALANCE,
            VoiceWindow(_) | VoiceWindowReply(_) => sub::VOICE,
            NetRefresh(_) | NetRefreshReply(_) => sub::NET_REFRESH,
            NetAdd(_) | NetAddReply(_) => sub::NET_ADD,
            StatusReport(_) | StatusReportAck(_) => return Some(bkv_cmd::STATUS),
            ChargeEndReport(_) | ChargeEndReportAck(_) => return Some(bkv_cmd::CHARGE_END),
            FeeCharge(_) | FeeChargeReply(_) => return Some(bkv_cmd::FEE_CHARGE),
            ExceptionEvent(_) | ExceptionAck(_) => return Some(bkv_cmd::EXCEPTION),
            ParamSet(_) | ParamSetReply(_) => return Some(bkv_cmd::PARAM_SET),
            ParamQuery(_) | ParamQueryReply(_) => return Some(bkv_cmd::PARAM_QUERY),
            Mute(_) | MuteReply(_) => return Some(bkv_cmd::MUTE),
            TlvPacket(p) => return Some(p.bkv_cmd),
            Unknown { sub, .. } => return sub.map(u16::from),
        };
        Some(u16::from(s))
    }

    /// Key fields for a one-line log summary (`socket=1 hole=0 …`).
    pub(crate) fn details(&self) -> String {
        use Message::*;
        let port = |s: u8, h: u8| format!("socket={s} hole={h}");
        match self {
            Heartbeat(h) => format!(
                "iccid={} firmware={} signal={}",
                h.iccid_str(),
                h.firmware_str(),
                h.signal
            ),
            HeartbeatReply(t) => format!("time={t}"),
            Control(c) => format!(
                "{} switch={} mode={} minutes={} energy_wh={}",
                port(c.socket, c.hole),
                c.switch,
                c.mode,
                c.minutes,
                c.energy_wh
            ),
            ControlReply(c) | PowerChargeReply(c) => {
                format!(
                    "{} result={} business_no={}",
                    port(c.socket, c.hole),
                    c.result,
                    c.business_no
                )
            }
            ChargeEnd(e) => format!(
                "{} status={} business_no={} energy_wh={} minutes={}",
                port(e.socket, e.hole),
                e.status,
                e.business_no,
                e.energy_wh,
                e.minutes
            ),
            ChargeEndAck(p) | CardOrderAck(p) | VoiceWindowReply(p) | PowerChargeEndAck(p) => {
                format!("{} result={}", port(p.socket, p.hole), p.result)
            }
            QuerySocket(q) => format!("socket={}", q.socket),
            SocketState(s) => format!("socket={} holes={}", s.socket, s.holes.len()),
            PowerCharge(p) => format!(
                "{} amount_fen={} tiers={}",
                port(p.socket, p.hole),
                p.amount_fen,
                p.tiers.len()
            ),
            PowerChargeEnd(e) => format!(
                "{} business_no={} energy_wh={} minutes={} end_reason={}",
                port(e.socket, e.hole),
                e.business_no,
                e.energy_wh,
                e.minutes,
                e.end_reason
            ),
            CardChargeEnd(e) => format!(
                "{} business_no={} energy_wh={} minutes={}",
                port(e.socket, e.hole),
                e.business_no,
                e.energy_wh,
                e.minutes
            ),
            StatusReport(r) => format!("sockets={}", r.socket_count()),
            StatusReportAck(a) => format!("result={}", a.result),
            ChargeEndReport(e) => format!(
                "{} status={} business_no={} energy_wh={} minutes={} end_reason={}",
                port(e.socket(), e.hole()),
                e.status(),
                e.business_no(),
                e.energy_wh(),
                e.minutes(),
                e.end_reason()
                    .map_or_else(|| "none".to_string(), |r| r.to_string())
            ),
            ChargeEndReportAck(a) | FeeChargeReply(a) => {
                format!("{} result={}", port(a.socket, a.hole), a.result)
            }
            FeeCharge(f) => format!(
                "{} switch={} paid_fen={}",
                port(f.socket, f.hole),
                f.switch,
                f.paid_fen
            ),
            ExceptionEvent(p) | ExceptionAck(p) | ParamSet(p) | ParamSetReply(p)
            | ParamQuery(p) | ParamQueryReply(p) | Mute(p) | MuteReply(p) => {
                format!("socket={} params={}", p.socket, p.params.len())
            }
            Unknown { payload, .. } => format!("len={}", payload.len()),
            _ => String::new(),
        }
    }

    /// Reads a payload. `Ok(Unknown)` for commands we do not type; an error
    /// when a known layout does not fit.
    /// `shared`, when given, holds `payload` (the streaming decoder's frame):
    /// lazily read reports then keep a slice of it instead of a copy.
    /// `gateway` is the frame header's (validated) gateway ID: a TLV packet
    /// header repeating it needs no second BCD check.
    #[inline(always)]
    pub(crate) fn decode(
        cmd: u16,
        dir: Direction,
        payload: &[u8],
        shared: Option<&Bytes>,
        gateway: GatewayId,
    ) -> Result<Message, DecodeError> {
        match cmd {
            cmd::HEARTBEAT => {
                let mut r = Reader::new(payload, "heartbeat");
                let msg = match dir {
                    Direction::Up => Message::Heartbeat(Heartbeat::read(&mut r)?),
                    Direction::Down => Message::HeartbeatReply(BcdTime::read(&mut r)?),
                };
                r.finish()?;
                Ok(msg)
            }
            cmd::CONTROL | cmd::NETWORK => decode_family(cmd, dir, payload),
            cmd::OTA if dir == Direction::Down => {
                let mut r = Reader::new(payload, "ota");
                let ota = Ota::read(&mut r)?;
                r.finish()?;
                Ok(Message::Ota(ota))
            }
            cmd::TLV => decode_tlv(dir, payload, shared, gateway),
            _ => Ok(Message::Unknown {
                cmd,
                sub: None,
                payload: payload.to_vec(),
            }),
        }
    }

    /// Writes the payload (everything between the gateway ID and the checksum).
    pub(crate) fn encode_payload(&self, out: &mut BytesMut) {
        use Message::*;
        match self {
            Heartbeat(h) => h.write(out),
            HeartbeatReply(t) => t.write(out),
            Ota(o) => o.write(out),
            StatusReport(m) => write_packet_raw(bkv_cmd::STATUS, &m.header, m.body(), out),
            StatusReportAck(m) => tlv::write_packet(bkv_cmd::STATUS, &m.header, &m.to_tlv(), out),
            ChargeEndReport(m) => write_packet_raw(bkv_cmd::CHARGE_END, &m.header, m.body(), out),
            ChargeEndReportAck(m) => {
                tlv::write_packet(bkv_cmd::CHARGE_END, &m.header, &m.to_tlv(), out)
            }
            FeeCharge(m) => tlv::write_packet(bkv_cmd::FEE_CHARGE, &m.header, &m.to_tlv(), out),
            FeeChargeReply(m) => {
                tlv::write_packet(bkv_cmd::FEE_CHARGE, &m.header, &m.to_tlv(), out)
            }
            ExceptionEvent(m) | ExceptionAck(m) => {
                tlv::write_packet(bkv_cmd::EXCEPTION, &m.header, &m.to_tlv(), out)
            }
            ParamSet(m) | ParamSetReply(m) => {
                tlv::write_packet(bkv_cmd::PARAM_SET, &m.header, &m.to_tlv(), out)
            }
            ParamQuery(m) | ParamQueryReply(m) => {
                tlv::write_packet(bkv_cmd::PARAM_QUERY, &m.header, &m.to_tlv(), out)
            }
            Mute(m) | MuteReply(m) => tlv::write_packet(bkv_cmd::MUTE, &m.header, &m.to_tlv(), out),
            TlvPacket(p) => tlv::write_packet(p.bkv_cmd, &p.header, &p.body, out),
            Unknown {
                sub: None, payload, ..
            } => out.put_slice(payload),
            Unknown {
                sub: Some(sub),
                payload,
                ..
            } => write_family(*sub, out, |o| o.put_slice(payload)),
            family => {
                let sub = family.sub().and_then(|s| u8::try_from(s).ok()).unwrap_or(0);
                write_family(sub, out, |o| family.encode_body(o));
            }
        }
    }

    /// Body of a 0x0015 / 0x0005 family message (after the sub-command).
    fn encode_body(&self, out: &mut BytesMut) {
        use Message::*;
        match self {
            Control(m) => m.write(out),
            ControlReply(m) | PowerChargeReply(m) => m.write(out),
            ChargeEnd(m) => m.write(out),
            ChargeEndAck(m) | CardOrderAck(m) | VoiceWindowReply(m) | PowerChargeEndAck(m) => {
                m.write(out)
            }
            QuerySocket(m) => m.write(out),
            SocketState(m) => m.write(out),
            PowerCharge(m) => m.write(out),
            PowerChargeEnd(m) => m.write(out),
            CardSwipe(m) => m.write(out),
            CardOrder(m) => m.write(out),
            CardChargeEnd(m) => m.write(out),
            CardChargeEndAck(m) => m.write(out),
            BalanceQuery(m) => m.write(out),
            BalanceReply(m) => m.write(out),
            VoiceWindow(m) => m.write(out),
            NetRefresh(m) => m.write(out),
            NetRefreshReply(r) | NetAddReply(r) => out.put_u8(*r),
            NetAdd(m) => m.write(out),
            _ => {}
        }
    }
}

/// `inner_len u16 · sub u8 · body`, where `inner_len` counts the body only.
fn write_family(sub: u8, out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let at = out.len();
    out.put_u16(0);
    out.put_u8(sub);
    let start = out.len();
    body(out);
    let len = u16::try_from(out.len() - start)
        .unwrap_or(u16::MAX)
        .to_be_bytes();
    if let Some(slot) = out.get_mut(at..at + 2) {
        slot.copy_from_slice(&len);
    }
}

/// 0x0015 / 0x0005 payload:
///
/// ```text
/// inner_len u16 (counts body only) · sub u8 · body[inner_len]
/// ```
fn decode_family(cmd_code: u16, dir: Direction, payload: &[u8]) -> Result<Message, DecodeError> {
    use Direction::{Down, Up};
    let mut r = Reader::new(
        payload,
        if cmd_code == cmd::CONTROL {
            "0x0015 payload"
        } else {
            "0x0005 payload"
        },
    );
    let inner_len = usize::from(r.u16()?);
    let sub_code = r.u8()?;
    let body = r.rest();
    if body.len() != inner_len {
        return Err(DecodeError::InvalidField {
            what: r.what(),
            field: "inner_len",
            reason: format!("says {inner_len} but the body has {} byte(s)", body.len()),
        });
    }
    let mut r = Reader::new(body, "0x0015/0x0005 body");
    let network = cmd_code == cmd::NETWORK;
    let msg = match (network, sub_code, dir) {
        (false, sub::CONTROL, Down) => Message::Control(Control::read(&mut r)?),
        (false, sub::CONTROL, Up) => Message::ControlReply(ControlReply::read(&mut r)?),
        (false, sub::CHARGE_END, Up) => Message::ChargeEnd(ChargeEnd::read(&mut r)?),
        (false, sub::CHARGE_END, Down) => Message::ChargeEndAck(PortResult::read(&mut r)?),
        (false, sub::QUERY_SOCKET, Down) => Message::QuerySocket(QuerySocket::read(&mut r)?),
        (false, sub::SOCKET_STATE, Up) => Message::SocketState(SocketState::read(&mut r)?),
        (_, sub::POWER_CHARGE, Down) => Message::PowerCharge(PowerCharge::read(&mut r, network)?),
        (false, sub::POWER_CHARGE, Up) => Message::PowerChargeReply(ControlReply::read(&mut r)?),
        (false, sub::POWER_END, Up) => Message::PowerChargeEnd(PowerChargeEnd::read(&mut r)?),
        (false, sub::POWER_END, Down) => Message::PowerChargeEndAck(PortResult::read(&mut r)?),
        (false, sub::CARD_SWIPE, Up) => Message::CardSwipe(CardSwipe::read(&mut r)?),
        (false, sub::CARD_SWIPE, Down) => Message::CardOrder(CardOrder::read(&mut r)?),
        (false, sub::CARD_ORDER_ACK, Up) => Message::CardOrderAck(PortResult::read(&mut r)?),
        (false, sub::CARD_END, Up) => Message::CardChargeEnd(CardChargeEnd::read(&mut r)?),
        (false, sub::CARD_END, Down) => Message::CardChargeEndAck(SocketResult::read(&mut r)?),
        (false, sub::BALANCE, Up) => Message::BalanceQuery(BalanceQuery::read(&mut r)?),
        (false, sub::BALANCE, Down) => Message::BalanceReply(BalanceReply::read(&mut r)?),
        (false, sub::VOICE, Down) => Message::VoiceWindow(VoiceWindow::read(&mut r)?),
        (false, sub::VOICE, Up) => Message::VoiceWindowReply(PortResult::read(&mut r)?),
        (true, sub::NET_REFRESH, Down) => Message::NetRefresh(NetRefresh::read(&mut r)?),
        (true, sub::NET_REFRESH, Up) => Message::NetRefreshReply(r.u8()?),
        (true, sub::NET_ADD, Down) => Message::NetAdd(SocketMac::read(&mut r)?),
        (true, sub::NET_ADD, Up) => Message::NetAddReply(r.u8()?),
        _ => {
            return Ok(Message::Unknown {
                cmd: cmd_code,
                sub: Some(sub_code),
                payload: body.to_vec(),
            })
        }
    };
    r.finish()?;
    Ok(msg)
}

#[inline]
fn decode_tlv(
    dir: Direction,
    payload: &[u8],
    shared: Option<&Bytes>,
    gateway: GatewayId,
) -> Result<Message, DecodeError> {
    use Direction::{Down, Up};
    let (bkv, header, start) = tlv::split_header(payload, gateway)?;
    let rest = payload.get(start..).unwrap_or(&[]);
    // The lazily read reports keep their body: a slice of the frame the
    // streaming decoder already owns, or one copy.
    let keep = || match shared {
        Some(b) => b.slice_ref(rest),
        None => Bytes::copy_from_slice(rest),
    };
    match (bkv, dir) {
        (bkv_cmd::STATUS, Up) => {
            return Ok(Message::StatusReport(StatusReport::decode(
                header,
                keep(),
                start,
            )?))
        }
        (bkv_cmd::CHARGE_END, Up) => {
            return Ok(Message::ChargeEndReport(ChargeEndReport::decode(
                header,
                keep(),
                start,
            )?))
        }
        _ => {}
    }
    let body = tlv::parse_refs(rest, start)?;
    Ok(match (bkv, dir) {
        (bkv_cmd::STATUS, Down) => Message::StatusReportAck(TlvAck::from_tlv(header, body)?),
        (bkv_cmd::CHARGE_END, Down) => {
            Message::ChargeEndReportAck(TlvPortAck::from_tlv(header, body)?)
        }
        (bkv_cmd::FEE_CHARGE, Down) => Message::FeeCharge(FeeCharge::from_tlv(header, body)?),
        (bkv_cmd::FEE_CHARGE, Up) => Message::FeeChargeReply(TlvPortAck::from_tlv(header, body)?),
        (bkv_cmd::EXCEPTION, Up) => Message::ExceptionEvent(SocketParams::from_tlv(header, body)?),
        (bkv_cmd::EXCEPTION, Down) => Message::ExceptionAck(SocketParams::from_tlv(header, body)?),
        (bkv_cmd::PARAM_SET, Down) => Message::ParamSet(SocketParams::from_tlv(header, body)?),
        (bkv_cmd::PARAM_SET, Up) => Message::ParamSetReply(SocketParams::from_tlv(header, body)?),
        (bkv_cmd::PARAM_QUERY, Down) => Message::ParamQuery(SocketParams::from_tlv(header, body)?),
        (bkv_cmd::PARAM_QUERY, Up) => {
            Message::ParamQueryReply(SocketParams::from_tlv(header, body)?)
        }
        (bkv_cmd::MUTE, Down) => Message::Mute(SocketParams::from_tlv(header, body)?),
        (bkv_cmd::MUTE, Up) => Message::MuteReply(SocketParams::from_tlv(header, body)?),
        _ => Message::TlvPacket(TlvPacket {
            bkv_cmd: bkv,
            header,
            body: owned(&body)?,
        }),
    })
}

fn owned(body: &[TlvRef<'_>]) -> Result<Vec<Tlv>, DecodeError> {
    body.iter().map(|t| t.owned(0)).collect()
}

/// `port_no()` for every message type that addresses one hole.
macro_rules! port_no {
    ($($t:ty),*) => {$(
        impl $t {
            /// The platform's 1-based port number (`None` if out of range).
            pub fn port_no(&self) -> Option<u16> {
                bkv_port_no(self.socket, self.hole)
            }
        }
    )*};
}
port_no!(
    Control,
    ControlReply,
    ChargeEnd,
    PortResult,
    PowerCharge,
    PowerChargeEnd,
    CardSwipe,
    CardOrder,
    CardChargeEnd,
    TlvPortAck,
    FeeCharge
);

impl SocketState {
    /// Port number of one of this socket's holes.
    pub fn port_no(&self, hole: &HoleState) -> Option<u16> {
        bkv_port_no(self.socket, hole.hole)
    }
}
