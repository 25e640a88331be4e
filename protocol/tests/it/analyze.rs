//! The frame analyzer names every vendor example's family, direction and device.
use pile_protocol::analyze::analyze_ap3000;
use pile_protocol::{analyze, ap3000, DecodeError, Family};

/// AP3000 examples whose bytes fit both directions: the 0x8D setting and its
/// one-byte answer are identical on the wire, and the 0x02 card reply parses
/// as a card swipe with trailing bytes. `pile-sim decode --direction` settles it.
const AMBIGUOUS: &[&str] = &[
    "ap3000.cmd_02.second",
    "ap3000.cmd_8d.first",
    "ap3000.cmd_8d.second",
];

#[test]
fn every_valid_vector_is_analyzed_with_its_family_direction_and_device() {
    for v in crate::vectors::all().into_iter().filter(|v| v.valid) {
        let a = analyze(&v.bytes).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        let family = match v.protocol.as_str() {
            "bkv" => Family::Bkv,
            _ => Family::Ap3000,
        };
        assert_eq!(a.family, family, "{}", v.name);
        assert_eq!(a.length, v.bytes.len(), "{}", v.name);
        if family == Family::Bkv {
            assert_eq!(a.direction, v.direction, "{}", v.name);
            if let Some(gw) = v.fields.get("gateway_id").and_then(|g| g.as_str()) {
                assert_eq!(a.device_id, gw, "{}", v.name);
            }
        } else {
            // Told the direction, the analyzer must agree with the vector.
            let dir = match v.direction.as_str() {
                "up" => ap3000::Direction::FromDevice,
                _ => ap3000::Direction::FromServer,
            };
            let told = analyze_ap3000(&v.bytes, Some(dir)).expect(&v.name);
            assert_eq!(told.direction, v.direction, "{}", v.name);
            // Left to guess, it may only miss where the bytes are truly ambiguous.
            if !AMBIGUOUS.contains(&v.name.as_str()) {
                assert_eq!(a.direction, v.direction, "{} guessed wrong", v.name);
            }
        }
        assert_ne!(a.name, "unknown", "{} was not recognised", v.name);
        assert!(!a.summary.is_empty());
    }
}

#[test]
fn the_invalid_vendor_examples_are_refused_with_their_reason() {
    for v in crate::vectors::all().into_iter().filter(|v| !v.valid) {
        let err = analyze(&v.bytes).expect_err(&v.name);
        assert!(
            matches!(
                err,
                DecodeError::BadChecksum { .. } | DecodeError::Incomplete { .. }
            ),
            "{}: {err}",
            v.name
        );
    }
}

#[test]
fn unknown_headers_and_empty_input_are_errors_not_panics() {
    assert_eq!(analyze(b"hello"), Err(DecodeError::UnknownHeader));
    assert!(matches!(analyze(b""), Err(DecodeError::Incomplete { .. })));
    assert!(analyze(&[0xFC, 0xFE, 0x00]).is_err());
    assert!(analyze(b"DNY\x09").is_err());
}
