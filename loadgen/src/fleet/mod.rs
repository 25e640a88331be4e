//! `pile-load fleet`: N simulated piles (the `pile-sim` library, in this process or spread over
//! `--processes` child processes) against a gateway, optionally with start/stop traffic through
//! its API, and what it cost the gateway.
//!
//! One run: take a baseline of the gateway process, start the fleet with a [`Recorder`] behind
//! its observer (connect latency, heartbeat round trips and received commands are timed in the
//! simulator's driver tasks, in whichever process they run), sample the gateway (process, online
//! count) once per `sample_interval` while the open-model charge schedule runs, and at
//! `duration` take the final readings with the fleet still connected, then shut the fleet down.
//! The run is split into the ramp (until every pile has been ready once) and steady state, and
//! latencies are reported per phase.

mod recorder;
mod report;
pub mod sample;
pub mod shard;

use std::collections::HashSet;
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use pile_api::{charge_mode, ChargeRequest, Client, DeviceListQuery, OrderStatus, StopRequest};
use pile_sim::config::{FleetConfig, IpRange, ProtocolChoice};
use pile_sim::fleet::FleetHandle;
use pile_sim::observe::Observer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

use recorder::{lock, Recorder};
pub use report::{
    Commands, FleetReport, GatewayProcess, GeneratorProcess, Latency, Phases, Wave, Window,
    SCHEMA_VERSION,
};
use sample::{ProcSample, Series, Source};
use shard::{Children, ShardSpec};

/// Highest accepted `--ramp`: a bound, so a typo cannot dial a million connections at once.
pub const MAX_RAMP: f64 = 100_000.0;
/// Highest accepted `--charge-rate`.
pub const MAX_CHARGE_RATE: f64 = 1_000.0;
/// Highest accepted `--processes`.
pub const MAX_PROCESSES: u32 = 64;

/// What a fleet run needs. [`FleetLoadConfig::new`] gives the CLI's defaults.
#[derive(Debug, Clone)]
pub struct FleetLoadConfig {
    /// The gateway's device address, `HOST:PORT` (loopback only).
    pub server: String,
    /// The gateway's HTTP API, `http://HOST:PORT` (loopback only); `None` to run against a bare
    /// accept loop (no online count, no charge traffic).
    pub api: Option<String>,
    pub api_key: String,
    pub devices: u32,
    pub protocol: ProtocolChoice,
    /// The first device IDs; `None` for the simulator's defaults. Give a range no other
    /// simulator uses, or the piles take over its sessions.
    pub first_bkv_id: Option<String>,
    pub first_ap3000_id: Option<String>,
    /// New connections per second at start (across all processes).
    pub ramp: f64,
    pub heartbeat: Duration,
    /// How long a pile waits after a drop or a failed connect before it dials again.
    pub reconnect_delay: Duration,
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
    /// Simulator processes: 1 runs the piles in this process; N > 1 starts N children
    /// (`exe fleet-shard …`), each with a contiguous share.
    pub processes: u32,
    /// The binary the children run (default: this process's executable).
    pub exe: Option<PathBuf>,
    /// Print a progress line on stderr about once a second.
    pub progress: bool,
}

