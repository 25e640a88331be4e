//! The dashboard's state and every change to it. Nothing here does I/O or reads a clock:
//! time comes in through [`App::tick`] and [`Update`]s, keys through [`App::handle_key`], and
//! what the operator asked for goes out as [`Command`]s that the main loop executes.

use std::collections::VecDeque;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use pile_api::{
    DeviceView, EventMessage, FrameRecord, OrderStatus, OrderView, ProgressSample, Stats,
};

use crate::prom::{self, MetricsSample};

/// Events kept in the Events view (and held while paused).
pub const EVENT_CAP: usize = 1000;
/// Samples kept per sparkline (at the default 2 s refresh: the last four minutes).
pub const HISTORY_CAP: usize = 120;

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
/// What a start from the dashboard asks for: by time, ten minutes, 5.00 yuan at most.
pub const START_DURATION_SEC: i64 = 600;
pub const START_AMOUNT_FEN: i64 = 500;

/// One poll of the gateway's lists and figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub stats: Option<Stats>,
    pub metrics: Option<MetricsSample>,
    pub devices: Vec<DeviceView>,
    pub devices_total: i64,
    pub orders: Vec<OrderView>,
    pub orders_total: i64,
}

/// What the poller knows about the focused device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceDetail {
    pub device: DeviceView,
    pub frames: Vec<FrameRecord>,
    /// The orders running on its ports.
    pub orders: Vec<OrderView>,
    /// The simulator's view of the pile (with `--sim`).
    pub sim: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderDetail {
    pub order: OrderView,
    pub progress: Vec<ProgressSample>,
}

/// Data from the background task.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    Snapshot {
        at_ms: i64,
        snapshot: Box<Snapshot>,
    },
    Device {
        at_ms: i64,
        detail: Box<DeviceDetail>,
    },
    Order {
        at_ms: i64,
        detail: Box<OrderDetail>,
    },
    /// A poll failed; the next try is at `retry_at_ms`.
    PollFailed {
        at_ms: i64,
        error: String,
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
    /// The answer to a [`Command`].
    CommandDone {
        at_ms: i64,
        ok: bool,
        message: String,
    },
}

/// What the operator asked for; the main loop executes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Start {
        device: String,
        port: u32,
    },
    Stop {
        device: String,
        port: u32,
        order_no: Option<String>,
    },
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
            Command::Start { device, port } => format!(
                "Start charging {device} port {port} (by time, {} min, at most {:.2} yuan)?",
                START_DURATION_SEC / 60,
                START_AMOUNT_FEN as f64 / 100.0
            ),
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
        since_ms: i64,
        last_ok_ms: Option<i64>,
        retry_at_ms: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Overview,
    Devices,
    Orders,
    Events,
}

impl Tab {
    pub const ALL: [Tab; 4] = [Tab::Overview, Tab::Devices, Tab::Orders, Tab::Events];

