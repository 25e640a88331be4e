//! The two BKV-TLV reports a busy gateway reads most — 0x1017 status and 0x1004
//! charge end — decoded lazily over the packet bytes.
//!
//! Decoding walks the TLV tree once without allocating, checks every tag a
//! typed accessor will read (presence where required, width everywhere), and
//! keeps the body as [`Bytes`]: a slice of the frame the streaming decoder
//! already holds (no copy), or one copy for [`super::decode_frame`]. Accessors
//! then read the validated bytes and cannot fail. Because the bytes are kept,
//! every packet re-encodes exactly as received, unknown tags (anywhere, also
//! inside the nested 0x94/0x5B clusters) included.
//!
//! Building a report goes the other way: [`StatusReport::new`] and
//! [`ChargeEndReport::new`] encode typed values into the body once.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Serialize, Serializer};

use super::messages::{HoleState, SocketState};
use super::tlv::{write_list, Tlv, TlvHeader};
use super::{BcdTime, EndReasonCode, SocketStatus};
use crate::DecodeError;

/// Walks one level of a TLV list: `(tag, value, value offset)`; `base` is the
/// list's offset in the packet, for error messages. A malformed entry ends
/// the walk; [`TlvIter::finish`] then reports it. (Items stay small and
/// `Copy`: no error value travels through every step.)
pub(crate) struct TlvIter<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
    error: Option<(usize, &'static str)>,
}

impl<'a> TlvIter<'a> {
    pub(crate) fn new(buf: &'a [u8], base: usize) -> Self {
        TlvIter {
            buf,
            pos: 0,
            base,
            error: None,
        }
    }

    /// `Err` if the walk stopped at a malformed entry.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.error {
            None => Ok(()),
            Some((offset, reason)) => Err(DecodeError::BadTlv { offset, reason }),
        }
    }

    #[cold]
    fn fail(&mut self, reason: &'static str) -> Option<(u8, &'a [u8], usize)> {
        self.error = Some((self.base + self.pos, reason));
        self.pos = self.buf.len();
        None
    }
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = (u8, &'a [u8], usize);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.buf.get(self.pos..)?;
        let (len, marker, tag) = match rest {
            [] => return None,
            [len, marker, tag, ..] => (usize::from(*len), *marker, *tag),
            _ => return self.fail("truncated TLV header"),
        };
        if marker != 0x01 {
            return self.fail("marker byte is not 0x01");
        }
        if len < 2 {
            return self.fail("length below 2");
        }
        let Some(value) = rest.get(3..1 + len) else {
            return self.fail("value runs past the packet");
        };
        let at = self.base + self.pos + 3;
        self.pos += 1 + len;
        Some((tag, value, at))
    }
}

/// Iterates a list that was validated already (an invalid list simply ends).
fn entries(buf: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    TlvIter::new(buf, 0).map(|(t, v, _)| (t, v))
}

fn width_err(what: &'static str, tag: u8, have: usize, want: usize) -> DecodeError {
    DecodeError::InvalidField {
        what,
        field: "tlv",
        reason: format!("tag {tag:#04x} has {have} byte(s), expected {want}"),
    }
}

fn missing(what: &'static str, tag: u8) -> DecodeError {
    DecodeError::InvalidField {
        what,
        field: "tlv",
        reason: format!("tag {tag:#04x} missing"),
    }
}

fn be(v: &[u8]) -> u16 {
    match v {
        [b] => u16::from(*b),
        [hi, lo] => u16::from_be_bytes([*hi, *lo]),
        _ => 0,
    }
}

/// `table[tag]` = 1 + the tag's index in `tags`, 0 for tags not listed: one
/// load instead of a scan per TLV.
const fn index_table(tags: &[(u8, usize)]) -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < tags.len() {
        table[tags[i].0 as usize] = i as u8 + 1;
        i += 1;
    }
    table
}

fn index_of(table: &[u8; 256], tag: u8) -> Option<usize> {
    match table.get(usize::from(tag)).copied().unwrap_or(0) {
        0 => None,
        n => Some(usize::from(n) - 1),
    }
}

