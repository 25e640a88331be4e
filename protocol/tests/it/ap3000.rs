//! ap3000 integration tests (vectors, streaming, properties).
use bytes::BytesMut;
use pile_protocol::ap3000::*;
use pile_protocol::{DecodeError, Item};
use proptest::prelude::*;

use crate::vectors::{self, Vector};

fn direction(v: &Vector) -> Direction {
    match v.direction.as_str() {
        "up" => Direction::FromDevice,
        "down" => Direction::FromServer,
        other => panic!("{}: unexpected direction {other:?}", v.name),
    }
}

fn pid() -> PhysicalId {
    "04AB373B".parse().unwrap()
}

fn decode_vector(name: &str) -> Frame {
    let v = vectors::of("ap3000")
        .into_iter()
        .find(|v| v.name == name)
        .expect(name);
    decode_frame(&v.bytes, direction(&v)).unwrap()
}

#[test]
fn every_vector_decodes_with_its_fields_and_re_encodes_byte_for_byte() {
    let all = vectors::of("ap3000");
    assert!(all.len() >= 29, "got {} ap3000 vectors", all.len());
    for v in &all {
        assert!(v.valid && v.errors.is_empty(), "{} should be valid", v.name);
        let frame =
            decode_frame(&v.bytes, direction(v)).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        println!("{}: {}", v.name, frame.summary());
        let fields = v.fields.as_object().expect("fields object");
        for (key, want) in fields {
            match key.as_str() {
                "physical_id" => assert_eq!(
                    frame.physical_id.to_string(),
                    want.as_str().unwrap(),
                    "{}",
                    v.name
                ),
                "msg_id" => assert_eq!(
                    u64::from(frame.message_id),
                    want.as_u64().unwrap(),
                    "{}",
                    v.name
                ),
                "cmd" => assert_eq!(
                    format!("{:#04x}", frame.command()),
                    want.as_str().unwrap().to_lowercase(),
                    "{}",
                    v.name
                ),
                other => panic!("{}: field {other} not asserted", v.name),
            }
        }
        assert!(
            !matches!(frame.message, Message::Unknown { .. }),
            "{} decoded as unknown",
            v.name
        );
        assert_eq!(frame.message.direction(), Some(direction(v)), "{}", v.name);
        assert_eq!(frame.to_vec(), v.bytes, "{} re-encodes", v.name);
        // The streaming decoder agrees with decode_frame.
        let mut buf = BytesMut::from(&v.bytes[..]);
        match Decoder::new(direction(v)).decode(&mut buf) {
            Some(Item::Frame { frame: f, raw }) => {
                assert_eq!(f, frame);
                assert_eq!(&raw[..], &v.bytes[..]);
            }
            other => panic!("{}: {other:?}", v.name),
        }
        assert!(buf.is_empty());
        serde_json::to_string(&frame).unwrap();
    }
}

