//! One device connection: sniffing, decoding, identification, answering, command dispatch
//! with pacing, reply matching and resends, offline detection, the frame ring.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pile_api::{Direction, PortStatus};
use pile_protocol::{Family, Item, Sniff};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::pacing::{retry_step, Pacer, RetryStep};
use super::Limits;
use crate::gateway::{FrameNote, Outgoing, PortCommand, SessionHandle};
use crate::metrics as m;
use crate::service::{DeviceHello, PortReport, Service};

/// Commands a session holds in its mailbox.
const MAILBOX: usize = 64;
/// Writes that take longer than this mean a dead peer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("write timed out")]
    WriteTimeout,
}

/// The family-specific decoder of a connection.
pub(super) enum Proto {
    Ap3000(pile_protocol::ap3000::Decoder),
    Bkv(pile_protocol::bkv::Decoder),
}

/// One decoded item of either family.
enum Decoded {
    Ap3000(Item<pile_protocol::ap3000::Frame>),
    Bkv(Item<pile_protocol::bkv::Frame>),
}

/// A command on the wire, waiting for its reply.
#[derive(Debug, Clone)]
pub(super) struct Inflight {
    pub command_id: i64,
    pub command: PortCommand,
    /// AP3000 message ID or BKV sequence.
    pub key: u32,
    pub bytes: Bytes,
    pub summary: String,
    pub sent_at: Instant,
    pub attempts: u8,
}

/// A stop the gateway itself makes at an exact second (BKV targets that are not whole minutes).
#[derive(Debug, Clone)]
pub(super) struct StopTimer {
    pub at: Instant,
    pub order_no: String,
    pub port_no: u32,
}

pub(super) struct Session {
    pub service: Arc<Service>,
    pub limits: Limits,
    pub conn_id: u64,
    pub peer: SocketAddr,
    pub proto: Option<Proto>,
    pub device_id: Option<Arc<str>>,
    /// AP3000 ICCID preamble, kept for the hello.
    pub iccid: Option<String>,
    /// Frames to write.
    pub out: Vec<Bytes>,
    pub pacer: Pacer,
    pub queue: VecDeque<Outgoing>,
    pub inflight: Vec<Inflight>,
    /// Command IDs already queued or sent on this connection (a command can arrive both from
    /// the mailbox and from the database on reconnect).
    pub seen_commands: HashSet<i64>,
    pub next_seq: u32,
    pub last_frame: Instant,
    pub identified: bool,
    /// When this connection identified itself (gateway clock, ms).
    pub connected_at_ms: i64,
    /// Last reported state per port, to write only changes.
    pub ports: HashMap<u32, (PortStatus, i64)>,
    pub port_count: i64,
    pub timers: Vec<StopTimer>,
    /// Orders the gateway already stopped on its own.
    pub gateway_stops: HashSet<String>,
    pub mailbox: Option<mpsc::Receiver<Box<Outgoing>>>,
    pub close: CancellationToken,
}

async fn recv(rx: &mut Option<mpsc::Receiver<Box<Outgoing>>>) -> Option<Outgoing> {
    match rx {
        Some(rx) => rx.recv().await.map(|b| *b),
        None => std::future::pending().await,
    }
}

