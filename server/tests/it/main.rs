//! Integration tests of the gateway. Every store/HTTP test runs on SQLite here and on the
//! local PostgreSQL in the `pg` test binary (`tests/pg`, which includes these modules: the
//! `both!` / `pg!` macros register the PostgreSQL variants for it), each in a fresh database
//! so they run in parallel. Without PostgreSQL the `pg` binary shows its tests as ignored;
//! with `CI` set it fails.

mod helpers;

mod api;
mod cluster;
mod devices;
mod events;
mod limits;
mod measure;
mod orders;
mod piles;
mod readmodel;
mod retention;

pub use helpers::*;
