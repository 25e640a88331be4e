//! A minimal stand-in gateway for measuring the simulator at scale: it
//! accepts both families on one port, answers heartbeats, registrations and
//! status reports, acknowledges end reports, and prints counters every 10 s.
//!
//! `cargo run --release -p pile-sim --example sink -- 127.0.0.1:7065 [CHARGE_SHARE]`
//!
//! With a charge share (0..=1), that share of the piles is told to charge
//! port 1 for ten hours after its first heartbeat, so progress reports flow.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pile_protocol::{ap3000, bkv, sniff, Family, Item, Sniff};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    open: AtomicU64,
    frames: AtomicU64,
    diagnostics: AtomicU64,
}

fn raise_fd_limit() {
    // SAFETY: plain rlimit calls on a local struct.
    unsafe {
        let lim = libc::rlimit {
            rlim_cur: 1_000_000,
            rlim_max: 1_000_000,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            let mut cur = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur);
            cur.rlim_cur = cur.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &cur);
        }
    }
}

/// Whether this connection's pile should charge (a hash of its ID against the share).
fn chosen(id: &str, share: f64) -> bool {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (h % 10_000) as f64 / 10_000.0 < share
}

fn start_bkv(f: &bkv::Frame) -> Bytes {
    bkv::Frame::start_by_time(f.gateway_id, 1, 1, 0, 600).to_bytes()
}

fn start_ap(f: &ap3000::Frame) -> Bytes {
    let start = ap3000::Frame::start_by_seconds(
        f.physical_id,
        0x7001,
        0,
        36_000,
        ap3000::OrderNo([7; 16]),
        0,
    );
    let mut out = BytesMut::new();
    start.encode(&mut out);
    out.freeze()
}

fn answer_bkv(f: &bkv::Frame) -> Option<Bytes> {
    match &f.message {
        bkv::Message::Heartbeat(_) => {
            let now = bkv::BcdTime {
                year: 2026,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0,
            };
            Some(bkv::Frame::heartbeat_reply(f.gateway_id, f.seq, now).to_bytes())
        }
        bkv::Message::StatusReport(_) => Some(bkv::Frame::status_report_ack(f, true).to_bytes()),
        bkv::Message::ChargeEnd(e) => {
            Some(bkv::Frame::charge_end_ack(f.gateway_id, f.seq, e.socket, e.hole, true).to_bytes())
        }
        bkv::Message::ChargeEndReport(e) => {
            Some(bkv::Frame::charge_end_report_ack(f, e.socket(), e.hole(), true).to_bytes())
        }
        _ => None,
    }
}

fn answer_ap(f: &ap3000::Frame) -> Option<Bytes> {
    let frame = match &f.message {
        ap3000::Message::Register(_) => ap3000::Frame::ack(f.physical_id, f.message_id, 0x20),
        ap3000::Message::Heartbeat(_) => ap3000::Frame::ack(f.physical_id, f.message_id, 0x21),
        ap3000::Message::Settlement(_) => ap3000::Frame::ack(f.physical_id, f.message_id, 0x03),
        ap3000::Message::TimeRequest => {
            ap3000::Frame::time_reply(f.physical_id, f.message_id, 1_790_000_000)
        }
        _ => return None,
    };
    let mut out = BytesMut::new();
    frame.encode(&mut out);
    Some(out.freeze())
}

async fn serve(mut stream: TcpStream, c: Arc<Counters>, share: f64) {
    let mut started = false;
    let mut buf = BytesMut::with_capacity(512);
    let mut family = None;
    let mut bkv_dec = bkv::Decoder::new();
    let mut ap_dec = ap3000::Decoder::new(ap3000::Direction::FromDevice);
    let mut out = BytesMut::new();
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if family.is_none() {
            match sniff(&buf) {
                Sniff::NeedMore => continue,
                Sniff::Family(f) => family = Some(f),
                Sniff::Unknown => break,
            }
        }
        loop {
            let reply = match family {
                Some(Family::Bkv) => match bkv_dec.decode(&mut buf) {
                    None => break,
                    Some(Item::Frame { frame, .. }) => {
                        c.frames.fetch_add(1, Relaxed);
                        if !started && matches!(frame.message, bkv::Message::Heartbeat(_)) {
                            started = true;
                            if chosen(&frame.gateway_id.to_string(), share) {
                                out.extend_from_slice(&start_bkv(&frame));
                            }
                        }
                        answer_bkv(&frame)
                    }
                    Some(_) => {
                        c.diagnostics.fetch_add(1, Relaxed);
                        None
                    }
                },
                Some(Family::Ap3000) => match ap_dec.decode(&mut buf) {
                    None => break,
                    Some(Item::Frame { frame, .. }) => {
                        c.frames.fetch_add(1, Relaxed);
                        if !started && matches!(frame.message, ap3000::Message::Heartbeat(_)) {
                            started = true;
                            if chosen(&frame.physical_id.to_string(), share) {
                                out.extend_from_slice(&start_ap(&frame));
                            }
                        }
                        answer_ap(&frame)
                    }
                    Some(Item::Diagnostic(_)) => {
                        c.diagnostics.fetch_add(1, Relaxed);
                        None
                    }
                    Some(_) => None,
                },
                None => break,
            };
            if let Some(r) = reply {
                out.extend_from_slice(&r);
            }
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            break;
        }
        out.clear();
    }
    c.open.fetch_sub(1, Relaxed);
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    raise_fd_limit();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7065".into());
    let share: f64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    // The gateway's backlog (pile_server::LISTEN_BACKLOG), so both are measured alike.
    let sa: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let socket = if sa.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(sa)?;
    let listener: TcpListener = socket.listen(4096)?;
    println!("sink: listening on {}", listener.local_addr()?);
    let c = Arc::new(Counters::default());
    let report = Arc::clone(&c);
    tokio::spawn(async move {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let frames = report.frames.load(Relaxed);
            println!(
                "sink: open {} accepted {} frames/s {:.0} diagnostics {}",
                report.open.load(Relaxed),
                report.connections.load(Relaxed),
                (frames - last) as f64 / 10.0,
                report.diagnostics.load(Relaxed)
            );
            last = frames;
        }
    });
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                c.connections.fetch_add(1, Relaxed);
                c.open.fetch_add(1, Relaxed);
                tokio::spawn(serve(stream, Arc::clone(&c), share));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
