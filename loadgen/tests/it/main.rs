//! `pile-load http` against a local axum server that counts what it served; `pile-load fleet`
//! against a real gateway in this process.

mod gateway;
mod server;

mod cli;
mod fleet;
mod library;
