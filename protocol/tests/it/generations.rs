//! Older firmware generations and the commands added for issue #12: every
//! shorter layout the vendor documents decodes with the later fields absent,
//! names its generation and re-encodes byte for byte.
use bytes::BytesMut;
use pile_protocol::ap3000::{
    self, Direction, Frame, Message, OrderNo, PhysicalId, PowerHeartbeat, ProtocolVersion,
    Register, Settlement, StartResult, StartStopReply, StopReason,
};
use pile_protocol::bkv::{self, EndReasonCode, SocketStatus};
use pile_protocol::{analyze, DecodeError, Item};
use proptest::prelude::*;

fn id() -> PhysicalId {
    "04AB373B".parse().unwrap()
}

/// Builds a whole AP3000 frame around `data` (length and checksum computed).
fn dny(command: u8, data: &[u8]) -> Vec<u8> {
    let mut f = b"DNY".to_vec();
    f.extend_from_slice(&((data.len() + 9) as u16).to_le_bytes());
    f.extend_from_slice(&id().to_wire());
    f.extend_from_slice(&0x0102u16.to_le_bytes());
    f.push(command);
    f.extend_from_slice(data);
    let sum = f.iter().fold(0u16, |a, b| a.wrapping_add(u16::from(*b)));
    f.extend_from_slice(&sum.to_le_bytes());
    f
}

