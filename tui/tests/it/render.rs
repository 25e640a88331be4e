//! Rendering on a `TestBackend`: every view as a snapshot at 80×24 and 200×50 (the files in
//! `snapshots/`, reviewed by eye), plus assertions on what must be on screen.

use crossterm::event::KeyCode;
use pile_api::{BreakerState, OrderStatus};
use pile_tui::app::{Conn, Screen};
use pile_tui::{App, Update};

use crate::support::*;

/// Both sizes of one view, as insta snapshots.
fn snap(name: &str, app: &App) {
    insta::assert_snapshot!(format!("{name}_80x24"), draw(app, 80, 24));
    insta::assert_snapshot!(format!("{name}_200x50"), draw(app, 200, 50));
}

/// No line of an 80-column screen may end in the middle of a value: what is cut ends in `…`.
fn assert_contains_all(screen: &str, texts: &[&str]) {
    for text in texts {
        assert!(screen.contains(text), "missing {text:?} in\n{screen}");
    }
}

#[test]
fn loading_state_before_the_first_snapshot() {
    let mut app = App::new("http://gw.test:7055", false);
    app.tick(NOW_MS);
    let screen = draw(&app, 80, 24);
    assert_contains_all(&screen, &["Loading", "connecting"]);
    snap("loading", &app);
}

#[test]
fn overview_with_charts_rates_and_the_webhook_endpoint() {
    let app = busy_app(BreakerState::Open);
    let small = draw(&app, 80, 24);
    // Values whole, right-aligned: "DB pool 1/16", not "DB pool 1/1"; uptime whole.
    assert_contains_all(
        &small,
        &[
            "DB pool 1/16",
            "4m00s",
            "Fleet",
            "Heartbeats/s 4.",
            "60 s window",
            "OPEN",
        ],
    );
    let wide = draw(&app, 200, 50);
    assert_contains_all(
        &wide,
        &[
            "Webhook",
            "OPEN after 6 failures",
            "probe in 12s",
            "oldest 42s",
            "-30m",
            "now",
        ],
    );
    snap("overview", &app);
}

#[test]
fn overview_shows_each_instance_when_the_gateway_has_several() {
    let mut app = busy_app(BreakerState::Closed);
    assert!(
        !draw(&app, 200, 50).contains("Instances"),
        "hidden without the route"
    );
    app.apply(Update::Instances {
        at_ms: NOW_MS,
        instances: Some(instances()),
    });
    let wide = draw(&app, 200, 50);
    assert_contains_all(
        &wide,
        &[
            "Instances · 1 of 2 alive",
            "gw-a",
            "gw-b",
            "DOWN",
            "48 MB",
            "12 %",
            "webhooks",
        ],
    );
    snap("overview_instances", &app);
    // A gateway that answers 404 again hides it.
    app.apply(Update::Instances {
        at_ms: NOW_MS,
        instances: None,
    });
    assert!(!draw(&app, 200, 50).contains("Instances"));
}

#[test]
fn problems_view_lists_what_needs_a_person_with_its_fix() {
    let mut app = busy_app(BreakerState::Open);
    app.apply(Update::Problems {
        at_ms: NOW_MS,
        requested_ms: NOW_MS - 10,
        data: Box::new(problem_data()),
    });
    key(&mut app, KeyCode::Char('2'));
    let wide = draw(&app, 200, 50);
    assert_contains_all(
        &wide,
        &[
            "[2 Problems 6]",
            "webhook",
            "t test",
            "stuck",
            "ORD-STUCK",
            "x stop",
            "dead letter",
            "r replay",
            "failed",
            "s retry",
            "offline",
            "82210225000521",
            "mismatch",
        ],
    );
    // Worst first: the breaker, then the stuck order, … the offline pile after them.
    let at = |s: &str| wide.find(s).unwrap_or(usize::MAX);
    assert!(at("breaker open") < at("ORD-STUCK"));
    assert!(at("ORD-STUCK") < at("ev-dead-1"));
    assert!(at("ev-dead-1") < at("82210225000521"));
    snap("problems", &app);
}

#[test]
fn devices_view_adds_columns_on_wide_terminals() {
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Char('3'));
    let small = draw(&app, 80, 24);
    let row = small
        .lines()
        .find(|l| l.contains("82210225000520"))
        .expect("a device row");
    assert!(row.contains("bkv") && row.contains("online"), "{row}");
    assert!(row.contains("1 charging, 1 idle"), "{row}");
    assert!(small.contains("ID▲"), "sort direction visible:\n{small}");
    assert!(!small.contains("Address"), "no room for it at 80:\n{small}");
    let wide = draw(&app, 200, 50);
    assert_contains_all(
        &wide,
        &[
            "Address",
            "Signal",
            "Active order",
            "Power",
            "Firmware",
            "127.0.0.1:40520",
            "V1.2.7",
            "180.5 W",
        ],
    );
    snap("devices", &app);
}

