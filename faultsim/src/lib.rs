//! `pile-faultsim`: a deterministic, seeded fault simulation of the gateway.
//!
//! One process runs the real gateway core — [`SessionCore`] per connection, [`Service`]
//! (`apply`, `session_ended`, `sweep`, the API's `charge` / `stop`), the store on an in-memory
//! SQLite database — against the simulator's real [`Pile`] state machines. There are no sockets
//! and no real time: a virtual network carries each frame as a packet between the two sides and a
//! manual [`Clock`] jumps from event to event. A fault schedule drawn from the seed pulls cables,
//! half-opens sockets, loses / duplicates / delays frames, loses acks, crashes the gateway between
//! two store writes, reboots piles, unplugs chargers and starts and stops charges through the
//! API. The same seed gives the same trace.
//!
//! Ground truth is the piles': every charge a pile ran is logged with the command bytes that
//! started it (so the order it belongs to) and its end record. [`check_final`] holds the gateway
//! to it once the run has drained.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pile_api::OrderStatus;
use pile_protocol::Family;
use pile_server::clock::Clock;
use pile_server::core::{CloseReason, Command, CoreConfig, Intent, SessionCore};
use pile_server::domain::{ChargeMode, ChargeSpec};
use pile_server::gateway::SessionHandle;
use pile_server::service::{Service, SessionLink, Timings};
use pile_server::store::{FailPoint, OrderRow, Store};
use pile_server::writer::Writer;
use pile_sim::msg::{EndRecord, Order};
use pile_sim::pile::{Action, Pile, PileConfig, SimClock};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The gateway's (and the piles') wall clock at t = 0 of every run.
pub const BASE_UNIX_MS: i64 = 1_764_000_000_000;
/// Faults and API operations happen in [0, HORIZON_MS); then the run drains.
pub const HORIZON_MS: i64 = 240_000;
/// One-way latency of the virtual network.
const LATENCY_MS: i64 = 20;
/// The sweeper's period.
const SWEEP_MS: i64 = 2_000;
/// Command TTL in the simulation (short, so the drain phase can pass it).
const COMMAND_TTL_MS: i64 = 120_000;
/// Bound on events at one instant (a harness livelock guard).
const MAX_SAME_INSTANT: u32 = 5_000;
/// Bound on events in one run.
const MAX_EVENTS: u64 = 200_000;

// ---------------------------------------------------------------------------------------------
// The fault schedule

/// One scheduled operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// API charge on a port: by time (secs) or by energy (Wh).
    Charge {
        pile: usize,
        port: u16,
        by_energy: bool,
        target: i64,
    },
    /// API stop of the port's open order.
    Stop { pile: usize, port: u16 },
    /// The cable is pulled (no FIN) for `secs`; the pile reconnects after (a takeover when the
    /// gateway still holds the old socket).
    CablePull { pile: usize, secs: u64 },
    /// The pile's socket goes half-open: both directions are dropped for `secs`, neither side
    /// is told; the path heals afterwards (a closed end then answers with a reset).
    HalfOpen { pile: usize, secs: u64 },
    /// Frames on the pile's socket are lost with probability 1/3 for `secs` (`up`: pile →
    /// gateway, else gateway → pile).
    Lossy { pile: usize, up: bool, secs: u64 },
    /// Frames from the pile are sent twice for `secs`.
    Duplicate { pile: usize, secs: u64 },
    /// Frames on the pile's socket are delayed 0.5–3 s for `secs` (in order, as TCP would).
    Delay { pile: usize, secs: u64 },
    /// The gateway's acknowledgements to the pile are lost for `secs`.
    LoseAcks { pile: usize, secs: u64 },
    /// The gateway process crashes after `writes` more store writes (the next write fails and
    /// the process is gone), and restarts `down_secs` later.
    Crash { writes: i64, down_secs: u64 },
    /// The pile loses power for `secs` (charges end, reported after the boot).
    Reboot { pile: usize, secs: u64 },
    /// The charger is pulled out of a port (a running charge ends); plugged back 10 s later on
    /// AP3000 piles.
    Unplug { pile: usize, port: u16 },
}

/// A scheduled operation at a virtual time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub at_ms: i64,
    pub op: Op,
}

/// What a run is made of; everything else follows from the seed.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    /// (family, ports) per pile.
    pub piles: Vec<(Family, u16)>,
    pub schedule: Vec<Entry>,
}

/// Which fault kinds a generated schedule may use (the harness grew them one at a time).
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub faults: bool,
}

impl Scenario {
    /// The scenario of `seed`.
    pub fn generate(seed: u64, mix: Mix) -> Scenario {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = rng.gen_range(1..=3usize);
        let piles: Vec<(Family, u16)> = (0..n)
            .map(|_| {
                let fam = if rng.gen_bool(0.5) {
                    Family::Bkv
                } else {
                    Family::Ap3000
                };
                (fam, 2)
            })
            .collect();
        let mut schedule = Vec::new();
        let charges = rng.gen_range(1..=4usize);
        for _ in 0..charges {
            let pile = rng.gen_range(0..n);
            let port = rng.gen_range(1..=piles[pile].1);
            let by_energy = rng.gen_bool(0.3);
            let target = if by_energy {
                rng.gen_range(2..=8)
            } else {
                rng.gen_range(20..=150)
            };
            schedule.push(Entry {
                at_ms: rng.gen_range(5_000..HORIZON_MS - 60_000),
                op: Op::Charge {
                    pile,
                    port,
                    by_energy,
                    target,
                },
            });
        }
        if rng.gen_bool(0.3) {
            let pile = rng.gen_range(0..n);
            let port = rng.gen_range(1..=piles[pile].1);
            schedule.push(Entry {
                at_ms: rng.gen_range(10_000..HORIZON_MS),
                op: Op::Stop { pile, port },
            });
        }
        if mix.faults {
            let faults = rng.gen_range(0..=4usize);
            for _ in 0..faults {
                let pile = rng.gen_range(0..n);
                let port = rng.gen_range(1..=piles[pile].1);
                let secs = rng.gen_range(1..=45u64);
                let op = match rng.gen_range(0..10u32) {
                    0 => Op::CablePull { pile, secs },
                    1 => Op::HalfOpen { pile, secs },
                    2 => Op::Lossy {
                        pile,
                        up: rng.gen_bool(0.5),
                        secs,
                    },
                    3 => Op::Duplicate { pile, secs },
                    4 => Op::Delay { pile, secs },
                    5 => Op::LoseAcks { pile, secs },
                    6 => Op::Crash {
                        writes: rng.gen_range(0..6),
                        down_secs: rng.gen_range(0..=10),
                    },
                    7 => Op::Reboot {
                        pile,
                        secs: rng.gen_range(1..=20),
                    },
                    8 => Op::Unplug { pile, port },
                    _ => Op::Stop { pile, port },
                };
                schedule.push(Entry {
                    at_ms: rng.gen_range(1_000..HORIZON_MS),
                    op,
                });
            }
        }
        schedule.sort_by_key(|e| e.at_ms);
        Scenario {
            seed,
            piles,
            schedule,
        }
    }

