//! Orders through the gateway seam (a device at the intent level): dispatch, confirmation,
//! progress, settlement, expiry — and the field sequences of the core issue that live here.

use crate::*;
use pile_api::OrderStatus;
use pile_server::clock::Clock;
use pile_server::core::{CommandSpec, IntentResult, Reply};
use pile_server::domain::{DeviceReason, EndReason};
use serde_json::json;
use std::time::Duration;

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
        let CommandSpec::Start {
            order_no,
            port_no,
            duration_sec,
            device_ref,
            ..
        } = &out.spec
        else {
            panic!("expected a start, got {:?}", out.spec);
        };
        assert_eq!(
            (order_no.as_str(), *port_no, *duration_sec),
            ("ord-1", 2, 300)
        );
        assert_eq!(device_ref.len(), 32, "16 bytes as hex");

        // Confirmed → charging.
        let r = pile.confirm(&out).await;
        assert!(
            matches!(r, Some(IntentResult::Replied { started: Some(ref o), .. }) if o.order_no == "ord-1"),
            "{r:?}"
        );
        assert_eq!(
            app.client.order("ord-1").await.unwrap().status,
            OrderStatus::Charging
        );

        // Progress samples are stored, in seconds.
        for (i, wh) in [10, 25, 40].into_iter().enumerate() {
            pile.progress(progress_obs(2, 60 * (i as i64 + 1), wh, 1_800))
                .await;
        }
        let samples = eventually(|| async {
            let s = app.client.progress("ord-1").await.unwrap();
            (s.len() == 3).then_some(s)
        })
        .await;
        assert_eq!(samples[2].energy_wh, 40);
        assert_eq!(samples[0].power_w, 180.0);
        assert_eq!(
            samples.iter().map(|s| s.duration_sec).collect::<Vec<_>>(),
            [60, 120, 180]
        );

        // The end report settles; its duplicate is acknowledged and changes nothing.
        let first = pile
            .end(ap_end("ord-1", 2, 123, EndReason::TargetReached))
            .await;
        assert_eq!(first, (true, Some("ord-1".into())));
        let again = pile
            .end(ap_end("ord-1", 2, 999, EndReason::Unplugged))
            .await;
        assert_eq!(again, (true, None));

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
            app.charge(
                "04AB373B",
                json!({"port_no": 2, "charge_mode": 4, "price_per_kwh": 100}),
            )
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
        pile.confirm(&start).await;

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
            matches!(&stop.spec, CommandSpec::Stop { order_no, port_no: 1, .. } if order_no == "ord-stop")
        );
        pile.confirm(&stop).await;
        // The device calls it "unplugged" or anything else: it is a remote stop.
        pile.end(end_obs(1, 50, EndReason::Unplugged)).await;
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
        pile.refuse(&start, "no charger plugged").await;
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
        assert_eq!(cmd.spec.order_no(), Some("ord-q"));
        assert!(!cmd.sent_before);
    }
);

both!(
    a_start_written_before_a_takeover_is_carried_on_by_the_new_connection,
    |app: TestApp| async move {
        // Sequence 1 at the seam: the start went into a socket that turned out dead; the new
        // connection gets it back, marked as possibly delivered (so the core verifies it).
        let mut old = app.connect_fake("04AB373B", "ap3000", 2).await;
        envelope(app.charge("04AB373B", json!({"port_no": 1, "charge_mode": 1, "duration": 60, "amount": 100, "order_no": "ord-tk"})).await, 200).await;
        let start = old.next_command().await;
        let conn = old.conn_id;
        let marked = old
            .service
            .apply(
                &old.link,
                Some("04AB373B"),
                pile_server::core::Intent::MarkSent {
                    token: 9,
                    command_id: start.id,
                    key: 7,
                    request_hex: "00".into(),
                    conn_id: conn,
                },
            )
            .await;
        assert!(matches!(
            marked,
            Some((_, IntentResult::MarkSent { proceed: true }))
        ));
        let mut new = app.connect_fake("04AB373B", "ap3000", 2).await;
        let carried = new.next_command().await;
        assert_eq!((carried.id, carried.sent_before), (start.id, true));
        // The old connection may no longer write it.
        let stale = old
            .service
            .apply(
                &old.link,
                Some("04AB373B"),
                pile_server::core::Intent::MarkSent {
                    token: 10,
                    command_id: start.id,
                    key: 8,
                    request_hex: "00".into(),
                    conn_id: conn,
                },
            )
            .await;
        assert!(matches!(
            stale,
            Some((_, IntentResult::MarkSent { proceed: false }))
        ));
        // The new one delivers it; the device answers that it runs this very order.
        let CommandSpec::Start { device_ref, .. } = &carried.spec else {
            panic!("a start");
        };
        new.answer(
            &carried,
            Reply::SameState {
                device_ref: Some(device_ref.clone()),
            },
        )
        .await;
        assert_eq!(
            app.client.order("ord-tk").await.unwrap().status,
            OrderStatus::Charging
        );
    }
);

