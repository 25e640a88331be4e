//! bkv integration tests (vectors, streaming, properties).
use bytes::BytesMut;
use pile_protocol::bkv::*;
use pile_protocol::{DecodeError, Item};
use serde_json::{json, Map, Value};

use crate::vectors::{self, Vector};

fn hx(v: u32, width: usize) -> Value {
    json!(format!("0x{:0w$x}", v, w = width))
}

fn hole_json(h: &HoleState) -> Value {
    json!({
        "port": h.hole, "status": hx(h.status.0.into(), 2), "business_no": h.business_no,
        "voltage_dv": h.voltage_dv, "power_dw": h.power_dw, "current_ma": h.current_ma,
        "energy_wh": h.energy_wh, "minutes": h.minutes,
    })
}

/// The decoded frame in the vocabulary of `vectors.json`'s `fields`.
fn fields_of(f: &Frame) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("cmd", hx(f.cmd().into(), 4));
    put("seq", json!(f.seq));
    put("gateway_id", json!(f.gateway_id.to_string()));
    if f.cmd() == 0x1000 {
        put("bkv_cmd", hx(f.message.sub().unwrap_or_default().into(), 4));
    } else if let Some(s) = f.message.sub() {
        put("sub", hx(s.into(), 2));
    }
    let status = |s: SocketStatus| hx(s.0.into(), 2);
    match &f.message {
        Message::Heartbeat(h) => {
            put("iccid", json!(h.iccid_str()));
            put("firmware", json!(h.firmware_str()));
            put("signal", json!(h.signal));
        }
        Message::HeartbeatReply(t) => put("time_bcd", json!(t.to_string())),
        Message::StatusReport(r) => {
            let s = &r.socket_states()[0];
            put("socket", json!(s.socket));
            put("socket_version", hx(s.socket_version.into(), 4));
            put("temperature", json!(s.temperature_c));
            put("rssi", json!(s.rssi));
            put(
                "ports",
                Value::Array(s.holes.iter().map(hole_json).collect()),
            );
        }
        Message::SocketState(s) => {
            put("socket", json!(s.socket));
            put("socket_version", hx(s.socket_version.into(), 4));
            put("temperature", json!(s.temperature_c));
            put("rssi", json!(s.rssi));
            put(
                "ports",
                Value::Array(s.holes.iter().map(hole_json).collect()),
            );
        }
        Message::StatusReportAck(a) => put("ack", json!(a.result)),
        Message::QuerySocket(q) => put("socket", json!(q.socket)),
        Message::NetRefresh(n) => {
            put("channel", json!(n.channel));
            let list: Vec<Value> = n
                .sockets
                .iter()
                .map(|s| json!([s.socket, s.mac.to_string()]))
                .collect();
            put("sockets", Value::Array(list));
        }
        Message::NetRefreshReply(r) | Message::NetAddReply(r) => put("result", json!(r)),
        Message::NetAdd(s) => {
            put("socket", json!(s.socket));
            put("mac", json!(s.mac.to_string()));
        }
        Message::Control(c) => {
            put("socket", json!(c.socket));
            put("port", json!(c.hole));
            put("switch", json!(c.switch));
            put("mode", json!(c.mode));
            put("minutes", json!(c.minutes));
            put("energy_wh", json!(c.energy_wh));
        }
        Message::ControlReply(c) => {
            put("result", json!(c.result));
            put("socket", json!(c.socket));
            put("port", json!(c.hole));
            put("business_no", json!(c.business_no));
        }
        Message::ChargeEnd(e) => {
            put("socket", json!(e.socket));
            put("socket_version", hx(e.socket_version.into(), 4));
            put("temperature", json!(e.temperature_c));
            put("rssi", json!(e.rssi));
            put("port", json!(e.hole));
            put("status", status(e.status));
            put("business_no", json!(e.business_no));
            put("power_dw", json!(e.power_dw));
            put("current_ma", json!(e.current_ma));
            put("energy_wh", json!(e.energy_wh));
            put("minutes", json!(e.minutes));
        }
        Message::PowerCharge(p) => {
            put("socket", json!(p.socket));
            put("port", json!(p.hole));
            put("switch", json!(p.switch));
            put("amount_fen", json!(p.amount_fen));
            let t: Vec<Value> = p
                .tiers
                .iter()
                .map(|t| json!([t.power_dw, t.price_fen, t.minutes]))
                .collect();
            put("tiers", Value::Array(t));
        }
        Message::PowerChargeEnd(e) => {
            put("socket", json!(e.socket));
            put("port", json!(e.hole));
            put("status", status(e.status));
            put("business_no", json!(e.business_no));
            put("energy_wh", json!(e.energy_wh));
            put("minutes", json!(e.minutes));
            put("end_time", json!(e.end_time.to_string()));
            put("end_reason", json!(e.end_reason));
            put("amount_fen", json!(e.amount_fen));
            put("settle_power_dw", json!(e.settle_power_dw));
            put("tier_minutes", json!(e.tier_minutes));
        }
        Message::FeeCharge(c) => {
            put("socket", json!(c.socket));
            put("port", json!(c.hole));
            put("switch", json!(c.switch));
            put("mode", json!(c.mode));
            put("control_type", json!(c.control_type));
            for e in &c.extra {
                if let Some([v]) = e.tlv.as_bytes() {
                    put(&format!("unknown_tag_{:#04x}", e.tlv.tag), json!(v));
                }
            }
            put("paid_fen", json!(c.paid_fen));
            put("service_fee_mode", json!(c.service_fee_mode));
            put("tier_count", json!(c.tier_count));
            let mut raw = Vec::new();
            for t in &c.tiers {
                raw.extend([t.time.hour, t.time.minute]);
                raw.extend(t.energy_price_fen.to_be_bytes());
                raw.extend(t.service_fee_fen.to_be_bytes());
            }
            put("tiers_hex", json!(hex::encode(raw)));
        }
        Message::ChargeEndReport(e) => {
            put("mcu_temperature", json!(e.mcu_temperature_c()));
            put("socket", json!(e.socket()));
            put("port", json!(e.hole()));
            put("status", status(e.status()));
            put("business_no", json!(e.business_no()));
            put("power_dw", json!(e.power_dw()));
            put("current_ma", json!(e.current_ma()));
            put("energy_wh", json!(e.energy_wh()));
            put("minutes", json!(e.minutes()));
            put("end_time_bcd", json!(e.end_time().map(|t| t.to_string())));
            put("end_reason", json!(e.end_reason().map(|r| r.0)));
            put("mode", json!(e.mode()));
            put("energy_fee_fen", json!(e.energy_fee_fen()));
            put("service_fee_fen", json!(e.service_fee_fen()));
            put("tier_count", json!(e.tier_count()));
            put("tier_usage_hex", json!(e.tier_usage().map(hex::encode)));
        }
        Message::ChargeEndReportAck(a) => {
            put("ack", json!(a.result));
            put("socket", json!(a.socket));
            put("port", json!(a.hole));
        }
        Message::BalanceReply(b) => put("balance_fen", json!(b.balance_fen)),
        Message::ExceptionEvent(p) | Message::ParamSet(p) | Message::ParamQuery(p) => {
            put("socket", json!(p.socket))
        }
        Message::ExceptionAck(p) | Message::ParamSetReply(p) | Message::ParamQueryReply(p) => {
            put("socket", json!(p.socket));
            if let Some(r) = p.result {
                put("ack", json!(r));
            }
        }
        _ => {}
    }
    m
}

