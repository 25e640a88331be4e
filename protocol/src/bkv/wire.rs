//! Bounds-checked big-endian reading and writing shared by every BKV layout.
//!
//! Nothing here indexes a slice directly: each read checks the remaining
//! length first and reports `ShortPayload` naming the structure being read.

use bytes::{BufMut, BytesMut};

use crate::DecodeError;

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    pub(crate) fn what(&self) -> &'static str {
        self.what
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|end| *end <= self.buf.len());
        match end.and_then(|end| self.buf.get(self.pos..end).map(|s| (end, s))) {
            Some((end, slice)) => {
                self.pos = end;
                Ok(slice)
            }
            None => Err(DecodeError::ShortPayload {
                what: self.what,
                need: self.pos.saturating_add(n),
                have: self.buf.len(),
            }),
        }
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        rest
    }

    /// Fails if bytes are left over: a known layout must fill its body exactly,
    /// otherwise re-encoding would not reproduce the frame.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::InvalidField {
                what: self.what,
                field: "length",
                reason: format!("{extra} unexpected trailing byte(s)"),
            }),
        }
    }
}

/// A value with a fixed big-endian wire form.
pub(crate) trait Wire: Sized {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
    fn write(&self, out: &mut BytesMut);
}

impl Wire for u8 {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.u8()
    }
    fn write(&self, out: &mut BytesMut) {
        out.put_u8(*self)
    }
}

impl Wire for u16 {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.u16()
    }
    fn write(&self, out: &mut BytesMut) {
        out.put_u16(*self)
    }
}

impl Wire for u32 {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.u32()
    }
    fn write(&self, out: &mut BytesMut) {
        out.put_u32(*self)
    }
}

impl<const N: usize> Wire for [u8; N] {
    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.array()
    }
    fn write(&self, out: &mut BytesMut) {
        out.put_slice(self)
    }
}

/// Declares a struct whose wire form is its fields in order, each [`Wire`].
macro_rules! fixed_layout {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }

        impl $crate::bkv::wire::Wire for $name {
            fn read(r: &mut $crate::bkv::wire::Reader<'_>) -> Result<Self, $crate::DecodeError> {
                Ok(Self { $($f: <$t as $crate::bkv::wire::Wire>::read(r)?),* })
            }
            fn write(&self, out: &mut bytes::BytesMut) {
                $($crate::bkv::wire::Wire::write(&self.$f, out);)*
            }
        }
    };
}
pub(crate) use fixed_layout;

/// Whether every nibble of `bytes` (at most 8) is a decimal digit: a nibble
/// `n` is one when `n + 6` does not carry into bit 4, checked for all
/// nibbles at once.
///
/// The word is read straight from `bytes` (two overlapping 4-byte loads for
/// 4–8 bytes): copying a 7-byte slice into a stack word and loading it back
/// whole stalls store forwarding.
pub(crate) fn all_bcd(bytes: &[u8]) -> bool {
    let x = match bytes {
        [a, b, c, d, ..] if bytes.len() <= 8 => {
            let lo = u64::from(u32::from_le_bytes([*a, *b, *c, *d]));
            let hi = match bytes.get(bytes.len() - 4..) {
                Some(&[e, f, g, h]) => u64::from(u32::from_le_bytes([e, f, g, h])),
                _ => 0,
            };
            // The overlapping bytes are the same in both halves.
            lo | hi << (8 * (bytes.len() - 4))
        }
        [_, _, _, _, ..] => return bytes.iter().all(|b| bcd_byte(*b).is_some()),
        short => short
            .iter()
            .rev()
            .fold(0u64, |acc, b| acc << 8 | u64::from(*b)),
    };
    const LOW: u64 = 0x0F0F_0F0F_0F0F_0F0F;
    const SIX: u64 = 0x0606_0606_0606_0606;
    const CARRY: u64 = 0x1010_1010_1010_1010;
    let lo = x & LOW;
    let hi = (x >> 4) & LOW;
    ((lo + SIX) | (hi + SIX)) & CARRY == 0
}

pub(crate) fn bcd_byte(b: u8) -> Option<u8> {
    let (hi, lo) = (b >> 4, b & 0x0F);
    (hi < 10 && lo < 10).then_some(hi * 10 + lo)
}

/// Two decimal digits as one BCD byte; values over 99 keep their last two digits.
pub(crate) fn to_bcd(v: u8) -> u8 {
    let v = v % 100;
    ((v / 10) << 4) | (v % 10)
}
