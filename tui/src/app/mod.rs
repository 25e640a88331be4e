//! The dashboard's state and every change to it. Nothing here does I/O or reads a clock:
//! time comes in through [`App::tick`] and [`Update`]s, keys through [`App::handle_key`], and
//! what the operator asked for goes out as [`Command`]s that the main loop executes.

pub mod follow;
pub mod form;
pub mod history;
mod keys;
pub mod live;
pub mod problems;
pub mod table;

use std::collections::{HashSet, VecDeque};

use pile_api::{
    ChargeRequest, DeviceView, EventMessage, FrameRecord, InstanceView, OrderRef, OrderStatus,
    OrderView, Page, ProgressSample, ReplayResult, Stats, WebhookTestResult,
};

use crate::prom::MetricsSample;
use follow::{Follow, Kind, Stage};
use form::StartForm;
use history::History;
use live::Live;
use problems::{Problem, ProblemData};
use table::{DevCol, OrderCol, Sort};

/// Events kept in the Events view (and held while paused).
pub const EVENT_CAP: usize = 1000;

/// Fault kinds the simulator knows (`simulator/src/fault.rs`, snake_case on the wire).
pub const FAULT_KINDS: [&str; 11] = [
    "garbage",
    "bad_checksum",
    "split_bytes",
    "merge_frames",
    "duplicate_frames",
    "delay_answers",
    "missing_answers",
    "refuse",
    "black_hole",
    "power_outage",
    "network_drop",
];
/// How long an injected fault lasts.
pub const FAULT_SECS: u64 = 30;
/// How long a notice stays in the status line.
pub const NOTICE_MS: i64 = 10_000;

/// One poll of the gateway's figures and the orders list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub stats: Option<Stats>,
    pub metrics: Option<MetricsSample>,
    pub orders: Vec<OrderView>,
    pub orders_total: i64,
}

/// What the poller fetched about the open device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceDetail {
    pub device: DeviceView,
    pub frames: Vec<FrameRecord>,
    /// The orders on its ports, with their progress samples.
    pub orders: Vec<(OrderView, Vec<ProgressSample>)>,
    /// The simulator's view of the pile (with `--sim`).
    pub sim: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderDetail {
    pub order: OrderView,
    pub progress: Vec<ProgressSample>,
}

/// A refused request, as the gateway said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status; `None` when the gateway did not answer.
    pub status: Option<u16>,
    pub message: String,
}

/// The answer to a [`Command`].
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Started {
        device: String,
        port: u32,
        result: Result<OrderRef, Refusal>,
    },
    Stopped {
        device: String,
        port: u32,
        result: Result<OrderRef, Refusal>,
    },
    Replayed {
        event_id: String,
        result: Result<ReplayResult, Refusal>,
    },
    WebhookTested {
        result: Result<WebhookTestResult, Refusal>,
    },
    /// A simulator control call: what it was and how it went.
    Sim {
        what: String,
        result: Result<(), String>,
    },
}

/// Data from the background tasks. `requested_ms` is when the request left (the poller's
/// clock), `at_ms` when the answer arrived.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    Snapshot {
        at_ms: i64,
        requested_ms: i64,
        snapshot: Box<Snapshot>,
    },
    /// One page of the device list; the poller walks the pages, one per poll.
    DevicePage {
        at_ms: i64,
        requested_ms: i64,
        page: Box<Page<DeviceView>>,
    },
    Device {
        at_ms: i64,
        requested_ms: i64,
        detail: Box<DeviceDetail>,
    },
    Order {
        at_ms: i64,
        requested_ms: i64,
        detail: Box<OrderDetail>,
    },
    /// The orders the dashboard follows (started or stopped from here), as polled.
    Followed {
        at_ms: i64,
        requested_ms: i64,
        orders: Vec<OrderView>,
    },
    Problems {
        at_ms: i64,
        requested_ms: i64,
        data: Box<ProblemData>,
    },
    /// `GET /admin/instances`; `None` when the gateway has no such route (one instance).
    Instances {
        at_ms: i64,
        instances: Option<Vec<InstanceView>>,
    },
    /// A poll failed; the next try is at `retry_at_ms`. `status` is the HTTP status when the
    /// gateway answered (401: the key is refused).
    PollFailed {
        at_ms: i64,
        error: String,
        status: Option<u16>,
        retry_at_ms: i64,
    },
    StreamConnected {
        at_ms: i64,
    },
    StreamLost {
        at_ms: i64,
        error: String,
    },
    Event(Box<EventMessage>),
    /// Something the operator should read in the status line.
    Notice {
        at_ms: i64,
        message: String,
        error: bool,
    },
    Done {
        at_ms: i64,
        outcome: Outcome,
    },
}