fn assert_fields(v: &Vector, frame: &Frame) {
    let ours = fields_of(frame);
    let expected = v.fields.as_object().expect("fields object");
    for (key, want) in expected {
        let got = ours
            .get(key)
            .unwrap_or_else(|| panic!("{}: field {key} not mapped", v.name));
        let want = match (key.as_str(), want) {
            // "0x0005 (the document's annotation says 0x0015)"
            ("cmd", Value::String(s)) => json!(s.split_whitespace().next().unwrap_or_default()),
            _ => want.clone(),
        };
        assert_eq!(got, &want, "{}: field {key}", v.name);
    }
}

fn direction_of(v: &Vector) -> Direction {
    if v.direction == "up" {
        Direction::Up
    } else {
        Direction::Down
    }
}

#[test]
fn every_valid_vector_decodes_with_its_fields_and_re_encodes_byte_for_byte() {
    let vs = vectors::of("bkv");
    assert!(vs.len() >= 30, "bkv vectors: {}", vs.len());
    for v in vs.iter().filter(|v| v.valid) {
        let frame = decode_frame(&v.bytes).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(frame.direction, direction_of(v), "{}", v.name);
        assert!(
            !matches!(frame.message, Message::Unknown { .. }),
            "{} decoded as unknown",
            v.name
        );
        assert_fields(v, &frame);
        assert_eq!(
            hex::encode(frame.to_vec()),
            hex::encode(&v.bytes),
            "{} re-encodes",
            v.name
        );
        assert!(!frame.summary().is_empty());
        serde_json::to_string(&frame).expect("serialises");
    }
}

fn vector(name: &str) -> Vector {
    vectors::of("bkv")
        .into_iter()
        .find(|v| v.name == name)
        .expect(name)
}

#[test]
fn control_example_with_the_vendor_checksum_erratum_is_rejected() {
    let v = vector("bkv.control_07.down");
    assert!(!v.valid);
    assert_eq!(v.errors, ["checksum c8 != d8"]);
    assert_eq!(
        decode_frame(&v.bytes),
        Err(DecodeError::BadChecksum {
            found: 0xc8,
            computed: 0xd8
        })
    );
    // With the checksum corrected, the body reads as annotated.
    let mut fixed = v.bytes.clone();
    let at = fixed.len() - 3;
    fixed[at] = 0xd8;
    let frame = decode_frame(&fixed).unwrap();
    assert_fields(&v, &frame);
    assert_eq!(frame.to_vec(), fixed);
}

