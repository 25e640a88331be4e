//! `pile-sim`: virtual charging piles for the gateway.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use pile_sim::config::{FleetConfig, IpRange, ProtocolChoice};
use pile_sim::control;
use pile_sim::fleet::{raise_fd_limit, FleetHandle};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "pile-sim",
    version,
    about = "Virtual charging piles that speak BKV and AP3000"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a fleet of virtual piles against a gateway.
    Run(RunArgs),
    /// Print one frame of either family (hex) as JSON: the field engineer's frame analyzer.
    Decode(pile_sim::decode::DecodeArgs),
}

#[derive(Args)]
struct RunArgs {
    /// The gateway's device address; several, comma-separated (A,B,C), make every pile dial
    /// the next one after a failed connect or a drop, as a pile with backup addresses does.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]")]
    server: String,
    /// Number of piles.
    #[arg(long, default_value_t = 1)]
    devices: u32,
    /// bkv, ap3000, or mixed (even piles BKV, odd piles AP3000).
    #[arg(long, default_value = "bkv")]
    protocol: ProtocolChoice,
    /// First device ID; IDs count up from it. A 14-digit BKV gateway ID or an
    /// 8-hex-digit AP3000 physical ID; give both (comma-separated) for mixed.
    /// Defaults: 82210225000520 and 04AB373B.
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    first_id: Vec<String>,
    /// Ports per pile.
    #[arg(long, default_value_t = 4)]
    ports: u16,
    /// Heartbeat period in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 11.0)]
    heartbeat: f64,
    /// Seconds after the network returns (or a connection is lost) before the pile reconnects.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    reconnect_delay: f64,
    /// Seconds between a BKV start command and the virtual user plugging in.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    plug_delay: f64,
    /// New connections per second while the fleet starts.
    #[arg(long, value_name = "PER_SEC", default_value_t = 1000.0)]
    ramp: f64,
    /// Source addresses to spread connections over, e.g. 127.0.0.2-127.0.255.254.
    #[arg(long, value_name = "RANGE")]
    source_ips: Option<IpRange>,
    /// Serve the control API on this address (off by default).
    #[arg(long, value_name = "ADDR")]
    control_listen: Option<SocketAddr>,
    /// Run seed (printed at start; the same seed replays the same run).
    #[arg(long)]
    seed: Option<u64>,
    /// Nominal charger power in W.
    #[arg(long, value_name = "W", default_value_t = 180.0)]
    power_w: f64,
    /// Recent frames kept per pile for GET /piles/{id}/frames.
    #[arg(long, default_value_t = 32)]
    frames_kept: usize,
    /// The fleet's EEPROM file: unacknowledged settlements and running charges are kept there,
    /// so a killed pile-sim (kill -9) resends them after a restart, like a power outage.
    #[arg(long, value_name = "FILE")]
    eeprom: Option<std::path::PathBuf>,
    /// Firmware generation for a share of the piles, e.g. ap3000=v6.1:30% (repeat or
    /// comma-separate; the rest speaks the latest).
    #[arg(long, value_name = "FAMILY=VERSION[:SHARE]")]
    firmware: Vec<String>,
}

fn secs(v: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .with_context(|| format!("{flag} must be a non-negative number of seconds"))
}

impl RunArgs {
    fn config(&self, seed: u64) -> anyhow::Result<FleetConfig> {
        let mut cfg = FleetConfig {
            server: self.server.clone(),
            devices: self.devices,
            protocol: self.protocol,
            ports: self.ports,
            heartbeat: secs(self.heartbeat, "--heartbeat")?,
            reconnect_delay: secs(self.reconnect_delay, "--reconnect-delay")?,
            plug_delay: secs(self.plug_delay, "--plug-delay")?,
            ramp_per_sec: self.ramp,
            source_ips: self.source_ips,
            seed,
            power_w: self.power_w,
            frames_kept: self.frames_kept,
            eeprom: self.eeprom.clone(),
            firmware: pile_sim::firmware::FirmwarePlan::parse(
                self.firmware.iter().map(String::as_str),
            )?,
            ..FleetConfig::default()
        };
        for id in &self.first_id {
            if id.len() == 14 && id.bytes().all(|b| b.is_ascii_digit()) {
                cfg.first_bkv_id = id.clone();
            } else if id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                cfg.first_ap3000_id = id.to_ascii_uppercase();
            } else {
                anyhow::bail!(
                    "--first-id {id:?}: expected a 14-digit BKV ID or an 8-hex-digit AP3000 ID"
                );
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(pile_sim::seed::fresh_run_seed);
    let cfg = args.config(seed)?;
    println!("pile-sim: run seed {seed} (replay this run with --seed {seed})");
    let want_fds = u64::from(cfg.devices) * 2 + 1024;
    let fds = raise_fd_limit(want_fds);
    if fds < want_fds {
        eprintln!("pile-sim: warning: open-file limit is {fds}, {want_fds} wanted");
    }
    let fleet = FleetHandle::start(cfg.clone()).await?;
    println!(
        "pile-sim: {} pile(s) ({}) against {}, heartbeat {:?}",
        fleet.len(),
        args.protocol_name(),
        cfg.server,
        cfg.heartbeat
    );
    let shutdown = CancellationToken::new();
    let mut control_task = None;
    if let Some(addr) = args.control_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        println!("pile-sim: control API on http://{}", listener.local_addr()?);
        control_task = Some(tokio::spawn(control::serve(
            listener,
            fleet.clone(),
            shutdown.clone(),
        )));
    }
    let mut report = tokio::time::interval(Duration::from_secs(10));
    report.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = report.tick() => {
                let s = fleet.summary();
                println!(
                    "pile-sim: online {}/{} connecting {} waiting {} network-down {} powered-off {} charging-ports {} pending-records {}",
                    s.online, s.piles, s.connecting, s.waiting_to_connect, s.network_down,
                    s.powered_off, s.charging_ports, s.pending_replay
                );
            }
        }
    }
    println!("pile-sim: shutting down");
    shutdown.cancel();
    fleet.shutdown().await;
    if let Some(task) = control_task {
        task.await??;
    }
    Ok(())
}

impl RunArgs {
    fn protocol_name(&self) -> &'static str {
        match self.protocol {
            ProtocolChoice::Bkv => "bkv",
            ProtocolChoice::Ap3000 => "ap3000",
            ProtocolChoice::Mixed => "mixed",
        }
    }
}

/// Prints an error as one line (with its causes) and turns it into exit 1.
fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pile-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => exit_code(run(args).await),
        Command::Decode(args) => std::process::exit(pile_sim::decode::run(&args)),
    }
}
