//! `pile-load fleet` against a real gateway in this process, with small fleets.

use std::process::Command;
use std::time::Duration;

use pile_load::fleet::{run, FleetLoadConfig, FleetLoadError, FleetReport};
use pile_sim::config::ProtocolChoice;

use crate::gateway::{spawn, API_KEY};

fn small(gw: &crate::gateway::Gateway, devices: u32) -> FleetLoadConfig {
    let mut cfg = FleetLoadConfig::new(&gw.devices, &gw.api, API_KEY);
    cfg.devices = devices;
    cfg.protocol = ProtocolChoice::Mixed;
    cfg.ramp = 200.0;
    cfg.heartbeat = Duration::from_secs(1);
    cfg.duration = Duration::from_secs(4);
    cfg.sample_interval = Duration::from_millis(500);
    cfg.seed = 7;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pile_connects_and_is_online_at_the_gateway() {
    let gw = spawn().await;
    let mut cfg = small(&gw, 20);
    // The gateway runs in this process: /proc of our own PID is its process.
    cfg.server_pid = Some(std::process::id());
    let report = run(cfg).await.expect("run starts");
    gw.stop().await;
    eprintln!("{}", report.render_text());

    assert_eq!(report.piles_connected, 20, "{}", report.render_text());
    assert_eq!(report.gateway_online, Some(20), "{}", report.render_text());
    assert_eq!(report.gateway_online_source, "devices");
    assert_eq!(report.connects, 20);
    assert_eq!(report.reconnects, 0);
    assert_eq!(report.connect_latency.count, 20);
    // 1 s heartbeats for ~4 s: several answered round trips per pile.
    assert!(
        report.heartbeat_rtt.count >= 40,
        "heartbeat samples {}",
        report.heartbeat_rtt.count
    );
    assert!(report.heartbeat_rtt.p50_ms > 0.0);
    assert_eq!(report.heartbeat_rtt_first.count, 20);
    assert_eq!(
        report.heartbeat_rtt_first.count + report.heartbeat_rtt_steady.count,
        report.heartbeat_rtt.count
    );
    assert!(report.heartbeat_rtt.p50_ms <= report.heartbeat_rtt.p99_ms);
    assert!(report.duration_s >= 4.0 && report.duration_s < 10.0);

    let g = &report.gateway_process;
    assert_eq!(g.source, "proc");
    assert_eq!(g.pid, Some(std::process::id()));
    assert!(g.samples >= 5, "samples {}", g.samples);
    let rss = g.rss_end_bytes.expect("rss");
    // A test process with a gateway, a fleet and tokio: megabytes, not kilobytes or terabytes.
    assert!((4 << 20..16 << 30).contains(&rss), "rss {rss}");
    assert!(g.cpu_percent_mean.expect("cpu") >= 0.0);
    let per_pile = g.rss_per_pile_bytes.expect("per pile");
    assert!((per_pile - rss as f64 / 20.0).abs() < 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charge_traffic_measures_command_latency() {
    let gw = spawn().await;
    let mut cfg = small(&gw, 10);
    cfg.duration = Duration::from_secs(5);
    cfg.charge_rate = 4.0;
    cfg.hold = Duration::from_millis(500);
    let report = run(cfg).await.expect("run starts");
    gw.stop().await;
    eprintln!("{}", report.render_text());

    let c = &report.commands;
    assert!(c.started >= 5, "{}", report.render_text());
    assert_eq!(c.charging, c.started, "{}", report.render_text());
    assert_eq!(c.success_rate, 100.0);
    assert_eq!(c.failed, 0);
    assert_eq!(report.command_latency.count, c.charging);
    // Every start reached its pile, and before the order read `charging`.
    assert_eq!(report.command_delivery.count, c.charging);
    assert!(report.command_delivery.p50_ms <= report.command_latency.p50_ms);
    assert!(report.command_latency.min_ms > 0.0);
    assert_eq!(c.stops, c.charging);
    assert_eq!(c.stops_ok, c.stops, "{}", report.render_text());
    // No --server-pid and no process series on the gateway's /metrics.
    assert_eq!(report.gateway_process.source, "none");
    assert_eq!(report.gateway_process.rss_end_bytes, None);
}

#[tokio::test]
async fn refuses_what_it_must_not_do() {
    let mut cfg = FleetLoadConfig::new("10.1.2.3:7065", "http://127.0.0.1:7055", "k");
    cfg.duration = Duration::from_secs(1);
    cfg.devices = 1;
    assert!(matches!(
        run(cfg.clone()).await,
        Err(FleetLoadError::NotLoopback(_))
    ));
    cfg.server = "127.0.0.1:7065".into();
    cfg.api = "http://192.168.1.1:7055".into();
    assert!(matches!(
        run(cfg.clone()).await,
        Err(FleetLoadError::NotLoopback(_))
    ));
    cfg.api = "http://127.0.0.1:7055".into();
    cfg.devices = 10_000;
    cfg.ramp = 1000.0;
    // A 10 s ramp does not fit in 1 s.
    assert!(matches!(
        run(cfg.clone()).await,
        Err(FleetLoadError::Config(_))
    ));
    cfg.devices = 1;
    cfg.ramp = 1e9;
    assert!(matches!(run(cfg).await, Err(FleetLoadError::Config(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_a_versioned_json_report() {
    let gw = spawn().await;
    let pid = std::process::id().to_string();
    let (devices, api) = (gw.devices.clone(), gw.api.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_pile-load"))
            .args([
                "fleet",
                "--server",
                &devices,
                "--api",
                &api,
                "--api-key",
                API_KEY,
            ])
            .args(["--devices", "6", "--protocol", "ap3000", "--ramp", "100"])
            .args([
                "--heartbeat",
                "1",
                "--duration",
                "3s",
                "--seed",
                "3",
                "--json",
            ])
            .args(["--server-pid", &pid])
            .output()
            .expect("run pile-load")
    })
    .await
    .unwrap();
    gw.stop().await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    for key in [
        "schema_version",
        "server",
        "api",
        "protocol",
        "devices",
        "ramp",
        "heartbeat_s",
        "seed",
        "duration_s",
        "piles_connected",
        "piles_connected_max",
        "gateway_online",
        "gateway_online_max",
        "gateway_online_source",
        "connects",
        "connect_failures",
        "reconnects",
        "connect_latency",
        "heartbeat_rtt",
        "heartbeat_rtt_first",
        "heartbeat_rtt_steady",
        "command_delivery",
        "command_latency",
        "stop_latency",
        "commands",
        "gateway_process",
    ] {
        assert!(json.get(key).is_some(), "missing {key} in {json}");
    }
    for key in [
        "count", "min_ms", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms",
    ] {
        assert!(
            json["heartbeat_rtt"][key].is_number(),
            "heartbeat_rtt.{key}"
        );
    }
    for key in [
        "source",
        "pid",
        "samples",
        "cpu_percent_mean",
        "cpu_percent_max",
        "rss_start_bytes",
        "rss_end_bytes",
        "rss_max_bytes",
        "rss_per_pile_bytes",
        "rss_delta_per_pile_bytes",
    ] {
        assert!(
            json["gateway_process"].get(key).is_some(),
            "gateway_process.{key}"
        );
    }
    assert_eq!(json["schema_version"], 1);
    assert_eq!(json["seed"], 3);
    assert_eq!(json["protocol"], "ap3000");
    assert_eq!(json["gateway_process"]["source"], "proc");
    let report: FleetReport = serde_json::from_value(json).expect("report type round trip");
    assert_eq!(report.piles_connected, 6);
    assert_eq!(report.gateway_online, Some(6));
    assert!(report.heartbeat_rtt.count > 0);
}
