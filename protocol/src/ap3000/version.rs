//! Revisions of the AP3000 protocol document and what each changed on the
//! wire.
//!
//! The vendor added fields over the years and says (§2.0.1) that a device
//! which does not support a field simply does not send it, so the server must
//! go by the packet length. [`Message::generation`] names the layout a decoded
//! frame has; [`Message::downgrade`] turns a message into what a device of an
//! older revision sends (the simulator's `--firmware`), so encoders can emit
//! every generation.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::message::Message;
use crate::DecodeError;

/// A revision of the vendor's protocol document ("第8.6版"). Ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ProtocolVersion {
    pub major: u8,
    pub minor: u8,
}

impl ProtocolVersion {
    pub const fn new(major: u8, minor: u8) -> Self {
        ProtocolVersion { major, minor }
    }
    /// 0x01 heartbeat: ambient temperature.
    pub const V5_6: Self = Self::new(5, 6);
    /// 0x20 register and 0x21 heartbeat replace 0x01.
    pub const V6_0: Self = Self::new(6, 0);
    /// 0x82 answer: order no, port, waiting ports; 0x06: period energy.
    pub const V6_2: Self = Self::new(6, 2);
    /// 0x06: peak power; 0x20/0x01: work mode.
    pub const V7_0: Self = Self::new(7, 0);
    /// 0x22 time request.
    pub const V7_3: Self = Self::new(7, 3);
    /// 0x82: max charge duration and overload power.
    pub const V7_5: Self = Self::new(7, 5);
    /// 0x20: power-board version; 0x06: voltage, current, temperatures.
    pub const V7_8: Self = Self::new(7, 8);
    /// 0x02/0x03/0x06: timestamp; 0x82/0x84: QR light.
    pub const V8_0: Self = Self::new(8, 0);
    /// 0x06 (and 0x03): occupancy minutes.
    pub const V8_5: Self = Self::new(8, 5);
    /// 0x95/0x96 (locate) commands; 0x82 extension with the short-circuit
    /// check; 0x01 loses its work mode; the dated revisions since (0x02 card
    /// number 2, 0x85 over/under voltage, 0x97) carry the same number.
    pub const V8_6: Self = Self::new(8, 6);
    /// The revision this crate implements in full.
    pub const LATEST: Self = Self::V8_6;

    /// Whether a device of this revision knows a server command (it ignores
    /// the ones it does not, without an answer).
    pub fn knows_command(self, command: u8) -> bool {
        match command {
            0x95..=0x98 => self >= Self::V8_6,
            0x8F => self >= Self::new(8, 4),
            0x8E => self >= Self::new(8, 1),
            0x8D => self >= Self::V7_0,
            0x89 => self >= Self::new(7, 6),
            0x8B | 0x8C => self >= Self::new(5, 8),
            0x8A => self >= Self::new(5, 3),
            _ => true,
        }
    }

    /// Whether a device of this revision sends this command on its own.
    pub fn sends_command(self, command: u8) -> bool {
        match command {
            0x20 | 0x21 => self >= Self::V6_0,
            0x01 => self < Self::V6_0,
            0x22 => self >= Self::V7_3,
            _ => true,
        }
    }
}

impl Default for ProtocolVersion {
    fn default() -> Self {
        Self::LATEST
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "V{}.{}", self.major, self.minor)
    }
}

impl FromStr for ProtocolVersion {
    type Err = DecodeError;

    /// `v6.1`, `V8.6` or `7.8`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DecodeError::InvalidField {
            what: "protocol version",
            field: "text",
            reason: format!("expected e.g. v6.1, got {s:?}"),
        };
        let t = s.trim();
        let t = t
            .strip_prefix('v')
            .or_else(|| t.strip_prefix('V'))
            .unwrap_or(t);
        let (major, minor) = t.split_once('.').ok_or_else(bad)?;
        Ok(ProtocolVersion::new(
            major.parse().map_err(|_| bad())?,
            minor.parse().map_err(|_| bad())?,
        ))
    }
}

