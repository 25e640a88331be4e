//! The HTTP API (`shared/design/API.md`): routes, auth, the envelope, errors.
//!
//! Every answer is an [`Envelope`]; [`ApiError`] is the one error type, whose variant names
//! say their status. Request bodies are read as JSON values and checked field by field so
//! that a bad body is a 400 naming the field (never axum's default 422).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use pile_api::*;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::{self, EndReason};
use crate::metrics as m;
use crate::service::{Service, ServiceError};
use crate::store::{DeviceRow, OrderRow, PortRow, StoreError};

tokio::task_local! {
    static REQUEST_ID: String;
}

fn request_id() -> String {
    REQUEST_ID.try_with(|id| id.clone()).unwrap_or_default()
}

fn now_sec() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A success envelope.
pub fn ok<T: Serialize>(data: T) -> Response {
    Json(Envelope {
        code: 0,
        message: "ok".into(),
        data: Some(data),
        request_id: request_id(),
        timestamp: now_sec(),
    })
    .into_response()
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid field `{field}`: {reason}")]
    BadRequest { field: String, reason: String },
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("rate limit exceeded")]
    TooManyRequests,
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn bad(field: &str, reason: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(detail) = &self {
            // 5xx bodies stay generic; the detail goes to the log.
            tracing::error!(request_id = %request_id(), %detail, "internal error");
        }
        let body = Envelope::<Value> {
            code: status.as_u16(),
            message: self.to_string(),
            data: None,
            request_id: request_id(),
            timestamp: now_sec(),
        };
        (status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if let StoreError::PortBusy { .. } = e {
            return ApiError::Conflict("port is busy".into());
        }
        if e.is_unique_violation() {
            return ApiError::Conflict(format!("conflict: {e}"));
        }
        match e {
            StoreError::Db(
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_),
            ) => ApiError::Unavailable("database unavailable".into()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::DeviceNotFound(id) => {
                ApiError::NotFound(format!("device {id} not found"))
            }
            ServiceError::OrderNotFound(no) => ApiError::NotFound(format!("order {no} not found")),
            ServiceError::Invalid(f) => ApiError::bad(f.field, f.reason),
            ServiceError::PortBusy(_) => ApiError::Conflict("port is busy".into()),
            ServiceError::Conflict(m) => ApiError::Conflict(m),
            ServiceError::Offline(id) => ApiError::Unavailable(format!("device {id} is offline")),
            ServiceError::Store(s) => s.into(),
        }
    }
}

type ApiResult = Result<Response, ApiError>;

// ---------------------------------------------------------------------------------------------
// State, auth, rate limit

/// SHA-256 of an API key, as stored.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Per key hash: (second, requests in it).
type RateWindows = HashMap<[u8; 32], (u64, u32)>;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub key_hashes: Arc<RwLock<Vec<[u8; 32]>>>,
    pub prometheus: PrometheusHandle,
    pub device_listener_up: Arc<AtomicBool>,
    pub started: Instant,
    pub rate_limit: Option<u32>,
    rate_windows: Arc<Mutex<RateWindows>>,
    pub body_limit: usize,
    pub events: Option<crate::events::Events>,
}

impl AppState {
    pub fn new(
        service: Arc<Service>,
        key_hashes: Vec<[u8; 32]>,
        prometheus: PrometheusHandle,
        device_listener_up: Arc<AtomicBool>,
        rate_limit: Option<u32>,
        body_limit: usize,
    ) -> Self {
        AppState {
            service,
            key_hashes: Arc::new(RwLock::new(key_hashes)),
            prometheus,
            device_listener_up,
            started: Instant::now(),
            rate_limit,
            rate_windows: Arc::new(Mutex::new(HashMap::new())),
            body_limit,
            events: None,
        }
    }

    /// Compares against every stored hash in constant time.
    fn authorised(&self, key: &[u8]) -> Option<[u8; 32]> {
        let presented: [u8; 32] = Sha256::digest(key).into();
        let hashes = self.key_hashes.read().unwrap_or_else(|p| p.into_inner());
        let mut found = subtle::Choice::from(0u8);
        for h in hashes.iter() {
            found |= h.ct_eq(&presented);
        }
        bool::from(found).then_some(presented)
    }

