//! The background side: a poller that sends snapshots, a reader of the live event stream,
//! and the executor of [`Command`]s. Each talks to the main loop only through [`Update`]s
//! and ends when the main loop drops its receiver.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use pile_api::{ChargeRequest, Client, DeviceListQuery, OrderListQuery, StopRequest};
use tokio::sync::{mpsc, watch};

use crate::app::{
    Command, DeviceDetail, Focus, OrderDetail, Snapshot, Update, START_AMOUNT_FEN,
    START_DURATION_SEC,
};
use crate::prom;
use crate::sse::SseParser;

/// Rows fetched for the Devices and Orders tables.
pub const LIST_SIZE: u32 = 1000;
/// Any one request gives up after this long, so a hung gateway shows as disconnected.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone)]
pub struct PollConfig {
    pub server: String,
    pub api_key: String,
    pub refresh: Duration,
    /// The simulator's control API, for the state of the focused pile.
    pub sim: Option<String>,
    /// The longest wait between tries while the gateway is away.
    pub max_backoff: Duration,
}

impl PollConfig {
    pub fn new(server: impl Into<String>, api_key: impl Into<String>, refresh: Duration) -> Self {
        PollConfig {
            server: server.into(),
            api_key: api_key.into(),
            refresh,
            sim: None,
            max_backoff: Duration::from_secs(30),
        }
    }

    fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::with_http(self.http(), self.server.clone(), self.api_key.clone())
    }
}

/// The wait after `failures` failed polls in a row: the refresh period, doubled per further
/// failure, at most `max`.
pub fn backoff(refresh: Duration, failures: u32, max: Duration) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    refresh.saturating_mul(factor).min(max)
}

/// Polls the gateway every `refresh` (backing off while it fails) until `tx` closes.
pub async fn run_poller(
    cfg: PollConfig,
    mut focus: watch::Receiver<Focus>,
    tx: mpsc::Sender<Update>,
) {
    let client = cfg.client();
    let http = cfg.http();
    let mut failures = 0u32;
    loop {
        let current = focus.borrow_and_update().clone();
        let update = match poll_once(&client, &http, &cfg, &current).await {
            Ok(updates) => {
                failures = 0;
                let mut closed = false;
                for u in updates {
                    closed |= tx.send(u).await.is_err();
                }
                if closed {
                    return;
                }
                None
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let wait = backoff(cfg.refresh, failures, cfg.max_backoff);
                let at_ms = now_ms();
                Some(Update::PollFailed {
                    at_ms,
                    error,
                    retry_at_ms: at_ms + wait.as_millis() as i64,
                })
            }
        };
        if let Some(u) = update {
            if tx.send(u).await.is_err() {
                return;
            }
        }
        let wait = backoff(cfg.refresh, failures, cfg.max_backoff);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // A new focus (a device opened) is fetched at once, unless the gateway is away.
            changed = focus.changed(), if failures == 0 => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
        }
    }
}

async fn poll_once(
    client: &Client,
    http: &reqwest::Client,
    cfg: &PollConfig,
    focus: &Focus,
) -> Result<Vec<Update>, String> {
    let err = |what: &str, e: pile_api::ClientError| format!("{what}: {}", describe(&e));
    let stats = client.stats().await.map_err(|e| err("stats", e))?;
    let devices = client
        .devices(&DeviceListQuery {
            online: None,
            page: Some(1),
            size: Some(LIST_SIZE),
        })
        .await
        .map_err(|e| err("devices", e))?;
    let orders = client
        .orders(&OrderListQuery {
            status: focus.order_status.map(|s| s.as_str().to_string()),
            device_id: None,
            page: Some(1),
            size: Some(LIST_SIZE),
        })
        .await
        .map_err(|e| err("orders", e))?;
    // `/metrics` is optional: a gateway behind a proxy may not expose it.
    let metrics = match http
        .get(format!("{}/metrics", cfg.server.trim_end_matches('/')))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r.text().await.ok().map(|t| prom::parse(&t)),
        _ => None,
    };
    let mut out = vec![Update::Snapshot {
        at_ms: now_ms(),
        snapshot: Box::new(Snapshot {
            stats: Some(stats),
            metrics,
            devices: devices.items,
            devices_total: devices.total,
            orders: orders.items,
            orders_total: orders.total,
        }),
    }];
    // A detail the gateway answers "not found" (or any other status) for is a problem of
    // that item, not of the connection: it becomes a notice, not a disconnected state.
    let detail_err = |what: &str, e: pile_api::ClientError| -> Result<Update, String> {
        match e.status() {
            Some(status) => Ok(Update::Notice {
                at_ms: now_ms(),
                message: format!("{what}: HTTP {status}: {}", e.message()),
                error: true,
            }),
            None => Err(err(what, e)),
        }
    };
    if let Some(id) = &focus.device {
        match client.device(id).await {
            Ok(device) => {
                let frames = client.frames(id).await.unwrap_or_default();
                let mut running = Vec::new();
                for no in device.ports.iter().filter_map(|p| p.order_no.as_deref()) {
                    if let Ok(o) = client.order(no).await {
                        running.push(o);
                    }
                }
                let sim = match &cfg.sim {
                    Some(base) => Some(sim_pile(http, base, id).await),
                    None => None,
                };
                out.push(Update::Device {
                    at_ms: now_ms(),
                    detail: Box::new(DeviceDetail {
                        device,
                        frames,
                        orders: running,
                        sim,
                    }),
                });
            }
            Err(e) => out.push(detail_err(&format!("device {id}"), e)?),
        }
    }
    if let Some(no) = &focus.order {
        match client.order(no).await {
            Ok(order) => {
                let progress = client.progress(no).await.unwrap_or_default();
                out.push(Update::Order {
                    at_ms: now_ms(),
                    detail: Box::new(OrderDetail { order, progress }),
                });
            }
            Err(e) => out.push(detail_err(&format!("order {no}"), e)?),
        }
    }
    Ok(out)
}

