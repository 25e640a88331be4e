//! State changes from keys, polls and events; no drawing unless a text must show.

use crossterm::event::KeyCode;
use pile_api::{charge_mode, ChargeRequest, OrderRef, OrderStatus, Page, PortStatus};
use pile_tui::app::form::Field;
use pile_tui::app::history::RATE_WINDOW_MS;
use pile_tui::app::table::DevCol;
use pile_tui::app::{Command, Modal, Outcome, Refusal, Screen, Tab, EVENT_CAP};
use pile_tui::{App, Update};
use serde_json::json;

use crate::support::*;

#[test]
fn the_devices_filter_matches_id_family_and_state_only() {
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Char('3'));
    assert_eq!(app.visible_devices().len(), 3);
    key(&mut app, KeyCode::Char('/'));
    type_str(&mut app, "520");
    assert!(!app.quit);
    // 82210225000520 by ID; not 82210225000521, whose address ends in :40521, nor the
    // address 127.0.0.1:40520 of the third.
    let ids: Vec<&str> = app
        .visible_devices()
        .iter()
        .map(|d| d.device_id.as_str())
        .collect();
    assert_eq!(ids, vec!["82210225000520"]);
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Char('/'));
    type_str(&mut app, "ap");
    assert_eq!(app.visible_devices()[0].device_id, "04AB373B");
    assert_eq!(app.visible_devices().len(), 1);
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Char('/'));
    type_str(&mut app, "offline");
    assert_eq!(app.visible_devices()[0].device_id, "82210225000521");
    assert_eq!(app.visible_devices().len(), 1);
    key(&mut app, KeyCode::Esc);
    key(&mut app, KeyCode::Char('/'));
    type_str(&mut app, "bkv charging");
    assert_eq!(app.visible_devices().len(), 1, "words combine");
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.visible_devices().len(), 1, "Enter keeps the filter");
    key(&mut app, KeyCode::Char('/'));
    key(&mut app, KeyCode::Esc);
    assert_eq!(app.visible_devices().len(), 3);
}

#[test]
fn sorting_cycles_columns_and_reverses() {
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Char('3'));
    key(&mut app, KeyCode::Char('s')); // family
    key(&mut app, KeyCode::Char('s')); // state, ascending: offline first
    assert_eq!(app.device_sort.col, DevCol::State);
    assert!(!app.visible_devices()[0].online);
    key(&mut app, KeyCode::Char('S'));
    let v = app.visible_devices();
    assert!(v[0].online && v[1].online && !v[2].online);
    assert!(draw(&app, 80, 24).contains("State▼"));
}

#[test]
fn the_fleet_is_walked_page_by_page_and_devices_that_left_are_dropped() {
    let mut app = App::new("http://gw.test", false);
    app.tick(NOW_MS);
    let mk = |ids: std::ops::Range<usize>| -> Vec<pile_api::DeviceView> {
        ids.map(|i| device(&format!("P{i:05}"), "bkv", true))
            .collect()
    };
    for (p, items) in [(1, mk(0..1000)), (2, mk(1000..2000)), (3, mk(2000..2500))] {
        app.apply(Update::DevicePage {
            at_ms: NOW_MS,
            requested_ms: NOW_MS,
            page: Box::new(Page {
                items,
                total: 2500,
                page: p,
                size: 1000,
            }),
        });
    }
    assert_eq!(app.visible_devices().len(), 2500);
    key(&mut app, KeyCode::Char('3'));
    key(&mut app, KeyCode::End);
    assert_eq!(app.visible_devices()[app.device_sel].device_id, "P02499");
    assert!(draw(&app, 80, 24).contains("of 2500"));
    // The fleet shrinks: page 3 is gone and page 2 lost its last 500.
    app.apply(Update::DevicePage {
        at_ms: NOW_MS,
        requested_ms: NOW_MS,
        page: Box::new(Page {
            items: mk(1000..1500),
            total: 1500,
            page: 2,
            size: 1000,
        }),
    });
    assert_eq!(app.visible_devices().len(), 1500);
    assert_eq!(app.device_sel, 1499, "the selection stays in range");
}