    fn within_rate(&self, key: [u8; 32]) -> bool {
        let Some(limit) = self.rate_limit else {
            return true;
        };
        let second = self.started.elapsed().as_secs();
        let mut windows = self.rate_windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = windows.entry(key).or_insert((second, 0));
        if w.0 != second {
            *w = (second, 0);
        }
        w.1 += 1;
        w.1 <= limit
    }
}

async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let key = req
        .headers()
        .get("x-api-key")
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    match state.authorised(&key) {
        Some(hash) if state.within_rate(hash) => next.run(req).await,
        Some(_) => ApiError::TooManyRequests.into_response(),
        None => ApiError::Unauthorized.into_response(),
    }
}

/// Sets or echoes `X-Request-Id` and makes it available to the envelope (every response,
/// the fallback included).
async fn request_id_layer(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut resp = REQUEST_ID.scope(id.clone(), next.run(req)).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Latency and counts per matched route (a template, never a concrete ID).
async fn observe(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::histogram!(m::HTTP_DURATION, "method" => method.clone(), "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(m::HTTP_REQUESTS, "method" => method, "route" => route, "status" => status)
        .increment(1);
    resp
}

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

/// The one router, used by `main` and by the tests.
pub fn app(state: AppState) -> Router {
    let keyed = Router::new()
        .route("/api/v1/third/devices/{device_id}/charge", post(charge))
        .route("/api/v1/third/devices/{device_id}/stop", post(stop))
        .route("/api/v1/third/devices/{device_id}", get(device))
        .route("/api/v1/third/devices", get(devices))
        .route("/api/v1/third/orders/{order_no}", get(order))
        .route("/api/v1/third/orders/{order_no}/progress", get(progress))
        .route("/api/v1/third/orders", get(orders))
        .route("/api/v1/admin/stats", get(stats))
        .route("/api/v1/admin/consistency", get(consistency))
        .route("/api/v1/admin/devices/{device_id}/frames", get(frames))
        .merge(crate::events::router())
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    let open = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .route("/api/v1/openapi.json", get(openapi));
    let limit = state.body_limit;
    keyed
        .merge(open)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(limit))
        .route_layer(middleware::from_fn(observe))
        .layer(middleware::from_fn(request_id_layer))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Body and query helpers

fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::bad("body", e.body_text())
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::bad("body", "a JSON object is required"));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad("body", "must be a JSON object")),
        Err(e) => Err(ApiError::bad("body", format!("invalid JSON: {e}"))),
    }
}

fn int_field(
    map: &Map<String, Value>,
    field: &str,
    required: bool,
) -> Result<Option<i64>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) if required => Err(ApiError::bad(field, "is required")),
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                    .map(|f| f as i64)
            })
            .map(Some)
            .ok_or_else(|| ApiError::bad(field, "must be an integer")),
    }
}

fn str_field(map: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad(field, "must be a string")),
    }
}

fn bool_field(map: &Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::bad(field, "must be true or false")),
    }
}

fn valid_order_no(no: &str) -> Result<(), ApiError> {
    if no.is_empty()
        || no.len() > 64
        || !no
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(ApiError::bad(
            "order_no",
            "1–64 characters of letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(())
}

fn valid_device_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::bad("device_id", "must be 1–64 letters or digits"));
    }
    Ok(())
}

fn paging(q: &HashMap<String, String>) -> Result<(u32, u32), ApiError> {
    let num = |name: &str, default: u32, max: u32| -> Result<u32, ApiError> {
        match q.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) {
            None => Ok(default),
            Some(s) => s
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| ApiError::bad(name, format!("must be an integer from 1 to {max}"))),
        }
    };
    Ok((num("page", 1, 1_000_000)?, num("size", 50, 1000)?))
}

// ---------------------------------------------------------------------------------------------
// Views

