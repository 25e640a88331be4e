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

use std::collections::{HashMap, VecDeque};
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
    pub commands: mpsc::Sender<Command>,
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
    frames: Mutex<HashMap<String, FrameRing>>,
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
            Some(h) => match h.commands.try_send(cmd) {
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

    /// Keeps a frame in the device's ring (last [`FRAME_RING`]).
    pub fn record_frame(
        &self,
        device_id: &str,
        direction: Direction,
        at_ms: i64,
        raw: &[u8],
        note: FrameNote<'_>,
    ) {
        let mut frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        match frames.get_mut(device_id) {
            Some(ring) => ring.push(at_ms, direction, note, raw),
            None => {
                let mut ring = FrameRing::default();
                ring.push(at_ms, direction, note, raw);
                frames.insert(device_id.to_string(), ring);
            }
        }
    }

    /// #13: drops the device's frame ring (a refused connection's first frame).
    pub fn forget_frames(&self, device_id: &str) {
        self.frames
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(device_id);
    }

    /// #13: drops the rings of devices that are not online and sent nothing since
    /// `cutoff_ms`; returns how many went.
    pub fn prune_frames(&self, cutoff_ms: i64) -> usize {
        let online: std::collections::HashSet<String> = self.devices().keys().cloned().collect();
        let mut frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        let before = frames.len();
        frames.retain(|id, ring| online.contains(id) || ring.last_ms >= cutoff_ms);
        before - frames.len()
    }

    /// The device's recent frames, oldest first; `None` when none were seen.
    pub fn frames(&self, device_id: &str) -> Option<Vec<FrameRecord>> {
        let entries = {
            let frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
            frames.get(device_id)?.entries()
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

/// Frames kept per device for the frames route.
pub const FRAME_RING: usize = 200;

/// What a ring entry holds besides its bytes: a frame of a family (summarised when read,
/// so the ring keeps only bytes) or a note about skipped bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameNote<'a> {
    Frame(Family),
    Text(&'a str),
}

/// The last [`FRAME_RING`] frames of one device, packed into one byte deque:
/// `at_ms i64 · direction u8 · kind u8 · text_len u16 · raw_len u16 · text · raw` per entry.
/// An idle pile's ring of heartbeats then costs about 10 KB instead of several times that.
#[derive(Debug, Default)]
struct FrameRing {
    data: VecDeque<u8>,
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
        let text = text.get(..text.len().min(MAX_TEXT)).unwrap_or(&[]);
        let raw = raw.get(..raw.len().min(MAX_RAW)).unwrap_or(&[]);
        if self.count >= FRAME_RING {
            self.pop();
        }
        self.last_ms = self.last_ms.max(at_ms);
        self.data.extend(at_ms.to_le_bytes());
        self.data.push_back(match direction {
            Direction::Up => 0,
            Direction::Down => 1,
        });
        self.data.push_back(kind);
        self.data.extend((text.len() as u16).to_le_bytes());
        self.data.extend((raw.len() as u16).to_le_bytes());
        self.data.extend(text.iter().copied());
        self.data.extend(raw.iter().copied());
        self.count += 1;
    }

    fn entry_len(&self, at: usize) -> Option<usize> {
        let b = |i: usize| self.data.get(at + i).copied().map(usize::from);
        let text = b(10)? | (b(11)? << 8);
        let raw = b(12)? | (b(13)? << 8);
        Some(RING_HEADER + text + raw)
    }

    fn pop(&mut self) {
        match self.entry_len(0) {
            Some(n) if n <= self.data.len() => {
                self.data.drain(..n);
                self.count -= 1;
            }
            _ => {
                self.data.clear();
                self.count = 0;
            }
        }
    }

    fn entries(&self) -> Vec<RingEntry> {
        let bytes: Vec<u8> = self.data.iter().copied().collect();
        let mut out = Vec::with_capacity(self.count);
        let mut at = 0;
        while let Some(h) = bytes.get(at..at + RING_HEADER) {
            let mut ms = [0u8; 8];
            ms.copy_from_slice(&h[..8]);
            let text_len = usize::from(u16::from_le_bytes([h[10], h[11]]));
            let raw_len = usize::from(u16::from_le_bytes([h[12], h[13]]));
            let body = at + RING_HEADER;
            let (Some(text), Some(raw)) = (
                bytes.get(body..body + text_len),
                bytes.get(body + text_len..body + text_len + raw_len),
            ) else {
                break;
            };
            out.push(RingEntry {
                at_ms: i64::from_le_bytes(ms),
                direction: if h[8] == 0 {
                    Direction::Up
                } else {
                    Direction::Down
                },
                kind: h[9],
                text: text.to_vec(),
                raw: raw.to_vec(),
            });
            at = body + text_len + raw_len;
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

    fn handle(gw: &Gateway) -> (SessionHandle, mpsc::Receiver<Command>) {
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
        assert_eq!(rx.try_recv().ok(), Some(cmd));
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
        for i in 0..250u8 {
            let text = format!("note {i}");
            let dir = if i % 2 == 0 {
                Direction::Up
            } else {
                Direction::Down
            };
            gw.record_frame("D1", dir, i64::from(i), &[i, i], FrameNote::Text(&text));
        }
        let frames = gw.frames("D1").unwrap_or_default();
        assert_eq!(frames.len(), FRAME_RING);
        assert_eq!(frames[0].hex, "3232"); // frame 50
        assert_eq!(frames[0].summary, "note 50");
        assert_eq!(frames[0].at_ms, 50);
        assert_eq!(frames[199].direction, Direction::Down);
        assert!(gw.frames("D2").is_none());
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