#[test]
fn an_event_changes_state_at_once_and_an_older_poll_does_not_undo_it() {
    let mut app = loaded_app(false);
    app.tick(NOW_MS + 1000);
    app.apply(Update::Event(Box::new(event_with(
        "device.offline",
        "82210225000520",
        None,
        NOW_S + 1,
        json!({}),
    ))));
    let d = &app.live.fleet["82210225000520"];
    assert!(!d.online);
    assert!(d.ports.iter().all(|p| p.status == PortStatus::Offline));
    // A poll whose request left before the event still says online: kept out.
    app.apply(Update::DevicePage {
        at_ms: NOW_MS + 1200,
        requested_ms: NOW_MS + 500,
        page: Box::new(device_page()),
    });
    assert!(!app.live.fleet["82210225000520"].online);
    // A poll that left after it wins again.
    app.apply(Update::DevicePage {
        at_ms: NOW_MS + 3000,
        requested_ms: NOW_MS + 2000,
        page: Box::new(device_page()),
    });
    assert!(app.live.fleet["82210225000520"].online);
}

#[test]
fn a_port_state_change_and_progress_arrive_through_the_stream() {
    let mut app = loaded_app(false);
    let id = open_first_device(&mut app);
    app.tick(NOW_MS + 500);
    app.apply(Update::Event(Box::new(event_with(
        "socket.state_changed",
        &id,
        None,
        NOW_S,
        json!({"port_no": 2, "status": "fault", "power_w": 0.0}),
    ))));
    assert_eq!(app.live.fleet[&id].ports[1].status, PortStatus::Fault);
    let before = app.live.samples["ORD-1"].len();
    app.apply(Update::Event(Box::new(event_with(
        "charging.progress",
        &id,
        Some("ORD-1"),
        NOW_S,
        json!({"duration_sec": 60, "energy_wh": 9, "power_w": 201.5, "status": "charging"}),
    ))));
    assert_eq!(app.live.samples["ORD-1"].len(), before + 1);
    assert_eq!(app.live.fleet[&id].ports[0].power_w, 201.5);
    assert_eq!(app.live.orders["ORD-1"].total_kwh, 0.009);
    // The same sample from the next poll is not counted twice.
    let mut detail = device_detail(&id);
    detail.orders[0].1.push(pile_api::ProgressSample {
        at: NOW_S,
        duration_sec: 60,
        energy_wh: 9,
        power_w: 201.5,
        status: "charging".into(),
    });
    app.apply(Update::Device {
        at_ms: NOW_MS + 2000,
        requested_ms: NOW_MS + 1500,
        detail: Box::new(detail),
    });
    assert_eq!(app.live.samples["ORD-1"].len(), before + 1);
}

#[test]
fn order_states_only_move_forward() {
    let mut app = loaded_app(false);
    app.tick(NOW_MS + 1000);
    app.apply(Update::Event(Box::new(event_with(
        "order.completed",
        "82210225000520",
        Some("ORD-1"),
        NOW_S + 1,
        json!({"final_amount": 42, "end_reason": 3, "end_reason_name": "remote_stop", "total_kwh": 0.02}),
    ))));
    let o = &app.live.orders["ORD-1"];
    assert_eq!((o.status, o.final_amount), (OrderStatus::Completed, 42));
    assert_eq!(app.live.fleet["82210225000520"].ports[0].order_no, None);
    // A later poll that still says charging (a replica behind, a slow query) changes nothing.
    apply_snapshot(&mut app, NOW_MS + 5000, snapshot());
    assert_eq!(app.live.orders["ORD-1"].status, OrderStatus::Completed);
}

fn start_request(port: u32) -> ChargeRequest {
    ChargeRequest {
        port_no: port,
        charge_mode: charge_mode::BY_TIME,
        duration: 600,
        amount: 500,
        ..ChargeRequest::default()
    }
}