/// What the operator asked for; the main loop executes it.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Start {
        device: String,
        request: ChargeRequest,
    },
    Stop {
        device: String,
        port: u32,
        order_no: Option<String>,
    },
    Replay {
        event_id: String,
    },
    TestWebhook,
    Plug {
        device: String,
        port: u32,
    },
    Unplug {
        device: String,
        port: u32,
    },
    CutNetwork {
        device: String,
    },
    RestoreNetwork {
        device: String,
    },
    Fault {
        device: String,
        kind: String,
        secs: u64,
    },
}

impl Command {
    pub fn describe(&self) -> String {
        match self {
            Command::Start { device, request } => {
                format!("start {device} port {}", request.port_no)
            }
            Command::Stop {
                device,
                port,
                order_no,
            } => format!(
                "Stop charging {device} port {port}{}?",
                order_no
                    .as_deref()
                    .map(|o| format!(" (order {o})"))
                    .unwrap_or_default()
            ),
            Command::Replay { event_id } => {
                format!("Deliver dead letter {event_id} to the webhook again?")
            }
            Command::TestWebhook => "send a test event to the webhook".into(),
            Command::Plug { device, port } => format!("plug {device} port {port}"),
            Command::Unplug { device, port } => format!("unplug {device} port {port}"),
            Command::CutNetwork { device } => format!("cut the network of {device}"),
            Command::RestoreNetwork { device } => format!("restore the network of {device}"),
            Command::Fault { device, kind, secs } => {
                format!("inject {kind} on {device} for {secs} s")
            }
        }
    }
}

/// The gateway connection as the operator must see it.
#[derive(Debug, Clone, PartialEq)]
pub enum Conn {
    /// No answer yet, no failure yet.
    Connecting,
    Connected {
        last_ok_ms: i64,
    },
    Disconnected {
        error: String,
        /// The gateway answered with this status (401: the key is refused).
        status: Option<u16>,
        since_ms: i64,
        last_ok_ms: Option<i64>,
        retry_at_ms: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Overview,
    Problems,
    Devices,
    Orders,
    Events,
}

impl Tab {
    pub const ALL: [Tab; 5] = [
        Tab::Overview,
        Tab::Problems,
        Tab::Devices,
        Tab::Orders,
        Tab::Events,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Tab::Overview => "Overview",
            Tab::Problems => "Problems",
            Tab::Devices => "Devices",
            Tab::Orders => "Orders",
            Tab::Events => "Events",
        }
    }

    /// For narrow terminals.
    pub fn short(self) -> &'static str {
        match self {
            Tab::Overview => "Over",
            Tab::Problems => "Prob",
            Tab::Devices => "Dev",
            Tab::Orders => "Ord",
            Tab::Events => "Ev",
        }
    }

    fn index(self) -> usize {
        Tab::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

/// One screen; detail screens sit on top of the tab they were opened from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screen {
    Tab(Tab),
    Device(String),
    Order(String),
}

/// The part of the device view that ↑↓ move in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pane {
    #[default]
    Ports,
    Frames,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Modal {
    Help,
    Confirm(Command),
    FaultPicker { device: String, selected: usize },
    Start(StartForm),
}

#[derive(Debug, Clone, PartialEq)]
pub struct StatusLine {
    pub text: String,
    pub at_ms: i64,
    pub error: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    Connecting,
    Live,
    Lost,
}

/// What the open device view shows besides the device itself (which lives in [`Live`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceExtra {
    pub device_id: String,
    pub frames: Vec<FrameRecord>,
    pub sim: Option<String>,
}

/// Everything the dashboard shows.
#[derive(Debug, Clone)]
pub struct App {
    pub server: String,
    pub sim_enabled: bool,
    pub now_ms: i64,
    pub conn: Conn,
    /// A connection whose last answer is older than this shows as "no answer" (the poller
    /// may be stuck waiting on a hung gateway, which is not yet a failure).
    pub stale_after_ms: i64,
    /// `None` until the first snapshot: the loading state.
    pub data: Option<Snapshot>,
    /// The order numbers of the orders list, in the gateway's order.
    pub order_list: Vec<String>,
    pub live: Live,
    pub history: History,
    pub problem_data: Option<ProblemData>,
    /// `Some` when the gateway runs as several instances and answers `/admin/instances`.
    pub instances: Option<Vec<InstanceView>>,
    pub stack: Vec<Screen>,
    pub modal: Option<Modal>,

