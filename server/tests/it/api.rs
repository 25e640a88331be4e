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
                json!({"port_no": 1, "charge_mode": 1, "amount": 0, "duration": 60}),
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
            (
                json!({"charge_mode": 1, "amount": 0, "duration": 60}),
                "port_no",
            ),
            (
                json!({"port_no": 0, "charge_mode": 1, "amount": 0, "duration": 60}),
                "port_no",
            ),
            (
                json!({"port_no": 5, "charge_mode": 1, "amount": 0, "duration": 60}),
                "port_no",
            ),
            (
                json!({"port_no": "one", "charge_mode": 1, "amount": 0, "duration": 60}),
                "port_no",
            ),
            (
                json!({"port_no": 1, "charge_mode": 9, "amount": 0, "duration": 60}),
                "charge_mode",
            ),
            (
                json!({"port_no": 1, "charge_mode": 1, "amount": 0, "duration": 0}),
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
            (
                json!({"port_no": 1, "charge_mode": 2, "amount": 0}),
                "energy_wh",
            ),
            (
                json!({"port_no": 1, "charge_mode": 1, "amount": 0, "duration": 60, "queue_if_offline": "no"}),
                "queue_if_offline",
            ),
            (
                json!({"port_no": 1, "charge_mode": 1, "amount": 0, "duration": 60, "order_no": "bad id!"}),
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
                json!({"port_no": 2, "charge_mode": 1, "amount": 0, "duration": 300}),
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
        let body = json!({"port_no": 1, "charge_mode": 1, "amount": 0, "duration": 300, "order_no": "client-42"});
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
                    json!({"port_no": port, "charge_mode": 1, "amount": 0, "duration": 60}),
                )
                .await,
                200,
            )
            .await;
        }
        envelope(
            app.charge(
                "82210225000521",
                json!({"port_no": 1, "charge_mode": 1, "amount": 0, "duration": 60}),
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
                json!({"port_no": 3, "charge_mode": 1, "amount": 0, "duration": 60, "order_no": "o-3"}),
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
            json!({"port_no": 1, "charge_mode": 1, "amount": 0, "duration": 60, "pad": big}),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 413);
}

// ---------------------------------------------------------------------------------------------
// The OpenAPI document against the router, and the contract's rough edges (issue #14).

