//! Who may connect (#13): an optional allowlist of device IDs, a rate limit on registering
//! new (unknown) IDs, and flapping protection — an ID that connects more than `flap_max`
//! times within a minute is held off for `flap_hold` (as EMQX's flapping detection does).
//!
//! Decided at identification ([`crate::service::Service`]'s `identify`), before anything is
//! written: a refused connection leaves no device row, no `device.registered` event and no
//! frame ring, and is closed. Times are the service clock's milliseconds.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::metrics as m;

const MINUTE_MS: i64 = 60_000;

/// The admission rules in force.
#[derive(Debug, Clone, Default)]
pub struct AdmissionConfig {
    /// Only these IDs may connect; `None`: any.
    pub allowlist: Option<HashSet<String>>,
    /// New IDs per minute (a bucket of this size refilled over a minute); 0: no limit.
    pub registrations_per_minute: u32,
    /// Connections of one ID per minute past which it is held off; 0: no limit.
    pub flap_max: u32,
    pub flap_hold_ms: i64,
}

impl AdmissionConfig {
    pub fn from_config(c: &crate::config::Config) -> anyhow::Result<Self> {
        let allowlist = match &c.device_allowlist {
            Some(path) => Some(read_allowlist(path)?),
            None => None,
        };
        Ok(AdmissionConfig {
            allowlist,
            registrations_per_minute: c.device_registrations_per_minute,
            flap_max: c.device_flap_max,
            flap_hold_ms: c.device_flap_hold.as_millis() as i64,
        })
    }
}

/// One device ID a line; blank lines and `#` comments ignored.
pub fn read_allowlist(path: &Path) -> anyhow::Result<HashSet<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading --device-allowlist {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Why a connection was refused (the metric's `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Allowlist,
    RegistrationRate,
    Flapping,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Allowlist => "allowlist",
            Refusal::RegistrationRate => "registration_rate",
            Refusal::Flapping => "flapping",
        }
    }
}

#[derive(Debug, Default)]
struct Flap {
    window_start_ms: i64,
    count: u32,
    held_until_ms: Option<i64>,
}

#[derive(Debug, Default)]
struct State {
    tokens: f64,
    tokens_at_ms: Option<i64>,
    flaps: HashMap<String, Flap>,
}

/// Refusals so far, by reason, and IDs put on hold (this gateway's; `/metrics` has the same).
#[derive(Debug, Default)]
pub struct AdmissionCounts {
    pub allowlist: AtomicU64,
    pub registration_rate: AtomicU64,
    pub flapping: AtomicU64,
    /// IDs put on hold for flapping.
    pub held: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Admission {
    cfg: AdmissionConfig,
    state: Mutex<State>,
    pub counts: AdmissionCounts,
}

impl Admission {
    pub fn new(cfg: AdmissionConfig) -> Self {
        Admission {
            cfg,
            state: Mutex::default(),
            counts: AdmissionCounts::default(),
        }
    }

    pub fn config(&self) -> &AdmissionConfig {
        &self.cfg
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The allowlist's word on `device_id`.
    pub fn listed(&self, device_id: &str) -> Result<(), Refusal> {
        match &self.cfg.allowlist {
            Some(list) if !list.contains(device_id) => Err(self.refused(Refusal::Allowlist)),
            _ => Ok(()),
        }
    }

    /// A new ID wants to register at `now_ms`: takes a token from the bucket.
    pub fn register_new(&self, now_ms: i64) -> Result<(), Refusal> {
        let per_minute = self.cfg.registrations_per_minute;
        if per_minute == 0 {
            return Ok(());
        }
        let cap = f64::from(per_minute);
        let mut s = self.state();
        match s.tokens_at_ms {
            // Starts full.
            None => s.tokens = cap,
            Some(at) => {
                let elapsed = (now_ms - at).max(0) as f64;
                s.tokens = (s.tokens + elapsed * cap / MINUTE_MS as f64).min(cap);
            }
        }
        s.tokens_at_ms = Some(s.tokens_at_ms.map_or(now_ms, |at| at.max(now_ms)));
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            Ok(())
        } else {
            drop(s);
            Err(self.refused(Refusal::RegistrationRate))
        }
    }

    /// `device_id` connects at `now_ms`: counted; refused while it is held off, and held off
    /// once it connected more than `flap_max` times within a minute.
    pub fn connect(&self, device_id: &str, now_ms: i64) -> Result<(), Refusal> {
        let max = self.cfg.flap_max;
        if max == 0 {
            return Ok(());
        }
        let hold = self.cfg.flap_hold_ms;
        let mut s = self.state();
        let f = s.flaps.entry(device_id.to_string()).or_default();
        if let Some(until) = f.held_until_ms {
            if now_ms < until {
                drop(s);
                return Err(self.refused(Refusal::Flapping));
            }
            *f = Flap::default();
            f.window_start_ms = now_ms;
        }
        if f.count == 0 || now_ms - f.window_start_ms >= MINUTE_MS {
            f.window_start_ms = now_ms;
            f.count = 0;
        }
        f.count += 1;
        if f.count > max {
            f.held_until_ms = Some(now_ms + hold);
            drop(s);
            self.counts.held.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(m::DEVICES_FLAPPING).increment(1);
            tracing::warn!(%device_id, connects_per_minute = max + 1, hold_s = hold / 1000, "device flapping: held off");
            return Err(self.refused(Refusal::Flapping));
        }
        Ok(())
    }

