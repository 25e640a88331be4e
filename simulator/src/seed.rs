//! Reproducible randomness: one run seed, one independent stream per pile.
//!
//! Every pile draws from a ChaCha8 generator keyed by the run seed and using
//! the pile's index as the stream number, so piles never share draws and a
//! pile's behaviour does not depend on how many other piles run beside it.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The generator for pile `index` of the run seeded with `run_seed`.
pub fn pile_rng(run_seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(run_seed);
    rng.set_stream(index);
    rng
}

/// A run seed when the user gave none: taken from the OS, to be printed.
pub fn fresh_run_seed() -> u64 {
    rand::rngs::OsRng.next_u64()
}

/// SplitMix64: a cheap, stateless hash used for per-second charger noise so
/// the noise at a given second does not depend on how often it is sampled.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Maps a hash to a float uniformly distributed in [-1, 1).
pub fn unit_noise(hash: u64) -> f64 {
    // 53 high bits give an exact f64 in [0, 1).
    let unit = (hash >> 11) as f64 / (1u64 << 53) as f64;
    unit * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn same_seed_and_index_give_the_same_draws() {
        let a: Vec<u32> = (0..8).map(|_| pile_rng(42, 7).gen()).collect();
        let mut r1 = pile_rng(42, 7);
        let mut r2 = pile_rng(42, 7);
        let d1: Vec<u32> = (0..8).map(|_| r1.gen()).collect();
        let d2: Vec<u32> = (0..8).map(|_| r2.gen()).collect();
        assert_eq!(d1, d2);
        assert_eq!(a.len(), 8);
    }

    #[test]
    fn piles_and_seeds_get_different_streams() {
        let x: u64 = pile_rng(42, 0).gen();
        let y: u64 = pile_rng(42, 1).gen();
        let z: u64 = pile_rng(43, 0).gen();
        assert_ne!(x, y);
        assert_ne!(x, z);
    }

    #[test]
    fn unit_noise_stays_in_range() {
        for i in 0..10_000u64 {
            let n = unit_noise(splitmix64(i));
            assert!((-1.0..1.0).contains(&n));
        }
    }
}
