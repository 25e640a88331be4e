//! The problems view: everything that needs a person, worst first, each with the action that
//! fixes it.

use pile_api::{BreakerState, Consistency, DeadLetter, OrderView, Page, PortStatus};

use super::live::Live;

/// How far back failed orders count as a problem (older ones are history).
pub const FAILED_RECENT_SEC: i64 = 30 * 60;

/// What `GET /admin/consistency`, the dead letters and the failed orders said at the last
/// problems poll.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProblemData {
    pub consistency: Option<Consistency>,
    pub dead: Option<Page<DeadLetter>>,
    /// The newest failed orders.
    pub failed: Vec<OrderView>,
    /// The orders consistency calls stale, looked up (device and port are needed to stop).
    pub stuck: Vec<OrderView>,
}

/// What fixes a problem, and the key that does it in the problems view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    /// `x`: stop the order.
    Stop {
        device: String,
        port: u32,
        order_no: String,
    },
    /// `s`: the start form, filled in as the failed order asked.
    Retry { order_no: String },
    /// `r`: deliver the dead letter again.
    Replay { event_id: String },
    /// `t`: send a test event now (a probe through the breaker).
    TestWebhook,
    /// `r` with `--sim`: restore the simulated pile's network.
    RestoreNetwork { device: String },
    /// Nothing to press but Enter: look at it.
    Open,
}

impl Fix {
    pub fn key(&self) -> Option<char> {
        match self {
            Fix::Stop { .. } => Some('x'),
            Fix::Retry { .. } => Some('s'),
            Fix::Replay { .. } | Fix::RestoreNetwork { .. } => Some('r'),
            Fix::TestWebhook => Some('t'),
            Fix::Open => None,
        }
    }

    pub fn title(&self) -> &'static str {
        match self {
            Fix::Stop { .. } => "x stop",
            Fix::Retry { .. } => "s retry",
            Fix::Replay { .. } => "r replay",
            Fix::TestWebhook => "t test",
            Fix::RestoreNetwork { .. } => "r restore net",
            Fix::Open => "Enter open",
        }
    }
}

/// What Enter opens for a problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Device(String),
    Order(String),
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Short kind: `webhook`, `stuck`, `fault`, `dead letter`, `failed`, `offline`, …
    pub kind: &'static str,
    /// The device or order it is about.
    pub subject: String,
    pub detail: String,
    pub fix: Fix,
    pub target: Target,
}

