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
use crate::http::{self, AppState, StoredKey};
use crate::service::{Service, Timings};
use crate::store::Store;
use crate::writer::Writer;
use secrecy::{ExposeSecret, SecretString};

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
    check_webhook_secret(&config)?;
    let admission = crate::device::admission::AdmissionConfig::from_config(&config)?;
    let prometheus = crate::metrics::install();
    // Issue #17: on PostgreSQL the gateway is one instance among any that share the database;
    // SQLite is single-instance and refuses to be shared.
    crate::cluster::check(&config.database_url, &config.cluster)?;
    let postgres = config.database_url.starts_with("postgres:")
        || config.database_url.starts_with("postgresql:");
    let instance_id = postgres.then(|| {
        config
            .cluster
            .instance_id
            .clone()
            .unwrap_or_else(crate::cluster::generated_id)
    });
    let db_url = match &instance_id {
        Some(id) => crate::cluster::with_application_name(&config.database_url, id),
        None => config.database_url.clone(),
    };
    let store = Store::connect(&db_url, config.db_pool)
        .await
        .with_context(|| format!("connecting to {}", redact(&config.database_url)))?;

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (keys, generated_api_key) = api_keys(&store, &config.api_keys, now).await?;

    let writer_stop = CancellationToken::new();
    let (writer, writer_task) =
        Writer::spawn(store.clone(), config.flush_interval, writer_stop.clone());
    let service = Arc::new(
        Service::new(
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
        )
        .with_admission(crate::device::admission::Admission::new(admission)),
    );
    let http_addr = http_listener.local_addr()?;
    let device_addr = device_listener.local_addr()?;
    // Issue #17: register this instance before anything takes a lease.
    if let Some(id) = &instance_id {
        let cluster = Arc::new(crate::cluster::Cluster::new(
            id.clone(),
            store.clone(),
            db_url.clone(),
            config.cluster.clone(),
            service.clock.clone(),
        ));
        cluster
            .register(&http_addr.to_string(), &device_addr.to_string())
            .await?;
        let _ = service.cluster.set(cluster);
        // Other instances write this database behind the read model's back: read the store.
        service.read.set_shared();
        tracing::info!(instance_id = %id, "instance registered on the shared PostgreSQL");
    }
    // Devices a previous run left online stay so for their offline threshold: a pile back
    // within it after this restart produces no offline/online pair.
    let restored = service.restore_online().await?;
    // Issue 14: device, port and active-order reads are answered from memory.
    let devices = service.rebuild_read_model().await?;
    tracing::debug!(devices, "read model loaded");
    if restored > 0 {
        tracing::info!(
            restored,
            "devices online at the last stop wait for their reconnect"
        );
    }

    let tracker = TaskTracker::new();
    let listener_up = Arc::new(AtomicBool::new(false));
    // Issue #17: beats, lease renewals, orphans, the LISTEN connection and the command poll.
    if let Some(cluster) = service.cluster.get().cloned() {
        tracker.spawn(crate::cluster::run(
            service.clone(),
            cluster,
            shutdown.clone(),
        ));
    }

    // Device side.
    // #13: the HTTP and device caps stay under the open-file limit minus the reserve.
    let nofile = http::serve::raise_nofile_limit();
    let (http_cap, device_cap) = http::serve::connection_caps(
        nofile,
        config.fd_reserve,
        config.http_max_connections,
        config.max_connections,
    );
    tracing::info!(
        http_cap,
        device_cap,
        nofile = nofile.unwrap_or(0),
        fd_reserve = config.fd_reserve,
        header_timeout_s = config.http_header_timeout.as_secs_f64(),
        request_timeout_s = config.http_request_timeout.as_secs_f64(),
        "connection caps"
    );
    let mut limits = crate::device::Limits::from_config(&config);
    limits.max_connections = device_cap;
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
            let ring_ttl = config.frame_ring_ttl;
            let mut ticks = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = service.sweep().await {
                            tracing::warn!(error = %e, "sweep failed");
                        }
                        ticks += 1;
                        if ticks % 60 == 0 {
                            service.prune_gone(ring_ttl);
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
    let mut state = AppState::new(
        service.clone(),
        keys,
        prometheus,
        listener_up,
        config.rate_limit,
        config.body_limit,
    )
    .with_events(events)
    .with_auth_failures_per_minute(config.auth_failures_per_minute);
    state.inner_mut().request_timeout = config.http_request_timeout;
    let router = http::app(state);
    let http_limits = http::serve::HttpLimits {
        max_connections: http_cap,
        header_timeout: config.http_header_timeout,
    };
    let http_task = tokio::spawn(http::serve::serve(
        http_listener,
        router,
        http_limits,
        shutdown.clone(),
    ));

    let done = {
        let service = service.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            let t0 = std::time::Instant::now();
            let ms = |t: std::time::Instant| t.elapsed().as_millis() as u64;
            // Sessions watch the same token and leave without marking their devices offline.
            tracker.close();
            tracker.wait().await;
            tracing::info!(elapsed_ms = ms(t0), "shutdown: sessions and tasks ended");
            match tokio::time::timeout(Duration::from_secs(10), http_task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "HTTP task failed"),
                Err(_) => tracing::warn!("HTTP server did not stop within 10 s"),
            }
            tracing::info!(elapsed_ms = ms(t0), "shutdown: HTTP stopped");
            writer_stop.cancel();
            writer_task.await.context("writer task")?;
            tracing::info!(elapsed_ms = ms(t0), "shutdown: batched writes flushed");
            if let Some(c) = service.cluster() {
                // Issue #17: the leases expire now; other instances take the piles.
                if let Err(e) = c.stopped().await {
                    tracing::warn!(error = %e, "instance not marked stopped; its leases expire");
                }
            }
            service.store.close().await;
            tracing::info!(elapsed_ms = ms(t0), "gateway stopped");
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

/// #13: an empty webhook secret, or a webhook URL without one, is refused unless unsigned
/// webhooks are asked for.
fn check_webhook_secret(config: &Config) -> anyhow::Result<()> {
    if config.allow_unsigned_webhooks {
        return Ok(());
    }
    let empty = config
        .webhook_secret
        .as_ref()
        .map(|s| s.expose_secret().trim().is_empty());
    match (empty, config.webhook_url.is_some()) {
        (Some(true), _) => anyhow::bail!(
            "--webhook-secret is empty: webhooks would be signed with an empty key; give a \
             secret, or pass --allow-unsigned-webhooks if unsigned webhooks are wanted"
        ),
        (None, true) => anyhow::bail!(
            "--webhook-url needs --webhook-secret (receivers verify the signature with it); \
             pass --allow-unsigned-webhooks if unsigned webhooks are wanted"
        ),
        _ => Ok(()),
    }
}

/// #13: the accepted keys. Configured keys are the whole set (stored salted; whatever else
/// was stored goes). None configured: the generated key stored by an earlier start, or a new
/// one (returned so it is shown once).
async fn api_keys(
    store: &Store,
    configured: &[SecretString],
    now: i64,
) -> anyhow::Result<(Vec<StoredKey>, Option<String>)> {
    if !configured.is_empty() {
        let keys: Vec<StoredKey> = configured.iter().map(StoredKey::derive).collect();
        let rows: Vec<(String, String)> = keys
            .iter()
            .map(|k| (k.encode(), "configured".to_string()))
            .collect();
        store.replace_api_keys(&rows, now).await?;
        tracing::info!(keys = keys.len(), "API keys: the configured set");
        return Ok((keys, None));
    }
    let stored = store.api_keys().await?;
    let generated: Vec<StoredKey> = stored
        .iter()
        .filter(|(_, label)| label == "generated")
        .filter_map(|(hash, _)| StoredKey::decode(hash))
        .collect();
    if !generated.is_empty() {
        if generated.len() != stored.len() {
            let rows: Vec<(String, String)> = generated
                .iter()
                .map(|k| (k.encode(), "generated".to_string()))
                .collect();
            store.replace_api_keys(&rows, now).await?;
        }
        return Ok((generated, None));
    }
    if !stored.is_empty() {
        tracing::warn!(
            "no API key configured and no usable generated one stored (keys configured \
             before, or stored unsalted by an older version, no longer count): generating one"
        );
    }
    let key = SecretString::from(format!("pk_{}", hex::encode(rand::random::<[u8; 24]>())));
    let k = StoredKey::derive(&key);
    store
        .replace_api_keys(&[(k.encode(), "generated".to_string())], now)
        .await?;
    Ok((vec![k], Some(key.expose_secret().to_string())))
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
