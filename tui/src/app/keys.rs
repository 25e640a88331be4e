//! Keys: every key changes state or emits a [`Command`], nothing else.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use pile_api::OrderStatus;

use super::follow::{Follow, Kind};
use super::form::{Field, StartForm};
use super::problems::{Fix, Target};
use super::table::{DevCol, OrderCol, Sort};
use super::{App, Command, Modal, Pane, Screen, StatusLine, Tab, FAULT_KINDS, FAULT_SECS};

impl App {
    pub fn handle_key(&mut self, key: KeyEvent) {
        if key.kind == KeyEventKind::Release {
            return;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return;
        }
        if let Some(modal) = self.modal.take() {
            self.modal = self.modal_key(modal, key.code);
            return;
        }
        if self.editing_filter {
            self.filter_key(key.code);
            return;
        }
        let n = Tab::ALL.len();
        match key.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') => self.modal = Some(Modal::Help),
            KeyCode::Tab => self.switch_tab((self.tab().index() + 1) % n),
            KeyCode::BackTab => self.switch_tab((self.tab().index() + n - 1) % n),
            KeyCode::Char(c @ '1'..='5') => self.switch_tab(c as usize - '1' as usize),
            KeyCode::Esc => self.back(),
            KeyCode::Up => self.move_sel(-1),
            KeyCode::Down => self.move_sel(1),
            KeyCode::PageUp => self.move_sel(-self.page_rows()),
            KeyCode::PageDown => self.move_sel(self.page_rows()),
            KeyCode::Home => self.move_sel(i64::MIN / 2),
            KeyCode::End => self.move_sel(i64::MAX / 2),
            KeyCode::Enter => self.enter(),
            KeyCode::Char('/') if self.filter_mut().is_some() => self.editing_filter = true,
            KeyCode::Left | KeyCode::Right => {
                let right = key.code == KeyCode::Right;
                match self.screen() {
                    Screen::Tab(Tab::Orders) => self.cycle_order_status(right),
                    Screen::Device(_) => self.pane = if right { Pane::Frames } else { Pane::Ports },
                    _ => {}
                }
            }
            KeyCode::Char(c) => self.action_key(c),
            _ => {}
        }
    }

    /// Rows a page key moves: about a screenful of a table at 24 lines.
    fn page_rows(&self) -> i64 {
        15
    }

    fn modal_key(&mut self, modal: Modal, code: KeyCode) -> Option<Modal> {
        match modal {
            Modal::Help => match code {
                KeyCode::Esc | KeyCode::Char('?') | KeyCode::Char('q') | KeyCode::Enter => None,
                _ => Some(Modal::Help),
            },
            Modal::Confirm(cmd) => match code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    self.issue(cmd);
                    None
                }
                KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc | KeyCode::Char('q') => None,
                _ => Some(Modal::Confirm(cmd)),
            },
            Modal::FaultPicker { device, selected } => match code {
                KeyCode::Up => Some(Modal::FaultPicker {
                    device,
                    selected: selected.saturating_sub(1),
                }),
                KeyCode::Down => Some(Modal::FaultPicker {
                    device,
                    selected: (selected + 1).min(FAULT_KINDS.len() - 1),
                }),
                KeyCode::Enter => {
                    let kind = FAULT_KINDS.get(selected).unwrap_or(&"garbage").to_string();
                    self.issue(Command::Fault {
                        device,
                        kind,
                        secs: FAULT_SECS,
                    });
                    None
                }
                KeyCode::Esc | KeyCode::Char('q') => None,
                _ => Some(Modal::FaultPicker { device, selected }),
            },
            Modal::Start(form) => self.form_key(form, code),
        }
    }

    fn form_key(&mut self, mut form: StartForm, code: KeyCode) -> Option<Modal> {
        if code == KeyCode::Esc {
            return None;
        }
        if form.submitting {
            // The answer decides; only Esc leaves (the outcome then shows in the status line).
            return Some(Modal::Start(form));
        }
        match code {
            KeyCode::Up | KeyCode::BackTab => form.move_focus(-1),
            KeyCode::Down | KeyCode::Tab => form.move_focus(1),
            KeyCode::Left | KeyCode::Right if form.focus == Field::Mode => {
                form.cycle_mode(code == KeyCode::Right);
                form.error = None;
            }
            KeyCode::Char(' ') if form.focus == Field::Mode => {
                form.cycle_mode(true);
                form.error = None;
            }
            KeyCode::Backspace => {
                if let Some(t) = form.text_mut(form.focus) {
                    t.pop();
                }
            }
            KeyCode::Char(c) => {
                let focus = form.focus;
                if let Some(t) = form.text_mut(focus) {
                    if t.chars().count() < 64 {
                        t.push(c);
                    }
                    if form.error.as_ref().is_some_and(|e| e.field == Some(focus)) {
                        form.error = None;
                    }
                }
            }
            KeyCode::Enter => match form.request() {
                Ok(request) => {
                    form.error = None;
                    form.submitting = true;
                    self.follows.push(Follow::new(
                        Kind::Start,
                        &form.device,
                        request.port_no,
                        request.order_no.clone(),
                        self.now_ms,
                    ));
                    self.commands.push(Command::Start {
                        device: form.device.clone(),
                        request,
                    });
                }
                Err(e) => {
                    if let Some(f) = e.field {
                        form.focus = f;
                    }
                    form.error = Some(e);
                }
            },
            _ => {}
        }
        Some(Modal::Start(form))
    }

    /// Queues a command; starts and stops are followed until their order says how they ended.
    fn issue(&mut self, cmd: Command) {
        if let Command::Stop {
            device,
            port,
            order_no,
        } = &cmd
        {
            self.follows.push(Follow::new(
                Kind::Stop,
                device,
                *port,
                order_no.clone(),
                self.now_ms,
            ));
        }
        self.commands.push(cmd);
    }

    pub(super) fn filter_mut(&mut self) -> Option<&mut String> {
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
        self.clamp();
    }

    fn back(&mut self) {
        if self.stack.len() > 1 {
            if let Some(Screen::Device(_)) = self.stack.pop() {
                self.device_extra = None;
            }
        }
    }

    fn move_sel(&mut self, delta: i64) {
        let step = |sel: usize, len: usize| -> usize {
            let max = len.saturating_sub(1) as i64;
            (sel as i64).saturating_add(delta).clamp(0, max.max(0)) as usize
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
            Screen::Tab(Tab::Problems) => {
                self.problem_sel = step(self.problem_sel, self.problems().len())
            }
            Screen::Device(_) => match self.pane {
                Pane::Ports => {
                    let n = self.open_device().map(|d| d.ports.len()).unwrap_or(0);
                    self.port_sel = step(self.port_sel, n)
                }
                Pane::Frames => self.frame_sel = step(self.frame_sel, self.frames().len()),
            },
            Screen::Tab(Tab::Overview) | Screen::Order(_) => {}
        }
    }

    fn open(&mut self, target: Target) {
        match target {
            Target::Device(id) => {
                self.device_extra = None;
                self.port_sel = 0;
                self.frame_sel = 0;
                self.pane = Pane::Ports;
                self.stack.push(Screen::Device(id));
            }
            Target::Order(no) => self.stack.push(Screen::Order(no)),
            Target::None => {}
        }
    }

    fn enter(&mut self) {
        match self.screen().clone() {
            Screen::Tab(Tab::Devices) => {
                if let Some(id) = self.selected_device_id() {
                    self.open(Target::Device(id));
                }
            }
            Screen::Tab(Tab::Orders) => {
                if let Some(no) = self
                    .visible_orders()
                    .get(self.order_sel)
                    .map(|o| o.order_no.clone())
                {
                    self.open(Target::Order(no));
                }
            }
            Screen::Tab(Tab::Problems) => {
                if let Some(p) = self.problems().get(self.problem_sel) {
                    self.open(p.target.clone());
                }
            }
            Screen::Device(_) => {
                if let Some((_, _, Some(no))) = self.selected_port() {
                    self.open(Target::Order(no));
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
        let d = self.open_device()?;
        let p = d.ports.get(self.port_sel)?;
        Some((d.device_id.clone(), p.port_no, p.order_no.clone()))
    }

    fn error(&mut self, text: &str) {
        self.status = Some(StatusLine {
            text: text.to_string(),
            at_ms: self.now_ms,
            error: true,
        });
    }

    fn problem_key(&mut self, c: char) {
        let Some(p) = self.problems().get(self.problem_sel).cloned() else {
            return;
        };
        if p.fix.key() != Some(c) {
            return;
        }
        match p.fix {
            Fix::Stop {
                device,
                port,
                order_no,
            } => {
                self.modal = Some(Modal::Confirm(Command::Stop {
                    device,
                    port,
                    order_no: Some(order_no),
                }))
            }
            Fix::Replay { event_id } => {
                self.modal = Some(Modal::Confirm(Command::Replay { event_id }))
            }
            Fix::Retry { order_no } => {
                let form = self
                    .problem_data
                    .as_ref()
                    .and_then(|d| d.failed.iter().find(|o| o.order_no == order_no))
                    .map(StartForm::retry);
                if let Some(f) = form {
                    self.modal = Some(Modal::Start(f));
                }
            }
            Fix::TestWebhook => self.issue(Command::TestWebhook),
            Fix::RestoreNetwork { device } => self.issue(Command::RestoreNetwork { device }),
            Fix::Open => {}
        }
    }

    fn action_key(&mut self, c: char) {
        let screen = self.screen().clone();
        match (c, &screen) {
            (_, Screen::Tab(Tab::Problems)) => self.problem_key(c),
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
                self.device_sort = self.device_sort.next(&DevCol::ALL);
                self.device_sel = 0;
            }
            ('S', Screen::Tab(Tab::Devices)) => {
                self.device_sort = self.device_sort.reversed();
                self.device_sel = 0;
            }
            ('s', Screen::Tab(Tab::Orders)) => {
                self.order_sort = Some(match self.order_sort {
                    None => Sort {
                        col: OrderCol::Status,
                        desc: false,
                    },
                    Some(s) => s.next(&OrderCol::ALL),
                });
                self.order_sel = 0;
            }
            ('S', Screen::Tab(Tab::Orders)) => {
                self.order_sort = Some(
                    self.order_sort
                        .unwrap_or(Sort {
                            col: OrderCol::Created,
                            desc: true,
                        })
                        .reversed(),
                );
                self.order_sel = 0;
            }
            ('h', Screen::Device(_)) => self.show_hex = !self.show_hex,
            ('s', Screen::Device(_)) => {
                // A busy port is the gateway's to refuse (409), like every other check.
                if let Some((device, port, _)) = self.selected_port() {
                    self.modal = Some(Modal::Start(StartForm::new(&device, port)));
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
            ('x', Screen::Order(no)) => {
                if let Some(o) = self.live.orders.get(no).filter(|o| o.status.is_active()) {
                    self.modal = Some(Modal::Confirm(Command::Stop {
                        device: o.device_id.clone(),
                        port: o.port_no,
                        order_no: Some(o.order_no.clone()),
                    }));
                }
            }
            ('p' | 'u', Screen::Device(_)) if self.sim_enabled => {
                if let Some((device, port, _)) = self.selected_port() {
                    self.issue(if c == 'p' {
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
                        'n' => self.issue(Command::CutNetwork { device }),
                        'r' => self.issue(Command::RestoreNetwork { device }),
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
                self.error("simulator controls need --sim URL")
            }
            _ => {}
        }
    }
}
