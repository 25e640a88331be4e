//! The batched writer: liveness, port states, progress samples and device lifecycle (connects,
//! registration data, offline marks) are written in batches, one transaction per batch, so the
//! hot path never waits on the database.
//!
//! Nothing but liveness is ever dropped:
//! * a batch that fails with a *transient* error (the database is down, busy, timed out) is
//!   retried with back-off until it commits — the queue is bounded, so pushers then wait
//!   (back-pressure, visible as `batch_writer_queue` and `batch_writer_blocked_seconds_total`);
//! * a batch that fails *permanently* is split in halves until the bad operation is alone; that
//!   one is quarantined (logged at error with the operation, counted in
//!   `dropped_total{reason="quarantined"}`) and every other operation commits.
//!
//! Liveness (`last_seen_at`) is best-effort: a full queue drops it, counted — the next beat
//! carries it anyway.
//!
//! [`Writer::manual`] runs the same batching without a task: operations wait until
//! [`Writer::flush`] writes them, which is how the fault simulation keeps every step
//! deterministic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::service::read::ReadModel;
use crate::store::{BatchOp, Store, StoreError};

enum WriterMsg {
    Op(BatchOp),
    Flush(oneshot::Sender<()>),
}

const WRITER_QUEUE: usize = 65_536;
const MAX_BATCH: usize = 2_000;
/// Retries of a transient failure while shutting down, before the batch is given up.
const SHUTDOWN_RETRIES: u32 = 20;

#[derive(Clone)]
enum Mode {
    Task(mpsc::Sender<WriterMsg>),
    Manual {
        store: Store,
        ops: Arc<Mutex<Vec<BatchOp>>>,
    },
}

/// Hands batched operations to the writer.
#[derive(Clone)]
pub struct Writer {
    mode: Mode,
    /// Refreshed after each committed batch (issue 14, the read model).
    read: Arc<ReadModel>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.mode {
            Mode::Task(_) => "Writer(task)",
            Mode::Manual { .. } => "Writer(manual)",
        })
    }
}

impl Writer {
    /// Starts the writer task; it drains and flushes everything when `shutdown` fires and the
    /// returned handle completes after the last batch.
    pub fn spawn(
        store: Store,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        let read = Arc::new(ReadModel::new());
        let task = tokio::spawn(writer_loop(store, rx, interval, shutdown, read.clone()));
        (
            Writer {
                mode: Mode::Task(tx),
                read,
            },
            task,
        )
    }

    /// A writer without a task: operations are written when [`Writer::flush`] is called.
    pub fn manual(store: Store) -> Writer {
        Writer {
            mode: Mode::Manual {
                store,
                ops: Arc::new(Mutex::new(Vec::new())),
            },
            read: Arc::new(ReadModel::new()),
        }
    }

    /// The read model this writer refreshes after each commit.
    pub fn read_model(&self) -> &Arc<ReadModel> {
        &self.read
    }

    /// Liveness is best-effort: dropped (and counted) when the queue is full.
    pub fn liveness(&self, device_id: &str, last_seen_at: i64) {
        let op = BatchOp::Liveness {
            device_id: device_id.to_string(),
            last_seen_at,
        };
        match &self.mode {
            Mode::Task(tx) => {
                if tx.try_send(WriterMsg::Op(op)).is_err() {
                    metrics::counter!(m::DROPPED, "reason" => "liveness_queue_full").increment(1);
                }
            }
            Mode::Manual { ops, .. } => ops.lock().unwrap_or_else(|p| p.into_inner()).push(op),
        }
    }

    /// Everything else waits for room rather than being lost.
    pub async fn push(&self, op: BatchOp) {
        match &self.mode {
            Mode::Task(tx) => {
                metrics::gauge!(m::BATCH_QUEUE).set((WRITER_QUEUE - tx.capacity()) as f64);
                if let Err(mpsc::error::TrySendError::Full(msg)) = tx.try_send(WriterMsg::Op(op)) {
                    let started = std::time::Instant::now();
                    let _ = tx.send(msg).await;
                    metrics::counter!(m::BATCH_BLOCKED)
                        .increment(started.elapsed().as_micros() as u64);
                }
            }
            Mode::Manual { ops, .. } => ops.lock().unwrap_or_else(|p| p.into_inner()).push(op),
        }
    }

    /// Waits until everything pushed so far is committed (or quarantined).
    pub async fn flush(&self) {
        match &self.mode {
            Mode::Task(tx) => {
                let (done, wait) = oneshot::channel();
                if tx.send(WriterMsg::Flush(done)).await.is_ok() {
                    let _ = wait.await;
                }
            }
            Mode::Manual { store, ops } => {
                let mut batch = std::mem::take(&mut *ops.lock().unwrap_or_else(|p| p.into_inner()));
                // The simulation's store fails on purpose: do not spin on it.
                write_batch(store, &self.read, &mut batch, Some(0)).await;
            }
        }
    }

