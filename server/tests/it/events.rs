//! Events: signed webhooks to a real receiver on loopback, retries, dead letters and
//! replay, per-order ordering, restarts, the connectivity test and the live stream.
//!
//! Delivery is driven round by round through `Dispatcher::deliver_next` with a hand-moved
//! clock where timing matters (no sleeping through backoffs); end-to-end tests run the
//! gateway's own dispatcher and wait for conditions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use pile_api::{DeadLetterQuery, EventMessage, EventStreamQuery};
use pile_server::events::{Dispatcher, EventClock, Step, WebhookSettings};
use pile_server::store::{Event, Store};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{envelope, eventually, spawn_app_on, spawn_with, Db, TestApp};

const SECRET: &str = "webhook-test-secret";
const HOOK_PATH: &str = "/hooks/pile";

// ---------------------------------------------------------------------------------------------
// A webhook receiver

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    msg: EventMessage,
    answered: u16,
    /// The signature recomputed here, independently of the gateway's code, matched.
    signature_ok: bool,
    /// `X-Event-Id` and `X-Nonce` agree with the body; `X-Timestamp` is a number.
    headers_ok: bool,
    /// The body's `sequence` (the `X-Event-Sequence` header agrees, or the test fails).
    sequence: Option<i64>,
}

type Answer = Box<dyn Fn(&EventMessage) -> u16 + Send + Sync>;

struct ReceiverState {
    hits: Mutex<Vec<Hit>>,
    answer: Answer,
    delay: Duration,
    /// This event ID is answered only after 1.5 s.
    slow_id: Mutex<Option<String>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
    _server: tokio::task::JoinHandle<()>,
}

