//! Criterion benchmarks for the BKV codec: decode (whole frame and streaming)
//! and encode of the three frames a busy gateway sees most: a heartbeat, a
//! 0x1017 status report and a 0x1004 charge-end settlement.
use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pile_protocol::bkv::{decode_frame, Decoder};
use pile_protocol::{parse_hex, Item};

const FRAMES: [(&str, &str); 3] = [
    (
        "heartbeat",
        "fcfe002e0000000000000182200520004869383938363034363331313230373033313934313763562e31723436001fcafcee",
    ),
    (
        "status_1017",
        "fcfe0091100000000000018223121400270004010110170a010200000000000000000901038223121400270065019403014a0104013effff030107250301961e28015b030108000301098004010a000004019508e304010b000004010c000104010d000004010e000028015b030108010301098004010a000004019508e304010b000004010c000104010d000004010e000030fcee",
    ),
    (
        "settle_1004",
        "fcfe007d100000000000018221022500052004010110040a01020000000000000000090103822102250005200301072a03014a01030108000301099804010a003304010b000004010c000004010d000004010e000109012e2024082310172903012f08030112040401850000040186000003018901080184000100000000dbfcee",
    ),
];

fn benches(c: &mut Criterion) {
    for (name, hex) in FRAMES {
        let bytes = parse_hex(hex).expect("bench frame hex");
        let frame = decode_frame(&bytes).expect("bench frame decodes");

        c.bench_function(&format!("bkv/decode_frame/{name}"), |b| {
            b.iter(|| decode_frame(black_box(&bytes)).expect("decodes"))
        });

        // 64 copies in one buffer, so the cost of refilling it is amortised.
        let stream: Vec<u8> = bytes
            .iter()
            .copied()
            .cycle()
            .take(bytes.len() * 64)
            .collect();
        c.bench_function(&format!("bkv/decoder_x64/{name}"), |b| {
            let mut dec = Decoder::new();
            b.iter(|| {
                let mut buf = BytesMut::from(black_box(&stream[..]));
                let mut n = 0;
                while let Some(item) = dec.decode(&mut buf) {
                    if let Item::Frame { .. } = item {
                        n += 1;
                    }
                }
                assert_eq!(n, 64);
            })
        });

        let mut out = BytesMut::with_capacity(4096);
        c.bench_function(&format!("bkv/encode/{name}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(&frame).encode(&mut out);
                black_box(out.len())
            })
        });
    }
}

criterion_group!(codec, benches);
criterion_main!(codec);
