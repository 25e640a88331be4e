//! Order routes.

use super::*;

/// Order detail with its settlement.
#[utoipa::path(
    get,
    path = "/api/v1/third/orders/{order_no}",
    tag = "orders",
    params(("order_no" = String, Path, description = "The order number (the client's or the gateway's)",
            pattern = r"^[A-Za-z0-9._-]{1,64}$", example = "platform-0001")),
    responses(
        (status = 200, description = "The order", body = Envelope<OrderView>),
        (status = 400, description = "`order_no` is not 1–64 letters, digits, '-', '_' or '.'", body = ErrorEnvelope),
        (status = 404, description = "Unknown order", body = ErrorEnvelope),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    )
)]
pub(super) async fn order(
    State(state): State<AppState>,
    Path(order_no): Path<String>,
) -> ApiResult {
    valid_order_no(&order_no)?;
    // Pending and charging orders from the read model; settled or unknown ones from the store.
    if let Some(o) = state.service.read.active_order(&order_no) {
        return Ok(ok(order_view(&o)));
    }
    let o = state
        .service
        .store
        .order(&order_no)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("order {order_no} not found")))?;
    Ok(ok(order_view(&o)))
}

/// Progress samples of an order, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/third/orders/{order_no}/progress",
    tag = "orders",
    params(("order_no" = String, Path, description = "The order number (the client's or the gateway's)",
            pattern = r"^[A-Za-z0-9._-]{1,64}$", example = "platform-0001")),
    responses(
        (status = 200, description = "The samples", body = Envelope<Vec<ProgressSample>>),
        (status = 400, description = "`order_no` is not 1–64 letters, digits, '-', '_' or '.'", body = ErrorEnvelope),
        (status = 404, description = "Unknown order", body = ErrorEnvelope),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    )
)]
pub(super) async fn progress(
    State(state): State<AppState>,
    Path(order_no): Path<String>,
) -> ApiResult {
    valid_order_no(&order_no)?;
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

/// Paged order list, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/third/orders",
    tag = "orders",
    params(OrderListQuery),
    responses(
        (status = 200, description = "One page; `total` counts every match", body = Envelope<Page<OrderView>>),
        (status = 400, description = "`status`, `device_id`, `page` or `size` is invalid; `message` names it",
         body = ErrorEnvelope),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    )
)]
pub(super) async fn orders(
    State(state): State<AppState>,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult {
    let q = single_params(q)?;
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
    if let Some(id) = device_id {
        valid_device_id(id)?;
    }
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
