//! The device side: what a session's intents do.
//!
//! Every intent is applied here; results go back to the session's core. The rules that
//! decide money — which order a report is about, how it is settled, which transitions are
//! allowed — are the domain's; this module only loads what they need and persists what they
//! return.

use pile_api::OrderStatus;

use super::{active_order, command_of, order_facts, Service};
use crate::core::{
    Command, CommandSpec, EndObs, Hello, Intent, IntentResult, PortChange, PortSeen, ProgressObs,
    Reply, Resolution, Token,
};
use crate::domain::{
    self, match_report, Candidate, EndEvidence, EndReason, Match, Observation, OrderEvent,
    StopCause,
};
use crate::gateway::{Arrival, SessionHandle};
use crate::metrics as m;
use crate::store::{
    BatchOp, CommandAnswer, DeviceOnline, EndReportRow, NewCommand, OrderRow, Settlement,
    StoreError,
};

/// The connection an intent comes from.
#[derive(Debug, Clone)]
pub struct SessionLink {
    pub conn_id: u64,
    pub handle: SessionHandle,
}

type Res = Result<IntentResult, StoreError>;

impl Service {
    /// Applies one intent of the session on `link` for `device_id` (known once identified);
    /// returns the result its core waits for, if it waits for one.
    pub async fn apply(
        &self,
        link: &SessionLink,
        device_id: Option<&str>,
        intent: Intent,
    ) -> Option<(Token, IntentResult)> {
        // Intents that write the device's rows directly go through the read model's bracket;
        // batched ones (info, ports, liveness) are refreshed by the writer when they commit.
        let writes = match &intent {
            Intent::Identify { hello, .. } => Some(hello.device_id.clone()),
            Intent::DeviceInfo { .. }
            | Intent::Ports(_)
            | Intent::Unanswered { .. }
            | Intent::Alarm(_) => None,
            _ => device_id.map(str::to_string),
        };
        match writes {
            Some(id) => {
                self.writing(&id, self.apply_intent(link, device_id, intent))
                    .await
            }
            None => self.apply_intent(link, device_id, intent).await,
        }
    }

    async fn apply_intent(
        &self,
        link: &SessionLink,
        device_id: Option<&str>,
        intent: Intent,
    ) -> Option<(Token, IntentResult)> {
        let failed = |token: Token, what: &str, e: StoreError| {
            tracing::warn!(error = %e, what, "store failed; the session will retry or not acknowledge");
            Some((token, IntentResult::Failed))
        };
        match intent {
            Intent::Identify { token, hello } => match self.identify(link, &hello).await {
                Ok(r) => Some((token, r)),
                Err(e) => failed(token, "identify", e),
            },
            Intent::DeviceInfo {
                firmware,
                signal,
                port_count,
            } => {
                let id = device_id?;
                if let Some(f) = &firmware {
                    self.gateway.set_firmware(id, f);
                }
                self.gateway.set_unflushed(id, true);
                self.writer
                    .push(BatchOp::Info {
                        device_id: id.to_string(),
                        firmware,
                        signal,
                        port_count,
                        now: self.clock.now_sec(),
                    })
                    .await;
                None
            }
            Intent::Ports(changes) => {
                self.ports(device_id?, changes).await;
                None
            }
            Intent::Progress { token, obs } => match self.progress(device_id?, &obs).await {
                Ok(r) => Some((token, r)),
                Err(e) => failed(token, "progress", e),
            },
            Intent::End { token, obs } => match self.end_report(device_id?, &obs).await {
                Ok(r) => Some((token, r)),
                Err(e) => {
                    tracing::error!(error = %e, "end report not stored; not acknowledged");
                    Some((
                        token,
                        IntentResult::End {
                            committed: false,
                            settled: None,
                        },
                    ))
                }
            },
            Intent::MarkSent {
                token,
                command_id,
                key,
                request_hex,
                conn_id,
            } => match self
                .mark_sent(device_id?, command_id, key, &request_hex, conn_id)
                .await
            {
                Ok(r) => Some((token, r)),
                Err(e) => failed(token, "mark sent", e),
            },
            Intent::Replied {
                token,
                command,
                reply,
                reply_hex,
            } => match self.replied(device_id?, &command, &reply, &reply_hex).await {
                Ok(r) => Some((token, r)),
                Err(e) => failed(token, "reply", e),
            },
            Intent::Unanswered { command_id } => {
                metrics::counter!(m::COMMANDS, "outcome" => "unanswered").increment(1);
                tracing::warn!(command_id, "command unanswered after a resend; its outcome stays unknown until the device is asked again");
                None
            }
            Intent::Resolve {
                token,
                command,
                seen,
            } => match self.resolve(device_id?, &command, &seen).await {
                Ok(r) => Some((token, r)),
                Err(e) => failed(token, "resolve", e),
            },
            Intent::Reconcile { order_no, port_no } => {
                if let Err(e) = self.reconcile(device_id?, &order_no, port_no).await {
                    tracing::warn!(error = %e, %order_no, "reconciliation failed");
                }
                None
            }
            Intent::GatewayStop {
                token,
                order_no,
                port_no,
                cause,
            } => match self
                .gateway_stop(device_id?, &order_no, port_no, cause)
                .await
            {
                Ok(r) => Some((token, r)),
                Err(e) => failed(token, "gateway stop", e),
            },
            Intent::Alarm(data) => {
                let ev = crate::store::Event {
                    event_type: "device.alarm",
                    device_id: device_id?.to_string(),
                    order_no: None,
                    data,
                };
                if let Err(e) = self.store.record_event(&ev, self.clock.now_ms()).await {
                    tracing::warn!(error = %e, "alarm not stored");
                }
                None
            }
        }
    }

