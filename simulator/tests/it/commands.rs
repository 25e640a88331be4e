//! The commands added for issue #12 and the older firmware generations, against
//! the fake gateway: AP3000 0x96 locate, 0x97 mute and a V6.1 pile's short
//! layouts; BKV 0x17/0x18 power tiers, 0x1007 stopping when the money is used
//! up, 0x1013 mute and 0x1D for a socket the gateway lacks.

use std::time::Duration;

use pile_protocol::ap3000::{self, Message as ApMessage, OrderNo, PhysicalId, StartResult};
use pile_protocol::bkv::{
    self, EndReasonCode, FeeTier, GatewayId, HourMinute, Message, PowerTier, SocketParams, Tlv,
    TlvHeader,
};
use pile_protocol::Family;
use pile_sim::firmware::FirmwarePlan;
use tokio::time::Instant;

use crate::support::{bytes_of, one_pile, Event, FakeGateway, Seen};

const AP_ID: &str = "04AB373B";
const BKV_ID: &str = "82210225000520";

fn pid() -> PhysicalId {
    AP_ID.parse().unwrap()
}

fn gw_id() -> GatewayId {
    BKV_ID.parse().unwrap()
}

fn ap(e: &Event) -> Option<&ap3000::Frame> {
    match &e.seen {
        Seen::Ap(f) => Some(f),
        _ => None,
    }
}

fn bkv_msg(e: &Event) -> Option<&bkv::Frame> {
    match &e.seen {
        Seen::Bkv(f) => Some(f),
        _ => None,
    }
}

async fn ap_online(gw: &FakeGateway) -> usize {
    let (i, _) = gw
        .wait_for("a heartbeat", 0, 20, |e| {
            ap(e).is_some_and(|f| matches!(f.message, ApMessage::Heartbeat(_)))
        })
        .await;
    i + 1
}

async fn bkv_online(gw: &FakeGateway) -> usize {
    let (i, _) = gw
        .wait_for("the status of socket 2", 0, 10, |e| {
            bkv_msg(e).is_some_and(|f| {
                matches!(&f.message, Message::StatusReport(r) if r.sockets().any(|s| s.socket == 2))
            })
        })
        .await;
    i + 1
}

