//! `pile-load fleet`: N simulated piles (the `pile-sim` library, in this process) against a
//! gateway, optionally with start/stop traffic through its API, and what it cost the gateway.
//!
//! One run: take a baseline of the gateway process, start the fleet with a [`Recorder`] as its
//! observer (connect latency, heartbeat round trips and received commands are timed in the
//! simulator's driver tasks), sample the gateway (process, online count) once per
//! `sample_interval` while the open-model charge schedule runs, and at `duration` take the final
//! readings with the fleet still connected, then shut the fleet down.

mod report;
pub mod sample;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pile_api::{charge_mode, ChargeRequest, Client, DeviceListQuery, OrderStatus, StopRequest};
use pile_sim::config::{FleetConfig, IpRange, ProtocolChoice};
use pile_sim::fleet::FleetHandle;
use pile_sim::observe::{CommandKind, FleetObserver, Observer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

pub use report::{Commands, FleetReport, GatewayProcess, Latency, SCHEMA_VERSION};
use sample::{ProcSample, Series, Source};

/// Highest accepted `--ramp`: a bound, so a typo cannot dial 100 k connections at once.
pub const MAX_RAMP: f64 = 20_000.0;
/// Highest accepted `--charge-rate`.
pub const MAX_CHARGE_RATE: f64 = 1_000.0;

/// What a fleet run needs. [`FleetLoadConfig::new`] gives the CLI's defaults.
#[derive(Debug, Clone)]
pub struct FleetLoadConfig {
    /// The gateway's device address, `HOST:PORT` (loopback only).
    pub server: String,
    /// The gateway's HTTP API, `http://HOST:PORT` (loopback only).
    pub api: String,
    pub api_key: String,
    pub devices: u32,
    pub protocol: ProtocolChoice,
    /// New connections per second at start.
    pub ramp: f64,
    pub heartbeat: Duration,
    /// How long the fleet runs, ramp included.
    pub duration: Duration,
    /// Start commands per second on random idle ports; 0 for none.
    pub charge_rate: f64,
    /// The gateway's PID, to sample `/proc/PID`.
    pub server_pid: Option<u32>,
    pub seed: u64,
    /// Source addresses to spread piles over (within 127.0.0.0/8).
    pub source_ips: Option<IpRange>,
    /// Ports per pile.
    pub ports: u16,
    /// How often the gateway is sampled.
    pub sample_interval: Duration,
    /// A charge that is not `charging` this long after the call counts as a timeout; the same
    /// bound applies to stops.
    pub command_timeout: Duration,
    /// How long a charge runs before the generator stops it (drawn per charge up to this).
    pub hold: Duration,
}

impl FleetLoadConfig {
    pub fn new(
        server: impl Into<String>,
        api: impl Into<String>,
        api_key: impl Into<String>,
    ) -> Self {
        FleetLoadConfig {
            server: server.into(),
            api: api.into(),
            api_key: api_key.into(),
            devices: 100,
            protocol: ProtocolChoice::Bkv,
            ramp: 1000.0,
            heartbeat: Duration::from_secs(11),
            duration: Duration::from_secs(30),
            charge_rate: 0.0,
            server_pid: None,
            seed: 0,
            source_ips: None,
            ports: 4,
            sample_interval: Duration::from_secs(1),
            command_timeout: Duration::from_secs(10),
            hold: Duration::from_secs(3),
        }
    }
}

/// Why a run could not start. Everything that goes wrong during a run is in the report.
#[derive(Debug, Error)]
pub enum FleetLoadError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0} is not a loopback address: pile-load fleet only talks to 127.0.0.0/8")]
    NotLoopback(String),
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error(transparent)]
    Fleet(#[from] pile_sim::fleet::FleetError),
}

/// The run's observer: timings from the piles' driver tasks into sharded histograms.
struct Recorder {
    connect: Vec<Mutex<Histogram<u64>>>,
    heartbeat: Vec<Mutex<Histogram<u64>>>,
    /// The first answered heartbeat of each connection, and all later ones.
    heartbeat_first: Vec<Mutex<Histogram<u64>>>,
    heartbeat_steady: Vec<Mutex<Histogram<u64>>>,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    reconnects: AtomicU64,
    /// Per pile: a heartbeat was answered on the current connection.
    answered: Vec<AtomicBool>,
    /// (pile, port) → when the start command arrived, for the charges in flight.
    awaiting: Mutex<HashMap<(u32, u16), Option<Instant>>>,
}