#[test]
fn fee_control_example_with_the_vendor_length_erratum_is_rejected() {
    let v = vector("bkv.fee_control_1007.down");
    assert!(!v.valid);
    assert_eq!(v.errors, ["length field 99 != total-4 89"]);
    assert_eq!(v.bytes.len(), 93);
    // Declared 99 means 103 bytes in all; the frame has 93 (89 after header and tail).
    assert_eq!(
        decode_frame(&v.bytes),
        Err(DecodeError::Incomplete {
            have: 93,
            need: 103
        })
    );
    // A stream never yields it as a frame either: it waits for bytes that a
    // following frame then shows to be wrong.
    let mut buf = BytesMut::from(&v.bytes[..]);
    assert_eq!(Decoder::new().decode(&mut buf), None);
    // With the length corrected (and the checksum recomputed), the body reads
    // as annotated, unknown tag 0xF4 included, and re-encodes exactly.
    let mut fixed = v.bytes.clone();
    fixed[3] = 89;
    let at = fixed.len() - 3;
    fixed[at] = fixed[2..at].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    let frame = decode_frame(&fixed).unwrap();
    assert_fields(&v, &frame);
    assert_eq!(hex::encode(frame.to_vec()), hex::encode(&fixed));
}

#[test]
fn power_tier_charge_is_accepted_under_both_commands() {
    let v = vector("bkv.power_charge_17.down");
    let frame = decode_frame(&v.bytes).unwrap();
    let Message::PowerCharge(p) = &frame.message else {
        panic!("{:?}", frame.message)
    };
    assert!(p.via_network_cmd);
    let mut p = p.clone();
    p.via_network_cmd = false;
    let f2 = Frame::new(
        Direction::Down,
        7,
        frame.gateway_id,
        Message::PowerCharge(p),
    );
    let bytes = f2.to_vec();
    assert_eq!(&bytes[4..6], &[0x00, 0x15]);
    assert_eq!(decode_frame(&bytes).unwrap(), f2);
}

fn all_valid_bytes() -> Vec<u8> {
    vectors::of("bkv")
        .into_iter()
        .filter(|v| v.valid)
        .flat_map(|v| v.bytes)
        .collect()
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
    let valid: Vec<Vector> = vectors::of("bkv").into_iter().filter(|v| v.valid).collect();
    let mut buf = BytesMut::from(&all_valid_bytes()[..]);
    let items = drain(&mut Decoder::new(), &mut buf);
    assert!(buf.is_empty());
    assert_eq!(items.len(), valid.len());
    for (item, v) in items.iter().zip(&valid) {
        let Item::Frame { raw, .. } = item else {
            panic!("{}: {item:?}", v.name)
        };
        assert_eq!(&raw[..], &v.bytes[..], "{}", v.name);
    }
}

#[test]
fn a_split_frame_waits_then_completes() {
    let v = vector("bkv.status_report_1017.up");
    let mut dec = Decoder::new();
    let mut buf = BytesMut::new();
    for (i, b) in v.bytes.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let item = dec.decode(&mut buf);
        if i + 1 < v.bytes.len() {
            assert_eq!(item, None, "byte {i}");
            assert_eq!(buf.len(), i + 1, "nothing consumed at byte {i}");
        } else {
            assert!(matches!(item, Some(Item::Frame { .. })));
        }
    }
    assert!(buf.is_empty());
}

#[test]
fn a_hostile_length_is_rejected_without_buffering() {
    let mut dec = Decoder::new();
    let mut buf = BytesMut::from(&[0xFC, 0xFE, 0xFF, 0xF0][..]);
    let Some(Item::Diagnostic(d)) = dec.decode(&mut buf) else {
        panic!()
    };
    assert_eq!(
        d.error,
        DecodeError::TooLong {
            declared: 0xFFF0,
            max: DEFAULT_MAX_FRAME_LEN
        }
    );
    assert_eq!(d.skipped, 1);
    // A smaller limit applies to otherwise valid frames too.
    let v = vector("bkv.status_report_1017.up");
    let mut buf = BytesMut::from(&v.bytes[..]);
    let Some(Item::Diagnostic(d)) = Decoder::with_max_frame_len(100).decode(&mut buf) else {
        panic!()
    };
    assert!(matches!(d.error, DecodeError::TooLong { max: 100, .. }));
}

#[test]
fn garbage_and_a_fake_header_do_not_hide_a_real_frame() {
    let v = vector("bkv.heartbeat.up");
    let mut input = b"hello".to_vec();
    input.extend([0xFC, 0xFE, 0x00, 0x20, 0x00]); // fake header, the real frame starts inside its body
    input.extend(&v.bytes);
    let mut buf = BytesMut::from(&input[..]);
    let items = drain(&mut Decoder::new(), &mut buf);
    let frames: Vec<_> = items
        .iter()
        .filter(|i| matches!(i, Item::Frame { .. }))
        .collect();
    assert_eq!(frames.len(), 1, "{items:?}");
    assert!(matches!(&items[0], Item::Diagnostic(d) if d.error == DecodeError::Garbage { len: 5 }));
}

#[test]
fn a_bad_body_in_a_valid_frame_is_a_diagnostic_and_the_stream_carries_on() {
    // 0x0015/0x07 down with a 2-byte body.
    let gw: GatewayId = "82210225000520".parse().unwrap();
    let good = Frame::stop(gw, 9, 1, 0).to_vec();
    let mut bad = Frame::new(
        Direction::Down,
        8,
        gw,
        Message::Unknown {
            cmd: 0x0015,
            sub: Some(0x07),
            payload: vec![1, 0],
        },
    )
    .to_vec();
    assert!(matches!(
        decode_frame(&bad),
        Err(DecodeError::ShortPayload { .. })
    ));
    bad.extend(&good);
    let mut buf = BytesMut::from(&bad[..]);
    let items = drain(&mut Decoder::new(), &mut buf);
    assert_eq!(items.len(), 2);
    assert!(
        matches!(&items[0], Item::Diagnostic(d) if matches!(d.error, DecodeError::ShortPayload { .. }))
    );
    assert!(matches!(&items[1], Item::Frame { frame, .. } if frame.seq == 9));
}

