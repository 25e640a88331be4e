//! BKV family: `FC FE` / `FC FF` frames from networked gateways.
//!
//! ```text
//! offset  size  field
//! 0       2     header: FC FE up (device → server), FC FF down
//! 2       2     length, BE: total frame length − 4
//! 4       2     command, BE (0x0000, 0x0015, 0x0005, 0x1000, 0x0007)
//! 6       4     sequence, BE (0 for device-initiated uplink; a reply echoes)
//! 10      1     direction: 0x00 down, 0x01 up
//! 11      7     gateway ID, 14 BCD digits
//! 18      n     payload (see `messages`)
//! 18+n    1     checksum: low 8 bits of the sum of bytes 2 .. 18+n
//! 19+n    2     tail FC EE
//! ```
//!
//! [`decode_frame`] reads exactly one frame, [`Decoder`] reads a stream, and
//! [`Frame::encode`] writes one. Messages are typed by command, sub-command and
//! direction ([`Message`]); anything unknown is kept as bytes, never rejected.

mod frame;
mod lazy;
mod messages;
mod tlv;
pub(crate) mod wire;

pub use frame::{decode_frame, Decoder, Frame, DEFAULT_MAX_FRAME_LEN, MIN_FRAME_LEN};
pub use messages::*;
pub use tlv::{ExtraTlv, Tlv, TlvHeader, TlvValue};

use serde::{Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

use crate::DecodeError;
use wire::{bcd_byte, to_bcd, Reader, Wire};

/// Who sent a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Server → gateway (`FC FF`, direction byte 0x00).
    Down,
    /// Gateway → server (`FC FE`, direction byte 0x01).
    Up,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Down => "down",
            Direction::Up => "up",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A gateway ID: 7 bytes holding 14 BCD digits, shown as `82210225000520`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GatewayId(pub [u8; 7]);

impl GatewayId {
    /// Checks that every nibble is a decimal digit.
    pub fn from_bcd(bytes: [u8; 7]) -> Result<Self, DecodeError> {
        if wire::all_bcd(&bytes) {
            Ok(GatewayId(bytes))
        } else {
            Err(DecodeError::InvalidField {
                what: "frame header",
                field: "gateway_id",
                reason: format!("not BCD: {}", hex::encode(bytes)),
            })
        }
    }
}

impl fmt::Display for GatewayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{:02x}", b)?;
        }
        Ok(())
    }
}

impl FromStr for GatewayId {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DecodeError::InvalidField {
            what: "gateway id",
            field: "digits",
            reason: format!("expected 14 decimal digits, got {s:?}"),
        };
        let digits = s.as_bytes();
        if digits.len() != 14 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let mut out = [0u8; 7];
        for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            if let [hi, lo] = pair {
                *o = ((hi - b'0') << 4) | (lo - b'0');
            }
        }
        Ok(GatewayId(out))
    }
}

impl Serialize for GatewayId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Wire for GatewayId {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        GatewayId::from_bcd(r.array()?)
    }
    fn write(&self, out: &mut bytes::BytesMut) {
        self.0.write(out)
    }
}

/// A 7-byte BCD timestamp `YYYYMMDDhhmmss` (heartbeat reply, 0x1004 end time).
///
/// Only the digits are validated, not the calendar: the value is the device's
/// and must round-trip as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct BcdTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl fmt::Display for BcdTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}{:02}{:02}{:02}{:02}{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

impl BcdTime {
    pub fn from_bcd(b: [u8; 7]) -> Result<Self, DecodeError> {
        let mut d = [0u8; 7];
        for (o, i) in d.iter_mut().zip(b) {
            *o = bcd_byte(i).ok_or_else(|| DecodeError::InvalidField {
                what: "bcd time",
                field: "digits",
                reason: format!("not BCD: {}", hex::encode(b)),
            })?;
        }
        let [c, y, mo, da, h, mi, s] = d;
        Ok(BcdTime {
            year: u16::from(c) * 100 + u16::from(y),
            month: mo,
            day: da,
            hour: h,
            minute: mi,
            second: s,
        })
    }

    /// Years over 9999 and fields over 99 keep only their low decimal digits.
    pub fn to_bcd(&self) -> [u8; 7] {
        let year = self.year % 10_000;
        [
            to_bcd((year / 100) as u8),
            to_bcd((year % 100) as u8),
            to_bcd(self.month),
            to_bcd(self.day),
            to_bcd(self.hour),
            to_bcd(self.minute),
            to_bcd(self.second),
        ]
    }
}

