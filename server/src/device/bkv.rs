//! BKV sessions: answers heartbeats (server time), acknowledges 0x1017 status reports and
//! end reports (0x02, 0x1004), learns sockets, sends 0x07 and 0x1007.

use std::str::FromStr;

use bytes::Bytes;
use pile_api::PortStatus;
use pile_protocol::bkv::{
    BcdTime, Direction, FeeTier, Frame, GatewayId, HourMinute, Message, SocketState, SocketStatus,
};
use tokio::time::{Duration, Instant};

use super::session::{Session, StopTimer};
use crate::domain::{self, EndReason};
use crate::gateway::PortCommand;
use crate::service::{EndOutcome, EndReport, PortReport, ProgressReport};

/// BKV socket status bits → platform port status.
fn port_status(s: SocketStatus) -> PortStatus {
    if !s.online() {
        PortStatus::Offline
    } else if s.metering_fault() || s.over_temperature() || s.over_current() || s.over_power() {
        PortStatus::Fault
    } else if s.charging() {
        PortStatus::Charging
    } else {
        PortStatus::Idle
    }
}

/// Devices keep China Standard Time.
fn bcd_now(unix: i64) -> BcdTime {
    use chrono::{Datelike, Timelike};
    let t = chrono::DateTime::from_timestamp(unix + 8 * 3600, 0).unwrap_or_default();
    BcdTime {
        year: u16::try_from(t.year()).unwrap_or(2000),
        month: t.month() as u8,
        day: t.day() as u8,
        hour: t.hour() as u8,
        minute: t.minute() as u8,
        second: t.second() as u8,
    }
}

fn business_ref(business_no: u16) -> Option<String> {
    (business_no != 0).then(|| format!("bkv:{business_no}"))
}

