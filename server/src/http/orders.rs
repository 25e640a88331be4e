//! Order routes.

use super::*;

pub(super) async fn order(
    State(state): State<AppState>,
    Path(order_no): Path<String>,
) -> ApiResult {
    let o = state
        .service
        .store
        .order(&order_no)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("order {order_no} not found")))?;
    Ok(ok(order_view(&o)))
}

pub(super) async fn progress(
    State(state): State<AppState>,
    Path(order_no): Path<String>,
) -> ApiResult {
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

pub(super) async fn orders(
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
