//! Field sequences against the bare session core: no socket, no database, no clock — every
//! input carries its instant, every output is inspected.

use std::str::FromStr;
use std::sync::Arc;

use pile_protocol::{ap3000, bkv};

use super::*;

const T0: i64 = 1_764_000_000_000;

fn core() -> SessionCore {
    SessionCore::new(CoreConfig::default(), 1, "127.0.0.1:9".into(), T0)
}

fn ap_id() -> ap3000::PhysicalId {
    ap3000::PhysicalId::from_str("04AB373B").unwrap()
}

fn bkv_id() -> bkv::GatewayId {
    bkv::GatewayId::from_str("82210225000520").unwrap()
}

fn ap_heartbeat(msg: u16, statuses: &[u8]) -> Vec<u8> {
    let ports: Vec<ap3000::PortStatus> = statuses.iter().map(|s| ap3000::PortStatus(*s)).collect();
    ap3000::Frame::heartbeat(
        ap_id(),
        msg,
        ap3000::Heartbeat::new(2200, &ports, 25, 90).unwrap(),
    )
    .to_vec()
}

fn ap_settlement(msg: u16, order: [u8; 16], duration_s: u16, energy_cwh: u16) -> Vec<u8> {
    ap3000::Frame::settlement(
        ap_id(),
        msg,
        ap3000::Settlement {
            duration_s,
            max_power_dw: 2500,
            energy_cwh,
            port: 0,
            start_mode: 1,
            card_id: 0,
            stop_reason: ap3000::StopReason(3),
            order_no: ap3000::OrderNo::from_bytes(order),
            second_max_power_dw: None,
            timestamp: None,
            occupancy_min: None,
            extra: Vec::new(),
        },
    )
    .to_vec()
}

fn drain_intents(c: &mut SessionCore) -> Vec<Intent> {
    std::iter::from_fn(|| c.poll_intent()).collect()
}

fn drain_tx(c: &mut SessionCore) -> Vec<Transmit> {
    std::iter::from_fn(|| c.poll_transmit()).collect()
}

/// Identifies the connection with no open commands or orders beyond `active`.
fn identify(c: &mut SessionCore, now: i64, commands: Vec<Command>, active: Vec<ActiveOrder>) {
    let intents = drain_intents(c);
    let token = intents
        .iter()
        .find_map(|i| match i {
            Intent::Identify { token, .. } => Some(*token),
            _ => None,
        })
        .expect("an identification");
    c.handle_result(
        now,
        token,
        IntentResult::Identified {
            live: Arc::new(LiveCell::default()),
            commands,
            active,
        },
    );
}

fn start(id: i64, order_no: &str, port_no: u32, sent_before: bool) -> Command {
    Command {
        id,
        spec: CommandSpec::Start {
            order_no: order_no.into(),
            port_no,
            charge_mode: 1,
            duration_sec: 90,
            energy_wh: 0,
            amount: 100,
            price_per_kwh: 0,
            service_fee: 0,
            device_ref: hex::encode(device_order_ref(order_no)),
        },
        sent_before,
        first_sent_at_ms: sent_before.then_some(T0 - 5_000),
    }
}

fn mark_sent_token(intents: &[Intent]) -> Option<(Token, i64)> {
    intents.iter().find_map(|i| match i {
        Intent::MarkSent {
            token, command_id, ..
        } => Some((*token, *command_id)),
        _ => None,
    })
}

