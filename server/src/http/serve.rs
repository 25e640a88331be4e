//! The HTTP listener (#13): hyper's HTTP/1 connections with a header-read timeout — hyper runs
//! it from the moment a connection waits for a request, so it also closes idle keep-alive
//! connections and slowloris ones — a cap on open connections (past it a connection is closed
//! at once), and graceful shutdown. The request timeout is a layer of the router
//! ([`super::app`]).
//!
//! [`connection_caps`] keeps the HTTP cap and the device cap together under the process's
//! open-file limit minus a reserve, so neither side can starve the other of descriptors.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::metrics as m;

/// Bounds applied to HTTP connections.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    /// A request's headers must arrive within this long of the connection waiting for one.
    pub header_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests finish (10 s).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let cap = limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(cap));
    let conns = TaskTracker::new();
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
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Over the cap: closed at once, so the descriptor is back before the next accept.
            metrics::counter!(m::HTTP_CONNECTIONS_REJECTED).increment(1);
            drop(stream);
            continue;
        };
        metrics::gauge!(m::HTTP_CONNECTIONS).set((cap - permits.available_permits()) as f64);
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let shutdown = shutdown.clone();
        let permits = permits.clone();
        conns.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, %peer, "HTTP connection ended");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                }
            }
            drop(permit);
            metrics::gauge!(m::HTTP_CONNECTIONS).set((cap - permits.available_permits()) as f64);
        });
    }
    drop(listener);
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), conns.wait()).await;
}

/// The process's open-file limit (soft), after raising it to the hard limit where allowed.
pub fn raise_nofile_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
        Some(lim.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The HTTP and device connection caps in force: the configured ones, lowered so that
/// together they stay under `nofile - reserve` — HTTP gets at most a quarter of that budget,
/// the devices the rest.
pub fn connection_caps(
    nofile: Option<u64>,
    reserve: usize,
    http: usize,
    devices: usize,
) -> (usize, usize) {
    let (http, devices) = (http.max(1), devices.max(1));
    let Some(nofile) = nofile else {
        return (http, devices);
    };
    let budget = (usize::try_from(nofile).unwrap_or(usize::MAX))
        .saturating_sub(reserve)
        .max(4);
    let http = http.min(budget / 4).max(1);
    let devices = devices.min(budget - http).max(1);
    (http, devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caps_stay_under_the_open_file_limit_with_the_reserve() {
        // The measured machine: ulimit -n 20000.
        assert_eq!(
            connection_caps(Some(20_000), 256, 1024, 200_000),
            (1024, 18_720)
        );
        // A small limit: HTTP gets a quarter, devices the rest.
        assert_eq!(connection_caps(Some(1024), 256, 1024, 200_000), (192, 576));
        // Caps below the budget are kept.
        assert_eq!(connection_caps(Some(1 << 20), 256, 50, 1000), (50, 1000));
        // Unknown limit: as configured.
        assert_eq!(connection_caps(None, 256, 50, 1000), (50, 1000));
        for nofile in [10u64, 300, 5_000, 65_536] {
            let (h, d) = connection_caps(Some(nofile), 256, 100_000, 100_000);
            assert!(h >= 1 && d >= 1);
            assert!(
                (h + d) as u64 + 256 <= nofile.max(260),
                "{nofile}: {h} + {d}"
            );
        }
    }
}
