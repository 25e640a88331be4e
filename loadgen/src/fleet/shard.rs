//! `--processes N`: the fleet spread over N child processes (`pile-load fleet-shard`, the same
//! binary), each holding a contiguous share of the piles, so that no process needs more
//! descriptors than the per-process limit (20,000 here). The parent keeps the gateway sampling,
//! the charge traffic and the one [`Recorder`]; each child runs its piles with an observer that
//! writes every event as one text line on its stdout, stamped with `CLOCK_MONOTONIC` (the clock
//! behind `Instant` on Linux, shared by every process of the machine), and the parent replays
//! the lines into the recorder as if the piles were its own. A child stops when its stdin
//! closes (the parent is done or gone) or at its own deadline, whichever comes first.
//!
//! Lines: `C pile latency_us nth t_ns` connected, `F pile` connect failed, `H pile rtt_us t_ns`
//! heartbeat answered, `S pile port t_ns` start command received, `O online` piles online
//! now (once a second), `E` the child's fleet has shut down.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pile_sim::config::{FleetConfig, IpRange, ProtocolChoice};
use pile_sim::fleet::FleetHandle;
use pile_sim::observe::{CommandKind, FleetObserver, Observer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use super::recorder::Recorder;

/// Nanoseconds of `CLOCK_MONOTONIC`.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Maps another process's `mono_ns` stamps onto this process's `Instant`s.
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    at: Instant,
    ns: u64,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            at: Instant::now(),
            ns: mono_ns(),
        }
    }

    pub fn instant(&self, ns: u64) -> Instant {
        if ns >= self.ns {
            self.at + Duration::from_nanos(ns - self.ns)
        } else {
            self.at
                .checked_sub(Duration::from_nanos(self.ns - ns))
                .unwrap_or(self.at)
        }
    }
}

/// One child's share of the fleet, as passed on its command line.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardSpec {
    pub server: String,
    pub devices: u32,
    pub protocol: ProtocolChoice,
    pub first_bkv_id: String,
    pub first_ap3000_id: String,
    pub ports: u16,
    pub heartbeat: Duration,
    pub reconnect_delay: Duration,
    pub ramp: f64,
    pub seed: u64,
    pub source_ips: Option<IpRange>,
    /// The child stops by itself after this long.
    pub duration: Duration,
}

impl ShardSpec {
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "fleet-shard".to_string(),
            "--server".into(),
            self.server.clone(),
            "--devices".into(),
            self.devices.to_string(),
            "--protocol".into(),
            format!("{:?}", self.protocol).to_ascii_lowercase(),
            "--first-bkv-id".into(),
            self.first_bkv_id.clone(),
            "--first-ap3000-id".into(),
            self.first_ap3000_id.clone(),
            "--ports".into(),
            self.ports.to_string(),
            "--heartbeat-ms".into(),
            self.heartbeat.as_millis().to_string(),
            "--reconnect-delay-ms".into(),
            self.reconnect_delay.as_millis().to_string(),
            "--ramp".into(),
            self.ramp.to_string(),
            "--seed".into(),
            self.seed.to_string(),
            "--duration-ms".into(),
            self.duration.as_millis().to_string(),
        ];
        if let Some(r) = self.source_ips {
            a.push("--source-ips".into());
            a.push(format!("{}-{}", r.first, r.last));
        }
        a
    }
}

/// The first IDs of the share that starts at global pile index `base`: IDs count up per family
/// from the fleet's first IDs, so the share continues where the piles before it stopped.
/// `base` must be even for a mixed fleet (even indexes BKV, odd AP3000).
pub fn first_ids(
    protocol: ProtocolChoice,
    bkv: &str,
    ap3000: &str,
    base: u32,
) -> Result<(String, String), String> {
    let (nb, na) = match protocol {
        ProtocolChoice::Bkv => (u64::from(base), 0),
        ProtocolChoice::Ap3000 => (0, u64::from(base)),
        ProtocolChoice::Mixed => (u64::from(base).div_ceil(2), u64::from(base) / 2),
    };
    let b: u64 = bkv.parse().map_err(|_| format!("bad BKV ID {bkv:?}"))?;
    let a = u64::from_str_radix(ap3000, 16).map_err(|_| format!("bad AP3000 ID {ap3000:?}"))?;
    if b + nb > 99_999_999_999_999 || a + na > u64::from(u32::MAX) {
        return Err("the fleet overflows the ID space".into());
    }
    Ok((format!("{:014}", b + nb), format!("{:08X}", a + na)))
}

/// Splits `devices` into `n` contiguous shares `(base, count)`, every base even.
pub fn split(devices: u32, n: u32) -> Vec<(u32, u32)> {
    let n = n.max(1);
    let mut size = devices.div_ceil(n);
    size += size % 2;
    let mut out = Vec::new();
    let mut base = 0;
    while base < devices {
        let count = size.min(devices - base);
        out.push((base, count));
        base += count;
    }
    out
}

