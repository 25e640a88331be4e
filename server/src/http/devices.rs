//! Device routes: charge, stop, device views, frames.

use super::*;

/// Start charging a port.
///
/// Creates an order (`pending`) and sends its start command, or queues it when the device is
/// offline (it expires after `--command-ttl`, the order `cancelled` with reason 11).
/// Validation, each failure a 400 naming the field: `port_no` between 1 and the device's
/// port count (1–500 while the device has not reported it); `charge_mode` 1–4; `duration` ≥ 1
/// for mode 1; `energy_wh` ≥ 1 for mode 2; `amount` required without prices, ≥ 1 for mode 3;
/// mode 3 and mode 4 need `price_per_kwh` or `service_fee`. With prices, `amount` 0 or absent
/// means no cap.
#[utoipa::path(
    post,
    path = "/api/v1/third/devices/{device_id}/charge",
    tag = "devices",
    params(("device_id" = String, Path, description = "The device's ID (letters and digits)",
            pattern = r"^[A-Za-z0-9]{1,64}$", example = "82210225000520")),
    request_body(content = ChargeRequest, examples(
        ("by_time" = (summary = "5 minutes, 500 fen prepaid, prices 150 + 50 fen/kWh",
            value = json!({"port_no": 1, "charge_mode": 1, "duration": 300, "amount": 500,
                           "price_per_kwh": 150, "service_fee": 50}))),
        ("by_time_flat" = (summary = "1 hour for a flat 300 fen (no prices: billed pro rata of the hour)",
            value = json!({"port_no": 2, "charge_mode": 1, "duration": 3600, "amount": 300}))),
        ("by_amount" = (summary = "Until 1000 fen are used at 150 fen/kWh",
            value = json!({"port_no": 1, "charge_mode": 3, "amount": 1000, "price_per_kwh": 150}))),
        ("until_full" = (summary = "Until full at 150 + 50 fen/kWh, no cap",
            value = json!({"port_no": 1, "charge_mode": 4, "price_per_kwh": 150, "service_fee": 50}))),
    )),
    responses(
        (status = 200, description = "The order (`pending`); the same `order_no` again returns the same order",
         body = Envelope<OrderRef>),
        (status = 400, description = "A field is invalid or missing; `message` names it", body = ErrorEnvelope),
        (status = 404, description = "Unknown device", body = ErrorEnvelope),
        (status = 409, description = "The port already has a pending or charging order (`port is busy`), \
            or `order_no` is already used for another device or port", body = ErrorEnvelope),
        (status = 503, description = "The device is offline and `queue_if_offline` is false, or the database \
            is unavailable", body = ErrorEnvelope),
    )
)]
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
    let amount = int_field(&b, "amount", false)?;
    let price = int_field(&b, "price_per_kwh", false)?.unwrap_or(0);
    let service_fee = int_field(&b, "service_fee", false)?.unwrap_or(0);
    let order_no = str_field(&b, "order_no")?.filter(|s| !s.is_empty());
    if let Some(no) = &order_no {
        valid_order_no(no)?;
    }
    let queue = bool_field(&b, "queue_if_offline")?.unwrap_or(true);
    let spec = match domain::validate_charge(
        port_no,
        mode,
        duration,
        energy_wh,
        amount.unwrap_or(0),
        price,
        service_fee,
        None,
    ) {
        Ok(spec) => spec,
        // The range depends on the device: answer with its real port count.
        Err(f) if f.field == "port_no" => {
            let device = known_device(&state, &device_id).await?;
            check_port(port_no, device.port_count)?;
            return Err(ApiError::bad(f.field, f.reason));
        }
        Err(f) => return Err(ApiError::bad(f.field, f.reason)),
    };
    billing_rules(mode, amount, price, service_fee)?;
    let order = state
        .service
        .charge(&device_id, &spec, order_no, queue)
        .await?;
    Ok(ok(order_ref(&order)))
}

/// A device the store knows, or 404.
async fn known_device(state: &AppState, device_id: &str) -> Result<DeviceRow, ApiError> {
    state
        .service
        .known_device(device_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("device {device_id} not found")))
}

