//! `pile-load http`: HTTP load in the closed model (ab's `-n`/`-c`) or the open model (`--rate`).
//!
//! `concurrency` workers each own one keep-alive HTTP/1.1 connection (hyper, no pool in between,
//! driven in the worker's own task) and run the same loop: claim the next request slot from a shared counter, wait for the slot's
//! scheduled start if the run is paced, send, read the whole body, record. The stop condition
//! (a request count, a deadline, or both) and the pacing (none, or a fixed rate) are data that
//! [`Plan::next_slot`] interprets; there is only one loop. The workers are spread over a few OS
//! threads, each running its own single-threaded runtime (wrk's design: no cross-thread wake-ups
//! per request). Each worker keeps its own HDR histogram and counters; each thread merges its
//! workers' and sends the result to the aggregator in [`run`], which merges those.
//!
//! In the open model request *i* is due at `start + i / rate`. When it falls due while its
//! worker's connection is still busy, its latency runs from that moment, not from when the
//! connection got round to sending it, so a stalled server is charged for the requests it
//! delayed (coordinated-omission correction, as in wrk2).

mod fail_if;
mod report;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST, USER_AGENT};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

pub use fail_if::{breaches, parse_fail_if, Breach, Condition, FailIfError, Metric, Op};
pub use report::{ErrorCounts, Report, SCHEMA_VERSION};

use report::{RunInfo, Tally};

/// The request count used when neither a count nor a duration is given (ab's habit of 1000).
pub const DEFAULT_REQUESTS: u64 = 1000;

/// What to load and how. Build with [`HttpLoadConfig::new`] and set the public fields.
#[derive(Debug, Clone)]
pub struct HttpLoadConfig {
    /// `http://host[:port]/path?query`.
    pub url: String,
    pub method: Method,
    /// Extra headers as `(name, value)`; they override the defaults (`Host`, `User-Agent`,
    /// and `Content-Type: application/json` when there is a body).
    pub headers: Vec<(String, String)>,
    pub body: Option<Bytes>,
    /// Sent as `X-Api-Key`, the pile gateway's API key header.
    pub api_key: Option<String>,
    /// Stop after this many requests.
    pub requests: Option<u64>,
    /// Stop issuing requests after this long (requests in flight still finish).
    /// With neither `requests` nor `duration`, the run is [`DEFAULT_REQUESTS`] requests.
    pub duration: Option<Duration>,
    /// Connections, one worker each.
    pub concurrency: usize,
    /// OS threads, each with its own single-threaded runtime and a share of the connections.
    /// `None`: one per available CPU (never more than `concurrency`).
    pub threads: Option<usize>,
    /// Open model: requests per second across all connections. `None`: closed model.
    pub rate: Option<f64>,
    /// Limit on one request: connect, send and the whole response.
    pub timeout: Duration,
}

impl HttpLoadConfig {
    /// A GET of `url`, 1 connection, [`DEFAULT_REQUESTS`] requests, closed model, 30 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        HttpLoadConfig {
            url: url.into(),
            method: Method::GET,
            headers: Vec::new(),
            body: None,
            api_key: None,
            requests: None,
            duration: None,
            concurrency: 1,
            threads: None,
            rate: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Snapshot handed to the progress callback about ten times a second.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub completed: u64,
    pub requests: Option<u64>,
    pub elapsed: Duration,
    pub duration: Option<Duration>,
}

/// Why a run could not start (or its workers died). Failed *requests* are not errors: they are
/// counted in the [`Report`].
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("unsupported scheme {0:?}: pile-load http speaks plain http:// (HTTPS is not implemented yet)")]
    UnsupportedScheme(String),
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid header {0:?}: expected 'Name: value'")]
    InvalidHeader(String),
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("a load worker failed: {0}")]
    Worker(String),
}