    pub device_filter: String,
    pub order_filter: String,
    pub event_filter: String,
    /// `/` was pressed and keys go to the current view's filter.
    pub editing_filter: bool,
    pub device_sort: Sort<DevCol>,
    pub order_sort: Option<Sort<OrderCol>>,
    pub device_sel: usize,
    pub order_status: Option<OrderStatus>,
    pub order_sel: usize,
    pub problem_sel: usize,

    pub device_extra: Option<DeviceExtra>,
    pub port_sel: usize,
    pub pane: Pane,
    pub frame_sel: usize,
    pub show_hex: bool,

    pub events: VecDeque<EventMessage>,
    /// Events that arrived while paused.
    pub held: VecDeque<EventMessage>,
    pub paused: bool,
    /// Selected row of the Events view, 0 = newest.
    pub event_scroll: usize,
    pub stream: StreamState,

    pub follows: Vec<Follow>,
    pub status: Option<StatusLine>,
    commands: Vec<Command>,
    pub quit: bool,
}

impl App {
    pub fn new(server: impl Into<String>, sim_enabled: bool) -> Self {
        App {
            server: server.into(),
            sim_enabled,
            now_ms: 0,
            conn: Conn::Connecting,
            stale_after_ms: 10_000,
            data: None,
            order_list: Vec::new(),
            live: Live::default(),
            history: History::default(),
            problem_data: None,
            instances: None,
            stack: vec![Screen::Tab(Tab::Overview)],
            modal: None,
            device_filter: String::new(),
            order_filter: String::new(),
            event_filter: String::new(),
            editing_filter: false,
            device_sort: Sort {
                col: DevCol::Id,
                desc: false,
            },
            order_sort: None,
            device_sel: 0,
            order_status: None,
            order_sel: 0,
            problem_sel: 0,
            device_extra: None,
            port_sel: 0,
            pane: Pane::Ports,
            frame_sel: 0,
            show_hex: false,
            events: VecDeque::new(),
            held: VecDeque::new(),
            paused: false,
            event_scroll: 0,
            stream: StreamState::Connecting,
            follows: Vec::new(),
            status: None,
            commands: Vec::new(),
            quit: false,
        }
    }

    pub fn screen(&self) -> &Screen {
        self.stack.last().unwrap_or(&Screen::Tab(Tab::Overview))
    }

    pub fn tab(&self) -> Tab {
        match self.stack.first() {
            Some(Screen::Tab(t)) => *t,
            _ => Tab::Overview,
        }
    }

    pub fn now_s(&self) -> i64 {
        self.now_ms.div_euclid(1000)
    }

    /// What the poller should fetch besides the lists.
    pub fn focus(&self) -> Focus {
        let mut f = Focus {
            order_status: self.order_status,
            problems: self.tab() == Tab::Problems,
            followed: self
                .follows
                .iter()
                .filter(|f| f.stage == Stage::Waiting)
                .filter_map(|f| f.order_no.clone())
                .collect(),
            ..Focus::default()
        };
        for s in &self.stack {
            match s {
                Screen::Device(id) => f.device = Some(id.clone()),
                Screen::Order(no) => f.order = Some(no.clone()),
                Screen::Tab(_) => {}
            }
        }
        f
    }

