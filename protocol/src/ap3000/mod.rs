//! AP3000 "DNY" family: frames, typed messages, a streaming decoder.
//!
//! # Frame layout
//!
//! ```text
//! offset  size  field
//!      0     3  header, ASCII "DNY" (44 4E 59)
//!      3     2  length, u16 LE = bytes after this field
//!               (physical ID + message ID + command + data + checksum)
//!               = total frame length − 5, so at least 9
//!      5     4  physical ID, u32 LE (displayed big-endian, see PhysicalId)
//!      9     2  message ID, u16 LE (a retry reuses it, the reply echoes it)
//!     11     1  command
//!     12     n  data, little-endian fields (see `Message`)
//!   12+n     2  checksum, u16 LE = low 16 bits of the byte sum of
//!               everything before it, header included
//! ```
//!
//! Outside frames a module may send its SIM ICCID (ASCII digits) once after
//! connecting and the ASCII keep-alive `link` after 30 s of silence.
//!
//! The header does not say who sent a frame, so decoding takes a
//! [`Direction`].

mod codes;
mod ids;
mod message;
mod version;

pub use codes::{platform_end_reason, PortStatus, StartResult, StopReason};
pub use ids::{OrderNo, PhysicalId};
pub use message::{
    command_name, temperature_c, CardReply, CardSwipe, Direction, Heartbeat, LegacyHeartbeat,
    Message, PortStatuses, PowerHeartbeat, Register, RunParams2, Settlement, StartExtension,
    StartStop, StartStopReply,
};
pub use version::ProtocolVersion;

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};
use serde::Serialize;

use crate::{DecodeError, Diagnostic, Item};

/// ASCII `DNY`.
pub const HEADER: [u8; 3] = *b"DNY";
/// The ASCII keep-alive a module sends after 30 s without traffic.
pub const KEEP_ALIVE: &[u8] = b"link";
/// Bytes of a frame that are not data: header 3, length 2, physical ID 4,
/// message ID 2, command 1, checksum 2.
pub const OVERHEAD: usize = 14;
/// Smallest legal value of the length field (no data).
pub const MIN_LENGTH_FIELD: usize = 9;
/// The vendor's maximum packet size.
pub const VENDOR_MAX_FRAME: usize = 256;
/// Default limit of [`Decoder`]: twice the vendor maximum, to tolerate
/// firmware that overshoots it, while still refusing hostile lengths.
pub const DEFAULT_MAX_FRAME: usize = 512;
/// ICCID lengths accepted (20 is standard; some vendors send 19 or up to 22).
pub const ICCID_DIGITS: std::ops::RangeInclusive<usize> = 19..=22;

/// One AP3000 frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Frame {
    pub physical_id: PhysicalId,
    pub message_id: u16,
    pub message: Message,
}

/// Low 16 bits of the byte sum.
pub fn checksum(bytes: &[u8]) -> u16 {
    bytes
        .iter()
        .fold(0u16, |acc, b| acc.wrapping_add(u16::from(*b)))
}

fn read_u16_le(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([*b.first()?, *b.get(1)?]))
}

/// Validates framing of exactly `bytes` (one whole frame, length already
/// known to match) and decodes it.
fn parse_whole(bytes: &[u8], dir: Direction) -> Result<Frame, DecodeError> {
    let body_end = bytes.len().checked_sub(2).ok_or(DecodeError::Incomplete {
        have: bytes.len(),
        need: OVERHEAD,
    })?;
    let found = read_u16_le(bytes, body_end).ok_or(DecodeError::Incomplete {
        have: bytes.len(),
        need: OVERHEAD,
    })?;
    let body = bytes.get(..body_end).unwrap_or(&[]);
    let computed = checksum(body);
    if found != computed {
        return Err(DecodeError::BadChecksum { found, computed });
    }
    let short = || DecodeError::Incomplete {
        have: bytes.len(),
        need: OVERHEAD,
    };
    let id: [u8; 4] = body
        .get(5..9)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(short)?;
    let message_id = read_u16_le(body, 9).ok_or_else(short)?;
    let command = *body.get(11).ok_or_else(short)?;
    let data = body.get(12..).ok_or_else(short)?;
    Ok(Frame {
        physical_id: PhysicalId(u32::from_le_bytes(id)),
        message_id,
        message: Message::decode(command, data, dir)?,
    })
}

