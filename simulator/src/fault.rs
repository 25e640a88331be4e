//! Injectable faults, per pile or over a share of the fleet.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// A fault kind as the control API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Random bytes written before each frame.
    Garbage,
    /// Every frame sent with a wrong checksum.
    BadChecksum,
    /// Every frame written one byte at a time.
    SplitBytes,
    /// Frames held back and written several at a time.
    MergeFrames,
    /// Every frame written twice.
    DuplicateFrames,
    /// Answers to server commands sent late (see `FleetConfig::answer_delay`).
    DelayAnswers,
    /// Server commands executed but never answered.
    MissingAnswers,
    /// Every start refused (AP3000 result 6 over power, BKV result 0).
    Refuse,
    /// The socket stays open and nothing flows either way.
    BlackHole,
    /// The pile loses power: no FIN, charges interrupted, restart afterwards.
    PowerOutage,
    /// The network cable is pulled for a while.
    NetworkDrop,
}

impl FaultKind {
    pub const ALL: [FaultKind; 11] = [
        FaultKind::Garbage,
        FaultKind::BadChecksum,
        FaultKind::SplitBytes,
        FaultKind::MergeFrames,
        FaultKind::DuplicateFrames,
        FaultKind::DelayAnswers,
        FaultKind::MissingAnswers,
        FaultKind::Refuse,
        FaultKind::BlackHole,
        FaultKind::PowerOutage,
        FaultKind::NetworkDrop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Garbage => "garbage",
            FaultKind::BadChecksum => "bad_checksum",
            FaultKind::SplitBytes => "split_bytes",
            FaultKind::MergeFrames => "merge_frames",
            FaultKind::DuplicateFrames => "duplicate_frames",
            FaultKind::DelayAnswers => "delay_answers",
            FaultKind::MissingAnswers => "missing_answers",
            FaultKind::Refuse => "refuse",
            FaultKind::BlackHole => "black_hole",
            FaultKind::PowerOutage => "power_outage",
            FaultKind::NetworkDrop => "network_drop",
        }
    }
}

impl FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown fault kind {s:?}"))
    }
}

/// The faults active on one pile, each until its own deadline.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    active: Vec<(FaultKind, Instant)>,
}

impl Faults {
    /// Activates `kind` until `until` (extends it if already active).
    pub fn set(&mut self, kind: FaultKind, until: Instant) {
        match self.active.iter_mut().find(|(k, _)| *k == kind) {
            Some(entry) => entry.1 = entry.1.max(until),
            None => self.active.push((kind, until)),
        }
    }

    pub fn clear(&mut self, kind: FaultKind) {
        self.active.retain(|(k, _)| *k != kind);
    }

    pub fn is_active(&self, kind: FaultKind, now: Instant) -> bool {
        self.active
            .iter()
            .any(|(k, until)| *k == kind && now < *until)
    }

    /// Forgets faults that have expired.
    pub fn expire(&mut self, now: Instant) {
        self.active.retain(|(_, until)| now < *until);
    }

    /// The earliest expiry, for the scheduler.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.active.iter().map(|(_, until)| *until).min()
    }

    pub fn list(&self, now: Instant) -> Vec<(FaultKind, u64)> {
        self.active
            .iter()
            .filter(|(_, until)| now < *until)
            .map(|(k, until)| (*k, until.saturating_duration_since(now).as_secs()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn names_round_trip() {
        for k in FaultKind::ALL {
            assert_eq!(k.as_str().parse::<FaultKind>(), Ok(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        assert!("meteor".parse::<FaultKind>().is_err());
    }

    #[test]
    fn faults_expire_at_their_deadline() {
        let t0 = Instant::now();
        let mut f = Faults::default();
        f.set(FaultKind::Garbage, t0 + Duration::from_secs(5));
        assert!(f.is_active(FaultKind::Garbage, t0));
        assert!(!f.is_active(FaultKind::Garbage, t0 + Duration::from_secs(5)));
        assert_eq!(f.next_expiry(), Some(t0 + Duration::from_secs(5)));
        f.expire(t0 + Duration::from_secs(6));
        assert_eq!(f.next_expiry(), None);
    }
}