#[test]
fn an_end_report_is_acknowledged_only_after_it_is_committed() {
    let mut c = core();
    c.handle_bytes(T0, &ap_heartbeat(1, &[0, 0]));
    identify(&mut c, T0, vec![], vec![]);
    drain_tx(&mut c); // the heartbeat ack
    c.handle_bytes(T0 + 10, &ap_settlement(77, [7; 16], 60, 12));
    let intents = drain_intents(&mut c);
    let Some(Intent::End { token, obs }) = intents
        .into_iter()
        .find(|i| matches!(i, Intent::End { .. }))
    else {
        panic!("an end intent");
    };
    assert_eq!((obs.energy_wh, obs.device_duration_sec), (120, Some(60)));
    assert!(drain_tx(&mut c).is_empty(), "no ack before the commit");
    // Not committed: no ack — the device keeps it and resends.
    c.handle_result(
        T0 + 20,
        token,
        IntentResult::End {
            committed: false,
            settled: None,
        },
    );
    assert!(drain_tx(&mut c).is_empty());
    // The resend, committed this time: acknowledged, echoing its message ID.
    c.handle_bytes(T0 + 30, &ap_settlement(77, [7; 16], 60, 12));
    let Some(Intent::End { token, .. }) = drain_intents(&mut c)
        .into_iter()
        .find(|i| matches!(i, Intent::End { .. }))
    else {
        panic!("an end intent");
    };
    c.handle_result(
        T0 + 40,
        token,
        IntentResult::End {
            committed: true,
            settled: None,
        },
    );
    let tx = drain_tx(&mut c);
    assert_eq!(tx.len(), 1);
    let ack = ap3000::decode_frame(&tx[0].bytes, ap3000::Direction::FromServer).unwrap();
    assert_eq!(ack.message_id, 77);
    assert!(matches!(
        ack.message,
        ap3000::Message::Ack { command: 0x03, .. }
    ));
}

#[test]
fn a_command_is_recorded_as_sent_before_its_bytes_go_out_and_commands_are_paced() {
    let mut c = core();
    c.handle_bytes(T0, &ap_heartbeat(1, &[0, 0]));
    identify(
        &mut c,
        T0,
        vec![start(1, "a", 1, false), start(2, "b", 2, false)],
        vec![],
    );
    drain_tx(&mut c);
    let intents = drain_intents(&mut c);
    let (token, id) = mark_sent_token(&intents).expect("mark sent first");
    assert_eq!(id, 1);
    assert!(
        drain_tx(&mut c).is_empty(),
        "nothing written before the mark commits"
    );
    let marks = intents
        .iter()
        .filter(|i| matches!(i, Intent::MarkSent { .. }))
        .count();
    assert_eq!(marks, 1, "one write at a time");
    c.handle_result(T0 + 5, token, IntentResult::MarkSent { proceed: true });
    let tx = drain_tx(&mut c);
    assert_eq!((tx.len(), tx[0].kind), (1, "command"));
    // The second waits 0.5 s after the first.
    c.handle_timeout(T0 + 400);
    assert!(mark_sent_token(&drain_intents(&mut c)).is_none());
    assert_eq!(c.poll_timeout(), Some(T0 + 505));
    c.handle_timeout(T0 + 505);
    assert_eq!(
        mark_sent_token(&drain_intents(&mut c)).map(|t| t.1),
        Some(2)
    );
}

#[test]
fn a_command_the_store_no_longer_wants_is_never_written() {
    let mut c = core();
    c.handle_bytes(T0, &ap_heartbeat(1, &[0, 0]));
    identify(&mut c, T0, vec![start(1, "a", 1, false)], vec![]);
    drain_tx(&mut c);
    let (token, _) = mark_sent_token(&drain_intents(&mut c)).unwrap();
    c.handle_result(T0 + 5, token, IntentResult::MarkSent { proceed: false });
    assert!(drain_tx(&mut c).is_empty());
    assert!(c.open_commands().is_empty());
}

/// A fresh AP3000 connection, identified with `cmd` as its one open command, that has
/// written it (recorded as sent first); returns the core and the bytes written.
fn ap_written(cmd: Command) -> (SessionCore, bytes::Bytes) {
    let mut c = core();
    c.handle_bytes(T0, &ap_heartbeat(1, &[0, 0]));
    identify(&mut c, T0, vec![cmd], vec![]);
    drain_tx(&mut c);
    let (token, _) = mark_sent_token(&drain_intents(&mut c)).unwrap();
    c.handle_result(T0, token, IntentResult::MarkSent { proceed: true });
    let tx = drain_tx(&mut c).remove(0);
    assert_eq!(tx.kind, "command");
    (c, tx.bytes)
}