/// Known tags of one level: tag and exact value width. `seen` records which
/// of them were present; the first occurrence of a tag is the one read.
fn check_level(
    list: &[u8],
    base: usize,
    what: &'static str,
    known: &[(u8, usize)],
    table: &[u8; 256],
    mut nested: impl FnMut(u8, &[u8], usize) -> Result<(), DecodeError>,
) -> Result<u32, DecodeError> {
    let mut seen = 0u32;
    let mut it = TlvIter::new(list, base);
    for (tag, value, at) in it.by_ref() {
        if let Some(i) = index_of(table, tag) {
            let want = known.get(i).map_or(0, |(_, w)| *w);
            if seen & (1 << i) == 0 {
                if want != 0 && value.len() != want {
                    return Err(width_err(what, tag, value.len(), want));
                }
                seen |= 1 << i;
            }
        } else {
            nested(tag, value, at)?;
        }
    }
    it.finish()?;
    Ok(seen)
}

fn require(
    seen: u32,
    known: &[(u8, usize)],
    required: u32,
    what: &'static str,
) -> Result<(), DecodeError> {
    for (i, (tag, _)) in known.iter().enumerate() {
        if required & (1 << i) != 0 && seen & (1 << i) == 0 {
            return Err(missing(what, *tag));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 0x1017 status report
// ---------------------------------------------------------------------------

const CLUSTER: u8 = 0x94;
const HOLE: u8 = 0x5B;
/// Socket cluster tags: socket, version, temperature, RSSI (all required).
const SOCKET_TAGS: [(u8, usize); 4] = [(0x4A, 1), (0x3E, 2), (0x07, 1), (0x96, 1)];
/// Hole tags: hole, status, business no, voltage, power, current, energy,
/// minutes (all required).
const HOLE_TAGS: [(u8, usize); 8] = [
    (0x08, 1),
    (0x09, 1),
    (0x0A, 2),
    (0x95, 2),
    (0x0B, 2),
    (0x0C, 2),
    (0x0D, 2),
    (0x0E, 2),
];

const HOLE_INDEX: [u8; 256] = index_table(&HOLE_TAGS);
const SOCKET_INDEX: [u8; 256] = index_table(&SOCKET_TAGS);

fn check_hole(list: &[u8], base: usize) -> Result<(), DecodeError> {
    const WHAT: &str = "0x1017 hole (0x5B)";
    let seen = check_level(list, base, WHAT, &HOLE_TAGS, &HOLE_INDEX, |_, _, _| Ok(()))?;
    require(seen, &HOLE_TAGS, 0xFF, WHAT)
}

/// `(offset, len · marker · tag)` of the vendor's layout of one hole: the eight
/// tags in order, each of its width — 38 bytes.
const HOLE_LAYOUT: [(usize, [u8; 3]); 8] = [
    (0, [3, 1, 0x08]),
    (4, [3, 1, 0x09]),
    (8, [4, 1, 0x0A]),
    (13, [4, 1, 0x95]),
    (18, [4, 1, 0x0B]),
    (23, [4, 1, 0x0C]),
    (28, [4, 1, 0x0D]),
    (33, [4, 1, 0x0E]),
];
const HOLE_LEN: usize = 38;
/// The socket fields ahead of the holes: 17 bytes.
const SOCKET_LAYOUT: [(usize, [u8; 3]); 4] = [
    (0, [3, 1, 0x4A]),
    (4, [4, 1, 0x3E]),
    (9, [3, 1, 0x07]),
    (13, [3, 1, 0x96]),
];
const SOCKET_HEAD_LEN: usize = 17;

#[inline]
fn fits(list: &[u8], layout: &[(usize, [u8; 3])]) -> bool {
    layout
        .iter()
        .all(|(at, head)| list.get(*at..at + 3) == Some(&head[..]))
}

/// The fast path: a cluster exactly in the vendor's layout (every real one),
/// which the general check would accept, is recognised by its TLV headers.
fn cluster_in_vendor_layout(list: &[u8]) -> bool {
    let (Some(head), Some(holes)) = (list.get(..SOCKET_HEAD_LEN), list.get(SOCKET_HEAD_LEN..))
    else {
        return false;
    };
    fits(head, &SOCKET_LAYOUT)
        && holes.len() % (HOLE_LEN + 3) == 0
        && holes.chunks_exact(HOLE_LEN + 3).all(|h| {
            h.get(..3) == Some(&[HOLE_LEN as u8 + 2, 1, HOLE][..])
                && h.get(3..).is_some_and(|t| fits(t, &HOLE_LAYOUT))
        })
}

fn check_cluster(list: &[u8], base: usize) -> Result<(), DecodeError> {
    if cluster_in_vendor_layout(list) {
        return Ok(());
    }
    check_cluster_general(list, base)
}

fn check_cluster_general(list: &[u8], base: usize) -> Result<(), DecodeError> {
    const WHAT: &str = "0x1017 socket cluster (0x94)";
    let seen = check_level(
        list,
        base,
        WHAT,
        &SOCKET_TAGS,
        &SOCKET_INDEX,
        |tag, value, at| {
            if tag == HOLE {
                check_hole(value, at)
            } else {
                Ok(())
            }
        },
    )?;
    require(seen, &SOCKET_TAGS, 0x0F, WHAT)
}

/// 0x1017 up: socket status report. One 0x94 cluster per socket; inside,
/// `0x4A socket · 0x3E version u16 · 0x07 temperature · 0x96 rssi ·
/// 0x5B hole × n` and in each hole `0x08 hole · 0x09 status · 0x0A business_no ·
/// 0x95 voltage_dv · 0x0B power_dw · 0x0C current_ma · 0x0D energy_wh · 0x0E minutes`.
/// Unknown tags anywhere are kept (in the bytes) and skipped by the accessors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    pub header: TlvHeader,
    body: Bytes,
}

/// One socket cluster of a [`StatusReport`], read on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketView<'a> {
    pub socket: u8,
    pub socket_version: u16,
    pub temperature_c: u8,
    pub rssi: u8,
    cluster: &'a [u8],
}

impl<'a> SocketView<'a> {
    fn read(cluster: &'a [u8]) -> Self {
        let mut v = SocketView {
            socket: 0,
            socket_version: 0,
            temperature_c: 0,
            rssi: 0,
            cluster,
        };
        let mut seen = 0u8;
        for (tag, value) in entries(cluster) {
            let bit = match tag {
                0x4A => 1,
                0x3E => 2,
                0x07 => 4,
                0x96 => 8,
                _ => continue,
            };
            if seen & bit != 0 {
                continue;
            }
            seen |= bit;
            let n = be(value);
            match tag {
                0x4A => v.socket = n as u8,
                0x3E => v.socket_version = n,
                0x07 => v.temperature_c = n as u8,
                _ => v.rssi = n as u8,
            }
        }
        v
    }

    /// The holes of this socket, in wire order.
    pub fn holes(&self) -> impl Iterator<Item = HoleState> + 'a {
        entries(self.cluster)
            .filter(|(tag, _)| *tag == HOLE)
            .map(|(_, hole)| read_hole(hole))
    }

    /// The owned form (the layout of a 0x1C answer).
    pub fn to_state(&self) -> SocketState {
        SocketState {
            socket: self.socket,
            socket_version: self.socket_version,
            temperature_c: self.temperature_c,
            rssi: self.rssi,
            holes: self.holes().collect(),
        }
    }
}

