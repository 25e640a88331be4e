//! The live event stream. One task tails the outbox (by row ID) and publishes each new event
//! on a bounded broadcast channel; every SSE client reads its own receiver. Publishing never
//! waits, so a slow client cannot slow anything down: once it is more than [`CAPACITY`]
//! events behind, its receiver reports the lag and its stream ends (the client reconnects).

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use pile_api::EventMessage;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{STREAM_CLIENTS, STREAM_DROPPED};
use crate::store::outbox::OutboxRow;
use crate::store::Store;

/// Events a client may fall behind before it is dropped.
pub const CAPACITY: usize = 1024;

/// Rows read per poll of the tail.
const TAIL_BATCH: i64 = 1000;

#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<EventMessage>>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("clients", &self.tx.receiver_count())
            .finish()
    }
}

/// Which events a client wants: one device, and/or some types (exact names or `prefix.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub device_id: Option<String>,
    pub types: Vec<String>,
}

impl Filter {
    /// From the query's `device_id` and `type` (comma-separated) values.
    pub fn new(device_id: Option<&str>, types: Option<&str>) -> Self {
        Filter {
            device_id: device_id
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            types: types
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }

    pub fn matches(&self, ev: &EventMessage) -> bool {
        if self
            .device_id
            .as_deref()
            .is_some_and(|d| d != ev.device_phy_id)
        {
            return false;
        }
        self.types.is_empty()
            || self.types.iter().any(|t| match t.strip_suffix('*') {
                Some(prefix) => ev.event_type.starts_with(prefix),
                None => *t == ev.event_type,
            })
    }
}

/// The message a stream client sees for an outbox row (no nonce: nothing is signed).
pub fn message_of(row: &OutboxRow) -> EventMessage {
    EventMessage {
        event_id: row.event_id.clone(),
        event_type: row.event_type.clone(),
        device_phy_id: row.device_id.clone(),
        order_no: row.order_no.clone(),
        timestamp: row.created_at_ms / 1000,
        nonce: String::new(),
        data: serde_json::from_str(&row.payload).unwrap_or(serde_json::Value::Null),
    }
}

impl Hub {
    pub fn new(capacity: usize, shutdown: CancellationToken) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Hub { tx, shutdown }
    }

    pub fn clients(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Never waits; without clients the event goes nowhere.
    pub fn publish(&self, ev: EventMessage) {
        let _ = self.tx.send(Arc::new(ev));
    }

    /// A client's stream: the matching events from now on. It ends when the client falls
    /// more than the channel's capacity behind, or at shutdown.
    pub fn subscribe(&self, filter: Filter) -> impl Stream<Item = Arc<EventMessage>> + Send {
        let rx = self.tx.subscribe();
        metrics::gauge!(STREAM_CLIENTS).increment(1.0);
        let guard = ClientGuard;
        let shutdown = self.shutdown.clone();
        futures::stream::unfold(
            (rx, filter, shutdown, guard),
            |(mut rx, filter, shutdown, guard)| async move {
                loop {
                    let next = tokio::select! {
                        r = rx.recv() => r,
                        _ = shutdown.cancelled() => return None,
                    };
                    match next {
                        Ok(ev) if filter.matches(&ev) => {
                            return Some((ev, (rx, filter, shutdown, guard)))
                        }
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            metrics::counter!(STREAM_DROPPED).increment(1);
                            tracing::info!(missed = n, "event stream client fell behind; dropped");
                            return None;
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        )
    }
}

/// Counts a client out when its stream is dropped.
struct ClientGuard;

impl Drop for ClientGuard {
    fn drop(&mut self) {
        metrics::gauge!(STREAM_CLIENTS).decrement(1.0);
    }
}

/// How long the tail waits for a missing row ID before moving past it: on PostgreSQL a lower
/// ID may commit after a higher one (or never, after a rollback).
const GAP_WAIT: Duration = Duration::from_secs(1);

/// Follows the outbox from its current end and publishes every new row in ID order. Without
/// clients it only moves its cursor. A gap in the IDs holds the stream for up to
/// [`GAP_WAIT`], so a row whose transaction commits late is still streamed in its place.
pub async fn tail(store: Store, hub: Hub, every: Duration, shutdown: CancellationToken) {
    let mut last = loop {
        match store.outbox_max_id().await {
            Ok(id) => break id,
            Err(e) => {
                tracing::warn!(error = %e, "event stream: reading the outbox end failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    };
    let mut gap_since: Option<tokio::time::Instant> = None;
    loop {
        let mut full = false;
        if hub.clients() == 0 {
            // Read the end first, then check for clients: a client that subscribed before the
            // read is seen by the check, so nothing written after it subscribed is skipped.
            let end = store.outbox_max_id().await;
            if let (Ok(id), 0) = (end, hub.clients()) {
                last = last.max(id);
                gap_since = None;
            }
        } else {
            match store.outbox_after(last, TAIL_BATCH).await {
                Ok(rows) => {
                    full = rows.len() as i64 == TAIL_BATCH;
                    for row in &rows {
                        if row.id != last + 1 {
                            let since = *gap_since.get_or_insert_with(tokio::time::Instant::now);
                            if since.elapsed() < GAP_WAIT {
                                full = false;
                                break;
                            }
                        }
                        gap_since = None;
                        last = row.id;
                        hub.publish(message_of(row));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "event stream: reading the outbox failed"),
            }
        }
        if full {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn ev(device: &str, t: &str, n: i64) -> EventMessage {
        EventMessage {
            event_id: format!("e{n}"),
            event_type: t.into(),
            device_phy_id: device.into(),
            order_no: None,
            timestamp: n,
            nonce: String::new(),
            data: serde_json::Value::Null,
        }
    }

    #[tokio::test]
    async fn a_client_gets_only_the_events_its_filter_asks_for() {
        let hub = Hub::new(16, CancellationToken::new());
        let mut s =
            Box::pin(hub.subscribe(Filter::new(Some("d1"), Some("charging.*,order.completed"))));
        hub.publish(ev("d2", "charging.progress", 1));
        hub.publish(ev("d1", "device.online", 2));
        hub.publish(ev("d1", "charging.progress", 3));
        hub.publish(ev("d1", "order.completed", 4));
        assert_eq!(s.next().await.unwrap().event_id, "e3");
        assert_eq!(s.next().await.unwrap().event_id, "e4");
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_is_dropped_and_publishing_never_waits() {
        let hub = Hub::new(4, CancellationToken::new());
        let mut slow = Box::pin(hub.subscribe(Filter::default()));
        for n in 0..100 {
            hub.publish(ev("d", "charging.progress", n));
        }
        assert!(
            slow.next().await.is_none(),
            "the lagging client's stream ends"
        );
        let mut fresh = Box::pin(hub.subscribe(Filter::default()));
        hub.publish(ev("d", "order.completed", 101));
        assert_eq!(fresh.next().await.unwrap().event_id, "e101");
    }

    #[tokio::test]
    async fn streams_end_at_shutdown() {
        let shutdown = CancellationToken::new();
        let hub = Hub::new(4, shutdown.clone());
        let mut s = Box::pin(hub.subscribe(Filter::default()));
        shutdown.cancel();
        assert!(s.next().await.is_none());
    }
}
