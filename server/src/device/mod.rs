//! The device side: one TCP listener for both protocol families, a connection cap, and one
//! task ([`session`]) per connection.
//!
//! A connection is told apart by its first bytes ([`pile_protocol::sniff`]); sockets that
//! never send a valid frame are closed after `first_frame_timeout` (10 s); a device with no
//! frame for `offline_after` is offline and its connection closed. A new connection with a
//! known device ID replaces the old one at once (see [`crate::gateway::Gateway::register`]).

pub mod admission;
pub mod session;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
use crate::core::CoreConfig;
use crate::metrics as m;
use crate::service::Service;

/// Bounds applied to device connections.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub first_frame_timeout: Duration,
    pub offline_after: Duration,
    /// Largest frame accepted (either family); also bounds the read buffer.
    pub max_frame: usize,
    /// Least time between two commands to one device.
    pub command_spacing: Duration,
    /// An unanswered command is resent once after this long, then given up after as long again.
    pub resend_after: Duration,
}

impl Limits {
    pub fn from_config(c: &Config) -> Self {
        Limits {
            max_connections: c.max_connections,
            first_frame_timeout: c.first_frame_timeout,
            offline_after: c.offline_after,
            max_frame: 2048,
            command_spacing: Duration::from_millis(500),
            resend_after: c.command_resend_after,
        }
    }

    /// The session core's settings.
    pub fn core(&self, c: &Config) -> CoreConfig {
        CoreConfig {
            first_frame_timeout_ms: self.first_frame_timeout.as_millis() as i64,
            offline_after_ms: self.offline_after.as_millis() as i64,
            command_spacing_ms: self.command_spacing.as_millis() as i64,
            resend_after_ms: self.resend_after.as_millis() as i64,
            max_frame: self.max_frame,
            reconcile: c.reconcile,
            device_utc_offset_sec: c.device_utc_offset_sec,
            target_overrun_ms: 60_000,
        }
    }
}

/// Accepts device connections until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    service: Arc<Service>,
    limits: Limits,
    core: CoreConfig,
    up: Arc<AtomicBool>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    up.store(true, Ordering::Relaxed);
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        metrics::counter!(m::TCP_CONNECTIONS_ACCEPTED).increment(1);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!(m::TCP_CONNECTIONS_REJECTED, "reason" => "cap").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let core = core.clone();
        let shutdown = shutdown.clone();
        let conn_id = service.gateway.next_conn_id();
        let span = tracing::info_span!(
            "session",
            conn_id,
            %peer,
            device_id = tracing::field::Empty,
            protocol = tracing::field::Empty
        );
        tracker.spawn(
            async move {
                session::run(stream, peer, conn_id, service, core, shutdown).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    up.store(false, Ordering::Relaxed);
}