    /// The same scenario with only the schedule entries whose indices are in `keep`.
    pub fn keep(&self, keep: &[usize]) -> Scenario {
        Scenario {
            seed: self.seed,
            piles: self.piles.clone(),
            schedule: keep
                .iter()
                .filter_map(|i| self.schedule.get(*i).cloned())
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The virtual network

#[derive(Debug, Clone)]
enum Pkt {
    Data(Bytes),
    Fin,
}

struct GwSide {
    core: SessionCore,
    link: SessionLink,
    mailbox: mpsc::Receiver<Box<Command>>,
    close: CancellationToken,
}

struct Conn {
    gw: Option<GwSide>,
    /// The pile that uses this socket (none after it abandoned or closed it).
    pile: Option<usize>,
    up: VecDeque<(i64, Pkt)>,
    down: VecDeque<(i64, Pkt)>,
    /// Half-open until then: data both ways is lost, FINs wait.
    blackhole_until: i64,
}

#[derive(Debug, Default, Clone)]
struct NetFaults {
    lossy_up_until: i64,
    lossy_down_until: i64,
    dup_until: i64,
    delay_until: i64,
    lose_acks_until: i64,
}

struct PileSlot {
    pile: Pile,
    family: Family,
    conn: Option<u64>,
    net: NetFaults,
    /// Charges running now, by port: (order as the pile names it, who started it, since).
    running: HashMap<u16, (Order, Option<String>, i64)>,
    replug_at: Vec<(i64, u16)>,
}

/// A charge a pile ran, as the pile knows it.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub pile: usize,
    pub device_id: String,
    pub port: u16,
    /// The order whose start command started it (`None`: bytes the harness cannot attribute).
    pub order_no: Option<String>,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub end: Option<EndRecord>,
}

/// An order the API accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub order_no: String,
    pub device_id: String,
    pub port: u16,
    pub at_ms: i64,
}

/// How a run went.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub trace: Vec<String>,
    pub failures: Vec<String>,
    pub events: u64,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

struct World {
    scenario: Scenario,
    clock: Clock,
    t0: Instant,
    now: i64,
    store: Store,
    fp: Arc<FailPoint>,
    svc: Option<Arc<Service>>,
    crash_down_ms: i64,
    next_conn: u64,
    core_cfg: CoreConfig,
    conns: BTreeMap<u64, Conn>,
    piles: Vec<PileSlot>,
    rng: ChaCha8Rng,
    next_sweep: i64,
    crash_now: bool,
    pending_restart: Option<i64>,
    /// Request bytes (hex) of every start the gateway marked sent → its command ID.
    starts: HashMap<String, i64>,
    command_orders: HashMap<i64, String>,
    truth: Vec<Delivered>,
    accepted: Vec<Accepted>,
    trace: Vec<String>,
    failures: Vec<String>,
    /// Per order: the settled figures first seen (they must never change).
    settled_seen: HashMap<String, (i64, i64, i64)>,
    last_status: HashMap<String, OrderStatus>,
    events: u64,
    order_seq: u32,
    /// Delay-fault windows, for the duration check's slack: (pile, from, to).
    delays: Vec<(usize, i64, i64)>,
}

fn timings() -> Timings {
    Timings {
        command_ttl: Duration::from_millis(COMMAND_TTL_MS as u64),
        offline_settle_grace: Duration::from_secs(1800),
        offline_after: Duration::from_secs(30),
        liveness_persist: Duration::from_secs(30),
        reconcile: Default::default(),
    }
}

fn pile_cfg(t0: Instant) -> Arc<PileConfig> {
    Arc::new(PileConfig {
        ports: 2,
        heartbeat: Duration::from_secs(20),
        reconnect_delay: Duration::from_secs(3),
        plug_delay: Duration::from_secs(2),
        power_w: 200.0,
        resend_after: Duration::from_secs(15),
        link_after: Duration::from_secs(30),
        frames_kept: 0,
        progress_kept: 16,
        answer_delay: Duration::from_secs(5),
        clock: SimClock::new(t0, BASE_UNIX_MS as u64),
        observer: None,
        eeprom: None,
    })
}

fn device_id(family: Family, i: usize) -> String {
    match family {
        Family::Bkv => format!("{:014}", 86_000_000_000_000u64 + i as u64),
        Family::Ap3000 => format!("{:08X}", 0x1000_0000u32 + i as u32),
    }
}

/// An in-memory SQLite database migrated once and emptied between runs (migrating costs more
/// than a whole run). Use it only on the runtime that made it.
#[derive(Clone)]
pub struct Db(Store);

const TABLES: [&str; 9] = [
    "settlements",
    "end_reports",
    "order_progress",
    "outbox",
    "cmd_logs",
    "orders",
    "ports",
    "devices",
    "api_keys",
];

impl Db {
    pub async fn new() -> Db {
        Db(Store::connect("sqlite::memory:", 1)
            .await
            .expect("in-memory SQLite"))
    }

