//! Store rows → API views.

use serde_json::value::RawValue;

use super::*;
use crate::gateway::{Live, LiveKey};
use crate::service::Held;

pub(super) fn order_view(o: &OrderRow) -> OrderView {
    let reason = o.end_reason.map(EndReason::from_code);
    OrderView {
        order_no: o.order_no.clone(),
        device_id: o.device_id.clone(),
        port_no: o.port_no as u32,
        status: o.status,
        charge_mode: o.charge_mode as u8,
        target_duration: o.target_duration,
        amount: o.amount,
        created_at: o.created_at_ms / 1000,
        started_at: o.started_at_ms.map(|t| t / 1000),
        ended_at: o.ended_at_ms.map(|t| t / 1000),
        duration_sec: match (o.status, o.started_at_ms) {
            (pile_api::OrderStatus::Charging, Some(s)) => {
                domain::duration_sec(s, o.last_report_at_ms.unwrap_or(s)).max(o.duration_sec)
            }
            _ => o.duration_sec,
        },
        total_kwh: o.energy_wh as f64 / 1000.0,
        current_power: o.current_power_dw as f64 / 10.0,
        peak_power: o.peak_power_dw as f64 / 10.0,
        energy_fee: o.energy_fee,
        service_fee_amount: o.service_fee_amount,
        final_amount: o.final_amount,
        end_reason: reason.map(|r| r.code()),
        end_reason_name: reason.map(|r| r.name().to_string()),
        end_reason_text: reason.map(|r| r.text_zh().to_string()),
        offline_replayed: o.offline_replayed,
    }
}

pub(super) fn order_ref(o: &OrderRow) -> OrderRef {
    OrderRef {
        order_no: o.order_no.clone(),
        device_id: o.device_id.clone(),
        port_no: o.port_no as u32,
        status: o.status,
    }
}

/// Rendered device views (JSON) by device, each with what it was rendered from: the read
/// model's install ([`Held::ticket`]) and the live registry's [`LiveKey`]. A view is reused only
/// while both are unchanged, so it is never staler than [`build_view`] on the same state; a
/// 50-device page is then 50 lookups and copies instead of 50 renderings (issue 14: the list
/// served 0.13 of `/healthz`).
#[derive(Debug, Default)]
pub struct ViewCache {
    views: Mutex<HashMap<String, Rendered>>,
}

#[derive(Debug)]
struct Rendered {
    ticket: u64,
    live: Option<LiveKey>,
    json: Arc<RawValue>,
}

/// A rendered view, serialised as the JSON it holds.
#[derive(Debug, Clone)]
pub(super) struct RawView(Arc<RawValue>);

impl Serialize for RawView {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl ViewCache {
    fn get(&self, device_id: &str, ticket: u64, live: Option<LiveKey>) -> Option<RawView> {
        let views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        views
            .get(device_id)
            .filter(|r| r.ticket == ticket && r.live == live)
            .map(|r| RawView(r.json.clone()))
    }

    fn put(&self, device_id: &str, ticket: u64, live: Option<LiveKey>, json: Arc<RawValue>) {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        match views.get_mut(device_id) {
            // Keep the newer install's rendering when two requests race.
            Some(r) if r.ticket > ticket => {}
            Some(r) => *r = Rendered { ticket, live, json },
            None => {
                views.insert(device_id.to_string(), Rendered { ticket, live, json });
            }
        }
    }
}

/// A view rendered now (not cached: it did not come from the read model).
pub(super) fn raw(view: &DeviceView) -> Result<RawView, ApiError> {
    serde_json::value::to_raw_value(view)
        .map(|j| RawView(j.into()))
        .map_err(|e| ApiError::Internal(format!("serialising a device view: {e}")))
}

/// The view of a device the read model holds: the cached rendering when nothing it shows
/// changed, else rendered (and cached) from `held` and the live registry read once.
pub(super) fn held_view(state: &AppState, held: &Held) -> Result<RawView, ApiError> {
    let service = &state.service;
    let id = held.device_id();
    if let Some(v) = state
        .views
        .get(id, held.ticket, service.gateway.live_key(id))
    {
        return Ok(v);
    }
    let live = service.live(id);
    let key = live.as_ref().map(LiveKey::of);
    let (d, ports, active) = held.parts();
    let view = raw(&build_view_with(service, d, ports, active, live))?;
    state.views.put(id, held.ticket, key, view.0.clone());
    Ok(view)
}

/// A device's view: stored ports and orders, live fields from memory.
pub(super) fn build_view(
    service: &Service,
    d: DeviceRow,
    ports: Vec<PortRow>,
    active: Vec<(i64, String)>,
) -> DeviceView {
    let live = service.live(&d.device_id);
    build_view_with(service, d, ports, active, live)
}

/// [`build_view`] with the live registry's entry already read (`None`: not online here).
fn build_view_with(
    service: &Service,
    d: DeviceRow,
    ports: Vec<PortRow>,
    active: Vec<(i64, String)>,
    live: Option<Live>,
) -> DeviceView {
    // Several instances (issue #17): a device held by another instance is online as its owner
    // wrote it.
    let online = live.is_some() || (service.cluster().is_some() && d.online);
    let order_of = |port_no: i64| {
        active
            .iter()
            .find(|(p, _)| *p == port_no)
            .map(|(_, o)| o.clone())
    };
    let bkv = d.protocol == "bkv";
    let mut views: Vec<PortView> = ports
        .iter()
        .map(|p| PortView {
            port_no: p.port_no as u32,
            socket_no: p.socket_no.map(|v| v as u32),
            hole: p.hole.map(|v| v as u32),
            status: if online {
                PortStatus::parse(&p.status).unwrap_or(PortStatus::Fault)
            } else {
                PortStatus::Offline
            },
            power_w: if online {
                p.power_dw as f64 / 10.0
            } else {
                0.0
            },
            order_no: order_of(p.port_no),
        })
        .collect();
    if views.is_empty() {
        views = (1..=d.port_count.clamp(0, 500) as u32)
            .map(|port_no| {
                let (s, h) = domain::bkv_socket_hole(port_no);
                PortView {
                    port_no,
                    socket_no: bkv.then_some(s),
                    hole: bkv.then_some(h),
                    status: if online {
                        PortStatus::Idle
                    } else {
                        PortStatus::Offline
                    },
                    power_w: 0.0,
                    order_no: order_of(i64::from(port_no)),
                }
            })
            .collect();
    }
    DeviceView {
        device_id: d.device_id,
        protocol: d.protocol,
        online,
        last_seen_at: live
            .as_ref()
            .map(|l| l.last_seen_ms / 1000)
            .or(d.last_seen_at),
        connected_at: live.as_ref().map(|l| l.connected_at).or(d.connected_at),
        remote_addr: live
            .as_ref()
            .map(|l| l.remote_addr.clone())
            .or(d.remote_addr),
        firmware: live
            .as_ref()
            .and_then(|l| l.firmware.clone())
            .or(d.firmware),
        signal: live.as_ref().and_then(|l| l.signal).or(d.signal),
        ports: views,
    }
}