impl Session {
    pub(super) async fn on_bkv(&mut self, frame: Frame, raw: Bytes) {
        if frame.direction != Direction::Up {
            metrics::counter!(crate::metrics::FRAME_ERRORS, "protocol" => "bkv", "kind" => "downlink_from_device").increment(1);
            return;
        }
        let (firmware, signal) = match &frame.message {
            Message::Heartbeat(h) => (
                Some(h.firmware_str().to_string()),
                Some(i64::from(h.signal)),
            ),
            _ => (None, None),
        };
        if let Message::Heartbeat(h) = &frame.message {
            if self.iccid.is_none() {
                self.iccid = Some(h.iccid_str().to_string());
            }
        }
        if !self
            .identify(
                frame.gateway_id.to_string(),
                "bkv",
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
        let gw = frame.gateway_id;
        match &frame.message {
            Message::Heartbeat(_) => {
                // Answered from memory: no database round-trip on the hot path.
                let now = bcd_now(self.service.clock.now_sec());
                self.reply_bkv(Frame::heartbeat_reply(gw, frame.seq, now));
                self.service.heartbeat(&device_id, "bkv", firmware, signal);
            }
            Message::StatusReport(r) => {
                self.reply_bkv(Frame::status_report_ack(&frame, true));
                let sockets = r.socket_states();
                self.bkv_sockets(&device_id, &sockets).await;
            }
            Message::SocketState(st) => {
                let st = st.clone();
                self.bkv_sockets(&device_id, std::slice::from_ref(&st))
                    .await;
            }
            Message::ControlReply(r) => {
                let (ok, business_no) = (r.result == 1, r.business_no);
                self.bkv_reply(&device_id, frame.seq, ok, Some(business_no), &raw)
                    .await;
            }
            Message::FeeChargeReply(a) => {
                self.bkv_reply(&device_id, frame.seq, a.result == 1, None, &raw)
                    .await;
            }
            Message::ChargeEnd(e) => {
                let report = EndReport {
                    port_no: u32::from(
                        pile_protocol::port::bkv_port_no(e.socket, e.hole).unwrap_or(0),
                    ),
                    device_ref: business_ref(e.business_no),
                    device_duration_sec: Some(i64::from(e.minutes) * 60),
                    duration_resolution_sec: 60,
                    energy_wh: i64::from(e.energy_wh),
                    peak_power_dw: None,
                    end_reason: EndReason::Unknown,
                    bkv_status: Some(e.status.0),
                    bkv_end_reason: None,
                    raw_hex: hex::encode(&raw),
                    connected_at_ms: Some(self.connected_at_ms),
                };
                if self.bkv_end(&device_id, &report).await {
                    self.reply_bkv(Frame::charge_end_ack(gw, frame.seq, e.socket, e.hole, true));
                }
            }
            Message::ChargeEndReport(e) => {
                let report = EndReport {
                    port_no: u32::from(e.port_no().unwrap_or(0)),
                    device_ref: business_ref(e.business_no()),
                    device_duration_sec: Some(i64::from(e.minutes()) * 60),
                    duration_resolution_sec: 60,
                    energy_wh: i64::from(e.energy_wh()),
                    peak_power_dw: None,
                    end_reason: EndReason::Unknown,
                    bkv_status: Some(e.status().0),
                    bkv_end_reason: e.end_reason().map(|r| r.0),
                    raw_hex: hex::encode(&raw),
                    connected_at_ms: Some(self.connected_at_ms),
                };
                if self.bkv_end(&device_id, &report).await {
                    let ack = Frame::charge_end_report_ack(&frame, e.socket(), e.hole(), true);
                    self.reply_bkv(ack);
                }
            }
            Message::PowerChargeEnd(e) => {
                let report = EndReport {
                    port_no: u32::from(
                        pile_protocol::port::bkv_port_no(e.socket, e.hole).unwrap_or(0),
                    ),
                    device_ref: business_ref(e.business_no),
                    device_duration_sec: Some(i64::from(e.minutes) * 60),
                    duration_resolution_sec: 60,
                    energy_wh: i64::from(e.energy_wh),
                    peak_power_dw: Some(i64::from(e.settle_power_dw)),
                    end_reason: EndReason::Unknown,
                    bkv_status: Some(e.status.0),
                    bkv_end_reason: Some(e.end_reason.0),
                    raw_hex: hex::encode(&raw),
                    connected_at_ms: Some(self.connected_at_ms),
                };
                if self.bkv_end(&device_id, &report).await {
                    let ack = Frame::power_charge_end_ack(gw, frame.seq, e.socket, e.hole, true);
                    self.reply_bkv(ack);
                }
            }
            _ => {}
        }
    }

    /// Settles (once) and says whether to acknowledge: only when committed.
    async fn bkv_end(&mut self, device_id: &str, report: &EndReport) -> bool {
        match self.service.end_report(device_id, report).await {
            Ok(outcome) => {
                if let EndOutcome::Settled { order_no } = &outcome {
                    self.timers.retain(|t| &t.order_no != order_no);
                    // The store set the port idle; let the next report be written whatever it says.
                    self.ports.remove(&report.port_no);
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "end report not stored; not acknowledged");
                false
            }
        }
    }

    async fn bkv_reply(
        &mut self,
        device_id: &str,
        seq: u32,
        ok: bool,
        business_no: Option<u16>,
        raw: &Bytes,
    ) {
        let Some(f) = self.take_inflight(seq) else {
            tracing::debug!(seq, "reply without a pending command");
            return;
        };
        let reply_hex = hex::encode(raw);
        let result = match &f.command {
            PortCommand::Start {
                order_no,
                charge_mode,
                duration_sec,
                port_no,
                ..
            } if ok => {
                if let Some(r) = business_no.and_then(business_ref) {
                    if let Err(e) = self.service.store.set_device_ref(order_no, &r).await {
                        tracing::warn!(error = %e, "business number not stored");
                    }
                }
                // Time targets that are not whole minutes: the device runs to the next
                // minute; the gateway stops it at the exact second.
                if *charge_mode == 1 && duration_sec % 60 != 0 {
                    self.timers.push(StopTimer {
                        at: Instant::now()
                            + Duration::from_secs(u64::try_from(*duration_sec).unwrap_or(0)),
                        order_no: order_no.clone(),
                        port_no: *port_no,
                    });
                }
                self.confirmed_start(device_id, f.command_id, order_no, *port_no, &reply_hex)
                    .await
            }
            PortCommand::Start { order_no, .. } => self
                .service
                .start_rejected(device_id, f.command_id, order_no, &reply_hex, "refused")
                .await
                .map(|_| ()),
            PortCommand::Stop { .. } => {
                self.service
                    .command_replied(f.command_id, &reply_hex, if ok { "ok" } else { "refused" })
                    .await
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "reply not stored");
        }
    }

    async fn bkv_sockets(&mut self, device_id: &str, sockets: &[SocketState]) {
        let mut reports = Vec::new();
        let mut max_port = 0i64;
        for s in sockets {
            for h in &s.holes {
                let Some(port_no) = pile_protocol::port::bkv_port_no(s.socket, h.hole) else {
                    continue;
                };
                max_port = max_port.max(i64::from(s.socket) * 2);
                let status = port_status(h.status);
                reports.push(PortReport {
                    port_no: u32::from(port_no),
                    socket_no: Some(u32::from(s.socket)),
                    hole: Some(u32::from(h.hole)),
                    status,
                    power_dw: i64::from(h.power_dw),
                    status_changed: false,
                });
                if status == PortStatus::Charging {
                    let p = ProgressReport {
                        port_no: u32::from(port_no),
                        device_ref: business_ref(h.business_no),
                        duration_sec: i64::from(h.minutes) * 60,
                        energy_wh: i64::from(h.energy_wh),
                        power_dw: i64::from(h.power_dw),
                        peak_power_dw: None,
                    };
                    if let Err(e) = self.service.progress(device_id, &p).await {
                        tracing::warn!(error = %e, "progress not stored");
                    }
                }
            }
        }
        self.learn_port_count(max_port).await;
        self.report_ports(reports).await;
    }

    fn reply_bkv(&mut self, frame: Frame) {
        self.send(frame.to_bytes(), "reply");
    }

    /// Encodes a command as 0x0015/0x07 (time, energy, stop) or 0x1000/0x1007 (amount);
    /// the key is the frame sequence.
    pub(super) fn encode_bkv(&mut self, cmd: &PortCommand) -> Option<(u32, Bytes, String)> {
        let gw = GatewayId::from_str(self.device_id.as_deref()?).ok()?;
        let seq = self.next_key(u32::MAX);
        let (socket, hole) =
            pile_protocol::port::bkv_socket_hole(u16::try_from(cmd.port_no()).ok()?)?;
        let frame = match cmd {
            PortCommand::Start {
                charge_mode,
                duration_sec,
                energy_wh,
                amount,
                price_per_kwh,
                service_fee,
                ..
            } => match charge_mode {
                1 => {
                    let minutes = domain::minutes_rounded_up(*duration_sec).clamp(1, 900);
                    Frame::start_by_time(gw, seq, socket, hole, minutes as u16)
                }
                2 => Frame::start_by_energy(
                    gw,
                    seq,
                    socket,
                    hole,
                    u16::try_from((*energy_wh).clamp(1, 65_535)).unwrap_or(u16::MAX),
                ),
                3 => Frame::fee_charge(
                    gw,
                    seq,
                    socket,
                    hole,
                    true,
                    1,
                    u16::try_from((*amount).clamp(0, 65_535)).unwrap_or(u16::MAX),
                    1,
                    vec![FeeTier {
                        time: HourMinute {
                            hour: 23,
                            minute: 59,
                        },
                        energy_price_fen: u16::try_from((*price_per_kwh).clamp(0, 65_535))
                            .unwrap_or(u16::MAX),
                        service_fee_fen: u16::try_from((*service_fee).clamp(0, 65_535))
                            .unwrap_or(u16::MAX),
                    }],
                ),
                // Until full: the longest time target; the device stops when full.
                _ => Frame::start_by_time(gw, seq, socket, hole, 900),
            },
            PortCommand::Stop { .. } => Frame::stop(gw, seq, socket, hole),
        };
        Some((seq, frame.to_bytes(), frame.summary()))
    }
}
