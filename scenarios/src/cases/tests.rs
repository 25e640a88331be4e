//! The checkers can fail: deliberately broken gateway behaviour makes the matching case fail.

use pile_api::{OrderStatus, OrderView};

use super::charge::{progress_checks, remote_stop_checks};
use super::common::{expected_amount, settlement_checks, time_request};
use crate::report::CaseResult;

fn order(status: OrderStatus, duration: i64, end_reason: i64) -> OrderView {
    OrderView {
        order_no: "O1".into(),
        device_id: "82210225000520".into(),
        port_no: 2,
        status,
        charge_mode: 1,
        target_duration: 300,
        amount: 500,
        created_at: 0,
        started_at: Some(1),
        ended_at: Some(1 + duration),
        duration_sec: duration,
        total_kwh: 0.0006,
        current_power: 0.0,
        peak_power: 180.0,
        energy_fee: 0,
        service_fee_amount: 0,
        final_amount: 0,
        end_reason: Some(end_reason),
        end_reason_name: None,
        end_reason_text: None,
        offline_replayed: false,
    }
}

fn decided(checks: Vec<crate::report::Check>) -> CaseResult {
    let mut r = CaseResult::new("2.2", "远程停止充电");
    r.checks = checks;
    r.decide();
    r
}

#[test]
fn a_remote_stop_settled_with_the_right_reason_passes() {
    let o = order(OrderStatus::Completed, 12, 3);
    assert!(
        decided(remote_stop_checks(&Ok(()), Some(300), Some(&o), 12))
            .status
            .passed()
    );
}

#[test]
fn a_wrong_end_reason_fails_2_2() {
    // The gateway settles a remote stop as "charge complete" (1) instead of remote stop (3).
    let o = order(OrderStatus::Completed, 12, 1);
    let r = decided(remote_stop_checks(&Ok(()), Some(300), Some(&o), 12));
    assert!(!r.status.passed());
    assert!(!r.check_ok("end_reason"));
    assert!(r.check_ok("duration"));
}

#[test]
fn a_stop_that_never_reaches_the_device_fails_2_2() {
    let o = order(OrderStatus::Charging, 30, 0);
    let r = decided(remote_stop_checks(
        &Err((409, "nothing running".into())),
        None,
        Some(&o),
        12,
    ));
    for k in [
        "stop_api",
        "device_stopped",
        "completed",
        "duration",
        "end_reason",
    ] {
        assert!(!r.check_ok(k), "{k} should fail");
    }
}

#[test]
fn duration_and_billing_errors_fail_settlement() {
    let req = time_request(1, 60);
    let mut o = order(OrderStatus::Completed, 60, 1);
    o.total_kwh = 0.003;
    o.energy_fee = 0;
    o.service_fee_amount = 0;
    o.final_amount = 0;
    let ok = settlement_checks(Some(&o), 60, &req, 180.0, 0.001);
    assert!(ok.iter().all(|c| c.ok), "{ok:?}");
    o.duration_sec = 70; // 10 s late
    o.final_amount = 7; // not what 0.003 kWh costs
    let bad = settlement_checks(Some(&o), 60, &req, 180.0, 0.001);
    let failed: Vec<_> = bad
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.key.as_str())
        .collect();
    assert_eq!(failed, ["duration_error", "amount_correct"]);
    // A BKV order that reports no energy after a minute at 180 W fails; on AP3000 (0.01 kWh
    // steps) 3 Wh legitimately reads as 0.
    o.duration_sec = 60;
    o.total_kwh = 0.0;
    o.final_amount = 0;
    let zero = |res| settlement_checks(Some(&o), 60, &req, 180.0, res)[2].ok;
    assert!(!zero(0.001));
    assert!(zero(0.01));
    assert!(!settlement_checks(None, 60, &req, 180.0, 0.001)[0].ok);
}

#[test]
fn billing_rounds_half_up_and_caps_at_the_amount() {
    // 0.01 kWh: 1.5 fen → 2, 0.5 fen → 1.
    assert_eq!(expected_amount(0.01, 150, 50, 500), 3);
    assert_eq!(expected_amount(10.0, 150, 50, 500), 500);
    assert_eq!(expected_amount(0.0, 150, 50, 500), 0);
}

#[test]
fn sparse_progress_fails() {
    let s = |at| pile_api::ProgressSample {
        at,
        duration_sec: at,
        energy_wh: at,
        power_w: 180.0,
        status: "charging".into(),
    };
    let every_second: Vec<_> = (0..60).map(s).collect();
    assert!(progress_checks(&every_second, 1, 60).ok);
    let every_ten: Vec<_> = (0..6).map(|i| s(i * 10)).collect();
    assert!(!progress_checks(&every_ten, 1, 60).ok);
    assert!(!progress_checks(&[], 1, 60).ok);
}
