//! The gateway's use cases, called by the HTTP handlers (charge, stop) and by device
//! sessions (the device-event API). All state changes go through the store in one
//! transaction with their outbox events; liveness and progress go through the batched
//! [`Writer`] so the hot path never waits on the database.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use pile_api::OrderStatus;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::domain::{self, ChargeSpec, EndReason, Tariff};
use crate::gateway::{Gateway, Outgoing, PortCommand, Submitted};
use crate::metrics as m;
use crate::store::{
    BatchOp, CreateOutcome, DeviceRow, NewOrder, OrderRow, Settlement, Store, StoreError,
};

/// Wall clock in Unix ms that follows tokio's clock, so paused-time tests move it too.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base_unix_ms: i64,
    base: tokio::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        let base_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Clock {
            base_unix_ms,
            base: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.base_unix_ms + self.base.elapsed().as_millis() as i64
    }

    pub fn now_sec(&self) -> i64 {
        self.now_ms() / 1000
    }
}

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

// ---------------------------------------------------------------------------------------------
// Batched writer

enum WriterMsg {
    Op(BatchOp),
    Flush(oneshot::Sender<()>),
}

/// Hands liveness, port states and progress samples to one background task that writes
/// them in batches (one transaction per batch).
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<WriterMsg>,
}

impl std::fmt::Debug for WriterMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriterMsg::Op(op) => op.fmt(f),
            WriterMsg::Flush(_) => f.write_str("Flush"),
        }
    }
}

const WRITER_QUEUE: usize = 65_536;
const MAX_BATCH: usize = 2_000;

impl Writer {
    /// Starts the writer task; it drains and flushes everything when `shutdown` fires and
    /// the returned handle completes after the last batch.
    pub fn spawn(
        store: Store,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let task = tokio::spawn(writer_loop(store, rx, interval, shutdown));
        (Writer { tx }, task)
    }

    /// Liveness is best-effort: dropped (and counted) when the queue is full.
    pub fn liveness(&self, device_id: &str, last_seen_at: i64) {
        let op = BatchOp::Liveness {
            device_id: device_id.to_string(),
            last_seen_at,
        };
        if self.tx.try_send(WriterMsg::Op(op)).is_err() {
            metrics::counter!(m::DROPPED, "reason" => "liveness_queue_full").increment(1);
        }
    }

    /// Port states and progress samples wait for room rather than being lost.
    pub async fn push(&self, op: BatchOp) {
        if let Err(mpsc::error::TrySendError::Full(msg)) = self.tx.try_send(WriterMsg::Op(op)) {
            let _ = self.tx.send(msg).await;
        }
    }

