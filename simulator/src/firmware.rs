//! Which firmware generation a pile speaks: `--firmware ap3000=v6.1:30%`.
//!
//! A plan is a list of `FAMILY=VERSION[:SHARE]` entries (comma-separated or
//! repeated). Each pile of the family draws one number from the run seed and
//! its index; the entries take consecutive slices of the unit interval in the
//! order given, the rest of the fleet speaks the latest generation. So
//! `ap3000=v6.1:30%,ap3000=v7.8:20%` makes about 30 % of the AP3000 piles
//! V6.1, 20 % V7.8 and 50 % V8.6, the same piles for the same seed.
//!
//! Only AP3000 layouts changed across revisions (vendor changelog, see
//! `pile-protocol`'s README). A BKV gateway of the guides V1.2–V1.7 writes the
//! same frames the simulator sends, so BKV entries are refused with that
//! reason rather than accepted and ignored.

use std::fmt;
use std::str::FromStr;

use pile_protocol::ap3000::ProtocolVersion;
use pile_protocol::Family;
use thiserror::Error;

use crate::seed::splitmix64;

/// The generation one pile speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    /// What the simulator implements in full (AP3000 V8.6, BKV guide V1.7).
    #[default]
    Latest,
    /// An older AP3000 protocol revision.
    Ap3000(ProtocolVersion),
}

impl Firmware {
    /// The AP3000 revision this firmware speaks.
    pub fn ap3000(self) -> ProtocolVersion {
        match self {
            Firmware::Latest => ProtocolVersion::LATEST,
            Firmware::Ap3000(v) => v,
        }
    }
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Firmware::Latest => f.write_str("latest"),
            Firmware::Ap3000(v) => write!(f, "ap3000 {v}"),
        }
    }
}

/// One `FAMILY=VERSION[:SHARE]` entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FirmwareShare {
    pub firmware: Firmware,
    /// 0..=1 of the family's piles.
    pub share: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FirmwareError {
    #[error("--firmware {0:?}: expected FAMILY=VERSION[:SHARE], e.g. ap3000=v6.1:30%")]
    Syntax(String),
    #[error(
        "--firmware {0:?}: unknown AP3000 version (expected v6.0 to v8.6, e.g. v6.1; older piles \
         used the 0x01 heartbeat, which the simulator does not speak)"
    )]
    Version(String),
    #[error("--firmware {0:?}: share must be 0-100% (or 0-1)")]
    Share(String),
    #[error(
        "--firmware {0:?}: BKV gateways of every guide version (V1.2-V1.7) write the frames the \
         simulator sends; only AP3000 generations differ"
    )]
    Bkv(String),
    #[error("--firmware: the shares of one family add up to more than 100%")]
    Total,
}

impl FromStr for FirmwareShare {
    type Err = FirmwareError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let (family, rest) = t
            .split_once('=')
            .ok_or_else(|| FirmwareError::Syntax(s.into()))?;
        let (version, share) = match rest.split_once(':') {
            Some((v, sh)) => (v, Some(sh)),
            None => (rest, None),
        };
        match family.trim().to_ascii_lowercase().as_str() {
            "ap3000" => {}
            "bkv" => return Err(FirmwareError::Bkv(s.into())),
            _ => return Err(FirmwareError::Syntax(s.into())),
        }
        let v: ProtocolVersion = version
            .parse()
            .map_err(|_| FirmwareError::Version(s.into()))?;
        // Before V6.0 piles used the 0x01 heartbeat instead of 0x20/0x21.
        if v > ProtocolVersion::LATEST || v < ProtocolVersion::V6_0 {
            return Err(FirmwareError::Version(s.into()));
        }
        let share = match share.map(str::trim) {
            None => 1.0,
            Some(p) => {
                let (num, scale) = match p.strip_suffix('%') {
                    Some(n) => (n, 100.0),
                    None => (p, 1.0),
                };
                let x: f64 = num.parse().map_err(|_| FirmwareError::Share(s.into()))?;
                let x = x / scale;
                if !(0.0..=1.0).contains(&x) {
                    return Err(FirmwareError::Share(s.into()));
                }
                x
            }
        };
        Ok(FirmwareShare {
            firmware: Firmware::Ap3000(v),
            share,
        })
    }
}

