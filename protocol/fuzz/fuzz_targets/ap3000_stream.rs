//! The AP3000 streaming decoder on arbitrary bytes fed in arbitrary pieces.
//!
//! Input: the first byte picks the direction (bit 7) and the piece size
//! (1–64), the rest is the stream. Every frame that comes out must re-encode
//! to its raw bytes, decode whole to the same frame, and — downgraded to every
//! protocol revision from V6.0 to V8.6 — encode and decode back to itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pile_protocol::ap3000::{self, Direction, Frame, ProtocolVersion};
use pile_protocol::Item;

fn check(item: Item<Frame>, dir: Direction) {
    match item {
        Item::Frame { frame, raw } => {
            assert_eq!(frame.to_vec(), &raw[..], "re-encodes byte for byte");
            let whole = ap3000::decode_frame(&raw, dir).expect("a streamed frame decodes whole");
            assert_eq!(whole, frame);
            let _ = frame.summary();
            let _ = frame.message.generation();
            assert!(serde_json::to_string(&frame).is_ok());
            for minor in [(6, 0), (6, 1), (6, 2), (7, 0), (7, 5), (7, 8), (8, 0), (8, 5), (8, 6)] {
                let mut m = frame.message.clone();
                m.downgrade(ProtocolVersion::new(minor.0, minor.1));
                let old = Frame::new(frame.physical_id, frame.message_id, m);
                let bytes = old.to_vec();
                if bytes.len() <= ap3000::DEFAULT_MAX_FRAME {
                    let back = ap3000::decode_frame(&bytes, dir).expect("a downgraded frame decodes");
                    assert_eq!(back, old, "downgraded to V{}.{}", minor.0, minor.1);
                }
            }
        }
        Item::Diagnostic(d) => assert!(d.skipped > 0, "a diagnostic consumes bytes"),
        Item::Iccid(digits) => assert!(digits.bytes().all(|b| b.is_ascii_digit())),
        Item::KeepAlive => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((first, stream)) = data.split_first() else {
        return;
    };
    let dir = if first & 0x80 == 0 {
        Direction::FromDevice
    } else {
        Direction::FromServer
    };
    let piece = usize::from(first % 64) + 1;
    let mut dec = ap3000::Decoder::new(dir);
    let mut buf = BytesMut::new();
    for chunk in stream.chunks(piece) {
        buf.extend_from_slice(chunk);
        while let Some(item) = dec.decode(&mut buf) {
            check(item, dir);
        }
        assert!(buf.len() < ap3000::DEFAULT_MAX_FRAME, "buffers at most one frame");
    }
});