#[test]
fn vector_values_read_as_documented() {
    let Message::Heartbeat(h) = decode_vector("ap3000.cmd_21.first").message else {
        panic!()
    };
    assert_eq!(h.voltage_dv, 0x0898);
    assert_eq!(h.ports.as_slice(), &[PortStatus::IDLE, PortStatus::IDLE]);
    assert_eq!((h.signal, h.temperature_raw), (0x09, 0x05));
    assert_eq!(h.temperature_c(), Some(5 - 65));

    let Message::Register(r) = decode_vector("ap3000.cmd_20.first").message else {
        panic!()
    };
    assert_eq!(
        (
            r.firmware,
            r.port_count,
            r.virtual_id,
            r.device_type,
            r.work_mode
        ),
        (126, 2, 0x14, 0x21, Some(0))
    );
    assert_eq!(r.power_board_version, Some(0));
    assert_eq!(r.extra, vec![0xE4, 0x00]);

    let Message::TimeReply { unix_time } = decode_vector("ap3000.cmd_22.second").message else {
        panic!()
    };
    assert_eq!(unix_time, 0x5FA90E09);

    let Message::PowerHeartbeat(p) = decode_vector("ap3000.cmd_06.first").message else {
        panic!()
    };
    assert_eq!(
        (p.port, p.status, p.duration_s, p.energy_cwh, p.start_mode),
        (1, PortStatus::CHARGING, 3600, 48, 1)
    );
    assert_eq!(
        (p.power_dw, p.max_power_dw, p.min_power_dw, p.avg_power_dw),
        (1000, 1200, 800, 1000)
    );
    assert_eq!(p.order_no.to_string(), "20190901180000130030380102030405");
    assert_eq!(
        (
            p.period_energy_raw,
            p.peak_power_dw,
            p.voltage_dv,
            p.current_ma
        ),
        (Some(1), Some(1000), Some(2200), Some(455))
    );
    assert_eq!(
        (p.ambient_temperature_c(), p.port_temperature_c()),
        (Some(20), None)
    );
    assert_eq!((p.timestamp, p.occupancy_min), (None, None));
    assert_eq!(p.port_no(), Some(2));

    let Message::Settlement(s) = decode_vector("ap3000.cmd_03.first").message else {
        panic!()
    };
    assert_eq!(
        (
            s.duration_s,
            s.max_power_dw,
            s.energy_cwh,
            s.port,
            s.start_mode
        ),
        (3600, 1000, 48, 1, 1)
    );
    assert_eq!((s.card_id, s.stop_reason), (0, StopReason::FULL));
    assert_eq!(s.platform_end_reason(), 2);
    assert_eq!(s.second_max_power_dw, Some(1000));
    assert_eq!(s.timestamp, None);

    let Message::StartStop(c) = decode_vector("ap3000.cmd_82.first").message else {
        panic!()
    };
    assert_eq!(
        (c.rate_mode, c.balance_fen, c.port, c.command, c.amount),
        (0, 356, 1, 1, 0)
    );
    assert_eq!(c.order_no.to_string(), "12345678123456781234567812345678");
    assert_eq!(
        (c.max_duration_s, c.overload_power_dw, c.qr_light),
        (Some(28800), Some(5000), None)
    );
    assert_eq!((c.duration_s(), c.energy_cwh()), (Some(0), None));

    let Message::StartStopReply(r) = decode_vector("ap3000.cmd_82.second").message else {
        panic!()
    };
    assert_eq!(
        (r.result, r.port, r.waiting_ports),
        (StartResult::DONE, Some(1), Some(0))
    );

    let Message::CardSwipe(c) = decode_vector("ap3000.cmd_02.first").message else {
        panic!()
    };
    assert_eq!(
        (c.card_id, c.card_type, c.port, c.balance_fen, c.timestamp),
        (0xDD058D7A, 0, 1, 0, None)
    );
    let Message::CardReply(c) = decode_vector("ap3000.cmd_02.second").message else {
        panic!()
    };
    assert_eq!(
        (c.account_status, c.rate_mode, c.balance, c.port),
        (0, 0, 10000, 1)
    );

    let Message::ChangeDuration {
        rate_mode,
        port,
        amount,
        ..
    } = decode_vector("ap3000.cmd_8a.first").message
    else {
        panic!()
    };
    assert_eq!((rate_mode, port, amount), (0, 1, 28800));
    let Message::SetLimits {
        max_duration_s,
        overload_power_dw,
        over_voltage_dv,
        ..
    } = decode_vector("ap3000.cmd_85.first").message
    else {
        panic!()
    };
    assert_eq!(
        (max_duration_s, overload_power_dw, over_voltage_dv),
        (36000, 20000, None)
    );
    let Message::SetCardParams {
        user_key,
        new_card_key,
        ..
    } = decode_vector("ap3000.cmd_86.first").message
    else {
        panic!()
    };
    assert_eq!(
        (user_key, new_card_key),
        ([0x15, 0x91, 0x85, 0x19, 0x18, 0x80], [0xFF; 6])
    );
    let Message::LegacyHeartbeat(l) = decode_vector("ap3000.cmd_01.first").message else {
        panic!()
    };
    assert_eq!(
        (l.voltage_dv, l.ports.len(), l.peak_power_dw.clone()),
        (0x088C, 2, vec![0, 0x023B])
    );
    assert_eq!(
        decode_vector("ap3000.cmd_e4.first").message,
        Message::TriggerUpgrade
    );
    assert_eq!(decode_vector("ap3000.cmd_81.first").message, Message::Query);
    assert!(matches!(
        decode_vector("ap3000.cmd_03.second").message,
        Message::Ack {
            command: 0x03,
            result: 0,
            ..
        }
    ));
}