    async fn empty(&self) -> Store {
        for t in TABLES {
            let _ = self.0.execute_raw(&format!("DELETE FROM {t}")).await;
        }
        // Row IDs start again at 1, so a seed's trace does not depend on the runs before it.
        let _ = self.0.execute_raw("DELETE FROM sqlite_sequence").await;
        self.0.clone()
    }
}

/// Runs one scenario to the end on a fresh database and checks it; never panics on a gateway
/// failure.
pub async fn run(scenario: &Scenario) -> Outcome {
    run_in(&Db::new().await, scenario).await
}

/// [`run`] on a reused database.
pub async fn run_in(db: &Db, scenario: &Scenario) -> Outcome {
    let fp = Arc::new(FailPoint::default());
    let store = db.empty().await.with_failpoint(fp.clone());
    let clock = Clock::manual(BASE_UNIX_MS);
    let t0 = Instant::now();
    let cfg = pile_cfg(t0);
    let piles = scenario
        .piles
        .iter()
        .enumerate()
        .map(|(i, (family, _ports))| {
            let mut pile = Pile::new(
                device_id(*family, i),
                i as u32,
                *family,
                cfg.clone(),
                pile_sim::seed::pile_rng(scenario.seed, i as u64),
                pile_sim::wire::codec_for(*family),
                t0 + Duration::from_millis(500 * i as u64),
            );
            pile.state.ends_log = Some(Vec::new());
            PileSlot {
                pile,
                family: *family,
                conn: None,
                net: NetFaults::default(),
                running: HashMap::new(),
                replug_at: Vec::new(),
            }
        })
        .collect();
    let mut w = World {
        scenario: scenario.clone(),
        clock,
        t0,
        now: 0,
        store,
        fp,
        svc: None,
        crash_down_ms: 0,
        next_conn: 0,
        core_cfg: CoreConfig::default(),
        conns: BTreeMap::new(),
        piles,
        rng: ChaCha8Rng::seed_from_u64(scenario.seed ^ 0x5eed_f00d_dead_beef),
        next_sweep: SWEEP_MS,
        crash_now: false,
        pending_restart: None,
        starts: HashMap::new(),
        command_orders: HashMap::new(),
        truth: Vec::new(),
        accepted: Vec::new(),
        trace: Vec::new(),
        failures: Vec::new(),
        settled_seen: HashMap::new(),
        last_status: HashMap::new(),
        events: 0,
        order_seq: 0,
        delays: Vec::new(),
    };
    w.start_gateway().await;
    w.run_loop().await;
    w.final_checks().await;
    Outcome {
        trace: w.trace,
        failures: w.failures,
        events: w.events,
    }
}

impl World {
    fn log(&mut self, what: impl AsRef<str>) {
        let line = format!("{:>7}ms {}", self.now, what.as_ref());
        self.trace.push(line);
    }

    fn fail(&mut self, what: impl Into<String>) {
        let what = what.into();
        if !self.failures.contains(&what) {
            self.log(format!("INVARIANT: {what}"));
            self.failures.push(what);
        }
    }

    fn at(&self, ms: i64) -> Instant {
        self.t0 + Duration::from_millis(ms.max(0) as u64)
    }

    async fn start_gateway(&mut self) {
        let writer = Writer::manual(self.store.clone());
        let svc = Arc::new(Service::new(
            self.store.clone(),
            writer,
            timings(),
            self.clock.clone(),
        ));
        match svc.restore_online().await {
            Ok(n) => self.log(format!("gateway up (restored {n} online)")),
            Err(e) => self.fail(format!("restore_online failed: {e}")),
        }
        self.svc = Some(svc);
    }

    /// The gateway process dies: its memory (sessions, queued batched writes) is gone, the
    /// kernel closes its sockets (the piles see a FIN).
    fn crash(&mut self) {
        self.crash_now = false;
        self.fp.disarm();
        let pending = self.svc.as_ref().map_or(0, |s| s.writer.pending_manual());
        self.svc = None;
        let now = self.now;
        self.pending_restart = Some(now + self.crash_down_ms);
        for c in self.conns.values_mut() {
            if c.gw.take().is_some() {
                c.up.clear();
                let at = (now + LATENCY_MS).max(c.blackhole_until);
                c.down.clear();
                c.down.push_back((at, Pkt::Fin));
            }
        }
        self.log(format!(
            "GATEWAY CRASH (lost {pending} batched writes); restart in {}ms",
            self.crash_down_ms
        ));
    }

    // -----------------------------------------------------------------------------------------
    // The event loop

    fn next_time(&self, sched_i: usize) -> Option<i64> {
        let mut t: Option<i64> = None;
        let mut at = |x: i64| t = Some(t.map_or(x, |t: i64| t.min(x)));
        if let Some(e) = self.scenario.schedule.get(sched_i) {
            at(e.at_ms);
        }
        if let Some(r) = self.pending_restart {
            at(r);
        }
        at(self.next_sweep);
        for c in self.conns.values() {
            if let (Some((t, _)), true) = (c.up.front(), c.gw.is_some()) {
                at(*t);
            }
            if let (Some((t, _)), true) = (c.down.front(), c.pile.is_some()) {
                at(*t);
            }
            if let Some(g) = &c.gw {
                if let Some(d) = g.core.poll_timeout() {
                    at(d);
                }
                if !g.mailbox.is_empty() || g.close.is_cancelled() {
                    at(self.now);
                }
            }
        }
        let now_i = self.at(self.now);
        for p in &self.piles {
            if let Some(d) = p.pile.next_deadline(now_i) {
                at(d.saturating_duration_since(self.t0).as_millis() as i64);
            }
            for (t, _) in &p.replug_at {
                at(*t);
            }
        }
        t
    }