const SHARDS: usize = 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Recorder {
    fn new(devices: u32) -> Recorder {
        let shards = || {
            (0..SHARDS)
                .map(|_| Mutex::new(report::histogram()))
                .collect()
        };
        Recorder {
            connect: shards(),
            heartbeat: shards(),
            heartbeat_first: shards(),
            heartbeat_steady: shards(),
            connects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            answered: (0..devices).map(|_| AtomicBool::new(false)).collect(),
            awaiting: Mutex::new(HashMap::new()),
        }
    }

    /// A pile is ready for commands once the gateway answered a heartbeat on its current
    /// connection: by then the gateway has registered it.
    fn ready(&self, pile: u32) -> bool {
        self.answered
            .get(pile as usize)
            .is_some_and(|a| a.load(Ordering::Relaxed))
    }

    fn merged(shards: &[Mutex<Histogram<u64>>]) -> Histogram<u64> {
        let mut all = report::histogram();
        for s in shards {
            report::merge(&mut all, &lock(s));
        }
        all
    }
}

impl FleetObserver for Recorder {
    fn connected(&self, pile: u32, latency: Duration, nth: u64) {
        report::record(&mut lock(&self.connect[pile as usize % SHARDS]), latency);
        self.connects.fetch_add(1, Ordering::Relaxed);
        if nth > 1 {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(a) = self.answered.get(pile as usize) {
            a.store(false, Ordering::Relaxed);
        }
    }

    fn connect_failed(&self, _pile: u32, _after: Duration) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }

    fn heartbeat_rtt(&self, pile: u32, rtt: Duration) {
        let shard = pile as usize % SHARDS;
        report::record(&mut lock(&self.heartbeat[shard]), rtt);
        let first = self
            .answered
            .get(pile as usize)
            .is_some_and(|a| !a.swap(true, Ordering::Relaxed));
        let split = if first {
            &self.heartbeat_first
        } else {
            &self.heartbeat_steady
        };
        report::record(&mut lock(&split[shard]), rtt);
    }

    fn command(&self, pile: u32, kind: CommandKind, port_no: Option<u16>) {
        if kind != CommandKind::Start {
            return;
        }
        let Some(port) = port_no else { return };
        if let Some(slot) = lock(&self.awaiting).get_mut(&(pile, port)) {
            slot.get_or_insert_with(Instant::now);
        }
    }
}

fn check_loopback(what: &str, addr: IpAddr) -> Result<(), FleetLoadError> {
    if addr.is_loopback() {
        Ok(())
    } else {
        Err(FleetLoadError::NotLoopback(format!("{what} {addr}")))
    }
}

async fn resolve_loopback(what: &str, host_port: &str) -> Result<SocketAddr, FleetLoadError> {
    let addr = tokio::net::lookup_host(host_port)
        .await
        .map_err(|_| FleetLoadError::Resolve(host_port.to_string()))?
        .next()
        .ok_or_else(|| FleetLoadError::Resolve(host_port.to_string()))?;
    check_loopback(what, addr.ip())?;
    Ok(addr)
}

async fn validate(cfg: &FleetLoadConfig) -> Result<(), FleetLoadError> {
    let bad = |m: &str| Err(FleetLoadError::Config(m.to_string()));
    if cfg.devices == 0 {
        return bad("--devices must be at least 1");
    }
    if !(cfg.ramp > 0.0 && cfg.ramp <= MAX_RAMP) {
        return bad("--ramp must be within (0, 20000] connections/s");
    }
    if cfg.duration.is_zero() {
        return bad("--duration must be positive");
    }
    let ramp_time = Duration::from_secs_f64(f64::from(cfg.devices - 1) / cfg.ramp);
    if ramp_time >= cfg.duration {
        return bad("the ramp (--devices / --ramp) must end before --duration");
    }
    if !(cfg.charge_rate >= 0.0 && cfg.charge_rate <= MAX_CHARGE_RATE) {
        return bad("--charge-rate must be within [0, 1000] per second");
    }
    if cfg.sample_interval.is_zero() || cfg.command_timeout.is_zero() {
        return bad("sample interval and command timeout must be positive");
    }
    resolve_loopback("--server", &cfg.server).await?;
    let rest = cfg
        .api
        .strip_prefix("http://")
        .ok_or_else(|| FleetLoadError::Config("--api must be http://HOST:PORT".into()))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    resolve_loopback("--api", &host_port).await?;
    if let Some(r) = cfg.source_ips {
        check_loopback("--source-ips", IpAddr::V4(r.first))?;
        check_loopback("--source-ips", IpAddr::V4(r.last))?;
    }
    Ok(())
}

