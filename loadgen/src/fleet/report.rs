//! The report of one `pile-load fleet` run: versioned JSON for machines, text for people.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Bumped whenever a key is renamed, removed or changes meaning; adding keys does not bump it.
pub const SCHEMA_VERSION: u32 = 2;

/// An hour in microseconds: the histograms' ceiling. Larger samples saturate to it.
const MAX_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds (1 µs – 1 h, three significant digits).
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid")
}

pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(us.clamp(1, MAX_US));
}

pub(crate) fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    // Same bounds everywhere, so adding cannot fail; saturate if it ever did.
    if into.add(from).is_err() {
        for v in from.iter_recorded() {
            into.saturating_record_n(v.value_iterated_to(), v.count_at_value());
        }
    }
}

/// Percentiles of one latency, in milliseconds; all zero when `count` is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub(crate) fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Start/stop traffic through the API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Commands {
    /// Asked start commands per second; 0 when no traffic was asked for.
    pub rate: f64,
    /// Charge calls made (each on an idle port of a pile the gateway had answered).
    pub started: u64,
    /// Orders that reached `charging`.
    pub charging: u64,
    /// `started - charging`, split by kind below.
    pub failed: u64,
    /// `charging / started` in percent (100 when nothing was started).
    pub success_rate: f64,
    /// The charge call failed (HTTP error or transport).
    pub api_errors: u64,
    /// The order ended `failed` or `cancelled` instead of charging.
    pub refused: u64,
    /// The order was not `charging` within the command timeout.
    pub timeouts: u64,
    /// Slots of the schedule that found no idle port on a ready pile (not counted as started).
    pub no_idle_port: u64,
    /// Stop calls made after a charge was running, and those whose order then left
    /// `charging` in time.
    pub stops: u64,
    pub stops_ok: u64,
}

/// The gateway process over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayProcess {
    /// `proc` (`/proc/PID` of `--server-pid`), `metrics` (process series on `/metrics`) or
    /// `none` (neither available: the other keys are `null`).
    pub source: String,
    pub pid: Option<u32>,
    pub samples: usize,
    /// CPU time over wall time, in percent of one core, over the whole run.
    pub cpu_percent_mean: Option<f64>,
    /// The busiest sampling interval.
    pub cpu_percent_max: Option<f64>,
    /// Before the first pile dialled.
    pub rss_start_bytes: Option<u64>,
    /// At the end, with the fleet still connected.
    pub rss_end_bytes: Option<u64>,
    pub rss_max_bytes: Option<u64>,
    /// `rss_end_bytes / piles_connected`.
    pub rss_per_pile_bytes: Option<f64>,
    /// `(rss_end_bytes - rss_start_bytes) / piles_connected`: what one more pile costs.
    pub rss_delta_per_pile_bytes: Option<f64>,
    /// The machine's CPUs, and the CPU figures above as a share of the whole machine
    /// (`cpu_percent_* / cpus`: 100 % means every core busy).
    pub cpus: u32,
    pub cpu_percent_of_machine_mean: Option<f64>,
    pub cpu_percent_of_machine_max: Option<f64>,
}

/// The load generator itself (this process and its `--processes` children): on a small machine
/// its CPU is taken from the gateway.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GeneratorProcess {
    pub processes: u32,
    pub pids: Vec<u32>,
    /// CPU over the run, percent of one core and of the machine.
    pub cpu_percent_mean: Option<f64>,
    pub cpu_percent_of_machine_mean: Option<f64>,
    /// Summed RSS at the end.
    pub rss_end_bytes: Option<u64>,
}

/// A window of the run, in seconds since the fleet started (`start_unix_ms` is the fleet's
/// start on the wall clock, for lining up other measurements).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub start_s: f64,
    pub end_s: f64,
}

/// The run split at the moment the last pile was ready (its first heartbeat answered): the
/// ramp before, steady state after. Latencies are reported per window: a command issued during
/// the ramp queues behind registrations and says nothing about the gateway at rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    pub start_unix_ms: u64,
    /// From the fleet's start to the moment every pile had been ready once (or to the end of
    /// the run if some never were).
    pub ramp: Window,
    /// From the end of the ramp to the end of the measurements; `null` if the ramp never ended.
    pub steady: Option<Window>,
    /// How the ramp ended, in words.
    pub ramp_end: String,
}

/// One connection wave: the `connection`-th connect of every pile (1: the start; 2: the
/// reconnect after the first drop, e.g. a gateway restart). Times in seconds since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Wave {
    pub connection: u64,
    /// Piles that made this connection, and those whose heartbeat was then answered.
    pub piles: u64,
    pub ready: u64,
    /// Earliest connect start, latest connect completion, latest first answer.
    pub first_dial_s: f64,
    pub last_connected_s: f64,
    pub last_ready_s: f64,
    /// `piles / (last_connected − first_dial)`: how fast the simulator dialled and the
    /// gateway accepted.
    pub connected_per_s: f64,
    /// `ready / (last_ready − first_dial)`: how fast piles came online (registered and
    /// answered) — the storm rate.
    pub ready_per_s: f64,
}