impl Wire for BcdTime {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        BcdTime::from_bcd(r.array()?)
    }
    fn write(&self, out: &mut bytes::BytesMut) {
        self.to_bcd().write(out)
    }
}

/// The 0x18 end time: year u16 BE, then month, day, hour, minute, second as
/// plain binary bytes (not BCD, unlike [`BcdTime`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct BinTime {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl Wire for BinTime {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(BinTime {
            year: r.u16()?,
            month: r.u8()?,
            day: r.u8()?,
            hour: r.u8()?,
            minute: r.u8()?,
            second: r.u8()?,
        })
    }
    fn write(&self, out: &mut bytes::BytesMut) {
        use bytes::BufMut;
        out.put_u16(self.year);
        out.put_slice(&[self.month, self.day, self.hour, self.minute, self.second]);
    }
}

impl fmt::Display for BinTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// Hour and minute as two binary bytes (`17 3B` = 23:59).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct HourMinute {
    pub hour: u8,
    pub minute: u8,
}

impl Wire for HourMinute {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(HourMinute {
            hour: r.u8()?,
            minute: r.u8()?,
        })
    }
    fn write(&self, out: &mut bytes::BytesMut) {
        [self.hour, self.minute].write(out)
    }
}

/// A socket's radio MAC (6 bytes, printed as 12 hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Wire for Mac {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Mac(r.array()?))
    }
    fn write(&self, out: &mut bytes::BytesMut) {
        self.0.write(out)
    }
}

/// The socket/hole status byte, most significant bit first.
///
/// The vendor annotates its 2.2.9 example `0x98` = `1001 1000` as
/// "在线-计量正常-充电-空载-温度正常-电流正常-功率正常" and concludes 【空载结束】 (a
/// no-load end): seven labels for eight bits. PROTOCOL.md read bit 3 as
/// over-temperature, which turns that very example into an over-temperature end
/// although the vendor says the temperature was normal. The only reading that
/// agrees with the annotation and keeps one polarity (1 = the condition is
/// present) gives the seven labels to bits 7, 6, 5, 4, 2, 1, 0 and leaves bit 3
/// unlabelled:
///
/// | bit | mask | meaning |
/// |---|---|---|
/// | 7 | `0x80` | online |
/// | 6 | `0x40` | metering fault (0 = 计量正常) |
/// | 5 | `0x20` | charging |
/// | 4 | `0x10` | no load (空载) |
/// | 3 | `0x08` | not labelled; set in every vendor end report (0x02, 0x0C, 0x18, 0x1004: all `0x98`) and clear in every other status the documents show (`0x80`, `0x90`, `0xB0`): read as "charge ended", never as a fault |
/// | 2 | `0x04` | over-temperature (0 = 温度正常) |
/// | 1 | `0x02` | over-current (0 = 电流正常) |
/// | 0 | `0x01` | over-power (0 = 功率正常) |
///
/// Both the gateway and the simulator use this reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SocketStatus(pub u8);

impl SocketStatus {
    pub const ONLINE: u8 = 0x80;
    pub const METERING_FAULT: u8 = 0x40;
    pub const CHARGING: u8 = 0x20;
    pub const NO_LOAD: u8 = 0x10;
    /// Unlabelled by the vendor; set in every end report it shows.
    pub const ENDED: u8 = 0x08;
    pub const OVER_TEMPERATURE: u8 = 0x04;
    pub const OVER_CURRENT: u8 = 0x02;
    pub const OVER_POWER: u8 = 0x01;

    /// Online and idle.
    pub const IDLE: SocketStatus = SocketStatus(0x80);
    /// Online and charging.
    pub const CHARGING_NOW: SocketStatus = SocketStatus(0xA0);
    /// The vendor's end-report status: online, no load, ended (2.2.9).
    pub const NO_LOAD_END: SocketStatus = SocketStatus(0x98);