/// Stop the running order of a port.
///
/// A pending order that has not reached the device is cancelled at once (`cancelled`); a
/// charging one gets a stop command (`stopping`) and settles — `completed`, `end_reason` 3 —
/// when the device reports its end (`order.completed` event, or `GET` the order).
#[utoipa::path(
    post,
    path = "/api/v1/third/devices/{device_id}/stop",
    tag = "devices",
    params(("device_id" = String, Path, description = "The device's ID (letters and digits)",
            pattern = r"^[A-Za-z0-9]{1,64}$", example = "82210225000520")),
    request_body(content = StopRequest, example = json!({"port_no": 1})),
    responses(
        (status = 200, description = "What the stop did to the order", body = Envelope<StopResult>),
        (status = 400, description = "A field is invalid or missing; `message` names it", body = ErrorEnvelope),
        (status = 404, description = "Unknown device", body = ErrorEnvelope),
        (status = 409, description = "Nothing is running on the port, or `order_no` is not the order running there",
         body = ErrorEnvelope),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    )
)]
pub(super) async fn stop(
    State(state): State<AppState>,
    Path(device_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    valid_device_id(&device_id)?;
    let b = json_body(body)?;
    let port_no = int_field(&b, "port_no", true)?.unwrap_or(0);
    let order_no = str_field(&b, "order_no")?.filter(|s| !s.is_empty());
    if let Some(no) = &order_no {
        valid_order_no(no)?;
    }
    let device = known_device(&state, &device_id).await?;
    check_port(port_no, device.port_count)?;
    let order = state
        .service
        .stop(&device_id, port_no as u32, order_no.as_deref())
        .await?;
    Ok(ok(StopResult {
        order_no: order.order_no,
        device_id: order.device_id,
        port_no: order.port_no as u32,
        status: StopStatus::of(order.status),
    }))
}

/// Device state with its ports.
#[utoipa::path(
    get,
    path = "/api/v1/third/devices/{device_id}",
    tag = "devices",
    params(("device_id" = String, Path, description = "The device's ID (letters and digits)",
            pattern = r"^[A-Za-z0-9]{1,64}$", example = "82210225000520")),
    responses(
        (status = 200, description = "The device; ports `offline` while it is", body = Envelope<DeviceView>),
        (status = 400, description = "`device_id` is not 1–64 letters or digits", body = ErrorEnvelope),
        (status = 404, description = "Unknown device", body = ErrorEnvelope),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    )
)]
pub(super) async fn device(
    State(state): State<AppState>,
    Path(device_id): Path<String>,
) -> ApiResult {
    valid_device_id(&device_id)?;
    let service = &state.service;
    // Held by the read model (so committed, not a registration still in the writer): its
    // cached rendering while nothing it shows changed.
    if let crate::service::Lookup::Found(held) = service.read.held(&device_id) {
        return Ok(ok(held_view(&state, &held)?));
    }
    // Otherwise the store, flushing a new device's registration first.
    let lookup = || async {
        match service.read.device(&device_id) {
            crate::service::Lookup::Found(parts) => Ok(Some(parts)),
            crate::service::Lookup::Absent => Ok(None),
            crate::service::Lookup::Unknown => service.store.device_with_ports(&device_id).await,
        }
    };
    let (d, ports, active) = service
        .lookup_device(&device_id, lookup)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("device {device_id} not found")))?;
    Ok(ok(build_view(&state.service, d, ports, active)))
}

