//! An AP3000 pile against the fake gateway.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use pile_protocol::ap3000::{self, Frame, Message, OrderNo, PhysicalId, StartResult, StopReason};
use pile_protocol::Family;
use pile_sim::fault::FaultKind;
use tokio::time::Instant;

use crate::support::{bytes_of, one_pile, Event, FakeGateway, Seen};

const ID: &str = "04AB373B";

fn pid() -> PhysicalId {
    ID.parse().unwrap()
}

fn msg(e: &Event) -> Option<&Message> {
    match &e.seen {
        Seen::Ap(f) => Some(&f.message),
        _ => None,
    }
}

fn reply_to(e: &Event, mid: u16) -> Option<ap3000::StartStopReply> {
    match &e.seen {
        Seen::Ap(f) if f.message_id == mid => match &f.message {
            Message::StartStopReply(r) => Some(r.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn settlement(e: &Event) -> Option<ap3000::Settlement> {
    match msg(e)? {
        Message::Settlement(s) => Some(s.clone()),
        _ => None,
    }
}

fn power_heartbeat(e: &Event) -> Option<ap3000::PowerHeartbeat> {
    match msg(e)? {
        Message::PowerHeartbeat(p) => Some(p.clone()),
        _ => None,
    }
}

fn order(n: u8) -> OrderNo {
    OrderNo([n; 16])
}

/// Waits for the registration handshake; returns the next event index.
async fn online(gw: &FakeGateway, from: usize) -> usize {
    let (i, _) = gw
        .wait_for("a heartbeat", from, 20, |e| {
            matches!(msg(e), Some(Message::Heartbeat(_)))
        })
        .await;
    i + 1
}

#[tokio::test(start_paused = true)]
async fn the_pile_opens_with_its_iccid_and_registers_until_answered() {
    let gw = FakeGateway::start(Family::Ap3000).await;
    gw.policy.ignore_registers.store(1, SeqCst);
    let _fleet = one_pile(&gw, Family::Ap3000, |_| {}).await;
    let (_, first) = gw.wait_for("the ICCID", 0, 5, |_| true).await;
    match &first.seen {
        Seen::Iccid(iccid) => assert_eq!(iccid.len(), 20),
        other => panic!("{other:?}"),
    }
    let (i, r1) = gw
        .wait_for("a 0x20", 0, 5, |e| {
            matches!(msg(e), Some(Message::Register(_)))
        })
        .await;
    let (i, r2) = gw
        .wait_for("the 0x20 again", i + 1, 15, |e| {
            matches!(msg(e), Some(Message::Register(_)))
        })
        .await;
    let gap = r2.at - r1.at;
    assert!(
        gap >= Duration::from_secs(11) && gap < Duration::from_secs(13),
        "resent each period until answered: {gap:?}"
    );
    match msg(&r2) {
        Some(Message::Register(r)) => assert_eq!(r.port_count, 4),
        other => panic!("{other:?}"),
    }
    gw.wait_for("the 0x22", i, 5, |e| {
        matches!(msg(e), Some(Message::TimeRequest))
    })
    .await;
    let (_, hb) = gw
        .wait_for("a 0x21", i, 5, |e| {
            matches!(msg(e), Some(Message::Heartbeat(_)))
        })
        .await;
    match msg(&hb) {
        Some(Message::Heartbeat(h)) => {
            let statuses: Vec<u8> = h.ports.as_slice().iter().map(|s| s.0).collect();
            assert_eq!(statuses, [2, 2, 2, 2], "every port starts plugged");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_charge_by_seconds_reports_power_and_settles_at_the_exact_second() {
    let gw = FakeGateway::start(Family::Ap3000).await;
    let fleet = one_pile(&gw, Family::Ap3000, |_| {}).await;
    let mark = online(&gw, 0).await;
    let t0 = Instant::now();
    gw.send(bytes_of(&Frame::start_by_seconds(
        pid(),
        0x101,
        1,
        95,
        order(7),
        500,
    )))
    .await;
    let (i, e) = gw
        .wait_for("the 0x82 reply", mark, 5, |e| reply_to(e, 0x101).is_some())
        .await;
    let r = reply_to(&e, 0x101).unwrap();
    assert_eq!(
        (r.result, r.port, r.order_no),
        (StartResult::DONE, Some(1), Some(order(7)))
    );
    let (i, p) = gw
        .wait_for("a 0x06", i, 15, |e| power_heartbeat(e).is_some())
        .await;
    let p = power_heartbeat(&p).unwrap();
    assert_eq!((p.port, p.order_no), (1, order(7)));
    assert!(p.power_dw > 1000, "charging near --power-w: {}", p.power_dw);
    let (_, end) = gw
        .wait_for("the 0x03", i, 100, |e| settlement(e).is_some())
        .await;
    let s = settlement(&end).unwrap();
    // The settlement leaves at the 95th second; the harness may see bytes a
    // few virtual steps late when the machine is loaded.
    let took = end.at - t0;
    assert!(
        took >= Duration::from_secs(95) && took < Duration::from_secs(98),
        "{took:?}"
    );
    assert_eq!((s.duration_s, s.port, s.order_no), (95, 1, order(7)));
    assert_eq!(s.stop_reason, StopReason::PRESET_TIME);
    assert!(s.max_power_dw > 1000);
    assert_eq!(s.energy_cwh, 0, "95 s at about 180 W is under 0.01 kWh");
    assert_eq!(fleet.pile_snapshot(ID).unwrap().ports[1].state, "plugged");
}

#[tokio::test(start_paused = true)]
async fn start_and_stop_refusals_use_the_vendor_result_codes() {
    let gw = FakeGateway::start(Family::Ap3000).await;
    let fleet = one_pile(&gw, Family::Ap3000, |_| {}).await;
    let mark = online(&gw, 0).await;
    let ask = |mid: u16, frame: Frame| {
        let gw = gw.clone();
        async move {
            gw.send(bytes_of(&frame)).await;
            let (_, e) = gw
                .wait_for("a 0x82 reply", mark, 5, |e| reply_to(e, mid).is_some())
                .await;
            reply_to(&e, mid).unwrap().result
        }
    };
    assert_eq!(
        ask(1, Frame::start_by_seconds(pid(), 1, 9, 60, order(1), 0)).await,
        StartResult::NO_SUCH_PORT
    );
    fleet.unplug(ID, 2).unwrap();
    assert_eq!(
        ask(2, Frame::start_by_seconds(pid(), 2, 1, 60, order(1), 0)).await,
        StartResult::NO_CHARGER
    );
    assert_eq!(
        ask(3, Frame::start_by_seconds(pid(), 3, 0, 600, order(1), 0)).await,
        StartResult::DONE
    );
    assert_eq!(
        ask(4, Frame::start_by_seconds(pid(), 4, 0, 600, order(1), 0)).await,
        StartResult::SAME_STATE
    );
    assert_eq!(
        ask(5, Frame::start_by_seconds(pid(), 5, 0xFF, 600, order(2), 0)).await,
        StartResult::SEVERAL_WAITING
    );
    fleet.inject_fault(ID, FaultKind::Refuse, 30).unwrap();
    assert_eq!(
        ask(6, Frame::start_by_seconds(pid(), 6, 2, 600, order(3), 0)).await,
        StartResult::OVER_POWER
    );

    // A stop for another order is ignored: no answer, the charge goes on.
    let before = gw.len();
    gw.send(bytes_of(&Frame::stop(pid(), 7, 0, order(9)))).await;
    gw.assert_none("an answer to a foreign stop", before, 3, |e| {
        reply_to(e, 7).is_some()
    })
    .await;
    assert_eq!(fleet.pile_snapshot(ID).unwrap().ports[0].state, "charging");
    assert_eq!(
        ask(8, Frame::stop(pid(), 8, 0, order(1))).await,
        StartResult::DONE
    );
    let (_, end) = gw
        .wait_for("the 0x03", before, 5, |e| settlement(e).is_some())
        .await;
    assert_eq!(
        settlement(&end).unwrap().stop_reason,
        StopReason::SERVER_STOP
    );
    assert_eq!(
        ask(9, Frame::stop(pid(), 9, 0, order(1))).await,
        StartResult::SAME_STATE
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_link_says_link_after_30_s_of_silence() {
    let gw = FakeGateway::start(Family::Ap3000).await;
    let _fleet = one_pile(&gw, Family::Ap3000, |c| {
        c.heartbeat = Duration::from_secs(120)
    })
    .await;
    let (i, hb) = gw
        .wait_for("a heartbeat", 0, 5, |e| {
            matches!(msg(e), Some(Message::Heartbeat(_)))
        })
        .await;
    let (_, link) = gw
        .wait_for("link", i, 40, |e| matches!(e.seen, Seen::KeepAlive))
        .await;
    let silence = link.at - hb.at;
    assert!(
        silence >= Duration::from_secs(30) && silence < Duration::from_secs(32),
        "{silence:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn unplugging_and_a_power_outage_settle_the_charge() {
    let gw = FakeGateway::start(Family::Ap3000).await;
    let fleet = one_pile(&gw, Family::Ap3000, |_| {}).await;
    let mark = online(&gw, 0).await;
    gw.send(bytes_of(&Frame::start_by_energy(
        pid(),
        0x201,
        0,
        0,
        order(4),
        0,
    )))
    .await;
    gw.send(bytes_of(&Frame::start_by_energy(
        pid(),
        0x202,
        1,
        50,
        order(5),
        0,
    )))
    .await;
    gw.wait_for("the reply", mark, 5, |e| reply_to(e, 0x202).is_some())
        .await;
    tokio::time::sleep(Duration::from_secs(40)).await;
    let before = gw.len();
    fleet.unplug(ID, 1).unwrap();
    let (_, end) = gw
        .wait_for("the unplug settlement", before, 5, |e| {
            settlement(e).is_some()
        })
        .await;
    let s = settlement(&end).unwrap();
    assert_eq!(
        (s.stop_reason, s.order_no, s.duration_s),
        (StopReason::UNPLUGGED, order(4), 40)
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = gw.len();
    fleet.inject_fault(ID, FaultKind::PowerOutage, 60).unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!gw.is_closed(0), "a dead pile sends no FIN");
    let (_, end) = gw
        .wait_for("the interrupted settlement", before, 60, |e| {
            e.conn == 1 && settlement(e).is_some()
        })
        .await;
    let s = settlement(&end).unwrap();
    assert_eq!(
        (s.stop_reason, s.order_no, s.duration_s),
        (StopReason::NO_POWER, order(5), 50)
    );
}

#[tokio::test(start_paused = true)]
async fn offline_progress_and_the_settlement_are_replayed_after_reconnecting() {
    let gw = FakeGateway::start(Family::Ap3000).await;
    let fleet = one_pile(&gw, Family::Ap3000, |_| {}).await;
    let mark = online(&gw, 0).await;
    gw.send(bytes_of(&Frame::start_by_seconds(
        pid(),
        0x301,
        2,
        120,
        order(6),
        0,
    )))
    .await;
    gw.wait_for("the reply", mark, 5, |e| reply_to(e, 0x301).is_some())
        .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    fleet.drop_network(ID, None).unwrap();
    let dropped = gw.len();
    tokio::time::sleep(Duration::from_secs(200)).await;
    assert_eq!(gw.connections(), 1);
    let snap = fleet.pile_snapshot(ID).unwrap();
    assert_eq!(snap.pending_acks, 1);
    assert!(
        snap.pending_replay > 5,
        "progress samples kept offline: {}",
        snap.pending_replay
    );
    fleet.restore_network(ID).unwrap();
    let restored = Instant::now();
    let (i, iccid) = gw
        .wait_for("the new connection", dropped, 10, |e| e.conn == 1)
        .await;
    assert!(matches!(iccid.seen, Seen::Iccid(_)));
    assert!(
        iccid.at - restored >= Duration::from_secs(5),
        "reconnects after --reconnect-delay"
    );
    let (_, end) = gw
        .wait_for("the settlement", i, 10, |e| settlement(e).is_some())
        .await;
    let s = settlement(&end).unwrap();
    assert_eq!(
        (s.duration_s, s.order_no, s.stop_reason),
        (120, order(6), StopReason::PRESET_TIME)
    );
    let replayed: Vec<u16> = gw.events()[i..]
        .iter()
        .filter_map(power_heartbeat)
        .map(|p| p.duration_s)
        .collect();
    assert!(replayed.len() >= 5, "{replayed:?}");
    assert!(
        replayed.windows(2).all(|w| w[0] < w[1]),
        "in order: {replayed:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fleet.pile_snapshot(ID).unwrap().pending_replay, 0);
}
