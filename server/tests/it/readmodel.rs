//! Issue 14, the read model: device, device-list and active-order reads answered from memory
//! equal what the store says after every step of a charge, never lag a commit, and need no
//! database.

use crate::*;
use pile_api::OrderStatus;
use pile_server::core::PortObs;
use pile_server::domain::EndReason;
use pile_server::service::read::DeviceParts;
use pile_server::service::{Lookup, PageItem, ReadModel};
use serde_json::json;

/// The read model serves from memory only where this gateway is the database's one writer
/// (SQLite). On PostgreSQL every gateway takes part in the cluster and other instances write
/// behind its back, so it answers from the store there (see the last test).
macro_rules! sqlite_only {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                if let Some(app) = $crate::spawn_app_on($crate::Db::Sqlite, |_| {}).await {
                    ($body)(app).await;
                }
            }
        }
    };
}

fn memory(item: &PageItem) -> DeviceParts {
    match item {
        PageItem::Memory(held) => held.parts(),
        PageItem::Store(id) => panic!("{id} is being written"),
    }
}

/// The read model, quiescent (the writer flushed), answers exactly what the store holds for
/// the device, its list page and `order_no`.
async fn same_as_store(app: &TestApp, device_id: &str, order_no: Option<&str>) {
    let service = &app.service;
    service.writer.flush().await;
    let store = &service.store;
    let stored = store
        .device_with_ports(device_id)
        .await
        .unwrap()
        .expect("the store knows the device");
    match service.read.device(device_id) {
        Lookup::Found(parts) => assert_eq!(parts, stored, "device {device_id}"),
        other => panic!("device {device_id} not answered from memory: {other:?}"),
    }
    let (rows, total) = store.devices(None, 1, 50).await.unwrap();
    let (page, mem_total) = service
        .read
        .page(None, 1, 50)
        .expect("the list is answered from memory");
    assert_eq!(mem_total, total, "list total");
    assert_eq!(
        page.iter().map(|p| memory(p).0).collect::<Vec<_>>(),
        rows,
        "list rows"
    );
    for online in [true, false] {
        let (rows, total) = store.devices(Some(online), 1, 50).await.unwrap();
        let (page, mem_total) = service.read.page(Some(online), 1, 50).unwrap();
        assert_eq!(mem_total, total, "online={online} total");
        assert_eq!(page.iter().map(|p| memory(p).0).collect::<Vec<_>>(), rows);
    }
    if let Some(no) = order_no {
        let stored = store.order(no).await.unwrap().expect("order stored");
        match service.read.active_order(no) {
            Some(o) => {
                assert!(matches!(
                    stored.status,
                    OrderStatus::Pending | OrderStatus::Charging
                ));
                assert_eq!(o, stored, "order {no}");
            }
            None => assert!(
                !matches!(stored.status, OrderStatus::Pending | OrderStatus::Charging),
                "active order {no} not answered from memory"
            ),
        }
    }
    // And a rebuild from the store (a restart) gives the same.
    let fresh = ReadModel::new();
    fresh.rebuild(store).await.unwrap();
    assert_eq!(fresh.device(device_id), service.read.device(device_id));
    assert_eq!(fresh.page(None, 1, 50), service.read.page(None, 1, 50));
    if let Some(no) = order_no {
        assert_eq!(fresh.active_order(no), service.read.active_order(no));
    }
}