async fn openapi_doc(app: &TestApp) -> serde_json::Value {
    let resp = app
        .http
        .get(format!("{}/api/v1/openapi.json", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.unwrap()
}

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// An error answer's envelope: its `code` is the HTTP status and `data` is null.
fn assert_error_envelope(v: &serde_json::Value, status: u16, what: &str) {
    assert_eq!(v["code"], status, "{what}: {v}");
    assert!(v["data"].is_null(), "{what}: {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    assert!(
        v["request_id"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
    assert!(v["timestamp"].as_i64().is_some(), "{what}: {v}");
}

#[tokio::test]
async fn every_route_is_in_the_openapi_document_with_the_statuses_it_answers() {
    let app = spawn_app().await;
    let _pile = app.connect_fake("82210225000520", "bkv", 4).await;
    let doc = openapi_doc(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["ApiKey"],
        json!({"type": "apiKey", "in": "header", "name": "X-Api-Key",
               "description": "An API key of the gateway (`--api-key`, or the one generated at first start)"})
    );
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path
            .replace("{device_id}", "82210225000520")
            .replace("{order_no}", "nope")
            .replace("{event_id}", "nope")
            .replace("{command_id}", "1");
        let url = format!("{}{}", app.address, concrete);
        for method in METHODS {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let Some(op) = item.get(method) else {
                // A method the document does not list is not served: 405 in the envelope.
                let resp = app
                    .http
                    .request(m, &url)
                    .header("X-Api-Key", &app.api_key)
                    .send()
                    .await
                    .unwrap();
                assert!(resp.headers().contains_key("allow"), "{method} {path}");
                let v = envelope(resp, 405).await;
                assert_error_envelope(&v, 405, &format!("{method} {path}"));
                continue;
            };
            operations += 1;
            let documented: Vec<u16> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.parse().unwrap())
                .collect();
            let keyed = op.get("security").is_some();
            if keyed {
                assert_eq!(op["security"], json!([{"ApiKey": []}]), "{method} {path}");
            }
            // Without a key: 401 exactly where the document asks for one.
            let mut bare = app.http.request(m.clone(), &url);
            if method == "post" {
                bare = bare.json(&json!({}));
            }
            let status = bare.send().await.unwrap().status().as_u16();
            assert_eq!(
                status == 401,
                keyed,
                "{method} {path} without a key: {status}"
            );
            assert!(
                documented.contains(&status),
                "{method} {path}: {status} not documented"
            );
            // With a key and a minimal request: routed (never the fallback) and documented.
            let mut req = app.http.request(m, &url).header("X-Api-Key", &app.api_key);
            if method == "post" {
                req = req.json(&json!({}));
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            assert!(
                documented.contains(&status),
                "{method} {path}: {status} is not among {documented:?}"
            );
            let streamed = resp
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            if !streamed {
                let text = resp.text().await.unwrap();
                assert!(
                    !text.contains("no such route"),
                    "{method} {path} is not routed"
                );
            }
            for (code, response) in op["responses"].as_object().unwrap() {
                assert!(
                    response["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty()),
                    "{method} {path} {code}"
                );
                if code.starts_with('4') || code.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert!(
                        schema == "#/components/schemas/ErrorEnvelope"
                            || schema == "#/components/schemas/Envelope_Health",
                        "{method} {path} {code}: {schema}"
                    );
                }
            }
            if op.get("requestBody").is_some() {
                assert!(documented.contains(&413), "{method} {path}");
            }
        }
    }
    assert_eq!(
        operations, 21,
        "every route of API.md, the device commands and the events routes"
    );
    for (path, method, params) in [
        (
            "/api/v1/third/devices",
            "get",
            &["online", "page", "size"][..],
        ),
        (
            "/api/v1/third/orders",
            "get",
            &["status", "device_id", "page", "size"][..],
        ),
        ("/api/v1/admin/webhooks/dead", "get", &["page", "size"][..]),
        (
            "/api/v1/events/stream",
            "get",
            &["device_id", "type", "last_event_id"][..],
        ),
        (
            "/api/v1/admin/devices/{device_id}/frames",
            "get",
            &["device_id", "limit"][..],
        ),
    ] {
        let names: Vec<&str> = doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for p in params {
            assert!(names.contains(p), "{path} ?{p} in {names:?}");
        }
    }
    let charge = &doc["components"]["schemas"]["ChargeRequest"];
    assert_eq!(charge["required"], json!(["port_no", "charge_mode"]));
    assert_eq!(
        charge["properties"]["charge_mode"]["enum"],
        json!([1, 2, 3, 4])
    );
    assert_eq!(charge["properties"]["port_no"]["minimum"], 1);
    assert_eq!(
        doc["components"]["schemas"]["OrderStatus"]["enum"],
        json!(["pending", "charging", "completed", "failed", "cancelled"])
    );
    for open in ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"] {
        assert!(
            doc["paths"][open]["get"].get("security").is_none(),
            "{open}"
        );
    }
}

/// The router and the document come from the same `routes!` registrations; a route added
/// with plain axum calls would be served but missing from the document, so there is none.
#[test]
fn no_route_is_registered_outside_the_openapi_router() {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(files.len() > 10);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for needle in [".route(", ".route_service(", ".nest(", ".nest_service("] {
            assert!(!text.contains(needle), "{} calls {needle}", file.display());
        }
        let bare_router = text
            .match_indices("Router::new()")
            .any(|(i, _)| !text[..i].ends_with("OpenApi"));
        assert!(
            !bare_router,
            "{} builds a plain axum Router",
            file.display()
        );
    }
}

#[tokio::test]
async fn the_documents_own_route_is_the_same_document_as_openapi_document() {
    let app = spawn_app().await;
    let served = openapi_doc(&app).await;
    let built = pile_server::http::openapi_document();
    assert_eq!(served, built);
}

both!(
    the_routers_own_404_and_405_carry_the_envelope,
    |app: TestApp| async move {
        let resp = app.get("/api/v1/third/nothing").send().await.unwrap();
        assert!(resp.headers().contains_key("x-request-id"));
        let v = envelope(resp, 404).await;
        assert_error_envelope(&v, 404, "unknown route");
        assert!(v["message"].as_str().unwrap().contains("no such route"));
        let resp = app
            .http
            .delete(format!("{}/api/v1/third/devices", app.address))
            .header("X-Api-Key", &app.api_key)
            .header("X-Request-Id", "req-405")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["allow"], "GET,HEAD");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let v = envelope(resp, 405).await;
        assert_error_envelope(&v, 405, "DELETE on a GET route");
        assert_eq!(v["request_id"], "req-405");
        assert!(v["message"]
            .as_str()
            .unwrap()
            .contains("method not allowed"));
        let resp = app
            .http
            .put(format!("{}/healthz", app.address))
            .send()
            .await
            .unwrap();
        let v = envelope(resp, 405).await;
        assert_error_envelope(&v, 405, "PUT /healthz");
        // A path segment that is not UTF-8 is the extractor's 400, also enveloped.
        let resp = app.get("/api/v1/third/orders/%FF%FE").send().await.unwrap();
        let v = envelope(resp, 400).await;
        assert_error_envelope(&v, 400, "bad path encoding");
    }
);