#[test]
fn an_unanswered_ap3000_command_is_resent_once_with_the_same_id_then_left_unknown() {
    let (mut c, first) = ap_written(start(1, "a", 1, false));
    // Keep the device alive with heartbeats.
    c.handle_bytes(T0 + 10_000, &ap_heartbeat(2, &[0, 0]));
    drain_tx(&mut c);
    c.handle_timeout(T0 + 15_000);
    let tx = drain_tx(&mut c);
    assert_eq!(tx.len(), 1);
    assert_eq!(
        (tx[0].kind, &tx[0].bytes),
        ("resend", &first),
        "same bytes, same ID"
    );
    c.handle_bytes(T0 + 20_000, &ap_heartbeat(3, &[0, 0]));
    drain_tx(&mut c);
    drain_intents(&mut c);
    c.handle_timeout(T0 + 30_000);
    assert!(drain_intents(&mut c)
        .iter()
        .any(|i| matches!(i, Intent::Unanswered { command_id: 1 })));
    assert!(c.open_commands().is_empty());
}

fn stop(id: i64, order_no: &str, port_no: u32) -> Command {
    Command {
        id,
        spec: CommandSpec::Stop {
            order_no: order_no.into(),
            port_no,
            device_ref: hex::encode(device_order_ref(order_no)),
        },
        sent_before: false,
        first_sent_at_ms: None,
    }
}

#[test]
fn a_start_is_never_written_again_once_its_order_was_asked_to_stop() {
    // Seed 18774 of the fault simulation: a start written into a half-open socket, its
    // pending order stopped by the API; the stop went out and was answered (port idle, the
    // order cancelled), then the start's resend ran a charge nobody wanted.
    let (mut c, _) = ap_written(start(1, "a", 1, false));
    c.handle_bytes(T0 + 10_000, &ap_heartbeat(2, &[0, 0]));
    drain_tx(&mut c);
    c.handle_command(T0 + 14_000, stop(2, "a", 1));
    let (token, id) = mark_sent_token(&drain_intents(&mut c)).unwrap();
    assert_eq!(id, 2);
    c.handle_result(T0 + 14_000, token, IntentResult::MarkSent { proceed: true });
    assert_eq!(drain_tx(&mut c)[0].kind, "command", "the stop goes out");
    // The start's resend deadline passes: it is given up, not written again.
    c.handle_timeout(T0 + 15_000);
    assert!(drain_tx(&mut c).is_empty(), "no resend of the start");
    assert!(drain_intents(&mut c)
        .iter()
        .any(|i| matches!(i, Intent::Unanswered { command_id: 1 })));
    assert_eq!(c.open_commands(), vec![2]);

    // On a new connection the open start (sent before) and its stop are both loaded: only
    // the stop is written; the start is neither queried nor resent.
    let mut c = core();
    c.handle_bytes(T0, &ap_heartbeat(1, &[0, 0]));
    identify(
        &mut c,
        T0,
        vec![start(1, "a", 1, true), stop(2, "a", 1)],
        vec![],
    );
    drain_tx(&mut c);
    for t in [T0, T0 + 4_000, T0 + 20_000] {
        c.handle_timeout(t);
        for i in drain_intents(&mut c) {
            if let Intent::MarkSent {
                token, command_id, ..
            } = i
            {
                assert_eq!(command_id, 2, "only the stop is written");
                c.handle_result(t, token, IntentResult::MarkSent { proceed: true });
            }
        }
        for tx in drain_tx(&mut c) {
            assert_ne!(tx.kind, "query", "the start is not verified either");
        }
    }
    assert!(!c.open_commands().contains(&1));
}

/// Writes an AP3000 start on a fresh connection and returns its bytes.
fn ap_start_bytes(cmd: Command) -> Vec<u8> {
    ap_written(cmd).1.to_vec()
}

