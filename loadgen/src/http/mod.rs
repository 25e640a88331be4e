//! `pile-load http`: HTTP load in the closed model (ab's `-n`/`-c`) or the open model (`--rate`).
//!
//! `concurrency` workers each own one HTTP/1.1 connection ([`client`]: a hand-written client on
//! `httparse`, the request encoded once, no pipelining) and run the same loop: claim the next
//! request slot from a shared counter, wait for the slot's scheduled start if the run is paced,
//! send, read the whole response, record. With keep-alive the connection carries the next
//! request; without it (ab without `-k`) every request dials its own. The stop condition (a
//! request count, a deadline, or both) and the pacing (none, or a fixed rate) are data that
//! [`Plan::next_slot`] interprets; there is only one loop. The workers are spread over a few OS
//! threads, each running its own single-threaded runtime (wrk's design: no cross-thread wake-ups
//! per request). Each worker keeps its own HDR histograms and counters; each thread merges its
//! workers' and sends the result to the aggregator in [`run`], which merges those. For the live
//! view each thread also publishes plain counters ([`Live`]) that only it writes.
//!
//! In the open model request *i* is due at `start + i / rate`. When it falls due while its
//! worker's connection is still busy, its latency runs from that moment, not from when the
//! connection got round to sending it, so a stalled server is charged for the requests it
//! delayed (coordinated-omission correction, as in wrk2).

pub mod ab;
mod client;
mod fail_if;
mod report;
pub mod verdict;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Method, Uri};
use thiserror::Error;
use tokio::task::JoinSet;

pub use fail_if::{breaches, parse_fail_if, Breach, Condition, FailIfError, Metric, Op};
pub use report::{ErrorCounts, Report, Served, Stage, Verdict, LADDER, SCHEMA_VERSION};

use client::Conn;
use report::{RunInfo, Sizes, Tally, Timing};

/// The request count used when neither a count nor a duration is given (ab's habit of 1000).
pub const DEFAULT_REQUESTS: u64 = 1000;
/// The default error budget of a run, in percent.
pub const DEFAULT_MAX_ERROR_RATE: f64 = 1.0;

/// What to load and how. Build with [`HttpLoadConfig::new`] and set the public fields.
#[derive(Debug, Clone)]
pub struct HttpLoadConfig {
    /// `http://host[:port]/path?query`.
    pub url: String,
    pub method: Method,
    /// Extra headers as `(name, value)`; they override the defaults (`Host`, `User-Agent`,
    /// `Accept`, and `Content-Type: application/json` when there is a body).
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
    /// Keep connections open between requests (default). `false` is ab without `-k`: each
    /// request dials a new connection and asks the server to close it.
    pub keep_alive: bool,
    /// The run fails its verdict when more than this share of requests (percent) failed.
    pub max_error_rate: f64,
    /// Set to stop the run early: no new request is claimed, requests in flight finish.
    pub stop: Option<Arc<AtomicBool>>,
}

impl HttpLoadConfig {
    /// A GET of `url`, 1 kept-alive connection, [`DEFAULT_REQUESTS`] requests, closed model,
    /// 30 s timeout, 1 % error budget.
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
            keep_alive: true,
            max_error_rate: DEFAULT_MAX_ERROR_RATE,
            stop: None,
        }
    }
}

/// Live latency buckets: bucket `i` holds totals from [`live_bucket_floor_us`]`(i)` up to the
/// next bucket's floor (two buckets per power of two of microseconds).
pub const LIVE_BUCKETS: usize = 56;

fn live_bucket(us: u64) -> usize {
    let us = us.max(1);
    let log = 63 - us.leading_zeros() as usize;
    let half = usize::from(log > 0 && (us >> (log - 1)) & 1 == 1);
    (2 * log + half).min(LIVE_BUCKETS - 1)
}

/// The smallest latency, in µs, that falls into live bucket `i`.
pub fn live_bucket_floor_us(i: usize) -> u64 {
    let base = 1u64 << (i / 2);
    if i % 2 == 1 {
        base + base / 2
    } else {
        base
    }
}

