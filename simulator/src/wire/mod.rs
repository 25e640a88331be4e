//! The two wire families, built only from the protocol crate's typed
//! messages, encoders and streaming decoders.

pub mod ap3000;
pub mod bkv;

use pile_protocol::Family;

use crate::pile::Codec;

/// The codec of a family.
pub fn codec_for(family: Family) -> Box<dyn Codec> {
    match family {
        Family::Bkv => Box::new(bkv::BkvCodec::default()),
        Family::Ap3000 => Box::new(ap3000::Ap3000Codec::default()),
    }
}

/// Saturating conversion of a physical quantity into a wire field.
pub(crate) fn sat_u16(v: f64) -> u16 {
    if v.is_finite() && v > 0.0 {
        v.round().min(f64::from(u16::MAX)) as u16
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::{Bytes, BytesMut};
    use pile_protocol::{ap3000, bkv, Family};
    use rand::{Rng, SeedableRng};
    use tokio::time::Instant;

    use super::codec_for;
    use crate::pile::{Action, Pile, PileConfig, SimClock};
    use crate::seed::pile_rng;

    fn pile(family: Family, id: &str, seed: u64, t0: Instant) -> Pile {
        let cfg = Arc::new(PileConfig {
            ports: 4,
            heartbeat: Duration::from_secs(11),
            reconnect_delay: Duration::from_secs(5),
            plug_delay: Duration::from_secs(2),
            power_w: 180.0,
            resend_after: Duration::from_secs(15),
            link_after: Duration::from_secs(30),
            frames_kept: 16,
            progress_kept: 16,
            answer_delay: Duration::from_secs(5),
            clock: SimClock::new(t0, 1_790_000_000_000),
            observer: None,
            eeprom: None,
        });
        let mut p = Pile::new(
            id.into(),
            0,
            family,
            cfg,
            pile_rng(seed, 0),
            codec_for(family),
            t0,
        );
        assert_eq!(p.poll(t0), vec![Action::Connect]);
        p
    }

    fn written(actions: &[Action]) -> Vec<u8> {
        let mut out = Vec::new();
        for a in actions {
            if let Action::Write(b) | Action::WriteSplit(b) = a {
                out.extend_from_slice(b);
            }
        }
        out
    }

    fn ap_bytes(f: &ap3000::Frame) -> Bytes {
        let mut out = BytesMut::new();
        f.encode(&mut out);
        out.freeze()
    }

    /// Server frames of both families that drive a pile through a charge.
    fn script(family: Family) -> Vec<Bytes> {
        match family {
            Family::Bkv => {
                let gw: bkv::GatewayId = "82210225000520".parse().unwrap();
                vec![
                    bkv::Frame::start_by_time(gw, 1, 1, 0, 3).to_bytes(),
                    bkv::Frame::start_by_energy(gw, 2, 2, 1, 5).to_bytes(),
                    bkv::Frame::query_socket(gw, 3, 1).to_bytes(),
                    bkv::Frame::stop(gw, 4, 2, 1).to_bytes(),
                    bkv::Frame::charge_end_ack(gw, 0, 2, 1, true).to_bytes(),
                ]
            }
            Family::Ap3000 => {
                let id: ap3000::PhysicalId = "04AB373B".parse().unwrap();
                let order = ap3000::OrderNo([3; 16]);
                vec![
                    ap_bytes(&ap3000::Frame::ack(id, 1, 0x20)),
                    ap_bytes(&ap3000::Frame::start_by_seconds(id, 7, 0, 200, order, 100)),
                    ap_bytes(&ap3000::Frame::start_by_energy(id, 8, 1, 2, order, 100)),
                    ap_bytes(&ap3000::Frame::stop(id, 9, 0, order)),
                    ap_bytes(&ap3000::Frame::query(id, 10)),
                ]
            }
        }
    }

    /// Everything a pile writes over ten simulated minutes of a scripted run.
    fn run(family: Family, id: &str, seed: u64) -> Vec<u8> {
        let t0 = Instant::now();
        let mut p = pile(family, id, seed, t0);
        let mut out = written(&p.on_connected(t0));
        for (i, frame) in script(family).iter().enumerate() {
            let at = t0 + Duration::from_secs(10 * (i as u64 + 1));
            out.extend(written(&p.poll(at)));
            out.extend(written(&p.on_bytes(at, frame)));
        }
        for s in 60..600 {
            out.extend(written(&p.poll(t0 + Duration::from_secs(s))));
        }
        out
    }

    #[test]
    fn the_same_seed_replays_the_same_bytes() {
        for (family, id) in [
            (Family::Bkv, "82210225000520"),
            (Family::Ap3000, "04AB373B"),
        ] {
            let a = run(family, id, 99);
            assert!(a.len() > 1000, "{family}: a real conversation");
            assert_eq!(a, run(family, id, 99), "{family}: same seed, same bytes");
            assert_ne!(
                a,
                run(family, id, 100),
                "{family}: another seed, another run"
            );
        }
    }

    #[test]
    fn no_server_input_makes_a_pile_panic() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for (family, id) in [
            (Family::Bkv, "82210225000520"),
            (Family::Ap3000, "04AB373B"),
        ] {
            let t0 = Instant::now();
            let mut p = pile(family, id, 1, t0);
            p.on_connected(t0);
            let valid = script(family);
            for i in 0..5_000u64 {
                let at = t0 + Duration::from_millis(i * 37);
                let mut chunk: Vec<u8> = match rng.gen_range(0..3) {
                    0 => (0..rng.gen_range(1..64)).map(|_| rng.gen()).collect(),
                    _ => valid[rng.gen_range(0..valid.len())].to_vec(),
                };
                // Mutate a byte or two: hostile lengths, ports, switches, modes.
                for _ in 0..rng.gen_range(0..3) {
                    let k = rng.gen_range(0..chunk.len());
                    chunk[k] = rng.gen();
                }
                p.on_bytes(at, &chunk);
                p.poll(at);
            }
            assert!(p.frames().len() <= 16);
        }
    }
}
