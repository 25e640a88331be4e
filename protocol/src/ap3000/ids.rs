//! Identifiers carried in AP3000 frames: the device's physical ID and the
//! server-chosen order number.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use crate::DecodeError;

/// A device's physical ID: 4 bytes little-endian on the wire, written as 8
/// uppercase hex digits big-endian (wire `3B 37 AB 04` → `04AB373B`). The first
/// (most significant) byte is the device type, the low 3 bytes are the number
/// printed under the QR code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhysicalId(pub u32);

impl PhysicalId {
    /// Device type byte: 03 single socket, 04 dual, 05 10-port, 06 16-port,
    /// 07 12-port, 09 host, 0A host with leakage protection.
    pub fn device_type(self) -> u8 {
        self.0.to_be_bytes()[0]
    }

    /// The decimal number printed under the QR code (the low 3 bytes).
    pub fn number(self) -> u32 {
        self.0 & 0x00FF_FFFF
    }

    /// The 4 wire bytes (little-endian).
    pub fn to_wire(self) -> [u8; 4] {
        self.0.to_le_bytes()
    }
}

impl fmt::Display for PhysicalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}", self.0)
    }
}

impl FromStr for PhysicalId {
    type Err = DecodeError;

    /// Accepts exactly 8 hex digits (either case), big-endian as displayed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DecodeError::InvalidField {
                what: "physical id",
                field: "text",
                reason: format!("expected 8 hex digits, got {s:?}"),
            });
        }
        u32::from_str_radix(s, 16)
            .map(PhysicalId)
            .map_err(|e| DecodeError::InvalidField {
                what: "physical id",
                field: "text",
                reason: e.to_string(),
            })
    }
}

impl Serialize for PhysicalId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The 16-byte order number the server puts in `0x82` and the device echoes
/// in `0x06`, `0x03`, `0x43` and `0x44`. Opaque to the device; for offline
/// starts the device builds it itself (date, card, device and port).
///
/// Displayed and serialized as 32 lowercase hex digits, always: the bytes are
/// binary in practice (vendor examples use BCD-like values), so an ASCII
/// rendering would be ambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OrderNo(pub [u8; 16]);

impl OrderNo {
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        OrderNo(bytes)
    }

    /// `None` unless `bytes` is exactly 16 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(bytes).ok().map(OrderNo)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for OrderNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for OrderNo {
    type Err = DecodeError;

    /// Accepts 32 hex digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode(s).map_err(|e| DecodeError::InvalidHex(e.to_string()))?;
        OrderNo::from_slice(&bytes).ok_or_else(|| DecodeError::InvalidField {
            what: "order no",
            field: "text",
            reason: format!("expected 16 bytes, got {}", bytes.len()),
        })
    }
}

impl Serialize for OrderNo {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn physical_id_displays_big_endian_and_parses_back() {
        let id = PhysicalId(u32::from_le_bytes([0x3B, 0x37, 0xAB, 0x04]));
        assert_eq!(id.to_string(), "04AB373B");
        assert_eq!(id.device_type(), 0x04);
        assert_eq!(id.number(), 0xAB373B);
        assert_eq!("04ab373b".parse::<PhysicalId>().unwrap(), id);
        assert!("04AB373".parse::<PhysicalId>().is_err());
        assert!("+4AB373B".parse::<PhysicalId>().is_err());
    }

    #[test]
    fn order_no_round_trips_through_hex() {
        let o = OrderNo([0x12; 16]);
        assert_eq!(o.to_string().parse::<OrderNo>().unwrap(), o);
        assert!("1234".parse::<OrderNo>().is_err());
    }
}
