//! The in-process API, as the scenario runner uses it.

use std::time::Duration;

use bytes::Bytes;
use pile_load::http::{run, HttpLoadConfig, Report};

use crate::server::spawn_server;

/// Every run in these tests is bounded by its own stop condition; this is the backstop.
async fn load(config: HttpLoadConfig) -> Report {
    tokio::time::timeout(Duration::from_secs(60), run(config, None))
        .await
        .expect("load run finished within 60 s")
        .expect("load run started")
}

fn closed(url: String, requests: u64, concurrency: usize) -> HttpLoadConfig {
    let mut config = HttpLoadConfig::new(url);
    config.requests = Some(requests);
    config.concurrency = concurrency;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_model_sends_exactly_n_requests_and_the_server_saw_them_all() {
    let server = spawn_server().await;

    let report = load(closed(server.url("/ok"), 500, 8)).await;

    assert_eq!(report.requests, 500);
    assert_eq!(server.served.total(), 500);
    assert_eq!((report.success, report.failed), (500, 0));
    assert_eq!(report.status_codes.get(&200), Some(&500));
    assert_eq!(report.errors.total(), 0);
    assert_eq!(report.success_rate, 100.0);
    assert!(report.qps > 0.0 && report.duration_s > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_code_tallies_agree_with_the_500s_the_server_answered() {
    let server = spawn_server().await;

    let report = load(closed(server.url("/flaky"), 400, 4)).await;

    let served_500 = server.served.status_500();
    assert_eq!(served_500, 100, "every 4th of 400 requests is a 500");
    assert_eq!(report.status_codes.get(&500), Some(&served_500));
    assert_eq!(report.status_codes.get(&200), Some(&300));
    assert_eq!((report.success, report.failed), (300, 100));
    assert_eq!((report.success_rate, report.error_rate), (75.0, 25.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percentiles_are_no_lower_than_a_delay_the_server_injects() {
    let server = spawn_server().await;

    let report = load(closed(server.url("/delay/20"), 40, 4)).await;

    assert_eq!(server.served.total(), 40);
    // hdrhistogram keeps 3 significant digits; allow that much below the sleep.
    assert!(report.min_ms >= 19.9, "min {} ms", report.min_ms);
    assert!(report.p50_ms >= 19.9, "p50 {} ms", report.p50_ms);
    assert!(report.mean_ms >= 19.9, "mean {} ms", report.mean_ms);
    let ordered = [
        report.min_ms,
        report.p50_ms,
        report.p95_ms,
        report.p99_ms,
        report.p999_ms,
        report.max_ms,
    ];
    assert!(ordered.windows(2).all(|w| w[0] <= w[1]), "{ordered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percentiles_separate_fast_requests_from_delayed_ones() {
    let server = spawn_server().await;

    // Every other request is delayed 40 ms: the fast half sits below, the tail above.
    let report = load(closed(server.url("/alternating"), 100, 1)).await;

    assert!(report.min_ms < 40.0, "min {} ms", report.min_ms);
    assert!(report.p95_ms >= 39.9, "p95 {} ms", report.p95_ms);
    assert!(report.max_ms >= 39.9, "max {} ms", report.max_ms);
    assert!(report.mean_ms >= 19.9, "mean {} ms", report.mean_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_paces_within_five_percent_of_the_asked_rate() {
    let server = spawn_server().await;
    let mut config = HttpLoadConfig::new(server.url("/ok"));
    config.rate = Some(200.0);
    config.duration = Some(Duration::from_secs(2));
    config.concurrency = 4;

    let report = load(config).await;

    let served = server.served.total();
    assert!((380..=420).contains(&served), "served {served}, asked 400");
    assert_eq!(report.requests, served);
    assert_eq!(report.rate, Some(200.0));
    // The count above is the pacing; the rate also spans the drain of the last requests
    // after the schedule ends, which a loaded machine stretches.
    assert!(
        (170.0..=210.0).contains(&report.qps),
        "qps {} for 200 asked",
        report.qps
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_with_a_count_spreads_it_over_the_schedule() {
    let server = spawn_server().await;
    let mut config = closed(server.url("/ok"), 50, 2);
    config.rate = Some(100.0);

    let report = load(config).await;

    assert_eq!(server.served.total(), 50);
    // The 50th request is due 490 ms after the start: the run cannot be shorter.
    assert!(report.duration_s >= 0.49, "took {} s", report.duration_s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_is_charged_for_the_requests_it_delayed() {
    let server = spawn_server().await;
    // One connection, 100 ms per response, 100 requests/s asked: each request waits behind the
    // previous ones. Timed from their scheduled starts, the 10th is ~0.9 s late; a closed-model
    // tool would report ~100 ms for every one of them.
    let mut config = closed(server.url("/delay/100"), 10, 1);
    config.rate = Some(100.0);

    let report = load(config).await;

    assert_eq!(report.requests, 10);
    assert!(report.max_ms >= 900.0, "max {} ms", report.max_ms);
    assert!(report.p50_ms >= 400.0, "p50 {} ms", report.p50_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_mode_stops_and_counts_what_the_server_served() {
    let server = spawn_server().await;
    let mut config = HttpLoadConfig::new(server.url("/delay/5"));
    config.duration = Some(Duration::from_millis(300));
    config.concurrency = 2;

    let report = load(config).await;

    assert!(report.duration_s >= 0.3, "took {} s", report.duration_s);
    assert!(report.requests > 0);
    assert_eq!(report.requests, server.served.total());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_each_connection_costs_reconnects_not_errors() {
    let server = spawn_server().await;

    let report = load(closed(server.url("/close"), 20, 2)).await;

    assert_eq!(server.served.total(), 20);
    assert_eq!((report.success, report.failed), (20, 0));
    assert_eq!(report.errors.total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_sent_as_x_api_key() {
    let server = spawn_server().await;
    let mut config = closed(server.url("/key"), 20, 2);
    config.api_key = Some("secret".into());

    let report = load(config).await;

    assert_eq!(server.served.with_api_key(), 20);
    assert_eq!(report.status_codes.get(&200), Some(&20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_key_non_2xx_answers_count_as_failed() {
    let server = spawn_server().await;

    let report = load(closed(server.url("/key"), 10, 1)).await;

    assert_eq!(report.status_codes.get(&401), Some(&10));
    assert_eq!((report.success, report.failed), (0, 10));
    assert_eq!(
        report.errors.total(),
        0,
        "a 401 is a response, not a transport error"
    );
    // Answered, so timed; but nothing succeeded, so the run failed.
    assert_eq!(report.answered, 10);
    assert!(report.min_ms > 0.0);
    assert!(!report.verdict.passed);
    assert!(
        report
            .verdict
            .reason
            .as_deref()
            .unwrap()
            .contains("10 × HTTP 401"),
        "{:?}",
        report.verdict
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_headers_and_body_reach_the_server() {
    let server = spawn_server().await;
    let mut config = closed(server.url("/echo"), 3, 1);
    config.method = "POST".parse().unwrap();
    config.headers = vec![("X-Tag".into(), "run-1".into())];
    config.body = Some(Bytes::from_static(br#"{"port":1}"#));

    load(config).await;

    let bodies = server.served.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 3);
    for (method, tag, body) in bodies {
        assert_eq!(method, "POST");
        assert_eq!(tag.as_deref(), Some("run-1"));
        assert_eq!(&body[..], br#"{"port":1}"#);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_counted_as_connect_errors() {
    // Bind then drop a listener: its port now refuses connections.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let report = load(closed(format!("http://127.0.0.1:{port}/"), 5, 1)).await;

    assert_eq!(report.requests, 5);
    assert_eq!(report.errors.connect, 5);
    assert_eq!((report.success, report.failed), (0, 5));
    assert!(report.status_codes.is_empty());
    // No answer, no latency, and the run is not a result.
    assert_eq!(report.answered, 0);
    assert_eq!((report.p50_ms, report.max_ms), (0.0, 0.0));
    assert!(!report.verdict.passed);
    let reason = report.verdict.reason.as_deref().unwrap();
    assert!(reason.contains("no request succeeded"), "{reason}");
    assert!(reason.contains("5 connect errors"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_responses_past_the_timeout_are_counted_as_timeouts() {
    let server = spawn_server().await;
    let mut config = closed(server.url("/delay/2000"), 3, 3);
    config.timeout = Duration::from_millis(100);

    let report = load(config).await;

    assert_eq!(report.errors.timeout, 3);
    assert_eq!(report.failed, 3);
}

#[tokio::test]
async fn invalid_configurations_are_rejected_before_any_request() {
    let mut https = HttpLoadConfig::new("https://127.0.0.1:1/");
    https.requests = Some(1);
    assert!(run(https, None).await.is_err());

    let mut zero = HttpLoadConfig::new("http://127.0.0.1:1/");
    zero.concurrency = 0;
    assert!(run(zero, None).await.is_err());

    let mut negative_rate = HttpLoadConfig::new("http://127.0.0.1:1/");
    negative_rate.rate = Some(-5.0);
    assert!(run(negative_rate, None).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_and_a_duration_stop_at_whichever_comes_first() {
    let server = spawn_server().await;
    // A million 5 ms requests over 2 connections would take over 40 minutes: the duration wins.
    let mut config = closed(server.url("/delay/5"), 1_000_000, 2);
    config.duration = Some(Duration::from_millis(300));

    let report = load(config).await;

    assert!(report.requests < 1_000_000);
    assert_eq!(report.requests, server.served.total());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_reported_while_the_run_goes_on() {
    let server = spawn_server().await;
    let mut seen = Vec::new();
    let mut on_progress = |p: &pile_load::http::Progress| seen.push((p.completed, p.answered));
    let mut config = closed(server.url("/delay/10"), 40, 1);
    config.rate = Some(100.0);

    let report = tokio::time::timeout(Duration::from_secs(60), run(config, Some(&mut on_progress)))
        .await
        .expect("finished within 60 s")
        .expect("started");

    assert!(
        seen.len() >= 2,
        "progress every 100 ms over ~0.4 s: {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "monotonic: {seen:?}");
    assert!(seen.iter().all(|&(c, a)| a <= c && c <= report.requests));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_budget_decides_the_verdict() {
    let server = spawn_server().await;
    // /flaky: 25 % of answers are 500s.
    let strict = load(closed(server.url("/flaky"), 40, 2)).await;
    let mut config = closed(server.url("/flaky"), 40, 2);
    config.max_error_rate = 30.0;
    let lenient = load(config).await;

    assert_eq!(strict.error_rate, 25.0);
    assert!(!strict.verdict.passed);
    let reason = strict.verdict.reason.unwrap();
    assert!(reason.contains("above --max-error-rate 1 %"), "{reason}");
    assert!(reason.contains("10 × HTTP 500"), "{reason}");
    assert!(lenient.verdict.passed, "{:?}", lenient.verdict);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keep_alive_every_request_asks_for_its_own_connection() {
    let server = spawn_server().await;
    let mut config = closed(server.url("/ok"), 30, 3);
    config.keep_alive = false;

    let report = load(config).await;

    assert_eq!((report.success, report.answered), (30, 30));
    assert_eq!(server.served.close_asked(), 30);
    assert_eq!(report.keep_alive_responses, 0);
    // Every request paid for a connect.
    assert_eq!(report.connect.count, 30);
    assert!(report.connect.min_ms > 0.0, "{:?}", report.connect);

    let kept = load(closed(server.url("/ok"), 30, 3)).await;
    assert_eq!(
        server.served.close_asked(),
        30,
        "kept-alive requests ask for no close"
    );
    assert_eq!(kept.keep_alive_responses, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_sections_count_bytes_lengths_and_stages() {
    let server = spawn_server().await;

    let report = load(closed(server.url("/varlen"), 30, 1)).await;

    // 10 of 30 bodies are 12 bytes, the first among them; 20 are 10 bytes.
    assert_eq!(report.document_length, Some(12));
    assert_eq!(report.length_mismatches, 20);
    assert_eq!(report.body_bytes_received, 10 * 12 + 20 * 10);
    assert!(report.bytes_received > report.body_bytes_received);
    assert_eq!(report.status_codes.get(&500), Some(&6));
    assert!(report.transfer_rate_kbps > 0.0);
    let ladder: Vec<u8> = report.served_within.iter().map(|s| s.percent).collect();
    assert_eq!(ladder, pile_load::http::LADDER);
    assert!(report.served_within.windows(2).all(|w| w[0].ms <= w[1].ms));
    assert_eq!(report.total.count, 30);
    assert!(report.waiting.median_ms <= report.total.median_ms);
}
