//! Min-of-batches decode timing for a shared, noisy machine (preemption only adds time, so the
//! fastest batch is the closest to the code's own cost). Same frames and closures as
//! `benches/bkv.rs`. `cargo run --release -p pile-protocol --example decode_min [frame] [batches]`.
use bytes::BytesMut;
use pile_protocol::bkv::{decode_frame, Decoder};
use pile_protocol::{parse_hex, Item};
use std::hint::black_box;
use std::time::Instant;

const FRAMES: [(&str, &str); 3] = [
    ("heartbeat", "fcfe002e0000000000000182200520004869383938363034363331313230373033313934313763562e31723436001fcafcee"),
    ("status_1017", "fcfe0091100000000000018223121400270004010110170a010200000000000000000901038223121400270065019403014a0104013effff030107250301961e28015b030108000301098004010a000004019508e304010b000004010c000104010d000004010e000028015b030108010301098004010a000004019508e304010b000004010c000104010d000004010e000030fcee"),
    ("settle_1004", "fcfe007d100000000000018221022500052004010110040a01020000000000000000090103822102250005200301072a03014a01030108000301099804010a003304010b000004010c000004010d000004010e000109012e2024082310172903012f08030112040401850000040186000003018901080184000100000000dbfcee"),
];

fn min_ns(iters: u32, batches: u32, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..batches {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        best = best.min(t.elapsed().as_nanos() as f64 / f64::from(iters));
    }
    best
}

fn main() {
    let only = std::env::args().nth(1).unwrap_or_default();
    let reps: u32 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    for (name, hex) in FRAMES {
        if !name.contains(only.as_str()) {
            continue;
        }
        let bytes = parse_hex(hex).unwrap();
        let a = min_ns(2000, reps, || {
            black_box(decode_frame(black_box(&bytes)).expect("decodes"));
        });
        let stream: Vec<u8> = bytes
            .iter()
            .copied()
            .cycle()
            .take(bytes.len() * 64)
            .collect();
        let mut dec = Decoder::new();
        let b = min_ns(40, reps, || {
            let mut buf = BytesMut::from(black_box(&stream[..]));
            let mut n = 0;
            while let Some(item) = dec.decode(&mut buf) {
                if let Item::Frame { .. } = item {
                    n += 1;
                }
            }
            assert_eq!(n, 64);
        }) / 64.0;
        println!("{name:12} decode_frame {a:6.1} ns  streaming {b:6.1} ns/frame");
    }
}
