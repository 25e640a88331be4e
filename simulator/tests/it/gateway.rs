//! Virtual piles against the real gateway (pile-server embedded on port 0,
//! temporary SQLite), in real time with short periods.

use std::time::Duration;

use pile_protocol::Family;
use pile_server::Config;
use pile_sim::config::{FleetConfig, ProtocolChoice};
use pile_sim::fault::FaultKind;
use pile_sim::fleet::FleetHandle;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

struct Gateway {
    http: String,
    devices: std::net::SocketAddr,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn gateway() -> Gateway {
    let dir = std::env::temp_dir().join("pile-sim-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join(format!("{}.db", rand::random::<u64>()));
    let config = Config {
        database_url: format!("sqlite://{}", db.display()),
        api_keys: vec!["sim-key".into()],
        flush_interval: Duration::from_millis(20),
        // Piles heartbeat every second here, so a 3 s silence is offline.
        offline_after: Duration::from_secs(3),
        ..Config::default()
    };
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let devices = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let app = pile_server::start(config, http, devices, shutdown.clone())
        .await
        .expect("the gateway starts");
    Gateway {
        http: format!("http://{}", app.http_addr),
        devices: app.device_addr,
        client: reqwest::Client::new(),
        shutdown,
    }
}

impl Gateway {
    async fn get(&self, path: &str) -> Value {
        let resp = self
            .client
            .get(format!("{}{path}", self.http))
            .header("X-Api-Key", "sim-key")
            .send()
            .await
            .unwrap();
        resp.json().await.unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let resp = self
            .client
            .post(format!("{}{path}", self.http))
            .header("X-Api-Key", "sim-key")
            .json(&body)
            .send()
            .await
            .unwrap();
        resp.json().await.unwrap()
    }

    /// Polls the API until `f` accepts the `data` of `path` (bounded).
    async fn until(&self, what: &str, path: &str, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..secs * 10 {
            last = self.get(path).await;
            if f(&last["data"]) {
                return last["data"].clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for {what}; last {path}: {last:#}");
    }

    async fn online(&self, id: &str) {
        self.until(
            "the pile online",
            &format!("/api/v1/third/devices/{id}"),
            10,
            |d| d["online"] == true,
        )
        .await;
    }
}

async fn fleet(gw: &Gateway, family: Family, devices: u32) -> FleetHandle {
    FleetHandle::start(FleetConfig {
        server: gw.devices.to_string(),
        devices,
        protocol: match family {
            Family::Bkv => ProtocolChoice::Bkv,
            Family::Ap3000 => ProtocolChoice::Ap3000,
        },
        heartbeat: Duration::from_secs(1),
        reconnect_delay: Duration::from_millis(500),
        plug_delay: Duration::from_millis(300),
        resend_after: Duration::from_secs(2),
        seed: 11,
        ..FleetConfig::default()
    })
    .await
    .unwrap()
}

fn completed(d: &Value) -> bool {
    d["status"] == "completed"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ap3000_charge_by_time_is_settled_by_the_gateway() {
    let gw = gateway().await;
    let _fleet = fleet(&gw, Family::Ap3000, 1).await;
    gw.online("04AB373B").await;
    let r = gw
        .post(
            "/api/v1/third/devices/04AB373B/charge",
            json!({"port_no": 2, "charge_mode": 1, "duration": 4, "amount": 100, "order_no": "sim-ap-1"}),
        )
        .await;
    assert_eq!(r["code"], 0, "{r:#}");
    let o = gw
        .until("completion", "/api/v1/third/orders/sim-ap-1", 15, completed)
        .await;
    assert_eq!(o["end_reason"], 1, "target reached: {o:#}");
    let d = o["duration_sec"].as_i64().unwrap();
    assert!((3..=5).contains(&d), "{o:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_firmware_ap3000_pile_starts_reports_and_settles() {
    let gw = gateway().await;
    let fleet = FleetHandle::start(FleetConfig {
        server: gw.devices.to_string(),
        devices: 1,
        protocol: ProtocolChoice::Ap3000,
        heartbeat: Duration::from_secs(1),
        reconnect_delay: Duration::from_millis(500),
        resend_after: Duration::from_secs(2),
        seed: 11,
        // Before V6.2: one-byte 0x82 answers, 0x06 and 0x03 without their
        // later fields, no 0x22, no power-board version in 0x20.
        firmware: pile_sim::firmware::FirmwarePlan::parse(["ap3000=v6.1"]).unwrap(),
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    let id = "04AB373B";
    gw.online(id).await;
    assert_eq!(fleet.pile_snapshot(id).unwrap().firmware, "ap3000 V6.1");
    let r = gw
        .post(
            &format!("/api/v1/third/devices/{id}/charge"),
            json!({"port_no": 1, "charge_mode": 1, "duration": 5, "amount": 100, "order_no": "sim-old-1"}),
        )
        .await;
    assert_eq!(r["code"], 0, "{r:#}");
    gw.until("charging", "/api/v1/third/orders/sim-old-1", 10, |d| {
        d["status"] == "charging"
    })
    .await;
    let o = gw
        .until(
            "completion",
            "/api/v1/third/orders/sim-old-1",
            15,
            completed,
        )
        .await;
    assert_eq!(o["end_reason"], 1, "target reached: {o:#}");
    let d = o["duration_sec"].as_i64().unwrap();
    assert!((4..=6).contains(&d), "{o:#}");
    let progress = gw.get("/api/v1/third/orders/sim-old-1/progress").await;
    assert!(
        progress["data"].as_array().is_some_and(|p| !p.is_empty()),
        "short 0x06 power heartbeats are progress: {progress:#}"
    );
    // What went over the wire really was the old layout.
    let frames = fleet.frames(id).unwrap();
    let answer = frames
        .iter()
        .find(|f| f.decoded.contains("start_stop_reply"))
        .expect("the 0x82 answer");
    assert!(answer.decoded.contains("pre-V6.2"), "{answer:?}");
    assert_eq!(answer.hex.len(), 15 * 2, "a one-byte answer: {answer:?}");

    // And a remote stop of an old pile: the 0x82 stop is answered with one byte too.
    let r = gw
        .post(
            &format!("/api/v1/third/devices/{id}/charge"),
            json!({"port_no": 2, "charge_mode": 1, "duration": 600, "amount": 100, "order_no": "sim-old-2"}),
        )
        .await;
    assert_eq!(r["code"], 0, "{r:#}");
    gw.until("charging", "/api/v1/third/orders/sim-old-2", 10, |d| {
        d["status"] == "charging"
    })
    .await;
    let r = gw
        .post(
            &format!("/api/v1/third/devices/{id}/stop"),
            json!({"port_no": 2}),
        )
        .await;
    assert_eq!(r["code"], 0, "{r:#}");
    let o = gw
        .until(
            "the stop settled",
            "/api/v1/third/orders/sim-old-2",
            10,
            completed,
        )
        .await;
    assert_eq!(o["end_reason"], 3, "remote stop: {o:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_that_ends_while_offline_is_settled_after_the_reconnect() {
    let gw = gateway().await;
    let fleet = fleet(&gw, Family::Ap3000, 1).await;
    gw.online("04AB373B").await;
    let r = gw
        .post(
            "/api/v1/third/devices/04AB373B/charge",
            json!({"port_no": 1, "charge_mode": 1, "duration": 4, "amount": 100, "order_no": "sim-ap-off"}),
        )
        .await;
    assert_eq!(r["code"], 0, "{r:#}");
    gw.until("charging", "/api/v1/third/orders/sim-ap-off", 10, |d| {
        d["status"] == "charging"
    })
    .await;
    fleet.drop_network("04AB373B", Some(8)).unwrap();
    // The 4 s charge ends while the cable is out: the pile keeps its settlement.
    crate::fleet::wait_for("the pile to end the charge offline", || {
        fleet
            .pile_snapshot("04AB373B")
            .is_ok_and(|s| s.pending_acks == 1)
    })
    .await;
    let o = gw.get("/api/v1/third/orders/sim-ap-off").await;
    assert_eq!(
        o["data"]["status"], "charging",
        "the gateway has not heard the end yet"
    );
    assert_eq!(fleet.pile_snapshot("04AB373B").unwrap().pending_acks, 1);
    let o = gw
        .until(
            "the replayed settlement",
            "/api/v1/third/orders/sim-ap-off",
            15,
            completed,
        )
        .await;
    let d = o["duration_sec"].as_i64().unwrap();
    assert!((3..=5).contains(&d), "the right duration: {o:#}");
    // The gateway acknowledged the replayed settlement, so the pile's EEPROM empties.
    crate::fleet::wait_for("the pile to drop its acknowledged settlement", || {
        fleet
            .pile_snapshot("04AB373B")
            .is_ok_and(|s| s.pending_acks == 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bkv_charge_is_started_and_stopped_through_the_gateway() {
    let gw = gateway().await;
    let fleet = fleet(&gw, Family::Bkv, 1).await;
    let id = "82210225000520";
    gw.online(id).await;
    let r = gw
        .post(
            &format!("/api/v1/third/devices/{id}/charge"),
            json!({"port_no": 3, "charge_mode": 1, "duration": 600, "amount": 100, "order_no": "sim-bkv-1"}),
        )
        .await;
    assert_eq!(r["code"], 0, "{r:#}");
    gw.until("charging", "/api/v1/third/orders/sim-bkv-1", 10, |d| {
        d["status"] == "charging"
    })
    .await;
    crate::fleet::wait_for("the pile's port 3 charging", || {
        fleet
            .pile_snapshot(id)
            .is_ok_and(|s| s.ports[2].state == "charging")
    })
    .await;
    let r = gw
        .post(
            &format!("/api/v1/third/devices/{id}/stop"),
            json!({"port_no": 3}),
        )
        .await;
    assert_eq!(r["code"], 0, "{r:#}");
    let o = gw
        .until(
            "completion",
            "/api/v1/third/orders/sim-bkv-1",
            10,
            completed,
        )
        .await;
    assert_eq!(o["end_reason"], 3, "remote stop: {o:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_kind_leaves_the_gateway_serving_the_other_piles() {
    let gw = gateway().await;
    let fleet = fleet(&gw, Family::Ap3000, 12).await;
    let ids: Vec<String> = fleet.piles().map(|p| p.id()).collect();
    for id in &ids {
        gw.online(id).await;
    }
    for (kind, id) in FaultKind::ALL.iter().zip(&ids) {
        fleet.inject_fault(id, *kind, 4).unwrap();
    }
    let healthy = ids.last().unwrap();
    let r = gw
        .post(
            &format!("/api/v1/third/devices/{healthy}/charge"),
            json!({"port_no": 1, "charge_mode": 1, "duration": 3, "amount": 100, "order_no": "sim-healthy"}),
        )
        .await;
    assert_eq!(r["code"], 0, "{r:#}");
    gw.until(
        "the healthy pile's charge",
        "/api/v1/third/orders/sim-healthy",
        15,
        completed,
    )
    .await;
    // After the faults every pile is served again.
    for id in &ids {
        gw.online(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_start_fails_the_order_and_an_unplug_ends_a_charge() {
    let gw = gateway().await;
    let fleet = fleet(&gw, Family::Ap3000, 1).await;
    let id = "04AB373B";
    gw.online(id).await;
    fleet.unplug(id, 3).unwrap();
    let r = gw
        .post(
            &format!("/api/v1/third/devices/{id}/charge"),
            json!({"port_no": 3, "charge_mode": 1, "duration": 60, "amount": 100, "order_no": "sim-refused"}),
        )
        .await;
    assert_eq!(r["code"], 0, "{r:#}");
    let o = gw
        .until("the failure", "/api/v1/third/orders/sim-refused", 10, |d| {
            d["status"] == "failed"
        })
        .await;
    assert_eq!(o["end_reason"], 12, "start rejected by the device: {o:#}");

    let r = gw
        .post(
            &format!("/api/v1/third/devices/{id}/charge"),
            json!({"port_no": 4, "charge_mode": 4, "price_per_kwh": 100, "order_no": "sim-unplug"}),
        )
        .await;
    assert_eq!(r["code"], 0, "{r:#}");
    gw.until("charging", "/api/v1/third/orders/sim-unplug", 10, |d| {
        d["status"] == "charging"
    })
    .await;
    crate::fleet::wait_for("the pile's port 4 charging", || {
        fleet
            .pile_snapshot(id)
            .is_ok_and(|s| s.ports[3].state == "charging")
    })
    .await;
    fleet.unplug(id, 4).unwrap();
    let o = gw
        .until(
            "completion",
            "/api/v1/third/orders/sim-unplug",
            10,
            completed,
        )
        .await;
    assert_eq!(o["end_reason"], 4, "unplugged: {o:#}");
}

fn command_done(d: &Value) -> bool {
    matches!(
        d["status"].as_str(),
        Some("acked" | "refused" | "expired" | "superseded")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locate_sounds_an_ap3000_pile_and_is_refused_by_a_bkv_one() {
    let gw = gateway().await;
    let ap = fleet(&gw, Family::Ap3000, 1).await;
    let _bkv = fleet(&gw, Family::Bkv, 1).await;
    let (ap_id, bkv_id) = ("04AB373B", "82210225000520");
    gw.online(ap_id).await;
    gw.online(bkv_id).await;

    let r = gw
        .post(
            &format!("/api/v1/third/devices/{ap_id}/locate"),
            json!({"seconds": 30}),
        )
        .await;
    assert_eq!(r["code"], 0, "{r:#}");
    assert_eq!(r["data"]["command"], "locate", "{r:#}");
    let id = r["data"]["id"].as_i64().unwrap();
    let c = gw
        .until(
            "the locate answered",
            &format!("/api/v1/third/devices/{ap_id}/commands/{id}"),
            10,
            command_done,
        )
        .await;
    assert_eq!(c["status"], "acked", "{c:#}");
    assert!(
        ap.pile_snapshot(ap_id).unwrap().locating,
        "the pile plays the locate prompt"
    );

    let r = gw
        .post(&format!("/api/v1/third/devices/{bkv_id}/locate"), json!({}))
        .await;
    assert_eq!(r["code"], 0, "{r:#}");
    let id = r["data"]["id"].as_i64().unwrap();
    let c = gw
        .until(
            "the BKV locate refused",
            &format!("/api/v1/third/devices/{bkv_id}/commands/{id}"),
            10,
            command_done,
        )
        .await;
    assert_eq!(c["status"], "refused", "{c:#}");
    assert_eq!(c["result"], "not supported by this device", "{c:#}");

    // A command is looked up under its own device only.
    let other = gw
        .get(&format!("/api/v1/third/devices/{ap_id}/commands/{id}"))
        .await;
    assert_eq!(other["code"], 404, "{other:#}");
    let bad = gw
        .post(
            &format!("/api/v1/third/devices/{ap_id}/locate"),
            json!({"seconds": 0}),
        )
        .await;
    assert_eq!(bad["code"], 400, "{bad:#}");
    assert!(
        bad["message"].as_str().unwrap().contains("seconds"),
        "{bad:#}"
    );
    let unknown = gw
        .post("/api/v1/third/devices/FFFF0000/locate", json!({}))
        .await;
    assert_eq!(unknown["code"], 404, "{unknown:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_query_is_answered_and_refreshes_the_device_view() {
    let gw = gateway().await;
    let bkv = fleet(&gw, Family::Bkv, 1).await;
    let ap = fleet(&gw, Family::Ap3000, 1).await;
    for (id, port) in [("82210225000520", 2), ("04AB373B", 1)] {
        gw.online(id).await;
        let r = gw
            .post(
                &format!("/api/v1/third/devices/{id}/query"),
                json!({"port_no": port}),
            )
            .await;
        assert_eq!(r["code"], 0, "{r:#}");
        assert_eq!(r["data"]["port_no"], port, "{r:#}");
        let cid = r["data"]["id"].as_i64().unwrap();
        let c = gw
            .until(
                "the query answered",
                &format!("/api/v1/third/devices/{id}/commands/{cid}"),
                10,
                command_done,
            )
            .await;
        assert_eq!(c["status"], "acked", "{id}: {c:#}");
        let d = gw.get(&format!("/api/v1/third/devices/{id}")).await;
        let p = &d["data"]["ports"][port - 1];
        assert_eq!(p["port_no"], port, "{d:#}");
        // A simulated AP3000 pile has a cable in every socket after its plug delay.
        assert!(
            matches!(p["status"].as_str(), Some("idle" | "plugged")),
            "{d:#}"
        );
        let bad = gw
            .post(
                &format!("/api/v1/third/devices/{id}/query"),
                json!({"port_no": 999}),
            )
            .await;
        assert_eq!(bad["code"], 400, "{bad:#}");
        assert!(
            bad["message"].as_str().unwrap().contains("port_no"),
            "{bad:#}"
        );
    }
    drop((bkv, ap));
}