/// Every problem, worst first. `sim` enables the simulator's fixes.
pub fn problems(
    live: &Live,
    data: Option<&ProblemData>,
    webhook: Option<&pile_api::WebhookEndpointStatus>,
    now_s: i64,
    sim: bool,
) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(w) = webhook {
        if w.state != BreakerState::Closed {
            let state = match w.state {
                BreakerState::Open => "open",
                _ => "half-open",
            };
            out.push(Problem {
                kind: "webhook",
                subject: w.url.clone(),
                detail: format!(
                    "breaker {state} after {} failures, {} waiting{}",
                    w.consecutive_failures,
                    w.backlog,
                    w.oldest_pending_age_sec
                        .map(|s| format!(", oldest {}", crate::ui::ago(s * 1000)))
                        .unwrap_or_default()
                ),
                fix: Fix::TestWebhook,
                target: Target::None,
            });
        }
    }
    if let Some(d) = data {
        for o in &d.stuck {
            out.push(Problem {
                kind: "stuck",
                subject: o.order_no.clone(),
                detail: format!(
                    "{} for {} on {} port {}, past its limit",
                    o.status,
                    crate::ui::ago((now_s - o.started_at.unwrap_or(o.created_at)) * 1000),
                    o.device_id,
                    o.port_no
                ),
                fix: Fix::Stop {
                    device: o.device_id.clone(),
                    port: o.port_no,
                    order_no: o.order_no.clone(),
                },
                target: Target::Order(o.order_no.clone()),
            });
        }
    }
    for d in live.fleet.values().filter(|d| d.online) {
        for p in d.ports.iter().filter(|p| p.status == PortStatus::Fault) {
            out.push(Problem {
                kind: "fault",
                subject: d.device_id.clone(),
                detail: format!(
                    "port {} reports a fault{}",
                    p.port_no,
                    p.order_no
                        .as_deref()
                        .map(|o| format!(", order {o} on it"))
                        .unwrap_or_default()
                ),
                fix: match &p.order_no {
                    Some(no) => Fix::Stop {
                        device: d.device_id.clone(),
                        port: p.port_no,
                        order_no: no.clone(),
                    },
                    None => Fix::Open,
                },
                target: Target::Device(d.device_id.clone()),
            });
        }
    }
    if let Some(d) = data {
        for dl in d.dead.iter().flat_map(|p| &p.items) {
            let why = match (&dl.last_status, &dl.last_error) {
                (Some(s), _) => format!("HTTP {s}"),
                (None, Some(e)) => e.clone(),
                (None, None) => "no answer".into(),
            };
            out.push(Problem {
                kind: "dead letter",
                subject: dl.event_id.clone(),
                detail: format!(
                    "{} of {} after {} attempts: {why}",
                    dl.event_type, dl.device_id, dl.attempts
                ),
                fix: Fix::Replay {
                    event_id: dl.event_id.clone(),
                },
                target: match &dl.order_no {
                    Some(no) => Target::Order(no.clone()),
                    None => Target::Device(dl.device_id.clone()),
                },
            });
        }
        for o in d
            .failed
            .iter()
            .filter(|o| now_s - o.ended_at.unwrap_or(o.created_at) <= FAILED_RECENT_SEC)
        {
            out.push(Problem {
                kind: "failed",
                subject: o.order_no.clone(),
                detail: format!(
                    "{} port {}, {} ago{}",
                    o.device_id,
                    o.port_no,
                    crate::ui::ago((now_s - o.ended_at.unwrap_or(o.created_at)) * 1000),
                    super::follow::reason(o)
                ),
                fix: Fix::Retry {
                    order_no: o.order_no.clone(),
                },
                target: Target::Order(o.order_no.clone()),
            });
        }
    }
    for d in live.fleet.values().filter(|d| !d.online) {
        out.push(Problem {
            kind: "offline",
            subject: d.device_id.clone(),
            detail: format!(
                "{} pile, last seen {}",
                d.protocol,
                d.last_seen_at
                    .map(|t| format!("{} ago", crate::ui::ago((now_s - t) * 1000)))
                    .unwrap_or_else(|| "never".into())
            ),
            fix: if sim {
                Fix::RestoreNetwork {
                    device: d.device_id.clone(),
                }
            } else {
                Fix::Open
            },
            target: Target::Device(d.device_id.clone()),
        });
    }
    if let Some(c) = data.and_then(|d| d.consistency.as_ref()) {
        for m in &c.port_mismatches {
            out.push(Problem {
                kind: "mismatch",
                subject: m.device_id.clone(),
                detail: format!(
                    "port {}: stored {}, the pile reports {}",
                    m.port_no, m.stored_status, m.reported_status
                ),
                fix: Fix::Open,
                target: Target::Device(m.device_id.clone()),
            });
        }
        for no in &c.orphan_orders {
            out.push(Problem {
                kind: "orphan",
                subject: no.clone(),
                detail: "order of a device the gateway does not know".into(),
                fix: Fix::Open,
                target: Target::Order(no.clone()),
            });
        }
        if c.commands.sent > 0 && c.commands.match_rate < 0.99 {
            out.push(Problem {
                kind: "commands",
                subject: "downlink".into(),
                detail: format!(
                    "{} of {} commands answered ({:.1} %)",
                    c.commands.matched,
                    c.commands.sent,
                    c.commands.match_rate * 100.0
                ),
                fix: Fix::Open,
                target: Target::None,
            });
        }
    }
    out
}
