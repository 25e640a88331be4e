//! A BKV gateway pile against the fake gateway.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use pile_protocol::bkv::{self, Frame, GatewayId, Message};
use pile_protocol::Family;
use pile_sim::fault::FaultKind;
use tokio::time::Instant;

use crate::support::{one_pile, Event, FakeGateway, Seen};

const ID: &str = "82210225000520";

fn gw_id() -> GatewayId {
    ID.parse().unwrap()
}

fn msg(e: &Event) -> Option<&Message> {
    match &e.seen {
        Seen::Bkv(f) => Some(&f.message),
        _ => None,
    }
}

fn is_heartbeat(e: &Event) -> bool {
    matches!(msg(e), Some(Message::Heartbeat(_)))
}

/// The hole state of `socket`/`hole` in a 0x1017 report.
fn status_of(e: &Event, socket: u8, hole: u8) -> Option<bkv::HoleState> {
    match msg(e)? {
        Message::StatusReport(r) => r
            .sockets()
            .find(|s| s.socket == socket)?
            .holes()
            .find(|h| h.hole == hole),
        _ => None,
    }
}

fn reply_to(e: &Event, seq: u32) -> Option<bkv::ControlReply> {
    match &e.seen {
        Seen::Bkv(f) if f.seq == seq => match &f.message {
            Message::ControlReply(r) => Some(r.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn charge_end(e: &Event) -> Option<bkv::ChargeEnd> {
    match msg(e)? {
        Message::ChargeEnd(c) => Some(c.clone()),
        _ => None,
    }
}

async fn online(gw: &FakeGateway) -> usize {
    let (i, _) = gw.wait_for("a heartbeat", 0, 10, is_heartbeat).await;
    let (j, _) = gw
        .wait_for("the socket 2 status", i, 5, |e| {
            status_of(e, 2, 1).is_some()
        })
        .await;
    j + 1
}

#[tokio::test(start_paused = true)]
async fn a_charge_by_time_reports_progress_and_ends_at_the_right_minute() {
    let gw = FakeGateway::start(Family::Bkv).await;
    let fleet = one_pile(&gw, Family::Bkv, |_| {}).await;
    let mark = online(&gw).await;

    let t0 = Instant::now();
    gw.send(Frame::start_by_time(gw_id(), 0x11, 2, 1, 2).to_bytes())
        .await;
    let (i, e) = gw
        .wait_for("the 0x07 reply", mark, 5, |e| reply_to(e, 0x11).is_some())
        .await;
    let reply = reply_to(&e, 0x11).unwrap();
    assert_eq!((reply.result, reply.socket, reply.hole), (1, 2, 1));
    let (_, lit) = gw
        .wait_for("the port lit", i, 5, |e| status_of(e, 2, 1).is_some())
        .await;
    assert_eq!(
        status_of(&lit, 2, 1).unwrap().status.0,
        0xB0,
        "charging, no load yet"
    );
    let (i, plugged) = gw
        .wait_for("the load", i, 5, |e| {
            status_of(e, 2, 1).is_some_and(|h| h.status.0 == 0xA0)
        })
        .await;
    assert!(
        plugged.at - t0 >= Duration::from_secs(2),
        "the user plugs in after --plug-delay"
    );

    // Progress: a status report each heartbeat while charging, energy growing.
    let (i, p1) = gw
        .wait_for("progress", i + 1, 15, |e| {
            status_of(e, 2, 1).is_some_and(|h| h.power_dw > 0)
        })
        .await;
    let (i, p2) = gw
        .wait_for("more progress", i + 1, 15, |e| {
            status_of(e, 2, 1).is_some_and(|h| h.power_dw > 0)
        })
        .await;
    let (h1, h2) = (status_of(&p1, 2, 1).unwrap(), status_of(&p2, 2, 1).unwrap());
    assert!(h2.energy_wh >= h1.energy_wh && h2.minutes >= h1.minutes);
    assert_eq!(h1.business_no, reply.business_no);
    let power_w = f64::from(h2.power_dw) / 10.0;
    assert!(
        (150.0..200.0).contains(&power_w),
        "near --power-w: {power_w}"
    );

    let (i, end) = gw
        .wait_for("the end report", i, 130, |e| charge_end(e).is_some())
        .await;
    let c = charge_end(&end).unwrap();
    let took = end.at - t0;
    assert!(
        took >= Duration::from_secs(120) && took < Duration::from_secs(123),
        "{took:?}"
    );
    assert_eq!(
        (c.socket, c.hole, c.business_no, c.minutes),
        (2, 1, reply.business_no, 2)
    );
    assert!(c.energy_wh > 3, "about 2 minutes at 180 W: {}", c.energy_wh);
    gw.assert_none("a resend after the ack", i + 1, 40, |e| {
        charge_end(e).is_some()
    })
    .await;
    let snap = fleet.pile_snapshot(ID).unwrap();
    assert_eq!(snap.pending_replay, 0);
    assert_eq!(snap.ports[3].state, "idle", "the user took the bike");
}

#[tokio::test(start_paused = true)]
async fn an_unacknowledged_end_is_resent_until_acknowledged() {
    let gw = FakeGateway::start(Family::Bkv).await;
    gw.policy.ack_ends.store(false, SeqCst);
    let fleet = one_pile(&gw, Family::Bkv, |_| {}).await;
    let mark = online(&gw).await;
    gw.send(Frame::start_by_energy(gw_id(), 0x12, 1, 0, 2).to_bytes())
        .await;
    let (i, first) = gw
        .wait_for("the end report", mark, 200, |e| charge_end(e).is_some())
        .await;
    let (i, second) = gw
        .wait_for("a resend", i + 1, 20, |e| charge_end(e).is_some())
        .await;
    let gap = second.at - first.at;
    assert!(
        gap >= Duration::from_secs(15) && gap < Duration::from_secs(17),
        "{gap:?}"
    );
    assert_eq!(charge_end(&first), charge_end(&second), "the same record");
    assert!(
        charge_end(&first).unwrap().energy_wh >= 2,
        "the energy target"
    );
    assert_eq!(fleet.pile_snapshot(ID).unwrap().pending_acks, 1);
    gw.policy.ack_ends.store(true, SeqCst);
    let (i, _) = gw
        .wait_for("a resend", i + 1, 20, |e| charge_end(e).is_some())
        .await;
    gw.assert_none("a resend after the ack", i + 1, 40, |e| {
        charge_end(e).is_some()
    })
    .await;
    assert_eq!(fleet.pile_snapshot(ID).unwrap().pending_acks, 0);
}

#[tokio::test(start_paused = true)]
async fn a_remote_stop_and_an_unplug_end_the_charge() {
    let gw = FakeGateway::start(Family::Bkv).await;
    let fleet = one_pile(&gw, Family::Bkv, |_| {}).await;
    let mark = online(&gw).await;
    gw.send(Frame::start_by_time(gw_id(), 0x21, 1, 0, 60).to_bytes())
        .await;
    gw.send(Frame::start_by_time(gw_id(), 0x22, 1, 1, 60).to_bytes())
        .await;
    let (_, e) = gw
        .wait_for("a reply", mark, 5, |e| reply_to(e, 0x22).is_some())
        .await;
    let bn = reply_to(&e, 0x22).unwrap().business_no;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let mark = gw.len();
    gw.send(Frame::stop(gw_id(), 0x23, 1, 1).to_bytes()).await;
    let (i, e) = gw
        .wait_for("the stop reply", mark, 5, |e| reply_to(e, 0x23).is_some())
        .await;
    let r = reply_to(&e, 0x23).unwrap();
    assert_eq!((r.result, r.business_no), (1, bn));
    let (_, end) = gw
        .wait_for("the end report", i, 5, |e| charge_end(e).is_some())
        .await;
    let c = charge_end(&end).unwrap();
    assert_eq!((c.hole, c.business_no, c.minutes), (1, bn, 1));

    let mark = gw.len();
    fleet.unplug(ID, 1).unwrap();
    let (_, end) = gw
        .wait_for("the unplug end", mark, 5, |e| charge_end(e).is_some())
        .await;
    let c = charge_end(&end).unwrap();
    assert_eq!((c.socket, c.hole), (1, 0));
    assert_eq!(
        c.status.0, 0x88,
        "online + ended, no fault and no no-load bit: unplugged before the target"
    );
}

#[tokio::test(start_paused = true)]
async fn a_charge_that_ends_while_offline_is_reported_after_reconnecting() {
    let gw = FakeGateway::start(Family::Bkv).await;
    let fleet = one_pile(&gw, Family::Bkv, |_| {}).await;
    let mark = online(&gw).await;
    gw.send(Frame::start_by_time(gw_id(), 0x31, 1, 0, 3).to_bytes())
        .await;
    gw.wait_for("the reply", mark, 5, |e| reply_to(e, 0x31).is_some())
        .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    fleet.drop_network(ID, Some(240)).unwrap();
    let dropped_at = gw.len();
    let dropped = Instant::now();
    tokio::time::sleep(Duration::from_secs(200)).await;
    assert_eq!(gw.connections(), 1);
    assert!(!gw.is_closed(0), "no FIN while the cable is out");
    assert!(
        gw.events()[dropped_at..]
            .iter()
            .all(|e| e.at < dropped + Duration::from_secs(1)),
        "nothing flows while the cable is out"
    );
    let snap = fleet.pile_snapshot(ID).unwrap();
    assert_eq!(snap.connection, "network_down");
    assert_eq!(snap.pending_acks, 1, "the end is kept in the EEPROM");
    let (_, end) = gw
        .wait_for("the replayed end", dropped_at, 120, |e| {
            e.conn == 1 && charge_end(e).is_some()
        })
        .await;
    assert_eq!(
        charge_end(&end).unwrap().minutes,
        3,
        "ended on its own at the right minute"
    );
    let back = end.at - dropped;
    assert!(
        back >= Duration::from_secs(245) && back < Duration::from_secs(249),
        "reconnected --reconnect-delay after the network returned: {back:?}"
    );
    assert_eq!(gw.connections(), 2);
    gw.assert_none("a resend", gw.len(), 30, |e| charge_end(e).is_some())
        .await;
    assert_eq!(fleet.pile_snapshot(ID).unwrap().pending_acks, 0);
}

#[tokio::test(start_paused = true)]
async fn refusals_and_socket_queries_are_answered() {
    let gw = FakeGateway::start(Family::Bkv).await;
    let fleet = one_pile(&gw, Family::Bkv, |_| {}).await;
    let mark = online(&gw).await;
    gw.send(Frame::start_by_time(gw_id(), 0x41, 9, 0, 10).to_bytes())
        .await;
    let (_, e) = gw
        .wait_for("no such socket", mark, 5, |e| reply_to(e, 0x41).is_some())
        .await;
    assert_eq!(reply_to(&e, 0x41).unwrap().result, 0);
    gw.send(Frame::start_by_time(gw_id(), 0x42, 1, 0, 10).to_bytes())
        .await;
    gw.send(Frame::start_by_time(gw_id(), 0x43, 1, 0, 10).to_bytes())
        .await;
    let (_, e) = gw
        .wait_for("same state", mark, 5, |e| reply_to(e, 0x43).is_some())
        .await;
    assert_eq!(reply_to(&e, 0x43).unwrap().result, 0);
    fleet.inject_fault(ID, FaultKind::Refuse, 60).unwrap();
    gw.send(Frame::start_by_time(gw_id(), 0x44, 2, 0, 10).to_bytes())
        .await;
    let (_, e) = gw
        .wait_for("refused", mark, 5, |e| reply_to(e, 0x44).is_some())
        .await;
    assert_eq!(reply_to(&e, 0x44).unwrap().result, 0);

    tokio::time::sleep(Duration::from_secs(5)).await;
    gw.send(Frame::query_socket(gw_id(), 0x45, 1).to_bytes())
        .await;
    let (_, e) = gw
        .wait_for(
            "the 0x1C",
            mark,
            5,
            |e| matches!(&e.seen, Seen::Bkv(f) if f.seq == 0x45),
        )
        .await;
    match msg(&e) {
        Some(Message::SocketState(s)) => {
            assert_eq!(s.socket, 1);
            assert_eq!(s.holes.len(), 2);
            assert_eq!(s.holes[0].status.0, 0xA0, "hole A charging");
            assert_eq!(s.holes[1].status.0, 0x80, "hole B idle");
            assert!(s.holes[0].energy_wh > 0 || s.holes[0].power_dw > 0);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_fee_charge_is_answered_and_ends_with_a_1004_report() {
    let gw = FakeGateway::start(Family::Bkv).await;
    let _fleet = one_pile(&gw, Family::Bkv, |_| {}).await;
    let mark = online(&gw).await;
    let tiers = vec![bkv::FeeTier {
        time: bkv::HourMinute {
            hour: 23,
            minute: 59,
        },
        energy_price_fen: 50,
        service_fee_fen: 50,
    }];
    gw.send(Frame::fee_charge(gw_id(), 0x51, 2, 0, true, 4, 500, 1, tiers.clone()).to_bytes())
        .await;
    let (_, e) = gw
        .wait_for("the 0x1007 reply", mark, 5, |e| {
            matches!(msg(e), Some(Message::FeeChargeReply(_)))
        })
        .await;
    match msg(&e) {
        Some(Message::FeeChargeReply(a)) => {
            assert_eq!((a.result, a.socket, a.hole, a.header.seq), (1, 2, 0, 0x51));
        }
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_secs(100)).await;
    let mark = gw.len();
    gw.send(Frame::fee_charge(gw_id(), 0x52, 2, 0, false, 4, 0, 1, tiers).to_bytes())
        .await;
    let (_, e) = gw
        .wait_for("the 0x1004", mark, 5, |e| {
            matches!(msg(e), Some(Message::ChargeEndReport(_)))
        })
        .await;
    match msg(&e) {
        Some(Message::ChargeEndReport(r)) => {
            assert_eq!((r.socket(), r.hole(), r.minutes()), (2, 0, 2));
            assert_eq!(
                r.end_reason(),
                Some(bkv::EndReasonCode(7)),
                "stopped by the server"
            );
            assert!(r.energy_wh() > 0);
        }
        other => panic!("{other:?}"),
    }
}
