use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use pile_api::{
    BreakerState, CommandMatch, Consistency, DeadLetter, DeviceView, Direction, EventMessage,
    FrameRecord, InstanceView, OrderStatus, OrderView, Page, PortMismatch, PortStatus, PortView,
    ProgressSample, Stats, WebhookEndpointStatus,
};
use pile_tui::app::problems::ProblemData;
use pile_tui::app::{DeviceDetail, OrderDetail, Snapshot};
use pile_tui::prom;
use pile_tui::{ui, App, Update};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

/// A fixed "now": 2024-11-24 00:00:00 UTC.
pub const NOW_MS: i64 = 1_732_406_400_000;
pub const NOW_S: i64 = NOW_MS / 1000;

pub fn port(port_no: u32, status: PortStatus, power_w: f64, order_no: Option<&str>) -> PortView {
    PortView {
        port_no,
        socket_no: None,
        hole: None,
        status,
        power_w,
        order_no: order_no.map(str::to_string),
    }
}

pub fn device(id: &str, protocol: &str, online: bool) -> DeviceView {
    let (ports, remote) = if online {
        (
            vec![
                port(1, PortStatus::Charging, 180.5, Some("ORD-1")),
                port(2, PortStatus::Idle, 0.0, None),
            ],
            "127.0.0.1:40520",
        )
    } else {
        (
            vec![
                port(1, PortStatus::Offline, 0.0, None),
                port(2, PortStatus::Offline, 0.0, None),
            ],
            "127.0.0.1:40521",
        )
    };
    DeviceView {
        device_id: id.into(),
        protocol: protocol.into(),
        online,
        last_seen_at: Some(NOW_S - if online { 5 } else { 340 }),
        connected_at: Some(NOW_S - 600),
        remote_addr: Some(remote.into()),
        firmware: Some("V1.2.7".into()),
        signal: Some(20),
        ports,
    }
}

pub fn order(no: &str, device_id: &str, status: OrderStatus) -> OrderView {
    let active = status.is_active();
    OrderView {
        order_no: no.into(),
        device_id: device_id.into(),
        port_no: 1,
        status,
        charge_mode: 1,
        target_duration: 600,
        amount: 500,
        created_at: NOW_S - 120,
        started_at: (status != OrderStatus::Pending).then_some(NOW_S - 110),
        ended_at: (!active).then_some(NOW_S - 20),
        duration_sec: if active { 60 } else { 90 },
        total_kwh: 0.012,
        current_power: if active { 180.5 } else { 0.0 },
        peak_power: 190.0,
        energy_fee: 2,
        service_fee_amount: 1,
        final_amount: if status == OrderStatus::Completed {
            3
        } else {
            0
        },
        end_reason: (!active).then_some(if status == OrderStatus::Failed { 12 } else { 3 }),
        end_reason_name: (!active).then(|| "remote_stop".to_string()),
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
        timestamp: NOW_S,
        nonce: String::new(),
        data: serde_json::json!({"n": n}),
    }
}

pub fn event_with(
    kind: &str,
    device: &str,
    order: Option<&str>,
    at: i64,
    data: serde_json::Value,
) -> EventMessage {
    EventMessage {
        event_id: format!("ev-{kind}-{at}"),
        event_type: kind.into(),
        device_phy_id: device.into(),
        order_no: order.map(str::to_string),
        timestamp: at,
        nonce: String::new(),
        data,
    }
}

pub fn stats() -> Stats {
    let mut stats = Stats {
        online_devices: 2,
        active_sessions: 2,
        event_backlog: 7,
        push_success_rate: 0.995,
        mean_push_latency_ms: 12.5,
        uptime_sec: 240,
        ..Stats::default()
    };
    stats.tables.devices = 3;
    stats.db_pool.in_use = 1;
    stats.db_pool.max = 16;
    stats.orders_by_status.insert("charging".into(), 1);
    stats.orders_by_status.insert("completed".into(), 4);
    stats
}

