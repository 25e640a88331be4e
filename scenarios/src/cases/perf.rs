//! 4.1 API load (ApacheBench's test, by `pile-load`), 4.2 fleet heartbeats with the gateway's
//! CPU and memory, 4.3 database figures.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pile_api::DeviceListQuery;
use serde_json::json;

use crate::gateway::ProcUsage;
use crate::report::{CaseResult, Check, Status};
use crate::stack::{Ctx, SEED_BKV_A};

/// 4.1 1,000 device-status requests at concurrency 10.
pub async fn api_load(ctx: &Ctx) -> CaseResult {
    let mut r = CaseResult::new("4.1", "API并发测试");
    // Let 4.2 finish its CPU window first so the two do not measure each other.
    let mut gate = ctx.heartbeat_window_done.subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(300), gate.wait_for(|d| *d)).await;
    let url = format!("{}/api/v1/third/devices/{SEED_BKV_A}", ctx.base_url);
    let mut cfg = pile_load::http::HttpLoadConfig::new(url.clone());
    cfg.api_key = Some(ctx.api_key.clone());
    cfg.requests = Some(1000);
    cfg.concurrency = 10;
    cfg.timeout = Duration::from_secs(10);
    r.set("url", url);
    r.set("requests", 1000);
    r.set("concurrency", 10);
    let rep = match pile_load::http::run(cfg, None).await {
        Ok(rep) => rep,
        Err(e) => {
            r.note(format!("pile-load 无法运行: {e}"));
            r.push(Check::new(
                "success_rate",
                "成功率",
                ">99%",
                e.to_string(),
                false,
            ));
            return r;
        }
    };
    r.set("report", serde_json::to_value(&rep).unwrap_or_default());
    for (k, v) in [
        ("success_rate", rep.success_rate),
        ("error_rate", rep.error_rate),
        ("qps", rep.qps),
        ("min_ms", rep.min_ms),
        ("max_ms", rep.max_ms),
        ("mean_ms", rep.mean_ms),
        ("p50_ms", rep.p50_ms),
        ("p95_ms", rep.p95_ms),
        ("p99_ms", rep.p99_ms),
        ("p999_ms", rep.p999_ms),
        ("duration_s", rep.duration_s),
    ] {
        r.set(k, v);
    }
    r.set("total", rep.requests);
    r.set("success", rep.success);
    r.set("failed", rep.failed);
    r.set("status_codes", json!(rep.status_codes));
    let codes = rep
        .status_codes
        .iter()
        .map(|(c, n)| format!("{c}×{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    r.push(Check::new(
        "success_rate",
        "成功率",
        ">99%",
        if rep.success_rate > 99.0 {
            format!("{:.2}", rep.success_rate)
        } else {
            format!("{:.2} (状态码 {codes})", rep.success_rate)
        },
        rep.success_rate > 99.0,
    ));
    r.push(Check::new(
        "mean",
        "平均响应时间",
        "<200ms",
        format!("{:.2}", rep.mean_ms),
        rep.requests > 0 && rep.mean_ms < 200.0,
    ));
    r.push(Check::new(
        "qps",
        "QPS",
        ">50",
        format!("{:.1}", rep.qps),
        rep.qps > 50.0,
    ));
    r.push(Check::new(
        "error_rate",
        "错误率",
        "<1%",
        format!("{:.2}", rep.error_rate),
        rep.requests > 0 && rep.error_rate < 1.0,
    ));
    r
}

/// The IDs the gateway lists as online (every page).
pub async fn online_ids(ctx: &Ctx) -> Result<HashSet<String>, String> {
    let mut out = HashSet::new();
    let mut page = 1;
    loop {
        let p = ctx
            .client
            .devices(&DeviceListQuery {
                online: Some(true),
                page: Some(page),
                size: Some(500),
            })
            .await
            .map_err(|e| e.to_string())?;
        let n = p.items.len();
        out.extend(p.items.into_iter().map(|d| d.device_id));
        if n == 0 || out.len() as i64 >= p.total || page > 1000 {
            return Ok(out);
        }
        page += 1;
    }
}