/// What one fleet run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetReport {
    pub schema_version: u32,
    pub server: String,
    /// `null` when run without an API (against a bare accept loop).
    pub api: Option<String>,
    /// Simulator processes the fleet ran in (1: this one).
    pub processes: u32,
    /// The first device IDs (BKV, AP3000); IDs count up per family from them.
    pub first_bkv_id: String,
    pub first_ap3000_id: String,
    pub protocol: String,
    pub devices: u32,
    pub ramp: f64,
    pub heartbeat_s: f64,
    pub seed: u64,
    /// Wall time from the fleet's start to the end of the measurements.
    pub duration_s: f64,
    /// Piles with an open connection at the end, as the simulator sees them.
    pub piles_connected: u64,
    pub piles_connected_max: u64,
    /// Piles online at the end as the gateway reports them; `null` if it could not be asked.
    pub gateway_online: Option<u64>,
    pub gateway_online_max: Option<u64>,
    /// `devices` (`GET /api/v1/third/devices?online=true`, its `total`), `stats`
    /// (`/api/v1/admin/stats`'s `online_devices`) or `none`.
    pub gateway_online_source: String,
    /// Successful TCP connects, failed ones, and connects of piles that had been connected
    /// before (reconnects).
    pub connects: u64,
    pub connect_failures: u64,
    pub reconnects: u64,
    /// TCP connect, start to established.
    pub connect_latency: Latency,
    /// Heartbeat frame written → its answer read, in the simulator.
    pub heartbeat_rtt: Latency,
    /// `heartbeat_rtt` split: the first answered heartbeat of each connection (which a gateway
    /// may answer only after registering the device) and every later one.
    pub heartbeat_rtt_first: Latency,
    pub heartbeat_rtt_later: Latency,
    /// `heartbeat_rtt` split by phase: answered during the ramp, and in steady state.
    pub heartbeat_rtt_ramp: Latency,
    pub heartbeat_rtt_steady: Latency,
    /// When the ramp ended and steady state began.
    pub phases: Phases,
    /// Connection waves with their dial and online rates.
    pub waves: Vec<Wave>,
    /// Charge API call → the pile received the start command.
    pub command_delivery: Latency,
    /// Charge API call → the order reads `charging` (polled every 10 ms).
    pub command_latency: Latency,
    /// `command_latency` split by when the charge was asked: during the ramp, in steady state.
    pub command_latency_ramp: Latency,
    pub command_latency_steady: Latency,
    pub command_delivery_steady: Latency,
    /// Stop API call → the order left `charging`.
    pub stop_latency: Latency,
    pub commands: Commands,
    pub gateway_process: GatewayProcess,
    pub generator_process: GeneratorProcess,
}

