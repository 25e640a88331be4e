//! Fleet configuration: what the `run` command line sets, usable in-process.

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use pile_protocol::Family;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Which families the fleet's piles speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolChoice {
    Bkv,
    Ap3000,
    /// Even pile indexes speak BKV, odd ones AP3000.
    Mixed,
}

impl FromStr for ProtocolChoice {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "bkv" => Ok(ProtocolChoice::Bkv),
            "ap3000" => Ok(ProtocolChoice::Ap3000),
            "mixed" => Ok(ProtocolChoice::Mixed),
            _ => Err(ConfigError::Protocol(s.to_string())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("unknown protocol {0:?}: expected bkv, ap3000 or mixed")]
    Protocol(String),
    #[error(
        "invalid source address range {0:?}: expected A.B.C.D-E.F.G.H with A.B.C.D <= E.F.G.H"
    )]
    IpRange(String),
    #[error("invalid BKV gateway ID {0:?}: expected 14 decimal digits")]
    BkvId(String),
    #[error("invalid AP3000 physical ID {0:?}: expected 8 hex digits")]
    Ap3000Id(String),
    #[error("{count} piles from first ID {first} overflow the ID space")]
    IdOverflow { first: String, count: u32 },
    #[error("{0}")]
    Invalid(&'static str),
}

/// An inclusive range of IPv4 source addresses (`127.0.0.2-127.0.255.254`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl IpRange {
    pub fn len(&self) -> u64 {
        u64::from(u32::from(self.last)) - u64::from(u32::from(self.first)) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The address pile `index` binds to: piles spread round-robin.
    pub fn pick(&self, index: u64) -> Ipv4Addr {
        let offset = (index % self.len()) as u32;
        Ipv4Addr::from(u32::from(self.first).wrapping_add(offset))
    }
}

impl FromStr for IpRange {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ConfigError::IpRange(s.to_string());
        let (a, b) = match s.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s.trim(), s.trim()),
        };
        let first: Ipv4Addr = a.parse().map_err(|_| err())?;
        let last: Ipv4Addr = b.parse().map_err(|_| err())?;
        if u32::from(first) > u32::from(last) {
            return Err(err());
        }
        Ok(IpRange { first, last })
    }
}

/// Everything a fleet needs to run.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The gateway's device address, `HOST:PORT`, or several comma-separated: each pile
    /// starts with the first and moves to the next after a failed connect or a drop.
    pub server: String,
    pub devices: u32,
    pub protocol: ProtocolChoice,
    pub first_bkv_id: String,
    pub first_ap3000_id: String,
    /// Ports per pile (platform numbering 1..=ports).
    pub ports: u16,
    pub heartbeat: Duration,
    pub reconnect_delay: Duration,
    pub plug_delay: Duration,
    /// New connections per second while the fleet starts.
    pub ramp_per_sec: f64,
    pub source_ips: Option<IpRange>,
    pub seed: u64,
    /// Nominal charger power in W.
    pub power_w: f64,
    /// Recent frames kept per pile for `frames()` (0 keeps none).
    pub frames_kept: usize,
    /// How long an unacknowledged record waits before it is sent again.
    pub resend_after: Duration,
    /// Silence after which an AP3000 pile sends `link`.
    pub link_after: Duration,
    /// Offline progress samples kept per pile.
    pub progress_kept: usize,
    /// Scheduler shards (0 = one per core).
    pub scheduler_shards: usize,
    /// How late answers are under the `delay_answers` fault.
    pub answer_delay: Duration,
    /// Receives connect, heartbeat and command timings (load generation).
    pub observer: Option<crate::observe::Observer>,
    /// The fleet's EEPROM file (`--eeprom`): what the piles must still report
    /// survives a process kill.
    pub eeprom: Option<std::path::PathBuf>,
    /// Which firmware generation which share of the piles speaks (`--firmware`).
    pub firmware: crate::firmware::FirmwarePlan,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            server: "127.0.0.1:7065".to_string(),
            devices: 1,
            protocol: ProtocolChoice::Bkv,
            first_bkv_id: "82210225000520".to_string(),
            first_ap3000_id: "04AB373B".to_string(),
            ports: 4,
            heartbeat: Duration::from_secs(11),
            reconnect_delay: Duration::from_secs(5),
            plug_delay: Duration::from_secs(2),
            ramp_per_sec: 1000.0,
            source_ips: None,
            seed: 0,
            power_w: 180.0,
            frames_kept: 32,
            resend_after: Duration::from_secs(15),
            link_after: Duration::from_secs(30),
            progress_kept: 64,
            scheduler_shards: 0,
            answer_delay: Duration::from_secs(5),
            observer: None,
            eeprom: None,
            firmware: crate::firmware::FirmwarePlan::default(),
        }
    }
}

