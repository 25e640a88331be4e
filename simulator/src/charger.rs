//! The load a charging e-bike puts on a port: pure, driven by explicit time.
//!
//! The curve has three parts. After plug-in the charger's input ramps up
//! linearly over [`ChargerParams::ramp`]; it then draws a plateau near the
//! pile's nominal power with a little per-second noise; once the battery is
//! past [`ChargerParams::taper_from`] of what it needs, the power falls
//! linearly towards a float level, and the battery counts as full when it has
//! taken [`ChargerParams::to_full_wh`]. Energy is integrated over time in
//! steps of at most one second (power is constant within a step), so the
//! result depends only on the charger's own elapsed time and the calls made.

use std::time::Duration;

use crate::seed::{splitmix64, unit_noise};

/// Everything that shapes one charge's curve; drawn from the pile's RNG when
/// the charge starts.
#[derive(Debug, Clone, PartialEq)]
pub struct ChargerParams {
    /// Plateau power in watts.
    pub plateau_w: f64,
    /// Energy the battery takes until it is full, in Wh.
    pub to_full_wh: f64,
    /// Time from plug-in to the plateau.
    pub ramp: Duration,
    /// Fraction of `to_full_wh` after which the power tapers off.
    pub taper_from: f64,
    /// Floor of the taper as a fraction of the plateau (a charger's float stage).
    pub float_fraction: f64,
    /// Amplitude of the per-second noise as a fraction of the power.
    pub noise: f64,
    /// Seed of the per-second noise.
    pub noise_seed: u64,
    /// Mains voltage in volts (for current and voltage reports).
    pub mains_v: f64,
}

impl ChargerParams {
    /// Typical e-bike charger parameters around a nominal power, with the
    /// battery state and noise drawn from `rng`.
    pub fn draw(nominal_w: f64, rng: &mut impl rand::Rng) -> Self {
        let plateau_w = nominal_w * rng.gen_range(0.95..1.05);
        // A 48 V battery of 10-20 Ah that is 10-80 % empty.
        let battery_wh = rng.gen_range(480.0..960.0);
        let to_full_wh = battery_wh * rng.gen_range(0.1..0.8);
        ChargerParams {
            plateau_w,
            to_full_wh,
            ramp: Duration::from_millis(rng.gen_range(2_000..6_000)),
            taper_from: 0.8,
            float_fraction: 0.08,
            noise: 0.02,
            noise_seed: rng.gen(),
            mains_v: rng.gen_range(218.0..232.0),
        }
    }
}

/// Why the charger stopped drawing power by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargerEvent {
    Full,
}

/// One charge's state: elapsed time since plug-in and energy taken.
#[derive(Debug, Clone, PartialEq)]
pub struct ChargerModel {
    params: ChargerParams,
    elapsed: Duration,
    energy_wh: f64,
    power_w: f64,
    max_power_w: f64,
    full: bool,
}

impl ChargerModel {
    pub fn new(params: ChargerParams) -> Self {
        ChargerModel {
            params,
            elapsed: Duration::ZERO,
            energy_wh: 0.0,
            power_w: 0.0,
            max_power_w: 0.0,
            full: false,
        }
    }

    pub fn params(&self) -> &ChargerParams {
        &self.params
    }

    /// Time since plug-in.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Energy taken so far, in Wh.
    pub fn energy_wh(&self) -> f64 {
        self.energy_wh
    }

    /// Energy in whole Wh, as BKV reports it (saturating at the field width).
    pub fn energy_wh_u16(&self) -> u16 {
        saturate_u16(self.energy_wh)
    }

    /// Energy in 0.01 kWh, as AP3000 reports it.
    pub fn energy_cwh_u16(&self) -> u16 {
        saturate_u16(self.energy_wh / 10.0)
    }

    /// Power drawn in the last step, in W.
    pub fn power_w(&self) -> f64 {
        self.power_w
    }

    /// Highest power drawn so far, in W.
    pub fn max_power_w(&self) -> f64 {
        self.max_power_w
    }

