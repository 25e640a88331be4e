//! The device listener: one TCP port for both protocol families, a connection cap, and a
//! task per connection. Sockets that never send a valid frame are closed after
//! `first_frame_timeout`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics as m;
use crate::service::Service;

/// Bounds applied to device connections.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub first_frame_timeout: Duration,
    pub offline_after: Duration,
    /// Largest per-connection read buffer.
    pub max_buffer: usize,
}

impl Limits {
    pub fn from_config(c: &Config) -> Self {
        Limits {
            max_connections: c.max_connections,
            first_frame_timeout: c.first_frame_timeout,
            offline_after: c.offline_after,
            max_buffer: 8 * 1024,
        }
    }
}

/// Accepts device connections until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    service: Arc<Service>,
    limits: Limits,
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
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            connection(stream, peer, service, limits, shutdown).await;
            drop(permit);
        });
    }
    up.store(false, Ordering::Relaxed);
}

/// One connection. Until the protocol crate lands this only enforces the first-frame
/// timeout and the buffer bound.
async fn connection(
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    _service: Arc<Service>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(512);
    let deadline = tokio::time::sleep(limits.first_frame_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = stream.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if buf.len() > limits.max_buffer {
                        buf.clear();
                    }
                }
            },
            _ = &mut deadline => {
                metrics::counter!(m::TCP_CONNECTIONS_REJECTED, "reason" => "no_valid_frame").increment(1);
                tracing::debug!(%peer, "no valid frame in time; closing");
                break;
            }
            _ = shutdown.cancelled() => break,
        }
    }
}
