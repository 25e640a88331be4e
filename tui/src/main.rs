//! `pile-tui --server URL --api-key KEY [--sim URL] [--refresh SECS]`

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use crossterm::event::{Event, EventStream};
use futures::StreamExt;
use pile_tui::app::{App, Focus};
use pile_tui::net::{self, PollConfig};
use pile_tui::{startup, ui};
use tokio::sync::{mpsc, watch};

/// The operations dashboard of the pilekit gateway.
#[derive(Debug, Parser)]
#[command(name = "pile-tui", version)]
struct Args {
    /// The gateway's HTTP address, e.g. http://127.0.0.1:7055
    #[arg(long, env = "PILE_SERVER")]
    server: String,
    /// The gateway's API key (X-Api-Key).
    #[arg(long, env = "PILE_API_KEY")]
    api_key: String,
    /// The simulator's control API, e.g. http://127.0.0.1:7070; enables plug, unplug,
    /// network cut and restore, and fault injection.
    #[arg(long)]
    sim: Option<String>,
    /// Seconds between polls of the gateway.
    #[arg(long, default_value_t = 2.0)]
    refresh: f64,
}

/// Frames per second at most; also how often "… ago" texts move.
const TICK: Duration = Duration::from_millis(250);

/// Exits with a start-up problem, in one line (no backtrace: it is the operator's input).
fn refuse(reason: &str) -> ! {
    eprintln!("pile-tui: {reason}");
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let refresh = Duration::try_from_secs_f64(args.refresh.max(0.2)).context("--refresh")?;
    let server = startup::normalize_url("--server", &args.server).unwrap_or_else(|e| refuse(&e));
    let sim = args
        .sim
        .as_deref()
        .map(|s| startup::normalize_url("--sim", s).unwrap_or_else(|e| refuse(&e)));
    let mut cfg = PollConfig::new(server.clone(), args.api_key.clone(), refresh);
    cfg.sim = sim.clone();
    // A refused key or an address that is no gateway will not get better: say so and exit
    // before taking the terminal. A gateway that is not up yet is shown as disconnected.
    if let Err(reason) = startup::check_gateway(&cfg.client(), net::REQUEST_TIMEOUT).await {
        refuse(&reason);
    }
    // `ratatui::init` enters raw mode and the alternate screen and installs a panic hook
    // that restores the terminal before the panic message is printed.
    let mut terminal = ratatui::init();
    let result = run(&mut terminal, cfg, sim).await;
    ratatui::restore();
    result
}

async fn run(
    terminal: &mut ratatui::DefaultTerminal,
    cfg: PollConfig,
    sim: Option<String>,
) -> anyhow::Result<()> {
    let mut app = App::new(cfg.server.clone(), sim.is_some());
    app.tick(net::now_ms());
    // Three missed refreshes, and at least the request timeout plus a refresh.
    app.stale_after_ms = (cfg.refresh * 3)
        .max(net::REQUEST_TIMEOUT + cfg.refresh)
        .as_millis() as i64;
    let (tx, mut updates) = mpsc::channel(1024);
    let (focus_tx, focus_rx) = watch::channel(Focus::default());
    let poller = tokio::spawn(net::run_poller(cfg.clone(), focus_rx, tx.clone()));
    let stream = tokio::spawn(net::run_event_stream(cfg.clone(), tx.clone()));
    let client = cfg.client();

    let mut input = EventStream::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut dirty = true;
    while !app.quit {
        if dirty {
            terminal.draw(|f| ui::render(&app, f))?;
            dirty = false;
        }
        tokio::select! {
            _ = tick.tick() => {
                app.tick(net::now_ms());
                dirty = true;
            }
            ev = input.next() => match ev {
                Some(Ok(Event::Key(key))) => { app.handle_key(key); dirty = true; }
                Some(Ok(Event::Resize(..))) => dirty = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("reading the terminal"),
                None => break,
            },
            Some(update) = updates.recv() => {
                app.apply(update);
                // Drain what else is queued before drawing once.
                while let Ok(u) = updates.try_recv() {
                    app.apply(u);
                }
                dirty = true;
            }
        }
        focus_tx.send_if_modified(|f| {
            let now = app.focus();
            let changed = *f != now;
            *f = now;
            changed
        });
        for cmd in app.take_commands() {
            let client = client.clone();
            let sim = sim.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let done = net::execute(&client, sim.as_deref(), &cmd).await;
                let _ = tx.send(done).await;
            });
        }
    }
    poller.abort();
    stream.abort();
    Ok(())
}
