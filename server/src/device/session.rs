//! The socket shell of one device connection: moves bytes and time into the sans-IO
//! [`SessionCore`] and carries out what it asks — writes, and intents applied by the
//! [`Service`]. Nothing here decides anything about the device.

use std::net::SocketAddr;
use std::sync::Arc;

use pile_api::Direction;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::core::{CloseReason, CoreConfig, FrameSink, Note, SessionCore};
use crate::gateway::{FrameCell, FrameNote, SessionHandle};
use crate::service::{Service, SessionLink};

/// Commands a session holds in its mailbox.
const MAILBOX: usize = 64;
/// Writes that take longer than this mean a dead peer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The registry's frame rings, as the core's sink. The connection's device ring is taken once
/// (a connection speaks for one device); another ID goes through the registry.
struct Rings {
    service: Arc<Service>,
    mine: std::sync::OnceLock<(String, Arc<FrameCell>)>,
}

impl FrameSink for Rings {
    fn record(
        &self,
        device_id: &str,
        direction: Direction,
        at_ms: i64,
        raw: &[u8],
        note: Note<'_>,
    ) {
        let note = match note {
            Note::Frame(f) => FrameNote::Frame(f),
            Note::Text(t) => FrameNote::Text(t),
        };
        let (id, cell) = self.mine.get_or_init(|| {
            (
                device_id.to_string(),
                self.service.gateway.frame_cell(device_id),
            )
        });
        if id == device_id {
            cell.record(at_ms, direction, note, raw);
        } else {
            self.service
                .gateway
                .record_frame(device_id, direction, at_ms, raw, note);
        }
    }
}

/// Applies every intent the core has, feeding results back, until it has none.
pub(crate) async fn drive(core: &mut SessionCore, service: &Service, link: &SessionLink) {
    while let Some(intent) = core.poll_intent() {
        let device_id = core.device_id().cloned();
        if let Some((token, result)) = service.apply(link, device_id.as_deref(), intent).await {
            core.handle_result(service.clock.now_ms(), token, result);
        }
        // #13: a refused device's other intents (its info, its ports) are not applied.
        if matches!(core.close_reason(), Some(CloseReason::Refused(_))) {
            break;
        }
    }
}

/// Runs one connection until it closes, the device is replaced or the gateway shuts down.
pub async fn run<S>(
    stream: S,
    peer: SocketAddr,
    conn_id: u64,
    service: Arc<Service>,
    cfg: CoreConfig,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut mailbox) = mpsc::channel(MAILBOX);
    let close = CancellationToken::new();
    let link = SessionLink {
        conn_id,
        handle: SessionHandle {
            conn_id,
            commands: tx,
            close: close.clone(),
        },
    };
    let mut core = SessionCore::new(cfg, conn_id, peer.to_string(), service.clock.now_ms())
        .with_sink(Arc::new(Rings {
            service: service.clone(),
            mine: std::sync::OnceLock::new(),
        }));
    // Lives as long as the connection: small (frames longer than a read are reassembled by
    // the core's decoder), since every connected pile pays for it.
    let mut buf = vec![0u8; 1024];
    let mut out = Vec::with_capacity(256);
    let mut shutting_down = false;
    let reason: String = loop {
        // The service's futures (identification, settlement: the store's queries) are large;
        // boxed, a connected pile's task holds only the loop below (~1 KB, not ~13 KB), and a
        // frame with nothing for the service allocates nothing.
        if core.has_intents() {
            Box::pin(drive(&mut core, &service, &link)).await;
        }
        // #13: a refused device gets no answer at all (not even to its first frame).
        if let Some(r @ CloseReason::Refused(_)) = core.close_reason() {
            break r.as_str().to_string();
        }
        out.clear();
        while let Some(t) = core.poll_transmit() {
            out.extend_from_slice(&t.bytes);
        }
        if !out.is_empty() {
            match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => break "write failed".into(),
            }
        }
        if let Some(r) = core.close_reason() {
            break r.as_str().to_string();
        }
        let now_ms = service.clock.now_ms();
        let wake = core
            .poll_timeout()
            .map(|t| Instant::now() + Duration::from_millis((t - now_ms).max(0) as u64))
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        // Shutdown first: a deploy must never look like a device going away.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                shutting_down = true;
                break "gateway shutting down".into();
            }
            _ = close.cancelled() => break "replaced by a new connection".into(),
            r = reader.read(&mut buf) => match r {
                Ok(0) => break "closed by peer".into(),
                Err(_) => break "read error".into(),
                Ok(n) => core.handle_bytes(service.clock.now_ms(), &buf[..n]),
            },
            Some(cmd) = mailbox.recv() => core.handle_command(service.clock.now_ms(), *cmd),
            _ = tokio::time::sleep_until(wake) => core.handle_timeout(service.clock.now_ms()),
        }
    };
    tracing::info!(reason = %reason, "session ended");
    if let Some(id) = core.device_id().cloned() {
        let offline = matches!(core.close_reason(), Some(CloseReason::Offline));
        Box::pin(service.session_ended(
            &id,
            conn_id,
            offline,
            shutting_down || shutdown.is_cancelled(),
        ))
        .await;
    }
    let _ = writer.shutdown().await;
}
