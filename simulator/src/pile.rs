//! One virtual pile: a sans-IO state machine driven by explicit instants.
//!
//! The pile never reads a clock and never touches a socket. The driver
//! ([`crate::fleet`]) feeds it events — time passing ([`Pile::poll`]), bytes
//! read, connection outcomes, control operations — and performs the
//! [`Action`]s it asks for. Family specifics (what a heartbeat looks like,
//! how a start command is answered on the wire) live behind [`Codec`]; the
//! behaviour shared by both families (charging, the EEPROM, the network and
//! fault states, the virtual user) lives here.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pile_protocol::Family;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use thiserror::Error;
use tokio::time::Instant;

use crate::billing::{Billing, Meter};
use crate::charger::{ChargerModel, ChargerParams};
use crate::eeprom::Eeprom;
use crate::fault::{FaultKind, Faults};
use crate::msg::{
    AckMatch, CommandResult, Down, EndReason, EndRecord, Order, Origin, PortSel, ProgressRecord,
    Record, RecordKey, RecordKind, StartRequest, Target, Up,
};
use crate::replay::ReplayStore;

/// A BKV socket that was started but never got a load ends after this long.
pub const BKV_NO_LOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Frames merged by the `merge_frames` fault are written after this long at most.
const MERGE_WINDOW: Duration = Duration::from_millis(300);
/// How many frames the `merge_frames` fault puts into one write.
const MERGE_FRAMES: usize = 3;
/// Bound on buffered undecoded input; past it the buffer is dropped.
const MAX_READ_BUFFER: usize = 64 * 1024;

/// Maps the simulation's monotonic instants to wall-clock time for the
/// timestamps devices put on the wire.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    pub base: Instant,
    pub base_unix_ms: u64,
}

impl SimClock {
    pub fn new(base: Instant, base_unix_ms: u64) -> Self {
        SimClock { base, base_unix_ms }
    }

    /// A clock whose `base` is now and whose wall time is the system's.
    pub fn system() -> Self {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        SimClock::new(Instant::now(), unix_ms)
    }

    pub fn unix_ms(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.base).as_millis() as u64;
        self.base_unix_ms + since
    }

    pub fn unix_s(&self, at: Instant) -> u64 {
        self.unix_ms(at) / 1000
    }
}

/// Settings every pile of a fleet shares.
#[derive(Debug, Clone)]
pub struct PileConfig {
    pub ports: u16,
    pub heartbeat: Duration,
    pub reconnect_delay: Duration,
    pub plug_delay: Duration,
    pub power_w: f64,
    pub resend_after: Duration,
    pub link_after: Duration,
    pub frames_kept: usize,
    pub progress_kept: usize,
    pub answer_delay: Duration,
    pub clock: SimClock,
    /// Timing hooks for a load generator.
    pub observer: Option<crate::observe::Observer>,
    /// The fleet's non-volatile memory (`--eeprom`): unacknowledged ends and
    /// running charges survive a process kill.
    pub eeprom: Option<Arc<Eeprom>>,
}

/// Something the driver must do for the pile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a new connection, then call [`Pile::on_connected`] or
    /// [`Pile::on_connect_failed`].
    Connect,
    /// Write these bytes in one write.
    Write(Bytes),
    /// Write these bytes one byte per write.
    WriteSplit(Bytes),
    /// Keep the current socket open but never use it again (no FIN): the
    /// cable was pulled or the power went out.
    Abandon,
    /// Close the current socket cleanly.
    Close,
}

/// A decoded (or undecodable) piece of server input.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub raw: Bytes,
    /// `None` for bytes that were no valid frame (a diagnostic).
    pub down: Option<Down>,
}

/// The wire side of a family: encoders and a streaming decoder from the
/// protocol crate, plus the byte-level helpers the faults need.
pub trait Codec: Send {
    /// Encodes one message, `None` when the family has no such message.
    fn encode(&mut self, pile: &PileState, up: &Up, now: Instant) -> Option<Bytes>;
    /// Decodes every whole item at the front of `buf`, consuming it.
    fn decode(&mut self, pile: &PileState, buf: &mut BytesMut, out: &mut Vec<Inbound>);
    /// Spoils an encoded frame's checksum (the `bad_checksum` fault).
    fn corrupt_checksum(&self, frame: &mut [u8]);
    /// A one-line decoded summary of raw bytes in either direction.
    fn describe(&self, raw: &[u8], dir: Direction) -> String;
    /// Chooses the firmware generation the pile speaks (`--firmware`).
    fn set_firmware(&mut self, _firmware: crate::firmware::Firmware) {}
    /// The firmware generation the pile speaks.
    fn firmware(&self) -> crate::firmware::Firmware {
        crate::firmware::Firmware::Latest
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Up,
    Down,
}

#[derive(Debug, Clone)]
struct FrameLog {
    at_unix_ms: u64,
    dir: Direction,
    raw: Bytes,
}

/// A recent frame as `frames()` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct FrameSnapshot {
    pub at_unix_ms: u64,
    pub dir: Direction,
    pub hex: String,
    pub decoded: String,
}

/// The connection as the pile sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Waiting to connect at the given instant.
    Idle {
        connect_at: Instant,
    },
    Connecting,
    Online {
        since: Instant,
    },
    /// The cable is pulled, until the instant or until restored.
    NetworkDown {
        until: Option<Instant>,
    },
    /// No power until the instant.
    PoweredOff {
        until: Instant,
    },
}

impl Link {
    pub fn name(&self) -> &'static str {
        match self {
            Link::Idle { .. } => "waiting_to_connect",
            Link::Connecting => "connecting",
            Link::Online { .. } => "online",
            Link::NetworkDown { .. } => "network_down",
            Link::PoweredOff { .. } => "powered_off",
        }
    }
}

/// A charge in progress on a port.
#[derive(Debug, Clone)]
pub struct Charge {
    pub order: Order,
    pub origin: Origin,
    pub target: Target,
    pub stop_on_full: bool,
    pub max_duration: Option<Duration>,
    pub started_at: Instant,
    pub start_unix: u64,
    pub charger: ChargerModel,
    /// The charger model has been advanced up to here.
    last_update: Instant,
    last_sample_energy_wh: f64,
    min_power_w: Option<f64>,
    /// A charge by money: the socket's own meter and when it stops.
    pub billing: Option<Billing>,
    pub meter: Meter,
    /// AP3000: the message ID the settlement (and every resend) will carry.
    msg_id: u16,
}

impl Charge {
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started_at)
    }

    /// The billing tier in force at `last_update` (charges by money only).
    fn billing_tier(&self, clock: SimClock) -> Option<usize> {
        let b = self.billing.as_ref()?;
        let settle = self.meter.settle_power_w.max(self.charger.power_w());
        Some(b.tier(settle, clock.unix_s(self.last_update)))
    }

    /// How long after `last_update` the money runs out (within `horizon` for
    /// charges priced by energy), for a charge by money.
    fn money_out(&self, plugged: bool, horizon: Duration, clock: SimClock) -> Option<Duration> {
        let b = self.billing.as_ref()?;
        let tier = self.billing_tier(clock)?;
        match b.wh_left(&self.meter, tier) {
            // Priced by energy only: exactly when the energy is reached.
            Some(wh) if plugged => {
                let target = self.charger.energy_wh() + wh;
                self.charger.time_to_energy(target, horizon)
            }
            Some(_) => None,
            None => {
                let wh_per_s = if plugged {
                    self.charger.power_w() / 3600.0
                } else {
                    0.0
                };
                let secs = b.secs_left(&self.meter, tier, wh_per_s)?;
                // Whole milliseconds, rounded up: never before the money is gone.
                Some(Duration::from_millis(
                    (secs * 1000.0).ceil().min(1e15) as u64
                ))
            }
        }
    }
}

/// One port (platform numbering).
#[derive(Debug, Clone)]
pub struct Port {
    pub no: u16,
    pub plugged: bool,
    /// The battery on this port was charged full and is still plugged.
    pub full: bool,
    /// When the virtual user will plug in (BKV, after a start).
    pub plug_at: Option<Instant>,
    pub charge: Option<Charge>,
}

/// Errors of control operations.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PileError {
    #[error("no port {port} on this pile (it has {ports})")]
    NoSuchPort { port: u16, ports: u16 },
    #[error("the pile is powered off")]
    PoweredOff,
}

/// Counters of one pile's life.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PileStats {
    pub connects: u64,
    pub frames_up: u64,
    pub frames_down: u64,
    pub diagnostics: u64,
    pub records_sent: u64,
    pub records_acked: u64,
    /// AP3000 commands received again with a message ID already run (answered, not re-run).
    pub repeated_commands: u64,
}

