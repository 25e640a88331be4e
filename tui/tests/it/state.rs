use crossterm::event::KeyCode;
use pile_api::OrderStatus;
use pile_tui::app::{Command, Modal, Screen, Tab, EVENT_CAP};
use pile_tui::Update;

use crate::support::*;

#[test]
fn a_filter_narrows_the_devices_table_and_esc_clears_it() {
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Char('2'));
    assert_eq!(app.visible_devices().len(), 3);
    key(&mut app, KeyCode::Char('/'));
    type_str(&mut app, "ap3");
    // `q` typed into the filter must not quit.
    assert!(!app.quit);
    assert_eq!(app.visible_devices().len(), 1);
    assert_eq!(app.visible_devices()[0].device_id, "04AB373B");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.visible_devices().len(), 1, "Enter keeps the filter");
    key(&mut app, KeyCode::Char('/'));
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.visible_devices().len(), 3);
}

#[test]
fn sort_by_online_puts_online_devices_first() {
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Char('2'));
    key(&mut app, KeyCode::Char('s')); // family
    key(&mut app, KeyCode::Char('s')); // online first
    let v = app.visible_devices();
    assert!(v[0].online && v[1].online && !v[2].online);
}

#[test]
fn tab_and_number_keys_switch_views_and_esc_goes_back_from_a_detail() {
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.screen(), &Screen::Tab(Tab::Devices));
    key(&mut app, KeyCode::BackTab);
    key(&mut app, KeyCode::BackTab);
    assert_eq!(app.screen(), &Screen::Tab(Tab::Events));
    key(&mut app, KeyCode::Char('2'));
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Enter);
    assert!(matches!(app.screen(), Screen::Device(_)));
    assert!(app.focus().device.is_some());
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.screen(), &Screen::Tab(Tab::Devices));
    assert_eq!(app.focus().device, None);
    key(&mut app, KeyCode::Char('q'));
    assert!(app.quit);
}

#[test]
fn the_event_list_keeps_only_the_newest_events() {
    let mut app = loaded_app(false);
    for n in 0..EVENT_CAP + 50 {
        app.apply(Update::Event(Box::new(event(n, "charging.progress"))));
    }
    assert_eq!(app.events.len(), EVENT_CAP);
    assert_eq!(app.events.front().unwrap().event_id, "ev-50");
    assert_eq!(
        app.events.back().unwrap().event_id,
        format!("ev-{}", EVENT_CAP + 49)
    );
}

#[test]
fn pause_stops_appending_and_resume_adds_what_was_held() {
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Char('4'));
    app.apply(Update::Event(Box::new(event(1, "order.created"))));
    key(&mut app, KeyCode::Char('p'));
    assert!(app.paused);
    app.apply(Update::Event(Box::new(event(2, "order.confirmed"))));
    app.apply(Update::Event(Box::new(event(3, "charging.started"))));
    assert_eq!(app.events.len(), 1, "paused: nothing appended");
    assert_eq!(app.held.len(), 2);
    key(&mut app, KeyCode::Char('p'));
    assert!(!app.paused);
    assert_eq!(app.events.len(), 3);
    assert_eq!(app.events.back().unwrap().event_id, "ev-3");
}

#[test]
fn scrolling_back_stays_on_the_same_event_while_new_ones_arrive() {
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Char('4'));
    for n in 0..5 {
        app.apply(Update::Event(Box::new(event(n, "x"))));
    }
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Down);
    assert_eq!(app.visible_events()[app.event_scroll].event_id, "ev-2");
    app.apply(Update::Event(Box::new(event(5, "x"))));
    assert_eq!(app.visible_events()[app.event_scroll].event_id, "ev-2");
}

fn open_first_device(app: &mut pile_tui::App) -> String {
    key(app, KeyCode::Char('2'));
    key(app, KeyCode::Enter);
    let Screen::Device(id) = app.screen().clone() else {
        panic!("not on a device screen");
    };
    app.apply(Update::Device {
        at_ms: NOW_MS,
        detail: Box::new(device_detail(&id)),
    });
    id
}

