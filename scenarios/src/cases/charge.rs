//! 2.1 charge by time and 2.2 remote stop (and the same flows on AP3000 for X.6).

use std::time::{Duration, Instant};

use pile_api::{OrderStatus, OrderView, ProgressSample};
use pile_sim::fleet::PileHandle;
use serde_json::json;

use crate::cases::common::*;
use crate::report::{now_unix, CaseResult, Check, Status};
use crate::stack::{Ctx, SEED_A_POWER_W, SEED_BKV_A};

/// Nominal simulated charger power (pile-sim's default).
pub const NOMINAL_W: f64 = 180.0;

/// 2.1 on `82210225000520` port 1.
pub async fn by_time(ctx: &Ctx) -> CaseResult {
    let target = whole_minutes(ctx.profile.charge_target);
    by_time_on(ctx, "2.1", "按时长充电", SEED_BKV_A, 1, target, false).await
}

/// 2.2 on `82210225000520` port 2.
pub async fn remote_stop(ctx: &Ctx) -> CaseResult {
    remote_stop_on(ctx, "2.2", "远程停止充电", SEED_BKV_A, 2, false).await
}

/// The pile a case drives, or the case marked not run.
pub fn need_pile(ctx: &Ctx, r: &mut CaseResult, id: &str) -> Option<PileHandle> {
    match ctx.pile(id) {
        Ok(p) => Some(p),
        Err(e) => {
            r.status = Status::NotRun(e);
            None
        }
    }
}

/// Checks of the progress samples: reported every period (±1 s median), enough of them.
pub fn progress_checks(samples: &[ProgressSample], period_s: u64, charged_s: i64) -> Check {
    let mut gaps: Vec<i64> = samples.windows(2).map(|w| w[1].at - w[0].at).collect();
    gaps.sort_unstable();
    let median = gaps.get(gaps.len() / 2).copied();
    let want = ((charged_s as f64 / period_s.max(1) as f64) * 0.5).floor() as usize;
    let ok = samples.len() >= want.max(2) && median.is_some_and(|m| m <= period_s as i64 + 1);
    Check::new(
        "progress",
        "充电进度",
        format!("每{period_s}秒更新 (≥{} 条)", want.max(2)),
        format!(
            "{} 条, 间隔中位数 {}",
            samples.len(),
            median.map_or("n/a".into(), |m| format!("{m} 秒"))
        ),
        ok,
    )
}

/// The progress table's 时长 column means seconds: each sample's duration grows with the
/// samples' own clock (±2 s per step for whole-second rounding), never stuck at a minute
/// counter (0, 60, 60, 60 …).
pub fn progress_seconds_check(samples: &[ProgressSample]) -> Check {
    let bad: Vec<String> = samples
        .windows(2)
        .filter_map(|w| {
            let (dd, dt) = (w[1].duration_sec - w[0].duration_sec, w[1].at - w[0].at);
            ((dd - dt).abs() > 2 || dd < 0)
                .then(|| format!("{}→{} (间隔 {dt} 秒)", w[0].duration_sec, w[1].duration_sec))
        })
        .collect();
    let grows = samples.last().map(|s| s.duration_sec) > samples.first().map(|s| s.duration_sec);
    Check::new(
        "progress_seconds",
        "进度时长(秒)",
        "逐条随时间增长, 每步与样本间隔相差 ≤2 秒",
        if samples.len() < 2 {
            format!("样本 {} 条, 无法判断", samples.len())
        } else if bad.is_empty() {
            format!(
                "{} → {} 秒, {} 条样本逐条增长",
                samples[0].duration_sec,
                samples[samples.len() - 1].duration_sec,
                samples.len()
            )
        } else {
            format!(
                "{} 处不符: {}",
                bad.len(),
                bad.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            )
        },
        samples.len() >= 2 && bad.is_empty() && grows,
    )
}