    /// Whether `device_id` is held off at `now_ms`.
    pub fn is_held(&self, device_id: &str, now_ms: i64) -> bool {
        self.state()
            .flaps
            .get(device_id)
            .and_then(|f| f.held_until_ms)
            .is_some_and(|until| now_ms < until)
    }

    /// Forgets flap windows that ended and holds that expired; returns how many remain.
    pub fn prune(&self, now_ms: i64) -> usize {
        let mut s = self.state();
        s.flaps.retain(|_, f| match f.held_until_ms {
            Some(until) => now_ms < until,
            None => now_ms - f.window_start_ms < MINUTE_MS,
        });
        s.flaps.len()
    }

    fn refused(&self, r: Refusal) -> Refusal {
        let c = match r {
            Refusal::Allowlist => &self.counts.allowlist,
            Refusal::RegistrationRate => &self.counts.registration_rate,
            Refusal::Flapping => &self.counts.flapping,
        };
        c.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::DEVICES_REFUSED, "reason" => r.as_str()).increment(1);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adm(per_minute: u32, flap_max: u32) -> Admission {
        Admission::new(AdmissionConfig {
            allowlist: None,
            registrations_per_minute: per_minute,
            flap_max,
            flap_hold_ms: 300_000,
        })
    }

    #[test]
    fn new_registrations_are_a_bucket_refilled_over_a_minute() {
        let a = adm(10, 0);
        let t = 1_000_000;
        for _ in 0..10 {
            assert_eq!(a.register_new(t), Ok(()));
        }
        assert_eq!(a.register_new(t), Err(Refusal::RegistrationRate));
        assert_eq!(a.register_new(t + 5_999), Err(Refusal::RegistrationRate));
        // One token per 6 s.
        assert_eq!(a.register_new(t + 6_500), Ok(()));
        assert_eq!(a.register_new(t + 7_000), Err(Refusal::RegistrationRate));
        assert_eq!(a.counts.registration_rate.load(Ordering::Relaxed), 3);
        // Never more than the bucket after a long quiet.
        for _ in 0..10 {
            assert_eq!(a.register_new(t + 3_600_000), Ok(()));
        }
        assert!(a.register_new(t + 3_600_000).is_err());
        assert!(adm(0, 0).register_new(t).is_ok(), "0: off");
    }

    #[test]
    fn an_id_connecting_too_often_is_held_off_then_let_back() {
        let a = adm(0, 3);
        let t = 5_000_000;
        for i in 0..3 {
            assert_eq!(a.connect("D1", t + i * 1_000), Ok(()));
        }
        assert_eq!(a.connect("D1", t + 3_000), Err(Refusal::Flapping));
        assert_eq!(a.counts.held.load(Ordering::Relaxed), 1);
        assert!(a.is_held("D1", t + 3_000 + 299_999));
        assert_eq!(a.connect("D1", t + 100_000), Err(Refusal::Flapping));
        assert_eq!(a.connect("D2", t + 3_000), Ok(()), "per ID");
        // Hold over: back, with a fresh window.
        assert_eq!(a.connect("D1", t + 303_000), Ok(()));
        assert!(!a.is_held("D1", t + 303_000));
        // Slow reconnects never trip it.
        let b = adm(0, 3);
        for i in 0..20 {
            assert_eq!(b.connect("D3", t + i * 30_000), Ok(()));
        }
        assert_eq!(b.prune(t + 20 * 30_000 + MINUTE_MS), 0);
    }

    #[test]
    fn the_allowlist_reads_one_id_a_line() {
        let dir = std::env::temp_dir().join(format!("allow-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(
            &dir,
            "# piles of site A\n82210225000520\n  1a2b3c4d  # AP3000\n\n",
        )
        .unwrap();
        let list = read_allowlist(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        assert_eq!(list.len(), 2);
        let a = Admission::new(AdmissionConfig {
            allowlist: Some(list),
            ..AdmissionConfig::default()
        });
        assert_eq!(a.listed("1a2b3c4d"), Ok(()));
        assert_eq!(a.listed("82210225000521"), Err(Refusal::Allowlist));
        assert!(read_allowlist(Path::new("/nonexistent/allow")).is_err());
    }
}
