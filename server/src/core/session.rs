//! [`SessionCore`]: the family-neutral state machine of one device connection.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pile_api::{Direction, PortStatus};
use pile_protocol::{Family, Sniff};

use super::ap3000::Ap3000;
use super::bkv::Bkv;
use super::{
    ActiveOrder, Command, CommandSpec, DeviceEvent, EndObs, Hello, Intent, IntentResult, LiveCell,
    PortChange, PortObs, PortSeen, Reply, Resolution, Token, Transmit,
};
use crate::domain::{IdleWatch, ReconcileRule, StopCause};

/// Where a session keeps the frames it sees (the registry's per-device ring).
pub trait FrameSink: Send + Sync {
    fn record(&self, device_id: &str, direction: Direction, at_ms: i64, raw: &[u8], note: Note<'_>);
}

/// What a recorded frame is: a frame of a family (summarised when read) or a note.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note<'a> {
    Frame(Family),
    Text(&'a str),
}

/// Timings and limits of a session.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub first_frame_timeout_ms: i64,
    pub offline_after_ms: i64,
    /// Least time between two commands to one device (vendor rule: 0.5 s).
    pub command_spacing_ms: i64,
    /// An unanswered command is resent once after this long (vendor rule: 15 s).
    pub resend_after_ms: i64,
    pub max_frame: usize,
    pub reconcile: ReconcileRule,
    /// Offset of the devices' local clock from UTC (BKV BCD times), seconds.
    pub device_utc_offset_sec: i64,
    /// A by-time charge still running this long past its target is stopped by the gateway.
    pub target_overrun_ms: i64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            first_frame_timeout_ms: 10_000,
            offline_after_ms: 30_000,
            command_spacing_ms: 500,
            resend_after_ms: 15_000,
            max_frame: 2048,
            reconcile: ReconcileRule::default(),
            device_utc_offset_sec: 8 * 3600,
            target_overrun_ms: 60_000,
        }
    }
}

/// Why the core ended the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Nothing valid arrived within the first-frame timeout.
    NoValidFrame,
    /// Identified, then silent for the offline threshold.
    Offline,
    /// The registry or policy refused the device.
    Refused(String),
}

impl CloseReason {
    pub fn as_str(&self) -> &str {
        match self {
            CloseReason::NoValidFrame => "no valid frame in time",
            CloseReason::Offline => "offline: no frame within the threshold",
            CloseReason::Refused(r) => r,
        }
    }
}

pub(super) enum Strategy {
    Bkv(Bkv),
    Ap3000(Ap3000),
}

impl Strategy {
    fn family(&self) -> Family {
        match self {
            Strategy::Bkv(_) => Family::Bkv,
            Strategy::Ap3000(_) => Family::Ap3000,
        }
    }
}

/// How far a command got on this connection.
#[derive(Debug, Clone)]
enum Phase {
    /// Waits for its turn (pacing, one write at a time).
    Ready,
    /// A BKV start that may have reached the device before: ask the port first.
    Verify,
    Verifying {
        key: u32,
        sent_at: i64,
        attempts: u8,
    },
    /// Asked the store to record it as sent; the bytes go out when that is committed.
    Marking { key: u32, bytes: Bytes },
    InFlight {
        key: u32,
        bytes: Bytes,
        sent_at: i64,
        attempts: u8,
    },
    /// Waiting for the service's decision after a verification.
    Resolving,
}

#[derive(Debug, Clone)]
struct Slot {
    cmd: Command,
    phase: Phase,
}

/// What an outstanding intent's result is for.
#[derive(Debug, Clone)]
enum Waiting {
    Identify,
    End { ack: Bytes, port_no: u32 },
    MarkSent { command_id: i64 },
    Replied,
    Resolve { command_id: i64 },
    Progress { port_no: u32 },
    GatewayStop { order_no: String },
}

/// What this connection saw of one port.
#[derive(Debug, Clone, Default)]
struct PortView {
    status: Option<PortStatus>,
    power_dw: i64,
    /// The charge seen running on this connection (its device handle, or `Some(None)` for a
    /// charge the device names by no handle).
    live: Option<Option<String>>,
    idle: IdleWatch,
    /// When this connection wrote the stop for the port that the device answered as done.
    stop_written_ms: Option<i64>,
}

/// What this connection saw of each port, in a vector: a pile has a few ports, and a
/// `BTreeMap` leaf (11 slots) cost ~940 B per connected pile.
#[derive(Debug, Default)]
struct PortMap(Vec<(u32, PortView)>);

impl PortMap {
    fn slot(&mut self, port: u32) -> &mut PortView {
        let i = match self.0.iter().position(|(p, _)| *p == port) {
            Some(i) => i,
            None => {
                self.0.push((port, PortView::default()));
                self.0.len() - 1
            }
        };
        &mut self.0[i].1
    }

