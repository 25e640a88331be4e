//! The background side: a poller that sends snapshots, a reader of the live event stream,
//! and the executor of [`Command`]s. Each talks to the main loop only through [`Update`]s
//! and ends when the main loop drops its receiver.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use pile_api::{
    Client, ClientError, DeadLetterQuery, DeviceListQuery, OrderListQuery, OrderStatus, StopRequest,
};
use tokio::sync::{mpsc, watch};

use crate::app::problems::ProblemData;
use crate::app::{Command, DeviceDetail, Focus, OrderDetail, Outcome, Refusal, Snapshot, Update};
use crate::prom;
use crate::sse::SseParser;

/// Rows per device-list page (the API's largest page) and orders fetched for the table.
pub const LIST_SIZE: u32 = 1000;
/// Any one request gives up after this long, so a hung gateway shows as disconnected.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Without the problems view open, its data is fetched this often (for the tab's count).
pub const PROBLEMS_EVERY: Duration = Duration::from_secs(15);
/// `/admin/instances` is asked this often.
pub const INSTANCES_EVERY: Duration = Duration::from_secs(10);
/// Stale orders looked up per problems poll at most.
pub const STUCK_LOOKUPS: usize = 20;

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
    /// Devices per list page; one page is fetched per poll, walking the whole fleet.
    pub page_size: u32,
}

