//! The registry: which device is connected where, its live figures, and its frame ring.
//!
//! * A device has one live entry while it is connected or was seen within the offline
//!   threshold: the [`LiveCell`] its session updates without a lock (last frame, signal), what
//!   the API shows (protocol, address, firmware), and the [`SessionHandle`] of its current
//!   connection, if any. [`Gateway::register`] makes a new connection the device's one at once
//!   and closes the old (the old socket is often half-open after a network drop).
//! * [`Gateway::submit`] routes a durable [`Command`] to the device's session; when there is
//!   none it waits in `cmd_logs` for the next connection (the session loads open commands at
//!   identification).
//! * The per-device **frame ring** backs the frames route.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pile_api::{Direction, FrameRecord};
use pile_protocol::Family;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::{Command, FrameSink, LiveCell, Note};

/// The registry's view of one live session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub conn_id: u64,
    /// Commands for the device while this connection holds it.
    /// Boxed: a tokio channel allocates its slots 32 at a time, and an unboxed `Command` (128
    /// bytes) made every session's mailbox 4 KB.
    pub commands: mpsc::Sender<Box<Command>>,
    /// Cancelled to close the session (replaced by a newer connection).
    pub close: CancellationToken,
}

/// What [`Gateway::submit`] did with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Handed to the live session, which sends it (respecting the 0.5 s spacing).
    Dispatched,
    /// No session holds the device; the command waits in `cmd_logs` for its reconnect.
    Queued,
    /// Another instance holds the device's lease and was woken to send it (issue #17).
    Routed,
}

/// A snapshot of a device's live entry (the API's view).
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// The registry entry's generation: a new one whenever the protocol, connection time,
    /// address or firmware change (with `last_seen_ms` and `signal`, [`LiveKey`]).
    pub generation: u64,
    pub protocol: String,
    pub last_seen_ms: i64,
    /// Unix seconds.
    pub connected_at: i64,
    pub remote_addr: String,
    pub firmware: Option<String>,
    pub signal: Option<i64>,
    /// A connection holds it now (else it is within the offline threshold of its last frame).
    pub connected: bool,
}

/// Everything of [`Live`] that a device view shows, as a key that needs no allocation: equal
/// keys mean equal live fields in the view (`last_seen_at` is in seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveKey {
    pub generation: u64,
    pub last_seen_sec: i64,
    pub signal: i64,
}

impl LiveKey {
    pub fn of(l: &Live) -> Self {
        LiveKey {
            generation: l.generation,
            last_seen_sec: l.last_seen_ms / 1000,
            signal: l.signal.unwrap_or(0),
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// See [`Live::generation`].
    generation: u64,
    cell: Arc<LiveCell>,
    protocol: String,
    connected_at: i64,
    remote_addr: String,
    firmware: Option<String>,
    session: Option<SessionHandle>,
    /// `last_seen_at` last handed to the batched writer.
    persisted_seen_ms: i64,
    /// A new device's registration is queued in the batched writer, not yet flushed.
    unflushed: bool,
}

/// A device connecting.
#[derive(Debug, Clone)]
pub struct Arrival<'a> {
    pub device_id: &'a str,
    pub protocol: &'a str,
    pub remote_addr: &'a str,
    pub firmware: Option<&'a str>,
    pub signal: Option<i64>,
    pub now_ms: i64,
}

#[derive(Debug, Default)]
pub struct Gateway {
    devices: Mutex<HashMap<String, Entry>>,
    frames: Mutex<HashMap<String, Arc<FrameCell>>>,
    next_conn: AtomicU64,
    sessions: AtomicU64,
    generations: AtomicU64,
}

impl Gateway {
    pub fn new() -> Self {
        Self::default()
    }

