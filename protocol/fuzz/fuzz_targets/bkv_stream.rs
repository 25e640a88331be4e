//! The BKV streaming decoder on arbitrary bytes fed in arbitrary pieces.
//!
//! Input: the first byte picks the piece size (1–64), the rest is the stream.
//! Every frame that comes out must re-encode to its raw bytes, decode whole to
//! the same frame, survive the analyzer and JSON, and the lazily read reports
//! must rebuild from their typed fields to the same fields. Diagnostics must
//! consume bytes, and the decoder never holds a whole frame's worth unread.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pile_protocol::bkv::{self, ChargeEndReport, Message, StatusReport};
use pile_protocol::Item;

fn check(item: Item<bkv::Frame>) {
    match item {
        Item::Frame { frame, raw } => {
            assert_eq!(frame.to_vec(), &raw[..], "re-encodes byte for byte");
            let whole = bkv::decode_frame(&raw).expect("a streamed frame decodes whole");
            assert_eq!(whole, frame);
            let _ = frame.summary();
            let a = pile_protocol::analyze(&raw).expect("the analyzer reads it");
            assert!(serde_json::to_string(&a).is_ok());
            match &frame.message {
                Message::ChargeEndReport(r) => {
                    let rebuilt = ChargeEndReport::new(r.header, &r.fields());
                    assert_eq!(rebuilt.fields(), r.fields());
                }
                Message::StatusReport(r) => {
                    let states = r.socket_states();
                    let rebuilt = StatusReport::new(r.header, &states);
                    assert_eq!(rebuilt.socket_states(), states);
                }
                _ => {}
            }
        }
        Item::Diagnostic(d) => assert!(d.skipped > 0, "a diagnostic consumes bytes"),
        Item::Iccid(_) | Item::KeepAlive => panic!("not BKV items"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((first, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first % 64) + 1;
    let mut dec = bkv::Decoder::new();
    let mut buf = BytesMut::new();
    for chunk in stream.chunks(piece) {
        buf.extend_from_slice(chunk);
        while let Some(item) = dec.decode(&mut buf) {
            check(item);
        }
        assert!(buf.len() < bkv::DEFAULT_MAX_FRAME_LEN, "buffers at most one frame");
    }
});