#[test]
fn the_start_form_builds_the_request_and_parses_only_syntax() {
    let mut app = loaded_app(false);
    let id = open_first_device(&mut app);
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Char('s'));
    assert!(matches!(app.modal, Some(Modal::Start(_))));
    key(&mut app, KeyCode::Enter);
    assert_eq!(
        app.take_commands(),
        vec![Command::Start {
            device: id.clone(),
            request: start_request(2)
        }]
    );
    // The form waits for the answer; a second Enter sends nothing.
    key(&mut app, KeyCode::Enter);
    assert!(app.take_commands().is_empty());
    key(&mut app, KeyCode::Esc);

    // By energy, with prices and an order number.
    key(&mut app, KeyCode::Char('s'));
    key(&mut app, KeyCode::Right); // mode: by energy
    key(&mut app, KeyCode::Down); // target
    key(&mut app, KeyCode::Backspace);
    key(&mut app, KeyCode::Backspace);
    key(&mut app, KeyCode::Backspace);
    key(&mut app, KeyCode::Backspace);
    type_str(&mut app, "1.5kWh");
    key(&mut app, KeyCode::Down); // amount
    type_str(&mut app, "0"); // 5.000: three decimals
    key(&mut app, KeyCode::Enter);
    let Some(Modal::Start(form)) = &app.modal else {
        panic!("the form stays open")
    };
    assert_eq!(
        form.error.as_ref().and_then(|e| e.field),
        Some(Field::Amount)
    );
    assert!(
        app.take_commands().is_empty(),
        "nothing sent that cannot be read"
    );
    key(&mut app, KeyCode::Backspace);
    key(&mut app, KeyCode::Down);
    type_str(&mut app, "1.50");
    key(&mut app, KeyCode::Down);
    type_str(&mut app, "0.5");
    key(&mut app, KeyCode::Down);
    type_str(&mut app, "my-order-7");
    key(&mut app, KeyCode::Enter);
    assert_eq!(
        app.take_commands(),
        vec![Command::Start {
            device: id,
            request: ChargeRequest {
                port_no: 2,
                charge_mode: charge_mode::BY_ENERGY,
                energy_wh: 1500,
                amount: 500,
                price_per_kwh: 150,
                service_fee: 50,
                order_no: Some("my-order-7".into()),
                ..ChargeRequest::default()
            }
        }]
    );
}

fn started(app: &mut App, device: &str, port: u32, at_ms: i64, result: Result<OrderRef, Refusal>) {
    app.apply(Update::Done {
        at_ms,
        outcome: Outcome::Started {
            device: device.into(),
            port,
            result,
        },
    });
}

#[test]
fn a_start_is_followed_to_charging_from_the_stream() {
    let mut app = loaded_app(false);
    let id = open_first_device(&mut app);
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Char('s'));
    key(&mut app, KeyCode::Enter);
    app.take_commands();
    assert!(pile_tui::ui::status_text(&app)
        .unwrap()
        .0
        .contains("starting"));
    started(
        &mut app,
        &id,
        2,
        NOW_MS + 200,
        Ok(OrderRef {
            order_no: "ORD-9".into(),
            device_id: id.clone(),
            port_no: 2,
            status: OrderStatus::Pending,
        }),
    );
    assert!(app.modal.is_none(), "the form closes on success");
    assert_eq!(app.focus().followed, vec!["ORD-9".to_string()]);
    // The poller fetches the followed order …
    let mut o = order("ORD-9", &id, OrderStatus::Pending);
    o.port_no = 2;
    app.apply(Update::Followed {
        at_ms: NOW_MS + 1000,
        requested_ms: NOW_MS + 900,
        orders: vec![o],
    });
    let (text, error) = pile_tui::ui::status_text(&app).unwrap();
    assert!(
        text.contains("ORD-9") && text.contains("pending, waiting for the pile"),
        "{text}"
    );
    assert!(!error);
    // … and the stream says it started.
    app.tick(NOW_MS + 4000);
    app.apply(Update::Event(Box::new(event_with(
        "charging.started",
        &id,
        Some("ORD-9"),
        NOW_S + 4,
        json!({"started_at": NOW_S + 4}),
    ))));
    let (text, error) = pile_tui::ui::status_text(&app).unwrap();
    assert!(
        text.ends_with("ORD-9 on 04AB373B port 2: charging"),
        "{text}"
    );
    assert!(!error);
    assert!(app.focus().followed.is_empty(), "no longer fetched");
    // Elapsed is computed from started_at, while no sample came yet.
    app.tick(NOW_MS + 64_000);
    assert_eq!(
        pile_tui::app::table::elapsed_sec(&app.live.orders["ORD-9"], app.now_s()),
        60
    );
}