fn order_view(o: &OrderRow) -> OrderView {
    let reason = o.end_reason.map(EndReason::from_code);
    OrderView {
        order_no: o.order_no.clone(),
        device_id: o.device_id.clone(),
        port_no: o.port_no as u32,
        status: o.status,
        charge_mode: o.charge_mode as u8,
        target_duration: o.target_duration,
        amount: o.amount,
        created_at: o.created_at_ms / 1000,
        started_at: o.started_at_ms.map(|t| t / 1000),
        ended_at: o.ended_at_ms.map(|t| t / 1000),
        duration_sec: match (o.status, o.started_at_ms) {
            (pile_api::OrderStatus::Charging, Some(s)) => {
                domain::duration_sec(s, o.last_report_at_ms.unwrap_or(s)).max(o.duration_sec)
            }
            _ => o.duration_sec,
        },
        total_kwh: o.energy_wh as f64 / 1000.0,
        current_power: o.current_power_dw as f64 / 10.0,
        peak_power: o.peak_power_dw as f64 / 10.0,
        energy_fee: o.energy_fee,
        service_fee_amount: o.service_fee_amount,
        final_amount: o.final_amount,
        end_reason: reason.map(|r| r.code()),
        end_reason_name: reason.map(|r| r.name().to_string()),
        end_reason_text: reason.map(|r| r.text_zh().to_string()),
        offline_replayed: o.offline_replayed,
    }
}

fn order_ref(o: &OrderRow) -> OrderRef {
    OrderRef {
        order_no: o.order_no.clone(),
        device_id: o.device_id.clone(),
        port_no: o.port_no as u32,
        status: o.status,
    }
}

async fn device_view(service: &Service, d: DeviceRow) -> Result<DeviceView, ApiError> {
    let ports: Vec<PortRow> = service.store.ports(&d.device_id).await?;
    let active: Vec<(i64, String)> = service
        .store
        .active_orders_of(&d.device_id)
        .await?
        .into_iter()
        .map(|o| (o.port_no, o.order_no))
        .collect();
    Ok(build_view(service, d, ports, active))
}

