//! The gateway's use cases. The HTTP handlers call the API side (`api.rs`: charge, stop,
//! query, locate); device sessions hand their [`crate::core::Intent`]s to [`Service::apply`]
//! (`device.rs`); the sweeper runs [`Service::sweep`] (`sweep.rs`: command TTLs, offline marks,
//! the offline grace). Decisions are the domain's (`crate::domain`: transitions, the settlement
//! policy, the report-matching rule); this module loads what they need, calls them and has the
//! store persist exactly what they return, with its outbox events in the same transaction.

mod api;
mod device;
pub mod read;
mod sweep;

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::core::{ActiveOrder, Command, CommandSpec};
use crate::domain::{self, ChargeMode, OrderFacts, ReconcileRule, Tariff};
use crate::gateway::{Gateway, Live};
use crate::store::{CmdRow, DeviceRow, OrderRow, Store, StoreError};
use crate::writer::Writer;

pub use api::new_order_no;
pub use device::SessionLink;
pub use read::{Held, Lookup, PageItem, ReadModel};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("device {0} not found")]
    DeviceNotFound(String),
    #[error("order {0} not found")]
    OrderNotFound(String),
    #[error(transparent)]
    Invalid(#[from] domain::FieldError),
    #[error("port is busy (order {0})")]
    PortBusy(String),
    #[error("{0}")]
    Conflict(String),
    #[error("device {0} is offline")]
    Offline(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::PortBusy { order_no } => ServiceError::PortBusy(order_no),
            other => ServiceError::Store(other),
        }
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Settings the service needs.
#[derive(Debug, Clone)]
pub struct Timings {
    /// A command waits this long for its device before its order is cancelled (reason 11).
    pub command_ttl: Duration,
    /// A charging order whose device has been silent this long is settled by the gateway with
    /// the last figures (reason 11).
    pub offline_settle_grace: Duration,
    /// No frame for this long: the device is offline.
    pub offline_after: Duration,
    /// How often a connected device's `last_seen_at` is written.
    pub liveness_persist: Duration,
    pub reconcile: ReconcileRule,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            command_ttl: Duration::from_secs(600),
            offline_settle_grace: Duration::from_secs(1800),
            offline_after: Duration::from_secs(30),
            liveness_persist: Duration::from_secs(30),
            reconcile: ReconcileRule::default(),
        }
    }
}

#[derive(Debug)]
pub struct Service {
    pub store: Store,
    pub gateway: Gateway,
    pub writer: Writer,
    pub clock: Clock,
    pub timings: Timings,
    /// #13: who may connect (allowlist, new-ID rate, flapping).
    pub admission: crate::device::admission::Admission,
    /// Committed device, port and active-order state in memory (issue 14); the writer's.
    pub read: Arc<ReadModel>,
    /// Set when the gateway shares its PostgreSQL with other instances (issue #17).
    pub cluster: std::sync::OnceLock<std::sync::Arc<crate::cluster::Cluster>>,
}

impl Service {
    pub fn new(store: Store, writer: Writer, timings: Timings, clock: Clock) -> Self {
        Service {
            store,
            gateway: Gateway::new(),
            read: writer.read_model().clone(),
            writer,
            clock,
            timings,
            admission: Default::default(),
            cluster: std::sync::OnceLock::new(),
        }
    }

    /// This instance's part of the cluster (PostgreSQL), if any (issue #17).
    pub fn cluster(&self) -> Option<&crate::cluster::Cluster> {
        self.cluster.get().map(|c| &**c)
    }

    /// Hands a committed command to the device's session here, or wakes the instance that
    /// holds the device (issue #17); otherwise it waits in `cmd_logs` for the reconnect.
    pub async fn deliver(&self, device_id: &str, cmd: Command) -> crate::gateway::Submitted {
        let id = cmd.id;
        let how = self.gateway.submit(device_id, cmd);
        if how != crate::gateway::Submitted::Queued {
            return how;
        }
        match self.cluster() {
            Some(c) => match c.wake_owner(device_id, id).await {
                Ok(Some(_)) => crate::gateway::Submitted::Routed,
                Ok(None) => how,
                Err(e) => {
                    // The row is committed: the owner's poll finds it.
                    tracing::warn!(error = %e, "command not announced to its owner; its poll finds it");
                    how
                }
            },
            None => how,
        }
    }

    /// A connection holds the device, here or on another live instance.
    pub async fn is_connected_anywhere(&self, device_id: &str) -> Result<bool> {
        if self.gateway.is_connected(device_id) {
            return Ok(true);
        }
        match self.cluster() {
            Some(c) => Ok(c.owner_elsewhere(device_id).await?.is_some()),
            None => Ok(false),
        }
    }

