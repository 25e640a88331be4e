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

    let out = pile_load(&[
        "http",
        "--url",
        &url,
        "-n",
        "40",
        "-c",
        "2",
        "--json",
        "--max-error-rate",
        "30",
    ])
    .await;

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
        "--max-error-rate",
        "30",
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

/// A port that refuses connections: bound, then released.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_target_exits_3_with_a_one_line_reason_and_no_latency() {
    let url = format!("http://127.0.0.1:{}/", closed_port());

    let out = pile_load(&["http", "-n", "50", &url]).await;

    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err:?}");
    assert!(lines[0].contains("no request succeeded"), "{err}");
    assert!(lines[0].contains("50 connect errors"), "{err}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("connect: 50"), "{text}");
    assert!(text.contains("P99:               n/a"), "{text}");
    assert!(
        !text.contains("0.000 ms"),
        "no latency for unanswered requests:\n{text}"
    );
    assert!(text.contains("Verdict:           FAILED"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_all_401_run_exits_3() {
    let server = spawn_server().await;

    let out = pile_load(&["http", "-n", "20", "-c", "2", "--json", &server.url("/key")]).await;

    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("20 × HTTP 401"), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verdict"]["passed"], false);
    assert_eq!(report["answered"], 20);
    assert_eq!(server.served.total(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_above_the_budget_exit_3_and_a_raised_budget_passes() {
    let server = spawn_server().await;
    let url = server.url("/flaky");

    let strict = pile_load(&["http", "-n", "40", &url]).await;
    let lenient = pile_load(&["http", "-n", "40", "--max-error-rate", "30", &url]).await;

    assert_eq!(strict.status.code(), Some(3));
    assert!(
        stderr(&strict).contains("25.00 % of requests failed"),
        "{}",
        stderr(&strict)
    );
    assert_eq!(lenient.status.code(), Some(0), "{}", stderr(&lenient));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_habits_positional_url_with_k_p_t_h_c_s_q() {
    let server = spawn_server().await;
    let dir = std::env::temp_dir().join(format!("pile-load-ab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let post = dir.join("post.json");
    std::fs::write(&post, br#"{"port":2}"#).unwrap();
    let post = post.display().to_string();

    let out = pile_load(&[
        "http",
        "-n",
        "6",
        "-c",
        "2",
        "-k",
        "-p",
        &post,
        "-T",
        "application/json",
        "-H",
        "X-Tag: ab",
        "-C",
        "session=1",
        "-C",
        "lang=zh",
        "-s",
        "5",
        "-q",
        &server.url("/echo"),
    ])
    .await;
    let plain = pile_load(&["http", "-n", "4", "-t", "10", &server.url("/ok")]).await;

    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "-q: {}", stderr(&out));
    let bodies = server.served.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 6);
    for (method, tag, body) in &bodies {
        assert_eq!(method, "POST", "-p posts");
        assert_eq!(tag.as_deref(), Some("ab"));
        assert_eq!(&body[..], br#"{"port":2}"#);
    }
    let headers = server.served.echo_headers.lock().unwrap().clone();
    for (content_type, cookie) in &headers {
        assert_eq!(content_type.as_deref(), Some("application/json"), "-T");
        assert_eq!(cookie.as_deref(), Some("session=1; lang=zh"), "-C");
    }
    // -k: no request asked for its connection to be closed; the plain run asked every time.
    assert_eq!(plain.status.code(), Some(0), "{}", stderr(&plain));
    assert_eq!(server.served.close_asked(), 4);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Keep-alive:        6 responses"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The layout of an ab report from "Server Software:" on: per line, its label (the text up to
/// the first ':' or '%', or the whole line for headings) and its number of fields, so that
/// `awk '/label/ {print $N}'` finds the same thing in both. Values of "Server Software:"
/// differ by server and are not counted.
fn ab_layout(report: &str) -> Vec<(String, usize)> {
    let start = report.find("Server Software:").expect("an ab report");
    report[start..]
        .lines()
        .map(|line| {
            let label = match line.find([':', '%']) {
                Some(at) => line[..=at].to_string(),
                None if line.trim_start().starts_with(|c: char| c.is_ascii_digit()) => {
                    "(numbers)".to_string()
                }
                None => line.to_string(),
            };
            let fields = if label.starts_with("Server Software:") {
                0
            } else {
                line.split_whitespace().count()
            };
            (label, fields)
        })
        .collect()
}

/// Lines `key: value` start their value in column 24, in ab's output and in ours.
fn value_columns(report: &str) -> Vec<Option<usize>> {
    let start = report.find("Server Software:").unwrap();
    report[start..]
        .lines()
        .map(|l| {
            let colon = l.find(':').filter(|&c| c < 23 && !l.starts_with(' '))?;
            let rest = &l[colon + 1..];
            let lead = rest.len() - rest.trim_start().len();
            (!rest.trim().is_empty()).then_some(colon + 1 + lead)
        })
        .collect()
}

fn assert_same_layout(fixture: &str, ours: &str) {
    let want = ab_layout(fixture);
    let got = ab_layout(ours);
    for (i, (w, g)) in want.iter().zip(got.iter()).enumerate() {
        assert_eq!(
            w, g,
            "line {i} differs\n--- ab ---\n{fixture}\n--- pile-load ---\n{ours}"
        );
    }
    assert_eq!(
        want.len(),
        got.len(),
        "\n--- ab ---\n{fixture}\n--- pile-load ---\n{ours}"
    );
    let (wc, gc) = (value_columns(fixture), value_columns(ours));
    for (i, (w, g)) in wc.iter().zip(gc.iter()).enumerate() {
        if w.is_some() && g.is_some() {
            assert_eq!(w, g, "value column of line {i}\n{ours}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_ab_matches_captured_ab_reports_section_for_section() {
    let server = spawn_server().await;
    let dir = std::env::temp_dir().join(format!("pile-load-abfmt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let post = dir.join("post.txt");
    std::fs::write(&post, b"pilekit\n").unwrap();
    let post = post.display().to_string();
    let fixture = |name: &str| {
        std::fs::read_to_string(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    let ok = server.url("/ok");
    let varlen = server.url("/varlen");
    let cases: [(&str, Vec<&str>, Option<i32>); 4] = [
        // ab -n 200 -c 4 -k URL (every answer 2xx)
        (
            "ab-2.3-keepalive.txt",
            vec!["-n", "200", "-c", "4", "-k", &ok],
            Some(0),
        ),
        // ab -n 200 -c 4 URL
        (
            "ab-2.3-plain.txt",
            vec!["-n", "200", "-c", "4", &ok],
            Some(0),
        ),
        // ab -n 2000 -c 4 -k -p FILE -T application/json URL (every answer non-2xx: 405)
        (
            "ab-2.3-post-non2xx.txt",
            vec![
                "-n",
                "300",
                "-c",
                "4",
                "-k",
                "-p",
                &post,
                "-T",
                "application/json",
                &ok,
            ],
            Some(3),
        ),
        // ab -n 100 -c 2 URL against a server whose lengths vary and with some 500s
        (
            "ab-2.3-failed.txt",
            vec!["-n", "100", "-c", "2", "--max-error-rate", "100", &varlen],
            Some(0),
        ),
    ];
    for (name, args, code) in cases {
        let mut all = vec!["http", "--format", "ab"];
        all.extend(args);
        let out = pile_load(&all).await;
        assert_eq!(out.status.code(), code, "{name}: {}", stderr(&out));
        let ours = String::from_utf8(out.stdout).unwrap();
        assert_same_layout(&fixture(name), &ours);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_ab_prints_ab_progress_lines_on_stderr_for_long_runs() {
    let server = spawn_server().await;

    let out = pile_load(&[
        "http",
        "--format",
        "ab",
        "-n",
        "200",
        "-k",
        &server.url("/ok"),
    ])
    .await;

    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(err.contains("Completed 20 requests"), "{err}");
    assert!(err.contains("Completed 200 requests"), "{err}");
    assert!(err.contains("Finished 200 requests"), "{err}");
}
