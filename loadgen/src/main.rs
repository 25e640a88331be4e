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
use pile_load::http::{self, HttpLoadConfig, Progress};

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
    // The load runs on threads of its own (see `pile_load::http`); this runtime only aggregates.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Command::Http(args) => runtime.block_on(http_command(args)),
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