    fn bit(self, mask: u8) -> bool {
        self.0 & mask != 0
    }
    pub fn online(self) -> bool {
        self.bit(Self::ONLINE)
    }
    pub fn metering_fault(self) -> bool {
        self.bit(Self::METERING_FAULT)
    }
    pub fn charging(self) -> bool {
        self.bit(Self::CHARGING)
    }
    pub fn no_load(self) -> bool {
        self.bit(Self::NO_LOAD)
    }
    /// Bit 3 (see the table above): no fault, only "this charge ended".
    pub fn ended(self) -> bool {
        self.bit(Self::ENDED)
    }
    pub fn over_temperature(self) -> bool {
        self.bit(Self::OVER_TEMPERATURE)
    }
    pub fn over_current(self) -> bool {
        self.bit(Self::OVER_CURRENT)
    }
    pub fn over_power(self) -> bool {
        self.bit(Self::OVER_POWER)
    }
    /// Any of the fault bits (metering, temperature, current, power).
    pub fn any_fault(self) -> bool {
        self.bit(
            Self::METERING_FAULT | Self::OVER_TEMPERATURE | Self::OVER_CURRENT | Self::OVER_POWER,
        )
    }
}

/// The explicit end-reason byte of a BKV end report: the 0x0015/0x18 "结束原因"
/// byte and tag 0x2F of 0x1004 ("分功率充电结束原因", power-tier end reason).
///
/// The vendor guide (V1.7) names the field in both places but lists no codes:
/// its only two examples carry `0x02` (0x18) and `0x08` (0x1004), each with the
/// status byte `0x98` that the guide reads as a no-load end elsewhere. The code
/// is therefore carried as sent, typed so it cannot be mistaken for another
/// family's code, and given no meaning this crate cannot source (the platform
/// mapping, `pile-server`'s `EndReason::from_bkv`, decides from the status byte
/// until the vendor documents the codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct EndReasonCode(pub u8);

impl fmt::Display for EndReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#04x}", self.0)
    }
}

impl Wire for EndReasonCode {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(EndReasonCode(r.u8()?))
    }
    fn write(&self, out: &mut bytes::BytesMut) {
        self.0.write(out)
    }
}

impl fmt::Display for SocketStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#04x}", self.0)
    }
}

/// Serialised as the hex byte (`"0x98"`), matching logs and vectors.
impl Serialize for SocketStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Wire for SocketStatus {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(SocketStatus(r.u8()?))
    }
    fn write(&self, out: &mut bytes::BytesMut) {
        self.0.write(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_id_round_trips_through_text() {
        let id: GatewayId = "82210225000520".parse().unwrap();
        assert_eq!(id.0, [0x82, 0x21, 0x02, 0x25, 0x00, 0x05, 0x20]);
        assert_eq!(id.to_string(), "82210225000520");
        assert!("8221022500052".parse::<GatewayId>().is_err());
        assert!("8221022500052a".parse::<GatewayId>().is_err());
        assert!(GatewayId::from_bcd([0x8A, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn the_word_wide_bcd_check_agrees_with_the_per_byte_one() {
        for b in 0..=255u8 {
            for len in 1usize..=9 {
                let mut bytes = vec![0x59u8; len];
                bytes[len / 2] = b;
                assert_eq!(
                    wire::all_bcd(&bytes),
                    bytes.iter().all(|x| bcd_byte(*x).is_some()),
                    "{bytes:02x?}"
                );
            }
        }
        assert!(wire::all_bcd(&[]));
        assert!(!wire::all_bcd(
            &[0x99; 9][..8]
                .iter()
                .chain(&[0xA0])
                .copied()
                .collect::<Vec<_>>()
        ));
    }

    #[test]
    fn bcd_time_reads_digits() {
        let t = BcdTime::from_bcd([0x20, 0x20, 0x07, 0x30, 0x16, 0x45, 0x45]).unwrap();
        assert_eq!(t.to_string(), "20200730164545");
        assert_eq!(t.to_bcd(), [0x20, 0x20, 0x07, 0x30, 0x16, 0x45, 0x45]);
        assert!(BcdTime::from_bcd([0x20, 0x2A, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn the_vendor_end_status_reads_no_load_with_a_normal_temperature() {
        // 2.2.9: 0x98 "在线-计量正常-充电-空载-温度正常-电流正常-功率正常" → 【空载结束】.
        let s = SocketStatus(0x98);
        assert!(s.online() && s.no_load() && s.ended());
        assert!(!s.over_temperature() && !s.over_current() && !s.over_power());
        assert!(!s.charging() && !s.metering_fault() && !s.any_fault());
        assert!(SocketStatus::CHARGING_NOW.charging());
        assert!(SocketStatus(0x84).over_temperature() && SocketStatus(0x84).any_fault());
        assert!(SocketStatus(0x81).over_power() && SocketStatus(0x82).over_current());
    }
}
