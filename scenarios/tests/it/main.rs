//! End to end: the runner against the embedded gateway (a child process of the real binary),
//! and against a deliberately broken gateway that it must fail.

use std::path::PathBuf;

use pile_scenarios::runner::{run, RunOptions};
use pile_scenarios::stack::TargetSpec;
use pile_scenarios::{Profile, Status};

mod record;

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pile-scenarios-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subset_runs_against_the_embedded_gateway_and_writes_the_report() {
    let out = out_dir("embedded");
    let (report, dir) = run(RunOptions {
        profile: Profile::quick(),
        cases: vec!["1.1".into(), "1.4".into(), "3.2".into()],
        out_dir: Some(out.clone()),
        seed: 3,
        target: TargetSpec::Embedded {
            exe: PathBuf::from(env!("CARGO_BIN_EXE_pile-scenarios")),
            database_url: None,
        },
    })
    .await
    .expect("the run itself works");
    assert_eq!(dir, out);
    let ids: Vec<_> = report.cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["1.1", "1.4", "3.2"]);
    let health = report.case("1.1").unwrap();
    assert_eq!(health.status, Status::Passed, "{health:#?}");
    assert_eq!(health.value("healthz_status").unwrap(), 200);
    let auth = report.case("1.4").unwrap();
    assert_eq!(auth.status, Status::Passed, "{auth:#?}");
    assert_eq!(auth.value("wrong_key_status").unwrap(), 401);
    // 3.2 drives a simulated pile over the wire protocol: 200, then 409 `port is busy`.
    let busy = report.case("3.2").unwrap();
    assert_eq!(busy.status, Status::Passed, "{busy:#?}");
    assert_eq!(busy.value("second_status").unwrap(), 409);
    for f in ["test_results.md", "report.json", "junit.xml", "gateway.log"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let md = std::fs::read_to_string(out.join("test_results.md")).unwrap();
    assert!(md.contains("| healthz接口 | 200 OK | 200 | ☑ |"));
    assert!(!md.contains("____") && !md.contains('☒'));
    // A subset run is a rehearsal of the quick profile: no acceptance verdict.
    assert!(md.contains("**是否通过验收:** ☐ 是 ☐ 否"));
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase ").count(), 3);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["cases"].as_array().unwrap().len(), 3);
}

/// A gateway that lets any API key through and answers without the envelope's request ID.
async fn broken_gateway() -> (String, String) {
    use axum::routing::get;
    use axum::Json;
    let app = axum::Router::new()
        .route(
            "/api/v1/third/devices",
            get(|| async {
                Json(serde_json::json!({"code": 0, "message": "ok", "data": {"items": [], "total": 0, "page": 1, "size": 5}, "timestamp": 1}))
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let devices = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (h, d) = (http.local_addr().unwrap(), devices.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(http, app).await });
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = devices.accept().await {
            held.push(s);
        }
    });
    (format!("http://{h}"), d.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_that_ignores_the_api_key_fails_1_4() {
    let (http, device) = broken_gateway().await;
    let out = out_dir("broken");
    let (report, _) = run(RunOptions {
        profile: Profile::quick(),
        cases: vec!["1.4".into()],
        out_dir: Some(out.clone()),
        seed: 3,
        target: TargetSpec::External {
            http,
            device,
            api_key: "k".into(),
        },
    })
    .await
    .unwrap();
    let auth = report.case("1.4").unwrap();
    assert_eq!(auth.status, Status::Failed);
    assert!(!auth.check_ok("valid_key"), "wrong key got 200: must fail");
    assert!(!auth.check_ok("envelope"), "request_id missing: must fail");
    assert!(!report.all_passed());
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.contains("<failure"));
}

/// External mode, as an operator would point the runner at staging: a gateway process started
/// separately (not by the runner), reached only through its HTTP and device addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subset_runs_against_a_separately_started_gateway() {
    use pile_scenarios::gateway::{GatewayProcess, GatewaySpec};
    let out = out_dir("external");
    std::fs::create_dir_all(&out).unwrap();
    let spec = GatewaySpec {
        exe: PathBuf::from(env!("CARGO_BIN_EXE_pile-scenarios")),
        database_url: format!("sqlite://{}", out.join("staging.db").display()),
        api_key: "staging-key-0123456789".into(),
        offline_after: std::time::Duration::from_secs(3),
        webhook_url: None,
        webhook_secret: None,
        log_path: out.join("staging.log"),
        reconcile_after: std::time::Duration::from_secs(5),
    };
    let gw = GatewayProcess::spawn(&spec, "127.0.0.1:0", "127.0.0.1:0")
        .await
        .expect("the staging gateway starts");
    let (report, _) = run(RunOptions {
        profile: Profile::quick(),
        cases: ["1.1", "1.2", "1.3", "1.4", "3.2", "X.2", "X.3"]
            .map(String::from)
            .to_vec(),
        out_dir: Some(out.join("report")),
        seed: 5,
        target: TargetSpec::External {
            http: format!("http://{}", gw.http_addr),
            device: gw.device_addr.clone(),
            api_key: spec.api_key.clone(),
        },
    })
    .await
    .expect("the run itself works");
    let _ = gw.stop(std::time::Duration::from_secs(10)).await;
    for id in ["1.1", "1.2", "1.4", "3.2", "X.2"] {
        let c = report.case(id).unwrap();
        assert_eq!(c.status, Status::Passed, "{id}: {c:#?}");
    }
    // What external mode cannot check is reported as not run, with the reason, never passed.
    for id in ["1.3", "X.3"] {
        let c = report.case(id).unwrap();
        assert!(
            matches!(c.status, Status::NotRun(_)),
            "{id}: {:?}",
            c.status
        );
    }
    assert!(!report.all_passed());
    let health = report.case("1.1").unwrap();
    assert!(health
        .check("running")
        .is_some_and(|c| c.actual.contains("外部目标")));
}