/// Connects a device that has not reported its port count (no registration data yet).
async fn connect_without_port_count(app: &TestApp, device_id: &str) {
    use pile_server::core::{Hello, Intent, IntentResult};
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let conn_id = app.service.gateway.next_conn_id();
    let link = pile_server::service::SessionLink {
        conn_id,
        handle: pile_server::gateway::SessionHandle {
            conn_id,
            commands: tx,
            close: tokio_util::sync::CancellationToken::new(),
        },
    };
    let hello = Hello {
        device_id: device_id.into(),
        protocol: "bkv",
        remote_addr: "127.0.0.1:9".into(),
        firmware: None,
        iccid: None,
        signal: None,
        conn_id,
        at_ms: app.service.clock.now_ms(),
    };
    let answer = app
        .service
        .apply(&link, None, Intent::Identify { token: 1, hello })
        .await;
    assert!(
        matches!(answer, Some((_, IntentResult::Identified { .. }))),
        "{answer:?}"
    );
}

both!(
    port_validation_states_the_devices_real_range,
    |app: TestApp| async move {
        let _pile = app.connect_fake("82210225000520", "bkv", 4).await;
        let charge =
            |port: i64| json!({"port_no": port, "charge_mode": 1, "duration": 60, "amount": 0});
        for port in [0, 5, 9, 501, -1] {
            let v = envelope(app.charge("82210225000520", charge(port)).await, 400).await;
            assert_eq!(
                v["message"], "invalid field `port_no`: must be between 1 and 4",
                "charge port {port}"
            );
            let v = envelope(
                app.post(
                    "/api/v1/third/devices/82210225000520/stop",
                    json!({"port_no": port}),
                )
                .send()
                .await
                .unwrap(),
                400,
            )
            .await;
            assert_eq!(
                v["message"], "invalid field `port_no`: must be between 1 and 4",
                "stop port {port}"
            );
        }
        // Port 4 is in range: a stop there finds nothing running (409), not a range error.
        let v = envelope(
            app.post(
                "/api/v1/third/devices/82210225000520/stop",
                json!({"port_no": 4}),
            )
            .send()
            .await
            .unwrap(),
            409,
        )
        .await;
        assert!(v["message"]
            .as_str()
            .unwrap()
            .contains("no order is running on port 4"));
        // A device that has not said how many ports it has: 1–500, and the answer says why.
        connect_without_port_count(&app, "82210225000999").await;
        for port in [0, 501] {
            let v = envelope(app.charge("82210225000999", charge(port)).await, 400).await;
            let msg = v["message"].as_str().unwrap();
            assert!(
                msg.contains("between 1 and 500") && msg.contains("not reported its port count"),
                "{msg}"
            );
        }
        envelope(app.charge("82210225000999", charge(9)).await, 200).await;
        // An unknown device is 404 whatever the port.
        envelope(app.charge("00000000", charge(0)).await, 404).await;
        envelope(
            app.post("/api/v1/third/devices/00000000/stop", json!({"port_no": 0}))
                .send()
                .await
                .unwrap(),
            404,
        )
        .await;
    }
);