fn read_hole(list: &[u8]) -> HoleState {
    let mut h = HoleState {
        hole: 0,
        status: SocketStatus(0),
        business_no: 0,
        voltage_dv: 0,
        power_dw: 0,
        current_ma: 0,
        energy_wh: 0,
        minutes: 0,
    };
    let mut seen = 0u8;
    for (tag, value) in entries(list) {
        let Some(i) = index_of(&HOLE_INDEX, tag) else {
            continue;
        };
        if seen & (1 << i) != 0 {
            continue;
        }
        seen |= 1 << i;
        let n = be(value);
        match i {
            0 => h.hole = n as u8,
            1 => h.status = SocketStatus(n as u8),
            2 => h.business_no = n,
            3 => h.voltage_dv = n,
            4 => h.power_dw = n,
            5 => h.current_ma = n,
            6 => h.energy_wh = n,
            _ => h.minutes = n,
        }
    }
    h
}

fn hole_tlv(h: &HoleState) -> Tlv {
    Tlv::nested(
        HOLE,
        vec![
            Tlv::u8(0x08, h.hole),
            Tlv::u8(0x09, h.status.0),
            Tlv::u16(0x0A, h.business_no),
            Tlv::u16(0x95, h.voltage_dv),
            Tlv::u16(0x0B, h.power_dw),
            Tlv::u16(0x0C, h.current_ma),
            Tlv::u16(0x0D, h.energy_wh),
            Tlv::u16(0x0E, h.minutes),
        ],
    )
}