/// The fleet's firmware plan (empty: every pile speaks the latest generation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FirmwarePlan(pub Vec<FirmwareShare>);

impl FirmwarePlan {
    /// Parses a list of entries and checks the shares.
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, FirmwareError> {
        let mut plan = Vec::new();
        for e in entries {
            for part in e.split(',').filter(|p| !p.trim().is_empty()) {
                plan.push(part.parse()?);
            }
        }
        let plan = FirmwarePlan(plan);
        plan.validate()?;
        Ok(plan)
    }

    pub fn validate(&self) -> Result<(), FirmwareError> {
        let total: f64 = self.0.iter().map(|s| s.share).sum();
        if total > 1.0 + 1e-9 {
            return Err(FirmwareError::Total);
        }
        Ok(())
    }

    /// The firmware of pile `index` of `family`, drawn from the run seed.
    pub fn pick(&self, family: Family, seed: u64, index: u32) -> Firmware {
        if family != Family::Ap3000 || self.0.is_empty() {
            return Firmware::Latest;
        }
        let draw = splitmix64(seed ^ 0xF1A3_0000_0000_0000 ^ u64::from(index));
        let u = (draw >> 11) as f64 / (1u64 << 53) as f64;
        let mut upto = 0.0;
        for s in &self.0 {
            upto += s.share;
            if u < upto {
                return s.firmware;
            }
        }
        Firmware::Latest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_with_percent_fraction_or_no_share() {
        let s: FirmwareShare = "ap3000=v6.1:30%".parse().unwrap();
        assert_eq!(s.firmware, Firmware::Ap3000(ProtocolVersion::new(6, 1)));
        assert!((s.share - 0.3).abs() < 1e-12);
        let s: FirmwareShare = "AP3000=7.8:0.25".parse().unwrap();
        assert!((s.share - 0.25).abs() < 1e-12);
        assert_eq!("ap3000=v8.0".parse::<FirmwareShare>().unwrap().share, 1.0);
        assert!(matches!(
            "bkv=v1.5:10%".parse::<FirmwareShare>(),
            Err(FirmwareError::Bkv(_))
        ));
        assert!("ap3000=v9.1".parse::<FirmwareShare>().is_err());
        assert!("ap3000=v5.9".parse::<FirmwareShare>().is_err());
        assert!("ap3000=v6.1:130%".parse::<FirmwareShare>().is_err());
        assert!("ap3000".parse::<FirmwareShare>().is_err());
        assert_eq!(
            FirmwarePlan::parse(["ap3000=v6.1:60%,ap3000=v7.8:50%"]),
            Err(FirmwareError::Total)
        );
    }

    #[test]
    fn shares_split_the_family_deterministically() {
        let plan = FirmwarePlan::parse(["ap3000=v6.1:30%", "ap3000=v7.8:20%"]).unwrap();
        let n = 10_000;
        let mut counts = [0u32; 3];
        for i in 0..n {
            match plan.pick(Family::Ap3000, 42, i) {
                Firmware::Ap3000(v) if v == ProtocolVersion::new(6, 1) => counts[0] += 1,
                Firmware::Ap3000(_) => counts[1] += 1,
                Firmware::Latest => counts[2] += 1,
            }
            assert_eq!(
                plan.pick(Family::Ap3000, 42, i),
                plan.pick(Family::Ap3000, 42, i)
            );
            assert_eq!(plan.pick(Family::Bkv, 42, i), Firmware::Latest);
        }
        for (got, want) in counts.iter().zip([0.3, 0.2, 0.5]) {
            let share = f64::from(*got) / f64::from(n);
            assert!((share - want).abs() < 0.03, "{counts:?}");
        }
        let all = FirmwarePlan::parse(["ap3000=v6.1"]).unwrap();
        assert!((0..100).all(|i| all.pick(Family::Ap3000, 1, i) != Firmware::Latest));
    }
}
