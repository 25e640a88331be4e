//! The gateway's one source of wall-clock time, injectable so that tests and the seeded fault
//! simulation decide what time it is.
//!
//! * [`Clock::system`] follows tokio's clock from the moment it was made, so paused-time tests
//!   move it too (`tokio::time::advance`).
//! * [`Clock::manual`] stands still until [`Clock::set_ms`] / [`Clock::advance_ms`] move it: the
//!   fault simulation drives every component with it, and no sleep or timer is involved.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Wall clock in Unix milliseconds.
#[derive(Debug, Clone)]
pub enum Clock {
    System {
        base_unix_ms: i64,
        base: tokio::time::Instant,
    },
    Manual(Arc<AtomicI64>),
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    pub fn system() -> Self {
        let base_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Clock::System {
            base_unix_ms,
            base: tokio::time::Instant::now(),
        }
    }

    /// Same as [`Clock::system`] (kept for callers of the old name).
    pub fn new() -> Self {
        Self::system()
    }

    /// A clock that only moves when told to.
    pub fn manual(start_ms: i64) -> Self {
        Clock::Manual(Arc::new(AtomicI64::new(start_ms)))
    }

    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System { base_unix_ms, base } => {
                base_unix_ms + base.elapsed().as_millis() as i64
            }
            Clock::Manual(t) => t.load(Ordering::SeqCst),
        }
    }

    pub fn now_sec(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Moves a manual clock to `ms` (never backwards); no effect on the system clock.
    pub fn set_ms(&self, ms: i64) {
        if let Clock::Manual(t) = self {
            t.fetch_max(ms, Ordering::SeqCst);
        }
    }

    pub fn advance_ms(&self, by: i64) {
        if let Clock::Manual(t) = self {
            t.fetch_add(by.max(0), Ordering::SeqCst);
        }
    }

    pub fn is_manual(&self) -> bool {
        matches!(self, Clock::Manual(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_forward_and_only_when_told() {
        let c = Clock::manual(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.advance_ms(500);
        assert_eq!(c.now_ms(), 1_500);
        c.set_ms(1_200);
        assert_eq!(c.now_ms(), 1_500, "never backwards");
        c.set_ms(3_000);
        assert_eq!((c.now_ms(), c.now_sec()), (3_000, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn the_system_clock_follows_paused_tokio_time() {
        let c = Clock::system();
        let t0 = c.now_ms();
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        assert_eq!(c.now_ms() - t0, 10_000);
    }
}