impl PollConfig {
    pub fn new(server: impl Into<String>, api_key: impl Into<String>, refresh: Duration) -> Self {
        PollConfig {
            server: server.into(),
            api_key: api_key.into(),
            refresh,
            sim: None,
            max_backoff: Duration::from_secs(30),
            page_size: LIST_SIZE,
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

    /// Every how many polls something is fetched that is needed only every `period`.
    fn every(&self, period: Duration) -> u64 {
        let r = self.refresh.as_millis().max(1);
        (period.as_millis() / r).max(1) as u64
    }
}

/// The wait after `failures` failed polls in a row: the refresh period, doubled per further
/// failure, at most `max`.
pub fn backoff(refresh: Duration, failures: u32, max: Duration) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    refresh.saturating_mul(factor).min(max)
}

/// What one poll failed on: the text for the banner and the status, if the gateway answered.
#[derive(Debug)]
struct PollError {
    text: String,
    status: Option<u16>,
}

fn poll_err(what: &str, e: ClientError) -> PollError {
    PollError {
        text: format!("{what}: {}", describe(&e)),
        status: e.status(),
    }
}

/// The poller's own counters: which device page is next, how many polls ran.
#[derive(Debug, Default)]
struct Cursor {
    polls: u64,
    page: u32,
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
    let mut cursor = Cursor { polls: 0, page: 1 };
    loop {
        let current = focus.borrow_and_update().clone();
        let update = match poll_once(&client, &http, &cfg, &current, &mut cursor).await {
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
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = backoff(cfg.refresh, failures, cfg.max_backoff);
                let at_ms = now_ms();
                Some(Update::PollFailed {
                    at_ms,
                    error: e.text,
                    status: e.status,
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
    cursor: &mut Cursor,
) -> Result<Vec<Update>, PollError> {
    let requested_ms = now_ms();
    let n = cursor.polls;
    cursor.polls += 1;
    let stats = client.stats().await.map_err(|e| poll_err("stats", e))?;
    let page = client
        .devices(&DeviceListQuery {
            online: None,
            page: Some(cursor.page),
            size: Some(cfg.page_size),
        })
        .await
        .map_err(|e| poll_err("devices", e))?;
    // The next poll fetches the next page, back to the first after the last.
    let size = i64::from(page.size.max(1));
    cursor.page = if i64::from(cursor.page) * size >= page.total {
        1
    } else {
        cursor.page + 1
    };
    let orders = client
        .orders(&OrderListQuery {
            status: focus.order_status.map(|s| s.as_str().to_string()),
            device_id: None,
            page: Some(1),
            size: Some(LIST_SIZE),
        })
        .await
        .map_err(|e| poll_err("orders", e))?;
    // `/metrics` is optional: a gateway behind a proxy may not expose it.
    let metrics = match http
        .get(format!("{}/metrics", cfg.server.trim_end_matches('/')))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r.text().await.ok().map(|t| prom::parse(&t)),
        _ => None,
    };
    let mut out = vec![
        Update::DevicePage {
            at_ms: now_ms(),
            requested_ms,
            page: Box::new(page),
        },
        Update::Snapshot {
            at_ms: now_ms(),
            requested_ms,
            snapshot: Box::new(Snapshot {
                stats: Some(stats),
                metrics,
                orders: orders.items,
                orders_total: orders.total,
            }),
        },
    ];
    // A detail the gateway answers "not found" (or any other status) for is a problem of
    // that item, not of the connection: it becomes a notice, not a disconnected state.
    let detail_err = |what: &str, e: ClientError| -> Result<Update, PollError> {
        match e.status() {
            Some(status) => Ok(Update::Notice {
                at_ms: now_ms(),
                message: format!("{what}: HTTP {status}: {}", e.message()),
                error: true,
            }),
            None => Err(poll_err(what, e)),
        }
    };
    if let Some(id) = &focus.device {
        match client.device(id).await {
            Ok(device) => {
                let frames = client.frames(id).await.unwrap_or_default();
                let mut running = Vec::new();
                for no in device.ports.iter().filter_map(|p| p.order_no.as_deref()) {
                    if let Ok(o) = client.order(no).await {
                        let progress = client.progress(no).await.unwrap_or_default();
                        running.push((o, progress));
                    }
                }
                let sim = match &cfg.sim {
                    Some(base) => Some(sim_pile(http, base, id).await),
                    None => None,
                };
                out.push(Update::Device {
                    at_ms: now_ms(),
                    requested_ms,
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
                    requested_ms,
                    detail: Box::new(OrderDetail { order, progress }),
                });
            }
            Err(e) => out.push(detail_err(&format!("order {no}"), e)?),
        }
    }
    if !focus.followed.is_empty() {
        let mut orders = Vec::new();
        for no in &focus.followed {
            if let Ok(o) = client.order(no).await {
                orders.push(o);
            }
        }
        out.push(Update::Followed {
            at_ms: now_ms(),
            requested_ms,
            orders,
        });
    }
    if focus.problems || n % cfg.every(PROBLEMS_EVERY) == 0 {
        out.push(Update::Problems {
            at_ms: now_ms(),
            requested_ms,
            data: Box::new(problems(client).await),
        });
    }
    if n % cfg.every(INSTANCES_EVERY) == 0 {
        match client.instances().await {
            Ok(v) => out.push(Update::Instances {
                at_ms: now_ms(),
                instances: Some(v),
            }),
            // A single-instance gateway has no such route: the view stays hidden.
            Err(e) if e.status() == Some(404) => out.push(Update::Instances {
                at_ms: now_ms(),
                instances: None,
            }),
            Err(_) => {}
        }
    }
    Ok(out)
}

/// The problems view's data; a part the gateway does not answer stays empty.
async fn problems(client: &Client) -> ProblemData {
    let consistency = client.consistency().await.ok();
    let dead = client
        .dead_letters(&DeadLetterQuery {
            page: Some(1),
            size: Some(100),
        })
        .await
        .ok();
    let failed = client
        .orders(&OrderListQuery {
            status: Some(OrderStatus::Failed.as_str().to_string()),
            device_id: None,
            page: Some(1),
            size: Some(20),
        })
        .await
        .map(|p| p.items)
        .unwrap_or_default();
    let mut stuck = Vec::new();
    for no in consistency
        .iter()
        .flat_map(|c| &c.stale_orders)
        .take(STUCK_LOOKUPS)
    {
        if let Ok(o) = client.order(no).await {
            stuck.push(o);
        }
    }
    ProblemData {
        consistency,
        dead,
        failed,
        stuck,
    }
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
    // After a reconnection the gateway replays what was written since the last event seen,
    // so state changes during the gap are not lost.
    let mut last_id: Option<String> = None;
    loop {
        let mut req = http
            .get(&url)
            .header("X-Api-Key", &cfg.api_key)
            .header("Accept", "text/event-stream");
        if let Some(id) = &last_id {
            req = req.header("Last-Event-ID", id);
        }
        let result = req.send().await;
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
                                if ev.id.is_some() {
                                    last_id = ev.id.clone();
                                }
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

fn refusal(e: ClientError) -> Refusal {
    Refusal {
        status: e.status(),
        message: match &e {
            ClientError::Status { message, .. } => message.clone(),
            other => describe(other),
        },
    }
}

/// Carries out one command against the gateway or the simulator's control API.
pub async fn execute(client: &Client, sim: Option<&str>, cmd: &Command) -> Update {
    let outcome = match cmd {
        Command::Start { device, request } => Outcome::Started {
            device: device.clone(),
            port: request.port_no,
            result: client.charge(device, request).await.map_err(refusal),
        },
        Command::Stop {
            device,
            port,
            order_no,
        } => Outcome::Stopped {
            device: device.clone(),
            port: *port,
            result: client
                .stop(
                    device,
                    &StopRequest {
                        port_no: *port,
                        order_no: order_no.clone(),
                    },
                )
                .await
                .map_err(refusal),
        },
        Command::Replay { event_id } => Outcome::Replayed {
            event_id: event_id.clone(),
            result: client.replay_dead_letter(event_id).await.map_err(refusal),
        },
        Command::TestWebhook => Outcome::WebhookTested {
            result: client.webhook_test().await.map_err(refusal),
        },
        other => Outcome::Sim {
            what: other.describe(),
            result: match sim {
                None => Err("simulator controls need --sim URL".to_string()),
                Some(base) => sim_call(base, other).await,
            },
        },
    };
    Update::Done {
        at_ms: now_ms(),
        outcome,
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
        Command::Start { .. }
        | Command::Stop { .. }
        | Command::Replay { .. }
        | Command::TestWebhook => return None,
    })
}

async fn sim_call(base: &str, cmd: &Command) -> Result<(), String> {
    let Some((path, body)) = sim_request(cmd) else {
        return Err("not a simulator command".into());
    };
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap_or_default();
    let resp = http
        .post(format!("{}{}", base.trim_end_matches('/'), path))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("simulator unreachable: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or(text);
    Err(format!("HTTP {}: {message}", status.as_u16()))
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
        assert!(sim_request(&Command::Replay {
            event_id: "e1".into()
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
