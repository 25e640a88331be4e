//! Orders through the gateway seam: dispatch, confirmation, progress, settlement, expiry.

use crate::*;
use pile_api::OrderStatus;
use pile_server::domain::EndReason;
use pile_server::gateway::PortCommand;
use pile_server::service::{EndOutcome, EndReport, ProgressReport};
use serde_json::json;
use std::time::Duration;

fn end_report(port_no: u32, energy_wh: i64, reason: EndReason) -> EndReport {
    EndReport {
        port_no,
        device_ref: None,
        device_duration_sec: None,
        duration_resolution_sec: 1,
        energy_wh,
        peak_power_dw: Some(2_000),
        end_reason: reason,
        bkv_status: None,
        bkv_end_reason: None,
        raw_hex: "00".into(),
        connected_at_ms: None,
    }
}

both!(
    a_charge_runs_from_pending_to_completed_and_a_duplicate_end_report_settles_once,
    |app: TestApp| async move {
        let mut pile = app.connect_fake("04AB373B", "ap3000", 4).await;
        let v = envelope(
        app.charge("04AB373B", json!({"port_no": 2, "charge_mode": 1, "duration": 300, "amount": 500,
                                      "price_per_kwh": 150, "service_fee": 50, "order_no": "ord-1"})).await,
        200,
    )
    .await;
        assert_eq!(v["data"]["status"], "pending");

        // The start command reaches the session.
        let out = pile.next_command().await;
        let PortCommand::Start {
            order_no,
            port_no,
            duration_sec,
            device_ref,
            ..
        } = &out.command
        else {
            panic!("expected a start, got {:?}", out.command);
        };
        assert_eq!(
            (order_no.as_str(), *port_no, *duration_sec),
            ("ord-1", 2, 300)
        );
        assert_eq!(device_ref.len(), 32, "16 bytes as hex");

        // Confirmed → charging.
        assert!(app
            .service
            .start_confirmed("04AB373B", out.command_id, "ord-1", "aa")
            .await
            .unwrap());
        assert_eq!(
            app.client.order("ord-1").await.unwrap().status,
            OrderStatus::Charging
        );

        // Progress samples are stored.
        for (i, wh) in [10, 25, 40].into_iter().enumerate() {
            let p = ProgressReport {
                port_no: 2,
                device_ref: None,
                duration_sec: 60 * (i as i64 + 1),
                energy_wh: wh,
                power_dw: 1_800,
                peak_power_dw: None,
            };
            app.service.progress("04AB373B", &p).await.unwrap();
        }
        let samples = eventually(|| async {
            let s = app.client.progress("ord-1").await.unwrap();
            (s.len() == 3).then_some(s)
        })
        .await;
        assert_eq!(samples[2].energy_wh, 40);
        assert_eq!(samples[0].power_w, 180.0);

        // The end report settles; its duplicate is acknowledged and changes nothing.
        let first = app
            .service
            .end_report("04AB373B", &end_report(2, 123, EndReason::TargetReached))
            .await
            .unwrap();
        assert_eq!(
            first,
            EndOutcome::Settled {
                order_no: "ord-1".into()
            }
        );
        let again = app
            .service
            .end_report("04AB373B", &end_report(2, 999, EndReason::Unplugged))
            .await
            .unwrap();
        assert_eq!(
            again,
            EndOutcome::Duplicate {
                order_no: Some("ord-1".into())
            }
        );

        let o = app.client.order("ord-1").await.unwrap();
        assert_eq!(o.status, OrderStatus::Completed);
        assert_eq!(o.total_kwh, 0.123);
        // 0.123 kWh × 150 = 18.45 → 18; × 50 = 6.15 → 6.
        assert_eq!(
            (o.energy_fee, o.service_fee_amount, o.final_amount),
            (18, 6, 24)
        );
        assert_eq!(o.end_reason, Some(1));
        assert_eq!(o.end_reason_name.as_deref(), Some("target_reached"));
        assert_eq!(o.end_reason_text.as_deref(), Some("充电目标已达到"));
        assert_eq!(o.peak_power, 200.0);
        assert!(!o.offline_replayed);
        let store = &app.service.store;
        assert_eq!(store.settlement_count("ord-1").await.unwrap(), 1);
        assert_eq!(store.end_report_counts("ord-1").await.unwrap(), (2, 1));
        let events = store.event_types_of_order("ord-1").await.unwrap();
        assert_eq!(
            events,
            [
                "order.created",
                "order.confirmed",
                "charging.started",
                "charging.progress",
                "charging.progress",
                "charging.progress",
                "charging.ended",
                "order.completed"
            ]
        );
        // The port is free again.
        envelope(
            app.charge("04AB373B", json!({"port_no": 2, "charge_mode": 4}))
                .await,
            200,
        )
        .await;
    }
);