    /// Average power since plug-in, in W.
    pub fn avg_power_w(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.energy_wh * 3600.0 / secs
        } else {
            0.0
        }
    }

    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Mains voltage with a little noise, in V.
    pub fn voltage_v(&self) -> f64 {
        let n = unit_noise(splitmix64(
            self.params.noise_seed ^ 0x5A5A ^ self.elapsed.as_secs(),
        ));
        self.params.mains_v + n * 1.5
    }

    /// Current drawn, in A.
    pub fn current_a(&self) -> f64 {
        self.power_w / self.voltage_v()
    }

    /// The power the charger draws at charger time `t` with `energy_wh` taken.
    fn power_at(&self, t: Duration, energy_wh: f64) -> f64 {
        let p = &self.params;
        let ramp = if p.ramp.is_zero() {
            1.0
        } else {
            (t.as_secs_f64() / p.ramp.as_secs_f64()).clamp(0.0, 1.0)
        };
        let fraction = if p.to_full_wh > 0.0 {
            energy_wh / p.to_full_wh
        } else {
            1.0
        };
        let taper = if fraction > p.taper_from {
            ((1.0 - fraction) / (1.0 - p.taper_from)).max(p.float_fraction)
        } else {
            1.0
        };
        let noise = unit_noise(splitmix64(p.noise_seed ^ t.as_secs())) * p.noise;
        // A charger in its ramp starts from a small standby draw, not zero.
        (p.plateau_w * ramp.max(0.05) * taper * (1.0 + noise)).max(0.0)
    }

    /// Advances the charge by `dt`. Returns [`ChargerEvent::Full`] when the
    /// battery became full during this step (the power is zero from then on).
    pub fn advance(&mut self, dt: Duration) -> Option<ChargerEvent> {
        if self.full {
            self.elapsed += dt;
            return None;
        }
        let mut left = dt;
        while !left.is_zero() {
            // Steps end on whole seconds of charger time so noise stays per second.
            let into_second = Duration::from_nanos(u64::from(self.elapsed.subsec_nanos()));
            let step = (Duration::from_secs(1) - into_second).min(left);
            let p = self.power_at(self.elapsed, self.energy_wh);
            self.power_w = p;
            self.max_power_w = self.max_power_w.max(p);
            self.energy_wh += p * step.as_secs_f64() / 3600.0;
            self.elapsed += step;
            left -= step;
            if self.energy_wh >= self.params.to_full_wh {
                self.energy_wh = self.params.to_full_wh;
                self.full = true;
                self.power_w = 0.0;
                self.elapsed += left;
                return Some(ChargerEvent::Full);
            }
        }
        None
    }

    /// How long from now until the charge has taken `target_wh` in total
    /// (`None` if that does not happen within `horizon` or ever).
    pub fn time_to_energy(&self, target_wh: f64, horizon: Duration) -> Option<Duration> {
        if self.energy_wh >= target_wh {
            return Some(Duration::ZERO);
        }
        self.time_until(horizon, |m| m.energy_wh >= target_wh)
    }

    /// How long from now until the battery is full (`None` beyond `horizon`).
    pub fn time_to_full(&self, horizon: Duration) -> Option<Duration> {
        if self.full {
            return Some(Duration::ZERO);
        }
        self.time_until(horizon, |m| m.full)
    }

    fn time_until(&self, horizon: Duration, done: impl Fn(&Self) -> bool) -> Option<Duration> {
        let mut probe = self.clone();
        let mut waited = Duration::ZERO;
        while waited < horizon {
            let into_second = Duration::from_nanos(u64::from(probe.elapsed.subsec_nanos()));
            let step = (Duration::from_secs(1) - into_second).min(horizon - waited);
            probe.advance(step);
            waited += step;
            if done(&probe) {
                // Round up to the whole millisecond so the deadline is never early.
                return Some(Duration::from_millis(
                    waited.as_millis().min(u128::from(u64::MAX)) as u64,
                ));
            }
        }
        None
    }
}

