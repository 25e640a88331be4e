//! Hooks for a load generator: the fleet reports connects, heartbeat round
//! trips and the commands its piles receive, timed where they happen.
//!
//! Nothing is recorded unless a [`FleetObserver`] is set in
//! [`crate::config::FleetConfig::observer`]; the calls are made on the
//! piles' driver tasks, so an observer must be cheap and must not block.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A command from the gateway as a pile received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    Start,
    Stop,
}

/// Receives timing events from every pile of a fleet. Every method has an
/// empty default.
pub trait FleetObserver: Send + Sync {
    /// Pile `pile` (its index in the fleet) connected; `latency` runs from
    /// the start of the TCP connect to its completion; `nth` counts this
    /// pile's connects (1 for the first, more for reconnects).
    fn connected(&self, _pile: u32, _latency: Duration, _nth: u64) {}
    /// A connect attempt failed after `after`.
    fn connect_failed(&self, _pile: u32, _after: Duration) {}
    /// A heartbeat was answered `rtt` after it was sent (frames are matched
    /// oldest first).
    fn heartbeat_rtt(&self, _pile: u32, _rtt: Duration) {}
    /// A start or stop command for `port_no` (platform numbering, `None`
    /// when the command named no valid port) arrived.
    fn command(&self, _pile: u32, _kind: CommandKind, _port_no: Option<u16>) {}
}

/// A shared observer, cloneable into every pile's configuration.
#[derive(Clone)]
pub struct Observer(pub Arc<dyn FleetObserver>);

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Observer")
    }
}