/// 2.1 (and X.6's first half): the whole by-time flow with the record's steps.
pub async fn by_time_on(
    ctx: &Ctx,
    id: &str,
    title: &str,
    device: &str,
    port: u32,
    target: i64,
    want_0x82: bool,
) -> CaseResult {
    let mut r = CaseResult::new(id, title);
    let Some(pile) = need_pile(ctx, &mut r, device) else {
        return r;
    };
    r.set("device_id", device);
    r.set("port_no", port);
    r.set("target_duration_s", target);
    r.set("amount_fen", 500);
    if wait_device(ctx, device, true, Duration::from_secs(20))
        .await
        .is_none()
    {
        r.note(format!("{device} 在 20 秒内未在网关上线"));
    }
    let req = time_request(port, target);
    r.set("start_time", now_unix());
    let s = start_charge(ctx, id, &pile, device, &req).await;
    let order_no = s.order_no().map(str::to_string);
    r.set("order_no", json!(order_no));
    r.push(Check::new(
        "api_call",
        "API调用",
        "200",
        s.api_status(),
        matches!(s.api, Some(Ok(_))),
    ));
    let created = match &s.api {
        Some(Ok(o)) => o.status.as_str().to_string(),
        _ => "未创建".into(),
    };
    r.push(Check::new(
        "order_pending",
        "订单创建",
        "pending",
        created.clone(),
        created == "pending",
    ));
    let cmd_expect = if want_0x82 {
        "0x82 sent"
    } else {
        "启动指令下发"
    };
    let cmd_ok = s.lit_after_ms.is_some()
        && s.command
            .as_ref()
            .is_some_and(|c| !want_0x82 || c.command.eq_ignore_ascii_case("0x82"));
    r.push(Check::new(
        "command_sent",
        "指令下发",
        cmd_expect,
        match (&s.command, s.command_delay_ms) {
            (Some(c), Some(d)) => format!("{} {} ({} 秒后)", c.command, c.name, secs(d)),
            _ if s.lit_after_ms.is_some() => "设备已执行, 但未抓到下行帧".into(),
            _ => "15 秒内设备未收到指令".into(),
        },
        cmd_ok,
    ));
    r.set(
        "command_frame",
        json!(s.command.as_ref().map(|c| json!({"command": c.command, "name": c.name, "summary": c.summary, "delay_ms": s.command_delay_ms}))),
    );
    r.push(Check::new(
        "plugged",
        "插入插头",
        "指示灯亮",
        match s.lit_after_ms {
            Some(ms) => format!("指示灯亮 ({} 秒), 已插入", secs(ms)),
            None => "指示灯未亮".into(),
        },
        s.lit_after_ms.is_some() && s.plugged,
    ));
    r.push(Check::new(
        "charging",
        "订单确认",
        "charging",
        match (&s.charging_view, s.charging_after_ms) {
            (Some(o), Some(ms)) => format!("{} ({} 秒)", o.status, secs(ms)),
            (Some(o), None) => o.status.to_string(),
            (None, _) => "无".into(),
        },
        s.charging_after_ms.is_some(),
    ));
    let Some(order_no) = order_no else {
        r.push(Check::new(
            "progress",
            "充电进度",
            "每周期更新",
            "无订单",
            false,
        ));
        r.push(Check::new(
            "completed",
            "充电结束",
            "completed",
            "无订单",
            false,
        ));
        return r;
    };
    // Follow the charge live, one line per period.
    let started = Instant::now();
    let limit = Duration::from_secs(target as u64 + 60);
    let mut fin: Option<OrderView> = None;
    let mut sim_seen: Option<(u64, f64)> = None;
    while started.elapsed() < limit {
        if let Some(c) = pile
            .snapshot()
            .ports
            .iter()
            .find(|p| u32::from(p.port_no) == port)
            .and_then(|p| p.charge.as_ref())
        {
            sim_seen = Some((c.elapsed_s, c.energy_wh));
        }
        match ctx.client.order(&order_no).await {
            Ok(o) if is_final(&o) => {
                fin = Some(o);
                break;
            }
            Ok(o) => ctx.progress(
                id,
                format!(
                    "{} {} s, {:.4} kWh, {:.0} W",
                    o.status, o.duration_sec, o.total_kwh, o.current_power
                ),
            ),
            Err(e) => ctx.progress(id, format!("order read failed: {e}")),
        }
        tokio::time::sleep(ctx.profile.heartbeat.max(Duration::from_secs(1))).await;
    }
    r.set("end_time", now_unix());
    let samples = ctx.client.progress(&order_no).await.unwrap_or_default();
    r.tables.insert("progress".into(), progress_rows(&samples));
    r.push(progress_checks(
        &samples,
        ctx.profile.heartbeat.as_secs().max(1),
        fin.as_ref().map_or(target, |o| o.duration_sec),
    ));
    r.push(progress_seconds_check(&samples));
    if let Some((el, wh)) = sim_seen {
        // The pile's own meter, last read while it charged: the truth the bill rests on.
        r.set("sim_last_elapsed_s", el);
        r.set("sim_last_energy_wh", wh);
    }
    if let Some(o) = &fin {
        record_order(&mut r, "", o);
        r.set("duration_sec", o.duration_sec);
        r.set("total_kwh", o.total_kwh);
        r.set("final_amount", o.final_amount);
        r.set("end_reason", json!(o.end_reason));
        r.set(
            "end_reason_name",
            json!(o.end_reason_text.clone().or(o.end_reason_name.clone())),
        );
        r.set("peak_power_w", o.peak_power);
    }
    let nominal = if device == SEED_BKV_A {
        SEED_A_POWER_W
    } else {
        NOMINAL_W
    };
    r.set("sim_power_w", nominal);
    for c in settlement_checks(
        fin.as_ref(),
        target,
        &req,
        nominal,
        energy_resolution_kwh(device),
    ) {
        // 2.1 is the record's money check: its bill must be non-zero and exact.
        match (&fin, c.key.as_str()) {
            (Some(o), "amount_correct") if id == "2.1" => r.push(bill_check(o, &req, true)),
            _ => r.push(c),
        }
    }
    webhook_checks(ctx, &mut r, &order_no, fin.is_some()).await;
    r
}