/// The simulator's view of one pile, in a line: connection, faults, records to replay.
async fn sim_pile(http: &reqwest::Client, base: &str, id: &str) -> String {
    let url = format!("{}/piles/{id}", base.trim_end_matches('/'));
    match http.get(url).send().await {
        Ok(r) if r.status().is_success() => match r.json::<serde_json::Value>().await {
            Ok(v) => sim_summary(&v),
            Err(e) => format!("unreadable answer: {e}"),
        },
        Ok(r) if r.status().as_u16() == 404 => "not a simulated pile".to_string(),
        Ok(r) => format!("HTTP {}", r.status().as_u16()),
        Err(e) => format!("unreachable: {}", describe(&e.into())),
    }
}

/// `GET /piles/{id}` of the simulator, summarised.
pub fn sim_summary(v: &serde_json::Value) -> String {
    let connection = v.get("connection").and_then(|c| c.as_str()).unwrap_or("?");
    let mut parts = vec![format!("connection {connection}")];
    let faults: Vec<String> = v
        .get("faults")
        .and_then(|f| f.as_array())
        .into_iter()
        .flatten()
        .map(|f| {
            let kind = f.get("kind").and_then(|k| k.as_str()).unwrap_or("?");
            match f.get("secs_left").and_then(|s| s.as_u64()) {
                Some(s) => format!("{kind} {s}s left"),
                None => kind.to_string(),
            }
        })
        .collect();
    parts.push(if faults.is_empty() {
        "no faults".to_string()
    } else {
        format!("faults: {}", faults.join(", "))
    });
    if let Some(n) = v.get("pending_replay").and_then(|n| n.as_u64()) {
        parts.push(format!("{n} records to replay"));
    }
    let plugged: Vec<String> = v
        .get("ports")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .filter(|p| p.get("plugged").and_then(|b| b.as_bool()) == Some(true))
        .filter_map(|p| p.get("port_no").and_then(|n| n.as_u64()))
        .map(|n| n.to_string())
        .collect();
    parts.push(if plugged.is_empty() {
        "nothing plugged".to_string()
    } else {
        format!("plugged: {}", plugged.join(" "))
    });
    parts.join(" · ")
}

/// An error as an operator wants to read it: what failed and the innermost cause (the
/// transport's own text only says "error sending request for url").
pub fn describe(e: &pile_api::ClientError) -> String {
    match e {
        pile_api::ClientError::Transport(t) => {
            let kind = if t.is_timeout() {
                "timed out"
            } else if t.is_connect() {
                "cannot connect"
            } else {
                "transport error"
            };
            let mut cause: &dyn std::error::Error = t;
            while let Some(next) = cause.source() {
                cause = next;
            }
            format!("{kind}: {cause}")
        }
        other => other.to_string(),
    }
}

