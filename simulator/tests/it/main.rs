//! pile-sim integration tests: fleets over real sockets against a fake
//! gateway built from the protocol crate.

mod ap3000;
mod bkv;
mod commands;
mod decode;
mod eeprom;
mod faults;
mod fleet;
mod gateway;
mod support;
