//! How a BKV socket bills the charges the server sells it by money, and stops
//! them when what was paid is used up — as the device does:
//!
//! * **0x0015/0x17, power tiers** (guide §2.2.1 advanced): each tier is a
//!   power ceiling, a price and the minutes that price buys. The socket picks
//!   the tier by its *settle power*, the highest power of the charge so far,
//!   charges the tier's price per its minutes, and stops when the amount is
//!   spent. Its 0x18 end report carries the amount spent (the sum over tiers
//!   of minutes × price), the settle power and the minutes per tier.
//! * **0x1000/0x1007, energy price + service fee**: each tier holds until a
//!   time of day (the list ends at 23:59) with an energy price and a service
//!   fee; the service fee is per kWh (mode 1) or, by our reading of mode 0
//!   ("按时收取"), per hour. The socket stops when the paid amount is spent; its
//!   0x1004 report carries the energy and service fees and per-tier usage.
//!
//! Money is integer fen, rounded half up when reported; the meter keeps the
//! exact fractions while the charge runs.

use serde::{Deserialize, Serialize};

/// China Standard Time, which the sockets' clocks keep.
const LOCAL_OFFSET_S: u64 = 8 * 3600;

/// One 0x17 power tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerTier {
    /// Highest settle power this tier covers, in W.
    pub max_power_w: f64,
    pub price_fen: u32,
    /// Minutes `price_fen` buys.
    pub minutes: u32,
}

/// One 0x1007 fee tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeeTier {
    /// The tier holds until this minute of the (local) day, inclusive.
    pub until_minute: u16,
    pub energy_fen_per_kwh: u32,
    /// Per kWh, or per hour when the service fee is charged by time.
    pub service_fen: u32,
}

/// A charge the socket bills itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Billing {
    PowerTiers {
        amount_fen: u32,
        tiers: Vec<PowerTier>,
    },
    Fee {
        paid_fen: u32,
        /// Service fee per kWh (0x80 = 1) or per hour (0x80 = 0).
        service_by_energy: bool,
        tiers: Vec<FeeTier>,
    },
}

/// What the socket has counted so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meter {
    pub secs_per_tier: Vec<f64>,
    pub wh_per_tier: Vec<f64>,
    /// Fractional fen.
    pub energy_fee: f64,
    pub service_fee: f64,
    /// Highest power seen, W.
    pub settle_power_w: f64,
}

/// What a charge by money cost, as its end report carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndBilling {
    pub spent_fen: u32,
    pub energy_fee_fen: u32,
    pub service_fee_fen: u32,
    pub settle_power_dw: u16,
    pub tier_minutes: Vec<u16>,
    pub tier_energy_wh: Vec<u32>,
}