    /// A session ended. `offline`: it ended because the device was silent past the threshold
    /// (the device is offline now); otherwise (socket closed, write failed) the device stays
    /// online until its threshold passes without a new connection. `shutting_down`: the
    /// gateway stops; nothing is marked.
    pub async fn session_ended(
        &self,
        device_id: &str,
        conn_id: u64,
        offline: bool,
        shutting_down: bool,
    ) {
        if !self.gateway.unregister(device_id, conn_id) || shutting_down {
            return;
        }
        metrics::gauge!(m::ACTIVE_SESSIONS).set(self.gateway.session_count() as f64);
        if offline {
            self.mark_offline(device_id).await;
        }
    }

    /// The device is offline: forget its live entry and write it (batched).
    pub(super) async fn mark_offline(&self, device_id: &str) {
        if let Some(c) = self.cluster() {
            // Another live instance holds the device (issue #17): it is not offline, only
            // no longer here.
            match c.release(device_id).await {
                Ok(Some(owner)) => {
                    self.gateway.set_unflushed(device_id, false);
                    self.gateway.remove(device_id);
                    tracing::info!(%device_id, %owner, "device held by another instance; forgotten here");
                    return;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, %device_id, "lease not released; it expires"),
            }
        }
        let unflushed = self.gateway.set_unflushed(device_id, false);
        let Some(last_seen_ms) = self.gateway.remove(device_id) else {
            return;
        };
        self.writer
            .push(BatchOp::Offline {
                device_id: device_id.to_string(),
                last_seen_at: last_seen_ms.div_euclid(1000),
                now: self.clock.now_sec(),
            })
            .await;
        if unflushed {
            // Gone before its registration was written: write it now, since the API only
            // flushes for devices it holds in memory.
            self.writer.flush().await;
        }
        tracing::info!(%device_id, "device offline");
    }

