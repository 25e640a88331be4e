use thiserror::Error;

/// Why bytes could not be read as a valid frame or message.
///
/// Every variant is recoverable for a streaming decoder: it reports the error
/// as a [`crate::Diagnostic`], drops the offending bytes and resynchronises on
/// the next header.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("{len} byte(s) of garbage before a frame header")]
    Garbage { len: usize },
    #[error("declared length {declared} is impossible: {reason}")]
    BadLength {
        declared: usize,
        reason: &'static str,
    },
    #[error("declared length {declared} exceeds the limit of {max} bytes")]
    TooLong { declared: usize, max: usize },
    #[error("bad checksum: frame says {found:#06x}, bytes sum to {computed:#06x}")]
    BadChecksum { found: u16, computed: u16 },
    #[error("bad frame tail {found:02x?}, expected fc ee")]
    BadTail { found: [u8; 2] },
    #[error("bad direction byte {found:#04x}")]
    BadDirection { found: u8 },
    #[error("incomplete frame: have {have} bytes, need {need}")]
    Incomplete { have: usize, need: usize },
    #[error("unknown frame header")]
    UnknownHeader,
    #[error("trailing bytes after a complete frame: {extra}")]
    Trailing { extra: usize },
    #[error("payload of {what} too short: need {need} bytes, have {have}")]
    ShortPayload {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("invalid {field} in {what}: {reason}")]
    InvalidField {
        what: &'static str,
        field: &'static str,
        reason: String,
    },
    #[error("malformed TLV at offset {offset}: {reason}")]
    BadTlv { offset: usize, reason: &'static str },
    #[error("invalid hex: {0}")]
    InvalidHex(String),
}
