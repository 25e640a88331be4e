//! 1.1–1.4: the environment checks.

use std::time::Duration;

use pile_api::DeviceListQuery;
use serde_json::{json, Value};

use crate::cases::common::wait_device;
use crate::report::{CaseResult, Check, Status};
use crate::stack::{Ctx, SEED_BKV_A, SEED_BKV_B};

/// 1.1 `/healthz`, `/readyz`, process alive, error-log count.
pub async fn health(ctx: &Ctx) -> CaseResult {
    let mut r = CaseResult::new("1.1", "服务器健康检查");
    for (key, label, path) in [
        ("healthz", "healthz接口", "/healthz"),
        ("readyz", "readyz接口", "/readyz"),
    ] {
        let res = ctx
            .http
            .get(format!("{}{}", ctx.base_url, path))
            .send()
            .await;
        let (code, body) = match res {
            Ok(resp) => {
                let code = resp.status().as_u16();
                (code, resp.text().await.unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        };
        r.set(&format!("{key}_status"), code);
        r.set(
            &format!("{key}_body"),
            body.chars().take(300).collect::<String>(),
        );
        let actual = if code == 0 {
            format!("无应答: {body}")
        } else {
            format!("{code}")
        };
        r.push(Check::new(key, label, "200 OK", actual, code == 200));
    }
    match ctx.gateway_alive().await {
        Some(alive) => {
            let pid = ctx.gateway_pid().await;
            r.set("process_pid", json!(pid));
            r.push(Check::new(
                "running",
                "容器状态",
                "Running",
                if alive {
                    format!("Running (子进程 pid {})", pid.unwrap_or(0))
                } else {
                    "已退出".into()
                },
                alive,
            ));
        }
        None => {
            // An external target's process cannot be observed from here; healthz is the
            // closest honest evidence.
            let ok = r.check_ok("healthz");
            r.push(Check::new(
                "running",
                "容器状态",
                "Running",
                if ok {
                    "外部目标: 进程不可见, healthz 应答视为运行"
                } else {
                    "外部目标: healthz 无应答"
                },
                ok,
            ));
        }
    }
    match ctx.client.stats().await {
        Ok(s) => {
            r.set(
                "log_counts",
                serde_json::to_value(&s.log_counts).unwrap_or(Value::Null),
            );
            r.push(Check::new(
                "no_errors",
                "日志状态",
                "无ERROR",
                format!(
                    "ERROR {} 条, WARN {} 条",
                    s.log_counts.error, s.log_counts.warn
                ),
                s.log_counts.error == 0,
            ));
        }
        Err(e) => r.push(Check::new(
            "no_errors",
            "日志状态",
            "无ERROR",
            format!("无法读取 /api/v1/admin/stats: {e}"),
            false,
        )),
    }
    r
}

/// 1.2 both seed gateways connect and heartbeat.
pub async fn devices_online(ctx: &Ctx) -> CaseResult {
    let mut r = CaseResult::new("1.2", "设备在线状态");
    if let Err(e) = &ctx.fleets {
        r.status = Status::NotRun(format!("模拟设备不可用: {e}"));
        return r;
    }
    let wait = (ctx.profile.heartbeat * 3).max(Duration::from_secs(10));
    let (a, b) = tokio::join!(
        wait_device(ctx, SEED_BKV_A, true, wait),
        wait_device(ctx, SEED_BKV_B, true, wait)
    );
    for (id, view) in [(SEED_BKV_A, a), (SEED_BKV_B, b)] {
        // Online alone is not a heartbeat: wait for last_seen_at to move once more.
        let (online, last_seen, heartbeat_moved) = match &view {
            Some(v) => {
                let first = v.last_seen_at;
                tokio::time::sleep(ctx.profile.heartbeat + Duration::from_millis(500)).await;
                let again = ctx.client.device(id).await.ok();
                let later = again.as_ref().and_then(|d| d.last_seen_at);
                (
                    again.as_ref().is_some_and(|d| d.online),
                    later.or(first),
                    matches!((first, later), (Some(a), Some(b)) if b > a),
                )
            }
            None => {
                let now = ctx.client.device(id).await;
                match now {
                    Ok(d) => (d.online, d.last_seen_at, false),
                    Err(e) => {
                        r.note(format!("{id}: {e}"));
                        (false, None, false)
                    }
                }
            }
        };
        r.set(&format!("{id}.online"), online);
        r.set(&format!("{id}.last_seen_at"), json!(last_seen));
        r.set(&format!("{id}.heartbeat_advanced"), heartbeat_moved);
        r.push(Check::new(
            &format!("{id}.online"),
            &format!("{id} 在线状态"),
            "在线",
            if online { "在线" } else { "离线" },
            online,
        ));
        r.push(Check::new(
            &format!("{id}.heartbeat"),
            &format!("{id} 最后心跳时间"),
            format!("显示且在 {} 秒内更新", ctx.profile.heartbeat.as_secs() + 1),
            match last_seen {
                Some(t) => format!(
                    "{}{}",
                    crate::render::fmt_time(t),
                    if heartbeat_moved { "" } else { " (未更新)" }
                ),
                None => "无".into(),
            },
            last_seen.is_some() && heartbeat_moved,
        ));
    }
    r
}

/// 1.3 webhook URL and secret set; an event reaches the receiver with a valid signature.
pub async fn webhook(ctx: &Ctx) -> CaseResult {
    let mut r = CaseResult::new("1.3", "Webhook配置");
    let Some((url, secret)) = ctx.webhook_configured.clone() else {
        r.status =
            Status::NotRun("外部目标: 其 Webhook 由目标自身配置, 本工具的接收端未接入".into());
        return r;
    };
    r.set("webhook_url", url.clone());
    r.push(Check::new("url", "Webhook URL已配置", "已配置", url, true));
    r.push(Check::new(
        "secret",
        "Webhook密钥已配置",
        "已配置",
        if secret {
            "已配置 (HMAC-SHA256)"
        } else {
            "未配置"
        },
        secret,
    ));
    r.push(Check::new(
        "receiver",
        "接收端点已部署",
        "接收端运行",
        format!("本地接收端 {}", ctx.receiver.addr),
        true,
    ));
    // The gateway's own test event, then any event at all (the seed piles coming online).
    let before = ctx.receiver.stats();
    let test = ctx.client.webhook_test().await;
    match &test {
        Ok(t) => {
            r.set("test_event_id", t.event_id.clone());
            r.set("test_delivered", t.delivered);
            r.set("test_status", serde_json::json!(t.status));
            r.set("test_latency_ms", t.latency_ms);
        }
        Err(e) => r.note(format!("POST /api/v1/admin/webhooks/test: {e}")),
    }
    let test_id = test.as_ref().ok().map(|t| t.event_id.clone());
    let wait = Duration::from_secs(20);
    let got = ctx
        .receiver
        .wait_for(wait, |ev| match &test_id {
            Some(id) => ev.iter().any(|e| &e.event_id == id),
            None => !ev.is_empty(),
        })
        .await;
    let st = ctx.receiver.stats();
    let events = ctx.receiver.events();
    r.set(
        "receiver_stats",
        serde_json::to_value(&st).unwrap_or(Value::Null),
    );
    r.set("events_so_far", events.len());
    let seen = match &test_id {
        Some(id) => events.iter().find(|e| &e.event_id == id),
        None => events.first(),
    };
    if let Some(e) = seen {
        r.set("received_event_type", e.event_type.clone());
    }
    let bad = st.bad_signature - before.bad_signature;
    let ok = got && st.bad_signature == 0 && st.verified > before.verified;
    r.push(Check::new(
        "connectivity",
        "Webhook连通性测试通过",
        "测试事件送达且接收端独立校验签名通过",
        match (&test, seen) {
            (Ok(t), Some(e)) => format!(
                "{} 送达 (网关测得 {:.0} ms, 状态 {}), 签名校验通过, 签名错误 {}",
                e.event_type,
                t.latency_ms,
                t.status.map_or("-".into(), |s| s.to_string()),
                st.bad_signature
            ),
            (Err(e), Some(ev)) => {
                format!("测试接口失败 ({e}); 但收到 {} 且签名通过", ev.event_type)
            }
            (_, None) => format!(
                "{} 秒内未收到{} (收到请求 {}, 签名错误 {bad}, 格式错误 {})",
                wait.as_secs(),
                if test_id.is_some() {
                    "测试事件"
                } else {
                    "任何事件"
                },
                st.requests,
                st.malformed
            ),
        },
        ok,
    ));
    r
}

/// 1.4 valid key 200, wrong key 401, envelope fields present.
pub async fn auth(ctx: &Ctx) -> CaseResult {
    let mut r = CaseResult::new("1.4", "API认证");
    let url = format!("{}/api/v1/third/devices?page=1&size=5", ctx.base_url);
    let good = ctx
        .http
        .get(&url)
        .header("X-Api-Key", &ctx.api_key)
        .send()
        .await;
    let bad = ctx
        .http
        .get(&url)
        .header("X-Api-Key", "definitely-not-the-key")
        .send()
        .await;
    let (good_code, good_body) = match good {
        Ok(resp) => (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        ),
        Err(e) => (0, e.to_string()),
    };
    let bad_code = bad.map(|r| r.status().as_u16()).unwrap_or(0);
    r.set("valid_key_status", good_code);
    r.set("wrong_key_status", bad_code);
    r.push(Check::new(
        "valid_key",
        "API Key验证通过",
        "正确密钥 200, 错误密钥 401",
        format!("{good_code} / {bad_code}"),
        good_code == 200 && bad_code == 401,
    ));
    // The typed client too: a real call end to end, once the record's two piles are online
    // (1.2 runs at the same time), so the list's total agrees with what 1.2 shows.
    let wait = (ctx.profile.heartbeat * 3).max(Duration::from_secs(10));
    let (a, b) = tokio::join!(
        wait_device(ctx, SEED_BKV_A, true, wait),
        wait_device(ctx, SEED_BKV_B, true, wait)
    );
    let seed_online = usize::from(a.is_some()) + usize::from(b.is_some());
    let typed = ctx
        .client
        .devices(&DeviceListQuery {
            page: Some(1),
            size: Some(5),
            ..DeviceListQuery::default()
        })
        .await;
    let online_total = ctx
        .client
        .devices(&DeviceListQuery {
            online: Some(true),
            page: Some(1),
            size: Some(1),
        })
        .await
        .ok()
        .map(|p| p.total);
    r.set(
        "device_list_total",
        json!(typed.as_ref().ok().map(|p| p.total)),
    );
    r.set("device_list_online_total", json!(online_total));
    r.set("seed_devices_online", seed_online);
    let want_piles = ctx.fleets.is_ok();
    r.push(Check::new(
        "api_call",
        "API调用正常",
        if want_piles {
            "设备列表可读, total ≥ 在线设备数 ≥ 2 (与 1.2 一致)"
        } else {
            "设备列表可读"
        },
        match &typed {
            Ok(p) => format!(
                "设备列表 total={} (其中在线 {}; 1.2 的两台记录设备在线 {seed_online}/2; 含本工具的其他模拟桩)",
                p.total,
                online_total.map_or("n/a".into(), |n| n.to_string())
            ),
            Err(e) => e.to_string(),
        },
        typed.as_ref().is_ok_and(|p| {
            !want_piles
                || (seed_online == 2
                    && online_total.is_some_and(|o| o >= 2 && p.total >= o))
        }),
    ));
    let env: Option<Value> = serde_json::from_str(&good_body).ok();
    let missing: Vec<&str> = ["code", "message", "data", "request_id", "timestamp"]
        .into_iter()
        .filter(|k| env.as_ref().and_then(|v| v.get(*k)).is_none())
        .collect();
    r.set("envelope_missing", json!(missing));
    r.push(Check::new(
        "envelope",
        "返回数据格式正确",
        "code, message, data, request_id, timestamp",
        if missing.is_empty() {
            "字段齐全".to_string()
        } else {
            format!("缺少 {}", missing.join(", "))
        },
        missing.is_empty() && env.is_some(),
    ));
    r
}
