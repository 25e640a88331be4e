//! What the fleet's piles saw, from the simulator's observer hook: connects, heartbeat round
//! trips and received commands, each stamped with when it happened, so that one [`Recorder`]
//! can be fed from piles in this process or, through [`super::shard`]'s event lines, from piles
//! in child processes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pile_sim::observe::{CommandKind, FleetObserver};

use super::report;

const SHARDS: usize = 16;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sharded histograms: piles on different shards never contend.
pub(crate) struct Sharded(Vec<Mutex<Histogram<u64>>>);

impl Sharded {
    fn new() -> Sharded {
        Sharded(
            (0..SHARDS)
                .map(|_| Mutex::new(report::histogram()))
                .collect(),
        )
    }

    fn record(&self, pile: u32, d: Duration) {
        report::record(&mut lock(&self.0[pile as usize % SHARDS]), d);
    }

    pub fn merged(&self) -> Histogram<u64> {
        let mut all = report::histogram();
        for s in &self.0 {
            report::merge(&mut all, &lock(s));
        }
        all
    }
}

/// One connection wave: the `nth` connection of every pile (1: the first connect after the
/// start; 2: the reconnect after the first drop, …).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WaveTimes {
    pub piles: u64,
    /// Earliest start of a connect of this wave, and the latest completion.
    pub first_dial: Option<Instant>,
    pub last_connected: Option<Instant>,
    /// Piles whose connection of this wave got a heartbeat answered, and the last such moment.
    pub ready: u64,
    pub last_ready: Option<Instant>,
}

/// Per pile: which connection it is on, when that connect started, whether it was answered.
struct PileState {
    nth: AtomicU64,
    answered: AtomicBool,
    ever_ready: AtomicBool,
}

pub(crate) struct Recorder {
    pub devices: u32,
    pub connect: Sharded,
    pub heartbeat: Sharded,
    /// The first answered heartbeat of each connection, and all later ones.
    pub heartbeat_first: Sharded,
    pub heartbeat_later: Sharded,
    /// Heartbeats answered before / after every pile was ready (the end of the ramp).
    pub heartbeat_ramp: Sharded,
    pub heartbeat_steady: Sharded,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub reconnects: AtomicU64,
    piles: Vec<PileState>,
    /// Piles that have been ready at least once, and when the last of them became so.
    ready_once: AtomicU64,
    steady_since: Mutex<Option<Instant>>,
    waves: Mutex<Vec<WaveTimes>>,
    /// (pile, port) → when the start command arrived, for the charges in flight.
    pub awaiting: Mutex<HashMap<(u32, u16), Option<Instant>>>,
}

impl Recorder {
    pub fn new(devices: u32) -> Recorder {
        Recorder {
            devices,
            connect: Sharded::new(),
            heartbeat: Sharded::new(),
            heartbeat_first: Sharded::new(),
            heartbeat_later: Sharded::new(),
            heartbeat_ramp: Sharded::new(),
            heartbeat_steady: Sharded::new(),
            connects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            piles: (0..devices)
                .map(|_| PileState {
                    nth: AtomicU64::new(0),
                    answered: AtomicBool::new(false),
                    ever_ready: AtomicBool::new(false),
                })
                .collect(),
            ready_once: AtomicU64::new(0),
            steady_since: Mutex::new(None),
            waves: Mutex::new(Vec::new()),
            awaiting: Mutex::new(HashMap::new()),
        }
    }

    /// A pile is ready for commands once the gateway answered a heartbeat on its current
    /// connection: by then the gateway has registered it.
    pub fn ready(&self, pile: u32) -> bool {
        self.piles
            .get(pile as usize)
            .is_some_and(|p| p.answered.load(Ordering::Relaxed))
    }

    /// Piles that have been ready at least once.
    pub fn ready_once(&self) -> u64 {
        self.ready_once.load(Ordering::Relaxed)
    }

    /// When the last pile became ready for the first time: the end of the ramp.
    pub fn steady_since(&self) -> Option<Instant> {
        *lock(&self.steady_since)
    }

    pub fn waves(&self) -> Vec<WaveTimes> {
        lock(&self.waves).clone()
    }

    fn wave(&self, nth: u64, f: impl FnOnce(&mut WaveTimes)) {
        if nth == 0 {
            return;
        }
        let mut waves = lock(&self.waves);
        let i = (nth - 1) as usize;
        if waves.len() <= i {
            waves.resize(i + 1, WaveTimes::default());
        }
        f(&mut waves[i]);
    }

    pub fn on_connected(&self, pile: u32, latency: Duration, nth: u64, at: Instant) {
        self.connect.record(pile, latency);
        self.connects.fetch_add(1, Ordering::Relaxed);
        if nth > 1 {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(p) = self.piles.get(pile as usize) {
            p.answered.store(false, Ordering::Relaxed);
            p.nth.store(nth, Ordering::Relaxed);
        }
        let started = at.checked_sub(latency).unwrap_or(at);
        self.wave(nth, |w| {
            w.piles += 1;
            w.first_dial = Some(w.first_dial.map_or(started, |d| d.min(started)));
            w.last_connected = Some(w.last_connected.map_or(at, |d| d.max(at)));
        });
    }

    pub fn on_connect_failed(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn on_heartbeat(&self, pile: u32, rtt: Duration, at: Instant) {
        self.heartbeat.record(pile, rtt);
        let Some(p) = self.piles.get(pile as usize) else {
            return;
        };
        let first = !p.answered.swap(true, Ordering::Relaxed);
        if first {
            self.heartbeat_first.record(pile, rtt);
            let nth = p.nth.load(Ordering::Relaxed);
            self.wave(nth, |w| {
                w.ready += 1;
                w.last_ready = Some(w.last_ready.map_or(at, |d| d.max(at)));
            });
            if !p.ever_ready.swap(true, Ordering::Relaxed) {
                let n = self.ready_once.fetch_add(1, Ordering::Relaxed) + 1;
                if n == u64::from(self.devices) {
                    *lock(&self.steady_since) = Some(at);
                }
            }
        } else {
            self.heartbeat_later.record(pile, rtt);
        }
        match self.steady_since() {
            Some(since) if at >= since => self.heartbeat_steady.record(pile, rtt),
            _ => self.heartbeat_ramp.record(pile, rtt),
        }
    }

    pub fn on_start_command(&self, pile: u32, port: u16, at: Instant) {
        if let Some(slot) = lock(&self.awaiting).get_mut(&(pile, port)) {
            slot.get_or_insert(at);
        }
    }
}

/// The in-process hook: events are stamped now.
pub(crate) struct Local(pub std::sync::Arc<Recorder>);

impl FleetObserver for Local {
    fn connected(&self, pile: u32, latency: Duration, nth: u64) {
        self.0.on_connected(pile, latency, nth, Instant::now());
    }

    fn connect_failed(&self, _pile: u32, _after: Duration) {
        self.0.on_connect_failed();
    }

    fn heartbeat_rtt(&self, pile: u32, rtt: Duration) {
        self.0.on_heartbeat(pile, rtt, Instant::now());
    }

    fn command(&self, pile: u32, kind: CommandKind, port_no: Option<u16>) {
        if let (CommandKind::Start, Some(port)) = (kind, port_no) {
            self.0.on_start_command(pile, port, Instant::now());
        }
    }
}
