//! `pile-load http` against a local axum server that counts what it served.

mod server;

mod cli;
mod library;
