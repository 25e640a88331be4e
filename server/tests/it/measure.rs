//! Figures, not pass/fail: `cargo test -p pile-server --test it measure -- --ignored --nocapture`.

use std::time::{Duration, Instant};

use crate::piles::BkvPile;
use crate::*;

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run on demand"]
async fn measure_idle_connection_memory_and_heartbeat_rate() {
    let n: usize = std::env::var("PILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let app = spawn_app().await;
    // Warm up allocator and pools.
    let mut warm = BkvPile::connect(app.device_addr, "82000000000000").await;
    warm.heartbeat().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kb();
    let t0 = Instant::now();
    let mut piles = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("8300{:010}", i);
        let mut p = BkvPile::connect(app.device_addr, &id).await;
        p.heartbeat().await;
        piles.push(p);
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    // Ten heartbeats each, to fill rings and the steady state.
    let t1 = Instant::now();
    for _ in 0..10 {
        for p in piles.iter_mut() {
            let hb = p.heartbeat_frame();
            p.send(hb).await;
        }
        for p in piles.iter_mut() {
            let _ = p.expect().await;
        }
    }
    let hb_secs = t1.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kb();
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    println!(
        "piles={n} connect+first heartbeat: {connect_secs:.2} s; heartbeats: {:.0}/s (sequential client, round trips); RSS +{} KB = {per:.1} KB per connected pile (gateway and test clients in one process, debug build)",
        (n * 10) as f64 / hb_secs,
        after.saturating_sub(before)
    );
    let stats = app.client.stats().await.unwrap();
    assert_eq!(stats.active_sessions as usize, n + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run on demand"]
async fn measure_device_read_latency() {
    let app = spawn_app().await;
    let mut pile = BkvPile::connect(app.device_addr, "82210225000520").await;
    pile.heartbeat().await;
    pile.report_idle(2).await;
    let n = 2000;
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        app.client.device("82210225000520").await.unwrap();
        lat.push(t.elapsed());
    }
    let total = t0.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "GET device ×{n} sequential: {:.0} req/s, p50 {:?}, p99 {:?} (debug build)",
        n as f64 / total,
        lat[n / 2],
        lat[n * 99 / 100]
    );
}
