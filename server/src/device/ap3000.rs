//! AP3000 ("DNY") sessions: answers 0x20/0x21/0x22/0x03, reads 0x06 progress, sends 0x82.

use std::str::FromStr;

use bytes::Bytes;
use pile_api::PortStatus;
use pile_protocol::ap3000::{Frame, Message, OrderNo, PhysicalId};

use super::session::Session;
use crate::domain::EndReason;
use crate::gateway::PortCommand;
use crate::service::{device_order_ref, EndOutcome, EndReport, PortReport, ProgressReport};

/// AP3000 port status byte → platform port status.
fn port_status(raw: u8) -> PortStatus {
    match raw {
        0 => PortStatus::Idle,
        1 | 5 => PortStatus::Charging,
        2 | 3 => PortStatus::Plugged,
        _ => PortStatus::Fault,
    }
}

fn unix_now(s: &Session) -> u32 {
    u32::try_from(s.service.clock.now_sec()).unwrap_or(0)
}

impl Session {
    pub(super) async fn on_ap3000(&mut self, frame: Frame, raw: Bytes) {
        let (firmware, signal) = match &frame.message {
            Message::Register(r) => (Some(r.firmware.to_string()), None),
            Message::Heartbeat(h) => (None, Some(i64::from(h.signal))),
            _ => (None, None),
        };
        if !self
            .identify(
                frame.physical_id.to_string(),
                "ap3000",
                firmware.clone(),
                signal,
            )
            .await
        {
            return;
        }
        self.record_up(&raw);
        let Some(device_id) = self.device_id.clone() else {
            return;
        };
        let id = frame.physical_id;
        let msg_id = frame.message_id;
        match frame.message {
            Message::Register(r) => {
                self.reply(Frame::ack(id, msg_id, 0x20));
                self.learn_port_count(i64::from(r.port_count)).await;
                if let Err(e) = self
                    .service
                    .device_info(
                        &device_id,
                        firmware.as_deref(),
                        None,
                        Some(i64::from(r.port_count)),
                    )
                    .await
                {
                    tracing::warn!(error = %e, "could not store registration data");
                }
            }
            Message::Heartbeat(h) => {
                // Answered from memory: no database round-trip on the hot path.
                self.reply(Frame::ack(id, msg_id, 0x21));
                self.service
                    .heartbeat(&device_id, "ap3000", None, Some(i64::from(h.signal)));
                let statuses = h.ports.as_slice();
                self.learn_port_count(statuses.len() as i64).await;
                let reports = statuses
                    .iter()
                    .enumerate()
                    .map(|(i, st)| PortReport {
                        port_no: i as u32 + 1,
                        socket_no: None,
                        hole: None,
                        status: port_status(st.0),
                        power_dw: 0,
                        status_changed: false,
                    })
                    .collect();
                self.report_ports(reports).await;
            }
            Message::LegacyHeartbeat(_) => {
                self.reply(Frame::ack(id, msg_id, 0x01));
                self.service.heartbeat(&device_id, "ap3000", None, None);
            }
            Message::TimeRequest => {
                let now = unix_now(self);
                self.reply(Frame::time_reply(id, msg_id, now));
            }
            Message::PowerHeartbeat(p) => {
                let Some(port_no) = pile_protocol::port::ap3000_port_no(p.port) else {
                    return;
                };
                let report = ProgressReport {
                    port_no: u32::from(port_no),
                    device_ref: Some(p.order_no.to_string()),
                    duration_sec: i64::from(p.duration_s),
                    energy_wh: i64::from(p.energy_cwh) * 10,
                    power_dw: i64::from(p.power_dw),
                    peak_power_dw: p.peak_power_dw.map(i64::from),
                };
                match self.service.progress(&device_id, &report).await {
                    Ok(Some(outcome)) if outcome.amount_used_up => {
                        self.gateway_stop(&outcome.order_no, u32::from(port_no))
                            .await;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "progress not stored"),
                }
                self.report_ports(vec![PortReport {
                    port_no: u32::from(port_no),
                    socket_no: None,
                    hole: None,
                    status: PortStatus::Charging,
                    power_dw: i64::from(p.power_dw),
                    status_changed: false,
                }])
                .await;
            }
            Message::Settlement(st) => {
                let Some(port_no) = pile_protocol::port::ap3000_port_no(st.port) else {
                    return;
                };
                let report = EndReport {
                    port_no: u32::from(port_no),
                    device_ref: Some(st.order_no.to_string()),
                    device_duration_sec: Some(i64::from(st.duration_s)),
                    duration_resolution_sec: 1,
                    energy_wh: i64::from(st.energy_cwh) * 10,
                    peak_power_dw: Some(i64::from(st.max_power_dw)),
                    end_reason: EndReason::from_ap3000(st.stop_reason.0),
                    bkv_status: None,
                    bkv_end_reason: None,
                    raw_hex: hex::encode(&raw),
                    connected_at_ms: Some(self.connected_at_ms),
                };
                // Acknowledge = committed: no ack when the settlement could not be stored.
                match self.service.end_report(&device_id, &report).await {
                    Ok(outcome) => {
                        if let EndOutcome::Settled { order_no } = &outcome {
                            self.timers.retain(|t| &t.order_no != order_no);
                            // The store set the port idle; let the next report be written whatever it says.
                            self.ports.remove(&report.port_no);
                        }
                        self.reply(Frame::ack(id, msg_id, 0x03));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "settlement not stored; not acknowledged")
                    }
                }
            }
            Message::StartStopReply(r) => {
                let Some(f) = self.take_inflight(u32::from(msg_id)) else {
                    tracing::debug!(msg_id, "reply without a pending command");
                    return;
                };
                let reply_hex = hex::encode(&raw);
                let result = match &f.command {
                    PortCommand::Start {
                        order_no, port_no, ..
                    } if r.result.0 == 0 => {
                        self.confirmed_start(
                            &device_id,
                            f.command_id,
                            order_no,
                            *port_no,
                            &reply_hex,
                        )
                        .await
                    }
                    PortCommand::Start { order_no, .. } => self
                        .service
                        .start_rejected(
                            &device_id,
                            f.command_id,
                            order_no,
                            &reply_hex,
                            r.result.name(),
                        )
                        .await
                        .map(|_| ()),
                    PortCommand::Stop { .. } => {
                        self.service
                            .command_replied(f.command_id, &reply_hex, r.result.name())
                            .await
                    }
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "reply not stored");
                }
            }
            Message::Alarm {
                kind,
                port,
                trigger,
                ..
            } => {
                // The vendor document says 0x42 needs no answer.
                tracing::warn!(kind, port, "device alarm");
                let data = serde_json::json!({"kind": kind, "port": port, "trigger": trigger});
                if let Err(e) = self.service.alarm(&device_id, data).await {
                    tracing::warn!(error = %e, "alarm not stored");
                }
            }
            _ => {}
        }
    }

    fn reply(&mut self, frame: Frame) {
        self.send(Bytes::from(frame.to_vec()), "reply");
    }

    /// Encodes a command as `0x82`; the key is the message ID.
    pub(super) fn encode_ap3000(&mut self, cmd: &PortCommand) -> Option<(u32, Bytes, String)> {
        let id = PhysicalId::from_str(self.device_id.as_deref()?).ok()?;
        let msg_id = self.next_key(u32::from(u16::MAX)) as u16;
        let port = pile_protocol::port::ap3000_wire_port(u16::try_from(cmd.port_no()).ok()?)?;
        let order_ref = |device_ref: &str, order_no: &str| {
            OrderNo::from_str(device_ref)
                .unwrap_or_else(|_| OrderNo::from_bytes(device_order_ref(order_no)))
        };
        let frame = match cmd {
            PortCommand::Start {
                order_no,
                charge_mode,
                duration_sec,
                energy_wh,
                amount,
                device_ref,
                ..
            } => {
                let order = order_ref(device_ref, order_no);
                let balance = u32::try_from((*amount).max(0)).unwrap_or(u32::MAX);
                match charge_mode {
                    1 => Frame::start_by_seconds(
                        id,
                        msg_id,
                        port,
                        u16::try_from(*duration_sec).unwrap_or(u16::MAX),
                        order,
                        balance,
                    ),
                    2 => Frame::start_by_energy(
                        id,
                        msg_id,
                        port,
                        u16::try_from((energy_wh + 9) / 10).unwrap_or(u16::MAX),
                        order,
                        balance,
                    ),
                    // By amount and until full: 0 = until full; the balance caps it.
                    _ => Frame::start_by_seconds(id, msg_id, port, 0, order, balance),
                }
            }
            PortCommand::Stop {
                order_no,
                device_ref,
                ..
            } => Frame::stop(id, msg_id, port, order_ref(device_ref, order_no)),
        };
        Some((
            u32::from(msg_id),
            Bytes::from(frame.to_vec()),
            frame.summary(),
        ))
    }
}
