//! The fleet machinery (sockets, control API, network states) with a plain
//! text codec, so it is tested apart from either protocol family.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::{Bytes, BytesMut};
use pile_protocol::Family;
use pile_sim::config::{FleetConfig, ProtocolChoice};
use pile_sim::fault::FaultKind;
use pile_sim::fleet::{CodecFactory, FleetHandle};
use pile_sim::msg::Up;
use pile_sim::pile::{Codec, Direction, Inbound, PileState};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tower::ServiceExt;

/// One line of text per message: `<pile id> <message>`.
struct TextCodec;

impl Codec for TextCodec {
    fn encode(&mut self, pile: &PileState, up: &Up, _: Instant) -> Option<Bytes> {
        let name = format!("{up:?}");
        let name = name
            .split([' ', '(', '{'])
            .next()
            .unwrap_or("?")
            .to_string();
        Some(Bytes::from(format!("{} {}\n", pile.id, name)))
    }
    fn decode(&mut self, _: &PileState, buf: &mut BytesMut, _: &mut Vec<Inbound>) {
        buf.clear();
    }
    fn corrupt_checksum(&self, _: &mut [u8]) {}
    fn describe(&self, raw: &[u8], _: Direction) -> String {
        String::from_utf8_lossy(raw).trim().to_string()
    }
}

fn text_codecs() -> CodecFactory {
    Arc::new(|_: Family| Box::new(TextCodec) as Box<dyn Codec>)
}

fn config(server: SocketAddr, devices: u32) -> FleetConfig {
    FleetConfig {
        server: server.to_string(),
        devices,
        protocol: ProtocolChoice::Bkv,
        heartbeat: Duration::from_millis(300),
        reconnect_delay: Duration::from_millis(200),
        ramp_per_sec: 200.0,
        seed: 7,
        ..FleetConfig::default()
    }
}

/// Waits (bounded) until `cond` holds.
pub(crate) async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("a pile connects")
        .expect("accept")
}

/// Reads what a connection says for `for_ms`; `None` on EOF.
async fn read_for(conn: &mut TcpStream, for_ms: u64) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(for_ms);
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn call(
    fleet: &FleetHandle,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = pile_sim::control::router(fleet.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test]
async fn every_pile_connects_and_the_control_api_reports_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fleet = FleetHandle::start_with(config(listener.local_addr().unwrap(), 3), text_codecs())
        .await
        .unwrap();
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(accept(&listener).await.0);
    }
    wait_for("all online", || fleet.summary().online == 3).await;
    let first = read_for(&mut conns[0], 400).await.unwrap();
    assert!(first.starts_with("82210225000520 Heartbeat\n"), "{first}");

    let (status, piles) = call(&fleet, "GET", "/piles", "").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<_> = piles
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["82210225000520", "82210225000521", "82210225000522"]);

    let (status, pile) = call(&fleet, "POST", "/piles/82210225000521/ports/2/plug", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pile["ports"][1]["state"], "plugged");
    assert_eq!(pile["connection"], "online");
    assert_eq!(pile["pending_replay"], 0);
    let (status, pile) = call(&fleet, "POST", "/piles/82210225000521/ports/2/unplug", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pile["ports"][1]["state"], "idle");

    let (status, _) = call(&fleet, "GET", "/piles/nope", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&fleet, "POST", "/piles/82210225000521/ports/9/plug", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(
        &fleet,
        "POST",
        "/piles/82210225000521/faults",
        r#"{"kind":"meteor","secs":1}"#,
    )
    .await;
    assert!(status.is_client_error());

    let (status, frames) = call(&fleet, "GET", "/piles/82210225000520/frames", "").await;
    assert_eq!(status, StatusCode::OK);
    let first = &frames.as_array().unwrap()[0];
    assert_eq!(first["dir"], "up");
    assert_eq!(first["decoded"], "82210225000520 Heartbeat");
    assert!(first["hex"].as_str().unwrap().starts_with("3832"));

    let (status, fleet_json) = call(&fleet, "GET", "/fleet", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fleet_json["seed"], 7);
    assert_eq!(fleet_json["online"], 3);
    fleet.shutdown().await;
    for c in &mut conns {
        assert_eq!(
            read_for(c, 2000).await.map(|_| ()),
            None,
            "shutdown closes cleanly"
        );
    }
}