both!(
    a_charge_without_what_its_billing_needs_is_a_400_naming_the_field,
    |app: TestApp| async move {
        let _pile = app.connect_fake("82210225000520", "bkv", 4).await;
        let refused = [
            // No prices: billed from `amount`, so it is required.
            (
                json!({"port_no": 1, "charge_mode": 1, "duration": 60}),
                "`amount`",
            ),
            (
                json!({"port_no": 1, "charge_mode": 2, "energy_wh": 500}),
                "`amount`",
            ),
            (
                json!({"port_no": 1, "charge_mode": 1, "duration": 60, "amount": null}),
                "`amount`",
            ),
            // Until full is billed by energy: it needs prices, with or without an amount.
            (
                json!({"port_no": 1, "charge_mode": 4, "amount": 500}),
                "`price_per_kwh`",
            ),
            (json!({"port_no": 1, "charge_mode": 4}), "`price_per_kwh`"),
            // By amount: an amount and a price.
            (
                json!({"port_no": 1, "charge_mode": 3, "price_per_kwh": 150}),
                "`amount`",
            ),
            (
                json!({"port_no": 1, "charge_mode": 3, "amount": 500}),
                "`price_per_kwh`",
            ),
        ];
        for (body, field) in refused {
            let v = envelope(app.charge("82210225000520", body.clone()).await, 400).await;
            let msg = v["message"].as_str().unwrap();
            assert!(msg.contains(field), "{body} → {msg}");
        }
        assert_eq!(
            app.client
                .orders(&pile_api::OrderListQuery::default())
                .await
                .unwrap()
                .total,
            0,
            "nothing refused was created"
        );
        let accepted = [
            // With prices, no amount is no cap.
            json!({"port_no": 1, "charge_mode": 1, "duration": 60, "price_per_kwh": 150}),
            // An explicit 0 without prices is a free charge, said so.
            json!({"port_no": 2, "charge_mode": 1, "duration": 60, "amount": 0}),
            json!({"port_no": 3, "charge_mode": 4, "amount": 500, "service_fee": 50}),
            json!({"port_no": 4, "charge_mode": 3, "amount": 500, "price_per_kwh": 150}),
        ];
        for body in accepted {
            let v = envelope(app.charge("82210225000520", body.clone()).await, 200).await;
            assert_eq!(v["data"]["status"], "pending", "{body}");
        }
    }
);

both!(
    an_amount_of_0_with_prices_is_no_cap,
    |app: TestApp| async move {
        let mut pile = app.connect_fake("04AB373B", "ap3000", 4).await;
        envelope(
            app.charge(
                "04AB373B",
                json!({"port_no": 1, "charge_mode": 1, "duration": 600, "amount": 0,
                       "price_per_kwh": 150, "service_fee": 50, "order_no": "nocap"}),
            )
            .await,
            200,
        )
        .await;
        let start = pile.next_command().await;
        pile.confirm(&start).await;
        let (settled, _) = pile
            .end(ap_end(
                "nocap",
                1,
                12_345,
                pile_server::domain::EndReason::Unplugged,
            ))
            .await;
        assert!(settled);
        let o = app.client.order("nocap").await.unwrap();
        // 12.345 kWh × 150 = 1851.75 → 1852; × 50 = 617.25 → 617; not capped by the 0.
        assert_eq!(
            (o.energy_fee, o.service_fee_amount, o.final_amount),
            (1852, 617, 2469)
        );
    }
);

