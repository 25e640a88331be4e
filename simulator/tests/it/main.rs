//! pile-sim integration tests: fleets over real sockets.

mod fleet;
