//! #13 limits and keys: the configured key set is the whole set, failed keys are throttled
//! per address, webhook secrets are required, HTTP connections are capped and timed out
//! without touching the device side, and devices meet an allowlist, a new-ID rate and
//! flapping protection.

use std::time::Duration;

use pile_api::Direction;
use pile_server::clock::Clock;
use pile_server::config::Config;
use pile_server::core::{Hello, Intent, IntentResult};
use pile_server::gateway::{FrameNote, SessionHandle};
use pile_server::service::SessionLink;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::piles::ApPile;
use crate::{eventually, spawn_app_on, spawn_with, Db, TestApp};

/// [`crate::both_clocked!`] with a configuration tweak.
macro_rules! both_tweaked {
    ($name:ident, $tweak:expr, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn clock() -> Clock {
                Clock::manual(1_764_000_000_000)
            }
            #[tokio::test]
            async fn sqlite() {
                let c = clock();
                if let Some(app) =
                    $crate::spawn_app_on_clock($crate::Db::Sqlite, $tweak, c.clone()).await
                {
                    ($body)(app, c).await;
                }
            }
            $crate::pg!(async {
                let c = clock();
                if let Some(app) =
                    $crate::spawn_app_on_clock($crate::Db::Postgres, $tweak, c.clone()).await
                {
                    ($body)(app, c).await;
                }
            });
        }
    };
}

async fn status_with_key(app: &TestApp, key: &str) -> u16 {
    app.http
        .get(format!("{}/api/v1/third/devices", app.address))
        .header("X-Api-Key", key)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

fn keys(list: &[&str]) -> Vec<secrecy::SecretString> {
    list.iter().map(|k| (*k).into()).collect()
}

/// Restarts on the same database with `api_keys`.
async fn restart(app: TestApp, api_keys: &[&str]) -> TestApp {
    let url = app.stop().await;
    spawn_with(Config {
        database_url: url,
        api_keys: keys(api_keys),
        db_pool: 8,
        webhook_secret: Some("s".into()),
        ..Config::default()
    })
    .await
}

// The configured set is authoritative: two keys overlap for a rotation, the removed one gets
// 401 after the restart, and only salted MACs are stored.
crate::both!(
    a_key_removed_from_the_configuration_gets_401_after_restart,
    |app: TestApp| async move {
        let app = restart(app, &["key-old", "key-new"]).await;
        assert_eq!(status_with_key(&app, "key-old").await, 200);
        assert_eq!(status_with_key(&app, "key-new").await, 200);
        assert_eq!(
            status_with_key(&app, "test-key").await,
            401,
            "the first start's key is gone"
        );
        let app = restart(app, &["key-new"]).await;
        assert_eq!(status_with_key(&app, "key-old").await, 401);
        assert_eq!(status_with_key(&app, "key-new").await, 200);
        let stored = app.service.store.api_key_hashes().await.unwrap();
        assert_eq!(stored.len(), 1);
        for h in &stored {
            assert!(h.starts_with("hs256$"), "{h}");
            assert!(!h.contains("key-new"));
            let unsalted = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"key-new"));
            assert!(!h.contains(&unsalted), "not the unsalted SHA-256");
        }
        // No key configured: the keys configured before do not count; one is generated.
        let url = app.stop().await;
        let app = spawn_with(Config {
            database_url: url,
            db_pool: 8,
            ..Config::default()
        })
        .await;
        assert!(app.api_key.starts_with("pk_"), "a new key is generated");
        assert_eq!(status_with_key(&app, "key-new").await, 401);
        let generated = app.api_key.clone();
        assert_eq!(status_with_key(&app, &generated).await, 200);
    }
);

#[tokio::test]
async fn failed_keys_from_one_address_are_throttled_with_retry_after() {
    let app = spawn_app_on(Db::Sqlite, |c| c.auth_failures_per_minute = 3)
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(status_with_key(&app, "wrong").await, 401);
    }
    let r = app
        .http
        .get(format!("{}/api/v1/third/devices", app.address))
        .header("X-Api-Key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], 429, "in the envelope");
    // The address is throttled whatever it presents, so guessing cannot go on.
    assert_eq!(status_with_key(&app, &app.api_key).await, 429);
    // Unkeyed routes are not affected.
    let h = app
        .http
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status().as_u16(), 200);
}

