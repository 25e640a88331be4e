//! B.1–B.6: beyond the template. Field sequences the paper record leaves out and the gateway
//! core makes correct: a start lost in a half-open socket, an end report sent twice, a charge
//! the pile forgets while online, a BKV charge ending after a reconnect, a long receiver
//! outage (seed profile), an instance killed mid-charge (PostgreSQL cluster).

use std::time::{Duration, Instant};

use pile_api::{OrderListQuery, OrderStatus, OrderView};
use pile_sim::fault::FaultKind;
use pile_sim::fleet::PileHandle;
use serde_json::json;

use crate::cases::charge::{need_pile, webhook_wait};
use crate::cases::common::*;
use crate::report::{now_unix_ms, CaseResult, Check, Status};
use crate::stack::{beyond, beyond_id, Ctx};

/// Frames the pile sent (device → server) at or after `since_ms`: (hex, decoded name).
fn up_frames_since(pile: &PileHandle, since_ms: i64) -> Vec<(String, String)> {
    pile.frames()
        .into_iter()
        .filter(|f| {
            matches!(f.dir, pile_sim::pile::Direction::Up) && f.at_unix_ms as i64 >= since_ms
        })
        .map(|f| {
            let name = hex::decode(&f.hex)
                .ok()
                .and_then(|b| pile_protocol::analyze::analyze(&b).ok())
                .map(|a| a.name.to_string())
                .unwrap_or_else(|| f.decoded.clone());
            (f.hex, name)
        })
        .collect()
}

/// Whether a decoded frame name is an end (settlement) report.
fn is_end_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("end") || n.contains("settle") || n.contains("结束") || n.contains("stop")
}

/// Orders the gateway holds for a device.
async fn orders_of(ctx: &Ctx, device: &str) -> Option<i64> {
    ctx.client
        .orders(&OrderListQuery {
            device_id: Some(device.to_string()),
            size: Some(10),
            ..OrderListQuery::default()
        })
        .await
        .ok()
        .map(|p| p.total)
}

/// The order's lifecycle webhooks, waited for: (started, completed, progress, distinct events).
async fn lifecycle_events(ctx: &Ctx, order_no: &str, wait: Duration) -> (usize, usize, usize) {
    ctx.receiver
        .wait_for(wait, |ev| {
            ev.iter().any(|e| {
                e.order_no.as_deref() == Some(order_no) && e.event_type == "order.completed"
            })
        })
        .await;
    let ev = ctx.receiver.events_for_order(order_no);
    let n = |t: &str| ev.iter().filter(|e| e.event_type == t).count();
    (
        n("charging.started"),
        n("order.completed"),
        n("charging.progress"),
    )
}

/// "Settled once": one order for the pile, one `order.completed`, one `charging.started`.
fn once_check(orders: Option<i64>, started: usize, completed: usize) -> Check {
    Check::new(
        "settled_once",
        "只结算一次",
        "该桩 1 个订单; charging.started 1 次, order.completed 1 次",
        format!(
            "订单 {}; started {started}, completed {completed}",
            orders.map_or("n/a".into(), |n| n.to_string())
        ),
        orders == Some(1) && started == 1 && completed == 1,
    )
}

fn completed_check(fin: Option<&OrderView>) -> Check {
    Check::new(
        "completed",
        "订单完成",
        "completed",
        fin.map_or("未结算".into(), |o| {
            format!(
                "{} ({} 秒, {:.4} 度, {} 分, 原因 {})",
                o.status,
                o.duration_sec,
                o.total_kwh,
                o.final_amount,
                o.end_reason.map_or("无".into(), |r| r.to_string())
            )
        }),
        fin.is_some_and(|o| o.status == OrderStatus::Completed),
    )
}

fn record_fin(r: &mut CaseResult, o: &OrderView) {
    record_order(r, "", o);
    r.set("duration_sec", o.duration_sec);
    r.set("total_kwh", o.total_kwh);
    r.set("final_amount", o.final_amount);
    r.set("end_reason", json!(o.end_reason));
}

