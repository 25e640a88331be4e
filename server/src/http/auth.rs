//! API keys: salted MACs compared in constant time, the per-key rate limit, and the limit on
//! failed attempts per source address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConditionallySelectable;

use super::*;

type HmacSha256 = Hmac<Sha256>;

/// One accepted key as stored: HMAC-SHA256 of the key under a random per-key salt — a
/// deliberately cheap KDF (keys are long random strings, not passwords); the salt makes a
/// stolen table useless for precomputed lookups. Stored as `hs256$<salt hex>$<mac hex>`.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    salt: [u8; 16],
    mac: [u8; 32],
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoredKey(..)")
    }
}

const SCHEME: &str = "hs256";

impl StoredKey {
    /// A fresh salt and the key's MAC under it.
    pub fn derive(key: &SecretString) -> Self {
        let salt = rand::random::<[u8; 16]>();
        StoredKey {
            mac: mac_of(&salt, key.expose_secret().as_bytes()),
            salt,
        }
    }

    pub fn encode(&self) -> String {
        format!(
            "{SCHEME}${}${}",
            hex::encode(self.salt),
            hex::encode(self.mac)
        )
    }

    /// `None` for anything else — the unsalted SHA-256 hex of older versions included.
    pub fn decode(s: &str) -> Option<Self> {
        let mut parts = s.split('$');
        if parts.next()? != SCHEME {
            return None;
        }
        let salt = hex::decode(parts.next()?).ok()?.try_into().ok()?;
        let mac = hex::decode(parts.next()?).ok()?.try_into().ok()?;
        parts.next().is_none().then_some(StoredKey { salt, mac })
    }

    /// Whether `presented` is this key, in time independent of where they differ.
    pub fn matches(&self, presented: &[u8]) -> subtle::Choice {
        mac_of(&self.salt, presented).ct_eq(&self.mac)
    }
}

fn mac_of(salt: &[u8], key: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(salt).expect("HMAC takes any key length");
    mac.update(key);
    mac.finalize().into_bytes().into()
}

/// Per accepted key (its MAC): (second, requests in it).
pub(super) type RateWindows = HashMap<[u8; 32], (u64, u32)>;

/// Failed key attempts per source address, in fixed one-minute windows.
#[derive(Debug, Default)]
pub struct FailedAttempts {
    per_minute: u32,
    windows: HashMap<IpAddr, (tokio::time::Instant, u32)>,
}

/// What the failure limit says about a request from an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Open,
    /// Too many failures this minute: answer 429; retry after this many seconds.
    Closed {
        retry_after: u64,
    },
}

const WINDOW: Duration = Duration::from_secs(60);

impl FailedAttempts {
    /// `per_minute` 0: no limit.
    pub fn new(per_minute: u32) -> Self {
        FailedAttempts {
            per_minute,
            windows: HashMap::new(),
        }
    }

    /// Whether `ip` may try a key at `now`.
    pub fn gate(&mut self, ip: IpAddr, now: tokio::time::Instant) -> Gate {
        match self.windows.get(&ip) {
            Some((start, n)) if self.per_minute > 0 && *n >= self.per_minute => {
                let end = *start + WINDOW;
                if now < end {
                    let left = end - now;
                    Gate::Closed {
                        retry_after: left.as_secs() + u64::from(left.subsec_nanos() > 0),
                    }
                } else {
                    Gate::Open
                }
            }
            _ => Gate::Open,
        }
    }

    /// Counts a failed attempt; returns the count in the current window.
    pub fn fail(&mut self, ip: IpAddr, now: tokio::time::Instant) -> u32 {
        if self.windows.len() > 10_000 {
            // An address spread cannot grow this without bound: expired windows go.
            self.windows.retain(|_, (start, _)| now < *start + WINDOW);
        }
        let w = self.windows.entry(ip).or_insert((now, 0));
        if now >= w.0 + WINDOW {
            *w = (now, 0);
        }
        w.1 = w.1.saturating_add(1);
        w.1
    }
}

