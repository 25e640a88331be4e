//! Command timing rules, kept apart from I/O so they can be tested with paused time:
//! at least `spacing` between two commands to one device, one resend after `resend_after`,
//! then give up after as long again.

use tokio::time::{Duration, Instant};

/// Spacing of commands to one device.
#[derive(Debug, Clone)]
pub struct Pacer {
    spacing: Duration,
    last: Option<Instant>,
}

impl Pacer {
    pub fn new(spacing: Duration) -> Self {
        Pacer {
            spacing,
            last: None,
        }
    }

    /// When the next command may go.
    pub fn ready_at(&self) -> Instant {
        match self.last {
            Some(last) => last + self.spacing,
            None => Instant::now(),
        }
    }

    pub fn ready(&self, now: Instant) -> bool {
        match self.last {
            Some(last) => now >= last + self.spacing,
            None => true,
        }
    }

    /// A command went out at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.last = Some(now);
    }
}

/// What to do with an unanswered command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryStep {
    Wait(Instant),
    Resend,
    GiveUp,
}

/// The resend schedule of one command sent at `sent_at` `attempts` times.
pub fn retry_step(
    sent_at: Instant,
    attempts: u8,
    resend_after: Duration,
    now: Instant,
) -> RetryStep {
    let due = sent_at + resend_after;
    if now < due {
        RetryStep::Wait(due)
    } else if attempts < 2 {
        RetryStep::Resend
    } else {
        RetryStep::GiveUp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn commands_to_one_device_are_at_least_half_a_second_apart() {
        let mut p = Pacer::new(Duration::from_millis(500));
        let t0 = Instant::now();
        assert!(p.ready(t0));
        p.sent(t0);
        assert!(!p.ready(Instant::now()));
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(!p.ready(Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(p.ready(Instant::now()));
        assert_eq!(p.ready_at(), t0 + Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_command_is_resent_once_after_15_s_then_given_up() {
        let fifteen = Duration::from_secs(15);
        let sent = Instant::now();
        tokio::time::advance(Duration::from_secs(14)).await;
        assert_eq!(
            retry_step(sent, 1, fifteen, Instant::now()),
            RetryStep::Wait(sent + fifteen)
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            retry_step(sent, 1, fifteen, Instant::now()),
            RetryStep::Resend
        );
        let resent = Instant::now();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(
            retry_step(resent, 2, fifteen, Instant::now()),
            RetryStep::Wait(_)
        ));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            retry_step(resent, 2, fifteen, Instant::now()),
            RetryStep::GiveUp
        );
    }
}