/// Everything about a pile but its codec (which reads it to encode).
pub struct PileState {
    pub id: String,
    pub index: u32,
    pub family: Family,
    pub iccid: String,
    pub cfg: Arc<PileConfig>,
    pub ports: Vec<Port>,
    pub replay: ReplayStore<RecordKey, Record>,
    pub link: Link,
    pub faults: Faults,
    pub registered: bool,
    pub stats: PileStats,
    rng: ChaCha8Rng,
    /// Messages to send; `true` marks delayed answers that already waited.
    outbox: Vec<(Up, bool)>,
    delayed: Vec<(Instant, Up)>,
    /// BKV sockets whose state changed since the last status report.
    dirty_sockets: Vec<u8>,
    actions: Vec<Action>,
    next_heartbeat: Instant,
    next_register: Option<Instant>,
    last_tx: Instant,
    next_business_no: u16,
    next_msg_id: u16,
    progress_n: u32,
    merge: Vec<u8>,
    merged: usize,
    merge_flush_at: Option<Instant>,
    frames: VecDeque<FrameLog>,
    rbuf: BytesMut,
    /// Send times of unanswered heartbeats, oldest first (only with an observer).
    heartbeats_sent: VecDeque<Instant>,
    /// An AP3000 0x96 locate plays until then.
    pub locate_until: Option<Instant>,
    /// AP3000: the last start/stop commands run, by message ID, with the answer given. The
    /// vendor's rule (§1.03) is that a resent command carries the same message ID "to prevent
    /// repeated commands": a command seen again is answered as before and not run twice. Kept
    /// in RAM (a power outage forgets it; a network drop does not).
    answered: VecDeque<(u32, Up)>,
    /// Ground truth for the seeded fault simulation (`pile-faultsim`): when `Some`, every
    /// charge that ends is logged here with its end instant. Off (`None`) in fleets.
    #[doc(hidden)]
    pub ends_log: Option<Vec<(Instant, EndRecord)>>,
}

/// A virtual pile: state plus the codec of its family.
pub struct Pile {
    pub state: PileState,
    codec: Box<dyn Codec>,
}

impl PileState {
    /// A fresh message ID / sequence for an uplink frame (never 0).
    pub fn next_msg_id(&mut self) -> u16 {
        self.next_msg_id = self.next_msg_id.wrapping_add(1).max(1);
        self.next_msg_id
    }

    fn next_business_no(&mut self) -> u16 {
        self.next_business_no = self.next_business_no.wrapping_add(1).max(1);
        self.next_business_no
    }

    pub fn is_online(&self) -> bool {
        matches!(self.link, Link::Online { .. })
    }

    pub fn port(&self, port_no: u16) -> Option<&Port> {
        self.ports.get(usize::from(port_no).checked_sub(1)?)
    }

    fn port_index(&self, port_no: u16) -> Result<usize, PileError> {
        let idx = usize::from(port_no).wrapping_sub(1);
        if idx < self.ports.len() {
            Ok(idx)
        } else {
            Err(PileError::NoSuchPort {
                port: port_no,
                ports: self.cfg.ports,
            })
        }
    }

    /// BKV sockets in use (two holes each).
    pub fn socket_count(&self) -> u8 {
        u8::try_from(self.ports.len().div_ceil(2)).unwrap_or(u8::MAX)
    }

    /// The BKV socket a port belongs to.
    pub fn socket_of(port_no: u16) -> u8 {
        pile_protocol::port::bkv_socket_hole(port_no)
            .map(|(s, _)| s)
            .unwrap_or(1)
    }

    /// Whether the connection is up and nothing stops frames from flowing.
    pub fn can_talk(&self, now: Instant) -> bool {
        self.is_online() && !self.faults.is_active(FaultKind::BlackHole, now)
    }

    /// Whether stored records may be sent now (AP3000 waits for its
    /// registration to be answered).
    fn ready_for_records(&self, now: Instant) -> bool {
        self.can_talk(now) && (self.family == Family::Bkv || self.registered)
    }

    fn say(&mut self, up: Up) {
        self.outbox.push((up, false));
    }

    /// How many AP3000 commands a pile remembers by message ID.
    const ANSWERED: usize = 8;

    /// An AP3000 command whose message ID was run before: answered again as then.
    fn answer_again(&mut self, msg_id: u32) -> bool {
        if self.family != Family::Ap3000 {
            return false;
        }
        let Some(up) = self
            .answered
            .iter()
            .find(|(id, _)| *id == msg_id)
            .map(|(_, up)| up.clone())
        else {
            return false;
        };
        self.stats.repeated_commands += 1;
        self.say(up);
        true
    }

    fn say_and_remember(&mut self, msg_id: u32, up: Up) {
        if self.family == Family::Ap3000 {
            if self.answered.len() == Self::ANSWERED {
                self.answered.pop_front();
            }
            self.answered.push_back((msg_id, up.clone()));
        }
        self.say(up);
    }

    /// A port's state changed: BKV reports its socket (after any answer
    /// being sent in the same step).
    fn note_change(&mut self, port_no: u16) {
        if self.family == Family::Bkv {
            let socket = Self::socket_of(port_no);
            if !self.dirty_sockets.contains(&socket) {
                self.dirty_sockets.push(socket);
            }
        }
    }

    /// Runs every charge forward to `now`, ending those whose target,
    /// battery or time limit was reached on the way, at the exact instant.
    fn advance_charges(&mut self, now: Instant) {
        let clock = self.cfg.clock;
        for i in 0..self.ports.len() {
            let plugged = self.ports[i].plugged;
            let Some(ch) = self.ports[i].charge.as_mut() else {
                continue;
            };
            let span = now.saturating_duration_since(ch.last_update);
            let mut end: Option<(Duration, EndReason)> = None;
            let mut consider = |d: Duration, r: EndReason| {
                if d <= span && end.is_none_or(|(e, _)| d < e) {
                    end = Some((d, r));
                }
            };
            let since_start = ch.last_update.saturating_duration_since(ch.started_at);
            if let Target::Time { secs } = ch.target {
                consider(
                    Duration::from_secs(secs).saturating_sub(since_start),
                    EndReason::TimeReached,
                );
            }
            if let Some(max) = ch.max_duration {
                consider(max.saturating_sub(since_start), EndReason::MaxTime);
            }
            if plugged {
                if let Target::Energy { wh } = ch.target {
                    if let Some(d) = ch.charger.time_to_energy(wh, span) {
                        consider(d, EndReason::EnergyReached);
                    }
                }
                if ch.stop_on_full {
                    if let Some(d) = ch.charger.time_to_full(span) {
                        consider(d, EndReason::Full);
                    }
                }
            } else if self.family == Family::Bkv && ch.charger.elapsed().is_zero() {
                // Started but never loaded: the socket gives up.
                consider(
                    BKV_NO_LOAD_TIMEOUT.saturating_sub(since_start),
                    EndReason::NoLoad,
                );
            }
            let tier = ch.billing_tier(clock);
            if let Some(d) = ch.money_out(plugged, span, clock) {
                consider(d, EndReason::AmountUsedUp);
            }
            let step = end.map_or(span, |(d, _)| d);
            let energy_before = ch.charger.energy_wh();
            if plugged {
                ch.charger.advance(step);
            }
            ch.last_update += step;
            if let (Some(b), Some(tier)) = (&ch.billing, tier) {
                let wh = ch.charger.energy_wh() - energy_before;
                b.accrue(&mut ch.meter, tier, step.as_secs_f64(), wh);
            }
            ch.meter.settle_power_w = ch.meter.settle_power_w.max(ch.charger.max_power_w());
            if let Some((_, reason)) = end {
                let at = ch.last_update;
                self.end_charge(i, at, reason);
            }
        }
    }

    /// The end record of a charge ending at `at` for `reason`.
    fn end_record(
        &self,
        port_no: u16,
        ch: &Charge,
        at: Instant,
        reason: EndReason,
        msg_id: u16,
    ) -> EndRecord {
        let elapsed = at.saturating_duration_since(ch.started_at);
        let m = &ch.charger;
        EndRecord {
            port_no,
            order: ch.order,
            origin: ch.origin,
            reason,
            duration_s: (elapsed.as_millis() as u64 + 500) / 1000,
            energy_wh: m.energy_wh(),
            power_w: m.power_w(),
            max_power_w: m.max_power_w(),
            current_a: m.current_a(),
            voltage_v: m.voltage_v(),
            start_unix: ch.start_unix,
            end_unix: self.cfg.clock.unix_s(at),
            msg_id,
            billing: ch.billing.as_ref().map(|b| b.summary(&ch.meter)),
        }
    }