    async fn identify(&self, link: &SessionLink, hello: &Hello) -> Res {
        let known = match self.admit(hello).await? {
            Ok(known) => known,
            Err(refusal) => {
                let reason = refusal.as_str();
                tracing::warn!(device_id = %hello.device_id, peer = %hello.remote_addr, reason, "device connection refused");
                // Its first frame already went to a ring: an ID nobody knows keeps none.
                if !self.gateway.is_online(&hello.device_id)
                    && !self.store.device_exists(&hello.device_id).await?
                {
                    self.gateway.forget_frames(&hello.device_id);
                }
                return Ok(IntentResult::Refused {
                    reason: format!("refused: {reason}"),
                });
            }
        };
        let (live, replaced) = self.gateway.register(
            &Arrival {
                device_id: &hello.device_id,
                protocol: hello.protocol,
                remote_addr: &hello.remote_addr,
                firmware: hello.firmware.as_deref(),
                signal: hello.signal,
                now_ms: hello.at_ms,
            },
            link.handle.clone(),
        );
        metrics::gauge!(m::ACTIVE_SESSIONS).set(self.gateway.session_count() as f64);
        tracing::info!(device_id = %hello.device_id, replaced, "device identified");
        if let Some(c) = self.cluster() {
            // Before the open commands are loaded: a command queued from now on wakes this
            // instance (issue #17).
            c.acquire(&hello.device_id, link.conn_id).await?;
        }
        if !known {
            self.gateway.set_unflushed(&hello.device_id, true);
        }
        // Every connect goes through the batched writer, a new device's registration too (a
        // registration or reconnect storm must not cost one transaction per pile).
        self.writer
            .push(BatchOp::Online(DeviceOnline {
                device_id: hello.device_id.clone(),
                protocol: hello.protocol.to_string(),
                remote_addr: hello.remote_addr.clone(),
                firmware: hello.firmware.clone(),
                iccid: hello.iccid.clone(),
                signal: hello.signal,
                now: hello.at_ms.div_euclid(1000),
            }))
            .await;
        // A command or order exists only for a device with a committed row.
        let (commands, active) = if known {
            let rows = self
                .store
                .open_commands(&hello.device_id, hello.at_ms)
                .await?;
            let mut commands = Vec::with_capacity(rows.len());
            for row in &rows {
                match command_of(row) {
                    Some(c) => commands.push(c),
                    None => {
                        tracing::warn!(command_id = row.id, "unreadable command payload; expired");
                        self.store.expire_command(row.id).await?;
                    }
                }
            }
            let active = self
                .store
                .active_orders_of(&hello.device_id)
                .await?
                .iter()
                .map(active_order)
                .collect();
            (commands, active)
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(IntentResult::Identified {
            live,
            commands,
            active,
        })
    }

    /// #13: the allowlist, then (for an ID the store does not know) the new-ID rate, then
    /// flapping. `Ok(Ok(known))`: admitted, and whether the store knows the device.
    async fn admit(
        &self,
        hello: &Hello,
    ) -> Result<Result<bool, crate::device::admission::Refusal>, StoreError> {
        let a = &self.admission;
        let id = hello.device_id.as_str();
        if let Err(r) = a.listed(id) {
            return Ok(Err(r));
        }
        let known = self.store.device_exists(id).await?;
        // A device whose registration is still in the batched writer is live, not new.
        if !known && !self.gateway.is_online(id) {
            if let Err(r) = a.register_new(hello.at_ms) {
                return Ok(Err(r));
            }
        }
        Ok(a.connect(id, hello.at_ms).map(|()| known))
    }

    async fn ports(&self, device_id: &str, changes: Vec<PortChange>) {
        let at = self.clock.now_sec();
        for c in changes {
            self.writer
                .push(BatchOp::Port {
                    device_id: device_id.to_string(),
                    port_no: i64::from(c.obs.port_no),
                    socket_no: c.obs.socket_no.map(i64::from),
                    hole: c.obs.hole.map(i64::from),
                    status: c.obs.status.as_str().to_string(),
                    power_dw: c.obs.power_dw,
                    at,
                    previous: c.previous.map(|p| p.as_str().to_string()),
                })
                .await;
        }
    }

    /// The order a report on `port_no` naming `device_ref` is about (the domain's rule).
    async fn matched_order(
        &self,
        device_id: &str,
        port_no: u32,
        device_ref: Option<&str>,
    ) -> Result<Option<(OrderRow, bool)>, StoreError> {
        let rows = self
            .store
            .report_candidates(device_id, i64::from(port_no), device_ref)
            .await?;
        // The port's orders, and the order holding the handle wherever it is.
        let candidates: Vec<Candidate> = rows
            .iter()
            .filter(|(o, _)| {
                o.port_no == i64::from(port_no)
                    || (device_ref.is_some() && o.device_ref.as_deref() == device_ref)
            })
            .map(|(o, start)| Candidate {
                order_no: o.order_no.clone(),
                status: o.status,
                device_ref: o.device_ref.clone(),
                start: *start,
            })
            .collect();
        match match_report(device_ref, &candidates) {
            Match::Order {
                order_no,
                learn_ref,
            } => Ok(rows
                .into_iter()
                .find(|(o, _)| o.order_no == order_no)
                .map(|(o, _)| (o, learn_ref))),
            Match::Unmatched => Ok(None),
        }
    }

    /// The gateway's best knowledge of when a charge the device reports, but whose start was
    /// never confirmed, began: the first write of its start command, else the device's own
    /// count back from now.
    async fn inferred_start(
        &self,
        o: &OrderRow,
        device_duration_sec: i64,
    ) -> Result<i64, StoreError> {
        let sent = self
            .store
            .commands_of_order(&o.order_no)
            .await?
            .into_iter()
            .filter(|c| c.command == "start")
            .find_map(|c| c.sent_at_ms);
        Ok(sent.unwrap_or_else(|| self.clock.now_ms() - device_duration_sec * 1000))
    }

    /// Confirms a pending order the device shows running (a report naming it, a port query):
    /// the start's outcome was lost, the charge was not.
    async fn confirm_running(
        &self,
        device_id: &str,
        o: &OrderRow,
        started_at_ms: i64,
        device_ref: Option<&str>,
        answer: Option<&CommandAnswer>,
    ) -> Result<Option<OrderRow>, StoreError> {
        let Ok(t) = domain::transition(o.status, OrderEvent::Confirmed) else {
            return Ok(None);
        };
        if t.from == OrderStatus::Pending {
            self.store
                .confirm_order(&o.order_no, device_id, t, started_at_ms, device_ref, answer)
                .await?;
        }
        self.store.order(&o.order_no).await
    }

    async fn progress(&self, device_id: &str, p: &ProgressObs) -> Res {
        let Some((mut order, learn)) = self
            .matched_order(device_id, p.port_no, p.device_ref.as_deref())
            .await?
        else {
            return Ok(IntentResult::Progress {
                order: None,
                money_used_up: false,
            });
        };
        if !order.status.is_active() {
            return Ok(IntentResult::Progress {
                order: None,
                money_used_up: false,
            });
        }
        if learn {
            if let Some(r) = &p.device_ref {
                self.store.learn_device_ref(&order.order_no, r).await?;
            }
        }
        if order.status == OrderStatus::Pending {
            let start = self.inferred_start(&order, p.device_duration_sec).await?;
            let answer = self
                .start_answer(&order, "confirmed by a progress report")
                .await?;
            if let Some(o) = self
                .confirm_running(
                    device_id,
                    &order,
                    start,
                    p.device_ref.as_deref(),
                    answer.as_ref(),
                )
                .await?
            {
                order = o;
            }
        }
        let now_ms = self.clock.now_ms();
        let at_ms = p.device_at_ms.unwrap_or(now_ms);
        // Seconds as seconds: the device's own seconds counter when it has one (AP3000, also
        // right for progress replayed after an offline spell), else the gateway's clock since
        // the start (BKV counts whole minutes).
        let duration_sec = if p.duration_resolution_sec <= 1 {
            p.device_duration_sec
        } else {
            order
                .started_at_ms
                .map_or(p.device_duration_sec, |s| domain::duration_sec(s, at_ms))
        };
        self.writer
            .push(BatchOp::Progress {
                order_no: order.order_no.clone(),
                device_id: device_id.to_string(),
                at_ms,
                duration_sec,
                energy_wh: p.energy_wh,
                power_dw: p.power_dw,
                status: "charging".into(),
            })
            .await;
        let money_used_up = domain::money_used_up(&order_facts(&order), p.energy_wh, duration_sec);
        Ok(IntentResult::Progress {
            order: Some(active_order(&order)),
            money_used_up,
        })
    }

    /// The start command's answer to record when a report or a query shows it was delivered.
    async fn start_answer(
        &self,
        o: &OrderRow,
        note: &str,
    ) -> Result<Option<CommandAnswer>, StoreError> {
        Ok(self
            .store
            .commands_of_order(&o.order_no)
            .await?
            .into_iter()
            .find(|c| c.command == "start" && matches!(c.status.as_str(), "queued" | "sent"))
            .map(|c| CommandAnswer {
                id: c.id,
                acked: true,
                reply_hex: String::new(),
                result: note.to_string(),
                at_ms: self.clock.now_ms(),
            }))
    }

    /// An end report: settled exactly once through the domain's policy; a duplicate, a late
    /// report after the gateway's own settlement, or a report that matches nothing is kept
    /// and acknowledged. `committed` only once the state is in the database.
    pub(crate) async fn end_report(&self, device_id: &str, r: &EndObs) -> Res {
        // Batched state (progress samples) is committed first, so the order read below is
        // current and the events of one order stay in order.
        self.writer.flush().await;
        let now_ms = self.clock.now_ms();
        let keep = |order: Option<&OrderRow>, outcome: &'static str| EndReportRow {
            order_no: order.map(|o| o.order_no.clone()),
            device_id: device_id.to_string(),
            port_no: i64::from(r.port_no),
            at_ms: now_ms,
            applied: false,
            outcome,
            device_ref: r.device_ref.clone(),
            detail: r.raw_hex.clone(),
        };
        let Some((order, learn)) = self
            .matched_order(device_id, r.port_no, r.device_ref.as_deref())
            .await?
        else {
            metrics::counter!(m::END_REPORTS, "outcome" => "unmatched").increment(1);
            tracing::warn!(%device_id, port_no = r.port_no, device_ref = ?r.device_ref, "end report matches no order; kept");
            self.store
                .record_end_report(&keep(None, "unmatched"))
                .await?;
            return Ok(IntentResult::End {
                committed: true,
                settled: None,
            });
        };
        let Ok(t) = domain::transition(order.status, OrderEvent::Settled) else {
            // Completed already: a resend, or the device's figures after the gateway settled
            // without them (grace, reconciliation) — kept beside the settlement.
            // Reasons 11 and 13 come only from the gateway's own settlements.
            let gateway_settled = matches!(
                order.end_reason.map(EndReason::from_code),
                Some(EndReason::CommunicationLost | EndReason::ChargeLost)
            );
            let outcome = if gateway_settled {
                "after_gateway"
            } else {
                "duplicate"
            };
            metrics::counter!(m::END_REPORTS, "outcome" => outcome).increment(1);
            self.store
                .record_end_report(&keep(Some(&order), outcome))
                .await?;
            return Ok(IntentResult::End {
                committed: true,
                settled: None,
            });
        };
        let figures = domain::settle_report(
            &order_facts(&order),
            &EndEvidence {
                energy_wh: r.energy_wh,
                device_duration_sec: r.device_duration_sec,
                duration_resolution_sec: r.duration_resolution_sec,
                device_end_at_ms: r.device_end_at_ms,
                peak_power_dw: r.peak_power_dw,
                reason: r.reason,
            },
            Observation {
                now_ms,
                end_live: r.seen_live,
                stop_sent_at_ms: r.stop_written_at_ms,
            },
        );
        let applied = self
            .store
            .settle(&Settlement {
                order_no: order.order_no.clone(),
                device_id: device_id.to_string(),
                port_no: order.port_no,
                transition: t,
                at_ms: now_ms,
                source: "device",
                figures,
                device_ref: if learn { r.device_ref.clone() } else { None },
                detail: r.raw_hex.clone(),
            })
            .await?;
        let outcome = match (applied, t.late) {
            (true, true) => "late",
            (true, false) => "settled",
            (false, _) => "duplicate",
        };
        metrics::counter!(m::END_REPORTS, "outcome" => outcome).increment(1);
        if applied {
            metrics::counter!(m::ORDERS_SETTLED, "source" => "device").increment(1);
            tracing::info!(
                %device_id,
                order_no = %order.order_no,
                duration = figures.duration_sec,
                source = figures.duration_source.as_str(),
                energy_wh = figures.energy_wh,
                amount = figures.bill.final_amount,
                reason = figures.reason.code(),
                late = t.late,
                "order settled"
            );
        }
        Ok(IntentResult::End {
            committed: true,
            settled: applied.then(|| order.order_no.clone()),
        })
    }