impl StatusReport {
    /// Encodes `sockets` (one 0x94 cluster each, in order).
    pub fn new(header: TlvHeader, sockets: &[SocketState]) -> Self {
        let list: Vec<Tlv> = sockets
            .iter()
            .map(|s| {
                let mut inner = vec![
                    Tlv::u8(0x4A, s.socket),
                    Tlv::u16(0x3E, s.socket_version),
                    Tlv::u8(0x07, s.temperature_c),
                    Tlv::u8(0x96, s.rssi),
                ];
                inner.extend(s.holes.iter().map(hole_tlv));
                Tlv::nested(CLUSTER, inner)
            })
            .collect();
        let mut out = BytesMut::new();
        write_list(&list, &mut out);
        StatusReport {
            header,
            body: out.freeze(),
        }
    }

    /// Validates `body` (the TLVs after the packet header, at offset `base`).
    ///
    /// Inlined so that the report is built in its caller's frame (the check
    /// itself is not inlined).
    #[inline]
    pub(crate) fn decode(header: TlvHeader, body: Bytes, base: usize) -> Result<Self, DecodeError> {
        check_status(&body, base)?;
        Ok(StatusReport { header, body })
    }

    /// The socket clusters, in wire order.
    pub fn sockets(&self) -> impl Iterator<Item = SocketView<'_>> {
        entries(&self.body)
            .filter(|(tag, _)| *tag == CLUSTER)
            .map(|(_, cluster)| SocketView::read(cluster))
    }

    /// Every socket in its owned form.
    pub fn socket_states(&self) -> Vec<SocketState> {
        self.sockets().map(|s| s.to_state()).collect()
    }

    pub fn socket_count(&self) -> usize {
        self.sockets().count()
    }

    /// The packet body after the 0x01/0x02/0x03 header, as on the wire.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

fn check_status(body: &[u8], base: usize) -> Result<(), DecodeError> {
    let mut it = TlvIter::new(body, base);
    for (tag, value, at) in it.by_ref() {
        if tag == CLUSTER {
            check_cluster(value, at)?;
        }
    }
    it.finish()
}

impl Serialize for StatusReport {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct View<'a> {
            header: &'a TlvHeader,
            sockets: Vec<SocketState>,
        }
        View {
            header: &self.header,
            sockets: self.socket_states(),
        }
        .serialize(s)
    }
}

// ---------------------------------------------------------------------------
// 0x1004 charge end report
// ---------------------------------------------------------------------------

/// 0x1004 tags in the vendor's wire order, with their widths (0 = any).
const END_TAGS: [(u8, usize); 16] = [
    (0x07, 1),
    (0x4A, 1),
    (0x08, 1),
    (0x09, 1),
    (0x0A, 2),
    (0x0B, 2),
    (0x0C, 2),
    (0x0D, 2),
    (0x0E, 2),
    (0x2E, 7),
    (0x2F, 1),
    (0x12, 1),
    (0x85, 2),
    (0x86, 2),
    (0x89, 1),
    (0x84, 0),
];
/// Socket, hole, status, business no, power, current, energy, minutes.
const END_REQUIRED: u32 = 0b1_1111_1110;
const END_INDEX: [u8; 256] = index_table(&END_TAGS);

/// The fields of a 0x1004 charge end report, owned: what
/// [`ChargeEndReport::new`] encodes and [`ChargeEndReport::fields`] returns.
///
/// Tags in wire order: `0x07 mcu temperature · 0x4A socket · 0x08 hole ·
/// 0x09 status · 0x0A business_no u16 · 0x0B power_dw · 0x0C current_ma ·
/// 0x0D energy_wh · 0x0E minutes · 0x2E end time (BCD) · 0x2F end reason ·
/// 0x12 mode · 0x85 energy fee u16 · 0x86 service fee u16 · 0x89 tier count ·
/// 0x84 per-tier usage (raw; the vendor does not define its inner layout)`.
/// Socket, hole, status, business number, power, current, energy and minutes
/// are required; a report without the others decodes with them `None` (a
/// gateway that does not fill the fee tags, or an older firmware).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChargeEndFields {
    pub mcu_temperature_c: Option<u8>,
    pub socket: u8,
    pub hole: u8,
    pub status: SocketStatus,
    pub business_no: u16,
    pub power_dw: u16,
    pub current_ma: u16,
    pub energy_wh: u16,
    pub minutes: u16,
    pub end_time: Option<BcdTime>,
    pub end_reason: Option<EndReasonCode>,
    pub mode: Option<u8>,
    pub energy_fee_fen: Option<u16>,
    pub service_fee_fen: Option<u16>,
    pub tier_count: Option<u8>,
    #[serde(serialize_with = "ser_opt_hex")]
    pub tier_usage: Option<Vec<u8>>,
    /// Tags this view does not know, in wire order (encoded after the known ones).
    pub extra: Vec<Tlv>,
}