#[tokio::test]
async fn the_per_key_rate_limit_says_when_to_retry() {
    let app = spawn_app_on(Db::Sqlite, |c| c.rate_limit = Some(1))
        .await
        .unwrap();
    let mut throttled = None;
    for _ in 0..10 {
        let r = app.get("/api/v1/third/devices").send().await.unwrap();
        if r.status().as_u16() == 429 {
            throttled = Some(r);
            break;
        }
    }
    let r = throttled.expect("a 429 within 10 requests at 1/s");
    assert_eq!(r.headers().get("retry-after").unwrap(), "1");
}

async fn start_result(config: Config) -> anyhow::Result<()> {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let devices = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let r = pile_server::start(config, http, devices, shutdown.clone()).await;
    shutdown.cancel();
    match r {
        Ok(app) => app.wait().await,
        Err(e) => Err(e),
    }
}

#[tokio::test]
async fn an_empty_webhook_secret_is_refused_at_start_up() {
    let base = || Config {
        database_url: crate::helpers::sqlite_url(),
        api_keys: keys(&["k"]),
        webhook_url: Some("http://127.0.0.1:9/hook".into()),
        ..Config::default()
    };
    let e = start_result(Config {
        webhook_secret: Some("".into()),
        ..base()
    })
    .await
    .expect_err("an empty secret is refused");
    assert!(e.to_string().contains("--webhook-secret"), "{e}");
    assert!(e.to_string().contains("--allow-unsigned-webhooks"), "{e}");
    let e = start_result(base())
        .await
        .expect_err("no secret with a URL is refused");
    assert!(e.to_string().contains("--webhook-secret"), "{e}");
    // Asked for explicitly: starts.
    start_result(Config {
        allow_unsigned_webhooks: true,
        ..base()
    })
    .await
    .expect("unsigned webhooks when asked for");
    start_result(Config {
        webhook_secret: Some("x".into()),
        ..base()
    })
    .await
    .expect("a secret");
}

/// Whether the server closed `s` (EOF or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut b)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

async fn healthz(app: &TestApp) -> Option<u16> {
    let r = app
        .http
        .get(format!("{}/healthz", app.address))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    Some(r.status().as_u16())
}

// 200 idle HTTP connections against a cap of 50: the 150 past the cap are closed at once, a
// pile connects and registers while the 50 are held, the 50 are closed by the header timeout,
// then /healthz answers.
#[tokio::test]
async fn idle_http_connections_past_the_cap_do_not_stop_piles_or_healthz() {
    let app = spawn_app_on(Db::Sqlite, |c| {
        c.http_max_connections = 50;
        c.http_header_timeout = Duration::from_secs(2);
    })
    .await
    .unwrap();
    let http_addr = app.address.trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(&http_addr).await.expect("connect"));
    }
    // The server accepts in order: the first 50 hold the cap, the rest are closed at once.
    let mut closed_at_once = 0;
    for s in idle.iter_mut().skip(50) {
        if closed_within(s, Duration::from_secs(5)).await {
            closed_at_once += 1;
        }
    }
    assert_eq!(closed_at_once, 150);
    // The device side is untouched.
    let mut pile = ApPile::connect(app.device_addr, "1A2B3C4D").await;
    pile.boot(2).await;
    assert!(app.service.gateway.is_connected("1A2B3C4D"));
    // The held ones are closed by the header timeout; then HTTP answers again.
    for s in idle.iter_mut().take(50) {
        assert!(
            closed_within(s, Duration::from_secs(20)).await,
            "idle connection closed"
        );
    }
    let status = eventually(|| async { healthz(&app).await }).await;
    assert_eq!(status, 200);
}