both!(
    stopping_a_pending_order_whose_start_never_went_out_cancels_it_with_reason_3,
    |app: TestApp| async move {
        // Sequence 2.
        let pile = app.connect_fake("82210225000520", "bkv", 4).await;
        app.disconnect_fake(&pile).await;
        envelope(app.charge("82210225000520", json!({"port_no": 1, "charge_mode": 1, "duration": 60, "amount": 100, "order_no": "ord-ps"})).await, 200).await;
        let v = envelope(
            app.post(
                "/api/v1/third/devices/82210225000520/stop",
                json!({"port_no": 1}),
            )
            .send()
            .await
            .unwrap(),
            200,
        )
        .await;
        assert_eq!(v["data"]["status"], "cancelled");
        let o = app.client.order("ord-ps").await.unwrap();
        assert_eq!((o.status, o.end_reason), (OrderStatus::Cancelled, Some(3)));
        // The port is free at once, and the start never goes out.
        envelope(app.charge("82210225000520", json!({"port_no": 1, "charge_mode": 1, "duration": 60, "amount": 100, "order_no": "ord-ps2"})).await, 200).await;
        let mut back = app.connect_fake("82210225000520", "bkv", 4).await;
        let cmd = back.next_command().await;
        assert_eq!(cmd.spec.order_no(), Some("ord-ps2"));
        assert!(back.queued.is_empty());
    }
);

both!(
    stopping_a_pending_order_whose_start_may_have_arrived_sends_a_stop_and_cancels_on_its_answer,
    |app: TestApp| async move {
        let mut pile = app.connect_fake("04AB373B", "ap3000", 2).await;
        envelope(app.charge("04AB373B", json!({"port_no": 2, "charge_mode": 1, "duration": 60, "amount": 100, "order_no": "ord-ps3"})).await, 200).await;
        let start = pile.next_command().await;
        let conn = pile.conn_id;
        pile.service
            .apply(
                &pile.link,
                Some("04AB373B"),
                pile_server::core::Intent::MarkSent {
                    token: 9,
                    command_id: start.id,
                    key: 7,
                    request_hex: "00".into(),
                    conn_id: conn,
                },
            )
            .await;
        let v = envelope(
            app.post("/api/v1/third/devices/04AB373B/stop", json!({"port_no": 2}))
                .send()
                .await
                .unwrap(),
            200,
        )
        .await;
        assert_eq!(v["data"]["status"], "pending");
        let stop = pile.next_command().await;
        assert_eq!(stop.spec.name(), "stop");
        pile.confirm(&stop).await;
        let o = app.client.order("ord-ps3").await.unwrap();
        assert_eq!((o.status, o.end_reason), (OrderStatus::Cancelled, Some(3)));
    }
);

