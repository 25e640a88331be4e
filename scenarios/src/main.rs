//! `pile-scenarios run [--profile quick|seed] [--case ID]... [--out DIR] [--seed N]
//! [--database-url URL] [--target-http URL --target-device HOST:PORT --api-key K]`,
//! `pile-scenarios list`. No arguments = `run --profile quick`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::{Parser, Subcommand};
use pile_scenarios::runner::{self, RunOptions};
use pile_scenarios::stack::TargetSpec;
use pile_scenarios::Profile;

#[derive(Debug, Parser)]
#[command(
    name = "pile-scenarios",
    version,
    about = "Runs the production acceptance record end to end and fills it in"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the cases (the default).
    Run(RunArgs),
    /// List the cases.
    List,
    /// The embedded gateway (started by `run`; not for direct use).
    #[command(name = "__gateway", hide = true)]
    Gateway(Box<pile_server::config::Cli>),
}

#[derive(Debug, clap::Args, Default)]
struct RunArgs {
    /// `quick` (CI timings) or `seed` (the record's real timings).
    #[arg(long, default_value = "quick")]
    profile: String,
    /// Run only these cases (repeatable), e.g. `--case 2.1 --case X.3`.
    #[arg(long = "case")]
    cases: Vec<String>,
    /// Report directory [default: reports/<timestamp>-<profile>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run seed every simulated pile's randomness derives from.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Database of the embedded gateway [default: a temporary SQLite file].
    #[arg(long)]
    database_url: Option<String>,
    /// External gateway's HTTP base URL (instead of the embedded one).
    #[arg(long, requires_all = ["target_device", "api_key"])]
    target_http: Option<String>,
    /// External gateway's device address, HOST:PORT.
    #[arg(long, requires = "target_http")]
    target_device: Option<String>,
    /// API key of the external gateway.
    #[arg(long, requires = "target_http")]
    api_key: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Gateway(args)) => {
            match rt.block_on(pile_scenarios::gateway::child_main(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("gateway: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::List) => {
            for c in pile_scenarios::cases::all() {
                println!("{:<4} {:?}\t{}", c.id, c.phase, c.title);
            }
            ExitCode::SUCCESS
        }
        Some(Command::Run(args)) => finish(rt.block_on(run(args))),
        None => finish(rt.block_on(run(RunArgs {
            profile: "quick".into(),
            seed: 1,
            ..RunArgs::default()
        }))),
    }
}

fn finish(r: anyhow::Result<bool>) -> ExitCode {
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let profile = Profile::by_name(&args.profile)
        .ok_or_else(|| anyhow!("unknown profile {:?}: quick or seed", args.profile))?;
    let target = match (args.target_http, args.target_device, args.api_key) {
        (Some(http), Some(device), Some(api_key)) => {
            if args.database_url.is_some() {
                bail!("--database-url applies to the embedded gateway only");
            }
            TargetSpec::External {
                http,
                device,
                api_key,
            }
        }
        (None, None, None) => TargetSpec::Embedded {
            exe: std::env::current_exe()?,
            database_url: args.database_url,
        },
        _ => bail!("--target-http, --target-device and --api-key go together"),
    };
    let (report, _) = runner::run(RunOptions {
        profile,
        cases: args.cases,
        out_dir: args.out,
        seed: args.seed,
        target,
    })
    .await?;
    Ok(report.all_passed())
}
