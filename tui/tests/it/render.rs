use crossterm::event::KeyCode;
use pile_tui::app::{Conn, Screen};
use pile_tui::{App, Update};

use crate::support::*;

#[test]
fn before_the_first_snapshot_the_overview_says_it_is_loading() {
    let mut app = App::new("http://gw.test:7055", false);
    app.tick(NOW_MS);
    let screen = draw(&app, 100, 30);
    assert!(screen.contains("Loading"), "{screen}");
    assert!(screen.contains("connecting"), "{screen}");
}

#[test]
fn overview_shows_pile_counts_orders_by_status_and_sparklines() {
    let app = loaded_app(false);
    let screen = draw(&app, 120, 32);
    for text in [
        "1 Overview",
        "Piles online",
        "Piles total",
        "Webhook backlog",
        "99.5 %",
        "Orders by status",
        "completed",
        "online piles",
        "API p99",
        "connected",
    ] {
        assert!(screen.contains(text), "missing {text:?} in\n{screen}");
    }
    assert!(!screen.contains("DISCONNECTED"), "{screen}");
}

#[test]
fn devices_view_lists_a_row_per_device_with_family_and_ports() {
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Char('2'));
    let screen = draw(&app, 120, 20);
    assert!(screen.contains("Devices"), "{screen}");
    let row = screen
        .lines()
        .find(|l| l.contains("82210225000520"))
        .expect("a device row");
    assert!(row.contains("bkv") && row.contains("online"), "{row}");
    assert!(row.contains("1 charging, 1 idle"), "{row}");
    assert!(screen.contains("04AB373B"), "{screen}");
    assert!(screen.contains("3 shown of 3"), "{screen}");
}

#[test]
fn device_view_shows_ports_gauges_running_order_and_frames() {
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Char('2'));
    key(&mut app, KeyCode::Enter);
    let id = match app.screen() {
        Screen::Device(id) => id.clone(),
        other => panic!("not on a device screen: {other:?}"),
    };
    assert!(draw(&app, 120, 30).contains("Loading"));
    app.apply(Update::Device {
        at_ms: NOW_MS,
        detail: Box::new(device_detail(&id)),
    });
    let screen = draw(&app, 120, 30);
    for text in [
        &format!("Device {id}"),
        "port 1",
        "charging",
        "order ORD-1",
        "180.5 W",
        "0.012 kWh",
        "Recent frames (1)",
        "heartbeat 0x0000",
        "fcfe0000",
        "simulator: connection online",
    ] {
        assert!(screen.contains(text), "missing {text:?} in\n{screen}");
    }
}

#[test]
fn orders_view_and_order_view_show_status_power_curve_and_settlement() {
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Char('3'));
    let screen = draw(&app, 120, 20);
    assert!(
        screen.contains("ORD-1") && screen.contains("ORD-2"),
        "{screen}"
    );
    assert!(screen.contains("charging 1"), "{screen}");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.screen(), &Screen::Order("ORD-1".into()));
    app.apply(Update::Order {
        at_ms: NOW_MS,
        detail: Box::new(order_detail("ORD-1")),
    });
    let screen = draw(&app, 120, 30);
    for text in [
        "Order ORD-1",
        "Settlement",
        "Power curve",
        "10 samples",
        "not settled",
    ] {
        assert!(screen.contains(text), "missing {text:?} in\n{screen}");
    }
}

#[test]
fn events_view_shows_the_stream_newest_first_and_the_pause_state() {
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Char('4'));
    app.apply(Update::Event(Box::new(event(1, "order.created"))));
    app.apply(Update::Event(Box::new(event(2, "charging.started"))));
    let screen = draw(&app, 100, 20);
    let first = screen.find("charging.started").expect("newest event");
    let second = screen.find("order.created").expect("older event");
    assert!(first < second, "newest first:\n{screen}");
    assert!(screen.contains("live"), "{screen}");
    key(&mut app, KeyCode::Char('p'));
    assert!(draw(&app, 100, 20).contains("PAUSED"));
}

#[test]
fn a_failed_poll_shows_the_disconnected_banner_with_error_and_time_since_success() {
    let mut app = loaded_app(false);
    app.apply(Update::PollFailed {
        at_ms: NOW_MS + 12_000,
        error: "stats: transport: connection refused".into(),
        retry_at_ms: NOW_MS + 16_000,
    });
    let screen = draw(&app, 140, 30);
    assert!(screen.contains("DISCONNECTED"), "{screen}");
    assert!(screen.contains("connection refused"), "{screen}");
    assert!(screen.contains("last success 12s ago"), "{screen}");
    assert!(screen.contains("retrying in 4s"), "{screen}");
    // The next success clears it.
    app.apply(Update::Snapshot {
        at_ms: NOW_MS + 16_000,
        snapshot: Box::new(snapshot()),
    });
    assert!(matches!(app.conn, Conn::Connected { .. }));
    assert!(!draw(&app, 140, 30).contains("DISCONNECTED"));
}

#[test]
fn help_lists_the_keys_and_closes_with_esc() {
    let mut app = loaded_app(true);
    key(&mut app, KeyCode::Char('?'));
    let screen = draw(&app, 100, 30);
    assert!(screen.contains("Help"), "{screen}");
    assert!(screen.contains("quit"), "{screen}");
    assert!(screen.contains("inject a fault"), "{screen}");
    key(&mut app, KeyCode::Esc);
    assert!(!draw(&app, 100, 30).contains("Esc closes"));
}

#[test]
fn every_view_draws_on_a_tiny_terminal_without_panicking() {
    let mut app = loaded_app(true);
    app.apply(Update::PollFailed {
        at_ms: NOW_MS,
        error: "x".into(),
        retry_at_ms: NOW_MS,
    });
    for k in ['1', '2', '3', '4'] {
        key(&mut app, KeyCode::Char(k));
        for (w, h) in [(1, 1), (10, 3), (30, 8), (200, 60)] {
            draw(&app, w, h);
        }
    }
    key(&mut app, KeyCode::Char('2'));
    key(&mut app, KeyCode::Enter);
    app.apply(Update::Device {
        at_ms: NOW_MS,
        detail: Box::new(device_detail("04AB373B")),
    });
    key(&mut app, KeyCode::Char('?'));
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
    assert!(!screen.contains("connected,"), "{screen}");
}

#[test]
fn a_detail_the_gateway_does_not_know_is_a_notice_not_a_disconnection() {
    let mut app = loaded_app(false);
    app.apply(Update::Notice {
        at_ms: NOW_MS + 1000,
        message: "device X: HTTP 404: device X not found".into(),
        error: true,
    });
    let screen = draw(&app, 120, 20);
    assert!(screen.contains("HTTP 404"), "{screen}");
    assert!(!screen.contains("DISCONNECTED"), "{screen}");
}
