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
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
pub use pile_api::*;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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

thread_local! {
    /// The size of the last body this thread wrote: the next one starts with that capacity.
    static BODY_HINT: std::cell::Cell<usize> = const { std::cell::Cell::new(512) };
}

/// A success envelope. Written into a buffer sized from the last body of this thread (axum's
/// `Json` starts at 128 bytes and regrows a 50-item page a dozen times: the copies and frees
/// were a tenth of the page's CPU).
pub fn ok<T: Serialize>(data: T) -> Response {
    let env = Envelope {
        code: 0,
        message: "ok".into(),
        data: Some(data),
        request_id: request_id(),
        timestamp: now_sec(),
    };
    let mut buf = Vec::with_capacity(BODY_HINT.with(|h| h.get()));
    match serde_json::to_writer(&mut buf, &env) {
        Ok(()) => {
            BODY_HINT.with(|h| h.set((buf.len() + buf.len() / 8).clamp(512, 1 << 16)));
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/json"),
                )],
                buf,
            )
                .into_response()
        }
        Err(e) => ApiError::Internal(format!("serialising the answer: {e}")).into_response(),
    }
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
    TooManyRequests {
        /// Seconds, sent as `Retry-After`.
        retry_after: u64,
    },
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
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
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
        let body = ErrorEnvelope {
            code: status.as_u16(),
            message: self.to_string(),
            data: None,
            request_id: request_id(),
            timestamp: now_sec(),
        };
        let mut resp = (status, Json(body)).into_response();
        if let ApiError::TooManyRequests { retry_after } = &self {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from((*retry_after).max(1)),
            );
        }
        resp
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

pub(crate) type ApiResult = Result<Response, ApiError>;

mod admin;
mod auth;
mod devices;
mod input;
mod openapi;
mod orders;
pub mod serve;
mod views;

use admin::*;
use auth::*;
pub use auth::{FailedAttempts, StoredKey};
use devices::*;
use input::*;
pub use openapi::openapi_document;
use orders::*;
use views::*;

/// The HTTP handlers' shared state: one `Arc`, because axum clones the state for every
/// extractor of every request (a struct of a dozen handles made that clone and its drop ~15 %
/// of a device read's CPU in the release profile). Fields read through `Deref`; builders
/// change them through [`AppState::inner_mut`] before the router is built.
#[derive(Clone)]
pub struct AppState(Arc<AppStateInner>);

impl std::ops::Deref for AppState {
    type Target = AppStateInner;
    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

#[derive(Clone)]
pub struct AppStateInner {
    pub service: Arc<Service>,
    /// The accepted keys (the configured set, or the generated key).
    pub keys: Arc<RwLock<Vec<StoredKey>>>,
    pub prometheus: PrometheusHandle,
    pub device_listener_up: Arc<AtomicBool>,
    pub started: Instant,
    pub rate_limit: Option<u32>,
    rate_windows: Arc<Mutex<RateWindows>>,
    failed_attempts: Arc<Mutex<FailedAttempts>>,
    pub body_limit: usize,
    /// From a request's headers to its answer (the body read included): 408 past it.
    pub request_timeout: std::time::Duration,
    pub events: Option<crate::events::Events>,
    /// Device views rendered from the read model, reused while nothing they show changed.
    pub views: Arc<views::ViewCache>,
}

impl AppState {
    pub fn new(
        service: Arc<Service>,
        keys: Vec<StoredKey>,
        prometheus: PrometheusHandle,
        device_listener_up: Arc<AtomicBool>,
        rate_limit: Option<u32>,
        body_limit: usize,
    ) -> Self {
        AppState(Arc::new(AppStateInner {
            service,
            keys: Arc::new(RwLock::new(keys)),
            prometheus,
            device_listener_up,
            started: Instant::now(),
            rate_limit,
            rate_windows: Arc::new(Mutex::new(HashMap::new())),
            failed_attempts: Arc::new(Mutex::new(FailedAttempts::new(0))),
            body_limit,
            request_timeout: std::time::Duration::from_secs(30),
            events: None,
            views: Arc::default(),
        }))
    }

    /// The fields, to change while the state is built (copies them if already shared).
    pub fn inner_mut(&mut self) -> &mut AppStateInner {
        Arc::make_mut(&mut self.0)
    }

    /// Failed key attempts allowed per source address per minute (0: no limit).
    pub fn with_auth_failures_per_minute(mut self, per_minute: u32) -> Self {
        self.inner_mut().failed_attempts = Arc::new(Mutex::new(FailedAttempts::new(per_minute)));
        self
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

/// Every route, with its operation in the OpenAPI document: each handler is registered with
/// `routes!`, so the router and the document cannot disagree. `keyed_layer` wraps the routes
/// that need an API key (the auth layer in [`app`], nothing for the bare document).
fn routes(
    keyed_layer: impl FnOnce(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>,
) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let mut keyed = OpenApiRouter::new()
        .routes(routes!(charge))
        .routes(routes!(stop))
        .routes(routes!(device))
        .routes(routes!(devices))
        .routes(routes!(order))
        .routes(routes!(progress))
        .routes(routes!(orders))
        .routes(routes!(stats))
        .routes(routes!(consistency))
        .routes(routes!(instances))
        .routes(routes!(frames))
        .routes(routes!(locate))
        .routes(routes!(query_ports))
        .routes(routes!(command))
        .merge(crate::events::router());
    openapi::document_keyed(keyed.get_openapi_mut());
    let open = OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(prometheus))
        .routes(routes!(openapi::openapi));
    let (router, mut doc) = OpenApiRouter::with_openapi(openapi::skeleton())
        .merge(keyed_layer(keyed))
        .merge(open)
        .split_for_parts();
    openapi::document_common(&mut doc);
    (router, doc)
}

/// The one router, used by `main` and by the tests.
pub fn app(state: AppState) -> Router {
    let auth_state = state.clone();
    let (router, _doc) =
        routes(|keyed| keyed.route_layer(middleware::from_fn_with_state(auth_state, auth)));
    let limit = state.body_limit;
    let timeout = state.request_timeout;
    router
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .route_layer(middleware::from_fn(observe))
        .layer(middleware::from_fn(envelope_errors))
        .layer(middleware::from_fn(request_id_layer))
        .with_state(state)
}

/// Error answers that did not come from [`ApiError`] — the router's own 405, an extractor's
/// rejection — get the envelope too, keeping their status and headers (`Allow` on a 405).
async fn envelope_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.as_u16() < 400 || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed".to_string(),
        _ if !text.trim().is_empty() => text.trim().to_string(),
        _ => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.remove(axum::http::header::CONTENT_TYPE);
    let body = Json(ErrorEnvelope {
        code: status.as_u16(),
        message,
        data: None,
        request_id: request_id(),
        timestamp: now_sec(),
    })
    .into_response();
    let (body_parts, body) = body.into_parts();
    parts.headers.extend(body_parts.headers);
    Response::from_parts(parts, body)
}