#[test]
fn summary_is_one_line_with_the_key_fields() {
    let s = decode_vector("ap3000.cmd_06.first").summary();
    assert!(
        s.starts_with("0x06 power_heartbeat id=04AB373B msg_id=10 port=1"),
        "{s}"
    );
    assert!(!s.contains('\n'));
}

#[test]
fn gateway_constructors_encode_what_the_vendor_shows() {
    assert_eq!(
        Frame::ack(pid(), 185, 0x20).to_vec(),
        vectors_bytes("ap3000.cmd_20.second")
    );
    assert_eq!(
        Frame::ack(pid(), 1, 0x21).to_vec(),
        vectors_bytes("ap3000.cmd_21.second")
    );
    assert_eq!(
        Frame::ack(pid(), 1, 0x03).to_vec(),
        vectors_bytes("ap3000.cmd_03.second")
    );
    assert_eq!(
        Frame::time_reply(pid(), 185, 0x5FA90E09).to_vec(),
        vectors_bytes("ap3000.cmd_22.second")
    );
    assert_eq!(
        Frame::query(pid(), 1).to_vec(),
        vectors_bytes("ap3000.cmd_81.first")
    );
    let order = OrderNo([
        0x12, 0x34, 0x56, 0x78, 0x12, 0x34, 0x56, 0x78, 0x12, 0x34, 0x56, 0x78, 0x12, 0x34, 0x56,
        0x78,
    ]);
    let reply = Frame::start_stop_reply(pid(), 2, StartResult::DONE, order, 1);
    assert_eq!(reply.to_vec(), vectors_bytes("ap3000.cmd_82.second"));
    for (frame, stop) in [
        (
            Frame::start_by_seconds(pid(), 3, 0, 3600, order, 100),
            false,
        ),
        (Frame::start_by_energy(pid(), 4, 0, 150, order, 100), false),
        (Frame::stop(pid(), 5, 0, order), true),
    ] {
        let back = decode_frame(&frame.to_vec(), Direction::FromServer).unwrap();
        assert_eq!(back, frame);
        let Message::StartStop(s) = back.message else {
            panic!()
        };
        assert_eq!(s.is_start(), !stop);
        assert_eq!(s.order_no, order);
    }
}

fn vectors_bytes(name: &str) -> Vec<u8> {
    vectors::of("ap3000")
        .into_iter()
        .find(|v| v.name == name)
        .expect(name)
        .bytes
}

fn heartbeat(mid: u16) -> Frame {
    let ports = [PortStatus::IDLE, PortStatus::CHARGING, PortStatus::FULL];
    Frame::heartbeat(pid(), mid, Heartbeat::new(2200, &ports, 0, 90).unwrap())
}

fn drain(dec: &mut Decoder, buf: &mut BytesMut) -> Vec<Item<Frame>> {
    let mut out = Vec::new();
    while let Some(item) = dec.decode(buf) {
        out.push(item);
    }
    out
}