/// Reads the length field of a buffer starting with `DNY`: `Ok(None)` if
/// fewer than 5 bytes, else the total frame length, or why it is impossible.
fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, DecodeError> {
    let Some(declared) = read_u16_le(buf, 3) else {
        return Ok(None);
    };
    let declared = usize::from(declared);
    if declared < MIN_LENGTH_FIELD {
        return Err(DecodeError::BadLength {
            declared,
            reason: "shorter than physical ID + message ID + command + checksum",
        });
    }
    let total = declared + 5;
    if total > max {
        return Err(DecodeError::TooLong {
            declared: total,
            max,
        });
    }
    Ok(Some(total))
}

/// Decodes exactly one whole frame (no preamble, nothing after it).
pub fn decode_frame(bytes: &[u8], dir: Direction) -> Result<Frame, DecodeError> {
    if bytes.get(..3) != Some(&HEADER[..]) {
        return Err(if bytes.len() < 3 && HEADER.starts_with(bytes) {
            DecodeError::Incomplete {
                have: bytes.len(),
                need: OVERHEAD,
            }
        } else {
            DecodeError::UnknownHeader
        });
    }
    let total = frame_len(bytes, usize::MAX)?.ok_or(DecodeError::Incomplete {
        have: bytes.len(),
        need: OVERHEAD,
    })?;
    if bytes.len() < total {
        return Err(DecodeError::Incomplete {
            have: bytes.len(),
            need: total,
        });
    }
    if bytes.len() > total {
        return Err(DecodeError::Trailing {
            extra: bytes.len() - total,
        });
    }
    parse_whole(bytes, dir)
}

impl Frame {
    pub fn new(physical_id: PhysicalId, message_id: u16, message: Message) -> Self {
        Frame {
            physical_id,
            message_id,
            message,
        }
    }

    pub fn command(&self) -> u8 {
        self.message.command()
    }

