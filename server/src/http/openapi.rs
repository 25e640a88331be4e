//! The OpenAPI document.

use super::*;

/// Every route, for the OpenAPI document and its test.
pub const ROUTES: &[(&str, &str, &str)] = &[
    (
        "post",
        "/api/v1/third/devices/{device_id}/charge",
        "Start charging a port",
    ),
    (
        "post",
        "/api/v1/third/devices/{device_id}/stop",
        "Stop the running order of a port",
    ),
    (
        "get",
        "/api/v1/third/devices/{device_id}",
        "Device state with ports",
    ),
    ("get", "/api/v1/third/devices", "Paged device list"),
    ("get", "/api/v1/third/orders/{order_no}", "Order detail"),
    (
        "get",
        "/api/v1/third/orders/{order_no}/progress",
        "Progress samples of an order",
    ),
    ("get", "/api/v1/third/orders", "Paged order list"),
    (
        "get",
        "/api/v1/admin/stats",
        "Gateway figures for the acceptance record",
    ),
    ("get", "/api/v1/admin/consistency", "Consistency checks"),
    (
        "get",
        "/api/v1/admin/devices/{device_id}/frames",
        "Last 200 frames of a device",
    ),
    ("get", "/healthz", "Liveness"),
    ("get", "/readyz", "Readiness, naming the failing check"),
    ("get", "/metrics", "Prometheus metrics"),
    ("get", "/api/v1/openapi.json", "This document"),
];

/// A hand-maintained OpenAPI 3.0 document of [`ROUTES`].
pub fn openapi_document() -> Value {
    let mut paths = Map::new();
    for (method, path, summary) in ROUTES.iter().chain(crate::events::ROUTES) {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                serde_json::json!({"name": name, "in": "path", "required": true,
                                   "schema": {"type": "string"}})
            })
            .collect();
        let keyed = path.starts_with("/api/v1/third")
            || path.starts_with("/api/v1/admin")
            || path.starts_with("/api/v1/events");
        let mut op = serde_json::json!({
            "summary": summary,
            "parameters": params,
            "responses": {
                "200": {"description": "Envelope with code 0"},
                "400": {"description": "Invalid field, named in message"},
                "401": {"description": "Missing or wrong X-Api-Key"},
                "404": {"description": "Not found"},
                "409": {"description": "Conflict (port is busy)"},
                "503": {"description": "Unavailable"}
            }
        });
        if keyed {
            op["security"] = serde_json::json!([{"ApiKey": []}]);
        }
        if *method == "post" {
            op["requestBody"] = serde_json::json!({"required": true,
                "content": {"application/json": {"schema": {"type": "object"}}}});
        }
        let entry = paths
            .entry(path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(ops) = entry {
            ops.insert(method.to_string(), op);
        }
    }
    serde_json::json!({
        "openapi": "3.0.3",
        "info": {"title": "pilekit gateway API", "version": env!("CARGO_PKG_VERSION")},
        "components": {"securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"}}},
        "paths": paths,
    })
}

pub(super) async fn openapi() -> Response {
    Json(openapi_document()).into_response()
}