/// Hex HMAC-SHA256 over `POST\n{path}\n{ts}\n{nonce}\n{hex sha256(body)}`, written from the
/// contract in API.md rather than taken from the gateway.
fn expected_signature(path: &str, ts: &str, nonce: &str, body: &[u8]) -> String {
    let body_hash = hex::encode(Sha256::digest(body));
    let canonical = format!("POST\n{path}\n{ts}\n{nonce}\n{body_hash}");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(canonical.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

async fn hook(State(st): State<Arc<ReceiverState>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    st.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (id, ts, nonce, sig) = (
        h("x-event-id"),
        h("x-timestamp"),
        h("x-nonce"),
        h("x-signature"),
    );
    let msg: EventMessage = serde_json::from_slice(&body).expect("body is an event");
    let raw: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
    let sequence = raw["sequence"].as_i64();
    assert_eq!(
        h("x-event-sequence").parse::<i64>().ok(),
        sequence,
        "X-Event-Sequence agrees with the body"
    );
    let slow = st.slow_id.lock().unwrap().as_deref() == Some(msg.event_id.as_str());
    let delay = if slow {
        Duration::from_millis(1500)
    } else {
        st.delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let signature_ok = sig == expected_signature(HOOK_PATH, &ts, &nonce, &body);
    let headers_ok = id == msg.event_id && nonce == msg.nonce && ts.parse::<i64>().is_ok();
    let answered = (st.answer)(&msg);
    st.hits.lock().unwrap().push(Hit {
        msg,
        answered,
        signature_ok,
        headers_ok,
        sequence,
    });
    st.in_flight.fetch_sub(1, Ordering::SeqCst);
    StatusCode::from_u16(answered).unwrap()
}

impl Receiver {
    async fn start(answer: impl Fn(&EventMessage) -> u16 + Send + Sync + 'static) -> Receiver {
        Self::start_with_delay(Duration::ZERO, answer).await
    }

    async fn start_with_delay(
        delay: Duration,
        answer: impl Fn(&EventMessage) -> u16 + Send + Sync + 'static,
    ) -> Receiver {
        let state = Arc::new(ReceiverState {
            hits: Mutex::new(Vec::new()),
            answer: Box::new(answer),
            delay,
            slow_id: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route(HOOK_PATH, axum::routing::post(hook))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{HOOK_PATH}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url,
            state,
            _server: server,
        }
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }

    /// Events the receiver accepted (answered 2xx), in arrival order.
    fn accepted(&self) -> Vec<EventMessage> {
        self.hits()
            .into_iter()
            .filter(|h| (200..300).contains(&h.answered))
            .map(|h| h.msg)
            .collect()
    }

    /// Accepted events with their sequence numbers, in arrival order.
    fn sequenced(&self) -> Vec<(EventMessage, i64)> {
        self.hits()
            .into_iter()
            .filter(|h| (200..300).contains(&h.answered))
            .map(|h| (h.msg, h.sequence.expect("every event carries a sequence")))
            .collect()
    }

    /// Accepted more than once, per event ID (what a receiver's dedupe would absorb).
    fn duplicates(&self) -> usize {
        let accepted = self.accepted();
        let unique: HashSet<&str> = accepted.iter().map(|m| m.event_id.as_str()).collect();
        accepted.len() - unique.len()
    }
}

fn dispatcher(store: &Store, url: &str, clock: &EventClock) -> Dispatcher {
    Dispatcher::new(
        store.clone(),
        WebhookSettings::new(url, SECRET),
        clock.clone(),
    )
    .expect("dispatcher")
}

/// The schedule these tests used before #13 (1, 2, 4, 8, 16 s) and a breaker that never
/// opens: for tests of the retry rule itself, not of outages.
fn short_retries(url: &str) -> WebhookSettings {
    WebhookSettings {
        retry_schedule: [1, 2, 4, 8, 16].map(Duration::from_secs).to_vec(),
        breaker_failures: u32::MAX,
        ..WebhookSettings::new(url, SECRET)
    }
}

fn dispatcher_with(store: &Store, settings: WebhookSettings, clock: &EventClock) -> Dispatcher {
    Dispatcher::new(store.clone(), settings, clock.clone()).expect("dispatcher")
}

fn start_clock() -> EventClock {
    EventClock::manual(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
}

/// Writes `per_order` events for each of `orders` orders, interleaved, straight into the
/// outbox; returns the event IDs per order in the order they were written.
async fn fill(store: &Store, orders: usize, per_order: usize) -> BTreeMap<String, Vec<String>> {
    let now = start_clock().now_ms();
    for seq in 0..per_order {
        for o in 0..orders {
            store
                .insert_event_now(
                    &Event {
                        event_type: "charging.progress",
                        device_id: format!("dev{o}"),
                        order_no: Some(format!("ord-{o}")),
                        data: json!({"seq": seq, "energy_wh": seq * 10, "duration_sec": seq}),
                    },
                    now,
                )
                .await
                .unwrap();
        }
    }
    let mut by_order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in store.outbox_after(0, 1_000_000).await.unwrap() {
        if let Some(no) = row.order_no {
            by_order.entry(no).or_default().push(row.event_id);
        }
    }
    by_order
}

async fn app_on(db: Db) -> Option<TestApp> {
    spawn_app_on(db, |_| {}).await
}

/// `both_db!(name, |db| async move { … })` defines `name::sqlite` and `name::postgres`.
macro_rules! both_db {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                ($body)(Db::Sqlite).await;
            }
            $crate::pg!(async { ($body)(Db::Postgres).await });
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Tests

both_db!(
    deliveries_carry_the_contract_headers_and_a_signature_that_verifies_independently,
    |db| async move {
        let rx = Receiver::start(|_| 200).await;
        let url = rx.url.clone();
        let Some(app) = spawn_app_on(db, |c| {
            c.webhook_url = Some(url);
            c.webhook_secret = Some(SECRET.into());
        })
        .await
        else {
            return;
        };
        let _pile = app.connect_fake("82210225000520", "bkv", 4).await;
        let resp = app
            .charge(
                "82210225000520",
                json!({"port_no": 2, "charge_mode": 1, "duration": 300, "amount": 500,
                       "price_per_kwh": 150, "service_fee": 50, "order_no": "sig-1"}),
            )
            .await;
        envelope(resp, 200).await;
        let hits = eventually(|| async {
            let hits = rx.hits();
            (hits.len() >= 3).then_some(hits)
        })
        .await;
        for h in &hits {
            assert!(h.signature_ok, "signature of {}", h.msg.event_type);
            assert!(h.headers_ok, "headers of {}", h.msg.event_type);
            assert_eq!(h.msg.device_phy_id, "82210225000520");
            assert!(!h.msg.nonce.is_empty());
        }
        // The device's events keep their order; the order's events are independent of them.
        let types: Vec<&str> = hits.iter().map(|h| h.msg.event_type.as_str()).collect();
        let device_events: Vec<&str> = types
            .iter()
            .copied()
            .filter(|t| t.starts_with("device."))
            .collect();
        assert_eq!(device_events, ["device.registered", "device.online"]);
        assert_eq!(types.len(), 3);
        let created = &hits
            .iter()
            .find(|h| h.msg.event_type == "order.created")
            .expect("order.created")
            .msg;
        assert_eq!(created.order_no.as_deref(), Some("sig-1"));
        for (key, want) in [
            ("order_no", json!("sig-1")),
            ("port_no", json!(2)),
            ("charge_mode", json!(1)),
            ("target_duration", json!(300)),
            ("amount", json!(500)),
            ("price_per_kwh", json!(150)),
            ("service_fee", json!(50)),
            ("status", json!("pending")),
        ] {
            assert_eq!(created.data[key], want, "order.created data.{key}");
        }
        assert!(created.data["created_at"].as_i64().unwrap() > 1_700_000_000);
        let stats = eventually(|| async {
            let s = app.client.stats().await.unwrap();
            (s.event_backlog == 0).then_some(s)
        })
        .await;
        assert_eq!(stats.push_success_rate, 1.0);
        assert!(stats.mean_push_latency_ms >= 0.0);
    }
);

both_db!(
    a_receiver_that_answers_500_for_a_while_then_recovers_gets_every_event_once_per_id,
    |db| async move {
        let Some(app) = app_on(db).await else { return };
        let store = app.service.store.clone();
        let expected = fill(&store, 6, 4).await;
        let failing = Arc::new(AtomicBool::new(true));
        let rx = Receiver::start({
            let failing = failing.clone();
            move |_| {
                if failing.load(Ordering::SeqCst) {
                    500
                } else {
                    200
                }
            }
        })
        .await;
        let clock = start_clock();
        let d = dispatcher_with(&store, short_retries(&rx.url), &clock);

        // First round: each order's first event fails and waits 1 s; nothing else is due.
        assert_eq!(
            d.deliver_next().await.unwrap(),
            Step::Worked {
                delivered: 0,
                retried: 6,
                dead: 0
            }
        );
        assert_eq!(
            d.deliver_next().await.unwrap(),
            Step::Idle,
            "retry not due yet"
        );
        let first = &expected["ord-0"][0];
        let row = store.outbox_event(first).await.unwrap().unwrap();
        assert_eq!(row.attempts, 1);
        assert_eq!(row.next_attempt_at_ms, clock.now_ms() + 1000);
        assert_eq!(row.last_status, Some(500));

        // The schedule: 1, 2, 4 s later each fails again.
        for wait in [1, 2, 4] {
            clock.advance(Duration::from_millis(wait * 1000 - 1));
            assert_eq!(
                d.deliver_next().await.unwrap(),
                Step::Idle,
                "{wait} s not over"
            );
            clock.advance(Duration::from_millis(1));
            assert!(matches!(
                d.deliver_next().await.unwrap(),
                Step::Worked { retried: 6, .. }
            ));
        }
        // The receiver recovers before the 4th retry (8 s later).
        failing.store(false, Ordering::SeqCst);
        clock.advance(Duration::from_secs(8));
        let delivered = d.drain().await.unwrap();
        assert_eq!(delivered, 24);

        let accepted = rx.accepted();
        assert_eq!(rx.duplicates(), 0, "each event ID accepted exactly once");
        let got: HashSet<String> = accepted.iter().map(|m| m.event_id.clone()).collect();
        let want: HashSet<String> = expected.values().flatten().cloned().collect();
        assert_eq!(got, want, "every event arrived");
        assert_eq!(
            rx.hits().len(),
            24 + 6 * 4,
            "24 accepted + 4 failed rounds of 6"
        );
        assert!(rx.hits().iter().all(|h| h.signature_ok));

        let stats = app.client.stats().await.unwrap();
        assert_eq!(stats.event_backlog, 0);
        assert!(
            (stats.push_success_rate - 24.0 / 48.0).abs() < 1e-9,
            "success per attempt: {}",
            stats.push_success_rate
        );
    }
);

both_db!(
    a_dead_event_does_not_hold_its_successors_and_replay_delivers_it,
    |db| async move {
        let Some(app) = app_on(db).await else { return };
        let store = app.service.store.clone();
        let expected = fill(&store, 2, 3).await;
        let poison = expected["ord-0"][0].clone();
        let rejected = Arc::new(AtomicBool::new(false));
        let rx = Receiver::start({
            let (poison, rejected) = (poison.clone(), rejected.clone());
            move |m| {
                if m.event_id == poison && !rejected.swap(true, Ordering::SeqCst) {
                    400
                } else {
                    200
                }
            }
        })
        .await;
        let clock = start_clock();
        let d = dispatcher(&store, &rx.url, &clock);
        d.drain().await.unwrap();

        // ord-0's first event is dead after one attempt; its later events went on without it.
        let dead = app
            .client
            .dead_letters(&DeadLetterQuery::default())
            .await
            .unwrap();
        assert_eq!(dead.total, 1);
        let letter = &dead.items[0];
        assert_eq!(letter.event_id, poison);
        assert_eq!(letter.attempts, 1);
        assert_eq!(letter.last_status, Some(400));
        assert_eq!(letter.order_no.as_deref(), Some("ord-0"));
        let of = |order: &str| -> Vec<(String, i64)> {
            rx.sequenced()
                .into_iter()
                .filter(|(m, _)| m.order_no.as_deref() == Some(order))
                .map(|(m, seq)| (m.event_id, seq))
                .collect()
        };
        let ids = |order: &str| expected[order].clone();
        assert_eq!(
            of("ord-0"),
            vec![(ids("ord-0")[1].clone(), 2), (ids("ord-0")[2].clone(), 3)],
            "the successors arrived, in order, and their sequence shows the gap at 1"
        );
        assert_eq!(of("ord-1").len(), 3);
        assert_eq!(app.client.stats().await.unwrap().event_backlog, 0);

        // Replay: the dead event is delivered, with its own sequence number.
        let r = app.client.replay_dead_letter(&poison).await.unwrap();
        assert_eq!(r.status, "pending");
        let again = app.client.replay_dead_letter(&poison).await.unwrap_err();
        assert_eq!(again.status(), Some(409), "not dead any more");
        let missing = app
            .client
            .replay_dead_letter("no-such-event")
            .await
            .unwrap_err();
        assert_eq!(missing.status(), Some(404));
        d.drain().await.unwrap();
        let got: HashSet<String> = of("ord-0").into_iter().map(|(id, _)| id).collect();
        assert_eq!(got, ids("ord-0").into_iter().collect::<HashSet<_>>());
        assert_eq!(
            of("ord-0").last().unwrap().1,
            1,
            "the replayed one, sequence 1"
        );
        assert_eq!(rx.duplicates(), 0);
        let dead = app
            .client
            .dead_letters(&DeadLetterQuery::default())
            .await
            .unwrap();
        assert_eq!(dead.total, 0);
    }
);

both_db!(
    retries_follow_the_schedule_over_27_hours_then_go_dead_and_free_the_order,
    |db| async move {
        let Some(app) = app_on(db).await else { return };
        let store = app.service.store.clone();
        let expected = fill(&store, 1, 2).await;
        let (first, second) = (&expected["ord-0"][0], &expected["ord-0"][1]);
        let failing = Arc::new(AtomicBool::new(true));
        let rx = Receiver::start({
            let failing = failing.clone();
            move |_| {
                if failing.load(Ordering::SeqCst) {
                    503
                } else {
                    200
                }
            }
        })
        .await;
        let clock = start_clock();
        // The default schedule; the breaker (whose probes would go in between) is off here.
        let settings = WebhookSettings {
            breaker_failures: u32::MAX,
            ..WebhookSettings::new(&rx.url, SECRET)
        };
        let d = dispatcher_with(&store, settings, &clock);
        assert!(matches!(
            d.deliver_next().await.unwrap(),
            Step::Worked { retried: 1, .. }
        ));
        // 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: each wait to the millisecond.
        let (m, h) = (60, 3600);
        for (i, wait) in [5, 5 * m, 30 * m, 2 * h, 5 * h, 10 * h, 10 * h]
            .into_iter()
            .enumerate()
        {
            clock.advance(Duration::from_millis(wait * 1000 - 1));
            assert_eq!(
                d.deliver_next().await.unwrap(),
                Step::Idle,
                "wait {i} not over"
            );
            clock.advance(Duration::from_millis(1));
            let step = d.deliver_next().await.unwrap();
            let want = if i == 6 {
                Step::Worked {
                    delivered: 0,
                    retried: 0,
                    dead: 1,
                }
            } else {
                Step::Worked {
                    delivered: 0,
                    retried: 1,
                    dead: 0,
                }
            };
            assert_eq!(step, want, "attempt {}", i + 2);
            assert_eq!(rx.hits().len(), i + 2);
            assert!(
                rx.hits().iter().all(|h| h.msg.event_id == *first),
                "the later event waits while the first one is retrying"
            );
        }
        let row = store.outbox_event(first).await.unwrap().unwrap();
        assert_eq!((row.status.as_str(), row.attempts), ("dead", 8));
        assert!(row.last_error.unwrap().contains("503"));

        // Dead, it no longer holds its order: the next one goes once the endpoint answers.
        failing.store(false, Ordering::SeqCst);
        clock.advance(Duration::from_secs(30));
        d.drain().await.unwrap();
        let accepted: Vec<String> = rx.accepted().into_iter().map(|m| m.event_id).collect();
        assert_eq!(accepted, std::slice::from_ref(second));
        let seq = rx.sequenced().last().unwrap().1;
        assert_eq!(seq, 2, "the receiver sees sequence 2 without 1: a gap");
    }
);

both_db!(
    events_of_one_order_arrive_in_order_while_orders_deliver_in_parallel,
    |db| async move {
        let Some(app) = app_on(db).await else { return };
        let store = app.service.store.clone();
        let expected = fill(&store, 12, 8).await;
        // Every third request fails; requests take a little while, so rounds overlap orders.
        let n = Arc::new(AtomicUsize::new(0));
        let rx = Receiver::start_with_delay(Duration::from_millis(15), {
            let n = n.clone();
            move |_| {
                if n.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
                    500
                } else {
                    200
                }
            }
        })
        .await;
        let clock = start_clock();
        let d = dispatcher_with(&store, short_retries(&rx.url), &clock);
        for _ in 0..40 {
            d.drain().await.unwrap();
            clock.advance(Duration::from_secs(16));
        }
        let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for m in rx.accepted() {
            got.entry(m.order_no.unwrap()).or_default().push(m.event_id);
        }
        assert_eq!(
            got, expected,
            "per order, accepted in the order written, once each"
        );
        assert!(
            rx.state.max_in_flight.load(Ordering::SeqCst) > 1,
            "different orders were in flight at the same time"
        );
    }
);

both_db!(
    undelivered_events_survive_a_restart_and_delivered_ones_are_not_sent_again,
    |db| async move {
        let Some(app) = app_on(db).await else { return };
        let store = app.service.store.clone();
        let expected = fill(&store, 3, 2).await;
        let rx = Receiver::start(|_| 200).await;
        // Before the restart, one round delivers each order's first event.
        let clock = start_clock();
        let d = dispatcher(&store, &rx.url, &clock);
        assert!(matches!(
            d.deliver_next().await.unwrap(),
            Step::Worked { delivered: 3, .. }
        ));
        drop(d);
        let database_url = app.stop().await;

        let config = pile_server::Config {
            database_url,
            api_keys: vec!["test-key".into()],
            db_pool: 8,
            webhook_url: Some(rx.url.clone()),
            webhook_secret: Some(SECRET.into()),
            ..pile_server::Config::default()
        };
        let app = spawn_with(config).await;
        let accepted = eventually(|| async {
            let a = rx.accepted();
            (a.len() >= 6).then_some(a)
        })
        .await;
        let got: HashSet<String> = accepted.iter().map(|m| m.event_id.clone()).collect();
        let want: HashSet<String> = expected.values().flatten().cloned().collect();
        assert_eq!(got, want);
        assert_eq!(rx.duplicates(), 0);
        eventually(|| async {
            (app.client.stats().await.unwrap().event_backlog == 0).then_some(())
        })
        .await;
    }
);

#[tokio::test]
async fn the_webhook_test_sends_a_signed_test_event_and_reports_the_answer() {
    let rx = Receiver::start(|m| {
        if m.event_type == "webhook.test" {
            204
        } else {
            200
        }
    })
    .await;
    let url = rx.url.clone();
    let app = spawn_app_on(Db::Sqlite, |c| {
        c.webhook_url = Some(url);
        c.webhook_secret = Some(SECRET.into());
    })
    .await
    .unwrap();
    let r = app.client.webhook_test().await.unwrap();
    assert!(r.delivered);
    assert_eq!(r.status, Some(204));
    assert_eq!(r.url, rx.url);
    assert!(r.latency_ms > 0.0);
    let hit = rx
        .hits()
        .into_iter()
        .find(|h| h.msg.event_type == "webhook.test")
        .expect("the test event arrived");
    assert!(hit.signature_ok && hit.headers_ok);
    assert_eq!(hit.msg.event_id, r.event_id);

    // Without a URL there is nothing to test.
    let bare = crate::spawn_app().await;
    let e = bare.client.webhook_test().await.unwrap_err();
    assert_eq!(e.status(), Some(503));
}

#[tokio::test]
async fn the_webhook_test_reports_an_unreachable_receiver() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let app = spawn_app_on(Db::Sqlite, |c| c.webhook_url = Some(url))
        .await
        .unwrap();
    let r = app.client.webhook_test().await.unwrap();
    assert!(!r.delivered);
    assert_eq!(r.status, None);
    assert!(r.error.unwrap().contains("network"));
}

async fn next_event(s: &mut pile_api::EventStream) -> EventMessage {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("an event within 5 s")
        .expect("stream open")
        .expect("event parses")
}

both_db!(
    the_live_stream_sends_the_events_a_client_filters_for,
    |db| async move {
        let Some(app) = app_on(db).await else { return };
        let mut stream = app
            .client
            .event_stream(&EventStreamQuery {
                device_id: Some("82210225000520".into()),
                event_type: Some("device.*".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut all = app
            .client
            .event_stream(&EventStreamQuery::default())
            .await
            .unwrap();
        let _other = app.connect_fake("99990000000001", "ap3000", 2).await;
        let _pile = app.connect_fake("82210225000520", "bkv", 4).await;
        envelope(
        app.charge(
            "82210225000520",
            json!({"port_no": 1, "charge_mode": 1, "duration": 60, "amount": 100, "order_no": "live-1"}),
        )
        .await,
        200,
    )
    .await;
        let a = next_event(&mut stream).await;
        let b = next_event(&mut stream).await;
        assert_eq!(
            (a.event_type.as_str(), b.event_type.as_str()),
            ("device.registered", "device.online")
        );
        assert!([&a, &b].iter().all(|m| m.device_phy_id == "82210225000520"));
        let mut types = Vec::new();
        while types.len() < 5 {
            types.push(next_event(&mut all).await.event_type);
        }
        assert_eq!(
            types,
            [
                "device.registered",
                "device.online",
                "device.registered",
                "device.online",
                "order.created"
            ]
        );
    }
);

#[tokio::test]
async fn the_events_routes_need_a_key_and_are_in_the_openapi_document() {
    let app = crate::spawn_app().await;
    let doc: serde_json::Value = app
        .http
        .get(format!("{}/api/v1/openapi.json", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (method, path) in [
        ("get", "/api/v1/admin/webhooks/dead"),
        ("post", "/api/v1/admin/webhooks/dead/{event_id}/replay"),
        ("post", "/api/v1/admin/webhooks/test"),
        ("get", "/api/v1/events/stream"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path}");
        assert_eq!(op["security"][0]["ApiKey"], json!([]), "{method} {path}");
        let url = format!("{}{}", app.address, path.replace("{event_id}", "x"));
        let req = if method == "post" {
            app.http.post(&url)
        } else {
            app.http.get(&url)
        };
        assert_eq!(req.send().await.unwrap().status().as_u16(), 401, "{path}");
    }
    let paged = envelope(
        app.get("/api/v1/admin/webhooks/dead?page=1&size=10")
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(paged["data"]["total"], 0);
    envelope(
        app.get("/api/v1/admin/webhooks/dead?size=0")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
}

#[tokio::test]
async fn heartbeat_events_are_not_sent_by_default() {
    let app = crate::spawn_app().await;
    let store = app.service.store.clone();
    let now = start_clock().now_ms();
    for t in ["device.heartbeat", "device.online"] {
        store
            .insert_event_now(
                &Event {
                    event_type: t,
                    device_id: "d1".into(),
                    order_no: None,
                    data: json!({}),
                },
                now,
            )
            .await
            .unwrap();
    }
    let rx = Receiver::start(|_| 200).await;
    let clock = start_clock();
    dispatcher(&store, &rx.url, &clock).drain().await.unwrap();
    let types: Vec<String> = rx.accepted().into_iter().map(|m| m.event_type).collect();
    assert_eq!(types, ["device.online"]);
    let counts: HashMap<String, usize> = store
        .outbox_after(0, 100)
        .await
        .unwrap()
        .into_iter()
        .fold(HashMap::new(), |mut m, r| {
            *m.entry(r.status).or_default() += 1;
            m
        });
    assert_eq!(counts.get("skipped"), Some(&1));
    assert_eq!(app.client.stats().await.unwrap().event_backlog, 0);
}

both_db!(
    every_event_of_an_order_carries_what_a_receiver_bills_from,
    |db| async move {
        use pile_server::domain::EndReason;
        let Some(app) = app_on(db).await else { return };
        let mut pile = app.connect_fake("04AB373B", "ap3000", 4).await;
        envelope(
            app.charge(
                "04AB373B",
                json!({"port_no": 2, "charge_mode": 1, "duration": 300, "amount": 500,
                       "price_per_kwh": 150, "service_fee": 50, "order_no": "bill-1"}),
            )
            .await,
            200,
        )
        .await;
        let out = pile.next_command().await;
        pile.confirm(&out).await;
        pile.ports(vec![(
            pile_server::core::PortObs {
                port_no: 2,
                socket_no: None,
                hole: None,
                status: pile_api::PortStatus::Charging,
                power_dw: 1_800,
                device_ref: None,
            },
            Some(pile_api::PortStatus::Idle),
        )])
        .await;
        pile.progress(crate::progress_obs(2, 60, 40, 1_800)).await;
        pile.end(crate::end_obs(2, 123, EndReason::TargetReached))
            .await;
        // A second order the device refuses.
        envelope(
            app.charge(
                "04AB373B",
                json!({"port_no": 3, "charge_mode": 1, "duration": 60, "amount": 100, "order_no": "bill-2"}),
            )
            .await,
            200,
        )
        .await;
        let out = pile.next_command().await;
        pile.refuse(&out, "refused").await;

        let rows = app.service.store.outbox_after(0, 1000).await.unwrap();
        let data = |t: &str, order: &str| -> serde_json::Value {
            let r = rows
                .iter()
                .find(|r| r.event_type == t && r.order_no.as_deref() == Some(order))
                .unwrap_or_else(|| panic!("{t} of {order}"));
            serde_json::from_str(&r.payload).unwrap()
        };
        for t in [
            "order.created",
            "order.confirmed",
            "charging.started",
            "charging.progress",
            "charging.ended",
            "order.completed",
        ] {
            let d = data(t, "bill-1");
            assert_eq!(d["order_no"], "bill-1", "{t}");
            assert_eq!(d["port_no"], 2, "{t}");
            assert_eq!(d["amount"], 500, "{t}");
            assert_eq!(d["price_per_kwh"], 150, "{t}");
            assert!(d["created_at"].is_i64(), "{t}");
        }
        assert!(data("charging.started", "bill-1")["started_at"].is_i64());
        let p = data("charging.progress", "bill-1");
        assert_eq!(
            (p["energy_wh"].clone(), p["power_w"].clone()),
            (json!(40), json!(180.0))
        );
        assert_eq!(p["total_kwh"], 0.04);
        let done = data("order.completed", "bill-1");
        for key in [
            "duration_sec",
            "total_kwh",
            "peak_power",
            "energy_fee",
            "service_fee_amount",
            "final_amount",
            "ended_at",
            "started_at",
        ] {
            assert!(!done[key].is_null(), "order.completed data.{key}");
        }
        assert_eq!(done["total_kwh"], 0.123);
        assert_eq!(done["final_amount"], 24);
        assert_eq!(done["end_reason"], 1);
        assert_eq!(done["end_reason_name"], "target_reached");
        assert_eq!(done["end_reason_text"], "充电目标已达到");
        assert_eq!(done["status"], "completed");
        let failed = data("order.failed", "bill-2");
        assert_eq!(failed["port_no"], 3);
        assert_eq!(failed["status"], "failed");
        assert!(failed["end_reason_name"].is_string());
        assert!(failed["end_reason_text"].is_string());
        assert!(failed["ended_at"].is_i64());

        let socket = rows
            .iter()
            .find(|r| r.event_type == "socket.state_changed")
            .expect("socket.state_changed");
        let s: serde_json::Value = serde_json::from_str(&socket.payload).unwrap();
        assert_eq!(
            (s["port_no"].clone(), s["to"].clone()),
            (json!(2), json!("charging"))
        );
        let registered = rows
            .iter()
            .find(|r| r.event_type == "device.registered")
            .unwrap();
        let r: serde_json::Value = serde_json::from_str(&registered.payload).unwrap();
        assert_eq!(r["protocol"], "ap3000");
        assert!(r["registered_at"].is_i64());

        app.disconnect_fake(&pile).await;
        // The offline transition goes through the batched writer; flush it like shutdown does.
        app.service.writer.flush().await;
        let rows = app.service.store.outbox_after(0, 1000).await.unwrap();
        assert!(rows.iter().any(|r| r.event_type == "device.offline"));
    }
);

#[tokio::test]
async fn webhook_metrics_are_exposed() {
    let rx = Receiver::start(|_| 200).await;
    let url = rx.url.clone();
    let app = spawn_app_on(Db::Sqlite, |c| {
        c.webhook_url = Some(url);
        c.webhook_secret = Some(SECRET.into());
    })
    .await
    .unwrap();
    let _pile = app.connect_fake("82210225000520", "bkv", 4).await;
    eventually(|| async { (rx.accepted().len() >= 2).then_some(()) }).await;
    let text = eventually(|| async {
        let t = app
            .http
            .get(format!("{}/metrics", app.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        (t.contains("webhook_backlog") && t.contains("webhook_delivery_duration_seconds_bucket"))
            .then_some(t)
    })
    .await;
    for name in [
        "webhook_deliveries_total{result=\"delivered\"}",
        "webhook_dead_letters",
        "webhook_breaker_state",
        "webhook_oldest_pending_age_seconds",
    ] {
        assert!(text.contains(name), "{name} in /metrics");
    }
}

both_db!(a_slow_answer_holds_only_its_own_order, |db| async move {
    let Some(app) = app_on(db).await else { return };
    let store = app.service.store.clone();
    let expected = fill(&store, 3, 2).await;
    let rx = Receiver::start(|_| 200).await;
    *rx.state.slow_id.lock().unwrap() = Some(expected["ord-0"][0].clone());
    let clock = start_clock();
    let settings = WebhookSettings {
        round_wait: Duration::from_millis(100),
        ..WebhookSettings::new(&rx.url, SECRET)
    };
    let d = Dispatcher::new(store.clone(), settings, clock.clone()).unwrap();
    // The other orders finish while ord-0's first event is still waiting for its answer.
    let mut others = Vec::new();
    while others.len() < 4 {
        d.deliver_next().await.unwrap();
        others = rx
            .accepted()
            .into_iter()
            .filter(|m| m.order_no.as_deref() != Some("ord-0"))
            .collect();
    }
    assert!(
        rx.accepted()
            .iter()
            .all(|m| m.order_no.as_deref() != Some("ord-0")),
        "ord-0 has nothing accepted yet"
    );
    d.drain().await.unwrap();
    let ord0: Vec<String> = rx
        .accepted()
        .into_iter()
        .filter(|m| m.order_no.as_deref() == Some("ord-0"))
        .map(|m| m.event_id)
        .collect();
    assert_eq!(
        ord0, expected["ord-0"],
        "in order once the slow answer came"
    );
    assert_eq!(rx.duplicates(), 0);
    assert_eq!(rx.hits().len(), 6, "the slow event was not sent twice");
});

#[tokio::test]
async fn shutdown_ends_open_streams_and_stops_the_dispatcher_promptly() {
    let rx = Receiver::start(|_| 200).await;
    let url = rx.url.clone();
    let app = spawn_app_on(Db::Sqlite, |c| {
        c.webhook_url = Some(url);
        c.webhook_secret = Some(SECRET.into());
    })
    .await
    .unwrap();
    let mut stream = app
        .client
        .event_stream(&EventStreamQuery::default())
        .await
        .unwrap();
    let _pile = app.connect_fake("82210225000520", "bkv", 4).await;
    next_event(&mut stream).await;
    // Bounds catch a hang, not slowness: generous enough for a loaded 2-core CI machine.
    tokio::time::timeout(Duration::from_secs(30), app.stop())
        .await
        .expect("the gateway stops with a stream open instead of hanging");
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    assert!(end.is_ok(), "the stream ended");
}

both_db!(
    a_receiver_that_times_out_is_retried_and_a_down_one_too,
    |db| async move {
        let Some(app) = app_on(db).await else { return };
        let store = app.service.store.clone();
        let expected = fill(&store, 1, 1).await;
        let id = expected["ord-0"][0].clone();
        let rx = Receiver::start(|_| 200).await;
        *rx.state.slow_id.lock().unwrap() = Some(id.clone());
        let clock = start_clock();
        let settings = WebhookSettings {
            timeout: Duration::from_millis(300),
            ..WebhookSettings::new(&rx.url, SECRET)
        };
        let d = Dispatcher::new(store.clone(), settings, clock.clone()).unwrap();
        assert!(matches!(
            d.deliver_next().await.unwrap(),
            Step::Worked { retried: 1, .. }
        ));
        let row = store.outbox_event(&id).await.unwrap().unwrap();
        assert!(row.last_error.unwrap().contains("timeout"));
        assert_eq!(row.last_status, None);

        // Next attempt goes to a port where nobody listens: a network error, retried too.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let down = format!("http://{}{HOOK_PATH}", closed.local_addr().unwrap());
        drop(closed);
        let d = dispatcher(&store, &down, &clock);
        clock.advance(Duration::from_secs(5));
        assert!(matches!(
            d.deliver_next().await.unwrap(),
            Step::Worked { retried: 1, .. }
        ));
        let row = store.outbox_event(&id).await.unwrap().unwrap();
        assert_eq!(row.attempts, 2);
        assert!(row.last_error.unwrap().contains("network"));

        // The receiver is back (and fast): delivered on the 5 min retry.
        *rx.state.slow_id.lock().unwrap() = None;
        let d = dispatcher(&store, &rx.url, &clock);
        clock.advance(Duration::from_secs(300));
        assert_eq!(d.drain().await.unwrap(), 1);
        let row = store.outbox_event(&id).await.unwrap().unwrap();
        assert_eq!((row.status.as_str(), row.attempts), ("delivered", 3));
    }
);

#[tokio::test]
async fn an_idle_stream_gets_keep_alive_comments() {
    let app = crate::spawn_app().await;
    let mut resp = app.get("/api/v1/events/stream").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    // The keep-alive interval is 15 s: wait for the comment, at most 25 s.
    let text = tokio::time::timeout(Duration::from_secs(25), async {
        let mut text = String::new();
        while let Some(chunk) = resp.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains(": keep-alive") {
                break;
            }
        }
        text
    })
    .await
    .expect("a keep-alive comment within 25 s");
    assert!(text.contains(": keep-alive"), "{text:?}");
}

both_db!(
    a_client_that_resumes_with_last_event_id_gets_what_it_missed_once,
    |db| async move {
        let Some(app) = app_on(db).await else { return };
        let mut first = app
            .client
            .event_stream(&EventStreamQuery::default())
            .await
            .unwrap();
        let _a = app.connect_fake("82210225000520", "bkv", 4).await;
        let registered = next_event(&mut first).await;
        assert_eq!(registered.event_type, "device.registered");
        drop(first);
        // While nobody listens: another device connects.
        let _b = app.connect_fake("99990000000001", "ap3000", 2).await;
        let mut resumed = app
            .client
            .event_stream(&EventStreamQuery {
                last_event_id: Some(registered.event_id.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.len() < 3 {
            let m = next_event(&mut resumed).await;
            got.push((m.event_type, m.device_phy_id));
        }
        assert_eq!(
            got,
            [
                ("device.online".to_string(), "82210225000520".to_string()),
                (
                    "device.registered".to_string(),
                    "99990000000001".to_string()
                ),
                ("device.online".to_string(), "99990000000001".to_string()),
            ]
        );
        // Then live, with nothing repeated.
        envelope(
            app.charge(
                "82210225000520",
                json!({"port_no": 1, "charge_mode": 1, "duration": 60, "amount": 100, "order_no": "resume-1"}),
            )
            .await,
            200,
        )
        .await;
        assert_eq!(next_event(&mut resumed).await.event_type, "order.created");
    }
);

mod on_a_shared_postgresql_only_one_gateway_delivers_webhooks {
    crate::pg!(super::on_a_shared_postgresql_only_one_gateway_delivers_webhooks_run());
}

async fn on_a_shared_postgresql_only_one_gateway_delivers_webhooks_run() {
    let rx_a = Receiver::start(|_| 200).await;
    let url = rx_a.url.clone();
    let Some(app) = spawn_app_on(Db::Postgres, |c| {
        c.webhook_url = Some(url);
        c.webhook_secret = Some(SECRET.into());
    })
    .await
    else {
        return;
    };
    // The gateway's dispatcher is running (it holds the lock) once its first event arrives.
    let _pile = app.connect_fake("82210225000520", "bkv", 4).await;
    eventually(|| async { (rx_a.accepted().len() == 2).then_some(()) }).await;
    // A second gateway's dispatcher on the same database, delivering elsewhere.
    let rx_b = Receiver::start(|_| 200).await;
    let other = Store::connect(&app.database_url, 2).await.unwrap();
    let b = Arc::new(dispatcher(&other, &rx_b.url, &start_clock()));
    let stop_b = tokio_util::sync::CancellationToken::new();
    let b_task = tokio::spawn(b.run(stop_b.clone()));
    let expected = fill(&app.service.store, 4, 3).await;
    eventually(|| async { (rx_a.accepted().len() == 14).then_some(()) }).await;
    assert!(rx_b.hits().is_empty(), "the standby sent nothing");
    let got: HashSet<String> = rx_a.accepted().into_iter().map(|m| m.event_id).collect();
    assert_eq!(got.len(), 2 + expected.values().flatten().count());
    stop_b.cancel();
    b_task.await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Outages (#13): retry schedule over hours, circuit breaker, per-order order, sequences

async fn write_round(store: &Store, clock: &EventClock, orders: usize, n: usize) {
    for o in 0..orders {
        store
            .insert_event_now(
                &Event {
                    event_type: "charging.progress",
                    device_id: format!("dev{o}"),
                    order_no: Some(format!("ord-{o}")),
                    data: json!({"n": n, "energy_wh": n * 10, "duration_sec": n}),
                },
                clock.now_ms(),
            )
            .await
            .unwrap();
    }
}

/// A receiver down (503) for `outage` of simulated time while events keep arriving (each of
/// 4 orders gets one every `write_every`), then up. The dispatcher runs its rounds every
/// `step`, on a hand-moved clock. Whatever the length of the outage: everything arrives once,
/// in per-order order with contiguous sequences, nothing is dead, no one replays anything,
/// no attempt is spent without a request, and while the breaker is open the requests are
/// probes at least 30 s apart.
async fn ride_out(db: Db, outage: Duration, step: Duration, write_every: Duration) {
    let Some(app) = app_on(db).await else { return };
    let store = app.service.store.clone();
    let down = Arc::new(AtomicBool::new(true));
    let rx = Receiver::start({
        let down = down.clone();
        move |_| {
            if down.load(Ordering::SeqCst) {
                503
            } else {
                200
            }
        }
    })
    .await;
    let clock = start_clock();
    let d = dispatcher(&store, &rx.url, &clock);
    let orders = 4;
    let start = clock.now_ms();
    let (mut written, mut next_write) = (0, start);
    let mut hits_at: Vec<i64> = Vec::new();
    while clock.now_ms() - start < outage.as_millis() as i64 {
        if clock.now_ms() >= next_write {
            write_round(&store, &clock, orders, written).await;
            written += 1;
            next_write += write_every.as_millis() as i64;
        }
        let before = rx.hits().len();
        d.drain().await.unwrap();
        hits_at.extend(std::iter::repeat_n(
            clock.now_ms(),
            rx.hits().len() - before,
        ));
        clock.advance(step);
    }
    assert!(rx.accepted().is_empty());
    assert_eq!(d.breaker().state(), pile_api::BreakerState::Open);
    // A few failures open the breaker (the first attempts, sent together); after that, probes
    // only: one at a time, at least 30 s apart, every 30 s while anything waits.
    let mut groups: Vec<(i64, usize)> = Vec::new();
    for t in &hits_at {
        match groups.last_mut() {
            Some((at, n)) if at == t => *n += 1,
            _ => groups.push((*t, 1)),
        }
    }
    let mut opening = 0;
    let mut probes: Vec<i64> = Vec::new();
    for (t, n) in groups {
        if opening < 5 {
            opening += n;
        } else {
            assert_eq!(n, 1, "one probe at a time");
            probes.push(t);
        }
    }
    assert!(
        opening <= 2 * orders,
        "the breaker opened at once: {opening} requests"
    );
    for w in probes.windows(2) {
        assert!(w[1] - w[0] >= 30_000, "probes {} ms apart", w[1] - w[0]);
    }
    let outage_ms = outage.as_millis() as i64;
    let every = (step.as_millis() as i64).max(30_000);
    let expected = (outage_ms - 60_000) / every - 2;
    assert!(
        probes.len() as i64 >= expected && probes.len() as i64 <= outage_ms / 30_000 + 1,
        "{} probes in {} s",
        probes.len(),
        outage_ms / 1000
    );
    // No event spent attempts faster than its schedule, and none died.
    let schedule = WebhookSettings::new("http://x", "").retry_schedule;
    let allowed = 1 + schedule
        .iter()
        .scan(Duration::ZERO, |sum, w| {
            *sum += *w;
            Some(*sum)
        })
        .filter(|sum| *sum <= outage)
        .count() as i64;
    let rows = store.outbox_after(0, 100_000).await.unwrap();
    assert!(rows.iter().all(|r| r.status == "pending"), "nothing died");
    let most = rows.iter().map(|r| r.attempts).max().unwrap();
    assert!(
        most <= allowed,
        "{most} attempts, schedule allows {allowed}"
    );
    let spent: i64 = rows.iter().map(|r| r.attempts).sum();
    assert!(spent as usize <= hits_at.len());

    // The receiver is back: the next probe closes the breaker and the backlog drains at once,
    // retries scheduled hours ahead included.
    down.store(false, Ordering::SeqCst);
    let back = clock.now_ms();
    loop {
        d.drain().await.unwrap();
        if store.webhook_queue().await.unwrap().backlog == 0 {
            break;
        }
        assert!(
            clock.now_ms() - back <= 30_000 + step.as_millis() as i64,
            "drained within one probe interval of the recovery"
        );
        clock.advance(step.min(Duration::from_secs(5)));
    }
    assert_eq!(d.breaker().state(), pile_api::BreakerState::Closed);

    assert_eq!(rx.duplicates(), 0, "each event accepted exactly once");
    let mut got: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for (m, seq) in rx.sequenced() {
        got.entry(m.order_no.unwrap())
            .or_default()
            .push((m.event_id, seq));
    }
    let mut want: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for r in store.outbox_after(0, 100_000).await.unwrap() {
        let n = want.entry(r.order_no.unwrap()).or_default();
        n.push((r.event_id, n.len() as i64 + 1));
    }
    assert_eq!(want.values().map(Vec::len).sum::<usize>(), orders * written);
    assert_eq!(
        got, want,
        "per order: every event, in the order written, sequence 1, 2, 3 …"
    );
    let stats = app.client.stats().await.unwrap();
    assert_eq!(stats.event_backlog, 0);
    assert_eq!(
        app.client
            .dead_letters(&DeadLetterQuery::default())
            .await
            .unwrap()
            .total,
        0
    );
}

both_db!(
    a_ten_minute_outage_delivers_everything_once_in_order_with_no_manual_step,
    |db| async move {
        ride_out(
            db,
            Duration::from_secs(600),
            Duration::from_secs(1),
            Duration::from_secs(30),
        )
        .await
    }
);

both_db!(
    a_simulated_24_hour_outage_delivers_everything_once_in_order_with_no_manual_step,
    |db| async move {
        ride_out(
            db,
            Duration::from_secs(24 * 3600),
            Duration::from_secs(300),
            Duration::from_secs(3600),
        )
        .await
    }
);

both_db!(
    a_failing_endpoint_opens_the_breaker_and_waiting_events_spend_no_attempts,
    |db| async move {
        let Some(app) = app_on(db).await else { return };
        let store = app.service.store.clone();
        fill(&store, 20, 1).await;
        // Nobody listens: connection refused.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let down = format!("http://{}{HOOK_PATH}", closed.local_addr().unwrap());
        drop(closed);
        let clock = start_clock();
        let settings = WebhookSettings {
            concurrency: 1,
            ..WebhookSettings::new(&down, SECRET)
        };
        let d = dispatcher_with(&store, settings, &clock);
        // One request at a time: the 5th failure opens the breaker, the other 15 wait.
        d.drain().await.unwrap();
        assert_eq!(d.breaker().state(), pile_api::BreakerState::Open);
        let spent = |rows: &[pile_server::store::outbox::OutboxRow]| {
            rows.iter().map(|r| r.attempts).sum::<i64>()
        };
        let rows = store.outbox_after(0, 100).await.unwrap();
        assert_eq!(spent(&rows), 5);
        // 29 s later still nothing; at 30 s one probe (the oldest event; its 5 s retry was
        // due, so it spends an attempt), then nothing.
        clock.advance(Duration::from_secs(29));
        assert_eq!(d.deliver_next().await.unwrap(), Step::Idle);
        clock.advance(Duration::from_secs(1));
        d.drain().await.unwrap();
        let rows = store.outbox_after(0, 100).await.unwrap();
        assert_eq!(spent(&rows), 6, "one probe");
        let status = d.endpoint_status().await.unwrap();
        assert_eq!(status.state, pile_api::BreakerState::Open);
        assert_eq!(status.backlog, 20);
        assert_eq!(status.oldest_pending_age_sec, Some(30));
        assert_eq!(status.next_probe_at, Some((clock.now_ms() + 30_000) / 1000));
        assert!(status.consecutive_failures >= 6);
        assert_eq!(status.last_success_at, None);
    }
);

both_db!(
    admin_stats_and_metrics_show_the_endpoint_state_and_the_gateway_recovers_by_itself,
    |db| async move {
        let down = Arc::new(AtomicBool::new(true));
        let rx = Receiver::start({
            let down = down.clone();
            move |_| {
                if down.load(Ordering::SeqCst) {
                    500
                } else {
                    200
                }
            }
        })
        .await;
        let url = rx.url.clone();
        let clock = pile_server::clock::Clock::manual(1_764_000_000_000);
        let Some(app) = crate::spawn_app_on_clock(
            db,
            |c| {
                c.webhook_url = Some(url);
                c.webhook_secret = Some(SECRET.into());
                c.delivery.breaker_failures = 1;
            },
            clock.clone(),
        )
        .await
        else {
            return;
        };
        // device.registered fails; device.online waits behind it (same device).
        let _pile = app.connect_fake("82210225000520", "bkv", 4).await;
        let open = eventually(|| async {
            let w = app
                .client
                .stats()
                .await
                .unwrap()
                .webhook
                .expect("webhook status");
            (w.state == pile_api::BreakerState::Open).then_some(w)
        })
        .await;
        assert_eq!(open.backlog, 2);
        assert_eq!(open.url, rx.url);
        assert!(open.consecutive_failures >= 1);
        assert_eq!(open.next_probe_at, Some(clock.now_sec() + 30));
        clock.advance_ms(20_000);
        let w = app.client.stats().await.unwrap().webhook.unwrap();
        assert_eq!(w.oldest_pending_age_sec, Some(20));
        let metrics = eventually(|| async {
            let t = app
                .http
                .get(format!("{}/metrics", app.address))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            t.lines()
                .any(|l| l.starts_with("webhook_breaker_state") && l.ends_with(" 1"))
                .then_some(t)
        })
        .await;
        assert!(metrics.contains("webhook_oldest_pending_age_seconds"));
        assert_eq!(rx.hits().len(), 1, "no probe before 30 s");

        // Back up; 30 s on, the gateway's own loop probes, closes and drains.
        down.store(false, Ordering::SeqCst);
        clock.advance_ms(10_000);
        let w = eventually(|| async {
            let w = app.client.stats().await.unwrap().webhook.unwrap();
            (w.state == pile_api::BreakerState::Closed && w.backlog == 0).then_some(w)
        })
        .await;
        assert_eq!(w.consecutive_failures, 0);
        assert_eq!(w.last_success_at, Some(clock.now_sec()));
        assert_eq!(w.next_probe_at, None);
        let types: Vec<String> = rx.accepted().into_iter().map(|m| m.event_type).collect();
        assert_eq!(types, ["device.registered", "device.online"]);
    }
);
