//! Several gateway instances on one PostgreSQL (issue #17). PostgreSQL only: SQLite stays
//! single-instance and a gateway asked to share it refuses to start.
//!
//! * **Instance registry** (`cluster_instances`): each instance registers at start-up and
//!   beats every `renew` period; `GET /api/v1/admin/instances` lists them.
//! * **Session leases** (`cluster_leases`): the instance a device is connected to holds its
//!   lease (owner, connection, expiry). One statement per beat renews all of an instance's
//!   leases; a lease not renewed for `3 × renew` has expired and belongs to nobody. A device
//!   identifying on a connection takes its lease whoever held it, and tells the previous
//!   owner (`NOTIFY`) to close its socket and forget the device without marking it offline.
//! * **Orphans**: every beat, a live instance takes the expired leases of devices still
//!   marked online (their owner died) and keeps those devices online for the offline
//!   threshold, exactly as a restart does, so a dead instance's piles are offline only if they
//!   reconnect nowhere. Start-up takes only such leases: never a device another live instance
//!   holds.
//! * **Command routing**: the command rows (`cmd_logs`) are the truth. An API request on any
//!   instance commits the row, hands it to a local session if the device is here, else
//!   `NOTIFY`s the lease owner, which loads the row and hands it to its session. Every owner
//!   also polls its devices' queued commands every `poll` period, so a lost notification
//!   costs latency, never a command.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::gateway::Submitted;
use crate::service::Service;
use crate::store::{Backend, Store, StoreError};

/// Settings of the cluster part (flags `--instance-id`, `--lease-renew`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// This instance's ID; generated when absent. Setting it with SQLite is refused.
    pub instance_id: Option<String>,
    /// How often the instance beats and renews its leases; a lease expires after 3 × this.
    pub renew: Duration,
    /// How often an owner looks for queued commands of its devices (a lost notification).
    pub poll: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            instance_id: None,
            renew: Duration::from_secs(5),
            poll: Duration::from_secs(1),
        }
    }
}

/// Why a configuration cannot run.
pub fn check(database_url: &str, settings: &Settings) -> anyhow::Result<()> {
    let postgres = database_url.starts_with("postgres:") || database_url.starts_with("postgresql:");
    if !postgres && settings.instance_id.is_some() {
        anyhow::bail!(
            "--instance-id was given with a SQLite database: SQLite is single-instance; \
             several gateways can share only a PostgreSQL database (--database-url postgres://…)"
        );
    }
    if let Some(id) = &settings.instance_id {
        if id.is_empty()
            || id.len() > 40
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            anyhow::bail!("--instance-id must be 1–40 characters of A–Z, a–z, 0–9, '-', '_', '.'");
        }
    }
    if settings.renew.is_zero() || settings.poll.is_zero() {
        anyhow::bail!("--lease-renew must be positive");
    }
    Ok(())
}

/// A generated instance ID: host name and a random suffix.
pub fn generated_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(24)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gw".into());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Adds `application_name=pile-<id>` to a PostgreSQL URL (who holds a lock, in `pg_stat_activity`).
pub fn with_application_name(url: &str, id: &str) -> String {
    if url.contains("application_name=") {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name=pile-{id}")
}

/// This instance's part of the cluster.
#[derive(Debug)]
pub struct Cluster {
    pub id: String,
    store: Store,
    url: String,
    pub settings: Settings,
    clock: Clock,
    /// Commands handed over by a notification or the poll (tests, metrics).
    pub woken: AtomicU64,
    pub polled: AtomicU64,
}

impl Cluster {
    pub fn new(id: String, store: Store, url: String, settings: Settings, clock: Clock) -> Self {
        debug_assert_eq!(store.backend(), Backend::Postgres);
        Cluster {
            id,
            store,
            url,
            settings,
            clock,
            woken: AtomicU64::new(0),
            polled: AtomicU64::new(0),
        }
    }

    /// A lease is valid this long after its last renewal.
    pub fn lease_ttl_ms(&self) -> i64 {
        3 * self.settings.renew.as_millis() as i64
    }

    fn expiry(&self, now_ms: i64) -> i64 {
        now_ms + self.lease_ttl_ms()
    }

    /// This instance's notification channel.
    pub fn channel(&self) -> String {
        format!("pile_{}", self.id)
    }

    pub async fn register(&self, http_addr: &str, device_addr: &str) -> Result<(), StoreError> {
        self.store
            .register_instance(&self.id, http_addr, device_addr, self.clock.now_ms())
            .await
    }

    /// A connection here identified the device: take its lease and tell a previous owner to
    /// let go.
    pub async fn acquire(&self, device_id: &str, conn_id: u64) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let prev = self
            .store
            .acquire_lease(device_id, &self.id, conn_id, now, self.expiry(now))
            .await?;
        if let Some(p) = prev.filter(|p| p.owner != self.id) {
            tracing::info!(%device_id, previous_owner = %p.owner, "device moved here; telling its previous instance");
            self.store
                .notify_instance(&p.owner, &format!("close\t{device_id}\t{}", p.conn_id))
                .await?;
        }
        Ok(())
    }

    /// The device went offline here: drop this instance's lease. `Some(owner)`: another
    /// live instance holds the device, which therefore is not offline.
    pub async fn release(&self, device_id: &str) -> Result<Option<String>, StoreError> {
        self.store
            .release_lease(device_id, &self.id, self.clock.now_ms())
            .await
    }

    /// Another live instance holds the device's lease: its owner.
    pub async fn owner_elsewhere(&self, device_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .lease_of(device_id, self.clock.now_ms())
            .await?
            .map(|(owner, _)| owner)
            .filter(|o| *o != self.id))
    }

    /// A command row for a device not connected here: wake its owner, if another live
    /// instance holds it.
    pub async fn wake_owner(
        &self,
        device_id: &str,
        command_id: i64,
    ) -> Result<Option<String>, StoreError> {
        self.store
            .notify_owner(
                device_id,
                &self.id,
                &format!("cmd\t{device_id}\t{command_id}"),
                self.clock.now_ms(),
            )
            .await
    }

    /// A graceful stop: leases expire now, the row says stopped.
    pub async fn stopped(&self) -> Result<u64, StoreError> {
        self.store
            .instance_stopped(&self.id, self.clock.now_ms())
            .await
    }

    /// Takes orphaned leases (see the module); `unleased` also online devices with none.
    pub async fn claim_orphans(
        &self,
        unleased: bool,
    ) -> Result<Vec<(String, String, Option<i64>)>, StoreError> {
        let now = self.clock.now_ms();
        self.store
            .claim_orphans(&self.id, now, self.expiry(now), unleased)
            .await
    }
}