#[test]
fn a_start_the_pile_refuses_ends_as_failed_with_the_reason() {
    let mut app = loaded_app(false);
    let id = open_first_device(&mut app);
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Char('s'));
    key(&mut app, KeyCode::Enter);
    started(
        &mut app,
        &id,
        2,
        NOW_MS + 200,
        Ok(OrderRef {
            order_no: "ORD-9".into(),
            device_id: id.clone(),
            port_no: 2,
            status: OrderStatus::Pending,
        }),
    );
    let mut o = order("ORD-9", &id, OrderStatus::Failed);
    o.end_reason = Some(12);
    o.end_reason_name = Some("start_refused".into());
    o.end_reason_text = Some("设备拒绝".into());
    app.apply(Update::Followed {
        at_ms: NOW_MS + 2000,
        requested_ms: NOW_MS + 1900,
        orders: vec![o],
    });
    let (text, error) = pile_tui::ui::status_text(&app).unwrap();
    assert!(error);
    assert!(
        text.contains("failed (reason 12 start_refused: 设备拒绝)"),
        "{text}"
    );
}

#[test]
fn a_refused_start_request_keeps_the_form_open_with_the_field_marked() {
    let mut app = loaded_app(false);
    let id = open_first_device(&mut app);
    key(&mut app, KeyCode::Char('s'));
    key(&mut app, KeyCode::Enter);
    started(
        &mut app,
        &id,
        1,
        NOW_MS + 200,
        Err(Refusal {
            status: Some(409),
            message: "port is busy".into(),
        }),
    );
    let Some(Modal::Start(form)) = &app.modal else {
        panic!("the form stays open");
    };
    assert_eq!(form.error.as_ref().and_then(|e| e.field), Some(Field::Port));
    assert!(!form.submitting, "can be sent again");
    assert!(app.follows.is_empty());
}

#[test]
fn a_stop_is_followed_to_the_settlement_and_never_stays_on_stopping() {
    let mut app = loaded_app(false);
    let id = open_first_device(&mut app);
    key(&mut app, KeyCode::Char('x'));
    assert!(app.take_commands().is_empty(), "nothing before y");
    key(&mut app, KeyCode::Char('y'));
    assert_eq!(
        app.take_commands(),
        vec![Command::Stop {
            device: id.clone(),
            port: 1,
            order_no: Some("ORD-1".into())
        }]
    );
    let stop_ok = Outcome::Stopped {
        device: id.clone(),
        port: 1,
        result: Ok(OrderRef {
            order_no: "ORD-1".into(),
            device_id: id.clone(),
            port_no: 1,
            status: OrderStatus::Charging,
        }),
    };
    app.apply(Update::Done {
        at_ms: NOW_MS + 100,
        outcome: stop_ok.clone(),
    });
    assert!(pile_tui::ui::status_text(&app)
        .unwrap()
        .0
        .contains("stopping ORD-1"));
    app.tick(NOW_MS + 3000);
    app.apply(Update::Event(Box::new(event_with(
        "order.completed",
        &id,
        Some("ORD-1"),
        NOW_S + 3,
        json!({"final_amount": 123, "total_kwh": 0.5, "end_reason": 3, "end_reason_name": "remote_stop"}),
    ))));
    let (text, error) = pile_tui::ui::status_text(&app).unwrap();
    assert!(!error);
    assert!(
        text.contains("stopped, 0.500 kWh, 1.23 yuan (reason 3 remote_stop)"),
        "{text}"
    );

    // A pile that never answers: after the deadline the line says so, with the order's state.
    let mut app = loaded_app(false);
    let id = open_first_device(&mut app);
    key(&mut app, KeyCode::Char('x'));
    key(&mut app, KeyCode::Char('y'));
    app.apply(Update::Done {
        at_ms: NOW_MS + 100,
        outcome: stop_ok,
    });
    app.tick(NOW_MS + 61_000);
    let (text, error) = pile_tui::ui::status_text(&app).unwrap();
    assert!(error);
    assert!(
        text.contains("stop not confirmed after 1m01s, the order is still charging"),
        "{text}"
    );
    assert_eq!(id, "04AB373B");
    app.tick(NOW_MS + 80_000);
    assert!(app.follows.is_empty(), "the outcome goes after a while");
}

