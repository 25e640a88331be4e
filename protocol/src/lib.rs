//! Sans-IO codecs for the two charging-pile protocol families.
//!
//! * [`bkv`] — the BKV "networked gateway" family (`FC FE` / `FC FF` frames,
//!   big-endian, radio sockets with two holes each, a nested TLV packet type).
//! * [`ap3000`] — the AP3000 "DNY" family (little-endian, directly connected
//!   piles, an optional ICCID preamble and an ASCII `link` keep-alive).
//!
//! This crate does no I/O, owns no clock and spawns nothing: it turns bytes into
//! typed messages and typed messages back into bytes, and says precisely why a
//! frame is invalid. Every field keeps its wire unit and names it
//! (`voltage_dv`, `power_dw`, `energy_wh`, …); conversion to platform units is
//! the caller's business, except for the port numbering helpers in [`port`].
//!
//! Both families share one streaming shape: a decoder looks at the front of a
//! growing [`bytes::BytesMut`], answers `None` when it needs more bytes, and
//! otherwise consumes exactly the bytes of one [`Item`] — a frame, a diagnostic
//! about bytes it had to skip, or a non-frame item such as the AP3000 ICCID.

pub mod analyze;
pub mod ap3000;
pub mod bkv;
mod error;
pub mod port;

pub use analyze::{analyze, Analysis};
pub use error::DecodeError;

use bytes::Bytes;
use serde::Serialize;

/// The protocol family a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Bkv,
    Ap3000,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Bkv => "bkv",
            Family::Ap3000 => "ap3000",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Result of looking at the first bytes of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// Not enough bytes yet to tell.
    NeedMore,
    Family(Family),
    /// The bytes match neither family's opening.
    Unknown,
}

/// Tells the family from the first bytes a device sent.
///
/// AP3000 modules may open with their SIM ICCID (ASCII digits) or the ASCII
/// keep-alive `link` before the first `DNY` frame; BKV gateways open with
/// `FC FE`. Leading ASCII digits are therefore looked past.
pub fn sniff(buf: &[u8]) -> Sniff {
    let digits = buf.iter().take_while(|b| b.is_ascii_digit()).count();
    // An ICCID is at most 20 digits (22 with some vendors' check digits).
    if digits > 22 {
        return Sniff::Unknown;
    }
    if digits > 0 && digits == buf.len() {
        return Sniff::NeedMore;
    }
    let rest = &buf[digits..];
    match rest {
        [] => Sniff::NeedMore,
        [b'D', ..] | [b'l', ..] => Sniff::Family(Family::Ap3000),
        [0xFC] if digits == 0 => Sniff::NeedMore,
        [0xFC, 0xFE, ..] if digits == 0 => Sniff::Family(Family::Bkv),
        _ => Sniff::Unknown,
    }
}

/// One step of a streaming decoder.
#[derive(Debug, Clone, PartialEq)]
pub enum Item<F> {
    /// A whole frame whose framing and checksum were valid, with its raw bytes.
    Frame { frame: F, raw: Bytes },
    /// Bytes the decoder consumed without producing a frame, and why.
    Diagnostic(Diagnostic),
    /// AP3000 only: the SIM ICCID a module sends before its first frame.
    Iccid(String),
    /// AP3000 only: the ASCII `link` keep-alive sent after 30 s of silence.
    KeepAlive,
}

/// Why some bytes were skipped. Never fatal to a session by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub error: DecodeError,
    /// The skipped bytes (at most [`Diagnostic::MAX_KEPT`] of them are kept).
    pub raw: Bytes,
    /// How many bytes were consumed in total.
    pub skipped: usize,
}

impl Diagnostic {
    /// Upper bound on the bytes a diagnostic keeps for logging.
    pub const MAX_KEPT: usize = 512;
}

/// Parses hex text as printed in vendor documents and logs: whitespace, `0x`
/// prefixes, `:` and `-` separators are ignored.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, DecodeError> {
    let mut cleaned = String::with_capacity(text.len());
    for token in text.split(|c: char| c.is_whitespace() || c == ':' || c == '-' || c == ',') {
        let token = token
            .strip_prefix("0x")
            .or_else(|| token.strip_prefix("0X"))
            .unwrap_or(token);
        cleaned.push_str(token);
    }
    hex::decode(&cleaned).map_err(|e| DecodeError::InvalidHex(e.to_string()))
}