fn fen(v: f64) -> u32 {
    if v.is_finite() && v > 0.0 {
        (v + 0.5).floor().min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

fn minute_of_day(unix_s: u64) -> u16 {
    (((unix_s + LOCAL_OFFSET_S) % 86_400) / 60) as u16
}

impl Billing {
    fn tier_count(&self) -> usize {
        match self {
            Billing::PowerTiers { tiers, .. } => tiers.len(),
            Billing::Fee { tiers, .. } => tiers.len(),
        }
        .max(1)
    }

    /// The money the charge may use, in fen.
    pub fn amount_fen(&self) -> u32 {
        match self {
            Billing::PowerTiers { amount_fen, .. } => *amount_fen,
            Billing::Fee { paid_fen, .. } => *paid_fen,
        }
    }

    /// The tier in force for this settle power / at this time.
    pub fn tier(&self, settle_power_w: f64, unix_s: u64) -> usize {
        match self {
            Billing::PowerTiers { tiers, .. } => tiers
                .iter()
                .position(|t| settle_power_w <= t.max_power_w)
                .unwrap_or(tiers.len().saturating_sub(1)),
            Billing::Fee { tiers, .. } => {
                let now = minute_of_day(unix_s);
                tiers
                    .iter()
                    .position(|t| now <= t.until_minute)
                    .unwrap_or(tiers.len().saturating_sub(1))
            }
        }
    }

    /// Fen per second and fen per Wh in tier `i`.
    fn rates(&self, i: usize) -> (f64, f64) {
        match self {
            Billing::PowerTiers { tiers, .. } => match tiers.get(i) {
                Some(t) if t.minutes > 0 => {
                    (f64::from(t.price_fen) / (f64::from(t.minutes) * 60.0), 0.0)
                }
                _ => (0.0, 0.0),
            },
            Billing::Fee {
                tiers,
                service_by_energy,
                ..
            } => match tiers.get(i) {
                Some(t) if *service_by_energy => (
                    0.0,
                    f64::from(t.energy_fen_per_kwh + t.service_fen) / 1000.0,
                ),
                Some(t) => (
                    f64::from(t.service_fen) / 3600.0,
                    f64::from(t.energy_fen_per_kwh) / 1000.0,
                ),
                None => (0.0, 0.0),
            },
        }
    }

    /// Fractional fen spent so far.
    pub fn spent(&self, m: &Meter) -> f64 {
        m.energy_fee + m.service_fee
    }

    /// Counts `secs` of charging that took `wh` in tier `i`.
    pub fn accrue(&self, m: &mut Meter, i: usize, secs: f64, wh: f64) {
        let n = self.tier_count();
        if m.secs_per_tier.len() < n {
            m.secs_per_tier.resize(n, 0.0);
            m.wh_per_tier.resize(n, 0.0);
        }
        if let Some(s) = m.secs_per_tier.get_mut(i) {
            *s += secs;
        }
        if let Some(w) = m.wh_per_tier.get_mut(i) {
            *w += wh;
        }
        match self {
            Billing::PowerTiers { .. } => {
                let (per_s, _) = self.rates(i);
                m.service_fee += per_s * secs;
            }
            Billing::Fee {
                tiers,
                service_by_energy,
                ..
            } => {
                if let Some(t) = tiers.get(i) {
                    m.energy_fee += f64::from(t.energy_fen_per_kwh) / 1000.0 * wh;
                    m.service_fee += if *service_by_energy {
                        f64::from(t.service_fen) / 1000.0 * wh
                    } else {
                        f64::from(t.service_fen) / 3600.0 * secs
                    };
                }
            }
        }
    }

    /// At the rates of tier `i`, how long (s) until the money is used up if
    /// `wh_per_s` is drawn: `None` when nothing is charged at all.
    pub fn secs_left(&self, m: &Meter, i: usize, wh_per_s: f64) -> Option<f64> {
        let left = f64::from(self.amount_fen()) - self.spent(m);
        if left <= 0.0 {
            return Some(0.0);
        }
        let (per_s, per_wh) = self.rates(i);
        let rate = per_s + per_wh * wh_per_s.max(0.0);
        (rate > 0.0).then(|| left / rate)
    }

    /// When tier `i` charges by energy only: the energy (Wh) until the money
    /// is used up. The charger model then says exactly when that is reached.
    pub fn wh_left(&self, m: &Meter, i: usize) -> Option<f64> {
        let (per_s, per_wh) = self.rates(i);
        if per_s > 0.0 || per_wh <= 0.0 {
            return None;
        }
        Some(((f64::from(self.amount_fen()) - self.spent(m)) / per_wh).max(0.0))
    }

    /// The end report's billing fields.
    pub fn summary(&self, m: &Meter) -> EndBilling {
        let n = self.tier_count();
        let secs = |i: usize| m.secs_per_tier.get(i).copied().unwrap_or(0.0);
        let wh = |i: usize| m.wh_per_tier.get(i).copied().unwrap_or(0.0);
        let spent = fen(self.spent(m)).min(self.amount_fen());
        let (energy, service) = match self {
            Billing::PowerTiers { .. } => (0, spent),
            Billing::Fee { .. } => {
                let energy = fen(m.energy_fee).min(spent);
                (energy, spent - energy)
            }
        };
        EndBilling {
            spent_fen: spent,
            energy_fee_fen: energy,
            service_fee_fen: service,
            settle_power_dw: (m.settle_power_w * 10.0).round().clamp(0.0, 65_535.0) as u16,
            tier_minutes: (0..n)
                .map(|i| u16::try_from((secs(i) / 60.0).ceil() as u64).unwrap_or(u16::MAX))
                .collect(),
            tier_energy_wh: (0..n).map(|i| wh(i).floor() as u32).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vendor_tiers() -> Billing {
        // The guide's 0x17 example: 1 yuan; 200 W 0.25 yuan / 60 min, 400 W
        // 0.5 yuan / 60 min, 600 W, 800 W, 2000 W.
        let t = |w: f64, p, m| PowerTier {
            max_power_w: w,
            price_fen: p,
            minutes: m,
        };
        Billing::PowerTiers {
            amount_fen: 100,
            tiers: vec![
                t(200.0, 25, 60),
                t(400.0, 50, 60),
                t(600.0, 100, 60),
                t(800.0, 150, 60),
                t(2000.0, 500, 120),
            ],
        }
    }

    #[test]
    fn power_tiers_follow_the_settle_power_and_stop_when_the_amount_is_spent() {
        let b = vendor_tiers();
        assert_eq!(b.tier(180.0, 0), 0);
        assert_eq!(b.tier(300.0, 0), 1);
        assert_eq!(b.tier(5000.0, 0), 4, "over the last ceiling: the last tier");
        let mut m = Meter::default();
        // 1 yuan at 0.25 yuan per hour in tier 1: 4 hours.
        let left = b.secs_left(&m, 0, 0.05).unwrap();
        assert!((left - 4.0 * 3600.0).abs() < 1e-6, "{left}");
        // The vendor's 0x18 example: 36 minutes in tier 1 cost 15 fen.
        b.accrue(&mut m, 0, 36.0 * 60.0, 1.0);
        m.settle_power_w = 150.0;
        let s = b.summary(&m);
        assert_eq!((s.spent_fen, s.settle_power_dw), (15, 1500));
        assert_eq!(s.tier_minutes, vec![36, 0, 0, 0, 0]);
    }

    #[test]
    fn fee_tiers_charge_energy_and_service_by_the_time_of_day() {
        let b = Billing::Fee {
            paid_fen: 100,
            service_by_energy: true,
            tiers: vec![
                FeeTier {
                    until_minute: 11 * 60 + 59,
                    energy_fen_per_kwh: 50,
                    service_fen: 50,
                },
                FeeTier {
                    until_minute: 23 * 60 + 59,
                    energy_fen_per_kwh: 100,
                    service_fen: 100,
                },
            ],
        };
        // 2024-08-23 02:17:29 UTC = 10:17 in China: the first tier.
        assert_eq!(b.tier(0.0, 1_724_379_449), 0);
        assert_eq!(b.tier(0.0, 1_724_379_449 + 4 * 3600), 1);
        let mut m = Meter::default();
        // 1 yuan at 1 yuan/kWh: 1 kWh; at 0.05 Wh/s that is 20,000 s.
        let left = b.secs_left(&m, 0, 0.05).unwrap();
        assert!((left - 20_000.0).abs() < 1e-6, "{left}");
        b.accrue(&mut m, 0, 3600.0, 500.0);
        let s = b.summary(&m);
        assert_eq!(
            (s.spent_fen, s.energy_fee_fen, s.service_fee_fen),
            (50, 25, 25)
        );
        assert_eq!(s.tier_energy_wh, vec![500, 0]);
        // Spending past the amount reports the amount.
        b.accrue(&mut m, 0, 3600.0, 600.0);
        assert_eq!(b.summary(&m).spent_fen, 100);
        assert_eq!(b.secs_left(&m, 0, 0.05), Some(0.0));
    }
}
