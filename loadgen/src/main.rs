//! `pile-load`: the load generator's command line. Exit codes: 0 ran and passed, 1 could not run
//! (bad arguments, bad `--fail-if`, unreachable setup), 2 ran but a `--fail-if` condition held,
//! 3 ran but the run failed its verdict (no request succeeded, or more than `--max-error-rate`
//! failed).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use pile_load::duration::parse_duration;
use pile_load::fleet::{self, FleetLoadConfig};
use pile_load::http::{self, HttpLoadConfig, Progress};
use pile_load::live::{LiveView, Tui};
use pile_sim::config::{IpRange, ProtocolChoice};

#[derive(Parser)]
#[command(name = "pile-load", version, about = "Load generator for pilekit")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// HTTP load, like ab (closed model: -n/-c) or wrk2 (open model: --rate).
    ///
    /// Success means a 2xx status. Other statuses are counted per code and as failed; transport
    /// errors are counted by kind (connect, timeout, reset, other). Bounded always: stops after
    /// -n requests or --duration, whichever comes first (default -n 1000).
    Http(HttpArgs),
    /// Device-fleet load: N simulated piles (in this process) against a gateway, optional
    /// start/stop traffic through its API, and the gateway's CPU and memory over the run.
    ///
    /// Bounded: stops after --duration (default 30s); every address must be loopback.
    Fleet(FleetArgs),
    /// A share of a `fleet --processes N` run, streaming its piles' events on stdout.
    #[command(hide = true)]
    FleetShard(ShardArgs),
}

#[derive(Args)]
struct FleetArgs {
    /// The gateway's device address, HOST:PORT (several, comma-separated: a pile dials the
    /// next one after a failed connect or a drop).
    #[arg(long)]
    server: String,
    /// The gateway's HTTP API, http://HOST:PORT (leave out against a bare accept loop: no
    /// online count, no charge traffic).
    #[arg(long)]
    api: Option<String>,
    /// The gateway's API key.
    #[arg(long, default_value = "")]
    api_key: String,
    /// Simulated piles.
    #[arg(long, default_value_t = 100)]
    devices: u32,
    /// bkv, ap3000 or mixed (even piles BKV, odd AP3000).
    #[arg(long, default_value = "bkv")]
    protocol: ProtocolChoice,
    /// First device ID; IDs count up from it. A 14-digit BKV gateway ID or an 8-hex-digit
    /// AP3000 physical ID; give both (comma-separated) for mixed. Use a range no running
    /// pile-sim uses, or its sessions are taken over.
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    first_id: Vec<String>,
    /// New connections per second at start, across all processes (at most 100000); the ramp
    /// must end within --duration.
    #[arg(long, default_value_t = 1000.0)]
    ramp: f64,
    /// Heartbeat period (seconds, or e.g. 500ms).
    #[arg(long, value_parser = parse_duration, default_value = "11")]
    heartbeat: Duration,
    /// How long a pile waits after a drop or a failed connect before it dials again.
    #[arg(long, value_parser = parse_duration, default_value = "5")]
    reconnect_delay: Duration,
    /// How long the fleet runs, ramp included.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    duration: Duration,
    /// Start commands per second on random idle ports (each charge is held up to 3 s, then
    /// stopped); 0 for none.
    #[arg(long, default_value_t = 0.0)]
    charge_rate: f64,
    /// The gateway's PID: CPU and RSS are sampled from /proc/PID (else from /metrics, if it
    /// exports process series).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Ports per pile.
    #[arg(long, default_value_t = 4)]
    ports: u16,
    /// Run seed (random if not given; printed on stderr and in the report).
    #[arg(long)]
    seed: Option<u64>,
    /// Bind piles round-robin to source addresses, e.g. 127.0.0.2-127.0.255.254 (past the
    /// 64 k ports of one address).
    #[arg(long)]
    source_ips: Option<IpRange>,
    /// Spread the piles over this many simulator processes (children of this one), past the
    /// per-process open-file limit; reported as one fleet.
    #[arg(long, default_value_t = 1)]
    processes: u32,
    /// No progress line on stderr.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Print the versioned JSON report instead of text.
    #[arg(long)]
    json: bool,
}