    async fn run_loop(&mut self) {
        let mut sched_i = 0;
        let mut same = 0u32;
        let mut drained_at: Option<i64> = None;
        let mut sweeps = 0u64;
        let end_cap = HORIZON_MS + 900_000;
        while let Some(t) = self.next_time(sched_i) {
            let t = t.max(self.now);
            if t == self.now {
                same += 1;
                if same > MAX_SAME_INSTANT {
                    self.fail("harness: no progress at one instant (livelock)".to_string());
                    return;
                }
            } else {
                same = 0;
            }
            if t > end_cap {
                break;
            }
            self.events += 1;
            if self.events > MAX_EVENTS {
                self.fail("harness: event bound reached".to_string());
                return;
            }
            self.now = t;
            self.clock.set_ms(BASE_UNIX_MS + t);

            // The gateway restarts.
            if self.pending_restart.is_some_and(|r| r <= t) {
                self.pending_restart = None;
                self.start_gateway().await;
            }
            // Scheduled operations.
            while sched_i < self.scenario.schedule.len()
                && self.scenario.schedule[sched_i].at_ms <= t
            {
                let e = self.scenario.schedule[sched_i].clone();
                sched_i += 1;
                self.apply_op(&e.op).await;
                if self.crash_now {
                    self.crash();
                }
            }
            // The gateway's side of every connection.
            let ids: Vec<u64> = self.conns.keys().copied().collect();
            for id in ids {
                self.gw_step(id).await;
                if self.crash_now {
                    self.crash();
                }
            }
            // Piles.
            for i in 0..self.piles.len() {
                self.pile_step(i).await;
                if self.crash_now {
                    self.crash();
                }
            }
            // The sweeper and the batched writer.
            let mut swept = false;
            if t >= self.next_sweep {
                // Every 2 s; every 10 s once drained (only TTLs and thresholds are left).
                self.next_sweep = t + if drained_at.is_some() {
                    5 * SWEEP_MS
                } else {
                    SWEEP_MS
                };
                self.sweep().await;
                if self.crash_now {
                    self.crash();
                }
                sweeps += 1;
                swept = true;
                if sweeps % 5 == 0 {
                    self.step_checks().await;
                }
            }
            self.conns.retain(|_, c| c.gw.is_some() || c.pile.is_some());

            // Drain: after the horizon, once nothing runs and every order is closed, pass
            // the TTLs and thresholds and stop.
            if swept && t >= HORIZON_MS && drained_at.is_none() && self.quiet().await {
                drained_at = Some(t);
                self.log("drained: passing TTLs and thresholds");
            }
            if let Some(d) = drained_at {
                if t >= d + COMMAND_TTL_MS + 60_000 {
                    break;
                }
            }
        }
        if drained_at.is_none() {
            self.log("not drained by the end of the run");
        }
    }

    /// Nothing runs on any pile, no end record waits for an ack, every order is closed.
    async fn quiet(&mut self) -> bool {
        let now_i = self.at(self.now);
        for p in &mut self.piles {
            let snap = p.pile.snapshot(now_i);
            if snap.ports.iter().any(|port| port.charge.is_some()) || snap.pending_acks > 0 {
                return false;
            }
        }
        match self.store.orders(None, None, 1, 1000).await {
            Ok((rows, _)) => rows.iter().all(|o| !o.status.is_active()),
            Err(_) => false,
        }
    }

    async fn apply_op(&mut self, op: &Op) {
        let now = self.now;
        let now_i = self.at(now);
        match op {
            Op::Charge {
                pile,
                port,
                by_energy,
                target,
            } => {
                let Some(svc) = self.svc.clone() else {
                    self.log(format!("api charge p{pile}/{port}: gateway down"));
                    return;
                };
                self.order_seq += 1;
                let order_no = format!("FS{}N{}", self.scenario.seed, self.order_seq);
                let spec = if *by_energy {
                    ChargeSpec {
                        port_no: u32::from(*port),
                        mode: ChargeMode::ByEnergy,
                        duration_sec: 0,
                        energy_wh: *target,
                        amount: 0,
                        price_per_kwh: 1000,
                        service_fee: 200,
                    }
                } else {
                    ChargeSpec {
                        port_no: u32::from(*port),
                        mode: ChargeMode::ByTime,
                        duration_sec: *target,
                        energy_wh: 0,
                        amount: 100,
                        price_per_kwh: 0,
                        service_fee: 0,
                    }
                };
                let dev = self.piles[*pile].pile.id().to_string();
                let r = svc.charge(&dev, &spec, Some(order_no.clone()), false).await;
                if self.fp.tripped() {
                    self.crash_now = true;
                }
                match r {
                    Ok(o) if o.order_no == order_no && !self.crash_now => {
                        self.log(format!("api charge {dev}/{port} {spec:?} -> {order_no}"));
                        self.accepted.push(Accepted {
                            order_no,
                            device_id: dev,
                            port: *port,
                            at_ms: now,
                        });
                    }
                    Ok(o) => self.log(format!("api charge {dev}/{port} -> {}", o.order_no)),
                    Err(e) => self.log(format!("api charge {dev}/{port} refused: {e}")),
                }
            }
            Op::Stop { pile, port } => {
                let Some(svc) = self.svc.clone() else {
                    return;
                };
                let dev = self.piles[*pile].pile.id().to_string();
                let r = svc.stop(&dev, u32::from(*port), None).await;
                if self.fp.tripped() {
                    self.crash_now = true;
                }
                match r {
                    Ok(o) => self.log(format!(
                        "api stop {dev}/{port} -> {} {}",
                        o.order_no, o.status
                    )),
                    Err(e) => self.log(format!("api stop {dev}/{port}: {e}")),
                }
            }
            Op::CablePull { pile, secs } => {
                self.log(format!("fault: cable pull p{pile} {secs}s"));
                self.piles[*pile].pile.drop_network(now_i, Some(*secs));
                self.pile_actions(*pile).await;
            }
            Op::HalfOpen { pile, secs } => {
                self.log(format!("fault: half-open p{pile} {secs}s"));
                if let Some(c) = self.piles[*pile].conn.and_then(|c| self.conns.get_mut(&c)) {
                    c.blackhole_until = now + *secs as i64 * 1000;
                }
            }
            Op::Lossy { pile, up, secs } => {
                self.log(format!("fault: lossy p{pile} up={up} {secs}s"));
                let until = now + *secs as i64 * 1000;
                let n = &mut self.piles[*pile].net;
                if *up {
                    n.lossy_up_until = until;
                } else {
                    n.lossy_down_until = until;
                }
            }
            Op::Duplicate { pile, secs } => {
                self.log(format!("fault: duplicate p{pile} {secs}s"));
                self.piles[*pile].net.dup_until = now + *secs as i64 * 1000;
            }
            Op::Delay { pile, secs } => {
                self.log(format!("fault: delay p{pile} {secs}s"));
                let until = now + *secs as i64 * 1000;
                self.piles[*pile].net.delay_until = until;
                self.delays.push((*pile, now, until + 3_000));
            }
            Op::LoseAcks { pile, secs } => {
                self.log(format!("fault: lose acks p{pile} {secs}s"));
                self.piles[*pile].net.lose_acks_until = now + *secs as i64 * 1000;
            }
            Op::Crash { writes, down_secs } => {
                if self.svc.is_some() && self.pending_restart.is_none() {
                    self.log(format!("fault: crash after {writes} writes"));
                    self.fp.arm(*writes);
                    self.crash_down_ms = *down_secs as i64 * 1000;
                }
            }
            Op::Reboot { pile, secs } => {
                self.log(format!("fault: reboot p{pile} {secs}s"));
                self.piles[*pile].pile.power_outage(now_i, *secs);
                self.pile_actions(*pile).await;
                self.collect_ends(*pile);
            }
            Op::Unplug { pile, port } => {
                self.log(format!("fault: unplug p{pile}/{port}"));
                if self.piles[*pile].pile.unplug(now_i, *port).is_ok()
                    && self.piles[*pile].family == Family::Ap3000
                {
                    self.piles[*pile].replug_at.push((now + 10_000, *port));
                }
                self.collect_ends(*pile);
                self.pile_actions(*pile).await;
            }
        }
    }