#[test]
fn problems_fixes_are_keys_on_their_rows() {
    let mut app = busy_app(pile_api::BreakerState::Open);
    app.apply(Update::Problems {
        at_ms: NOW_MS,
        requested_ms: NOW_MS,
        data: Box::new(problem_data()),
    });
    key(&mut app, KeyCode::Char('2'));
    assert!(app.focus().problems);
    // Row 0: the webhook breaker → t.
    key(&mut app, KeyCode::Char('x'));
    assert!(app.modal.is_none(), "x does nothing on a webhook row");
    key(&mut app, KeyCode::Char('t'));
    assert_eq!(app.take_commands(), vec![Command::TestWebhook]);
    // Row 1: the stuck order → x, confirmed.
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Char('x'));
    key(&mut app, KeyCode::Char('y'));
    assert_eq!(
        app.take_commands(),
        vec![Command::Stop {
            device: "04AB373B".into(),
            port: 3,
            order_no: Some("ORD-STUCK".into())
        }]
    );
    // Next rows: the dead letter → r replays.
    let dead = app
        .problems()
        .iter()
        .position(|p| p.kind == "dead letter")
        .unwrap();
    while app.problem_sel < dead {
        key(&mut app, KeyCode::Down);
    }
    key(&mut app, KeyCode::Char('r'));
    key(&mut app, KeyCode::Char('y'));
    assert_eq!(
        app.take_commands(),
        vec![Command::Replay {
            event_id: "ev-dead-1".into()
        }]
    );
    // The failed order → s opens the start form as it asked.
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Char('s'));
    let Some(Modal::Start(form)) = &app.modal else {
        panic!("retry opens the form");
    };
    assert_eq!(
        (
            form.device.as_str(),
            form.port.as_str(),
            form.amount.as_str()
        ),
        ("82210225000520", "1", "5.00")
    );
    key(&mut app, KeyCode::Esc);
    // Enter opens what the row is about.
    key(&mut app, KeyCode::Enter);
    assert_eq!(app.screen(), &Screen::Order("ORD-FAIL".into()));
}

#[test]
fn rates_are_over_a_60_s_window_not_between_two_bursty_scrapes() {
    let app = busy_app(pile_api::BreakerState::Closed);
    let h = &app.history;
    // 50 heartbeats every 11 s: 4.55/s. Scrapes every 2 s see a burst or nothing; over
    // 60 s the rate stays between 4 and 5.
    let settled: Vec<f64> = h
        .heartbeats_per_sec
        .iter()
        .filter(|(t, _)| *t >= NOW_MS - 29 * 60_000)
        .map(|(_, v)| *v)
        .collect();
    assert!(settled.len() > 800);
    assert!(
        settled.iter().all(|v| (4.0..=5.1).contains(v)),
        "{:?}",
        settled
            .iter()
            .cloned()
            .fold((f64::MAX, 0.0f64), |(a, b), v| (a.min(v), b.max(v)))
    );
    assert_eq!(h.rate_span_ms(), RATE_WINDOW_MS);
    // p99 over the window: every request under 5 ms.
    assert_eq!(h.api_p99_ms.back().map(|p| p.1), Some(5.0));
    // The fleet chart keeps 30 minutes, with the pile that went offline.
    assert!(h.online.front().unwrap().0 >= NOW_MS - 30 * 60_000);
    assert_eq!(h.offline.back().unwrap().1, 1.0);
    assert_eq!(h.online.front().unwrap().1, 3.0);
}

