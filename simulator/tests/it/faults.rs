//! Every fault kind, as the gateway sees it on the wire (refusals, network
//! drops and power outages are in `bkv.rs` and `ap3000.rs`).

use std::time::Duration;

use pile_protocol::ap3000::{Frame, Message, OrderNo, PhysicalId};
use pile_protocol::{bkv, DecodeError, Family};
use pile_sim::fault::FaultKind;
use pile_sim::fleet::FleetHandle;
use tokio::time::Instant;

use crate::support::{bytes_of, one_pile, Event, FakeGateway, Seen};

const AP: &str = "04AB373B";
const BKV: &str = "82210225000520";

fn pid() -> PhysicalId {
    AP.parse().unwrap()
}

fn is_frame(e: &Event) -> bool {
    matches!(e.seen, Seen::Ap(_) | Seen::Bkv(_))
}

fn is_ap_heartbeat(e: &Event) -> bool {
    matches!(&e.seen, Seen::Ap(f) if matches!(f.message, Message::Heartbeat(_)))
}

fn reply_to(e: &Event, mid: u16) -> bool {
    matches!(&e.seen, Seen::Ap(f) if f.message_id == mid && matches!(f.message, Message::StartStopReply(_)))
}

async fn ap_online() -> (FakeGateway, FleetHandle, usize) {
    let gw = FakeGateway::start(Family::Ap3000).await;
    let fleet = one_pile(&gw, Family::Ap3000, |_| {}).await;
    let (i, _) = gw.wait_for("a heartbeat", 0, 20, is_ap_heartbeat).await;
    (gw, fleet, i + 1)
}