impl FleetLoadConfig {
    pub fn new(
        server: impl Into<String>,
        api: impl Into<String>,
        api_key: impl Into<String>,
    ) -> Self {
        FleetLoadConfig {
            server: server.into(),
            api: Some(api.into()),
            api_key: api_key.into(),
            devices: 100,
            protocol: ProtocolChoice::Bkv,
            first_bkv_id: None,
            first_ap3000_id: None,
            ramp: 1000.0,
            heartbeat: Duration::from_secs(11),
            reconnect_delay: Duration::from_secs(5),
            duration: Duration::from_secs(30),
            charge_rate: 0.0,
            server_pid: None,
            seed: 0,
            source_ips: None,
            ports: 4,
            sample_interval: Duration::from_secs(1),
            command_timeout: Duration::from_secs(10),
            hold: Duration::from_secs(3),
            processes: 1,
            exe: None,
            progress: false,
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
    #[error("cannot start the simulator processes: {0}")]
    Spawn(std::io::Error),
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
        return bad("--ramp must be within (0, 100000] connections/s");
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
    if cfg.charge_rate > 0.0 && cfg.api.is_none() {
        return bad("--charge-rate needs --api");
    }
    if cfg.processes == 0 || cfg.processes > MAX_PROCESSES {
        return bad("--processes must be within 1..=64");
    }
    if cfg.sample_interval.is_zero() || cfg.command_timeout.is_zero() {
        return bad("sample interval and command timeout must be positive");
    }
    for server in cfg.server.split(',') {
        resolve_loopback("--server", server.trim()).await?;
    }
    if let Some(api) = &cfg.api {
        let rest = api
            .strip_prefix("http://")
            .ok_or_else(|| FleetLoadError::Config("--api must be http://HOST:PORT".into()))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let host_port = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        resolve_loopback("--api", &host_port).await?;
    }
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

/// Where the piles run.
enum Piles {
    Here(FleetHandle),
    Children(Children),
}

impl Piles {
    fn connected(&self) -> u64 {
        match self {
            Piles::Here(f) => f.summary().online as u64,
            Piles::Children(c) => c.online(),
        }
    }

    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![std::process::id()];
        if let Piles::Children(c) = self {
            pids.extend(c.pids());
        }
        pids
    }

    async fn shutdown(self) {
        match self {
            Piles::Here(f) => f.shutdown().await,
            Piles::Children(c) => c.shutdown().await,
        }
    }
}

/// The generator's own processes: summed CPU seconds and RSS.
fn generator_sample(pids: &[u32]) -> Option<(f64, u64)> {
    let mut cpu = 0.0;
    let mut rss = 0;
    for pid in pids {
        let s = sample::read_proc(*pid).ok()?;
        cpu += s.cpu_seconds;
        rss += s.rss_bytes;
    }
    Some((cpu, rss))
}

fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

fn secs_since(t0: Instant, t: Option<Instant>) -> f64 {
    t.map_or(0.0, |t| t.saturating_duration_since(t0).as_secs_f64())
}

/// Runs the fleet for `config.duration` and reports. `Err` only when the run cannot start
/// (bad configuration, a non-loopback address, an unresolvable server).
pub async fn run(config: FleetLoadConfig) -> Result<FleetReport, FleetLoadError> {
    validate(&config).await?;
    let http = reqwest::Client::builder()
        .timeout(config.command_timeout)
        .build()
        .unwrap_or_default();
    let api = config
        .api
        .as_ref()
        .map(|a| a.trim_end_matches('/').to_string());
    let client = api
        .as_ref()
        .map(|api| Client::with_http(http.clone(), api, &config.api_key));

    // Where the gateway's CPU and RSS come from: /proc when its PID is given, else /metrics.
    let source = match (config.server_pid, &api) {
        (Some(pid), _) => {
            sample::read_proc(pid).map_err(|e| {
                FleetLoadError::Config(format!("--server-pid {pid}: cannot read /proc/{pid}: {e}"))
            })?;
            Source::Proc(pid)
        }
        (None, Some(api)) => {
            let url = format!("{api}/metrics");
            match sample::read_metrics(&http, &url).await {
                Some(_) => Source::Metrics(url),
                None => Source::None,
            }
        }
        (None, None) => Source::None,
    };
    let mut series = Series::default();
    let rss_start = sample_gateway(&source, &http).await.map(|s| {
        series.push(s);
        s.rss_bytes
    });

    let defaults = FleetConfig::default();
    let first_bkv = config
        .first_bkv_id
        .clone()
        .unwrap_or(defaults.first_bkv_id.clone());
    let first_ap = config
        .first_ap3000_id
        .clone()
        .unwrap_or(defaults.first_ap3000_id.clone());
    let recorder = Arc::new(Recorder::new(config.devices));
    let fleet_cfg = FleetConfig {
        server: config.server.clone(),
        devices: config.devices,
        protocol: config.protocol,
        first_bkv_id: first_bkv.clone(),
        first_ap3000_id: first_ap.clone(),
        ports: config.ports,
        heartbeat: config.heartbeat,
        reconnect_delay: config.reconnect_delay,
        ramp_per_sec: config.ramp,
        source_ips: config.source_ips,
        seed: config.seed,
        // Frames are kept for inspection only; at 100 k piles they would cost hundreds of MB.
        frames_kept: 0,
        observer: Some(Observer(Arc::new(recorder::Local(Arc::clone(&recorder))))),
        ..defaults
    };
    let ids: Vec<String> = fleet_cfg
        .identities()
        .map_err(|e| FleetLoadError::Config(e.to_string()))?
        .into_iter()
        .map(|p| p.id)
        .collect();
    let start_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let started = Instant::now();
    let deadline = started + config.duration;
    let piles = if config.processes <= 1 {
        pile_sim::fleet::raise_fd_limit(u64::from(config.devices) + 1024);
        Piles::Here(FleetHandle::start(fleet_cfg).await?)
    } else {
        let exe = match &config.exe {
            Some(exe) => exe.clone(),
            None => std::env::current_exe().map_err(FleetLoadError::Spawn)?,
        };
        let shares = shard::split(config.devices, config.processes);
        let ranges = config
            .source_ips
            .map(|r| shard::split_range(r, shares.len() as u32));
        let mut specs = Vec::new();
        for (k, (base, count)) in shares.iter().enumerate() {
            let (bkv, ap) = shard::first_ids(config.protocol, &first_bkv, &first_ap, *base)
                .map_err(FleetLoadError::Config)?;
            specs.push((
                *base,
                ShardSpec {
                    server: config.server.clone(),
                    devices: *count,
                    protocol: config.protocol,
                    first_bkv_id: bkv,
                    first_ap3000_id: ap,
                    ports: config.ports,
                    heartbeat: config.heartbeat,
                    reconnect_delay: config.reconnect_delay,
                    ramp: config.ramp / shares.len() as f64,
                    seed: config.seed.wrapping_add(k as u64),
                    source_ips: ranges.as_ref().map(|r| r[k]),
                    // Backstop only: the parent closes the children's stdin at the end.
                    duration: config.duration + config.command_timeout + Duration::from_secs(30),
                },
            ));
        }
        Piles::Children(
            Children::spawn(&exe, specs, Arc::clone(&recorder)).map_err(FleetLoadError::Spawn)?,
        )
    };
    let pids = piles.pids();
    let generator_start = generator_sample(&pids).map(|(cpu, _)| (Instant::now(), cpu));
    let local_fleet = match &piles {
        Piles::Here(f) => Some(f.clone()),
        Piles::Children(_) => None,
    };

    let traffic = match (&client, config.charge_rate > 0.0) {
        (Some(client), true) => Some(tokio::spawn(charge_traffic(
            config.clone(),
            local_fleet,
            Arc::new(ids),
            client.clone(),
            recorder.clone(),
            deadline,
        ))),
        _ => None,
    };

    let mut connected_max = 0u64;
    let mut online_max: Option<u64> = None;
    let mut online_source = "none";
    let mut last_online = None;
    let mut tick = tokio::time::interval(config.sample_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let show = config.progress;
    let terminal = std::io::stderr().is_terminal();
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep(deadline - now) => break,
        }
        let last = sample_gateway(&source, &http).await;
        if let Some(s) = last {
            series.push(s);
        }
        let connected = piles.connected();
        connected_max = connected_max.max(connected);
        if let Some(client) = &client {
            if let Some((n, src)) = gateway_online(client).await {
                online_max = Some(online_max.map_or(n, |m| m.max(n)));
                online_source = src;
                last_online = Some(n);
            }
        }
        if show {
            let line = progress_line(
                started,
                &config,
                &recorder,
                connected,
                last_online,
                series.last_cpu_percent(),
            );
            if terminal {
                eprint!("\r{line}\x1b[K");
            } else {
                eprintln!("{line}");
            }
        }
    }
    if show && terminal {
        eprintln!();
    }

    // Final readings with the fleet still connected.
    let end_sample = sample_gateway(&source, &http).await;
    if let Some(s) = end_sample {
        series.push(s);
    }
    let generator_end = generator_sample(&pids);
    let connected = piles.connected();
    connected_max = connected_max.max(connected);
    let online = match &client {
        Some(client) => gateway_online(client).await.map(|(n, src)| {
            online_source = src;
            online_max = Some(online_max.map_or(n, |m| m.max(n)));
            n
        }),
        None => None,
    };
    let measured_until = Instant::now();
    let traffic = match traffic {
        Some(t) => t.await.unwrap_or_default(),
        None => Traffic::default(),
    };
    let duration = started.elapsed();
    piles.shutdown().await;

    let rss_end = end_sample.map(|s| s.rss_bytes);
    let per_pile = |bytes: Option<u64>| {
        bytes
            .filter(|_| connected > 0)
            .map(|b| b as f64 / connected as f64)
    };
    let ncpu = cpus();
    let of_machine = |p: Option<f64>| p.map(|p| p / f64::from(ncpu));
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
        cpus: ncpu,
        cpu_percent_of_machine_mean: of_machine(series.cpu_percent_mean()),
        cpu_percent_of_machine_max: of_machine(series.cpu_percent_max()),
    };
    let generator_cpu = match (generator_start, generator_end) {
        (Some((t, a)), Some((b, _))) => {
            let wall = t.elapsed().as_secs_f64();
            (wall > 0.0).then(|| (b - a).max(0.0) / wall * 100.0)
        }
        _ => None,
    };
    let generator_process = GeneratorProcess {
        processes: config.processes,
        pids: pids.clone(),
        cpu_percent_mean: generator_cpu,
        cpu_percent_of_machine_mean: of_machine(generator_cpu),
        rss_end_bytes: generator_end.map(|(_, rss)| rss),
    };