/// A device's view: stored ports and orders, live fields from memory.
fn build_view(
    service: &Service,
    d: DeviceRow,
    ports: Vec<PortRow>,
    active: Vec<(i64, String)>,
) -> DeviceView {
    let online = service.gateway.is_online(&d.device_id);
    let live = service.live(&d.device_id);
    let order_of = |port_no: i64| {
        active
            .iter()
            .find(|(p, _)| *p == port_no)
            .map(|(_, o)| o.clone())
    };
    let bkv = d.protocol == "bkv";
    let mut views: Vec<PortView> = ports
        .iter()
        .map(|p| PortView {
            port_no: p.port_no as u32,
            socket_no: p.socket_no.map(|v| v as u32),
            hole: p.hole.map(|v| v as u32),
            status: if online {
                PortStatus::parse(&p.status).unwrap_or(PortStatus::Fault)
            } else {
                PortStatus::Offline
            },
            power_w: if online {
                p.power_dw as f64 / 10.0
            } else {
                0.0
            },
            order_no: order_of(p.port_no),
        })
        .collect();
    if views.is_empty() {
        views = (1..=d.port_count.clamp(0, 500) as u32)
            .map(|port_no| {
                let (s, h) = domain::bkv_socket_hole(port_no);
                PortView {
                    port_no,
                    socket_no: bkv.then_some(s),
                    hole: bkv.then_some(h),
                    status: if online {
                        PortStatus::Idle
                    } else {
                        PortStatus::Offline
                    },
                    power_w: 0.0,
                    order_no: order_of(i64::from(port_no)),
                }
            })
            .collect();
    }
    DeviceView {
        device_id: d.device_id,
        protocol: d.protocol,
        online,
        last_seen_at: live
            .as_ref()
            .map(|l| l.last_seen_ms / 1000)
            .or(d.last_seen_at),
        connected_at: live.as_ref().map(|l| l.connected_at).or(d.connected_at),
        remote_addr: live
            .as_ref()
            .map(|l| l.remote_addr.clone())
            .or(d.remote_addr),
        firmware: live
            .as_ref()
            .and_then(|l| l.firmware.clone())
            .or(d.firmware),
        signal: live.as_ref().and_then(|l| l.signal).or(d.signal),
        ports: views,
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn charge(
    State(state): State<AppState>,
    Path(device_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    valid_device_id(&device_id)?;
    let b = json_body(body)?;
    let port_no = int_field(&b, "port_no", true)?.unwrap_or(0);
    let mode = int_field(&b, "charge_mode", true)?.unwrap_or(0);
    let duration = int_field(&b, "duration", false)?.unwrap_or(0);
    let energy_wh = int_field(&b, "energy_wh", false)?.unwrap_or(0);
    let amount = int_field(&b, "amount", false)?.unwrap_or(0);
    let price = int_field(&b, "price_per_kwh", false)?.unwrap_or(0);
    let service_fee = int_field(&b, "service_fee", false)?.unwrap_or(0);
    let order_no = str_field(&b, "order_no")?.filter(|s| !s.is_empty());
    if let Some(no) = &order_no {
        valid_order_no(no)?;
    }
    let queue = bool_field(&b, "queue_if_offline")?.unwrap_or(true);
    let spec = domain::validate_charge(
        port_no,
        mode,
        duration,
        energy_wh,
        amount,
        price,
        service_fee,
        None,
    )
    .map_err(|f| ApiError::bad(f.field, f.reason))?;
    let order = state
        .service
        .charge(&device_id, &spec, order_no, queue)
        .await?;
    Ok(ok(order_ref(&order)))
}

async fn stop(
    State(state): State<AppState>,
    Path(device_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    valid_device_id(&device_id)?;
    let b = json_body(body)?;
    let port_no = int_field(&b, "port_no", true)?.unwrap_or(0);
    if !(1..=500).contains(&port_no) {
        return Err(ApiError::bad("port_no", "must be between 1 and 500"));
    }
    let order_no = str_field(&b, "order_no")?.filter(|s| !s.is_empty());
    let order = state
        .service
        .stop(&device_id, port_no as u32, order_no.as_deref())
        .await?;
    Ok(ok(order_ref(&order)))
}

async fn device(State(state): State<AppState>, Path(device_id): Path<String>) -> ApiResult {
    let service = &state.service;
    let (d, ports, active) = service
        .lookup_device(&device_id, || service.store.device_with_ports(&device_id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("device {device_id} not found")))?;
    Ok(ok(build_view(&state.service, d, ports, active)))
}

/// The device list reads the store only: a device that just connected for the first time
/// appears once the batched writer commits it (one batch, 200 ms by default). Single-device
/// lookups (GET, charge, stop) flush the writer instead and never miss a connected device.
async fn devices(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let (page, size) = paging(&q)?;
    let online = match q.get("online").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => None,
        Some("true" | "1") => Some(true),
        Some("false" | "0") => Some(false),
        Some(_) => return Err(ApiError::bad("online", "must be true or false")),
    };
    let (rows, total) = state.service.store.devices(online, page, size).await?;
    let mut items = Vec::with_capacity(rows.len());
    for d in rows {
        items.push(device_view(&state.service, d).await?);
    }
    Ok(ok(Page {
        items,
        total,
        page,
        size,
    }))
}

async fn order(State(state): State<AppState>, Path(order_no): Path<String>) -> ApiResult {
    let o = state
        .service
        .store
        .order(&order_no)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("order {order_no} not found")))?;
    Ok(ok(order_view(&o)))
}

async fn progress(State(state): State<AppState>, Path(order_no): Path<String>) -> ApiResult {
    if state.service.store.order(&order_no).await?.is_none() {
        return Err(ApiError::NotFound(format!("order {order_no} not found")));
    }
    let samples: Vec<ProgressSample> = state
        .service
        .store
        .progress(&order_no)
        .await?
        .into_iter()
        .map(|p| ProgressSample {
            at: p.at_ms / 1000,
            duration_sec: p.duration_sec,
            energy_wh: p.energy_wh,
            power_w: p.power_dw as f64 / 10.0,
            status: p.status,
        })
        .collect();
    Ok(ok(samples))
}

async fn orders(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let (page, size) = paging(&q)?;
    let status = match q.get("status").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(pile_api::OrderStatus::parse(s).ok_or_else(|| {
            ApiError::bad(
                "status",
                "must be pending, charging, completed, failed or cancelled",
            )
        })?),
    };
    let device_id = q
        .get("device_id")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty());
    let (rows, total) = state
        .service
        .store
        .orders(status, device_id, page, size)
        .await?;
    Ok(ok(Page {
        items: rows.iter().map(order_view).collect::<Vec<_>>(),
        total,
        page,
        size,
    }))
}

