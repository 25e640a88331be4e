//! The order state machine and charge modes.

use pile_api::OrderStatus;

/// How an order is meant to end (`charge_mode` of the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeMode {
    /// Mode 1: `duration` seconds.
    ByTime,
    /// Mode 2: `energy_wh`.
    ByEnergy,
    /// Mode 3: until `amount` is used up at the given prices.
    ByAmount,
    /// Mode 4: until the battery is full.
    UntilFull,
}

impl ChargeMode {
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(ChargeMode::ByTime),
            2 => Some(ChargeMode::ByEnergy),
            3 => Some(ChargeMode::ByAmount),
            4 => Some(ChargeMode::UntilFull),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        match self {
            ChargeMode::ByTime => 1,
            ChargeMode::ByEnergy => 2,
            ChargeMode::ByAmount => 3,
            ChargeMode::UntilFull => 4,
        }
    }
}

/// What happens to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderEvent {
    /// The device confirmed the start and reports charging.
    Confirmed,
    /// The device refused the start.
    Rejected,
    /// Stopped or expired before charging began.
    Cancelled,
    /// An end report (or the server's own settlement) closed it.
    Settled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("order cannot go from {from} on {event:?}")]
pub struct TransitionError {
    pub from: OrderStatus,
    pub event: OrderEvent,
}

/// A transition the state machine allows: the new status, and whether it is a *late*
/// settlement — a device's end report for an order the gateway had already given up on
/// (cancelled after its command TTL, failed on a lost or ambiguous answer). The device
/// delivered energy, so the order is billed and flagged rather than the report dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: OrderStatus,
    pub to: OrderStatus,
    pub late: bool,
}

/// The order state machine: pending → charging → completed, or failed / cancelled.
///
/// * A settlement may arrive for a pending order whose confirmation was lost (the device
///   charged while the gateway never saw it start): that completes it too.
/// * A settlement for a cancelled or failed order completes it, flagged `late` (see
///   [`Transition`]); a completed order is never settled twice.
/// * A confirmation of a charging order changes nothing (a repeated reply).
pub fn transition(from: OrderStatus, event: OrderEvent) -> Result<Transition, TransitionError> {
    use OrderEvent as E;
    use OrderStatus as S;
    let to = |to, late| Ok(Transition { from, to, late });
    match (from, event) {
        (S::Pending, E::Confirmed) => to(S::Charging, false),
        (S::Charging, E::Confirmed) => to(S::Charging, false),
        (S::Pending, E::Rejected) => to(S::Failed, false),
        (S::Pending, E::Cancelled) => to(S::Cancelled, false),
        (S::Pending | S::Charging, E::Settled) => to(S::Completed, false),
        (S::Cancelled | S::Failed, E::Settled) => to(S::Completed, true),
        _ => Err(TransitionError { from, event }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pile_api::OrderStatus;

    #[test]
    fn the_state_machine_allows_only_the_documented_transitions() {
        use OrderStatus::*;
        let to = |from, e| transition(from, e).map(|t| (t.to, t.late));
        assert_eq!(to(Pending, OrderEvent::Confirmed), Ok((Charging, false)));
        assert_eq!(to(Pending, OrderEvent::Rejected), Ok((Failed, false)));
        assert_eq!(to(Pending, OrderEvent::Cancelled), Ok((Cancelled, false)));
        assert_eq!(to(Charging, OrderEvent::Settled), Ok((Completed, false)));
        assert_eq!(to(Pending, OrderEvent::Settled), Ok((Completed, false)));
        // A device's report for an order given up on is billed, flagged late.
        assert_eq!(to(Cancelled, OrderEvent::Settled), Ok((Completed, true)));
        assert_eq!(to(Failed, OrderEvent::Settled), Ok((Completed, true)));
        assert!(transition(Completed, OrderEvent::Settled).is_err());
        assert!(transition(Charging, OrderEvent::Rejected).is_err());
        assert!(transition(Charging, OrderEvent::Cancelled).is_err());
        assert!(transition(Cancelled, OrderEvent::Confirmed).is_err());
        assert!(transition(Failed, OrderEvent::Cancelled).is_err());
    }
}