/// Identity of one pile in the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PileIdentity {
    pub index: u32,
    pub family: Family,
    pub id: String,
}

impl FleetConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.devices == 0 {
            return Err(ConfigError::Invalid("--devices must be at least 1"));
        }
        if self.ports == 0 || self.ports > 250 {
            return Err(ConfigError::Invalid("--ports must be 1..=250"));
        }
        if self.protocol != ProtocolChoice::Bkv
            && usize::from(self.ports) > pile_protocol::ap3000::PortStatuses::CAPACITY
        {
            return Err(ConfigError::Invalid(
                "--ports: an AP3000 heartbeat carries at most 32 ports",
            ));
        }
        if self.heartbeat.is_zero() {
            return Err(ConfigError::Invalid("--heartbeat must be positive"));
        }
        if self.ramp_per_sec.is_nan() || self.ramp_per_sec <= 0.0 {
            return Err(ConfigError::Invalid("--ramp must be positive"));
        }
        if !(self.power_w > 0.0 && self.power_w.is_finite()) {
            return Err(ConfigError::Invalid("--power-w must be positive"));
        }
        if self.firmware.validate().is_err() {
            return Err(ConfigError::Invalid(
                "--firmware: the shares add up to more than 100%",
            ));
        }
        self.identities().map(|_| ())
    }

    /// The family of pile `index`.
    pub fn family_of(&self, index: u32) -> Family {
        match self.protocol {
            ProtocolChoice::Bkv => Family::Bkv,
            ProtocolChoice::Ap3000 => Family::Ap3000,
            ProtocolChoice::Mixed if index % 2 == 0 => Family::Bkv,
            ProtocolChoice::Mixed => Family::Ap3000,
        }
    }

    /// Every pile's identity; IDs count up from the first ID of each family.
    pub fn identities(&self) -> Result<Vec<PileIdentity>, ConfigError> {
        let bkv_first = parse_bkv_id(&self.first_bkv_id)?;
        let ap_first = parse_ap3000_id(&self.first_ap3000_id)?;
        let (mut nb, mut na) = (0u64, 0u64);
        let mut out = Vec::with_capacity(self.devices as usize);
        for index in 0..self.devices {
            let family = self.family_of(index);
            let id = match family {
                Family::Bkv => {
                    let n = bkv_first + nb;
                    nb += 1;
                    if n > 99_999_999_999_999 {
                        return Err(ConfigError::IdOverflow {
                            first: self.first_bkv_id.clone(),
                            count: self.devices,
                        });
                    }
                    format!("{n:014}")
                }
                Family::Ap3000 => {
                    let n = ap_first + na;
                    na += 1;
                    if n > u64::from(u32::MAX) {
                        return Err(ConfigError::IdOverflow {
                            first: self.first_ap3000_id.clone(),
                            count: self.devices,
                        });
                    }
                    format!("{n:08X}")
                }
            };
            out.push(PileIdentity { index, family, id });
        }
        Ok(out)
    }
}

fn parse_bkv_id(s: &str) -> Result<u64, ConfigError> {
    if s.len() != 14 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConfigError::BkvId(s.to_string()));
    }
    s.parse().map_err(|_| ConfigError::BkvId(s.to_string()))
}

fn parse_ap3000_id(s: &str) -> Result<u64, ConfigError> {
    if s.len() != 8 {
        return Err(ConfigError::Ap3000Id(s.to_string()));
    }
    u64::from_str_radix(s, 16).map_err(|_| ConfigError::Ap3000Id(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_count_up_per_family() {
        let cfg = FleetConfig {
            devices: 4,
            protocol: ProtocolChoice::Mixed,
            ..FleetConfig::default()
        };
        let ids: Vec<_> = cfg
            .identities()
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(
            ids,
            ["82210225000520", "04AB373B", "82210225000521", "04AB373C"]
        );
    }

    #[test]
    fn source_ranges_parse_and_spread() {
        let r: IpRange = "127.0.0.2-127.0.255.254".parse().unwrap();
        assert_eq!(r.len(), 65_533);
        assert_eq!(r.pick(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(r.pick(254), Ipv4Addr::new(127, 0, 1, 0));
        assert_eq!(r.pick(65_533), Ipv4Addr::new(127, 0, 0, 2));
        assert!("127.0.0.9-127.0.0.2".parse::<IpRange>().is_err());
        assert!("nonsense".parse::<IpRange>().is_err());
    }

    #[test]
    fn bad_ids_are_rejected() {
        let cfg = FleetConfig {
            first_bkv_id: "123".into(),
            ..FleetConfig::default()
        };
        assert!(cfg.validate().is_err());
        let cfg = FleetConfig {
            protocol: ProtocolChoice::Ap3000,
            first_ap3000_id: "FFFFFFFF".into(),
            devices: 2,
            ..FleetConfig::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::IdOverflow { .. })
        ));
    }
}