impl FleetReport {
    /// The text report.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let lat = |out: &mut String, name: &str, l: &Latency| {
            if l.count == 0 {
                let _ = writeln!(out, "{name:<22}no samples");
            } else {
                let _ = writeln!(
                    out,
                    "{name:<22}n={}  min {:.3}  mean {:.3}  P50 {:.3}  P95 {:.3}  P99 {:.3}  \
                     P99.9 {:.3}  max {:.3} ms",
                    l.count, l.min_ms, l.mean_ms, l.p50_ms, l.p95_ms, l.p99_ms, l.p999_ms, l.max_ms
                );
            }
        };
        let _ = writeln!(
            out,
            "Gateway:              {} (API {})",
            self.server,
            self.api.as_deref().unwrap_or("none")
        );
        let _ = writeln!(
            out,
            "Fleet:                {} {} piles in {} process(es), first IDs {} / {}, ramp {}/s, \
             heartbeat {} s, seed {}",
            self.devices,
            self.protocol,
            self.processes,
            self.first_bkv_id,
            self.first_ap3000_id,
            self.ramp,
            self.heartbeat_s,
            self.seed
        );
        let _ = writeln!(out, "Duration:             {:.3} s", self.duration_s);
        let p = &self.phases;
        match &p.steady {
            Some(st) => {
                let _ = writeln!(
                    out,
                    "Phases:               ramp {:.3}–{:.3} s ({}), steady {:.3}–{:.3} s",
                    p.ramp.start_s, p.ramp.end_s, p.ramp_end, st.start_s, st.end_s
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "Phases:               ramp {:.3}–{:.3} s ({}); no steady state",
                    p.ramp.start_s, p.ramp.end_s, p.ramp_end
                );
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Piles connected:      {} of {} (max {})",
            self.piles_connected, self.devices, self.piles_connected_max
        );
        match (self.gateway_online, self.gateway_online_max) {
            (Some(n), Some(max)) => {
                let _ = writeln!(
                    out,
                    "Online at gateway:    {n} (max {max}, from {})",
                    self.gateway_online_source
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "Online at gateway:    unknown (no API, or not reachable)"
                );
            }
        }
        let _ = writeln!(
            out,
            "Connects:             {}  failed: {}  reconnects: {}",
            self.connects, self.connect_failures, self.reconnects
        );
        for w in &self.waves {
            let _ = writeln!(
                out,
                "Wave {}:               {} piles dialled {:.3}–{:.3} s ({:.0}/s), {} ready by {:.3} s \
                 ({:.0} piles/s online)",
                w.connection,
                w.piles,
                w.first_dial_s,
                w.last_connected_s,
                w.connected_per_s,
                w.ready,
                w.last_ready_s,
                w.ready_per_s
            );
        }
        lat(&mut out, "Connect latency:", &self.connect_latency);
        lat(&mut out, "Heartbeat RTT:", &self.heartbeat_rtt);
        lat(&mut out, "  first of a conn:", &self.heartbeat_rtt_first);
        lat(&mut out, "  later ones:", &self.heartbeat_rtt_later);
        lat(&mut out, "  during the ramp:", &self.heartbeat_rtt_ramp);
        lat(&mut out, "  steady state:", &self.heartbeat_rtt_steady);
        let c = &self.commands;
        if c.rate > 0.0 {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "Commands:             {} started at {}/s, {} charging, {} failed (api {}, refused {}, \
                 timeout {}); {} slots found no idle port",
                c.started,
                c.rate,
                c.charging,
                c.failed,
                c.api_errors,
                c.refused,
                c.timeouts,
                c.no_idle_port
            );
            let _ = writeln!(out, "Success rate:         {:.2} %", c.success_rate);
            lat(&mut out, "Command delivery:", &self.command_delivery);
            lat(&mut out, "Command latency:", &self.command_latency);
            lat(&mut out, "  asked in the ramp:", &self.command_latency_ramp);
            lat(
                &mut out,
                "  asked when steady:",
                &self.command_latency_steady,
            );
            if self.command_latency_ramp.count > 0 {
                let _ = writeln!(
                    out,
                    "                      ({} charges were asked during the ramp: they queue behind \
                     registrations; the steady-state line is the gateway at rest)",
                    self.command_latency_ramp.count
                );
            }
            let _ = writeln!(out, "Stops:                {} ({} ok)", c.stops, c.stops_ok);
            lat(&mut out, "Stop latency:", &self.stop_latency);
        }
        let _ = writeln!(out);
        let g = &self.gateway_process;
        let mb =
            |b: Option<u64>| b.map_or("n/a".to_string(), |b| format!("{:.1} MB", b as f64 / 1e6));
        let pct = |p: Option<f64>| p.map_or("n/a".to_string(), |p| format!("{p:.1} %"));
        let kb = |b: Option<f64>| b.map_or("n/a".to_string(), |b| format!("{:.1} KB", b / 1e3));
        let source = match (g.source.as_str(), g.pid) {
            ("proc", Some(pid)) => format!("/proc/{pid}"),
            ("metrics", _) => "process metrics on /metrics".to_string(),
            _ => "none (give --server-pid; /metrics has no process series)".to_string(),
        };
        let _ = writeln!(out, "Gateway process:      {source}, {} samples", g.samples);
        let _ = writeln!(
            out,
            "Gateway CPU:          mean {}  max {} of one core; mean {}  max {} of the machine ({} CPUs)",
            pct(g.cpu_percent_mean),
            pct(g.cpu_percent_max),
            pct(g.cpu_percent_of_machine_mean),
            pct(g.cpu_percent_of_machine_max),
            g.cpus
        );
        let _ = writeln!(
            out,
            "Gateway RSS:          start {}  end {}  max {}",
            mb(g.rss_start_bytes),
            mb(g.rss_end_bytes),
            mb(g.rss_max_bytes)
        );
        let _ = writeln!(
            out,
            "RSS per pile:         {} (end / connected), {} (growth / connected)",
            kb(g.rss_per_pile_bytes),
            kb(g.rss_delta_per_pile_bytes)
        );
        let l = &self.generator_process;
        let _ = writeln!(
            out,
            "Load generator:       {} process(es), CPU mean {} of one core ({} of the machine), RSS {}",
            l.processes,
            pct(l.cpu_percent_mean),
            pct(l.cpu_percent_of_machine_mean),
            mb(l.rss_end_bytes)
        );
        out
    }
}
