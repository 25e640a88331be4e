//! `pile-server`: the gateway between charging piles (BKV and AP3000 over TCP) and
//! third-party platforms (HTTP). See the crate's modules:
//!
//! * [`config`] — flags, `PILE_…` env vars, optional TOML.
//! * [`domain`] — pure logic: order states, billing, end reasons, durations.
//! * [`store`] — all SQL (SQLite and PostgreSQL), migrations, the outbox.
//! * [`gateway`] — the seam: live-session registry, command dispatch, frame rings.
//! * [`service`] — use cases for the API and the device-event API sessions call; the batched writer.
//! * [`device`] — the device listener and sessions.
//! * [`http`] — axum routes, auth, envelope, errors.
//! * [`events`] — webhook dispatcher (signed, retried, dead letters) and the live event stream.
//! * [`metrics`] — Prometheus series and log-level counters.
//! * [`retention`] — the maintenance task that prunes delivered events, command logs and
//!   progress samples (#13).
//! * [`app`] — wiring and graceful shutdown.

pub mod app;
pub mod clock;
// Several instances on one PostgreSQL (issue #17).
pub mod cluster;
pub mod config;
pub mod core;
pub mod device;
pub mod domain;
pub mod events;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod retention;
pub mod service;
pub mod store;
pub mod writer;

pub use app::{run, start, start_with_clock, App};
pub use config::Config;

/// The listen backlog of both listeners. Std's and tokio's `bind` listen with 128: a pile
/// storm (a blackout recovery, a restart) overflows that accept queue at once and the kernel
/// then drops SYNs, which the piles retransmit after 1 s and 3 s. The kernel caps it at
/// `net.core.somaxconn` (4096 here).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (`host:port`; the first address it resolves to) with address reuse and a
/// listen backlog of [`LISTEN_BACKLOG`].
pub async fn listen(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr} resolves to no address"),
        )
    }))
}
