//! Device routes: charge, stop, device views, frames.

use super::*;

pub(super) async fn charge(
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

pub(super) async fn stop(
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

pub(super) async fn device(
    State(state): State<AppState>,
    Path(device_id): Path<String>,
) -> ApiResult {
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
pub(super) async fn devices(
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

pub(super) async fn frames(
    State(state): State<AppState>,
    Path(device_id): Path<String>,
) -> ApiResult {
    match state.service.gateway.frames(&device_id) {
        Some(f) => Ok(ok(f)),
        None if state.service.known_device(&device_id).await?.is_some() => {
            Ok(ok(Vec::<FrameRecord>::new()))
        }
        None => Err(ApiError::NotFound(format!("device {device_id} not found"))),
    }
}