/// Resident memory of this process (Linux), bytes.
fn rss_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// One beat: the instance row and its leases; leases lost meanwhile are taken back for
/// connected devices; orphans of dead instances are claimed. The app runs it every `renew`.
pub async fn beat(service: &Service, cluster: &Cluster) -> Result<(), StoreError> {
    let now = cluster.clock.now_ms();
    let held = service.gateway.online_count() as u64;
    let renewed = cluster
        .store
        .beat(
            &cluster.id,
            now,
            cluster.expiry(now),
            service.gateway.session_count() as i64,
            rss_bytes(),
        )
        .await?;
    if renewed < held {
        // Some lease went to another instance while this one was slow (a stall past the
        // lease time): take back those of devices still connected here, forget the others.
        let leased: HashSet<String> = cluster
            .store
            .leased_by(&cluster.id)
            .await?
            .into_iter()
            .collect();
        for (device_id, conn) in service.gateway.held() {
            if leased.contains(&device_id) {
                continue;
            }
            match conn {
                Some(conn_id) => cluster.acquire(&device_id, conn_id).await?,
                None => {
                    service.gateway.evict(&device_id, 0);
                }
            }
        }
    }
    for (device_id, protocol, last_seen) in cluster.claim_orphans(false).await? {
        let now_ms = cluster.clock.now_ms();
        let seen = last_seen.map_or(now_ms, |s| (s * 1000).max(now_ms));
        tracing::info!(%device_id, "took the lease of a device whose instance stopped beating");
        service.gateway.restore(&device_id, &protocol, seen);
    }
    Ok(())
}

/// Hands the device's queued commands (not yet written) to its session here; the session
/// ignores those it already holds.
pub async fn poll(service: &Service, cluster: &Cluster) -> Result<(), StoreError> {
    let rows = cluster
        .store
        .queued_for_owner(&cluster.id, cluster.clock.now_ms())
        .await?;
    for row in rows {
        if !service.gateway.is_connected(&row.device_id) {
            continue;
        }
        if let Some(cmd) = crate::service::command_of(&row) {
            if service.gateway.submit(&row.device_id, cmd) == Submitted::Dispatched {
                cluster.polled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// What a notification on this instance's channel asks.
async fn on_notification(service: &Service, cluster: &Cluster, payload: &str) {
    let mut parts = payload.split('\t');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("close"), Some(device_id), Some(conn)) => {
            let conn_id = conn.parse().unwrap_or(0);
            if service.gateway.evict(device_id, conn_id) {
                metrics::gauge!(crate::metrics::ACTIVE_SESSIONS)
                    .set(service.gateway.session_count() as f64);
                tracing::info!(%device_id, "device taken over by another instance; session closed");
            }
        }
        (Some("cmd"), Some(device_id), Some(id)) => {
            let Ok(id) = id.parse::<i64>() else { return };
            if !service.gateway.is_connected(device_id) {
                return;
            }
            match service.store.command(id).await {
                Ok(Some(row)) if row.status == crate::store::command_status::QUEUED => {
                    if let Some(cmd) = crate::service::command_of(&row) {
                        if service.gateway.submit(device_id, cmd) == Submitted::Dispatched {
                            cluster.woken.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "routed command not loaded; the poll retries"),
            }
        }
        _ => tracing::warn!(%payload, "unknown cluster notification"),
    }
}

/// The cluster's background work: beats, the listener and the poll, until `shutdown`.
pub async fn run(service: Arc<Service>, cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let beats = {
        let (service, cluster, shutdown) = (service.clone(), cluster.clone(), shutdown.clone());
        async move {
            let mut tick = tokio::time::interval(cluster.settings.renew);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = beat(&service, &cluster).await {
                            tracing::warn!(error = %e, "cluster beat failed");
                        }
                    }
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    };
    let polls = {
        let (service, cluster, shutdown) = (service.clone(), cluster.clone(), shutdown.clone());
        async move {
            let mut tick = tokio::time::interval(cluster.settings.poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = poll(&service, &cluster).await {
                            tracing::warn!(error = %e, "cluster poll failed");
                        }
                    }
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    };
    let listen = async move {
        loop {
            let mut listener = match PgListener::connect(&cluster.url).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster listener cannot connect; retrying (the poll carries commands meanwhile)");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            };
            if let Err(e) = listener.listen(&cluster.channel()).await {
                tracing::warn!(error = %e, "LISTEN failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
            loop {
                tokio::select! {
                    n = listener.recv() => match n {
                        Ok(n) => on_notification(&service, &cluster, n.payload()).await,
                        Err(e) => {
                            tracing::warn!(error = %e, "cluster listener lost; reconnecting");
                            break;
                        }
                    },
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    };
    tokio::join!(beats, polls, listen);
}