/// Counters one load thread publishes for the live view. Only that thread writes them (its
/// workers take turns on one single-threaded runtime), so an update is a plain load and store,
/// never a locked read-modify-write; the aggregator reads them a few times a second.
struct Live {
    completed: AtomicU64,
    success: AtomicU64,
    errors: [AtomicU64; 4],
    statuses: Box<[AtomicU64]>,
    latency_sum_us: AtomicU64,
    buckets: [AtomicU64; LIVE_BUCKETS],
}

fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

impl Live {
    fn new() -> Live {
        Live {
            completed: AtomicU64::new(0),
            success: AtomicU64::new(0),
            errors: Default::default(),
            statuses: (0..1000).map(|_| AtomicU64::new(0)).collect(),
            latency_sum_us: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn answered(&self, status: u16, total: Duration) {
        let us = u64::try_from(total.as_micros()).unwrap_or(u64::MAX);
        bump(&self.completed, 1);
        if (200..300).contains(&status) {
            bump(&self.success, 1);
        }
        if let Some(s) = self.statuses.get(usize::from(status)) {
            bump(s, 1);
        }
        bump(&self.latency_sum_us, us);
        bump(&self.buckets[live_bucket(us)], 1);
    }

    fn failed(&self, kind: ErrorKind) {
        bump(&self.completed, 1);
        bump(&self.errors[kind as usize], 1);
    }

    fn add_to(&self, p: &mut Progress) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        p.completed += get(&self.completed);
        p.success += get(&self.success);
        p.errors.connect += get(&self.errors[0]);
        p.errors.timeout += get(&self.errors[1]);
        p.errors.reset += get(&self.errors[2]);
        p.errors.other += get(&self.errors[3]);
        for (code, n) in self.statuses.iter().enumerate() {
            let n = get(n);
            if n > 0 {
                p.answered += n;
                *p.status_codes.entry(code as u16).or_insert(0) += n;
            }
        }
        p.latency_sum_us += get(&self.latency_sum_us);
        for (into, from) in p.latency_buckets.iter_mut().zip(self.buckets.iter()) {
            *into += get(from);
        }
    }
}

/// Snapshot handed to the progress callback about ten times a second: cumulative counts since
/// the start (a live view takes differences of consecutive snapshots for rates).
#[derive(Debug, Clone)]
pub struct Progress {
    pub completed: u64,
    pub requests: Option<u64>,
    pub elapsed: Duration,
    pub duration: Option<Duration>,
    /// Requests that got an HTTP response, and those with a 2xx.
    pub answered: u64,
    pub success: u64,
    pub errors: ErrorCounts,
    pub status_codes: BTreeMap<u16, u64>,
    /// Sum of the answered requests' total times, µs.
    pub latency_sum_us: u64,
    /// Answered requests by total time, see [`LIVE_BUCKETS`].
    pub latency_buckets: [u64; LIVE_BUCKETS],
}

impl Progress {
    fn empty(requests: Option<u64>, elapsed: Duration, duration: Option<Duration>) -> Self {
        Progress {
            completed: 0,
            requests,
            elapsed,
            duration,
            answered: 0,
            success: 0,
            errors: ErrorCounts::default(),
            status_codes: BTreeMap::new(),
            latency_sum_us: 0,
            latency_buckets: [0; LIVE_BUCKETS],
        }
    }
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

/// A progress callback: called on the aggregator's task, never on the load threads.
pub type OnProgress<'a> = &'a mut (dyn FnMut(&Progress) + Send);

/// Runs the load and returns the merged report. Progress, if asked for, is reported from the
/// aggregator about every 100 ms and once at the end, never from the workers' hot path.
pub async fn run(
    config: HttpLoadConfig,
    mut progress: Option<OnProgress<'_>>,
) -> Result<Report, LoadError> {
    let target = Arc::new(Target::new(&config).await?);
    let plan = Arc::new(Plan::new(&config)?);
    // If the caller drops this future, the threads stop claiming requests.
    let _cancel = CancelOnDrop(Arc::clone(&plan));

    let threads = match config.threads {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
    .clamp(1, config.concurrency);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut lives = Vec::with_capacity(threads);
    for thread in 0..threads {
        let workers =
            config.concurrency / threads + usize::from(thread < config.concurrency % threads);
        let live = Arc::new(Live::new());
        lives.push(Arc::clone(&live));
        let (target, plan) = (Arc::clone(&target), Arc::clone(&plan));
        let done_tx = done_tx.clone();
        std::thread::Builder::new()
            .name(format!("pile-load-{thread}"))
            .spawn(move || {
                let tally = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start a runtime: {e}"))
                    .and_then(|rt| {
                        rt.block_on(run_workers(workers, thread == 0, target, plan, live))
                    });
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
                if let Some(report_progress) = progress.as_mut() {
                    let mut p = Progress::empty(plan.requests, plan.start.elapsed(), config.duration);
                    for live in &lives {
                        live.add_to(&mut p);
                    }
                    report_progress(&p);
                }
            }
        }
    }
    let elapsed = plan.start.elapsed();
    if let Some(report_progress) = progress.as_mut() {
        // The last snapshot: every request is in it.
        let mut p = Progress::empty(plan.requests, elapsed, config.duration);
        for live in &lives {
            live.add_to(&mut p);
        }
        report_progress(&p);
    }

    Ok(Report::build(
        RunInfo {
            url: config.url,
            method: config.method.to_string(),
            concurrency: config.concurrency,
            rate: config.rate,
            elapsed,
            keep_alive: config.keep_alive,
            host: target.host.clone(),
            port: target.port,
            path: target.path.clone(),
            request_bytes: target.request.len() as u64,
            body_bytes: target.body_len,
            max_error_rate: config.max_error_rate,
        },
        &total,
    ))
}

/// One thread's share of the workers, on that thread's own single-threaded runtime: like wrk's
/// threads, each has its own event loop and its connections never wake another thread.
async fn run_workers(
    workers: usize,
    first_thread: bool,
    target: Arc<Target>,
    plan: Arc<Plan>,
    live: Arc<Live>,
) -> Result<Tally, String> {
    let mut set = JoinSet::new();
    for i in 0..workers {
        set.spawn(work(
            Arc::clone(&target),
            Arc::clone(&plan),
            Arc::clone(&live),
            first_thread && i == 0,
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
    cancelled: Arc<AtomicBool>,
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
        if !(0.0..=100.0).contains(&config.max_error_rate) {
            return Err(LoadError::InvalidConfig(
                "max error rate must be a percentage within 0..=100".into(),
            ));
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
            cancelled: config.stop.clone().unwrap_or_default(),
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
async fn work(target: Arc<Target>, plan: Arc<Plan>, live: Arc<Live>, capture: bool) -> Tally {
    let mut tally = Tally::new();
    let mut conn: Option<Conn> = None;
    let mut capture = capture;
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
        let outcome =
            tokio::time::timeout(plan.timeout, target.send(&mut conn, since, &mut capture)).await;
        match outcome {
            Ok(Ok((status, timing, sizes))) => {
                live.answered(status, timing.total);
                tally.record_answer(status, timing, sizes);
                if !sizes.kept_alive {
                    conn = None;
                }
            }
            Ok(Err(kind)) => {
                conn = None;
                live.failed(kind);
                kind.count(&mut tally.errors);
            }
            Err(_elapsed) => {
                // The connection may still carry half an exchange: never reuse it.
                conn = None;
                live.failed(ErrorKind::Timeout);
                tally.errors.timeout += 1;
            }
        }
        tally.sent += 1;
        if tally.server.is_none() {
            if let Some(c) = conn.as_mut() {
                tally.server = c.server.take();
            }
        }
    }
    tally
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum ErrorKind {
    Connect = 0,
    Timeout = 1,
    Reset = 2,
    Other = 3,
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
}

/// The request every worker sends, encoded once.
struct Target {
    addrs: Vec<SocketAddr>,
    /// The whole request, head and body.
    request: Bytes,
    head_request: bool,
    /// The request did not ask for `Connection: close`.
    keep_alive: bool,
    body_len: u64,
    host: String,
    port: u16,
    path: String,
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
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(80);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|source| LoadError::Resolve {
                host: host.clone(),
                source,
            })?
            .collect();
        if addrs.is_empty() {
            return Err(LoadError::Resolve {
                host: host.clone(),
                source: std::io::Error::other("no addresses"),
            });
        }
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let path = if path.is_empty() { "/".into() } else { path };

        // Defaults first; a header given by the caller replaces the default of the same name.
        let mut headers: Vec<(String, String)> = vec![
            ("Host".into(), authority.as_str().to_string()),
            (
                "User-Agent".into(),
                concat!("pile-load/", env!("CARGO_PKG_VERSION")).into(),
            ),
            ("Accept".into(), "*/*".into()),
        ];
        if !config.keep_alive {
            headers.push(("Connection".into(), "close".into()));
        }
        if config.body.is_some() {
            headers.push(("Content-Type".into(), "application/json".into()));
        }
        let mut extra = config.headers.clone();
        if let Some(key) = &config.api_key {
            extra.insert(0, ("X-Api-Key".into(), key.clone()));
        }
        for (name, value) in extra {
            let (name, value) = (name.trim().to_string(), value.trim().to_string());
            let invalid = || LoadError::InvalidHeader(format!("{name}: {value}"));
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
            HeaderValue::from_str(&value).map_err(|_| invalid())?;
            if name.eq_ignore_ascii_case("content-length") {
                // Computed from the body below.
                continue;
            }
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
            headers.push((name, value));
        }
        let body = config.body.clone().unwrap_or_default();
        let method = config.method.as_str();
        let mut request = format!("{method} {path} HTTP/1.1\r\n");
        for (name, value) in &headers {
            request.push_str(name);
            request.push_str(": ");
            request.push_str(value);
            request.push_str("\r\n");
        }
        if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(&body);
        Ok(Target {
            addrs,
            request: Bytes::from(bytes),
            head_request: config.method == Method::HEAD,
            keep_alive: !headers.iter().any(|(n, v)| {
                n.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close")
            }),
            body_len: body.len() as u64,
            host,
            port,
            path,
        })
    }

    /// Sends one request on the worker's connection, dialling a new one when there is none,
    /// and reads the whole response. A kept-alive connection that the server closed while it
    /// was idle fails before any answer arrives: then the request is sent once more on a new
    /// connection (nothing was answered, so nothing is counted twice).
    async fn send(
        &self,
        conn: &mut Option<Conn>,
        since: Instant,
        capture: &mut bool,
    ) -> Result<(u16, Timing, Sizes), ErrorKind> {
        let mut retried = false;
        loop {
            let mut connect = Duration::ZERO;
            let reused = conn.is_some();
            let c = match conn {
                Some(c) => c,
                None => {
                    let t0 = Instant::now();
                    let mut c = Conn::connect(&self.addrs).await?;
                    connect = t0.elapsed();
                    if std::mem::take(capture) {
                        c.capture_server = true;
                    }
                    conn.insert(c)
                }
            };
            match c.exchange(&self.request, self.head_request).await {
                Ok((answer, stamps)) => {
                    let done = Instant::now();
                    let timing = Timing {
                        total: done.saturating_duration_since(since),
                        connect,
                        waiting: stamps.first_byte.saturating_duration_since(stamps.written),
                    };
                    let sizes = Sizes {
                        head: answer.head_bytes,
                        body: answer.body_bytes,
                        kept_alive: answer.keep_alive && self.keep_alive,
                    };
                    return Ok((answer.status, timing, sizes));
                }
                Err(ErrorKind::Reset) if reused && !retried => {
                    retried = true;
                    *conn = None;
                }
                Err(kind) => return Err(kind),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_buckets_are_monotonic_and_cover_their_floors() {
        // Bucket 1 (1.5 µs) cannot hold a whole number of microseconds; every other one can.
        for i in (0..LIVE_BUCKETS).filter(|&i| i != 1) {
            assert_eq!(live_bucket(live_bucket_floor_us(i)), i, "bucket {i}");
        }
        let mut last = 0;
        for us in [1, 2, 3, 5, 100, 1_000, 10_000, 1_000_000] {
            let b = live_bucket(us);
            assert!(b >= last);
            last = b;
        }
    }
}