    let steady_since = recorder.steady_since().filter(|&s| s <= measured_until);
    let end_s = measured_until
        .saturating_duration_since(started)
        .as_secs_f64();
    let phases = Phases {
        start_unix_ms,
        ramp: Window {
            start_s: 0.0,
            end_s: steady_since.map_or(end_s, |s| secs_since(started, Some(s))),
        },
        steady: steady_since.map(|s| Window {
            start_s: secs_since(started, Some(s)),
            end_s,
        }),
        ramp_end: match steady_since {
            Some(_) => "every pile had a heartbeat answered".to_string(),
            None => format!(
                "not ended: {} of {} piles were ever ready",
                recorder.ready_once(),
                config.devices
            ),
        },
    };
    let waves = recorder
        .waves()
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let first = secs_since(started, w.first_dial);
            let connected_s = secs_since(started, w.last_connected);
            let ready_s = secs_since(started, w.last_ready);
            let rate = |n: u64, span: f64| if span > 0.0 { n as f64 / span } else { 0.0 };
            Wave {
                connection: i as u64 + 1,
                piles: w.piles,
                ready: w.ready,
                first_dial_s: first,
                last_connected_s: connected_s,
                last_ready_s: ready_s,
                connected_per_s: rate(w.piles, connected_s - first),
                ready_per_s: rate(w.ready, ready_s - first),
            }
        })
        .collect();

    let mut commands = traffic.commands;
    commands.rate = config.charge_rate;
    commands.failed = commands.started - commands.charging;
    commands.success_rate = if commands.started == 0 {
        100.0
    } else {
        commands.charging as f64 * 100.0 / commands.started as f64
    };
    // Charges are classified by when they were asked.
    let (mut ramp_h, mut steady_h, mut steady_delivery) = (
        report::histogram(),
        report::histogram(),
        report::histogram(),
    );
    for c in &traffic.charges {
        let steady = steady_since.is_some_and(|s| c.asked >= s);
        report::record(if steady { &mut steady_h } else { &mut ramp_h }, c.latency);
        if let (true, Some(d)) = (steady, c.delivery) {
            report::record(&mut steady_delivery, d);
        }
    }
    Ok(FleetReport {
        schema_version: SCHEMA_VERSION,
        server: config.server.clone(),
        api,
        processes: config.processes,
        first_bkv_id: first_bkv,
        first_ap3000_id: first_ap,
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
        connects: recorder.connects.load(std::sync::atomic::Ordering::Relaxed),
        connect_failures: recorder
            .connect_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        reconnects: recorder
            .reconnects
            .load(std::sync::atomic::Ordering::Relaxed),
        connect_latency: Latency::from_histogram(&recorder.connect.merged()),
        heartbeat_rtt: Latency::from_histogram(&recorder.heartbeat.merged()),
        heartbeat_rtt_first: Latency::from_histogram(&recorder.heartbeat_first.merged()),
        heartbeat_rtt_later: Latency::from_histogram(&recorder.heartbeat_later.merged()),
        heartbeat_rtt_ramp: Latency::from_histogram(&recorder.heartbeat_ramp.merged()),
        heartbeat_rtt_steady: Latency::from_histogram(&recorder.heartbeat_steady.merged()),
        phases,
        waves,
        command_delivery: Latency::from_histogram(&traffic.delivery),
        command_latency: Latency::from_histogram(&traffic.charging),
        command_latency_ramp: Latency::from_histogram(&ramp_h),
        command_latency_steady: Latency::from_histogram(&steady_h),
        command_delivery_steady: Latency::from_histogram(&steady_delivery),
        stop_latency: Latency::from_histogram(&traffic.stop),
        commands,
        gateway_process,
        generator_process,
    })
}