    /// Writes a snapshot of every running charge to the EEPROM: the end
    /// record it would get if the power went now.
    fn persist_running(&mut self, at: Instant) {
        let Some(eeprom) = self.cfg.eeprom.clone() else {
            return;
        };
        for i in 0..self.ports.len() {
            let port_no = self.ports[i].no;
            if let Some(ch) = &self.ports[i].charge {
                let rec = self.end_record(port_no, ch, at, EndReason::PowerOutage, ch.msg_id);
                eeprom.running(&self.id, &rec);
            }
        }
    }

    /// Stores end records a previous run left in the EEPROM, to be sent as
    /// after a power outage.
    pub fn restore(&mut self, records: Vec<EndRecord>) {
        for record in records {
            let key = RecordKey {
                kind: RecordKind::End,
                port_no: record.port_no,
                order: record.order,
                n: 0,
            };
            self.replay.push(key, Record::End(record));
        }
    }

    /// Ends the charge on port index `i` at `at`, storing its end record.
    fn end_charge(&mut self, i: usize, at: Instant, reason: EndReason) {
        let Some(ch) = self.ports[i].charge.take() else {
            return;
        };
        let port_no = self.ports[i].no;
        let record = self.end_record(port_no, &ch, at, reason, ch.msg_id);
        if let Some(log) = &mut self.ends_log {
            log.push((at, record.clone()));
        }
        let key = RecordKey {
            kind: RecordKind::End,
            port_no,
            order: ch.order,
            n: 0,
        };
        // Into the EEPROM before it is first sent.
        if let Some(eeprom) = &self.cfg.eeprom {
            eeprom.end(&self.id, &record);
        }
        self.replay.push(key, Record::End(record));
        let port = &mut self.ports[i];
        port.plug_at = None;
        port.full = reason == EndReason::Full && port.plugged;
        if self.family == Family::Bkv {
            // The user takes the bike away when a BKV charge ends.
            port.plugged = false;
        }
        self.note_change(port_no);
    }

    fn progress_sample(&mut self, i: usize, now: Instant) -> Option<ProgressRecord> {
        let msg_id = self.next_msg_id();
        let unix = self.cfg.clock.unix_s(now);
        let port_no = self.ports[i].no;
        let ch = self.ports[i].charge.as_mut()?;
        let m = &ch.charger;
        let power = m.power_w();
        let min = ch.min_power_w.map_or(power, |p| p.min(power));
        ch.min_power_w = Some(min);
        let sample = ProgressRecord {
            port_no,
            order: ch.order,
            origin: ch.origin,
            duration_s: ch.elapsed(now).as_secs(),
            energy_wh: m.energy_wh(),
            period_energy_wh: (m.energy_wh() - ch.last_sample_energy_wh).max(0.0),
            power_w: power,
            max_power_w: m.max_power_w(),
            min_power_w: min,
            avg_power_w: m.avg_power_w(),
            voltage_v: m.voltage_v(),
            current_a: m.current_a(),
            at_unix: unix,
            msg_id,
        };
        ch.last_sample_energy_wh = m.energy_wh();
        Some(sample)
    }

    fn on_heartbeat_timer(&mut self, now: Instant) {
        self.next_heartbeat += self.cfg.heartbeat;
        if self.next_heartbeat <= now {
            self.next_heartbeat = now + self.cfg.heartbeat;
        }
        self.persist_running(now);
        let talking = self.can_talk(now);
        match self.family {
            Family::Bkv => {
                if talking {
                    self.say(Up::Heartbeat);
                    let mut sockets: Vec<u8> = self
                        .ports
                        .iter()
                        .filter(|p| p.charge.is_some())
                        .map(|p| Self::socket_of(p.no))
                        .collect();
                    sockets.dedup();
                    for socket in sockets {
                        self.say(Up::Status { socket });
                    }
                }
            }
            Family::Ap3000 => {
                if talking && self.registered {
                    self.say(Up::Heartbeat);
                }
                for i in 0..self.ports.len() {
                    if self.ports[i].charge.is_none() {
                        continue;
                    }
                    let Some(sample) = self.progress_sample(i, now) else {
                        continue;
                    };
                    if talking && self.registered {
                        self.say(Up::Progress(sample));
                    } else {
                        self.progress_n = self.progress_n.wrapping_add(1);
                        let key = RecordKey {
                            kind: RecordKind::Progress,
                            port_no: sample.port_no,
                            order: sample.order,
                            n: self.progress_n,
                        };
                        self.replay.push_progress(key, Record::Progress(sample));
                    }
                }
            }
        }
    }

    fn start_charge(
        &mut self,
        now: Instant,
        req: &StartRequest,
    ) -> (CommandResult, Option<u16>, Option<Order>) {
        let port_no = match req.port {
            PortSel::Port(n) => n,
            PortSel::Invalid => return (CommandResult::NoSuchPort, None, req.order),
            PortSel::Any => {
                let waiting: Vec<u16> = self
                    .ports
                    .iter()
                    .filter(|p| p.plugged && p.charge.is_none())
                    .map(|p| p.no)
                    .collect();
                match waiting.as_slice() {
                    [] => return (CommandResult::NoChargerPlugged, None, req.order),
                    [one] => *one,
                    many => {
                        let bits = many
                            .iter()
                            .filter(|n| **n <= 16)
                            .fold(0u16, |acc, n| acc | (1 << (n - 1)));
                        return (
                            CommandResult::SeveralWaiting { ports: bits },
                            None,
                            req.order,
                        );
                    }
                }
            }
        };
        let Ok(i) = self.port_index(port_no) else {
            return (CommandResult::NoSuchPort, Some(port_no), req.order);
        };
        if self.faults.is_active(FaultKind::Refuse, now) {
            return (CommandResult::OverPower, Some(port_no), req.order);
        }
        if self.ports[i].charge.is_some() {
            return (CommandResult::SameState, Some(port_no), req.order);
        }
        if self.family == Family::Ap3000 && !self.ports[i].plugged {
            return (CommandResult::NoChargerPlugged, Some(port_no), req.order);
        }
        let order = match req.order {
            Some(o) => o,
            None => Order::Bkv(self.next_business_no()),
        };
        let msg_id = self.next_msg_id();
        let params = ChargerParams::draw(self.cfg.power_w, &mut self.rng);
        let charge = Charge {
            order,
            origin: req.origin,
            target: req.target,
            stop_on_full: req.stop_on_full,
            max_duration: req.max_duration,
            started_at: now,
            start_unix: self.cfg.clock.unix_s(now),
            charger: ChargerModel::new(params),
            last_update: now,
            last_sample_energy_wh: 0.0,
            min_power_w: None,
            billing: req.billing.clone(),
            meter: Meter::default(),
            msg_id,
        };
        let port = &mut self.ports[i];
        port.charge = Some(charge);
        port.full = false;
        if !port.plugged {
            // The port lights up; the user plugs in a moment later.
            port.plug_at = Some(now + self.cfg.plug_delay);
        }
        self.note_change(port_no);
        self.persist_running(now);
        (CommandResult::Done, Some(port_no), Some(order))
    }

    /// Stops a charge on the server's command. `None`: ignored (an AP3000
    /// stop whose order number is not the running one).
    fn stop_charge(
        &mut self,
        now: Instant,
        port: PortSel,
        order: Option<Order>,
    ) -> Option<(CommandResult, Option<u16>, Option<Order>)> {
        let port_no = match port {
            PortSel::Port(n) => n,
            PortSel::Any | PortSel::Invalid => {
                return Some((CommandResult::NoSuchPort, None, order));
            }
        };
        let Ok(i) = self.port_index(port_no) else {
            return Some((CommandResult::NoSuchPort, Some(port_no), order));
        };
        self.advance_charges(now);
        let Some(running) = self.ports[i].charge.as_ref().map(|c| c.order) else {
            return Some((CommandResult::SameState, Some(port_no), order));
        };
        if self.family == Family::Ap3000 && order.is_some_and(|o| o != running) {
            return None;
        }
        self.end_charge(i, now, EndReason::RemoteStop);
        Some((CommandResult::Done, Some(port_no), Some(running)))
    }