    async fn mark_sent(
        &self,
        device_id: &str,
        command_id: i64,
        key: u32,
        request_hex: &str,
        conn_id: u64,
    ) -> Res {
        let proceed = |p: bool| Ok(IntentResult::MarkSent { proceed: p });
        // Only the device's current connection writes its commands.
        if !self.gateway.is_current(device_id, conn_id) {
            return proceed(false);
        }
        let Some(row) = self.store.command(command_id).await? else {
            return proceed(false);
        };
        if row.command == "start" {
            let Some(order) = (match &row.order_no {
                Some(no) => self.store.order(no).await?,
                None => None,
            }) else {
                return proceed(false);
            };
            if !order.status.is_active() {
                return proceed(false);
            }
            if order.stop_requested && row.attempts == 0 {
                // Stopped before its start ever went out: cancel, the stop is moot.
                if let Ok(t) = domain::transition(order.status, OrderEvent::Cancelled) {
                    self.store
                        .close_order(
                            &order.order_no,
                            device_id,
                            t,
                            EndReason::RemoteStop.code(),
                            self.clock.now_ms(),
                            None,
                        )
                        .await?;
                }
                return proceed(false);
            }
        }
        let ok = self
            .store
            .mark_sent(
                command_id,
                i64::from(key),
                request_hex,
                conn_id,
                self.clock.now_ms(),
            )
            .await?;
        if ok {
            metrics::counter!(m::COMMANDS, "outcome" => "sent").increment(1);
        }
        proceed(ok)
    }

