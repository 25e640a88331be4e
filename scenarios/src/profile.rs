//! The two timing profiles of `shared/design/SCENARIOS.md`.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    pub name: &'static str,
    /// Heartbeat and progress period.
    pub heartbeat: Duration,
    /// Silence after which the gateway marks a device offline.
    pub offline_after: Duration,
    /// 2.1 charge target.
    pub charge_target: Duration,
    /// 2.2 stop after.
    pub stop_after: Duration,
    /// 3.1 charge before the drop.
    pub drop_after: Duration,
    /// 3.1 drop length.
    pub drop_len: Duration,
    /// 4.2 fleet size.
    pub fleet: u32,
    /// The gateway's `--reconcile-after` (B.3): idle reports must span this long before an
    /// open order's charge is settled as lost.
    pub reconcile_after: Duration,
}

impl Profile {
    pub fn quick() -> Self {
        Profile {
            name: "quick",
            heartbeat: Duration::from_secs(1),
            offline_after: Duration::from_secs(3),
            charge_target: Duration::from_secs(60),
            stop_after: Duration::from_secs(12),
            drop_after: Duration::from_secs(10),
            drop_len: Duration::from_secs(8),
            fleet: 200,
            reconcile_after: Duration::from_secs(5),
        }
    }

    /// The record's real timings.
    pub fn seed() -> Self {
        Profile {
            name: "seed",
            heartbeat: Duration::from_secs(11),
            offline_after: Duration::from_secs(30),
            charge_target: Duration::from_secs(300),
            stop_after: Duration::from_secs(120),
            drop_after: Duration::from_secs(120),
            drop_len: Duration::from_secs(60),
            fleet: 1000,
            reconcile_after: Duration::from_secs(60),
        }
    }

    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "quick" => Some(Self::quick()),
            "seed" => Some(Self::seed()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_match_the_scenarios_table() {
        let q = Profile::quick();
        assert_eq!(q.heartbeat.as_secs(), 1);
        assert_eq!(q.offline_after.as_secs(), 3);
        assert_eq!(q.charge_target.as_secs(), 60);
        assert_eq!(q.stop_after.as_secs(), 12);
        assert_eq!((q.drop_after.as_secs(), q.drop_len.as_secs()), (10, 8));
        assert_eq!(q.fleet, 200);
        let s = Profile::seed();
        assert_eq!(s.heartbeat.as_secs(), 11);
        assert_eq!(s.offline_after.as_secs(), 30);
        assert_eq!(s.charge_target.as_secs(), 300);
        assert_eq!(s.stop_after.as_secs(), 120);
        assert_eq!((s.drop_after.as_secs(), s.drop_len.as_secs()), (120, 60));
        assert_eq!(s.fleet, 1000);
        assert!(Profile::by_name("nope").is_none());
    }
}