/// Runs the load and returns the merged report. Progress, if asked for, is reported from the
/// aggregator, never from the workers' hot path.
pub async fn run(
    config: HttpLoadConfig,
    progress: Option<&(dyn Fn(Progress) + Send + Sync)>,
) -> Result<Report, LoadError> {
    let target = Arc::new(Target::new(&config).await?);
    let plan = Arc::new(Plan::new(&config)?);
    let completed = Arc::new(AtomicU64::new(0));
    // If the caller drops this future, the threads stop claiming requests.
    let _cancel = CancelOnDrop(Arc::clone(&plan));

    let threads = match config.threads {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
    .clamp(1, config.concurrency);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for thread in 0..threads {
        let workers =
            config.concurrency / threads + usize::from(thread < config.concurrency % threads);
        let (target, plan, completed) = (
            Arc::clone(&target),
            Arc::clone(&plan),
            Arc::clone(&completed),
        );
        let done_tx = done_tx.clone();
        std::thread::Builder::new()
            .name(format!("pile-load-{thread}"))
            .spawn(move || {
                let tally = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start a runtime: {e}"))
                    .and_then(|rt| rt.block_on(run_workers(workers, target, plan, completed)));
                // The receiver is gone only if the caller gave up on the run.
                let _ = done_tx.send(tally);
            })
            .map_err(|e| LoadError::Worker(format!("cannot start a thread: {e}")))?;
    }
    drop(done_tx);

    let mut total = Tally::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            done = done_rx.recv() => match done {
                Some(Ok(tally)) => total.merge(&tally),
                Some(Err(e)) => return Err(LoadError::Worker(e)),
                None => break,
            },
            _ = tick.tick(), if progress.is_some() => {
                if let Some(report_progress) = progress {
                    report_progress(Progress {
                        completed: completed.load(Ordering::Relaxed),
                        requests: plan.requests,
                        elapsed: plan.start.elapsed(),
                        duration: config.duration,
                    });
                }
            }
        }
    }
    let elapsed = plan.start.elapsed();

    Ok(Report::build(
        RunInfo {
            url: config.url,
            method: config.method.to_string(),
            concurrency: config.concurrency,
            rate: config.rate,
            elapsed,
        },
        &total,
    ))
}

/// One thread's share of the workers, on that thread's own single-threaded runtime: like wrk's
/// threads, each has its own event loop and its connections never wake another thread.
async fn run_workers(
    workers: usize,
    target: Arc<Target>,
    plan: Arc<Plan>,
    completed: Arc<AtomicU64>,
) -> Result<Tally, String> {
    let mut set = JoinSet::new();
    for _ in 0..workers {
        set.spawn(work(
            Arc::clone(&target),
            Arc::clone(&plan),
            Arc::clone(&completed),
        ));
    }
    let mut tally = Tally::new();
    while let Some(joined) = set.join_next().await {
        tally.merge(&joined.map_err(|e| e.to_string())?);
    }
    Ok(tally)
}

struct CancelOnDrop(Arc<Plan>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancelled.store(true, Ordering::Relaxed);
    }
}

/// Stop condition × pacing, shared by all workers.
struct Plan {
    start: Instant,
    requests: Option<u64>,
    deadline: Option<Instant>,
    /// Open model: seconds between consecutive scheduled starts.
    interval_s: Option<f64>,
    timeout: Duration,
    next_ticket: AtomicU64,
    cancelled: AtomicBool,
}

impl Plan {
    fn new(config: &HttpLoadConfig) -> Result<Plan, LoadError> {
        if config.concurrency == 0 {
            return Err(LoadError::InvalidConfig(
                "concurrency must be at least 1".into(),
            ));
        }
        if config.threads == Some(0) {
            return Err(LoadError::InvalidConfig(
                "threads must be at least 1".into(),
            ));
        }
        if config.requests == Some(0) {
            return Err(LoadError::InvalidConfig(
                "requests must be at least 1".into(),
            ));
        }
        if config.duration == Some(Duration::ZERO) {
            return Err(LoadError::InvalidConfig("duration must be positive".into()));
        }
        if config.timeout.is_zero() {
            return Err(LoadError::InvalidConfig("timeout must be positive".into()));
        }
        let interval_s = match config.rate {
            Some(rate) if rate.is_finite() && rate > 0.0 => Some(1.0 / rate),
            Some(rate) => {
                return Err(LoadError::InvalidConfig(format!(
                    "rate must be a positive number of requests/s, not {rate}"
                )))
            }
            None => None,
        };
        let requests = match (config.requests, config.duration) {
            (None, None) => Some(DEFAULT_REQUESTS),
            (n, _) => n,
        };
        let start = Instant::now();
        Ok(Plan {
            start,
            requests,
            deadline: config.duration.map(|d| start + d),
            interval_s,
            timeout: config.timeout,
            next_ticket: AtomicU64::new(0),
            cancelled: AtomicBool::new(false),
        })
    }