fn saturate_u16(v: f64) -> u16 {
    if v.is_finite() && v > 0.0 {
        v.min(f64::from(u16::MAX)) as u16
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::pile_rng;

    fn params() -> ChargerParams {
        ChargerParams {
            plateau_w: 200.0,
            to_full_wh: 100.0,
            ramp: Duration::from_secs(4),
            taper_from: 0.8,
            float_fraction: 0.08,
            noise: 0.02,
            noise_seed: 7,
            mains_v: 220.0,
        }
    }

    #[test]
    fn power_ramps_up_then_plateaus_near_nominal() {
        let mut m = ChargerModel::new(params());
        m.advance(Duration::from_secs(1));
        let early = m.power_w();
        assert!(early < 100.0, "ramp starts low, got {early}");
        m.advance(Duration::from_secs(60));
        let plateau = m.power_w();
        assert!((196.0..=204.0).contains(&plateau), "plateau {plateau}");
    }

    #[test]
    fn energy_is_power_integrated_over_time() {
        let mut m = ChargerModel::new(params());
        m.advance(Duration::from_secs(4));
        let after_ramp = m.energy_wh();
        m.advance(Duration::from_secs(360));
        // 6 minutes at about 200 W is about 20 Wh.
        let gained = m.energy_wh() - after_ramp;
        assert!((19.5..=20.5).contains(&gained), "gained {gained}");
        assert_eq!(m.energy_cwh_u16(), (m.energy_wh() / 10.0) as u16);
        assert_eq!(m.energy_wh_u16(), m.energy_wh() as u16);
    }

    #[test]
    fn power_tapers_near_full_and_the_charge_stops_full() {
        let mut m = ChargerModel::new(params());
        // 80 Wh at 200 W takes about 24 minutes; the taper starts there.
        m.advance(Duration::from_secs(24 * 60 + 30));
        let before = m.power_w();
        m.advance(Duration::from_secs(120));
        assert!(
            m.power_w() < before * 0.95,
            "taper: {} then {}",
            before,
            m.power_w()
        );
        let mut event = None;
        for _ in 0..10_000 {
            if let Some(e) = m.advance(Duration::from_secs(10)) {
                event = Some(e);
                break;
            }
        }
        assert_eq!(event, Some(ChargerEvent::Full));
        assert!(m.is_full());
        assert_eq!(m.power_w(), 0.0);
        assert!((m.energy_wh() - 100.0).abs() < 1e-9);
        assert_eq!(m.advance(Duration::from_secs(10)), None);
    }

    #[test]
    fn eta_predicts_when_the_target_is_reached() {
        let m = ChargerModel::new(params());
        let eta = m.time_to_energy(10.0, Duration::from_secs(3600)).unwrap();
        let mut run = m.clone();
        run.advance(eta);
        assert!(run.energy_wh() >= 10.0);
        let mut early = m.clone();
        early.advance(eta - Duration::from_secs(1));
        assert!(early.energy_wh() < 10.0);
        assert_eq!(m.time_to_energy(10.0, Duration::from_secs(5)), None);
        let full = m.time_to_full(Duration::from_secs(24 * 3600)).unwrap();
        let mut f = m.clone();
        assert_eq!(f.advance(full), Some(ChargerEvent::Full));
    }

    #[test]
    fn the_same_seed_draws_the_same_curve() {
        let a = ChargerParams::draw(180.0, &mut pile_rng(9, 3));
        let b = ChargerParams::draw(180.0, &mut pile_rng(9, 3));
        assert_eq!(a, b);
        let (mut ma, mut mb) = (ChargerModel::new(a), ChargerModel::new(b));
        ma.advance(Duration::from_secs(100));
        mb.advance(Duration::from_secs(100));
        assert_eq!(ma, mb);
    }

    #[test]
    fn current_and_voltage_follow_power() {
        let mut m = ChargerModel::new(params());
        m.advance(Duration::from_secs(30));
        let v = m.voltage_v();
        assert!((218.0..222.0).contains(&v));
        assert!((m.current_a() * v - m.power_w()).abs() < 1e-9);
        assert!(m.avg_power_w() > 0.0 && m.avg_power_w() <= m.max_power_w());
    }
}
