//! The `pile-load` binary: JSON report, text report, exit codes.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::server::spawn_server;

async fn pile_load(args: &[&str]) -> Output {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pile-load"))
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("pile-load finished within 60 s")
        .expect("pile-load ran")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_report_parses_and_has_every_key_with_its_type() {
    let server = spawn_server().await;
    let url = server.url("/flaky");

    let out = pile_load(&["http", "--url", &url, "-n", "40", "-c", "2", "--json"]).await;

    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(report["schema_version"], 1);
    for key in ["requests", "success", "failed", "concurrency"] {
        assert!(
            report[key].is_u64(),
            "{key} is an unsigned integer: {report}"
        );
    }
    for key in [
        "qps",
        "mean_ms",
        "min_ms",
        "max_ms",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "p999_ms",
        "success_rate",
        "error_rate",
        "duration_s",
    ] {
        assert!(report[key].is_f64(), "{key} is a number: {report}");
    }
    assert!(report["rate"].is_null(), "closed model has no rate");
    assert_eq!(report["status_codes"]["200"], 30);
    assert_eq!(report["status_codes"]["500"], 10);
    for kind in ["connect", "timeout", "reset", "other"] {
        assert!(report["errors"][kind].is_u64(), "errors.{kind}: {report}");
    }
    assert_eq!(report["requests"], 40);
    assert_eq!(server.served.total(), 40);
    // It also deserialises into the library's type.
    let typed: pile_load::http::Report = serde_json::from_value(report).unwrap();
    assert_eq!(typed.failed, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_json_report_carries_the_rate() {
    let server = spawn_server().await;
    let url = server.url("/ok");

    let out = pile_load(&[
        "http",
        "--url",
        &url,
        "--rate",
        "50",
        "--duration",
        "200ms",
        "--json",
    ])
    .await;

    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rate"], 50.0);
    assert_eq!(report["requests"], server.served.total());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_report_carries_the_acceptance_record_fields_and_no_progress_bar_when_piped() {
    let server = spawn_server().await;
    let url = server.url("/ok");

    let out = pile_load(&["http", "--url", &url, "-n", "20", "-c", "2"]).await;

    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    for label in [
        "Total requests:    20",
        "Success:           20",
        "Failed:            0",
        "Min latency:",
        "Max latency:",
        "Mean latency:",
        "P50:",
        "P95:",
        "P99:",
        "P99.9:",
        "QPS:",
        "Success rate:      100.00 %",
        "Error rate:        0.00 %",
        "  200: 20",
        "Errors by kind:",
    ] {
        assert!(text.contains(label), "missing {label:?} in\n{text}");
    }
    assert!(stderr(&out).is_empty(), "stderr is piped: no progress bar");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_if_passes_with_exit_0_when_no_condition_holds() {
    let server = spawn_server().await;
    let url = server.url("/ok");

    let out = pile_load(&[
        "http",
        "--url",
        &url,
        "-n",
        "20",
        "--fail-if",
        "success<99%,errors>1%,p99>30s",
    ])
    .await;

    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_if_exits_2_and_names_the_condition_that_held() {
    let server = spawn_server().await;
    let url = server.url("/flaky");

    let out = pile_load(&[
        "http",
        "--url",
        &url,
        "-n",
        "40",
        "--fail-if",
        "p99>30s,success<99%",
    ])
    .await;

    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("success<99%"), "{err}");
    assert!(
        !err.contains("p99>30s"),
        "only the condition that held: {err}"
    );
    assert!(!out.stdout.is_empty(), "the report is still printed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_if_on_latency_exits_2() {
    let server = spawn_server().await;
    let url = server.url("/delay/20");

    let out = pile_load(&["http", "--url", &url, "-n", "4", "--fail-if", "p50>5ms"]).await;

    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("p50>5ms"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_fail_if_exits_1_before_sending_anything() {
    let server = spawn_server().await;
    let url = server.url("/ok");

    let out = pile_load(&["http", "--url", &url, "-n", "5", "--fail-if", "p99>>fast"]).await;

    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--fail-if"), "{}", stderr(&out));
    assert_eq!(server.served.total(), 0);
}

#[tokio::test]
async fn usage_errors_exit_1_not_2() {
    let missing_url = pile_load(&["http", "-n", "5"]).await;
    assert_eq!(missing_url.status.code(), Some(1));

    let bad_duration =
        pile_load(&["http", "--url", "http://127.0.0.1:1/", "--duration", "soon"]).await;
    assert_eq!(bad_duration.status.code(), Some(1));
    assert!(stderr(&bad_duration).contains("invalid duration"));

    let https = pile_load(&["http", "--url", "https://127.0.0.1:1/", "-n", "1"]).await;
    assert_eq!(https.status.code(), Some(1));
    assert!(stderr(&https).contains("https"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_flag_and_body_file_reach_the_server() {
    let server = spawn_server().await;
    let dir = std::env::temp_dir().join(format!("pile-load-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let body_file = dir.join("body.json");
    std::fs::write(&body_file, br#"{"amount":5}"#).unwrap();
    let body_arg = format!("@{}", body_file.display());

    let key = pile_load(&[
        "http",
        "--url",
        &server.url("/key"),
        "-n",
        "3",
        "--api-key",
        "secret",
    ])
    .await;
    let echo = pile_load(&[
        "http",
        "--url",
        &server.url("/echo"),
        "-n",
        "2",
        "-m",
        "post",
        "--body",
        &body_arg,
        "-H",
        "X-Tag: from-cli",
    ])
    .await;

    assert_eq!(key.status.code(), Some(0));
    assert_eq!(server.served.with_api_key(), 3);
    assert_eq!(echo.status.code(), Some(0), "{}", stderr(&echo));
    let bodies = server.served.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0].0, "POST");
    assert_eq!(bodies[0].1.as_deref(), Some("from-cli"));
    assert_eq!(&bodies[0].2[..], br#"{"amount":5}"#);
    let _ = std::fs::remove_dir_all(dir);
}
