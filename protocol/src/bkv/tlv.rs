//! The BKV-TLV packet carried by command 0x1000.
//!
//! ```text
//! len u8 · 0x01 · tag u8 · value[len − 2]
//! ```
//!
//! `len` counts the `0x01` marker, the tag and the value. Tags 0x94 (socket
//! cluster) and 0x5B (hole) hold a nested TLV list. Every packet opens with
//! tag 0x01 (BKV command, u16), 0x02 (packet sequence, u64) and 0x03 (gateway
//! ID, 7 BCD bytes).

use bytes::{BufMut, BytesMut};
use serde::Serialize;

use super::GatewayId;
use crate::DecodeError;

/// The marker byte that follows every TLV length.
const MARKER: u8 = 0x01;
/// Tags whose value is itself a TLV list.
pub(crate) const NESTED_TAGS: [u8; 2] = [0x94, 0x5B];

/// One TLV, kept whole so that any packet re-encodes byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tlv {
    pub tag: u8,
    pub value: TlvValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlvValue {
    Bytes(Vec<u8>),
    Nested(Vec<Tlv>),
}

impl Tlv {
    pub fn bytes(tag: u8, value: impl Into<Vec<u8>>) -> Tlv {
        Tlv {
            tag,
            value: TlvValue::Bytes(value.into()),
        }
    }

    pub fn u8(tag: u8, v: u8) -> Tlv {
        Tlv::bytes(tag, vec![v])
    }

    pub fn u16(tag: u8, v: u16) -> Tlv {
        Tlv::bytes(tag, v.to_be_bytes().to_vec())
    }

    pub fn nested(tag: u8, list: Vec<Tlv>) -> Tlv {
        Tlv {
            tag,
            value: TlvValue::Nested(list),
        }
    }

    /// Encoded size of the value (what `len − 2` says).
    fn value_len(&self) -> usize {
        match &self.value {
            TlvValue::Bytes(b) => b.len(),
            TlvValue::Nested(list) => encoded_len(list),
        }
    }

    /// The value as raw bytes, if it is not nested.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &self.value {
            TlvValue::Bytes(b) => Some(b),
            TlvValue::Nested(_) => None,
        }
    }
}

pub(crate) fn encoded_len(list: &[Tlv]) -> usize {
    list.iter().map(|t| 3 + t.value_len()).sum()
}

/// Parses a whole TLV list; `base` is the list's offset in the payload, for
/// error messages.
#[cfg(test)]
pub(crate) fn parse_list(buf: &[u8], base: usize) -> Result<Vec<Tlv>, DecodeError> {
    parse_refs(buf, base)?.iter().map(|t| t.owned(0)).collect()
}

/// Real packets nest two levels (0x94 → 0x5B); the bound keeps hostile input
/// from recursing deeply.
const MAX_DEPTH: usize = 4;

/// A TLV borrowed from the payload. Typed views read these directly so that a
/// status report costs a few small vectors, not one allocation per field;
/// nested values are parsed only when asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TlvRef<'a> {
    pub(crate) tag: u8,
    pub(crate) value: &'a [u8],
    /// Offset of the value in the packet, for error messages.
    pub(crate) offset: usize,
}

impl<'a> TlvRef<'a> {
    pub(crate) fn nested(&self) -> Result<Vec<TlvRef<'a>>, DecodeError> {
        parse_refs(self.value, self.offset)
    }

    pub(crate) fn owned(&self, depth: usize) -> Result<Tlv, DecodeError> {
        let value = if NESTED_TAGS.contains(&self.tag) {
            if depth >= MAX_DEPTH {
                return Err(DecodeError::BadTlv {
                    offset: self.offset,
                    reason: "TLV nesting too deep",
                });
            }
            let list = self.nested()?;
            TlvValue::Nested(
                list.iter()
                    .map(|t| t.owned(depth + 1))
                    .collect::<Result<_, _>>()?,
            )
        } else {
            TlvValue::Bytes(self.value.to_vec())
        };
        Ok(Tlv {
            tag: self.tag,
            value,
        })
    }
}