/// One share of a `--processes` fleet (started by `pile-load fleet`, not by hand).
#[derive(Args)]
struct ShardArgs {
    #[arg(long)]
    server: String,
    #[arg(long)]
    devices: u32,
    #[arg(long)]
    protocol: ProtocolChoice,
    #[arg(long)]
    first_bkv_id: String,
    #[arg(long)]
    first_ap3000_id: String,
    #[arg(long)]
    ports: u16,
    #[arg(long)]
    heartbeat_ms: u64,
    #[arg(long)]
    reconnect_delay_ms: u64,
    #[arg(long)]
    ramp: f64,
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    source_ips: Option<IpRange>,
    #[arg(long)]
    duration_ms: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// The acceptance-record report with ab's sections added.
    Text,
    /// The versioned JSON report.
    Json,
    /// ApacheBench 2.3's report, section for section.
    Ab,
}

/// ab's options keep ab's letters and meanings (`-t` is ab's time limit, so the thread count is
/// `--threads`).
#[derive(Args)]
struct HttpArgs {
    /// Target URL, http://host[:port]/path (ab's positional URL).
    #[arg(value_name = "URL", required_unless_present = "url")]
    target: Option<String>,
    /// The target URL as an option (same as the positional URL).
    #[arg(long, conflicts_with = "target", value_name = "URL")]
    url: Option<String>,
    /// Number of requests (ab -n).
    #[arg(short = 'n', long = "requests")]
    requests: Option<u64>,
    /// Concurrent connections (ab -c).
    #[arg(short = 'c', long = "concurrency", default_value_t = 1)]
    concurrency: usize,
    /// Time limit (ab -t: seconds, or e.g. 10s, 500ms, 2m); as in ab, without -n it implies at
    /// most 50000 requests.
    #[arg(short = 't', long = "timelimit", value_parser = parse_duration, conflicts_with = "duration")]
    timelimit: Option<Duration>,
    /// Run for this long, with no request cap (e.g. 10s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// OS threads driving the connections (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// Keep connections alive between requests (ab -k); without it every request opens its
    /// own connection, as ab does.
    #[arg(short = 'k', long = "keepalive")]
    keepalive: bool,
    /// POST the contents of FILE (ab -p); use -T for its Content-Type (default text/plain).
    #[arg(short = 'p', value_name = "FILE", conflicts_with_all = ["put_file", "body"])]
    post_file: Option<PathBuf>,
    /// PUT the contents of FILE (ab -u).
    #[arg(short = 'u', value_name = "FILE", conflicts_with = "body")]
    put_file: Option<PathBuf>,
    /// Content-Type of the body (ab -T).
    #[arg(short = 'T', value_name = "CONTENT-TYPE")]
    content_type: Option<String>,
    /// Extra header, 'Name: value'; repeatable (ab -H).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Cookie, 'name=value'; repeatable (ab -C).
    #[arg(short = 'C', long = "cookie")]
    cookies: Vec<String>,
    /// Per-request timeout: connect, send and whole response (ab -s: seconds, or e.g. 500ms).
    #[arg(short = 's', long = "timeout", value_parser = parse_duration, default_value = "30")]
    timeout: Duration,
    /// No progress output (ab -q).
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Open model: requests per second across all connections; latency is measured from each
    /// request's scheduled start (coordinated omission corrected).
    #[arg(long)]
    rate: Option<f64>,
    /// HTTP method (ab -m); POST with -p, PUT with -u, else GET.
    #[arg(short = 'm', long)]
    method: Option<String>,
    /// Request body: inline JSON, or @FILE to read it from a file. Sent as application/json
    /// unless -T or a Content-Type header is given.
    #[arg(long)]
    body: Option<String>,
    /// The gateway's API key, sent as X-Api-Key.
    #[arg(long)]
    api_key: Option<String>,
    /// Print the versioned JSON report (same as --format json).
    #[arg(long, conflicts_with = "format")]
    json: bool,
    /// Report format.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Fail (exit 2) if any condition holds, e.g. 'p99>200ms,success<99%,qps<50,errors>1%'.
    #[arg(long)]
    fail_if: Option<String>,
    /// The run fails (exit 3) when more than this percentage of requests failed, or when no
    /// request succeeded at all.
    #[arg(long, default_value_t = http::DEFAULT_MAX_ERROR_RATE, value_name = "PERCENT")]
    max_error_rate: f64,
    /// No live view even when stdout is a terminal (a progress line on stderr instead).
    #[arg(long)]
    no_tui: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Usage errors exit 1, keeping 2 for "ran, and a --fail-if condition held".
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // `http` runs its load on threads of its own (see `pile_load::http`), so its runtime only
    // aggregates; the fleet's piles run on this runtime's worker threads.
    let runtime = match &cli.command {
        Command::Http(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Command::Fleet(_) | Command::FleetShard(_) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Command::Http(args) => runtime.block_on(http_command(args)),
        Command::Fleet(args) => runtime.block_on(fleet_command(args)),
        Command::FleetShard(a) => runtime
            .block_on(fleet::shard::run_child(fleet::shard::ShardSpec {
                server: a.server,
                devices: a.devices,
                protocol: a.protocol,
                first_bkv_id: a.first_bkv_id,
                first_ap3000_id: a.first_ap3000_id,
                ports: a.ports,
                heartbeat: Duration::from_millis(a.heartbeat_ms),
                reconnect_delay: Duration::from_millis(a.reconnect_delay_ms),
                ramp: a.ramp,
                seed: a.seed,
                source_ips: a.source_ips,
                duration: Duration::from_millis(a.duration_ms),
            }))
            .map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// How the run shows its progress.
enum Show {
    Nothing,
    /// The ratatui view on stdout.
    Tui(Box<Tui>),
    /// A line on stderr, redrawn in place.
    Line,
    /// ab's "Completed N requests" lines on stderr, every tenth of -n.
    AbLines {
        step: u64,
        next: u64,
    },
}

async fn http_command(args: HttpArgs) -> anyhow::Result<ExitCode> {
    let conditions = match &args.fail_if {
        Some(expr) => http::parse_fail_if(expr)?,
        None => Vec::new(),
    };
    let mut config = config_from(&args)?;
    if let Err(e) = pile_load::rlimit::raise_nofile_limit() {
        eprintln!("warning: cannot raise the open-file limit: {e}");
    }
    let format = match (args.json, args.format) {
        (true, _) => Format::Json,
        (false, Some(f)) => f,
        (false, None) => Format::Text,
    };
    let stop = Arc::new(AtomicBool::new(false));
    config.stop = Some(Arc::clone(&stop));
    let mut show = if args.quiet {
        Show::Nothing
    } else if !args.no_tui && std::io::stdout().is_terminal() {
        match Tui::enter() {
            Ok(tui) => Show::Tui(Box::new(tui)),
            Err(_) => Show::Line,
        }
    } else if format == Format::Ab && config.requests.is_some_and(|n| n > 150) {
        let step = config.requests.unwrap_or(0) / 10;
        Show::AbLines { step, next: step }
    } else if std::io::stderr().is_terminal() {
        Show::Line
    } else {
        Show::Nothing
    };
    let mut view = LiveView::new(format!("{} {}", config.method, config.url));
    let mut last_line = std::time::Instant::now();
    let mut on_progress = |p: &Progress| {
        view.update(p);
        match &mut show {
            Show::Nothing => {}
            Show::Tui(tui) => {
                tui.draw(&view);
                if tui.quit_requested() {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            Show::Line => {
                if last_line.elapsed() >= Duration::from_millis(500) {
                    last_line = std::time::Instant::now();
                    eprint!("\r{}\x1b[K", pile_load::live::progress_line(&view, p));
                }
            }
            Show::AbLines { step, next } => {
                while *step > 0 && p.completed >= *next {
                    eprintln!("Completed {} requests", *next);
                    *next += *step;
                }
            }
        }
    };
    let result = http::run(config, Some(&mut on_progress)).await;
    match show {
        Show::Tui(tui) => drop(tui),
        Show::Line => eprintln!(),
        Show::AbLines { .. } => {
            if let Ok(r) = &result {
                eprintln!("Finished {} requests", r.requests);
            }
        }
        Show::Nothing => {}
    }
    let report = result?;

    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => print!("{}", report.render_text()),
        Format::Ab => print!("{}", http::ab::render_ab(&report)),
    }
    if let Some(reason) = &report.verdict.reason {
        eprintln!("pile-load: run failed: {reason}");
        return Ok(ExitCode::from(3));
    }
    let breaches = http::breaches(&conditions, &report);
    for breach in &breaches {
        eprintln!("{breach}");
    }
    Ok(if breaches.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

async fn fleet_command(args: FleetArgs) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!("pile-load fleet: run seed {seed} (replay this run with --seed {seed})");
    let mut config = FleetLoadConfig::new(&args.server, "", &args.api_key);
    config.api = args.api.clone();
    config.devices = args.devices;
    config.protocol = args.protocol;
    for id in &args.first_id {
        if id.len() == 14 && id.bytes().all(|b| b.is_ascii_digit()) {
            config.first_bkv_id = Some(id.clone());
        } else if id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            config.first_ap3000_id = Some(id.to_ascii_uppercase());
        } else {
            bail!("--first-id {id:?}: expected a 14-digit BKV ID or an 8-hex-digit AP3000 ID");
        }
    }
    config.ramp = args.ramp;
    config.heartbeat = args.heartbeat;
    config.reconnect_delay = args.reconnect_delay;
    config.duration = args.duration;
    config.charge_rate = args.charge_rate;
    config.server_pid = args.server_pid;
    config.ports = args.ports;
    config.seed = seed;
    config.source_ips = args.source_ips;
    config.processes = args.processes;
    config.progress = !args.quiet;
    if args.processes <= 1 {
        let want = u64::from(args.devices) + 1024;
        let limit = pile_sim::fleet::raise_fd_limit(want);
        if limit < want {
            eprintln!(
                "warning: open-file limit is {limit}, {want} wanted; not every pile can connect \
                 (spread the fleet with --processes)"
            );
        }
    }
    let report = fleet::run(config).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render_text());
    }
    Ok(ExitCode::SUCCESS)
}

fn config_from(args: &HttpArgs) -> anyhow::Result<HttpLoadConfig> {
    let url = args
        .target
        .clone()
        .or_else(|| args.url.clone())
        .context("a target URL is required")?;
    let mut config = HttpLoadConfig::new(url);
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read body file {}", path.display()))
    };
    let (body, default_method, default_type) = if let Some(path) = &args.post_file {
        (Some(Bytes::from(read(path)?)), "POST", "text/plain")
    } else if let Some(path) = &args.put_file {
        (Some(Bytes::from(read(path)?)), "PUT", "text/plain")
    } else {
        let body = match args.body.as_deref() {
            Some(text) => Some(match text.strip_prefix('@') {
                Some(path) => Bytes::from(read(std::path::Path::new(path))?),
                None => Bytes::from(text.to_string()),
            }),
            None => None,
        };
        (body, "GET", "application/json")
    };
    let method = args.method.as_deref().unwrap_or(default_method);
    config.method = method
        .to_ascii_uppercase()
        .parse()
        .with_context(|| format!("invalid method {method:?}"))?;
    config.requests = args.requests;
    config.duration = args.duration;
    if let Some(limit) = args.timelimit {
        // ab: "-t timelimit ... This implies -n 50000".
        config.duration = Some(limit);
        config.requests = Some(args.requests.unwrap_or(50_000));
    }
    config.concurrency = args.concurrency;
    config.threads = args.threads;
    config.rate = args.rate;
    config.timeout = args.timeout;
    config.keep_alive = args.keepalive;
    config.max_error_rate = args.max_error_rate;
    config.api_key = args.api_key.clone();
    if body.is_some() {
        let content_type = args.content_type.as_deref().unwrap_or(default_type);
        config
            .headers
            .push(("Content-Type".into(), content_type.to_string()));
    } else if let Some(t) = &args.content_type {
        config.headers.push(("Content-Type".into(), t.clone()));
    }
    config.body = body;
    if !args.cookies.is_empty() {
        config
            .headers
            .push(("Cookie".into(), args.cookies.join("; ")));
    }
    for header in &args.headers {
        let Some((name, value)) = header.split_once(':') else {
            bail!("invalid header {header:?}: expected 'Name: value'");
        };
        config
            .headers
            .push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok(config)
}
