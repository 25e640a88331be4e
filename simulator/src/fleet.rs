//! Many piles in one process: the socket drivers and the [`FleetHandle`].
//!
//! Each pile has one small driver task that owns its socket and sleeps until
//! the socket is readable, a control call arrives, or the shared timer wheel
//! ([`crate::sched`]) wakes it; no pile owns a timer of its own. Connections
//! are ramped by giving pile `i` its first connect time `i / ramp` seconds
//! after the start, and can be bound to source addresses spread over a range
//! so one machine can open more than 64 k connections to one gateway port.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pile_protocol::Family;
use rand::seq::SliceRandom;
use serde::Serialize;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{ConfigError, FleetConfig, IpRange};
use crate::fault::FaultKind;
use crate::pile::{
    Action, Codec, FrameSnapshot, Pile, PileConfig, PileError, PileSnapshot, SimClock,
};
use crate::sched::Scheduler;
use crate::seed::pile_rng;

/// Builds the codec of a pile's family.
pub type CodecFactory = Arc<dyn Fn(Family) -> Box<dyn Codec> + Send + Sync>;

/// Errors of fleet operations.
#[derive(Debug, Error)]
pub enum FleetError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot resolve server address {0:?}")]
    Resolve(String),
    #[error("no pile {0:?} in this fleet")]
    NoSuchPile(String),
    #[error(transparent)]
    Pile(#[from] PileError),
    #[error("share must be within 0..=1, got {0}")]
    Share(f64),
    #[error("cannot open the EEPROM file {path}: {source}")]
    Eeprom {
        path: String,
        source: std::io::Error,
    },
}

