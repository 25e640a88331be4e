//! Both device families end to end over loopback.

use std::time::Duration;

use crate::piles::{ApPile, BkvPile};
use crate::*;
use pile_api::OrderStatus;
use pile_protocol::{ap3000, bkv};
use serde_json::json;

async fn wait_status(app: &TestApp, order_no: &str, want: OrderStatus) -> pile_api::OrderView {
    eventually(|| async {
        let o = app.client.order(order_no).await.ok()?;
        (o.status == want).then_some(o)
    })
    .await
}

async fn wait_online(app: &TestApp, device_id: &str, want: bool) {
    eventually(|| async {
        let d = app.client.device(device_id).await.ok()?;
        (d.online == want).then_some(())
    })
    .await
}

fn start_of(frame: &ap3000::Frame) -> &ap3000::StartStop {
    match &frame.message {
        ap3000::Message::StartStop(s) => s,
        other => panic!("expected 0x82, got {other:?}"),
    }
}

both!(
    an_ap3000_pile_registers_heartbeats_and_gets_the_time,
    |app: TestApp| async move {
        let mut pile = ApPile::connect(app.device_addr, "04AB373B").await;
        pile.send_raw(b"89860412345678901234").await; // ICCID preamble
        pile.boot(4).await;
        let id = pile.next_id();
        pile.send(ap3000::Frame::new(
            pile.id,
            id,
            ap3000::Message::TimeRequest,
        ))
        .await;
        let t = pile.expect().await;
        let ap3000::Message::TimeReply { unix_time } = t.message else {
            panic!("{t:?}")
        };
        assert!(i64::from(unix_time) > 1_700_000_000);
        assert_eq!(t.message_id, id, "replies echo the message ID");
        let d = app.client.device("04AB373B").await.unwrap();
        assert!(d.online);
        assert_eq!((d.protocol.as_str(), d.ports.len()), ("ap3000", 4));
        let frames = app.client.frames("04AB373B").await.unwrap();
        assert!(frames
            .iter()
            .any(|f| f.direction == pile_api::Direction::Up && f.summary.contains("register")));
        assert!(frames
            .iter()
            .any(|f| f.direction == pile_api::Direction::Down));
    }
);

both_clocked!(
    an_ap3000_charge_runs_to_completion_with_duration_energy_money_and_reason,
    |app: TestApp, clock: pile_server::clock::Clock| async move {
        let mut pile = ApPile::connect(app.device_addr, "04AB373B").await;
        pile.boot(4).await;
        let v = envelope(
            app.charge(
                "04AB373B",
                json!({"port_no": 2, "charge_mode": 1, "duration": 2,
        "amount": 500, "price_per_kwh": 150, "service_fee": 50, "order_no": "ap-1"}),
            )
            .await,
            200,
        )
        .await;
        assert_eq!(v["data"]["status"], "pending");

        let cmd = pile.expect().await;
        let start = start_of(&cmd).clone();
        assert_eq!(
            (start.port, start.command, start.duration_s()),
            (1, 1, Some(2)),
            "port 2 is wire port 1"
        );
        // Second port: 409.
        let busy = envelope(
            app.charge(
                "04AB373B",
                json!({"port_no": 2, "charge_mode": 1, "amount": 0, "duration": 60}),
            )
            .await,
            409,
        )
        .await;
        assert!(busy["message"].as_str().unwrap().contains("port is busy"));

        pile.send(ap3000::Frame::start_stop_reply(
            pile.id,
            cmd.message_id,
            ap3000::StartResult::DONE,
            start.order_no,
            1,
        ))
        .await;
        wait_status(&app, "ap-1", OrderStatus::Charging).await;
        let ph = pile.power_heartbeat(1, start.order_no, 1, 6, 1800);
        pile.send(ph).await;
        eventually(|| async { (app.client.progress("ap-1").await.ok()?.len() == 1).then_some(()) })
            .await;

        // Two seconds of charging by the gateway's clock.
        clock.advance_ms(2_000);
        // 0.123 kWh: the device counts 0.01 kWh, so 12 → 0.12 kWh.
        let end = pile.settlement(500, 1, start.order_no, 2, 12, 3);
        pile.send(end.clone()).await;
        let ack = pile.expect().await;
        assert!(matches!(
            ack.message,
            ap3000::Message::Ack { command: 0x03, .. }
        ));
        assert_eq!(ack.message_id, 500);
        let o = wait_status(&app, "ap-1", OrderStatus::Completed).await;
        assert_eq!(o.duration_sec, 2);
        assert_eq!(o.total_kwh, 0.12);
        // 0.12 × 150 = 18, 0.12 × 50 = 6.
        assert_eq!(
            (o.energy_fee, o.service_fee_amount, o.final_amount),
            (18, 6, 24)
        );
        assert_eq!(
            (o.end_reason, o.end_reason_name.as_deref()),
            (Some(1), Some("target_reached"))
        );
        assert_eq!(o.peak_power, 250.0);

        // The device resends its settlement (ack lost): acknowledged again, settled once.
        pile.send(end).await;
        let ack = pile.expect().await;
        assert!(matches!(
            ack.message,
            ap3000::Message::Ack { command: 0x03, .. }
        ));
        assert_eq!(app.service.store.settlement_count("ap-1").await.unwrap(), 1);
        assert_eq!(
            app.service.store.end_report_counts("ap-1").await.unwrap(),
            (2, 1)
        );
        let c = app.client.consistency().await.unwrap();
        assert_eq!(c.commands.match_rate, 1.0);
    }
);

