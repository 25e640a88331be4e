//! Heartbeat cost, for `valgrind --tool=callgrind` (instruction counts are repeatable on this
//! machine, seconds are not): one pile's heartbeats through the **real session**
//! (`device::session::run`: the socket shell, the sans-IO core, the frame ring, metrics with the
//! Prometheus recorder the gateway installs, the service on an in-memory SQLite store and its
//! batched writer) over an in-memory duplex stream, beside a **bare** session that only frames
//! the bytes and writes a fixed answer — the same client drives both in one process.
//!
//! `cargo build --release -p pile-server --example heartbeat_cost`, then per family and target
//! two runs, N = 200 and N = 5,200:
//! `valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/heartbeat_cost bkv gateway 5200`
//! The cost of one heartbeat is (I(5200) − I(200)) / 5000, which cancels start-up and shutdown
//! (the writer flushes only at shutdown, so timer-driven work does not vary with N);
//! `server/bench-heartbeat.sh` runs all eight and prints the figures.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pile_protocol::{ap3000, bkv, Item};
use pile_server::clock::Clock;
use pile_server::core::CoreConfig;
use pile_server::service::{Service, Timings};
use pile_server::store::Store;
use pile_server::writer::Writer;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

fn heartbeat(family: &str, n: u16) -> Vec<u8> {
    match family {
        "bkv" => {
            // Device frames carry sequence 0 (vendor guide); `n` is unused for BKV.
            let _ = n;
            bkv::Frame::heartbeat(
                "82210225000520".parse().expect("id"),
                "89860000000000000001",
                "cV.1r46",
                20,
            )
            .to_vec()
        }
        _ => {
            let ports = [ap3000::PortStatus(0), ap3000::PortStatus(0)];
            ap3000::Frame::heartbeat(
                "04AB373B".parse().expect("id"),
                n,
                ap3000::Heartbeat::new(2200, &ports, 25, 90).expect("heartbeat"),
            )
            .to_vec()
        }
    }
}

/// The bare target: frames the bytes with the family's streaming decoder and answers each
/// frame with a fixed acknowledgement — what any server must do at the least.
async fn bare(mut s: DuplexStream, family: String) {
    let mut buf = BytesMut::with_capacity(4096);
    let answer = heartbeat(&family, 0);
    let mut bkv_dec = bkv::Decoder::new();
    let mut ap_dec = ap3000::Decoder::new(ap3000::Direction::FromDevice);
    loop {
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            let framed = if family == "bkv" {
                match bkv_dec.decode(&mut buf) {
                    Some(Item::Frame { .. }) => true,
                    Some(_) => continue,
                    None => false,
                }
            } else {
                match ap_dec.decode(&mut buf) {
                    Some(Item::Frame { .. }) => true,
                    Some(_) => continue,
                    None => false,
                }
            };
            if !framed {
                break;
            }
            if s.write_all(&answer).await.is_err() {
                return;
            }
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let family = args.next().unwrap_or_else(|| "bkv".into());
    let target = args.next().unwrap_or_else(|| "gateway".into());
    let n: u16 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    // Timer-driven work would vary with the run's length (valgrind makes it slow): the writer
    // flushes once, at shutdown, for any N — so the difference of two runs is the heartbeats
    // alone (the batched liveness write, once per device per 30 s, is not in it).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let answered = rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        if target == "gateway" {
            let _prometheus = pile_server::metrics::install();
            let store = Store::connect("sqlite::memory:", 1).await.expect("store");
            let (writer, task) =
                Writer::spawn(store.clone(), Duration::from_secs(3600), shutdown.clone());
            tasks.push(task);
            let service = Arc::new(Service::new(
                store,
                writer,
                Timings::default(),
                Clock::system(),
            ));
            let peer = "127.0.0.1:9".parse().expect("addr");
            let cfg = CoreConfig::default();
            let stop = shutdown.clone();
            let session = pile_server::device::session::run(server, peer, 1, service, cfg, stop);
            // What each connected pile's task holds for as long as it is connected.
            eprintln!("session future: {} B", std::mem::size_of_val(&session));
            tasks.push(tokio::spawn(session));
        } else {
            tasks.push(tokio::spawn(bare(server, family.clone())));
        }
        // The first heartbeat registers the pile (a database write); then `n` more, one at a
        // time, each waiting for its answer as a pile does.
        let mut rbuf = vec![0u8; 4096];
        let mut answered = 0u32;
        for i in 0..=n {
            client
                .write_all(&heartbeat(&family, i.wrapping_add(1)))
                .await
                .expect("write");
            let got = tokio::time::timeout(Duration::from_secs(10), client.read(&mut rbuf))
                .await
                .expect("an answer within 10 s")
                .expect("read");
            assert!(got > 0, "the target closed the connection");
            answered += 1;
        }
        shutdown.cancel();
        drop(client);
        for t in tasks {
            let _ = t.await;
        }
        answered
    });
    eprintln!("{family} {target}: {answered} heartbeats answered");
}