struct Slot {
    pile: Mutex<Pile>,
    notify: Arc<Notify>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Pile> {
        // A panic while holding the lock leaves a usable pile behind.
        self.pile.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Inner {
    slots: Vec<Arc<Slot>>,
    by_id: HashMap<String, usize>,
    seed: u64,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// A running fleet. Cheap to clone; every clone drives the same piles.
#[derive(Clone)]
pub struct FleetHandle {
    inner: Arc<Inner>,
}

/// One pile of a running fleet.
#[derive(Clone)]
pub struct PileHandle {
    slot: Arc<Slot>,
}

/// Connection states across the fleet.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct FleetSummary {
    pub piles: usize,
    pub online: usize,
    pub connecting: usize,
    pub waiting_to_connect: usize,
    pub network_down: usize,
    pub powered_off: usize,
    pub charging_ports: usize,
    pub pending_replay: usize,
}

impl PileHandle {
    fn with<T>(&self, f: impl FnOnce(&mut Pile, Instant) -> T) -> T {
        let out = {
            let mut pile = self.slot.lock();
            f(&mut pile, Instant::now())
        };
        // The driver performs whatever the operation asked for.
        self.slot.notify.notify_one();
        out
    }

    pub fn id(&self) -> String {
        self.slot.lock().id().to_string()
    }

    /// Plugs a charger into port `port_no` (1-based).
    pub fn plug(&self, port_no: u16) -> Result<(), PileError> {
        self.with(|p, now| p.plug(now, port_no))
    }

    /// Pulls the plug of port `port_no`; a running charge ends.
    pub fn unplug(&self, port_no: u16) -> Result<(), PileError> {
        self.with(|p, now| p.unplug(now, port_no))
    }

    /// Pulls the network cable for `secs` (or until restored when `None`).
    pub fn drop_network(&self, secs: Option<u64>) {
        self.with(|p, now| p.drop_network(now, secs))
    }

    pub fn restore_network(&self) {
        self.with(|p, now| p.restore_network(now))
    }

    /// Closes the connection cleanly (the pile dials in again later).
    pub fn close(&self) {
        self.with(|p, now| p.close(now))
    }

    pub fn inject_fault(&self, kind: FaultKind, secs: u64) {
        self.with(|p, now| p.inject_fault(now, kind, secs))
    }

    /// Forgets every running charge without an end record (see [`Pile::lose_charges`]).
    pub fn lose_charges(&self) {
        self.with(|p, now| p.lose_charges(now))
    }

    pub fn snapshot(&self) -> PileSnapshot {
        self.with(|p, now| p.snapshot(now))
    }

    pub fn frames(&self) -> Vec<FrameSnapshot> {
        self.slot.lock().frames()
    }
}

impl FleetHandle {
    /// Starts the fleet with the codecs of the protocol crate.
    pub async fn start(cfg: FleetConfig) -> Result<FleetHandle, FleetError> {
        let factory: CodecFactory = Arc::new(crate::wire::codec_for);
        Self::start_with(cfg, factory).await
    }

    /// Starts the fleet with the given codecs (tests use their own).
    pub async fn start_with(
        cfg: FleetConfig,
        codecs: CodecFactory,
    ) -> Result<FleetHandle, FleetError> {
        cfg.validate()?;
        // `A,B,C`: a pile dials the next address after a failed connect or a drop, as a pile
        // with backup addresses does.
        let mut servers = Vec::new();
        for addr in cfg.server.split(',').map(str::trim) {
            let resolved = tokio::net::lookup_host(addr)
                .await
                .map_err(|_| FleetError::Resolve(addr.to_string()))?
                .next()
                .ok_or_else(|| FleetError::Resolve(addr.to_string()))?;
            servers.push(resolved);
        }
        let servers: Arc<[SocketAddr]> = servers.into();
        let identities = cfg.identities()?;
        let start = Instant::now();
        let eeprom =
            match &cfg.eeprom {
                Some(path) => Some(crate::eeprom::Eeprom::open(path).map_err(|source| {
                    FleetError::Eeprom {
                        path: path.display().to_string(),
                        source,
                    }
                })?),
                None => None,
            };
        let pile_cfg = Arc::new(PileConfig {
            ports: cfg.ports,
            heartbeat: cfg.heartbeat,
            reconnect_delay: cfg.reconnect_delay,
            plug_delay: cfg.plug_delay,
            power_w: cfg.power_w,
            resend_after: cfg.resend_after,
            link_after: cfg.link_after,
            frames_kept: cfg.frames_kept,
            progress_kept: cfg.progress_kept,
            answer_delay: cfg.answer_delay,
            clock: SimClock::system(),
            observer: cfg.observer.clone(),
            eeprom: eeprom.clone(),
        });
        let shards = match cfg.scheduler_shards {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let sched = Scheduler::start(shards);
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut slots = Vec::with_capacity(identities.len());
        let mut by_id = HashMap::with_capacity(identities.len());
        for ident in identities {
            let ramp = Duration::from_secs_f64(f64::from(ident.index) / cfg.ramp_per_sec);
            let mut codec = codecs(ident.family);
            codec.set_firmware(cfg.firmware.pick(ident.family, cfg.seed, ident.index));
            let mut pile = Pile::new(
                ident.id.clone(),
                ident.index,
                ident.family,
                Arc::clone(&pile_cfg),
                pile_rng(cfg.seed, u64::from(ident.index)),
                codec,
                start + ramp,
            );
            if let Some(e) = &eeprom {
                pile.restore(e.restore(&ident.id));
            }
            let slot = Arc::new(Slot {
                pile: Mutex::new(pile),
                notify: Arc::new(Notify::new()),
            });
            let span = tracing::debug_span!("pile", id = %ident.id, family = %ident.family);
            by_id.insert(ident.id, slots.len());
            let bind = cfg
                .source_ips
                .map(|r: IpRange| r.pick(u64::from(ident.index)));
            tracker.spawn(
                drive(
                    Arc::clone(&slot),
                    sched.clone(),
                    u64::from(ident.index),
                    Arc::clone(&servers),
                    bind,
                    cancel.clone(),
                )
                .instrument(span),
            );
            slots.push(slot);
        }
        tracker.close();
        Ok(FleetHandle {
            inner: Arc::new(Inner {
                slots,
                by_id,
                seed: cfg.seed,
                cancel,
                tracker,
            }),
        })
    }

    /// The run seed every pile's randomness derives from.
    pub fn seed(&self) -> u64 {
        self.inner.seed
    }

    pub fn len(&self) -> usize {
        self.inner.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.slots.is_empty()
    }

    /// The pile with this device ID.
    pub fn pile(&self, id: &str) -> Option<PileHandle> {
        let i = *self.inner.by_id.get(id)?;
        self.inner.slots.get(i).map(|slot| PileHandle {
            slot: Arc::clone(slot),
        })
    }

    fn get(&self, id: &str) -> Result<PileHandle, FleetError> {
        self.pile(id)
            .ok_or_else(|| FleetError::NoSuchPile(id.to_string()))
    }

    /// Every pile, in index order.
    pub fn piles(&self) -> impl Iterator<Item = PileHandle> + '_ {
        self.inner.slots.iter().map(|slot| PileHandle {
            slot: Arc::clone(slot),
        })
    }

    pub fn plug(&self, id: &str, port_no: u16) -> Result<(), FleetError> {
        Ok(self.get(id)?.plug(port_no)?)
    }

    pub fn unplug(&self, id: &str, port_no: u16) -> Result<(), FleetError> {
        Ok(self.get(id)?.unplug(port_no)?)
    }

    pub fn drop_network(&self, id: &str, secs: Option<u64>) -> Result<(), FleetError> {
        self.get(id)?.drop_network(secs);
        Ok(())
    }

    pub fn restore_network(&self, id: &str) -> Result<(), FleetError> {
        self.get(id)?.restore_network();
        Ok(())
    }

    pub fn close(&self, id: &str) -> Result<(), FleetError> {
        self.get(id)?.close();
        Ok(())
    }

    pub fn inject_fault(&self, id: &str, kind: FaultKind, secs: u64) -> Result<(), FleetError> {
        self.get(id)?.inject_fault(kind, secs);
        Ok(())
    }

    /// Injects a fault into a share (0..=1) of the fleet, chosen from the run
    /// seed; returns the IDs of the piles hit.
    pub fn fleet_faults(
        &self,
        share: f64,
        kind: FaultKind,
        secs: u64,
    ) -> Result<Vec<String>, FleetError> {
        if !(0.0..=1.0).contains(&share) {
            return Err(FleetError::Share(share));
        }
        let n = self.len();
        let count = ((n as f64) * share).round() as usize;
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut pile_rng(self.inner.seed, u64::MAX));
        let mut hit = Vec::with_capacity(count);
        for i in order.into_iter().take(count) {
            if let Some(slot) = self.inner.slots.get(i) {
                let pile = PileHandle {
                    slot: Arc::clone(slot),
                };
                pile.inject_fault(kind, secs);
                hit.push(pile.id());
            }
        }
        Ok(hit)
    }

    pub fn snapshot(&self) -> Vec<PileSnapshot> {
        self.piles().map(|p| p.snapshot()).collect()
    }

    pub fn pile_snapshot(&self, id: &str) -> Result<PileSnapshot, FleetError> {
        Ok(self.get(id)?.snapshot())
    }

    pub fn frames(&self, id: &str) -> Result<Vec<FrameSnapshot>, FleetError> {
        Ok(self.get(id)?.frames())
    }

    /// Counts of piles per connection state (cheap enough for 100 k piles).
    pub fn summary(&self) -> FleetSummary {
        let mut s = FleetSummary {
            piles: self.len(),
            ..FleetSummary::default()
        };
        for slot in &self.inner.slots {
            let pile = slot.lock();
            let st = &pile.state;
            match st.link {
                crate::pile::Link::Online { .. } => s.online += 1,
                crate::pile::Link::Connecting => s.connecting += 1,
                crate::pile::Link::Idle { .. } => s.waiting_to_connect += 1,
                crate::pile::Link::NetworkDown { .. } => s.network_down += 1,
                crate::pile::Link::PoweredOff { .. } => s.powered_off += 1,
            }
            s.charging_ports += st.ports.iter().filter(|p| p.charge.is_some()).count();
            s.pending_replay += st.replay.len();
        }
        s
    }

    /// Stops every pile (connections are closed cleanly) and waits for them.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tracker.wait().await;
    }
}