// A slowloris connection (headers dripped a byte at a time) is closed once the header timeout
// passes, although it keeps sending.
#[tokio::test]
async fn a_slowloris_connection_is_closed_after_the_header_timeout() {
    let app = spawn_app_on(Db::Sqlite, |c| {
        c.http_header_timeout = Duration::from_millis(500);
    })
    .await
    .unwrap();
    let http_addr = app.address.trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&http_addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = false;
    for b in request.iter() {
        if s.write_all(&[*b]).await.is_err()
            || closed_within(&mut s, Duration::from_millis(50)).await
        {
            closed = true;
            break;
        }
        // Bounded: the request is finite; the loop ends by itself at its last byte.
    }
    if !closed {
        closed = closed_within(&mut s, Duration::from_secs(10)).await;
    }
    assert!(closed, "closed by the server");
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "not before the header timeout: {:?}",
        started.elapsed()
    );
    // Ordinary requests still work.
    assert_eq!(healthz(&app).await, Some(200));
}

/// Identifies `id` at the intent level; returns whether it was admitted.
async fn identify(app: &TestApp, id: &str) -> bool {
    let (tx, _rx) = tokio::sync::mpsc::channel(4);
    let conn_id = app.service.gateway.next_conn_id();
    let link = SessionLink {
        conn_id,
        handle: SessionHandle {
            conn_id,
            commands: tx,
            close: CancellationToken::new(),
        },
    };
    let hello = Hello {
        device_id: id.into(),
        protocol: "ap3000",
        remote_addr: "127.0.0.1:9".into(),
        firmware: None,
        iccid: None,
        signal: None,
        conn_id,
        at_ms: app.service.clock.now_ms(),
    };
    let r = app
        .service
        .apply(&link, None, Intent::Identify { token: 1, hello })
        .await;
    let admitted = match r {
        Some((_, IntentResult::Identified { .. })) => true,
        Some((_, IntentResult::Refused { .. })) => false,
        other => panic!("identification answered {other:?}"),
    };
    if admitted {
        app.service.session_ended(id, conn_id, false, false).await;
    }
    admitted
}

async fn registered_events(app: &TestApp) -> Vec<String> {
    app.service.writer.flush().await;
    app.service
        .store
        .outbox_after(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type == "device.registered")
        .map(|e| e.device_id)
        .collect()
}