sqlite_only!(
    the_read_model_equals_the_store_through_a_charge,
    |app: TestApp| async move {
        let mut pile = app.connect_fake("RM0001", "ap3000", 2).await;
        let _other = app.connect_fake("RM0002", "ap3000", 2).await;
        same_as_store(&app, "RM0001", None).await;

        pile.ports(vec![(
            PortObs {
                port_no: 1,
                socket_no: None,
                hole: None,
                status: pile_api::PortStatus::Idle,
                power_dw: 0,
                device_ref: None,
            },
            None,
        )])
        .await;
        same_as_store(&app, "RM0001", None).await;

        // Start: pending, on the port.
        envelope(
            app.charge(
                "RM0001",
                json!({"port_no": 1, "charge_mode": 1, "duration": 600, "amount": 500,
                       "price_per_kwh": 150, "service_fee": 50, "order_no": "rm-1"}),
            )
            .await,
            200,
        )
        .await;
        same_as_store(&app, "RM0001", Some("rm-1")).await;
        let start = pile.next_command().await;

        // Confirm: charging.
        pile.confirm(&start).await;
        same_as_store(&app, "RM0001", Some("rm-1")).await;
        assert_eq!(
            app.service.read.active_order("rm-1").unwrap().status,
            OrderStatus::Charging
        );

        // Progress: the live figures.
        pile.progress(progress_obs(1, 60, 25, 1_800)).await;
        same_as_store(&app, "RM0001", Some("rm-1")).await;
        assert_eq!(app.service.read.active_order("rm-1").unwrap().energy_wh, 25);

        // Offline with the order open, then back.
        app.disconnect_fake(&pile).await;
        same_as_store(&app, "RM0001", Some("rm-1")).await;
        let Lookup::Found((d, ..)) = app.service.read.device("RM0001") else {
            panic!("device not in memory");
        };
        assert!(!d.online);
        let mut pile = app.connect_fake("RM0001", "ap3000", 2).await;
        same_as_store(&app, "RM0001", Some("rm-1")).await;

        // End: settled, off the port and out of the active orders.
        let (committed, settled) = pile
            .end(ap_end("rm-1", 1, 40, EndReason::TargetReached))
            .await;
        assert!(committed);
        assert_eq!(settled.as_deref(), Some("rm-1"));
        same_as_store(&app, "RM0001", Some("rm-1")).await;
        assert_eq!(app.service.read.active_order("rm-1"), None);

        // A restart rebuilds the same state from the store.
        let url = app.stop().await;
        let again = spawn_with(pile_server::config::Config {
            database_url: url,
            api_keys: vec!["test-key".into()],
            db_pool: 8,
            flush_interval: std::time::Duration::from_millis(20),
            ..Default::default()
        })
        .await;
        same_as_store(&again, "RM0001", Some("rm-1")).await;
        let v = envelope(
            again.get("/api/v1/third/orders/rm-1").send().await.unwrap(),
            200,
        )
        .await;
        assert_eq!(v["data"]["status"], "completed");
    }
);

sqlite_only!(
    device_and_active_order_reads_do_not_touch_the_database,
    |app: TestApp| async move {
        let pile = app.connect_fake("RM0100", "ap3000", 2).await;
        envelope(
            app.charge(
                "RM0100",
                json!({"port_no": 2, "charge_mode": 1, "duration": 600, "amount": 500,
                       "price_per_kwh": 150, "service_fee": 50, "order_no": "rm-db"}),
            )
            .await,
            200,
        )
        .await;
        app.service.writer.flush().await;
        // No database from here on: every read below can only come from memory.
        app.service.store.close().await;
        assert!(
            app.service.store.ping().await.is_err(),
            "the pool is closed"
        );
        let v = envelope(
            app.get("/api/v1/third/devices/RM0100")
                .send()
                .await
                .unwrap(),
            200,
        )
        .await;
        assert_eq!(v["data"]["device_id"], "RM0100");
        assert_eq!(v["data"]["online"], true);
        assert_eq!(v["data"]["ports"][1]["order_no"], "rm-db");
        let v = envelope(
            app.get("/api/v1/third/devices?page=1&size=50")
                .send()
                .await
                .unwrap(),
            200,
        )
        .await;
        assert_eq!(v["data"]["total"], 1);
        let v = envelope(
            app.get("/api/v1/third/orders/rm-db").send().await.unwrap(),
            200,
        )
        .await;
        assert_eq!(v["data"]["status"], "pending");
        // An unknown device is known to be unknown without the store, too.
        envelope(
            app.get("/api/v1/third/devices/RM0199")
                .send()
                .await
                .unwrap(),
            404,
        )
        .await;
        // The control: what the read model does not hold needs the store, which is gone.
        let r = app.get("/api/v1/third/orders/nope").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 503);
        drop(pile);
    }
);