fn ack_of(e: &Event, command: u8, mid: u16) -> Option<u8> {
    match ap(e)? {
        f if f.message_id == mid => match &f.message {
            ApMessage::Ack {
                command: c, result, ..
            } if *c == command => Some(*result),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn an_ap3000_pile_answers_locate_and_mute_and_flashes() {
    let gw = FakeGateway::start(Family::Ap3000).await;
    let fleet = one_pile(&gw, Family::Ap3000, |_| {}).await;
    let mark = ap_online(&gw).await;
    gw.send(bytes_of(&ap3000::Frame::locate(pid(), 0x300, 10)))
        .await;
    let (i, e) = gw
        .wait_for("the 0x96 answer", mark, 5, |e| {
            ack_of(e, 0x96, 0x300).is_some()
        })
        .await;
    assert_eq!(ack_of(&e, 0x96, 0x300), Some(0), "0 = done");
    assert!(fleet.pile(AP_ID).unwrap().snapshot().locating);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(
        !fleet.pile(AP_ID).unwrap().snapshot().locating,
        "for the seconds asked"
    );
    let mute = ap3000::Frame::new(
        pid(),
        0x301,
        ApMessage::SetMute {
            mode: 1,
            extra: Vec::new(),
        },
    );
    gw.send(bytes_of(&mute)).await;
    let (_, e) = gw
        .wait_for("the 0x97 answer", i, 5, |e| {
            ack_of(e, 0x97, 0x301).is_some()
        })
        .await;
    assert_eq!(ack_of(&e, 0x97, 0x301), Some(0));
}

#[tokio::test(start_paused = true)]
async fn a_v6_1_pile_speaks_the_old_layouts_and_ignores_what_it_does_not_know() {
    let gw = FakeGateway::start(Family::Ap3000).await;
    let fleet = one_pile(&gw, Family::Ap3000, |c| {
        c.firmware = FirmwarePlan::parse(["ap3000=v6.1"]).unwrap();
    })
    .await;
    let mark = ap_online(&gw).await;
    assert_eq!(
        fleet.pile(AP_ID).unwrap().snapshot().firmware,
        "ap3000 V6.1"
    );
    let register = gw
        .events()
        .into_iter()
        .find_map(|e| match ap(&e).map(|f| f.message.clone()) {
            Some(ApMessage::Register(r)) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (register.work_mode, register.power_board_version),
        (None, None)
    );

    let order = OrderNo([5; 16]);
    gw.send(bytes_of(&ap3000::Frame::start_by_seconds(
        pid(),
        0x401,
        0,
        30,
        order,
        100,
    )))
    .await;
    let (i, e) = gw
        .wait_for("the 0x82 answer", mark, 5, |e| {
            ap(e).is_some_and(|f| {
                f.message_id == 0x401 && matches!(f.message, ApMessage::StartStopReply(_))
            })
        })
        .await;
    let f = ap(&e).unwrap();
    let ApMessage::StartStopReply(r) = &f.message else {
        unreachable!()
    };
    assert_eq!(*r, ap3000::StartStopReply::result_only(StartResult::DONE));
    assert_eq!(
        f.message.generation(),
        Some("before V6.2 (result only)"),
        "a one-byte answer on the wire"
    );
    assert_eq!(f.to_vec().len(), 15);
    let (i, e) = gw
        .wait_for("a 0x06", i, 15, |e| {
            ap(e).is_some_and(|f| matches!(f.message, ApMessage::PowerHeartbeat(_)))
        })
        .await;
    assert_eq!(
        ap(&e).unwrap().message.generation(),
        Some("before V6.2 (ends after the order no)")
    );
    let (i, e) = gw
        .wait_for("the 0x03", i, 40, |e| {
            ap(e).is_some_and(|f| matches!(f.message, ApMessage::Settlement(_)))
        })
        .await;
    let ApMessage::Settlement(s) = &ap(&e).unwrap().message else {
        unreachable!()
    };
    assert_eq!((s.duration_s, s.order_no, s.timestamp), (30, order, None));

    // 0x96 came with V8.6: an older pile stays silent; it never asked the time.
    gw.send(bytes_of(&ap3000::Frame::locate(pid(), 0x402, 5)))
        .await;
    gw.assert_none("a 0x96 answer from a V6.1 pile", i, 20, |e| {
        ack_of(e, 0x96, 0x402).is_some()
    })
    .await;
    assert!(!gw
        .events()
        .iter()
        .any(|e| ap(e).is_some_and(|f| matches!(f.message, ApMessage::TimeRequest))));
}

fn tiers() -> Vec<PowerTier> {
    // The guide's 0x17 example tiers.
    [
        (2000, 25, 60),
        (4000, 50, 60),
        (6000, 100, 60),
        (8000, 150, 60),
        (20000, 500, 120),
    ]
    .into_iter()
    .map(|(power_dw, price_fen, minutes)| PowerTier {
        power_dw,
        price_fen,
        minutes,
    })
    .collect()
}

#[tokio::test(start_paused = true)]
async fn a_power_tier_charge_stops_when_the_amount_is_spent_and_reports_0x18() {
    let gw = FakeGateway::start(Family::Bkv).await;
    let fleet = one_pile(&gw, Family::Bkv, |_| {}).await;
    let mark = bkv_online(&gw).await;
    let t0 = Instant::now();
    // 1 fen in the 200 W tier (0.25 yuan per 60 min) buys 144 s.
    gw.send(bkv::Frame::power_charge(gw_id(), 0x51, 1, 0, 1, tiers()).to_bytes())
        .await;
    let (i, e) = gw
        .wait_for("the 0x17 answer", mark, 5, |e| {
            bkv_msg(e)
                .is_some_and(|f| f.seq == 0x51 && matches!(f.message, Message::PowerChargeReply(_)))
        })
        .await;
    let Message::PowerChargeReply(r) = &bkv_msg(&e).unwrap().message else {
        unreachable!()
    };
    assert_eq!((r.result, r.socket, r.hole), (1, 1, 0));
    let business_no = r.business_no;
    let (i, e) = gw
        .wait_for("the 0x18", i, 200, |e| {
            bkv_msg(e).is_some_and(|f| matches!(f.message, Message::PowerChargeEnd(_)))
        })
        .await;
    let ended = e.at - t0;
    assert!(
        ended >= Duration::from_secs(144) && ended < Duration::from_secs(146),
        "the money lasts 144 s: {ended:?}"
    );
    let Message::PowerChargeEnd(end) = &bkv_msg(&e).unwrap().message else {
        unreachable!()
    };
    assert_eq!(
        (
            end.socket,
            end.hole,
            end.business_no,
            end.amount_fen,
            end.minutes
        ),
        (1, 0, business_no, 1, 3)
    );
    assert_eq!(
        end.tier_minutes,
        vec![3, 0, 0, 0, 0],
        "all in the 200 W tier"
    );
    assert!(end.settle_power_dw > 1500 && end.settle_power_dw <= 2000);
    assert_eq!(end.end_reason, EndReasonCode(3));
    assert!(!end.status.any_fault() && end.status.ended());
    // Acknowledged with 0x18: not sent again.
    gw.assert_none("a second 0x18", i + 1, 20, |e| {
        bkv_msg(e).is_some_and(|f| matches!(f.message, Message::PowerChargeEnd(_)))
    })
    .await;
    assert_eq!(fleet.pile(BKV_ID).unwrap().snapshot().pending_replay, 0);
}

#[tokio::test(start_paused = true)]
async fn a_fee_charge_stops_when_the_paid_amount_is_used_up() {
    let gw = FakeGateway::start(Family::Bkv).await;
    let _fleet = one_pile(&gw, Family::Bkv, |_| {}).await;
    let mark = bkv_online(&gw).await;
    let t0 = Instant::now();
    // 5 fen at 1 yuan/kWh energy + 1 yuan/kWh service: 25 Wh.
    let tier = FeeTier {
        time: HourMinute {
            hour: 23,
            minute: 59,
        },
        energy_price_fen: 100,
        service_fee_fen: 100,
    };
    gw.send(bkv::Frame::fee_charge(gw_id(), 0x61, 2, 1, true, 4, 5, 1, vec![tier]).to_bytes())
        .await;
    let (_, e) = gw
        .wait_for("the 0x1004", mark, 900, |e| {
            bkv_msg(e).is_some_and(|f| matches!(f.message, Message::ChargeEndReport(_)))
        })
        .await;
    let Message::ChargeEndReport(r) = &bkv_msg(&e).unwrap().message else {
        unreachable!()
    };
    assert_eq!((r.socket(), r.hole()), (2, 1));
    assert_eq!(
        (r.energy_fee_fen(), r.service_fee_fen()),
        (Some(3), Some(2)),
        "5 fen paid, 5 fen spent (half up, energy first)"
    );
    assert!((24..=26).contains(&r.energy_wh()), "{} Wh", r.energy_wh());
    // About 25 Wh at the charger's ~180 W (±5 %), after the 2 s plug delay.
    let secs = (e.at - t0).as_secs();
    assert!((450..=560).contains(&secs), "{secs} s");
    assert_eq!(r.tier_count(), Some(1));
    let usage = r.tier_usage().unwrap();
    assert_eq!(usage.len(), 6);
    assert_eq!(
        u32::from_be_bytes([usage[2], usage[3], usage[4], usage[5]]),
        u32::from(r.energy_wh())
    );
}

#[tokio::test(start_paused = true)]
async fn bkv_mute_is_answered_and_an_unknown_socket_is_neither_muted_nor_queried() {
    let gw = FakeGateway::start(Family::Bkv).await;
    let _fleet = one_pile(&gw, Family::Bkv, |_| {}).await;
    let mark = bkv_online(&gw).await;
    let mute = |seq: u32, socket: u8| {
        bkv::Frame::new(
            bkv::Direction::Down,
            seq,
            gw_id(),
            Message::Mute(SocketParams {
                header: TlvHeader {
                    seq: u64::from(seq) + 1000,
                    gateway_id: gw_id(),
                },
                socket,
                result: None,
                params: vec![Tlv::u8(0x5C, 1)],
            }),
        )
        .to_bytes()
    };
    let reply = |e: &Event, seq: u32| match bkv_msg(e) {
        Some(f) if f.seq == seq => match &f.message {
            Message::MuteReply(p) => Some(p.clone()),
            _ => None,
        },
        _ => None,
    };
    gw.send(mute(0x71, 1)).await;
    let (i, e) = gw
        .wait_for("the mute answer", mark, 5, |e| reply(e, 0x71).is_some())
        .await;
    let p = reply(&e, 0x71).unwrap();
    assert_eq!(
        (p.socket, p.result, p.header.seq),
        (1, Some(1), 0x71 + 1000)
    );
    gw.send(mute(0x72, 9)).await;
    let (i, e) = gw
        .wait_for("the refusal", i, 5, |e| reply(e, 0x72).is_some())
        .await;
    assert_eq!(reply(&e, 0x72).unwrap().result, Some(0), "no socket 9");

    // 0x1D: socket 1 answers with 0x1C, socket 9 cannot be reached.
    gw.send(bkv::Frame::query_socket(gw_id(), 0x73, 1).to_bytes())
        .await;
    let (i, _) = gw
        .wait_for("the 0x1C", i, 5, |e| {
            bkv_msg(e)
                .is_some_and(|f| f.seq == 0x73 && matches!(f.message, Message::SocketState(_)))
        })
        .await;
    gw.send(bkv::Frame::query_socket(gw_id(), 0x74, 9).to_bytes())
        .await;
    gw.assert_none("a 0x1C for socket 9", i, 20, |e| {
        bkv_msg(e).is_some_and(|f| f.seq == 0x74)
    })
    .await;
}
