//! The HTTP contract: auth, envelope, errors, lists, operations routes.

use crate::*;
use serde_json::json;

both!(
    requests_without_the_right_key_get_401_and_with_it_200,
    |app: TestApp| async move {
        let url = format!("{}/api/v1/third/devices", app.address);
        let missing = app.http.get(&url).send().await.unwrap();
        let v = envelope(missing, 401).await;
        assert_eq!(v["code"], 401);
        let wrong = app
            .http
            .get(&url)
            .header("X-Api-Key", "nope")
            .send()
            .await
            .unwrap();
        envelope(wrong, 401).await;
        let right = app.get("/api/v1/third/devices").send().await.unwrap();
        envelope(right, 200).await;
    }
);

both!(
    every_answer_is_an_envelope_with_a_request_id,
    |app: TestApp| async move {
        let resp = app
            .get("/api/v1/third/devices")
            .header("X-Request-Id", "req-abc")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-request-id"], "req-abc");
        let v = envelope(resp, 200).await;
        assert_eq!(v["code"], 0);
        assert_eq!(v["message"], "ok");
        assert_eq!(v["request_id"], "req-abc");
        assert!(v["timestamp"].as_i64().unwrap() > 1_700_000_000);
        assert!(v["data"].is_object());
        // Errors too, with a generated ID.
        let resp = app.get("/api/v1/third/devices/NOPE").send().await.unwrap();
        assert!(!resp.headers()["x-request-id"].is_empty());
        let v = envelope(resp, 404).await;
        assert_eq!(v["code"], 404);
        assert!(v["data"].is_null());
        assert!(!v["request_id"].as_str().unwrap().is_empty());
    }
);

both!(
    an_unknown_device_is_404_for_reads_and_charges,
    |app: TestApp| async move {
        envelope(
            app.get("/api/v1/third/devices/00000000")
                .send()
                .await
                .unwrap(),
            404,
        )
        .await;
        let v = envelope(
            app.charge(
                "00000000",
                json!({"port_no": 1, "charge_mode": 1, "duration": 60}),
            )
            .await,
            404,
        )
        .await;
        assert!(v["message"].as_str().unwrap().contains("not found"));
        envelope(
            app.get("/api/v1/third/orders/NOPE").send().await.unwrap(),
            404,
        )
        .await;
    }
);

both!(
    a_bad_charge_request_is_a_400_naming_the_field,
    |app: TestApp| async move {
        let _pile = app.connect_fake("82210225000520", "bkv", 4).await;
        let cases = [
            (json!({"charge_mode": 1, "duration": 60}), "port_no"),
            (
                json!({"port_no": 0, "charge_mode": 1, "duration": 60}),
                "port_no",
            ),
            (
                json!({"port_no": 5, "charge_mode": 1, "duration": 60}),
                "port_no",
            ),
            (
                json!({"port_no": "one", "charge_mode": 1, "duration": 60}),
                "port_no",
            ),
            (
                json!({"port_no": 1, "charge_mode": 9, "duration": 60}),
                "charge_mode",
            ),
            (
                json!({"port_no": 1, "charge_mode": 1, "duration": 0}),
                "duration",
            ),
            (
                json!({"port_no": 1, "charge_mode": 1, "duration": 60, "amount": -1}),
                "amount",
            ),
            (
                json!({"port_no": 1, "charge_mode": 1, "duration": 60, "amount": "5"}),
                "amount",
            ),
            (json!({"port_no": 1, "charge_mode": 2}), "energy_wh"),
            (
                json!({"port_no": 1, "charge_mode": 1, "duration": 60, "queue_if_offline": "no"}),
                "queue_if_offline",
            ),
            (
                json!({"port_no": 1, "charge_mode": 1, "duration": 60, "order_no": "bad id!"}),
                "order_no",
            ),
            (json!([1, 2]), "body"),
        ];
        for (body, field) in cases {
            let v = envelope(app.charge("82210225000520", body.clone()).await, 400).await;
            let msg = v["message"].as_str().unwrap();
            assert!(msg.contains(field), "{body} → {msg}");
            assert_eq!(v["code"], 400);
        }
        let resp = app
            .http
            .post(format!(
                "{}/api/v1/third/devices/82210225000520/charge",
                app.address
            ))
            .header("X-Api-Key", &app.api_key)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        let v = envelope(resp, 400).await;
        assert!(v["message"].as_str().unwrap().contains("body"));
        let v = envelope(
            app.get("/api/v1/third/orders?page=zero")
                .send()
                .await
                .unwrap(),
            400,
        )
        .await;
        assert!(v["message"].as_str().unwrap().contains("page"));
        let v = envelope(
            app.get("/api/v1/third/orders?status=lost")
                .send()
                .await
                .unwrap(),
            400,
        )
        .await;
        assert!(v["message"].as_str().unwrap().contains("status"));
    }
);