both!(
    a_remote_stop_sends_a_stop_and_settles_with_reason_3,
    |app: TestApp| async move {
        let mut pile = app.connect_fake("04AB373B", "ap3000", 4).await;
        envelope(
            app.charge(
                "04AB373B",
                json!({"port_no": 1, "charge_mode": 1, "duration": 600,
                                           "amount": 600, "order_no": "ord-stop"}),
            )
            .await,
            200,
        )
        .await;
        let start = pile.next_command().await;
        app.service
            .start_confirmed("04AB373B", start.command_id, "ord-stop", "")
            .await
            .unwrap();

        let v = envelope(
            app.post("/api/v1/third/devices/04AB373B/stop", json!({"port_no": 1}))
                .send()
                .await
                .unwrap(),
            200,
        )
        .await;
        assert_eq!(v["data"]["order_no"], "ord-stop");
        let stop = pile.next_command().await;
        assert!(
            matches!(&stop.command, PortCommand::Stop { order_no, port_no: 1, .. } if order_no == "ord-stop")
        );
        app.service
            .command_replied(stop.command_id, "bb", "ok")
            .await
            .unwrap();
        // The device calls it "stopped by server" or anything else: it is a remote stop.
        app.service
            .end_report("04AB373B", &end_report(1, 50, EndReason::Unplugged))
            .await
            .unwrap();
        let o = app.client.order("ord-stop").await.unwrap();
        assert_eq!((o.status, o.end_reason), (OrderStatus::Completed, Some(3)));
        // No prices: by time, round(600 × min(1, d / 600)); the test takes well under a second.
        assert!(o.final_amount <= 2, "{}", o.final_amount);
        // Nothing is running any more.
        envelope(
            app.post("/api/v1/third/devices/04AB373B/stop", json!({"port_no": 1}))
                .send()
                .await
                .unwrap(),
            409,
        )
        .await;
        let c = app.client.consistency().await.unwrap();
        assert_eq!(
            (c.commands.sent, c.commands.matched, c.commands.match_rate),
            (2, 2, 1.0)
        );
    }
);

both!(
    a_rejected_start_fails_the_order_at_no_cost,
    |app: TestApp| async move {
        let mut pile = app.connect_fake("04AB373B", "ap3000", 4).await;
        envelope(app.charge("04AB373B", json!({"port_no": 1, "charge_mode": 1, "duration": 60, "amount": 100, "order_no": "ord-rej"})).await, 200).await;
        let start = pile.next_command().await;
        app.service
            .start_rejected(
                "04AB373B",
                start.command_id,
                "ord-rej",
                "cc",
                "no charger plugged",
            )
            .await
            .unwrap();
        let o = app.client.order("ord-rej").await.unwrap();
        assert_eq!(
            (o.status, o.end_reason, o.final_amount),
            (OrderStatus::Failed, Some(12), 0)
        );
    }
);

both!(
    a_charge_for_an_offline_device_waits_and_goes_out_on_reconnect,
    |app: TestApp| async move {
        let pile = app.connect_fake("82210225000520", "bkv", 4).await;
        app.disconnect_fake(&pile).await;
        assert!(!app.client.device("82210225000520").await.unwrap().online);
        // queue_if_offline: false fails fast.
        let v = envelope(
            app.charge(
                "82210225000520",
                json!({"port_no": 1, "charge_mode": 1, "duration": 60, "queue_if_offline": false}),
            )
            .await,
            503,
        )
        .await;
        assert_eq!(v["code"], 503);
        // Otherwise it is pending and waits.
        envelope(
            app.charge(
                "82210225000520",
                json!({"port_no": 1, "charge_mode": 1, "duration": 60, "order_no": "ord-q"}),
            )
            .await,
            200,
        )
        .await;
        let mut again = app.connect_fake("82210225000520", "bkv", 4).await;
        let cmd = again.next_command().await;
        assert_eq!(cmd.command.order_no(), "ord-q");
    }
);