#[tokio::test(start_paused = true)]
async fn garbage_is_skipped_by_the_gateway_and_the_frames_behind_it_still_arrive() {
    let (gw, fleet, mark) = ap_online().await;
    fleet.inject_fault(AP, FaultKind::Garbage, 30).unwrap();
    let (i, _) = gw
        .wait_for("garbage", mark, 15, |e| {
            matches!(e.seen, Seen::Diag(DecodeError::Garbage { .. }))
        })
        .await;
    gw.wait_for("the heartbeat behind it", i, 1, is_ap_heartbeat)
        .await;

    let gw = FakeGateway::start(Family::Bkv).await;
    let fleet = one_pile(&gw, Family::Bkv, |_| {}).await;
    gw.wait_for("online", 0, 5, is_frame).await;
    fleet.inject_fault(BKV, FaultKind::Garbage, 30).unwrap();
    let (i, _) = gw
        .wait_for("garbage", 0, 15, |e| {
            matches!(e.seen, Seen::Diag(DecodeError::Garbage { .. }))
        })
        .await;
    gw.wait_for(
        "the heartbeat behind it",
        i,
        1,
        |e| matches!(&e.seen, Seen::Bkv(f) if matches!(f.message, bkv::Message::Heartbeat(_))),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn bad_checksums_are_rejected_by_the_gateway_until_the_fault_ends() {
    let (gw, fleet, mark) = ap_online().await;
    fleet.inject_fault(AP, FaultKind::BadChecksum, 20).unwrap();
    let (i, _) = gw
        .wait_for("a bad checksum", mark, 15, |e| {
            matches!(e.seen, Seen::Diag(DecodeError::BadChecksum { .. }))
        })
        .await;
    let (_, good) = gw
        .wait_for("a good heartbeat again", i, 30, is_ap_heartbeat)
        .await;
    assert!(good.at >= Instant::now() - Duration::from_secs(30));

    let gw = FakeGateway::start(Family::Bkv).await;
    let fleet = one_pile(&gw, Family::Bkv, |_| {}).await;
    gw.wait_for("online", 0, 5, is_frame).await;
    let mark = gw.len();
    fleet.inject_fault(BKV, FaultKind::BadChecksum, 20).unwrap();
    gw.wait_for("a bad checksum", mark, 15, |e| {
        matches!(e.seen, Seen::Diag(DecodeError::BadChecksum { .. }))
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn split_frames_arrive_a_byte_at_a_time_and_still_decode() {
    let (gw, fleet, mark) = ap_online().await;
    fleet.inject_fault(AP, FaultKind::SplitBytes, 30).unwrap();
    let (_, e) = gw
        .wait_for("a split heartbeat", mark, 15, is_ap_heartbeat)
        .await;
    assert!(e.read_len < 4, "the last read held {} byte(s)", e.read_len);
}

#[tokio::test(start_paused = true)]
async fn merged_frames_arrive_in_one_read() {
    let (gw, fleet, mark) = ap_online().await;
    fleet.inject_fault(AP, FaultKind::MergeFrames, 60).unwrap();
    gw.send(bytes_of(&Frame::start_by_seconds(
        pid(),
        0x11,
        0,
        600,
        OrderNo([1; 16]),
        0,
    )))
    .await;
    gw.send(bytes_of(&Frame::start_by_seconds(
        pid(),
        0x12,
        1,
        600,
        OrderNo([2; 16]),
        0,
    )))
    .await;
    gw.wait_for("the replies", mark, 5, |e| reply_to(e, 0x12))
        .await;
    let events = gw.events();
    let merged = events[mark..]
        .windows(2)
        .any(|w| is_frame(&w[0]) && is_frame(&w[1]) && w[0].read_no == w[1].read_no);
    assert!(merged, "two frames came out of one read");
}

#[tokio::test(start_paused = true)]
async fn duplicated_frames_arrive_twice() {
    let (gw, fleet, mark) = ap_online().await;
    fleet
        .inject_fault(AP, FaultKind::DuplicateFrames, 30)
        .unwrap();
    let (i, a) = gw.wait_for("a heartbeat", mark, 15, is_ap_heartbeat).await;
    let (_, b) = gw.wait_for("its copy", i + 1, 1, is_ap_heartbeat).await;
    match (&a.seen, &b.seen) {
        (Seen::Ap(x), Seen::Ap(y)) => assert_eq!(x, y),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn answers_come_late_or_never_while_the_commands_still_run() {
    let (gw, fleet, mark) = ap_online().await;
    fleet.inject_fault(AP, FaultKind::DelayAnswers, 60).unwrap();
    let sent = Instant::now();
    gw.send(bytes_of(&Frame::start_by_seconds(
        pid(),
        0x21,
        0,
        600,
        OrderNo([1; 16]),
        0,
    )))
    .await;
    let (_, e) = gw
        .wait_for("the late reply", mark, 10, |e| reply_to(e, 0x21))
        .await;
    assert!(
        e.at - sent >= Duration::from_secs(5),
        "answered after {:?}",
        e.at - sent
    );

    fleet
        .inject_fault(AP, FaultKind::MissingAnswers, 60)
        .unwrap();
    let mark = gw.len();
    gw.send(bytes_of(&Frame::start_by_seconds(
        pid(),
        0x22,
        1,
        600,
        OrderNo([2; 16]),
        0,
    )))
    .await;
    gw.assert_none("a reply", mark, 10, |e| reply_to(e, 0x22))
        .await;
    assert_eq!(fleet.pile_snapshot(AP).unwrap().ports[1].state, "charging");
}

#[tokio::test(start_paused = true)]
async fn a_black_hole_keeps_the_socket_open_and_silent() {
    let (gw, fleet, mark) = ap_online().await;
    fleet.inject_fault(AP, FaultKind::BlackHole, 40).unwrap();
    let holed = Instant::now();
    gw.send(bytes_of(&Frame::start_by_seconds(
        pid(),
        0x31,
        0,
        600,
        OrderNo([1; 16]),
        0,
    )))
    .await;
    tokio::time::sleep(Duration::from_secs(39)).await;
    assert!(
        gw.events()[mark..]
            .iter()
            .all(|e| e.at < holed + Duration::from_secs(1)),
        "nothing flows"
    );
    assert!(!gw.is_closed(0));
    assert_eq!(
        fleet.pile_snapshot(AP).unwrap().ports[0].state,
        "plugged",
        "the command was lost"
    );
    gw.wait_for("traffic again", mark, 15, is_ap_heartbeat)
        .await;
    assert_eq!(gw.connections(), 1, "on the same connection");
}