#[test]
fn a_gateway_restart_starts_the_rate_window_again() {
    let mut app = loaded_app(false);
    let mut snap = snapshot();
    snap.metrics = Some(pile_tui::prom::parse("heartbeats_total 160\n"));
    apply_snapshot(&mut app, NOW_MS + 10_000, snap);
    assert_eq!(
        app.history.heartbeats_per_sec.back().map(|p| p.1),
        Some(6.0)
    );
    let mut snap = snapshot();
    snap.metrics = Some(pile_tui::prom::parse("heartbeats_total 3\n"));
    apply_snapshot(&mut app, NOW_MS + 12_000, snap);
    assert_eq!(
        app.history.heartbeats_per_sec.back().map(|p| p.1),
        Some(6.0),
        "no negative or bogus rate"
    );
    let mut snap = snapshot();
    snap.metrics = Some(pile_tui::prom::parse("heartbeats_total 13\n"));
    apply_snapshot(&mut app, NOW_MS + 14_000, snap);
    assert_eq!(
        app.history.heartbeats_per_sec.back().map(|p| p.1),
        Some(5.0)
    );
}

#[test]
fn tab_and_number_keys_switch_views_and_esc_goes_back_from_a_detail() {
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Tab);
    assert_eq!(app.screen(), &Screen::Tab(Tab::Problems));
    key(&mut app, KeyCode::BackTab);
    key(&mut app, KeyCode::BackTab);
    assert_eq!(app.screen(), &Screen::Tab(Tab::Events));
    key(&mut app, KeyCode::Char('3'));
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
fn the_frame_list_scrolls_when_focused() {
    let mut app = loaded_app(false);
    open_first_device(&mut app);
    key(&mut app, KeyCode::Down);
    assert_eq!((app.port_sel, app.frame_sel), (1, 0));
    key(&mut app, KeyCode::Right);
    key(&mut app, KeyCode::Down);
    key(&mut app, KeyCode::Down);
    assert_eq!(
        (app.port_sel, app.frame_sel),
        (1, 1),
        "clamped at the last frame"
    );
    assert_eq!(app.frames()[app.frame_sel].summary, "start charging port 1");
    key(&mut app, KeyCode::Char('h'));
    assert!(app.show_hex);
}

#[test]
fn the_event_list_keeps_only_the_newest_events() {
    let mut app = loaded_app(false);
    for n in 0..EVENT_CAP + 50 {
        app.apply(Update::Event(Box::new(event(n, "charging.progress"))));
    }
    assert_eq!(app.events.len(), EVENT_CAP);
    assert_eq!(app.events.front().unwrap().event_id, "ev-50");
}

#[test]
fn pause_stops_appending_and_resume_adds_what_was_held() {
    let mut app = loaded_app(false);
    key(&mut app, KeyCode::Char('5'));
    app.apply(Update::Event(Box::new(event(1, "order.created"))));
    key(&mut app, KeyCode::Char('p'));
    app.apply(Update::Event(Box::new(event(2, "order.confirmed"))));
    app.apply(Update::Event(Box::new(event(3, "charging.started"))));
    assert_eq!((app.events.len(), app.held.len()), (1, 2));
    key(&mut app, KeyCode::Char('p'));
    assert_eq!(app.events.len(), 3);
    assert_eq!(app.events.back().unwrap().event_id, "ev-3");
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
    key(&mut app, KeyCode::Char('4'));
    assert_eq!(app.visible_orders().len(), 2);
    key(&mut app, KeyCode::Right);
    key(&mut app, KeyCode::Right);
    assert_eq!(app.order_status, Some(OrderStatus::Charging));
    assert_eq!(app.focus().order_status, Some(OrderStatus::Charging));
    assert_eq!(app.visible_orders().len(), 1);
}

#[test]
fn a_detail_for_another_device_than_the_open_one_is_ignored() {
    let mut app = loaded_app(false);
    open_first_device(&mut app);
    let before = app.device_extra.clone();
    app.apply(Update::Device {
        at_ms: NOW_MS,
        requested_ms: NOW_MS,
        detail: Box::new(device_detail("SOMETHING-ELSE")),
    });
    assert_eq!(app.device_extra, before);
    assert!(!app.live.fleet.contains_key("SOMETHING-ELSE"));
}