both!(
    an_ap3000_remote_stop_carries_the_order_number_and_settles_with_reason_3,
    |app: TestApp| async move {
        let mut pile = ApPile::connect(app.device_addr, "04AB373B").await;
        pile.boot(2).await;
        envelope(
            app.charge(
                "04AB373B",
                json!({"port_no": 1, "charge_mode": 1, "amount": 0, "duration": 600, "order_no": "ap-stop"}),
            )
            .await,
            200,
        )
        .await;
        let cmd = pile.expect().await;
        let start = start_of(&cmd).clone();
        pile.send(ap3000::Frame::start_stop_reply(
            pile.id,
            cmd.message_id,
            ap3000::StartResult::DONE,
            start.order_no,
            0,
        ))
        .await;
        wait_status(&app, "ap-stop", OrderStatus::Charging).await;

        envelope(
            app.post("/api/v1/third/devices/04AB373B/stop", json!({"port_no": 1}))
                .send()
                .await
                .unwrap(),
            200,
        )
        .await;
        let stop_cmd = pile.expect().await;
        let stop = start_of(&stop_cmd).clone();
        assert_eq!(
            (stop.command, stop.order_no),
            (0, start.order_no),
            "a stop carries the running order's number"
        );
        pile.send(ap3000::Frame::start_stop_reply(
            pile.id,
            stop_cmd.message_id,
            ap3000::StartResult::DONE,
            start.order_no,
            0,
        ))
        .await;
        let end = pile.settlement(77, 0, start.order_no, 1, 1, 7);
        pile.send(end).await;
        let _ack = pile.expect().await;
        let o = wait_status(&app, "ap-stop", OrderStatus::Completed).await;
        assert_eq!(o.end_reason, Some(3));
    }
);

both!(
    a_bkv_gateway_charges_by_time_from_confirmation_to_end_report,
    |app: TestApp| async move {
        let mut pile = BkvPile::connect(app.device_addr, "82210225000520").await;
        pile.heartbeat().await;
        pile.report_idle(2).await;
        let d = app.client.device("82210225000520").await.unwrap();
        assert_eq!(
            (d.protocol.as_str(), d.firmware.as_deref(), d.ports.len()),
            ("bkv", Some("cV.1r46"), 4)
        );

        envelope(
            app.charge(
                "82210225000520",
                json!({"port_no": 3, "charge_mode": 1, "duration": 60,
        "amount": 500, "price_per_kwh": 150, "service_fee": 50, "order_no": "bkv-1"}),
            )
            .await,
            200,
        )
        .await;
        let cmd = pile.expect().await;
        let bkv::Message::Control(c) = &cmd.message else {
            panic!("{cmd:?}")
        };
        assert_eq!(
            (c.socket, c.hole, c.switch, c.mode, c.minutes),
            (2, 0, 1, 1, 1),
            "port 3 = socket 2 hole A"
        );
        assert_ne!(cmd.seq, 0);
        pile.send(bkv::Frame::control_reply(pile.id, cmd.seq, 2, 0, true, 77))
            .await;
        wait_status(&app, "bkv-1", OrderStatus::Charging).await;

        // Status report while charging: progress.
        let charging = BkvPile::socket(2, &[(0, 0xA0, 77, 1500, 20, 0), (1, 0x80, 0, 0, 0, 0)]);
        pile.send(bkv::Frame::status_report(pile.id, &[charging]))
            .await;
        let _ack = pile.expect().await;
        eventually(|| async {
            (app.client.progress("bkv-1").await.ok()?.len() == 1).then_some(())
        })
        .await;
        let d = app.client.device("82210225000520").await.unwrap();
        assert_eq!(d.ports[2].status, pile_api::PortStatus::Charging);
        assert_eq!(d.ports[2].power_w, 150.0);

        let mut end = bkv::ChargeEnd::new(2, 0, 77, 123, 1);
        end.status = bkv::SocketStatus(0x80);
        let mut frame = bkv::Frame::charge_end(pile.id, end);
        frame.seq = 9;
        pile.send(frame.clone()).await;
        let ack = pile.expect().await;
        assert!(
            matches!(ack.message, bkv::Message::ChargeEndAck(_)),
            "{ack:?}"
        );
        assert_eq!(ack.seq, 9);
        let o = wait_status(&app, "bkv-1", OrderStatus::Completed).await;
        assert_eq!(o.total_kwh, 0.123);
        assert_eq!(
            (o.energy_fee, o.service_fee_amount, o.final_amount),
            (18, 6, 24)
        );
        assert_eq!(o.end_reason, Some(1));
        // Duplicate end report: acknowledged, settled once.
        pile.send(frame).await;
        let ack = pile.expect().await;
        assert!(matches!(ack.message, bkv::Message::ChargeEndAck(_)));
        assert_eq!(
            app.service.store.settlement_count("bkv-1").await.unwrap(),
            1
        );
    }
);