impl AppState {
    /// Compares against every accepted key in constant time (no early exit).
    fn authorised(&self, key: &[u8]) -> Option<[u8; 32]> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let mut found = subtle::Choice::from(0u8);
        let mut which = [0u8; 32];
        for k in keys.iter() {
            let hit = k.matches(key);
            found |= hit;
            for (w, m) in which.iter_mut().zip(k.mac.iter()) {
                w.conditional_assign(m, hit);
            }
        }
        bool::from(found).then_some(which)
    }

    fn within_rate(&self, key: [u8; 32]) -> bool {
        let Some(limit) = self.rate_limit else {
            return true;
        };
        let second = self.started.elapsed().as_secs();
        let mut windows = self.rate_windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = windows.entry(key).or_insert((second, 0));
        if w.0 != second {
            *w = (second, 0);
        }
        w.1 += 1;
        w.1 <= limit
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, FailedAttempts> {
        self.failed_attempts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

pub(super) async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // Requests that came through the gateway's own listener carry their peer; others (a
    // router driven in-process) count as one unspecified address.
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let now = tokio::time::Instant::now();
    if let Gate::Closed { retry_after } = state.failures().gate(ip, now) {
        metrics::counter!(m::AUTH_FAILURES, "outcome" => "throttled").increment(1);
        return ApiError::TooManyRequests { retry_after }.into_response();
    }
    let key = req
        .headers()
        .get("x-api-key")
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    match state.authorised(&key) {
        Some(mac) if state.within_rate(mac) => next.run(req).await,
        Some(_) => ApiError::TooManyRequests { retry_after: 1 }.into_response(),
        None => {
            let n = state.failures().fail(ip, now);
            metrics::counter!(m::AUTH_FAILURES, "outcome" => "unauthorized").increment(1);
            let limit = state.failures().per_minute;
            // Logged without the key; past the limit once per window, not per attempt.
            if limit == 0 || n <= limit {
                tracing::warn!(
                    source = %ip,
                    attempts_this_minute = n,
                    key_given = !key.is_empty(),
                    path = %req.uri().path(),
                    "API key refused"
                );
            }
            if limit > 0 && n == limit {
                tracing::warn!(source = %ip, limit, "source address throttled for the rest of the minute (failed API keys)");
            }
            ApiError::Unauthorized.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn a_stored_key_matches_only_its_key_and_is_salted() {
        let key = SecretString::from("pk_abc");
        let a = StoredKey::derive(&key);
        let b = StoredKey::derive(&key);
        assert_ne!(a.encode(), b.encode(), "salted: one key, two stored forms");
        assert!(bool::from(a.matches(b"pk_abc")));
        assert!(!bool::from(a.matches(b"pk_abd")));
        assert!(!bool::from(a.matches(b"")));
        let round = StoredKey::decode(&a.encode()).expect("decodes");
        assert_eq!(round, a);
        assert!(!a.encode().contains("pk_abc"));
        assert_eq!(format!("{a:?}"), "StoredKey(..)");
        // The unsalted SHA-256 hex of older versions is not accepted as a stored key.
        assert!(StoredKey::decode(&hex::encode(Sha256::digest(b"pk_abc"))).is_none());
    }

    #[test]
    fn failed_attempts_close_the_gate_for_the_rest_of_the_minute() {
        let t0 = tokio::time::Instant::now();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        let mut f = FailedAttempts::new(3);
        for i in 1..=3 {
            assert_eq!(f.gate(ip, t0), Gate::Open);
            assert_eq!(f.fail(ip, t0), i);
        }
        let later = t0 + Duration::from_millis(20_500);
        assert_eq!(f.gate(ip, later), Gate::Closed { retry_after: 40 });
        assert_eq!(f.gate(other, later), Gate::Open, "per address");
        assert_eq!(f.gate(ip, t0 + WINDOW), Gate::Open, "a new minute");
        assert_eq!(f.fail(ip, t0 + WINDOW), 1);
        let mut off = FailedAttempts::new(0);
        for _ in 0..100 {
            off.fail(ip, t0);
        }
        assert_eq!(off.gate(ip, t0), Gate::Open);
    }
}