    async fn replied(
        &self,
        device_id: &str,
        command: &Command,
        reply: &Reply,
        reply_hex: &str,
    ) -> Res {
        let now_ms = self.clock.now_ms();
        let answer = |acked: bool, result: &str| CommandAnswer {
            id: command.id,
            acked,
            reply_hex: reply_hex.to_string(),
            result: result.to_string(),
            at_ms: now_ms,
        };
        let none = IntentResult::Replied {
            started: None,
            stop_orphan: None,
        };
        match &command.spec {
            CommandSpec::Start {
                order_no,
                port_no,
                device_ref: start_ref,
                ..
            } => {
                let Some(order) = self.store.order(order_no).await? else {
                    return Ok(none);
                };
                let confirmed_ref = match reply {
                    Reply::Done { device_ref } => Some(device_ref.clone()),
                    // AP3000 "already in that state" naming this very order: it runs.
                    Reply::SameState {
                        device_ref: Some(r),
                    } if r == start_ref => Some(None),
                    _ => None,
                };
                match confirmed_ref {
                    Some(new_ref) => {
                        metrics::counter!(m::COMMANDS, "outcome" => "confirmed").increment(1);
                        let a = answer(true, "ok");
                        match domain::transition(order.status, OrderEvent::Confirmed) {
                            Ok(t) if t.from == OrderStatus::Pending => {
                                self.store
                                    .confirm_order(
                                        order_no,
                                        device_id,
                                        t,
                                        now_ms,
                                        new_ref.as_deref(),
                                        Some(&a),
                                    )
                                    .await?;
                            }
                            Ok(_) => {
                                self.store
                                    .command_answered(command.id, true, reply_hex, "ok", now_ms)
                                    .await?;
                            }
                            Err(_) => {
                                // The order closed meanwhile (cancelled after its TTL, stopped):
                                // the port must not keep charging.
                                self.store
                                    .command_answered(command.id, true, reply_hex, "ok", now_ms)
                                    .await?;
                                tracing::warn!(%order_no, status = %order.status, "late start confirmation; stopping the port");
                                return Ok(IntentResult::Replied {
                                    started: None,
                                    stop_orphan: Some((order_no.clone(), *port_no)),
                                });
                            }
                        }
                        let now = self.store.order(order_no).await?;
                        Ok(IntentResult::Replied {
                            started: now
                                .filter(|o| o.status.is_active())
                                .map(|o| active_order(&o)),
                            stop_orphan: None,
                        })
                    }
                    None if matches!(reply, Reply::SameState { .. }) => {
                        // "Already in that state" without this order's number (pre-V6.2 answers):
                        // it may be running; a report naming the order confirms it, else its TTL
                        // ends it.
                        self.store
                            .command_answered(command.id, false, reply_hex, "same state", now_ms)
                            .await?;
                        Ok(none)
                    }
                    None => {
                        let reason = match reply {
                            Reply::Refused { reason } => reason.as_str(),
                            _ => "refused",
                        };
                        metrics::counter!(m::COMMANDS, "outcome" => "rejected").increment(1);
                        let a = answer(false, reason);
                        // Refused: the order fails (12) — or is cancelled (3) when a stop was
                        // asked for meanwhile.
                        let (event, code) = if order.stop_requested {
                            (OrderEvent::Cancelled, EndReason::RemoteStop)
                        } else {
                            (OrderEvent::Rejected, EndReason::StartRejected)
                        };
                        match domain::transition(order.status, event) {
                            Ok(t) => {
                                self.store
                                    .close_order(
                                        order_no,
                                        device_id,
                                        t,
                                        code.code(),
                                        now_ms,
                                        Some(&a),
                                    )
                                    .await?;
                            }
                            Err(_) => {
                                self.store
                                    .command_answered(command.id, false, reply_hex, reason, now_ms)
                                    .await?;
                            }
                        }
                        Ok(none)
                    }
                }
            }
            CommandSpec::Stop { order_no, .. } => {
                let (acked, result) = match reply {
                    Reply::Done { .. } => (true, "ok".to_string()),
                    Reply::SameState { .. } => (true, "already stopped".to_string()),
                    Reply::Refused { reason } => (false, reason.clone()),
                };
                // A pending order whose start may have reached the device: the device has the
                // stop now, so nothing runs under this order any more; cancel it (a report that
                // names it later still settles it, late).
                let order = self.store.order(order_no).await?;
                match order {
                    Some(o) if o.status == OrderStatus::Pending => {
                        let t = domain::transition(o.status, OrderEvent::Cancelled)
                            .map_err(|e| StoreError::Conflict(e.to_string()))?;
                        self.store
                            .close_order(
                                order_no,
                                device_id,
                                t,
                                EndReason::RemoteStop.code(),
                                now_ms,
                                Some(&answer(acked, &result)),
                            )
                            .await?;
                    }
                    _ => {
                        self.store
                            .command_answered(command.id, acked, reply_hex, &result, now_ms)
                            .await?;
                    }
                }
                Ok(none)
            }
            CommandSpec::Query { .. } | CommandSpec::Locate { .. } => {
                let (acked, result) = match reply {
                    Reply::Done { .. } | Reply::SameState { .. } => (true, "ok".to_string()),
                    Reply::Refused { reason } => (false, reason.clone()),
                };
                self.store
                    .command_answered(command.id, acked, reply_hex, &result, now_ms)
                    .await?;
                Ok(none)
            }
        }
    }