    /// Claims the next request. Returns the instant its latency is measured from (its scheduled
    /// start when paced, now otherwise), or `None` when the run is over.
    fn next_slot(&self) -> Option<Instant> {
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        if self.requests.is_some_and(|n| ticket >= n) || self.cancelled.load(Ordering::Relaxed) {
            return None;
        }
        let due = match self.interval_s {
            Some(interval) => self.start + Duration::from_secs_f64(ticket as f64 * interval),
            None => Instant::now(),
        };
        if self.deadline.is_some_and(|deadline| due >= deadline) {
            return None;
        }
        Some(due)
    }
}

/// The one work loop.
async fn work(target: Arc<Target>, plan: Arc<Plan>, completed: Arc<AtomicU64>) -> Tally {
    let mut tally = Tally::new();
    let mut conn = None;
    while let Some(due) = plan.next_slot() {
        // A request whose connection was still busy when it fell due is timed from `due`: the
        // wait is the server's doing (coordinated omission). One whose connection was idle is
        // timed from when the timer woke us, so the runtime timer's ~1 ms granularity is not
        // charged to the server.
        let since = if plan.interval_s.is_some() && Instant::now() < due {
            tokio::time::sleep_until(due.into()).await;
            Instant::now()
        } else {
            due
        };
        let outcome = tokio::time::timeout(plan.timeout, target.send(&mut conn)).await;
        match outcome {
            Ok(Ok(status)) => tally.record_response(status, since.elapsed()),
            Ok(Err(kind)) => {
                conn = None;
                kind.count(&mut tally.errors);
            }
            Err(_elapsed) => {
                // The connection may still carry half an exchange: never reuse it.
                conn = None;
                tally.errors.timeout += 1;
            }
        }
        completed.fetch_add(1, Ordering::Relaxed);
    }
    tally
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorKind {
    Connect,
    Timeout,
    Reset,
    Other,
}

impl ErrorKind {
    fn count(self, errors: &mut ErrorCounts) {
        match self {
            ErrorKind::Connect => errors.connect += 1,
            ErrorKind::Timeout => errors.timeout += 1,
            ErrorKind::Reset => errors.reset += 1,
            ErrorKind::Other => errors.other += 1,
        }
    }

    fn of_io(err: &std::io::Error) -> ErrorKind {
        use std::io::ErrorKind as Io;
        match err.kind() {
            Io::ConnectionRefused | Io::AddrNotAvailable | Io::NotConnected => ErrorKind::Connect,
            Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe | Io::UnexpectedEof => {
                ErrorKind::Reset
            }
            Io::TimedOut => ErrorKind::Timeout,
            _ => ErrorKind::Other,
        }
    }

    fn of_hyper(err: &hyper::Error) -> ErrorKind {
        if err.is_timeout() {
            return ErrorKind::Timeout;
        }
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                return ErrorKind::of_io(io);
            }
            source = cause.source();
        }
        if err.is_incomplete_message() || err.is_closed() || err.is_canceled() {
            ErrorKind::Reset
        } else {
            ErrorKind::Other
        }
    }
}

/// The request every worker sends, prepared once.
struct Target {
    addrs: Vec<SocketAddr>,
    method: Method,
    path: Uri,
    headers: HeaderMap,
    body: Bytes,
}

/// A kept-alive connection, driven by the worker's own task: hyper's connection future is polled
/// alongside whatever the worker awaits on it (see [`drive`]), instead of in a task of its own,
/// which saves two cross-task wake-ups per request.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>,
    /// The driver has completed and must not be polled again.
    done: bool,
}

