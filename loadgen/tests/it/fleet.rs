//! `pile-load fleet` against a real gateway in this process, with small fleets.

use std::process::Command;
use std::time::Duration;

use pile_api::{charge_mode, ChargeRequest, Client, OrderStatus, StopRequest};
use pile_load::fleet::{run, FleetLoadConfig, FleetLoadError, FleetReport};
use pile_sim::config::{FleetConfig, ProtocolChoice};
use pile_sim::fleet::FleetHandle;

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
        report.heartbeat_rtt_first.count + report.heartbeat_rtt_later.count,
        report.heartbeat_rtt.count
    );
    assert_eq!(
        report.heartbeat_rtt_ramp.count + report.heartbeat_rtt_steady.count,
        report.heartbeat_rtt.count
    );
    // CPU of one core and of the machine are the same figure, scaled.
    let g = &report.gateway_process;
    let (one, all) = (
        g.cpu_percent_mean.unwrap(),
        g.cpu_percent_of_machine_mean.unwrap(),
    );
    assert!((one / f64::from(g.cpus) - all).abs() < 1e-9);
    assert!(report.generator_process.cpu_percent_mean.is_some());
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
    cfg.api = Some("http://192.168.1.1:7055".into());
    assert!(matches!(
        run(cfg.clone()).await,
        Err(FleetLoadError::NotLoopback(_))
    ));
    cfg.api = Some("http://127.0.0.1:7055".into());
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
        "heartbeat_rtt_later",
        "heartbeat_rtt_ramp",
        "heartbeat_rtt_steady",
        "phases",
        "waves",
        "processes",
        "first_bkv_id",
        "first_ap3000_id",
        "command_latency_ramp",
        "command_latency_steady",
        "command_delivery_steady",
        "generator_process",
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
        "cpus",
        "cpu_percent_of_machine_mean",
        "cpu_percent_of_machine_max",
    ] {
        assert!(
            json["gateway_process"].get(key).is_some(),
            "gateway_process.{key}"
        );
    }
    assert_eq!(json["schema_version"], 2);
    assert_eq!(json["seed"], 3);
    assert_eq!(json["protocol"], "ap3000");
    assert_eq!(json["gateway_process"]["source"], "proc");
    let report: FleetReport = serde_json::from_value(json).expect("report type round trip");
    assert_eq!(report.piles_connected, 6);
    assert_eq!(report.gateway_online, Some(6));
    assert!(report.heartbeat_rtt.count > 0);
}

fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// Polls an order every 5 ms until `done` holds; the elapsed time, or `None` after 10 s.
async fn probe_wait(
    client: &Client,
    order_no: &str,
    done: impl Fn(OrderStatus) -> bool,
) -> Option<Duration> {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if let Ok(order) = client.order(order_no).await {
            if done(order.status) {
                return Some(t0.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_command_latency_agrees_with_an_independent_probe() {
    let gw = spawn().await;
    let client = Client::new(&gw.api, API_KEY);
    // The probe: three piles of its own (IDs outside the fleet's range), each driven by a plain
    // loop through the API — charge, poll every 5 ms until `charging`, stop — independent of
    // pile-load's recorder, schedule and polling.
    let probe_ids = ["99000000000001", "99000000000002", "99000000000003"];
    let probe_fleet = FleetHandle::start(FleetConfig {
        server: gw.devices.clone(),
        devices: 3,
        protocol: ProtocolChoice::Bkv,
        first_bkv_id: probe_ids[0].into(),
        heartbeat: Duration::from_secs(1),
        frames_kept: 0,
        ..FleetConfig::default()
    })
    .await
    .unwrap();
    let online = async {
        for id in probe_ids {
            while !client.device(id).await.is_ok_and(|d| d.online) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), online)
        .await
        .expect("the probe piles come online");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut probes = Vec::new();
    for probe_id in probe_ids {
        let (client, stop) = (client.clone(), stop.clone());
        probes.push(tokio::spawn(async move {
            let mut samples: Vec<(f64, f64)> = Vec::new();
            let mut port = 0u32;
            // Bounded: the flag ends it after the run; 200 rounds at most.
            for _ in 0..200 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                port = port % 4 + 1;
                let asked = unix_ms();
                let req = ChargeRequest {
                    port_no: port,
                    charge_mode: charge_mode::BY_TIME,
                    duration: 3600,
                    price_per_kwh: 100,
                    queue_if_offline: Some(false),
                    ..ChargeRequest::default()
                };
                let Ok(order) = client.charge(probe_id, &req).await else {
                    continue;
                };
                let charging =
                    probe_wait(&client, &order.order_no, |s| s == OrderStatus::Charging).await;
                if let Some(d) = charging {
                    samples.push((asked, d.as_secs_f64() * 1000.0));
                }
                let stop_req = StopRequest {
                    port_no: port,
                    order_no: Some(order.order_no.clone()),
                };
                if client.stop(probe_id, &stop_req).await.is_ok() {
                    probe_wait(&client, &order.order_no, |s| s != OrderStatus::Charging).await;
                }
                // A charge right after a stop on the same pile waits for it (see the README).
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            samples
        }));
    }

    let mut cfg = small(&gw, 30);
    // The probe's pile is BKV: compare like with like.
    cfg.protocol = ProtocolChoice::Bkv;
    cfg.duration = Duration::from_secs(10);
    cfg.charge_rate = 3.0;
    cfg.hold = Duration::from_millis(300);
    let report = run(cfg).await.expect("run starts");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut samples = Vec::new();
    for p in probes {
        samples.extend(p.await.unwrap());
    }
    probe_fleet.shutdown().await;
    gw.stop().await;
    let text = report.render_text();
    eprintln!("{text}");

    // The windows are stated and consistent: the ramp from 0 to when every pile was ready,
    // steady state from there to the end of the measurements.
    let p = &report.phases;
    let steady = p.steady.expect("the ramp of 30 piles ends within 7 s");
    assert_eq!(p.ramp.start_s, 0.0);
    assert_eq!(steady.start_s, p.ramp.end_s);
    assert!(steady.end_s > steady.start_s + 3.0, "{p:?}");
    assert!(steady.end_s <= report.duration_s + 1e-9, "{p:?}");
    assert!(text.contains("Phases:"), "{text}");
    assert_eq!(
        report.command_latency_ramp.count + report.command_latency_steady.count,
        report.command_latency.count
    );
    assert_eq!(
        report.heartbeat_rtt_ramp.count + report.heartbeat_rtt_steady.count,
        report.heartbeat_rtt.count
    );
    // --first-id kept the probe's piles apart from the fleet's: all are online.
    assert_eq!(report.gateway_online, Some(33), "{text}");

    // The probe's charges asked inside the steady window, against pile-load's steady figure.
    let from = p.start_unix_ms as f64 + steady.start_s * 1000.0;
    let to = p.start_unix_ms as f64 + steady.end_s * 1000.0;
    let mut probe_ms: Vec<f64> = samples
        .iter()
        .filter(|(asked, _)| (from..=to).contains(asked))
        .map(|(_, ms)| *ms)
        .collect();
    probe_ms.sort_by(f64::total_cmp);
    assert!(
        probe_ms.len() >= 3,
        "probe samples in the steady window: {probe_ms:?}"
    );
    let probe_p50 = probe_ms[probe_ms.len() / 2];
    let load = &report.command_latency_steady;
    assert!(load.count >= 3, "{text}");
    // Same path at the same moment, polled every 5 ms by one and every 10 ms by the other. The
    // fleet's charges also meet the gateway's 0.5 s command spacing on piles it just stopped, and
    // everything shares two loaded cores with the gateway: the check is for gross errors (a wrong
    // start point, ramp samples counted as steady, seconds for milliseconds), within a factor of
    // two of the larger median.
    let tolerance = 30.0 + probe_p50.max(load.p50_ms);
    assert!(
        (load.p50_ms - probe_p50).abs() <= tolerance,
        "pile-load steady P50 {} ms against the probe's {probe_p50} ms ({probe_ms:?})",
        load.p50_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_api_the_waves_still_measure_how_fast_piles_come_online() {
    let gw = spawn().await;
    let mut cfg = small(&gw, 16);
    cfg.api = None;
    cfg.protocol = ProtocolChoice::Bkv;
    cfg.duration = Duration::from_secs(2);
    let report = run(cfg).await.expect("run starts");
    gw.stop().await;

    assert_eq!(report.api, None);
    assert_eq!(report.gateway_online, None);
    let w = report.waves.first().expect("one wave");
    assert_eq!((w.connection, w.piles, w.ready), (1, 16, 16), "{w:?}");
    assert!(w.first_dial_s <= w.last_connected_s && w.last_connected_s <= w.last_ready_s);
    assert!(w.connected_per_s > 0.0 && w.ready_per_s > 0.0, "{w:?}");
    assert!(report.phases.steady.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_spread_the_fleet_and_report_it_as_one() {
    let gw = spawn().await;
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
            .args(["--devices", "10", "--protocol", "mixed", "--processes", "2"])
            .args([
                "--ramp",
                "100",
                "--heartbeat",
                "1",
                "--duration",
                "4s",
                "--charge-rate",
                "2",
            ])
            .args(["--seed", "5", "--json"])
            .output()
            .expect("run pile-load")
    })
    .await
    .unwrap();
    gw.stop().await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let report: FleetReport = serde_json::from_slice(&out.stdout).expect("JSON report");
    eprintln!("{}", report.render_text());

    assert_eq!(report.processes, 2);
    assert_eq!(
        report.generator_process.pids.len(),
        3,
        "this process and two children"
    );
    assert_eq!(report.piles_connected, 10);
    assert_eq!(report.gateway_online, Some(10));
    assert_eq!(report.connects, 10);
    assert_eq!(report.heartbeat_rtt_first.count, 10);
    // Commands reached piles in the children, and the children said so.
    let c = &report.commands;
    assert!(c.started >= 3, "{c:?}");
    assert_eq!(c.charging, c.started, "{c:?}");
    assert_eq!(report.command_delivery.count, c.charging);
    // The progress line (stderr is a pipe here: whole lines).
    assert!(err.contains("connected"), "{err}");
}