/// Splits a source range into `n` disjoint parts (or shares it when it is too small).
pub fn split_range(r: IpRange, n: u32) -> Vec<IpRange> {
    let len = r.len();
    if len < u64::from(n) || n <= 1 {
        return vec![r; n.max(1) as usize];
    }
    let part = len / u64::from(n);
    (0..u64::from(n))
        .map(|k| {
            let first = u32::from(r.first) + (k * part) as u32;
            let last = if k + 1 == u64::from(n) {
                u32::from(r.last)
            } else {
                first + part as u32 - 1
            };
            IpRange {
                first: Ipv4Addr::from(first),
                last: Ipv4Addr::from(last),
            }
        })
        .collect()
}

enum Event {
    Connected(u32, Duration, u64, u64),
    Failed(u32),
    Heartbeat(u32, Duration, u64),
    Start(u32, u16, u64),
}

struct Forward(mpsc::UnboundedSender<Event>);

impl FleetObserver for Forward {
    fn connected(&self, pile: u32, latency: Duration, nth: u64) {
        let _ = self.0.send(Event::Connected(pile, latency, nth, mono_ns()));
    }
    fn connect_failed(&self, pile: u32, _after: Duration) {
        let _ = self.0.send(Event::Failed(pile));
    }
    fn heartbeat_rtt(&self, pile: u32, rtt: Duration) {
        let _ = self.0.send(Event::Heartbeat(pile, rtt, mono_ns()));
    }
    fn command(&self, pile: u32, kind: CommandKind, port_no: Option<u16>) {
        if let (CommandKind::Start, Some(port)) = (kind, port_no) {
            let _ = self.0.send(Event::Start(pile, port, mono_ns()));
        }
    }
}

