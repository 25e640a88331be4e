//! The sortable columns of the devices and orders tables, and the devices filter.

use std::cmp::Ordering;

use pile_api::{DeviceView, OrderStatus, OrderView, PortStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevCol {
    Id,
    Family,
    State,
    Ports,
    LastSeen,
    Power,
    Order,
    Address,
    Signal,
    Firmware,
}

impl DevCol {
    pub const ALL: [DevCol; 10] = [
        DevCol::Id,
        DevCol::Family,
        DevCol::State,
        DevCol::Ports,
        DevCol::LastSeen,
        DevCol::Power,
        DevCol::Order,
        DevCol::Address,
        DevCol::Signal,
        DevCol::Firmware,
    ];

    pub fn title(self) -> &'static str {
        match self {
            DevCol::Id => "ID",
            DevCol::Family => "Family",
            DevCol::State => "State",
            DevCol::Ports => "Ports",
            DevCol::LastSeen => "Seen",
            DevCol::Power => "Power",
            DevCol::Order => "Active order",
            DevCol::Address => "Address",
            DevCol::Signal => "Signal",
            DevCol::Firmware => "Firmware",
        }
    }

    /// Compares two devices by this column (ascending).
    pub fn cmp(self, a: &DeviceView, b: &DeviceView) -> Ordering {
        match self {
            DevCol::Id => a.device_id.cmp(&b.device_id),
            DevCol::Family => a.protocol.cmp(&b.protocol),
            DevCol::State => a.online.cmp(&b.online),
            DevCol::Ports => port_rank(a).cmp(&port_rank(b)),
            DevCol::LastSeen => a.last_seen_at.cmp(&b.last_seen_at),
            DevCol::Power => total_power(a).total_cmp(&total_power(b)),
            DevCol::Order => active_order(a).cmp(&active_order(b)),
            DevCol::Address => a.remote_addr.cmp(&b.remote_addr),
            DevCol::Signal => a.signal.cmp(&b.signal),
            DevCol::Firmware => a.firmware.cmp(&b.firmware),
        }
    }
}

/// Charging, then fault, plugged, idle ports: what an operator sorts by ports for.
fn port_rank(d: &DeviceView) -> (usize, usize, usize) {
    let n = |s: PortStatus| d.ports.iter().filter(|p| p.status == s).count();
    (
        n(PortStatus::Charging),
        n(PortStatus::Fault),
        n(PortStatus::Plugged),
    )
}

pub fn total_power(d: &DeviceView) -> f64 {
    d.ports.iter().map(|p| p.power_w).sum()
}

/// The first running order of a device.
pub fn active_order(d: &DeviceView) -> Option<&str> {
    d.ports.iter().find_map(|p| p.order_no.as_deref())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderCol {
    Status,
    Order,
    Device,
    Created,
    Elapsed,
    Energy,
    Power,
    Amount,
    Mode,
    Reason,
}

impl OrderCol {
    pub const ALL: [OrderCol; 10] = [
        OrderCol::Status,
        OrderCol::Order,
        OrderCol::Device,
        OrderCol::Created,
        OrderCol::Elapsed,
        OrderCol::Energy,
        OrderCol::Power,
        OrderCol::Amount,
        OrderCol::Mode,
        OrderCol::Reason,
    ];

    pub fn title(self) -> &'static str {
        match self {
            OrderCol::Status => "Status",
            OrderCol::Order => "Order",
            OrderCol::Device => "Device #port",
            OrderCol::Created => "Created",
            OrderCol::Elapsed => "Elapsed",
            OrderCol::Energy => "kWh",
            OrderCol::Power => "W",
            OrderCol::Amount => "Yuan",
            OrderCol::Mode => "Mode",
            OrderCol::Reason => "End reason",
        }
    }

    /// Compares two orders by this column (ascending); `now_s` for elapsed times.
    pub fn cmp(self, a: &OrderView, b: &OrderView, now_s: i64) -> Ordering {
        match self {
            OrderCol::Status => status_rank(a.status).cmp(&status_rank(b.status)),
            OrderCol::Order => a.order_no.cmp(&b.order_no),
            OrderCol::Device => (&a.device_id, a.port_no).cmp(&(&b.device_id, b.port_no)),
            OrderCol::Created => a.created_at.cmp(&b.created_at),
            OrderCol::Elapsed => elapsed_sec(a, now_s).cmp(&elapsed_sec(b, now_s)),
            OrderCol::Energy => a.total_kwh.total_cmp(&b.total_kwh),
            OrderCol::Power => a.current_power.total_cmp(&b.current_power),
            OrderCol::Amount => a.final_amount.cmp(&b.final_amount),
            OrderCol::Mode => a.charge_mode.cmp(&b.charge_mode),
            OrderCol::Reason => a.end_reason.cmp(&b.end_reason),
        }
    }
}

fn status_rank(s: OrderStatus) -> usize {
    OrderStatus::ALL.iter().position(|x| *x == s).unwrap_or(9)
}

/// How long an order has been charging (or charged), from its `started_at` and the clock —
/// not from the last report, which may be a minute old or frozen while the pile is offline.
pub fn elapsed_sec(o: &OrderView, now_s: i64) -> i64 {
    match (o.status, o.started_at) {
        (OrderStatus::Charging, Some(s)) => (now_s - s).max(o.duration_sec).max(0),
        (OrderStatus::Pending, _) => 0,
        (_, Some(s)) => o.ended_at.map(|e| (e - s).max(0)).unwrap_or(o.duration_sec),
        (_, None) => o.duration_sec,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sort<C> {
    pub col: C,
    pub desc: bool,
}

impl<C: Copy + PartialEq> Sort<C> {
    /// The next column of `all`, ascending.
    pub fn next(self, all: &[C]) -> Self {
        let i = all.iter().position(|c| *c == self.col).unwrap_or(0);
        Sort {
            col: all[(i + 1) % all.len()],
            desc: false,
        }
    }

    pub fn reversed(self) -> Self {
        Sort {
            col: self.col,
            desc: !self.desc,
        }
    }

    pub fn apply(self, o: Ordering) -> Ordering {
        if self.desc {
            o.reverse()
        } else {
            o
        }
    }

    /// `▲` ascending, `▼` descending: readable without colour.
    pub fn arrow(self) -> &'static str {
        if self.desc {
            "▼"
        } else {
            "▲"
        }
    }
}

/// The devices filter: every word must match the device ID (a substring), the protocol (a
/// prefix), or the device's state — `online` / `offline`, or a port state like `charging` or
/// `fault` (a prefix). Nothing else: not the address, which holds port numbers that look like
/// device-ID fragments.
pub fn device_matches(d: &DeviceView, filter: &str) -> bool {
    filter.split_whitespace().all(|word| {
        let w = word.to_lowercase();
        let state = if d.online { "online" } else { "offline" };
        d.device_id.to_lowercase().contains(&w)
            || d.protocol.to_lowercase().starts_with(&w)
            || state.starts_with(&w)
            || d.ports.iter().any(|p| p.status.as_str().starts_with(&w))
    })
}