#[tokio::test]
async fn a_command_that_waits_past_its_ttl_cancels_the_order_with_reason_11() {
    let app = spawn_app_on(Db::Sqlite, |c| c.command_ttl = Duration::from_millis(200))
        .await
        .unwrap();
    let pile = app.connect_fake("82210225000520", "bkv", 4).await;
    app.disconnect_fake(&pile).await;
    envelope(
        app.charge(
            "82210225000520",
            json!({"port_no": 1, "charge_mode": 1, "duration": 60, "order_no": "ord-ttl"}),
        )
        .await,
        200,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (cancelled, _) = app.service.sweep().await.unwrap();
    assert_eq!(cancelled, 1);
    let o = app.client.order("ord-ttl").await.unwrap();
    assert_eq!(
        (o.status, o.end_reason, o.final_amount),
        (OrderStatus::Cancelled, Some(11), 0)
    );
    // A reconnect no longer delivers it.
    let again = app.connect_fake("82210225000520", "bkv", 4).await;
    assert!(again.queued.is_empty());
}

#[tokio::test]
async fn a_charging_order_whose_device_never_returns_is_settled_by_the_gateway_after_the_grace() {
    let app = spawn_app_on(Db::Sqlite, |c| {
        c.offline_settle_grace = Duration::from_millis(100)
    })
    .await
    .unwrap();
    let mut pile = app.connect_fake("04AB373B", "ap3000", 2).await;
    envelope(app.charge("04AB373B", json!({"port_no": 1, "charge_mode": 1, "duration": 1, "amount": 100, "order_no": "ord-lost"})).await, 200).await;
    let start = pile.next_command().await;
    app.service
        .start_confirmed("04AB373B", start.command_id, "ord-lost", "")
        .await
        .unwrap();
    app.disconnect_fake(&pile).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (_, settled) = app.service.sweep().await.unwrap();
    assert_eq!(settled, 1);
    let o = app.client.order("ord-lost").await.unwrap();
    assert_eq!((o.status, o.end_reason), (OrderStatus::Completed, Some(11)));
    // A late end report is acknowledged and kept, never settling twice.
    let late = app
        .service
        .end_report("04AB373B", &end_report(1, 80, EndReason::TargetReached))
        .await
        .unwrap();
    assert!(matches!(late, EndOutcome::Duplicate { .. }));
    assert_eq!(
        app.service
            .store
            .settlement_count("ord-lost")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        app.service
            .store
            .end_report_counts("ord-lost")
            .await
            .unwrap(),
        (2, 1)
    );
}

#[tokio::test]
async fn an_end_report_after_an_offline_spell_marks_the_order_offline_replayed() {
    let app = spawn_app().await;
    let mut pile = app.connect_fake("04AB373B", "ap3000", 2).await;
    envelope(app.charge("04AB373B", json!({"port_no": 1, "charge_mode": 1, "duration": 300, "amount": 300, "order_no": "ord-off"})).await, 200).await;
    let start = pile.next_command().await;
    app.service
        .start_confirmed("04AB373B", start.command_id, "ord-off", "")
        .await
        .unwrap();
    app.disconnect_fake(&pile).await;
    assert_eq!(
        app.client.order("ord-off").await.unwrap().status,
        OrderStatus::Charging,
        "stays charging while offline"
    );
    let _back = app.connect_fake("04AB373B", "ap3000", 2).await;
    let mut r = end_report(1, 150, EndReason::TargetReached);
    r.device_duration_sec = Some(300);
    app.service.end_report("04AB373B", &r).await.unwrap();
    let o = app.client.order("ord-off").await.unwrap();
    assert!(o.offline_replayed);
    assert_eq!(
        (o.duration_sec, o.final_amount),
        (300, 300),
        "the device's figures"
    );
}

#[tokio::test]
async fn shutdown_flushes_batched_progress_and_a_restart_keeps_open_orders() {
    let app = spawn_app_on(Db::Sqlite, |c| c.flush_interval = Duration::from_secs(3600))
        .await
        .unwrap();
    let mut pile = app.connect_fake("04AB373B", "ap3000", 2).await;
    envelope(
        app.charge(
            "04AB373B",
            json!({"port_no": 1, "charge_mode": 1, "duration": 300, "order_no": "ord-r"}),
        )
        .await,
        200,
    )
    .await;
    let start = pile.next_command().await;
    app.service
        .start_confirmed("04AB373B", start.command_id, "ord-r", "")
        .await
        .unwrap();
    let p = ProgressReport {
        port_no: 1,
        device_ref: None,
        duration_sec: 30,
        energy_wh: 7,
        power_dw: 900,
        peak_power_dw: None,
    };
    app.service.progress("04AB373B", &p).await.unwrap();
    let url = app.stop().await;
    let app = spawn_app_on(Db::Sqlite, |c| c.database_url = url)
        .await
        .unwrap();
    let o = app.client.order("ord-r").await.unwrap();
    assert_eq!((o.status, o.total_kwh), (OrderStatus::Charging, 0.007));
    assert_eq!(app.client.progress("ord-r").await.unwrap().len(), 1);
    assert!(!app.client.device("04AB373B").await.unwrap().online);
}
