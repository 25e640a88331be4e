//! The HTTP control API: the [`FleetHandle`] operations for scenarios, the
//! TUI and `curl`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::fault::FaultKind;
use crate::fleet::{FleetError, FleetHandle, FleetSummary};
use crate::pile::{FrameSnapshot, PileError, PileSnapshot};

/// The one error type of the control surface.
#[derive(Debug)]
pub enum ControlError {
    NotFound(String),
    BadRequest(String),
}

impl From<FleetError> for ControlError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::NoSuchPile(_) => ControlError::NotFound(e.to_string()),
            FleetError::Pile(PileError::NoSuchPort { .. }) => ControlError::NotFound(e.to_string()),
            other => ControlError::BadRequest(other.to_string()),
        }
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            ControlError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ControlError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
        };
        (status, Json(json!({ "error": msg }))).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ControlError>;

#[derive(Debug, Deserialize)]
pub struct Page {
    pub offset: Option<usize>,
    pub limit: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
pub struct DropBody {
    /// Restore by itself after this many seconds; absent = until restored.
    pub secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
pub struct FaultBody {
    pub kind: FaultKind,
    pub secs: u64,
}

#[derive(Debug, Deserialize)]
pub struct FleetFaultBody {
    /// Share of the fleet, 0..=1.
    pub share: f64,
    pub kind: FaultKind,
    pub secs: u64,
}

#[derive(Debug, Serialize)]
pub struct FleetFaultReply {
    pub count: usize,
    pub piles: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct FleetReply {
    pub seed: u64,
    #[serde(flatten)]
    pub summary: FleetSummary,
}

/// The control routes over a fleet.
pub fn router(fleet: FleetHandle) -> Router {
    Router::new()
        .route("/fleet", get(fleet_summary))
        .route("/fleet/faults", post(fleet_faults))
        .route("/piles", get(list_piles))
        .route("/piles/{id}", get(one_pile))
        .route("/piles/{id}/frames", get(frames))
        .route("/piles/{id}/ports/{port}/plug", post(plug))
        .route("/piles/{id}/ports/{port}/unplug", post(unplug))
        .route("/piles/{id}/network/drop", post(drop_network))
        .route("/piles/{id}/network/restore", post(restore_network))
        .route("/piles/{id}/close", post(close))
        .route("/piles/{id}/faults", post(fault))
        .with_state(fleet)
}

/// Serves the control API on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    fleet: FleetHandle,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(fleet))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn fleet_summary(State(fleet): State<FleetHandle>) -> Json<FleetReply> {
    Json(FleetReply {
        seed: fleet.seed(),
        summary: fleet.summary(),
    })
}

async fn list_piles(
    State(fleet): State<FleetHandle>,
    Query(page): Query<Page>,
) -> Json<Vec<PileSnapshot>> {
    let offset = page.offset.unwrap_or(0);
    let limit = page.limit.unwrap_or(usize::MAX);
    Json(
        fleet
            .piles()
            .skip(offset)
            .take(limit)
            .map(|p| p.snapshot())
            .collect(),
    )
}

async fn one_pile(
    State(fleet): State<FleetHandle>,
    Path(id): Path<String>,
) -> ApiResult<PileSnapshot> {
    Ok(Json(fleet.pile_snapshot(&id)?))
}

async fn frames(
    State(fleet): State<FleetHandle>,
    Path(id): Path<String>,
) -> ApiResult<Vec<FrameSnapshot>> {
    Ok(Json(fleet.frames(&id)?))
}

async fn plug(
    State(fleet): State<FleetHandle>,
    Path((id, port)): Path<(String, u16)>,
) -> ApiResult<PileSnapshot> {
    fleet.plug(&id, port)?;
    Ok(Json(fleet.pile_snapshot(&id)?))
}

async fn unplug(
    State(fleet): State<FleetHandle>,
    Path((id, port)): Path<(String, u16)>,
) -> ApiResult<PileSnapshot> {
    fleet.unplug(&id, port)?;
    Ok(Json(fleet.pile_snapshot(&id)?))
}

async fn drop_network(
    State(fleet): State<FleetHandle>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<PileSnapshot> {
    // The body is optional: no body (or `{}`) drops until restored.
    let secs = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<DropBody>(&body)
            .map_err(|e| ControlError::BadRequest(format!("invalid body: {e}")))?
            .secs
    };
    fleet.drop_network(&id, secs)?;
    Ok(Json(fleet.pile_snapshot(&id)?))
}

async fn restore_network(
    State(fleet): State<FleetHandle>,
    Path(id): Path<String>,
) -> ApiResult<PileSnapshot> {
    fleet.restore_network(&id)?;
    Ok(Json(fleet.pile_snapshot(&id)?))
}

async fn close(
    State(fleet): State<FleetHandle>,
    Path(id): Path<String>,
) -> ApiResult<PileSnapshot> {
    fleet.close(&id)?;
    Ok(Json(fleet.pile_snapshot(&id)?))
}

async fn fault(
    State(fleet): State<FleetHandle>,
    Path(id): Path<String>,
    Json(body): Json<FaultBody>,
) -> ApiResult<PileSnapshot> {
    fleet.inject_fault(&id, body.kind, body.secs)?;
    Ok(Json(fleet.pile_snapshot(&id)?))
}

async fn fleet_faults(
    State(fleet): State<FleetHandle>,
    Json(body): Json<FleetFaultBody>,
) -> ApiResult<FleetFaultReply> {
    let piles = fleet.fleet_faults(body.share, body.kind, body.secs)?;
    Ok(Json(FleetFaultReply {
        count: piles.len(),
        piles,
    }))
}