#[test]
fn non_bcd_gateway_id_is_invalid() {
    let mut bytes = vector("bkv.heartbeat.up").bytes;
    bytes[11] = 0x8A;
    let at = bytes.len() - 3;
    bytes[at] = bytes[2..at].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    assert!(matches!(
        decode_frame(&bytes),
        Err(DecodeError::InvalidField {
            field: "gateway_id",
            ..
        })
    ));
}

#[test]
fn unknown_commands_and_subs_are_kept_not_rejected() {
    let gw: GatewayId = "82210225000520".parse().unwrap();
    for msg in [
        Message::Unknown {
            cmd: 0x0042,
            sub: None,
            payload: vec![1, 2, 3],
        },
        Message::Unknown {
            cmd: 0x0015,
            sub: Some(0x55),
            payload: vec![9, 9],
        },
        Message::Unknown {
            cmd: 0x0005,
            sub: Some(0x0A),
            payload: vec![],
        },
    ] {
        let f = Frame::new(Direction::Up, 1, gw, msg);
        assert_eq!(decode_frame(&f.to_vec()).unwrap(), f);
    }
}

#[test]
fn constructors_produce_what_the_vectors_show() {
    let v = vector("bkv.heartbeat.reply");
    let gw: GatewayId = "82200520004869".parse().unwrap();
    let t = BcdTime {
        year: 2020,
        month: 7,
        day: 30,
        hour: 16,
        minute: 45,
        second: 45,
    };
    assert_eq!(Frame::heartbeat_reply(gw, 0, t).to_vec(), v.bytes);

    let v = vector("bkv.heartbeat.up");
    assert_eq!(
        Frame::heartbeat(gw, "89860463112070319417", "cV.1r46", 31).to_vec(),
        v.bytes
    );

    let report = decode_frame(&vector("bkv.status_report_1017.up").bytes).unwrap();
    assert_eq!(
        Frame::status_report_ack(&report, true).to_vec(),
        vector("bkv.status_report_1017.ack").bytes
    );
    let Message::StatusReport(r) = &report.message else {
        panic!()
    };
    assert_eq!(
        Frame::status_report(report.gateway_id, &r.socket_states()),
        report
    );

    let end = decode_frame(&vector("bkv.charge_end_1004.up").bytes).unwrap();
    let ack = Frame::charge_end_report_ack(&end, 1, 0, true);
    assert_eq!(ack.to_vec(), vector("bkv.charge_end_1004.ack").bytes);

    let q = vector("bkv.query_socket_1d.down");
    let qgw: GatewayId = "86004459453005".parse().unwrap();
    assert_eq!(Frame::query_socket(qgw, 0x001c91ee, 1).to_vec(), q.bytes);

    let reply = Frame::control_reply(qgw, 0x001c9c2b, 2, 0, true, 0x68);
    assert_eq!(reply.to_vec(), vector("bkv.control_07.reply").bytes);

    // The vendor's control example differs only in its (wrong) checksum byte.
    let start = Frame::start_by_time(qgw, 0x001c9a51, 2, 0, 240).to_vec();
    let mut example = vector("bkv.control_07.down").bytes;
    let at = example.len() - 3;
    example[at] = 0xd8;
    assert_eq!(start, example);
}

#[test]
fn simulator_side_constructors_decode_to_what_they_say() {
    let gw: GatewayId = "82241218000382".parse().unwrap();
    let sockets = vec![SocketState::new(
        3,
        vec![HoleState::idle(0, 2200), HoleState::idle(1, 2200)],
    )];
    let report = Frame::status_report(gw, &sockets);
    let back = decode_frame(&report.to_vec()).unwrap();
    assert_eq!(back, report);
    let ack = Frame::status_report_ack(&back, true);
    assert!(matches!(
        decode_frame(&ack.to_vec()).unwrap().message,
        Message::StatusReportAck(TlvAck { result: 1, .. })
    ));
    assert_eq!(
        Frame::socket_state(gw, 5, sockets[0].clone())
            .message
            .name(),
        "socket_state"
    );

    let t = BcdTime {
        year: 2026,
        month: 11,
        day: 24,
        hour: 20,
        minute: 0,
        second: 0,
    };
    let fields = ChargeEndFields::new(3, 1, 77, 500, 42, t, EndReasonCode(1));
    let end = Frame::charge_end_report(gw, &fields);
    let back = decode_frame(&end.to_vec()).unwrap();
    assert_eq!(back, end);
    let Message::ChargeEndReport(r) = &back.message else {
        panic!()
    };
    assert_eq!(
        (
            r.header.gateway_id,
            r.port_no(),
            r.tier_usage().map(<[u8]>::len)
        ),
        (gw, Some(6), Some(6))
    );
    assert_eq!(r.fields(), fields);
    assert!(
        back.summary()
            .starts_with("up 0x1000/0x1004 charge_end_report"),
        "{}",
        back.summary()
    );

    let fee = Frame::fee_charge(
        gw,
        0x2154_45a5,
        1,
        0,
        true,
        4,
        100,
        1,
        vec![FeeTier {
            time: HourMinute {
                hour: 23,
                minute: 59,
            },
            energy_price_fen: 50,
            service_fee_fen: 50,
        }],
    );
    assert_eq!(decode_frame(&fee.to_vec()).unwrap(), fee);
    let reply = Frame::fee_charge_reply(&fee, 1, 0, true);
    assert_eq!(decode_frame(&reply.to_vec()).unwrap(), reply);

    let e = Frame::charge_end(gw, ChargeEnd::new(1, 0, 104, 80, 5));
    assert!(e.summary().contains("0x0015/0x02 charge_end"));
    let ack = Frame::charge_end_ack(gw, e.seq, 1, 0, true);
    assert_eq!(decode_frame(&ack.to_vec()).unwrap(), ack);
    for f in [
        Frame::start_by_energy(gw, 1, 1, 1, 1000),
        Frame::stop(gw, 2, 1, 1),
    ] {
        assert_eq!(decode_frame(&f.to_vec()).unwrap(), f);
    }
}

