use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use pile_api::{
    DeviceView, Direction, EventMessage, FrameRecord, OrderStatus, OrderView, PortStatus, PortView,
    ProgressSample, Stats,
};
use pile_tui::app::{DeviceDetail, OrderDetail, Snapshot};
use pile_tui::prom;
use pile_tui::{ui, App, Update};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

/// A fixed "now": 2024-11-24 00:00:00 UTC.
pub const NOW_MS: i64 = 1_732_406_400_000;

pub fn device(id: &str, protocol: &str, online: bool) -> DeviceView {
    DeviceView {
        device_id: id.into(),
        protocol: protocol.into(),
        online,
        last_seen_at: Some(NOW_MS / 1000 - 5),
        connected_at: Some(NOW_MS / 1000 - 600),
        remote_addr: Some("127.0.0.1:40000".into()),
        firmware: Some("1.2".into()),
        signal: Some(20),
        ports: vec![
            PortView {
                port_no: 1,
                socket_no: None,
                hole: None,
                status: PortStatus::Charging,
                power_w: 180.5,
                order_no: Some("ORD-1".into()),
            },
            PortView {
                port_no: 2,
                socket_no: None,
                hole: None,
                status: PortStatus::Idle,
                power_w: 0.0,
                order_no: None,
            },
        ],
    }
}

pub fn order(no: &str, device_id: &str, status: OrderStatus) -> OrderView {
    OrderView {
        order_no: no.into(),
        device_id: device_id.into(),
        port_no: 1,
        status,
        charge_mode: 1,
        target_duration: 600,
        amount: 500,
        created_at: NOW_MS / 1000 - 120,
        started_at: Some(NOW_MS / 1000 - 110),
        ended_at: None,
        duration_sec: 110,
        total_kwh: 0.012,
        current_power: 180.5,
        peak_power: 190.0,
        energy_fee: 2,
        service_fee_amount: 1,
        final_amount: 3,
        end_reason: None,
        end_reason_name: None,
        end_reason_text: None,
        offline_replayed: false,
    }
}

pub fn event(n: usize, kind: &str) -> EventMessage {
    EventMessage {
        event_id: format!("ev-{n}"),
        event_type: kind.into(),
        device_phy_id: "82210225000520".into(),
        order_no: Some("ORD-1".into()),
        timestamp: NOW_MS / 1000,
        nonce: String::new(),
        data: serde_json::json!({"n": n}),
    }
}

pub fn snapshot() -> Snapshot {
    let mut stats = Stats {
        online_devices: 2,
        active_sessions: 2,
        event_backlog: 7,
        push_success_rate: 0.995,
        mean_push_latency_ms: 12.5,
        ..Stats::default()
    };
    stats.tables.devices = 3;
    stats.orders_by_status.insert("charging".into(), 1);
    stats.orders_by_status.insert("completed".into(), 4);
    Snapshot {
        stats: Some(stats),
        metrics: Some(prom::parse(
            "tcp_connections_accepted_total 42\nheartbeats_total{protocol=\"bkv\"} 100\n",
        )),
        devices: vec![
            device("82210225000520", "bkv", true),
            device("82210225000521", "bkv", false),
            device("04AB373B", "ap3000", true),
        ],
        devices_total: 3,
        orders: vec![
            order("ORD-1", "82210225000520", OrderStatus::Charging),
            order("ORD-2", "04AB373B", OrderStatus::Completed),
        ],
        orders_total: 2,
    }
}

pub fn device_detail(id: &str) -> DeviceDetail {
    DeviceDetail {
        device: device(id, "bkv", true),
        frames: vec![FrameRecord {
            at_ms: NOW_MS - 3000,
            direction: Direction::Up,
            hex: "fcfe0000".into(),
            summary: "heartbeat 0x0000".into(),
        }],
        orders: vec![order("ORD-1", id, OrderStatus::Charging)],
        sim: Some("connection online · no faults".into()),
    }
}

pub fn order_detail(no: &str) -> OrderDetail {
    OrderDetail {
        order: order(no, "82210225000520", OrderStatus::Charging),
        progress: (0..10)
            .map(|i| ProgressSample {
                at: NOW_MS / 1000 - 100 + i * 10,
                duration_sec: i * 10,
                energy_wh: i,
                power_w: 150.0 + i as f64,
                status: "charging".into(),
            })
            .collect(),
    }
}

/// An app that has seen one snapshot at [`NOW_MS`].
pub fn loaded_app(sim: bool) -> App {
    let mut app = App::new("http://gw.test:7055", sim);
    app.tick(NOW_MS);
    app.apply(Update::Snapshot {
        at_ms: NOW_MS,
        snapshot: Box::new(snapshot()),
    });
    app
}

pub fn key(app: &mut App, code: KeyCode) {
    app.handle_key(KeyEvent::new(code, KeyModifiers::NONE));
}

pub fn type_str(app: &mut App, s: &str) {
    for c in s.chars() {
        key(app, KeyCode::Char(c));
    }
}

/// Draws `app` on a `w`×`h` test terminal and returns the screen as text, one line per row.
pub fn draw(app: &App, w: u16, h: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
    terminal
        .draw(|f| ui::render(app, f))
        .expect("draw on the test backend");
    let buf = terminal.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}
