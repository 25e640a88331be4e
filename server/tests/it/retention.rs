//! Retention (#13): the maintenance task prunes delivered events, finished command logs and
//! progress samples of settled orders, and keeps orders, settlements and dead letters — so a
//! long run (simulated on the manual clock) keeps the database flat.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pile_server::clock::Clock;
use pile_server::domain::EndReason;
use pile_server::events::{Dispatcher, EventClock, WebhookSettings};
use pile_server::retention::{prune_once, RetentionPolicy};
use pile_server::store::{Event, RetainedCounts};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::*;

const HOUR: i64 = 3_600_000;

/// A receiver that accepts everything but `device.alarm` (400: a dead letter).
async fn receiver() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                if v["event_type"] == "device.alarm" {
                    axum::http::StatusCode::BAD_REQUEST
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, hits)
}

both_clocked!(
    retention_keeps_row_counts_flat_over_a_long_simulated_run,
    |app: TestApp, clock: Clock| async move {
        let store = app.service.store.clone();
        let (url, hits) = receiver().await;
        let d = Dispatcher::new(
            store.clone(),
            WebhookSettings::new(&url, "secret"),
            EventClock::System(clock.clone()),
        )
        .unwrap();
        let policy = RetentionPolicy {
            events: Some(Duration::from_secs(86_400)),
            command_logs: Some(Duration::from_secs(86_400)),
            progress: Some(Duration::from_secs(86_400)),
            batch: 7,
            ..RetentionPolicy::default()
        };
        let stop = CancellationToken::new();
        let mut pile = app.connect_fake("04AB373B", "ap3000", 4).await;
        // A dead letter: kept whatever its age.
        store
            .insert_event_now(
                &Event {
                    event_type: "device.alarm",
                    device_id: "04AB373B".into(),
                    order_no: None,
                    data: json!({"code": 1}),
                },
                clock.now_ms(),
            )
            .await
            .unwrap();
        d.drain().await.unwrap();
        let dead = store.dead_letters(1, 10).await.unwrap().1;
        assert_eq!(dead, 1);

        // 10 days, an order every 3 hours, each with a start command, 3 progress samples and
        // its events; retention runs every 6 hours.
        let (days, per_day) = (10, 8);
        let mut daily: Vec<RetainedCounts> = Vec::new();
        let mut pruned_total = 0;
        for i in 0..days * per_day {
            let no = format!("ret-{i}");
            let port = (i % 4 + 1) as u32;
            envelope(
                app.charge(
                    "04AB373B",
                    json!({"port_no": port, "charge_mode": 1, "duration": 600, "amount": 500,
                           "price_per_kwh": 150, "service_fee": 50, "order_no": no}),
                )
                .await,
                200,
            )
            .await;
            let start = pile.next_command().await;
            pile.confirm(&start).await;
            for k in 1..=3 {
                pile.progress(progress_obs(port, 60 * k, 10 * k, 1_800))
                    .await;
                clock.advance_ms(60_000);
            }
            app.service.writer.flush().await;
            let (committed, settled) = pile
                .end(ap_end(&no, port, 40, EndReason::TargetReached))
                .await;
            assert!(committed && settled.as_deref() == Some(no.as_str()));
            d.drain().await.unwrap();
            clock.advance_ms(3 * HOUR - 3 * 60_000);
            if i % 2 == 1 {
                let p = prune_once(&store, &clock, &policy, false, &stop)
                    .await
                    .unwrap();
                pruned_total += p.events + p.command_logs + p.progress;
            }
            if i % per_day == per_day - 1 {
                daily.push(store.retained_counts().await.unwrap());
            }
        }
        assert!(pruned_total > 0);
        assert!(hits.load(Ordering::SeqCst) > 0);
        // From the second day on the pruned tables hold one day's rows: flat.
        let steady = &daily[1..];
        for (name, f) in [
            (
                "outbox",
                (|c: &RetainedCounts| c.outbox) as fn(&RetainedCounts) -> i64,
            ),
            ("cmd_logs", |c| c.cmd_logs),
            ("order_progress", |c| c.order_progress),
        ] {
            let v: Vec<i64> = steady.iter().map(f).collect();
            let (lo, hi) = (*v.iter().min().unwrap(), *v.iter().max().unwrap());
            assert!(lo > 0, "{name}: the last day is kept: {v:?}");
            assert_eq!(lo, hi, "{name} stays flat: {v:?}");
            assert!(
                hi < f(&daily[days - 1]).max(1) * 2 && hi * (days as i64) / 2 > 0,
                "{name}: {v:?}"
            );
        }
        let last = daily.last().unwrap();
        assert!(last.order_progress <= 3 * per_day as i64, "{last:?}");
        assert!(last.cmd_logs <= per_day as i64 + 1, "{last:?}");
        // Orders and settlements are kept; so is the dead letter.
        assert_eq!(last.orders, (days * per_day) as i64);
        assert_eq!(last.settlements, (days * per_day) as i64);
        assert_eq!(store.dead_letters(1, 10).await.unwrap().1, 1);
        // The first order is still readable, its progress curve gone.
        let first = app.client.order("ret-0").await.unwrap();
        assert_eq!(first.order_no, "ret-0");
        assert!(app.client.progress("ret-0").await.unwrap().is_empty());
        assert_eq!(
            app.client
                .progress(&format!("ret-{}", days * per_day - 1))
                .await
                .unwrap()
                .len(),
            3
        );
    }
);

/// The gateway's own task: on its interval, with the gateway's clock.
async fn the_task_runs(db: Db) {
    let clock = Clock::manual(1_764_000_000_000);
    let Some(app) = spawn_app_on_clock(
        db,
        |c| {
            c.retention.interval = Duration::from_millis(20);
            c.retention.events = Some(Duration::from_secs(3600));
        },
        clock.clone(),
    )
    .await
    else {
        return;
    };
    let _pile = app.connect_fake("82210225000520", "bkv", 4).await;
    app.service.writer.flush().await;
    let store = app.service.store.clone();
    let before = store.retained_counts().await.unwrap();
    assert!(before.outbox >= 2, "{before:?}");
    // Not an hour old yet: kept (no webhook URL, so these pending events are the stream's).
    clock.advance_ms(HOUR - 1_000);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.retained_counts().await.unwrap().outbox, before.outbox);
    clock.advance_ms(2_000);
    eventually(|| async { (store.retained_counts().await.unwrap().outbox == 0).then_some(()) })
        .await;
    assert!(
        app.client.device("82210225000520").await.is_ok(),
        "the device is kept"
    );
}

mod the_retention_task_runs_on_its_interval_with_the_gateway_clock {
    #[tokio::test]
    async fn sqlite() {
        super::the_task_runs(crate::Db::Sqlite).await;
    }
    crate::pg!(super::the_task_runs(crate::Db::Postgres));
}