    /// Commands asked for since the last call.
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.commands)
    }

    pub fn tick(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
        self.advance_follows();
    }

    // -----------------------------------------------------------------------------------
    // Data

    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Snapshot {
                at_ms,
                requested_ms,
                snapshot,
            } => {
                self.mark_ok(at_ms);
                self.history.record(
                    at_ms,
                    snapshot.stats.as_ref(),
                    self.live.devices_total,
                    snapshot.metrics.as_ref(),
                );
                self.order_list = snapshot.orders.iter().map(|o| o.order_no.clone()).collect();
                let mut snapshot = *snapshot;
                for o in std::mem::take(&mut snapshot.orders) {
                    self.live.merge_order(o, requested_ms);
                }
                self.data = Some(snapshot);
                self.forget_unneeded();
            }
            Update::DevicePage {
                at_ms,
                requested_ms,
                page,
            } => {
                self.mark_ok(at_ms);
                self.live.merge_device_page(*page, requested_ms);
            }
            Update::Device {
                at_ms,
                requested_ms,
                detail,
            } => {
                self.mark_ok(at_ms);
                let detail = *detail;
                if self.focus().device.as_deref() != Some(detail.device.device_id.as_str()) {
                    return;
                }
                for (o, samples) in detail.orders {
                    self.live.merge_samples(&o.order_no, samples);
                    self.live.merge_order(o, requested_ms);
                }
                self.device_extra = Some(DeviceExtra {
                    device_id: detail.device.device_id.clone(),
                    frames: detail.frames,
                    sim: detail.sim,
                });
                self.live.merge_device(detail.device, requested_ms);
            }
            Update::Order {
                at_ms,
                requested_ms,
                detail,
            } => {
                self.mark_ok(at_ms);
                let detail = *detail;
                if self.focus().order.as_deref() != Some(detail.order.order_no.as_str()) {
                    return;
                }
                self.live
                    .merge_samples(&detail.order.order_no, detail.progress);
                self.live.merge_order(detail.order, requested_ms);
            }
            Update::Followed {
                at_ms,
                requested_ms,
                orders,
            } => {
                self.mark_ok(at_ms);
                for o in orders {
                    self.live.merge_order(o, requested_ms);
                }
            }
            Update::Problems {
                at_ms,
                requested_ms,
                data,
            } => {
                self.mark_ok(at_ms);
                for o in &data.stuck {
                    self.live.merge_order(o.clone(), requested_ms);
                }
                self.problem_data = Some(*data);
            }
            Update::Instances { at_ms, instances } => {
                self.mark_ok(at_ms);
                self.instances = instances;
            }
            Update::PollFailed {
                at_ms,
                error,
                status,
                retry_at_ms,
            } => {
                self.now_ms = self.now_ms.max(at_ms);
                let (since_ms, last_ok_ms) = match &self.conn {
                    Conn::Connecting => (at_ms, None),
                    Conn::Connected { last_ok_ms } => (at_ms, Some(*last_ok_ms)),
                    Conn::Disconnected {
                        since_ms,
                        last_ok_ms,
                        ..
                    } => (*since_ms, *last_ok_ms),
                };
                self.conn = Conn::Disconnected {
                    error,
                    status,
                    since_ms,
                    last_ok_ms,
                    retry_at_ms,
                };
            }
            Update::StreamConnected { .. } => self.stream = StreamState::Live,
            Update::StreamLost { .. } => self.stream = StreamState::Lost,
            Update::Event(ev) => {
                self.stream = StreamState::Live;
                self.live.apply_event(&ev, self.now_ms);
                if self.paused {
                    push_capped(&mut self.held, *ev, EVENT_CAP);
                } else {
                    self.push_event(*ev);
                }
            }
            Update::Notice {
                at_ms,
                message,
                error,
            } => {
                self.mark_ok(at_ms);
                self.notice(message, error);
            }
            Update::Done { at_ms, outcome } => {
                self.now_ms = self.now_ms.max(at_ms);
                self.outcome(outcome);
            }
        }
        self.advance_follows();
        self.clamp();
    }

    fn outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Started {
                device,
                port,
                result,
            } => {
                let form_open = matches!(&self.modal, Some(Modal::Start(f)) if f.device == device && f.submitting);
                let i = self.follows.iter().rposition(|f| {
                    f.kind == Kind::Start
                        && f.device == device
                        && f.port == port
                        && f.stage == Stage::Asking
                });
                match result {
                    Ok(r) => {
                        if form_open {
                            self.modal = None;
                        }
                        if let Some(i) = i {
                            let f = &mut self.follows[i];
                            f.order_no = Some(r.order_no.clone());
                            f.stage = Stage::Waiting;
                        }
                    }
                    Err(refusal) => {
                        if let Some(i) = i {
                            if form_open {
                                self.follows.remove(i);
                            } else {
                                self.follows[i].stage = Stage::Done {
                                    ok: false,
                                    text: format!(
                                        "start {device} port {port} refused: {}",
                                        refusal_text(&refusal)
                                    ),
                                    at_ms: self.now_ms,
                                };
                            }
                        }
                        if let Some(Modal::Start(f)) = &mut self.modal {
                            if form_open {
                                f.refused(refusal.status, &refusal.message);
                            }
                        }
                    }
                }
            }
            Outcome::Stopped {
                device,
                port,
                result,
            } => {
                let i = self.follows.iter().rposition(|f| {
                    f.kind == Kind::Stop
                        && f.device == device
                        && f.port == port
                        && f.stage == Stage::Asking
                });
                if let Some(i) = i {
                    let f = &mut self.follows[i];
                    match result {
                        Ok(r) => {
                            f.order_no = Some(r.order_no);
                            f.stage = Stage::Waiting;
                        }
                        Err(refusal) => {
                            f.stage = Stage::Done {
                                ok: false,
                                text: format!(
                                    "stop {device} port {port} refused: {}",
                                    refusal_text(&refusal)
                                ),
                                at_ms: self.now_ms,
                            }
                        }
                    }
                }
            }
            Outcome::Replayed { event_id, result } => match result {
                Ok(r) => self.notice(format!("dead letter {event_id}: {} again", r.status), false),
                Err(e) => self.notice(
                    format!("replay {event_id} refused: {}", refusal_text(&e)),
                    true,
                ),
            },
            Outcome::WebhookTested { result } => match result {
                Ok(r) if r.delivered => self.notice(
                    format!(
                        "webhook test delivered to {} (HTTP {}, {:.0} ms)",
                        r.url,
                        r.status.unwrap_or(200),
                        r.latency_ms
                    ),
                    false,
                ),
                Ok(r) => self.notice(
                    format!(
                        "webhook test to {} failed: {}",
                        r.url,
                        r.error
                            .or(r.status.map(|s| format!("HTTP {s}")))
                            .unwrap_or_else(|| "no answer".into())
                    ),
                    true,
                ),
                Err(e) => self.notice(format!("webhook test: {}", refusal_text(&e)), true),
            },
            Outcome::Sim { what, result } => match result {
                Ok(()) => self.notice(format!("sim: {what}: ok"), false),
                Err(e) => self.notice(format!("sim: {what}: {e}"), true),
            },
        }
    }

    fn notice(&mut self, text: String, error: bool) {
        self.status = Some(StatusLine {
            text,
            at_ms: self.now_ms,
            error,
        });
    }

    /// Moves followed starts and stops on, and forgets outcomes nobody needs to read again.
    fn advance_follows(&mut self) {
        let now = self.now_ms;
        for f in &mut self.follows {
            let order = f
                .order_no
                .as_deref()
                .and_then(|no| self.live.orders.get(no));
            f.advance(order, now);
        }
        self.follows.retain(|f| match &f.stage {
            Stage::Done { at_ms, .. } => now - at_ms < follow::SHOW_DONE_MS,
            _ => true,
        });
    }

    /// The follow of an order, if the dashboard follows it.
    pub fn follow_of(&self, order_no: &str) -> Option<&Follow> {
        self.follows
            .iter()
            .rev()
            .find(|f| f.order_no.as_deref() == Some(order_no))
    }

    /// Keeps only the orders some view or follow needs (bounded memory on a busy gateway).
    fn forget_unneeded(&mut self) {
        let mut keep: HashSet<String> = self.order_list.iter().cloned().collect();
        keep.extend(self.follows.iter().filter_map(|f| f.order_no.clone()));
        if let Some(Screen::Order(no)) = self
            .stack
            .iter()
            .rev()
            .find(|s| matches!(s, Screen::Order(_)))
        {
            keep.insert(no.clone());
        }
        if let Some(id) = self.focus().device {
            if let Some(d) = self.live.fleet.get(&id) {
                keep.extend(d.ports.iter().filter_map(|p| p.order_no.clone()));
            }
        }
        if let Some(p) = &self.problem_data {
            keep.extend(p.stuck.iter().map(|o| o.order_no.clone()));
        }
        self.live.retain_orders(&keep);
    }

    fn push_event(&mut self, ev: EventMessage) {
        push_capped(&mut self.events, ev, EVENT_CAP);
        // Keep a scrolled-back view on the same rows while new ones arrive.
        if self.event_scroll > 0 {
            self.event_scroll = (self.event_scroll + 1).min(self.events.len().saturating_sub(1));
        }
    }

    fn mark_ok(&mut self, at_ms: i64) {
        self.now_ms = self.now_ms.max(at_ms);
        self.conn = Conn::Connected { last_ok_ms: at_ms };
    }

    pub fn is_disconnected(&self) -> bool {
        matches!(self.conn, Conn::Disconnected { .. })
    }

    // -----------------------------------------------------------------------------------
    // Derived lists (what the tables show, in order)

    pub fn visible_devices(&self) -> Vec<&DeviceView> {
        let mut v: Vec<&DeviceView> = self
            .live
            .fleet
            .values()
            .filter(|d| table::device_matches(d, &self.device_filter))
            .collect();
        let sort = self.device_sort;
        v.sort_by(|a, b| {
            sort.apply(sort.col.cmp(a, b))
                .then_with(|| a.device_id.cmp(&b.device_id))
        });
        v
    }

    pub fn visible_orders(&self) -> Vec<&OrderView> {
        let needle = self.order_filter.to_lowercase();
        let now_s = self.now_s();
        let mut v: Vec<&OrderView> = self
            .order_list
            .iter()
            .filter_map(|no| self.live.orders.get(no))
            .filter(|o| self.order_status.is_none_or(|s| o.status == s))
            .filter(|o| {
                needle.is_empty()
                    || o.order_no.to_lowercase().contains(&needle)
                    || o.device_id.to_lowercase().contains(&needle)
            })
            .collect();
        match self.order_sort {
            // The gateway's order: newest first.
            None => {}
            Some(sort) => v.sort_by(|a, b| {
                sort.apply(sort.col.cmp(a, b, now_s))
                    .then_with(|| b.created_at.cmp(&a.created_at))
            }),
        }
        v
    }

    /// Newest first.
    pub fn visible_events(&self) -> Vec<&EventMessage> {
        let needle = self.event_filter.to_lowercase();
        self.events
            .iter()
            .rev()
            .filter(|e| {
                needle.is_empty()
                    || e.event_type.to_lowercase().contains(&needle)
                    || e.device_phy_id.to_lowercase().contains(&needle)
                    || e.order_no
                        .as_deref()
                        .is_some_and(|o| o.to_lowercase().contains(&needle))
            })
            .collect()
    }

    pub fn problems(&self) -> Vec<Problem> {
        problems::problems(
            &self.live,
            self.problem_data.as_ref(),
            self.data
                .as_ref()
                .and_then(|d| d.stats.as_ref())
                .and_then(|s| s.webhook.as_ref()),
            self.now_s(),
            self.sim_enabled,
        )
    }

    /// The open device as the dashboard knows it.
    pub fn open_device(&self) -> Option<&DeviceView> {
        match self.screen() {
            Screen::Device(id) => self.live.fleet.get(id),
            _ => None,
        }
    }

    /// Frames of the open device, newest first.
    pub fn frames(&self) -> Vec<&FrameRecord> {
        let mut v: Vec<&FrameRecord> = match (&self.device_extra, self.screen()) {
            (Some(x), Screen::Device(id)) if &x.device_id == id => x.frames.iter().collect(),
            _ => Vec::new(),
        };
        v.sort_by_key(|f| std::cmp::Reverse(f.at_ms));
        v
    }

    /// Keeps the current view's selection in range. Only the view on screen: on a large fleet
    /// the other lists are not worth sorting per update (they are clamped when shown).
    fn clamp(&mut self) {
        match self.screen() {
            Screen::Tab(Tab::Devices) => {
                let n = self.visible_devices().len();
                self.device_sel = self.device_sel.min(n.saturating_sub(1));
            }
            Screen::Tab(Tab::Orders) => {
                let n = self.visible_orders().len();
                self.order_sel = self.order_sel.min(n.saturating_sub(1));
            }
            Screen::Tab(Tab::Problems) => {
                let n = self.problems().len();
                self.problem_sel = self.problem_sel.min(n.saturating_sub(1));
            }
            Screen::Device(_) => {
                let n = self.open_device().map(|d| d.ports.len()).unwrap_or(0);
                self.port_sel = self.port_sel.min(n.saturating_sub(1));
                let n = self.frames().len();
                self.frame_sel = self.frame_sel.min(n.saturating_sub(1));
            }
            Screen::Tab(Tab::Overview | Tab::Events) | Screen::Order(_) => {}
        }
    }
}

fn refusal_text(r: &Refusal) -> String {
    match r.status {
        Some(s) => format!("HTTP {s}: {}", r.message),
        None => r.message.clone(),
    }
}

fn push_capped<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    q.push_back(v);
    while q.len() > cap {
        q.pop_front();
    }
}

/// What the poller fetches besides the lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Focus {
    pub device: Option<String>,
    pub order: Option<String>,
    pub order_status: Option<OrderStatus>,
    /// Orders started or stopped from here whose outcome is not known yet.
    pub followed: Vec<String>,
    /// The problems view is open: fetch its data every poll, not now and then.
    pub problems: bool,
}