/// The child's side: runs its share and streams the events on stdout until stdin closes or
/// the deadline passes.
pub async fn run_child(spec: ShardSpec) -> anyhow::Result<()> {
    let want = u64::from(spec.devices) + 256;
    let limit = pile_sim::fleet::raise_fd_limit(want);
    if limit < want {
        eprintln!("pile-load fleet-shard: open-file limit {limit}, {want} wanted");
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cfg = FleetConfig {
        server: spec.server.clone(),
        devices: spec.devices,
        protocol: spec.protocol,
        first_bkv_id: spec.first_bkv_id.clone(),
        first_ap3000_id: spec.first_ap3000_id.clone(),
        ports: spec.ports,
        heartbeat: spec.heartbeat,
        reconnect_delay: spec.reconnect_delay,
        ramp_per_sec: spec.ramp,
        source_ips: spec.source_ips,
        seed: spec.seed,
        frames_kept: 0,
        observer: Some(Observer(Arc::new(Forward(tx)))),
        ..FleetConfig::default()
    };
    let fleet = FleetHandle::start(cfg).await?;
    let deadline = tokio::time::Instant::now() + spec.duration;
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut ticks = 0u64;
    let mut batch = Vec::with_capacity(1024);
    loop {
        tokio::select! {
            n = stdin.read(&mut sink) => {
                if matches!(n, Ok(0) | Err(_)) {
                    break;
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tick.tick() => {
                ticks += 1;
                if ticks % 20 == 0 {
                    writeln!(out, "O {}", fleet.summary().online)?;
                }
                out.flush()?;
            }
            n = rx.recv_many(&mut batch, 1024) => {
                if n == 0 {
                    break;
                }
                for e in batch.drain(..) {
                    match e {
                        Event::Connected(p, l, nth, t) => {
                            writeln!(out, "C {p} {} {nth} {t}", l.as_micros())?
                        }
                        Event::Failed(p) => writeln!(out, "F {p}")?,
                        Event::Heartbeat(p, r, t) => writeln!(out, "H {p} {} {t}", r.as_micros())?,
                        Event::Start(p, port, t) => {
                            writeln!(out, "S {p} {port} {t}")?;
                            // The parent times command delivery with it: no batching delay.
                            out.flush()?;
                        }
                    }
                }
            }
        }
    }
    fleet.shutdown().await;
    writeln!(out, "E")?;
    out.flush()?;
    Ok(())
}

/// The parent's handle on its children.
pub(crate) struct Children {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    pub online: Vec<Arc<AtomicU64>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// Applies one event line of the child whose share starts at `base`.
pub(crate) fn apply(line: &str, base: u32, clock: &Clock, rec: &Recorder, online: &AtomicU64) {
    let mut it = line.split_ascii_whitespace();
    let kind = it.next();
    let mut num = || it.next().and_then(|v| v.parse::<u64>().ok());
    match kind {
        Some("C") => {
            if let (Some(p), Some(l), Some(nth), Some(t)) = (num(), num(), num(), num()) {
                rec.on_connected(
                    base + p as u32,
                    Duration::from_micros(l),
                    nth,
                    clock.instant(t),
                );
            }
        }
        Some("F") => rec.on_connect_failed(),
        Some("H") => {
            if let (Some(p), Some(r), Some(t)) = (num(), num(), num()) {
                rec.on_heartbeat(base + p as u32, Duration::from_micros(r), clock.instant(t));
            }
        }
        Some("S") => {
            if let (Some(p), Some(port), Some(t)) = (num(), num(), num()) {
                rec.on_start_command(base + p as u32, port as u16, clock.instant(t));
            }
        }
        Some("O") => {
            if let Some(n) = num() {
                online.store(n, Ordering::Relaxed);
            }
        }
        Some("E") => online.store(0, Ordering::Relaxed),
        _ => {}
    }
}

impl Children {
    /// Starts one child per share.
    pub fn spawn(
        exe: &std::path::Path,
        shares: Vec<(u32, ShardSpec)>,
        rec: Arc<Recorder>,
    ) -> std::io::Result<Children> {
        let clock = Clock::now();
        let mut c = Children {
            children: Vec::new(),
            stdins: Vec::new(),
            online: Vec::new(),
            readers: Vec::new(),
        };
        for (base, spec) in shares {
            let mut child = tokio::process::Command::new(exe)
                .args(spec.args())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::inherit())
                .kill_on_drop(true)
                .spawn()?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| std::io::Error::other("no stdout"))?;
            let stdin = child
                .stdin
                .take()
                .ok_or_else(|| std::io::Error::other("no stdin"))?;
            let online = Arc::new(AtomicU64::new(0));
            let (rec, on) = (Arc::clone(&rec), Arc::clone(&online));
            c.readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    apply(&line, base, &clock, &rec, &on);
                }
            }));
            c.children.push(child);
            c.stdins.push(stdin);
            c.online.push(online);
        }
        Ok(c)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(|c| c.id()).collect()
    }

    pub fn online(&self) -> u64 {
        self.online.iter().map(|o| o.load(Ordering::Relaxed)).sum()
    }

    /// Closes the children's stdin, waits (bounded) for them to shut their piles down and for
    /// their last lines to be read; kills any that do not stop.
    pub async fn shutdown(mut self) {
        self.stdins.clear();
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
        for r in self.readers {
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_contiguous_even_and_cover_the_fleet() {
        assert_eq!(split(10, 3), vec![(0, 4), (4, 4), (8, 2)]);
        assert_eq!(split(5, 1), vec![(0, 5)]);
        assert_eq!(split(19, 2), vec![(0, 10), (10, 9)]);
        let total: u32 = split(100_001, 7).iter().map(|s| s.1).sum();
        assert_eq!(total, 100_001);
    }

    #[test]
    fn a_share_continues_the_ids_of_the_piles_before_it() {
        let (b, a) = first_ids(ProtocolChoice::Mixed, "82210225000520", "04AB373B", 4).unwrap();
        // Piles 0..4 of a mixed fleet: two BKV, two AP3000.
        assert_eq!((b.as_str(), a.as_str()), ("82210225000522", "04AB373D"));
        let (b, _) = first_ids(ProtocolChoice::Bkv, "82210225000520", "04AB373B", 10).unwrap();
        assert_eq!(b, "82210225000530");
        // The same IDs a single fleet gives its piles 4.. and 10..
        let whole = FleetConfig {
            devices: 12,
            protocol: ProtocolChoice::Mixed,
            ..FleetConfig::default()
        }
        .identities()
        .unwrap();
        assert_eq!(whole[4].id, "82210225000522");
        assert_eq!(whole[5].id, "04AB373D");
    }

    #[test]
    fn source_ranges_split_into_disjoint_parts() {
        let r: IpRange = "127.0.1.1-127.0.1.100".parse().unwrap();
        let parts = split_range(r, 3);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].first, Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(parts[0].last, Ipv4Addr::new(127, 0, 1, 33));
        assert_eq!(parts[1].first, Ipv4Addr::new(127, 0, 1, 34));
        assert_eq!(parts[2].last, Ipv4Addr::new(127, 0, 1, 100));
    }

    #[test]
    fn event_lines_replay_into_the_recorder_with_the_share_offset() {
        let rec = Recorder::new(10);
        let clock = Clock::now();
        let online = AtomicU64::new(0);
        let t = mono_ns();
        apply(&format!("C 1 250 1 {t}"), 4, &clock, &rec, &online);
        assert!(!rec.ready(5));
        apply(
            &format!("H 1 900 {}", t + 1_000_000),
            4,
            &clock,
            &rec,
            &online,
        );
        assert!(rec.ready(5), "pile 1 of the share starting at 4 is pile 5");
        apply("O 7", 4, &clock, &rec, &online);
        apply("F 2", 4, &clock, &rec, &online);
        apply("garbage", 4, &clock, &rec, &online);
        assert_eq!(online.load(Ordering::Relaxed), 7);
        assert_eq!(rec.connects.load(Ordering::Relaxed), 1);
        assert_eq!(rec.connect_failures.load(Ordering::Relaxed), 1);
        let waves = rec.waves();
        assert_eq!((waves[0].piles, waves[0].ready), (1, 1));
        let span = waves[0].last_ready.unwrap() - waves[0].first_dial.unwrap();
        // Connect started 250 µs before t; ready 1 ms after t.
        assert!((span.as_micros() as i64 - 1250).abs() < 50, "{span:?}");
    }
}
