//! The background poller against a tiny stand-in gateway serving canned JSON.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use pile_api::{charge_mode, ChargeRequest, Client, Envelope, Page};
use pile_tui::app::form::Field;
use pile_tui::app::{Command, Conn, Focus, Modal, Outcome};
use pile_tui::net::{self, PollConfig};
use pile_tui::startup;
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

fn refusal(status: StatusCode, message: &str) -> axum::response::Response {
    (
        status,
        Json(Envelope::<Value> {
            code: status.as_u16(),
            message: message.into(),
            data: None,
            request_id: "r".into(),
            timestamp: NOW_MS / 1000,
        }),
    )
        .into_response()
}

/// How the stand-in behaves.
#[derive(Clone, Default)]
struct Gateway {
    /// Devices in the fleet (the three of the fixtures when 0).
    fleet: usize,
    /// Answers `/admin/instances` (404 otherwise, like a single-instance gateway).
    instances: bool,
    /// Every `/api/…` request answers 401.
    refuse_key: bool,
}

/// A stand-in gateway on `listener` until `stop` turns true. Its event stream sends one
/// event and then stays open until the stop, like the real one.
fn serve(listener: TcpListener, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    serve_with(listener, stop, Gateway::default())
}

fn serve_with(listener: TcpListener, stop: watch::Receiver<bool>, gw: Gateway) -> JoinHandle<()> {
    let snap = snapshot();
    let stats = serde_json::to_value(snap.stats.clone().unwrap_or_default()).unwrap();
    let fleet: Vec<pile_api::DeviceView> = if gw.fleet == 0 {
        devices()
    } else {
        (0..gw.fleet)
            .map(|i| device(&format!("P{i:05}"), "bkv", i % 7 != 0))
            .collect()
    };
    let orders = serde_json::to_value(Page {
        items: snap.orders.clone(),
        total: 2,
        page: 1,
        size: 1000,
    })
    .unwrap();
    let instances = serde_json::to_value(instances()).unwrap();
    let stream_stop = stop.clone();
    let mut app = Router::new()
        .route(
            "/api/v1/admin/stats",
            get(move || async move { envelope(stats) }),
        )
        .route(
            "/api/v1/third/devices",
            get(move |Query(q): Query<std::collections::HashMap<String, String>>| {
                let fleet = fleet.clone();
                async move {
                    let num = |k: &str, d: usize| q.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
                    let (page, size) = (num("page", 1), num("size", 50));
                    let items: Vec<_> = fleet.iter().skip((page - 1) * size).take(size).cloned().collect();
                    envelope(serde_json::to_value(Page { items, total: fleet.len() as i64, page: page as u32, size: size as u32 }).unwrap())
                }
            }),
        )
        .route(
            "/api/v1/third/orders",
            get(move || async move { envelope(orders) }),
        )
        .route(
            "/api/v1/third/devices/{id}/charge",
            post(|Json(req): Json<ChargeRequest>| async move {
                if req.charge_mode == charge_mode::BY_TIME && req.duration <= 0 {
                    return refusal(StatusCode::BAD_REQUEST, "invalid field `duration`: must be above 0 for mode 1");
                }
                envelope(serde_json::json!({"order_no": "ORD-NEW", "device_id": "P", "port_no": req.port_no, "status": "pending"})).into_response()
            }),
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
    if gw.instances {
        app = app.route(
            "/api/v1/admin/instances",
            get(move || async move { envelope(instances) }),
        );
    }
    if gw.refuse_key {
        app = app.layer(axum::middleware::from_fn(
            |_req: axum::extract::Request, _next: axum::middleware::Next| async {
                refusal(StatusCode::UNAUTHORIZED, "missing or invalid API key")
            },
        ));
    }
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

/// Starts a stand-in; returns its address and the stop switch.
async fn stand_in(gw: Gateway) -> (SocketAddr, watch::Sender<bool>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = serve_with(listener, stop_rx, gw);
    (addr, stop_tx, server)
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

#[tokio::test]
async fn the_poller_walks_every_page_of_a_fleet_larger_than_one_page() {
    let (addr, stop_tx, server) = stand_in(Gateway {
        fleet: 2500,
        ..Gateway::default()
    })
    .await;
    let mut cfg = PollConfig::new(format!("http://{addr}"), "k", Duration::from_millis(20));
    cfg.page_size = 1000;
    let (tx, mut rx) = mpsc::channel(64);
    let (_focus_tx, focus_rx) = watch::channel(Focus::default());
    let poller = tokio::spawn(net::run_poller(cfg, focus_rx, tx));
    let mut app = App::new(format!("http://{addr}"), false);
    wait_for(&mut app, &mut rx, "all 2,500 devices", |a| {
        a.visible_devices().len() == 2500
    })
    .await;
    assert_eq!(app.live.devices_total, 2500);
    assert!(app.live.fleet.contains_key("P02499"));
    // 1 in 7 is offline, and each is a problem with its pile named.
    let offline = app
        .problems()
        .iter()
        .filter(|p| p.kind == "offline")
        .count();
    assert_eq!(offline, (0..2500).filter(|i| i % 7 == 0).count());
    poller.abort();
    stop_tx.send(true).unwrap();
    let _ = server.await;
}

#[tokio::test]
async fn a_refused_key_at_start_is_a_reason_to_exit_and_an_absent_gateway_is_not() {
    let (addr, stop_tx, server) = stand_in(Gateway {
        refuse_key: true,
        ..Gateway::default()
    })
    .await;
    let client = Client::new(format!("http://{addr}"), "wrong");
    let err = startup::check_gateway(&client, Duration::from_secs(5))
        .await
        .expect_err("401 stops the start");
    assert!(
        err.contains("HTTP 401") && err.contains("missing or invalid API key"),
        "{err}"
    );
    assert!(err.contains("--api-key"), "{err}");
    stop_tx.send(true).unwrap();
    let _ = server.await;

    // Nothing listens: no reason to exit, the dashboard shows it as disconnected.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let client = Client::new(format!("http://{addr}"), "k");
    let down = startup::check_gateway(&client, Duration::from_secs(5)).await;
    assert!(
        matches!(&down, Ok(Some(why)) if why.contains("cannot connect")),
        "{down:?}"
    );

    // While running, a 401 carries its status to the banner.
    let (addr, stop_tx, server) = stand_in(Gateway {
        refuse_key: true,
        ..Gateway::default()
    })
    .await;
    let cfg = PollConfig::new(format!("http://{addr}"), "k", Duration::from_millis(50));
    let (tx, mut rx) = mpsc::channel(16);
    let (_focus_tx, focus_rx) = watch::channel(Focus::default());
    let poller = tokio::spawn(net::run_poller(cfg, focus_rx, tx));
    let mut app = App::new(format!("http://{addr}"), false);
    wait_for(&mut app, &mut rx, "the refusal", |a| a.is_disconnected()).await;
    assert!(
        matches!(
            app.conn,
            Conn::Disconnected {
                status: Some(401),
                ..
            }
        ),
        "{:?}",
        app.conn
    );
    poller.abort();
    stop_tx.send(true).unwrap();
    let _ = server.await;
}

#[tokio::test]
async fn the_start_form_shows_the_gateways_own_400() {
    let (addr, stop_tx, server) = stand_in(Gateway::default()).await;
    let client = Client::new(format!("http://{addr}"), "k");
    let mut app = loaded_app(false);
    let id = open_first_device(&mut app);
    crate::support::key(&mut app, crossterm::event::KeyCode::Char('s'));
    crate::support::key(&mut app, crossterm::event::KeyCode::Down); // duration
    crate::support::type_str(&mut app, "");
    if let Some(Modal::Start(f)) = &mut app.modal {
        f.target = "0m".into();
    }
    crate::support::key(&mut app, crossterm::event::KeyCode::Enter);
    let cmds = app.take_commands();
    assert!(matches!(&cmds[..], [Command::Start { request, .. }] if request.duration == 0));
    let done = net::execute(&client, None, &cmds[0]).await;
    assert!(
        matches!(&done, Update::Done { outcome: Outcome::Started { result: Err(r), .. }, .. } if r.status == Some(400))
    );
    app.apply(done);
    let Some(Modal::Start(form)) = &app.modal else {
        panic!("the form stays open");
    };
    let e = form.error.as_ref().expect("an error");
    assert_eq!(e.field, Some(Field::Target));
    assert_eq!(
        e.message,
        "HTTP 400: invalid field `duration`: must be above 0 for mode 1"
    );
    // Fixed and sent again: accepted, followed.
    if let Some(Modal::Start(f)) = &mut app.modal {
        f.target = "10m".into();
    }
    crate::support::key(&mut app, crossterm::event::KeyCode::Enter);
    let cmds = app.take_commands();
    let done = net::execute(&client, None, &cmds[0]).await;
    app.apply(done);
    assert!(app.modal.is_none());
    assert_eq!(app.focus().followed, vec!["ORD-NEW".to_string()]);
    assert_eq!(id, "04AB373B");
    stop_tx.send(true).unwrap();
    let _ = server.await;
}

#[tokio::test]
async fn instances_show_only_when_the_gateway_answers_the_route() {
    for (route, expect) in [(false, false), (true, true)] {
        let (addr, stop_tx, server) = stand_in(Gateway {
            instances: route,
            ..Gateway::default()
        })
        .await;
        let cfg = PollConfig::new(format!("http://{addr}"), "k", Duration::from_millis(50));
        let (tx, mut rx) = mpsc::channel(64);
        let (_focus_tx, focus_rx) = watch::channel(Focus::default());
        let poller = tokio::spawn(net::run_poller(cfg, focus_rx, tx));
        let mut seen = None;
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(u) = rx.recv().await {
                if let Update::Instances { instances, .. } = u {
                    seen = Some(instances);
                    break;
                }
            }
        })
        .await;
        let instances = seen.expect("the first poll asks for instances");
        assert_eq!(instances.is_some(), expect, "route {route}");
        if let Some(v) = instances {
            assert_eq!(v.len(), 2);
        }
        poller.abort();
        stop_tx.send(true).unwrap();
        let _ = server.await;
    }
}