    /// #13: the admission rules devices meet at identification.
    pub fn with_admission(mut self, admission: crate::device::admission::Admission) -> Self {
        self.admission = admission;
        self
    }

    /// #13: drops the frame rings of devices not online and silent for `ring_ttl`, and flap
    /// windows that ended; returns how many rings went.
    pub fn prune_gone(&self, ring_ttl: Duration) -> usize {
        let now_ms = self.clock.now_ms();
        self.admission.prune(now_ms);
        self.gateway
            .prune_frames(now_ms.saturating_sub(ring_ttl.as_millis() as i64))
    }

    /// The in-memory view of a device that is connected or within its offline threshold.
    pub fn live(&self, device_id: &str) -> Option<Live> {
        self.gateway.live(device_id)
    }

    /// Runs `lookup` against the store so that it sees a connected device's registration:
    /// a new device's row goes through the batched writer, so when it is still queued (or the
    /// store does not know a connected device) the writer is flushed first. A connected device
    /// is never reported unknown. Lists do not do this and may lag a new device by one batch.
    pub async fn lookup_device<T, F, Fut>(&self, device_id: &str, lookup: F) -> Result<Option<T>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, StoreError>>,
    {
        let unflushed = self.gateway.set_unflushed(device_id, false);
        if unflushed {
            self.writer.flush().await;
        }
        if let Some(found) = lookup().await? {
            return Ok(Some(found));
        }
        if unflushed || !self.gateway.is_online(device_id) {
            return Ok(None);
        }
        self.writer.flush().await;
        Ok(lookup().await?)
    }

    /// A device's row, waiting for the batched writer when the device is connected but not
    /// yet written (see [`Service::lookup_device`]).
    pub async fn known_device(&self, device_id: &str) -> Result<Option<DeviceRow>> {
        self.lookup_device(device_id, || self.store.device(device_id))
            .await
    }

    /// Runs `write` (which writes `device_id`'s rows) so that the read model never answers
    /// from before its commit and reloads the device once it is done.
    pub(crate) async fn writing<T>(
        &self,
        device_id: &str,
        write: impl std::future::Future<Output = T>,
    ) -> T {
        self.read
            .around(&self.store, &[device_id.to_string()], write)
            .await
    }

    /// Loads the read model from the store (start-up).
    pub async fn rebuild_read_model(&self) -> Result<usize> {
        Ok(self.read.rebuild(&self.store).await?)
    }

    /// Restores the live entries of devices a previous run left online: they stay online for
    /// the offline threshold (from start-up or their last frame, whichever is later), so a
    /// restart within it produces no offline/online pair.
    pub async fn restore_online(&self) -> Result<usize> {
        let now_ms = self.clock.now_ms();
        let rows = match self.cluster() {
            // Only devices whose lease expired (or that never had one): never a device
            // another live instance holds (issue #17).
            Some(c) => c.claim_orphans(true).await?,
            None => self.store.devices_marked_online().await?,
        };
        for (id, protocol, last_seen) in &rows {
            let seen = last_seen.map_or(now_ms, |s| (s * 1000).max(now_ms));
            self.gateway.restore(id, protocol, seen);
        }
        Ok(rows.len())
    }
}

// ---------------------------------------------------------------------------------------------
// Row → domain / core conversions

pub(crate) fn order_facts(o: &OrderRow) -> OrderFacts {
    OrderFacts {
        status: o.status,
        mode: ChargeMode::from_code(o.charge_mode).unwrap_or(ChargeMode::ByTime),
        tariff: Tariff {
            amount: o.amount,
            price_per_kwh: o.price_per_kwh,
            service_fee: o.service_fee,
            target_duration: o.target_duration,
            target_energy_wh: o.target_energy_wh,
        },
        started_at_ms: o.started_at_ms,
        last_report_at_ms: o.last_report_at_ms,
        last_energy_wh: o.energy_wh,
        peak_power_dw: o.peak_power_dw,
        stop: o.stop_cause,
        was_offline: o.was_offline,
    }
}

pub(crate) fn active_order(o: &OrderRow) -> ActiveOrder {
    ActiveOrder {
        order_no: o.order_no.clone(),
        port_no: o.port_no as u32,
        device_ref: o.device_ref.clone(),
        started_at_ms: o.started_at_ms,
        charge_mode: o.charge_mode as u8,
        target_duration_sec: o.target_duration,
    }
}

/// A command row as a session holds it; `None` for a payload this build cannot read.
pub(crate) fn command_of(row: &CmdRow) -> Option<Command> {
    let spec = serde_json::from_str::<CommandSpec>(&row.payload).ok()?;
    Some(Command {
        id: row.id,
        spec,
        sent_before: row.attempts > 0 || row.status == crate::store::command_status::SENT,
        first_sent_at_ms: row.sent_at_ms,
    })
}