    pub fn title(self) -> &'static str {
        match self {
            Tab::Overview => "Overview",
            Tab::Devices => "Devices",
            Tab::Orders => "Orders",
            Tab::Events => "Events",
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSort {
    #[default]
    Id,
    Family,
    Online,
    LastSeen,
}

impl DeviceSort {
    pub fn title(self) -> &'static str {
        match self {
            DeviceSort::Id => "id",
            DeviceSort::Family => "family",
            DeviceSort::Online => "online first",
            DeviceSort::LastSeen => "last seen",
        }
    }

    fn next(self) -> Self {
        match self {
            DeviceSort::Id => DeviceSort::Family,
            DeviceSort::Family => DeviceSort::Online,
            DeviceSort::Online => DeviceSort::LastSeen,
            DeviceSort::LastSeen => DeviceSort::Id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modal {
    Help,
    Confirm(Command),
    FaultPicker { device: String, selected: usize },
}

/// The sparklines of the overview.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    pub online: VecDeque<u64>,
    pub sessions: VecDeque<u64>,
    pub heartbeats_per_sec: VecDeque<u64>,
    pub accepts_per_sec: VecDeque<u64>,
    pub api_p99_ms: VecDeque<u64>,
    pub backlog: VecDeque<u64>,
    /// The latest values behind the rates.
    pub heartbeats_per_sec_now: Option<f64>,
    pub api_p99_ms_now: Option<f64>,
    prev: Option<(i64, MetricsSample)>,
}

fn push_capped<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    q.push_back(v);
    while q.len() > cap {
        q.pop_front();
    }
}

impl History {
    fn record(&mut self, at_ms: i64, snap: &Snapshot) {
        if let Some(s) = &snap.stats {
            push_capped(
                &mut self.online,
                s.online_devices.max(0) as u64,
                HISTORY_CAP,
            );
            push_capped(&mut self.sessions, s.active_sessions, HISTORY_CAP);
            push_capped(
                &mut self.backlog,
                s.event_backlog.max(0) as u64,
                HISTORY_CAP,
            );
        }
        let Some(m) = &snap.metrics else { return };
        if let Some((prev_ms, prev)) = &self.prev {
            let secs = (at_ms - prev_ms) as f64 / 1000.0;
            if secs > 0.0 {
                let rate = |name: &str| {
                    let d = m.get(name).unwrap_or(0.0) - prev.get(name).unwrap_or(0.0);
                    (d / secs).max(0.0)
                };
                let hb = rate("heartbeats_total");
                self.heartbeats_per_sec_now = Some(hb);
                push_capped(&mut self.heartbeats_per_sec, hb.round() as u64, HISTORY_CAP);
                let acc = rate("tcp_connections_accepted_total");
                push_capped(&mut self.accepts_per_sec, acc.round() as u64, HISTORY_CAP);
                let delta = prom::bucket_delta(&m.http_buckets, &prev.http_buckets);
                let p99 = prom::p99(&delta).map(|s| s * 1000.0);
                if p99.is_some() {
                    self.api_p99_ms_now = p99;
                }
                push_capped(
                    &mut self.api_p99_ms,
                    p99.unwrap_or(0.0).round() as u64,
                    HISTORY_CAP,
                );
            }
        } else {
            self.api_p99_ms_now = prom::p99(&m.http_buckets).map(|s| s * 1000.0);
        }
        self.prev = Some((at_ms, m.clone()));
    }
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
    pub history: History,
    pub stack: Vec<Screen>,
    pub modal: Option<Modal>,

    pub device_filter: String,
    pub order_filter: String,
    pub event_filter: String,
    /// `/` was pressed and keys go to the current view's filter.
    pub editing_filter: bool,
    pub device_sort: DeviceSort,
    pub device_sel: usize,
    pub order_status: Option<OrderStatus>,
    pub order_sel: usize,

    pub device_detail: Option<DeviceDetail>,
    pub port_sel: usize,
    pub order_detail: Option<OrderDetail>,

    /// Newest last.
    pub events: VecDeque<EventMessage>,
    /// Arrived while paused; appended on resume.
    pub held: VecDeque<EventMessage>,
    pub paused: bool,
    /// Rows scrolled back from the newest event.
    pub event_scroll: usize,
    pub stream: StreamState,

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
            history: History::default(),
            stack: vec![Screen::Tab(Tab::Overview)],
            modal: None,
            device_filter: String::new(),
            order_filter: String::new(),
            event_filter: String::new(),
            editing_filter: false,
            device_sort: DeviceSort::default(),
            device_sel: 0,
            order_status: None,
            order_sel: 0,
            device_detail: None,
            port_sel: 0,
            order_detail: None,
            events: VecDeque::new(),
            held: VecDeque::new(),
            paused: false,
            event_scroll: 0,
            stream: StreamState::Connecting,
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

    /// The device and order the poller should fetch in detail.
    pub fn focus(&self) -> Focus {
        let mut f = Focus {
            order_status: self.order_status,
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
    }

    // -----------------------------------------------------------------------------------
    // Data

    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Snapshot { at_ms, snapshot } => {
                self.mark_ok(at_ms);
                self.history.record(at_ms, &snapshot);
                self.data = Some(*snapshot);
                self.clamp();
            }
            Update::Device { at_ms, detail } => {
                self.mark_ok(at_ms);
                if self.focus().device.as_deref() == Some(detail.device.device_id.as_str()) {
                    self.device_detail = Some(*detail);
                    self.clamp();
                }
            }
            Update::Order { at_ms, detail } => {
                self.mark_ok(at_ms);
                if self.focus().order.as_deref() == Some(detail.order.order_no.as_str()) {
                    self.order_detail = Some(*detail);
                }
            }
            Update::PollFailed {
                at_ms,
                error,
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
                    since_ms,
                    last_ok_ms,
                    retry_at_ms,
                };
            }
            Update::StreamConnected { .. } => self.stream = StreamState::Live,
            Update::StreamLost { .. } => self.stream = StreamState::Lost,
            Update::Event(ev) => {
                self.stream = StreamState::Live;
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
                self.status = Some(StatusLine {
                    text: message,
                    at_ms,
                    error,
                });
            }
            Update::CommandDone { at_ms, ok, message } => {
                self.status = Some(StatusLine {
                    text: message,
                    at_ms,
                    error: !ok,
                });
            }
        }
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
        let Some(data) = &self.data else {
            return Vec::new();
        };
        let needle = self.device_filter.to_lowercase();
        let mut v: Vec<&DeviceView> = data
            .devices
            .iter()
            .filter(|d| {
                needle.is_empty()
                    || d.device_id.to_lowercase().contains(&needle)
                    || d.protocol.to_lowercase().contains(&needle)
                    || d.remote_addr
                        .as_deref()
                        .is_some_and(|a| a.to_lowercase().contains(&needle))
            })
            .collect();
        match self.device_sort {
            DeviceSort::Id => v.sort_by(|a, b| a.device_id.cmp(&b.device_id)),
            DeviceSort::Family => v.sort_by(|a, b| {
                (a.protocol.as_str(), a.device_id.as_str())
                    .cmp(&(b.protocol.as_str(), b.device_id.as_str()))
            }),
            DeviceSort::Online => v.sort_by(|a, b| {
                b.online
                    .cmp(&a.online)
                    .then_with(|| a.device_id.cmp(&b.device_id))
            }),
            DeviceSort::LastSeen => v.sort_by(|a, b| {
                b.last_seen_at
                    .cmp(&a.last_seen_at)
                    .then_with(|| a.device_id.cmp(&b.device_id))
            }),
        }
        v
    }