#[test]
fn an_ap3000_start_that_may_have_been_delivered_waits_for_the_piles_records_then_asks() {
    // Seeds 2700 and 3109 of the fault simulation: a start whose 0x82 answer was lost was
    // written again at once after a reconnect (after a network drop, and after a reboot) and
    // the pile — which had run the charge to its end meanwhile — ran it again before its kept
    // settlement reached the gateway.
    let first = ap_start_bytes(start(41, "a", 1, false));
    let mut c = core();
    c.handle_bytes(T0, &ap_heartbeat(1, &[0, 0]));
    identify(&mut c, T0, vec![start(41, "a", 1, true)], vec![]);
    drain_tx(&mut c);
    assert!(
        mark_sent_token(&drain_intents(&mut c)).is_none(),
        "no blind resend"
    );
    c.handle_timeout(T0 + 2_999);
    assert!(
        drain_tx(&mut c).is_empty(),
        "the pile's own records come first"
    );
    assert_eq!(c.poll_timeout(), Some(T0 + 3_000));
    c.handle_timeout(T0 + 3_000);
    let tx = drain_tx(&mut c);
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].kind, "query");
    let q = ap3000::decode_frame(&tx[0].bytes, ap3000::Direction::FromServer).unwrap();
    assert_eq!(q.command(), 0x81);
    assert!(
        q.message_id >= 0x8000,
        "a session's own ID, never a command's"
    );
    // The heartbeat that answers it: the port is idle; the service decides.
    c.handle_bytes(T0 + 3_100, &ap_heartbeat(2, &[0, 0]));
    drain_tx(&mut c);
    let token = drain_intents(&mut c)
        .into_iter()
        .find_map(|i| match i {
            Intent::Resolve { token, seen, .. } => {
                assert_eq!(seen, PortSeen::Idle);
                Some(token)
            }
            _ => None,
        })
        .expect("a resolution asked of the service");
    c.handle_result(
        T0 + 3_100,
        token,
        IntentResult::Resolved(Resolution::Resend),
    );
    c.handle_timeout(T0 + 3_600);
    let (token, _) = mark_sent_token(&drain_intents(&mut c)).expect("resent after the answer");
    c.handle_result(T0 + 3_600, token, IntentResult::MarkSent { proceed: true });
    let resent = drain_tx(&mut c).remove(0).bytes.to_vec();
    // Same bytes as the first write, the same message ID: the vendor's rule (§1.03) that lets a
    // pile that ran it answer it again rather than run it twice.
    assert_eq!(resent, first);
    let frame = ap3000::decode_frame(&first, ap3000::Direction::FromServer).unwrap();
    assert_eq!(frame.message_id, 42, "derived from the command ID");
    let other = ap3000::decode_frame(
        &ap_start_bytes(start(42, "b", 1, false)),
        ap3000::Direction::FromServer,
    )
    .unwrap();
    assert_eq!(other.message_id, 43);
    assert_eq!(
        super::ap3000::Ap3000::command_msg_id(0x7FFF),
        1,
        "wraps in 1..=0x7FFF"
    );
}

fn charging_hole(hole: u8, business_no: u16, energy_wh: u16, minutes: u16) -> bkv::HoleState {
    bkv::HoleState {
        hole,
        status: bkv::SocketStatus::CHARGING_NOW,
        business_no,
        voltage_dv: 2200,
        power_dw: 1800,
        current_ma: 800,
        energy_wh,
        minutes,
    }
}

fn bkv_heartbeat() -> Vec<u8> {
    bkv::Frame::heartbeat(bkv_id(), "89860000000000000001", "cV.1r46", 20).to_vec()
}

#[test]
fn a_bkv_start_that_may_have_been_delivered_asks_the_port_before_it_is_resent() {
    let mut c = core();
    c.handle_bytes(T0, &bkv_heartbeat());
    identify(&mut c, T0, vec![start(5, "a", 3, true)], vec![]);
    let tx = drain_tx(&mut c);
    let query = tx.iter().find(|t| t.kind == "query").expect("a port query");
    let q = bkv::decode_frame(&query.bytes).unwrap();
    let bkv::Message::QuerySocket(qs) = &q.message else {
        panic!("{q:?}")
    };
    assert_eq!(qs.socket, 2, "port 3 is socket 2");
    assert!(
        mark_sent_token(&drain_intents(&mut c)).is_none(),
        "no blind resend"
    );
    // The port runs business number 9: the start was delivered.
    let state = bkv::SocketState::new(
        2,
        vec![charging_hole(0, 9, 4, 1), bkv::HoleState::idle(1, 2200)],
    );
    c.handle_bytes(
        T0 + 100,
        &bkv::Frame::socket_state(bkv_id(), q.seq, state).to_vec(),
    );
    let resolve = drain_intents(&mut c)
        .into_iter()
        .find_map(|i| match i {
            Intent::Resolve { seen, command, .. } => Some((seen, command.id)),
            _ => None,
        })
        .expect("a decision");
    assert_eq!(
        resolve,
        (
            PortSeen::Charging {
                device_ref: Some("bkv:9".into())
            },
            5
        )
    );
}