    fn get(&self, port: &u32) -> Option<&PortView> {
        self.0.iter().find(|(p, _)| p == port).map(|(_, v)| v)
    }

    fn get_mut(&mut self, port: &u32) -> Option<&mut PortView> {
        self.0.iter_mut().find(|(p, _)| p == port).map(|(_, v)| v)
    }

    fn remove(&mut self, port: &u32) {
        self.0.retain(|(p, _)| p != port);
    }
}

/// A start whose order the connection was asked to stop (`stopped`).
fn withdrawn(stopped: &BTreeSet<String>, cmd: &Command) -> bool {
    cmd.spec.is_start() && cmd.spec.order_no().is_some_and(|o| stopped.contains(o))
}

/// One device connection. See the module documentation of [`crate::core`].
pub struct SessionCore {
    cfg: CoreConfig,
    conn_id: u64,
    peer: String,
    opened_ms: i64,
    buf: BytesMut,
    strategy: Option<Strategy>,
    iccid: Option<String>,
    device_id: Option<Arc<str>>,
    /// Identification committed (commands and open orders loaded).
    identified: bool,
    identified_ms: i64,
    live: Option<Arc<LiveCell>>,
    last_frame_ms: i64,
    transmits: VecDeque<Transmit>,
    intents: VecDeque<Intent>,
    next_token: Token,
    waiting: BTreeMap<Token, Waiting>,
    slots: Vec<Slot>,
    known: HashSet<i64>,
    last_command_ms: Option<i64>,
    ports: PortMap,
    active: BTreeMap<u32, ActiveOrder>,
    /// Orders the gateway already asked to stop on its own.
    stopping: BTreeSet<String>,
    /// Orders a stop was handed to this connection for: their starts are never written again
    /// (a start resent after its stop was answered would run a charge nobody wants — seed
    /// 18774); what the stop's answer says decides the order.
    stopped: BTreeSet<String>,
    /// Events that arrived before identification completed.
    early: Vec<DeviceEvent>,
    closed: Option<CloseReason>,
    sink: Option<Arc<dyn FrameSink>>,
    foreign_frames: u64,
    frame_errors: u64,
}

impl SessionCore {
    pub fn new(cfg: CoreConfig, conn_id: u64, peer: String, now_ms: i64) -> Self {
        SessionCore {
            cfg,
            conn_id,
            peer,
            opened_ms: now_ms,
            buf: BytesMut::with_capacity(256),
            strategy: None,
            iccid: None,
            device_id: None,
            identified: false,
            identified_ms: 0,
            live: None,
            last_frame_ms: now_ms,
            transmits: VecDeque::new(),
            intents: VecDeque::new(),
            next_token: 1,
            waiting: BTreeMap::new(),
            slots: Vec::new(),
            known: HashSet::new(),
            last_command_ms: None,
            ports: PortMap::default(),
            active: BTreeMap::new(),
            stopping: BTreeSet::new(),
            stopped: BTreeSet::new(),
            early: Vec::new(),
            closed: None,
            sink: None,
            foreign_frames: 0,
            frame_errors: 0,
        }
    }

    /// Frames of this connection go to `sink` (the registry's ring) once the device is known.
    pub fn with_sink(mut self, sink: Arc<dyn FrameSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }

    pub fn device_id(&self) -> Option<&Arc<str>> {
        self.device_id.as_ref()
    }

    pub fn is_identified(&self) -> bool {
        self.identified
    }

    pub fn family(&self) -> Option<Family> {
        self.strategy.as_ref().map(Strategy::family)
    }

