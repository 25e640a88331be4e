//! What the dashboard knows about devices, orders and progress samples: one entry per device
//! and per order, fed by two sources that race each other.
//!
//! - Polls bring whole views, but each is as old as the moment its request left.
//! - Events from the live stream bring one change, within a second.
//!
//! A polled view replaces an entry unless an event touched the entry after the poll's request
//! left (the poll is older than what the event said). Order states only move forward
//! (pending → charging → completed / failed / cancelled), so a polled order that is further
//! along always wins. Progress samples are facts: polls and events are merged by time.

use std::collections::{BTreeMap, HashMap, HashSet};

use pile_api::{
    DeviceView, EventMessage, OrderStatus, OrderView, Page, PortStatus, ProgressSample,
};
use serde_json::Value;

/// Samples kept per order (an eight-hour charge with a sample a minute is 480).
pub const SAMPLE_CAP: usize = 5000;

/// How far an order has come; states only move forward.
pub fn rank(s: OrderStatus) -> u8 {
    match s {
        OrderStatus::Pending => 0,
        OrderStatus::Charging => 1,
        OrderStatus::Completed | OrderStatus::Failed | OrderStatus::Cancelled => 2,
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Live {
    /// Every device seen on a list page, by ID.
    pub fleet: BTreeMap<String, DeviceView>,
    /// `total` of the latest device page: all devices the gateway knows.
    pub devices_total: i64,
    /// At least one device page arrived.
    pub devices_loaded: bool,
    /// Which IDs each page listed last time, to notice devices that left.
    pages: BTreeMap<u32, Vec<String>>,
    /// Orders the views need, by number.
    pub orders: HashMap<String, OrderView>,
    /// Progress samples by order, sorted by time; only for orders a view asked for.
    pub samples: HashMap<String, Vec<ProgressSample>>,
    /// When an event last changed a device or an order (the app's clock, ms).
    device_touched: HashMap<String, i64>,
    order_touched: HashMap<String, i64>,
    /// When the live stream last brought a sample for an order (the app's clock, ms).
    pub sample_seen_ms: HashMap<String, i64>,
}

impl Live {
    /// One page of `GET /api/v1/third/devices`, requested at `requested_ms`.
    pub fn merge_device_page(&mut self, page: Page<DeviceView>, requested_ms: i64) {
        self.devices_loaded = true;
        self.devices_total = page.total;
        let ids: Vec<String> = page.items.iter().map(|d| d.device_id.clone()).collect();
        let previous = self.pages.insert(page.page, ids.clone());
        for d in page.items {
            self.merge_device(d, requested_ms);
        }
        // Devices this page listed before and no page lists now have left the fleet (or moved
        // to a page not fetched again yet, which lists them again when it is).
        let size = page.size.max(1) as i64;
        let last_page = ((page.total + size - 1) / size).max(1) as u32;
        let dropped: Vec<u32> = self.pages.range(last_page + 1..).map(|(p, _)| *p).collect();
        let mut gone: Vec<String> = previous.unwrap_or_default();
        for p in dropped {
            gone.extend(self.pages.remove(&p).unwrap_or_default());
        }
        let listed: HashSet<&String> = self.pages.values().flatten().collect();
        let gone: Vec<String> = gone.into_iter().filter(|id| !listed.contains(id)).collect();
        for id in gone {
            self.fleet.remove(&id);
            self.device_touched.remove(&id);
        }
    }

    /// A polled device view; kept out when an event changed the device after the request left.
    pub fn merge_device(&mut self, d: DeviceView, requested_ms: i64) {
        let touched = self.device_touched.get(&d.device_id).copied();
        if touched.is_some_and(|t| t > requested_ms) && self.fleet.contains_key(&d.device_id) {
            return;
        }
        self.device_touched.remove(&d.device_id);
        self.fleet.insert(d.device_id.clone(), d);
    }

    /// A polled order view (see the module doc for which one wins).
    pub fn merge_order(&mut self, o: OrderView, requested_ms: i64) {
        if let Some(have) = self.orders.get(&o.order_no) {
            let touched = self.order_touched.get(&o.order_no).copied().unwrap_or(0);
            let older = touched > requested_ms && rank(o.status) <= rank(have.status);
            if older || rank(o.status) < rank(have.status) {
                return;
            }
        }
        self.order_touched.remove(&o.order_no);
        self.orders.insert(o.order_no.clone(), o);
    }

    /// Polled samples of one order, merged with what the stream brought.
    pub fn merge_samples(&mut self, order_no: &str, polled: Vec<ProgressSample>) {
        let have = self.samples.entry(order_no.to_string()).or_default();
        for s in polled {
            insert_sample(have, s);
        }
    }

    /// Forgets orders and samples no view needs any more.
    pub fn retain_orders(&mut self, keep: &HashSet<String>) {
        self.orders.retain(|no, _| keep.contains(no));
        self.order_touched.retain(|no, _| keep.contains(no));
        self.samples.retain(|no, _| keep.contains(no));
        self.sample_seen_ms.retain(|no, _| keep.contains(no));
    }

    /// The running order of a port, as the fleet knows it.
    pub fn port_order(&self, device: &str, port: u32) -> Option<&OrderView> {
        let d = self.fleet.get(device)?;
        let no = d
            .ports
            .iter()
            .find(|p| p.port_no == port)?
            .order_no
            .as_deref()?;
        self.orders.get(no)
    }

    /// Applies one live event at `now_ms`.
    pub fn apply_event(&mut self, ev: &EventMessage, now_ms: i64) {
        let data = &ev.data;
        let device = ev.device_phy_id.as_str();
        match ev.event_type.as_str() {
            "device.online" | "device.offline" => {
                let online = ev.event_type == "device.online";
                if let Some(d) = self.fleet.get_mut(device) {
                    d.online = online;
                    if online {
                        d.connected_at = Some(ev.timestamp);
                    } else {
                        for p in &mut d.ports {
                            p.status = PortStatus::Offline;
                            p.power_w = 0.0;
                        }
                    }
                    d.last_seen_at = Some(d.last_seen_at.unwrap_or(0).max(ev.timestamp));
                    self.device_touched.insert(device.to_string(), now_ms);
                }
            }
            "socket.state_changed" => {
                let port = data.get("port_no").and_then(Value::as_u64);
                let status = data
                    .get("status")
                    .or_else(|| data.get("to"))
                    .and_then(Value::as_str)
                    .and_then(PortStatus::parse);
                if let (Some(d), Some(port), Some(status)) =
                    (self.fleet.get_mut(device), port, status)
                {
                    if let Some(p) = d.ports.iter_mut().find(|p| u64::from(p.port_no) == port) {
                        p.status = status;
                        if let Some(w) = data.get("power_w").and_then(Value::as_f64) {
                            p.power_w = w;
                        }
                        self.device_touched.insert(device.to_string(), now_ms);
                    }
                }
            }
            "charging.progress" => {
                let Some(no) = ev.order_no.as_deref() else {
                    return;
                };
                let power = data.get("power_w").and_then(Value::as_f64);
                let energy = data.get("energy_wh").and_then(Value::as_i64);
                if let Some(o) = self.orders.get_mut(no) {
                    if let Some(w) = power {
                        o.current_power = w;
                        o.peak_power = o.peak_power.max(w);
                    }
                    if let Some(wh) = energy {
                        o.total_kwh = wh as f64 / 1000.0;
                    }
                    if o.status == OrderStatus::Pending {
                        o.status = OrderStatus::Charging;
                    }
                    self.order_touched.insert(no.to_string(), now_ms);
                }
                if let (Some(w), Some(port)) = (power, self.port_of(device, no)) {
                    if let Some(p) = self
                        .fleet
                        .get_mut(device)
                        .and_then(|d| d.ports.iter_mut().find(|p| p.port_no == port))
                    {
                        p.power_w = w;
                    }
                }
                if let (Some(have), Some(wh)) = (self.samples.get_mut(no), energy) {
                    insert_sample(
                        have,
                        ProgressSample {
                            at: ev.timestamp,
                            duration_sec: data
                                .get("duration_sec")
                                .and_then(Value::as_i64)
                                .unwrap_or(0),
                            energy_wh: wh,
                            power_w: power.unwrap_or(0.0),
                            status: data
                                .get("status")
                                .and_then(Value::as_str)
                                .unwrap_or("charging")
                                .to_string(),
                        },
                    );
                    self.sample_seen_ms.insert(no.to_string(), now_ms);
                }
            }
            "order.confirmed" | "charging.started" => {
                let Some(no) = ev.order_no.as_deref() else {
                    return;
                };
                if let Some(o) = self.orders.get_mut(no) {
                    if rank(o.status) < rank(OrderStatus::Charging) {
                        o.status = OrderStatus::Charging;
                    }
                    let started = data.get("started_at").and_then(Value::as_i64);
                    o.started_at = o.started_at.or(started).or(Some(ev.timestamp));
                    self.order_touched.insert(no.to_string(), now_ms);
                }
            }
            "order.created" => {
                // The port holds the new order from now on.
                let (Some(no), Some(port)) = (
                    ev.order_no.as_deref(),
                    data.get("port_no").and_then(Value::as_u64),
                ) else {
                    return;
                };
                if let Some(p) = self
                    .fleet
                    .get_mut(device)
                    .and_then(|d| d.ports.iter_mut().find(|p| u64::from(p.port_no) == port))
                {
                    p.order_no = Some(no.to_string());
                    self.device_touched.insert(device.to_string(), now_ms);
                }
            }
            "order.completed" | "charging.ended" | "order.failed" | "order.cancelled" => {
                let Some(no) = ev.order_no.as_deref() else {
                    return;
                };
                let status = match ev.event_type.as_str() {
                    "order.failed" => OrderStatus::Failed,
                    "order.cancelled" => OrderStatus::Cancelled,
                    _ => OrderStatus::Completed,
                };
                if let Some(o) = self.orders.get_mut(no) {
                    if rank(o.status) < 2 {
                        o.status = status;
                        settle_from(o, data, ev.timestamp);
                    }
                    self.order_touched.insert(no.to_string(), now_ms);
                }
                if let Some(port) = self.port_of(device, no) {
                    if let Some(p) = self
                        .fleet
                        .get_mut(device)
                        .and_then(|d| d.ports.iter_mut().find(|p| p.port_no == port))
                    {
                        p.order_no = None;
                        p.power_w = 0.0;
                        if p.status == PortStatus::Charging {
                            p.status = PortStatus::Idle;
                        }
                        self.device_touched.insert(device.to_string(), now_ms);
                    }
                }
            }
            _ => {}
        }
    }

    fn port_of(&self, device: &str, order_no: &str) -> Option<u32> {
        self.fleet
            .get(device)?
            .ports
            .iter()
            .find(|p| p.order_no.as_deref() == Some(order_no))
            .map(|p| p.port_no)
    }
}

/// The settlement fields an `order.completed` (or failed / cancelled) event carries.
fn settle_from(o: &mut OrderView, data: &Value, at: i64) {
    let int = |k: &str| data.get(k).and_then(Value::as_i64);
    o.ended_at = int("ended_at").or(Some(at));
    if let Some(v) = int("duration_sec") {
        o.duration_sec = v;
    }
    if let Some(v) = data.get("total_kwh").and_then(Value::as_f64) {
        o.total_kwh = v;
    }
    for (k, field) in [
        ("energy_fee", &mut o.energy_fee),
        ("service_fee_amount", &mut o.service_fee_amount),
        ("final_amount", &mut o.final_amount),
    ] {
        if let Some(v) = int(k) {
            *field = v;
        }
    }
    if o.status != OrderStatus::Completed {
        o.final_amount = 0;
    }
    if let Some(r) = int("end_reason") {
        o.end_reason = Some(r);
    }
    let text = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_string);
    o.end_reason_name = text("end_reason_name").or(o.end_reason_name.take());
    o.end_reason_text = text("end_reason_text").or(o.end_reason_text.take());
    if let Some(b) = data.get("offline_replayed").and_then(Value::as_bool) {
        o.offline_replayed = b;
    }
    o.current_power = 0.0;
}

fn insert_sample(have: &mut Vec<ProgressSample>, s: ProgressSample) {
    match have.binary_search_by_key(&s.at, |x| x.at) {
        // Same second: the same sample from the other source (or a newer one).
        Ok(i) => {
            if s.energy_wh >= have[i].energy_wh {
                have[i] = s;
            }
        }
        Err(i) => have.insert(i, s),
    }
    if have.len() > SAMPLE_CAP {
        let cut = have.len() - SAMPLE_CAP;
        have.drain(..cut);
    }
}