#[tokio::test]
async fn a_bkv_target_that_is_not_whole_minutes_is_stopped_by_the_gateway_at_the_exact_second() {
    let app = spawn_app().await;
    let mut pile = BkvPile::connect(app.device_addr, "82210225000520").await;
    pile.heartbeat().await;
    pile.report_idle(1).await;
    envelope(app.charge("82210225000520", json!({"port_no": 1, "charge_mode": 1, "duration": 2, "amount": 100, "order_no": "bkv-exact"})).await, 200).await;
    let cmd = pile.expect().await;
    let bkv::Message::Control(c) = &cmd.message else {
        panic!("{cmd:?}")
    };
    assert_eq!(c.minutes, 1, "minutes rounded up");
    pile.send(bkv::Frame::control_reply(pile.id, cmd.seq, 1, 0, true, 5))
        .await;
    wait_status(&app, "bkv-exact", OrderStatus::Charging).await;
    let stop = pile.expect().await;
    let bkv::Message::Control(s) = &stop.message else {
        panic!("{stop:?}")
    };
    assert_eq!(s.switch, 0, "the gateway stops the port itself");
    pile.send(bkv::Frame::control_reply(pile.id, stop.seq, 1, 0, true, 5))
        .await;
    // The device reports the end of the stopped charge: settled on the gateway's seconds
    // (it saw both ends), as the target it was stopped for.
    pile.send(bkv::Frame::charge_end(
        pile.id,
        bkv::ChargeEnd::new(1, 0, 5, 3, 1),
    ))
    .await;
    let ack = pile.expect().await;
    assert!(matches!(ack.message, bkv::Message::ChargeEndAck(_)));
    let o = wait_status(&app, "bkv-exact", OrderStatus::Completed).await;
    assert_eq!((o.end_reason, o.final_amount), (Some(1), 100));
    assert!(
        (2..=4).contains(&o.duration_sec),
        "stopped at the target second, not the device's minute: {}",
        o.duration_sec
    );
    let row = app.service.store.order("bkv-exact").await.unwrap().unwrap();
    assert_eq!(row.duration_source.as_deref(), Some("gateway"));
}

#[tokio::test]
async fn a_silent_device_goes_offline_after_the_threshold_and_its_socket_is_closed() {
    let app = spawn_app_on(Db::Sqlite, |c| c.offline_after = Duration::from_secs(1))
        .await
        .unwrap();
    let mut pile = BkvPile::connect(app.device_addr, "82210225000520").await;
    pile.heartbeat().await;
    let t0 = std::time::Instant::now();
    wait_online(&app, "82210225000520", false).await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(
        pile.recv().await.is_none(),
        "the gateway closed the connection"
    );
}

#[tokio::test]
async fn a_socket_that_never_sends_a_valid_frame_is_closed() {
    let app = spawn_app_on(Db::Sqlite, |c| {
        c.first_frame_timeout = Duration::from_millis(500)
    })
    .await
    .unwrap();
    let mut pile = BkvPile::connect(app.device_addr, "82210225000520").await;
    pile.send_raw(b"hello, this is not a frame").await;
    assert!(pile.recv().await.is_none());
}

#[tokio::test]
async fn a_reconnect_with_the_same_id_replaces_the_old_session_at_once() {
    let app = spawn_app().await;
    let mut old = ApPile::connect(app.device_addr, "04AB373B").await;
    old.boot(2).await;
    let mut new = ApPile::connect(app.device_addr, "04AB373B").await;
    new.boot(2).await;
    assert!(old.recv().await.is_none(), "the old socket is closed");
    wait_online(&app, "04AB373B", true).await;
    assert_eq!(app.client.stats().await.unwrap().active_sessions, 1);
    // Commands go to the new connection.
    envelope(
        app.charge(
            "04AB373B",
            json!({"port_no": 1, "charge_mode": 4, "price_per_kwh": 150}),
        )
        .await,
        200,
    )
    .await;
    let cmd = new.expect().await;
    assert_eq!(start_of(&cmd).command, 1);
}