    /// Appends the whole frame; length and checksum are computed. Data longer
    /// than the length field can express (only possible with hand-built
    /// `Vec` fields) is written with a saturated length field.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.reserve(OVERHEAD + 32);
        out.put_slice(&HEADER);
        out.put_u16_le(0); // patched below
        out.put_u32_le(self.physical_id.0);
        out.put_u16_le(self.message_id);
        out.put_u8(self.command());
        self.message.encode_data(out);
        let declared = out.len() - start - 5 + 2;
        let declared = u16::try_from(declared).unwrap_or(u16::MAX).to_le_bytes();
        if let Some(field) = out.get_mut(start + 3..start + 5) {
            field.copy_from_slice(&declared);
        }
        let sum = checksum(out.get(start..).unwrap_or(&[]));
        out.put_u16_le(sum);
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.to_vec()
    }

    /// One line for logs, e.g.
    /// `0x06 power_heartbeat port=1 duration_s=120 power_dw=2000 energy_cwh=3`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{:#04x} {} id={} msg_id={}",
            self.command(),
            self.message.name(),
            self.physical_id,
            self.message_id
        );
        // Writing to a String cannot fail.
        let _ = match &self.message {
            Message::Heartbeat(h) => write!(
                s,
                " voltage_dv={} ports={:?} signal={} temperature_raw={}",
                h.voltage_dv,
                h.ports.as_slice().iter().map(|p| p.0).collect::<Vec<_>>(),
                h.signal,
                h.temperature_raw
            ),
            Message::PowerHeartbeat(m) => write!(
                s,
                " port={} status={} duration_s={} power_dw={} energy_cwh={} order_no={}",
                m.port, m.status.0, m.duration_s, m.power_dw, m.energy_cwh, m.order_no
            ),
            Message::Settlement(m) | Message::ChargeFinished(m) => write!(
                s,
                " port={} duration_s={} energy_cwh={} max_power_dw={} stop_reason={}({}) order_no={}",
                m.port,
                m.duration_s,
                m.energy_cwh,
                m.max_power_dw,
                m.stop_reason.0,
                m.stop_reason.name(),
                m.order_no
            ),
            Message::Register(m) => write!(
                s,
                " firmware={} port_count={} device_type={} work_mode={:?}",
                m.firmware, m.port_count, m.device_type, m.work_mode
            ),
            Message::StartStop(m) => write!(
                s,
                " port={} command={} rate_mode={} amount={} balance_fen={} order_no={}",
                m.port, m.command, m.rate_mode, m.amount, m.balance_fen, m.order_no
            ),
            Message::StartStopReply(m) => match (m.port, m.order_no) {
                (Some(port), Some(order_no)) => write!(
                    s,
                    " result={}({}) port={port} order_no={order_no}",
                    m.result.0,
                    m.result.name(),
                ),
                _ => write!(
                    s,
                    " result={}({}) (pre-V6.2 answer: no port/order no)",
                    m.result.0,
                    m.result.name()
                ),
            },
            Message::Locate { seconds } => write!(s, " seconds={seconds}"),
            Message::Ack { command, result, .. } => write!(s, " for={command:#04x} result={result}"),
            Message::TimeReply { unix_time } => write!(s, " unix_time={unix_time}"),
            Message::CardSwipe(m) => write!(s, " card_id={:08X} port={}", m.card_id, m.port),
            Message::Unknown { data, .. } => write!(s, " data={}", hex::encode(data)),
            _ => Ok(()),
        };
        s
    }

    // ---- what the gateway sends ----

    /// A one-byte success answer (0x20 register, 0x21 heartbeat, 0x03
    /// settlement, 0x01), echoing the request's message ID.
    pub fn ack(physical_id: PhysicalId, message_id: u16, command: u8) -> Self {
        Frame::new(
            physical_id,
            message_id,
            Message::Ack {
                command,
                result: 0,
                extra: Vec::new(),
            },
        )
    }

    /// 0x22 time reply.
    pub fn time_reply(physical_id: PhysicalId, message_id: u16, unix_time: u32) -> Self {
        Frame::new(physical_id, message_id, Message::TimeReply { unix_time })
    }

    /// 0x82 start for `duration_s` seconds (0 = until full), time rate mode.
    pub fn start_by_seconds(
        physical_id: PhysicalId,
        message_id: u16,
        port: u8,
        duration_s: u16,
        order_no: OrderNo,
        balance_fen: u32,
    ) -> Self {
        Frame::start_stop(
            physical_id,
            message_id,
            StartStop::RATE_TIME,
            port,
            StartStop::START,
            duration_s,
            order_no,
            balance_fen,
        )
    }

    /// 0x82 start for `energy_cwh` (0.01 kWh; 0 = until full), energy rate mode.
    pub fn start_by_energy(
        physical_id: PhysicalId,
        message_id: u16,
        port: u8,
        energy_cwh: u16,
        order_no: OrderNo,
        balance_fen: u32,
    ) -> Self {
        Frame::start_stop(
            physical_id,
            message_id,
            StartStop::RATE_ENERGY,
            port,
            StartStop::START,
            energy_cwh,
            order_no,
            balance_fen,
        )
    }

    /// 0x82 stop; the device ignores it unless `order_no` is the running one.
    pub fn stop(physical_id: PhysicalId, message_id: u16, port: u8, order_no: OrderNo) -> Self {
        Frame::start_stop(
            physical_id,
            message_id,
            StartStop::RATE_TIME,
            port,
            StartStop::STOP,
            0,
            order_no,
            0,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn start_stop(
        physical_id: PhysicalId,
        message_id: u16,
        rate_mode: u8,
        port: u8,
        command: u8,
        amount: u16,
        order_no: OrderNo,
        balance_fen: u32,
    ) -> Self {
        Frame::new(
            physical_id,
            message_id,
            Message::StartStop(StartStop {
                rate_mode,
                balance_fen,
                port,
                command,
                amount,
                order_no,
                max_duration_s: Some(0),
                overload_power_dw: Some(0),
                qr_light: Some(0),
                extension: Vec::new(),
            }),
        )
    }

    /// 0x81 query (the device answers with 0x20 and 0x21).
    pub fn query(physical_id: PhysicalId, message_id: u16) -> Self {
        Frame::new(physical_id, message_id, Message::Query)
    }

    /// 0x96 sound-and-light locate for `seconds`.
    pub fn locate(physical_id: PhysicalId, message_id: u16, seconds: u8) -> Self {
        Frame::new(physical_id, message_id, Message::Locate { seconds })
    }

    /// The device's one-byte answer to a setting or 0x96 (0 = done).
    pub fn device_ack(physical_id: PhysicalId, message_id: u16, command: u8, result: u8) -> Self {
        Frame::new(
            physical_id,
            message_id,
            Message::Ack {
                command,
                result,
                extra: Vec::new(),
            },
        )
    }

    // ---- what the simulator sends ----

    /// 0x20 register.
    pub fn register(physical_id: PhysicalId, message_id: u16, register: Register) -> Self {
        Frame::new(physical_id, message_id, Message::Register(register))
    }

    /// 0x21 heartbeat.
    pub fn heartbeat(physical_id: PhysicalId, message_id: u16, heartbeat: Heartbeat) -> Self {
        Frame::new(physical_id, message_id, Message::Heartbeat(heartbeat))
    }

    /// 0x06 power heartbeat.
    pub fn power_heartbeat(physical_id: PhysicalId, message_id: u16, m: PowerHeartbeat) -> Self {
        Frame::new(physical_id, message_id, Message::PowerHeartbeat(m))
    }

    /// 0x03 settlement.
    pub fn settlement(physical_id: PhysicalId, message_id: u16, m: Settlement) -> Self {
        Frame::new(physical_id, message_id, Message::Settlement(m))
    }

    /// The device's 0x82 reply (echo the command's message ID).
    pub fn start_stop_reply(
        physical_id: PhysicalId,
        message_id: u16,
        result: StartResult,
        order_no: OrderNo,
        port: u8,
    ) -> Self {
        Frame::new(
            physical_id,
            message_id,
            Message::StartStopReply(StartStopReply {
                result,
                order_no: Some(order_no),
                port: Some(port),
                waiting_ports: Some(0),
                extra: Vec::new(),
            }),
        )
    }
}

/// Appends an ICCID preamble (the ASCII digits, nothing else).
pub fn encode_iccid(iccid: &str, out: &mut BytesMut) {
    out.put_slice(iccid.as_bytes());
}

/// Appends the `link` keep-alive.
pub fn encode_keep_alive(out: &mut BytesMut) {
    out.put_slice(KEEP_ALIVE);
}

/// Streaming decoder over a growing buffer (sans-IO).
#[derive(Debug, Clone)]
pub struct Decoder {
    dir: Direction,
    max_frame_len: usize,
}

impl Decoder {
    /// `dir` is who sends the bytes this decoder reads.
    pub fn new(dir: Direction) -> Self {
        Decoder {
            dir,
            max_frame_len: DEFAULT_MAX_FRAME,
        }
    }

    /// Frames declaring more than `max` bytes in total are rejected as soon
    /// as their length field is seen (never buffered). At least 14.
    pub fn with_max_frame_len(mut self, max: usize) -> Self {
        self.max_frame_len = max.max(OVERHEAD);
        self
    }

    pub fn direction(&self) -> Direction {
        self.dir
    }

    /// Looks at the front of `buf`. `None`: more bytes are needed and nothing
    /// was consumed. Otherwise exactly the bytes of the returned item were
    /// consumed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Item<Frame>> {
        let first = *buf.first()?;

        // ICCID preamble: a run of ASCII digits. We wait for the byte after
        // the run (the next frame) unless the run already has the maximum
        // length, because a shorter run could still grow.
        if first.is_ascii_digit() {
            let run = buf.iter().take_while(|b| b.is_ascii_digit()).count();
            let max = *ICCID_DIGITS.end();
            if run == buf.len() && run < max {
                return None;
            }
            if ICCID_DIGITS.contains(&run) {
                let digits = buf.split_to(run);
                // Only ASCII digits, so this is valid UTF-8.
                let text = String::from_utf8_lossy(&digits).into_owned();
                return Some(Item::Iccid(text));
            }
            return Some(garbage(buf, run));
        }

        if buf.starts_with(KEEP_ALIVE) {
            let _ = buf.split_to(KEEP_ALIVE.len());
            return Some(Item::KeepAlive);
        }
        if KEEP_ALIVE.starts_with(buf) {
            return None;
        }

        if buf.starts_with(&HEADER) {
            let total = match frame_len(buf, self.max_frame_len) {
                Ok(None) => return None,
                Ok(Some(total)) => total,
                Err(error) => return Some(drop_one(buf, error)),
            };
            if buf.len() < total {
                buf.reserve(total - buf.len());
                return None;
            }
            let whole = buf.get(..total).unwrap_or(&[]);
            return Some(match parse_whole(whole, self.dir) {
                Ok(frame) => Item::Frame {
                    frame,
                    raw: buf.split_to(total).freeze(),
                },
                // Framing and checksum held, so the frame boundary is
                // trustworthy: drop the whole frame, not one byte.
                Err(
                    error @ (DecodeError::ShortPayload { .. } | DecodeError::InvalidField { .. }),
                ) => {
                    let raw = buf.split_to(total).freeze();
                    Item::Diagnostic(Diagnostic {
                        error,
                        skipped: raw.len(),
                        raw,
                    })
                }
                Err(error) => drop_one(buf, error),
            });
        }
        if HEADER.starts_with(buf) {
            return None;
        }

        // Garbage: skip to the next byte that could start something.
        let next = (1..buf.len())
            .find(|&i| {
                let rest = buf.get(i..).unwrap_or(&[]);
                rest.first().is_some_and(u8::is_ascii_digit)
                    || rest.starts_with(&HEADER)
                    || HEADER.starts_with(rest)
                    || rest.starts_with(KEEP_ALIVE)
                    || KEEP_ALIVE.starts_with(rest)
            })
            .unwrap_or(buf.len());
        Some(garbage(buf, next))
    }
}