#[test]
fn merged_frames_come_out_one_by_one() {
    let mut buf = BytesMut::new();
    for mid in 1..=3 {
        heartbeat(mid).encode(&mut buf);
    }
    let items = drain(&mut Decoder::new(Direction::FromDevice), &mut buf);
    let ids: Vec<u16> = items
        .iter()
        .map(|i| match i {
            Item::Frame { frame, .. } => frame.message_id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    assert!(buf.is_empty());
}

#[test]
fn a_split_frame_waits_for_its_last_byte() {
    let bytes = heartbeat(7).to_vec();
    let mut dec = Decoder::new(Direction::FromDevice);
    let mut buf = BytesMut::new();
    for (i, b) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let item = dec.decode(&mut buf);
        if i + 1 < bytes.len() {
            assert!(item.is_none(), "item after {} bytes", i + 1);
            assert_eq!(buf.len(), i + 1, "nothing consumed");
        } else {
            assert!(matches!(item, Some(Item::Frame { .. })));
        }
    }
}

#[test]
fn a_hostile_length_is_rejected_at_once_without_buffering() {
    let mut dec = Decoder::new(Direction::FromDevice);
    let mut buf = BytesMut::from(&[b'D', b'N', b'Y', 0xFF, 0xFF][..]);
    match dec.decode(&mut buf) {
        Some(Item::Diagnostic(d)) => {
            assert_eq!(
                d.error,
                DecodeError::TooLong {
                    declared: 0xFFFF + 5,
                    max: DEFAULT_MAX_FRAME
                }
            );
            assert_eq!(d.skipped, 1);
        }
        other => panic!("{other:?}"),
    }
    let mut buf = BytesMut::from(&[b'D', b'N', b'Y', 0x02, 0x00][..]);
    assert!(
        matches!(dec.decode(&mut buf), Some(Item::Diagnostic(d)) if matches!(d.error, DecodeError::BadLength { declared: 2, .. }))
    );
    let mut small = Decoder::new(Direction::FromDevice).with_max_frame_len(20);
    let mut buf = BytesMut::from(&heartbeat(1).to_vec()[..]);
    assert!(
        matches!(small.decode(&mut buf), Some(Item::Diagnostic(d)) if matches!(d.error, DecodeError::TooLong { max: 20, .. }))
    );
}

#[test]
fn a_bad_checksum_is_reported_and_the_next_good_frame_still_comes_out() {
    let mut bad = heartbeat(1).to_vec();
    let n = bad.len();
    bad[n - 1] ^= 0x55;
    let good = heartbeat(2).to_vec();
    let computed = u16::from_le_bytes([good[n - 2], good[n - 1]]).wrapping_sub(1); // msg id 1 vs 2
    let mut buf = BytesMut::from(&bad[..]);
    buf.extend_from_slice(&good);
    let items = drain(&mut Decoder::new(Direction::FromDevice), &mut buf);
    match &items[0] {
        Item::Diagnostic(d) => assert_eq!(
            d.error,
            DecodeError::BadChecksum {
                found: u16::from_le_bytes([bad[n - 2], bad[n - 1]]),
                computed
            }
        ),
        other => panic!("{other:?}"),
    }
    let frames: Vec<_> = items
        .iter()
        .filter_map(|i| {
            if let Item::Frame { frame, .. } = i {
                Some(frame.message_id)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(frames, [2]);
    assert!(buf.is_empty());
}

#[test]
fn iccid_and_link_are_items_not_errors() {
    let mut buf = BytesMut::from(&b"89860412345678901234link"[..]);
    heartbeat(1).encode(&mut buf);
    buf.extend_from_slice(b"li");
    let mut dec = Decoder::new(Direction::FromDevice);
    assert_eq!(
        dec.decode(&mut buf),
        Some(Item::Iccid("89860412345678901234".into()))
    );
    assert_eq!(dec.decode(&mut buf), Some(Item::KeepAlive));
    assert!(matches!(dec.decode(&mut buf), Some(Item::Frame { .. })));
    assert_eq!(dec.decode(&mut buf), None);
    assert_eq!(&buf[..], b"li");
}

#[test]
fn a_known_command_with_short_data_is_a_diagnostic_and_decoding_carries_on() {
    let short = Frame::new(
        pid(),
        9,
        Message::Unknown {
            command: 0x06,
            data: vec![1, 2, 3],
        },
    )
    .to_vec();
    assert!(matches!(
        decode_frame(&short, Direction::FromDevice),
        Err(DecodeError::ShortPayload { .. })
    ));
    let mut buf = BytesMut::from(&short[..]);
    heartbeat(3).encode(&mut buf);
    let items = drain(&mut Decoder::new(Direction::FromDevice), &mut buf);
    assert_eq!(items.len(), 2);
    assert!(matches!(&items[0], Item::Diagnostic(d) if d.skipped == short.len()));
    assert!(matches!(&items[1], Item::Frame { .. }));
    // Extra bytes after one frame.
    let mut two = heartbeat(1).to_vec();
    two.push(0);
    assert_eq!(
        decode_frame(&two, Direction::FromDevice),
        Err(DecodeError::Trailing { extra: 1 })
    );
    let unknown = Frame::new(
        pid(),
        1,
        Message::Unknown {
            command: 0x77,
            data: vec![9],
        },
    );
    assert_eq!(
        decode_frame(&unknown.to_vec(), Direction::FromDevice).unwrap(),
        unknown
    );
}

fn raw_frame(cmd: u8, data: &[u8], mid: u16) -> Vec<u8> {
    let mut v = b"DNY".to_vec();
    v.extend_from_slice(&((data.len() + 9) as u16).to_le_bytes());
    v.extend_from_slice(&pid().to_wire());
    v.extend_from_slice(&mid.to_le_bytes());
    v.push(cmd);
    v.extend_from_slice(data);
    let sum = checksum(&v);
    v.extend_from_slice(&sum.to_le_bytes());
    v
}

fn any_dir() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::FromDevice), Just(Direction::FromServer)]
}

fn interesting_command() -> impl Strategy<Value = u8> {
    prop_oneof![
        prop::sample::select(vec![
            0x01u8, 0x02, 0x03, 0x04, 0x05, 0x06, 0x20, 0x21, 0x22, 0x41, 0x42, 0x43, 0x44, 0x81,
            0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8B, 0x8C, 0x8D, 0x8E, 0x8F,
            0xE4
        ]),
        any::<u8>(),
    ]
}

#[derive(Debug, Clone)]
enum Piece {
    Frame(Vec<u8>),
    Iccid(String),
    KeepAlive,
    Garbage(Vec<u8>),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        4 => (any::<u16>(), prop::collection::vec(0u8..=0x10, 0..=16), any::<u16>(), any::<u8>()).prop_map(|(mid, ports, v, t)| {
            let ports: Vec<PortStatus> = ports.into_iter().map(PortStatus).collect();
            Piece::Frame(Frame::heartbeat(pid(), mid, Heartbeat::new(v, &ports, 0, t).unwrap()).to_vec())
        }),
        2 => prop::sample::select(vectors::of("ap3000").into_iter().filter(|v| v.direction == "up").map(|v| v.bytes).collect::<Vec<_>>()).prop_map(Piece::Frame),
        1 => "[0-9]{19,22}".prop_map(Piece::Iccid),
        1 => Just(Piece::KeepAlive),
        2 => prop::collection::vec(any::<u8>().prop_filter("no sync bytes", |b| !b.is_ascii_digit() && *b != b'D' && *b != b'l'), 1..20).prop_map(Piece::Garbage),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any data under any command decodes either to a typed message that
    /// re-encodes to the same bytes, or to a payload error.
    #[test]
    fn every_decodable_message_round_trips_byte_for_byte(cmd in interesting_command(), data in prop::collection::vec(any::<u8>(), 0..100), mid: u16, dir in any_dir()) {
        let bytes = raw_frame(cmd, &data, mid);
        match decode_frame(&bytes, dir) {
            Ok(frame) => {
                prop_assert_eq!(frame.command(), cmd);
                prop_assert_eq!(&frame.to_vec(), &bytes);
                prop_assert_eq!(decode_frame(&frame.to_vec(), dir).unwrap(), frame.clone());
                prop_assert!(serde_json::to_string(&frame).is_ok());
                prop_assert!(!frame.summary().contains('\n'));
            }
            Err(DecodeError::ShortPayload { .. } | DecodeError::InvalidField { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn random_bytes_never_panic_and_always_progress(bytes in prop::collection::vec(any::<u8>(), 0..600), dir in any_dir()) {
        let mut dec = Decoder::new(dir);
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = decode_frame(&bytes, dir);
        loop {
            let before = buf.len();
            match dec.decode(&mut buf) {
                Some(_) => prop_assert!(buf.len() < before, "an item consumed nothing"),
                None => { prop_assert_eq!(buf.len(), before); break; }
            }
        }
        prop_assert!(buf.len() <= DEFAULT_MAX_FRAME);
    }

    #[test]
    fn frames_in_garbage_come_out_in_order_whatever_the_chunking(pieces in prop::collection::vec(piece(), 1..20), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10)) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for p in &pieces {
            match p {
                Piece::Frame(b) => { stream.extend_from_slice(b); expected.push(Item::Frame { frame: decode_frame(b, Direction::FromDevice).unwrap(), raw: bytes::Bytes::from(b.clone()) }); }
                // An ICCID is only complete once a non-digit follows: always
                // follow it with a keep-alive.
                Piece::Iccid(s) => { stream.extend_from_slice(s.as_bytes()); stream.extend_from_slice(KEEP_ALIVE); expected.push(Item::Iccid(s.clone())); expected.push(Item::KeepAlive); }
                Piece::KeepAlive => { stream.extend_from_slice(KEEP_ALIVE); expected.push(Item::KeepAlive); }
                Piece::Garbage(g) => stream.extend_from_slice(g),
            }
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        let mut dec = Decoder::new(Direction::FromDevice);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut at = 0;
        for p in points {
            buf.extend_from_slice(&stream[at..p]);
            at = p;
            got.extend(drain(&mut dec, &mut buf).into_iter().filter(|i| !matches!(i, Item::Diagnostic(_))));
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, expected);
    }
}

/// Keeps the first `present` of the optional fields, as firmware of some age
/// would send them.
fn keep<T>(v: T, index: usize, present: usize) -> Option<T> {
    (index < present).then_some(v)
}

fn power_heartbeat() -> impl Strategy<Value = PowerHeartbeat> {
    (
        (
            any::<u8>(),
            any::<u8>(),
            any::<u16>(),
            any::<u16>(),
            any::<u8>(),
            any::<[u16; 4]>(),
            any::<[u8; 16]>(),
        ),
        (
            any::<[u16; 4]>(),
            any::<[u8; 2]>(),
            any::<u32>(),
            any::<u16>(),
            0usize..=8,
        ),
    )
        .prop_map(
            |(
                (port, status, duration_s, energy_cwh, start_mode, p, order),
                (t, temps, ts, occ, n),
            )| PowerHeartbeat {
                port,
                status: PortStatus(status),
                duration_s,
                energy_cwh,
                start_mode,
                power_dw: p[0],
                max_power_dw: p[1],
                min_power_dw: p[2],
                avg_power_dw: p[3],
                order_no: OrderNo::from_bytes(order),
                period_energy_raw: keep(t[0], 0, n),
                peak_power_dw: keep(t[1], 1, n),
                voltage_dv: keep(t[2], 2, n),
                current_ma: keep(t[3], 3, n),
                ambient_temperature_raw: keep(temps[0], 4, n),
                port_temperature_raw: keep(temps[1], 5, n),
                timestamp: keep(ts, 6, n),
                occupancy_min: keep(occ, 7, n),
                extra: Vec::new(),
            },
        )
}

fn settlement() -> impl Strategy<Value = Settlement> {
    (
        any::<[u16; 3]>(),
        any::<[u8; 2]>(),
        any::<u32>(),
        any::<u8>(),
        any::<[u8; 16]>(),
        any::<u16>(),
        any::<u32>(),
        any::<u16>(),
        0usize..=3,
    )
        .prop_map(
            |(v, b, card_id, reason, order, smax, ts, occ, n)| Settlement {
                duration_s: v[0],
                max_power_dw: v[1],
                energy_cwh: v[2],
                port: b[0],
                start_mode: b[1],
                card_id,
                stop_reason: StopReason(reason),
                order_no: OrderNo::from_bytes(order),
                second_max_power_dw: keep(smax, 0, n),
                timestamp: keep(ts, 1, n),
                occupancy_min: keep(occ, 2, n),
                extra: Vec::new(),
            },
        )
}

fn device_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        power_heartbeat().prop_map(Message::PowerHeartbeat),
        settlement().prop_map(Message::Settlement),
        (
            any::<u16>(),
            prop::collection::vec(any::<u8>(), 0..=PortStatuses::CAPACITY),
            any::<u8>(),
            any::<u8>()
        )
            .prop_map(|(v, p, s, t)| {
                let p: Vec<PortStatus> = p.into_iter().map(PortStatus).collect();
                Message::Heartbeat(Heartbeat::new(v, &p, s, t).unwrap())
            }),
        (
            any::<u16>(),
            any::<[u8; 3]>(),
            proptest::option::of(any::<u8>()),
            proptest::option::of(any::<u16>())
        )
            .prop_map(
                |(firmware, b, work_mode, board)| Message::Register(Register {
                    firmware,
                    port_count: b[0],
                    virtual_id: b[1],
                    device_type: b[2],
                    work_mode,
                    // A later field only exists when every earlier one does.
                    power_board_version: work_mode.and(board),
                    extra: Vec::new(),
                })
            ),
        (
            any::<u8>(),
            proptest::option::of((any::<[u8; 16]>(), any::<u8>(), any::<u16>()))
        )
            .prop_map(|(r, tail)| Message::StartStopReply(StartStopReply {
                result: StartResult(r),
                order_no: tail.map(|t| OrderNo::from_bytes(t.0)),
                port: tail.map(|t| t.1),
                waiting_ports: tail.map(|t| t.2),
                extra: Vec::new(),
            })),
        Just(Message::TimeRequest),
    ]
}

fn server_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<u8>(),
            any::<u32>(),
            any::<[u8; 2]>(),
            any::<[u16; 3]>(),
            any::<[u8; 16]>(),
            proptest::option::of(any::<u8>()),
            prop::collection::vec(any::<u8>(), 0..9)
        )
            .prop_map(|(rate_mode, balance_fen, b, v, o, qr_light, extension)| {
                // Pre-V7.5 commands end after the order number.
                let v7_5 = v[1] % 4 != 0;
                let qr_light = qr_light.filter(|_| v7_5);
                let extension = if qr_light.is_some() {
                    extension
                } else {
                    Vec::new()
                };
                Message::StartStop(StartStop {
                    rate_mode,
                    balance_fen,
                    port: b[0],
                    command: b[1],
                    amount: v[0],
                    order_no: OrderNo::from_bytes(o),
                    max_duration_s: v7_5.then_some(v[1]),
                    overload_power_dw: v7_5.then_some(v[2]),
                    qr_light,
                    extension,
                })
            }),
        prop::sample::select(vec![0x01u8, 0x03, 0x20, 0x21]).prop_map(|command| Message::Ack {
            command,
            result: 0,
            extra: Vec::new()
        }),
        any::<u32>().prop_map(|unix_time| Message::TimeReply { unix_time }),
        Just(Message::Query),
    ]
}