    /// Waits until everything pushed so far is committed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(WriterMsg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn writer_loop(
    store: Store,
    mut rx: mpsc::Receiver<WriterMsg>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut batch: Vec<BatchOp> = Vec::new();
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let first = tokio::select! {
            msg = rx.recv() => msg,
            _ = shutdown.cancelled() => None,
        };
        let Some(first) = first else { break };
        let deadline = tokio::time::Instant::now() + interval;
        let mut next = Some(first);
        loop {
            match next.take() {
                Some(WriterMsg::Op(op)) => batch.push(op),
                Some(WriterMsg::Flush(w)) => {
                    waiters.push(w);
                    break;
                }
                None => {}
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            next = tokio::select! {
                msg = rx.recv() => msg,
                _ = tokio::time::sleep_until(deadline) => None,
                _ = shutdown.cancelled() => None,
            };
            if next.is_none() {
                break;
            }
        }
        write_batch(&store, &mut batch).await;
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
    // Shutdown: take what is still queued.
    rx.close();
    while let Some(msg) = rx.recv().await {
        match msg {
            WriterMsg::Op(op) => batch.push(op),
            WriterMsg::Flush(w) => waiters.push(w),
        }
    }
    write_batch(&store, &mut batch).await;
    for w in waiters.drain(..) {
        let _ = w.send(());
    }
}

async fn write_batch(store: &Store, batch: &mut Vec<BatchOp>) {
    if batch.is_empty() {
        return;
    }
    // Only the latest liveness per device matters.
    let mut seen: HashMap<String, i64> = HashMap::new();
    batch.retain(|op| match op {
        BatchOp::Liveness {
            device_id,
            last_seen_at,
        } => {
            let e = seen.entry(device_id.clone()).or_insert(*last_seen_at);
            *e = (*e).max(*last_seen_at);
            false
        }
        _ => true,
    });
    batch.extend(
        seen.into_iter()
            .map(|(device_id, last_seen_at)| BatchOp::Liveness {
                device_id,
                last_seen_at,
            }),
    );
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=5 {
        match store.apply_batch(batch).await {
            Ok(()) => {
                metrics::counter!(m::BATCH_OPS).increment(batch.len() as u64);
                batch.clear();
                return;
            }
            Err(e) if attempt < 5 => {
                tracing::warn!(error = %e, attempt, "batch write failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                tracing::error!(error = %e, ops = batch.len(), "batch write failed; dropping batch");
                metrics::counter!(m::DROPPED, "reason" => "batch_write_failed")
                    .increment(batch.len() as u64);
                batch.clear();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Live state

/// What the gateway knows about a connected device without asking the database.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub protocol: String,
    pub last_seen_ms: i64,
    pub connected_at: i64,
    pub remote_addr: String,
    pub firmware: Option<String>,
    pub signal: Option<i64>,
    /// When `last_seen` was last handed to the batched writer.
    pub persisted_seen_ms: i64,
    /// A registration write (new device's row, registration data) is queued in the batched
    /// writer and no API lookup has flushed it yet.
    pub(crate) unflushed: bool,
}

/// How often a connected device's `last_seen_at` is written to the database.
pub const LIVENESS_PERSIST_MS: i64 = 30_000;

/// Hello of a device that identified itself on a new connection.
#[derive(Debug, Clone)]
pub struct DeviceHello {
    pub device_id: String,
    pub protocol: &'static str,
    pub remote_addr: String,
    pub firmware: Option<String>,
    pub iccid: Option<String>,
    pub signal: Option<i64>,
}

/// One port's state as the device reported it (1-based `port_no`).
#[derive(Debug, Clone, PartialEq)]
pub struct PortReport {
    pub port_no: u32,
    pub socket_no: Option<u32>,
    pub hole: Option<u32>,
    pub status: pile_api::PortStatus,
    pub power_dw: i64,
    /// The status differs from the last report (set by the session).
    pub status_changed: bool,
}

/// A progress sample from a charging port.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressReport {
    pub port_no: u32,
    /// The order's device reference (AP3000 order number hex, BKV business number), if any.
    pub device_ref: Option<String>,
    pub duration_sec: i64,
    pub energy_wh: i64,
    pub power_dw: i64,
    pub peak_power_dw: Option<i64>,
}

/// What a progress sample meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressOutcome {
    pub order_no: String,
    /// A charge by amount has used its money: the gateway stops the port (reason 1).
    pub amount_used_up: bool,
}

/// A device's end report (settlement).
#[derive(Debug, Clone, PartialEq)]
pub struct EndReport {
    pub port_no: u32,
    pub device_ref: Option<String>,
    /// The device's own duration, seconds (BKV: minutes × 60).
    pub device_duration_sec: Option<i64>,
    /// Resolution of `device_duration_sec` (60 for BKV, 1 for AP3000).
    pub duration_resolution_sec: i64,
    pub energy_wh: i64,
    pub peak_power_dw: Option<i64>,
    pub end_reason: EndReason,
    /// BKV: the socket status byte; the reason is then worked out against the order's target.
    pub bkv_status: Option<u8>,
    /// BKV: the explicit end-reason code (0x18 byte, 0x1004 tag 0x2F), if the report has one.
    pub bkv_end_reason: Option<u8>,
    /// Hex of the raw frame, kept in `end_reports`.
    pub raw_hex: String,
    /// When the connection carrying the report identified itself (gateway clock, ms). A report
    /// on a connection newer than the charge's confirmation is a replay after a network drop,
    /// even one too short for the gateway to notice.
    pub connected_at_ms: Option<i64>,
}

/// Slack beyond the device's duration resolution before a shorter device duration means the
/// report was replayed late (network latency, report cadence).
pub const REPLAY_TOLERANCE_SEC: i64 = 5;

/// What the session does after an end report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndOutcome {
    /// Settled now: acknowledge.
    Settled { order_no: String },
    /// Already settled (duplicate or late report): acknowledge, nothing changed.
    Duplicate { order_no: Option<String> },
}

/// Settings the service needs.
#[derive(Debug, Clone)]
pub struct Timings {
    pub command_ttl: Duration,
    pub offline_settle_grace: Duration,
}

#[derive(Debug)]
pub struct Service {
    pub store: Store,
    pub gateway: Gateway,
    pub writer: Writer,
    pub clock: Clock,
    pub timings: Timings,
    live: Mutex<HashMap<String, Live>>,
}

/// The 16-byte device order number derived from an order number (AP3000 `0x82`).
pub fn device_order_ref(order_no: &str) -> [u8; 16] {
    let digest = Sha256::digest(order_no.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// A fresh order number for requests without one.
pub fn new_order_no(now_ms: i64) -> String {
    let rand: u32 = rand::random();
    format!("PK{now_ms}{rand:08x}")
}

impl Service {
    pub fn new(store: Store, writer: Writer, timings: Timings, clock: Clock) -> Self {
        Service {
            store,
            gateway: Gateway::new(),
            writer,
            clock,
            timings,
            live: Mutex::new(HashMap::new()),
        }
    }

    fn live_mut<R>(&self, device_id: &str, f: impl FnOnce(&mut Live) -> R) -> Option<R> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(device_id)
            .map(f)
    }

    /// The in-memory view of a connected device.
    pub fn live(&self, device_id: &str) -> Option<Live> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(device_id)
            .cloned()
    }

    /// Runs `lookup` against the store so that it sees a connected device's registration:
    /// a new device's row and its registration data go through the batched writer, so when
    /// some are still queued (or the store does not know a connected device) the writer is
    /// flushed first. A connected device is never reported unknown. Lists do not do this and
    /// may lag a new device by one writer batch (`flush_interval`, 200 ms by default).
    pub async fn lookup_device<T, F, Fut>(&self, device_id: &str, lookup: F) -> Result<Option<T>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, StoreError>>,
    {
        // Cleared before the flush: anything queued before this point is covered by it, and
        // a later registration write sets the flag again.
        let unflushed = self
            .live_mut(device_id, |l| std::mem::take(&mut l.unflushed))
            .unwrap_or(false);
        if unflushed {
            self.writer.flush().await;
        }
        if let Some(found) = lookup().await? {
            return Ok(Some(found));
        }
        if unflushed || self.live(device_id).is_none() {
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

    // -- HTTP side --------------------------------------------------------------------------

    /// Creates (or returns, for a repeated `order_no`) an order and dispatches or queues its
    /// start command.
    pub async fn charge(
        &self,
        device_id: &str,
        spec: &ChargeSpec,
        order_no: Option<String>,
        queue_if_offline: bool,
    ) -> Result<OrderRow> {
        let device = self
            .known_device(device_id)
            .await?
            .ok_or_else(|| ServiceError::DeviceNotFound(device_id.to_string()))?;
        if let Some(no) = &order_no {
            if let Some(existing) = self.store.order(no).await? {
                return Ok(existing);
            }
        }
        if device.port_count > 0 && i64::from(spec.port_no) > device.port_count {
            return Err(domain::FieldError::new(
                "port_no",
                format!("must be between 1 and {}", device.port_count),
            )
            .into());
        }
        let online = self.gateway.is_online(device_id);
        if !online && !queue_if_offline {
            return Err(ServiceError::Offline(device_id.to_string()));
        }
        let now_ms = self.clock.now_ms();
        let order_no = order_no.unwrap_or_else(|| new_order_no(now_ms));
        let device_ref = hex::encode(device_order_ref(&order_no));
        let command = PortCommand::Start {
            order_no: order_no.clone(),
            port_no: spec.port_no,
            charge_mode: spec.mode.code(),
            duration_sec: spec.duration_sec,
            energy_wh: spec.energy_wh,
            amount: spec.amount,
            price_per_kwh: spec.price_per_kwh,
            service_fee: spec.service_fee,
            device_ref: device_ref.clone(),
        };
        let new = NewOrder {
            order_no: order_no.clone(),
            device_id: device_id.to_string(),
            port_no: i64::from(spec.port_no),
            charge_mode: i64::from(spec.mode.code()),
            target_duration: spec.duration_sec,
            target_energy_wh: spec.energy_wh,
            amount: spec.amount,
            price_per_kwh: spec.price_per_kwh,
            service_fee: spec.service_fee,
            device_ref,
            now_ms,
            expires_at_ms: now_ms + self.timings.command_ttl.as_millis() as i64,
            command: command.name().to_string(),
            command_payload: serde_json::to_string(&command)
                .map_err(|e| ServiceError::Conflict(e.to_string()))?,
        };
        match self.store.create_order(&new).await? {
            CreateOutcome::Existing(order) => Ok(order),
            CreateOutcome::Created { order, command_id } => {
                metrics::counter!(m::ORDERS_CREATED).increment(1);
                let how = self.gateway.submit(
                    device_id,
                    Outgoing {
                        command_id,
                        command,
                    },
                );
                tracing::info!(%device_id, order_no = %order.order_no, port_no = spec.port_no, ?how, "order created");
                Ok(order)
            }
        }
    }

    /// Stops the active order on a port: a pending order whose command has not started is
    /// cancelled (reason 3); a charging one gets a stop command and settles with reason 3
    /// when the device reports its end.
    pub async fn stop(
        &self,
        device_id: &str,
        port_no: u32,
        order_no: Option<&str>,
    ) -> Result<OrderRow> {
        if self.known_device(device_id).await?.is_none() {
            return Err(ServiceError::DeviceNotFound(device_id.to_string()));
        }
        let active = self
            .store
            .active_orders_of(device_id)
            .await?
            .into_iter()
            .find(|o| o.port_no == i64::from(port_no))
            .ok_or_else(|| {
                ServiceError::Conflict(format!("no order is running on port {port_no}"))
            })?;
        if let Some(no) = order_no {
            if no != active.order_no {
                return Err(ServiceError::Conflict(format!(
                    "order {no} is not running on port {port_no}"
                )));
            }
        }
        let now_ms = self.clock.now_ms();
        let device_ref = active.device_ref.clone().unwrap_or_default();
        let command = PortCommand::Stop {
            order_no: active.order_no.clone(),
            port_no,
            device_ref,
        };
        self.store.mark_stop_requested(&active.order_no).await?;
        if active.status == OrderStatus::Pending && !self.gateway.is_online(device_id) {
            // Nothing reached the device yet: cancel outright.
            self.store
                .close_pending(
                    &active.order_no,
                    device_id,
                    OrderStatus::Cancelled,
                    EndReason::RemoteStop.code(),
                    now_ms,
                )
                .await?;
        } else {
            let payload = serde_json::to_string(&command)
                .map_err(|e| ServiceError::Conflict(e.to_string()))?;
            let id = self
                .store
                .queue_command(
                    device_id,
                    Some(&active.order_no),
                    command.name(),
                    &payload,
                    now_ms,
                    now_ms + self.timings.command_ttl.as_millis() as i64,
                )
                .await?;
            let how = self.gateway.submit(
                device_id,
                Outgoing {
                    command_id: id,
                    command,
                },
            );
            tracing::info!(%device_id, order_no = %active.order_no, ?how, "stop requested");
        }
        self.store
            .order(&active.order_no)
            .await?
            .ok_or_else(|| ServiceError::OrderNotFound(active.order_no.clone()))
    }

    // -- device side ------------------------------------------------------------------------

    /// A device identified itself on a connection (already registered in the gateway).
    /// Returns the commands that waited for it, oldest first.
    pub async fn device_online(&self, hello: DeviceHello) -> Result<Vec<Outgoing>> {
        let now_ms = self.clock.now_ms();
        let now = now_ms / 1000;
        self.live.lock().unwrap_or_else(|p| p.into_inner()).insert(
            hello.device_id.clone(),
            Live {
                protocol: hello.protocol.to_string(),
                last_seen_ms: now_ms,
                connected_at: now,
                remote_addr: hello.remote_addr.clone(),
                firmware: hello.firmware.clone(),
                signal: hello.signal,
                persisted_seen_ms: now_ms,
                unflushed: false,
            },
        );
        let d = crate::store::DeviceOnline {
            device_id: hello.device_id.clone(),
            protocol: hello.protocol.to_string(),
            remote_addr: hello.remote_addr.clone(),
            firmware: hello.firmware.clone(),
            iccid: hello.iccid.clone(),
            signal: hello.signal,
            now,
        };
        // Every connect goes through the batched writer, a new device's registration too (a
        // registration or reconnect storm must not cost one fsync per pile). The API finds a
        // connected device whose row is not written yet through `lookup_device`, which flushes.
        let known = self.store.device_exists(&hello.device_id).await?;
        if !known {
            self.live_mut(&hello.device_id, |l| l.unflushed = true);
        }
        self.writer.push(BatchOp::Online(d)).await;
        metrics::gauge!(m::ACTIVE_SESSIONS).set(self.gateway.session_count() as f64);
        // A command is only queued for a device with a committed row, so a device without
        // one has nothing waiting.
        let queued = if known {
            self.store.queued_commands(&hello.device_id, now_ms).await?
        } else {
            Vec::new()
        };
        Ok(queued
            .into_iter()
            .filter_map(|row| {
                let command = serde_json::from_str::<PortCommand>(&row.payload).ok()?;
                Some(Outgoing {
                    command_id: row.id,
                    command,
                })
            })
            .collect())
    }

    /// Any valid frame: liveness in memory; the database copy (for offline devices' views) is
    /// refreshed at most every [`LIVENESS_PERSIST_MS`], in batches.
    pub fn seen(&self, device_id: &str) {
        let now_ms = self.clock.now_ms();
        let persist = self
            .live_mut(device_id, |l| {
                l.last_seen_ms = now_ms;
                if now_ms - l.persisted_seen_ms >= LIVENESS_PERSIST_MS {
                    l.persisted_seen_ms = now_ms;
                    true
                } else {
                    false
                }
            })
            .unwrap_or(false);
        if persist {
            self.writer.liveness(device_id, now_ms / 1000);
        }
    }

    /// A heartbeat: answered from memory by the session; firmware and signal remembered.
    pub fn heartbeat(
        &self,
        device_id: &str,
        protocol: &'static str,
        firmware: Option<String>,
        signal: Option<i64>,
    ) {
        metrics::counter!(m::HEARTBEATS, "protocol" => protocol).increment(1);
        self.live_mut(device_id, |l| {
            if firmware.is_some() {
                l.firmware = firmware;
            }
            if signal.is_some() {
                l.signal = signal;
            }
        });
        self.seen(device_id);
    }

    /// Registration data (firmware, port count) worth keeping in the database.
    pub async fn device_info(
        &self,
        device_id: &str,
        firmware: Option<&str>,
        signal: Option<i64>,
        port_count: Option<i64>,
    ) -> Result<()> {
        // Batched behind the device's `Online`, so it reaches a row that is new in that batch.
        self.live_mut(device_id, |l| l.unflushed = true);
        self.writer
            .push(BatchOp::Info {
                device_id: device_id.to_string(),
                firmware: firmware.map(str::to_string),
                signal,
                port_count,
                now: self.clock.now_sec(),
            })
            .await;
        Ok(())
    }

    /// Port states the device reported.
    pub async fn port_report(&self, device_id: &str, ports: &[PortReport]) {
        let at = self.clock.now_sec();
        for p in ports {
            self.writer
                .push(BatchOp::Port {
                    device_id: device_id.to_string(),
                    port_no: i64::from(p.port_no),
                    socket_no: p.socket_no.map(i64::from),
                    hole: p.hole.map(i64::from),
                    status: p.status.as_str().to_string(),
                    power_dw: p.power_dw,
                    at,
                    status_changed: p.status_changed,
                })
                .await;
        }
    }

    /// A device alarm: recorded as a `device.alarm` event.
    pub async fn alarm(&self, device_id: &str, data: serde_json::Value) -> Result<()> {
        let ev = crate::store::Event {
            event_type: "device.alarm",
            device_id: device_id.to_string(),
            order_no: None,
            data,
        };
        self.store.record_event(&ev, self.clock.now_ms()).await?;
        Ok(())
    }

    /// The device accepted a start: the order is charging from now (the gateway's clock).
    pub async fn start_confirmed(
        &self,
        device_id: &str,
        command_id: i64,
        order_no: &str,
        reply_hex: &str,
    ) -> Result<bool> {
        let now_ms = self.clock.now_ms();
        self.store
            .command_replied(command_id, reply_hex, "ok", now_ms)
            .await?;
        metrics::counter!(m::COMMANDS, "outcome" => "confirmed").increment(1);
        Ok(self
            .store
            .confirm_order(order_no, device_id, now_ms)
            .await?)
    }

    /// The device refused a start: the order fails with reason 12, costing nothing.
    pub async fn start_rejected(
        &self,
        device_id: &str,
        command_id: i64,
        order_no: &str,
        reply_hex: &str,
        result: &str,
    ) -> Result<bool> {
        let now_ms = self.clock.now_ms();
        self.store
            .command_replied(command_id, reply_hex, result, now_ms)
            .await?;
        metrics::counter!(m::COMMANDS, "outcome" => "rejected").increment(1);
        Ok(self
            .store
            .close_pending(
                order_no,
                device_id,
                OrderStatus::Failed,
                EndReason::StartRejected.code(),
                now_ms,
            )
            .await?)
    }

    /// A reply to a command other than a start (stop, query): logged with its latency.
    pub async fn command_replied(
        &self,
        command_id: i64,
        reply_hex: &str,
        result: &str,
    ) -> Result<()> {
        self.store
            .command_replied(command_id, reply_hex, result, self.clock.now_ms())
            .await?;
        Ok(())
    }

    /// Finds the order a device report is about: by its device reference, else the active
    /// order on the port, else (for late reports) the newest order on the port.
    pub async fn order_for_report(
        &self,
        device_id: &str,
        port_no: u32,
        device_ref: Option<&str>,
    ) -> Result<Option<OrderRow>> {
        if let Some(r) = device_ref {
            if let Some(o) = self.store.order_by_device_ref(device_id, r).await? {
                return Ok(Some(o));
            }
        }
        let active = self
            .store
            .active_orders_of(device_id)
            .await?
            .into_iter()
            .find(|o| o.port_no == i64::from(port_no));
        if active.is_some() {
            return Ok(active);
        }
        Ok(self
            .store
            .latest_order_on_port(device_id, i64::from(port_no))
            .await?)
    }

    /// A progress sample: stored (batched) against its order; a pending order whose device
    /// reports charging is confirmed.
    pub async fn progress(
        &self,
        device_id: &str,
        p: &ProgressReport,
    ) -> Result<Option<ProgressOutcome>> {
        let Some(order) = self
            .order_for_report(device_id, p.port_no, p.device_ref.as_deref())
            .await?
        else {
            return Ok(None);
        };
        if !order.status.is_active() {
            return Ok(None);
        }
        let now_ms = self.clock.now_ms();
        if order.status == OrderStatus::Pending {
            self.store
                .confirm_order(&order.order_no, device_id, now_ms)
                .await?;
        }
        self.writer
            .push(BatchOp::Progress {
                order_no: order.order_no.clone(),
                device_id: device_id.to_string(),
                at_ms: now_ms,
                duration_sec: p.duration_sec,
                energy_wh: p.energy_wh,
                power_dw: p.power_dw,
                status: "charging".into(),
            })
            .await;
        // Charging by amount: is the money used up at this energy?
        let amount_used_up = order.charge_mode == 3
            && order.amount > 0
            && (order.price_per_kwh > 0 || order.service_fee > 0)
            && {
                let b = domain::bill(
                    &Tariff {
                        amount: 0,
                        price_per_kwh: order.price_per_kwh,
                        service_fee: order.service_fee,
                        target_duration: 0,
                        target_energy_wh: 0,
                    },
                    p.energy_wh,
                    p.duration_sec,
                );
                b.final_amount >= order.amount
            };
        Ok(Some(ProgressOutcome {
            order_no: order.order_no,
            amount_used_up,
        }))
    }

    /// An end report. Settles the order exactly once (duration from the gateway's clock,
    /// money per API.md); a duplicate or late report changes nothing. `Ok` means the state is
    /// committed and the session may acknowledge; `Err` means do not acknowledge (the device
    /// resends).
    pub async fn end_report(&self, device_id: &str, r: &EndReport) -> Result<EndOutcome> {
        // Batched state (offline marks, progress) is committed first, so the order read below
        // is current and events of one order stay in order.
        self.writer.flush().await;
        let order = self
            .order_for_report(device_id, r.port_no, r.device_ref.as_deref())
            .await?;
        let Some(order) = order else {
            metrics::counter!(m::END_REPORTS, "outcome" => "unmatched").increment(1);
            tracing::warn!(%device_id, port_no = r.port_no, "end report without an order");
            return Ok(EndOutcome::Duplicate { order_no: None });
        };
        let now_ms = self.clock.now_ms();
        let started = order.started_at_ms.unwrap_or(now_ms);
        let mut duration = domain::duration_sec(started, now_ms);
        // Replayed: the device was marked offline during the charge, or the report comes on a
        // connection opened after the charge was confirmed (a drop shorter than the offline
        // threshold), or the device's duration is well below the time the gateway measured
        // (the report waited somewhere). The device's figures are the truth then.
        let reconnected = matches!(
            (r.connected_at_ms, order.started_at_ms),
            (Some(conn), Some(start)) if conn > start
        );
        let late = r
            .device_duration_sec
            .is_some_and(|dev| dev + r.duration_resolution_sec + REPLAY_TOLERANCE_SEC < duration);
        let offline_replayed = order.was_offline || reconnected || late;
        if let Some(dev) = r.device_duration_sec {
            if offline_replayed {
                duration = dev;
            } else if !domain::duration_agrees(duration, dev, r.duration_resolution_sec) {
                tracing::warn!(%device_id, order_no = %order.order_no, gateway = duration, device = dev, "device duration disagrees");
            }
        }
        // A stop the API asked for is a remote stop whatever the device calls it.
        let reason = match r.bkv_status {
            Some(status) => {
                let target_reached = (order.target_duration > 0
                    && r.device_duration_sec.unwrap_or(duration) + r.duration_resolution_sec
                        >= order.target_duration)
                    || (order.target_energy_wh > 0 && r.energy_wh >= order.target_energy_wh);
                if order.stop_requested {
                    EndReason::RemoteStop
                } else {
                    EndReason::from_bkv(r.bkv_end_reason, status, target_reached)
                }
            }
            None if order.stop_requested => EndReason::RemoteStop,
            // The gateway stopped a charge by amount whose money was used up.
            None if order.charge_mode == 3 && r.end_reason == EndReason::RemoteStop => {
                EndReason::TargetReached
            }
            None => r.end_reason,
        };
        let tariff = Tariff {
            amount: order.amount,
            price_per_kwh: order.price_per_kwh,
            service_fee: order.service_fee,
            target_duration: order.target_duration,
            target_energy_wh: order.target_energy_wh,
        };
        let energy_wh = r.energy_wh.max(order.energy_wh);
        let bill = domain::bill(&tariff, energy_wh, duration);
        let s = Settlement {
            order_no: order.order_no.clone(),
            at_ms: now_ms,
            source: "device",
            duration_sec: duration,
            device_duration_sec: r.device_duration_sec,
            energy_wh,
            peak_power_dw: r.peak_power_dw.unwrap_or(0),
            energy_fee: bill.energy_fee,
            service_fee_amount: bill.service_fee_amount,
            final_amount: bill.final_amount,
            end_reason: reason.code(),
            offline_replayed,
            detail: r.raw_hex.clone(),
        };
        let applied = self.store.settle(&s, device_id, order.port_no).await?;
        if applied {
            metrics::counter!(m::ORDERS_SETTLED, "source" => "device").increment(1);
            metrics::counter!(m::END_REPORTS, "outcome" => "settled").increment(1);
            tracing::info!(%device_id, order_no = %order.order_no, duration, energy_wh, amount = bill.final_amount, reason = reason.code(), "order settled");
            Ok(EndOutcome::Settled {
                order_no: order.order_no,
            })
        } else {
            metrics::counter!(m::END_REPORTS, "outcome" => "duplicate").increment(1);
            Ok(EndOutcome::Duplicate {
                order_no: Some(order.order_no),
            })
        }
    }

    /// The gateway itself stops a port at the exact target second (BKV minute rounding):
    /// settled like an end report with reason 1 and the last figures.
    pub async fn settle_by_gateway(&self, order_no: &str, reason: EndReason) -> Result<bool> {
        let Some(order) = self.store.order(order_no).await? else {
            return Ok(false);
        };
        self.writer.flush().await;
        let Some(order) = self.store.order(&order.order_no).await? else {
            return Ok(false);
        };
        let now_ms = self.clock.now_ms();
        let duration = match (reason, order.started_at_ms) {
            (EndReason::CommunicationLost, Some(s)) => {
                // The last report is the last thing known to have happened.
                domain::duration_sec(s, order.last_report_at_ms.unwrap_or(s))
            }
            (_, Some(s)) => domain::duration_sec(s, now_ms),
            (_, None) => 0,
        };
        let tariff = Tariff {
            amount: order.amount,
            price_per_kwh: order.price_per_kwh,
            service_fee: order.service_fee,
            target_duration: order.target_duration,
            target_energy_wh: order.target_energy_wh,
        };
        let bill = domain::bill(&tariff, order.energy_wh, duration);
        let s = Settlement {
            order_no: order.order_no.clone(),
            at_ms: now_ms,
            source: "server",
            duration_sec: duration,
            device_duration_sec: None,
            energy_wh: order.energy_wh,
            peak_power_dw: order.peak_power_dw,
            energy_fee: bill.energy_fee,
            service_fee_amount: bill.service_fee_amount,
            final_amount: bill.final_amount,
            end_reason: reason.code(),
            offline_replayed: false,
            detail: format!("settled by gateway: {}", reason.name()),
        };
        let applied = self
            .store
            .settle(&s, &order.device_id, order.port_no)
            .await?;
        if applied {
            metrics::counter!(m::ORDERS_SETTLED, "source" => "server").increment(1);
        }
        Ok(applied)
    }

    /// The session ended (socket closed, offline threshold, replaced). Only the registered
    /// session marks the device offline.
    pub async fn device_offline(&self, device_id: &str, conn_id: u64) -> Result<()> {
        if !self.gateway.unregister(device_id, conn_id) {
            return Ok(());
        }
        let live = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(device_id);
        let last_seen_ms = live
            .as_ref()
            .map_or_else(|| self.clock.now_ms(), |l| l.last_seen_ms);
        metrics::gauge!(m::ACTIVE_SESSIONS).set(self.gateway.session_count() as f64);
        self.writer
            .push(BatchOp::Offline {
                device_id: device_id.to_string(),
                last_seen_at: last_seen_ms / 1000,
                now: self.clock.now_sec(),
            })
            .await;
        if live.is_some_and(|l| l.unflushed) {
            // Gone before its registration was written: write it now, since the API only
            // flushes for connected devices and must still know this one.
            self.writer.flush().await;
        }
        tracing::info!(%device_id, "device offline");
        Ok(())
    }

    /// Periodic work: cancel pending orders whose command TTL passed (reason 11), and settle
    /// charging orders of absent devices past their target plus the grace period (reason 11).
    pub async fn sweep(&self) -> Result<(usize, usize)> {
        let now_ms = self.clock.now_ms();
        let mut cancelled = 0;
        for o in self.store.expired_pending(now_ms).await? {
            if self
                .store
                .close_pending(
                    &o.order_no,
                    &o.device_id,
                    OrderStatus::Cancelled,
                    EndReason::CommunicationLost.code(),
                    now_ms,
                )
                .await?
            {
                metrics::counter!(m::COMMANDS, "outcome" => "expired").increment(1);
                tracing::info!(order_no = %o.order_no, "command expired; order cancelled");
                cancelled += 1;
            }
        }
        let mut settled = 0;
        let grace = self.timings.offline_settle_grace.as_millis() as i64;
        for o in self.store.overdue_charging(now_ms, grace).await? {
            if self.gateway.is_online(&o.device_id) {
                continue;
            }
            if self
                .settle_by_gateway(&o.order_no, EndReason::CommunicationLost)
                .await?
            {
                tracing::warn!(order_no = %o.order_no, "device never came back; settled by the gateway");
                settled += 1;
            }
        }
        Ok((cancelled, settled))
    }

    /// Whether a submit went to a session (used by the HTTP layer's logging).
    pub fn submit(&self, device_id: &str, out: Outgoing) -> Submitted {
        self.gateway.submit(device_id, out)
    }
}