both!(
    a_second_charge_on_a_busy_port_is_409_port_is_busy,
    |app: TestApp| async move {
        let _pile = app.connect_fake("82210225000520", "bkv", 4).await;
        let body = json!({"port_no": 1, "charge_mode": 1, "duration": 300, "amount": 500});
        let first = envelope(app.charge("82210225000520", body.clone()).await, 200).await;
        assert_eq!(first["data"]["status"], "pending");
        let second = envelope(app.charge("82210225000520", body).await, 409).await;
        assert!(second["message"].as_str().unwrap().contains("port is busy"));
        // Another port is free.
        envelope(
            app.charge(
                "82210225000520",
                json!({"port_no": 2, "charge_mode": 1, "duration": 300}),
            )
            .await,
            200,
        )
        .await;
    }
);

both!(
    the_same_client_order_no_twice_is_one_order,
    |app: TestApp| async move {
        let _pile = app.connect_fake("82210225000520", "bkv", 4).await;
        let body =
            json!({"port_no": 1, "charge_mode": 1, "duration": 300, "order_no": "client-42"});
        let a = envelope(app.charge("82210225000520", body.clone()).await, 200).await;
        let b = envelope(app.charge("82210225000520", body).await, 200).await;
        assert_eq!(a["data"]["order_no"], "client-42");
        assert_eq!(a["data"], b["data"]);
        let page = app
            .client
            .orders(&pile_api::OrderListQuery::default())
            .await
            .unwrap();
        assert_eq!(page.total, 1);
    }
);