// New IDs past the registration limit are refused and counted: no row, no
// `device.registered`, no ring. Known devices still connect while the bucket is empty, and it
// refills over the minute.
both_tweaked!(
    new_ids_past_the_registration_limit_are_refused_and_counted,
    |c: &mut Config| c.device_registrations_per_minute = 5,
    |app: TestApp, clock: Clock| async move {
        for i in 0..5 {
            assert!(identify(&app, &format!("{:08x}", 0x1000 + i)).await);
        }
        for i in 5..20 {
            let id = format!("{:08x}", 0x1000 + i);
            // The core recorded the first frame before the identification was decided.
            app.service.gateway.record_frame(
                &id,
                Direction::Up,
                clock.now_ms(),
                &[1, 2],
                FrameNote::Text("hello"),
            );
            assert!(!identify(&app, &id).await, "{id} refused");
            assert!(app.service.gateway.frames(&id).is_none(), "{id}: no ring");
        }
        let counts = &app.service.admission.counts;
        assert_eq!(
            counts
                .registration_rate
                .load(std::sync::atomic::Ordering::Relaxed),
            15
        );
        app.service.writer.flush().await;
        assert!(app.service.store.device_exists("00001000").await.unwrap());
        assert!(!app.service.store.device_exists("00001005").await.unwrap());
        let mut events = registered_events(&app).await;
        events.sort();
        assert_eq!(events.len(), 5, "{events:?}");
        // A known device is not a registration.
        assert!(identify(&app, "00001000").await);
        // 12 s later the bucket holds one more (5 a minute).
        clock.advance_ms(12000);
        assert!(identify(&app, "00002000").await);
        assert!(!identify(&app, "00002001").await);
        // The metric is exposed.
        let m = app
            .http
            .get(format!("{}/metrics", app.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            m.contains("device_connections_refused_total{reason=\"registration_rate\"}"),
            "{m}"
        );
    }
);

// An ID that connects more than N times a minute is held off, then let back after the hold.
both_tweaked!(
    a_flapping_id_is_held_off_for_a_while,
    |c: &mut Config| {
        c.device_flap_max = 3;
        c.device_flap_hold = Duration::from_secs(300);
    },
    |app: TestApp, clock: Clock| async move {
        for _ in 0..3 {
            assert!(identify(&app, "00003000").await);
            clock.advance_ms(1000);
        }
        assert!(
            !identify(&app, "00003000").await,
            "the fourth within a minute"
        );
        assert!(!app.service.gateway.is_connected("00003000"));
        let counts = &app.service.admission.counts;
        assert_eq!(counts.held.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(
            identify(&app, "00003001").await,
            "another ID is not affected"
        );
        clock.advance_ms(200000);
        assert!(!identify(&app, "00003000").await, "still held");
        clock.advance_ms(101000);
        assert!(identify(&app, "00003000").await, "back after the hold");
        let m = app
            .http
            .get(format!("{}/metrics", app.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(m.contains("device_flapping_total"), "{m}");
    }
);

// Rings of devices gone longer than the TTL are dropped; an online device's ring stays.
both_tweaked!(
    rings_of_long_gone_devices_are_dropped,
    |c: &mut Config| c.frame_ring_ttl = Duration::from_secs(3600),
    |app: TestApp, clock: Clock| async move {
        let s = app.connect_fake("00004000", "ap3000", 2).await;
        let gw = &app.service.gateway;
        gw.record_frame(
            "00004000",
            Direction::Up,
            clock.now_ms(),
            &[1],
            FrameNote::Text("a"),
        );
        gw.record_frame(
            "00004001",
            Direction::Up,
            clock.now_ms(),
            &[1],
            FrameNote::Text("b"),
        );
        clock.advance_ms(1800000);
        gw.record_frame(
            "00004002",
            Direction::Up,
            clock.now_ms(),
            &[1],
            FrameNote::Text("c"),
        );
        clock.advance_ms(1801000);
        assert_eq!(app.service.prune_gone(Duration::from_secs(3600)), 1);
        assert!(gw.frames("00004001").is_none(), "gone for an hour: dropped");
        assert!(
            gw.frames("00004002").is_some(),
            "gone for half an hour: kept"
        );
        assert!(gw.frames("00004000").is_some(), "online: kept");
        drop(s);
    }
);

// With an allowlist, an unlisted pile is refused over TCP: the connection closes, no row, no
// ring, counted.
#[tokio::test]
async fn an_unlisted_pile_is_refused_when_an_allowlist_is_set() {
    let path = std::env::temp_dir().join(format!("allow-{}.txt", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, "# test piles\n1A2B3C4D\n").unwrap();
    let p = path.clone();
    let app = spawn_app_on(Db::Sqlite, move |c| c.device_allowlist = Some(p))
        .await
        .unwrap();
    let mut listed = ApPile::connect(app.device_addr, "1A2B3C4D").await;
    listed.boot(2).await;
    let mut other = ApPile::connect(app.device_addr, "5E6F7A8B").await;
    let reg = other.register_frame(2);
    other.send(reg).await;
    assert!(other.recv().await.is_none(), "closed without an answer");
    app.service.writer.flush().await;
    assert!(!app.service.store.device_exists("5E6F7A8B").await.unwrap());
    assert!(app.service.gateway.frames("5E6F7A8B").is_none());
    assert_eq!(
        app.service
            .admission
            .counts
            .allowlist
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(app.service.gateway.is_connected("1A2B3C4D"));
    let _ = std::fs::remove_file(&path);
    // `off` and an unreadable file.
    let c = pile_server::config::Config::merge(
        <pile_server::config::Cli as clap::Parser>::parse_from([
            "pile-server",
            "--device-allowlist",
            "off",
        ]),
        Default::default(),
    );
    assert_eq!(c.device_allowlist, None);
    let e = start_result(Config {
        database_url: crate::helpers::sqlite_url(),
        device_allowlist: Some("/nonexistent/allow.txt".into()),
        ..Config::default()
    })
    .await
    .expect_err("an unreadable allowlist stops the start");
    assert!(e.to_string().contains("--device-allowlist"), "{e}");
}
