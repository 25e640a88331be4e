//! Criterion benchmarks for the ap3000 codec: decode (whole-frame and
//! streaming) and encode of the three frames a busy gateway sees most.
use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pile_protocol::ap3000::{
    decode_frame, Decoder, Direction, Frame, Heartbeat, PhysicalId, PortStatus,
};

fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let hb = Heartbeat::new(2200, &[PortStatus::IDLE; 10], 0, 90).expect("10 ports fit");
    let heartbeat = Frame::heartbeat(PhysicalId(0x05AB373B), 1, hb).to_vec();
    // Vendor examples (0x06 and 0x03).
    let power = pile_protocol::parse_hex(
        "444e5932003b37ab040a00060101100e300001e803b0042003e803201909011800001300303801020304050100e8039808c7015500da08",
    )
    .expect("hex");
    let settlement = pile_protocol::parse_hex(
        "444e5928003b37ab04010003100ee80330000101000000000120190901180000130030380102030405e8034405",
    )
    .expect("hex");
    vec![
        ("heartbeat_21", heartbeat),
        ("power_heartbeat_06", power),
        ("settlement_03", settlement),
    ]
}

fn benches(c: &mut Criterion) {
    for (name, bytes) in frames() {
        let frame = decode_frame(&bytes, Direction::FromDevice).expect("valid frame");
        c.bench_function(&format!("ap3000/decode_frame/{name}"), |b| {
            b.iter(|| decode_frame(black_box(&bytes), Direction::FromDevice))
        });
        let mut decoder = Decoder::new(Direction::FromDevice);
        let mut buf = BytesMut::with_capacity(bytes.len());
        c.bench_function(&format!("ap3000/decoder/{name}"), |b| {
            b.iter(|| {
                buf.extend_from_slice(black_box(&bytes));
                decoder.decode(&mut buf)
            })
        });
        let mut out = BytesMut::with_capacity(256);
        c.bench_function(&format!("ap3000/encode/{name}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(&frame).encode(&mut out);
                out.len()
            })
        });
    }
}

criterion_group!(codec, benches);
criterion_main!(codec);