/// The gateway's view: how many piles it reports online, and from which route.
async fn gateway_online(client: &Client) -> Option<(u64, &'static str)> {
    let query = DeviceListQuery {
        online: Some(true),
        page: Some(1),
        size: Some(1),
    };
    if let Ok(page) = client.devices(&query).await {
        return Some((page.total.max(0) as u64, "devices"));
    }
    let stats = client.stats().await.ok()?;
    Some((stats.online_devices.max(0) as u64, "stats"))
}

async fn sample_gateway(source: &Source, http: &reqwest::Client) -> Option<ProcSample> {
    match source {
        Source::Proc(pid) => sample::read_proc(*pid).ok(),
        Source::Metrics(url) => sample::read_metrics(http, url).await,
        Source::None => None,
    }
}

/// Runs the fleet for `config.duration` and reports. `Err` only when the run cannot start
/// (bad configuration, a non-loopback address, an unresolvable server).
pub async fn run(config: FleetLoadConfig) -> Result<FleetReport, FleetLoadError> {
    validate(&config).await?;
    pile_sim::fleet::raise_fd_limit(u64::from(config.devices) + 1024);
    let api = config.api.trim_end_matches('/').to_string();
    let http = reqwest::Client::builder()
        .timeout(config.command_timeout)
        .build()
        .unwrap_or_default();
    let client = Client::with_http(http.clone(), &api, &config.api_key);

    // Where the gateway's CPU and RSS come from: /proc when its PID is given, else /metrics.
    let source = match config.server_pid {
        Some(pid) => {
            sample::read_proc(pid).map_err(|e| {
                FleetLoadError::Config(format!("--server-pid {pid}: cannot read /proc/{pid}: {e}"))
            })?;
            Source::Proc(pid)
        }
        None => {
            let url = format!("{api}/metrics");
            match sample::read_metrics(&http, &url).await {
                Some(_) => Source::Metrics(url),
                None => Source::None,
            }
        }
    };
    let mut series = Series::default();
    let rss_start = sample_gateway(&source, &http).await.map(|s| {
        series.push(s);
        s.rss_bytes
    });

    let recorder = Arc::new(Recorder::new(config.devices));
    let fleet_cfg = FleetConfig {
        server: config.server.clone(),
        devices: config.devices,
        protocol: config.protocol,
        ports: config.ports,
        heartbeat: config.heartbeat,
        ramp_per_sec: config.ramp,
        source_ips: config.source_ips,
        seed: config.seed,
        // Frames are kept for inspection only; at 100 k piles they would cost hundreds of MB.
        frames_kept: 0,
        observer: Some(Observer(recorder.clone())),
        ..FleetConfig::default()
    };
    let ids: Vec<String> = fleet_cfg
        .identities()
        .map_err(|e| FleetLoadError::Config(e.to_string()))?
        .into_iter()
        .map(|p| p.id)
        .collect();
    let started = Instant::now();
    let deadline = started + config.duration;
    let fleet = FleetHandle::start(fleet_cfg).await?;

    let traffic = (config.charge_rate > 0.0).then(|| {
        tokio::spawn(charge_traffic(
            config.clone(),
            fleet.clone(),
            Arc::new(ids),
            client.clone(),
            recorder.clone(),
            deadline,
        ))
    });

    let mut connected_max = 0u64;
    let mut online_max: Option<u64> = None;
    let mut online_source = "none";
    let mut tick = tokio::time::interval(config.sample_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep(deadline - now) => break,
        }
        if let Some(s) = sample_gateway(&source, &http).await {
            series.push(s);
        }
        connected_max = connected_max.max(fleet.summary().online as u64);
        if let Some((n, src)) = gateway_online(&client).await {
            online_max = Some(online_max.map_or(n, |m| m.max(n)));
            online_source = src;
        }
    }

    // Final readings with the fleet still connected.
    let end_sample = sample_gateway(&source, &http).await;
    if let Some(s) = end_sample {
        series.push(s);
    }
    let connected = fleet.summary().online as u64;
    connected_max = connected_max.max(connected);
    let online = gateway_online(&client).await.map(|(n, src)| {
        online_source = src;
        online_max = Some(online_max.map_or(n, |m| m.max(n)));
        n
    });
    let traffic = match traffic {
        Some(t) => t.await.unwrap_or_default(),
        None => Traffic::default(),
    };
    let duration = started.elapsed();
    fleet.shutdown().await;

    let rss_end = end_sample.map(|s| s.rss_bytes);
    let per_pile = |bytes: Option<u64>| {
        bytes
            .filter(|_| connected > 0)
            .map(|b| b as f64 / connected as f64)
    };
    let gateway_process = GatewayProcess {
        source: source.name().to_string(),
        pid: config.server_pid,
        samples: series.samples.len(),
        cpu_percent_mean: series.cpu_percent_mean(),
        cpu_percent_max: series.cpu_percent_max(),
        rss_start_bytes: rss_start,
        rss_end_bytes: rss_end,
        rss_max_bytes: series.rss_max(),
        rss_per_pile_bytes: per_pile(rss_end),
        rss_delta_per_pile_bytes: match (rss_start, rss_end) {
            (Some(a), Some(b)) if connected > 0 => Some((b as f64 - a as f64) / connected as f64),
            _ => None,
        },
    };
    let mut commands = traffic.commands;
    commands.rate = config.charge_rate;
    commands.failed = commands.started - commands.charging;
    commands.success_rate = if commands.started == 0 {
        100.0
    } else {
        commands.charging as f64 * 100.0 / commands.started as f64
    };
    Ok(FleetReport {
        schema_version: SCHEMA_VERSION,
        server: config.server.clone(),
        api,
        protocol: format!("{:?}", config.protocol).to_ascii_lowercase(),
        devices: config.devices,
        ramp: config.ramp,
        heartbeat_s: config.heartbeat.as_secs_f64(),
        seed: config.seed,
        duration_s: duration.as_secs_f64(),
        piles_connected: connected,
        piles_connected_max: connected_max,
        gateway_online: online,
        gateway_online_max: online_max,
        gateway_online_source: online_source.to_string(),
        connects: recorder.connects.load(Ordering::Relaxed),
        connect_failures: recorder.connect_failures.load(Ordering::Relaxed),
        reconnects: recorder.reconnects.load(Ordering::Relaxed),
        connect_latency: Latency::from_histogram(&Recorder::merged(&recorder.connect)),
        heartbeat_rtt: Latency::from_histogram(&Recorder::merged(&recorder.heartbeat)),
        heartbeat_rtt_first: Latency::from_histogram(&Recorder::merged(&recorder.heartbeat_first)),
        heartbeat_rtt_steady: Latency::from_histogram(&Recorder::merged(
            &recorder.heartbeat_steady,
        )),
        command_delivery: Latency::from_histogram(&traffic.delivery),
        command_latency: Latency::from_histogram(&traffic.charging),
        stop_latency: Latency::from_histogram(&traffic.stop),
        commands,
        gateway_process,
    })
}

