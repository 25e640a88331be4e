//! X.1–X.6: what the record does not cover but production needs.

use std::time::{Duration, Instant};

use pile_api::{OrderListQuery, OrderStatus};
use pile_sim::fault::FaultKind;
use serde_json::json;

use crate::cases::charge::{by_time_on, need_pile, remote_stop_on, webhook_checks, NOMINAL_W};
use crate::cases::common::*;
use crate::gateway::GatewayProcess;
use crate::report::{now_unix, now_unix_ms, CaseResult, Check, Status};
use crate::stack::{work, work_id, Ctx, Target, SEED_AP3000};

/// X.1 charge a pile that is offline; the command goes out when it comes back.
pub async fn offline_start(ctx: &Ctx) -> CaseResult {
    let mut r = CaseResult::new("X.1", "离线设备下单, 上线后下发");
    let device = work_id(work::OFFLINE_START);
    let Some(pile) = need_pile(ctx, &mut r, &device) else {
        return r;
    };
    r.set("device_id", device.clone());
    wait_device(ctx, &device, true, Duration::from_secs(20)).await;
    pile.drop_network(None);
    let off = wait_device(
        ctx,
        &device,
        false,
        ctx.profile.offline_after * 3 + Duration::from_secs(5),
    )
    .await;
    r.push(Check::new(
        "offline",
        "设备离线",
        "offline",
        if off.is_some() {
            "offline"
        } else {
            "仍显示在线"
        },
        off.is_some(),
    ));
    let req = time_request(1, 60);
    let res = ctx.client.charge(&device, &req).await;
    let order = match &res {
        Ok(o) => Some(o.clone()),
        Err(_) => None,
    };
    r.push(Check::new(
        "queued",
        "离线下单",
        "200 pending",
        match &res {
            Ok(o) => format!("200 {}", o.status),
            Err(e) => e.to_string(),
        },
        order
            .as_ref()
            .is_some_and(|o| o.status == OrderStatus::Pending),
    ));
    let Some(order) = order else {
        pile.restore_network();
        return r;
    };
    r.set("order_no", order.order_no.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restore_ms = now_unix_ms();
    let t = Instant::now();
    pile.restore_network();
    ctx.progress("X.1", "network restored; no further API call");
    let lit = poll(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { sim_port_has_charge(&pile, 1).then_some(()) },
    )
    .await
    .map(|_| t.elapsed());
    let cmd = down_frames_since(&pile, restore_ms)
        .into_iter()
        .find(is_command);
    r.set(
        "command_after_reconnect_s",
        json!(lit.map(|d| d.as_secs_f64())),
    );
    r.push(Check::new(
        "delivered",
        "上线后指令下发",
        "无需再次调用, 重连后自动下发",
        match (lit, &cmd) {
            (Some(d), Some(c)) => format!("{:.1} 秒后 {} {}", d.as_secs_f64(), c.command, c.name),
            (Some(d), None) => format!("{:.1} 秒后设备执行", d.as_secs_f64()),
            _ => "30 秒内未下发".into(),
        },
        lit.is_some(),
    ));
    if lit.is_some() {
        let _ = pile.plug(1);
    }
    let fin = wait_settled(ctx, &order.order_no, Duration::from_secs(150)).await;
    r.push(Check::new(
        "completed",
        "订单完成",
        "completed",
        fin.as_ref().map_or("未结算".into(), |o| {
            format!("{} ({} 秒)", o.status, o.duration_sec)
        }),
        fin.as_ref()
            .is_some_and(|o| o.status == OrderStatus::Completed),
    ));
    if let Some(o) = &fin {
        record_order(&mut r, "", o);
    }
    r
}

/// X.2 the same client `order_no` twice → one order.
pub async fn idempotent(ctx: &Ctx) -> CaseResult {
    let mut r = CaseResult::new("X.2", "重复订单号幂等");
    let device = work_id(work::IDEMPOTENT);
    let Some(_pile) = need_pile(ctx, &mut r, &device) else {
        return r;
    };
    wait_device(ctx, &device, true, Duration::from_secs(20)).await;
    let no = format!("SCN{}", uuid::Uuid::new_v4().simple());
    let mut req = time_request(1, 60);
    req.order_no = Some(no.clone());
    let a = ctx.client.charge(&device, &req).await;
    let b = ctx.client.charge(&device, &req).await;
    r.set("client_order_no", no.clone());
    let fmt = |x: &Result<pile_api::OrderRef, pile_api::ClientError>| match x {
        Ok(o) => format!("200 {}", o.order_no),
        Err(e) => e.to_string(),
    };
    r.set("first", fmt(&a));
    r.set("second", fmt(&b));
    r.push(Check::new(
        "same_order",
        "两次请求",
        "两次 200, 同一订单",
        format!("{} / {}", fmt(&a), fmt(&b)),
        matches!((&a, &b), (Ok(x), Ok(y)) if x.order_no == y.order_no),
    ));
    let list = ctx
        .client
        .orders(&OrderListQuery {
            device_id: Some(device.clone()),
            size: Some(100),
            ..OrderListQuery::default()
        })
        .await;
    let count = list.as_ref().map(|p| {
        p.items
            .iter()
            .filter(|o| o.order_no == no || a.as_ref().is_ok_and(|x| x.order_no == o.order_no))
            .count()
    });
    r.set(
        "orders_for_device",
        json!(list.as_ref().map(|p| p.total).ok()),
    );
    r.push(Check::new(
        "one_order",
        "订单数",
        "1",
        count
            .as_ref()
            .map_or_else(|e| e.to_string(), |c| c.to_string()),
        count.as_ref().is_ok_and(|c| *c == 1) && list.as_ref().is_ok_and(|p| p.total == 1),
    ));
    if let Ok(o) = &a {
        let _ = stop_order(ctx, &device, 1, &o.order_no).await;
    }
    r
}

/// X.3 stop the gateway mid-charge and start it again on the same database and ports.
pub async fn restart(ctx: &Ctx) -> CaseResult {
    let mut r = CaseResult::new("X.3", "充电中重启网关");
    let Target::Embedded { spec, process } = &ctx.target else {
        r.status = Status::NotRun("外部目标: 本工具不能停止和重启它".into());
        return r;
    };
    let device = work_id(work::RESTART);
    let Some(pile) = need_pile(ctx, &mut r, &device) else {
        return r;
    };
    r.set("device_id", device.clone());
    wait_device(ctx, &device, true, Duration::from_secs(20)).await;
    let req = time_request(1, 60);
    let s = start_charge(ctx, "X.3", &pile, &device, &req).await;
    r.push(Check::new(
        "started",
        "启动充电",
        "charging",
        s.charging_after_ms
            .map_or(format!("未进入充电: API {}", s.api_status()), |ms| {
                format!("charging ({} 秒)", secs(ms))
            }),
        s.charging_after_ms.is_some(),
    ));
    let Some(order_no) = s.order_no().map(str::to_string) else {
        return r;
    };
    r.set("order_no", order_no.clone());
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Stop it; its counters die with it, so 6.1 gets them first.
    ctx.keep_metrics_before_stop().await;
    let (http, dev) = {
        let mut guard = process.lock().await;
        let Some(p) = guard.take() else {
            r.note("网关进程已不在");
            return r;
        };
        let addrs = (p.http_addr.clone(), p.device_addr.clone());
        let t = Instant::now();
        let stopped = p.stop(Duration::from_secs(20)).await;
        r.set("stop_s", t.elapsed().as_secs_f64());
        r.push(Check::new(
            "stopped",
            "停止网关",
            "进程退出",
            match &stopped {
                Ok(()) => format!("{:.1} 秒内退出", t.elapsed().as_secs_f64()),
                Err(e) => e.to_string(),
            },
            stopped.is_ok(),
        ));
        addrs
    };
    ctx.progress("X.3", "gateway stopped");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = Instant::now();
    match GatewayProcess::spawn(spec, &http, &dev).await {
        Ok(p) => {
            r.set("restart_s", t.elapsed().as_secs_f64());
            r.set("new_pid", p.pid);
            *process.lock().await = Some(p);
            r.push(Check::new(
                "restarted",
                "重新启动",
                "同库同端口启动",
                format!("{:.1} 秒", t.elapsed().as_secs_f64()),
                true,
            ));
        }
        Err(e) => {
            r.push(Check::new(
                "restarted",
                "重新启动",
                "启动",
                e.to_string(),
                false,
            ));
            return r;
        }
    }
    ctx.progress("X.3", "gateway started again");
    let back = wait_device(ctx, &device, true, Duration::from_secs(30))
        .await
        .map(|_| t.elapsed());
    r.push(Check::new(
        "reconnected",
        "设备重连",
        "重连",
        back.map_or("30 秒内未重连".into(), |d| {
            format!("{:.1} 秒", d.as_secs_f64())
        }),
        back.is_some(),
    ));
    let fin = wait_settled(ctx, &order_no, Duration::from_secs(120)).await;
    r.push(Check::new(
        "completed",
        "订单完成",
        "completed",
        fin.as_ref().map_or("未结算".into(), |o| {
            format!("{} ({} 秒)", o.status, o.duration_sec)
        }),
        fin.as_ref()
            .is_some_and(|o| o.status == OrderStatus::Completed),
    ));
    if let Some(o) = &fin {
        record_order(&mut r, "", o);
    }
    // Events: every progress sample has its event, lifecycle events once each.
    let wait = if ctx.receiver.stats().requests > 0 {
        crate::cases::charge::webhook_wait(ctx)
    } else {
        Duration::from_secs(5)
    };
    let _ = ctx
        .receiver
        .wait_for(wait, |ev| {
            ev.iter().any(|e| {
                e.order_no.as_deref() == Some(order_no.as_str())
                    && e.event_type == "order.completed"
            })
        })
        .await;
    let ev = ctx.receiver.events_for_order(&order_no);
    let samples = ctx.client.progress(&order_no).await.unwrap_or_default();
    let count = |t: &str| ev.iter().filter(|e| e.event_type == t).count();
    let progress_events = count("charging.progress");
    let lifecycle_ok = count("charging.started") == 1 && count("order.completed") == 1;
    let dup = ctx.receiver.stats().duplicates;
    r.set(
        "events",
        json!(ev.iter().map(|e| e.event_type.clone()).collect::<Vec<_>>()),
    );
    r.set("progress_samples", samples.len());
    r.set("progress_events", progress_events);
    r.set("receiver_duplicates_deduped", dup);
    r.push(Check::new(
        "events",
        "事件不丢不重",
        "started 1, completed 1, progress 事件数 = 进度样本数",
        format!(
            "started {}, completed {}, progress 事件 {} / 样本 {} (接收端去重 {dup} 次)",
            count("charging.started"),
            count("order.completed"),
            progress_events,
            samples.len()
        ),
        lifecycle_ok && progress_events == samples.len() && !samples.is_empty(),
    ));
    r
}

/// X.4 the receiver answers 500 for a while, then recovers: everything delivered, no dead
/// letters.
pub async fn webhook_outage(ctx: &Ctx) -> CaseResult {
    let mut r = CaseResult::new("X.4", "Webhook接收端故障后恢复");
    if ctx.webhook_configured.is_none() {
        r.status = Status::NotRun("外部目标: 其 Webhook 未指向本工具的接收端".into());
        return r;
    }
    let device = work_id(work::WEBHOOK_OUTAGE);
    let Some(pile) = need_pile(ctx, &mut r, &device) else {
        return r;
    };
    wait_device(ctx, &device, true, Duration::from_secs(20)).await;
    let outage = if ctx.profile.name == "seed" {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(6)
    };
    let refused_before = ctx.receiver.stats().refused;
    ctx.receiver.fail_for(outage);
    r.set("outage_s", outage.as_secs());
    let req = time_request(1, 60);
    let s = start_charge(ctx, "X.4", &pile, &device, &req).await;
    let Some(order_no) = s.order_no().map(str::to_string) else {
        r.push(Check::new(
            "started",
            "启动充电",
            "成功",
            s.api_status(),
            false,
        ));
        return r;
    };
    r.set("order_no", order_no.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop_order(ctx, &device, 1, &order_no).await;
    let fin = wait_settled(ctx, &order_no, Duration::from_secs(30)).await;
    let _ = pile.unplug(1);
    webhook_checks(ctx, &mut r, &order_no, fin.is_some()).await;
    // Progress events are optional here (a 3 s charge may have none).
    if let Some(c) = r.checks.iter_mut().find(|c| c.key == "webhooks") {
        let started = r
            .values
            .get("webhook.charging_started")
            .and_then(|v| v.as_u64());
        let done = r
            .values
            .get("webhook.order_completed")
            .and_then(|v| v.as_u64());
        c.expected = "charging.started, order.completed 最终送达, 签名通过".into();
        c.ok = started.unwrap_or(0) >= 1 && done.unwrap_or(0) >= 1;
    }
    let refused = ctx.receiver.stats().refused - refused_before;
    r.set("refused_during_outage", refused);
    r.push(Check::new(
        "outage_happened",
        "接收端故障",
        "期间确有投递被拒 (500)",
        format!("拒绝 {refused} 次"),
        refused > 0,
    ));
    let dead = ctx
        .client
        .dead_letters(&pile_api::DeadLetterQuery {
            page: Some(1),
            size: Some(100),
        })
        .await;
    let (code, total) = match &dead {
        Ok(p) => (200, Some(p.total)),
        Err(e) => (e.status().unwrap_or(0), None),
    };
    if let Ok(p) = &dead {
        r.set(
            "dead_letter_items",
            serde_json::to_value(&p.items).unwrap_or_default(),
        );
    }
    r.set("dead_letter_status", code);
    r.set("dead_letters", json!(total));
    r.push(Check::new(
        "dead_letters",
        "死信队列",
        "空",
        match total {
            Some(t) => t.to_string(),
            None => format!("/api/v1/admin/webhooks/dead 应答 {code}"),
        },
        code == 200 && total == Some(0),
    ));
    r
}

/// X.5 some piles send garbage, bad checksums, split and merged frames while others charge.
pub async fn bad_frames(ctx: &Ctx) -> CaseResult {
    let mut r = CaseResult::new("X.5", "异常报文与正常充电并存");
    let good_ids = [work_id(work::GOOD_FIRST), work_id(work::GOOD_FIRST + 1)];
    let Some(_) = need_pile(ctx, &mut r, &good_ids[0]) else {
        return r;
    };
    let kinds = [
        FaultKind::Garbage,
        FaultKind::BadChecksum,
        FaultKind::SplitBytes,
        FaultKind::MergeFrames,
    ];
    let secs = 90;
    for (i, kind) in kinds.iter().enumerate() {
        let id = work_id(work::BAD_FIRST + i as u32);
        if let Ok(p) = ctx.pile(&id) {
            p.inject_fault(*kind, secs);
            r.set(&format!("fault.{id}"), kind.as_str());
        }
    }
    let watch = {
        let http = ctx.http.clone();
        let url = format!("{}/healthz", ctx.base_url);
        let stop = tokio_util::sync::CancellationToken::new();
        let s2 = stop.clone();
        let h = tokio::spawn(async move {
            let (mut ok, mut bad) = (0u32, 0u32);
            while !s2.is_cancelled() {
                match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => ok += 1,
                    _ => bad += 1,
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            (ok, bad)
        });
        (stop, h)
    };
    let mut outcomes = Vec::new();
    let runs = good_ids.iter().map(|id| async move {
        let mut sub = CaseResult::new("X.5", "");
        let Ok(pile) = ctx.pile(id) else {
            return (id.clone(), None, sub);
        };
        wait_device(ctx, id, true, Duration::from_secs(20)).await;
        let req = time_request(1, 60);
        let s = start_charge(ctx, "X.5", &pile, id, &req).await;
        let fin = match s.order_no() {
            Some(no) => wait_settled(ctx, no, Duration::from_secs(120)).await,
            None => None,
        };
        for c in settlement_checks(fin.as_ref(), 60, &req, NOMINAL_W, energy_resolution_kwh(id)) {
            sub.push(c);
        }
        (id.clone(), fin, sub)
    });
    for (id, fin, sub) in futures::future::join_all(runs).await {
        let ok = !sub.checks.is_empty() && sub.checks.iter().all(|c| c.ok);
        r.set(
            &format!("good.{id}"),
            json!({
                "status": fin.as_ref().map(|o| o.status.to_string()),
                "duration_sec": fin.as_ref().map(|o| o.duration_sec),
                "total_kwh": fin.as_ref().map(|o| o.total_kwh),
                "ok": ok,
                "failed": sub.checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.label, c.actual)).collect::<Vec<_>>(),
            }),
        );
        outcomes.push((id, ok));
    }
    watch.0.cancel();
    let (ok, bad) = watch.1.await.unwrap_or((0, 1));
    r.set("healthz_ok", ok);
    r.set("healthz_failed", bad);
    let alive = ctx.gateway_alive().await.unwrap_or(true);
    r.push(Check::new(
        "gateway_up",
        "网关保持运行",
        "healthz 全部 200, 进程存活",
        format!(
            "healthz 成功 {ok}, 失败 {bad}, 进程{}",
            if alive { "存活" } else { "已退出" }
        ),
        bad == 0 && ok > 0 && alive,
    ));
    let good = outcomes.iter().filter(|(_, ok)| *ok).count();
    r.push(Check::new(
        "good_unaffected",
        "正常设备订单不受影响",
        format!("{} 个订单正常完成", good_ids.len()),
        format!("{good} 个"),
        good == good_ids.len(),
    ));
    // What the misbehaving piles ended up as (recorded, not judged).
    for i in 0..kinds.len() as u32 {
        let id = work_id(work::BAD_FIRST + i);
        if let Ok(d) = ctx.client.device(&id).await {
            r.set(&format!("bad.{id}.online"), d.online);
        }
    }
    if let Ok(text) = ctx
        .http
        .get(format!("{}/metrics", ctx.base_url))
        .send()
        .await
    {
        let text = text.text().await.unwrap_or_default();
        r.set(
            "frame_errors_total",
            json!(crate::cases::ops::metric_value(&text, "frame_errors_total")),
        );
    }
    r.set("end_time", now_unix());
    r
}

/// X.6 2.1 and 2.2 on the AP3000 pile: `0x82` start and stop on the wire.
pub async fn ap3000(ctx: &Ctx) -> CaseResult {
    let mut r = CaseResult::new("X.6", "AP3000 按时长充电与远程停止");
    if need_pile(ctx, &mut r, SEED_AP3000).is_none() {
        return r;
    }
    let target = whole_minutes(ctx.profile.charge_target);
    let (a, b) = tokio::join!(
        by_time_on(ctx, "X.6", "AP3000 按时长", SEED_AP3000, 1, target, true),
        remote_stop_on(ctx, "X.6", "AP3000 远程停止", SEED_AP3000, 2, true)
    );
    for (prefix, sub) in [("by_time", a), ("stop", b)] {
        if let Status::NotRun(why) = &sub.status {
            r.note(format!("{prefix}: {why}"));
        }
        for mut c in sub.checks {
            c.key = format!("{prefix}.{}", c.key);
            c.label = format!(
                "{} {}",
                if prefix == "by_time" {
                    "按时长"
                } else {
                    "远程停止"
                },
                c.label
            );
            r.push(c);
        }
        for (k, v) in sub.values {
            r.set(&format!("{prefix}.{k}"), v);
        }
        for (k, v) in sub.tables {
            r.tables.insert(format!("{prefix}.{k}"), v);
        }
    }
    r
}