/// Paged device list.
///
/// The device list shows what the store has committed (answered from the in-memory read
/// model): a device that just connected for the first time appears once the batched writer
/// commits it (one batch, 200 ms by default). Single-device lookups (GET, charge, stop) flush
/// the writer instead and never miss a connected device.
#[utoipa::path(
    get,
    path = "/api/v1/third/devices",
    tag = "devices",
    params(DeviceListQuery),
    responses(
        (status = 200, description = "One page; `total` counts every match", body = Envelope<Page<DeviceView>>),
        (status = 400, description = "`online`, `page` or `size` is invalid; `message` names it", body = ErrorEnvelope),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    )
)]
pub(super) async fn devices(
    State(state): State<AppState>,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult {
    let q = single_params(q)?;
    let (page, size) = paging(&q)?;
    let online = match q.get("online").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => None,
        Some("true" | "1") => Some(true),
        Some("false" | "0") => Some(false),
        Some(_) => return Err(ApiError::bad("online", "must be true or false")),
    };
    // From the read model unless a device is being written at this moment.
    let (items, total) = match state.service.read.page(online, page, size) {
        Some((page_items, total)) => {
            let mut items = Vec::with_capacity(page_items.len());
            for item in page_items {
                let view = match item {
                    crate::service::PageItem::Memory(held) => held_view(&state, &held)?,
                    crate::service::PageItem::Store(id) => {
                        match state.service.store.device_with_ports(&id).await? {
                            Some((d, ports, active)) => {
                                raw(&build_view(&state.service, d, ports, active))?
                            }
                            None => continue,
                        }
                    }
                };
                items.push(view);
            }
            (items, total)
        }
        None => {
            // One query for the page: devices, their ports and active orders (#13).
            let (rows, total) = state
                .service
                .store
                .devices_with_ports(online, page, size)
                .await?;
            let items = rows
                .into_iter()
                .map(|(d, ports, active)| raw(&build_view(&state.service, d, ports, active)))
                .collect::<Result<Vec<_>, _>>()?;
            (items, total)
        }
    };
    Ok(ok(Page {
        items,
        total,
        page,
        size,
    }))
}