impl Message {
    /// Which generation of its command this message's layout is, going by
    /// the fields present; `None` for commands whose layout never changed.
    pub fn generation(&self) -> Option<&'static str> {
        Some(match self {
            Message::StartStopReply(r) => match (r.order_no, r.extra.len()) {
                (Some(_), _) => "V6.2+ (order no, port, waiting ports)",
                (None, 0) => "before V6.2 (result only)",
                (None, _) => "before V6.2 (result and undocumented trailing bytes)",
            },
            Message::StartStop(m) => match (m.max_duration_s, m.qr_light, m.extension.len()) {
                (None, _, _) => "before V7.5 (no max duration / overload power)",
                (Some(_), None, _) => "V7.5-V7.9 (no QR light byte)",
                (Some(_), Some(_), 0) => "V8.0+ (QR light, no extension)",
                (Some(_), Some(_), _) => "V8.6 (with the extension bytes)",
            },
            Message::Register(m) => match (m.work_mode, m.power_board_version) {
                (None, _) => "before V7.0 (no work mode)",
                (Some(_), None) => "V7.0-V7.7 (no power-board version)",
                (Some(_), Some(_)) => "V7.8+",
            },
            Message::LegacyHeartbeat(m) => match (m.temperature_raw, m.work_mode) {
                (None, _) => "before V5.6 (no temperature)",
                (Some(_), None) => "V5.6-V6.9 or V8.6 (no work mode)",
                (Some(_), Some(_)) => "V7.0-V8.5 (with work mode)",
            },
            Message::PowerHeartbeat(m) => {
                if m.period_energy_raw.is_none() {
                    "before V6.2 (ends after the order no)"
                } else if m.peak_power_dw.is_none() {
                    "V6.2-V6.9 (period energy, no peak power)"
                } else if m.voltage_dv.is_none() || m.port_temperature_raw.is_none() {
                    "V7.0-V7.7 (peak power, no voltage/current/temperatures)"
                } else if m.timestamp.is_none() {
                    "V7.8-V7.9 (no timestamp)"
                } else if m.occupancy_min.is_none() {
                    "V8.0-V8.4 (timestamp, no occupancy)"
                } else {
                    "V8.5+ (occupancy)"
                }
            }
            Message::Settlement(m) => {
                if m.second_max_power_dw.is_none() {
                    "oldest (ends after the order no)"
                } else if m.timestamp.is_none() {
                    "before V8.0 (no timestamp)"
                } else if m.occupancy_min.is_none() {
                    "V8.0-V8.4 (timestamp, no occupancy)"
                } else {
                    "V8.5+ (occupancy)"
                }
            }
            Message::CardSwipe(m) => match (m.timestamp, &m.card_no2) {
                (None, _) => "before V8.0 (no timestamp)",
                (Some(_), None) => "V8.0+ (timestamp, no card number 2)",
                (Some(_), Some(_)) => "V8.6 2023-12 revision (card number 2)",
            },
            Message::SetRunParams2(p) => match p.qr_light {
                None => "before V8.0 (no QR light byte)",
                Some(_) => "V8.0+",
            },
            Message::SetLimits {
                over_voltage_dv, ..
            } => match over_voltage_dv {
                None => "before the 2024-08 revision (no over/under voltage)",
                Some(_) => "2024-08 revision (over/under voltage)",
            },
            Message::Locate { .. } | Message::SetMute { .. } => "V8.6",
            _ => return None,
        })
    }

    /// Drops every field that revision `v` does not send, so the message
    /// encodes as a device (or server) of that revision writes it. Commands
    /// that did not exist yet are left alone (see
    /// [`ProtocolVersion::knows_command`] / [`ProtocolVersion::sends_command`]).
    pub fn downgrade(&mut self, v: ProtocolVersion) {
        let before = self.clone();
        self.drop_newer_fields(v);
        // Trailing bytes beyond the last field belong to the newer layout.
        if *self != before {
            self.clear_extra();
        }
    }

    fn clear_extra(&mut self) {
        match self {
            Message::Register(m) => m.extra.clear(),
            Message::LegacyHeartbeat(m) => m.extra.clear(),
            Message::PowerHeartbeat(m) => m.extra.clear(),
            Message::Settlement(m) => m.extra.clear(),
            Message::CardSwipe(m) => m.extra.clear(),
            Message::StartStopReply(m) => m.extra.clear(),
            Message::SetRunParams2(m) => m.extra.clear(),
            _ => {}
        }
    }

    fn drop_newer_fields(&mut self, v: ProtocolVersion) {
        use ProtocolVersion as V;
        fn cut<T>(field: &mut Option<T>, v: ProtocolVersion, since: ProtocolVersion) {
            if v < since {
                *field = None;
            }
        }
        match self {
            Message::Register(m) => {
                cut(&mut m.work_mode, v, V::V7_0);
                cut(&mut m.power_board_version, v, V::V7_8);
                if m.work_mode.is_none() {
                    m.power_board_version = None;
                }
            }
            Message::LegacyHeartbeat(m) => {
                cut(&mut m.temperature_raw, v, V::V5_6);
                if v < V::V7_0 || v >= V::V8_6 || m.temperature_raw.is_none() {
                    m.work_mode = None;
                }
            }
            Message::PowerHeartbeat(m) => {
                let steps = [V::V6_2, V::V7_0, V::V7_8, V::V8_0, V::V8_5];
                let keep = steps.iter().take_while(|s| v >= **s).count();
                if keep < 1 {
                    m.period_energy_raw = None;
                }
                if keep < 2 {
                    m.peak_power_dw = None;
                }
                if keep < 3 {
                    m.voltage_dv = None;
                    m.current_ma = None;
                    m.ambient_temperature_raw = None;
                    m.port_temperature_raw = None;
                }
                if keep < 4 {
                    m.timestamp = None;
                }
                if keep < 5 {
                    m.occupancy_min = None;
                }
            }
            Message::Settlement(m) => {
                // The changelog does not date the second max power; the
                // vendor's own example (older than the V8.0 timestamp) has it.
                // Piles older than V6.2 are taken to end after the order no.
                if v < V::V6_2 {
                    m.second_max_power_dw = None;
                }
                if v < V::V8_0 || m.second_max_power_dw.is_none() {
                    m.timestamp = None;
                }
                if v < V::V8_5 || m.timestamp.is_none() {
                    m.occupancy_min = None;
                }
            }
            Message::CardSwipe(m) => {
                cut(&mut m.timestamp, v, V::V8_0);
                if v < V::V8_6 || m.timestamp.is_none() {
                    m.card_no2 = None;
                }
            }
            Message::StartStopReply(r) if v < V::V6_2 => {
                r.order_no = None;
                r.port = None;
                r.waiting_ports = None;
            }
            Message::StartStop(m) => {
                if v < V::V7_5 {
                    m.max_duration_s = None;
                    m.overload_power_dw = None;
                }
                if v < V::V8_0 || m.max_duration_s.is_none() {
                    m.qr_light = None;
                }
                if v < V::V8_6 || m.qr_light.is_none() {
                    m.extension.clear();
                }
            }
            Message::SetRunParams2(p) => cut(&mut p.qr_light, v, V::V8_0),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        let v: ProtocolVersion = "v6.1".parse().unwrap();
        assert_eq!(v, ProtocolVersion::new(6, 1));
        assert!(v < ProtocolVersion::V6_2);
        assert_eq!(
            "V8.6".parse::<ProtocolVersion>().unwrap(),
            ProtocolVersion::LATEST
        );
        assert_eq!(v.to_string(), "V6.1");
        assert!("six".parse::<ProtocolVersion>().is_err());
        assert!("v6".parse::<ProtocolVersion>().is_err());
        assert!(!v.knows_command(0x96) && ProtocolVersion::LATEST.knows_command(0x96));
        assert!(!v.sends_command(0x22) && ProtocolVersion::V7_8.sends_command(0x22));
    }
}