    fn handle_down(&mut self, now: Instant, down: Down) {
        match down {
            Down::HeartbeatAck => {
                if let (Some(sent), Some(obs)) =
                    (self.heartbeats_sent.pop_front(), &self.cfg.observer)
                {
                    obs.0
                        .heartbeat_rtt(self.index, now.saturating_duration_since(sent));
                }
            }
            Down::TimeAck | Down::StatusAck | Down::Ignored => {}
            Down::RegisterAck => {
                if !self.registered {
                    self.registered = true;
                    self.next_register = None;
                    self.say(Up::GetTime);
                    self.say(Up::Heartbeat);
                    self.next_heartbeat = now + self.cfg.heartbeat;
                }
            }
            Down::Query => {
                self.say(Up::Register);
                self.say(Up::Heartbeat);
            }
            Down::Locate { ctx, seconds } => {
                self.locate_until = Some(now + Duration::from_secs(u64::from(seconds)));
                self.say(Up::SettingAck {
                    ctx,
                    command: 0x96,
                    socket: None,
                    ok: true,
                });
            }
            Down::Setting {
                ctx,
                command,
                socket,
            } => {
                // A socket the gateway does not have is refused.
                let ok = socket.is_none_or(|s| (1..=self.socket_count()).contains(&s));
                self.say(Up::SettingAck {
                    ctx,
                    command,
                    socket,
                    ok,
                });
            }
            Down::Start { ctx, req } => {
                if self.answer_again(ctx.seq) {
                    return;
                }
                if let Some(obs) = &self.cfg.observer {
                    let port = match req.port {
                        PortSel::Port(n) => Some(n),
                        PortSel::Any | PortSel::Invalid => None,
                    };
                    obs.0
                        .command(self.index, crate::observe::CommandKind::Start, port);
                }
                self.advance_charges(now);
                let (result, port_no, order) = self.start_charge(now, &req);
                self.say_and_remember(
                    ctx.seq,
                    Up::StartReply {
                        ctx,
                        origin: req.origin,
                        port_no,
                        result,
                        order,
                    },
                );
            }
            Down::Stop {
                ctx,
                origin,
                port,
                order,
            } => {
                if self.answer_again(ctx.seq) {
                    return;
                }
                if let Some(obs) = &self.cfg.observer {
                    let port_no = match port {
                        PortSel::Port(n) => Some(n),
                        PortSel::Any | PortSel::Invalid => None,
                    };
                    obs.0
                        .command(self.index, crate::observe::CommandKind::Stop, port_no);
                }
                if let Some((result, port_no, order)) = self.stop_charge(now, port, order) {
                    self.say_and_remember(
                        ctx.seq,
                        Up::StopReply {
                            ctx,
                            origin,
                            port_no,
                            result,
                            order,
                        },
                    );
                }
            }
            Down::QuerySocket { ctx, socket } => {
                // A socket the gateway has not networked cannot be reached
                // over the radio: no answer (the server times out).
                if (1..=self.socket_count()).contains(&socket) {
                    self.advance_charges(now);
                    self.say(Up::SocketState { ctx, socket });
                }
            }
            Down::EndAck(m) => {
                let acked = self.replay.ack_where(|_, r| match (r, m) {
                    (Record::End(e), AckMatch::MsgId(id)) => e.msg_id == id,
                    (Record::End(e), AckMatch::Port { port_no, origin }) => {
                        e.port_no == port_no && e.origin == origin
                    }
                    _ => false,
                });
                if let Some(Record::End(e)) = &acked {
                    self.stats.records_acked += 1;
                    if let Some(eeprom) = &self.cfg.eeprom {
                        eeprom.acked(&self.id, e.port_no, e.order);
                    }
                }
            }
        }
    }

    fn log_frame(&mut self, now: Instant, dir: Direction, raw: Bytes) {
        if self.cfg.frames_kept == 0 {
            return;
        }
        if self.frames.len() >= self.cfg.frames_kept {
            self.frames.pop_front();
        }
        self.frames.push_back(FrameLog {
            at_unix_ms: self.cfg.clock.unix_ms(now),
            dir,
            raw,
        });
    }

    fn garbage(&mut self) -> Vec<u8> {
        let len = self.rng.gen_range(1..=8);
        (0..len)
            .map(|_| loop {
                let b: u8 = self.rng.gen();
                // Nothing that could start a frame or an ICCID/keep-alive.
                if !matches!(b, 0xFC | b'D' | b'l' | b'0'..=b'9') {
                    break b;
                }
            })
            .collect()
    }

    fn flush_merged(&mut self) {
        if !self.merge.is_empty() {
            let bytes = Bytes::from(std::mem::take(&mut self.merge));
            self.actions.push(Action::Write(bytes));
        }
        self.merged = 0;
        self.merge_flush_at = None;
    }

    /// Puts one encoded frame on the wire through the active faults.
    fn transmit(&mut self, now: Instant, frame: Bytes, codec: &dyn Codec) {
        self.log_frame(now, Direction::Up, frame.clone());
        self.stats.frames_up += 1;
        self.last_tx = now;
        let mut bytes = frame.to_vec();
        if self.faults.is_active(FaultKind::BadChecksum, now) {
            codec.corrupt_checksum(&mut bytes);
        }
        if self.faults.is_active(FaultKind::Garbage, now) {
            let mut g = self.garbage();
            g.extend_from_slice(&bytes);
            bytes = g;
        }
        let copies = if self.faults.is_active(FaultKind::DuplicateFrames, now) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            if self.faults.is_active(FaultKind::MergeFrames, now) {
                self.merge.extend_from_slice(&bytes);
                self.merged += 1;
                if self.merged >= MERGE_FRAMES {
                    self.flush_merged();
                } else if self.merge_flush_at.is_none() {
                    self.merge_flush_at = Some(now + MERGE_WINDOW);
                }
            } else {
                self.flush_merged();
                let b = Bytes::from(bytes.clone());
                if self.faults.is_active(FaultKind::SplitBytes, now) {
                    self.actions.push(Action::WriteSplit(b));
                } else {
                    self.actions.push(Action::Write(b));
                }
            }
        }
    }

    fn go_offline(&mut self) {
        self.registered = false;
        self.next_register = None;
        self.delayed.clear();
        self.outbox.clear();
        self.dirty_sockets.clear();
        self.merge.clear();
        self.merged = 0;
        self.merge_flush_at = None;
        self.rbuf.clear();
    }
}

impl Pile {
    pub fn new(
        id: String,
        index: u32,
        family: Family,
        cfg: Arc<PileConfig>,
        mut rng: ChaCha8Rng,
        codec: Box<dyn Codec>,
        connect_at: Instant,
    ) -> Self {
        let iccid = format!("8986{:016}", rng.gen_range(0..10_000_000_000_000_000u64));
        let ports = (1..=cfg.ports)
            .map(|no| Port {
                no,
                // AP3000 ports start with a charger plugged in.
                plugged: family == Family::Ap3000,
                full: false,
                plug_at: None,
                charge: None,
            })
            .collect();
        let next_business_no = rng.gen();
        let next_msg_id = rng.gen();
        let progress_kept = cfg.progress_kept;
        Pile {
            state: PileState {
                id,
                index,
                family,
                iccid,
                ports,
                replay: ReplayStore::new(progress_kept),
                link: Link::Idle { connect_at },
                faults: Faults::default(),
                registered: false,
                stats: PileStats::default(),
                rng,
                outbox: Vec::new(),
                delayed: Vec::new(),
                dirty_sockets: Vec::new(),
                actions: Vec::new(),
                next_heartbeat: connect_at + cfg.heartbeat,
                next_register: None,
                last_tx: connect_at,
                next_business_no,
                next_msg_id,
                progress_n: 0,
                merge: Vec::new(),
                merged: 0,
                merge_flush_at: None,
                frames: VecDeque::new(),
                rbuf: BytesMut::new(),
                heartbeats_sent: VecDeque::new(),
                locate_until: None,
                answered: VecDeque::new(),
                ends_log: None,
                cfg,
            },
            codec,
        }
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// Takes back what a previous run left in the EEPROM (see
    /// [`crate::eeprom::Eeprom::restore`]): sent once the pile is online.
    pub fn restore(&mut self, records: Vec<EndRecord>) {
        self.state.restore(records);
    }

    /// Whether the driver should read from the socket.
    pub fn wants_read(&self, now: Instant) -> bool {
        self.state.can_talk(now)
    }

    /// Handles everything due at `now` and returns what the driver must do.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let s = &mut self.state;
        s.faults.expire(now);
        match s.link {
            Link::NetworkDown { until: Some(until) } if until <= now => {
                s.link = Link::Idle {
                    connect_at: now + s.cfg.reconnect_delay,
                };
            }
            Link::PoweredOff { until } if until <= now => {
                // The pile boots and dials in after its start-up time.
                s.link = Link::Idle {
                    connect_at: now + s.cfg.reconnect_delay,
                };
            }
            Link::Idle { connect_at } if connect_at <= now => {
                s.link = Link::Connecting;
                s.actions.push(Action::Connect);
            }
            _ => {}
        }
        let powered = !matches!(s.link, Link::PoweredOff { .. });
        if powered {
            s.advance_charges(now);
            for i in 0..s.ports.len() {
                if s.ports[i].plug_at.is_some_and(|at| at <= now) {
                    s.ports[i].plug_at = None;
                    s.ports[i].plugged = true;
                    if let Some(ch) = s.ports[i].charge.as_mut() {
                        // No energy flowed before the plug went in.
                        ch.last_update = now;
                    }
                    let no = s.ports[i].no;
                    s.note_change(no);
                }
            }
            if s.next_heartbeat <= now {
                s.on_heartbeat_timer(now);
            }
            if s.can_talk(now) {
                if s.next_register.is_some_and(|at| at <= now) {
                    s.say(Up::Register);
                    s.next_register = Some(now + s.cfg.heartbeat);
                }
                if s.family == Family::Ap3000 && now >= s.last_tx + s.cfg.link_after {
                    s.say(Up::Link);
                }
            }
            if s.ready_for_records(now) {
                for (_, record) in s.replay.take_due(now, s.cfg.resend_after) {
                    s.stats.records_sent += 1;
                    match record {
                        Record::End(e) => s.say(Up::End(e)),
                        Record::Progress(p) => s.say(Up::Progress(p)),
                    }
                }
            }
            let mut i = 0;
            while i < s.delayed.len() {
                if s.delayed[i].0 <= now {
                    let (_, up) = s.delayed.remove(i);
                    s.outbox.push((up, true));
                } else {
                    i += 1;
                }
            }
        }
        let s = &mut self.state;
        for socket in std::mem::take(&mut s.dirty_sockets) {
            if s.can_talk(now) && !s.outbox.iter().any(|(u, _)| *u == Up::Status { socket }) {
                s.say(Up::Status { socket });
            }
        }
        self.encode_outbox(now);
        let s = &mut self.state;
        if s.merge_flush_at.is_some_and(|at| at <= now)
            || (!s.merge.is_empty() && !s.faults.is_active(FaultKind::MergeFrames, now))
        {
            s.flush_merged();
        }
        std::mem::take(&mut s.actions)
    }

