//! `pile-load`: the load generator's command line. Exit codes: 0 ran and passed, 1 could not run
//! (bad arguments, bad `--fail-if`, unreachable setup), 2 ran but a `--fail-if` condition held.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pile_load::duration::parse_duration;
use pile_load::fleet::{self, FleetLoadConfig};
use pile_load::http::{self, HttpLoadConfig, Progress};
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
}

#[derive(Args)]
struct FleetArgs {
    /// The gateway's device address, HOST:PORT.
    #[arg(long)]
    server: String,
    /// The gateway's HTTP API, http://HOST:PORT.
    #[arg(long)]
    api: String,
    /// The gateway's API key.
    #[arg(long)]
    api_key: String,
    /// Simulated piles.
    #[arg(long, default_value_t = 100)]
    devices: u32,
    /// bkv, ap3000 or mixed (even piles BKV, odd AP3000).
    #[arg(long, default_value = "bkv")]
    protocol: ProtocolChoice,
    /// New connections per second at start (at most 20000); the ramp must end within --duration.
    #[arg(long, default_value_t = 1000.0)]
    ramp: f64,
    /// Heartbeat period (seconds, or e.g. 500ms).
    #[arg(long, value_parser = parse_duration, default_value = "11")]
    heartbeat: Duration,
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
    /// Print the versioned JSON report instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct HttpArgs {
    /// Target URL (http://host:port/path).
    #[arg(long)]
    url: String,
    /// Number of requests.
    #[arg(short = 'n', long = "requests")]
    requests: Option<u64>,
    /// Concurrent keep-alive connections.
    #[arg(short = 'c', long = "concurrency", default_value_t = 1)]
    concurrency: usize,
    /// OS threads driving the connections (default: one per CPU).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Run for this long (e.g. 10s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Open model: requests per second across all connections; latency is measured from each
    /// request's scheduled start (coordinated omission corrected).
    #[arg(long)]
    rate: Option<f64>,
    /// HTTP method.
    #[arg(short = 'm', long, default_value = "GET")]
    method: String,
    /// Request body: inline JSON, or @FILE to read it from a file. Sent as application/json
    /// unless a Content-Type header is given.
    #[arg(long)]
    body: Option<String>,
    /// Extra header, 'Name: value'; repeatable.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// The gateway's API key, sent as X-Api-Key.
    #[arg(long)]
    api_key: Option<String>,
    /// Per-request timeout (connect, send and whole response).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    timeout: Duration,
    /// Print the versioned JSON report instead of text.
    #[arg(long)]
    json: bool,
    /// Fail (exit 2) if any condition holds, e.g. 'p99>200ms,success<99%,qps<50,errors>1%'.
    #[arg(long)]
    fail_if: Option<String>,
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
        Command::Fleet(_) => tokio::runtime::Builder::new_multi_thread()
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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn http_command(args: HttpArgs) -> anyhow::Result<ExitCode> {
    let conditions = match &args.fail_if {
        Some(expr) => http::parse_fail_if(expr)?,
        None => Vec::new(),
    };
    let config = config_from(&args)?;
    if let Err(e) = pile_load::rlimit::raise_nofile_limit() {
        eprintln!("warning: cannot raise the open-file limit: {e}");
    }

    let bar = std::io::stderr()
        .is_terminal()
        .then(|| progress_bar(&config));
    let on_progress = |p: Progress| {
        if let Some(bar) = &bar {
            match (p.requests, p.duration) {
                (Some(_), _) => bar.set_position(p.completed),
                (None, Some(_)) => bar.set_position(p.elapsed.as_millis() as u64),
                (None, None) => {}
            }
            bar.set_message(format!("{} done", p.completed));
        }
    };
    let report = http::run(config, bar.as_ref().map(|_| &on_progress as _)).await?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render_text());
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
    let mut config = FleetLoadConfig::new(&args.server, &args.api, &args.api_key);
    config.devices = args.devices;
    config.protocol = args.protocol;
    config.ramp = args.ramp;
    config.heartbeat = args.heartbeat;
    config.duration = args.duration;
    config.charge_rate = args.charge_rate;
    config.server_pid = args.server_pid;
    config.ports = args.ports;
    config.seed = seed;
    config.source_ips = args.source_ips;
    let want = u64::from(args.devices) + 1024;
    let limit = pile_sim::fleet::raise_fd_limit(want);
    if limit < want {
        eprintln!("warning: open-file limit is {limit}, {want} wanted; not every pile can connect");
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
    let mut config = HttpLoadConfig::new(&args.url);
    config.method = args
        .method
        .to_ascii_uppercase()
        .parse()
        .with_context(|| format!("invalid method {:?}", args.method))?;
    config.requests = args.requests;
    config.duration = args.duration;
    config.concurrency = args.concurrency;
    config.threads = args.threads;
    config.rate = args.rate;
    config.timeout = args.timeout;
    config.api_key = args.api_key.clone();
    config.body = match args.body.as_deref() {
        Some(text) => Some(match text.strip_prefix('@') {
            Some(path) => Bytes::from(
                std::fs::read(path).with_context(|| format!("cannot read body file {path}"))?,
            ),
            None => Bytes::from(text.to_string()),
        }),
        None => None,
    };
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

fn progress_bar(config: &HttpLoadConfig) -> ProgressBar {
    let (length, template) = match (config.requests, config.duration) {
        (Some(n), _) => (n, "{bar:40} {pos}/{len} requests  {elapsed}"),
        (None, Some(d)) => (d.as_millis() as u64, "{bar:40} {elapsed}  {msg}"),
        (None, None) => (
            http::DEFAULT_REQUESTS,
            "{bar:40} {pos}/{len} requests  {elapsed}",
        ),
    };
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}