both!(
    paged_lists_count_every_match_not_only_the_page,
    |app: TestApp| async move {
        for i in 0..3 {
            let _ = app
                .connect_fake(&format!("8221022500052{i}"), "bkv", 4)
                .await;
        }
        for port in 1..=4 {
            envelope(
                app.charge(
                    "82210225000520",
                    json!({"port_no": port, "charge_mode": 1, "duration": 60}),
                )
                .await,
                200,
            )
            .await;
        }
        envelope(
            app.charge(
                "82210225000521",
                json!({"port_no": 1, "charge_mode": 1, "duration": 60}),
            )
            .await,
            200,
        )
        .await;
        let devices = app
            .client
            .devices(&pile_api::DeviceListQuery {
                online: Some(true),
                page: Some(1),
                size: Some(2),
            })
            .await
            .unwrap();
        assert_eq!(
            (
                devices.items.len(),
                devices.total,
                devices.page,
                devices.size
            ),
            (2, 3, 1, 2)
        );
        let orders = app
            .client
            .orders(&pile_api::OrderListQuery {
                device_id: Some("82210225000520".into()),
                page: Some(2),
                size: Some(3),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!((orders.items.len(), orders.total), (1, 4));
        let pending = app
            .client
            .orders(&pile_api::OrderListQuery {
                status: Some("pending".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(pending.total, 5);
        let offline = app
            .client
            .devices(&pile_api::DeviceListQuery {
                online: Some(false),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(offline.total, 0);
    }
);

both!(
    a_device_view_shows_ports_with_both_numberings,
    |app: TestApp| async move {
        let _pile = app.connect_fake("82210225000520", "bkv", 4).await;
        envelope(
            app.charge(
                "82210225000520",
                json!({"port_no": 3, "charge_mode": 1, "duration": 60, "order_no": "o-3"}),
            )
            .await,
            200,
        )
        .await;
        let d = app.client.device("82210225000520").await.unwrap();
        assert!(d.online);
        assert_eq!(d.protocol, "bkv");
        assert_eq!(d.firmware.as_deref(), Some("test-fw"));
        assert_eq!(d.ports.len(), 4);
        let p3 = &d.ports[2];
        assert_eq!((p3.port_no, p3.socket_no, p3.hole), (3, Some(2), Some(0)));
        assert_eq!(p3.order_no.as_deref(), Some("o-3"));
    }
);

both!(
    stats_and_consistency_report_their_figures,
    |app: TestApp| async move {
        let _pile = app.connect_fake("82210225000520", "bkv", 4).await;
        // A new device's row is batched: counts may lag it by one writer batch.
        let stats = eventually(|| async {
            let s = app.client.stats().await.ok()?;
            (s.tables.devices == 1).then_some(s)
        })
        .await;
        assert!(stats.db_pool.max >= 1);
        assert_eq!(stats.active_sessions, 1);
        assert!(
            stats.event_backlog >= 2,
            "device.registered and device.online are in the outbox"
        );
        let c = app.client.consistency().await.unwrap();
        assert!(c.orphan_orders.is_empty());
        assert!(c.stale_orders.is_empty());
        assert_eq!(c.commands.match_rate, 1.0);
        let raw = envelope(app.get("/api/v1/admin/stats").send().await.unwrap(), 200).await;
        for key in [
            "tables",
            "db_pool",
            "slow_queries",
            "slowest_query_ms",
            "log_counts",
            "event_backlog",
            "push_success_rate",
            "mean_push_latency_ms",
            "active_sessions",
        ] {
            assert!(raw["data"].get(key).is_some(), "stats.{key}");
        }
    }
);

both!(
    health_readiness_and_metrics_need_no_key,
    |app: TestApp| async move {
        let h = app
            .http
            .get(format!("{}/healthz", app.address))
            .send()
            .await
            .unwrap();
        envelope(h, 200).await;
        let r = app
            .http
            .get(format!("{}/readyz", app.address))
            .send()
            .await
            .unwrap();
        let v = envelope(r, 200).await;
        assert_eq!(v["data"]["checks"]["database"], "ok");
        assert_eq!(v["data"]["checks"]["device_listener"], "ok");
        let text = app
            .http
            .get(format!("{}/metrics", app.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for name in [
            "tcp_connections_accepted_total",
            "active_sessions",
            "orders_created_total",
            "orders_settled_total",
            "outbound_messages_sent_total",
            "heartbeats_total",
            "frame_errors_total",
            "http_request_duration_seconds",
        ] {
            assert!(text.contains(name), "metric {name} missing");
        }
    }
);

#[tokio::test]
async fn readiness_names_the_database_when_it_is_gone() {
    let app = spawn_app().await;
    app.service.store.close().await;
    let r = app
        .http
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    let v = envelope(r, 503).await;
    assert!(v["message"].as_str().unwrap().contains("database"));
    assert!(v["data"]["checks"]["database"]
        .as_str()
        .unwrap()
        .starts_with("failing"));
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_every_route_is_served() {
    let app = spawn_app().await;
    let doc: serde_json::Value = app
        .http
        .get(format!("{}/api/v1/openapi.json", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (method, path, _) in pile_server::http::ROUTES {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} in openapi"
        );
        let concrete = path
            .replace("{device_id}", "82210225000520")
            .replace("{order_no}", "x");
        let req = if *method == "post" {
            app.post(&concrete, json!({}))
        } else {
            app.get(&concrete)
        };
        let resp = req.send().await.unwrap();
        // A 404 here must be about the resource, never "no such route".
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert!(
            !text.contains("no such route"),
            "{method} {path} is not routed ({status})"
        );
    }
    let resp = app.get("/api/v1/third/nothing").send().await.unwrap();
    assert!(resp.headers().contains_key("x-request-id"));
    let v = envelope(resp, 404).await;
    assert!(v["message"].as_str().unwrap().contains("no such route"));
    assert!(!v["request_id"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn without_a_configured_key_one_is_generated_and_only_its_hash_stored() {
    let app = spawn_app_on(Db::Sqlite, |c| c.api_keys.clear())
        .await
        .unwrap();
    assert!(app.api_key.starts_with("pk_"));
    envelope(app.get("/api/v1/third/devices").send().await.unwrap(), 200).await;
    let key = app.api_key.clone();
    let url = app.stop().await;
    // Restart on the same database: no new key, and the old one still works.
    let app = spawn_app_on(Db::Sqlite, |c| {
        c.api_keys.clear();
        c.database_url = url;
    })
    .await
    .unwrap();
    assert!(
        !app.api_key.starts_with("pk_"),
        "no second key is generated"
    );
    let resp = app
        .http
        .get(format!("{}/api/v1/third/devices", app.address))
        .header("X-Api-Key", &key)
        .send()
        .await
        .unwrap();
    envelope(resp, 200).await;
}

#[tokio::test]
async fn a_per_key_rate_limit_answers_429_when_hit() {
    let app = spawn_app_on(Db::Sqlite, |c| c.rate_limit = Some(3))
        .await
        .unwrap();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(
            app.get("/api/v1/third/devices")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn an_oversized_body_is_refused() {
    let app = spawn_app_on(Db::Sqlite, |c| c.body_limit = 1024)
        .await
        .unwrap();
    let _pile = app.connect_fake("82210225000520", "bkv", 4).await;
    let big = "x".repeat(4096);
    let resp = app
        .charge(
            "82210225000520",
            json!({"port_no": 1, "charge_mode": 1, "duration": 60, "pad": big}),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 413);
}