fn ser_opt_hex<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(b) => s.serialize_some(&hex::encode(b)),
        None => s.serialize_none(),
    }
}

impl ChargeEndFields {
    /// A report for one hole with the required tags, an end time and reason,
    /// mode 4, no fees and a single tier (minutes u16 · energy Wh u32).
    pub fn new(
        socket: u8,
        hole: u8,
        business_no: u16,
        energy_wh: u16,
        minutes: u16,
        end_time: BcdTime,
        end_reason: EndReasonCode,
    ) -> Self {
        let mut usage = minutes.to_be_bytes().to_vec();
        usage.extend_from_slice(&u32::from(energy_wh).to_be_bytes());
        ChargeEndFields {
            mcu_temperature_c: Some(30),
            socket,
            hole,
            status: SocketStatus::IDLE,
            business_no,
            power_dw: 0,
            current_ma: 0,
            energy_wh,
            minutes,
            end_time: Some(end_time),
            end_reason: Some(end_reason),
            mode: Some(4),
            energy_fee_fen: Some(0),
            service_fee_fen: Some(0),
            tier_count: Some(1),
            tier_usage: Some(usage),
            extra: Vec::new(),
        }
    }
}

/// Where each known 0x1004 tag's value starts in the body (index as in
/// [`END_TAGS`]; 0 = absent: a value never starts at offset 0).
type EndOffsets = [u16; 16];

/// Indexes a 0x1004 body in one pass: the first occurrence of every known
/// tag, each of its width (the end time also BCD), the required ones present.
fn index_end(body: &[u8], base: usize) -> Result<EndOffsets, DecodeError> {
    match end_in_vendor_layout(body) {
        Some(offs) => Ok(offs),
        None => index_end_general(body, base),
    }
}

fn index_end_general(body: &[u8], base: usize) -> Result<EndOffsets, DecodeError> {
    const WHAT: &str = "0x1004 charge end";
    let mut offs: EndOffsets = [0; 16];
    let mut it = TlvIter::new(body, base);
    for (tag, value, at) in it.by_ref() {
        let Some(i) = index_of(&END_INDEX, tag) else {
            continue;
        };
        let Some(slot) = offs.get_mut(i) else {
            continue;
        };
        if *slot != 0 {
            continue;
        }
        let want = END_TAGS.get(i).map_or(0, |(_, w)| *w);
        if want != 0 && value.len() != want {
            return Err(width_err(WHAT, tag, value.len(), want));
        }
        if tag == 0x2E && !super::wire::all_bcd(value) {
            return Err(DecodeError::InvalidField {
                what: "bcd time",
                field: "digits",
                reason: format!("not BCD: {}", hex::encode(value)),
            });
        }
        // Offsets past u16 (a body over 64 KiB) cannot occur in a frame.
        *slot = u16::try_from(at.saturating_sub(base)).unwrap_or(0);
    }
    it.finish()?;
    let seen = offs
        .iter()
        .enumerate()
        .fold(0u32, |m, (i, o)| if *o != 0 { m | 1 << i } else { m });
    require(seen, &END_TAGS, END_REQUIRED, WHAT)?;
    Ok(offs)
}

/// The vendor's full layout, fixed at compile time: the first 15 tags in
/// [`END_TAGS`] order, each of its width. `END_LAYOUT[i]` is the offset of
/// tag `i`'s TLV header and the header's bytes (`len · 0x01 · tag`);
/// `END_FIXED_LEN` is where the tier usage (0x84, any length) starts;
/// `END_VENDOR_OFFS` the offsets [`index_end_general`] finds in that layout.
const END_LAYOUT: [(usize, [u8; 3]); 15] = end_layout().0;
const END_FIXED_LEN: usize = end_layout().1;
const END_VENDOR_OFFS: EndOffsets = end_layout().2;
/// Index of the end time (0x2E) in [`END_TAGS`].
const END_TIME: usize = 9;