#[tokio::test]
async fn a_charge_for_an_offline_pile_goes_out_when_it_reconnects() {
    let app = spawn_app_on(Db::Sqlite, |c| c.offline_after = Duration::from_secs(1))
        .await
        .unwrap();
    let mut pile = ApPile::connect(app.device_addr, "04AB373B").await;
    pile.boot(2).await;
    drop(pile);
    wait_online(&app, "04AB373B", false).await;
    envelope(
        app.charge(
            "04AB373B",
            json!({"port_no": 1, "charge_mode": 1, "amount": 0, "duration": 60, "order_no": "ap-q"}),
        )
        .await,
        200,
    )
    .await;
    let mut pile = ApPile::connect(app.device_addr, "04AB373B").await;
    let reg = pile.register_frame(2);
    pile.send(reg).await;
    // The waiting command goes out without another API call (after the register ack).
    let cmd = loop {
        let f = pile.expect().await;
        if matches!(f.message, ap3000::Message::StartStop(_)) {
            break f;
        }
    };
    let start = start_of(&cmd).clone();
    assert_eq!(start.port, 0);
    pile.send(ap3000::Frame::start_stop_reply(
        pile.id,
        cmd.message_id,
        ap3000::StartResult::DONE,
        start.order_no,
        0,
    ))
    .await;
    wait_status(&app, "ap-q", OrderStatus::Charging).await;
}

#[tokio::test]
async fn garbage_bad_checksums_and_split_or_merged_frames_do_not_disturb_a_session() {
    let app = spawn_app().await;
    let mut pile = BkvPile::connect(app.device_addr, "82210225000520").await;
    pile.heartbeat().await;
    // Garbage, then a heartbeat split into single bytes.
    pile.send_raw(&[0x00, 0x13, 0x37, 0xFC, 0x01, 0x02]).await;
    let hb = pile.heartbeat_frame().to_vec();
    for b in &hb {
        pile.send_raw(std::slice::from_ref(b)).await;
        // Not a wait: a pause between the bytes so they leave as separate segments.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(matches!(
        pile.expect().await.message,
        bkv::Message::HeartbeatReply(_)
    ));
    // A bad checksum between two merged good frames.
    let mut bad = hb.clone();
    let n = bad.len();
    bad[n - 3] ^= 0xFF;
    let mut merged = hb.clone();
    merged.extend_from_slice(&bad);
    merged.extend_from_slice(&hb);
    pile.send_raw(&merged).await;
    assert!(matches!(
        pile.expect().await.message,
        bkv::Message::HeartbeatReply(_)
    ));
    assert!(matches!(
        pile.expect().await.message,
        bkv::Message::HeartbeatReply(_)
    ));
    assert!(app.client.device("82210225000520").await.unwrap().online);
    let frames = app.client.frames("82210225000520").await.unwrap();
    assert!(
        frames.iter().any(|f| f.summary.starts_with("skipped")),
        "skipped bytes are in the ring"
    );
    let text = app
        .http
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("frame_errors_total{protocol=\"bkv\",kind=\"bad_checksum\"}")
            || text.contains("kind=\"bad_checksum\"")
    );
}

#[tokio::test]
async fn a_gateway_restart_mid_charge_resumes_the_order_when_the_pile_comes_back() {
    let app = spawn_app().await;
    let mut pile = ApPile::connect(app.device_addr, "04AB373B").await;
    pile.boot(2).await;
    envelope(app.charge("04AB373B", json!({"port_no": 1, "charge_mode": 1, "duration": 300, "amount": 300, "order_no": "ap-restart"})).await, 200).await;
    let cmd = pile.expect().await;
    let start = start_of(&cmd).clone();
    pile.send(ap3000::Frame::start_stop_reply(
        pile.id,
        cmd.message_id,
        ap3000::StartResult::DONE,
        start.order_no,
        0,
    ))
    .await;
    wait_status(&app, "ap-restart", OrderStatus::Charging).await;
    let ph = pile.power_heartbeat(0, start.order_no, 30, 5, 1500);
    pile.send(ph).await;
    eventually(|| async {
        (app.client.progress("ap-restart").await.ok()?.len() == 1).then_some(())
    })
    .await;

    // Stop the gateway mid-session; start a new one on the same database.
    let url = app.stop().await;
    assert!(
        pile.recv().await.is_none(),
        "the session was closed by the shutdown"
    );
    let app = spawn_app_on(Db::Sqlite, |c| c.database_url = url)
        .await
        .unwrap();
    assert_eq!(
        app.client.order("ap-restart").await.unwrap().status,
        OrderStatus::Charging
    );
    let mut pile = ApPile::connect(app.device_addr, "04AB373B").await;
    pile.boot(2).await;
    let end = pile.settlement(9, 0, start.order_no, 300, 30, 3);
    pile.send(end).await;
    assert!(matches!(
        pile.expect().await.message,
        ap3000::Message::Ack { command: 0x03, .. }
    ));
    let o = wait_status(&app, "ap-restart", OrderStatus::Completed).await;
    assert_eq!((o.total_kwh, o.end_reason), (0.3, Some(1)));
    assert_eq!(app.client.progress("ap-restart").await.unwrap().len(), 1);
}

#[tokio::test]
async fn connections_past_the_cap_are_refused() {
    let app = spawn_app_on(Db::Sqlite, |c| c.max_connections = 1)
        .await
        .unwrap();
    let mut first = BkvPile::connect(app.device_addr, "82210225000520").await;
    first.heartbeat().await;
    let mut second = BkvPile::connect(app.device_addr, "82241218000382").await;
    let hb = second.heartbeat_frame();
    second.send_raw(&hb.to_vec()).await;
    assert!(
        second.recv().await.is_none(),
        "the second connection is closed"
    );
    first.heartbeat().await;
}

