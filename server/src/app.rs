//! Wiring: store, keys, writer, sweeper, device listener and HTTP server, and the order in
//! which they stop. Binaries bind the sockets and hand them in; tests bind port 0.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::Config;
use crate::http::{self, AppState};
use crate::service::{Service, Timings};
use crate::store::Store;
use crate::writer::Writer;

/// A started gateway.
pub struct App {
    pub service: Arc<Service>,
    /// The key generated on first start (no key configured, none stored), if any.
    pub generated_api_key: Option<String>,
    pub http_addr: std::net::SocketAddr,
    pub device_addr: std::net::SocketAddr,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl App {
    /// Waits until the gateway has shut down (after `shutdown` fired) and flushed.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.done.await.context("gateway task panicked")?
    }
}

/// Runs the gateway until `shutdown` fires, then stops accepting, closes sessions, flushes
/// the batched writer and closes the database.
pub async fn run(
    config: Config,
    http_listener: TcpListener,
    device_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = start(config, http_listener, device_listener, shutdown).await?;
    if let Some(key) = &app.generated_api_key {
        // Printed once: only the hash is stored.
        println!("Generated API key (shown once, store it now): {key}");
        tracing::warn!("no API key configured; generated one and printed it to stdout");
    }
    app.wait().await
}

/// Starts every part and returns handles; [`run`] is this plus waiting.
pub async fn start(
    config: Config,
    http_listener: TcpListener,
    device_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<App> {
    start_with_clock(
        config,
        http_listener,
        device_listener,
        shutdown,
        Clock::system(),
    )
    .await
}

/// [`start`] with the clock the gateway's decisions read (tests pass a manual one).
pub async fn start_with_clock(
    config: Config,
    http_listener: TcpListener,
    device_listener: TcpListener,
    shutdown: CancellationToken,
    clock: Clock,
) -> anyhow::Result<App> {
    let prometheus = crate::metrics::install();
    let store = Store::connect(&config.database_url, config.db_pool)
        .await
        .with_context(|| format!("connecting to {}", redact(&config.database_url)))?;

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    for key in &config.api_keys {
        store
            .add_api_key(&hex::encode(http::hash_key(key)), "configured", now)
            .await?;
    }
    let mut generated_api_key = None;
    let mut stored = store.api_key_hashes().await?;
    if stored.is_empty() {
        let key = format!("pk_{}", hex::encode(rand::random::<[u8; 24]>()));
        let hash = hex::encode(http::hash_key(&key));
        store.add_api_key(&hash, "generated", now).await?;
        stored.push(hash);
        generated_api_key = Some(key);
    }
    let key_hashes: Vec<[u8; 32]> = stored
        .iter()
        .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
        .collect();

    let writer_stop = CancellationToken::new();
    let (writer, writer_task) =
        Writer::spawn(store.clone(), config.flush_interval, writer_stop.clone());
    let service = Arc::new(Service::new(
        store.clone(),
        writer,
        Timings {
            command_ttl: config.command_ttl,
            offline_settle_grace: config.offline_settle_grace,
            offline_after: config.offline_after,
            reconcile: config.reconcile,
            ..Timings::default()
        },
        clock,
    ));
    // Devices a previous run left online stay so for their offline threshold: a pile back
    // within it after this restart produces no offline/online pair.
    let restored = service.restore_online().await?;
    if restored > 0 {
        tracing::info!(
            restored,
            "devices online at the last stop wait for their reconnect"
        );
    }

    let tracker = TaskTracker::new();
    let listener_up = Arc::new(AtomicBool::new(false));
    let http_addr = http_listener.local_addr()?;
    let device_addr = device_listener.local_addr()?;

    // Device side.
    let limits = crate::device::Limits::from_config(&config);
    let core = limits.core(&config);
    tracker.spawn(crate::device::serve(
        device_listener,
        service.clone(),
        limits,
        core,
        listener_up.clone(),
        shutdown.clone(),
        tracker.clone(),
    ));

    // Sweeper: command TTLs and grace-period settlements.
    {
        let service = service.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = service.sweep().await {
                            tracing::warn!(error = %e, "sweep failed");
                        }
                    }
                    _ = shutdown.cancelled() => break,
                }
            }
        });
    }

    // Events: webhook dispatcher and live stream.
    let events = crate::events::Events::start(
        &config,
        store.clone(),
        service.clock.clone(),
        shutdown.clone(),
        &tracker,
    )?;
    // #13 retention: prunes delivered events, old command logs and progress samples.
    tracker.spawn(crate::retention::run(
        store.clone(),
        service.clock.clone(),
        config.retention.clone(),
        events.dispatcher.is_none(),
        shutdown.clone(),
    ));

    // HTTP.
    let state = AppState::new(
        service.clone(),
        key_hashes,
        prometheus,
        listener_up,
        config.rate_limit,
        config.body_limit,
    )
    .with_events(events);
    let router = http::app(state);
    let http_shutdown = shutdown.clone();
    let http_task = tokio::spawn(async move {
        axum::serve(http_listener, router)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await
    });

    let done = {
        let service = service.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            // Sessions watch the same token and leave without marking their devices offline.
            tracker.close();
            tracker.wait().await;
            match tokio::time::timeout(Duration::from_secs(10), http_task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
                Ok(Err(e)) => tracing::warn!(error = %e, "HTTP task failed"),
                Err(_) => tracing::warn!("HTTP server did not stop within 10 s"),
            }
            writer_stop.cancel();
            writer_task.await.context("writer task")?;
            service.store.close().await;
            tracing::info!("gateway stopped");
            Ok(())
        })
    };

    tracing::info!(%http_addr, %device_addr, "gateway started");
    Ok(App {
        service,
        generated_api_key,
        http_addr,
        device_addr,
        done,
    })
}

/// Hides a password in a database URL for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
