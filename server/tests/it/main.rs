//! Integration tests of the gateway. Every store/HTTP test runs on SQLite and on the local
//! PostgreSQL (`PILE_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`),
//! each in a fresh database so they run in parallel. Without PostgreSQL the PostgreSQL
//! variants skip with a notice, unless `CI` is set: then they fail.

mod helpers;

mod api;
mod devices;
mod events;
mod measure;
mod orders;
mod piles;

pub use helpers::*;
