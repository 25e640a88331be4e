//! One integration-test binary: rendering against a `TestBackend`, state changes from keys,
//! snapshots and events, and the background poller against a tiny gateway stand-in.

mod poller;
mod render;
mod state;
mod support;
