//! Steps many cases share: waiting for devices and orders, driving a charge through the
//! gateway and the simulated pile, reading frames off the pile's wire.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pile_api::{
    ChargeRequest, ClientError, DeviceView, OrderRef, OrderStatus, OrderView, StopRequest,
};
use pile_sim::fleet::PileHandle;
use serde_json::{json, Value};

use crate::report::{now_unix_ms, CaseResult, Check};
use crate::stack::Ctx;

/// Polls `f` every `every` until it yields `Some`, or `timeout`.
pub async fn poll<T, F, Fut>(timeout: Duration, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until the gateway says the device is online (or offline when `online` is false).
pub async fn wait_device(
    ctx: &Ctx,
    device: &str,
    online: bool,
    timeout: Duration,
) -> Option<DeviceView> {
    poll(timeout, Duration::from_millis(200), || async {
        ctx.client
            .device(device)
            .await
            .ok()
            .filter(|d| d.online == online)
    })
    .await
}

/// Waits until the order satisfies `pred`; returns the last view seen either way.
pub async fn wait_order(
    ctx: &Ctx,
    order_no: &str,
    timeout: Duration,
    pred: impl Fn(&OrderView) -> bool,
) -> (bool, Option<OrderView>) {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Ok(o) = ctx.client.order(order_no).await {
            let ok = pred(&o);
            last = Some(o);
            if ok {
                return (true, last);
            }
        }
        if Instant::now() >= deadline {
            return (false, last);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn is_final(o: &OrderView) -> bool {
    matches!(
        o.status,
        OrderStatus::Completed | OrderStatus::Failed | OrderStatus::Cancelled
    )
}

/// The port's state as the simulated pile sees it (`idle`, `waiting_for_plug`, `charging`…).
pub fn sim_port_state(pile: &PileHandle, port: u16) -> Option<String> {
    pile.snapshot()
        .ports
        .iter()
        .find(|p| p.port_no == port)
        .map(|p| p.state.to_string())
}

/// Whether the simulated port has a charge (started by a command it received).
pub fn sim_port_has_charge(pile: &PileHandle, port: u16) -> bool {
    pile.snapshot()
        .ports
        .iter()
        .any(|p| p.port_no == port && p.charge.is_some())
}

/// A frame the pile received from the gateway, decoded by the protocol crate.
#[derive(Debug, Clone)]
pub struct WireFrame {
    pub at_ms: i64,
    pub command: String,
    pub name: String,
    pub summary: String,
}

/// Frames the pile received (server → device) at or after `since_ms`.
pub fn down_frames_since(pile: &PileHandle, since_ms: i64) -> Vec<WireFrame> {
    pile.frames()
        .into_iter()
        .filter(|f| {
            matches!(f.dir, pile_sim::pile::Direction::Down) && f.at_unix_ms as i64 >= since_ms
        })
        .map(|f| {
            let bytes = hex::decode(&f.hex).unwrap_or_default();
            match pile_protocol::analyze::analyze(&bytes) {
                Ok(a) => WireFrame {
                    at_ms: f.at_unix_ms as i64,
                    command: a.command,
                    name: a.name.to_string(),
                    summary: a.summary,
                },
                Err(_) => WireFrame {
                    at_ms: f.at_unix_ms as i64,
                    command: "?".into(),
                    name: "undecoded".into(),
                    summary: f.decoded,
                },
            }
        })
        .collect()
}

/// Whether a downlink frame looks like a control command (not an acknowledgement).
pub fn is_command(f: &WireFrame) -> bool {
    let n = f.name.to_ascii_lowercase();
    !(n.contains("ack") || n.contains("heartbeat") || n.contains("time") || n.contains("reply"))
}

/// What [`start_charge`] observed, step by step.
#[derive(Debug, Clone, Default)]
pub struct StartOutcome {
    pub called_at_ms: i64,
    pub api: Option<Result<OrderRef, (u16, String)>>,
    /// First command frame on the pile's wire after the call, and its delay.
    pub command: Option<WireFrame>,
    pub command_delay_ms: Option<i64>,
    /// The port lit up (the pile took the command).
    pub lit_after_ms: Option<i64>,
    pub plugged: bool,
    /// The gateway reported `charging`.
    pub charging_after_ms: Option<i64>,
    pub charging_view: Option<OrderView>,
}

impl StartOutcome {
    pub fn order_no(&self) -> Option<&str> {
        match &self.api {
            Some(Ok(r)) => Some(&r.order_no),
            _ => None,
        }
    }

    pub fn api_status(&self) -> String {
        match &self.api {
            Some(Ok(_)) => "200".into(),
            Some(Err((s, m))) => format!("{s} {m}"),
            None => "not called".into(),
        }
    }
}

pub fn client_err(e: &ClientError) -> (u16, String) {
    (e.status().unwrap_or(0), e.message())
}

/// A by-time charge request with the record's figures (500 fen, prices 150 + 50).
pub fn time_request(port: u32, secs: i64) -> ChargeRequest {
    ChargeRequest {
        port_no: port,
        charge_mode: pile_api::charge_mode::BY_TIME,
        duration: secs,
        amount: 500,
        price_per_kwh: 150,
        service_fee: 50,
        ..ChargeRequest::default()
    }
}

/// Calls the charge API, then follows the command onto the pile's wire, plugs the charger in
/// once the port lights, and waits for the gateway to report `charging`.
pub async fn start_charge(
    ctx: &Ctx,
    id: &str,
    pile: &PileHandle,
    device: &str,
    req: &ChargeRequest,
) -> StartOutcome {
    let port = req.port_no as u16;
    let mut out = StartOutcome {
        called_at_ms: now_unix_ms(),
        ..StartOutcome::default()
    };
    let t0 = Instant::now();
    let res = ctx.client.charge(device, req).await;
    out.api = Some(res.map_err(|e| client_err(&e)));
    let Some(order_no) = out.order_no().map(str::to_string) else {
        ctx.progress(id, format!("charge API refused: {}", out.api_status()));
        return out;
    };
    ctx.progress(
        id,
        format!("order {order_no} created on {device} port {port}"),
    );
    // The command on the wire and the port lighting up.
    let since = out.called_at_ms;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut lit = None;
    loop {
        if out.command.is_none() {
            out.command = down_frames_since(pile, since).into_iter().find(is_command);
            out.command_delay_ms = out.command.as_ref().map(|f| f.at_ms - since);
        }
        if sim_port_has_charge(pile, port) {
            lit = Some(());
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if lit.is_some() {
        out.lit_after_ms = Some(t0.elapsed().as_millis() as i64);
        if out.command.is_none() {
            out.command = down_frames_since(pile, since).into_iter().find(is_command);
            out.command_delay_ms = out.command.as_ref().map(|f| f.at_ms - since);
        }
        out.plugged = pile.plug(port).is_ok();
        ctx.progress(id, "port lit, charger plugged in");
    } else {
        ctx.progress(id, "the pile never took the start command (15 s)");
    }
    let (ok, view) = wait_order(ctx, &order_no, Duration::from_secs(20), |o| {
        o.status != OrderStatus::Pending
    })
    .await;
    if ok
        && view
            .as_ref()
            .is_some_and(|o| o.status == OrderStatus::Charging)
    {
        out.charging_after_ms = Some(t0.elapsed().as_millis() as i64);
        ctx.progress(id, "gateway reports charging");
    }
    out.charging_view = view;
    out
}

/// Waits for the order to settle (completed, failed or cancelled).
/// Stops `order_no` on `port_no` of `device` through the API.
pub async fn stop_order(
    ctx: &Ctx,
    device: &str,
    port_no: u32,
    order_no: &str,
) -> Result<pile_api::StopResult, ClientError> {
    let req = StopRequest {
        port_no,
        order_no: Some(order_no.to_string()),
    };
    ctx.client.stop(device, &req).await
}

pub async fn wait_settled(ctx: &Ctx, order_no: &str, timeout: Duration) -> Option<OrderView> {
    let (ok, v) = wait_order(ctx, order_no, timeout, is_final).await;
    if ok {
        v
    } else {
        None
    }
}

/// Records an order's settlement figures into the case's values under `prefix`.
pub fn record_order(r: &mut CaseResult, prefix: &str, o: &OrderView) {
    r.set(
        &format!("{prefix}order"),
        serde_json::to_value(o).unwrap_or(Value::Null),
    );
}

/// Progress samples as table rows.
pub fn progress_rows(samples: &[pile_api::ProgressSample]) -> Vec<BTreeMap<String, Value>> {
    samples
        .iter()
        .map(|s| {
            let mut m = BTreeMap::new();
            m.insert("at".into(), json!(s.at));
            m.insert("duration_sec".into(), json!(s.duration_sec));
            m.insert("energy_wh".into(), json!(s.energy_wh));
            m.insert("power_w".into(), json!(s.power_w));
            m.insert("status".into(), json!(s.status));
            m
        })
        .collect()
}

/// Integer division rounding half up (non-negative numerator, positive divisor).
pub fn div_half_up(num: i64, den: i64) -> i64 {
    if den <= 0 {
        return 0;
    }
    (num * 2 + den) / (den * 2)
}

/// The runner's own bill, in integer fen, from the energy it observed: API.md's rule
/// `energy_fee = round_half_up(Wh × price / 1000)`, `service = round_half_up(Wh × fee / 1000)`,
/// `final = min(amount, energy_fee + service)` (an amount of 0 is no cap). Written here from
/// the rule, not borrowed from the gateway, so a gateway rounding or pricing bug shows.
pub fn expected_bill(
    energy_wh: i64,
    price_per_kwh: i64,
    service_fee: i64,
    amount: i64,
) -> (i64, i64, i64) {
    let e = energy_wh.max(0);
    let energy_fee = div_half_up(e * price_per_kwh, 1000);
    let service = div_half_up(e * service_fee, 1000);
    let sum = energy_fee + service;
    (
        energy_fee,
        service,
        if amount > 0 { sum.min(amount) } else { sum },
    )
}

/// `min(amount, round(kWh × price) + round(kWh × fee))`, from kWh (kept for callers).
pub fn expected_amount(kwh: f64, price_per_kwh: i64, service_fee: i64, amount: i64) -> i64 {
    expected_bill(kwh_to_wh(kwh), price_per_kwh, service_fee, amount).2
}

/// The order's kWh back to the whole Wh the gateway stores.
pub fn kwh_to_wh(kwh: f64) -> i64 {
    (kwh * 1000.0).round() as i64
}

/// The money check: the gateway's fen against the runner's own bill, exactly. With
/// `nonzero`, a bill of 0 fails too: it proves nothing about the money path (2.1).
pub fn bill_check(o: &OrderView, req: &ChargeRequest, nonzero: bool) -> Check {
    let wh = kwh_to_wh(o.total_kwh);
    let (ef, sf, want) = expected_bill(wh, req.price_per_kwh, req.service_fee, req.amount);
    let priced = req.price_per_kwh > 0 || req.service_fee > 0;
    let exact = o.final_amount == want && o.energy_fee == ef && o.service_fee_amount == sf;
    Check::new(
        "amount_correct",
        "金额计算正确",
        format!(
            "{want} 分 (本工具按 {wh} Wh × ({}+{}) 分/度 独立计算: 电费 {ef} + 服务费 {sf}, 四舍五入到分, 封顶 {} 分{})",
            req.price_per_kwh, req.service_fee, req.amount,
            if nonzero { "; 须非零且逐分相等" } else { "; 逐分相等" }
        ),
        format!(
            "{} 分 (电费 {} + 服务费 {})",
            o.final_amount, o.energy_fee, o.service_fee_amount
        ),
        exact && (!nonzero || (priced && want > 0)),
    )
}

/// Checks of a by-time charge's settlement: completed, duration within ±5 s of the target,
/// energy plausible for the power seen, amount by the billing rule.
pub fn settlement_checks(
    o: Option<&OrderView>,
    target_s: i64,
    req: &ChargeRequest,
    nominal_power_w: f64,
    resolution_kwh: f64,
) -> Vec<Check> {
    let mut v = Vec::new();
    let Some(o) = o else {
        v.push(Check::new(
            "completed",
            "充电结束",
            "completed",
            "未结算 (超时)",
            false,
        ));
        return v;
    };
    v.push(Check::new(
        "completed",
        "充电结束",
        "completed",
        o.status.as_str(),
        o.status == OrderStatus::Completed,
    ));
    let err = (o.duration_sec - target_s).abs();
    v.push(Check::new(
        "duration_error",
        "时长误差",
        "≤5秒",
        format!("{err}"),
        err <= 5,
    ));
    let power = if o.peak_power > 0.0 {
        o.peak_power
    } else {
        nominal_power_w
    };
    // Energy the power seen could have delivered, widened by the protocol's resolution
    // (AP3000 reports whole 0.01 kWh, BKV whole Wh).
    let full = power * o.duration_sec as f64 / 3_600_000.0;
    let max_kwh = full * 1.1 + resolution_kwh;
    let min_kwh = (full * 0.5 - resolution_kwh).max(0.0);
    v.push(Check::new(
        "energy_plausible",
        "电量计量合理",
        format!("{min_kwh:.4}–{max_kwh:.4} 度 (峰值功率×时长, 含协议分辨率 {resolution_kwh} 度)"),
        format!("{:.4} 度", o.total_kwh),
        o.total_kwh >= min_kwh && o.total_kwh <= max_kwh && (o.total_kwh > 0.0 || min_kwh == 0.0),
    ));
    v.push(bill_check(o, req, false));
    v
}

/// BKV's smallest charge unit is a minute: round a wanted length up to whole minutes.
pub fn whole_minutes(d: Duration) -> i64 {
    let s = d.as_secs().max(60);
    s.div_ceil(60) as i64 * 60
}

/// Elapsed milliseconds as seconds with one decimal, for the record.
pub fn secs(ms: i64) -> String {
    format!("{:.1}", ms as f64 / 1000.0)
}

/// The smallest energy step a device ID's protocol reports, in kWh: AP3000 (8 hex digits)
/// counts 0.01 kWh, BKV counts Wh.
pub fn energy_resolution_kwh(device_id: &str) -> f64 {
    if device_id.len() == 8 {
        0.01
    } else {
        0.001
    }
}