const fn end_layout() -> ([(usize, [u8; 3]); 15], usize, EndOffsets) {
    let mut layout = [(0usize, [0u8; 3]); 15];
    let mut offs: EndOffsets = [0; 16];
    let mut at = 0usize;
    let mut i = 0;
    while i < 15 {
        let (tag, width) = END_TAGS[i];
        layout[i] = (at, [width as u8 + 2, 1, tag]);
        offs[i] = (at + 3) as u16;
        at += 3 + width;
        i += 1;
    }
    offs[15] = (at + 3) as u16;
    (layout, at, offs)
}

/// The fast path: the vendor's full layout (every tag in order, each of its
/// width, the tier usage last), which the general index accepts too.
///
/// The TLV headers are compared with constants at fixed offsets: no header
/// is assembled on the stack and read back wider (which stalled store
/// forwarding once per tag and cost the 0x1004 decode about 80 ns).
fn end_in_vendor_layout(body: &[u8]) -> Option<EndOffsets> {
    let fixed = body.get(..END_FIXED_LEN + 3)?;
    if !fits(fixed, &END_LAYOUT) {
        return None;
    }
    // Tier usage, of any length, ends the body; the end time must be BCD.
    let &[len, 1, 0x84] = fixed.get(END_FIXED_LEN..)? else {
        return None;
    };
    if len < 2 || END_FIXED_LEN + 1 + usize::from(len) != body.len() {
        return None;
    }
    let time_at = usize::from(*END_VENDOR_OFFS.get(END_TIME)?);
    super::wire::all_bcd(body.get(time_at..time_at + 7)?).then_some(END_VENDOR_OFFS)
}

/// 0x1004 up: charge end report (energy-price + service-fee orders). See
/// [`ChargeEndFields`] for the tags; decoding indexes the known tags once,
/// accessors read their bytes, and the body is kept as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeEndReport {
    pub header: TlvHeader,
    body: Bytes,
    offs: EndOffsets,
}

impl ChargeEndReport {
    /// Encodes `fields` in the vendor's tag order (absent tags omitted,
    /// unknown ones after the known ones).
    pub fn new(header: TlvHeader, fields: &ChargeEndFields) -> Self {
        let f = fields;
        let mut list = Vec::with_capacity(16 + f.extra.len());
        list.extend(f.mcu_temperature_c.map(|v| Tlv::u8(0x07, v)));
        list.push(Tlv::u8(0x4A, f.socket));
        list.push(Tlv::u8(0x08, f.hole));
        list.push(Tlv::u8(0x09, f.status.0));
        list.push(Tlv::u16(0x0A, f.business_no));
        list.push(Tlv::u16(0x0B, f.power_dw));
        list.push(Tlv::u16(0x0C, f.current_ma));
        list.push(Tlv::u16(0x0D, f.energy_wh));
        list.push(Tlv::u16(0x0E, f.minutes));
        list.extend(f.end_time.map(|t| Tlv::bytes(0x2E, t.to_bcd().to_vec())));
        list.extend(f.end_reason.map(|r| Tlv::u8(0x2F, r.0)));
        list.extend(f.mode.map(|v| Tlv::u8(0x12, v)));
        list.extend(f.energy_fee_fen.map(|v| Tlv::u16(0x85, v)));
        list.extend(f.service_fee_fen.map(|v| Tlv::u16(0x86, v)));
        list.extend(f.tier_count.map(|v| Tlv::u8(0x89, v)));
        list.extend(f.tier_usage.as_ref().map(|u| Tlv::bytes(0x84, u.clone())));
        list.extend(f.extra.iter().cloned());
        let mut out = BytesMut::new();
        write_list(&list, &mut out);
        let body = out.freeze();
        // Our own encoding always indexes (widths and BCD are ours); should
        // it not, the report reads as all zero rather than panicking.
        let offs = index_end(&body, 0).unwrap_or([0; 16]);
        ChargeEndReport { header, body, offs }
    }

    /// Validates `body` (the TLVs after the packet header, at offset `base`).
    #[inline]
    pub(crate) fn decode(header: TlvHeader, body: Bytes, base: usize) -> Result<Self, DecodeError> {
        let offs = index_end(&body, base)?;
        Ok(ChargeEndReport { header, body, offs })
    }