/// Waits for the order's webhooks and records them: `charging.started`, `charging.progress`
/// × n, `order.completed`, each verified by the receiver.
pub async fn webhook_checks(ctx: &Ctx, r: &mut CaseResult, order_no: &str, settled: bool) {
    let want_done = |ev: &[crate::receiver::Received]| {
        ev.iter()
            .any(|e| e.order_no.as_deref() == Some(order_no) && e.event_type == "order.completed")
    };
    if settled {
        // Deliveries may be retrying (X.4 runs at the same time): backoff 1+2+4+8+16 s. When
        // nothing at all has arrived in this run, webhooks are not flowing; do not wait long.
        ctx.receiver.wait_for(webhook_wait(ctx), want_done).await;
    }
    let ev = ctx.receiver.events_for_order(order_no);
    let count = |t: &str| ev.iter().filter(|e| e.event_type == t).count();
    let (started, progress, completed) = (
        count("charging.started"),
        count("charging.progress"),
        count("order.completed"),
    );
    r.set("webhook.charging_started", started);
    r.set("webhook.charging_progress", progress);
    r.set("webhook.order_completed", completed);
    r.set(
        "webhook.types",
        json!(ev.iter().map(|e| e.event_type.clone()).collect::<Vec<_>>()),
    );
    let bad = ctx.receiver.stats().bad_signature;
    r.push(Check::new(
        "webhooks",
        "Webhook事件接收",
        "charging.started, charging.progress × n, order.completed, 签名通过",
        format!("started {started}, progress {progress}, completed {completed}, 签名错误 {bad}"),
        started >= 1 && progress >= 1 && completed >= 1 && bad == 0,
    ));
}

/// How long to wait for an order's last webhook.
pub fn webhook_wait(ctx: &Ctx) -> Duration {
    if ctx.receiver.stats().requests > 0 {
        Duration::from_secs(35)
    } else {
        Duration::from_secs(5)
    }
}

/// Pure criteria of a remote stop: stop API 200, the device stopped, `completed`, duration
/// ≈ wait (±5 s), `end_reason` 3.
pub fn remote_stop_checks(
    stop_api: &Result<(), (u16, String)>,
    device_stopped_after_ms: Option<i64>,
    order: Option<&OrderView>,
    wait_s: i64,
) -> Vec<Check> {
    let mut v = vec![
        Check::new(
            "stop_api",
            "调用停止API",
            "200",
            match stop_api {
                Ok(()) => "200".to_string(),
                Err((s, m)) => format!("{s} {m}"),
            },
            stop_api.is_ok(),
        ),
        Check::new(
            "device_stopped",
            "设备停止",
            "指示灯灭",
            match device_stopped_after_ms {
                Some(ms) => format!("指示灯灭 ({} 秒后)", secs(ms)),
                None => "设备仍在充电".into(),
            },
            device_stopped_after_ms.is_some(),
        ),
    ];
    let status = order.map(|o| o.status);
    v.push(Check::new(
        "completed",
        "订单结算",
        "completed",
        status.map_or("未结算".into(), |s| s.to_string()),
        status == Some(OrderStatus::Completed),
    ));
    let dur = order.map(|o| o.duration_sec);
    v.push(Check::new(
        "duration",
        "时长验证",
        format!("≈{wait_s}秒 (±5)"),
        dur.map_or("n/a".into(), |d| d.to_string()),
        dur.is_some_and(|d| (d - wait_s).abs() <= 5),
    ));
    let reason = order.and_then(|o| o.end_reason);
    v.push(Check::new(
        "end_reason",
        "结束原因",
        "远程停止(3)",
        match order {
            Some(o) => format!(
                "{} {}",
                o.end_reason.map_or("无".into(), |r| r.to_string()),
                o.end_reason_text
                    .clone()
                    .or(o.end_reason_name.clone())
                    .unwrap_or_default()
            ),
            None => "n/a".into(),
        },
        reason == Some(3),
    ));
    v
}

