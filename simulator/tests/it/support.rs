//! A small fake gateway built from the protocol crate: it answers
//! heartbeats and registrations, acknowledges end reports when told to, and
//! records every item it decodes, per connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pile_protocol::{ap3000, bkv, DecodeError, Family, Item};
use pile_sim::config::{FleetConfig, ProtocolChoice};
use pile_sim::fleet::FleetHandle;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What the fake gateway decoded.
#[derive(Debug, Clone)]
pub enum Seen {
    Bkv(bkv::Frame),
    Ap(ap3000::Frame),
    Iccid(String),
    KeepAlive,
    Diag(DecodeError),
}

#[derive(Debug, Clone)]
pub struct Event {
    pub conn: usize,
    pub at: Instant,
    pub seen: Seen,
    /// Bytes of the read that completed this item, and which read it was.
    pub read_len: usize,
    pub read_no: usize,
}

#[derive(Default)]
struct Shared {
    events: Vec<Event>,
    writers: Vec<Arc<tokio::sync::Mutex<OwnedWriteHalf>>>,
    /// Which connections are closed by the peer.
    closed: Vec<usize>,
}

/// Behaviour switches of the fake gateway.
pub struct Policy {
    pub ack_ends: std::sync::atomic::AtomicBool,
    /// Registrations to leave unanswered before answering (AP3000).
    pub ignore_registers: std::sync::atomic::AtomicUsize,
}

#[derive(Clone)]
pub struct FakeGateway {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    notify: Arc<Notify>,
    pub policy: Arc<Policy>,
}