/// The device's last frames, oldest first.
///
/// The gateway keeps the last frames of each device in memory — up to 200 within 4 KB (not
/// across restarts);
/// `limit` returns only the newest ones.
#[utoipa::path(
    get,
    path = "/api/v1/admin/devices/{device_id}/frames",
    tag = "admin",
    params(("device_id" = String, Path, description = "The device's ID (letters and digits)",
            pattern = r"^[A-Za-z0-9]{1,64}$", example = "82210225000520"),
           FramesQuery),
    responses(
        (status = 200, description = "Frames, oldest first (empty for a known device that sent none since start)",
         body = Envelope<Vec<FrameRecord>>),
        (status = 400, description = "`device_id` or `limit` is invalid; `message` names it", body = ErrorEnvelope),
        (status = 404, description = "Unknown device", body = ErrorEnvelope),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    )
)]
pub(super) async fn frames(
    State(state): State<AppState>,
    Path(device_id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult {
    let q = single_params(q)?;
    valid_device_id(&device_id)?;
    let ring = crate::gateway::FRAME_RING as u32;
    let limit = query_num(&q, "limit", ring, ring)? as usize;
    match state.service.gateway.frames(&device_id) {
        Some(mut f) => {
            let extra = f.len().saturating_sub(limit);
            f.drain(..extra);
            Ok(ok(f))
        }
        None if state.service.known_device(&device_id).await?.is_some() => {
            Ok(ok(Vec::<FrameRecord>::new()))
        }
        None => Err(ApiError::NotFound(format!("device {device_id} not found"))),
    }
}

/// An optional JSON body: absent or empty is `{}`.
fn optional_body(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    match &body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(Map::new()),
        _ => json_body(body),
    }
}

fn command_view(c: &crate::store::CmdRow) -> CommandView {
    CommandView {
        id: c.id,
        device_id: c.device_id.clone(),
        command: c.command.clone(),
        port_no: c.port_no.and_then(|p| u32::try_from(p).ok()),
        order_no: c.order_no.clone(),
        status: CommandStatus::parse(&c.status).unwrap_or(CommandStatus::Refused),
        attempts: c.attempts,
        created_at: c.created_at_ms / 1000,
        sent_at: c.last_sent_at_ms.or(c.sent_at_ms).map(|t| t / 1000),
        result: c.result.clone(),
    }
}

/// A device's command as its view; another device's command is not found.
async fn device_command_view(state: &AppState, device_id: &str, id: i64) -> ApiResult {
    let row = state
        .service
        .store
        .command(id)
        .await?
        .filter(|c| c.device_id == device_id)
        .ok_or_else(|| {
            ApiError::NotFound(format!("command {id} not found for device {device_id}"))
        })?;
    Ok(ok(command_view(&row)))
}

/// Sound and light on the pile, so a technician can find it (AP3000 0x96).
///
/// The command goes to the connected device at once; follow it with
/// `GET /api/v1/third/devices/{device_id}/commands/{id}` (`acked` when the pile answered).
/// BKV piles have no such command: the command is `refused` with "not supported by this
/// device". AP3000 firmware older than V8.6 does not answer it; it then `expired`s after
/// `--command-ttl`.
#[utoipa::path(
    post,
    path = "/api/v1/third/devices/{device_id}/locate",
    tag = "devices",
    params(("device_id" = String, Path, description = "The device's ID (letters and digits)",
            pattern = r"^[A-Za-z0-9]{1,64}$", example = "82210225000520")),
    request_body(content = Option<LocateRequest>, description = "Optional; `seconds` defaults to 10"),
    responses(
        (status = 200, description = "The command as sent (`queued` or `sent`)", body = Envelope<CommandView>),
        (status = 400, description = "`seconds` is not 1–255 or the body is not a JSON object", body = ErrorEnvelope),
        (status = 404, description = "Unknown device", body = ErrorEnvelope),
        (status = 503, description = "The device is offline, or the database is unavailable", body = ErrorEnvelope),
    )
)]
pub(super) async fn locate(
    State(state): State<AppState>,
    Path(device_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    valid_device_id(&device_id)?;
    let b = optional_body(body)?;
    let seconds = match int_field(&b, "seconds", false)? {
        None => 10,
        Some(s) => u8::try_from(s)
            .ok()
            .filter(|s| *s >= 1)
            .ok_or_else(|| ApiError::bad("seconds", "must be between 1 and 255"))?,
    };
    let id = state
        .service
        .device_command(
            &device_id,
            crate::core::CommandSpec::Locate {
                port_no: None,
                seconds,
            },
        )
        .await?;
    device_command_view(&state, &device_id, id).await
}

/// Ask the pile for a port's state now; its answer refreshes the device view.
///
/// BKV answers 0x1D for the port's socket (both holes); AP3000 answers 0x81 with its
/// registration and a heartbeat (every port). The command is `acked` when the answer arrived;
/// read `GET /api/v1/third/devices/{device_id}` after that.
#[utoipa::path(
    post,
    path = "/api/v1/third/devices/{device_id}/query",
    tag = "devices",
    params(("device_id" = String, Path, description = "The device's ID (letters and digits)",
            pattern = r"^[A-Za-z0-9]{1,64}$", example = "82210225000520")),
    request_body(content = Option<PortQueryRequest>, description = "Optional; `port_no` defaults to 1"),
    responses(
        (status = 200, description = "The command as sent (`queued` or `sent`)", body = Envelope<CommandView>),
        (status = 400, description = "`port_no` is outside the device's ports or the body is not a JSON object",
         body = ErrorEnvelope),
        (status = 404, description = "Unknown device", body = ErrorEnvelope),
        (status = 503, description = "The device is offline, or the database is unavailable", body = ErrorEnvelope),
    )
)]
pub(super) async fn query_ports(
    State(state): State<AppState>,
    Path(device_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    valid_device_id(&device_id)?;
    let b = optional_body(body)?;
    let port_no = match int_field(&b, "port_no", false)? {
        None => 1,
        Some(p) => {
            let device = known_device(&state, &device_id).await?;
            check_port(p, device.port_count)?;
            p as u32
        }
    };
    let id = state
        .service
        .device_command(
            &device_id,
            crate::core::CommandSpec::Query {
                port_no: Some(port_no),
            },
        )
        .await?;
    device_command_view(&state, &device_id, id).await
}

/// A device command: where it is in its life and the device's answer.
#[utoipa::path(
    get,
    path = "/api/v1/third/devices/{device_id}/commands/{command_id}",
    tag = "devices",
    params(("device_id" = String, Path, description = "The device's ID (letters and digits)",
            pattern = r"^[A-Za-z0-9]{1,64}$", example = "82210225000520"),
           ("command_id" = i64, Path, description = "The command's ID", example = 42)),
    responses(
        (status = 200, description = "The command", body = Envelope<CommandView>),
        (status = 400, description = "`device_id` or `command_id` is invalid", body = ErrorEnvelope),
        (status = 404, description = "No such command for this device", body = ErrorEnvelope),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    )
)]
pub(super) async fn command(
    State(state): State<AppState>,
    Path((device_id, command_id)): Path<(String, String)>,
) -> ApiResult {
    valid_device_id(&device_id)?;
    let id: i64 = command_id
        .parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| ApiError::bad("command_id", "must be a positive integer"))?;
    device_command_view(&state, &device_id, id).await
}