fn garbage(buf: &mut BytesMut, len: usize) -> Item<Frame> {
    let raw = buf.split_to(len.min(buf.len()));
    let skipped = raw.len();
    let mut raw = raw.freeze();
    raw.truncate(Diagnostic::MAX_KEPT);
    Item::Diagnostic(Diagnostic {
        error: DecodeError::Garbage { len: skipped },
        raw,
        skipped,
    })
}

/// Resynchronise after a bad header: drop only the first byte so that a real
/// frame starting inside the rejected bytes is still found.
fn drop_one(buf: &mut BytesMut, error: DecodeError) -> Item<Frame> {
    let raw = buf.split_to(1).freeze();
    Item::Diagnostic(Diagnostic {
        error,
        raw,
        skipped: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_is_low_16_bits_of_the_byte_sum() {
        assert_eq!(checksum(&[0xFF; 300]), (300u32 * 255) as u16);
    }

    #[test]
    fn a_digit_run_too_short_for_an_iccid_is_garbage() {
        let mut d = Decoder::new(Direction::FromDevice);
        let mut buf = BytesMut::from(&b"12345DNY"[..]);
        match d.decode(&mut buf) {
            Some(Item::Diagnostic(diag)) => assert_eq!(diag.error, DecodeError::Garbage { len: 5 }),
            other => panic!("{other:?}"),
        }
        assert_eq!(&buf[..], b"DNY");
        assert!(d.decode(&mut buf).is_none());
    }
}