pub fn webhook(state: BreakerState) -> WebhookEndpointStatus {
    WebhookEndpointStatus {
        url: "http://127.0.0.1:9000/hook".into(),
        state,
        consecutive_failures: if state == BreakerState::Closed { 0 } else { 6 },
        backlog: 7,
        oldest_pending_age_sec: Some(42),
        dead_letters: 1,
        next_probe_at: (state == BreakerState::Open).then_some(NOW_S + 12),
        last_success_at: Some(NOW_S - 60),
    }
}

pub fn devices() -> Vec<DeviceView> {
    vec![
        device("82210225000520", "bkv", true),
        device("82210225000521", "bkv", false),
        device("04AB373B", "ap3000", true),
    ]
}

pub fn device_page() -> Page<DeviceView> {
    Page {
        items: devices(),
        total: 3,
        page: 1,
        size: 1000,
    }
}

pub fn snapshot() -> Snapshot {
    Snapshot {
        stats: Some(stats()),
        metrics: Some(prom::parse(
            "tcp_connections_accepted_total 42\nheartbeats_total{protocol=\"bkv\"} 100\n",
        )),
        orders: vec![
            order("ORD-1", "82210225000520", OrderStatus::Charging),
            order("ORD-2", "04AB373B", OrderStatus::Completed),
        ],
        orders_total: 2,
    }
}

/// Progress samples as a BKV pile sends them: a minute counter in `duration_sec`
/// (0, 60, 60, 120 …) but `at` a sample every 30 s from `started_at`.
pub fn bkv_samples(started_at: i64, n: i64) -> Vec<ProgressSample> {
    (0..n)
        .map(|i| ProgressSample {
            at: started_at + i * 30,
            duration_sec: (i * 30 / 60) * 60,
            energy_wh: i * 2,
            power_w: 150.0 + (i % 4) as f64 * 10.0,
            status: "charging".into(),
        })
        .collect()
}

pub fn device_detail(id: &str) -> DeviceDetail {
    let mut dev = device(id, "bkv", true);
    dev.ports[0].socket_no = Some(1);
    dev.ports[0].hole = Some(0);
    dev.ports[1].socket_no = Some(1);
    dev.ports[1].hole = Some(1);
    DeviceDetail {
        device: dev,
        frames: vec![
            FrameRecord {
                at_ms: NOW_MS - 3000,
                direction: Direction::Up,
                hex: "fcfe0000000000000182200520004869a1b2c3d4e5f60718293a4b5c6d7e8f90fcee".into(),
                summary: "heartbeat 0x0000".into(),
            },
            FrameRecord {
                at_ms: NOW_MS - 9000,
                direction: Direction::Down,
                hex: "fcff0001aabb".into(),
                summary: "start charging port 1".into(),
            },
        ],
        orders: vec![(
            order("ORD-1", id, OrderStatus::Charging),
            bkv_samples(NOW_S - 110, 4),
        )],
        sim: Some("connection online · no faults".into()),
    }
}

pub fn order_detail(no: &str) -> OrderDetail {
    OrderDetail {
        order: order(no, "82210225000520", OrderStatus::Charging),
        progress: bkv_samples(NOW_S - 110, 4),
    }
}

pub fn problem_data() -> ProblemData {
    let mut stuck = order("ORD-STUCK", "04AB373B", OrderStatus::Charging);
    stuck.started_at = Some(NOW_S - 4000);
    stuck.port_no = 3;
    let failed = order("ORD-FAIL", "82210225000520", OrderStatus::Failed);
    ProblemData {
        consistency: Some(Consistency {
            orphan_orders: vec![],
            stale_orders: vec!["ORD-STUCK".into()],
            commands: CommandMatch {
                sent: 10,
                matched: 10,
                match_rate: 1.0,
            },
            port_mismatches: vec![PortMismatch {
                device_id: "04AB373B".into(),
                port_no: 2,
                stored_status: "charging".into(),
                reported_status: "idle".into(),
            }],
        }),
        dead: Some(Page {
            items: vec![DeadLetter {
                event_id: "ev-dead-1".into(),
                event_type: "order.completed".into(),
                device_id: "04AB373B".into(),
                order_no: Some("ORD-2".into()),
                attempts: 6,
                last_status: Some(500),
                last_error: None,
                created_at: NOW_S - 100,
                dead_at: Some(NOW_S - 60),
                data: serde_json::json!({}),
            }],
            total: 1,
            page: 1,
            size: 100,
        }),
        failed: vec![failed],
        stuck: vec![stuck],
    }
}