    /// The value of known tag number `i` (see [`END_TAGS`]).
    fn value(&self, i: usize) -> Option<&[u8]> {
        let at = usize::from(*self.offs.get(i)?);
        if at == 0 {
            return None;
        }
        let len = match END_TAGS.get(i)?.1 {
            0 => usize::from(*self.body.get(at.checked_sub(3)?)?).checked_sub(2)?,
            w => w,
        };
        self.body.get(at..at + len)
    }

    fn num(&self, i: usize) -> Option<u16> {
        self.value(i).map(be)
    }

    pub fn mcu_temperature_c(&self) -> Option<u8> {
        self.num(0).map(|v| v as u8)
    }
    pub fn socket(&self) -> u8 {
        self.num(1).unwrap_or(0) as u8
    }
    pub fn hole(&self) -> u8 {
        self.num(2).unwrap_or(0) as u8
    }
    pub fn status(&self) -> SocketStatus {
        SocketStatus(self.num(3).unwrap_or(0) as u8)
    }
    pub fn business_no(&self) -> u16 {
        self.num(4).unwrap_or(0)
    }
    pub fn power_dw(&self) -> u16 {
        self.num(5).unwrap_or(0)
    }
    pub fn current_ma(&self) -> u16 {
        self.num(6).unwrap_or(0)
    }
    pub fn energy_wh(&self) -> u16 {
        self.num(7).unwrap_or(0)
    }
    pub fn minutes(&self) -> u16 {
        self.num(8).unwrap_or(0)
    }
    pub fn end_time(&self) -> Option<BcdTime> {
        let b: [u8; 7] = self.value(9)?.try_into().ok()?;
        BcdTime::from_bcd(b).ok()
    }
    /// Tag 0x2F (see [`EndReasonCode`]: the vendor lists no codes).
    pub fn end_reason(&self) -> Option<EndReasonCode> {
        self.num(10).map(|v| EndReasonCode(v as u8))
    }
    pub fn mode(&self) -> Option<u8> {
        self.num(11).map(|v| v as u8)
    }
    pub fn energy_fee_fen(&self) -> Option<u16> {
        self.num(12)
    }
    pub fn service_fee_fen(&self) -> Option<u16> {
        self.num(13)
    }
    pub fn tier_count(&self) -> Option<u8> {
        self.num(14).map(|v| v as u8)
    }
    /// Tag 0x84, raw.
    pub fn tier_usage(&self) -> Option<&[u8]> {
        self.value(15)
    }
    /// The platform port number (`None` if out of range).
    pub fn port_no(&self) -> Option<u16> {
        crate::port::bkv_port_no(self.socket(), self.hole())
    }

    /// Every field in its owned form (unknown tags in `extra`).
    pub fn fields(&self) -> ChargeEndFields {
        let extra = entries(&self.body)
            .filter(|(tag, _)| index_of(&END_INDEX, *tag).is_none())
            .map(|(tag, value)| Tlv::bytes(tag, value.to_vec()))
            .collect();
        ChargeEndFields {
            mcu_temperature_c: self.mcu_temperature_c(),
            socket: self.socket(),
            hole: self.hole(),
            status: self.status(),
            business_no: self.business_no(),
            power_dw: self.power_dw(),
            current_ma: self.current_ma(),
            energy_wh: self.energy_wh(),
            minutes: self.minutes(),
            end_time: self.end_time(),
            end_reason: self.end_reason(),
            mode: self.mode(),
            energy_fee_fen: self.energy_fee_fen(),
            service_fee_fen: self.service_fee_fen(),
            tier_count: self.tier_count(),
            tier_usage: self.tier_usage().map(<[u8]>::to_vec),
            extra,
        }
    }

    /// The packet body after the 0x01/0x02/0x03 header, as on the wire.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Which layout the report has: every tag of the vendor's example, or
    /// which optional groups are missing.
    pub fn generation(&self) -> &'static str {
        let ending = self.end_time().is_some() && self.end_reason().is_some();
        let fees = self.energy_fee_fen().is_some() && self.service_fee_fen().is_some();
        match (ending, fees) {
            (true, true) => "full tag set (guide V1.7 example)",
            (true, false) => "without fee tags 0x85/0x86",
            (false, true) => "without end time/reason tags 0x2E/0x2F",
            (false, false) => "core tags only (no end time, reason or fees)",
        }
    }
}

