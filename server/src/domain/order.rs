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

/// The order state machine: pending → charging → completed, or failed / cancelled.
///
/// A settlement may arrive for a pending order whose confirmation was lost (the device
/// charged while the gateway never saw it start): that completes it too.
pub fn transition(from: OrderStatus, event: OrderEvent) -> Result<OrderStatus, TransitionError> {
    use OrderEvent as E;
    use OrderStatus as S;
    match (from, event) {
        (S::Pending, E::Confirmed) => Ok(S::Charging),
        (S::Charging, E::Confirmed) => Ok(S::Charging),
        (S::Pending, E::Rejected) => Ok(S::Failed),
        (S::Pending, E::Cancelled) => Ok(S::Cancelled),
        (S::Pending | S::Charging, E::Settled) => Ok(S::Completed),
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
        assert_eq!(transition(Pending, OrderEvent::Confirmed), Ok(Charging));
        assert_eq!(transition(Pending, OrderEvent::Rejected), Ok(Failed));
        assert_eq!(transition(Pending, OrderEvent::Cancelled), Ok(Cancelled));
        assert_eq!(transition(Charging, OrderEvent::Settled), Ok(Completed));
        assert_eq!(transition(Pending, OrderEvent::Settled), Ok(Completed));
        assert!(transition(Completed, OrderEvent::Settled).is_err());
        assert!(transition(Charging, OrderEvent::Rejected).is_err());
        assert!(transition(Cancelled, OrderEvent::Confirmed).is_err());
        assert!(transition(Failed, OrderEvent::Cancelled).is_err());
    }
}
