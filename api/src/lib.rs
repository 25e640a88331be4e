//! HTTP data types of the gateway's API (`shared/design/API.md`) and a typed async client.
//!
//! The gateway (`pile-server`) serialises these types; the load generator, the TUI and the
//! scenario runner deserialise them through [`Client`]. Field names are the wire names.

mod client;
mod dto;
pub mod schema;

pub use client::{Client, ClientError, EventStream};
pub use dto::*;
