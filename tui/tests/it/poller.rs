//! The background poller against a tiny stand-in gateway serving canned JSON.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, Sse};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use pile_api::{Envelope, Page};
use pile_tui::app::{Conn, Focus};
use pile_tui::net::{self, PollConfig};
use pile_tui::{App, Update};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::support::*;

fn envelope(data: Value) -> Json<Envelope<Value>> {
    Json(Envelope {
        code: 0,
        message: "ok".into(),
        data: Some(data),
        request_id: "r".into(),
        timestamp: NOW_MS / 1000,
    })
}

/// A stand-in gateway on `listener` until `stop` turns true. Its event stream sends one
/// event and then stays open until the stop, like the real one.
fn serve(listener: TcpListener, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    let snap = snapshot();
    let stats = serde_json::to_value(snap.stats.clone().unwrap_or_default()).unwrap();
    let devices = serde_json::to_value(Page {
        items: snap.devices.clone(),
        total: 3,
        page: 1,
        size: 1000,
    })
    .unwrap();
    let orders = serde_json::to_value(Page {
        items: snap.orders.clone(),
        total: 2,
        page: 1,
        size: 1000,
    })
    .unwrap();
    let stream_stop = stop.clone();
    let app = Router::new()
        .route(
            "/api/v1/admin/stats",
            get(move || async move { envelope(stats) }),
        )
        .route(
            "/api/v1/third/devices",
            get(move || async move { envelope(devices) }),
        )
        .route(
            "/api/v1/third/orders",
            get(move || async move { envelope(orders) }),
        )
        .route(
            "/metrics",
            get(|| async { "tcp_connections_accepted_total 3\nheartbeats_total 9\n" }),
        )
        .route(
            "/api/v1/events/stream",
            get(move || {
                let mut stop = stream_stop.clone();
                async move {
                    let first = serde_json::to_string(&event(1, "device.online")).unwrap();
                    let events = futures::stream::once(async move {
                        Ok::<_, Infallible>(SseEvent::default().event("device.online").data(first))
                    })
                    .chain(futures::stream::pending())
                    .take_until(async move {
                        let _ = stop.wait_for(|v| *v).await;
                    });
                    Sse::new(events)
                }
            }),
        );
    let mut stop = stop;
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|v| *v).await;
            })
            .await
            .expect("stand-in gateway");
    })
}

/// Applies updates to `app` until `cond` holds; fails after `limit`.
async fn wait_for(
    app: &mut App,
    rx: &mut mpsc::Receiver<Update>,
    what: &str,
    cond: impl Fn(&App) -> bool,
) {
    let limit = Duration::from_secs(10);
    let result = tokio::time::timeout(limit, async {
        while !cond(app) {
            match rx.recv().await {
                Some(u) => app.apply(u),
                None => panic!("update channel closed while waiting for {what}"),
            }
        }
    })
    .await;
    assert!(
        result.is_ok(),
        "timed out waiting for {what}: {:?}",
        app.conn
    );
}

#[tokio::test]
async fn the_poller_reports_snapshots_then_disconnected_then_reconnects() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = serve(listener, stop_rx);

    let mut cfg = PollConfig::new(format!("http://{addr}"), "k", Duration::from_millis(50));
    cfg.max_backoff = Duration::from_millis(200);
    let (tx, mut rx) = mpsc::channel(64);
    let (_focus_tx, focus_rx) = watch::channel(Focus::default());
    let poller = tokio::spawn(net::run_poller(cfg.clone(), focus_rx, tx.clone()));
    let stream = tokio::spawn(net::run_event_stream(cfg, tx));
    let mut app = App::new(format!("http://{addr}"), false);

    wait_for(&mut app, &mut rx, "the first snapshot and event", |a| {
        a.data.is_some() && !a.events.is_empty()
    })
    .await;
    assert!(matches!(app.conn, Conn::Connected { .. }));
    assert_eq!(app.visible_devices().len(), 3);
    assert_eq!(app.events[0].event_type, "device.online");

    // The gateway goes away.
    stop_tx.send(true).unwrap();
    server.await.unwrap();
    wait_for(&mut app, &mut rx, "the disconnected state", |a| {
        a.is_disconnected()
    })
    .await;
    let Conn::Disconnected {
        last_ok_ms, error, ..
    } = &app.conn
    else {
        unreachable!()
    };
    assert!(last_ok_ms.is_some());
    assert!(!error.is_empty());
    assert!(app.data.is_some(), "the last data stays on screen");

    // It comes back on the same address.
    let listener = TcpListener::bind(addr).await.unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = serve(listener, stop_rx);
    wait_for(&mut app, &mut rx, "the reconnection", |a| {
        matches!(a.conn, Conn::Connected { .. })
    })
    .await;

    poller.abort();
    stream.abort();
    stop_tx.send(true).unwrap();
    let _ = server.await;
}

#[tokio::test]
async fn a_gateway_that_never_answered_is_disconnected_and_never_connected() {
    // Nothing listens on this port once the listener is dropped.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let cfg = PollConfig::new(format!("http://{addr}"), "k", Duration::from_millis(50));
    let (tx, mut rx) = mpsc::channel(16);
    let (_focus_tx, focus_rx) = watch::channel(Focus::default());
    let poller = tokio::spawn(net::run_poller(cfg, focus_rx, tx));
    let mut app = App::new(format!("http://{addr}"), false);
    wait_for(&mut app, &mut rx, "a failed poll", |a| a.is_disconnected()).await;
    let Conn::Disconnected { last_ok_ms, .. } = &app.conn else {
        unreachable!()
    };
    assert_eq!(*last_ok_ms, None);
    assert!(draw(&app, 120, 20).contains("never connected"));
    poller.abort();
}

#[tokio::test]
async fn an_open_device_the_gateway_does_not_know_gives_a_notice_and_stays_connected() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = serve(listener, stop_rx);
    let cfg = PollConfig::new(format!("http://{addr}"), "k", Duration::from_millis(50));
    let (tx, mut rx) = mpsc::channel(64);
    let (_focus_tx, focus_rx) = watch::channel(Focus {
        device: Some("NO-SUCH-PILE".into()),
        ..Focus::default()
    });
    let poller = tokio::spawn(net::run_poller(cfg, focus_rx, tx));
    let mut app = App::new(format!("http://{addr}"), false);
    wait_for(&mut app, &mut rx, "a notice about the device", |a| {
        a.status.as_ref().is_some_and(|s| s.text.contains("404"))
    })
    .await;
    assert!(matches!(app.conn, Conn::Connected { .. }), "{:?}", app.conn);
    poller.abort();
    stop_tx.send(true).unwrap();
    let _ = server.await;
}