    async fn sweep(&mut self) {
        let Some(svc) = self.svc.clone() else {
            return;
        };
        svc.writer.flush().await;
        if self.fp.tripped() {
            self.crash_now = true;
            return;
        }
        match svc.sweep().await {
            Ok(s) => {
                if s != Default::default() {
                    self.log(format!("sweep {s:?}"));
                }
            }
            Err(e) => self.log(format!("sweep failed: {e}")),
        }
        if self.fp.tripped() {
            self.crash_now = true;
            return;
        }
        svc.writer.flush().await;
        if self.fp.tripped() {
            self.crash_now = true;
        }
    }

    // -----------------------------------------------------------------------------------------
    // The gateway side

    fn accept(&mut self, pile: usize) -> u64 {
        self.next_conn += 1;
        let id = self.next_conn;
        let (tx, rx) = mpsc::channel(64);
        let close = CancellationToken::new();
        let link = SessionLink {
            conn_id: id,
            handle: SessionHandle {
                conn_id: id,
                commands: tx,
                close: close.clone(),
            },
        };
        let core = SessionCore::new(
            self.core_cfg.clone(),
            id,
            format!("10.0.0.{}:{}", pile + 1, 40_000 + (id % 20_000)),
            self.clock.now_ms(),
        );
        self.conns.insert(
            id,
            Conn {
                gw: Some(GwSide {
                    core,
                    link,
                    mailbox: rx,
                    close,
                }),
                pile: Some(pile),
                up: VecDeque::new(),
                down: VecDeque::new(),
                blackhole_until: 0,
            },
        );
        id
    }

    /// Applies the core's intents (in order, results back), stopping at a crash.
    async fn drive(&mut self, id: u64) {
        let Some(svc) = self.svc.clone() else {
            return;
        };
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            let Some(g) = c.gw.as_mut() else {
                return;
            };
            let Some(intent) = g.core.poll_intent() else {
                return;
            };
            if let Intent::MarkSent {
                command_id,
                request_hex,
                ..
            } = &intent
            {
                self.starts.insert(request_hex.to_lowercase(), *command_id);
            }
            let dev = g.core.device_id().map(|d| d.to_string());
            let link = g.link.clone();
            let r = svc.apply(&link, dev.as_deref(), intent).await;
            if self.fp.tripped() {
                self.crash_now = true;
                return;
            }
            if let Some((token, result)) = r {
                if let Some(g) = self.conns.get_mut(&id).and_then(|c| c.gw.as_mut()) {
                    g.core.handle_result(self.clock.now_ms(), token, result);
                }
            }
        }
    }

