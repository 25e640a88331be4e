//! Operations routes: stats, consistency, health, readiness, metrics.

use super::*;

/// Gateway figures for the acceptance record (tables, pool, slow queries, logs, pushes).
#[utoipa::path(
    get,
    path = "/api/v1/admin/stats",
    tag = "admin",
    responses(
        (status = 200, description = "The figures, measured by the gateway", body = Envelope<Stats>),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    )
)]
pub(super) async fn stats(State(state): State<AppState>) -> ApiResult {
    let store = &state.service.store;
    let (devices, orders, cmd_logs) = store.table_counts().await?;
    let (in_use, idle, max) = store.pool_usage();
    let push = store.push_figures().await?;
    let webhook = match state.events.as_ref().and_then(|e| e.dispatcher.as_ref()) {
        Some(d) => Some(d.endpoint_status().await?),
        None => None,
    };
    let qs = store.query_stats();
    Ok(ok(Stats {
        tables: TableCounts {
            devices,
            orders,
            cmd_logs,
        },
        db_pool: PoolStats { in_use, idle, max },
        slow_queries: qs.slow.load(Ordering::Relaxed),
        slow_query_threshold_ms: crate::store::SLOW_QUERY_MS,
        slowest_query_ms: qs.slowest_ms.load(Ordering::Relaxed),
        log_counts: m::LOG_COUNTS.snapshot(),
        event_backlog: push.backlog,
        push_success_rate: push.success_rate,
        mean_push_latency_ms: push.mean_latency_ms,
        active_sessions: state.service.gateway.session_count() as u64,
        online_devices: store.online_count().await?,
        orders_by_status: store.orders_by_status().await?.into_iter().collect(),
        uptime_sec: state.started.elapsed().as_secs(),
        webhook,
        instance_id: state.service.cluster().map(|c| c.id.clone()),
    }))
}

/// The gateway instances sharing this PostgreSQL database (issue #17), newest start first.
#[utoipa::path(
    get,
    path = "/api/v1/admin/instances",
    tag = "admin",
    responses(
        (status = 200, description = "Every instance that started on this database, with its liveness",
         body = Envelope<Vec<InstanceView>>),
        (status = 404, description = "A single-instance gateway (SQLite)", body = ErrorEnvelope),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    )
)]
pub(super) async fn instances(State(state): State<AppState>) -> ApiResult {
    let Some(cluster) = state.service.cluster() else {
        return Err(ApiError::NotFound(
            "this gateway runs as a single instance (SQLite)".into(),
        ));
    };
    let (rows, holder) = state.service.store.instances().await?;
    let now_ms = state.service.clock.now_ms();
    let ttl = cluster.lease_ttl_ms();
    Ok(ok(rows
        .into_iter()
        .map(|r| InstanceView {
            alive: r.stopped_at_ms.is_none() && r.heartbeat_at_ms >= now_ms - ttl,
            dispatcher: holder.as_deref() == Some(format!("pile-{}", r.instance_id).as_str()),
            instance_id: r.instance_id,
            http_addr: r.http_addr,
            device_addr: r.device_addr,
            started_at: r.started_at_ms.div_euclid(1000),
            last_beat_at: r.heartbeat_at_ms.div_euclid(1000),
            sessions: r.sessions,
            cpu_percent: None,
            rss_bytes: r.rss_bytes.map(|b| b.max(0) as u64),
        })
        .collect::<Vec<_>>()))
}

/// Consistency checks: orphan and stale orders, command match rate, port mismatches.
#[utoipa::path(
    get,
    path = "/api/v1/admin/consistency",
    tag = "admin",
    responses(
        (status = 200, description = "The checks", body = Envelope<Consistency>),
        (status = 503, description = "The database is unavailable", body = ErrorEnvelope),
    )
)]
pub(super) async fn consistency(State(state): State<AppState>) -> ApiResult {
    let service = &state.service;
    let store = &service.store;
    let now_ms = service.clock.now_ms();
    let grace = service.timings.offline_settle_grace.as_millis() as i64;
    let (sent, matched) = store.command_match().await?;
    Ok(ok(Consistency {
        orphan_orders: store.orphan_orders().await?,
        stale_orders: store.stale_orders(now_ms, grace).await?,
        commands: CommandMatch {
            sent,
            matched,
            match_rate: if sent == 0 {
                1.0
            } else {
                matched as f64 / sent as f64
            },
        },
        port_mismatches: store
            .port_mismatches()
            .await?
            .into_iter()
            .map(
                |(device_id, port_no, order_status, port_status)| PortMismatch {
                    device_id,
                    port_no: port_no as u32,
                    stored_status: order_status,
                    reported_status: port_status,
                },
            )
            .collect(),
    }))
}

/// Liveness: 200 while the process runs.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process runs", body = Envelope<Health>))
)]
pub(super) async fn healthz() -> Response {
    ok(Health {
        status: "ok".into(),
        checks: Default::default(),
    })
}

/// Readiness: the database answers and the device listener is up.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Envelope<Health>),
        (status = 503, description = "Not ready; `message` and `data.checks` name the failing check",
         body = Envelope<Health>),
    )
)]
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let mut checks = std::collections::BTreeMap::new();
    let db = match tokio::time::timeout(
        std::time::Duration::from_secs(2),
        state.service.store.ping(),
    )
    .await
    {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => format!("failing: {e}"),
        Err(_) => "failing: timed out".to_string(),
    };
    let listener = if state.device_listener_up.load(Ordering::Relaxed) {
        "ok".to_string()
    } else {
        "failing: device listener is not running".to_string()
    };
    checks.insert("database".to_string(), db);
    checks.insert("device_listener".to_string(), listener);
    let failing: Vec<&String> = checks
        .iter()
        .filter(|(_, v)| v.as_str() != "ok")
        .map(|(k, _)| k)
        .collect();
    if failing.is_empty() {
        return ok(Health {
            status: "ok".into(),
            checks,
        });
    }
    let message = format!(
        "not ready: {}",
        failing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let body = Envelope {
        code: 503,
        message,
        data: Some(Health {
            status: "unavailable".into(),
            checks,
        }),
        request_id: request_id(),
        timestamp: now_sec(),
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format",
               content_type = "text/plain", body = String))
)]
pub(super) async fn prometheus(State(state): State<AppState>) -> Response {
    metrics::gauge!(m::ACTIVE_SESSIONS).set(state.service.gateway.session_count() as f64);
    (
        [("content-type", "text/plain; version=0.0.4")],
        Body::from(state.prometheus.render()),
    )
        .into_response()
}
