//! pile-sim: virtual charging piles that behave like the real devices.
//!
//! A [`fleet::FleetHandle`] runs many piles from one process against a
//! gateway; each pile is a protocol-family state machine ([`pile::Pile`])
//! with ports, a charger model ([`charger`]), an "EEPROM" of records the
//! server has not acknowledged yet ([`replay`]) and injectable faults. The
//! same operations are served over HTTP by [`control`].

pub mod billing;
pub mod charger;
pub mod config;
pub mod control;
pub mod decode;
pub mod eeprom;
pub mod fault;
pub mod firmware;
pub mod fleet;
pub mod msg;
pub mod observe;
pub mod pile;
pub mod replay;
pub mod sched;
pub mod seed;
pub mod wire;