/// One level of a TLV list, values borrowed.
pub(crate) fn parse_refs(buf: &[u8], base: usize) -> Result<Vec<TlvRef<'_>>, DecodeError> {
    let mut out = Vec::with_capacity(buf.len() / 4);
    let mut pos = 0usize;
    while pos < buf.len() {
        let at = base + pos;
        let (len, marker, tag) = match buf.get(pos..pos + 3) {
            Some(&[len, marker, tag]) => (usize::from(len), marker, tag),
            _ => {
                return Err(DecodeError::BadTlv {
                    offset: at,
                    reason: "truncated TLV header",
                })
            }
        };
        if marker != MARKER {
            return Err(DecodeError::BadTlv {
                offset: at,
                reason: "marker byte is not 0x01",
            });
        }
        if len < 2 {
            return Err(DecodeError::BadTlv {
                offset: at,
                reason: "length below 2",
            });
        }
        let start = pos + 3;
        let end = pos + 1 + len;
        let value = buf.get(start..end).ok_or(DecodeError::BadTlv {
            offset: at,
            reason: "value runs past the packet",
        })?;
        out.push(TlvRef {
            tag,
            value,
            offset: base + start,
        });
        pos = end;
    }
    Ok(out)
}

/// Writes a TLV list. A value too long for the u8 length (over 253 bytes)
/// is truncated rather than mis-framed; no legitimate packet comes close.
pub(crate) fn write_list(list: &[Tlv], out: &mut BytesMut) {
    for t in list {
        let len = t.value_len().min(253);
        out.put_u8((len + 2) as u8);
        out.put_u8(MARKER);
        out.put_u8(t.tag);
        match &t.value {
            TlvValue::Bytes(b) => out.put_slice(b.get(..len).unwrap_or(b)),
            TlvValue::Nested(list) => {
                let mut inner = BytesMut::new();
                write_list(list, &mut inner);
                inner.truncate(len);
                out.put_slice(&inner);
            }
        }
    }
}

/// The three TLVs every packet opens with, minus the command (which the
/// message variant implies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TlvHeader {
    /// Tag 0x02: the packet sequence (device uplink 0; a reply echoes).
    pub seq: u64,
    /// Tag 0x03: the gateway ID again.
    pub gateway_id: GatewayId,
}

/// Reads the three TLVs every packet opens with, without allocating: the
/// BKV command, the header, and the offset where the body TLVs start.
/// `frame_gateway` (already validated) is reused when tag 0x03 repeats it.
#[inline]
pub(crate) fn split_header(
    payload: &[u8],
    frame_gateway: GatewayId,
) -> Result<(u16, TlvHeader, usize), DecodeError> {
    let bad = |reason| DecodeError::BadTlv { offset: 0, reason };
    // Every real packet opens `04 01 01 cmd[2] · 0A 01 02 seq[8] · 09 01 03 gw[7]`.
    if let Some(
        &[4, 1, 1, c0, c1, 10, 1, 2, s0, s1, s2, s3, s4, s5, s6, s7, 9, 1, 3, g0, g1, g2, g3, g4, g5, g6],
    ) = payload.get(..26)
    {
        let gw = [g0, g1, g2, g3, g4, g5, g6];
        let header = TlvHeader {
            seq: u64::from_be_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            gateway_id: if gw == frame_gateway.0 {
                frame_gateway
            } else {
                GatewayId::from_bcd(gw)?
            },
        };
        return Ok((u16::from_be_bytes([c0, c1]), header, 26));
    }
    let mut it = super::lazy::TlvIter::new(payload, 0);
    let (c, s, g) = match (it.next(), it.next(), it.next()) {
        (Some((0x01, c, _)), Some((0x02, s, _)), Some((0x03, g, at))) => (c, s, (g, at)),
        _ => {
            it.finish()?;
            return Err(bad("packet does not open with tags 0x01, 0x02, 0x03"));
        }
    };
    let cmd: [u8; 2] = c
        .try_into()
        .map_err(|_| bad("tag 0x01 (command) is not 2 bytes"))?;
    let seq: [u8; 8] = s
        .try_into()
        .map_err(|_| bad("tag 0x02 (sequence) is not 8 bytes"))?;
    let (g, at) = g;
    let gw: [u8; 7] = g
        .try_into()
        .map_err(|_| bad("tag 0x03 (gateway id) is not 7 bytes"))?;
    let header = TlvHeader {
        seq: u64::from_be_bytes(seq),
        gateway_id: if gw == frame_gateway.0 {
            frame_gateway
        } else {
            GatewayId::from_bcd(gw)?
        },
    };
    Ok((u16::from_be_bytes(cmd), header, at + 7))
}