#[tokio::test]
async fn a_network_drop_sends_no_fin_and_the_pile_comes_back_after_the_delay() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fleet = FleetHandle::start_with(config(listener.local_addr().unwrap(), 1), text_codecs())
        .await
        .unwrap();
    let (mut old, _) = accept(&listener).await;
    wait_for("online", || fleet.summary().online == 1).await;
    let id = "82210225000520";
    let (status, pile) = call(&fleet, "POST", &format!("/piles/{id}/network/drop"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pile["connection"], "network_down");
    read_for(&mut old, 100).await; // drain what was sent before the drop
    let silent = read_for(&mut old, 1000).await;
    assert_eq!(
        silent.as_deref(),
        Some(""),
        "the old socket stays open and silent"
    );
    let (status, _) = call(&fleet, "POST", &format!("/piles/{id}/network/restore"), "").await;
    assert_eq!(status, StatusCode::OK);
    let (mut new, _) = accept(&listener).await;
    let hello = read_for(&mut new, 200).await.unwrap();
    assert!(hello.starts_with(&format!("{id} Heartbeat")), "{hello}");
    assert_eq!(
        read_for(&mut old, 1000).await,
        None,
        "the old socket is reset once the pile is back"
    );

    // A timed drop restores itself.
    fleet.drop_network(id, Some(1)).unwrap();
    wait_for("dropped", || fleet.summary().network_down == 1).await;
    let _third = accept(&listener).await;
    wait_for("back online", || fleet.summary().online == 1).await;

    // A clean close is a FIN, and the pile dials in again.
    let (mut conn, _) = _third;
    fleet.close(id).unwrap();
    read_for(&mut conn, 100).await;
    assert_eq!(read_for(&mut conn, 1000).await, None, "close sends a FIN");
    let _fourth = accept(&listener).await;
    fleet.shutdown().await;
}

#[tokio::test]
async fn fleet_faults_hit_a_seeded_share_of_the_fleet() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept_all = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c);
        }
    });
    let fleet = FleetHandle::start_with(config(addr, 10), text_codecs())
        .await
        .unwrap();
    let (status, reply) = call(
        &fleet,
        "POST",
        "/fleet/faults",
        r#"{"share":0.3,"kind":"black_hole","secs":60}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["count"], 3);
    let hit: Vec<String> = serde_json::from_value(reply["piles"].clone()).unwrap();
    let again = fleet.fleet_faults(0.3, FaultKind::BlackHole, 60).unwrap();
    assert_eq!(hit, again, "the same seed picks the same piles");
    let snap = fleet.pile_snapshot(&hit[0]).unwrap();
    assert_eq!(snap.faults[0].kind, FaultKind::BlackHole);
    let (status, _) = call(
        &fleet,
        "POST",
        "/fleet/faults",
        r#"{"share":1.5,"kind":"garbage","secs":1}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    fleet.shutdown().await;
    accept_all.abort();
}

#[tokio::test]
async fn piles_bind_to_the_source_addresses_they_are_given() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = FleetConfig {
        source_ips: Some("127.0.0.2-127.0.0.3".parse().unwrap()),
        ..config(listener.local_addr().unwrap(), 3)
    };
    let fleet = FleetHandle::start_with(cfg, text_codecs()).await.unwrap();
    let mut peers = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..3 {
        let (c, peer) = accept(&listener).await;
        peers.push(peer.ip().to_string());
        conns.push(c);
    }
    peers.sort();
    assert_eq!(peers, ["127.0.0.2", "127.0.0.2", "127.0.0.3"]);
    fleet.shutdown().await;
}

#[tokio::test]
async fn a_pile_dials_the_next_server_after_a_failed_connect_and_after_a_drop() {
    // A: a port that refuses connections. B: accepts, then drops the connection. C: keeps it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = FleetConfig {
        server: format!(
            "{dead},{},{}",
            b.local_addr().unwrap(),
            c.local_addr().unwrap()
        ),
        ..config(dead, 1)
    };
    let fleet = FleetHandle::start_with(cfg, text_codecs()).await.unwrap();

    // After A refused, the pile dials B; B hangs up on it.
    let (conn_b, _) = tokio::time::timeout(Duration::from_secs(10), accept(&b))
        .await
        .expect("the pile moved on to B");
    drop(conn_b);
    // The drop sends it to C, not back to B.
    let (mut conn_c, _) = tokio::time::timeout(Duration::from_secs(10), accept(&c))
        .await
        .expect("the pile moved on to C after B dropped it");
    let said = read_for(&mut conn_c, 500)
        .await
        .expect("C keeps the connection");
    assert!(!said.is_empty(), "the pile talks to C");
    let s = fleet
        .pile_snapshot(&fleet.piles().next().unwrap().id())
        .unwrap();
    assert_eq!(s.connection, "online");
    fleet.shutdown().await;
}