    pub fn visible_orders(&self) -> Vec<&OrderView> {
        let Some(data) = &self.data else {
            return Vec::new();
        };
        let needle = self.order_filter.to_lowercase();
        let mut v: Vec<&OrderView> = data
            .orders
            .iter()
            .filter(|o| self.order_status.is_none_or(|s| o.status == s))
            .filter(|o| {
                needle.is_empty()
                    || o.order_no.to_lowercase().contains(&needle)
                    || o.device_id.to_lowercase().contains(&needle)
            })
            .collect();
        // By status (active first), newest first within a status.
        let rank = |s: OrderStatus| OrderStatus::ALL.iter().position(|x| *x == s).unwrap_or(9);
        v.sort_by(|a, b| {
            rank(a.status)
                .cmp(&rank(b.status))
                .then_with(|| b.created_at.cmp(&a.created_at))
        });
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

    fn selected_device_id(&self) -> Option<String> {
        match self.screen() {
            Screen::Device(id) => Some(id.clone()),
            Screen::Tab(Tab::Devices) => self
                .visible_devices()
                .get(self.device_sel)
                .map(|d| d.device_id.clone()),
            _ => None,
        }
    }

    /// The port selected in the device view, with its running order.
    fn selected_port(&self) -> Option<(String, u32, Option<String>)> {
        let d = self.device_detail.as_ref()?;
        if Some(&Screen::Device(d.device.device_id.clone())) != self.stack.last() {
            return None;
        }
        let p = d.device.ports.get(self.port_sel)?;
        Some((d.device.device_id.clone(), p.port_no, p.order_no.clone()))
    }

    fn clamp(&mut self) {
        let n = self.visible_devices().len();
        self.device_sel = self.device_sel.min(n.saturating_sub(1));
        let n = self.visible_orders().len();
        self.order_sel = self.order_sel.min(n.saturating_sub(1));
        let n = self
            .device_detail
            .as_ref()
            .map(|d| d.device.ports.len())
            .unwrap_or(0);
        self.port_sel = self.port_sel.min(n.saturating_sub(1));
    }

    // -----------------------------------------------------------------------------------
    // Keys

    pub fn handle_key(&mut self, key: KeyEvent) {
        if key.kind == KeyEventKind::Release {
            return;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return;
        }
        if let Some(modal) = self.modal.clone() {
            self.modal_key(modal, key.code);
            return;
        }
        if self.editing_filter {
            self.filter_key(key.code);
            return;
        }
        match key.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') => self.modal = Some(Modal::Help),
            KeyCode::Tab => self.switch_tab((self.tab().index() + 1) % Tab::ALL.len()),
            KeyCode::BackTab => {
                self.switch_tab((self.tab().index() + Tab::ALL.len() - 1) % Tab::ALL.len())
            }
            KeyCode::Char(c @ '1'..='4') => self.switch_tab(c as usize - '1' as usize),
            KeyCode::Esc => self.back(),
            KeyCode::Up => self.move_sel(-1),
            KeyCode::Down => self.move_sel(1),
            KeyCode::PageUp => self.move_sel(-10),
            KeyCode::PageDown => self.move_sel(10),
            KeyCode::Home => self.move_sel(-1_000_000),
            KeyCode::End => self.move_sel(1_000_000),
            KeyCode::Enter => self.enter(),
            KeyCode::Char('/') if self.filter_mut().is_some() => self.editing_filter = true,
            KeyCode::Left | KeyCode::Right if *self.screen() == Screen::Tab(Tab::Orders) => {
                self.cycle_order_status(key.code == KeyCode::Right)
            }
            KeyCode::Char(c) => self.action_key(c),
            _ => {}
        }
    }