both!(
    a_report_naming_another_charge_never_settles_the_next_customers_order,
    |app: TestApp| async move {
        // Sequence 5: BKV, the first customer's start reply was lost after the device had
        // started (business number 41); the next customer's order waits on the same port.
        let mut pile = app.connect_fake("82210225000520", "bkv", 4).await;
        envelope(app.charge("82210225000520", json!({"port_no": 1, "charge_mode": 1, "duration": 60, "amount": 100, "order_no": "first"})).await, 200).await;
        let start = pile.next_command().await;
        pile.confirm(&start).await; // no business number in this reply
                                    // The device reports the charge under its number: the order learns it.
        let mut p = progress_obs(1, 60, 5, 900);
        p.device_ref = Some("bkv:41".into());
        p.duration_resolution_sec = 60;
        pile.progress(p).await;
        // It ends; the next customer starts; a resend of the first's end report arrives.
        let mut end = end_obs(1, 9, EndReason::TargetReached);
        end.device_ref = Some("bkv:41".into());
        assert_eq!(pile.end(end.clone()).await, (true, Some("first".into())));
        envelope(app.charge("82210225000520", json!({"port_no": 1, "charge_mode": 1, "duration": 60, "amount": 100, "order_no": "second"})).await, 200).await;
        assert_eq!(pile.end(end).await, (true, None), "a duplicate");
        // A report naming a charge nobody knows, while the second's start is only queued:
        // kept unmatched, the second order untouched.
        let mut stray = end_obs(1, 77, EndReason::TargetReached);
        stray.device_ref = Some("bkv:99".into());
        assert_eq!(pile.end(stray).await, (true, None));
        let second = app.client.order("second").await.unwrap();
        assert_eq!(
            (second.status, second.total_kwh),
            (OrderStatus::Pending, 0.0)
        );
        let first = app.client.order("first").await.unwrap();
        assert_eq!(
            (first.status, first.total_kwh),
            (OrderStatus::Completed, 0.009)
        );
    }
);

both!(
    a_settlement_for_a_cancelled_order_bills_it_late_and_flags_it,
    |app: TestApp| async move {
        // Sequence 10: the order was cancelled after its TTL, yet the device did charge.
        let mut pile = app.connect_fake("04AB373B", "ap3000", 2).await;
        envelope(app.charge("04AB373B", json!({"port_no": 1, "charge_mode": 1, "duration": 60, "amount": 100, "order_no": "ord-late"})).await, 200).await;
        let _start = pile.next_command().await;
        // The TTL cancelled it (reason 11)…
        let store = &app.service.store;
        let o = store.order("ord-late").await.unwrap().unwrap();
        let t =
            pile_server::domain::transition(o.status, pile_server::domain::OrderEvent::Cancelled)
                .unwrap();
        assert!(store
            .close_order(
                "ord-late",
                "04AB373B",
                t,
                11,
                app.service.clock.now_ms(),
                None
            )
            .await
            .unwrap());
        // …and the device's settlement names it.
        let mut end = end_obs(1, 30, EndReason::TargetReached);
        end.device_ref = ap_ref("ord-late");
        end.device_duration_sec = Some(60);
        end.seen_live = false;
        assert_eq!(pile.end(end).await, (true, Some("ord-late".into())));
        let o = app.client.order("ord-late").await.unwrap();
        assert_eq!(o.status, OrderStatus::Completed);
        assert_eq!((o.total_kwh, o.final_amount), (0.03, 100));
        let row = store.order("ord-late").await.unwrap().unwrap();
        assert!(row.late_settlement);
        assert_eq!(store.settlement_count("ord-late").await.unwrap(), 1);
    }
);

both!(
    a_charge_by_amount_reports_when_its_money_is_used_up,
    |app: TestApp| async move {
        // Sequence 7: the gateway stops a charge whose money ran out, whatever the family.
        let mut pile = app.connect_fake("82210225000520", "bkv", 4).await;
        envelope(
            app.charge(
                "82210225000520",
                json!({"port_no": 3, "charge_mode": 3, "amount": 1,
            "price_per_kwh": 100, "order_no": "ord-amt"}),
            )
            .await,
            200,
        )
        .await;
        let start = pile.next_command().await;
        pile.confirm(&start).await;
        let r = pile.progress(progress_obs(3, 60, 4, 900)).await;
        assert!(
            matches!(
                r,
                Some(IntentResult::Progress {
                    money_used_up: false,
                    ..
                })
            ),
            "4 Wh × 0.1 fen/Wh = 0.4 fen: {r:?}"
        );
        let r = pile.progress(progress_obs(3, 120, 5, 900)).await;
        assert!(
            matches!(
                r,
                Some(IntentResult::Progress {
                    money_used_up: true,
                    ..
                })
            ),
            "5 Wh = 0.5 fen → 1 fen: {r:?}"
        );
    }
);