both!(
    a_committed_change_is_in_the_next_read,
    |app: TestApp| async move {
        let _pile = app.connect_fake("RM0200", "ap3000", 2).await;
        for round in 0..3 {
            let no = format!("rm-s{round}");
            // No flush, no wait: the answer of the write is the commit.
            envelope(
                app.charge(
                    "RM0200",
                    json!({"port_no": 1, "charge_mode": 1, "duration": 600, "amount": 500,
                           "price_per_kwh": 150, "service_fee": 50, "order_no": no}),
                )
                .await,
                200,
            )
            .await;
            let d = envelope(
                app.get("/api/v1/third/devices/RM0200")
                    .send()
                    .await
                    .unwrap(),
                200,
            )
            .await;
            assert_eq!(d["data"]["ports"][0]["order_no"], no.as_str());
            let o = envelope(
                app.get(&format!("/api/v1/third/orders/{no}"))
                    .send()
                    .await
                    .unwrap(),
                200,
            )
            .await;
            assert_eq!(o["data"]["status"], "pending");
            // Stopped before its start went out: cancelled at once.
            envelope(
                app.post("/api/v1/third/devices/RM0200/stop", json!({"port_no": 1}))
                    .send()
                    .await
                    .unwrap(),
                200,
            )
            .await;
            let d = envelope(
                app.get("/api/v1/third/devices/RM0200")
                    .send()
                    .await
                    .unwrap(),
                200,
            )
            .await;
            assert!(d["data"]["ports"][0]["order_no"].is_null(), "{d}");
            let o = envelope(
                app.get(&format!("/api/v1/third/orders/{no}"))
                    .send()
                    .await
                    .unwrap(),
                200,
            )
            .await;
            assert_eq!(o["data"]["status"], "cancelled");
            assert_eq!(app.service.read.active_order(&no), None);
        }
    }
);

sqlite_only!(
    a_write_in_flight_or_unfinished_sends_reads_to_the_store,
    |app: TestApp| async move {
        let _pile = app.connect_fake("RM0300", "ap3000", 2).await;
        let _other = app.connect_fake("RM0301", "ap3000", 2).await;
        app.service.writer.flush().await;
        let read = &app.service.read;
        assert!(matches!(read.device("RM0300"), Lookup::Found(_)));
        // Between a write's start and its refresh nothing is answered from memory.
        let guard = read.begin(["RM0300"]);
        assert_eq!(read.device("RM0300"), Lookup::Unknown);
        // The list: that device from the store, the others from memory; with a filter (its
        // `online` may be changing) all from the store.
        let (page, total) = read.page(None, 1, 50).unwrap();
        assert_eq!(total, 2);
        assert_eq!(page[0], PageItem::Store("RM0300".into()));
        assert!(matches!(page[1], PageItem::Memory(_)));
        assert_eq!(read.page(Some(true), 1, 50), None);
        // A device the model does not hold yet, being written, may join the list.
        let new = read.begin(["RM0000"]);
        assert_eq!(read.page(None, 1, 50), None);
        new.finish();
        // A guard dropped without its refresh (a cancelled request) leaves the device stale
        // until the sweeper reloads it.
        drop(guard);
        assert_eq!(read.device("RM0300"), Lookup::Unknown);
        assert!(!read.is_loaded());
        read.repair(&app.service.store).await;
        assert!(matches!(read.device("RM0300"), Lookup::Found(_)));
        assert!(read.is_loaded());
    }
);

