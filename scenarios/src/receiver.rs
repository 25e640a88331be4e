//! The webhook receiver: an axum server on 127.0.0.1:0 that checks every delivery's
//! signature on its own (API.md "Events"), dedupes by event ID, and can be told to answer
//! 500 for a while (X.4).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One accepted (signature-checked) delivery.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    pub event_id: String,
    pub event_type: String,
    pub order_no: Option<String>,
    pub device_id: Option<String>,
    /// The event's own `timestamp` (Unix seconds).
    pub timestamp: i64,
    /// When it arrived, Unix milliseconds.
    pub received_at_ms: i64,
    pub data: serde_json::Value,
}

/// Counters over every request the receiver saw.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReceiverStats {
    pub requests: u64,
    pub verified: u64,
    pub bad_signature: u64,
    pub malformed: u64,
    pub duplicates: u64,
    /// Requests answered 500 on purpose.
    pub refused: u64,
}

#[derive(Default)]
struct State_ {
    events: Vec<Received>,
    seen: HashSet<String>,
    stats: ReceiverStats,
    fail_until: Option<Instant>,
    /// Duplicate deliveries by device (after dedupe by event ID).
    dup_by_device: std::collections::HashMap<String, u64>,
}

#[derive(Clone)]
struct Shared {
    secret: Arc<Vec<u8>>,
    state: Arc<Mutex<State_>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State_> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running receiver. Cheap to clone.
#[derive(Clone)]
pub struct Receiver {
    shared: Shared,
    pub addr: SocketAddr,
    pub path: String,
}

impl Receiver {
    /// Binds 127.0.0.1:0 and serves until `shutdown`.
    pub async fn start(secret: &str, shutdown: CancellationToken) -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Shared {
            secret: Arc::new(secret.as_bytes().to_vec()),
            state: Arc::new(Mutex::new(State_::default())),
        };
        let app = Router::new().fallback(handle).with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
        });
        Ok(Receiver {
            shared,
            addr,
            path: "/webhook".into(),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, self.path)
    }

    /// Answers 500 to every delivery for `d` from now.
    pub fn fail_for(&self, d: Duration) {
        self.shared.lock().fail_until = Some(Instant::now() + d);
    }

    /// Duplicate deliveries (same event ID again) about `device_id`.
    pub fn duplicates_for_device(&self, device_id: &str) -> u64 {
        self.shared
            .lock()
            .dup_by_device
            .get(device_id)
            .copied()
            .unwrap_or(0)
    }

    pub fn stats(&self) -> ReceiverStats {
        self.shared.lock().stats.clone()
    }

    /// Every distinct verified event, in arrival order.
    pub fn events(&self) -> Vec<Received> {
        self.shared.lock().events.clone()
    }

    pub fn events_for_order(&self, order_no: &str) -> Vec<Received> {
        self.shared
            .lock()
            .events
            .iter()
            .filter(|e| e.order_no.as_deref() == Some(order_no))
            .cloned()
            .collect()
    }

    /// Waits until `pred` holds over the events, or `timeout`.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.shared.lock().events) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The signature API.md defines: hex HMAC-SHA256(secret,
/// `POST\n{path}\n{timestamp}\n{nonce}\n{hex sha256(body)}`).
pub fn sign(secret: &[u8], path: &str, timestamp: &str, nonce: &str, body: &[u8]) -> String {
    let body_hash = hex::encode(Sha256::digest(body));
    let msg = format!("POST\n{path}\n{timestamp}\n{nonce}\n{body_hash}");
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(msg.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn handle(
    State(shared): State<Shared>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let now_ms = crate::report::now_unix_ms();
    let mut st = shared.lock();
    st.stats.requests += 1;
    if st.fail_until.is_some_and(|t| Instant::now() < t) {
        st.stats.refused += 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let (Some(ts), Some(nonce), Some(sig)) = (
        header(&headers, "x-timestamp"),
        header(&headers, "x-nonce"),
        header(&headers, "x-signature"),
    ) else {
        st.stats.malformed += 1;
        return StatusCode::BAD_REQUEST;
    };
    let expected = sign(&shared.secret, uri.path(), ts, nonce, &body);
    if !bool::from(
        expected
            .as_bytes()
            .ct_eq(sig.trim().to_ascii_lowercase().as_bytes()),
    ) {
        st.stats.bad_signature += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => {
            st.stats.malformed += 1;
            return StatusCode::BAD_REQUEST;
        }
    };
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let Some(event_id) = s("event_id").or_else(|| header(&headers, "x-event-id").map(Into::into))
    else {
        st.stats.malformed += 1;
        return StatusCode::BAD_REQUEST;
    };
    let device = s("device_phy_id");
    st.stats.verified += 1;
    if !st.seen.insert(event_id.clone()) {
        st.stats.duplicates += 1;
        if let Some(dev) = device {
            *st.dup_by_device.entry(dev).or_default() += 1;
        }
        return StatusCode::OK;
    }
    let ev = Received {
        event_id,
        event_type: s("event_type").unwrap_or_default(),
        order_no: s("order_no"),
        device_id: s("device_phy_id"),
        timestamp: v.get("timestamp").and_then(|x| x.as_i64()).unwrap_or(0),
        received_at_ms: now_ms,
        data: v.get("data").cloned().unwrap_or(serde_json::Value::Null),
    };
    st.events.push(ev);
    StatusCode::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_signatures_dedupes_and_fails_on_demand() {
        let stop = CancellationToken::new();
        let r = Receiver::start("s3cret", stop.clone()).await.unwrap();
        let http = reqwest::Client::new();
        let body = br#"{"event_id":"e1","event_type":"order.completed","order_no":"o1","device_phy_id":"d","timestamp":1,"nonce":"n","data":{}}"#;
        let post = |sig: String| {
            http.post(r.url())
                .header("X-Timestamp", "1")
                .header("X-Nonce", "n")
                .header("X-Event-Id", "e1")
                .header("X-Signature", sig)
                .body(body.to_vec())
                .send()
        };
        let good = sign(b"s3cret", "/webhook", "1", "n", body);
        assert_eq!(post("00".into()).await.unwrap().status(), 401);
        assert_eq!(post(good.clone()).await.unwrap().status(), 200);
        assert_eq!(post(good.clone()).await.unwrap().status(), 200);
        r.fail_for(Duration::from_secs(5));
        assert_eq!(post(good).await.unwrap().status(), 500);
        let st = r.stats();
        assert_eq!(
            (st.bad_signature, st.verified, st.duplicates, st.refused),
            (1, 2, 1, 1)
        );
        assert_eq!(r.events_for_order("o1").len(), 1);
        stop.cancel();
    }
}
