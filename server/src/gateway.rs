//! The seam between the HTTP/domain side and the device side.
//!
//! * [`Gateway`] owns the **registry** of live sessions (device ID → [`SessionHandle`]) and
//!   the per-device **frame rings**. [`Gateway::register`] replaces an existing session of the
//!   same device at once (the old socket is often half-open after a network drop);
//!   [`Gateway::submit`] routes a [`Outgoing`] command to the device's session, or reports
//!   [`Submitted::Queued`] when the device is offline — the command row is already in
//!   `cmd_logs` with status `queued`, and the session loads it when the device reconnects
//!   (see `Service::device_online`). The TTL sweeper cancels orders whose command waited too
//!   long, with end reason 11.
//! * Sessions call the device-event side of `crate::service::Service` (`device_online`,
//!   `heartbeat`, `port_report`, `start_confirmed`, `start_rejected`, `progress`,
//!   `end_report`, `device_offline`). `end_report` settles exactly once and tells the session
//!   whether it may acknowledge (only after the state is committed).
//!
//! Commands are protocol-neutral ([`PortCommand`], 1-based ports); each session encodes them
//! for its family.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use pile_api::{Direction, FrameRecord};
use pile_protocol::Family;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A protocol-neutral port command, stored as JSON in `cmd_logs.payload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PortCommand {
    Start {
        order_no: String,
        port_no: u32,
        /// API `charge_mode` (1 time, 2 energy, 3 amount, 4 full).
        charge_mode: u8,
        duration_sec: i64,
        energy_wh: i64,
        amount: i64,
        price_per_kwh: i64,
        service_fee: i64,
        /// AP3000: the 16-byte order number as hex, derived from the order.
        device_ref: String,
    },
    Stop {
        order_no: String,
        port_no: u32,
        device_ref: String,
    },
}

impl PortCommand {
    pub fn name(&self) -> &'static str {
        match self {
            PortCommand::Start { .. } => "start",
            PortCommand::Stop { .. } => "stop",
        }
    }

    pub fn order_no(&self) -> &str {
        match self {
            PortCommand::Start { order_no, .. } | PortCommand::Stop { order_no, .. } => order_no,
        }
    }

    pub fn port_no(&self) -> u32 {
        match self {
            PortCommand::Start { port_no, .. } | PortCommand::Stop { port_no, .. } => *port_no,
        }
    }
}

/// A command with its `cmd_logs` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub command_id: i64,
    pub command: PortCommand,
}

/// What [`Gateway::submit`] did with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Handed to the live session, which sends it (respecting the 0.5 s spacing).
    Dispatched,
    /// The device is offline; the command waits in `cmd_logs` for its reconnect.
    Queued,
}

/// The registry's view of one live session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub conn_id: u64,
    /// Boxed so that an idle session's mailbox block stays small.
    pub commands: mpsc::Sender<Box<Outgoing>>,
    /// Cancelled to close the session (replaced, shutting down).
    pub close: CancellationToken,
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

#[derive(Debug, Default)]
pub struct Gateway {
    sessions: Mutex<HashMap<String, SessionHandle>>,
    frames: Mutex<HashMap<String, FrameRing>>,
    next_conn: AtomicU64,
}

impl Gateway {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers a session; an existing session of the same device is closed at once.
    /// Returns whether one was replaced.
    pub fn register(&self, device_id: &str, handle: SessionHandle) -> bool {
        let old = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(device_id.to_string(), handle.clone());
        match old {
            Some(old) if old.conn_id != handle.conn_id => {
                old.close.cancel();
                true
            }
            _ => false,
        }
    }

    /// Removes a session if it is still the registered one (a replaced session must not
    /// remove its successor). Returns whether it was.
    pub fn unregister(&self, device_id: &str, conn_id: u64) -> bool {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions
            .get(device_id)
            .is_some_and(|h| h.conn_id == conn_id)
        {
            sessions.remove(device_id);
            true
        } else {
            false
        }
    }

    pub fn is_online(&self, device_id: &str) -> bool {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(device_id)
    }

    pub fn session_count(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Routes a command to the device's live session, if any.
    pub fn submit(&self, device_id: &str, out: Outgoing) -> Submitted {
        let handle = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(device_id)
            .cloned();
        match handle {
            Some(h) => match h.commands.try_send(Box::new(out)) {
                Ok(()) => Submitted::Dispatched,
                // A full or closing mailbox: the row stays queued and goes out on reconnect
                // or when the session drains its queue.
                Err(_) => Submitted::Queued,
            },
            None => Submitted::Queued,
        }
    }

    /// Closes every session (shutdown).
    pub fn close_all(&self) {
        for h in self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            h.close.cancel();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(gw: &Gateway) -> (SessionHandle, mpsc::Receiver<Box<Outgoing>>) {
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

    #[test]
    fn a_new_connection_replaces_the_old_session_at_once() {
        let gw = Gateway::new();
        let (first, _rx1) = handle(&gw);
        let (second, _rx2) = handle(&gw);
        assert!(!gw.register("D1", first.clone()));
        assert!(gw.register("D1", second.clone()));
        assert!(first.close.is_cancelled());
        assert!(!second.close.is_cancelled());
        // The replaced session's clean-up must not remove its successor.
        assert!(!gw.unregister("D1", first.conn_id));
        assert!(gw.is_online("D1"));
        assert!(gw.unregister("D1", second.conn_id));
        assert!(!gw.is_online("D1"));
    }

    #[test]
    fn commands_for_offline_devices_are_reported_queued() {
        let gw = Gateway::new();
        let cmd = Outgoing {
            command_id: 1,
            command: PortCommand::Stop {
                order_no: "o".into(),
                port_no: 1,
                device_ref: String::new(),
            },
        };
        assert_eq!(gw.submit("D1", cmd.clone()), Submitted::Queued);
        let (h, mut rx) = handle(&gw);
        gw.register("D1", h);
        assert_eq!(gw.submit("D1", cmd.clone()), Submitted::Dispatched);
        assert_eq!(rx.try_recv().ok().map(|b| *b), Some(cmd));
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