impl FakeGateway {
    pub async fn start(family: Family) -> FakeGateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw = FakeGateway {
            addr: listener.local_addr().unwrap(),
            shared: Arc::default(),
            notify: Arc::new(Notify::new()),
            policy: Arc::new(Policy {
                ack_ends: true.into(),
                ignore_registers: 0.into(),
            }),
        };
        tokio::spawn(pace_virtual_time());
        let g = gw.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (read, write) = stream.into_split();
                let conn = {
                    let mut s = g.shared.lock().unwrap();
                    s.writers.push(Arc::new(tokio::sync::Mutex::new(write)));
                    s.writers.len() - 1
                };
                tokio::spawn(g.clone().serve(family, conn, read));
            }
        });
        gw
    }

    async fn serve(self, family: Family, conn: usize, mut read: tokio::net::tcp::OwnedReadHalf) {
        let mut buf = BytesMut::new();
        let mut bkv_dec = bkv::Decoder::new();
        let mut ap_dec = ap3000::Decoder::new(ap3000::Direction::FromDevice);
        let mut read_no = 0;
        loop {
            read_no += 1;
            let mut chunk = [0u8; 4096];
            let n = match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            loop {
                let seen = match family {
                    Family::Bkv => match bkv_dec.decode(&mut buf) {
                        None => break,
                        Some(Item::Frame { frame, .. }) => Seen::Bkv(frame),
                        Some(Item::Diagnostic(d)) => Seen::Diag(d.error),
                        Some(Item::Iccid(s)) => Seen::Iccid(s),
                        Some(Item::KeepAlive) => Seen::KeepAlive,
                    },
                    Family::Ap3000 => match ap_dec.decode(&mut buf) {
                        None => break,
                        Some(Item::Frame { frame, .. }) => Seen::Ap(frame),
                        Some(Item::Diagnostic(d)) => Seen::Diag(d.error),
                        Some(Item::Iccid(s)) => Seen::Iccid(s),
                        Some(Item::KeepAlive) => Seen::KeepAlive,
                    },
                };
                if let Some(reply) = self.auto_reply(&seen) {
                    self.send_on(conn, reply).await;
                }
                self.shared.lock().unwrap().events.push(Event {
                    conn,
                    at: Instant::now(),
                    seen,
                    read_len: n,
                    read_no,
                });
                self.notify.notify_waiters();
            }
        }
        self.shared.lock().unwrap().closed.push(conn);
        self.notify.notify_waiters();
    }

    fn auto_reply(&self, seen: &Seen) -> Option<Bytes> {
        use std::sync::atomic::Ordering::SeqCst;
        match seen {
            Seen::Bkv(f) => match &f.message {
                bkv::Message::Heartbeat(_) => {
                    let now = bkv::BcdTime {
                        year: 2026,
                        month: 11,
                        day: 24,
                        hour: 20,
                        minute: 0,
                        second: 0,
                    };
                    Some(bkv::Frame::heartbeat_reply(f.gateway_id, f.seq, now).to_bytes())
                }
                bkv::Message::StatusReport(_) => {
                    Some(bkv::Frame::status_report_ack(f, true).to_bytes())
                }
                bkv::Message::ChargeEnd(e) if self.policy.ack_ends.load(SeqCst) => Some(
                    bkv::Frame::charge_end_ack(f.gateway_id, f.seq, e.socket, e.hole, true)
                        .to_bytes(),
                ),
                bkv::Message::ChargeEndReport(e) if self.policy.ack_ends.load(SeqCst) => Some(
                    bkv::Frame::charge_end_report_ack(f, e.socket(), e.hole(), true).to_bytes(),
                ),
                bkv::Message::PowerChargeEnd(e) if self.policy.ack_ends.load(SeqCst) => Some(
                    bkv::Frame::power_charge_end_ack(f.gateway_id, f.seq, e.socket, e.hole, true)
                        .to_bytes(),
                ),
                _ => None,
            },
            Seen::Ap(f) => {
                let ack = |cmd| {
                    Some(bytes_of(&ap3000::Frame::ack(
                        f.physical_id,
                        f.message_id,
                        cmd,
                    )))
                };
                match &f.message {
                    ap3000::Message::Register(_) => {
                        let left = self.policy.ignore_registers.load(SeqCst);
                        if left > 0 {
                            self.policy.ignore_registers.store(left - 1, SeqCst);
                            None
                        } else {
                            ack(0x20)
                        }
                    }
                    ap3000::Message::Heartbeat(_) => ack(0x21),
                    ap3000::Message::TimeRequest => Some(bytes_of(&ap3000::Frame::time_reply(
                        f.physical_id,
                        f.message_id,
                        1_790_000_000,
                    ))),
                    ap3000::Message::Settlement(_) if self.policy.ack_ends.load(SeqCst) => {
                        ack(0x03)
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    async fn send_on(&self, conn: usize, bytes: Bytes) {
        let writer = self.shared.lock().unwrap().writers.get(conn).cloned();
        if let Some(w) = writer {
            let _ = w.lock().await.write_all(&bytes).await;
        }
    }

    /// Sends bytes on the newest connection.
    pub async fn send(&self, bytes: Bytes) {
        let conn = self.connections() - 1;
        self.send_on(conn, bytes).await;
    }

    pub fn connections(&self) -> usize {
        self.shared.lock().unwrap().writers.len()
    }

    pub fn events(&self) -> Vec<Event> {
        self.shared.lock().unwrap().events.clone()
    }

    pub fn is_closed(&self, conn: usize) -> bool {
        self.shared.lock().unwrap().closed.contains(&conn)
    }

    /// Waits until an event after index `from` matches; returns its index.
    pub async fn wait_for(
        &self,
        what: &str,
        from: usize,
        secs: u64,
        pred: impl Fn(&Event) -> bool,
    ) -> (usize, Event) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let notified = self.notify.notified();
            {
                let s = self.shared.lock().unwrap();
                if let Some((i, e)) = s
                    .events
                    .iter()
                    .enumerate()
                    .skip(from)
                    .find(|(_, e)| pred(e))
                {
                    return (i, e.clone());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "timed out after {secs} s waiting for {what}; saw {:#?}",
                    self.events()
                        .iter()
                        .skip(from)
                        .map(|e| &e.seen)
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    /// Asserts nothing matching arrives within `secs`.
    pub async fn assert_none(
        &self,
        what: &str,
        from: usize,
        secs: u64,
        pred: impl Fn(&Event) -> bool,
    ) {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let s = self.shared.lock().unwrap();
        if let Some(e) = s.events.iter().skip(from).find(|e| pred(e)) {
            panic!("unexpected {what}: {e:#?}");
        }
    }

    pub fn len(&self) -> usize {
        self.shared.lock().unwrap().events.len()
    }
}

/// Under `tokio::time::pause()` the clock jumps to the next timer whenever
/// the runtime is idle, which can be before loopback bytes in flight are
/// visible to epoll. This task lets virtual time advance only in 10 ms steps,
/// each taking at least 200 µs of real time, so bytes written land before
/// the clock has moved on by more than a step. Outside paused time it is a
/// harmless 10 ms ticker.
async fn pace_virtual_time() {
    loop {
        std::thread::sleep(Duration::from_micros(200));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn bytes_of(f: &ap3000::Frame) -> Bytes {
    let mut out = BytesMut::new();
    f.encode(&mut out);
    out.freeze()
}

/// A one-pile fleet against the fake gateway, with short test timings.
pub async fn one_pile(
    gw: &FakeGateway,
    family: Family,
    tune: impl FnOnce(&mut FleetConfig),
) -> FleetHandle {
    let mut cfg = FleetConfig {
        server: gw.addr.to_string(),
        devices: 1,
        protocol: match family {
            Family::Bkv => ProtocolChoice::Bkv,
            Family::Ap3000 => ProtocolChoice::Ap3000,
        },
        seed: 42,
        ..FleetConfig::default()
    };
    tune(&mut cfg);
    FleetHandle::start(cfg).await.unwrap()
}