    pub fn protocol(&self) -> &'static str {
        match self.family() {
            Some(Family::Bkv) => "bkv",
            Some(Family::Ap3000) => "ap3000",
            None => "unknown",
        }
    }

    /// Frames skipped as invalid (for tests and the shell's counters).
    pub fn frame_errors(&self) -> u64 {
        self.frame_errors
    }

    /// Frames naming another device than the one this connection identified as.
    pub fn foreign_frames(&self) -> u64 {
        self.foreign_frames
    }

    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.closed.as_ref()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Whether [`SessionCore::poll_intent`] has something.
    pub fn has_intents(&self) -> bool {
        !self.intents.is_empty()
    }

    pub fn poll_intent(&mut self) -> Option<Intent> {
        self.intents.pop_front()
    }

    /// Commands this connection holds that are not finished (for tests).
    pub fn open_commands(&self) -> Vec<i64> {
        self.slots.iter().map(|s| s.cmd.id).collect()
    }

    /// The next instant (gateway ms) at which [`SessionCore::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<i64> {
        if self.closed.is_some() {
            return None;
        }
        let mut t = if self.identified || self.device_id.is_some() {
            self.last_frame_ms + self.cfg.offline_after_ms
        } else {
            self.opened_ms + self.cfg.first_frame_timeout_ms
        };
        if !self.identified {
            return Some(t);
        }
        let busy = self
            .slots
            .iter()
            .any(|s| matches!(s.phase, Phase::Marking { .. } | Phase::Resolving));
        if !busy {
            if self.slots.iter().any(|s| matches!(s.phase, Phase::Ready)) {
                t = t.min(self.pacing_ready_at());
            }
            if self.slots.iter().any(|s| matches!(s.phase, Phase::Verify)) {
                t = t.min(self.pacing_ready_at().max(self.verify_hold_until()));
            }
        }
        for s in &self.slots {
            match s.phase {
                Phase::InFlight { sent_at, .. } | Phase::Verifying { sent_at, .. } => {
                    t = t.min(sent_at + self.cfg.resend_after_ms);
                }
                _ => {}
            }
        }
        for o in self.active.values() {
            if let Some(at) = self.stop_due_at(o) {
                if !self.stopping.contains(&o.order_no) {
                    t = t.min(at);
                }
            }
        }
        Some(t)
    }

    /// An AP3000 pile sends what it kept (settlements of charges that ended while it could not
    /// tell) as soon as it has registered; a start that may have reached it waits this long
    /// after identification before the port is asked, so its own record comes first.
    pub const AP3000_VERIFY_HOLD_MS: i64 = 3_000;

    fn verify_hold_until(&self) -> i64 {
        if self.family() == Some(Family::Ap3000) {
            self.identified_ms + Self::AP3000_VERIFY_HOLD_MS
        } else {
            i64::MIN
        }
    }

    fn pacing_ready_at(&self) -> i64 {
        self.last_command_ms
            .map_or(i64::MIN, |l| l + self.cfg.command_spacing_ms)
    }

    fn token(&mut self, w: Waiting) -> Token {
        let t = self.next_token;
        self.next_token += 1;
        self.waiting.insert(t, w);
        t
    }

    fn count_error(&self, kind: &str) {
        let k = super::ERROR_KINDS
            .iter()
            .position(|e| *e == kind)
            .unwrap_or(3);
        super::meters().frame_errors[super::family_index(self.family())][k].increment(1);
    }

    fn transmit(&mut self, now_ms: i64, bytes: Bytes, kind: &'static str) {
        if let Some(f) = self.family() {
            let k = super::OUT_KINDS
                .iter()
                .position(|o| *o == kind)
                .unwrap_or(0);
            super::meters().outbound[super::family_index(Some(f))][k].increment(1);
        }
        if let (Some(sink), Some(id), Some(family)) = (&self.sink, &self.device_id, self.family()) {
            sink.record(id, Direction::Down, now_ms, &bytes, Note::Frame(family));
        }
        self.transmits.push_back(Transmit { bytes, kind });
    }

    // -- input ---------------------------------------------------------------------------------

    /// Bytes read from the socket.
    pub fn handle_bytes(&mut self, now_ms: i64, data: &[u8]) {
        if self.closed.is_some() {
            return;
        }
        self.buf.extend_from_slice(data);
        if self.strategy.is_none() {
            loop {
                match pile_protocol::sniff(&self.buf) {
                    Sniff::NeedMore => return,
                    Sniff::Family(Family::Ap3000) => {
                        self.strategy = Some(Strategy::Ap3000(Ap3000::new(self.cfg.max_frame)));
                        break;
                    }
                    Sniff::Family(Family::Bkv) => {
                        self.strategy = Some(Strategy::Bkv(Bkv::new(
                            self.cfg.max_frame,
                            self.cfg.device_utc_offset_sec,
                        )));
                        break;
                    }
                    Sniff::Unknown => {
                        self.frame_errors += 1;
                        self.count_error("garbage");
                        let _ = self.buf.split_to(1);
                        if self.buf.is_empty() {
                            return;
                        }
                    }
                }
            }
        }
        let mut events = Vec::new();
        loop {
            let mut replies = Vec::new();
            let got = match &mut self.strategy {
                Some(Strategy::Bkv(b)) => {
                    b.decode(&mut self.buf, now_ms, &mut events, &mut replies)
                }
                Some(Strategy::Ap3000(a)) => {
                    a.decode(&mut self.buf, now_ms, &mut events, &mut replies)
                }
                None => None,
            };
            let Some(got) = got else { break };
            match got {
                // A frame naming another device than this connection's first frame did is not
                // ours to act on (a confused or malicious peer): counted and dropped.
                super::Decoded::Foreign => {
                    self.foreign_frames += 1;
                    self.count_error("foreign_device_id");
                }
                super::Decoded::Frame { raw } => {
                    super::meters().inbound[super::family_index(self.family()).min(1)].increment(1);
                    self.last_frame_ms = now_ms;
                    if let Some(live) = &self.live {
                        live.seen(now_ms);
                    }
                    // Events first: the first frame names the device, and the ring is the
                    // device's.
                    for e in events.drain(..) {
                        self.on_event(now_ms, e);
                    }
                    if let (Some(sink), Some(id), Some(f)) =
                        (&self.sink, self.device_id.as_ref(), self.family())
                    {
                        sink.record(id, Direction::Up, now_ms, &raw, Note::Frame(f));
                    }
                    for r in replies.drain(..) {
                        self.transmit(now_ms, r, "reply");
                    }
                }
                super::Decoded::Diagnostic { raw, text, kind } => {
                    self.frame_errors += 1;
                    self.count_error(kind);
                    if let (Some(sink), Some(id)) = (&self.sink, &self.device_id) {
                        sink.record(id, Direction::Up, now_ms, &raw, Note::Text(&text));
                    }
                }
                super::Decoded::Iccid(iccid) => {
                    self.last_frame_ms = now_ms;
                    self.iccid = Some(iccid);
                }
                super::Decoded::KeepAlive => {
                    if self.device_id.is_some() {
                        self.last_frame_ms = now_ms;
                        if let Some(live) = &self.live {
                            live.seen(now_ms);
                        }
                    }
                }
            }
        }
        // A decoder never leaves more than one partial frame; anything longer is garbage.
        if self.buf.len() > self.cfg.max_frame * 2 {
            self.frame_errors += 1;
            self.count_error("overflow");
            self.buf.clear();
        }
    }

    /// A durable command for this device (from the API through the registry, or loaded at
    /// identification). A command already held is ignored.
    pub fn handle_command(&mut self, now_ms: i64, cmd: Command) {
        if self.closed.is_some() || !self.known.insert(cmd.id) {
            return;
        }
        // A start that may have reached the device is decided from what the device says of
        // the port, never resent blindly (it may have run, and even ended, meanwhile).
        let verify = cmd.sent_before && cmd.spec.is_start();
        if let CommandSpec::Stop { order_no, .. } = &cmd.spec {
            self.stopped.insert(order_no.clone());
        }
        self.slots.push(Slot {
            cmd,
            phase: if verify { Phase::Verify } else { Phase::Ready },
        });
        self.handle_timeout(now_ms);
    }

    /// Time passed: deadlines, resends, paced commands, the gateway's own stops.
    pub fn handle_timeout(&mut self, now_ms: i64) {
        if self.closed.is_some() {
            return;
        }
        if self.device_id.is_none() && now_ms >= self.opened_ms + self.cfg.first_frame_timeout_ms {
            self.closed = Some(CloseReason::NoValidFrame);
            return;
        }
        if self.device_id.is_some() && now_ms >= self.last_frame_ms + self.cfg.offline_after_ms {
            self.closed = Some(CloseReason::Offline);
            return;
        }
        if !self.identified {
            return;
        }
        self.resends(now_ms);
        self.target_stops(now_ms);
        self.dispatch(now_ms);
    }

    fn resends(&mut self, now_ms: i64) {
        let resend_after = self.cfg.resend_after_ms;
        let mut i = 0;
        while i < self.slots.len() {
            let phase = self.slots[i].phase.clone();
            match phase {
                Phase::InFlight {
                    key,
                    bytes,
                    sent_at,
                    attempts,
                } if now_ms >= sent_at + resend_after => {
                    if attempts >= 2 || withdrawn(&self.stopped, &self.slots[i].cmd) {
                        let slot = self.slots.remove(i);
                        self.intents.push_back(Intent::Unanswered {
                            command_id: slot.cmd.id,
                        });
                        continue;
                    }
                    if self.family() == Some(Family::Bkv) && self.slots[i].cmd.spec.is_start() {
                        // A BKV start resent blindly could start a second charge: ask first.
                        self.slots[i].phase = Phase::Verify;
                    } else {
                        self.slots[i].phase = Phase::InFlight {
                            key,
                            bytes: bytes.clone(),
                            sent_at: now_ms,
                            attempts: attempts + 1,
                        };
                        self.last_command_ms = Some(now_ms);
                        self.transmit(now_ms, bytes, "resend");
                    }
                }
                Phase::Verifying {
                    sent_at, attempts, ..
                } if now_ms >= sent_at + resend_after => {
                    if attempts >= 2 {
                        // The device answers nothing: keep the command as it is (sent, outcome
                        // unknown); the next connection verifies again.
                        let slot = self.slots.remove(i);
                        self.intents.push_back(Intent::Unanswered {
                            command_id: slot.cmd.id,
                        });
                        continue;
                    }
                    self.slots[i].phase = Phase::Verify;
                }
                _ => {}
            }
            i += 1;
        }
    }

    fn stop_due_at(&self, o: &ActiveOrder) -> Option<i64> {
        let start = o.started_at_ms?;
        if o.charge_mode != 1 || o.target_duration_sec <= 0 {
            return None;
        }
        let target = start + o.target_duration_sec * 1000;
        // BKV counts whole minutes: a target that is not one is stopped at the exact second.
        if self.family() == Some(Family::Bkv) && o.target_duration_sec % 60 != 0 {
            Some(target)
        } else {
            Some(target + self.cfg.target_overrun_ms)
        }
    }

    fn target_stops(&mut self, now_ms: i64) {
        let due: Vec<(String, u32)> = self
            .active
            .values()
            .filter(|o| !self.stopping.contains(&o.order_no))
            .filter(|o| self.stop_due_at(o).is_some_and(|at| now_ms >= at))
            .map(|o| (o.order_no.clone(), o.port_no))
            .collect();
        for (order_no, port_no) in due {
            self.gateway_stop(order_no, port_no, StopCause::Target);
        }
    }

    fn gateway_stop(&mut self, order_no: String, port_no: u32, cause: StopCause) {
        if !self.stopping.insert(order_no.clone()) {
            return;
        }
        let token = self.token(Waiting::GatewayStop {
            order_no: order_no.clone(),
        });
        self.intents.push_back(Intent::GatewayStop {
            token,
            order_no,
            port_no,
            cause,
        });
    }

    /// Writes the next command when pacing allows and nothing else is being written.
    fn dispatch(&mut self, now_ms: i64) {
        if self
            .slots
            .iter()
            .any(|s| matches!(s.phase, Phase::Marking { .. } | Phase::Resolving))
        {
            return;
        }
        if now_ms < self.pacing_ready_at() {
            return;
        }
        // A start whose order was asked to stop is not written (again): the stop decides.
        let stopped = &self.stopped;
        self.slots.retain(|s| {
            !(matches!(s.phase, Phase::Ready | Phase::Verify) && withdrawn(stopped, &s.cmd))
        });
        let hold_over = now_ms >= self.verify_hold_until();
        let Some(i) = self.slots.iter().position(|s| match s.phase {
            Phase::Ready => true,
            Phase::Verify => hold_over,
            _ => false,
        }) else {
            return;
        };
        let verify = matches!(self.slots[i].phase, Phase::Verify);
        let spec = self.slots[i].cmd.spec.clone();
        if verify {
            let port = spec.port_no().unwrap_or(1);
            let encoded = match &mut self.strategy {
                Some(Strategy::Bkv(b)) => b.encode(&CommandSpec::Query {
                    port_no: Some(port),
                }),
                // 0x81: the pile answers with a register and a heartbeat (its port states);
                // the next heartbeat after it decides.
                Some(Strategy::Ap3000(a)) => a.encode(
                    None,
                    &CommandSpec::Query {
                        port_no: Some(port),
                    },
                ),
                None => None,
            };
            match encoded {
                Some((key, bytes)) => {
                    self.slots[i].phase = Phase::Verifying {
                        key,
                        sent_at: now_ms,
                        attempts: match self.slots[i].phase {
                            Phase::Verifying { attempts, .. } => attempts + 1,
                            _ => 1,
                        },
                    };
                    self.last_command_ms = Some(now_ms);
                    self.transmit(now_ms, bytes, "query");
                }
                None => self.slots[i].phase = Phase::Ready,
            }
            return;
        }
        let encoded = match &mut self.strategy {
            Some(Strategy::Bkv(b)) => b.encode(&spec),
            Some(Strategy::Ap3000(a)) => a.encode(Some(self.slots[i].cmd.id), &spec),
            None => None,
        };
        match encoded {
            Some((key, bytes)) => {
                let command_id = self.slots[i].cmd.id;
                let token = self.token(Waiting::MarkSent { command_id });
                self.intents.push_back(Intent::MarkSent {
                    token,
                    command_id,
                    key,
                    request_hex: hex::encode(&bytes),
                    conn_id: self.conn_id,
                });
                self.slots[i].phase = Phase::Marking { key, bytes };
            }
            None => {
                // Nothing this device can be told (a locate on BKV, a port it does not have).
                let slot = self.slots.remove(i);
                let token = self.token(Waiting::Replied);
                self.intents.push_back(Intent::Replied {
                    token,
                    command: slot.cmd,
                    reply: Reply::Refused {
                        reason: "not supported by this device".into(),
                    },
                    reply_hex: String::new(),
                });
            }
        }
    }

    // -- events from the wire --------------------------------------------------------------------

    fn on_event(&mut self, now_ms: i64, e: DeviceEvent) {
        if !self.identified {
            if let DeviceEvent::Hello {
                device_id: Some(device_id),
                firmware,
                signal,
                iccid,
                port_count,
            } = &e
            {
                if self.device_id.is_none() {
                    self.device_id = Some(Arc::from(device_id.as_str()));
                    let token = self.token(Waiting::Identify);
                    self.intents.push_back(Intent::Identify {
                        token,
                        hello: Hello {
                            device_id: device_id.clone(),
                            protocol: self.protocol(),
                            remote_addr: self.peer.clone(),
                            firmware: firmware.clone(),
                            iccid: iccid.clone().or_else(|| self.iccid.clone()),
                            signal: *signal,
                            conn_id: self.conn_id,
                            at_ms: now_ms,
                        },
                    });
                    // The frame's registration data went with the identification; a port
                    // count is stored once identified.
                    if port_count.is_none() {
                        return;
                    }
                }
            }
            self.early.push(e);
            return;
        }
        match e {
            DeviceEvent::Hello {
                firmware,
                signal,
                port_count,
                ..
            } => {
                if let (Some(s), Some(live)) = (signal, &self.live) {
                    live.signal.store(s, std::sync::atomic::Ordering::Relaxed);
                }
                if firmware.is_some() || port_count.is_some() {
                    self.intents.push_back(Intent::DeviceInfo {
                        firmware,
                        signal,
                        port_count,
                    });
                }
            }
            DeviceEvent::Ports(obs) => {
                // AP3000 answers 0x81 with a heartbeat under its own message ID: the first
                // heartbeat read after the query was written is its answer (in the same
                // millisecond too: on a short path the answer comes back within one).
                let asked = (self.family() == Some(Family::Ap3000))
                    .then(|| {
                        self.slots.iter().find_map(|s| match s.phase {
                            Phase::Verifying { key, sent_at, .. } if sent_at <= now_ms => Some(key),
                            _ => None,
                        })
                    })
                    .flatten();
                match asked {
                    Some(key) => self.on_query_answer(now_ms, key, obs),
                    None => self.on_ports(now_ms, obs),
                }
            }
            DeviceEvent::Progress(p) => {
                // A sample the device took before this connection existed is replayed from its
                // memory: it says nothing about what runs now.
                if !self.before_this_connection(p.device_at_ms) {
                    self.on_ports(
                        now_ms,
                        vec![PortObs {
                            port_no: p.port_no,
                            socket_no: None,
                            hole: None,
                            status: PortStatus::Charging,
                            power_dw: p.power_dw,
                            device_ref: p.device_ref.clone(),
                        }],
                    );
                    let view = self.ports.slot(p.port_no);
                    view.live = Some(p.device_ref.clone());
                    view.idle = IdleWatch::default();
                }
                let token = self.token(Waiting::Progress { port_no: p.port_no });
                self.intents.push_back(Intent::Progress { token, obs: p });
            }
            DeviceEvent::End(mut obs, ack) => {
                obs.seen_live =
                    self.seen_live(&obs) && !self.before_this_connection(obs.device_end_at_ms);
                if obs.seen_live {
                    obs.stop_written_at_ms =
                        self.ports.get(&obs.port_no).and_then(|v| v.stop_written_ms);
                }
                let token = self.token(Waiting::End {
                    ack,
                    port_no: obs.port_no,
                });
                self.intents.push_back(Intent::End { token, obs });
            }
            DeviceEvent::Reply { key, reply } => self.on_reply(key, reply),
            DeviceEvent::QueryAnswer { key, ports } => self.on_query_answer(now_ms, key, ports),
            DeviceEvent::Alarm(v) => self.intents.push_back(Intent::Alarm(v)),
        }
    }

    /// Whether a device timestamp is from before this connection was opened (with a second of
    /// slack for clock skew); `None` (the frame carries no time) is taken as now.
    fn before_this_connection(&self, device_at_ms: Option<i64>) -> bool {
        device_at_ms.is_some_and(|t| t < self.opened_ms - 1_000)
    }

    /// Whether this connection saw the ended charge running.
    fn seen_live(&self, obs: &EndObs) -> bool {
        match self.ports.get(&obs.port_no).and_then(|v| v.live.as_ref()) {
            Some(Some(live_ref)) => obs.device_ref.as_deref().is_none_or(|r| r == live_ref),
            Some(None) => true,
            None => false,
        }
    }

    fn on_ports(&mut self, now_ms: i64, obs: Vec<PortObs>) {
        // AP3000 answers 0x81 with its registration and a heartbeat, not with a reply.
        if self.family() == Some(Family::Ap3000) {
            while let Some(i) = self.slots.iter().position(|s| {
                matches!(s.phase, Phase::InFlight { .. })
                    && matches!(s.cmd.spec, CommandSpec::Query { .. })
            }) {
                let slot = self.slots.remove(i);
                let token = self.token(Waiting::Replied);
                self.intents.push_back(Intent::Replied {
                    token,
                    command: slot.cmd,
                    reply: Reply::Done { device_ref: None },
                    reply_hex: String::new(),
                });
            }
        }
        let rule = self.cfg.reconcile;
        let mut changes = Vec::new();
        let mut reconcile = Vec::new();
        for o in obs {
            let view = self.ports.slot(o.port_no);
            if view.status != Some(o.status) || view.power_dw != o.power_dw {
                changes.push(PortChange {
                    obs: o.clone(),
                    previous: view.status,
                });
                view.status = Some(o.status);
                view.power_dw = o.power_dw;
            }
            match o.status {
                PortStatus::Charging => {
                    view.idle = IdleWatch::default();
                    if o.device_ref.is_some() || view.live.is_none() {
                        let named = o.device_ref.clone();
                        let matches_order = self.active.get(&o.port_no).is_some_and(|a| {
                            named.is_none() || a.device_ref.is_none() || a.device_ref == named
                        });
                        if matches_order {
                            view.live = Some(named);
                        }
                    }
                }
                PortStatus::Idle | PortStatus::Plugged => {
                    view.live = None;
                    if let Some(a) = self.active.get(&o.port_no) {
                        if a.started_at_ms.is_some()
                            && !self.stopping.contains(&a.order_no)
                            && view.idle.observe(true, now_ms, rule)
                        {
                            reconcile.push((a.order_no.clone(), a.port_no));
                        }
                    }
                }
                PortStatus::Fault | PortStatus::Offline => {}
            }
        }
        if !changes.is_empty() {
            self.intents.push_back(Intent::Ports(changes));
        }
        for (order_no, port_no) in reconcile {
            if let Some(v) = self.ports.get_mut(&port_no) {
                v.idle = IdleWatch::default();
            }
            self.intents
                .push_back(Intent::Reconcile { order_no, port_no });
        }
    }

    fn on_reply(&mut self, key: u32, reply: Reply) {
        let Some(i) = self
            .slots
            .iter()
            .position(|s| matches!(s.phase, Phase::InFlight { key: k, .. } if k == key))
        else {
            // A late answer to something already settled (resent, given up): nothing to do.
            return;
        };
        let slot = self.slots.remove(i);
        // A stop the device carried out: its charge ended at that write (a write whose answer
        // never came proves nothing — the pile may have run on to its own end).
        if let (
            CommandSpec::Stop { port_no, .. },
            Reply::Done { .. },
            Phase::InFlight { sent_at, .. },
        ) = (&slot.cmd.spec, &reply, &slot.phase)
        {
            self.ports.slot(*port_no).stop_written_ms = Some(*sent_at);
        }
        let token = self.token(Waiting::Replied);
        self.intents.push_back(Intent::Replied {
            token,
            command: slot.cmd,
            reply,
            reply_hex: String::new(),
        });
    }

    fn on_query_answer(&mut self, now_ms: i64, key: u32, ports: Vec<PortObs>) {
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| matches!(s.phase, Phase::Verifying { key: k, .. } if k == key))
        {
            let port = self.slots[i].cmd.spec.port_no();
            let seen = match ports.iter().find(|p| Some(p.port_no) == port) {
                Some(p) if p.status == PortStatus::Charging => PortSeen::Charging {
                    device_ref: p.device_ref.clone(),
                },
                Some(_) => PortSeen::Idle,
                None => PortSeen::Unknown,
            };
            self.slots[i].phase = Phase::Resolving;
            let command = self.slots[i].cmd.clone();
            let token = self.token(Waiting::Resolve {
                command_id: command.id,
            });
            self.intents.push_back(Intent::Resolve {
                token,
                command,
                seen,
            });
        } else if let Some(i) = self.slots.iter().position(|s| {
            matches!(s.phase, Phase::InFlight { key: k, .. } if k == key)
                && matches!(s.cmd.spec, CommandSpec::Query { .. })
        }) {
            let slot = self.slots.remove(i);
            let token = self.token(Waiting::Replied);
            self.intents.push_back(Intent::Replied {
                token,
                command: slot.cmd,
                reply: Reply::Done { device_ref: None },
                reply_hex: String::new(),
            });
        }
        self.on_ports(now_ms, ports);
    }

    // -- results ---------------------------------------------------------------------------------

    /// The answer to an intent.
    pub fn handle_result(&mut self, now_ms: i64, token: Token, result: IntentResult) {
        let Some(w) = self.waiting.remove(&token) else {
            return;
        };
        if self.waiting.is_empty() {
            // An emptied map keeps its leaf node (~0.5 KB): a connected pile waits for
            // nothing most of the time.
            self.waiting = BTreeMap::new();
        }
        match (w, result) {
            (
                Waiting::Identify,
                IntentResult::Identified {
                    live,
                    commands,
                    active,
                },
            ) => {
                live.seen(now_ms);
                self.live = Some(live);
                self.identified = true;
                self.identified_ms = now_ms;
                for o in active {
                    self.track(o);
                }
                for e in std::mem::take(&mut self.early) {
                    self.on_event(now_ms, e);
                }
                for c in commands {
                    self.handle_command(now_ms, c);
                }
                self.handle_timeout(now_ms);
            }
            (Waiting::Identify, IntentResult::Refused { reason }) => {
                self.closed = Some(CloseReason::Refused(reason));
            }
            (Waiting::Identify, _) => {
                // The store failed: without identification nothing here is safe; close, the
                // device reconnects.
                self.closed = Some(CloseReason::Refused("identification failed".into()));
            }
            (Waiting::End { ack, port_no }, IntentResult::End { committed, settled }) => {
                if committed {
                    self.transmit(now_ms, ack, "ack");
                }
                if let Some(order_no) = settled {
                    if self
                        .active
                        .get(&port_no)
                        .is_some_and(|a| a.order_no == order_no)
                    {
                        self.active.remove(&port_no);
                        if self.active.is_empty() {
                            self.active = BTreeMap::new();
                        }
                    }
                    self.stopping.remove(&order_no);
                    // The port stopped with the order: the next report is written whatever
                    // it says.
                    self.ports.remove(&port_no);
                }
            }
            (Waiting::End { .. }, _) => {}
            (Waiting::MarkSent { command_id }, IntentResult::MarkSent { proceed }) => {
                let Some(i) = self.slots.iter().position(|s| s.cmd.id == command_id) else {
                    return;
                };
                match (proceed, self.slots[i].phase.clone()) {
                    (true, Phase::Marking { key, bytes }) => {
                        let first = self.slots[i].cmd.first_sent_at_ms.is_none();
                        if first {
                            self.slots[i].cmd.first_sent_at_ms = Some(now_ms);
                        }
                        self.slots[i].cmd.sent_before = true;
                        self.slots[i].phase = Phase::InFlight {
                            key,
                            bytes: bytes.clone(),
                            sent_at: now_ms,
                            attempts: 1,
                        };
                        self.last_command_ms = Some(now_ms);
                        self.transmit(now_ms, bytes, "command");
                    }
                    (false, _) => {
                        self.slots.remove(i);
                    }
                    _ => {}
                }
                self.handle_timeout(now_ms);
            }
            (Waiting::MarkSent { command_id }, _) => {
                // Could not record it: try again later (the row is still queued).
                if let Some(s) = self.slots.iter_mut().find(|s| s.cmd.id == command_id) {
                    s.phase = Phase::Ready;
                }
                self.last_command_ms = Some(now_ms);
            }
            (
                Waiting::Replied,
                IntentResult::Replied {
                    started,
                    stop_orphan,
                },
            ) => {
                if let Some(o) = started {
                    let port = o.port_no;
                    let r = o.device_ref.clone();
                    self.track(o);
                    let view = self.ports.slot(port);
                    view.live = Some(r);
                    view.idle = IdleWatch::default();
                }
                if let Some((order_no, port_no)) = stop_orphan {
                    self.gateway_stop(order_no, port_no, StopCause::Orphan);
                }
                self.handle_timeout(now_ms);
            }
            (Waiting::Replied, _) => {}
            (Waiting::Resolve { command_id }, IntentResult::Resolved(r)) => {
                let Some(i) = self.slots.iter().position(|s| s.cmd.id == command_id) else {
                    return;
                };
                match r {
                    Resolution::Resend => self.slots[i].phase = Phase::Ready,
                    Resolution::NotDelivered => {
                        self.slots[i].phase = Phase::Ready;
                        self.slots[i].cmd.first_sent_at_ms = None;
                    }
                    Resolution::Running(o) => {
                        self.slots.remove(i);
                        let port = o.port_no;
                        let r = o.device_ref.clone();
                        self.track(o);
                        let view = self.ports.slot(port);
                        view.live = Some(r);
                    }
                    Resolution::Drop => {
                        self.slots.remove(i);
                    }
                }
                self.handle_timeout(now_ms);
            }
            (Waiting::Resolve { command_id }, _) => {
                if let Some(s) = self.slots.iter_mut().find(|s| s.cmd.id == command_id) {
                    s.phase = Phase::Verify;
                }
            }
            (
                Waiting::Progress { port_no },
                IntentResult::Progress {
                    order,
                    money_used_up,
                },
            ) => {
                if let Some(o) = order {
                    let order_no = o.order_no.clone();
                    self.track(o);
                    if money_used_up {
                        self.gateway_stop(order_no, port_no, StopCause::Target);
                    }
                }
            }
            (Waiting::Progress { .. }, _) => {}
            (Waiting::GatewayStop { .. }, IntentResult::Queued(Some(cmd))) => {
                self.handle_command(now_ms, cmd);
            }
            (Waiting::GatewayStop { order_no }, _) => {
                // Not queued (store down, order already closed): allow another try.
                self.stopping.remove(&order_no);
            }
        }
    }

    /// Keeps an open order of the device in view (replacing what was known of its port).
    fn track(&mut self, o: ActiveOrder) {
        match self.active.get(&o.port_no) {
            Some(a)
                if a.order_no != o.order_no
                    && a.started_at_ms.is_some()
                    && o.started_at_ms.is_none() =>
            {
                // A pending order does not hide a charging one on the same port.
            }
            _ => {
                self.active.insert(o.port_no, o);
            }
        }
    }

    /// The open orders this connection tracks (for tests).
    pub fn active_orders(&self) -> Vec<ActiveOrder> {
        self.active.values().cloned().collect()
    }
}