both!(
    a_stop_answers_what_it_did_to_the_order,
    |app: TestApp| async move {
        let mut pile = app.connect_fake("04AB373B", "ap3000", 4).await;
        let stop = |port: u32| {
            app.post(
                "/api/v1/third/devices/04AB373B/stop",
                json!({"port_no": port}),
            )
            .send()
        };
        // Charging: the stop command is on its way; the order is not called "charging".
        envelope(
            app.charge(
                "04AB373B",
                json!({"port_no": 1, "charge_mode": 1, "duration": 600, "amount": 600,
                       "order_no": "st-1"}),
            )
            .await,
            200,
        )
        .await;
        let start = pile.next_command().await;
        pile.confirm(&start).await;
        let v = envelope(stop(1).await.unwrap(), 200).await;
        assert_eq!(
            v["data"],
            json!({"order_no": "st-1", "device_id": "04AB373B", "port_no": 1, "status": "stopping"})
        );
        assert_eq!(
            app.client.order("st-1").await.unwrap().status,
            pile_api::OrderStatus::Charging,
            "it settles when the device reports its end"
        );
        // Pending on an offline device: cancelled at once, and the answer says so.
        app.disconnect_fake(&pile).await;
        envelope(
            app.charge(
                "04AB373B",
                json!({"port_no": 2, "charge_mode": 1, "duration": 600, "amount": 600,
                       "order_no": "st-2"}),
            )
            .await,
            200,
        )
        .await;
        let v = envelope(stop(2).await.unwrap(), 200).await;
        assert_eq!(v["data"]["status"], "cancelled");
        let o = app.client.order("st-2").await.unwrap();
        assert_eq!(
            (o.status, o.end_reason),
            (pile_api::OrderStatus::Cancelled, Some(3))
        );
        // The typed client reads the same answer.
        let typed = app
            .client
            .stop(
                "04AB373B",
                &pile_api::StopRequest {
                    port_no: 2,
                    order_no: None,
                },
            )
            .await;
        assert_eq!(typed.err().and_then(|e| e.status()), Some(409));
    }
);