/// What the charge traffic measured.
struct Traffic {
    commands: Commands,
    delivery: Histogram<u64>,
    charging: Histogram<u64>,
    stop: Histogram<u64>,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            commands: Commands::default(),
            delivery: report::histogram(),
            charging: report::histogram(),
            stop: report::histogram(),
        }
    }
}

/// How one charge ended.
enum Outcome {
    Charging {
        delivery: Option<Duration>,
        latency: Duration,
        stop: Option<Option<Duration>>,
    },
    ApiError,
    Refused,
    Timeout,
}

/// The open-model charge schedule: start `i` is due at `start + i / rate`; each takes a random
/// idle port (seeded) of a pile the gateway has answered, charges it by time, waits for
/// `charging`, holds it, and stops it. Nothing new starts after `deadline`; charges in flight
/// then finish (stop at once), bounded by the command timeout.
async fn charge_traffic(
    cfg: FleetLoadConfig,
    fleet: FleetHandle,
    ids: Arc<Vec<String>>,
    client: Client,
    recorder: Arc<Recorder>,
    deadline: Instant,
) -> Traffic {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x6c6f_6164_6765_6e21);
    let busy: Arc<Mutex<HashSet<(u32, u16)>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut traffic = Traffic::default();
    let start = tokio::time::Instant::now();
    let period = Duration::from_secs_f64(1.0 / cfg.charge_rate);
    let mut i: u32 = 0;
    loop {
        let due = start + period * i;
        i = i.saturating_add(1);
        if due.into_std() >= deadline {
            break;
        }
        tokio::time::sleep_until(due).await;
        while let Some(done) = tasks.try_join_next() {
            tally(&mut traffic, done.ok());
        }
        // A random idle port of a ready pile: a few tries, then the slot is skipped.
        let mut pick = None;
        for _ in 0..32 {
            let pile = rng.gen_range(0..cfg.devices);
            let port = rng.gen_range(1..=cfg.ports);
            if !recorder.ready(pile) || lock(&busy).contains(&(pile, port)) {
                continue;
            }
            let Ok(snap) = fleet.pile_snapshot(&ids[pile as usize]) else {
                continue;
            };
            let idle = snap
                .ports
                .iter()
                .any(|p| p.port_no == port && p.charge.is_none());
            if snap.connection == "online" && idle {
                pick = Some((pile, port));
                break;
            }
        }
        let Some((pile, port)) = pick else {
            traffic.commands.no_idle_port += 1;
            continue;
        };
        lock(&busy).insert((pile, port));
        let hold = Duration::from_secs_f64(rng.gen_range(0.0..=cfg.hold.as_secs_f64()));
        let (client, recorder, busy, ids) =
            (client.clone(), recorder.clone(), busy.clone(), ids.clone());
        let timeout = cfg.command_timeout;
        tasks.spawn(async move {
            let outcome = one_charge(
                &client,
                &recorder,
                &ids[pile as usize],
                pile,
                port,
                hold,
                timeout,
                deadline,
            )
            .await;
            lock(&busy).remove(&(pile, port));
            outcome
        });
    }
    while let Some(done) = tasks.join_next().await {
        tally(&mut traffic, done.ok());
    }
    traffic
}

