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

use bytes::Bytes;
use pile_api::{Direction, FrameRecord};
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
    pub commands: mpsc::Sender<Outgoing>,
    /// Cancelled to close the session (replaced, shutting down).
    pub close: CancellationToken,
}

/// Frames kept per device for the frames route.
pub const FRAME_RING: usize = 200;

#[derive(Debug, Clone)]
struct RawFrame {
    at_ms: i64,
    direction: Direction,
    bytes: Bytes,
    summary: Box<str>,
}

#[derive(Debug, Default)]
pub struct Gateway {
    sessions: Mutex<HashMap<String, SessionHandle>>,
    frames: Mutex<HashMap<String, VecDeque<RawFrame>>>,
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
            Some(h) => match h.commands.try_send(out) {
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
        bytes: Bytes,
        summary: impl Into<Box<str>>,
    ) {
        let mut frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        let ring = frames.entry(device_id.to_string()).or_default();
        if ring.len() >= FRAME_RING {
            ring.pop_front();
        }
        ring.push_back(RawFrame {
            at_ms,
            direction,
            bytes,
            summary: summary.into(),
        });
    }

    /// The device's recent frames, oldest first; `None` when none were seen.
    pub fn frames(&self, device_id: &str) -> Option<Vec<FrameRecord>> {
        let frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        frames.get(device_id).map(|ring| {
            ring.iter()
                .map(|f| FrameRecord {
                    at_ms: f.at_ms,
                    direction: f.direction,
                    hex: hex::encode(&f.bytes),
                    summary: f.summary.to_string(),
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(gw: &Gateway) -> (SessionHandle, mpsc::Receiver<Outgoing>) {
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
        assert_eq!(rx.try_recv().ok(), Some(cmd));
    }

    #[test]
    fn the_frame_ring_keeps_the_last_200() {
        let gw = Gateway::new();
        for i in 0..250u8 {
            gw.record_frame("D1", Direction::Up, i64::from(i), Bytes::from(vec![i]), "x");
        }
        let frames = gw.frames("D1").unwrap_or_default();
        assert_eq!(frames.len(), FRAME_RING);
        assert_eq!(frames[0].hex, "32"); // frame 50
        assert!(gw.frames("D2").is_none());
    }
}