    fn devices(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Makes `handle` the device's connection; an older session of the device is closed at
    /// once. Returns the device's live cell and whether a session was replaced.
    pub fn register(&self, a: &Arrival<'_>, handle: SessionHandle) -> (Arc<LiveCell>, bool) {
        let generation = self.next_generation();
        let mut devices = self.devices();
        let e = devices
            .entry(a.device_id.to_string())
            .or_insert_with(|| Entry {
                generation,
                cell: Arc::new(LiveCell::default()),
                protocol: a.protocol.to_string(),
                connected_at: 0,
                remote_addr: String::new(),
                firmware: None,
                session: None,
                persisted_seen_ms: a.now_ms,
                unflushed: false,
            });
        e.generation = generation;
        e.protocol = a.protocol.to_string();
        e.connected_at = a.now_ms.div_euclid(1000);
        e.remote_addr = a.remote_addr.to_string();
        if let Some(f) = a.firmware {
            e.firmware = Some(f.to_string());
        }
        if let Some(s) = a.signal {
            e.cell.signal.store(s, Ordering::Relaxed);
        }
        e.cell.seen(a.now_ms);
        let replaced = match e.session.replace(handle.clone()) {
            Some(old) if old.conn_id != handle.conn_id => {
                old.close.cancel();
                true
            }
            Some(_) => false,
            None => {
                self.sessions.fetch_add(1, Ordering::Relaxed);
                false
            }
        };
        (e.cell.clone(), replaced)
    }

    /// The session ended. Only the registered session leaves (a replaced session must not
    /// remove its successor); the device stays known (online) until its offline threshold.
    /// Returns whether it was the registered one.
    pub fn unregister(&self, device_id: &str, conn_id: u64) -> bool {
        let mut devices = self.devices();
        match devices.get_mut(device_id) {
            Some(e) if e.session.as_ref().is_some_and(|h| h.conn_id == conn_id) => {
                e.session = None;
                self.sessions.fetch_sub(1, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Forgets a device (it went offline). Returns when it was last seen (ms).
    pub fn remove(&self, device_id: &str) -> Option<i64> {
        let e = self.devices().remove(device_id)?;
        if e.session.is_some() {
            self.sessions.fetch_sub(1, Ordering::Relaxed);
        }
        Some(e.cell.last_seen_ms())
    }

    /// Start-up: a device the database holds online is kept so for its offline threshold.
    pub fn restore(&self, device_id: &str, protocol: &str, last_seen_ms: i64) {
        let generation = self.next_generation();
        let mut devices = self.devices();
        devices.entry(device_id.to_string()).or_insert_with(|| {
            let cell = Arc::new(LiveCell::default());
            cell.seen(last_seen_ms);
            Entry {
                generation,
                cell,
                protocol: protocol.to_string(),
                connected_at: 0,
                remote_addr: String::new(),
                firmware: None,
                session: None,
                persisted_seen_ms: last_seen_ms,
                unflushed: false,
            }
        });
    }

    /// Whether `conn_id` is the device's current connection.
    pub fn is_current(&self, device_id: &str, conn_id: u64) -> bool {
        self.devices()
            .get(device_id)
            .and_then(|e| e.session.as_ref())
            .is_some_and(|h| h.conn_id == conn_id)
    }

    /// Online: connected, or seen within the offline threshold.
    pub fn is_online(&self, device_id: &str) -> bool {
        self.devices().contains_key(device_id)
    }

    /// A connection holds the device now.
    pub fn is_connected(&self, device_id: &str) -> bool {
        self.devices()
            .get(device_id)
            .is_some_and(|e| e.session.is_some())
    }

    pub fn session_count(&self) -> usize {
        self.sessions.load(Ordering::Relaxed) as usize
    }

    pub fn online_count(&self) -> usize {
        self.devices().len()
    }

    pub fn live(&self, device_id: &str) -> Option<Live> {
        self.devices().get(device_id).map(|e| Live {
            generation: e.generation,
            protocol: e.protocol.clone(),
            last_seen_ms: e.cell.last_seen_ms(),
            connected_at: e.connected_at,
            remote_addr: e.remote_addr.clone(),
            firmware: e.firmware.clone(),
            signal: Some(e.cell.signal.load(Ordering::Relaxed)).filter(|s| *s != 0),
            connected: e.session.is_some(),
        })
    }

    /// [`LiveKey::of`] the device's [`live`](Self::live) fields, without copying them; `None`
    /// when it is not online.
    pub fn live_key(&self, device_id: &str) -> Option<LiveKey> {
        self.devices().get(device_id).map(|e| LiveKey {
            generation: e.generation,
            last_seen_sec: e.cell.last_seen_ms() / 1000,
            signal: e.cell.signal.load(Ordering::Relaxed),
        })
    }

    pub fn set_firmware(&self, device_id: &str, firmware: &str) {
        let generation = self.next_generation();
        if let Some(e) = self.devices().get_mut(device_id) {
            e.generation = generation;
            e.firmware = Some(firmware.to_string());
        }
    }

    /// Marks (or, with `false`, clears and returns) the device's unflushed registration.
    pub fn set_unflushed(&self, device_id: &str, unflushed: bool) -> bool {
        match self.devices().get_mut(device_id) {
            Some(e) => std::mem::replace(&mut e.unflushed, unflushed),
            None => false,
        }
    }

    /// Devices without a connection whose last frame is older than `cutoff_ms`: past the
    /// offline threshold.
    pub fn silent_since(&self, cutoff_ms: i64) -> Vec<(String, i64)> {
        self.devices()
            .iter()
            .filter(|(_, e)| e.session.is_none() && e.cell.last_seen_ms() < cutoff_ms)
            .map(|(id, e)| (id.clone(), e.cell.last_seen_ms()))
            .collect()
    }

    /// Devices whose last frame advanced by `every_ms` since it was last persisted; marks
    /// them persisted.
    pub fn liveness_due(&self, every_ms: i64) -> Vec<(String, i64)> {
        let mut due = Vec::new();
        for (id, e) in self.devices().iter_mut() {
            let seen = e.cell.last_seen_ms();
            if seen - e.persisted_seen_ms >= every_ms {
                e.persisted_seen_ms = seen;
                due.push((id.clone(), seen));
            }
        }
        due
    }

    /// Routes a command to the device's live session, if any.
    pub fn submit(&self, device_id: &str, cmd: Command) -> Submitted {
        let handle = self
            .devices()
            .get(device_id)
            .and_then(|e| e.session.clone());
        match handle {
            Some(h) => match h.commands.try_send(Box::new(cmd)) {
                Ok(()) => Submitted::Dispatched,
                // A full or closing mailbox: the row stays open and goes out on reconnect.
                Err(_) => Submitted::Queued,
            },
            None => Submitted::Queued,
        }
    }

    /// Another instance took the device (issue #17, cluster): forget it here without marking
    /// it offline and close its session — unless the session here is a newer one than the
    /// `conn_id` the other instance replaced. Returns whether it was forgotten.
    pub fn evict(&self, device_id: &str, conn_id: u64) -> bool {
        let mut devices = self.devices();
        match devices
            .get(device_id)
            .map(|e| e.session.as_ref().map(|h| h.conn_id))
        {
            None => return false,
            Some(Some(current)) if current != conn_id => return false,
            Some(_) => {}
        }
        if let Some(e) = devices.remove(device_id) {
            if let Some(h) = e.session {
                h.close.cancel();
                self.sessions.fetch_sub(1, Ordering::Relaxed);
            }
        }
        true
    }

    /// Every device held here and its connection, if any (issue #17, cluster).
    pub fn held(&self) -> Vec<(String, Option<u64>)> {
        self.devices()
            .iter()
            .map(|(id, e)| (id.clone(), e.session.as_ref().map(|h| h.conn_id)))
            .collect()
    }

    /// Closes every session (tests; a shutdown closes them through its own token).
    pub fn close_all(&self) {
        for e in self.devices().values() {
            if let Some(h) = &e.session {
                h.close.cancel();
            }
        }
    }

    /// The device's frame ring, created on first use. A session takes it once, at its first
    /// frame, and then records without this registry's lock or a lookup by device ID.
    pub fn frame_cell(&self, device_id: &str) -> Arc<FrameCell> {
        let mut frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        match frames.get(device_id) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(FrameCell::default());
                frames.insert(device_id.to_string(), c.clone());
                c
            }
        }
    }

    /// Keeps a frame in the device's ring (see [`FrameCell`]).
    pub fn record_frame(
        &self,
        device_id: &str,
        direction: Direction,
        at_ms: i64,
        raw: &[u8],
        note: FrameNote<'_>,
    ) {
        self.frame_cell(device_id)
            .record(at_ms, direction, note, raw);
    }

    /// #13: drops the device's frame ring (a refused connection's first frame).
    pub fn forget_frames(&self, device_id: &str) {
        self.frames
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(device_id);
    }

    /// #13: drops the rings of devices that are not online, sent nothing since `cutoff_ms`
    /// and have no session writing them; returns how many went.
    pub fn prune_frames(&self, cutoff_ms: i64) -> usize {
        let online: std::collections::HashSet<String> = self.devices().keys().cloned().collect();
        let mut frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        let before = frames.len();
        // A session holds its device's cell (`Arc`): dropping it here would lose its frames.
        frames.retain(|id, cell| {
            online.contains(id) || Arc::strong_count(cell) > 1 || cell.last_ms() >= cutoff_ms
        });
        before - frames.len()
    }

    /// The device's recent frames, oldest first; `None` when none were seen.
    pub fn frames(&self, device_id: &str) -> Option<Vec<FrameRecord>> {
        let entries = {
            let cell = self
                .frames
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(device_id)?
                .clone();
            let ring = cell.ring();
            ring.entries()
        };
        Some(
            entries
                .into_iter()
                .map(|e| FrameRecord {
                    at_ms: e.at_ms,
                    direction: e.direction,
                    hex: hex::encode(&e.raw),
                    summary: if e.kind == 0 {
                        String::from_utf8_lossy(&e.text).into_owned()
                    } else {
                        summarise(e.kind, e.direction, &e.raw)
                    },
                })
                .collect(),
        )
    }
}

impl FrameSink for Gateway {
    fn record(
        &self,
        device_id: &str,
        direction: Direction,
        at_ms: i64,
        raw: &[u8],
        note: Note<'_>,
    ) {
        let note = match note {
            Note::Frame(f) => FrameNote::Frame(f),
            Note::Text(t) => FrameNote::Text(t),
        };
        self.record_frame(device_id, direction, at_ms, raw, note);
    }
}

/// Frames kept per device for the frames route, at most.
pub const FRAME_RING: usize = 200;
/// Bytes a device's ring may hold (headers included): with BKV heartbeats and their answers
/// about 90 frames. The ring is this one allocation, made at the first frame (issue 17: a
/// 200-frame ring in a growing deque cost 16 KB of the 56 KB a pile cost the gateway).
pub const FRAME_RING_BYTES: usize = 4096;

/// What a ring entry holds besides its bytes: a frame of a family (summarised when read,
/// so the ring keeps only bytes) or a note about skipped bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameNote<'a> {
    Frame(Family),
    Text(&'a str),
}

/// One device's frame ring behind its own lock (only its session writes it; the frames route
/// reads it).
#[derive(Debug, Default)]
pub struct FrameCell(Mutex<FrameRing>);

impl FrameCell {
    pub fn record(&self, at_ms: i64, direction: Direction, note: FrameNote<'_>, raw: &[u8]) {
        self.ring().push(at_ms, direction, note, raw);
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, FrameRing> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn last_ms(&self) -> i64 {
        self.ring().last_ms
    }
}

/// The newest frames of one device — at most [`FRAME_RING`] of them and [`FRAME_RING_BYTES`] —
/// packed into one circular byte buffer:
/// `at_ms i64 · direction u8 · kind u8 · text_len u16 · raw_len u16 · text · raw` per entry.
#[derive(Debug, Default)]
struct FrameRing {
    /// Empty until the first frame, then [`FRAME_RING_BYTES`] long.
    buf: Box<[u8]>,
    /// Where the oldest entry starts.
    head: usize,
    /// Bytes in use from `head` (wrapping).
    len: usize,
    count: usize,
    /// When the newest entry was recorded.
    last_ms: i64,
}

const RING_HEADER: usize = 14;
const MAX_TEXT: usize = 256;
const MAX_RAW: usize = 2048;

struct RingEntry {
    at_ms: i64,
    direction: Direction,
    kind: u8,
    text: Vec<u8>,
    raw: Vec<u8>,
}

impl FrameRing {
    fn push(&mut self, at_ms: i64, direction: Direction, note: FrameNote<'_>, raw: &[u8]) {
        let (kind, text) = match note {
            FrameNote::Frame(Family::Bkv) => (1u8, &[][..]),
            FrameNote::Frame(Family::Ap3000) => (2u8, &[][..]),
            FrameNote::Text(t) => (0u8, t.as_bytes()),
        };
        let text = &text[..text.len().min(MAX_TEXT)];
        let raw = &raw[..raw.len().min(MAX_RAW)];
        let need = RING_HEADER + text.len() + raw.len();
        if self.buf.is_empty() {
            self.buf = vec![0u8; FRAME_RING_BYTES].into_boxed_slice();
        }
        while self.count > 0 && (self.count >= FRAME_RING || self.len + need > self.buf.len()) {
            self.pop();
        }
        self.last_ms = self.last_ms.max(at_ms);
        let mut header = [0u8; RING_HEADER];
        header[..8].copy_from_slice(&at_ms.to_le_bytes());
        header[8] = match direction {
            Direction::Up => 0,
            Direction::Down => 1,
        };
        header[9] = kind;
        header[10..12].copy_from_slice(&(text.len() as u16).to_le_bytes());
        header[12..14].copy_from_slice(&(raw.len() as u16).to_le_bytes());
        let mut at = self.head + self.len;
        for part in [&header[..], text, raw] {
            self.write_at(at, part);
            at += part.len();
        }
        self.len += need;
        self.count += 1;
    }

    /// Copies `bytes` to ring offset `at` (taken modulo the capacity), wrapping once.
    fn write_at(&mut self, at: usize, bytes: &[u8]) {
        let cap = self.buf.len();
        let at = at % cap;
        let first = bytes.len().min(cap - at);
        self.buf[at..at + first].copy_from_slice(&bytes[..first]);
        self.buf[..bytes.len() - first].copy_from_slice(&bytes[first..]);
    }

    /// Fills `out` from ring offset `at` (modulo the capacity), wrapping once.
    fn read_at(&self, at: usize, out: &mut [u8]) {
        let cap = self.buf.len();
        let at = at % cap;
        let first = out.len().min(cap - at);
        out[..first].copy_from_slice(&self.buf[at..at + first]);
        let rest = out.len() - first;
        out[first..].copy_from_slice(&self.buf[..rest]);
    }

    fn header_at(&self, at: usize) -> [u8; RING_HEADER] {
        let mut h = [0u8; RING_HEADER];
        self.read_at(at, &mut h);
        h
    }

    fn pop(&mut self) {
        let h = self.header_at(self.head);
        let n = RING_HEADER
            + usize::from(u16::from_le_bytes([h[10], h[11]]))
            + usize::from(u16::from_le_bytes([h[12], h[13]]));
        self.head = (self.head + n) % self.buf.len();
        self.len -= n;
        self.count -= 1;
        if self.count == 0 {
            self.head = 0;
            self.len = 0;
        }
    }

    fn entries(&self) -> Vec<RingEntry> {
        let mut out = Vec::with_capacity(self.count);
        let mut at = self.head;
        for _ in 0..self.count {
            let h = self.header_at(at);
            let text_len = usize::from(u16::from_le_bytes([h[10], h[11]]));
            let raw_len = usize::from(u16::from_le_bytes([h[12], h[13]]));
            let mut text = vec![0u8; text_len];
            self.read_at(at + RING_HEADER, &mut text);
            let mut raw = vec![0u8; raw_len];
            self.read_at(at + RING_HEADER + text_len, &mut raw);
            let mut ms = [0u8; 8];
            ms.copy_from_slice(&h[..8]);
            out.push(RingEntry {
                at_ms: i64::from_le_bytes(ms),
                direction: if h[8] == 0 {
                    Direction::Up
                } else {
                    Direction::Down
                },
                kind: h[9],
                text,
                raw,
            });
            at += RING_HEADER + text_len + raw_len;
        }
        out
    }
}

/// One-line summary of a stored frame, decoded now.
fn summarise(kind: u8, direction: Direction, raw: &[u8]) -> String {
    match kind {
        1 => match pile_protocol::bkv::decode_frame(raw) {
            Ok(f) => f.summary(),
            Err(e) => format!("undecodable: {e}"),
        },
        2 => {
            let dir = match direction {
                Direction::Up => pile_protocol::ap3000::Direction::FromDevice,
                Direction::Down => pile_protocol::ap3000::Direction::FromServer,
            };
            match pile_protocol::ap3000::decode_frame(raw, dir) {
                Ok(f) => f.summary(),
                Err(e) => format!("undecodable: {e}"),
            }
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(gw: &Gateway) -> (SessionHandle, mpsc::Receiver<Box<Command>>) {
        let (tx, rx) = mpsc::channel(4);
        (
            SessionHandle {
                conn_id: gw.next_conn_id(),
                commands: tx,
                close: CancellationToken::new(),
            },
            rx,
        )
    }

    fn arrival(now_ms: i64) -> Arrival<'static> {
        Arrival {
            device_id: "D1",
            protocol: "bkv",
            remote_addr: "127.0.0.1:1",
            firmware: None,
            signal: None,
            now_ms,
        }
    }

    #[test]
    fn a_new_connection_replaces_the_old_session_at_once() {
        let gw = Gateway::new();
        let (first, _rx1) = handle(&gw);
        let (second, _rx2) = handle(&gw);
        let (cell, replaced) = gw.register(&arrival(1_000), first.clone());
        assert!(!replaced);
        let (cell2, replaced) = gw.register(&arrival(2_000), second.clone());
        assert!(replaced);
        assert!(Arc::ptr_eq(&cell, &cell2), "one live cell per device");
        assert!(first.close.is_cancelled());
        assert!(!second.close.is_cancelled());
        assert_eq!(gw.session_count(), 1);
        // The replaced session's clean-up must not remove its successor.
        assert!(!gw.unregister("D1", first.conn_id));
        assert!(gw.is_connected("D1"));
        assert!(gw.unregister("D1", second.conn_id));
        // Disconnected, but online until the offline threshold passes.
        assert!(!gw.is_connected("D1") && gw.is_online("D1"));
        assert_eq!(gw.session_count(), 0);
        assert_eq!(gw.silent_since(2_000), vec![]);
        assert_eq!(gw.silent_since(2_001), vec![("D1".to_string(), 2_000)]);
        assert_eq!(gw.remove("D1"), Some(2_000));
        assert!(!gw.is_online("D1"));
    }

    #[test]
    fn commands_for_unconnected_devices_are_reported_queued() {
        let gw = Gateway::new();
        let cmd = Command {
            id: 1,
            spec: crate::core::CommandSpec::Query { port_no: None },
            sent_before: false,
            first_sent_at_ms: None,
        };
        assert_eq!(gw.submit("D1", cmd.clone()), Submitted::Queued);
        let (h, mut rx) = handle(&gw);
        gw.register(&arrival(1), h);
        assert_eq!(gw.submit("D1", cmd.clone()), Submitted::Dispatched);
        assert_eq!(rx.try_recv().ok(), Some(Box::new(cmd)));
    }

    #[test]
    fn liveness_is_due_once_it_advanced_by_the_period() {
        let gw = Gateway::new();
        let (h, _rx) = handle(&gw);
        let (cell, _) = gw.register(&arrival(0), h);
        cell.seen(29_999);
        assert!(gw.liveness_due(30_000).is_empty());
        cell.seen(30_000);
        assert_eq!(gw.liveness_due(30_000), vec![("D1".to_string(), 30_000)]);
        assert!(gw.liveness_due(30_000).is_empty(), "marked persisted");
    }

    #[test]
    fn the_frame_ring_keeps_the_last_200() {
        let gw = Gateway::new();
        // 16-byte entries: 200 fit in the byte budget, so the count is the limit.
        for i in 0..250u8 {
            let dir = if i % 2 == 0 {
                Direction::Up
            } else {
                Direction::Down
            };
            gw.record_frame(
                "D1",
                dir,
                i64::from(i),
                &[i, i],
                FrameNote::Frame(Family::Bkv),
            );
        }
        let frames = gw.frames("D1").unwrap_or_default();
        assert_eq!(frames.len(), FRAME_RING);
        assert_eq!(frames[0].hex, "3232"); // frame 50
        assert_eq!(frames[0].at_ms, 50);
        assert_eq!(frames[199].hex, "f9f9");
        assert_eq!(frames[199].direction, Direction::Down);
        assert!(gw.frames("D2").is_none());
    }

    #[test]
    fn the_frame_ring_keeps_the_newest_that_fit_its_bytes_across_the_wrap() {
        let gw = Gateway::new();
        // Entries of 14 + 7..9 + 40 bytes, of varying length, so they wrap at every offset.
        for i in 0..1_000u32 {
            let text = format!("note {i}");
            let raw: Vec<u8> = (0..40).map(|k| (i as u8).wrapping_add(k)).collect();
            gw.record_frame(
                "D1",
                Direction::Up,
                i64::from(i),
                &raw,
                FrameNote::Text(&text),
            );
            let frames = gw.frames("D1").unwrap_or_default();
            let bytes: usize = frames
                .iter()
                .map(|f| RING_HEADER + f.summary.len() + f.hex.len() / 2)
                .sum();
            assert!(bytes <= FRAME_RING_BYTES, "{bytes}");
            // Oldest first, consecutive, ending with the newest, and nearly full.
            let last = frames.last().expect("newest kept");
            assert_eq!(last.summary, format!("note {i}"));
            assert_eq!(last.hex, hex::encode(&raw));
            for w in frames.windows(2) {
                assert_eq!(w[1].at_ms, w[0].at_ms + 1);
            }
            if i > 100 {
                assert!(bytes + 63 > FRAME_RING_BYTES, "room for one more: {bytes}");
            }
        }
        // A frame larger than the whole budget is cut to fit, never lost.
        gw.record_frame(
            "D1",
            Direction::Down,
            5_000,
            &[7u8; 5_000],
            FrameNote::Text(""),
        );
        let frames = gw.frames("D1").unwrap_or_default();
        assert_eq!(frames.last().unwrap().hex.len() / 2, MAX_RAW);
    }

    #[test]
    fn an_old_ring_is_pruned_only_once_no_session_writes_it() {
        let gw = Gateway::new();
        let cell = gw.frame_cell("D9");
        cell.record(1, Direction::Up, FrameNote::Text("x"), &[1]);
        // Not online and silent since before the cutoff, but a session still holds it.
        assert_eq!(gw.prune_frames(1_000), 0);
        assert_eq!(gw.frames("D9").map(|f| f.len()), Some(1));
        drop(cell);
        assert_eq!(gw.prune_frames(1_000), 1);
        assert!(gw.frames("D9").is_none());
    }

    #[test]
    fn ring_frames_are_summarised_when_read() {
        let gw = Gateway::new();
        let id: pile_protocol::bkv::GatewayId = "82210225000520".parse().expect("id");
        let hb = pile_protocol::bkv::Frame::heartbeat(id, "89860000000000000001", "cV.1r46", 20);
        gw.record_frame(
            "82210225000520",
            Direction::Up,
            1,
            &hb.to_vec(),
            FrameNote::Frame(Family::Bkv),
        );
        let frames = gw.frames("82210225000520").unwrap_or_default();
        assert_eq!(frames.len(), 1);
        assert!(
            frames[0].summary.contains("heartbeat"),
            "{}",
            frames[0].summary
        );
    }
}
