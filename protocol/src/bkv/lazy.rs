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
/// list's offset in the packet, for error messages.
pub(crate) struct TlvIter<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> TlvIter<'a> {
    pub(crate) fn new(buf: &'a [u8], base: usize) -> Self {
        TlvIter { buf, pos: 0, base }
    }
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = Result<(u8, &'a [u8], usize), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let at = self.base + self.pos;
        let bad = |reason| Some(Err(DecodeError::BadTlv { offset: at, reason }));
        let (len, marker, tag) = match self.buf.get(self.pos..self.pos + 3) {
            Some(&[len, marker, tag]) => (usize::from(len), marker, tag),
            _ => {
                self.pos = self.buf.len();
                return bad("truncated TLV header");
            }
        };
        if marker != 0x01 {
            self.pos = self.buf.len();
            return bad("marker byte is not 0x01");
        }
        if len < 2 {
            self.pos = self.buf.len();
            return bad("length below 2");
        }
        let start = self.pos + 3;
        let end = self.pos + 1 + len;
        let Some(value) = self.buf.get(start..end) else {
            self.pos = self.buf.len();
            return bad("value runs past the packet");
        };
        self.pos = end;
        Some(Ok((tag, value, self.base + start)))
    }
}

/// Iterates a list that was validated already (errors cannot occur; an
/// invalid list simply ends).
fn entries(buf: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    TlvIter::new(buf, 0)
        .map_while(Result::ok)
        .map(|(t, v, _)| (t, v))
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
    for entry in TlvIter::new(list, base) {
        let (tag, value, at) = entry?;
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

fn check_cluster(list: &[u8], base: usize) -> Result<(), DecodeError> {
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
    pub(crate) fn decode(header: TlvHeader, body: Bytes, base: usize) -> Result<Self, DecodeError> {
        for entry in TlvIter::new(&body, base) {
            let (tag, value, at) = entry?;
            if tag == CLUSTER {
                check_cluster(value, at)?;
            }
        }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EndScalars {
    mcu_temperature_c: Option<u8>,
    socket: u8,
    hole: u8,
    status: SocketStatus,
    business_no: u16,
    power_dw: u16,
    current_ma: u16,
    energy_wh: u16,
    minutes: u16,
    end_time: Option<BcdTime>,
    end_reason: Option<EndReasonCode>,
    mode: Option<u8>,
    energy_fee_fen: Option<u16>,
    service_fee_fen: Option<u16>,
    tier_count: Option<u8>,
    /// Start and length of the 0x84 value in the body.
    tier_usage: Option<(u16, u16)>,
}

/// 0x1004 up: charge end report (energy-price + service-fee orders). See
/// [`ChargeEndFields`] for the tags; accessors read the decoded values, the
/// body is kept as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeEndReport {
    pub header: TlvHeader,
    body: Bytes,
    f: EndScalars,
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
        let tier_usage = usage_span(&body);
        ChargeEndReport {
            header,
            f: EndScalars {
                mcu_temperature_c: f.mcu_temperature_c,
                socket: f.socket,
                hole: f.hole,
                status: f.status,
                business_no: f.business_no,
                power_dw: f.power_dw,
                current_ma: f.current_ma,
                energy_wh: f.energy_wh,
                minutes: f.minutes,
                // What the wire says (a year past 9999 keeps its low digits).
                end_time: f.end_time.and_then(|t| BcdTime::from_bcd(t.to_bcd()).ok()),
                end_reason: f.end_reason,
                mode: f.mode,
                energy_fee_fen: f.energy_fee_fen,
                service_fee_fen: f.service_fee_fen,
                tier_count: f.tier_count,
                tier_usage,
            },
            body,
        }
    }

    /// Validates `body` (the TLVs after the packet header, at offset `base`)
    /// and reads the known tags in one pass.
    pub(crate) fn decode(header: TlvHeader, body: Bytes, base: usize) -> Result<Self, DecodeError> {
        const WHAT: &str = "0x1004 charge end";
        let mut f = EndScalars {
            mcu_temperature_c: None,
            socket: 0,
            hole: 0,
            status: SocketStatus(0),
            business_no: 0,
            power_dw: 0,
            current_ma: 0,
            energy_wh: 0,
            minutes: 0,
            end_time: None,
            end_reason: None,
            mode: None,
            energy_fee_fen: None,
            service_fee_fen: None,
            tier_count: None,
            tier_usage: None,
        };
        let mut seen = 0u32;
        for entry in TlvIter::new(&body, base) {
            let (tag, value, at) = entry?;
            let Some(i) = index_of(&END_INDEX, tag) else {
                continue;
            };
            if seen & (1 << i) != 0 {
                continue;
            }
            seen |= 1 << i;
            let want = END_TAGS.get(i).map_or(0, |(_, w)| *w);
            if want != 0 && value.len() != want {
                return Err(width_err(WHAT, tag, value.len(), want));
            }
            let n = be(value);
            match tag {
                0x07 => f.mcu_temperature_c = Some(n as u8),
                0x4A => f.socket = n as u8,
                0x08 => f.hole = n as u8,
                0x09 => f.status = SocketStatus(n as u8),
                0x0A => f.business_no = n,
                0x0B => f.power_dw = n,
                0x0C => f.current_ma = n,
                0x0D => f.energy_wh = n,
                0x0E => f.minutes = n,
                0x2E => {
                    let mut b = [0u8; 7];
                    b.copy_from_slice(value);
                    f.end_time = Some(BcdTime::from_bcd(b)?);
                }
                0x2F => f.end_reason = Some(EndReasonCode(n as u8)),
                0x12 => f.mode = Some(n as u8),
                0x85 => f.energy_fee_fen = Some(n),
                0x86 => f.service_fee_fen = Some(n),
                0x89 => f.tier_count = Some(n as u8),
                _ => f.tier_usage = span(at.saturating_sub(base), value.len()),
            }
        }
        require(seen, &END_TAGS, END_REQUIRED, WHAT)?;
        Ok(ChargeEndReport { header, body, f })
    }

    pub fn mcu_temperature_c(&self) -> Option<u8> {
        self.f.mcu_temperature_c
    }
    pub fn socket(&self) -> u8 {
        self.f.socket
    }
    pub fn hole(&self) -> u8 {
        self.f.hole
    }
    pub fn status(&self) -> SocketStatus {
        self.f.status
    }
    pub fn business_no(&self) -> u16 {
        self.f.business_no
    }
    pub fn power_dw(&self) -> u16 {
        self.f.power_dw
    }
    pub fn current_ma(&self) -> u16 {
        self.f.current_ma
    }
    pub fn energy_wh(&self) -> u16 {
        self.f.energy_wh
    }
    pub fn minutes(&self) -> u16 {
        self.f.minutes
    }
    pub fn end_time(&self) -> Option<BcdTime> {
        self.f.end_time
    }
    /// Tag 0x2F (see [`EndReasonCode`]: the vendor lists no codes).
    pub fn end_reason(&self) -> Option<EndReasonCode> {
        self.f.end_reason
    }
    pub fn mode(&self) -> Option<u8> {
        self.f.mode
    }
    pub fn energy_fee_fen(&self) -> Option<u16> {
        self.f.energy_fee_fen
    }
    pub fn service_fee_fen(&self) -> Option<u16> {
        self.f.service_fee_fen
    }
    pub fn tier_count(&self) -> Option<u8> {
        self.f.tier_count
    }
    /// Tag 0x84, raw.
    pub fn tier_usage(&self) -> Option<&[u8]> {
        let (start, len) = self.f.tier_usage?;
        let start = usize::from(start);
        self.body.get(start..start + usize::from(len))
    }
    /// The platform port number (`None` if out of range).
    pub fn port_no(&self) -> Option<u16> {
        crate::port::bkv_port_no(self.f.socket, self.f.hole)
    }

    /// Every field in its owned form (unknown tags in `extra`).
    pub fn fields(&self) -> ChargeEndFields {
        let f = &self.f;
        let extra = entries(&self.body)
            .filter(|(tag, _)| index_of(&END_INDEX, *tag).is_none())
            .map(|(tag, value)| Tlv::bytes(tag, value.to_vec()))
            .collect();
        ChargeEndFields {
            mcu_temperature_c: f.mcu_temperature_c,
            socket: f.socket,
            hole: f.hole,
            status: f.status,
            business_no: f.business_no,
            power_dw: f.power_dw,
            current_ma: f.current_ma,
            energy_wh: f.energy_wh,
            minutes: f.minutes,
            end_time: f.end_time,
            end_reason: f.end_reason,
            mode: f.mode,
            energy_fee_fen: f.energy_fee_fen,
            service_fee_fen: f.service_fee_fen,
            tier_count: f.tier_count,
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
        let f = &self.f;
        let ending = f.end_time.is_some() && f.end_reason.is_some();
        let fees = f.energy_fee_fen.is_some() && f.service_fee_fen.is_some();
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

fn span(start: usize, len: usize) -> Option<(u16, u16)> {
    Some((u16::try_from(start).ok()?, u16::try_from(len).ok()?))
}

/// Where the first 0x84 value sits in an encoded body.
fn usage_span(body: &[u8]) -> Option<(u16, u16)> {
    TlvIter::new(body, 0)
        .map_while(Result::ok)
        .find(|(tag, _, _)| *tag == 0x84)
        .and_then(|(_, value, at)| span(at, value.len()))
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