#[tokio::test]
async fn port_changes_and_alarms_become_outbox_events() {
    let app = spawn_app().await;
    let mut pile = ApPile::connect(app.device_addr, "04AB373B").await;
    pile.boot(2).await;
    let hb = pile.heartbeat_frame(&[2, 0]);
    pile.send(hb).await;
    let _ack = pile.expect().await;
    let id = pile.next_id();
    pile.send(ap3000::Frame::new(
        pile.id,
        id,
        ap3000::Message::Alarm {
            kind: 4,
            port: 0,
            trigger: 0,
            extra: Vec::new(),
        },
    ))
    .await;
    let store = &app.service.store;
    eventually(|| async {
        let d = app.client.device("04AB373B").await.ok()?;
        (d.ports[0].status == pile_api::PortStatus::Plugged).then_some(())
    })
    .await;
    let (backlog, _, _) = store.outbox_figures().await.unwrap();
    // registered, online, 2 × initial state, 1 change, alarm.
    eventually(|| async { (store.outbox_figures().await.ok()?.0 >= 6).then_some(()) }).await;
    assert!(backlog >= 5);
}

#[tokio::test]
async fn an_unanswered_command_is_resent_once_with_the_same_id_then_logged_unanswered() {
    let app = spawn_app_on(Db::Sqlite, |c| {
        c.command_resend_after = Duration::from_millis(600)
    })
    .await
    .unwrap();
    let mut pile = ApPile::connect(app.device_addr, "04AB373B").await;
    pile.boot(2).await;
    envelope(
        app.charge(
            "04AB373B",
            json!({"port_no": 1, "charge_mode": 1, "amount": 0, "duration": 60, "order_no": "ap-resend"}),
        )
        .await,
        200,
    )
    .await;
    let first = pile.expect().await;
    let t0 = std::time::Instant::now();
    let again = pile.expect().await;
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(
        first.message_id, again.message_id,
        "a resend reuses the message ID"
    );
    assert_eq!(first.to_vec(), again.to_vec());
    // No third copy: after the resend goes unanswered the command is given up.
    assert!(
        tokio::time::timeout(Duration::from_millis(1_500), pile.recv())
            .await
            .is_err()
    );
    let c = app.client.consistency().await.unwrap();
    assert_eq!((c.commands.sent, c.commands.matched), (1, 0));
    assert_eq!(
        app.client.order("ap-resend").await.unwrap().status,
        OrderStatus::Pending
    );
}