/// 2.2 (and X.6's second half).
pub async fn remote_stop_on(
    ctx: &Ctx,
    id: &str,
    title: &str,
    device: &str,
    port: u32,
    want_0x82: bool,
) -> CaseResult {
    let mut r = CaseResult::new(id, title);
    let Some(pile) = need_pile(ctx, &mut r, device) else {
        return r;
    };
    let wait = ctx.profile.stop_after;
    r.set("device_id", device);
    r.set("port_no", port);
    r.set("stop_after_s", wait.as_secs());
    wait_device(ctx, device, true, Duration::from_secs(20)).await;
    // Long enough that only the stop can end it.
    let req = time_request(port, whole_minutes(wait * 3 + Duration::from_secs(60)));
    r.set("start_time", now_unix());
    let s = start_charge(ctx, id, &pile, device, &req).await;
    let order_no = s.order_no().map(str::to_string);
    r.set("order_no", json!(order_no));
    r.push(Check::new(
        "started",
        "启动充电",
        "成功",
        match s.charging_after_ms {
            Some(ms) => format!("charging ({} 秒)", secs(ms)),
            None => format!("未进入充电: API {}", s.api_status()),
        },
        s.charging_after_ms.is_some(),
    ));
    let Some(order_no) = order_no else {
        return r;
    };
    tokio::time::sleep(wait).await;
    let mid = ctx.client.order(&order_no).await.ok();
    r.push(Check::new(
        "still_charging",
        &format!("等待{}秒", wait.as_secs()),
        "charging",
        mid.as_ref().map_or("n/a".into(), |o| o.status.to_string()),
        mid.as_ref()
            .is_some_and(|o| o.status == OrderStatus::Charging),
    ));
    let stop_at_ms = crate::report::now_unix_ms();
    let t = Instant::now();
    let stop = stop_order(ctx, device, port, &order_no)
        .await
        .map(|_| ())
        .map_err(|e| client_err(&e));
    let stopped = poll(
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async { (!sim_port_has_charge(&pile, port as u16)).then_some(()) },
    )
    .await
    .map(|_| t.elapsed().as_millis() as i64);
    // Unplug afterwards, as a user would; the port is free for the next case.
    let _ = pile.unplug(port as u16);
    let fin = wait_settled(ctx, &order_no, Duration::from_secs(30)).await;
    r.set("end_time", now_unix());
    if let Some(o) = &fin {
        record_order(&mut r, "", o);
        r.set("duration_sec", o.duration_sec);
        r.set("end_reason", json!(o.end_reason));
    }
    // The gateway's clock starts when the pile accepts the start (its confirmation), so the
    // wait is measured from the port lighting up to the stop call, not from the profile's
    // nominal figure (on a loaded machine the plug-in and `charging` report come later).
    let accepted_ms = s.lit_after_ms.map(|l| s.called_at_ms + l);
    let waited = match accepted_ms {
        Some(a) => ((stop_at_ms - a) as f64 / 1000.0).round() as i64,
        None => wait.as_secs() as i64,
    };
    r.set("waited_s", waited);
    for c in remote_stop_checks(&stop, stopped, fin.as_ref(), waited) {
        r.push(c);
    }
    if want_0x82 {
        let stops: Vec<_> = down_frames_since(&pile, stop_at_ms)
            .into_iter()
            .filter(|f| f.command.eq_ignore_ascii_case("0x82"))
            .collect();
        r.push(Check::new(
            "stop_0x82",
            "停止指令",
            "0x82 sent",
            match stops.first() {
                Some(f) => format!("{} {}", f.command, f.name),
                None => "未见 0x82".into(),
            },
            !stops.is_empty(),
        ));
    }
    r
}