/// 4.2 the fleet heartbeats; every pile online; gateway CPU and RSS.
pub async fn heartbeats(ctx: &Ctx) -> CaseResult {
    let mut r = CaseResult::new("4.2", "心跳处理性能");
    let res = heartbeats_inner(ctx, &mut r).await;
    let _ = ctx.heartbeat_window_done.send(true);
    if let Err(reason) = res {
        r.status = Status::NotRun(reason);
    }
    r
}

async fn heartbeats_inner(ctx: &Ctx, r: &mut CaseResult) -> Result<(), String> {
    let fleet = match &ctx.fleets {
        Ok(f) => match &f.load {
            Some(l) => l.clone(),
            None => return Err("负载设备群未启动".into()),
        },
        Err(e) => return Err(format!("模拟设备不可用: {e}")),
    };
    let ids: HashSet<String> = fleet.piles().map(|p| p.id()).collect();
    let n = ids.len();
    r.set("fleet", n);
    r.set("heartbeat_s", ctx.profile.heartbeat.as_secs());
    let wait = if ctx.profile.name == "seed" {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(30)
    };
    let t = Instant::now();
    let mut online = 0;
    while t.elapsed() < wait {
        online = match online_ids(ctx).await {
            Ok(set) => set.intersection(&ids).count(),
            Err(e) => {
                r.note(format!("设备列表读取失败: {e}"));
                0
            }
        };
        if online == n {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    r.set("online", online);
    r.set("all_online_after_s", t.elapsed().as_secs_f64());
    r.push(Check::new(
        "all_online",
        "活跃设备数",
        format!("{n} 台全部在线"),
        format!("{online}"),
        online == n,
    ));
    let window = if ctx.profile.name == "seed" {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(10)
    };
    let Some(pid) = ctx.gateway_pid().await else {
        r.set("cpu_percent", "n/a");
        return Err("外部目标: 网关进程的 CPU 与内存无法从本机测量".into());
    };
    let a = ProcUsage::read(pid);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let b = ProcUsage::read(pid);
    let (Some(a), Some(b)) = (a, b) else {
        return Err(format!("无法读取 /proc/{pid}"));
    };
    let cpu = (b.cpu_s - a.cpu_s) / t0.elapsed().as_secs_f64() * 100.0;
    let rss_mb = b.rss_bytes as f64 / (1024.0 * 1024.0);
    r.set("window_s", window.as_secs());
    r.set("cpu_percent", (cpu * 10.0).round() / 10.0);
    r.set("rss_mb", (rss_mb * 10.0).round() / 10.0);
    r.push(Check::new(
        "cpu",
        "CPU使用率",
        "<50%",
        format!("{cpu:.1}"),
        cpu < 50.0,
    ));
    r.push(Check::new(
        "rss",
        "内存使用",
        "<2048MB",
        format!("{rss_mb:.1}"),
        rss_mb < 2048.0,
    ));
    Ok(())
}

/// 4.3 database figures from `/api/v1/admin/stats`.
pub async fn database(ctx: &Ctx) -> CaseResult {
    let mut r = CaseResult::new("4.3", "数据库性能");
    match ctx.client.stats().await {
        Ok(s) => {
            r.set("slow_queries", s.slow_queries);
            r.set("slow_query_threshold_ms", s.slow_query_threshold_ms);
            r.set("slowest_query_ms", s.slowest_query_ms);
            r.set("pool_in_use", s.db_pool.in_use);
            r.set("pool_max", s.db_pool.max);
            r.set("devices", s.tables.devices);
            r.set("orders", s.tables.orders);
            r.set("cmd_logs", s.tables.cmd_logs);
            r.push(Check::new(
                "recorded",
                "数据库指标",
                "慢查询、最慢查询、连接池、表大小可读",
                format!(
                    "慢查询 {}, 最慢 {} ms, 连接池 {}/{}, 表 {}/{}/{}",
                    s.slow_queries,
                    s.slowest_query_ms,
                    s.db_pool.in_use,
                    s.db_pool.max,
                    s.tables.devices,
                    s.tables.orders,
                    s.tables.cmd_logs
                ),
                s.db_pool.max > 0,
            ));
        }
        Err(e) => r.push(Check::new(
            "recorded",
            "数据库指标",
            "可读",
            format!("/api/v1/admin/stats: {e}"),
            false,
        )),
    }
    r
}
