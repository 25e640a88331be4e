//! `pile-load`: load generation for pilekit.
//!
//! [`http`] is the ApacheBench/wrk replacement: a closed model (`-n`/`-c`) and an open model
//! (`--rate`, latency measured from each request's scheduled start so coordinated omission is
//! corrected), one work loop for both, per-worker HDR histograms merged into one [`http::Report`].
//! [`fleet`] runs simulated piles (the `pile-sim` library) against a gateway and reports what
//! the gateway saw and what it cost ([`fleet::FleetReport`]).

pub mod duration;
pub mod fleet;
pub mod http;
pub mod live;
pub mod rlimit;