async fn stats(State(state): State<AppState>) -> ApiResult {
    let store = &state.service.store;
    let (devices, orders, cmd_logs) = store.table_counts().await?;
    let (in_use, idle, max) = store.pool_usage();
    let push = store.push_figures().await?;
    let qs = store.query_stats();
    Ok(ok(Stats {
        tables: TableCounts {
            devices,
            orders,
            cmd_logs,
        },
        db_pool: PoolStats { in_use, idle, max },
        slow_queries: qs.slow.load(Ordering::Relaxed),
        slow_query_threshold_ms: crate::store::SLOW_QUERY_MS,
        slowest_query_ms: qs.slowest_ms.load(Ordering::Relaxed),
        log_counts: m::LOG_COUNTS.snapshot(),
        event_backlog: push.backlog,
        push_success_rate: push.success_rate,
        mean_push_latency_ms: push.mean_latency_ms,
        active_sessions: state.service.gateway.session_count() as u64,
        online_devices: store.online_count().await?,
        orders_by_status: store.orders_by_status().await?.into_iter().collect(),
        uptime_sec: state.started.elapsed().as_secs(),
        webhook: None,
        instance_id: None,
    }))
}

async fn consistency(State(state): State<AppState>) -> ApiResult {
    let service = &state.service;
    let store = &service.store;
    let now_ms = service.clock.now_ms();
    let grace = service.timings.offline_settle_grace.as_millis() as i64;
    let (sent, matched) = store.command_match().await?;
    Ok(ok(Consistency {
        orphan_orders: store.orphan_orders().await?,
        stale_orders: store.stale_orders(now_ms, grace).await?,
        commands: CommandMatch {
            sent,
            matched,
            match_rate: if sent == 0 {
                1.0
            } else {
                matched as f64 / sent as f64
            },
        },
        port_mismatches: store
            .port_mismatches()
            .await?
            .into_iter()
            .map(
                |(device_id, port_no, order_status, port_status)| PortMismatch {
                    device_id,
                    port_no: port_no as u32,
                    stored_status: order_status,
                    reported_status: port_status,
                },
            )
            .collect(),
    }))
}

async fn frames(State(state): State<AppState>, Path(device_id): Path<String>) -> ApiResult {
    match state.service.gateway.frames(&device_id) {
        Some(f) => Ok(ok(f)),
        None if state.service.known_device(&device_id).await?.is_some() => {
            Ok(ok(Vec::<FrameRecord>::new()))
        }
        None => Err(ApiError::NotFound(format!("device {device_id} not found"))),
    }
}

async fn healthz() -> Response {
    ok(Health {
        status: "ok".into(),
        checks: Default::default(),
    })
}

async fn readyz(State(state): State<AppState>) -> Response {
    let mut checks = std::collections::BTreeMap::new();
    let db = match tokio::time::timeout(
        std::time::Duration::from_secs(2),
        state.service.store.ping(),
    )
    .await
    {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => format!("failing: {e}"),
        Err(_) => "failing: timed out".to_string(),
    };
    let listener = if state.device_listener_up.load(Ordering::Relaxed) {
        "ok".to_string()
    } else {
        "failing: device listener is not running".to_string()
    };
    checks.insert("database".to_string(), db);
    checks.insert("device_listener".to_string(), listener);
    let failing: Vec<&String> = checks
        .iter()
        .filter(|(_, v)| v.as_str() != "ok")
        .map(|(k, _)| k)
        .collect();
    if failing.is_empty() {
        return ok(Health {
            status: "ok".into(),
            checks,
        });
    }
    let message = format!(
        "not ready: {}",
        failing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let body = Envelope {
        code: 503,
        message,
        data: Some(Health {
            status: "unavailable".into(),
            checks,
        }),
        request_id: request_id(),
        timestamp: now_sec(),
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn prometheus(State(state): State<AppState>) -> Response {
    metrics::gauge!(m::ACTIVE_SESSIONS).set(state.service.gateway.session_count() as f64);
    (
        [("content-type", "text/plain; version=0.0.4")],
        Body::from(state.prometheus.render()),
    )
        .into_response()
}

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

async fn openapi() -> Response {
    Json(openapi_document()).into_response()
}