#[test]
fn an_end_is_seen_live_only_on_a_connection_that_saw_the_charge_running() {
    let order = ActiveOrder {
        order_no: "a".into(),
        port_no: 1,
        device_ref: Some("bkv:9".into()),
        started_at_ms: Some(T0 - 60_000),
        charge_mode: 2,
        target_duration_sec: 0,
    };
    let end = |c: &mut SessionCore, at: i64| {
        let e = bkv::ChargeEnd::new(1, 0, 9, 30, 1);
        c.handle_bytes(at, &bkv::Frame::charge_end(bkv_id(), e).to_vec());
        drain_intents(c)
            .into_iter()
            .find_map(|i| match i {
                Intent::End { obs, .. } => Some(obs.seen_live),
                _ => None,
            })
            .expect("an end")
    };
    // A reconnect whose first news of the charge is its end: a replay.
    let mut fresh = core();
    fresh.handle_bytes(T0, &bkv_heartbeat());
    identify(&mut fresh, T0, vec![], vec![order.clone()]);
    assert!(!end(&mut fresh, T0 + 1_000));
    // A reconnect that saw it running (a status report naming it), then its end: live.
    let mut watched = core();
    watched.handle_bytes(T0, &bkv_heartbeat());
    identify(&mut watched, T0, vec![], vec![order]);
    let report = bkv::Frame::status_report(
        bkv_id(),
        &[bkv::SocketState::new(1, vec![charging_hole(0, 9, 20, 1)])],
    );
    watched.handle_bytes(T0 + 500, &report.to_vec());
    drain_intents(&mut watched);
    assert!(end(&mut watched, T0 + 1_000));
}

#[test]
fn a_port_reported_idle_under_an_open_order_is_reconciled_after_three_reports_over_a_minute() {
    let mut c = core();
    c.handle_bytes(T0, &ap_heartbeat(1, &[1, 0]));
    let charging = ActiveOrder {
        order_no: "lost".into(),
        port_no: 1,
        device_ref: None,
        started_at_ms: Some(T0 - 1_000),
        charge_mode: 4,
        target_duration_sec: 0,
    };
    identify(&mut c, T0, vec![], vec![charging]);
    let mut reconciled = Vec::new();
    // The first idle report comes at 11 s; the watch needs three, a minute apart at least.
    for (i, t) in [
        11_000, 22_000, 33_000, 44_000, 55_000, 66_000, 77_000, 88_000,
    ]
    .into_iter()
    .enumerate()
    {
        c.handle_bytes(T0 + t, &ap_heartbeat(2 + i as u16, &[0, 0]));
        for intent in drain_intents(&mut c) {
            if let Intent::Reconcile { order_no, .. } = intent {
                reconciled.push((t, order_no));
            }
        }
    }
    assert_eq!(reconciled, vec![(77_000, "lost".to_string())]);
}

#[test]
fn a_bkv_time_target_that_is_not_whole_minutes_is_stopped_by_the_gateway_at_the_second() {
    let mut c = core();
    c.handle_bytes(T0, &bkv_heartbeat());
    let o = ActiveOrder {
        order_no: "t90".into(),
        port_no: 1,
        device_ref: Some("bkv:3".into()),
        started_at_ms: Some(T0),
        charge_mode: 1,
        target_duration_sec: 90,
    };
    identify(&mut c, T0, vec![], vec![o]);
    drain_intents(&mut c);
    assert_eq!(
        c.poll_timeout(),
        Some(T0 + 30_000),
        "the offline threshold first"
    );
    c.handle_bytes(T0 + 29_000, &bkv_heartbeat());
    c.handle_bytes(T0 + 58_000, &bkv_heartbeat());
    c.handle_bytes(T0 + 87_000, &bkv_heartbeat());
    drain_intents(&mut c);
    assert_eq!(c.poll_timeout(), Some(T0 + 90_000));
    c.handle_timeout(T0 + 90_000);
    let stops: Vec<_> = drain_intents(&mut c)
        .into_iter()
        .filter_map(|i| match i {
            Intent::GatewayStop {
                order_no, cause, ..
            } => Some((order_no, cause)),
            _ => None,
        })
        .collect();
    assert_eq!(
        stops,
        vec![("t90".to_string(), crate::domain::StopCause::Target)]
    );
    // Once only.
    c.handle_timeout(T0 + 91_000);
    assert!(!drain_intents(&mut c)
        .iter()
        .any(|i| matches!(i, Intent::GatewayStop { .. })));
}

