//! pile-sim integration tests: fleets over real sockets against a fake
//! gateway built from the protocol crate.

mod ap3000;
mod bkv;
mod decode;
mod faults;
mod fleet;
mod gateway;
mod support;