    /// A start whose first write may have reached the device was checked against its port.
    async fn resolve(&self, device_id: &str, command: &Command, seen: &PortSeen) -> Res {
        let CommandSpec::Start { order_no, .. } = &command.spec else {
            return Ok(IntentResult::Resolved(Resolution::Resend));
        };
        let Some(order) = self.store.order(order_no).await? else {
            return Ok(IntentResult::Resolved(Resolution::Drop));
        };
        if !order.status.is_active() {
            return Ok(IntentResult::Resolved(Resolution::Drop));
        }
        match seen {
            PortSeen::Charging { device_ref } => {
                // Someone else's charge (its handle belongs to another order) is not ours.
                if let Some(r) = device_ref {
                    if let Some(other) = self.store.order_by_device_ref(device_id, r).await? {
                        if other.order_no != order.order_no {
                            return Ok(IntentResult::Resolved(Resolution::Resend));
                        }
                    }
                }
                let start = command
                    .first_sent_at_ms
                    .unwrap_or_else(|| self.clock.now_ms());
                let a = CommandAnswer {
                    id: command.id,
                    acked: true,
                    reply_hex: String::new(),
                    result: "running (port query)".into(),
                    at_ms: self.clock.now_ms(),
                };
                match self
                    .confirm_running(device_id, &order, start, device_ref.as_deref(), Some(&a))
                    .await?
                {
                    Some(o) if o.status.is_active() => {
                        metrics::counter!(m::COMMANDS, "outcome" => "confirmed_by_query")
                            .increment(1);
                        Ok(IntentResult::Resolved(Resolution::Running(active_order(
                            &o,
                        ))))
                    }
                    _ => Ok(IntentResult::Resolved(Resolution::Drop)),
                }
            }
            PortSeen::Idle | PortSeen::Unknown => {
                if order.stop_requested {
                    if let Ok(t) = domain::transition(order.status, OrderEvent::Cancelled) {
                        self.store
                            .close_order(
                                &order.order_no,
                                device_id,
                                t,
                                EndReason::RemoteStop.code(),
                                self.clock.now_ms(),
                                None,
                            )
                            .await?;
                    }
                    return Ok(IntentResult::Resolved(Resolution::Drop));
                }
                if matches!(seen, PortSeen::Idle) {
                    self.store.forget_undelivered_writes(command.id).await?;
                    return Ok(IntentResult::Resolved(Resolution::NotDelivered));
                }
                Ok(IntentResult::Resolved(Resolution::Resend))
            }
        }
    }