#[test]
fn frames_of_another_device_on_the_connection_are_dropped_and_silence_closes_it() {
    let mut c = core();
    c.handle_bytes(T0, &ap_heartbeat(1, &[0]));
    identify(&mut c, T0, vec![], vec![]);
    drain_tx(&mut c);
    let other = ap3000::PhysicalId::from_str("04AB3700").unwrap();
    let ports = [ap3000::PortStatus(0)];
    let foreign = ap3000::Frame::heartbeat(
        other,
        9,
        ap3000::Heartbeat::new(2200, &ports, 1, 1).unwrap(),
    );
    c.handle_bytes(T0 + 1_000, &foreign.to_vec());
    assert_eq!(c.foreign_frames(), 1);
    assert!(drain_tx(&mut c).is_empty(), "not answered");
    c.handle_timeout(T0 + 29_999);
    assert!(c.close_reason().is_none());
    c.handle_timeout(T0 + 30_000);
    assert_eq!(c.close_reason(), Some(&CloseReason::Offline));
}

#[test]
fn a_socket_that_says_nothing_valid_is_closed_after_the_first_frame_timeout() {
    let mut c = core();
    c.handle_bytes(T0, b"hello, this is not a frame");
    assert_eq!(c.poll_timeout(), Some(T0 + 10_000));
    c.handle_timeout(T0 + 10_000);
    assert_eq!(c.close_reason(), Some(&CloseReason::NoValidFrame));
}

#[test]
fn progress_an_ap3000_pile_replays_from_before_the_connection_does_not_make_its_end_live() {
    let order_no = "ap-off";
    let r = device_order_ref(order_no);
    let active = ActiveOrder {
        order_no: order_no.into(),
        port_no: 1,
        device_ref: Some(hex::encode(r)),
        started_at_ms: Some(T0 - 20_000),
        charge_mode: 1,
        target_duration_sec: 4,
    };
    let power = |msg: u16, at_ms: i64| {
        ap3000::Frame::power_heartbeat(
            ap_id(),
            msg,
            ap3000::PowerHeartbeat {
                port: 0,
                status: ap3000::PortStatus(1),
                duration_s: 3,
                energy_cwh: 1,
                start_mode: 1,
                power_dw: 1800,
                max_power_dw: 1800,
                min_power_dw: 1800,
                avg_power_dw: 1800,
                order_no: ap3000::OrderNo::from_bytes(r),
                // Fields grew across firmware versions: a timestamp needs those before it.
                period_energy_raw: Some(0),
                peak_power_dw: Some(1800),
                voltage_dv: Some(2200),
                current_ma: Some(800),
                ambient_temperature_raw: Some(90),
                port_temperature_raw: Some(90),
                timestamp: Some((at_ms / 1000) as u32),
                occupancy_min: None,
                extra: Vec::new(),
            },
        )
        .to_vec()
    };
    let end_live = |c: &mut SessionCore, at: i64| {
        c.handle_bytes(at, &ap_settlement(50, r, 4, 2));
        drain_intents(c)
            .into_iter()
            .find_map(|i| match i {
                Intent::End { obs, .. } => Some(obs.seen_live),
                _ => None,
            })
            .expect("an end")
    };
    // Samples taken while the pile was offline, replayed on the new connection: not live.
    let mut c = core();
    c.handle_bytes(T0, &ap_heartbeat(1, &[0, 0]));
    identify(&mut c, T0, vec![], vec![active.clone()]);
    c.handle_bytes(T0 + 5_000, &power(2, T0 - 8_000));
    assert!(!end_live(&mut c, T0 + 5_100));
    // A sample taken now, on this connection: the charge is seen running.
    let mut c = core();
    c.handle_bytes(T0, &ap_heartbeat(1, &[1, 0]));
    identify(&mut c, T0, vec![], vec![active]);
    c.handle_bytes(T0 + 5_000, &power(2, T0 + 5_000));
    assert!(end_live(&mut c, T0 + 6_000));
}