#[test]
fn device_view_with_live_figures_chart_and_frames() {
    let mut app = loaded_app(true);
    open_first_device(&mut app);
    let small = draw(&app, 80, 24);
    assert_contains_all(
        &small,
        &[
            "Device 04AB373B",
            "1 1A",
            "charging",
            "ORD-1",
            "1m50s/10m00s",
            "180.0 W",
            "20s ago",
            "Power",
            "Frames (2)",
        ],
    );
    key(&mut app, KeyCode::Right);
    key(&mut app, KeyCode::Char('h'));
    let wide = draw(&app, 200, 50);
    assert_contains_all(
        &wide,
        &[
            "▶ Frames",
            "hex on",
            "fcfe0000",
            "heartbeat 0x0000",
            "simulator: connection online",
        ],
    );
    snap("device", &app);
}

#[test]
fn orders_view_and_order_view() {
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Char('4'));
    let small = draw(&app, 80, 24);
    assert_contains_all(
        &small,
        &["ORD-1", "ORD-2", "[all]", "charging 1", "newest first"],
    );
    snap("orders", &app);
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.screen(), &Screen::Order("ORD-1".into()));
    app.apply(Update::Order {
        at_ms: NOW_MS,
        requested_ms: NOW_MS - 10,
        detail: Box::new(order_detail("ORD-1")),
    });
    let small = draw(&app, 80, 24);
    assert_contains_all(
        &small,
        &[
            "Order ORD-1",
            "Settlement",
            "Power · 4 samples",
            "Energy",
            "1m50s",
            "not settled",
            "20s ago",
        ],
    );
    snap("order", &app);
}

#[test]
fn events_view_newest_first_and_paused() {
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Char('5'));
    app.apply(Update::Event(Box::new(event(1, "order.created"))));
    app.apply(Update::Event(Box::new(event(2, "charging.started"))));
    let screen = draw(&app, 80, 24);
    let first = screen.find("charging.started").expect("newest event");
    let second = screen.find("order.created").expect("older event");
    assert!(first < second, "newest first:\n{screen}");
    key(&mut app, KeyCode::Char('p'));
    assert!(draw(&app, 80, 24).contains("PAUSED"));
    snap("events", &app);
}

#[test]
fn help_lists_the_keys() {
    let mut app = loaded_app(true);
    key(&mut app, KeyCode::Char('?'));
    let screen = draw(&app, 80, 24);
    assert_contains_all(&screen, &["Help", "quit", "inject a fault", "x stop"]);
    snap("help", &app);
    key(&mut app, KeyCode::Esc);
    assert!(!draw(&app, 100, 30).contains("Esc closes"));
}

#[test]
fn start_form_shows_the_gateways_400_at_the_field_it_names() {
    let mut app = loaded_app(false);
    let id = open_first_device(&mut app);
    key(&mut app, KeyCode::Down); // port 2
    key(&mut app, KeyCode::Char('s'));
    key(&mut app, KeyCode::Down); // target
    for _ in 0..3 {
        key(&mut app, KeyCode::Backspace);
    }
    type_str(&mut app, "0s");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.take_commands().len(), 1);
    app.apply(Update::Done {
        at_ms: NOW_MS + 100,
        outcome: pile_tui::app::Outcome::Started {
            device: id,
            port: 2,
            result: Err(pile_tui::app::Refusal {
                status: Some(400),
                message: "invalid field `duration`: must be above 0 for mode 1".into(),
            }),
        },
    });
    let screen = draw(&app, 80, 24);
    assert_contains_all(
        &screen,
        &[
            "Start charging 04AB373B",
            "! Duration",
            "HTTP 400: invalid field `duration`",
            "[by time]",
        ],
    );
    snap("start_form", &app);
}

#[test]
fn a_refused_key_while_running_says_so_in_the_banner() {
    let mut app = loaded_app(false);
    app.apply(Update::PollFailed {
        at_ms: NOW_MS + 12_000,
        error: "stats: HTTP 401: missing or invalid API key".into(),
        status: Some(401),
        retry_at_ms: NOW_MS + 16_000,
    });
    let screen = draw(&app, 80, 24);
    assert_contains_all(
        &screen,
        &["API KEY REFUSED", "KEY REFUSED", "last success 12s ago"],
    );
    snap("key_refused", &app);
}

#[test]
fn a_failed_poll_shows_the_disconnected_banner_with_error_and_time_since_success() {
    let mut app = loaded_app(false);
    app.apply(Update::PollFailed {
        at_ms: NOW_MS + 12_000,
        error: "stats: transport: connection refused".into(),
        status: None,
        retry_at_ms: NOW_MS + 16_000,
    });
    let screen = draw(&app, 140, 30);
    assert_contains_all(
        &screen,
        &[
            "DISCONNECTED",
            "connection refused",
            "last success 12s ago",
            "retrying in 4s",
        ],
    );
    apply_snapshot(&mut app, NOW_MS + 16_000, snapshot());
    assert!(matches!(app.conn, Conn::Connected { .. }));
    assert!(!draw(&app, 140, 30).contains("DISCONNECTED"));
}