    /// The device keeps reporting an open order's port idle: its charge was lost (a reboot, a
    /// missed end report). Settled with the last figures, reason 13.
    async fn reconcile(
        &self,
        device_id: &str,
        order_no: &str,
        port_no: u32,
    ) -> Result<(), StoreError> {
        self.writer.flush().await;
        let Some(order) = self.store.order(order_no).await? else {
            return Ok(());
        };
        if order.status != OrderStatus::Charging || order.port_no != i64::from(port_no) {
            return Ok(());
        }
        let settled = self
            .settle_without_report(
                &order,
                EndReason::ChargeLost,
                "reconciled: the device reports the port idle",
            )
            .await?;
        if settled {
            metrics::counter!(m::RECONCILED).increment(1);
            tracing::warn!(%device_id, %order_no, "open order on a port the device reports idle: settled as lost");
        }
        Ok(())
    }

    /// Settles an order with the gateway's last figures (no device report).
    pub(super) async fn settle_without_report(
        &self,
        order: &OrderRow,
        reason: EndReason,
        note: &str,
    ) -> Result<bool, StoreError> {
        let Ok(t) = domain::transition(order.status, OrderEvent::Settled) else {
            return Ok(false);
        };
        let figures = domain::settle_without_report(&order_facts(order), reason);
        let applied = self
            .store
            .settle(&Settlement {
                order_no: order.order_no.clone(),
                device_id: order.device_id.clone(),
                port_no: order.port_no,
                transition: t,
                at_ms: self.clock.now_ms(),
                source: "gateway",
                figures,
                device_ref: None,
                detail: note.to_string(),
            })
            .await?;
        if applied {
            metrics::counter!(m::ORDERS_SETTLED, "source" => "gateway").increment(1);
        }
        Ok(applied)
    }

