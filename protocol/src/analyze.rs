//! The frame analyzer behind `pile-sim decode`: one frame of either family,
//! described for a field engineer — family, direction, command names, the
//! device ID and every field in its wire unit.
//!
//! AP3000 headers do not say who sent a frame, so the analyzer decides: it
//! first tries the direction that usually initiates the command (the server
//! for `0x81`–`0x8F` and `0xE4`, the device otherwise) and falls back to the
//! other when the body does not fit. A caller that knows better passes the
//! direction explicitly.

use serde::Serialize;

use crate::{ap3000, bkv, DecodeError, Family};

/// A decoded frame with the context a person needs to read it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    pub family: Family,
    /// `up` = device → server, `down` = server → device.
    pub direction: &'static str,
    pub device_id: String,
    /// Command code as hex text (`0x0015`, `0x82`).
    pub command: String,
    /// BKV sub-command (the 0x0015 sub byte, or the TLV packet's BKV command).
    pub sub_command: Option<String>,
    /// The message's snake_case name.
    pub name: &'static str,
    /// Which generation of its command the frame's layout is (fields added
    /// across firmware versions, told apart by length or tag presence);
    /// `None` where the layout never changed.
    pub generation: Option<&'static str>,
    /// Whole frame length in bytes.
    pub length: usize,
    pub summary: String,
    /// Every field, as the typed message serialises.
    pub frame: FrameView,
}

/// The typed frame of either family.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FrameView {
    Bkv(bkv::Frame),
    Ap3000(ap3000::Frame),
}

/// Analyzes exactly one whole frame of either family.
///
/// Leading ASCII digits (an AP3000 ICCID preamble) are not accepted here: the
/// input must start with a frame header.
pub fn analyze(bytes: &[u8]) -> Result<Analysis, DecodeError> {
    match bytes {
        [0xFC, 0xFE | 0xFF, ..] => analyze_bkv(bytes),
        [b'D', b'N', b'Y', ..] => analyze_ap3000(bytes, None),
        [] => Err(DecodeError::Incomplete { have: 0, need: 3 }),
        _ => Err(DecodeError::UnknownHeader),
    }
}

/// Analyzes one BKV frame (its header carries the direction).
pub fn analyze_bkv(bytes: &[u8]) -> Result<Analysis, DecodeError> {
    let frame = bkv::decode_frame(bytes)?;
    let message = &frame.message;
    Ok(Analysis {
        family: Family::Bkv,
        direction: match frame.direction {
            bkv::Direction::Up => "up",
            bkv::Direction::Down => "down",
        },
        device_id: frame.gateway_id.to_string(),
        command: format!("{:#06x}", frame.cmd()),
        sub_command: message.sub().map(|s| {
            if s > 0xFF {
                format!("{s:#06x}")
            } else {
                format!("{s:#04x}")
            }
        }),
        name: message.name(),
        generation: message.generation(),
        length: bytes.len(),
        summary: frame.summary(),
        frame: FrameView::Bkv(frame),
    })
}

/// Analyzes one AP3000 frame; `direction` `None` lets the analyzer decide.
pub fn analyze_ap3000(
    bytes: &[u8],
    direction: Option<ap3000::Direction>,
) -> Result<Analysis, DecodeError> {
    use ap3000::Direction::{FromDevice, FromServer};
    let frame = match direction {
        Some(dir) => ap3000::decode_frame(bytes, dir)?,
        None => {
            let command = bytes.get(11).copied().unwrap_or_default();
            let first = if matches!(command, 0x81..=0x8F | 0x95..=0x98 | 0xE4) {
                FromServer
            } else {
                FromDevice
            };
            let second = match first {
                FromServer => FromDevice,
                FromDevice => FromServer,
            };
            match ap3000::decode_frame(bytes, first) {
                Ok(frame) if !matches!(frame.message, ap3000::Message::Unknown { .. }) => frame,
                first_result => match ap3000::decode_frame(bytes, second) {
                    Ok(frame) if !matches!(frame.message, ap3000::Message::Unknown { .. }) => frame,
                    second_result => first_result.or(second_result)?,
                },
            }
        }
    };
    let message = &frame.message;
    let direction = match message.direction() {
        Some(FromServer) => "down",
        Some(FromDevice) => "up",
        None => "unknown",
    };
    Ok(Analysis {
        family: Family::Ap3000,
        direction,
        device_id: frame.physical_id.to_string(),
        command: format!("{:#04x}", frame.command()),
        sub_command: None,
        name: message.name(),
        generation: message.generation(),
        length: bytes.len(),
        summary: frame.summary(),
        frame: FrameView::Ap3000(frame),
    })
}
