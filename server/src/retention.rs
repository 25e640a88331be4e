//! Retention (#13): the maintenance task that keeps the database from growing forever.
//!
//! Every `interval` it deletes, in batches of `batch` rows (each its own short statement, with
//! a pause between batches so the device and webhook paths get the write lock in between):
//!
//! * outbox events delivered (or switched off) more than `events` ago — dead letters are kept,
//!   and without a webhook URL undelivered events older than that too;
//! * finished command-log rows older than `command_logs`, of devices or of orders no longer
//!   active;
//! * progress samples older than `progress` of orders no longer active.
//!
//! Orders, settlements and end reports are kept. Ages are measured on the gateway's clock.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{file_duration, file_retain, DeliveryFlags, FileConfig};
use crate::store::{RetainedTable, Store, StoreError};

pub const PRUNED: &str = "retention_pruned_rows_total";

/// Batches per table per pass: a bound on one pass's work (the rest waits for the next).
const MAX_BATCHES: u32 = 1_000;
/// Between two batches.
const PAUSE: Duration = Duration::from_millis(10);

/// What to prune, and when. An age of `None` keeps those rows forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub events: Option<Duration>,
    pub command_logs: Option<Duration>,
    pub progress: Option<Duration>,
    pub interval: Duration,
    pub batch: u32,
}

const DAY: Duration = Duration::from_secs(86_400);

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            events: Some(7 * DAY),
            command_logs: Some(30 * DAY),
            progress: Some(30 * DAY),
            interval: Duration::from_secs(300),
            batch: 500,
        }
    }
}

impl RetentionPolicy {
    pub(crate) fn merge(cli: &DeliveryFlags, file: &FileConfig) -> Self {
        let d = RetentionPolicy::default();
        let age = |c: Option<crate::config::Retain>, f: &Option<String>, d: Option<Duration>| {
            c.or_else(|| file_retain(f)).map_or(d, |r| r.0)
        };
        RetentionPolicy {
            events: age(cli.retain_events, &file.retain_events, d.events),
            command_logs: age(
                cli.retain_command_logs,
                &file.retain_command_logs,
                d.command_logs,
            ),
            progress: age(cli.retain_progress, &file.retain_progress, d.progress),
            interval: cli
                .retention_interval
                .or_else(|| file_duration(&file.retention_interval))
                .unwrap_or(d.interval)
                .max(Duration::from_millis(10)),
            batch: cli
                .retention_batch
                .or(file.retention_batch)
                .unwrap_or(d.batch)
                .max(1),
        }
    }
}

/// Rows one pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    pub command_logs: u64,
    pub progress: u64,
}

#[derive(Clone, Copy)]
enum Table {
    Events,
    CommandLogs,
    Progress,
}

impl Table {
    fn label(self) -> &'static str {
        match self {
            Table::Events => "outbox",
            Table::CommandLogs => "cmd_logs",
            Table::Progress => "order_progress",
        }
    }
}

fn cutoff(now_ms: i64, age: Option<Duration>) -> Option<i64> {
    age.map(|a| now_ms.saturating_sub(a.as_millis() as i64))
}

/// One pass over the three tables at the clock's `now`. `undelivered_too`: no webhook is
/// configured, so old pending events go as well. Stops early on `shutdown`.
pub async fn prune_once(
    store: &Store,
    clock: &Clock,
    policy: &RetentionPolicy,
    undelivered_too: bool,
    shutdown: &CancellationToken,
) -> Result<Pruned, StoreError> {
    let now = clock.now_ms();
    let cuts = [
        (Table::Events, cutoff(now, policy.events)),
        (Table::CommandLogs, cutoff(now, policy.command_logs)),
        (Table::Progress, cutoff(now, policy.progress)),
    ];
    let mut pruned = Pruned::default();
    for (table, cut) in cuts {
        let Some(cut) = cut else { continue };
        let which = match table {
            Table::Events => RetainedTable::Outbox,
            Table::CommandLogs => RetainedTable::CmdLogs,
            Table::Progress => RetainedTable::OrderProgress,
        };
        let bound = store.retention_bound(which, cut).await?;
        let mut total = 0;
        for _ in 0..MAX_BATCHES {
            let n = match table {
                Table::Events => {
                    store
                        .prune_events(bound, cut, undelivered_too, policy.batch)
                        .await?
                }
                Table::CommandLogs => store.prune_command_logs(bound, cut, policy.batch).await?,
                Table::Progress => store.prune_progress(bound, cut, policy.batch).await?,
            };
            total += n;
            if n < u64::from(policy.batch) || shutdown.is_cancelled() {
                break;
            }
            tokio::time::sleep(PAUSE).await;
        }
        if total > 0 {
            metrics::counter!(PRUNED, "table" => table.label()).increment(total);
        }
        match table {
            Table::Events => pruned.events = total,
            Table::CommandLogs => pruned.command_logs = total,
            Table::Progress => pruned.progress = total,
        }
    }
    Ok(pruned)
}

/// The maintenance loop: a pass every `policy.interval` until `shutdown`.
pub async fn run(
    store: Store,
    clock: Clock,
    policy: RetentionPolicy,
    undelivered_too: bool,
    shutdown: CancellationToken,
) {
    metrics::describe_counter!(PRUNED, "Rows deleted by retention, by table");
    for t in [Table::Events, Table::CommandLogs, Table::Progress] {
        metrics::counter!(PRUNED, "table" => t.label()).increment(0);
    }
    if policy.events.is_none() && policy.command_logs.is_none() && policy.progress.is_none() {
        tracing::info!("retention is off");
        return;
    }
    let mut tick = tokio::time::interval(policy.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        match prune_once(&store, &clock, &policy, undelivered_too, &shutdown).await {
            Ok(p) if p != Pruned::default() => tracing::info!(
                events = p.events,
                command_logs = p.command_logs,
                progress = p.progress,
                "retention pruned old rows"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention pass failed"),
        }
    }
}