    async fn gateway_stop(
        &self,
        device_id: &str,
        order_no: &str,
        port_no: u32,
        cause: StopCause,
    ) -> Res {
        let order = self.store.order(order_no).await?;
        let device_ref = order
            .as_ref()
            .and_then(|o| o.device_ref.clone())
            .unwrap_or_default();
        let spec = CommandSpec::Stop {
            order_no: order_no.to_string(),
            port_no,
            device_ref,
        };
        let now_ms = self.clock.now_ms();
        let new = NewCommand {
            device_id: device_id.to_string(),
            order_no: Some(order_no.to_string()),
            port_no: Some(i64::from(port_no)),
            command: "stop",
            payload: serde_json::to_string(&spec)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            now_ms,
            expires_at_ms: Some(now_ms + self.timings.command_ttl.as_millis() as i64),
        };
        let id = match order {
            Some(o) if o.status.is_active() => {
                self.store.request_stop(order_no, cause, &new).await?
            }
            // A charge whose order is closed (a late confirmation): stop it, no flags to set.
            Some(_) if cause == StopCause::Orphan => Some(self.store.queue_command(&new).await?),
            _ => None,
        };
        tracing::info!(%device_id, %order_no, ?cause, queued = id.is_some(), "the gateway stops a port");
        Ok(IntentResult::Queued(id.map(|id| Command {
            id,
            spec,
            sent_before: false,
            first_sent_at_ms: None,
        })))
    }
}