pub async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    conn_id: u64,
    service: Arc<Service>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let (mut reader, mut writer) = stream.into_split();
    let mut s = Session {
        pacer: Pacer::new(limits.command_spacing),
        service,
        limits,
        conn_id,
        peer,
        proto: None,
        device_id: None,
        iccid: None,
        out: Vec::new(),
        queue: VecDeque::new(),
        inflight: Vec::new(),
        seen_commands: HashSet::new(),
        next_seq: 0,
        last_frame: Instant::now(),
        identified: false,
        connected_at_ms: 0,
        ports: HashMap::new(),
        port_count: 0,
        timers: Vec::new(),
        gateway_stops: HashSet::new(),
        mailbox: None,
        close: CancellationToken::new(),
    };
    let started = Instant::now();
    let mut buf = BytesMut::with_capacity(256);
    let mut shutting_down = false;
    let reason: &str = loop {
        let deadline = s.next_wake(started);
        tokio::select! {
            r = reader.read_buf(&mut buf) => match r {
                Ok(0) => break "closed by peer",
                Err(_) => break "read error",
                Ok(_) => s.on_bytes(&mut buf).await,
            },
            cmd = recv(&mut s.mailbox) => {
                if let Some(cmd) = cmd {
                    s.enqueue(cmd);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
            _ = s.close.cancelled() => break "replaced by a new connection",
            _ = shutdown.cancelled() => {
                shutting_down = true;
                break "gateway shutting down";
            }
        }
        let now = Instant::now();
        if !s.identified && now >= started + s.limits.first_frame_timeout {
            metrics::counter!(m::TCP_CONNECTIONS_REJECTED, "reason" => "no_valid_frame")
                .increment(1);
            break "no valid frame in time";
        }
        if s.identified && now >= s.last_frame + s.limits.offline_after {
            break "offline: no frame within the threshold";
        }
        s.on_tick(now).await;
        if let Err(e) = s.flush(&mut writer).await {
            tracing::debug!(error = %e, "write failed");
            break "write failed";
        }
        // Bounded buffers: a decoder never leaves more than one partial frame behind.
        if buf.len() > s.limits.max_frame * 2 {
            metrics::counter!(m::FRAME_ERRORS, "protocol" => s.family_label(), "kind" => "overflow").increment(1);
            buf.clear();
        }
    };
    tracing::info!(reason, "session ended");
    if let Some(id) = s.device_id.clone() {
        if shutting_down {
            // The device did not go anywhere; a restart finds it again. Only leave the registry.
            s.service.gateway.unregister(&id, conn_id);
        } else if let Err(e) = s.service.device_offline(&id, conn_id).await {
            tracing::warn!(error = %e, "could not record the device offline");
        }
    }
    let _ = writer.shutdown().await;
}

impl Session {
    pub fn family_label(&self) -> &'static str {
        match self.proto {
            Some(Proto::Ap3000(_)) => "ap3000",
            Some(Proto::Bkv(_)) => "bkv",
            None => "unknown",
        }
    }

    fn next_wake(&self, started: Instant) -> Instant {
        let mut t = if self.identified {
            self.last_frame + self.limits.offline_after
        } else {
            started + self.limits.first_frame_timeout
        };
        if !self.queue.is_empty() {
            t = t.min(self.pacer.ready_at());
        }
        for f in &self.inflight {
            t = t.min(f.sent_at + self.limits.resend_after);
        }
        for timer in &self.timers {
            t = t.min(timer.at);
        }
        t
    }

    /// Sequence numbers / message IDs for downlink commands: never 0.
    pub fn next_key(&mut self, modulo: u32) -> u32 {
        self.next_seq = self.next_seq.wrapping_add(1) % modulo.max(2);
        if self.next_seq == 0 {
            self.next_seq = 1;
        }
        self.next_seq
    }

    pub fn enqueue(&mut self, cmd: Outgoing) {
        if self.seen_commands.insert(cmd.command_id) {
            self.queue.push_back(cmd);
        }
    }

    async fn on_bytes(&mut self, buf: &mut BytesMut) {
        if self.proto.is_none() {
            loop {
                match pile_protocol::sniff(buf) {
                    Sniff::NeedMore => return,
                    Sniff::Family(Family::Ap3000) => {
                        self.proto = Some(Proto::Ap3000(
                            pile_protocol::ap3000::Decoder::new(
                                pile_protocol::ap3000::Direction::FromDevice,
                            )
                            .with_max_frame_len(self.limits.max_frame),
                        ));
                        tracing::Span::current().record("protocol", "ap3000");
                        break;
                    }
                    Sniff::Family(Family::Bkv) => {
                        self.proto = Some(Proto::Bkv(
                            pile_protocol::bkv::Decoder::with_max_frame_len(self.limits.max_frame),
                        ));
                        tracing::Span::current().record("protocol", "bkv");
                        break;
                    }
                    Sniff::Unknown => {
                        // Skip a byte and look again; the first-frame timeout ends hopeless cases.
                        metrics::counter!(m::FRAME_ERRORS, "protocol" => "unknown", "kind" => "garbage").increment(1);
                        let _ = buf.split_to(1);
                        if buf.is_empty() {
                            return;
                        }
                    }
                }
            }
        }
        loop {
            let item = match &mut self.proto {
                Some(Proto::Ap3000(d)) => d.decode(buf).map(Decoded::Ap3000),
                Some(Proto::Bkv(d)) => d.decode(buf).map(Decoded::Bkv),
                None => None,
            };
            let Some(item) = item else { break };
            match item {
                Decoded::Ap3000(item) => match item {
                    Item::Frame { frame, raw } => self.on_ap3000(frame, raw).await,
                    Item::Diagnostic(d) => self.on_diagnostic(&d),
                    Item::Iccid(iccid) => {
                        self.last_frame = Instant::now();
                        self.iccid = Some(iccid);
                    }
                    Item::KeepAlive => {
                        if self.identified {
                            self.last_frame = Instant::now();
                            if let Some(id) = &self.device_id {
                                self.service.seen(id);
                            }
                        }
                    }
                },
                Decoded::Bkv(item) => match item {
                    Item::Frame { frame, raw } => self.on_bkv(frame, raw).await,
                    Item::Diagnostic(d) => self.on_diagnostic(&d),
                    Item::Iccid(_) | Item::KeepAlive => {}
                },
            }
        }
    }

    fn on_diagnostic(&mut self, d: &pile_protocol::Diagnostic) {
        let kind = match &d.error {
            pile_protocol::DecodeError::BadChecksum { .. } => "bad_checksum",
            pile_protocol::DecodeError::Garbage { .. } => "garbage",
            pile_protocol::DecodeError::TooLong { .. } => "too_long",
            _ => "invalid",
        };
        metrics::counter!(m::FRAME_ERRORS, "protocol" => self.family_label(), "kind" => kind)
            .increment(1);
        tracing::debug!(error = %d.error, skipped = d.skipped, "skipped bytes");
        if let Some(id) = &self.device_id {
            let note = format!("skipped {} byte(s): {}", d.skipped, d.error);
            self.service.gateway.record_frame(
                id,
                Direction::Up,
                self.service.clock.now_ms(),
                &d.raw,
                FrameNote::Text(&note),
            );
        }
    }

    /// Called with the device ID of every valid frame. The first one identifies the
    /// connection: registers it (replacing an older session of the device at once), marks the
    /// device online and loads the commands that waited for it.
    pub async fn identify(
        &mut self,
        device_id: String,
        protocol: &'static str,
        firmware: Option<String>,
        signal: Option<i64>,
    ) -> bool {
        if let Some(known) = &self.device_id {
            if known.as_ref() != device_id {
                metrics::counter!(m::FRAME_ERRORS, "protocol" => protocol, "kind" => "foreign_device_id").increment(1);
                return false;
            }
            self.last_frame = Instant::now();
            self.service.seen(known);
            return true;
        }
        let (tx, rx) = mpsc::channel(MAILBOX);
        let handle = SessionHandle {
            conn_id: self.conn_id,
            commands: tx,
            close: self.close.clone(),
        };
        let replaced = self.service.gateway.register(&device_id, handle);
        tracing::Span::current().record("device_id", device_id.as_str());
        tracing::info!(replaced, "device identified");
        self.mailbox = Some(rx);
        self.device_id = Some(Arc::from(device_id.as_str()));
        self.identified = true;
        self.connected_at_ms = self.service.clock.now_ms();
        self.last_frame = Instant::now();
        let hello = DeviceHello {
            device_id: device_id.clone(),
            protocol,
            remote_addr: self.peer.to_string(),
            firmware,
            iccid: self.iccid.clone(),
            signal,
        };
        match self.service.device_online(hello).await {
            Ok(queued) => {
                for cmd in queued {
                    self.enqueue(cmd);
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not record the device online"),
        }
        true
    }

    /// Queues a frame for writing and keeps it in the ring.
    pub fn send(&mut self, bytes: Bytes, kind: &'static str) {
        metrics::counter!(m::OUTBOUND_MESSAGES, "protocol" => self.family_label(), "kind" => kind)
            .increment(1);
        self.out.push(bytes);
    }

    /// Records an uplink frame in the ring.
    pub fn record_up(&self, raw: &Bytes) {
        metrics::counter!(m::INBOUND_FRAMES, "protocol" => self.family_label()).increment(1);
        if let (Some(id), Some(family)) = (&self.device_id, self.family()) {
            self.service.gateway.record_frame(
                id,
                Direction::Up,
                self.service.clock.now_ms(),
                raw,
                FrameNote::Frame(family),
            );
        }
    }

    fn family(&self) -> Option<Family> {
        match self.proto {
            Some(Proto::Ap3000(_)) => Some(Family::Ap3000),
            Some(Proto::Bkv(_)) => Some(Family::Bkv),
            None => None,
        }
    }

    async fn flush(&mut self, writer: &mut OwnedWriteHalf) -> Result<(), SessionError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let now_ms = self.service.clock.now_ms();
        let mut all = BytesMut::new();
        let family = self.family();
        for bytes in out {
            if let (Some(id), Some(family)) = (&self.device_id, family) {
                self.service.gateway.record_frame(
                    id,
                    Direction::Down,
                    now_ms,
                    &bytes,
                    FrameNote::Frame(family),
                );
            }
            all.extend_from_slice(&bytes);
        }
        match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&all)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(SessionError::WriteTimeout),
        }
    }

    /// Timers: paced commands, resends, exact-second stops.
    async fn on_tick(&mut self, now: Instant) {
        if !self.identified {
            return;
        }
        // Resend once, then give up.
        let mut i = 0;
        while i < self.inflight.len() {
            let f = &self.inflight[i];
            match retry_step(f.sent_at, f.attempts, self.limits.resend_after, now) {
                RetryStep::Wait(_) => i += 1,
                RetryStep::Resend if self.pacer.ready(now) => {
                    let f = &mut self.inflight[i];
                    f.attempts += 1;
                    f.sent_at = now;
                    let (bytes, summary) = (f.bytes.clone(), format!("resend: {}", f.summary));
                    self.pacer.sent(now);
                    tracing::info!(command = %summary, "resending an unanswered command");
                    self.send(bytes, "resend");
                    i += 1;
                }
                RetryStep::Resend => i += 1,
                RetryStep::GiveUp => {
                    let f = self.inflight.remove(i);
                    metrics::counter!(m::COMMANDS, "outcome" => "unanswered").increment(1);
                    tracing::warn!(
                        command = f.command.name(),
                        order_no = f.command.order_no(),
                        "command unanswered after a resend"
                    );
                    if let Err(e) = self.service.store.command_unanswered(f.command_id).await {
                        tracing::warn!(error = %e, "could not record an unanswered command");
                    }
                }
            }
        }
        // Exact-second stops.
        let due: Vec<StopTimer> = {
            let (due, keep) = std::mem::take(&mut self.timers)
                .into_iter()
                .partition(|t| t.at <= now);
            self.timers = keep;
            due
        };
        for t in due {
            self.exact_stop(t).await;
        }
        // Paced commands.
        if !self.queue.is_empty() && self.pacer.ready(now) {
            if let Some(cmd) = self.queue.pop_front() {
                self.dispatch(cmd, now).await;
            }
        }
    }

    /// The device confirmed a start. If its order is no longer waiting (cancelled after its
    /// TTL, stopped meanwhile) the port must not keep charging: the gateway stops it.
    pub async fn confirmed_start(
        &mut self,
        device_id: &str,
        command_id: i64,
        order_no: &str,
        port_no: u32,
        reply_hex: &str,
    ) -> Result<(), crate::service::ServiceError> {
        let confirmed = self
            .service
            .start_confirmed(device_id, command_id, order_no, reply_hex)
            .await?;
        if !confirmed {
            if let Some(o) = self.service.store.order(order_no).await? {
                if !o.status.is_active() {
                    tracing::warn!(%order_no, status = %o.status, "late start confirmation; stopping the port");
                    self.gateway_stop(order_no, port_no).await;
                }
            }
        }
        Ok(())
    }

    /// A stop the gateway decides itself (target reached at the exact second, amount used
    /// up): logged in `cmd_logs` like any command, sent once per order.
    pub async fn gateway_stop(&mut self, order_no: &str, port_no: u32) {
        let Some(id) = self.device_id.clone() else {
            return;
        };
        if !self.gateway_stops.insert(order_no.to_string()) {
            return;
        }
        let device_ref = match self.service.store.order(order_no).await {
            Ok(Some(o)) => o.device_ref.unwrap_or_default(),
            _ => String::new(),
        };
        let command = PortCommand::Stop {
            order_no: order_no.to_string(),
            port_no,
            device_ref,
        };
        let now_ms = self.service.clock.now_ms();
        let payload = serde_json::to_string(&command).unwrap_or_default();
        match self
            .service
            .store
            .queue_command(
                &id,
                Some(order_no),
                "stop",
                &payload,
                now_ms,
                now_ms + 600_000,
            )
            .await
        {
            Ok(command_id) => self.enqueue(Outgoing {
                command_id,
                command,
            }),
            Err(e) => tracing::warn!(error = %e, "could not queue the gateway's stop"),
        }
    }

    async fn exact_stop(&mut self, t: StopTimer) {
        self.gateway_stop(&t.order_no, t.port_no).await;
        match self
            .service
            .settle_by_gateway(&t.order_no, crate::domain::EndReason::TargetReached)
            .await
        {
            Ok(true) => {
                tracing::info!(order_no = %t.order_no, "target reached at the exact second; settled by the gateway")
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "exact-second settlement failed"),
        }
    }

    async fn dispatch(&mut self, cmd: Outgoing, now: Instant) {
        // A start for an order that is no longer active is dropped (e.g. cancelled while it
        // waited). Stops always go out: a port must never keep charging by mistake.
        let is_start = matches!(cmd.command, PortCommand::Start { .. });
        match self.service.store.order(cmd.command.order_no()).await {
            Ok(Some(o)) if is_start && !o.status.is_active() => {
                tracing::debug!(order_no = %o.order_no, "dropping a command for a closed order");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "order lookup failed; command stays queued");
                self.queue.push_front(cmd);
                return;
            }
        }
        let encoded = match &self.proto {
            Some(Proto::Ap3000(_)) => self.encode_ap3000(&cmd.command),
            Some(Proto::Bkv(_)) => self.encode_bkv(&cmd.command),
            None => None,
        };
        let Some((key, bytes, summary)) = encoded else {
            tracing::warn!(
                command = cmd.command.name(),
                "command cannot be encoded for this device"
            );
            let _ = self
                .service
                .store
                .command_replied(
                    cmd.command_id,
                    "",
                    "not encodable",
                    self.service.clock.now_ms(),
                )
                .await;
            return;
        };
        if let Err(e) = self
            .service
            .store
            .command_sent(
                cmd.command_id,
                i64::from(key),
                &hex::encode(&bytes),
                self.service.clock.now_ms(),
            )
            .await
        {
            tracing::warn!(error = %e, "could not log the command");
        }
        self.pacer.sent(now);
        metrics::counter!(m::COMMANDS, "outcome" => "sent").increment(1);
        self.inflight.push(Inflight {
            command_id: cmd.command_id,
            command: cmd.command,
            key,
            bytes: bytes.clone(),
            summary: summary.clone(),
            sent_at: now,
            attempts: 1,
        });
        tracing::debug!(command = %summary, "command sent");
        self.send(bytes, "command");
    }

    /// Takes the in-flight command answered by `key`.
    pub fn take_inflight(&mut self, key: u32) -> Option<Inflight> {
        let i = self.inflight.iter().position(|f| f.key == key)?;
        Some(self.inflight.remove(i))
    }

    /// Writes port states that changed.
    pub async fn report_ports(&mut self, reports: Vec<PortReport>) {
        let Some(id) = self.device_id.clone() else {
            return;
        };
        let changed: Vec<PortReport> = reports
            .into_iter()
            .filter(|r| self.ports.get(&r.port_no) != Some(&(r.status, r.power_dw)))
            .map(|mut r| {
                r.status_changed = self.ports.get(&r.port_no).map(|p| p.0) != Some(r.status);
                r
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        for r in &changed {
            self.ports.insert(r.port_no, (r.status, r.power_dw));
        }
        self.service.port_report(&id, &changed).await;
    }

    /// Port count learnt from frames; stored when it grows.
    pub async fn learn_port_count(&mut self, count: i64) {
        if count <= self.port_count {
            return;
        }
        self.port_count = count;
        if let Some(id) = self.device_id.clone() {
            if let Err(e) = self.service.device_info(&id, None, None, Some(count)).await {
                tracing::warn!(error = %e, "could not store the port count");
            }
        }
    }
}