    /// Operations waiting in a manual writer (the simulation's "lost on crash" set).
    pub fn pending_manual(&self) -> usize {
        match &self.mode {
            Mode::Task(_) => 0,
            Mode::Manual { ops, .. } => ops.lock().unwrap_or_else(|p| p.into_inner()).len(),
        }
    }
}

async fn writer_loop(
    store: Store,
    mut rx: mpsc::Receiver<WriterMsg>,
    interval: Duration,
    shutdown: CancellationToken,
    read: Arc<ReadModel>,
) {
    let mut batch: Vec<BatchOp> = Vec::new();
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
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
        write_batch(&store, &read, &mut batch, None).await;
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
    write_batch(&store, &read, &mut batch, Some(SHUTDOWN_RETRIES)).await;
    for w in waiters.drain(..) {
        let _ = w.send(());
    }
}

/// Only the latest liveness per device matters.
fn coalesce_liveness(batch: &mut Vec<BatchOp>) {
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
    let mut live: Vec<_> = seen.into_iter().collect();
    live.sort();
    batch.extend(
        live.into_iter()
            .map(|(device_id, last_seen_at)| BatchOp::Liveness {
                device_id,
                last_seen_at,
            }),
    );
}

/// Writes `batch` (and empties it). `retries`: how often a transient failure is retried;
/// `None` is "until it commits".
async fn write_batch(
    store: &Store,
    read: &ReadModel,
    batch: &mut Vec<BatchOp>,
    retries: Option<u32>,
) {
    if batch.is_empty() {
        return;
    }
    coalesce_liveness(batch);
    let ops = std::mem::take(batch);
    // Halves to write, in order; a permanent failure splits its half again.
    let mut todo: Vec<Vec<BatchOp>> = vec![ops];
    while let Some(part) = todo.pop() {
        let mut delay = Duration::from_millis(50);
        let mut attempt = 0u32;
        loop {
            // The read model shows the part's devices from the store while it is written and
            // reloads them once it is committed (a dropped guard marks them stale).
            let guard = read.begin(part.iter().map(BatchOp::device_id));
            match store.apply_batch(&part).await {
                Ok(()) => {
                    read.refresh(store, guard.ids()).await;
                    guard.finish();
                    metrics::counter!(m::BATCH_OPS).increment(part.len() as u64);
                    break;
                }
                Err(e) if e.is_transient() => {
                    attempt += 1;
                    if retries.is_some_and(|r| attempt > r) || matches!(e, StoreError::Injected) {
                        tracing::error!(error = %e, ops = part.len(), "batch not written (shutting down or simulated crash)");
                        metrics::counter!(m::DROPPED, "reason" => "batch_unwritten")
                            .increment(part.len() as u64);
                        break;
                    }
                    tracing::warn!(error = %e, attempt, ops = part.len(), "batch write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) if part.len() == 1 => {
                    tracing::error!(error = %e, op = ?part[0], "batched operation quarantined");
                    metrics::counter!(m::DROPPED, "reason" => "quarantined").increment(1);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, ops = part.len(), "batch failed; splitting it to isolate the bad operation");
                    let mut first = part;
                    let second = first.split_off(first.len() / 2);
                    // Stack: push the second half first so the first is written first.
                    todo.push(second);
                    todo.push(first);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DeviceOnline;

    fn online(id: &str) -> BatchOp {
        BatchOp::Online(DeviceOnline {
            device_id: id.into(),
            protocol: "bkv".into(),
            remote_addr: "127.0.0.1:1".into(),
            firmware: None,
            iccid: None,
            signal: None,
            now: 1_764_000_000,
        })
    }

    #[tokio::test]
    async fn a_failing_operation_is_isolated_and_every_other_one_commits() {
        // Sequence 8: one poisoned operation must not take its batch's lifecycle ops with it.
        let store = Store::connect("sqlite::memory:", 1).await.unwrap();
        store
            .execute_raw(
                "CREATE TRIGGER poison BEFORE INSERT ON devices WHEN NEW.device_id = 'POISON' \
                 BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
            )
            .await
            .unwrap();
        let w = Writer::manual(store.clone());
        for id in ["A1", "A2", "POISON", "A3", "A4", "A5"] {
            w.push(online(id)).await;
        }
        w.push(BatchOp::Offline {
            device_id: "A2".into(),
            last_seen_at: 1_764_000_001,
            now: 1_764_000_002,
        })
        .await;
        w.flush().await;
        for id in ["A1", "A2", "A3", "A4", "A5"] {
            assert!(store.device_exists(id).await.unwrap(), "{id} was written");
        }
        assert!(!store.device_exists("POISON").await.unwrap());
        let a2 = store.device("A2").await.unwrap().unwrap();
        assert!(
            !a2.online,
            "the offline mark after the poisoned op committed too"
        );
        assert_eq!(w.pending_manual(), 0);
    }
}