/// Reads the live event stream, reconnecting with backoff, until `tx` closes.
pub async fn run_event_stream(cfg: PollConfig, tx: mpsc::Sender<Update>) {
    // No overall timeout here: the stream is meant to stay open.
    let http = reqwest::Client::builder()
        .connect_timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap_or_default();
    let url = format!("{}/api/v1/events/stream", cfg.server.trim_end_matches('/'));
    let mut failures = 0u32;
    loop {
        let result = http
            .get(&url)
            .header("X-Api-Key", &cfg.api_key)
            .header("Accept", "text/event-stream")
            .send()
            .await;
        let error = match result {
            Ok(resp) if resp.status().is_success() => {
                failures = 0;
                if tx
                    .send(Update::StreamConnected { at_ms: now_ms() })
                    .await
                    .is_err()
                {
                    return;
                }
                let mut parser = SseParser::new();
                let mut body = resp.bytes_stream();
                loop {
                    let chunk = tokio::select! {
                        c = body.next() => c,
                        _ = tx.closed() => return,
                    };
                    match chunk {
                        Some(Ok(bytes)) => {
                            for ev in parser.push(&bytes) {
                                if let Ok(msg) = serde_json::from_str(&ev.data) {
                                    if tx.send(Update::Event(Box::new(msg))).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                        Some(Err(e)) => break describe(&e.into()),
                        None => break "stream closed by the gateway".to_string(),
                    }
                }
            }
            Ok(resp) => format!("HTTP {}", resp.status()),
            Err(e) => describe(&e.into()),
        };
        failures = failures.saturating_add(1);
        if tx
            .send(Update::StreamLost {
                at_ms: now_ms(),
                error,
            })
            .await
            .is_err()
        {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff(cfg.refresh, failures, cfg.max_backoff)) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Carries out one command against the gateway or the simulator's control API.
pub async fn execute(client: &Client, sim: Option<&str>, cmd: &Command) -> Update {
    let result: Result<String, String> = match cmd {
        Command::Start { device, port } => client
            .charge(
                device,
                &ChargeRequest {
                    port_no: *port,
                    charge_mode: pile_api::charge_mode::BY_TIME,
                    duration: START_DURATION_SEC,
                    amount: START_AMOUNT_FEN,
                    ..ChargeRequest::default()
                },
            )
            .await
            .map(|o| {
                format!(
                    "started {} on {device} port {port} ({})",
                    o.order_no, o.status
                )
            })
            .map_err(|e| format!("start {device} port {port}: {}", e.message())),
        Command::Stop {
            device,
            port,
            order_no,
        } => client
            .stop(
                device,
                &StopRequest {
                    port_no: *port,
                    order_no: order_no.clone(),
                },
            )
            .await
            .map(|o| format!("stopping {} on {device} port {port}", o.order_no))
            .map_err(|e| format!("stop {device} port {port}: {}", e.message())),
        other => match sim {
            None => Err("simulator controls need --sim URL".to_string()),
            Some(base) => sim_call(base, other).await,
        },
    };
    let at_ms = now_ms();
    match result {
        Ok(message) => Update::CommandDone {
            at_ms,
            ok: true,
            message,
        },
        Err(message) => Update::CommandDone {
            at_ms,
            ok: false,
            message,
        },
    }
}

/// The simulator's route and body for a command (`simulator/src/control.rs`).
pub fn sim_request(cmd: &Command) -> Option<(String, serde_json::Value)> {
    use serde_json::json;
    Some(match cmd {
        Command::Plug { device, port } => (format!("/piles/{device}/ports/{port}/plug"), json!({})),
        Command::Unplug { device, port } => {
            (format!("/piles/{device}/ports/{port}/unplug"), json!({}))
        }
        Command::CutNetwork { device } => (format!("/piles/{device}/network/drop"), json!({})),
        Command::RestoreNetwork { device } => {
            (format!("/piles/{device}/network/restore"), json!({}))
        }
        Command::Fault { device, kind, secs } => (
            format!("/piles/{device}/faults"),
            json!({"kind": kind, "secs": secs}),
        ),
        Command::Start { .. } | Command::Stop { .. } => return None,
    })
}

async fn sim_call(base: &str, cmd: &Command) -> Result<String, String> {
    let Some((path, body)) = sim_request(cmd) else {
        return Err("not a simulator command".into());
    };
    let what = cmd.describe();
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap_or_default();
    let resp = http
        .post(format!("{}{}", base.trim_end_matches('/'), path))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("{what}: simulator unreachable: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(format!("sim: {what}: ok"));
    }
    let text = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or(text);
    Err(format!("sim: {what}: HTTP {}: {message}", status.as_u16()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_refresh_period_up_to_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(2), 0, s(30)), s(2));
        assert_eq!(backoff(s(2), 1, s(30)), s(2));
        assert_eq!(backoff(s(2), 2, s(30)), s(4));
        assert_eq!(backoff(s(2), 4, s(30)), s(16));
        assert_eq!(backoff(s(2), 10, s(30)), s(30));
        assert_eq!(backoff(s(2), 100, s(30)), s(30));
    }

    #[test]
    fn simulator_requests_match_its_control_routes() {
        let (path, body) = sim_request(&Command::Fault {
            device: "P1".into(),
            kind: "garbage".into(),
            secs: 30,
        })
        .unwrap();
        assert_eq!(path, "/piles/P1/faults");
        assert_eq!(body, serde_json::json!({"kind": "garbage", "secs": 30}));
        let (path, _) = sim_request(&Command::Unplug {
            device: "P1".into(),
            port: 2,
        })
        .unwrap();
        assert_eq!(path, "/piles/P1/ports/2/unplug");
        assert!(sim_request(&Command::Start {
            device: "P1".into(),
            port: 1
        })
        .is_none());
    }

    #[test]
    fn a_simulated_pile_is_summarised_in_one_line() {
        let v = serde_json::json!({
            "id": "P1", "connection": "network_down", "pending_replay": 2,
            "ports": [{"port_no": 1, "plugged": true}, {"port_no": 2, "plugged": false}],
            "faults": [{"kind": "bad_checksum", "secs_left": 28}]
        });
        assert_eq!(
            sim_summary(&v),
            "connection network_down · faults: bad_checksum 28s left · 2 records to replay · plugged: 1"
        );
    }
}