/// A pile's server addresses and the one it dials now: the first, then the next one after
/// each failed connect or drop, round the list.
struct Servers {
    list: Arc<[SocketAddr]>,
    at: std::sync::atomic::AtomicUsize,
}

impl Servers {
    fn current(&self) -> SocketAddr {
        self.list[self.at.load(std::sync::atomic::Ordering::Relaxed) % self.list.len()]
    }

    fn next(&self) {
        let at = self.at.load(std::sync::atomic::Ordering::Relaxed);
        self.at.store(
            (at + 1) % self.list.len(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

async fn connect(server: SocketAddr, bind: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let socket = match server {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let (Some(ip), SocketAddr::V4(_)) = (bind, server) {
        socket.bind(SocketAddr::from((ip, 0)))?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(server))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// [`connect`], reporting the outcome to the fleet's observer if it has one.
async fn timed_connect(
    slot: &Slot,
    server: SocketAddr,
    bind: Option<Ipv4Addr>,
) -> io::Result<TcpStream> {
    let (observer, index, connects) = {
        let pile = slot.lock();
        let st = &pile.state;
        (st.cfg.observer.clone(), st.index, st.stats.connects)
    };
    let Some(observer) = observer else {
        return connect(server, bind).await;
    };
    let started = std::time::Instant::now();
    let result = connect(server, bind).await;
    match &result {
        Ok(_) => observer.0.connected(index, started.elapsed(), connects + 1),
        Err(_) => observer.0.connect_failed(index, started.elapsed()),
    }
    result
}

/// Drops a socket with a reset instead of a FIN: what a device whose TCP
/// state vanished does once the peer talks to it again.
fn abort(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn readable(conn: &Option<TcpStream>) -> io::Result<()> {
    match conn {
        Some(c) => c.readable().await,
        None => std::future::pending().await,
    }
}

async fn perform(
    slot: &Slot,
    actions: Vec<Action>,
    conn: &mut Option<TcpStream>,
    zombie: &mut Option<TcpStream>,
    servers: &Servers,
    bind: Option<Ipv4Addr>,
) {
    let mut queue = std::collections::VecDeque::from(actions);
    while let Some(action) = queue.pop_front() {
        match action {
            Action::Connect => match timed_connect(slot, servers.current(), bind).await {
                Ok(stream) => {
                    if let Some(old) = zombie.take() {
                        abort(old);
                    }
                    if let Some(old) = conn.replace(stream) {
                        abort(old);
                    }
                    tracing::debug!("connected");
                    let more = slot.lock().on_connected(Instant::now());
                    queue.extend(more);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "connect failed");
                    servers.next();
                    slot.lock().on_connect_failed(Instant::now());
                }
            },
            Action::Write(bytes) => {
                if let Some(c) = conn.as_mut() {
                    if let Err(e) = c.write_all(&bytes).await {
                        tracing::debug!(error = %e, "write failed");
                        servers.next();
                        *conn = None;
                        slot.lock().on_disconnected(Instant::now());
                    }
                }
            }
            Action::WriteSplit(bytes) => {
                for b in bytes.iter() {
                    let Some(c) = conn.as_mut() else { break };
                    if c.write_all(&[*b]).await.is_err() {
                        servers.next();
                        *conn = None;
                        slot.lock().on_disconnected(Instant::now());
                        break;
                    }
                    // Give the segment a chance to leave on its own.
                    tokio::task::yield_now().await;
                }
            }
            Action::Abandon => {
                if let Some(c) = conn.take() {
                    if let Some(old) = zombie.replace(c) {
                        abort(old);
                    }
                }
            }
            Action::Close => {
                if let Some(mut c) = conn.take() {
                    let _ = c.shutdown().await;
                }
            }
        }
    }
}

async fn drive(
    slot: Arc<Slot>,
    sched: Scheduler,
    key: u64,
    servers: Arc<[SocketAddr]>,
    bind: Option<Ipv4Addr>,
    cancel: CancellationToken,
) {
    let servers = Servers {
        list: servers,
        at: std::sync::atomic::AtomicUsize::new(0),
    };
    let mut conn: Option<TcpStream> = None;
    let mut zombie: Option<TcpStream> = None;
    let mut wake_registered: Option<Instant> = None;
    let mut actions = Vec::new();
    loop {
        let now = Instant::now();
        let polled = slot.lock().poll(now);
        actions.extend(polled);
        if !actions.is_empty() {
            perform(
                &slot,
                std::mem::take(&mut actions),
                &mut conn,
                &mut zombie,
                &servers,
                bind,
            )
            .await;
        }
        let now = Instant::now();
        let (deadline, wants_read) = {
            let pile = slot.lock();
            (pile.next_deadline(now), pile.wants_read(now))
        };
        if let Some(d) = deadline {
            if wake_registered.is_none_or(|r| d < r || r <= now) {
                sched.wake_at(key, d, &slot.notify);
                wake_registered = Some(d);
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = slot.notify.notified() => {}
            r = readable(&conn), if wants_read && conn.is_some() => {
                let mut buf = [0u8; 2048];
                let read = match (r, conn.as_ref()) {
                    (Ok(()), Some(c)) => c.try_read(&mut buf),
                    (Err(e), _) => Err(e),
                    (Ok(()), None) => continue,
                };
                match read {
                    Ok(0) => {
                        tracing::debug!("closed by the server");
                        servers.next();
                        conn = None;
                        slot.lock().on_disconnected(Instant::now());
                    }
                    Ok(n) => {
                        let data = buf.get(..n).unwrap_or_default();
                        actions = slot.lock().on_bytes(Instant::now(), data);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        servers.next();
                        conn = None;
                        slot.lock().on_disconnected(Instant::now());
                    }
                }
            }
        }
    }
    if let Some(mut c) = conn.take() {
        let _ = c.shutdown().await;
    }
    drop(zombie);
}

/// Raises the soft open-file limit towards `want` (and the hard limit too
/// when the process may). Returns the soft limit in force afterwards.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
pub fn raise_fd_limit(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let want = want as libc::rlim_t;
        if lim.rlim_cur >= want {
            return lim.rlim_cur as u64;
        }
        if lim.rlim_max < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return want as u64;
            }
        }
        lim.rlim_cur = want.min(lim.rlim_max);
        let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        let _ = libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur as u64
    }
}
