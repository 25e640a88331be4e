//! `pile-tui`: the operations dashboard of pilekit.
//!
//! - [`app`]: the state and every change to it (keys, data updates), no I/O;
//! - [`ui`]: drawing the state, nothing else;
//! - [`net`]: the background poller, the event-stream reader and the command executor;
//! - [`sse`], [`prom`]: sans-IO parsers of server-sent events and Prometheus text;
//! - [`startup`]: the checks before the terminal is taken (URL, API key).
//!
//! `main.rs` wires them: one loop selects over a frame tick, terminal input and updates.

pub mod app;
pub mod net;
pub mod prom;
pub mod sse;
pub mod startup;
pub mod ui;

pub use app::{App, Command, Update};