    fn encode_outbox(&mut self, now: Instant) {
        let outbox = std::mem::take(&mut self.state.outbox);
        for (up, waited) in outbox {
            let s = &mut self.state;
            if !s.can_talk(now) {
                continue;
            }
            if up.is_answer() && !waited {
                if s.faults.is_active(FaultKind::MissingAnswers, now) {
                    continue;
                }
                if s.faults.is_active(FaultKind::DelayAnswers, now) {
                    s.delayed.push((now + s.cfg.answer_delay, up));
                    continue;
                }
            }
            if up == Up::Link {
                self.state.last_tx = now;
                self.state
                    .actions
                    .push(Action::Write(Bytes::from_static(b"link")));
                self.state
                    .log_frame(now, Direction::Up, Bytes::from_static(b"link"));
                continue;
            }
            if let Some(frame) = self.codec.encode(&self.state, &up, now) {
                let s = &mut self.state;
                if up == Up::Heartbeat && s.cfg.observer.is_some() {
                    // Bounded: a gateway that never answers leaves at most 8.
                    if s.heartbeats_sent.len() >= 8 {
                        s.heartbeats_sent.pop_front();
                    }
                    s.heartbeats_sent.push_back(now);
                }
                self.state.transmit(now, frame, &*self.codec);
            }
        }
    }

