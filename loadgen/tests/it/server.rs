//! The test server: binds 127.0.0.1:0 and counts every request it answers, by route and status.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{any, get};
use axum::Router;

#[derive(Default)]
pub struct Served {
    /// Every request answered, whatever the route or status.
    pub total: AtomicU64,
    pub status_500: AtomicU64,
    pub with_api_key: AtomicU64,
    pub bodies: Mutex<Vec<(String, Option<String>, Bytes)>>,
    /// Per `/echo` request: its Content-Type and Cookie headers.
    pub echo_headers: Mutex<Vec<(Option<String>, Option<String>)>>,
    /// Requests (any route) that asked for `Connection: close`.
    pub close_asked: AtomicU64,
    flaky: AtomicU64,
    varlen: AtomicU64,
    alternating: AtomicU64,
}

impl Served {
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }
    pub fn status_500(&self) -> u64 {
        self.status_500.load(Ordering::SeqCst)
    }
    pub fn with_api_key(&self) -> u64 {
        self.with_api_key.load(Ordering::SeqCst)
    }
    pub fn close_asked(&self) -> u64 {
        self.close_asked.load(Ordering::SeqCst)
    }
}

pub struct TestServer {
    pub base: String,
    pub served: Arc<Served>,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Routes: `/ok`; `/delay/{ms}`; `/flaky` (every 4th request answers 500); `/alternating`
/// (every other request is delayed 40 ms); `/key` (401 unless `X-Api-Key: secret`);
/// `/echo` (records method, a custom header and the body); `/close` (answers, then closes the
/// connection); `/varlen` (every 3rd body is 12 bytes instead of 10, every 5th answer a 500).
/// Every route counts requests that asked for `Connection: close`.
pub async fn spawn_server() -> TestServer {
    let served = Arc::new(Served::default());
    let app = Router::new()
        .route("/ok", get(ok))
        .route("/delay/{ms}", get(delay))
        .route("/flaky", get(flaky))
        .route("/alternating", get(alternating))
        .route("/key", get(key))
        .route("/echo", any(echo))
        .route("/close", get(close))
        .route("/varlen", get(varlen))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&served),
            count_close,
        ))
        .with_state(Arc::clone(&served));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind test server");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("test server");
    });
    TestServer {
        base: format!("http://{addr}"),
        served,
    }
}

type St = State<Arc<Served>>;

async fn count_close(
    State(s): St,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let close = request
        .headers()
        .get("connection")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    if close {
        s.close_asked.fetch_add(1, Ordering::SeqCst);
    }
    next.run(request).await
}

async fn varlen(State(s): St) -> (StatusCode, &'static str) {
    let n = s.varlen.fetch_add(1, Ordering::SeqCst);
    let body = if n % 3 == 0 {
        "xxxxxxxxxxxx"
    } else {
        "xxxxxxxxxx"
    };
    let status = if n % 5 == 4 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    (count(&s, status), body)
}

fn count(served: &Served, status: StatusCode) -> StatusCode {
    served.total.fetch_add(1, Ordering::SeqCst);
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        served.status_500.fetch_add(1, Ordering::SeqCst);
    }
    status
}

async fn ok(State(s): St) -> (StatusCode, &'static str) {
    (count(&s, StatusCode::OK), "{\"ok\":true}")
}

async fn delay(State(s): St, Path(ms): Path<u64>) -> StatusCode {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    count(&s, StatusCode::OK)
}

async fn flaky(State(s): St) -> StatusCode {
    let n = s.flaky.fetch_add(1, Ordering::SeqCst);
    let status = if n % 4 == 3 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    count(&s, status)
}

async fn alternating(State(s): St) -> StatusCode {
    if s.alternating.fetch_add(1, Ordering::SeqCst) % 2 == 1 {
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    count(&s, StatusCode::OK)
}

async fn key(State(s): St, headers: HeaderMap) -> StatusCode {
    if headers.get("x-api-key").is_some_and(|v| v == "secret") {
        s.with_api_key.fetch_add(1, Ordering::SeqCst);
        count(&s, StatusCode::OK)
    } else {
        count(&s, StatusCode::UNAUTHORIZED)
    }
}

async fn echo(
    State(s): St,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let tag = header("x-tag");
    s.echo_headers
        .lock()
        .expect("echo headers lock")
        .push((header("content-type"), header("cookie")));
    s.bodies
        .lock()
        .expect("bodies lock")
        .push((method.to_string(), tag, body));
    count(&s, StatusCode::OK)
}

async fn close(State(s): St) -> (StatusCode, [(axum::http::HeaderName, &'static str); 1]) {
    (
        count(&s, StatusCode::OK),
        [(axum::http::header::CONNECTION, "close")],
    )
}
