//! Periodic work: command TTLs, offline marks, the offline grace, liveness persistence.

use super::Service;
use crate::domain::{self, EndReason, OrderEvent};
use crate::metrics as m;
use crate::store::StoreError;

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Pending orders cancelled because their command waited past its TTL (reason 11).
    pub cancelled: usize,
    /// Devices marked offline (no connection, silent past the threshold).
    pub offline: usize,
    /// Charging orders of devices silent past the grace, settled by the gateway (reason 11).
    pub settled: usize,
}

impl Service {
    /// One round of periodic work; the app runs it every second, tests call it directly.
    pub async fn sweep(&self) -> Result<Swept, StoreError> {
        let now_ms = self.clock.now_ms();
        let mut out = Swept::default();
        for o in self.store.expired_pending(now_ms).await? {
            let Ok(t) = domain::transition(o.status, OrderEvent::Cancelled) else {
                continue;
            };
            if self
                .writing(
                    &o.device_id,
                    self.store.close_order(
                        &o.order_no,
                        &o.device_id,
                        t,
                        EndReason::CommunicationLost.code(),
                        now_ms,
                        None,
                    ),
                )
                .await?
            {
                metrics::counter!(m::COMMANDS, "outcome" => "expired").increment(1);
                tracing::info!(order_no = %o.order_no, "command expired; order cancelled");
                out.cancelled += 1;
            }
        }
        self.store.expire_orderless_commands(now_ms).await?;
        // Devices without a connection, silent past the threshold: offline now.
        let cutoff = now_ms - self.timings.offline_after.as_millis() as i64;
        for (device_id, _) in self.gateway.silent_since(cutoff) {
            self.mark_offline(&device_id).await;
            out.offline += 1;
        }
        for (device_id, seen_ms) in self
            .gateway
            .liveness_due(self.timings.liveness_persist.as_millis() as i64)
        {
            self.writer.liveness(&device_id, seen_ms.div_euclid(1000));
        }
        // The offline grace counts from when the device went silent, for every mode.
        if out.offline > 0 {
            self.writer.flush().await;
        }
        let grace_s = self.timings.offline_settle_grace.as_secs() as i64;
        for o in self
            .store
            .charging_of_silent_devices(now_ms.div_euclid(1000) - grace_s)
            .await?
        {
            if self.gateway.is_online(&o.device_id) {
                continue;
            }
            if self
                .writing(
                    &o.device_id,
                    self.settle_without_report(
                        &o,
                        EndReason::CommunicationLost,
                        "settled by the gateway: the device stayed away past the grace",
                    ),
                )
                .await?
            {
                tracing::warn!(order_no = %o.order_no, "device never came back; settled by the gateway");
                out.settled += 1;
            }
        }
        // Devices whose read-model entry could not be refreshed are reloaded (issue 14).
        self.read.repair(&self.store).await;
        Ok(out)
    }
}