pub fn instances() -> Vec<InstanceView> {
    vec![
        InstanceView {
            instance_id: "gw-a".into(),
            http_addr: "127.0.0.1:7055".into(),
            device_addr: "127.0.0.1:7065".into(),
            started_at: NOW_S - 3600,
            last_beat_at: NOW_S - 2,
            alive: true,
            sessions: 26,
            cpu_percent: Some(12.5),
            rss_bytes: Some(48 * 1_048_576),
            dispatcher: true,
        },
        InstanceView {
            instance_id: "gw-b".into(),
            http_addr: "127.0.0.1:7056".into(),
            device_addr: "127.0.0.1:7066".into(),
            started_at: NOW_S - 1800,
            last_beat_at: NOW_S - 45,
            alive: false,
            sessions: 0,
            cpu_percent: None,
            rss_bytes: None,
            dispatcher: false,
        },
    ]
}

pub fn apply_snapshot(app: &mut App, at_ms: i64, snapshot: Snapshot) {
    app.apply(Update::Snapshot {
        at_ms,
        requested_ms: at_ms - 10,
        snapshot: Box::new(snapshot),
    });
}

/// An app that has seen one device page and one snapshot at [`NOW_MS`].
pub fn loaded_app(sim: bool) -> App {
    let mut app = App::new("http://gw.test:7055", sim);
    app.tick(NOW_MS);
    app.apply(Update::DevicePage {
        at_ms: NOW_MS,
        requested_ms: NOW_MS - 10,
        page: Box::new(device_page()),
    });
    apply_snapshot(&mut app, NOW_MS, snapshot());
    app
}

/// An app that has polled every 2 s for the last 30 minutes: heartbeats arrive in bursts of
/// 50 every 11 s, one pile goes offline halfway, the API answers in 5 ms (p99), and the gateway
/// knows its webhook endpoint's state.
pub fn busy_app(state: BreakerState) -> App {
    let mut app = App::new("http://gw.test:7055", false);
    let start = NOW_MS - 30 * 60_000;
    app.tick(start);
    app.apply(Update::DevicePage {
        at_ms: start,
        requested_ms: start,
        page: Box::new(device_page()),
    });
    let mut t = start;
    while t <= NOW_MS {
        let secs = (t - start) / 1000;
        let heartbeats = (secs / 11) * 50;
        let requests = secs * 10;
        let mut s = stats();
        s.online_devices = if t < NOW_MS - 15 * 60_000 { 3 } else { 2 };
        s.webhook = Some(webhook(state));
        s.event_backlog = 7;
        let mut snap = snapshot();
        snap.stats = Some(s);
        snap.metrics = Some(prom::parse(&format!(
            "heartbeats_total{{protocol=\"bkv\"}} {heartbeats}\n\
             tcp_connections_accepted_total 42\n\
             http_request_duration_seconds_bucket{{route=\"/a\",le=\"0.005\"}} {requests}\n\
             http_request_duration_seconds_bucket{{route=\"/a\",le=\"+Inf\"}} {requests}\n"
        )));
        app.tick(t);
        apply_snapshot(&mut app, t, snap);
        t += 2000;
    }
    app.tick(NOW_MS);
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

/// Opens the first device of the table and gives it its detail.
pub fn open_first_device(app: &mut App) -> String {
    key(app, KeyCode::Char('3'));
    key(app, KeyCode::Enter);
    let pile_tui::app::Screen::Device(id) = app.screen().clone() else {
        panic!("not on a device screen: {:?}", app.screen());
    };
    app.apply(Update::Device {
        at_ms: NOW_MS,
        requested_ms: NOW_MS - 10,
        detail: Box::new(device_detail(&id)),
    });
    id
}
