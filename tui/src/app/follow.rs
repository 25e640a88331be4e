//! Starts and stops asked for from the dashboard, followed until the order says how they
//! ended: a start until `charging`, `failed` or `cancelled`; a stop until the order settles.
//! What the status line and the order view say about them is derived here from the order as
//! the dashboard knows it (events within a second, polls as a backstop), never from a timer
//! alone — a follow that waited too long says so and what the order still is.

use pile_api::{OrderStatus, OrderView};

use crate::ui::ago;

/// A start not confirmed after this long says the pile has not answered yet.
pub const START_SLOW_MS: i64 = 30_000;
/// A stop not settled after this long is given up on, with the order's state.
pub const STOP_DEADLINE_MS: i64 = 60_000;
/// A start still pending after this long is given up on (the gateway's command TTL, 10 min).
pub const START_DEADLINE_MS: i64 = 10 * 60_000;
/// How long an outcome stays in the status line.
pub const SHOW_DONE_MS: i64 = 15_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Start,
    Stop,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// The request is out.
    Asking,
    /// The gateway took it; the order tells the rest.
    Waiting,
    Done {
        ok: bool,
        text: String,
        at_ms: i64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Follow {
    pub kind: Kind,
    pub device: String,
    pub port: u32,
    pub order_no: Option<String>,
    pub since_ms: i64,
    pub stage: Stage,
}

impl Follow {
    pub fn new(kind: Kind, device: &str, port: u32, order_no: Option<String>, now_ms: i64) -> Self {
        Follow {
            kind,
            device: device.to_string(),
            port,
            order_no,
            since_ms: now_ms,
            stage: Stage::Asking,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done { .. })
    }

    /// When it last changed, for choosing what the status line shows.
    pub fn changed_ms(&self) -> i64 {
        match &self.stage {
            Stage::Done { at_ms, .. } => *at_ms,
            _ => self.since_ms,
        }
    }

    fn what(&self) -> String {
        let no = self.order_no.as_deref().unwrap_or("order");
        format!("{no} on {} port {}", self.device, self.port)
    }

    /// Moves a waiting follow on from what `order` says now.
    pub fn advance(&mut self, order: Option<&OrderView>, now_ms: i64) {
        if self.stage != Stage::Waiting {
            return;
        }
        let waited = now_ms - self.since_ms;
        let done = |ok: bool, text: String| Stage::Done {
            ok,
            text,
            at_ms: now_ms,
        };
        let what = self.what();
        self.stage = match (self.kind, order.map(|o| o.status)) {
            (Kind::Start, Some(OrderStatus::Charging)) => done(true, format!("{what}: charging")),
            (Kind::Start, Some(OrderStatus::Completed)) => {
                done(true, format!("{what}: charged and completed already"))
            }
            (_, Some(s @ (OrderStatus::Failed | OrderStatus::Cancelled))) => {
                let reason = order.map(reason).unwrap_or_default();
                done(
                    s == OrderStatus::Cancelled && self.kind == Kind::Stop,
                    format!("{what}: {s}{reason}"),
                )
            }
            (Kind::Stop, Some(OrderStatus::Completed)) => {
                let o = order.expect("an order has a status");
                done(
                    true,
                    format!(
                        "{what}: stopped, {:.3} kWh, {} yuan{}",
                        o.total_kwh,
                        super::form::fen_to_yuan(o.final_amount),
                        reason(o)
                    ),
                )
            }
            (Kind::Start, _) if waited >= START_DEADLINE_MS => done(
                false,
                format!(
                    "{what}: still pending after {}: the pile never confirmed",
                    ago(waited)
                ),
            ),
            (Kind::Stop, s) if waited >= STOP_DEADLINE_MS => done(
                false,
                format!(
                    "{what}: stop not confirmed after {}, the order is still {} — x to try again",
                    ago(waited),
                    s.map(|s| s.as_str()).unwrap_or("unknown")
                ),
            ),
            _ => Stage::Waiting,
        };
    }

    /// The status-line text while it runs (the outcome's text once done).
    pub fn text(&self, order: Option<&OrderView>, now_ms: i64) -> String {
        let waited = ago(now_ms - self.since_ms);
        match (&self.stage, self.kind) {
            (Stage::Done { text, .. }, _) => text.clone(),
            (Stage::Asking, Kind::Start) => {
                format!("starting {} port {} … ({waited})", self.device, self.port)
            }
            (Stage::Asking, Kind::Stop) => format!("stopping {} … ({waited})", self.what()),
            (Stage::Waiting, Kind::Start) => {
                let status = order.map(|o| o.status.as_str()).unwrap_or("pending");
                if now_ms - self.since_ms >= START_SLOW_MS {
                    format!(
                        "{}: {status} for {waited}, the pile has not confirmed (offline? the command waits up to 10 min)",
                        self.what()
                    )
                } else {
                    format!("{}: {status}, waiting for the pile ({waited})", self.what())
                }
            }
            (Stage::Waiting, Kind::Stop) => {
                let status = order.map(|o| o.status.as_str()).unwrap_or("charging");
                format!(
                    "stopping {}: still {status}, waiting for the pile ({waited})",
                    self.what()
                )
            }
        }
    }
}

/// ` (reason 12 NAME: text)`, or nothing without a reason.
pub fn reason(o: &OrderView) -> String {
    match o.end_reason {
        None => String::new(),
        Some(r) => {
            let mut s = format!(" (reason {r}");
            if let Some(n) = &o.end_reason_name {
                s.push(' ');
                s.push_str(n);
            }
            if let Some(t) = o.end_reason_text.as_deref().filter(|t| !t.is_empty()) {
                s.push_str(": ");
                s.push_str(t);
            }
            s.push(')');
            s
        }
    }
}
