//! One integration-test binary for pile-protocol.
mod analyze;
mod ap3000;
mod bkv;
mod generations;
mod vectors;
