//! Pure domain logic: the order state machine, billing in integer fen, end reasons and
//! durations. Nothing here does I/O or reads a clock; every function is unit-tested.

mod billing;
mod order;
mod reasons;
mod settlement;
mod units;
mod validate;

pub use billing::{bill, div_round_half_up, Bill, Tariff};
pub use order::{transition, ChargeMode, OrderEvent, Transition, TransitionError};
pub use reasons::EndReason;
pub use settlement::{
    match_report, money_used_up, settle_report, settle_without_report, Candidate, DeviceReason,
    DurationSource, EndEvidence, IdleWatch, Match, Observation, OrderFacts, ReconcileRule, Settled,
    StartState, StopCause,
};
pub use units::{bkv_port_no, bkv_socket_hole, duration_agrees, duration_sec, minutes_rounded_up};
pub use validate::{validate_charge, ChargeSpec, FieldError, MAX_DURATION_SEC};