#[tokio::test]
async fn an_order_no_used_on_another_device_or_port_is_a_conflict_not_that_order() {
    // Sequence 9.
    let app = spawn_app().await;
    let _a = app.connect_fake("04AB373B", "ap3000", 4).await;
    let _b = app.connect_fake("04AB373C", "ap3000", 4).await;
    let body = |port: u32| json!({"port_no": port, "charge_mode": 1, "duration": 60, "amount": 100, "order_no": "shared"});
    envelope(app.charge("04AB373B", body(1)).await, 200).await;
    // The same request again: the same order (idempotent).
    let v = envelope(app.charge("04AB373B", body(1)).await, 200).await;
    assert_eq!(v["data"]["port_no"], 1);
    // Another port or device: 409, never the other order.
    let v = envelope(app.charge("04AB373B", body(2)).await, 409).await;
    assert!(v["message"].as_str().unwrap().contains("order_no"), "{v}");
    envelope(app.charge("04AB373C", body(1)).await, 409).await;
}

#[tokio::test]
async fn a_command_that_waits_past_its_ttl_cancels_the_order_with_reason_11() {
    let clock = Clock::manual(1_700_000_000_000);
    let app = spawn_app_on_clock(
        Db::Sqlite,
        |c| c.command_ttl = Duration::from_secs(600),
        clock.clone(),
    )
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
    clock.advance_ms(599_000);
    assert_eq!(app.service.sweep().await.unwrap().cancelled, 0);
    clock.advance_ms(2_000);
    assert_eq!(app.service.sweep().await.unwrap().cancelled, 1);
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
async fn the_offline_grace_counts_from_when_the_device_went_silent_for_every_mode() {
    // Sequence 3: an until-full charge (no target duration) must not be settled at the first
    // offline blip; only once the device has been silent for the whole grace.
    let clock = Clock::manual(1_700_000_000_000);
    let app = spawn_app_on_clock(
        Db::Sqlite,
        |c| c.offline_settle_grace = Duration::from_secs(1800),
        clock.clone(),
    )
    .await
    .unwrap();
    let mut pile = app.connect_fake("04AB373B", "ap3000", 2).await;
    envelope(app.charge("04AB373B", json!({"port_no": 1, "charge_mode": 4, "amount": 500, "price_per_kwh": 100, "order_no": "ord-full"})).await, 200).await;
    let start = pile.next_command().await;
    pile.confirm(&start).await;
    pile.progress(progress_obs(1, 3_000, 400, 1_500)).await;
    // Hours into the charge, a blip.
    clock.advance_ms(3 * 3600 * 1000);
    app.disconnect_fake(&pile).await;
    clock.advance_ms(60_000);
    assert_eq!(app.service.sweep().await.unwrap().settled, 0);
    // Back within the grace: still charging, the device settles it itself.
    let mut back = app.connect_fake("04AB373B", "ap3000", 2).await;
    let mut end = end_obs(1, 900, EndReason::Full);
    end.device_duration_sec = Some(3 * 3600 + 70);
    end.seen_live = false;
    assert_eq!(back.end(end).await, (true, Some("ord-full".into())));
    let o = app.client.order("ord-full").await.unwrap();
    assert_eq!(
        (o.end_reason, o.total_kwh, o.final_amount),
        (Some(2), 0.9, 90)
    );
    assert!(o.offline_replayed);
}

#[tokio::test]
async fn a_charging_order_whose_device_never_returns_is_settled_by_the_gateway_after_the_grace() {
    let clock = Clock::manual(1_700_000_000_000);
    let app = spawn_app_on_clock(
        Db::Sqlite,
        |c| c.offline_settle_grace = Duration::from_secs(1800),
        clock.clone(),
    )
    .await
    .unwrap();
    let mut pile = app.connect_fake("04AB373B", "ap3000", 2).await;
    envelope(app.charge("04AB373B", json!({"port_no": 1, "charge_mode": 1, "duration": 60, "amount": 100, "order_no": "ord-lost"})).await, 200).await;
    let start = pile.next_command().await;
    pile.confirm(&start).await;
    app.disconnect_fake(&pile).await;
    clock.advance_ms(1_799_000);
    assert_eq!(app.service.sweep().await.unwrap().settled, 0);
    clock.advance_ms(2_000);
    assert_eq!(app.service.sweep().await.unwrap().settled, 1);
    let o = app.client.order("ord-lost").await.unwrap();
    assert_eq!((o.status, o.end_reason), (OrderStatus::Completed, Some(11)));
    // A late end report is acknowledged and kept, never settling twice.
    let mut back = app.connect_fake("04AB373B", "ap3000", 2).await;
    let mut late = end_obs(1, 80, EndReason::TargetReached);
    late.device_ref = ap_ref("ord-lost");
    assert_eq!(back.end(late).await, (true, None));
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
        (1, 0),
        "the device's report is kept beside the gateway's settlement"
    );
}

