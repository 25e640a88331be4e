//! `pile-scenarios`: the production acceptance record (`shared/seed/production-test-record.zh.md`),
//! run end to end against a gateway with simulated piles and a webhook receiver, and filled in.
//!
//! * [`cases`] — the case table of `shared/design/SCENARIOS.md`, async functions over a [`stack::Ctx`].
//! * [`stack`] — the gateway (embedded child process or external target), fleets and receiver.
//! * [`gateway`] — the child gateway process and its CPU/RSS readings.
//! * [`receiver`] — the webhook receiver that verifies every signature.
//! * [`report`] — results as data; [`score`] — the record's final section.
//! * [`render`] — pure functions from results to markdown, JSON, JUnit XML and SVG.
//! * [`runner`] — phases, concurrency, progress and the summary.

pub mod cases;
pub mod gateway;
pub mod profile;
pub mod receiver;
pub mod render;
pub mod report;
pub mod runner;
pub mod score;
pub mod stack;

pub use profile::Profile;
pub use report::{CaseResult, Check, RunReport, Status};
