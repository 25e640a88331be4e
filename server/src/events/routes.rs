//! Routes of the events subsystem, mounted by `http::app` behind the API-key check.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use pile_api::{
    DeadLetter, DeadLetterQuery, Envelope, ErrorEnvelope, EventMessage, EventStreamQuery, Page,
    ReplayResult, WebhookTestResult,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::stream::{message_of, Filter};
use super::Events;
use crate::http::{ok, ApiError, AppState};
use crate::store::outbox::{OutboxRow, Replay};

/// Keep-alive comments on the stream, so proxies and clients see it is alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The events routes, each with its operation in the OpenAPI document.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(dead_letters))
        .routes(routes!(replay))
        .routes(routes!(webhook_test))
        .routes(routes!(stream))
}

impl AppState {
    /// Attaches the running events subsystem (without it these routes answer 503).
    pub fn with_events(mut self, events: Events) -> Self {
        self.inner_mut().events = Some(events);
        self
    }
}

fn events(state: &AppState) -> Result<&Events, ApiError> {
    state
        .events
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("the events subsystem is not running".into()))
}

fn paging(q: &HashMap<String, String>) -> Result<(u32, u32), ApiError> {
    let num = |name: &str, default: u32, max: u32| -> Result<u32, ApiError> {
        match q.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) {
            None => Ok(default),
            Some(s) => s
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| ApiError::BadRequest {
                    field: name.to_string(),
                    reason: format!("must be an integer from 1 to {max}"),
                }),
        }
    };
    Ok((num("page", 1, 1_000_000)?, num("size", 50, 1000)?))
}

fn dead_letter(r: OutboxRow) -> DeadLetter {
    DeadLetter {
        data: serde_json::from_str(&r.payload).unwrap_or(serde_json::Value::Null),
        event_id: r.event_id,
        event_type: r.event_type,
        device_id: r.device_id,
        order_no: r.order_no,
        attempts: r.attempts,
        last_status: r.last_status.and_then(|s| u16::try_from(s).ok()),
        last_error: r.last_error,
        created_at: r.created_at_ms / 1000,
        dead_at: r.dead_at_ms.map(|ms| ms / 1000),
    }
}

/// Dead-lettered webhook events, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/admin/webhooks/dead",
    tag = "events",
    params(DeadLetterQuery),
    responses(
        (status = 200, description = "One page; `total` counts every dead letter", body = Envelope<Page<DeadLetter>>),
        (status = 400, description = "`page` or `size` is invalid; `message` names it", body = ErrorEnvelope),
        (status = 503, description = "The events subsystem is not running, or the database is unavailable", body = ErrorEnvelope),
    )
)]
async fn dead_letters(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let events = events(&state)?;
    let (page, size) = paging(&q)?;
    let (rows, total) = events.store.dead_letters(page, size).await?;
    Ok(ok(Page {
        items: rows.into_iter().map(dead_letter).collect::<Vec<_>>(),
        total,
        page,
        size,
    }))
}

/// Queue a dead-lettered event for delivery again, with a fresh retry budget.
#[utoipa::path(
    post,
    path = "/api/v1/admin/webhooks/dead/{event_id}/replay",
    tag = "events",
    params(("event_id" = String, Path, description = "The event's ID")),
    responses(
        (status = 200, description = "Queued again", body = Envelope<ReplayResult>),
        (status = 404, description = "Unknown event", body = ErrorEnvelope),
        (status = 409, description = "The event is not dead-lettered", body = ErrorEnvelope),
        (status = 503, description = "The events subsystem is not running, or the database is unavailable", body = ErrorEnvelope),
    )
)]
async fn replay(
    State(state): State<AppState>,
    Path(event_id): Path<String>,
) -> Result<Response, ApiError> {
    let events = events(&state)?;
    match events.store.replay_dead(&event_id).await? {
        Replay::Replayed => {
            tracing::info!(%event_id, "dead letter replayed");
            if let Some(d) = &events.dispatcher {
                d.wake();
            }
            Ok(ok(ReplayResult {
                event_id,
                status: "pending".into(),
            }))
        }
        Replay::NotDead => Err(ApiError::Conflict(format!(
            "event {event_id} is not dead-lettered"
        ))),
        Replay::NotFound => Err(ApiError::NotFound(format!("event {event_id} not found"))),
    }
}

/// Send a signed `webhook.test` event now and report the receiver's status and latency.
#[utoipa::path(
    post,
    path = "/api/v1/admin/webhooks/test",
    tag = "events",
    responses(
        (status = 200, description = "What the receiver answered (`delivered` false when it failed)",
         body = Envelope<WebhookTestResult>),
        (status = 503, description = "No webhook URL is configured, or the events subsystem is not running",
         body = ErrorEnvelope),
    )
)]
async fn webhook_test(State(state): State<AppState>) -> Result<Response, ApiError> {
    let events = events(&state)?;
    let dispatcher = events
        .dispatcher
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("no webhook URL is configured".into()))?;
    Ok(ok(dispatcher.send_test().await))
}

/// Events replayed to a client that resumes with `Last-Event-ID`.
const RESUME_LIMIT: i64 = 1000;

/// Every event as server-sent events, live (`event:` type, `id:` event ID, `data:` the event).
///
/// A client resuming with `Last-Event-ID` (or `?last_event_id=`) first gets the events written
/// since (up to 1,000), then live ones, none twice. Keep-alive comment every 15 s.
#[utoipa::path(
    get,
    path = "/api/v1/events/stream",
    tag = "events",
    params(EventStreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses(
        (status = 200, description = "An endless `text/event-stream`; each `data:` line is one event",
         content_type = "text/event-stream", body = EventMessage),
        (status = 503, description = "The events subsystem is not running, or the database is unavailable", body = ErrorEnvelope),
    )
)]
async fn stream(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let events = events(&state)?;
    let filter = Filter::new(
        q.get("device_id").map(String::as_str),
        q.get("type").map(String::as_str),
    );
    let resume_after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(q.get("last_event_id").map(String::as_str))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    // Subscribe before reading what was missed, so nothing falls between the two; events
    // that arrive both ways are sent once.
    let live = events.hub.subscribe(filter.clone());
    let missed = match resume_after {
        Some(id) => events.store.outbox_after_event(&id, RESUME_LIMIT).await?,
        None => Vec::new(),
    };
    let seen: std::collections::HashSet<String> =
        missed.iter().map(|r| r.event_id.clone()).collect();
    let replay: Vec<std::sync::Arc<pile_api::EventMessage>> = missed
        .iter()
        .map(message_of)
        .filter(|m| filter.matches(m))
        .map(std::sync::Arc::new)
        .collect();
    let live = live.filter(move |ev| std::future::ready(!seen.contains(&ev.event_id)));
    let body = futures::stream::iter(replay).chain(live).map(|ev| {
        let sse = SseEvent::default()
            .event(ev.event_type.as_str())
            .id(ev.event_id.as_str());
        Ok::<_, Infallible>(match serde_json::to_string(&*ev) {
            Ok(json) => sse.data(json),
            Err(_) => sse.comment("unserialisable event"),
        })
    });
    Ok(Sse::new(body)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response())
}
