//! Webhook delivery throughput: fills a fresh outbox with N events spread over M orders,
//! then times the dispatcher draining them to a local receiver that answers 200 at once.
//!
//! ```text
//! cargo run --release -p pile-server --example webhook_bench -- [events] [orders] [database-url]
//! ```
//! Defaults: 20000 events, 2000 orders, a temporary SQLite file.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pile_server::events::{Dispatcher, EventClock, WebhookSettings};
use pile_server::store::{Event, Store};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let events: usize = args
        .first()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let orders: usize = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2_000)
        .max(1);
    let url = match args.get(2) {
        Some(u) => u.clone(),
        None => {
            let dir = std::env::temp_dir().join("pile-webhook-bench");
            std::fs::create_dir_all(&dir)?;
            format!(
                "sqlite://{}/{}.db",
                dir.display(),
                uuid::Uuid::new_v4().simple()
            )
        }
    };

    // The receiver: answers 200 at once and counts.
    let received = Arc::new(AtomicU64::new(0));
    let app = {
        let received = received.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let received = received.clone();
                async move {
                    received.fetch_add(1, Ordering::Relaxed);
                    "ok"
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let store = Store::connect(&url, 8).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let fill_started = Instant::now();
    let batch: Vec<Event> = (0..events)
        .map(|i| Event {
            event_type: "charging.progress",
            device_id: format!("dev{}", i % orders),
            order_no: Some(format!("bench-{}", i % orders)),
            data: serde_json::json!({"duration_sec": i / orders, "energy_wh": i, "power_w": 180.0}),
        })
        .collect();
    for chunk in batch.chunks(5_000) {
        store.insert_events_now(chunk, now).await?;
    }
    println!(
        "filled {events} events over {orders} orders in {:.2} s",
        fill_started.elapsed().as_secs_f64()
    );

    let d = Dispatcher::new(
        store.clone(),
        WebhookSettings::new(&hook, "bench-secret"),
        EventClock::manual(now + 1),
    )?;
    let started = Instant::now();
    let delivered = d.drain().await?;
    let secs = started.elapsed().as_secs_f64();
    let (backlog, dead) = store.backlog_and_dead().await?;
    println!(
        "delivered {delivered} events in {secs:.2} s: {:.0} deliveries/s \
         (receiver saw {}, backlog {backlog}, dead {dead}, backend {:?})",
        delivered as f64 / secs,
        received.load(Ordering::Relaxed),
        store.backend()
    );
    store.close().await;
    Ok(())
}