pub(crate) fn write_packet(cmd: u16, hdr: &TlvHeader, body: &[Tlv], out: &mut BytesMut) {
    let head = [
        Tlv::u16(0x01, cmd),
        Tlv::bytes(0x02, hdr.seq.to_be_bytes().to_vec()),
        Tlv::bytes(0x03, hdr.gateway_id.0.to_vec()),
    ];
    write_list(&head, out);
    write_list(body, out);
}

/// A TLV the typed view did not recognise, with its index in the body list so
/// that re-encoding puts it back where it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExtraTlv {
    pub index: usize,
    pub tlv: Tlv,
}

/// Reads typed fields out of a TLV list, taking each entry it uses; the rest
/// become [`ExtraTlv`]s.
pub(crate) struct View<'a> {
    list: Vec<Option<TlvRef<'a>>>,
    what: &'static str,
}

impl<'a> View<'a> {
    pub(crate) fn new(list: Vec<TlvRef<'a>>, what: &'static str) -> Self {
        View {
            list: list.into_iter().map(Some).collect(),
            what,
        }
    }

    fn missing(&self, tag: u8) -> DecodeError {
        DecodeError::InvalidField {
            what: self.what,
            field: "tlv",
            reason: format!("tag {tag:#04x} missing"),
        }
    }

    /// Takes the first unused TLV with this tag.
    fn take(&mut self, tag: u8) -> Option<TlvRef<'a>> {
        self.list
            .iter_mut()
            .find(|t| matches!(t, Some(t) if t.tag == tag))?
            .take()
    }

    pub(crate) fn bytes(&mut self, tag: u8) -> Result<&'a [u8], DecodeError> {
        self.take(tag)
            .map(|t| t.value)
            .ok_or_else(|| self.missing(tag))
    }

    pub(crate) fn array<const N: usize>(&mut self, tag: u8) -> Result<[u8; N], DecodeError> {
        let b = self.bytes(tag)?;
        b.try_into().map_err(|_| DecodeError::InvalidField {
            what: self.what,
            field: "tlv",
            reason: format!("tag {tag:#04x} has {} byte(s), expected {N}", b.len()),
        })
    }

    pub(crate) fn u8(&mut self, tag: u8) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array(tag)?))
    }

    pub(crate) fn u16(&mut self, tag: u8) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(tag)?))
    }

    /// The TLVs no typed field claimed, with their positions.
    pub(crate) fn extra(self) -> Result<Vec<ExtraTlv>, DecodeError> {
        self.list
            .iter()
            .enumerate()
            .filter_map(|(index, t)| t.map(|t| (index, t)))
            .map(|(index, t)| {
                Ok(ExtraTlv {
                    index,
                    tlv: t.owned(0)?,
                })
            })
            .collect()
    }
}

/// Puts extras back at their recorded positions among the known TLVs.
pub(crate) fn merge(mut known: Vec<Tlv>, extra: &[ExtraTlv]) -> Vec<Tlv> {
    for e in extra {
        let at = e.index.min(known.len());
        known.insert(at, e.tlv.clone());
    }
    known
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_lists_round_trip() {
        let list = vec![
            Tlv::u8(0x4A, 1),
            Tlv::nested(0x5B, vec![Tlv::u8(0x08, 0), Tlv::u16(0x95, 2275)]),
            Tlv::bytes(0xF4, vec![2]),
        ];
        let mut out = BytesMut::new();
        write_list(&list, &mut out);
        assert_eq!(parse_list(&out, 0).unwrap(), list);
    }

    #[test]
    fn malformed_lists_are_errors_not_panics() {
        for bad in [
            &[0x05, 0x01, 0x4A][..],
            &[0x01, 0x01, 0x4A],
            &[0x03, 0x02, 0x4A, 0x00],
            &[0x03],
        ] {
            assert!(
                matches!(parse_list(bad, 0), Err(DecodeError::BadTlv { .. })),
                "{bad:?}"
            );
        }
    }
}