both!(the_frames_route_honours_limit, |app: TestApp| async move {
    let _pile = app.connect_fake("82210225000520", "bkv", 4).await;
    for i in 0..10u8 {
        app.service.gateway.record_frame(
            "82210225000520",
            pile_api::Direction::Up,
            1_700_000_000_000 + i64::from(i),
            &[i],
            pile_server::gateway::FrameNote::Text("test frame"),
        );
    }
    let all = app.client.frames("82210225000520").await.unwrap();
    assert_eq!(all.len(), 10);
    let v = envelope(
        app.get("/api/v1/admin/devices/82210225000520/frames?limit=3")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let hex: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["hex"].as_str().unwrap())
        .collect();
    assert_eq!(hex, ["07", "08", "09"], "the newest three, oldest first");
    let typed = app.client.recent_frames("82210225000520", 2).await.unwrap();
    assert_eq!(typed.len(), 2);
    for bad in ["0", "201", "x", "-1"] {
        let v = envelope(
            app.get(&format!(
                "/api/v1/admin/devices/82210225000520/frames?limit={bad}"
            ))
            .send()
            .await
            .unwrap(),
            400,
        )
        .await;
        assert!(v["message"].as_str().unwrap().contains("`limit`"), "{bad}");
    }
    envelope(
        app.get("/api/v1/admin/devices/00000000/frames?limit=5")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
});

both!(
    a_malformed_body_is_a_400_naming_the_field_never_a_409,
    |app: TestApp| async move {
        let _pile = app.connect_fake("82210225000520", "bkv", 4).await;
        // Hold port 1, so that anything reaching the order logic would be a 409.
        envelope(
            app.charge(
                "82210225000520",
                json!({"port_no": 1, "charge_mode": 1, "duration": 60, "amount": 0}),
            )
            .await,
            200,
        )
        .await;
        let raw = |path: &'static str, body: Vec<u8>| {
            app.http
                .post(format!(
                    "{}/api/v1/third/devices/82210225000520/{path}",
                    app.address
                ))
                .header("X-Api-Key", &app.api_key)
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        let cases: [(&str, &[u8], &str); 12] = [
            ("charge", b"{not json", "`body`"),
            (
                "charge",
                br#"{"port_no": 1, "charge_mode": 1} trailing"#,
                "`body`",
            ),
            ("charge", b"", "`body`"),
            ("charge", b"\xff\xfe", "`body`"),
            ("charge", b"null", "`body`"),
            (
                "charge",
                br#"{"port_no": 1.5, "charge_mode": 1}"#,
                "`port_no`",
            ),
            (
                "charge",
                br#"{"port_no": 1e400, "charge_mode": 1}"#,
                "`body`",
            ),
            (
                "charge",
                br#"{"port_no": 1, "charge_mode": 1, "duration": 60, "amount": {"fen": 5}}"#,
                "`amount`",
            ),
            (
                "charge",
                br#"{"port_no": 1, "charge_mode": "1", "duration": 60}"#,
                "`charge_mode`",
            ),
            (
                "charge",
                br#"{"port_no": 1, "charge_mode": 1, "duration": 60, "amount": 0, "order_no": 7}"#,
                "`order_no`",
            ),
            ("stop", br#"{"port_no": [1]}"#, "`port_no`"),
            (
                "stop",
                br#"{"port_no": 1, "order_no": {"a": 1}}"#,
                "`order_no`",
            ),
        ];
        for (path, body, field) in cases {
            let v = envelope(raw(path, body.to_vec()).await.unwrap(), 400).await;
            let msg = v["message"].as_str().unwrap();
            assert!(
                msg.contains(field),
                "{path} {:?} → {msg}",
                String::from_utf8_lossy(body)
            );
            assert_error_envelope(&v, 400, path);
        }
    }
);

both!(
    an_order_no_of_another_devices_order_is_a_409,
    |app: TestApp| async move {
        let _a = app.connect_fake("82210225000520", "bkv", 4).await;
        let _b = app.connect_fake("82210225000521", "bkv", 4).await;
        let body = json!({"port_no": 1, "charge_mode": 1, "duration": 60, "amount": 0,
                          "order_no": "shared-1"});
        envelope(app.charge("82210225000520", body.clone()).await, 200).await;
        let v = envelope(app.charge("82210225000521", body).await, 409).await;
        assert!(
            v["message"].as_str().unwrap().contains("already used"),
            "{v}"
        );
        let other_port = json!({"port_no": 2, "charge_mode": 1, "duration": 60, "amount": 0,
                                "order_no": "shared-1"});
        envelope(app.charge("82210225000520", other_port).await, 409).await;
    }
);

#[tokio::test]
async fn errors_keep_the_envelope_for_413_and_429() {
    let app = spawn_app_on(Db::Sqlite, |c| {
        c.body_limit = 1024;
        c.rate_limit = Some(2);
    })
    .await
    .unwrap();
    let big = "x".repeat(4096);
    let resp = app
        .charge(
            "82210225000520",
            json!({"port_no": 1, "charge_mode": 1, "duration": 60, "pad": big}),
        )
        .await;
    let v = envelope(resp, 413).await;
    assert_error_envelope(&v, 413, "oversized body");
    let mut limited = None;
    for _ in 0..10 {
        let resp = app.get("/api/v1/third/devices").send().await.unwrap();
        if resp.status().as_u16() == 429 {
            limited = Some(resp.json::<serde_json::Value>().await.unwrap());
            break;
        }
    }
    let v = limited.expect("a 429 within 10 requests at 2 per second");
    assert_error_envelope(&v, 429, "rate limit");
}

both!(
    a_query_parameter_given_twice_is_a_400_naming_it_and_an_empty_one_is_absent,
    |app: TestApp| async move {
        for (path, field) in [
            ("/api/v1/third/devices?size=2&size=3", "`size`"),
            (
                "/api/v1/third/orders?status=pending&status=failed",
                "`status`",
            ),
            ("/api/v1/third/orders?page=1&device_id=A&page=2", "`page`"),
        ] {
            let v = envelope(app.get(path).send().await.unwrap(), 400).await;
            assert!(
                v["message"].as_str().unwrap().contains(field),
                "{path}: {v}"
            );
        }
        // As the upstream scripts send it.
        let v = envelope(
            app.get("/api/v1/third/orders?status=&device_id=&page=&size=")
                .send()
                .await
                .unwrap(),
            200,
        )
        .await;
        assert_eq!(
            (v["data"]["page"].as_u64(), v["data"]["size"].as_u64()),
            (Some(1), Some(50))
        );
    }
);