    fn modal_key(&mut self, modal: Modal, code: KeyCode) {
        match modal {
            Modal::Help => {
                if matches!(
                    code,
                    KeyCode::Esc | KeyCode::Char('?') | KeyCode::Char('q') | KeyCode::Enter
                ) {
                    self.modal = None;
                }
            }
            Modal::Confirm(cmd) => match code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    self.modal = None;
                    self.commands.push(cmd);
                }
                KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc | KeyCode::Char('q') => {
                    self.modal = None
                }
                _ => {}
            },
            Modal::FaultPicker { device, selected } => match code {
                KeyCode::Up => {
                    self.modal = Some(Modal::FaultPicker {
                        device,
                        selected: selected.saturating_sub(1),
                    })
                }
                KeyCode::Down => {
                    self.modal = Some(Modal::FaultPicker {
                        device,
                        selected: (selected + 1).min(FAULT_KINDS.len() - 1),
                    })
                }
                KeyCode::Enter => {
                    self.modal = None;
                    let kind = FAULT_KINDS.get(selected).unwrap_or(&"garbage").to_string();
                    self.commands.push(Command::Fault {
                        device,
                        kind,
                        secs: FAULT_SECS,
                    });
                }
                KeyCode::Esc | KeyCode::Char('q') => self.modal = None,
                _ => {}
            },
        }
    }

    fn filter_mut(&mut self) -> Option<&mut String> {
        match self.screen() {
            Screen::Tab(Tab::Devices) => Some(&mut self.device_filter),
            Screen::Tab(Tab::Orders) => Some(&mut self.order_filter),
            Screen::Tab(Tab::Events) => Some(&mut self.event_filter),
            _ => None,
        }
    }

    fn filter_key(&mut self, code: KeyCode) {
        match code {
            KeyCode::Enter => self.editing_filter = false,
            KeyCode::Esc => {
                self.editing_filter = false;
                if let Some(f) = self.filter_mut() {
                    f.clear();
                }
            }
            KeyCode::Backspace => {
                if let Some(f) = self.filter_mut() {
                    f.pop();
                }
            }
            KeyCode::Char(c) => {
                if let Some(f) = self.filter_mut() {
                    f.push(c);
                }
            }
            _ => {}
        }
        self.device_sel = 0;
        self.order_sel = 0;
        self.event_scroll = 0;
        self.clamp();
    }

    fn switch_tab(&mut self, i: usize) {
        let tab = Tab::ALL.get(i).copied().unwrap_or(Tab::Overview);
        self.stack = vec![Screen::Tab(tab)];
        self.editing_filter = false;
    }

    fn back(&mut self) {
        if self.stack.len() > 1 {
            match self.stack.pop() {
                Some(Screen::Device(_)) => self.device_detail = None,
                Some(Screen::Order(_)) => self.order_detail = None,
                _ => {}
            }
        }
    }

    fn move_sel(&mut self, delta: i64) {
        let step = |sel: usize, len: usize| -> usize {
            let max = len.saturating_sub(1) as i64;
            (sel as i64 + delta).clamp(0, max.max(0)) as usize
        };
        match self.screen().clone() {
            Screen::Tab(Tab::Devices) => {
                self.device_sel = step(self.device_sel, self.visible_devices().len())
            }
            Screen::Tab(Tab::Orders) => {
                self.order_sel = step(self.order_sel, self.visible_orders().len())
            }
            Screen::Tab(Tab::Events) => {
                // The list is newest first: Down goes back in time.
                self.event_scroll = step(self.event_scroll, self.visible_events().len())
            }
            Screen::Device(_) => {
                let n = self
                    .device_detail
                    .as_ref()
                    .map(|d| d.device.ports.len())
                    .unwrap_or(0);
                self.port_sel = step(self.port_sel, n)
            }
            Screen::Tab(Tab::Overview) | Screen::Order(_) => {}
        }
    }

    fn enter(&mut self) {
        match self.screen().clone() {
            Screen::Tab(Tab::Devices) => {
                if let Some(id) = self.selected_device_id() {
                    self.device_detail = None;
                    self.port_sel = 0;
                    self.stack.push(Screen::Device(id));
                }
            }
            Screen::Tab(Tab::Orders) => {
                if let Some(no) = self
                    .visible_orders()
                    .get(self.order_sel)
                    .map(|o| o.order_no.clone())
                {
                    self.order_detail = None;
                    self.stack.push(Screen::Order(no));
                }
            }
            Screen::Device(_) => {
                if let Some((_, _, Some(no))) = self.selected_port() {
                    self.order_detail = None;
                    self.stack.push(Screen::Order(no));
                }
            }
            _ => {}
        }
    }

    fn cycle_order_status(&mut self, forward: bool) {
        let all: Vec<Option<OrderStatus>> = std::iter::once(None)
            .chain(OrderStatus::ALL.into_iter().map(Some))
            .collect();
        let i = all
            .iter()
            .position(|s| *s == self.order_status)
            .unwrap_or(0);
        let n = all.len();
        let j = if forward {
            (i + 1) % n
        } else {
            (i + n - 1) % n
        };
        self.order_status = all[j];
        self.order_sel = 0;
    }

    fn action_key(&mut self, c: char) {
        let screen = self.screen().clone();
        match (c, &screen) {
            ('p', Screen::Tab(Tab::Events)) => {
                self.paused = !self.paused;
                if !self.paused {
                    while let Some(ev) = self.held.pop_front() {
                        self.push_event(ev);
                    }
                }
            }
            ('c', Screen::Tab(Tab::Events)) => {
                self.events.clear();
                self.held.clear();
                self.event_scroll = 0;
            }
            ('s', Screen::Tab(Tab::Devices)) => {
                self.device_sort = self.device_sort.next();
                self.device_sel = 0;
            }
            ('s', Screen::Device(_)) => {
                if let Some((device, port, _)) = self.selected_port() {
                    self.modal = Some(Modal::Confirm(Command::Start { device, port }));
                }
            }
            ('x', Screen::Device(_)) => {
                if let Some((device, port, order_no)) = self.selected_port() {
                    self.modal = Some(Modal::Confirm(Command::Stop {
                        device,
                        port,
                        order_no,
                    }));
                }
            }
            ('p' | 'u', Screen::Device(_)) if self.sim_enabled => {
                if let Some((device, port, _)) = self.selected_port() {
                    self.commands.push(if c == 'p' {
                        Command::Plug { device, port }
                    } else {
                        Command::Unplug { device, port }
                    });
                }
            }
            ('n' | 'r' | 'f', Screen::Device(_) | Screen::Tab(Tab::Devices))
                if self.sim_enabled =>
            {
                if let Some(device) = self.selected_device_id() {
                    match c {
                        'n' => self.commands.push(Command::CutNetwork { device }),
                        'r' => self.commands.push(Command::RestoreNetwork { device }),
                        _ => {
                            self.modal = Some(Modal::FaultPicker {
                                device,
                                selected: 0,
                            })
                        }
                    }
                }
            }
            ('p' | 'u' | 'n' | 'r' | 'f', Screen::Device(_) | Screen::Tab(Tab::Devices)) => {
                self.status = Some(StatusLine {
                    text: "simulator controls need --sim URL".into(),
                    at_ms: self.now_ms,
                    error: true,
                });
            }
            _ => {}
        }
    }
}

/// What the poller fetches besides the lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Focus {
    pub device: Option<String>,
    pub order: Option<String>,
    pub order_status: Option<OrderStatus>,
}