    async fn end_session(&mut self, id: u64, why: &str) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(g) = c.gw.take() else {
            return;
        };
        let offline = matches!(g.core.close_reason(), Some(CloseReason::Offline));
        let at = (self.now + LATENCY_MS).max(c.blackhole_until);
        c.down.push_back((at, Pkt::Fin));
        c.up.clear();
        let dev = g.core.device_id().map(|d| d.to_string());
        self.log(format!("gw conn {id} ends: {why} (device {dev:?})"));
        if let (Some(dev), Some(svc)) = (dev, self.svc.clone()) {
            svc.session_ended(&dev, id, offline, false).await;
            if self.fp.tripped() {
                self.crash_now = true;
            }
        }
    }

    async fn gw_step(&mut self, id: u64) {
        let now = self.now;
        let now_ms = self.clock.now_ms();
        // Bytes and FINs that arrived.
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            if c.gw.is_none() {
                c.up.clear();
                return;
            }
            match c.up.front() {
                Some((t, _)) if *t <= now => {}
                _ => break,
            }
            let (_, pkt) = c.up.pop_front().expect("front");
            match pkt {
                Pkt::Data(b) => {
                    if let Some(g) = c.gw.as_mut() {
                        g.core.handle_bytes(now_ms, &b);
                    }
                    self.drive(id).await;
                    if self.crash_now {
                        return;
                    }
                }
                Pkt::Fin => {
                    self.end_session(id, "closed by peer").await;
                    return;
                }
            }
        }
        // Commands, timers.
        {
            let Some(g) = self.conns.get_mut(&id).and_then(|c| c.gw.as_mut()) else {
                return;
            };
            while let Ok(cmd) = g.mailbox.try_recv() {
                g.core.handle_command(now_ms, *cmd);
            }
            if g.core.poll_timeout().is_some_and(|d| d <= now_ms) {
                g.core.handle_timeout(now_ms);
            }
        }
        self.drive(id).await;
        if self.crash_now {
            return;
        }
        // Frames out.
        let mut out = Vec::new();
        let (replaced, closed) = {
            let Some(g) = self.conns.get_mut(&id).and_then(|c| c.gw.as_mut()) else {
                return;
            };
            while let Some(t) = g.core.poll_transmit() {
                out.push(t);
            }
            (
                g.close.is_cancelled(),
                g.core.close_reason().map(|r| r.as_str().to_string()),
            )
        };
        for t in out {
            self.send_down(id, t.bytes, t.kind);
        }
        if let Some(r) = closed {
            self.end_session(id, &r).await;
        } else if replaced {
            self.end_session(id, "replaced by a new connection").await;
        }
    }

    fn send_down(&mut self, id: u64, bytes: Bytes, kind: &'static str) {
        let now = self.now;
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        let Some(pile) = c.pile else {
            return; // into a socket nobody reads
        };
        if now < c.blackhole_until {
            return;
        }
        let net = self.piles[pile].net.clone();
        if kind == "ack" && now < net.lose_acks_until {
            self.log(format!("net: ack to p{pile} lost"));
            return;
        }
        if now < net.lossy_down_until && self.rng.gen_ratio(1, 3) {
            self.log(format!("net: {kind} to p{pile} lost"));
            return;
        }
        let extra = if now < net.delay_until {
            self.rng.gen_range(500..3_000)
        } else {
            0
        };
        let c = self.conns.get_mut(&id).expect("conn");
        let last = c.down.back().map_or(0, |(t, _)| *t);
        c.down
            .push_back(((now + LATENCY_MS + extra).max(last), Pkt::Data(bytes)));
    }

    // -----------------------------------------------------------------------------------------
    // The pile side

    fn send_up(&mut self, pile: usize, bytes: Bytes) {
        let now = self.now;
        let Some(id) = self.piles[pile].conn else {
            return;
        };
        let net = self.piles[pile].net.clone();
        let Some(c) = self.conns.get(&id) else {
            return;
        };
        if c.gw.is_none() || now < c.blackhole_until {
            return;
        }
        if now < net.lossy_up_until && self.rng.gen_ratio(1, 3) {
            self.log(format!("net: frame from p{pile} lost"));
            return;
        }
        let copies = if now < net.dup_until { 2 } else { 1 };
        let extra = if now < net.delay_until {
            self.rng.gen_range(500..3_000)
        } else {
            0
        };
        let c = self.conns.get_mut(&id).expect("conn");
        for _ in 0..copies {
            let last = c.up.back().map_or(0, |(t, _)| *t);
            c.up.push_back((
                (now + LATENCY_MS + extra).max(last),
                Pkt::Data(bytes.clone()),
            ));
        }
    }

    async fn pile_step(&mut self, i: usize) {
        let now = self.now;
        let now_i = self.at(now);
        // Re-plugs.
        let due: Vec<u16> = self.piles[i]
            .replug_at
            .iter()
            .filter(|(t, _)| *t <= now)
            .map(|(_, p)| *p)
            .collect();
        self.piles[i].replug_at.retain(|(t, _)| *t > now);
        for port in due {
            let _ = self.piles[i].pile.plug(now_i, port);
        }
        // What arrived on its socket.
        if let Some(id) = self.piles[i].conn {
            loop {
                let Some(c) = self.conns.get_mut(&id) else {
                    self.piles[i].conn = None;
                    break;
                };
                match c.down.front() {
                    Some((t, _)) if *t <= now => {}
                    _ => break,
                }
                let (_, pkt) = c.down.pop_front().expect("front");
                match pkt {
                    Pkt::Data(b) => {
                        let before = self.port_orders(i);
                        let actions = self.piles[i].pile.on_bytes(now_i, &b);
                        self.note_starts(i, &before, &b);
                        self.do_actions(i, actions).await;
                    }
                    Pkt::Fin => {
                        c.pile = None;
                        self.piles[i].conn = None;
                        self.piles[i].pile.on_disconnected(now_i);
                        break;
                    }
                }
            }
        }
        self.pile_actions(i).await;
        self.collect_ends(i);
    }

    async fn pile_actions(&mut self, i: usize) {
        let now_i = self.at(self.now);
        let actions = self.piles[i].pile.poll(now_i);
        self.do_actions(i, actions).await;
        self.collect_ends(i);
    }

    async fn do_actions(&mut self, i: usize, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            let now_i = self.at(self.now);
            match a {
                Action::Connect => {
                    if self.svc.is_none() {
                        self.piles[i].pile.on_connect_failed(now_i);
                        continue;
                    }
                    let id = self.accept(i);
                    self.piles[i].conn = Some(id);
                    self.log(format!("p{i} connects (conn {id})"));
                    let more = self.piles[i].pile.on_connected(now_i);
                    queue.extend(more);
                }
                Action::Write(b) | Action::WriteSplit(b) => self.send_up(i, b),
                Action::Abandon => {
                    if let Some(id) = self.piles[i].conn.take() {
                        if let Some(c) = self.conns.get_mut(&id) {
                            c.pile = None;
                        }
                    }
                }
                Action::Close => {
                    if let Some(id) = self.piles[i].conn.take() {
                        if let Some(c) = self.conns.get_mut(&id) {
                            c.pile = None;
                            let at = (self.now + LATENCY_MS).max(c.blackhole_until);
                            c.up.push_back((at, Pkt::Fin));
                        }
                    }
                }
            }
        }
    }

    fn port_orders(&self, i: usize) -> Vec<(u16, Option<Order>)> {
        self.piles[i]
            .pile
            .state
            .ports
            .iter()
            .map(|p| (p.no, p.charge.as_ref().map(|c| c.order)))
            .collect()
    }

    /// A charge that appeared while `bytes` were handled was started by them.
    fn note_starts(&mut self, i: usize, before: &[(u16, Option<Order>)], bytes: &[u8]) {
        let after = self.port_orders(i);
        for ((port, b), (_, a)) in before.iter().zip(after.iter()) {
            if let Some(order) = a {
                if b.as_ref() != Some(order) {
                    let cmd = self.starts.get(&hex::encode(bytes)).copied();
                    let label = cmd.map(|c| format!("cmd{c}"));
                    self.log(format!(
                        "p{i}/{port} starts charge {} ({})",
                        order.display(),
                        label.clone().unwrap_or_else(|| "unknown bytes".into())
                    ));
                    self.piles[i]
                        .running
                        .insert(*port, (*order, label, self.now));
                }
            }
        }
    }

    /// Moves charges the pile ended into the ground truth.
    fn collect_ends(&mut self, i: usize) {
        let Some(log) = self.piles[i].pile.state.ends_log.as_mut() else {
            return;
        };
        let ends = std::mem::take(log);
        for (at, rec) in ends {
            let ended_ms = at.saturating_duration_since(self.t0).as_millis() as i64;
            let started = self.piles[i].running.remove(&rec.port_no);
            let (label, started_ms) = match started {
                Some((o, label, t)) if o == rec.order => (label, t),
                _ => (None, ended_ms - rec.duration_s as i64 * 1000),
            };
            let dev = self.piles[i].pile.id().to_string();
            self.log(format!(
                "p{i}/{} charge ends {:?}: {:.2} Wh, {} s",
                rec.port_no, rec.reason, rec.energy_wh, rec.duration_s
            ));
            self.truth.push(Delivered {
                pile: i,
                device_id: dev,
                port: rec.port_no,
                order_no: label,
                started_ms,
                ended_ms: Some(ended_ms),
                end: Some(rec),
            });
        }
    }

    // -----------------------------------------------------------------------------------------
    // Invariants

    async fn orders(&mut self) -> Vec<OrderRow> {
        match self.store.orders(None, None, 1, 1000).await {
            Ok((rows, _)) => rows,
            Err(e) => {
                self.fail(format!("store: listing orders failed: {e}"));
                Vec::new()
            }
        }
    }

    /// Checked every sweep: order states only move forward, settled figures never change.
    async fn step_checks(&mut self) {
        for o in self.orders().await {
            let prev = self.last_status.insert(o.order_no.clone(), o.status);
            if let Some(p) = prev {
                if !p.is_active() && p != o.status {
                    self.fail(format!(
                        "order {} left terminal state {p} for {}",
                        o.order_no, o.status
                    ));
                }
            }
            if o.status == OrderStatus::Completed {
                let fig = (o.energy_wh, o.duration_sec, o.final_amount);
                if let Some(seen) = self.settled_seen.get(&o.order_no).copied() {
                    if seen != fig {
                        self.fail(format!(
                            "order {} billed twice: {seen:?} then {fig:?}",
                            o.order_no
                        ));
                    }
                } else {
                    self.settled_seen.insert(o.order_no.clone(), fig);
                }
            }
        }
    }

    async fn final_checks(&mut self) {
        self.step_checks().await;
        // Resolve the command → order mapping.
        // (From the labels: equal bytes on two connections map to the later command.)
        let mut cmds: Vec<i64> = self
            .truth
            .iter()
            .filter_map(|d| d.order_no.as_ref()?.strip_prefix("cmd")?.parse().ok())
            .collect();
        cmds.sort_unstable();
        cmds.dedup();
        for id in cmds {
            if let Ok(Some(row)) = self.store.command(id).await {
                if let Some(o) = row.order_no {
                    self.command_orders.insert(id, o);
                }
            }
        }
        let orders: HashMap<String, OrderRow> = self
            .orders()
            .await
            .into_iter()
            .map(|o| (o.order_no.clone(), o))
            .collect();
        // Every charge a pile delivered is billed once, to its order, with its energy.
        let mut charged: HashMap<String, usize> = HashMap::new();
        let truth = self.truth.clone();
        for d in &truth {
            let Some(rec) = &d.end else { continue };
            let order_no = d
                .order_no
                .as_ref()
                .and_then(|l| l.strip_prefix("cmd"))
                .and_then(|n| n.parse::<i64>().ok())
                .and_then(|c| self.command_orders.get(&c).cloned());
            let Some(order_no) = order_no else {
                self.fail(format!(
                    "{}/{} ran a charge ({:.2} Wh) no order's start command started",
                    d.device_id, d.port, rec.energy_wh
                ));
                continue;
            };
            *charged.entry(order_no.clone()).or_default() += 1;
            if charged[&order_no] > 1 {
                self.fail(format!(
                    "order {order_no} started more than one charge on {}/{}",
                    d.device_id, d.port
                ));
                continue;
            }
            let Some(o) = orders.get(&order_no) else {
                self.fail(format!("order {order_no} vanished"));
                continue;
            };
            let n = self.store.settlement_count(&order_no).await.unwrap_or(-1);
            if n != 1 {
                self.fail(format!(
                    "order {order_no}: delivered {:.2} Wh, settled {n} times (status {})",
                    rec.energy_wh, o.status
                ));
                continue;
            }
            let family = self.piles[d.pile].family;
            let wire_wh = match family {
                Family::Bkv => rec.energy_wh.floor() as i64,
                Family::Ap3000 => (rec.energy_wh / 10.0).floor() as i64 * 10,
            };
            if o.energy_wh != wire_wh {
                self.fail(format!(
                    "order {order_no}: billed {} Wh, the pile delivered {:.2} Wh (wire {wire_wh}) [{}]",
                    o.energy_wh,
                    rec.energy_wh,
                    o.duration_source.as_deref().unwrap_or("-")
                ));
            }
            if o.duration_source.as_deref() == Some("gateway") {
                let truth_ms = d.ended_ms.unwrap_or(d.started_ms) - d.started_ms;
                let delayed = self.delays.iter().any(|(p, a, b)| {
                    *p == d.pile
                        && ((d.started_ms >= *a && d.started_ms <= *b)
                            || (d.ended_ms.unwrap_or(0) >= *a && d.ended_ms.unwrap_or(0) <= *b))
                });
                let slack = if delayed {
                    7_000
                } else {
                    1_000 + 4 * LATENCY_MS
                };
                if (o.duration_sec * 1000 - truth_ms).abs() > slack {
                    self.fail(format!(
                        "order {order_no}: billed {} s on the gateway clock, the pile ran {:.1} s",
                        o.duration_sec,
                        truth_ms as f64 / 1000.0
                    ));
                }
            }
            if o.amount > 0 && o.final_amount > o.amount {
                self.fail(format!(
                    "order {order_no}: billed {} fen over its cap {}",
                    o.final_amount, o.amount
                ));
            }
        }
        // No order stuck, no port busy without a charge; every accepted start reached the pile
        // or its order ended with a reason; nothing billed that no pile delivered.
        let accepted = self.accepted.clone();
        for a in &accepted {
            let Some(o) = orders.get(&a.order_no) else {
                self.fail(format!("accepted order {} is not stored", a.order_no));
                continue;
            };
            if o.status.is_active() {
                self.fail(format!(
                    "order {} still {} after the drain (port {}/{} busy, the pile runs {})",
                    o.order_no,
                    o.status,
                    a.device_id,
                    a.port,
                    if charged.contains_key(&o.order_no) {
                        "its charge"
                    } else {
                        "nothing for it"
                    }
                ));
                continue;
            }
            if !charged.contains_key(&o.order_no) {
                if o.end_reason.is_none() {
                    self.fail(format!(
                        "order {} never reached its pile and ended without a reason",
                        o.order_no
                    ));
                }
                if o.energy_wh > 0 || o.final_amount > 0 {
                    self.fail(format!(
                        "order {} billed {} Wh / {} fen but no pile ran it",
                        o.order_no, o.energy_wh, o.final_amount
                    ));
                }
            }
        }
        let now_i = self.at(self.now);
        for i in 0..self.piles.len() {
            let snap = self.piles[i].pile.snapshot(now_i);
            for p in snap.ports.iter().filter(|p| p.charge.is_some()) {
                self.fail(format!(
                    "{}/{} still charging at the end of the run",
                    snap.id, p.port_no
                ));
            }
        }
        self.outbox_checks().await;
    }

    /// Every outbox event has one ID; per order, events come in lifecycle order.
    async fn outbox_checks(&mut self) {
        let rows = match self.store.outbox_after(0, 100_000).await {
            Ok(r) => r,
            Err(e) => {
                self.fail(format!("store: outbox failed: {e}"));
                return;
            }
        };
        let mut ids = HashSet::new();
        let mut per_order: HashMap<String, Vec<String>> = HashMap::new();
        for r in &rows {
            if !ids.insert(r.event_id.clone()) {
                self.fail(format!("outbox event ID {} used twice", r.event_id));
            }
            if let Some(o) = &r.order_no {
                if r.event_type.starts_with("order.") || r.event_type.starts_with("charging.") {
                    per_order
                        .entry(o.clone())
                        .or_default()
                        .push(r.event_type.clone());
                }
            }
        }
        let rank = |t: &str| match t {
            "order.created" => 0,
            "order.confirmed" | "charging.started" => 1,
            _ => 2,
        };
        let mut keys: Vec<_> = per_order.keys().cloned().collect();
        keys.sort();
        for o in keys {
            let evs = &per_order[&o];
            let terminal = evs
                .iter()
                .filter(|t| {
                    matches!(
                        t.as_str(),
                        "order.completed" | "order.cancelled" | "order.failed"
                    )
                })
                .count();
            let ordered = evs.windows(2).all(|w| rank(&w[0]) <= rank(&w[1]));
            let late = evs.iter().any(|t| t == "order.completed") && terminal == 2;
            if !ordered && !late {
                self.fail(format!("order {o}: events out of order: {evs:?}"));
            }
            if terminal > 2 || (terminal == 2 && !late) {
                self.fail(format!("order {o}: {terminal} terminal events: {evs:?}"));
            }
            if evs.first().map(String::as_str) != Some("order.created") {
                self.fail(format!(
                    "order {o}: first event is not order.created: {evs:?}"
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running seeds, shrinking, reporting

/// Runs `scenario` on a fresh single-threaded runtime.
pub fn run_blocking(scenario: &Scenario) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(scenario))
}

/// The shortest schedule (by dropping entries one at a time) that still fails.
pub fn shrink(scenario: &Scenario, rt: &tokio::runtime::Runtime) -> (Vec<usize>, Outcome) {
    let db = rt.block_on(Db::new());
    let mut keep: Vec<usize> = (0..scenario.schedule.len()).collect();
    let mut best = rt.block_on(run_in(&db, scenario));
    let mut i = 0;
    while i < keep.len() {
        let mut trial = keep.clone();
        trial.remove(i);
        let out = rt.block_on(run_in(&db, &scenario.keep(&trial)));
        if !out.ok() {
            keep = trial;
            best = out;
        } else {
            i += 1;
        }
    }
    (keep, best)
}

/// The failure report of a seed: the replay command, the shrunk schedule and its trace.
pub fn report(scenario: &Scenario, keep: &[usize], out: &Outcome) -> String {
    let mut s = String::new();
    let keep_s: Vec<String> = keep.iter().map(|i| i.to_string()).collect();
    let _ = writeln!(
        s,
        "faultsim seed {}. Replay: FAULTSIM_SEED={} cargo test -p pile-faultsim --test sim -- replay --nocapture",
        scenario.seed, scenario.seed
    );
    let _ = writeln!(
        s,
        "shrunk: FAULTSIM_SEED={} FAULTSIM_KEEP={} cargo test -p pile-faultsim --test sim -- replay --nocapture",
        scenario.seed,
        if keep_s.is_empty() {
            "none".to_string()
        } else {
            keep_s.join(",")
        }
    );
    let _ = writeln!(s, "piles: {:?}", scenario.piles);
    let _ = writeln!(s, "shortest failing schedule ({} entries):", keep.len());
    for i in keep {
        let _ = writeln!(s, "  [{i}] {:?}", scenario.schedule[*i]);
    }
    let _ = writeln!(s, "failures:");
    for f in &out.failures {
        let _ = writeln!(s, "  - {f}");
    }
    let _ = writeln!(s, "trace:");
    for l in &out.trace {
        let _ = writeln!(s, "  {l}");
    }
    s
}