mod a_shared_postgresql_is_read_from_the_store {
    use super::*;
    crate::pg!(async {
        // A gateway on PostgreSQL shares its database with other instances: nothing comes from
        // memory, and the answers are still right.
        let Some(app) = crate::spawn_app_on(crate::Db::Postgres, |_| {}).await else {
            return;
        };
        let _pile = app.connect_fake("RM0900", "ap3000", 2).await;
        app.service.writer.flush().await;
        assert_eq!(app.service.read.device("RM0900"), Lookup::Unknown);
        assert!(app.service.read.page(None, 1, 50).is_none());
        let v = envelope(
            app.get("/api/v1/third/devices/RM0900")
                .send()
                .await
                .unwrap(),
            200,
        )
        .await;
        assert_eq!(v["data"]["device_id"], "RM0900");
        assert_eq!(v["data"]["online"], true);
    });
}

mod rendered_views_follow_every_change {
    use super::*;

    /// The device's view as `GET /devices/{id}` answers it, and as the list shows it.
    async fn views(app: &TestApp, id: &str) -> (serde_json::Value, serde_json::Value) {
        let one = envelope(
            app.get(&format!("/api/v1/third/devices/{id}"))
                .send()
                .await
                .unwrap(),
            200,
        )
        .await["data"]
            .clone();
        let list = envelope(
            app.get("/api/v1/third/devices?page=1&size=50")
                .send()
                .await
                .unwrap(),
            200,
        )
        .await;
        let item = list["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device_id"] == id)
            .cloned()
            .expect("listed");
        (one, item)
    }

    #[tokio::test]
    async fn sqlite() {
        // The HTTP layer reuses a rendered view while the read model's install and the live
        // fields it shows are unchanged: every kind of change must still show at once.
        let clock = pile_server::clock::Clock::manual(1_764_000_000_000);
        let Some(app) = crate::spawn_app_on_clock(crate::Db::Sqlite, |_| {}, clock.clone()).await
        else {
            return;
        };
        let mut pile = app.connect_fake("RM0500", "ap3000", 2).await;
        app.service.writer.flush().await;
        let (a, item) = views(&app, "RM0500").await;
        assert_eq!(a, item, "the list shows the same view");
        assert_eq!(a["online"], true);
        assert_eq!(a, views(&app, "RM0500").await.0, "unchanged: the same");

        // A live field (the last frame's second) moves.
        clock.advance_ms(5_000);
        pile.live.seen(clock.now_ms());
        let (b, item) = views(&app, "RM0500").await;
        assert_eq!(b, item);
        assert_eq!(
            b["last_seen_at"].as_i64().unwrap(),
            a["last_seen_at"].as_i64().unwrap() + 5
        );

        // A committed change (a port report) re-renders.
        pile.ports(vec![(
            PortObs {
                port_no: 1,
                socket_no: None,
                hole: None,
                status: pile_api::PortStatus::Fault,
                power_dw: 0,
                device_ref: None,
            },
            None,
        )])
        .await;
        app.service.writer.flush().await;
        let (c, item) = views(&app, "RM0500").await;
        assert_eq!(c, item);
        assert_eq!(c["ports"][0]["status"], "fault", "{c}");

        // Offline: the registry entry is gone.
        app.disconnect_fake(&pile).await;
        let (d, item) = views(&app, "RM0500").await;
        assert_eq!(d, item);
        assert_eq!(d["online"], false);
        assert_eq!(d["ports"][0]["status"], "offline");

        // Back, on a new connection.
        let _again = app.connect_fake("RM0500", "ap3000", 2).await;
        app.service.writer.flush().await;
        let (e, item) = views(&app, "RM0500").await;
        assert_eq!(e, item);
        assert_eq!(e["online"], true);

        // A live field that is not a counter (the firmware it reports) changes.
        app.service.gateway.set_firmware("RM0500", "fw-2");
        let (f, item) = views(&app, "RM0500").await;
        assert_eq!(f, item);
        assert_eq!(f["firmware"], "fw-2");
    }
}