fn progress_line(
    started: Instant,
    cfg: &FleetLoadConfig,
    rec: &Recorder,
    connected: u64,
    online: Option<u64>,
    cpu: Option<f64>,
) -> String {
    let phase = match rec.steady_since() {
        Some(s) => format!("steady since {:.1} s", secs_since(started, Some(s))),
        None => format!("ramp: {} of {} ready", rec.ready_once(), cfg.devices),
    };
    let cpu = cpu.map_or("n/a".to_string(), |c| {
        format!(
            "{c:.0} % of a core, {:.0} % of the machine",
            c / f64::from(cpus())
        )
    });
    format!(
        "[{:>6.1} s] {phase}; connected {connected}; online at gateway {}; failed connects {}; \
         reconnects {}; gateway CPU {cpu}",
        started.elapsed().as_secs_f64(),
        online.map_or("n/a".to_string(), |n| n.to_string()),
        rec.connect_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        rec.reconnects.load(std::sync::atomic::Ordering::Relaxed),
    )
}

/// One charge that reached `charging`.
struct Charge {
    asked: Instant,
    latency: Duration,
    delivery: Option<Duration>,
}

/// What the charge traffic measured.
struct Traffic {
    commands: Commands,
    delivery: Histogram<u64>,
    charging: Histogram<u64>,
    stop: Histogram<u64>,
    charges: Vec<Charge>,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            commands: Commands::default(),
            delivery: report::histogram(),
            charging: report::histogram(),
            stop: report::histogram(),
            charges: Vec::new(),
        }
    }
}