/// Awaits `fut` while polling the connection's driver. `Err` when the connection ended and `fut`
/// cannot complete any more.
async fn drive<F: Future>(
    driver: &mut Pin<Box<Connection<TokioIo<TcpStream>, Full<Bytes>>>>,
    done: &mut bool,
    fut: F,
) -> Result<F::Output, ErrorKind> {
    let mut fut = std::pin::pin!(fut);
    let mut ended = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if !*done {
            let Poll::Ready(result) = driver.as_mut().poll(cx) else {
                // The driver may just have handed `fut` its answer: take it now rather than
                // after a trip through the scheduler.
                return fut.as_mut().poll(cx).map(Ok);
            };
            *done = true;
            ended = Some(result);
            // Whatever the connection delivered before ending is now in `fut`'s channel.
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
        }
        Poll::Ready(Err(match ended.take() {
            Some(Err(e)) => ErrorKind::of_hyper(&e),
            _ => ErrorKind::Reset,
        }))
    })
    .await
}

impl Target {
    async fn new(config: &HttpLoadConfig) -> Result<Target, LoadError> {
        let bad = |reason: &str| LoadError::InvalidUrl {
            url: config.url.clone(),
            reason: reason.to_string(),
        };
        let uri: Uri = config.url.parse().map_err(|e| bad(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => return Err(LoadError::UnsupportedScheme(other.to_string())),
            None => return Err(bad("missing scheme, e.g. http://127.0.0.1:8080/")),
        }
        let authority = uri.authority().ok_or_else(|| bad("missing host"))?.clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| LoadError::Resolve {
                host: host.to_string(),
                source,
            })?
            .collect();
        if addrs.is_empty() {
            return Err(LoadError::Resolve {
                host: host.to_string(),
                source: std::io::Error::other("no addresses"),
            });
        }
        let path: Uri = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse()
            .map_err(|e| bad(&format!("{e}")))?;

        let mut headers = HeaderMap::new();
        let host_value = HeaderValue::from_str(authority.as_str()).map_err(|_| bad("bad host"))?;
        headers.insert(HOST, host_value);
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("pile-load/", env!("CARGO_PKG_VERSION"))),
        );
        if config.body.is_some() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(key) = &config.api_key {
            let value = HeaderValue::from_str(key)
                .map_err(|_| LoadError::InvalidHeader(format!("X-Api-Key: {key}")))?;
            headers.insert(HeaderName::from_static("x-api-key"), value);
        }
        for (name, value) in &config.headers {
            let invalid = || LoadError::InvalidHeader(format!("{name}: {value}"));
            let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| invalid())?;
            let value = HeaderValue::from_str(value.trim()).map_err(|_| invalid())?;
            headers.insert(name, value);
        }

        Ok(Target {
            addrs,
            method: config.method.clone(),
            path,
            headers,
            body: config.body.clone().unwrap_or_default(),
        })
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.path.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }

    async fn connect(&self) -> Result<Conn, ErrorKind> {
        let stream =
            TcpStream::connect(&self.addrs[..])
                .await
                .map_err(|e| match ErrorKind::of_io(&e) {
                    ErrorKind::Timeout => ErrorKind::Timeout,
                    _ => ErrorKind::Connect,
                })?;
        // Requests are small and latency is the measurement: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| ErrorKind::Connect)?;
        Ok(Conn {
            sender,
            driver: Box::pin(driver),
            done: false,
        })
    }

    /// Sends one request on the worker's kept-alive connection, dialling a new one when there
    /// is none or the server closed it, and reads the whole response body.
    async fn send(&self, conn: &mut Option<Conn>) -> Result<u16, ErrorKind> {
        let mut current = conn.take();
        if let Some(Conn {
            sender,
            driver,
            done,
        }) = current.as_mut()
        {
            let usable = !*done && matches!(drive(driver, done, sender.ready()).await, Ok(Ok(())));
            if !usable {
                current = None;
            }
        }
        let Conn {
            sender,
            driver,
            done,
        } = match current {
            Some(c) => conn.insert(c),
            None => conn.insert(self.connect().await?),
        };
        let response = drive(driver, done, sender.send_request(self.request()))
            .await?
            .map_err(|e| ErrorKind::of_hyper(&e))?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        while let Some(frame) = drive(driver, done, body.frame()).await? {
            frame.map_err(|e| ErrorKind::of_hyper(&e))?;
        }
        Ok(status)
    }
}