#[test]
fn summary_is_one_readable_line() {
    let f = decode_frame(&vector("bkv.charge_end_02.up").bytes).unwrap();
    let s = f.summary();
    assert!(s.starts_with("up 0x0015/0x02 charge_end"), "{s}");
    assert!(
        s.contains("socket=2 hole=0") && s.contains("energy_wh=80") && s.contains("minutes=45"),
        "{s}"
    );
    assert!(!s.contains('\n'));
    let Message::ChargeEnd(e) = &f.message else {
        panic!()
    };
    assert_eq!(e.port_no(), Some(3));
}

mod props {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn gw() -> impl Strategy<Value = GatewayId> {
        "[0-9]{14}".prop_map(|s| s.parse().unwrap())
    }

    fn status() -> impl Strategy<Value = SocketStatus> {
        any::<u8>().prop_map(SocketStatus)
    }

    fn hole() -> impl Strategy<Value = HoleState> {
        (any::<u8>(), status(), any::<[u16; 6]>()).prop_map(|(hole, status, v)| HoleState {
            hole,
            status,
            business_no: v[0],
            voltage_dv: v[1],
            power_dw: v[2],
            current_ma: v[3],
            energy_wh: v[4],
            minutes: v[5],
        })
    }

    fn socket_state() -> impl Strategy<Value = SocketState> {
        (
            any::<u8>(),
            any::<u16>(),
            any::<u8>(),
            any::<u8>(),
            vec(hole(), 0..3),
        )
            .prop_map(
                |(socket, socket_version, temperature_c, rssi, holes)| SocketState {
                    socket,
                    socket_version,
                    temperature_c,
                    rssi,
                    holes,
                },
            )
    }

    fn bcd_time() -> impl Strategy<Value = BcdTime> {
        (
            0u16..10000,
            0u8..100,
            0u8..100,
            0u8..100,
            0u8..100,
            0u8..100,
        )
            .prop_map(|(year, month, day, hour, minute, second)| BcdTime {
                year,
                month,
                day,
                hour,
                minute,
                second,
            })
    }

    fn tlv_header() -> impl Strategy<Value = TlvHeader> {
        (any::<u64>(), gw()).prop_map(|(seq, gateway_id)| TlvHeader { seq, gateway_id })
    }

    fn power_tier() -> impl Strategy<Value = PowerTier> {
        any::<[u16; 3]>().prop_map(|[power_dw, price_fen, minutes]| PowerTier {
            power_dw,
            price_fen,
            minutes,
        })
    }

    fn params() -> impl Strategy<Value = Vec<Tlv>> {
        // Tags other than the nesting ones, the socket and the result.
        let tag = any::<u8>().prop_filter("plain tag", |t| ![0x94, 0x5B, 0x4A, 0x0F].contains(t));
        vec(
            (tag, vec(any::<u8>(), 0..6)).prop_map(|(t, v)| Tlv::bytes(t, v)),
            0..5,
        )
    }