fn stream_one(bytes: &[u8], dir: Direction) -> ap3000::Frame {
    let mut buf = BytesMut::from(bytes);
    match ap3000::Decoder::new(dir).decode(&mut buf) {
        Some(Item::Frame { frame, raw }) => {
            assert_eq!(&raw[..], bytes);
            assert!(buf.is_empty());
            frame
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn pre_v6_2_start_answers_of_one_and_two_bytes_decode() {
    // Result only (before V6.2 added order no, port and waiting ports).
    let one = dny(0x82, &[0x00]);
    let f = stream_one(&one, Direction::FromDevice);
    let Message::StartStopReply(r) = &f.message else {
        panic!("{f:?}")
    };
    assert_eq!(*r, StartStopReply::result_only(StartResult::DONE));
    assert_eq!((r.port_no(), r.order_no), (None, None));
    assert_eq!(f.to_vec(), one);
    let a = analyze(&one).unwrap();
    assert_eq!(a.name, "start_stop_reply");
    assert_eq!(a.generation, Some("before V6.2 (result only)"));
    assert!(f.summary().contains("pre-V6.2"), "{}", f.summary());

    // Result and one byte more: no whole field, kept raw.
    let two = dny(0x82, &[0x01, 0x00]);
    let f = stream_one(&two, Direction::FromDevice);
    let Message::StartStopReply(r) = &f.message else {
        panic!("{f:?}")
    };
    assert_eq!(
        (r.result, r.order_no, r.port, r.extra.clone()),
        (StartResult::NO_CHARGER, None, None, vec![0x00])
    );
    assert_eq!(f.to_vec(), two);
    assert_eq!(
        analyze(&two).unwrap().generation,
        Some("before V6.2 (result and undocumented trailing bytes)")
    );

    // The V6.2+ vendor example still reads in full.
    let full = pile_protocol::parse_hex(
        "44 4E 59 1D 00 3B 37 AB 04 02 00 82 00 12 34 56 78 12 34 56 78 12 34 56 78 12 34 56 78 01 00 00 FE 06",
    )
    .unwrap();
    let a = analyze(&full).unwrap();
    assert_eq!(a.generation, Some("V6.2+ (order no, port, waiting ports)"));
}

#[test]
fn a_pre_v7_5_start_command_decodes_without_limits() {
    // rate mode | balance u32 | port | command | amount u16 | order no: 25 bytes.
    let mut data = vec![0x00, 0x64, 0, 0, 0, 0x01, 0x01, 0x2C, 0x01];
    data.extend_from_slice(&[0x11; 16]);
    let bytes = dny(0x82, &data);
    let f = stream_one(&bytes, Direction::FromServer);
    let Message::StartStop(s) = &f.message else {
        panic!("{f:?}")
    };
    assert_eq!(
        (
            s.port,
            s.amount,
            s.max_duration_s,
            s.overload_power_dw,
            s.qr_light
        ),
        (1, 300, None, None, None)
    );
    assert_eq!(f.to_vec(), bytes);
    assert_eq!(
        f.message.generation(),
        Some("before V7.5 (no max duration / overload power)")
    );
}

fn sample_settlement() -> Settlement {
    Settlement {
        duration_s: 600,
        max_power_dw: 2000,
        energy_cwh: 3,
        port: 0,
        start_mode: 1,
        card_id: 0,
        stop_reason: StopReason::PRESET_TIME,
        order_no: OrderNo([7; 16]),
        second_max_power_dw: Some(1900),
        timestamp: Some(1_790_000_000),
        occupancy_min: Some(0),
        extra: Vec::new(),
    }
}

fn sample_power() -> PowerHeartbeat {
    PowerHeartbeat {
        port: 0,
        status: ap3000::PortStatus::CHARGING,
        duration_s: 300,
        energy_cwh: 2,
        start_mode: 1,
        power_dw: 1800,
        max_power_dw: 1900,
        min_power_dw: 1700,
        avg_power_dw: 1800,
        order_no: OrderNo([7; 16]),
        period_energy_raw: Some(1),
        peak_power_dw: Some(1900),
        voltage_dv: Some(2200),
        current_ma: Some(800),
        ambient_temperature_raw: Some(90),
        port_temperature_raw: Some(95),
        timestamp: Some(1_790_000_000),
        occupancy_min: Some(0),
        extra: Vec::new(),
    }
}

fn latest_messages() -> Vec<Message> {
    let mut start = match Frame::start_by_seconds(id(), 1, 0, 600, OrderNo([7; 16]), 100).message {
        Message::StartStop(s) => s,
        _ => unreachable!(),
    };
    start.extension = vec![0, 0, 0, 2, 0, 0, 0, 0];
    vec![
        Message::Register(Register {
            firmware: 100,
            port_count: 2,
            virtual_id: 0,
            device_type: 4,
            work_mode: Some(0),
            power_board_version: Some(1),
            extra: Vec::new(),
        }),
        Message::Settlement(sample_settlement()),
        Message::PowerHeartbeat(sample_power()),
        Message::StartStopReply(StartStopReply {
            result: StartResult::DONE,
            order_no: Some(OrderNo([7; 16])),
            port: Some(0),
            waiting_ports: Some(0),
            extra: Vec::new(),
        }),
        Message::StartStop(start),
    ]
}

fn direction_of(m: &Message) -> Direction {
    m.direction().unwrap_or(Direction::FromDevice)
}

#[test]
fn every_generation_encodes_and_decodes_as_itself() {
    let versions = [
        "v5.5", "v6.1", "v6.2", "v7.0", "v7.5", "v7.8", "v8.0", "v8.5", "v8.6",
    ];
    for m in latest_messages() {
        let mut lengths = Vec::new();
        for v in versions {
            let v: ProtocolVersion = v.parse().unwrap();
            let mut old = m.clone();
            old.downgrade(v);
            let frame = Frame::new(id(), 9, old.clone());
            let bytes = frame.to_vec();
            let back = ap3000::decode_frame(&bytes, direction_of(&old)).unwrap();
            assert_eq!(back.message, old, "{} at {v}", m.name());
            assert_eq!(back.to_vec(), bytes, "{} at {v}", m.name());
            assert_eq!(back.message.generation(), old.generation());
            lengths.push(bytes.len());
        }
        // Newer revisions never write less.
        assert!(
            lengths.windows(2).all(|w| w[0] <= w[1]),
            "{}: {lengths:?}",
            m.name()
        );
        assert!(lengths.first() < lengths.last(), "{} grew", m.name());
    }
}

#[test]
fn a_v6_1_pile_speaks_the_short_layouts() {
    let v: ProtocolVersion = "v6.1".parse().unwrap();
    let mut reply = latest_messages().remove(3);
    reply.downgrade(v);
    assert_eq!(reply.generation(), Some("before V6.2 (result only)"));
    let mut power = Message::PowerHeartbeat(sample_power());
    power.downgrade(v);
    assert_eq!(
        power.generation(),
        Some("before V6.2 (ends after the order no)")
    );
    // 0x06 before V6.2: 15 bytes of fixed fields + the order no.
    assert_eq!(Frame::new(id(), 1, power).to_vec().len(), 14 + 15 + 16);
    let mut settle = Message::Settlement(sample_settlement());
    settle.downgrade(v);
    assert_eq!(Frame::new(id(), 1, settle).to_vec().len(), 14 + 13 + 16);
    assert!(!v.knows_command(0x96));
    assert!(!v.sends_command(0x22));
}

#[test]
fn locate_and_its_answer_round_trip() {
    let f = Frame::locate(id(), 5, 30);
    let bytes = f.to_vec();
    assert_eq!((bytes.len(), &bytes[11..13]), (15, &[0x96u8, 30][..]));
    let back = ap3000::decode_frame(&bytes, Direction::FromServer).unwrap();
    assert_eq!(back.message, Message::Locate { seconds: 30 });
    let a = analyze(&bytes).unwrap();
    assert_eq!((a.name, a.direction), ("locate", "down"));

    let ack = Frame::device_ack(id(), 5, 0x96, 0).to_vec();
    let back = ap3000::decode_frame(&ack, Direction::FromDevice).unwrap();
    assert!(matches!(
        back.message,
        Message::Ack {
            command: 0x96,
            result: 0,
            ..
        }
    ));
    assert_eq!(back.message.name(), "locate_ack");
    // A one-byte 0x96 fits both directions (like 0x8D); told, the analyzer agrees.
    let a = pile_protocol::analyze::analyze_ap3000(&ack, Some(Direction::FromDevice)).unwrap();
    assert_eq!((a.name, a.direction), ("locate_ack", "up"));
}

#[test]
fn host_register_and_time_frames_are_kept_raw() {
    // 0x11 / 0x12 are not described by the vendor document: both directions
    // keep them whole.
    for command in [0x11u8, 0x12] {
        for dir in [Direction::FromDevice, Direction::FromServer] {
            let bytes = dny(command, &[1, 2, 3, 4, 5]);
            let f = ap3000::decode_frame(&bytes, dir).unwrap();
            assert_eq!(
                f.message,
                Message::Unknown {
                    command,
                    data: vec![1, 2, 3, 4, 5]
                }
            );
            assert_eq!(f.to_vec(), bytes);
        }
    }
}

#[test]
fn card_number_2_is_read_when_complete_and_kept_raw_otherwise() {
    let mut data = vec![0x7A, 0x8D, 0x05, 0xDD, 4, 0x01, 0, 0];
    data.extend_from_slice(&1_790_000_000u32.to_le_bytes());
    data.extend_from_slice(&[3, 0xAA, 0xBB, 0xCC]);
    let bytes = dny(0x02, &data);
    let f = ap3000::decode_frame(&bytes, Direction::FromDevice).unwrap();
    let Message::CardSwipe(c) = &f.message else {
        panic!()
    };
    assert_eq!(c.card_no2, Some(vec![0xAA, 0xBB, 0xCC]));
    assert_eq!(f.to_vec(), bytes);
    // A length byte promising more than there is: nothing typed, all kept.
    let mut short = data.clone();
    short.truncate(data.len() - 1);
    let bytes = dny(0x02, &short);
    let f = ap3000::decode_frame(&bytes, Direction::FromDevice).unwrap();
    let Message::CardSwipe(c) = &f.message else {
        panic!()
    };
    assert_eq!(
        (c.card_no2.clone(), c.extra.clone()),
        (None, vec![3, 0xAA, 0xBB])
    );
    assert_eq!(f.to_vec(), bytes);
}

proptest! {
    /// Any truncation of a full V8.6 message at a field boundary or not:
    /// whatever decodes re-encodes byte for byte.
    #[test]
    fn truncated_messages_round_trip(which in 0usize..5, cut in 0usize..80) {
        let m = latest_messages().remove(which);
        let dir = direction_of(&m);
        let mut data = BytesMut::new();
        m.encode_data(&mut data);
        let data = &data[..cut.min(data.len())];
        let bytes = dny(m.command(), data);
        if let Ok(f) = ap3000::decode_frame(&bytes, dir) {
            prop_assert_eq!(f.to_vec(), bytes);
        }
    }
}

// ---------------------------------------------------------------------------
// BKV
// ---------------------------------------------------------------------------

fn gw() -> bkv::GatewayId {
    "82210225000520".parse().unwrap()
}

#[test]
fn the_power_tier_end_and_its_ack_round_trip() {
    let v = pile_protocol::parse_hex(
        "fcfe003c00150000000001860044594530050028180151362d2000980017000000020001002407e406080e150702000f0000050024000000000000000037fcee",
    )
    .unwrap();
    let f = bkv::decode_frame(&v).unwrap();
    let bkv::Message::PowerChargeEnd(e) = &f.message else {
        panic!()
    };
    assert_eq!(
        (e.end_reason, e.status),
        (EndReasonCode(2), SocketStatus(0x98))
    );
    assert!(e.status.no_load() && !e.status.over_temperature());
    let ack = bkv::Frame::power_charge_end_ack(f.gateway_id, f.seq, e.socket, e.hole, true);
    let back = bkv::decode_frame(&ack.to_vec()).unwrap();
    assert_eq!(back, ack);
    assert_eq!(back.message.name(), "power_charge_end_ack");
    assert_eq!(back.message.sub(), Some(0x18));
    let bkv::Message::PowerChargeEndAck(p) = back.message else {
        panic!()
    };
    assert_eq!((p.socket, p.hole, p.result), (1, 0, 1));
    // And the device side: our constructor encodes what it decodes.
    let again = bkv::Frame::power_charge_end(f.gateway_id, e.clone());
    assert_eq!(again.to_vec(), v);
}

/// A 0x1000 packet around body TLVs (header tags from `cmd` and `seq`).
fn tlv_frame(dir: bkv::Direction, bkv_cmd: u16, body: &[u8]) -> Vec<u8> {
    let mut payload = vec![4, 1, 1];
    payload.extend_from_slice(&bkv_cmd.to_be_bytes());
    payload.extend_from_slice(&[10, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
    payload.extend_from_slice(&[9, 1, 3]);
    payload.extend_from_slice(&gw().0);
    payload.extend_from_slice(body);
    let (head, dir_byte) = match dir {
        bkv::Direction::Up => (0xFE, 1),
        bkv::Direction::Down => (0xFF, 0),
    };
    let mut f = vec![0xFC, head, 0, 0, 0x10, 0x00, 0, 0, 0, 0, dir_byte];
    f.extend_from_slice(&gw().0);
    f.extend_from_slice(&payload);
    let len = (f.len() + 3 - 4) as u16;
    f[2..4].copy_from_slice(&len.to_be_bytes());
    let sum = f[2..].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    f.push(sum);
    f.extend_from_slice(&[0xFC, 0xEE]);
    f
}

#[test]
fn a_0x1013_packet_is_a_typed_mute_command() {
    let body = [3, 1, 0x4A, 2, 3, 1, 0x5C, 1];
    let down = tlv_frame(bkv::Direction::Down, 0x1013, &body);
    let f = bkv::decode_frame(&down).unwrap();
    let bkv::Message::Mute(m) = &f.message else {
        panic!("{:?}", f.message)
    };
    assert_eq!((m.socket, m.result, m.param(0x5C)), (2, None, Some(1)));
    assert_eq!(f.to_vec(), down);
    let a = analyze(&down).unwrap();
    assert_eq!((a.name, a.sub_command.as_deref()), ("mute", Some("0x1013")));

    let up = tlv_frame(bkv::Direction::Up, 0x1013, &[3, 1, 0x4A, 2, 3, 1, 0x0F, 1]);
    let f = bkv::decode_frame(&up).unwrap();
    let bkv::Message::MuteReply(m) = &f.message else {
        panic!("{:?}", f.message)
    };
    assert_eq!((m.socket, m.result), (2, Some(1)));
    assert_eq!(f.to_vec(), up);
}

/// 0x1004 body TLVs for the required tags only.
fn core_1004() -> Vec<u8> {
    let mut b = vec![3, 1, 0x4A, 1, 3, 1, 0x08, 0, 3, 1, 0x09, 0x98];
    for tag in [0x0Au8, 0x0B, 0x0C, 0x0D, 0x0E] {
        b.extend_from_slice(&[4, 1, tag, 0, tag]);
    }
    b
}

#[test]
fn a_0x1004_without_the_optional_tags_decodes_with_them_absent() {
    let bytes = tlv_frame(bkv::Direction::Up, 0x1004, &core_1004());
    let f = bkv::decode_frame(&bytes).unwrap();
    let bkv::Message::ChargeEndReport(r) = &f.message else {
        panic!()
    };
    assert_eq!(
        (
            r.socket(),
            r.hole(),
            r.business_no(),
            r.minutes(),
            r.status()
        ),
        (1, 0, 0x0A, 0x0E, SocketStatus(0x98))
    );
    assert_eq!(
        (
            r.end_time(),
            r.end_reason(),
            r.energy_fee_fen(),
            r.tier_usage()
        ),
        (None, None, None, None)
    );
    assert_eq!(
        r.generation(),
        "core tags only (no end time, reason or fees)"
    );
    assert_eq!(f.to_vec(), bytes);
    assert_eq!(
        analyze(&bytes).unwrap().generation,
        Some("core tags only (no end time, reason or fees)")
    );

    // Missing a required tag, or a known tag of the wrong width: errors.
    let mut no_minutes = core_1004();
    no_minutes.truncate(no_minutes.len() - 5);
    let err = bkv::decode_frame(&tlv_frame(bkv::Direction::Up, 0x1004, &no_minutes)).unwrap_err();
    assert!(matches!(err, DecodeError::InvalidField { .. }), "{err}");
    let mut wide = core_1004();
    wide.extend_from_slice(&[4, 1, 0x2F, 0, 1]);
    let err = bkv::decode_frame(&tlv_frame(bkv::Direction::Up, 0x1004, &wide)).unwrap_err();
    assert!(err.to_string().contains("0x2f"), "{err}");
}

#[test]
fn unknown_tags_inside_status_clusters_are_kept_and_skipped() {
    // Socket 1 with an unknown 0xF7 in the cluster and 0xF8 in the hole.
    let hole = [
        3, 1, 0x08, 0, 3, 1, 0x09, 0xA0, 4, 1, 0x0A, 0, 5, 4, 1, 0x95, 0x08, 0x98, 4, 1, 0x0B,
        0x07, 0xD0, 4, 1, 0x0C, 0x03, 0xE8, 4, 1, 0x0D, 0, 12, 4, 1, 0x0E, 0, 3, 3, 1, 0xF8, 9,
    ];
    let mut cluster = vec![
        3, 1, 0x4A, 1, 4, 1, 0x3E, 0x51, 0x36, 3, 1, 0xF7, 1, 3, 1, 0x07, 30, 3, 1, 0x96, 31,
    ];
    cluster.push((hole.len() + 2) as u8);
    cluster.extend_from_slice(&[1, 0x5B]);
    cluster.extend_from_slice(&hole);
    let mut body = vec![(cluster.len() + 2) as u8, 1, 0x94];
    body.extend_from_slice(&cluster);
    let bytes = tlv_frame(bkv::Direction::Up, 0x1017, &body);
    let f = bkv::decode_frame(&bytes).unwrap();
    let bkv::Message::StatusReport(r) = &f.message else {
        panic!("{:?}", f.message)
    };
    let s = r.sockets().next().unwrap();
    assert_eq!(
        (s.socket, s.socket_version, s.temperature_c, s.rssi),
        (1, 0x5136, 30, 31)
    );
    let h = s.holes().next().unwrap();
    assert_eq!(
        (
            h.status,
            h.business_no,
            h.voltage_dv,
            h.power_dw,
            h.energy_wh,
            h.minutes
        ),
        (SocketStatus::CHARGING_NOW, 5, 2200, 2000, 12, 3)
    );
    assert_eq!(f.to_vec(), bytes, "kept byte for byte");
    // The same report without a required hole tag is refused.
    let mut broken = bytes.clone();
    let at = broken.windows(3).position(|w| w == [4, 1, 0x95]).unwrap();
    broken[at + 2] = 0x97;
    let sum_at = broken.len() - 3;
    broken[sum_at] = broken[2..sum_at]
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b));
    assert!(bkv::decode_frame(&broken).is_err());
}

#[test]
fn a_card_end_without_the_billing_tail_decodes() {
    // 0x0C up to the card type (pre-V1.5).
    let mut body = vec![0x01, 0x51, 0x36, 0x2D, 0x20, 0x00, 0x98, 0x00, 0x1A];
    body.extend_from_slice(&[0, 0, 0, 2, 0, 2, 0, 0x1F]);
    body.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0]);
    let mut f = vec![0xFC, 0xFE, 0, 0, 0x00, 0x15, 0, 0, 0, 0, 1];
    f.extend_from_slice(&gw().0);
    f.extend_from_slice(&(body.len() as u16).to_be_bytes());
    f.push(0x0C);
    f.extend_from_slice(&body);
    let len = (f.len() + 3 - 4) as u16;
    f[2..4].copy_from_slice(&len.to_be_bytes());
    let sum = f[2..].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    f.push(sum);
    f.extend_from_slice(&[0xFC, 0xEE]);
    let frame = bkv::decode_frame(&f).unwrap();
    let bkv::Message::CardChargeEnd(e) = &frame.message else {
        panic!()
    };
    assert_eq!((e.card_type, e.billing.clone()), (0, None));
    assert_eq!(frame.to_vec(), f);
    assert_eq!(
        frame.message.generation(),
        Some("before V1.5 (no billing tail)")
    );
}

#[test]
fn the_streaming_decoder_keeps_lazy_bodies_without_copying_their_frame() {
    let v = pile_protocol::parse_hex(
        "fcfe007d100000000000018221022500052004010110040a01020000000000000000090103822102250005200301072a03014a01030108000301099804010a003304010b000004010c000004010d000004010e000109012e2024082310172903012f08030112040401850000040186000003018901080184000100000000dbfcee",
    )
    .unwrap();
    let mut buf = BytesMut::from(&[&v[..], &v[..]].concat()[..]);
    let mut dec = bkv::Decoder::new();
    for _ in 0..2 {
        let Some(Item::Frame { frame, raw }) = dec.decode(&mut buf) else {
            panic!()
        };
        let bkv::Message::ChargeEndReport(r) = &frame.message else {
            panic!()
        };
        // The body is a slice of the frame's own bytes.
        let body = r.body();
        let raw_range = raw.as_ptr() as usize..raw.as_ptr() as usize + raw.len();
        assert!(raw_range.contains(&(body.as_ptr() as usize)));
        assert_eq!(r.end_reason(), Some(EndReasonCode(8)));
        assert_eq!(frame.to_vec(), v);
    }
}