    /// The earliest instant at which [`Pile::poll`] has something to do.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let s = &self.state;
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| {
            next = Some(next.map_or(t, |n: Instant| n.min(t)));
        };
        match s.link {
            Link::Idle { connect_at } => at(connect_at),
            Link::NetworkDown { until: Some(until) } => at(until),
            Link::PoweredOff { until } => {
                at(until);
                return next;
            }
            _ => {}
        }
        if !s.actions.is_empty() || !s.outbox.is_empty() {
            at(now);
        }
        at(s.next_heartbeat);
        if let Some(t) = s.faults.next_expiry() {
            at(t);
        }
        if let Some(t) = s.merge_flush_at {
            at(t);
        }
        for (t, _) in &s.delayed {
            at(*t);
        }
        if s.can_talk(now) {
            if let Some(t) = s.next_register {
                at(t);
            }
            if s.family == Family::Ap3000 {
                at(s.last_tx + s.cfg.link_after);
            }
        }
        if s.ready_for_records(now) {
            if s.replay.has_unsent() {
                at(now);
            } else if let Some(t) = s.replay.next_due(s.cfg.resend_after) {
                at(t);
            }
        }
        let horizon = s.cfg.heartbeat;
        for p in &s.ports {
            if let Some(t) = p.plug_at {
                at(t);
            }
            let Some(ch) = &p.charge else { continue };
            if let Target::Time { secs } = ch.target {
                at(ch.started_at + Duration::from_secs(secs));
            }
            if let Some(max) = ch.max_duration {
                at(ch.started_at + max);
            }
            if p.plugged {
                let base = ch.last_update;
                if let Target::Energy { wh } = ch.target {
                    if let Some(d) = ch.charger.time_to_energy(wh, horizon) {
                        at(base + d);
                    }
                }
                if ch.stop_on_full {
                    if let Some(d) = ch.charger.time_to_full(horizon) {
                        at(base + d);
                    }
                }
            } else if s.family == Family::Bkv && ch.charger.elapsed().is_zero() {
                at(ch.started_at + BKV_NO_LOAD_TIMEOUT);
            }
            if let Some(d) = ch.money_out(p.plugged, horizon, s.cfg.clock) {
                at(ch.last_update + d);
            }
        }
        next
    }

    /// The driver connected: the pile introduces itself.
    pub fn on_connected(&mut self, now: Instant) -> Vec<Action> {
        let s = &mut self.state;
        if s.link != Link::Connecting {
            // The network went down or the power out while connecting.
            return vec![Action::Abandon];
        }
        s.link = Link::Online { since: now };
        s.stats.connects += 1;
        s.heartbeats_sent.clear();
        s.go_offline();
        s.last_tx = now;
        s.replay.mark_all_unsent();
        match s.family {
            Family::Bkv => {
                s.say(Up::Heartbeat);
                for socket in 1..=s.socket_count() {
                    s.say(Up::Status { socket });
                }
            }
            Family::Ap3000 => {
                s.say(Up::Iccid);
                s.say(Up::Register);
                s.next_register = Some(now + s.cfg.heartbeat);
            }
        }
        s.next_heartbeat = now + s.cfg.heartbeat;
        self.poll(now)
    }

    pub fn on_connect_failed(&mut self, now: Instant) {
        let s = &mut self.state;
        if s.link == Link::Connecting {
            s.link = Link::Idle {
                connect_at: now + s.cfg.reconnect_delay,
            };
        }
    }

    /// The server closed the connection or it failed.
    pub fn on_disconnected(&mut self, now: Instant) {
        let s = &mut self.state;
        if s.is_online() {
            s.link = Link::Idle {
                connect_at: now + s.cfg.reconnect_delay,
            };
            s.go_offline();
        }
    }

    /// Bytes arrived from the server.
    pub fn on_bytes(&mut self, now: Instant, data: &[u8]) -> Vec<Action> {
        if !self.state.can_talk(now) {
            return Vec::new();
        }
        self.state.rbuf.extend_from_slice(data);
        let mut items = Vec::new();
        let mut rbuf = std::mem::take(&mut self.state.rbuf);
        self.codec.decode(&self.state, &mut rbuf, &mut items);
        if rbuf.len() > MAX_READ_BUFFER {
            rbuf.clear();
        }
        self.state.rbuf = rbuf;
        for item in items {
            self.state.log_frame(now, Direction::Down, item.raw);
            match item.down {
                Some(down) => {
                    self.state.stats.frames_down += 1;
                    self.state.handle_down(now, down);
                }
                None => self.state.stats.diagnostics += 1,
            }
        }
        self.poll(now)
    }

    /// The user (or a control call) plugs a charger into a port.
    pub fn plug(&mut self, now: Instant, port_no: u16) -> Result<(), PileError> {
        let s = &mut self.state;
        let i = s.port_index(port_no)?;
        s.advance_charges(now);
        let port = &mut s.ports[i];
        port.plug_at = None;
        if !port.plugged {
            port.plugged = true;
            port.full = false;
            if let Some(ch) = port.charge.as_mut() {
                ch.last_update = now;
            }
            s.note_change(port_no);
        }
        Ok(())
    }

    /// The user (or a control call) pulls the plug; a running charge ends.
    pub fn unplug(&mut self, now: Instant, port_no: u16) -> Result<(), PileError> {
        let s = &mut self.state;
        let i = s.port_index(port_no)?;
        s.advance_charges(now);
        s.ports[i].plug_at = None;
        let was_plugged = s.ports[i].plugged;
        s.ports[i].plugged = false;
        s.ports[i].full = false;
        if s.ports[i].charge.is_some() && was_plugged {
            s.end_charge(i, now, EndReason::Unplugged);
        } else if was_plugged {
            s.note_change(port_no);
        }
        Ok(())
    }

    /// The pile's controller resets and comes back at once, still online, with every charge
    /// forgotten: no end record is kept (a pile without EEPROM), its ports report idle from
    /// now on. What the gateway must settle by reconciliation (pile-scenarios B.3).
    pub fn lose_charges(&mut self, now: Instant) {
        let s = &mut self.state;
        s.advance_charges(now);
        for i in 0..s.ports.len() {
            if s.ports[i].charge.take().is_some() {
                s.ports[i].plug_at = None;
                s.ports[i].full = false;
                let no = s.ports[i].no;
                s.note_change(no);
            }
        }
    }

    /// Pulls the network cable, for `secs` or until restored.
    pub fn drop_network(&mut self, now: Instant, secs: Option<u64>) {
        let s = &mut self.state;
        if matches!(s.link, Link::PoweredOff { .. }) {
            return;
        }
        s.advance_charges(now);
        if matches!(s.link, Link::Online { .. } | Link::Connecting) {
            s.actions.push(Action::Abandon);
        }
        s.go_offline();
        s.link = Link::NetworkDown {
            until: secs.map(|n| now + Duration::from_secs(n)),
        };
    }

    /// Plugs the network cable back in; the pile reconnects after the delay.
    pub fn restore_network(&mut self, now: Instant) {
        let s = &mut self.state;
        if matches!(s.link, Link::NetworkDown { .. }) {
            s.link = Link::Idle {
                connect_at: now + s.cfg.reconnect_delay,
            };
        }
    }

    /// Closes the connection cleanly; the pile dials in again after the delay.
    pub fn close(&mut self, now: Instant) {
        let s = &mut self.state;
        if s.is_online() {
            s.actions.push(Action::Close);
            s.go_offline();
            s.link = Link::Idle {
                connect_at: now + s.cfg.reconnect_delay,
            };
        }
    }

    /// The power goes out for `secs`: charges are cut (and reported after
    /// the restart), the socket goes silent without a FIN.
    pub fn power_outage(&mut self, now: Instant, secs: u64) {
        let s = &mut self.state;
        s.advance_charges(now);
        for i in 0..s.ports.len() {
            s.ports[i].plug_at = None;
            if s.ports[i].charge.is_some() {
                s.end_charge(i, now, EndReason::PowerOutage);
            }
        }
        if matches!(s.link, Link::Online { .. } | Link::Connecting) {
            s.actions.push(Action::Abandon);
        }
        s.go_offline();
        s.answered.clear();
        s.link = Link::PoweredOff {
            until: now + Duration::from_secs(secs),
        };
    }

    /// Activates a fault for `secs` (network drops and power outages act at once).
    pub fn inject_fault(&mut self, now: Instant, kind: FaultKind, secs: u64) {
        match kind {
            FaultKind::NetworkDrop => self.drop_network(now, Some(secs)),
            FaultKind::PowerOutage => self.power_outage(now, secs),
            _ => {
                let s = &mut self.state;
                s.faults.set(kind, now + Duration::from_secs(secs));
            }
        }
    }

    /// The pile's state as JSON-ready data (charges are brought up to `now`).
    pub fn snapshot(&mut self, now: Instant) -> PileSnapshot {
        let s = &mut self.state;
        if !matches!(s.link, Link::PoweredOff { .. }) {
            s.advance_charges(now);
        }
        let ports = s
            .ports
            .iter()
            .map(|p| {
                let state = match (&p.charge, p.plugged) {
                    (Some(_), false) => "waiting_for_plug",
                    (Some(_), true) => "charging",
                    (None, true) if p.full => "full",
                    (None, true) => "plugged",
                    (None, false) => "idle",
                };
                PortSnapshot {
                    port_no: p.no,
                    plugged: p.plugged,
                    state,
                    charge: p.charge.as_ref().map(|c| ChargeSnapshot {
                        order: c.order,
                        origin: c.origin,
                        target: c.target,
                        elapsed_s: c.elapsed(now).as_secs(),
                        power_w: round2(c.charger.power_w()),
                        energy_wh: round2(c.charger.energy_wh()),
                        energy_cwh: c.charger.energy_cwh_u16(),
                    }),
                }
            })
            .collect();
        PileSnapshot {
            id: s.id.clone(),
            index: s.index,
            family: s.family,
            firmware: self.codec.firmware().to_string(),
            locating: s.locate_until.is_some_and(|t| t > now),
            connection: s.link.name(),
            registered: s.registered,
            ports,
            pending_replay: s.replay.len(),
            pending_acks: s.replay.pending_acks(),
            faults: s
                .faults
                .list(now)
                .into_iter()
                .map(|(kind, secs_left)| FaultSnapshot { kind, secs_left })
                .collect(),
            stats: s.stats.clone(),
        }
    }

    /// Recent frames both ways, oldest first, hex and decoded.
    pub fn frames(&self) -> Vec<FrameSnapshot> {
        self.state
            .frames
            .iter()
            .map(|f| FrameSnapshot {
                at_unix_ms: f.at_unix_ms,
                dir: f.dir,
                hex: hex::encode_upper(&f.raw),
                decoded: self.codec.describe(&f.raw, f.dir),
            })
            .collect()
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[derive(Debug, Clone, Serialize)]
pub struct ChargeSnapshot {
    pub order: Order,
    pub origin: Origin,
    pub target: Target,
    pub elapsed_s: u64,
    pub power_w: f64,
    pub energy_wh: f64,
    pub energy_cwh: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct PortSnapshot {
    pub port_no: u16,
    pub plugged: bool,
    pub state: &'static str,
    pub charge: Option<ChargeSnapshot>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultSnapshot {
    pub kind: FaultKind,
    pub secs_left: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PileSnapshot {
    pub id: String,
    pub index: u32,
    pub family: Family,
    /// `latest` or e.g. `ap3000 V6.1` (`--firmware`).
    pub firmware: String,
    /// An AP3000 0x96 locate is playing.
    pub locating: bool,
    pub connection: &'static str,
    pub registered: bool,
    pub ports: Vec<PortSnapshot>,
    pub pending_replay: usize,
    pub pending_acks: usize,
    pub faults: Vec<FaultSnapshot>,
    pub stats: PileStats,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::ReplyCtx;
    use crate::seed::pile_rng;
    use std::sync::Mutex;

    /// Records what the pile says; frames are the message's debug text.
    struct Recorder(Arc<Mutex<Vec<Up>>>);

    impl Codec for Recorder {
        fn encode(&mut self, _: &PileState, up: &Up, _: Instant) -> Option<Bytes> {
            self.0.lock().unwrap().push(up.clone());
            Some(Bytes::from(format!("<{up:?}>")))
        }
        fn decode(&mut self, _: &PileState, _: &mut BytesMut, _: &mut Vec<Inbound>) {}
        fn corrupt_checksum(&self, frame: &mut [u8]) {
            if let Some(b) = frame.last_mut() {
                *b = b'!';
            }
        }
        fn describe(&self, raw: &[u8], _: Direction) -> String {
            String::from_utf8_lossy(raw).into_owned()
        }
    }

    struct Rig {
        pile: Pile,
        said: Arc<Mutex<Vec<Up>>>,
        t0: Instant,
    }

    fn cfg(t0: Instant) -> Arc<PileConfig> {
        Arc::new(PileConfig {
            ports: 4,
            heartbeat: Duration::from_secs(11),
            reconnect_delay: Duration::from_secs(5),
            plug_delay: Duration::from_secs(2),
            power_w: 200.0,
            resend_after: Duration::from_secs(15),
            link_after: Duration::from_secs(30),
            frames_kept: 8,
            progress_kept: 16,
            answer_delay: Duration::from_secs(5),
            clock: SimClock::new(t0, 1_700_000_000_000),
            observer: None,
            eeprom: None,
        })
    }

    fn rig(family: Family) -> Rig {
        let t0 = Instant::now();
        let said = Arc::new(Mutex::new(Vec::new()));
        let pile = Pile::new(
            "P1".into(),
            0,
            family,
            cfg(t0),
            pile_rng(1, 0),
            Box::new(Recorder(Arc::clone(&said))),
            t0,
        );
        let mut r = Rig { pile, said, t0 };
        assert_eq!(r.pile.poll(t0), vec![Action::Connect]);
        r.pile.on_connected(t0);
        if family == Family::Ap3000 {
            r.down(0, Down::RegisterAck);
        }
        r.take();
        r
    }

    impl Rig {
        fn at(&self, secs: u64) -> Instant {
            self.t0 + Duration::from_secs(secs)
        }
        fn take(&self) -> Vec<Up> {
            std::mem::take(&mut *self.said.lock().unwrap())
        }
        fn down(&mut self, secs: u64, down: Down) -> Vec<Action> {
            let now = self.at(secs);
            self.pile.state.handle_down(now, down);
            self.pile.poll(now)
        }
        fn poll(&mut self, secs: u64) -> Vec<Action> {
            self.pile.poll(self.at(secs))
        }
        fn ends(&self) -> Vec<EndRecord> {
            self.pile
                .state
                .replay
                .iter()
                .filter_map(|e| match &e.record {
                    Record::End(r) => Some(r.clone()),
                    _ => None,
                })
                .collect()
        }
    }

    /// A fresh message ID per command, as a server gives them (an AP3000 pile answers a
    /// repeated one as before without running it again).
    fn ctx() -> ReplyCtx {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(7);
        ReplyCtx {
            seq: SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            tlv_seq: 0,
        }
    }

    #[test]
    fn an_ap3000_command_resent_with_its_message_id_is_answered_again_not_run_again() {
        // Vendor §1.03: a resent command carries the same message ID, to prevent repeats.
        let mut r = rig(Family::Ap3000);
        let o1 = Order::Ap3000([3; 16]);
        let first = start(
            1,
            Target::Time { secs: 30 },
            Origin::Ap3000 { rate_mode: 0 },
            Some(o1),
        );
        let again = first.clone();
        r.down(0, first);
        let answer = r.take();
        assert!(
            matches!(
                answer.as_slice(),
                [Up::StartReply {
                    result: CommandResult::Done,
                    ..
                }]
            ),
            "{answer:?}"
        );
        r.poll(40);
        assert_eq!(r.ends().len(), 1, "the charge ran to its end");
        r.take();
        // The same start again (its answer was lost): the same answer, no second charge.
        r.down(41, again.clone());
        assert_eq!(r.take(), answer);
        assert!(r.pile.state.ports[0].charge.is_none(), "not run again");
        assert_eq!(r.pile.state.stats.repeated_commands, 1);
        // A power outage forgets it (RAM): after the boot it would run.
        r.pile.power_outage(r.at(42), 1);
        assert!(r.pile.state.answered.is_empty());
    }

    fn start(port: u16, target: Target, origin: Origin, order: Option<Order>) -> Down {
        Down::Start {
            ctx: ctx(),
            req: StartRequest {
                port: PortSel::Port(port),
                order,
                target,
                stop_on_full: matches!(origin, Origin::Bkv07 | Origin::Bkv1007),
                max_duration: None,
                origin,
                billing: None,
            },
        }
    }

    #[test]
    fn a_bkv_start_lights_the_port_and_the_user_plugs_in_after_the_delay() {
        let mut r = rig(Family::Bkv);
        r.down(0, start(3, Target::Time { secs: 120 }, Origin::Bkv07, None));
        let said = r.take();
        assert!(
            matches!(
                said.as_slice(),
                [
                    Up::StartReply {
                        result: CommandResult::Done,
                        port_no: Some(3),
                        ..
                    },
                    Up::Status { socket: 2 }
                ]
            ),
            "{said:?}"
        );
        assert!(!r.pile.state.ports[2].plugged);
        r.poll(2);
        assert!(r.pile.state.ports[2].plugged, "plugged after --plug-delay");
        assert_eq!(r.take(), vec![Up::Status { socket: 2 }]);
        r.poll(60);
        let snap = r.pile.snapshot(r.at(60));
        let charge = snap.ports[2].charge.as_ref().unwrap();
        assert!(
            charge.energy_wh > 1.0,
            "58 s at 200 W: {}",
            charge.energy_wh
        );
        assert_eq!(snap.ports[2].state, "charging");
    }

    #[test]
    fn a_time_target_ends_at_the_exact_second_and_is_resent_until_acked() {
        let mut r = rig(Family::Ap3000);
        let order = Order::Ap3000([9; 16]);
        r.down(
            0,
            start(
                1,
                Target::Time { secs: 300 },
                Origin::Ap3000 { rate_mode: 0 },
                Some(order),
            ),
        );
        r.take();
        assert_eq!(
            r.pile.next_deadline(r.at(290)).map(|d| d <= r.at(300)),
            Some(true)
        );
        r.poll(299);
        assert!(r.ends().is_empty());
        r.poll(300);
        let ends = r.ends();
        assert_eq!(ends.len(), 1);
        assert_eq!(ends[0].duration_s, 300);
        assert_eq!(ends[0].reason, EndReason::TimeReached);
        assert_eq!(ends[0].end_unix, 1_700_000_300);
        let said = r.take();
        assert!(
            said.iter()
                .any(|u| matches!(u, Up::End(e) if e.order == order)),
            "{said:?}"
        );
        r.poll(314);
        assert!(!r.take().iter().any(|u| matches!(u, Up::End(_))));
        r.poll(315);
        assert!(
            r.take().iter().any(|u| matches!(u, Up::End(_))),
            "resent after 15 s"
        );
        let msg_id = ends[0].msg_id;
        r.down(316, Down::EndAck(AckMatch::MsgId(msg_id)));
        assert!(r.ends().is_empty());
        assert!(
            r.pile.state.ports[0].plugged,
            "AP3000 charger stays plugged"
        );
    }

    #[test]
    fn ap3000_refusals_use_the_vendor_result_codes() {
        let mut r = rig(Family::Ap3000);
        let o1 = Order::Ap3000([1; 16]);
        let result = |r: &Rig| match r.take().as_slice() {
            [Up::StartReply { result, .. }] | [Up::StopReply { result, .. }] => Some(*result),
            _ => None,
        };
        r.down(
            0,
            start(9, Target::Full, Origin::Ap3000 { rate_mode: 0 }, Some(o1)),
        );
        assert_eq!(result(&r), Some(CommandResult::NoSuchPort));
        r.pile.unplug(r.at(0), 2).unwrap();
        r.take();
        r.down(
            0,
            start(2, Target::Full, Origin::Ap3000 { rate_mode: 0 }, Some(o1)),
        );
        assert_eq!(result(&r), Some(CommandResult::NoChargerPlugged));
        r.down(
            0,
            start(1, Target::Full, Origin::Ap3000 { rate_mode: 0 }, Some(o1)),
        );
        assert_eq!(result(&r), Some(CommandResult::Done));
        r.down(
            1,
            start(1, Target::Full, Origin::Ap3000 { rate_mode: 0 }, Some(o1)),
        );
        assert_eq!(result(&r), Some(CommandResult::SameState));
        let stop = |order| Down::Stop {
            ctx: ctx(),
            origin: Origin::Ap3000 { rate_mode: 0 },
            port: PortSel::Port(1),
            order: Some(order),
        };
        r.down(2, stop(Order::Ap3000([2; 16])));
        assert_eq!(r.take(), vec![], "a stop for another order is ignored");
        assert!(r.pile.state.ports[0].charge.is_some());
        r.down(3, stop(o1));
        let said = r.take();
        assert!(matches!(
            said.first(),
            Some(Up::StopReply {
                result: CommandResult::Done,
                ..
            })
        ));
        assert!(matches!(said.get(1), Some(Up::End(e)) if e.reason == EndReason::RemoteStop));
        r.down(4, stop(o1));
        assert_eq!(result(&r), Some(CommandResult::SameState));
        let any = Down::Start {
            ctx: ctx(),
            req: StartRequest {
                port: PortSel::Any,
                order: Some(o1),
                target: Target::Full,
                stop_on_full: true,
                max_duration: None,
                origin: Origin::Ap3000 { rate_mode: 0 },
                billing: None,
            },
        };
        r.down(5, any);
        assert_eq!(
            result(&r),
            Some(CommandResult::SeveralWaiting { ports: 0b1101 })
        );
        r.pile.inject_fault(r.at(5), FaultKind::Refuse, 10);
        r.down(
            6,
            start(1, Target::Full, Origin::Ap3000 { rate_mode: 0 }, Some(o1)),
        );
        assert_eq!(result(&r), Some(CommandResult::OverPower));
    }

    #[test]
    fn a_charge_that_ends_while_the_network_is_down_is_replayed_after_reconnect() {
        let mut r = rig(Family::Bkv);
        r.down(0, start(1, Target::Time { secs: 60 }, Origin::Bkv07, None));
        r.pile.drop_network(r.at(10), Some(100));
        assert_eq!(r.pile.poll(r.at(10)), vec![Action::Abandon]);
        r.take();
        r.poll(60);
        assert_eq!(
            r.ends().len(),
            1,
            "the pile kept charging and stored the end"
        );
        assert_eq!(r.ends()[0].duration_s, 60);
        assert!(r.take().is_empty(), "nothing flows while the cable is out");
        assert_eq!(r.poll(110), vec![], "reconnects only after the delay");
        assert_eq!(r.pile.next_deadline(r.at(110)), Some(r.at(115)));
        assert_eq!(r.poll(115), vec![Action::Connect]);
        r.pile.on_connected(r.at(116));
        let said = r.take();
        assert!(matches!(said.first(), Some(Up::Heartbeat)));
        assert!(
            said.iter()
                .any(|u| matches!(u, Up::End(e) if e.duration_s == 60)),
            "{said:?}"
        );
        r.down(
            117,
            Down::EndAck(AckMatch::Port {
                port_no: 1,
                origin: Origin::Bkv07,
            }),
        );
        assert!(r.ends().is_empty());
    }

    #[test]
    fn ap3000_progress_taken_offline_is_replayed_in_order() {
        let mut r = rig(Family::Ap3000);
        r.down(
            0,
            start(
                1,
                Target::Full,
                Origin::Ap3000 { rate_mode: 0 },
                Some(Order::Ap3000([3; 16])),
            ),
        );
        r.pile.drop_network(r.at(1), None);
        for t in [11, 22, 33] {
            r.poll(t);
        }
        assert_eq!(r.pile.state.replay.len(), 3);
        r.pile.restore_network(r.at(40));
        r.poll(45);
        r.pile.on_connected(r.at(45));
        r.take();
        r.down(46, Down::RegisterAck);
        let said = r.take();
        let durations: Vec<u64> = said
            .iter()
            .filter_map(|u| match u {
                Up::Progress(p) => Some(p.duration_s),
                _ => None,
            })
            .collect();
        assert_eq!(
            durations,
            vec![11, 22, 33, 45],
            "the sample due at 44 s was taken offline at 45 s"
        );
        assert!(r.pile.state.replay.is_empty());
    }

    #[test]
    fn a_power_outage_cuts_the_charge_and_reports_it_after_the_restart() {
        let mut r = rig(Family::Ap3000);
        r.down(
            0,
            start(
                2,
                Target::Full,
                Origin::Ap3000 { rate_mode: 0 },
                Some(Order::Ap3000([4; 16])),
            ),
        );
        r.pile.inject_fault(r.at(30), FaultKind::PowerOutage, 20);
        assert_eq!(r.pile.poll(r.at(30)), vec![Action::Abandon]);
        assert_eq!(r.pile.snapshot(r.at(31)).connection, "powered_off");
        assert_eq!(r.ends()[0].reason, EndReason::PowerOutage);
        r.take();
        assert_eq!(r.poll(50), vec![]);
        assert_eq!(r.poll(55), vec![Action::Connect]);
        r.pile.on_connected(r.at(55));
        assert_eq!(r.take(), vec![Up::Iccid, Up::Register]);
        r.down(56, Down::RegisterAck);
        assert!(r
            .take()
            .iter()
            .any(|u| matches!(u, Up::End(e) if e.reason == EndReason::PowerOutage)));
    }

    #[test]
    fn unplugging_mid_charge_ends_it() {
        let mut r = rig(Family::Ap3000);
        r.down(
            0,
            start(
                1,
                Target::Full,
                Origin::Ap3000 { rate_mode: 0 },
                Some(Order::Ap3000([5; 16])),
            ),
        );
        r.pile.unplug(r.at(100), 1).unwrap();
        let e = &r.ends()[0];
        assert_eq!(e.reason, EndReason::Unplugged);
        assert_eq!(e.duration_s, 100);
        assert!(e.energy_wh > 4.0);
        assert_eq!(
            r.pile.unplug(r.at(100), 5),
            Err(PileError::NoSuchPort { port: 5, ports: 4 })
        );
    }

    #[test]
    fn byte_faults_shape_the_writes() {
        let mut r = rig(Family::Bkv);
        let writes = |a: &[Action]| a.iter().filter(|x| matches!(x, Action::Write(_))).count();
        let only = |r: &mut Rig, kind: FaultKind, secs: u64| {
            for k in FaultKind::ALL {
                r.pile.state.faults.clear(k);
            }
            r.pile.inject_fault(r.at(secs), kind, 1000);
        };
        only(&mut r, FaultKind::SplitBytes, 0);
        assert!(matches!(r.poll(11).as_slice(), [Action::WriteSplit(_)]));
        only(&mut r, FaultKind::DuplicateFrames, 12);
        assert_eq!(writes(&r.poll(22)), 2);
        only(&mut r, FaultKind::BadChecksum, 23);
        match r.poll(33).as_slice() {
            [Action::Write(a)] => assert!(a.ends_with(b"!")),
            other => panic!("{other:?}"),
        }
        only(&mut r, FaultKind::Garbage, 34);
        match r.poll(44).as_slice() {
            [Action::Write(a)] => assert!(!a.starts_with(b"<") && a.ends_with(b">")),
            other => panic!("{other:?}"),
        }
        only(&mut r, FaultKind::MergeFrames, 45);
        // Two start replies and a status report are merged into one write.
        r.down(46, start(1, Target::Full, Origin::Bkv07, None));
        let a = r.down(46, start(3, Target::Full, Origin::Bkv07, None));
        assert_eq!(writes(&a), 1, "{a:?}");
        let b = r.pile.poll(r.at(46) + MERGE_WINDOW);
        assert_eq!(writes(&b), 1, "the rest after the merge window: {b:?}");
        only(&mut r, FaultKind::BlackHole, 56);
        assert!(r.poll(66).is_empty());
        assert!(!r.pile.wants_read(r.at(66)));
        r.pile.state.faults.clear(FaultKind::BlackHole);
        assert!(r.pile.wants_read(r.at(67)));
    }

    #[test]
    fn answers_can_be_late_or_missing() {
        let mut r = rig(Family::Bkv);
        r.pile.inject_fault(r.at(0), FaultKind::MissingAnswers, 10);
        r.down(1, start(1, Target::Full, Origin::Bkv07, None));
        let said = r.take();
        assert!(!said.iter().any(Up::is_answer), "{said:?}");
        assert!(
            r.pile.state.ports[0].charge.is_some(),
            "executed all the same"
        );
        r.pile.state.faults.clear(FaultKind::MissingAnswers);
        r.pile.inject_fault(r.at(1), FaultKind::DelayAnswers, 10);
        r.down(
            2,
            Down::QuerySocket {
                ctx: ctx(),
                socket: 1,
            },
        );
        assert!(!r.take().iter().any(Up::is_answer));
        r.poll(6);
        assert!(!r.take().iter().any(Up::is_answer));
        r.poll(7);
        assert!(r
            .take()
            .iter()
            .any(|u| matches!(u, Up::SocketState { socket: 1, .. })));
    }

    #[test]
    fn an_idle_ap3000_pile_says_link_after_30_s_of_silence() {
        let t0 = Instant::now();
        let said = Arc::new(Mutex::new(Vec::new()));
        let mut c = (*cfg(t0)).clone();
        c.heartbeat = Duration::from_secs(60);
        let mut pile = Pile::new(
            "A".into(),
            1,
            Family::Ap3000,
            Arc::new(c),
            pile_rng(1, 1),
            Box::new(Recorder(Arc::clone(&said))),
            t0,
        );
        pile.poll(t0);
        pile.on_connected(t0);
        pile.state.handle_down(t0, Down::RegisterAck);
        pile.poll(t0);
        assert_eq!(pile.next_deadline(t0), Some(t0 + Duration::from_secs(30)));
        let a = pile.poll(t0 + Duration::from_secs(30));
        assert_eq!(a, vec![Action::Write(Bytes::from_static(b"link"))]);
    }

    #[test]
    fn a_bkv_start_never_plugged_in_gives_up_for_lack_of_load() {
        let mut r = rig(Family::Bkv);
        r.down(0, start(2, Target::Full, Origin::Bkv07, None));
        r.pile.unplug(r.at(1), 2).unwrap();
        assert!(
            r.pile.state.ports[1].charge.is_some(),
            "a lit port without a plug is no charge end"
        );
        r.poll(120);
        assert_eq!(r.ends()[0].reason, EndReason::NoLoad);
    }
}