    /// Every typed message with its direction.
    fn message() -> impl Strategy<Value = (Direction, Message)> {
        use Direction::{Down, Up};
        prop_oneof![
            (any::<[u8; 20]>(), any::<[u8; 8]>(), any::<u8>()).prop_map(
                |(iccid, firmware, signal)| (
                    Up,
                    Message::Heartbeat(Heartbeat {
                        iccid,
                        firmware,
                        signal
                    })
                )
            ),
            bcd_time().prop_map(|t| (Down, Message::HeartbeatReply(t))),
            (any::<[u8; 4]>(), any::<[u16; 2]>()).prop_map(|(b, w)| (
                Down,
                Message::Control(Control {
                    socket: b[0],
                    hole: b[1],
                    switch: b[2],
                    mode: b[3],
                    minutes: w[0],
                    energy_wh: w[1]
                })
            )),
            (any::<[u8; 3]>(), any::<u16>()).prop_map(|(b, n)| (
                Up,
                Message::ControlReply(ControlReply {
                    result: b[0],
                    socket: b[1],
                    hole: b[2],
                    business_no: n
                })
            )),
            (any::<[u8; 4]>(), status(), any::<[u16; 6]>()).prop_map(|(b, status, w)| (
                Up,
                Message::ChargeEnd(ChargeEnd {
                    socket: b[0],
                    socket_version: w[0],
                    temperature_c: b[1],
                    rssi: b[2],
                    hole: b[3],
                    status,
                    business_no: w[1],
                    power_dw: w[2],
                    current_ma: w[3],
                    energy_wh: w[4],
                    minutes: w[5],
                })
            )),
            any::<[u8; 3]>().prop_map(|b| (
                Down,
                Message::ChargeEndAck(PortResult {
                    socket: b[0],
                    hole: b[1],
                    result: b[2]
                })
            )),
            any::<u8>().prop_map(|socket| (Down, Message::QuerySocket(QuerySocket { socket }))),
            socket_state().prop_map(|s| (Up, Message::SocketState(s))),
            (
                any::<[u8; 3]>(),
                any::<u16>(),
                vec(power_tier(), 0..6),
                any::<bool>()
            )
                .prop_map(|(b, amount_fen, tiers, via)| (
                    Down,
                    Message::PowerCharge(PowerCharge {
                        socket: b[0],
                        hole: b[1],
                        switch: b[2],
                        amount_fen,
                        tiers,
                        via_network_cmd: via
                    })
                )),
            (
                any::<[u8; 5]>(),
                status(),
                any::<[u16; 8]>(),
                any::<[u8; 5]>(),
                vec(any::<u16>(), 0..6)
            )
                .prop_map(|(b, status, w, t, tier_minutes)| (
                    Up,
                    Message::PowerChargeEnd(PowerChargeEnd {
                        socket: b[0],
                        socket_version: w[0],
                        temperature_c: b[1],
                        rssi: b[2],
                        hole: b[3],
                        status,
                        business_no: w[1],
                        power_dw: w[2],
                        current_ma: w[3],
                        energy_wh: w[4],
                        minutes: w[5],
                        end_time: BinTime {
                            year: w[6],
                            month: t[0],
                            day: t[1],
                            hour: t[2],
                            minute: t[3],
                            second: t[4]
                        },
                        end_reason: EndReasonCode(b[4]),
                        amount_fen: w[7],
                        settle_power_dw: w[0],
                        tier_minutes,
                    })
                )),
            (
                any::<[u8; 2]>(),
                any::<u16>(),
                status(),
                any::<[u8; 6]>(),
                any::<[u8; 20]>()
            )
                .prop_map(|(b, n, status, card_no, offline_params)| (
                    Up,
                    Message::CardSwipe(CardSwipe {
                        socket: b[0],
                        hole: b[1],
                        business_no: n,
                        status,
                        card_no,
                        offline_params
                    })
                )),
            (
                any::<[u8; 4]>(),
                any::<[u16; 3]>(),
                proptest::option::of((any::<u16>(), vec(power_tier(), 0..6)))
            )
                .prop_map(|(b, w, power)| (
                    Down,
                    Message::CardOrder(CardOrder {
                        socket: b[0],
                        hole: b[1],
                        business_no: w[0],
                        switch: b[2],
                        mode: b[3],
                        duration: w[1],
                        energy_wh: w[2],
                        power: power
                            .map(|(amount_fen, tiers)| CardPowerTiers { amount_fen, tiers }),
                    })
                )),
            any::<[u8; 3]>().prop_map(|b| (
                Up,
                Message::CardOrderAck(PortResult {
                    socket: b[0],
                    hole: b[1],
                    result: b[2]
                })
            )),
            (
                any::<[u8; 6]>(),
                status(),
                any::<[u16; 8]>(),
                any::<[u8; 6]>(),
                vec(any::<u16>(), 0..6)
            )
                .prop_map(|(b, status, w, card_no, tier_minutes)| (
                    Up,
                    Message::CardChargeEnd(CardChargeEnd {
                        socket: b[0],
                        socket_version: w[0],
                        temperature_c: b[1],
                        rssi: b[2],
                        hole: b[3],
                        status,
                        business_no: w[1],
                        power_dw: w[2],
                        current_ma: w[3],
                        energy_wh: w[4],
                        minutes: w[5],
                        card_no,
                        card_type: b[4],
                        // Pre-V1.5 reports end after the card type.
                        billing: (b[5] % 3 != 0).then(|| CardBilling {
                            billing_mode: b[5],
                            amount_fen: w[6],
                            settle_power_dw: w[7],
                            tier_minutes,
                        }),
                    })
                )),
            any::<[u8; 2]>().prop_map(|b| (
                Down,
                Message::CardChargeEndAck(SocketResult {
                    socket: b[0],
                    result: b[1]
                })
            )),
            (any::<[u8; 2]>(), any::<[u8; 6]>()).prop_map(|(b, card_no)| (
                Up,
                Message::BalanceQuery(BalanceQuery {
                    socket: b[0],
                    hole: b[1],
                    card_no
                })
            )),
            (any::<[u8; 2]>(), any::<[u8; 6]>(), any::<u32>()).prop_map(
                |(b, card_no, balance_fen)| (
                    Down,
                    Message::BalanceReply(BalanceReply {
                        socket: b[0],
                        hole: b[1],
                        card_no,
                        balance_fen
                    })
                )
            ),
            (any::<[u8; 4]>(), vec(any::<[u8; 4]>(), 0..3)).prop_map(|(b, w)| (
                Down,
                Message::VoiceWindow(VoiceWindow {
                    socket: b[0],
                    hole: b[1],
                    buzzer: b[2],
                    voice: b[3],
                    windows: w
                        .into_iter()
                        .map(|w| TimeWindow {
                            start: HourMinute {
                                hour: w[0],
                                minute: w[1]
                            },
                            end: HourMinute {
                                hour: w[2],
                                minute: w[3]
                            },
                        })
                        .collect(),
                })
            )),
            any::<[u8; 3]>().prop_map(|b| (
                Up,
                Message::VoiceWindowReply(PortResult {
                    socket: b[0],
                    hole: b[1],
                    result: b[2]
                })
            )),
            (any::<u8>(), vec((any::<u8>(), any::<[u8; 6]>()), 0..5)).prop_map(|(channel, s)| (
                Down,
                Message::NetRefresh(NetRefresh {
                    channel,
                    sockets: s
                        .into_iter()
                        .map(|(socket, m)| SocketMac {
                            socket,
                            mac: Mac(m)
                        })
                        .collect()
                })
            )),
            any::<u8>().prop_map(|r| (Up, Message::NetRefreshReply(r))),
            (any::<u8>(), any::<[u8; 6]>()).prop_map(|(socket, m)| (
                Down,
                Message::NetAdd(SocketMac {
                    socket,
                    mac: Mac(m)
                })
            )),
            any::<u8>().prop_map(|r| (Up, Message::NetAddReply(r))),
            (
                any::<u8>(),
                any::<[u8; 4]>(),
                any::<u16>(),
                any::<[u8; 13]>()
            )
                .prop_map(|(target, ip, port, file_name)| (
                    Down,
                    Message::Ota(Ota {
                        target,
                        ip,
                        port,
                        file_name
                    })
                )),
            (tlv_header(), vec(socket_state(), 0..3)).prop_map(|(header, sockets)| (
                Up,
                Message::StatusReport(StatusReport::new(header, &sockets))
            )),
            (tlv_header(), any::<u8>()).prop_map(|(header, result)| (
                Down,
                Message::StatusReportAck(TlvAck {
                    header,
                    result,
                    extra: vec![]
                })
            )),
            (
                tlv_header(),
                any::<[u8; 7]>(),
                status(),
                any::<[u16; 8]>(),
                bcd_time(),
                vec(any::<u8>(), 0..12),
                any::<u16>()
            )
                .prop_map(|(header, b, status, w, end_time, tier_usage, present)| {
                    // Every optional tag present or absent on its own.
                    let has = |bit: u16| present & (1 << bit) != 0;
                    let fields = ChargeEndFields {
                        mcu_temperature_c: has(0).then_some(b[0]),
                        socket: b[1],
                        hole: b[2],
                        status,
                        business_no: w[0],
                        power_dw: w[1],
                        current_ma: w[2],
                        energy_wh: w[3],
                        minutes: w[4],
                        end_time: has(1).then_some(end_time),
                        end_reason: has(2).then_some(EndReasonCode(b[3])),
                        mode: has(3).then_some(b[4]),
                        energy_fee_fen: has(4).then_some(w[5]),
                        service_fee_fen: has(5).then_some(w[6]),
                        tier_count: has(6).then_some(b[5]),
                        tier_usage: has(7).then_some(tier_usage),
                        extra: if has(8) {
                            vec![Tlv::u8(0xF4, b[6])]
                        } else {
                            vec![]
                        },
                    };
                    (
                        Up,
                        Message::ChargeEndReport(ChargeEndReport::new(header, &fields)),
                    )
                }),
            (tlv_header(), any::<[u8; 3]>(), any::<bool>()).prop_map(|(header, b, reply)| {
                let a = TlvPortAck {
                    header,
                    result: b[0],
                    socket: b[1],
                    hole: b[2],
                    extra: vec![],
                };
                if reply {
                    (Up, Message::FeeChargeReply(a))
                } else {
                    (Down, Message::ChargeEndReportAck(a))
                }
            }),
            (
                tlv_header(),
                any::<[u8; 7]>(),
                any::<u16>(),
                vec(any::<[u8; 6]>(), 0..4)
            )
                .prop_map(|(header, b, paid_fen, t)| (
                    Down,
                    Message::FeeCharge(FeeCharge {
                        header,
                        socket: b[0],
                        hole: b[1],
                        switch: b[2],
                        mode: b[3],
                        control_type: b[4],
                        paid_fen,
                        service_fee_mode: b[5],
                        tier_count: b[6],
                        tiers: t
                            .into_iter()
                            .map(|t| FeeTier {
                                time: HourMinute {
                                    hour: t[0],
                                    minute: t[1]
                                },
                                energy_price_fen: u16::from_be_bytes([t[2], t[3]]),
                                service_fee_fen: u16::from_be_bytes([t[4], t[5]]),
                            })
                            .collect(),
                        extra: vec![],
                    })
                )),
            (
                tlv_header(),
                any::<u8>(),
                proptest::option::of(any::<u8>()),
                params(),
                0usize..6
            )
                .prop_map(|(header, socket, result, params, which)| {
                    let p = SocketParams {
                        header,
                        socket,
                        result,
                        params,
                    };
                    match which {
                        0 => (Up, Message::ExceptionEvent(p)),
                        1 => (Down, Message::ExceptionAck(p)),
                        2 => (Down, Message::ParamSet(p)),
                        3 => (Up, Message::ParamSetReply(p)),
                        4 => (Down, Message::ParamQuery(p)),
                        _ => (Up, Message::ParamQueryReply(p)),
                    }
                }),
        ]
    }