/// How one charge ended.
enum Outcome {
    Charging {
        asked: Instant,
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
/// then finish (stop at once), bounded by the command timeout. With the piles in this process
/// a port's idleness is read from the pile; with children, from this schedule's own record of
/// the charges it started (nothing else charges the fleet's piles).
async fn charge_traffic(
    cfg: FleetLoadConfig,
    fleet: Option<FleetHandle>,
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
            if let Some(fleet) = &fleet {
                let Ok(snap) = fleet.pile_snapshot(&ids[pile as usize]) else {
                    continue;
                };
                let idle = snap
                    .ports
                    .iter()
                    .any(|p| p.port_no == port && p.charge.is_none());
                if snap.connection != "online" || !idle {
                    continue;
                }
            }
            pick = Some((pile, port));
            break;
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
            asked,
            delivery,
            latency,
            stop,
        }) => {
            t.commands.charging += 1;
            if let Some(d) = delivery {
                report::record(&mut t.delivery, d);
            }
            report::record(&mut t.charging, latency);
            t.charges.push(Charge {
                asked,
                latency,
                delivery,
            });
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
            let mut received = lock(&recorder.awaiting)
                .get(&(pile, port))
                .copied()
                .flatten();
            if received.is_none() && last == Some(OrderStatus::Charging) {
                // With the piles in child processes the pile's "start received" event comes
                // through a pipe and may trail the order's status by a few milliseconds.
                for _ in 0..50 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    received = lock(&recorder.awaiting)
                        .get(&(pile, port))
                        .copied()
                        .flatten();
                    if received.is_some() {
                        break;
                    }
                }
            }
            lock(&recorder.awaiting).remove(&(pile, port));
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
                        asked: t0,
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
