//! `pile-load`: load generation for pilekit.
//!
//! [`http`] is the ApacheBench/wrk replacement: a closed model (`-n`/`-c`) and an open model
//! (`--rate`, latency measured from each request's scheduled start so coordinated omission is
//! corrected), one work loop for both, per-worker HDR histograms merged into one [`http::Report`].
//! The device-fleet half (`pile-load fleet`) lands with the simulator.

pub mod duration;
pub mod http;
pub mod rlimit;