impl Serialize for ChargeEndReport {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct View<'a> {
            header: &'a TlvHeader,
            #[serde(flatten)]
            fields: ChargeEndFields,
        }
        View {
            header: &self.header,
            fields: self.fields(),
        }
        .serialize(s)
    }
}

/// Writes a packet whose body is already encoded.
pub(crate) fn write_packet_raw(cmd: u16, hdr: &TlvHeader, body: &[u8], out: &mut BytesMut) {
    // len · 0x01 · tag · value, for tags 0x01 (u16), 0x02 (u64), 0x03 ([7]).
    out.put_slice(&[4, 0x01, 0x01]);
    out.put_u16(cmd);
    out.put_slice(&[10, 0x01, 0x02]);
    out.put_u64(hdr.seq);
    out.put_slice(&[9, 0x01, 0x03]);
    out.put_slice(&hdr.gateway_id.0);
    out.put_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(present: u16, v: u8) -> ChargeEndFields {
        let has = |bit: u16| present & (1 << bit) != 0;
        ChargeEndFields {
            mcu_temperature_c: has(0).then_some(v),
            socket: v,
            hole: 1,
            status: SocketStatus(0x98),
            business_no: u16::from(v) * 3,
            power_dw: 7,
            current_ma: 8,
            energy_wh: 9,
            minutes: 10,
            end_time: has(1).then_some(BcdTime {
                year: 2024,
                month: 8,
                day: 23,
                hour: 10,
                minute: 17,
                second: v % 60,
            }),
            end_reason: has(2).then_some(EndReasonCode(v)),
            mode: has(3).then_some(4),
            energy_fee_fen: has(4).then_some(11),
            service_fee_fen: has(5).then_some(12),
            tier_count: has(6).then_some(1),
            tier_usage: has(7).then(|| vec![v; usize::from(v % 13)]),
            extra: if has(8) {
                vec![Tlv::u8(0xF4, v)]
            } else {
                Vec::new()
            },
        }
    }

    #[test]
    fn the_fast_paths_agree_with_the_general_checks() {
        let header = TlvHeader {
            seq: 0,
            gateway_id: super::super::GatewayId([0x82, 0x21, 0x02, 0x25, 0, 0x05, 0x20]),
        };
        let mut fast = 0;
        for present in 0..512u16 {
            for v in [0u8, 1, 9, 200] {
                let r = ChargeEndReport::new(header, &fields(present, v));
                let general = index_end_general(r.body(), 0).unwrap();
                assert_eq!(index_end(r.body(), 0).unwrap(), general, "{present:#b}");
                if end_in_vendor_layout(r.body()).is_some() {
                    fast += 1;
                }
                assert_eq!(r.fields(), fields(present, v));
            }
        }
        assert!(fast > 0, "the vendor layout takes the fast path");
        // A 0x2E that is not BCD fails both ways.
        let mut r = ChargeEndReport::new(header, &fields(0xFF, 1))
            .body()
            .to_vec();
        let at = r.windows(3).position(|w| w == [9, 1, 0x2E]).unwrap() + 3;
        r[at] = 0xAB;
        assert!(end_in_vendor_layout(&r).is_none());
        assert!(index_end(&r, 0).is_err());

        let hole = HoleState {
            hole: 0,
            status: SocketStatus::CHARGING_NOW,
            business_no: 5,
            voltage_dv: 2200,
            power_dw: 1800,
            current_ma: 800,
            energy_wh: 3,
            minutes: 2,
        };
        for holes in 0..4 {
            let states = [SocketState {
                socket: 1,
                socket_version: 0x5136,
                temperature_c: 30,
                rssi: 31,
                holes: vec![hole.clone(); holes],
            }];
            let r = StatusReport::new(header, &states);
            let (_, cluster) = entries(r.body()).next().unwrap();
            assert!(cluster_in_vendor_layout(cluster), "{holes} holes");
            assert!(check_cluster_general(cluster, 0).is_ok());
            // One byte of a hole's TLV header off: the general check decides.
            if holes > 0 {
                let mut bad = cluster.to_vec();
                bad[SOCKET_HEAD_LEN + 3 + 8] = 0x99;
                assert!(!cluster_in_vendor_layout(&bad));
                assert!(check_cluster(&bad, 0).is_err());
            }
        }
    }
}
