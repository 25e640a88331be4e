//! API keys: hashing, constant-time comparison, the per-key rate limit.

use super::*;

/// SHA-256 of an API key, as stored.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Per key hash: (second, requests in it).
pub(super) type RateWindows = HashMap<[u8; 32], (u64, u32)>;

impl AppState {
    /// Compares against every stored hash in constant time.
    fn authorised(&self, key: &[u8]) -> Option<[u8; 32]> {
        let presented: [u8; 32] = Sha256::digest(key).into();
        let hashes = self.key_hashes.read().unwrap_or_else(|p| p.into_inner());
        let mut found = subtle::Choice::from(0u8);
        for h in hashes.iter() {
            found |= h.ct_eq(&presented);
        }
        bool::from(found).then_some(presented)
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
}

pub(super) async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let key = req
        .headers()
        .get("x-api-key")
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    match state.authorised(&key) {
        Some(hash) if state.within_rate(hash) => next.run(req).await,
        Some(_) => ApiError::TooManyRequests.into_response(),
        None => ApiError::Unauthorized.into_response(),
    }
}