#[tokio::test]
async fn commands_to_one_device_leave_half_a_second_between_them() {
    let app = spawn_app().await;
    let mut pile = ApPile::connect(app.device_addr, "04AB373B").await;
    pile.boot(2).await;
    for port in 1..=2 {
        envelope(
            app.charge(
                "04AB373B",
                json!({"port_no": port, "charge_mode": 4, "price_per_kwh": 150}),
            )
            .await,
            200,
        )
        .await;
    }
    let _first = pile.expect().await;
    let t0 = std::time::Instant::now();
    let _second = pile.expect().await;
    assert!(
        t0.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn a_bkv_charge_by_amount_uses_the_fee_packet_and_settles_from_the_tlv_end_report() {
    let app = spawn_app().await;
    let mut pile = BkvPile::connect(app.device_addr, "82241218000382").await;
    pile.heartbeat().await;
    pile.report_idle(2).await;
    envelope(
        app.charge(
            "82241218000382",
            json!({"port_no": 2, "charge_mode": 3, "amount": 300,
        "price_per_kwh": 150, "service_fee": 50, "order_no": "bkv-amount"}),
        )
        .await,
        200,
    )
    .await;
    let cmd = pile.expect().await;
    let bkv::Message::FeeCharge(f) = &cmd.message else {
        panic!("{cmd:?}")
    };
    assert_eq!((f.socket, f.hole, f.switch, f.paid_fen), (1, 1, 1, 300));
    assert_eq!(
        (f.tiers[0].energy_price_fen, f.tiers[0].service_fee_fen),
        (150, 50)
    );
    pile.send(bkv::Frame::fee_charge_reply(&cmd, 1, 1, true))
        .await;
    wait_status(&app, "bkv-amount", OrderStatus::Charging).await;

    let report = bkv::ChargeEndFields {
        mcu_temperature_c: Some(30),
        socket: 1,
        hole: 1,
        status: bkv::SocketStatus(0x80),
        business_no: 0,
        power_dw: 0,
        current_ma: 0,
        energy_wh: 1_000,
        minutes: 10,
        end_time: Some(bkv::BcdTime {
            year: 2026,
            month: 11,
            day: 24,
            hour: 20,
            minute: 15,
            second: 0,
        }),
        end_reason: Some(bkv::EndReasonCode(1)),
        mode: Some(1),
        energy_fee_fen: Some(150),
        service_fee_fen: Some(50),
        tier_count: Some(0),
        tier_usage: Some(Vec::new()),
        extra: Vec::new(),
    };
    pile.send(bkv::Frame::charge_end_report(pile.id, &report))
        .await;
    let ack = pile.expect().await;
    assert!(
        matches!(ack.message, bkv::Message::ChargeEndReportAck(_)),
        "{ack:?}"
    );
    let o = wait_status(&app, "bkv-amount", OrderStatus::Completed).await;
    // 1 kWh × (150 + 50) = 200 fen, under the 300 paid.
    assert_eq!(
        (o.energy_fee, o.service_fee_amount, o.final_amount),
        (150, 50, 200)
    );
}

#[tokio::test]
async fn a_bkv_remote_stop_sends_switch_off_and_settles_with_reason_3() {
    let app = spawn_app().await;
    let mut pile = BkvPile::connect(app.device_addr, "82210225000520").await;
    pile.heartbeat().await;
    pile.report_idle(1).await;
    envelope(
        app.charge(
            "82210225000520",
            json!({"port_no": 1, "charge_mode": 1, "amount": 0, "duration": 600, "order_no": "bkv-stop"}),
        )
        .await,
        200,
    )
    .await;
    let cmd = pile.expect().await;
    pile.send(bkv::Frame::control_reply(pile.id, cmd.seq, 1, 0, true, 12))
        .await;
    wait_status(&app, "bkv-stop", OrderStatus::Charging).await;
    envelope(
        app.post(
            "/api/v1/third/devices/82210225000520/stop",
            json!({"port_no": 1, "order_no": "bkv-stop"}),
        )
        .send()
        .await
        .unwrap(),
        200,
    )
    .await;
    let stop = pile.expect().await;
    let bkv::Message::Control(c) = &stop.message else {
        panic!("{stop:?}")
    };
    assert_eq!((c.socket, c.hole, c.switch), (1, 0, 0));
    pile.send(bkv::Frame::control_reply(pile.id, stop.seq, 1, 0, true, 12))
        .await;
    pile.send(bkv::Frame::charge_end(
        pile.id,
        bkv::ChargeEnd::new(1, 0, 12, 40, 2),
    ))
    .await;
    let _ack = pile.expect().await;
    let o = wait_status(&app, "bkv-stop", OrderStatus::Completed).await;
    assert_eq!(o.end_reason, Some(3));
}

#[tokio::test]
async fn a_settlement_replayed_after_an_offline_spell_marks_the_order_and_keeps_the_device_figures()
{
    let app = spawn_app_on(Db::Sqlite, |c| c.offline_after = Duration::from_secs(1))
        .await
        .unwrap();
    let mut pile = ApPile::connect(app.device_addr, "04AB373B").await;
    pile.boot(2).await;
    envelope(app.charge("04AB373B", json!({"port_no": 1, "charge_mode": 1, "duration": 120, "amount": 240, "order_no": "ap-replay"})).await, 200).await;
    let cmd = pile.expect().await;
    let start = start_of(&cmd).clone();
    pile.send(ap3000::Frame::start_stop_reply(
        pile.id,
        cmd.message_id,
        ap3000::StartResult::DONE,
        start.order_no,
        0,
    ))
    .await;
    wait_status(&app, "ap-replay", OrderStatus::Charging).await;
    // The network drops; the pile keeps charging and finishes while away.
    drop(pile);
    wait_online(&app, "04AB373B", false).await;
    assert_eq!(
        app.client.order("ap-replay").await.unwrap().status,
        OrderStatus::Charging
    );
    let mut pile = ApPile::connect(app.device_addr, "04AB373B").await;
    pile.boot(2).await;
    let end = pile.settlement(3, 0, start.order_no, 120, 20, 3);
    pile.send(end).await;
    assert!(matches!(
        pile.expect().await.message,
        ap3000::Message::Ack { command: 0x03, .. }
    ));
    let o = wait_status(&app, "ap-replay", OrderStatus::Completed).await;
    assert!(o.offline_replayed);
    assert_eq!(
        (o.duration_sec, o.total_kwh, o.final_amount),
        (120, 0.2, 240)
    );
}

#[tokio::test]
async fn an_ap3000_charge_by_amount_is_stopped_by_the_gateway_when_the_money_is_used_up() {
    let app = spawn_app().await;
    let mut pile = ApPile::connect(app.device_addr, "04AB373B").await;
    pile.boot(2).await;
    envelope(
        app.charge(
            "04AB373B",
            json!({"port_no": 1, "charge_mode": 3, "amount": 20,
        "price_per_kwh": 150, "service_fee": 50, "order_no": "ap-amount"}),
        )
        .await,
        200,
    )
    .await;
    let cmd = pile.expect().await;
    let start = start_of(&cmd).clone();
    assert_eq!(
        (start.amount, start.balance_fen),
        (0, 20),
        "until full, balance = amount"
    );
    pile.send(ap3000::Frame::start_stop_reply(
        pile.id,
        cmd.message_id,
        ap3000::StartResult::DONE,
        start.order_no,
        0,
    ))
    .await;
    wait_status(&app, "ap-amount", OrderStatus::Charging).await;
    // 0.05 kWh: 10 fen, keep going; 0.10 kWh: 20 fen, the money is used up.
    let ph = pile.power_heartbeat(0, start.order_no, 60, 5, 2000);
    pile.send(ph).await;
    let ph = pile.power_heartbeat(0, start.order_no, 120, 10, 2000);
    pile.send(ph).await;
    let stop_cmd = pile.expect().await;
    let stop = start_of(&stop_cmd).clone();
    assert_eq!((stop.command, stop.order_no), (0, start.order_no));
    pile.send(ap3000::Frame::start_stop_reply(
        pile.id,
        stop_cmd.message_id,
        ap3000::StartResult::DONE,
        start.order_no,
        0,
    ))
    .await;
    let end = pile.settlement(41, 0, start.order_no, 121, 10, 7);
    pile.send(end).await;
    let _ack = pile.expect().await;
    let o = wait_status(&app, "ap-amount", OrderStatus::Completed).await;
    assert_eq!((o.end_reason, o.final_amount), (Some(1), 20));
}

#[tokio::test]
async fn a_start_confirmed_after_its_order_expired_is_stopped_again() {
    let app = spawn_app_on(Db::Sqlite, |c| c.command_ttl = Duration::from_millis(500))
        .await
        .unwrap();
    let mut pile = ApPile::connect(app.device_addr, "04AB373B").await;
    pile.boot(2).await;
    envelope(
        app.charge(
            "04AB373B",
            json!({"port_no": 1, "charge_mode": 1, "amount": 0, "duration": 60, "order_no": "ap-late"}),
        )
        .await,
        200,
    )
    .await;
    let cmd = pile.expect().await;
    let start = start_of(&cmd).clone();
    let o = wait_status(&app, "ap-late", OrderStatus::Cancelled).await;
    assert_eq!(o.end_reason, Some(11));
    // The reply finally arrives: the port must not keep charging for a cancelled order.
    pile.send(ap3000::Frame::start_stop_reply(
        pile.id,
        cmd.message_id,
        ap3000::StartResult::DONE,
        start.order_no,
        0,
    ))
    .await;
    let stop = pile.expect().await;
    let stop = start_of(&stop);
    assert_eq!((stop.command, stop.order_no), (0, start.order_no));
    assert_eq!(
        app.client.order("ap-late").await.unwrap().status,
        OrderStatus::Cancelled
    );
}

#[tokio::test]
async fn a_settlement_on_a_new_connection_after_a_drop_shorter_than_the_threshold_is_an_offline_replay(
) {
    let app = spawn_app().await; // offline after 30 s: the drop below goes unnoticed
    let mut pile = ApPile::connect(app.device_addr, "04AB373B").await;
    pile.boot(2).await;
    envelope(app.charge("04AB373B", json!({"port_no": 1, "charge_mode": 1, "duration": 4, "amount": 400, "order_no": "ap-blip"})).await, 200).await;
    let cmd = pile.expect().await;
    let start = start_of(&cmd).clone();
    pile.send(ap3000::Frame::start_stop_reply(
        pile.id,
        cmd.message_id,
        ap3000::StartResult::DONE,
        start.order_no,
        0,
    ))
    .await;
    wait_status(&app, "ap-blip", OrderStatus::Charging).await;
    // The network blips; the pile finishes while away and comes back. The new connection
    // never saw the charge running, so its end is the device's to tell.
    drop(pile);
    let mut pile = ApPile::connect(app.device_addr, "04AB373B").await;
    pile.boot(2).await;
    let end = pile.settlement(8, 0, start.order_no, 1, 4, 3);
    pile.send(end).await;
    assert!(matches!(
        pile.expect().await.message,
        ap3000::Message::Ack { command: 0x03, .. }
    ));
    let o = wait_status(&app, "ap-blip", OrderStatus::Completed).await;
    assert!(o.offline_replayed);
    assert_eq!(
        (o.duration_sec, o.final_amount),
        (1, 100),
        "the device's duration, billed by it"
    );
}

// New devices are written through the batched writer: a registration storm is answered, every
// pile shows online once its batch commits, and the API never calls a connected pile unknown.

both!(
    a_registration_storm_is_answered_and_every_pile_shows_online,
    |app: TestApp| async move {
        const PILES: usize = 300;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..PILES {
            let addr = app.device_addr;
            tasks.spawn(async move {
                let mut pile = ApPile::connect(addr, &format!("0A{i:06X}")).await;
                pile.boot(2).await; // registration and heartbeat both acknowledged
                pile
            });
        }
        let mut piles = Vec::with_capacity(PILES);
        while let Some(pile) = tasks.join_next().await {
            piles.push(pile.expect("pile task"));
        }
        eventually(|| async {
            let resp = app
                .get("/api/v1/third/devices?online=true&page=1&size=10")
                .send()
                .await
                .ok()?;
            let v: serde_json::Value = resp.json().await.ok()?;
            (v["data"]["total"].as_u64() == Some(PILES as u64)).then_some(())
        })
        .await;
        drop(piles);
    }
);

mod a_new_pile_is_found_by_the_api_before_its_row_is_flushed {
    use super::*;

    /// A writer interval far longer than the test: only the API's own flush writes the row.
    async fn run(db: Db) {
        let Some(app) = spawn_app_on(db, |c| c.flush_interval = Duration::from_secs(60)).await
        else {
            return;
        };
        let mut pile = ApPile::connect(app.device_addr, "0B000001").await;
        let reg = pile.register_frame(2);
        pile.send(reg).await;
        let ack = pile.expect().await;
        assert!(
            matches!(ack.message, ap3000::Message::Ack { command: 0x20, .. }),
            "{ack:?}"
        );
        let d = app
            .client
            .device("0B000001")
            .await
            .expect("device, not 404");
        assert!(d.online);
        assert_eq!(d.ports.len(), 2, "registration data flushed with the row");
        let order = envelope(
            app.charge(
                "0B000001",
                json!({"port_no": 1, "charge_mode": 1, "amount": 0, "duration": 60, "order_no": "new-1"}),
            )
            .await,
            200,
        )
        .await;
        assert_eq!(order["data"]["order_no"], "new-1");
        let cmd = pile.expect().await;
        assert_eq!(start_of(&cmd).command, 1, "a start command");
        app.stop().await;
    }

    #[tokio::test]
    async fn sqlite() {
        run(Db::Sqlite).await;
    }

    crate::pg!(run(Db::Postgres));
}

#[tokio::test]
async fn a_graceful_restart_within_the_offline_threshold_sends_no_offline_online_pair() {
    // Sequence 11: a deploy must not look like the fleet going away.
    let app = spawn_app().await;
    let mut pile = ApPile::connect(app.device_addr, "04AB373B").await;
    pile.boot(2).await;
    wait_online(&app, "04AB373B", true).await;
    let url = app.stop().await;
    assert!(
        pile.recv().await.is_none(),
        "the old gateway closed the socket"
    );
    let app = spawn_app_on(Db::Sqlite, |c| c.database_url = url)
        .await
        .unwrap();
    let mut pile = ApPile::connect(app.device_addr, "04AB373B").await;
    pile.boot(2).await;
    app.service.writer.flush().await;
    let types: Vec<String> = app
        .service
        .store
        .outbox_after(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.device_id == "04AB373B" && r.event_type.starts_with("device."))
        .map(|r| r.event_type)
        .collect();
    assert_eq!(types, ["device.registered", "device.online"], "{types:?}");
    assert!(app.client.device("04AB373B").await.unwrap().online);
}

#[tokio::test]
async fn an_open_order_on_a_port_the_pile_keeps_reporting_idle_is_settled_as_lost() {
    // Sequence 4: the pile lost its charge while online (a reboot, a missed end report).
    let app = spawn_app_on(Db::Sqlite, |c| {
        c.reconcile = pile_server::domain::ReconcileRule {
            idle_reports: 3,
            after_ms: 0,
        }
    })
    .await
    .unwrap();
    let mut pile = ApPile::connect(app.device_addr, "04AB373B").await;
    pile.boot(2).await;
    envelope(app.charge("04AB373B", json!({"port_no": 1, "charge_mode": 4, "amount": 300, "price_per_kwh": 100, "order_no": "ap-lost"})).await, 200).await;
    let cmd = pile.expect().await;
    let start = start_of(&cmd).clone();
    pile.send(ap3000::Frame::start_stop_reply(
        pile.id,
        cmd.message_id,
        ap3000::StartResult::DONE,
        start.order_no,
        0,
    ))
    .await;
    wait_status(&app, "ap-lost", OrderStatus::Charging).await;
    let ph = pile.power_heartbeat(0, start.order_no, 30, 5, 1800);
    pile.send(ph).await;
    // The pile reboots and says its ports are idle, heartbeat after heartbeat.
    for _ in 0..3 {
        let hb = pile.heartbeat_frame(&[0, 0]);
        pile.send(hb).await;
        assert!(matches!(
            pile.expect().await.message,
            ap3000::Message::Ack { command: 0x21, .. }
        ));
    }
    let o = wait_status(&app, "ap-lost", OrderStatus::Completed).await;
    assert_eq!(
        (
            o.end_reason,
            o.end_reason_name.as_deref(),
            o.total_kwh,
            o.final_amount
        ),
        (Some(13), Some("charge_lost"), 0.05, 5)
    );
    // The port takes the next customer.
    envelope(
        app.charge(
            "04AB373B",
            json!({"port_no": 1, "charge_mode": 4, "amount": 300, "price_per_kwh": 100}),
        )
        .await,
        200,
    )
    .await;
}