/// B.1 the start goes into a half-open socket (the pile hears nothing); the pile dials in on
/// a new connection while the gateway still holds the old one; the gateway's durable command
/// is sent again on the new connection; the order charges and settles once.
pub async fn lost_start(ctx: &Ctx) -> CaseResult {
    let mut r = CaseResult::new("B.1", "启动指令丢失后接管重发");
    let device = beyond_id(beyond::LOST_START);
    let Some(pile) = need_pile(ctx, &mut r, &device) else {
        return r;
    };
    r.set("device_id", device.clone());
    wait_device(ctx, &device, true, Duration::from_secs(20)).await;
    // Nothing flows either way for 2 s: the start the gateway writes now is never read.
    pile.inject_fault(FaultKind::BlackHole, 2);
    let req = time_request(1, 60);
    let res = ctx.client.charge(&device, &req).await;
    let order = res.as_ref().ok().cloned();
    r.push(Check::new(
        "queued",
        "下单",
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
        return r;
    };
    let order_no = order.order_no.clone();
    r.set("order_no", order_no.clone());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let lost = !sim_port_has_charge(&pile, 1);
    r.push(Check::new(
        "start_lost",
        "启动指令丢失",
        "设备未执行 (指令落入半开连接)",
        if lost {
            "设备未收到, 端口空闲"
        } else {
            "设备已执行 (未能制造丢失)"
        },
        lost,
    ));
    // The pile abandons that socket without a FIN and dials in again at once: the gateway
    // still holds the old connection, the new one takes the device over.
    let restore_ms = now_unix_ms();
    pile.drop_network(None);
    pile.restore_network();
    let t = Instant::now();
    let went = std::sync::atomic::AtomicBool::new(false);
    let lit = poll(Duration::from_secs(30), Duration::from_millis(200), || {
        let (pile, device, went) = (pile.clone(), device.clone(), &went);
        async move {
            if let Ok(d) = ctx.client.device(&device).await {
                if !d.online {
                    went.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            sim_port_has_charge(&pile, 1).then_some(())
        }
    })
    .await
    .map(|_| t.elapsed());
    let went_offline = went.load(std::sync::atomic::Ordering::Relaxed);
    r.set("gateway_marked_offline_between", went_offline);
    let mut cmds: Vec<WireFrame> = down_frames_since(&pile, restore_ms)
        .into_iter()
        .filter(is_command)
        .collect();
    // The start itself first (BKV `control`), ahead of the queries around it.
    cmds.sort_by_key(|f| !f.name.contains("control"));
    r.set(
        "resend_after_reconnect_s",
        json!(lit.map(|d| d.as_secs_f64())),
    );
    r.push(Check::new(
        "resent",
        "新连接上重发启动",
        "无需再次调用 API, 新连接上收到启动指令并执行",
        match (lit, cmds.first()) {
            (Some(d), Some(c)) => format!(
                "重连后 {:.1} 秒执行 ({} {}){}",
                d.as_secs_f64(),
                c.command,
                c.name,
                if went_offline {
                    "; 网关期间曾判离线"
                } else {
                    "; 网关未判离线 (新连接接管旧连接)"
                }
            ),
            (Some(d), None) => format!("重连后 {:.1} 秒执行", d.as_secs_f64()),
            _ => "30 秒内未执行".into(),
        },
        lit.is_some(),
    ));
    if lit.is_some() {
        let _ = pile.plug(1);
    }
    let fin = wait_settled(ctx, &order_no, Duration::from_secs(150)).await;
    r.push(completed_check(fin.as_ref()));
    if let Some(o) = &fin {
        record_fin(&mut r, o);
        r.push(bill_check(o, &req, false));
        let err = (o.duration_sec - 60).abs();
        r.push(Check::new(
            "duration",
            "时长",
            "60 秒 ±5",
            format!("{} 秒", o.duration_sec),
            err <= 5,
        ));
    }
    let (started, completed, _) = lifecycle_events(ctx, &order_no, webhook_wait(ctx)).await;
    r.push(once_check(
        orders_of(ctx, &device).await,
        started,
        completed,
    ));
    r
}

/// B.2 the device sends its end report twice (every frame doubled on the wire while it ends
/// the charge): the order is billed once.
pub async fn resent_end(ctx: &Ctx) -> CaseResult {
    let mut r = CaseResult::new("B.2", "结束报告重复上报");
    let device = beyond_id(beyond::RESENT_END);
    let Some(pile) = need_pile(ctx, &mut r, &device) else {
        return r;
    };
    r.set("device_id", device.clone());
    wait_device(ctx, &device, true, Duration::from_secs(20)).await;
    let req = time_request(1, 300);
    let s = start_charge(ctx, "B.2", &pile, &device, &req).await;
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
    tokio::time::sleep(Duration::from_secs(6)).await;
    let end_ms = now_unix_ms();
    const WINDOW_S: u64 = 12;
    pile.inject_fault(FaultKind::DuplicateFrames, WINDOW_S);
    let _ = pile.unplug(1);
    ctx.progress("B.2", "charger unplugged while every frame is sent twice");
    // Until the pile has put its end report on the wire (or the fault window is over).
    let _ = poll(
        Duration::from_secs(WINDOW_S),
        Duration::from_millis(200),
        || async {
            up_frames_since(&pile, end_ms)
                .iter()
                .any(|(_, n)| is_end_name(n))
                .then_some(())
        },
    )
    .await;
    let fin = wait_settled(ctx, &order_no, Duration::from_secs(40)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The simulator logs a frame once and writes it as many times as the fault says: an end
    // report logged inside the fault's window went out twice.
    let ends: Vec<String> = up_frames_since(&pile, end_ms)
        .into_iter()
        .filter(|(_, n)| is_end_name(n))
        .map(|(_, n)| n)
        .collect();
    // What the gateway received: the same end report at least twice since the unplug (its
    // frame ring, read through the admin API — the pile's own log and the runner's clock may
    // disagree by a tick, the gateway's record of what arrived cannot).
    let received: Vec<(String, String)> = ctx
        .client
        .frames(&device)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|f| matches!(f.direction, pile_api::Direction::Up) && f.at_ms >= end_ms - 1_000)
        .filter_map(|f| {
            let b = hex::decode(&f.hex).ok()?;
            let a = pile_protocol::analyze::analyze(&b).ok()?;
            is_end_name(a.name).then(|| (f.hex.to_uppercase(), a.name.to_string()))
        })
        .collect();
    let doubled = received
        .iter()
        .find(|(hex, _)| received.iter().filter(|(h, _)| h == hex).count() >= 2)
        .map(|(_, name)| name.clone());
    r.set("end_frames", json!(ends));
    r.set(
        "end_frames_received",
        json!(received.iter().map(|(_, n)| n).collect::<Vec<_>>()),
    );
    r.push(Check::new(
        "end_twice",
        "结束报告发送两次",
        "网关收到同一结束报告至少两次",
        match &doubled {
            Some(name) => format!("{name} × {} (网关收到)", received.len()),
            None => format!(
                "网关未收到重复的结束报告 (收到: {}; 桩发出: {})",
                received
                    .iter()
                    .map(|(_, n)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                ends.join(", ")
            ),
        },
        doubled.is_some(),
    ));
    r.push(completed_check(fin.as_ref()));
    if let Some(o) = &fin {
        record_fin(&mut r, o);
        r.push(bill_check(o, &req, false));
        let again = ctx.client.order(&order_no).await.ok();
        r.push(Check::new(
            "unchanged",
            "结算不变",
            "重复报告后金额与时长不变",
            again.as_ref().map_or("n/a".into(), |a| {
                format!("{} 分, {} 秒", a.final_amount, a.duration_sec)
            }),
            again.as_ref().is_some_and(|a| {
                a.final_amount == o.final_amount
                    && a.duration_sec == o.duration_sec
                    && a.ended_at == o.ended_at
            }),
        ));
    }
    let (started, completed, _) = lifecycle_events(ctx, &order_no, webhook_wait(ctx)).await;
    r.push(once_check(
        orders_of(ctx, &device).await,
        started,
        completed,
    ));
    r
}

/// B.3 the pile resets while online and forgets the charge (no end record, ports idle): the
/// gateway settles it by reconciliation with reason 13 (ChargeLost).
pub async fn charge_lost(ctx: &Ctx) -> CaseResult {
    let mut r = CaseResult::new("B.3", "在线时充电丢失");
    let device = beyond_id(beyond::CHARGE_LOST);
    let Some(pile) = need_pile(ctx, &mut r, &device) else {
        return r;
    };
    r.set("device_id", device.clone());
    r.set("reconcile_after_s", ctx.profile.reconcile_after.as_secs());
    wait_device(ctx, &device, true, Duration::from_secs(20)).await;
    let req = time_request(1, 600);
    let s = start_charge(ctx, "B.3", &pile, &device, &req).await;
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
    tokio::time::sleep(ctx.profile.heartbeat * 4 + Duration::from_secs(4)).await;
    let t = Instant::now();
    pile.lose_charges();
    let _ = pile.unplug(1);
    ctx.progress(
        "B.3",
        "pile reset: charge forgotten, ports idle, still online",
    );
    let limit =
        ctx.profile.reconcile_after * 3 + ctx.profile.heartbeat * 10 + Duration::from_secs(30);
    // The simulated pile reports a port only when it changes: the user plugging the dead
    // charger in and out again makes the idle reports the gateway's rule counts.
    r.note("模拟桩仅在端口状态变化时上报; 本用例以用户反复插拔产生空闲 (idle/plugged) 上报");
    let every = (ctx.profile.reconcile_after / 2).max(Duration::from_secs(1));
    let deadline = Instant::now() + limit;
    let mut plugged = false;
    let mut fin = None;
    while Instant::now() < deadline {
        if let Some(o) = wait_settled(ctx, &order_no, every).await {
            fin = Some(o);
            break;
        }
        plugged = !plugged;
        let _ = if plugged {
            pile.plug(1)
        } else {
            pile.unplug(1)
        };
    }
    let _ = pile.unplug(1);
    r.set(
        "settled_after_s",
        json!(fin.as_ref().map(|_| t.elapsed().as_secs_f64())),
    );
    r.push(Check::new(
        "reconciled",
        "网关对账结算",
        format!("{} 秒内结算, 结束原因 13 (ChargeLost)", limit.as_secs()),
        fin.as_ref().map_or("未结算".into(), |o| {
            format!(
                "{} 原因 {} {} ({:.1} 秒后)",
                o.status,
                o.end_reason.map_or("无".into(), |r| r.to_string()),
                o.end_reason_name.clone().unwrap_or_default(),
                t.elapsed().as_secs_f64()
            )
        }),
        fin.as_ref().is_some_and(|o| o.end_reason == Some(13)),
    ));
    if let Some(o) = &fin {
        record_fin(&mut r, o);
        r.push(bill_check(o, &req, false));
    }
    let ev_wait = webhook_wait(ctx);
    ctx.receiver
        .wait_for(ev_wait, |ev| {
            ev.iter().any(|e| {
                e.order_no.as_deref() == Some(order_no.as_str())
                    && matches!(e.event_type.as_str(), "order.completed" | "order.failed")
            })
        })
        .await;
    let ev = ctx.receiver.events_for_order(&order_no);
    let finals = ev
        .iter()
        .filter(|e| matches!(e.event_type.as_str(), "order.completed" | "order.failed"))
        .count();
    r.push(Check::new(
        "settled_once",
        "只结算一次",
        "结束事件 1 次",
        format!(
            "{finals} 次 ({})",
            ev.iter()
                .map(|e| e.event_type.as_str())
                .filter(|t| t.starts_with("order."))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        finals == 1,
    ));
    r
}

/// B.4 a BKV charge runs through an offline spell and ends after the reconnect, live: billed
/// on the gateway's clock, so its duration is the pile's true charging time (not whole
/// minutes).
pub async fn end_after_reconnect(ctx: &Ctx) -> CaseResult {
    let mut r = CaseResult::new("B.4", "BKV 重连后结束");
    let device = beyond_id(beyond::RECONNECT_END);
    let Some(pile) = need_pile(ctx, &mut r, &device) else {
        return r;
    };
    r.set("device_id", device.clone());
    wait_device(ctx, &device, true, Duration::from_secs(20)).await;
    let req = time_request(1, 600);
    let s = start_charge(ctx, "B.4", &pile, &device, &req).await;
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
    tokio::time::sleep(Duration::from_secs(8)).await;
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
        "断网离线",
        "网关判离线",
        if off.is_some() {
            "offline"
        } else {
            "仍在线"
        },
        off.is_some(),
    ));
    pile.restore_network();
    let back = wait_device(ctx, &device, true, Duration::from_secs(30)).await;
    r.push(Check::new(
        "reconnected",
        "重连",
        "重连在线",
        if back.is_some() {
            "online"
        } else {
            "30 秒内未重连"
        },
        back.is_some(),
    ));
    // Charging goes on live on the new connection for a while, then the API stops it.
    tokio::time::sleep(Duration::from_secs(7)).await;
    // The gateway's clock runs from the pile accepting the start to its end; the runner
    // watches both on the pile itself (port lit → port dark), independently of the gateway.
    let energised = pile
        .snapshot()
        .ports
        .iter()
        .find(|p| p.port_no == 1)
        .and_then(|p| p.charge.as_ref().map(|c| c.elapsed_s));
    let accepted_ms = s.lit_after_ms.map(|l| s.called_at_ms + l);
    let _ = stop_order(ctx, &device, 1, &order_no).await;
    let stopped_ms = poll(
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async { (!sim_port_has_charge(&pile, 1)).then(now_unix_ms) },
    )
    .await;
    let truth = match (accepted_ms, stopped_ms) {
        (Some(a), Some(b)) => Some(((b - a) as f64 / 1000.0).round() as u64),
        _ => None,
    };
    r.set("pile_energised_s_before_stop", json!(energised));
    let _ = pile.unplug(1);
    let fin = wait_settled(ctx, &order_no, Duration::from_secs(40)).await;
    r.set("true_duration_s", json!(truth));
    r.push(completed_check(fin.as_ref()));
    if let Some(o) = &fin {
        record_fin(&mut r, o);
        r.push(bill_check(o, &req, false));
        r.set("offline_replayed", o.offline_replayed);
    }
    let d = fin.as_ref().map(|o| o.duration_sec);
    r.push(Check::new(
        "duration_truth",
        "时长≈真实充电时长",
        "与本工具在桩上观察的充电时长 (接受启动 → 停止) 相差 ≤3 秒 (网关时钟计时, 非整分钟)",
        format!(
            "结算 {} 秒, 桩上观察 {} 秒",
            d.map_or("n/a".into(), |d| d.to_string()),
            truth.map_or("n/a".into(), |t| t.to_string())
        ),
        matches!((d, truth), (Some(d), Some(t)) if (d - t as i64).abs() <= 3),
    ));
    r
}

/// B.5 the webhook receiver is down for 10 minutes (seed profile only; it runs alone, since
/// it refuses every delivery): the gateway's breaker opens instead of spending attempts, and
/// every event of the charge made during the outage is delivered once within 5 minutes of the
/// receiver's return, nothing dead-lettered.
pub async fn long_outage(ctx: &Ctx) -> CaseResult {
    let mut r = CaseResult::new("B.5", "Webhook接收端10分钟故障");
    if ctx.webhook_configured.is_none() {
        r.status = Status::NotRun("外部目标: 其 Webhook 未指向本工具的接收端".into());
        return r;
    }
    let device = beyond_id(beyond::LONG_OUTAGE);
    let Some(pile) = need_pile(ctx, &mut r, &device) else {
        return r;
    };
    let outage = LONG_OUTAGE;
    r.set("device_id", device.clone());
    r.set("outage_s", outage.as_secs());
    wait_device(ctx, &device, true, Duration::from_secs(20)).await;
    let refused_before = ctx.receiver.stats().refused;
    ctx.receiver.fail_for(outage);
    let t = Instant::now();
    let req = time_request(1, 60);
    let s = start_charge(ctx, "B.5", &pile, &device, &req).await;
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
    let fin = wait_settled(ctx, &order_no, Duration::from_secs(150)).await;
    let _ = pile.unplug(1);
    r.push(completed_check(fin.as_ref()));
    // After the outage, give the gateway's retry schedule 5 minutes.
    let left = outage.saturating_sub(t.elapsed());
    ctx.progress(
        "B.5",
        format!(
            "receiver refuses every webhook for {} s more",
            left.as_secs()
        ),
    );
    // The breaker's state 10 s before the receiver returns (by then it has long been open).
    tokio::time::sleep(left.saturating_sub(Duration::from_secs(10))).await;
    let during = ctx.client.stats().await.ok().and_then(|s| s.webhook);
    tokio::time::sleep(outage.saturating_sub(t.elapsed())).await;
    let after = Instant::now();
    let samples = ctx.client.progress(&order_no).await.unwrap_or_default();
    let want_progress = samples.len();
    let delivered = ctx
        .receiver
        .wait_for(Duration::from_secs(300), |ev| {
            let mine: Vec<_> = ev
                .iter()
                .filter(|e| e.order_no.as_deref() == Some(order_no.as_str()))
                .collect();
            let n = |t: &str| mine.iter().filter(|e| e.event_type == t).count();
            n("charging.started") >= 1
                && n("order.completed") >= 1
                && n("charging.progress") >= want_progress
        })
        .await;
    let ev = ctx.receiver.events_for_order(&order_no);
    let n = |t: &str| ev.iter().filter(|e| e.event_type == t).count();
    let refused = ctx.receiver.stats().refused - refused_before;
    r.set("refused_during_outage", refused);
    r.set(
        "delivered_after_outage_s",
        json!(delivered.then(|| after.elapsed().as_secs_f64())),
    );
    r.push(Check::new(
        "outage_happened",
        "接收端故障",
        "10 分钟内所有投递均被拒 (500)",
        format!("拒绝 {refused} 次"),
        refused > 0,
    ));
    let breaker_open = during
        .as_ref()
        .is_some_and(|w| w.state != pile_api::BreakerState::Closed);
    r.set(
        "breaker_during_outage",
        json!(during.as_ref().map(|w| json!({
            "state": w.state,
            "consecutive_failures": w.consecutive_failures,
            "backlog": w.backlog,
        }))),
    );
    r.push(Check::new(
        "breaker_opened",
        "熔断",
        "故障结束前 10 秒网关对该接收端的熔断器为打开 (不再逐个事件消耗重试次数, 每 30 秒探测一次)",
        match &during {
            Some(w) => format!(
                "{:?}, 连续失败 {}, 积压 {}",
                w.state, w.consecutive_failures, w.backlog
            ),
            None => "stats 无 webhook 状态".into(),
        },
        breaker_open,
    ));
    r.push(Check::new(
        "all_delivered",
        "故障后全部送达",
        format!(
            "故障结束后 300 秒内: started 1, progress {want_progress} (= 进度样本数), completed 1"
        ),
        format!(
            "started {}, progress {}, completed {}{}",
            n("charging.started"),
            n("charging.progress"),
            n("order.completed"),
            if delivered {
                format!(" (故障结束后 {:.0} 秒内)", after.elapsed().as_secs_f64())
            } else {
                " (300 秒内未全部送达)".into()
            }
        ),
        delivered
            && n("charging.started") == 1
            && n("order.completed") == 1
            && n("charging.progress") == want_progress,
    ));
    let dead = ctx
        .client
        .dead_letters(&pile_api::DeadLetterQuery {
            page: Some(1),
            size: Some(500),
        })
        .await;
    let mine = dead.as_ref().ok().map(|p| {
        p.items
            .iter()
            .filter(|d| d.order_no.as_deref() == Some(order_no.as_str()) || d.device_id == device)
            .count()
    });
    r.push(Check::new(
        "no_dead_letters",
        "死信",
        "该桩 0 条",
        match (&dead, mine) {
            (Ok(_), Some(m)) => m.to_string(),
            (Err(e), _) => e.to_string(),
            _ => "n/a".into(),
        },
        mine == Some(0),
    ));
    r.set(
        "duplicate_deliveries",
        ctx.receiver.duplicates_for_device(&device),
    );
    r
}

/// How long B.5's receiver refuses.
pub const LONG_OUTAGE: Duration = Duration::from_secs(600);

/// B.6 a gateway instance killed mid-charge, its piles moving to another instance on the
/// same PostgreSQL database. Needs the gateway's cluster mode; run only with a PostgreSQL URL.
///
/// A second instance (B) is started on the run's database; one BKV pile of its own dials B
/// first and the run's gateway (A) as its backup address, as a pile with two server addresses
/// does. The charge is asked of A (routed to B, which holds the pile); a third of the way in,
/// B is killed with SIGKILL. The pile dials A, A takes the lease, the charge runs on and its
/// end report settles the order once on A.
pub async fn instance_killed(ctx: &Ctx) -> CaseResult {
    let mut r = CaseResult::new("B.6", "网关实例中途被杀, 设备迁移");
    if let Err(why) = crate::gateway::cluster_support(ctx).await {
        r.status = Status::NotRun(why);
        return r;
    }
    let crate::stack::Target::Embedded { spec, .. } = &ctx.target else {
        r.status = Status::NotRun("外部目标".into());
        return r;
    };
    let mut spec_b = spec.clone();
    spec_b.log_path = ctx.out_dir.join("gateway-b.log");
    let b = match crate::gateway::GatewayProcess::spawn(&spec_b, "127.0.0.1:0", "127.0.0.1:0").await
    {
        Ok(b) => b,
        Err(e) => {
            r.push(Check::new(
                "instance_b",
                "第二实例启动",
                "同一 PostgreSQL 上启动",
                format!("失败: {e:#}"),
                false,
            ));
            return r;
        }
    };
    r.set("instance_b_device_addr", b.device_addr.clone());
    let device = beyond_id(crate::stack::BEYOND_PILES + 1);
    let fleet = crate::stack::start_fleet(pile_sim::config::FleetConfig {
        server: format!("{},{}", b.device_addr, ctx.device_addr),
        devices: 1,
        protocol: pile_sim::config::ProtocolChoice::Bkv,
        first_bkv_id: device.clone(),
        heartbeat: ctx.profile.heartbeat,
        ports: 4,
        plug_delay: Duration::from_secs(1),
        reconnect_delay: Duration::from_millis(500),
        resend_after: (ctx.profile.heartbeat * 3).max(Duration::from_secs(3)),
        power_w: 1_000.0,
        seed: ctx.seed,
        ..pile_sim::config::FleetConfig::default()
    })
    .await;
    let fleet = match fleet {
        Ok(f) => f,
        Err(e) => {
            r.push(Check::new("fleet", "模拟桩", "启动", e, false));
            let _ = b.stop(Duration::from_secs(2)).await;
            return r;
        }
    };
    let out = instance_killed_with(ctx, &mut r, b, &fleet, &device).await;
    fleet.shutdown().await;
    if let Some(b) = out {
        let _ = b.stop(Duration::from_secs(2)).await;
    }
    r
}

/// The body of B.6; returns instance B when it is still running (a step failed first).
async fn instance_killed_with(
    ctx: &Ctx,
    r: &mut CaseResult,
    b: crate::gateway::GatewayProcess,
    fleet: &pile_sim::fleet::FleetHandle,
    device: &str,
) -> Option<crate::gateway::GatewayProcess> {
    let Some(pile) = fleet.pile(device) else {
        r.push(Check::new(
            "pile",
            "模拟桩",
            device,
            "无此桩".to_string(),
            false,
        ));
        return Some(b);
    };
    r.set("device_id", device.to_string());
    // Liveness is the owner's (B), read through A.
    let online = wait_device(ctx, device, true, Duration::from_secs(30)).await;
    r.push(Check::new(
        "online_via_a",
        "经实例 A 查询: 在线 (连接在 B)",
        "online",
        if online.is_some() {
            "online"
        } else {
            "30 秒内未上线"
        },
        online.is_some(),
    ));
    if online.is_none() {
        return Some(b);
    }
    let secs = 60;
    let req = time_request(1, secs);
    let start = start_charge(ctx, "B.6", &pile, device, &req).await;
    let Some(order_no) = start.order_no().map(str::to_string) else {
        r.push(Check::new(
            "charge",
            "经 A 下单, 路由到 B",
            "200",
            start.api_status(),
            false,
        ));
        return Some(b);
    };
    r.set("order_no", order_no.clone());
    r.push(Check::new(
        "routed",
        "经 A 下单, 指令经 B 到桩",
        "charging",
        match start.charging_after_ms {
            Some(ms) => format!("{ms} ms 后 charging"),
            None => "未进入 charging".into(),
        },
        start.charging_after_ms.is_some(),
    ));
    if start.charging_after_ms.is_none() {
        return Some(b);
    }
    tokio::time::sleep(Duration::from_secs(secs as u64 / 3)).await;
    let connects_before = pile.snapshot().stats.connects;
    let killed = Instant::now();
    // SAFETY: kill(2) on our own child's pid; no memory is touched.
    unsafe {
        libc::kill(b.pid as libc::pid_t, libc::SIGKILL);
    }
    drop(b);
    let moved = poll(Duration::from_secs(60), Duration::from_millis(100), || {
        let pile = pile.clone();
        async move {
            if pile.snapshot().stats.connects <= connects_before {
                return None;
            }
            let d = ctx.client.device(device).await.ok()?;
            d.online.then_some(())
        }
    })
    .await
    .map(|_| killed.elapsed());
    r.set("failover_s", json!(moved.map(|d| d.as_secs_f64())));
    r.push(Check::new(
        "failover",
        "B 被 SIGKILL 后桩在 A 上线",
        "≤ 30 秒",
        match moved {
            Some(d) => format!("{:.1} 秒", d.as_secs_f64()),
            None => "60 秒内未在 A 上线".into(),
        },
        moved.is_some_and(|d| d <= Duration::from_secs(30)),
    ));
    let charging_on = sim_port_has_charge(&pile, 1);
    r.push(Check::new(
        "charge_kept",
        "充电不中断",
        "桩上充电继续",
        if charging_on { "继续" } else { "已结束" },
        charging_on,
    ));
    let fin = wait_settled(ctx, &order_no, Duration::from_secs(secs as u64 + 90)).await;
    r.push(completed_check(fin.as_ref()));
    if let Some(o) = &fin {
        record_fin(r, o);
        r.push(bill_check(o, &req, false));
        let err = (o.duration_sec - secs).abs();
        r.push(Check::new(
            "duration",
            "时长",
            format!("{secs} 秒 ±5"),
            format!("{} 秒", o.duration_sec),
            err <= 5,
        ));
    }
    let (started, completed, _) = lifecycle_events(ctx, &order_no, webhook_wait(ctx)).await;
    r.push(once_check(orders_of(ctx, device).await, started, completed));
    None
}