proptest! {
    #[test]
    fn typed_messages_round_trip(dev in device_message(), srv in server_message(), mid: u16, id: u32) {
        for (message, dir) in [(dev, Direction::FromDevice), (srv, Direction::FromServer)] {
            let frame = Frame::new(PhysicalId(id), mid, message);
            prop_assert_eq!(decode_frame(&frame.to_vec(), dir).unwrap(), frame);
        }
    }

    /// Valid frames with bytes flipped, cut or inserted never panic the
    /// decoder, and every item consumes something.
    #[test]
    fn mutated_frames_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6)) {
        let mut stream = Vec::new();
        for v in vectors::of("ap3000") {
            stream.extend_from_slice(&v.bytes);
        }
        for (at, byte, kind) in edits {
            let i = at.index(stream.len());
            match kind {
                0 => stream[i] = byte,
                1 => { stream.remove(i); }
                _ => stream.insert(i, byte),
            }
        }
        for dir in [Direction::FromDevice, Direction::FromServer] {
            let mut dec = Decoder::new(dir);
            let mut buf = BytesMut::from(&stream[..]);
            loop {
                let before = buf.len();
                if dec.decode(&mut buf).is_none() {
                    break;
                }
                prop_assert!(buf.len() < before, "an item consumed nothing");
            }
            // Only a frame still waiting for its declared length may remain.
            prop_assert!(buf.len() < DEFAULT_MAX_FRAME, "stuck with {} bytes", buf.len());
        }
    }
}

#[test]
fn optional_fields_after_a_gap_are_not_written_into_the_wrong_slot() {
    let Message::PowerHeartbeat(mut p) = decode_vector("ap3000.cmd_06.first").message else {
        panic!()
    };
    p.voltage_dv = None;
    p.timestamp = Some(1);
    let back = decode_frame(
        &Frame::power_heartbeat(pid(), 1, p.clone()).to_vec(),
        Direction::FromDevice,
    )
    .unwrap();
    let Message::PowerHeartbeat(back) = back.message else {
        panic!()
    };
    assert_eq!(
        (
            back.peak_power_dw,
            back.voltage_dv,
            back.current_ma,
            back.timestamp
        ),
        (p.peak_power_dw, None, None, None)
    );
}