#[tokio::test]
async fn an_end_the_gateway_did_not_see_is_settled_from_the_device_figures() {
    let app = spawn_app().await;
    let mut pile = app.connect_fake("04AB373B", "ap3000", 2).await;
    envelope(app.charge("04AB373B", json!({"port_no": 1, "charge_mode": 1, "duration": 300, "amount": 300, "order_no": "ord-off"})).await, 200).await;
    let start = pile.next_command().await;
    pile.confirm(&start).await;
    app.disconnect_fake(&pile).await;
    assert_eq!(
        app.client.order("ord-off").await.unwrap().status,
        OrderStatus::Charging,
        "stays charging while offline"
    );
    let mut back = app.connect_fake("04AB373B", "ap3000", 2).await;
    let mut r = end_obs(1, 150, EndReason::TargetReached);
    r.device_duration_sec = Some(300);
    r.seen_live = false;
    back.end(r).await;
    let o = app.client.order("ord-off").await.unwrap();
    assert!(o.offline_replayed);
    assert_eq!(
        (o.duration_sec, o.final_amount),
        (300, 300),
        "the device's figures"
    );
}

#[tokio::test]
async fn a_bkv_end_seen_live_after_a_reconnect_is_timed_by_the_gateway() {
    // Sequence 6: a 15 s charge whose end arrives on a newer connection that saw it running
    // is billed on the gateway's seconds, not the device's whole minute.
    let clock = Clock::manual(1_700_000_000_000);
    let app = spawn_app_on_clock(Db::Sqlite, |_| {}, clock.clone())
        .await
        .unwrap();
    let mut pile = app.connect_fake("82210225000520", "bkv", 4).await;
    envelope(app.charge("82210225000520", json!({"port_no": 1, "charge_mode": 1, "duration": 60, "amount": 100, "order_no": "ord-b15"})).await, 200).await;
    let start = pile.next_command().await;
    pile.answer(
        &start,
        Reply::Done {
            device_ref: Some("bkv:5".into()),
        },
    )
    .await;
    clock.advance_ms(15_000);
    let mut back = app.connect_fake("82210225000520", "bkv", 4).await;
    let mut end = end_obs(1, 3, EndReason::TargetReached);
    end.device_ref = Some("bkv:5".into());
    end.device_duration_sec = Some(60);
    end.duration_resolution_sec = 60;
    end.reason = DeviceReason::Bkv {
        explicit: None,
        status: 0x80,
    };
    end.seen_live = true;
    back.end(end).await;
    let o = app.client.order("ord-b15").await.unwrap();
    assert_eq!((o.duration_sec, o.final_amount), (15, 25), "100 × 15/60");
    let row = app.service.store.order("ord-b15").await.unwrap().unwrap();
    assert_eq!(row.duration_source.as_deref(), Some("gateway"));
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
    pile.confirm(&start).await;
    pile.progress(progress_obs(1, 30, 7, 900)).await;
    let url = app.stop().await;
    let app = spawn_app_on(Db::Sqlite, |c| c.database_url = url)
        .await
        .unwrap();
    let o = app.client.order("ord-r").await.unwrap();
    assert_eq!((o.status, o.total_kwh), (OrderStatus::Charging, 0.007));
    assert_eq!(app.client.progress("ord-r").await.unwrap().len(), 1);
    // A restart is not an outage: the device stays online for its offline threshold.
    assert!(app.client.device("04AB373B").await.unwrap().online);
}