#[test]
fn start_and_stop_are_only_emitted_after_y_and_n_cancels() {
    let mut app = loaded_app(false);
    let id = open_first_device(&mut app);
    key(&mut app, KeyCode::Down); // port 2
    key(&mut app, KeyCode::Char('s'));
    assert!(matches!(app.modal, Some(Modal::Confirm(_))));
    assert!(app.take_commands().is_empty(), "nothing before the answer");
    key(&mut app, KeyCode::Char('n'));
    assert!(app.modal.is_none());
    assert!(app.take_commands().is_empty(), "n cancels");

    key(&mut app, KeyCode::Char('s'));
    key(&mut app, KeyCode::Char('y'));
    assert_eq!(
        app.take_commands(),
        vec![Command::Start {
            device: id.clone(),
            port: 2
        }]
    );

    key(&mut app, KeyCode::Up); // port 1, charging ORD-1
    key(&mut app, KeyCode::Char('x'));
    assert!(app.take_commands().is_empty());
    let screen = draw(&app, 100, 30);
    assert!(screen.contains("Stop charging"), "{screen}");
    key(&mut app, KeyCode::Char('y'));
    assert_eq!(
        app.take_commands(),
        vec![Command::Stop {
            device: id,
            port: 1,
            order_no: Some("ORD-1".into())
        }]
    );
}

#[test]
fn simulator_keys_need_sim_and_then_emit_commands() {
    let mut app = loaded_app(false);
    open_first_device(&mut app);
    key(&mut app, KeyCode::Char('u'));
    assert!(app.take_commands().is_empty());
    assert!(app.status.as_ref().unwrap().text.contains("--sim"));

    let mut app = loaded_app(true);
    let id = open_first_device(&mut app);
    key(&mut app, KeyCode::Char('u'));
    key(&mut app, KeyCode::Char('n'));
    key(&mut app, KeyCode::Char('r'));
    key(&mut app, KeyCode::Char('f'));
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Enter);
    assert_eq!(
        app.take_commands(),
        vec![
            Command::Unplug {
                device: id.clone(),
                port: 1
            },
            Command::CutNetwork { device: id.clone() },
            Command::RestoreNetwork { device: id.clone() },
            Command::Fault {
                device: id,
                kind: "bad_checksum".into(),
                secs: 30
            },
        ]
    );
}

#[test]
fn the_orders_status_bar_narrows_the_table_and_feeds_the_poller() {
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Char('3'));
    assert_eq!(app.visible_orders().len(), 2);
    key(&mut app, KeyCode::Right); // pending
    key(&mut app, KeyCode::Right); // charging
    assert_eq!(app.order_status, Some(OrderStatus::Charging));
    assert_eq!(app.focus().order_status, Some(OrderStatus::Charging));
    assert_eq!(app.visible_orders().len(), 1);
    assert_eq!(app.visible_orders()[0].order_no, "ORD-1");
}

#[test]
fn a_detail_for_another_device_than_the_open_one_is_ignored() {
    let mut app = loaded_app(false);
    open_first_device(&mut app);
    let before = app.device_detail.clone();
    app.apply(Update::Device {
        at_ms: NOW_MS,
        detail: Box::new(device_detail("SOMETHING-ELSE")),
    });
    assert_eq!(app.device_detail, before);
}

#[test]
fn heartbeat_rate_and_api_p99_come_from_consecutive_metric_scrapes() {
    let mut app = loaded_app(false);
    let mut snap = snapshot();
    snap.metrics = Some(pile_tui::prom::parse(
        "heartbeats_total{protocol=\"bkv\"} 120\n\
         http_request_duration_seconds_bucket{route=\"/a\",le=\"0.005\"} 100\n\
         http_request_duration_seconds_bucket{route=\"/a\",le=\"+Inf\"} 100\n",
    ));
    app.apply(Update::Snapshot {
        at_ms: NOW_MS + 2000,
        snapshot: Box::new(snap),
    });
    assert_eq!(app.history.heartbeats_per_sec_now, Some(10.0));
    assert_eq!(app.history.api_p99_ms_now, Some(5.0));
    assert_eq!(app.history.online.len(), 2);
}
