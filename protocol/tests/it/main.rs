//! One integration-test binary for pile-protocol.
mod analyze;
mod ap3000;
mod bkv;
mod vectors;