#[test]
fn tab_markers_read_without_colour() {
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Char('4'));
    let top = draw(&app, 80, 24)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(top.contains("[4 Orders]"), "{top}");
    assert!(!top.contains("[1"), "{top}");
}

#[test]
fn every_view_draws_on_a_tiny_terminal_without_panicking() {
    let mut app = busy_app(BreakerState::HalfOpen);
    app.apply(Update::Problems {
        at_ms: NOW_MS,
        requested_ms: NOW_MS,
        data: Box::new(problem_data()),
    });
    app.apply(Update::Instances {
        at_ms: NOW_MS,
        instances: Some(instances()),
    });
    app.apply(Update::PollFailed {
        at_ms: NOW_MS,
        error: "x".into(),
        status: None,
        retry_at_ms: NOW_MS,
    });
    for k in ['1', '2', '3', '4', '5'] {
        key(&mut app, KeyCode::Char(k));
        for (w, h) in [(1, 1), (10, 3), (30, 8), (200, 60)] {
            draw(&app, w, h);
        }
    }
    open_first_device(&mut app);
    key(&mut app, KeyCode::Char('s'));
    for (w, h) in [(1, 1), (10, 3), (30, 8)] {
        draw(&app, w, h);
    }
}

#[test]
fn a_gateway_that_stops_answering_without_failing_shows_as_no_answer() {
    let mut app = loaded_app(false);
    assert!(draw(&app, 120, 10).contains("connected, 0s ago"));
    app.tick(NOW_MS + 15_000);
    let screen = draw(&app, 120, 10);
    assert!(screen.contains("no answer for 15s"), "{screen}");
}

#[test]
fn the_order_charts_put_seconds_since_the_start_on_x_not_the_minute_counter() {
    // BKV: duration_sec 0, 0, 60, 60 … while `at` moves 30 s per sample.
    let samples = bkv_samples(NOW_S - 300, 11);
    let (power, energy) = pile_tui::ui::charts::progress_points(&samples, Some(NOW_S - 300));
    let xs: Vec<f64> = power.iter().map(|p| p.0).collect();
    assert_eq!(xs, (0..11).map(|i| (i * 30) as f64).collect::<Vec<_>>());
    assert!(
        xs.windows(2).all(|w| w[0] < w[1]),
        "no two samples on one x"
    );
    assert_eq!(energy.last(), Some(&(300.0, 20.0)));
    // Without started_at (never confirmed) the first sample is the origin.
    let (p, _) = pile_tui::ui::charts::progress_points(&samples[3..], None);
    assert_eq!(p[0].0, 0.0);
    // Drawn: the axis ends at the order's elapsed time, 5m00s.
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Char('4'));
    key(&mut app, KeyCode::Enter);
    let mut detail = order_detail("ORD-1");
    detail.order.started_at = Some(NOW_S - 300);
    detail.progress = samples;
    app.apply(Update::Order {
        at_ms: NOW_MS,
        requested_ms: NOW_MS,
        detail: Box::new(detail),
    });
    let screen = draw(&app, 120, 40);
    assert_contains_all(
        &screen,
        &["5m00s", "2m30s", "Power · 11 samples", "now 170.0 W"],
    );
    insta::assert_snapshot!("order_chart_bkv_120x40", screen);
}

#[test]
fn a_finished_order_shows_its_settlement() {
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Char('4'));
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Enter);
    let mut detail = order_detail("ORD-2");
    detail.order = order("ORD-2", "04AB373B", OrderStatus::Completed);
    app.apply(Update::Order {
        at_ms: NOW_MS,
        requested_ms: NOW_MS,
        detail: Box::new(detail),
    });
    let screen = draw(&app, 80, 24);
    assert_contains_all(
        &screen,
        &["completed", "0.03 yuan", "3 remote_stop", "1m30s"],
    );
}

#[test]
fn a_dashboard_just_started_draws_the_fleet_over_five_minutes_not_squeezed_into_thirty() {
    let mut app = loaded_app(false);
    let mut s = snapshot();
    s.stats.as_mut().unwrap().online_devices = 3;
    apply_snapshot(&mut app, NOW_MS + 60_000, s);
    app.tick(NOW_MS + 60_000);
    let screen = draw(&app, 120, 40);
    assert_contains_all(&screen, &["-5m", "-2m30s", "last 1m00s (since start)"]);
    assert!(!screen.contains("-30m"), "{screen}");
    // No legend box over the newest points.
    assert!(!screen.contains("offline│"), "{screen}");
}
