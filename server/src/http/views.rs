//! Store rows → API views.

use super::*;

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

/// A device's view: stored ports and orders, live fields from memory.
pub(super) fn build_view(
    service: &Service,
    d: DeviceRow,
    ports: Vec<PortRow>,
    active: Vec<(i64, String)>,
) -> DeviceView {
    // Several instances (issue #17): a device held by another instance is online as its owner
    // wrote it.
    let online =
        service.gateway.is_online(&d.device_id) || (service.cluster().is_some() && d.online);
    let live = service.live(&d.device_id);
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