fn tally(t: &mut Traffic, outcome: Option<Outcome>) {
    t.commands.started += 1;
    match outcome {
        Some(Outcome::Charging {
            delivery,
            latency,
            stop,
        }) => {
            t.commands.charging += 1;
            if let Some(d) = delivery {
                report::record(&mut t.delivery, d);
            }
            report::record(&mut t.charging, latency);
            if let Some(stop) = stop {
                t.commands.stops += 1;
                if let Some(d) = stop {
                    t.commands.stops_ok += 1;
                    report::record(&mut t.stop, d);
                }
            }
        }
        Some(Outcome::ApiError) | None => t.commands.api_errors += 1,
        Some(Outcome::Refused) => t.commands.refused += 1,
        Some(Outcome::Timeout) => t.commands.timeouts += 1,
    }
}

/// Polls an order every 10 ms until `done` holds for its status; the time it took, or `None`
/// on timeout. Returns the last status seen too.
async fn wait_order(
    client: &Client,
    order_no: &str,
    since: Instant,
    timeout: Duration,
    done: impl Fn(OrderStatus) -> bool,
) -> (Option<Duration>, Option<OrderStatus>) {
    let mut last = None;
    while since.elapsed() < timeout {
        if let Ok(order) = client.order(order_no).await {
            last = Some(order.status);
            if done(order.status) {
                return (Some(since.elapsed()), last);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (None, last)
}

#[allow(clippy::too_many_arguments)]
async fn one_charge(
    client: &Client,
    recorder: &Recorder,
    device_id: &str,
    pile: u32,
    port: u16,
    hold: Duration,
    timeout: Duration,
    deadline: Instant,
) -> Outcome {
    lock(&recorder.awaiting).insert((pile, port), None);
    let req = ChargeRequest {
        port_no: u32::from(port),
        charge_mode: charge_mode::BY_TIME,
        duration: 3600,
        price_per_kwh: 100,
        queue_if_offline: Some(false),
        ..ChargeRequest::default()
    };
    let t0 = Instant::now();
    let outcome = match client.charge(device_id, &req).await {
        Err(_) => Outcome::ApiError,
        Ok(order) => {
            let (latency, last) = wait_order(client, &order.order_no, t0, timeout, |s| {
                s != OrderStatus::Pending
            })
            .await;
            let received = lock(&recorder.awaiting).remove(&(pile, port)).flatten();
            match (latency, last) {
                (Some(latency), Some(OrderStatus::Charging)) => {
                    let delivery = received.map(|r| r.saturating_duration_since(t0));
                    // Hold the charge (cut short at the deadline), then stop it.
                    let until = (Instant::now() + hold).min(deadline);
                    tokio::time::sleep_until(until.into()).await;
                    let s0 = Instant::now();
                    let stop_req = StopRequest {
                        port_no: u32::from(port),
                        order_no: Some(order.order_no.clone()),
                    };
                    let stop = match client.stop(device_id, &stop_req).await {
                        Ok(_) => {
                            wait_order(client, &order.order_no, s0, timeout, |s| {
                                s != OrderStatus::Charging
                            })
                            .await
                            .0
                        }
                        Err(_) => None,
                    };
                    Outcome::Charging {
                        delivery,
                        latency,
                        stop: Some(stop),
                    }
                }
                (Some(_), _) => Outcome::Refused,
                (None, _) => Outcome::Timeout,
            }
        }
    };
    lock(&recorder.awaiting).remove(&(pile, port));
    outcome
}