    fn frame() -> impl Strategy<Value = Frame> {
        (message(), any::<u32>(), gw()).prop_map(|((direction, message), seq, gateway_id)| Frame {
            direction,
            seq,
            gateway_id,
            message,
        })
    }

    proptest! {
        #[test]
        fn every_typed_message_round_trips(f in frame()) {
            let bytes = f.to_vec();
            prop_assert_eq!(decode_frame(&bytes), Ok(f.clone()));
            prop_assert_eq!(bytes.len(), usize::from(u16::from_be_bytes([bytes[2], bytes[3]])) + 4);
        }

        #[test]
        fn random_bytes_never_panic_and_always_progress(data in vec(any::<u8>(), 0..600), max in 21usize..300) {
            let _ = decode_frame(&data);
            let mut dec = Decoder::with_max_frame_len(max);
            let mut buf = BytesMut::from(&data[..]);
            loop {
                let before = buf.len();
                match dec.decode(&mut buf) {
                    Some(_) => prop_assert!(buf.len() < before, "no progress"),
                    None => break,
                }
            }
            // What is left is at most a frame prefix it is still waiting for.
            prop_assert!(buf.len() < max.max(4));
        }

        #[test]
        fn random_bytes_with_valid_headers_never_panic(
            body in vec(any::<u8>(), 0..80), cmd in prop_oneof![Just(0u16), Just(0x15), Just(0x05), Just(0x1000), Just(0x07)],
            up in any::<bool>(),
        ) {
            // A framing-valid frame around a random payload: decoding may fail,
            // must not panic.
            let mut f = vec![0xFC, if up { 0xFE } else { 0xFF }];
            let len = (body.len() + 17) as u16;
            f.extend(len.to_be_bytes());
            f.extend(cmd.to_be_bytes());
            f.extend([0, 0, 0, 1, u8::from(up)]);
            f.extend([0x82, 0x21, 0x02, 0x25, 0x00, 0x05, 0x20]);
            f.extend(&body);
            let sum = f[2..].iter().fold(0u8, |a, b| a.wrapping_add(*b));
            f.extend([sum, 0xFC, 0xEE]);
            if let Ok(frame) = decode_frame(&f) {
                prop_assert_eq!(frame.to_vec(), f);
            }
        }

        #[test]
        fn mutated_vectors_never_panic_and_whatever_decodes_round_trips(
            pick in any::<proptest::sample::Index>(),
            edits in vec((any::<proptest::sample::Index>(), any::<u8>()), 1..4),
        ) {
            // Mutate payload bytes of a real frame and fix the checksum, so the
            // message decoders (not just framing) see hostile input.
            let valid: Vec<Vector> = vectors::of("bkv").into_iter().filter(|v| v.valid).collect();
            let mut bytes = pick.get(&valid).bytes.clone();
            let n = bytes.len();
            for (at, b) in &edits {
                let i = 18 + at.index(n - 21);
                bytes[i] = *b;
            }
            bytes[n - 3] = bytes[2..n - 3].iter().fold(0u8, |a, b| a.wrapping_add(*b));
            if let Ok(frame) = decode_frame(&bytes) {
                prop_assert_eq!(decode_frame(&frame.to_vec()), Ok(frame.clone()));
                let _ = frame.summary();
            }
            let mut buf = BytesMut::from(&bytes[..]);
            prop_assert!(Decoder::new().decode(&mut buf).is_some());
        }

        #[test]
        fn frames_in_garbage_split_anywhere_all_come_out_in_order(
            frames in vec(frame(), 1..5),
            garbage in vec(vec(any::<u8>().prop_filter("no FC", |b| *b != 0xFC), 0..20), 5),
            cuts in vec(1usize..40, 1..30),
        ) {
            let mut stream = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                stream.extend(&garbage[i % garbage.len()]);
                stream.extend(f.to_vec());
            }
            stream.extend(&garbage[4]);
            let mut dec = Decoder::new();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut rest = &stream[..];
            let mut cut = cuts.iter().cycle();
            while !rest.is_empty() {
                let n = (*cut.next().unwrap()).min(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                while let Some(item) = dec.decode(&mut buf) {
                    match item {
                        Item::Frame { frame, raw } => {
                            prop_assert_eq!(&raw[..], &frame.to_vec()[..]);
                            got.push(frame);
                        }
                        Item::Diagnostic(d) => prop_assert!(matches!(d.error, DecodeError::Garbage { .. }), "{:?}", d),
                        other => prop_assert!(false, "{:?}", other),
                    }
                }
            }
            prop_assert_eq!(got, frames);
        }
    }
}
