//! The BKV strategy: heartbeats answered with the server time (devices keep local time, offset
//! from UTC by `--device-utc-offset`), 0x1017 status reports acknowledged and read as port states
//! and progress, end reports (0x02, 0x1004, 0x18) read with their acks held until the
//! settlement is committed, commands as 0x0015/0x07 (time, energy, stop), 0x1000/0x1007 (by
//! amount) and 0x0015/0x1D (port query); replies matched by frame sequence.

use bytes::{Bytes, BytesMut};
use pile_api::PortStatus;
use pile_protocol::bkv::{
    BcdTime, Decoder, Direction, FeeTier, Frame, GatewayId, HourMinute, Message, SocketState,
    SocketStatus,
};
use pile_protocol::Item;

use super::{CommandSpec, Decoded, DeviceEvent, EndObs, PortObs, ProgressObs, Reply};
use crate::domain::{self, DeviceReason};

/// BKV socket status bits → platform port status.
pub(crate) fn port_status(s: SocketStatus) -> PortStatus {
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

/// The device's handle of a charge: its business number (0 = none).
pub fn business_ref(business_no: u16) -> Option<String> {
    (business_no != 0).then(|| format!("bkv:{business_no}"))
}

/// Unix ms → the devices' local BCD time.
pub fn bcd_time(unix_ms: i64, offset_sec: i64) -> BcdTime {
    use chrono::{Datelike, Timelike};
    let t = chrono::DateTime::from_timestamp(unix_ms.div_euclid(1000) + offset_sec, 0)
        .unwrap_or_default();
    BcdTime {
        year: u16::try_from(t.year()).unwrap_or(2000),
        month: t.month() as u8,
        day: t.day() as u8,
        hour: t.hour() as u8,
        minute: t.minute() as u8,
        second: t.second() as u8,
    }
}

/// A device's local calendar time → Unix ms.
fn local_to_unix_ms(
    year: u16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    offset_sec: i64,
) -> Option<i64> {
    let d = chrono::NaiveDate::from_ymd_opt(i32::from(year), u32::from(month), u32::from(day))?;
    let t = d.and_hms_opt(u32::from(hour), u32::from(minute), u32::from(second))?;
    Some((t.and_utc().timestamp() - offset_sec) * 1000)
}

pub(super) struct Bkv {
    decoder: Decoder,
    gw: Option<GatewayId>,
    next_seq: u32,
    offset_sec: i64,
    firmware: Option<String>,
    signal: Option<u8>,
    /// Highest port number reported on this connection (a report covers only some sockets).
    ports_seen: i64,
}

impl Bkv {
    pub fn new(max_frame: usize, offset_sec: i64) -> Self {
        Bkv {
            decoder: Decoder::with_max_frame_len(max_frame),
            gw: None,
            next_seq: 0,
            offset_sec,
            firmware: None,
            signal: None,
            ports_seen: 0,
        }
    }

    fn seq(&mut self) -> u32 {
        self.next_seq = self.next_seq.wrapping_add(1);
        if self.next_seq == 0 {
            self.next_seq = 1;
        }
        self.next_seq
    }

    /// One item from the front of `buf`: events for the core, immediate answers in `replies`.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        now_ms: i64,
        events: &mut Vec<DeviceEvent>,
        replies: &mut Vec<Bytes>,
    ) -> Option<Decoded> {
        let item = self.decoder.decode(buf)?;
        Some(match item {
            Item::Frame { frame, raw } => {
                if frame.direction != Direction::Up {
                    return Some(Decoded::Diagnostic {
                        raw,
                        text: "a downlink frame from a device".into(),
                        kind: "invalid",
                    });
                }
                let first = match self.gw {
                    None => {
                        self.gw = Some(frame.gateway_id);
                        true
                    }
                    Some(g) if g != frame.gateway_id => return Some(Decoded::Foreign),
                    Some(_) => false,
                };
                self.on_frame(&frame, &raw, first, now_ms, events, replies);
                Decoded::Frame { raw }
            }
            Item::Diagnostic(d) => Decoded::Diagnostic {
                text: format!("skipped {} byte(s): {}", d.skipped, d.error),
                kind: super::error_kind(&d.error),
                raw: d.raw,
            },
            Item::Iccid(i) => Decoded::Iccid(i),
            Item::KeepAlive => Decoded::KeepAlive,
        })
    }

    fn on_frame(
        &mut self,
        frame: &Frame,
        raw: &Bytes,
        first: bool,
        now_ms: i64,
        events: &mut Vec<DeviceEvent>,
        replies: &mut Vec<Bytes>,
    ) {
        let gw = frame.gateway_id;
        if first {
            let (firmware, signal, iccid) = match &frame.message {
                Message::Heartbeat(h) => (
                    Some(h.firmware_str().to_string()),
                    Some(i64::from(h.signal)),
                    Some(h.iccid_str().to_string()),
                ),
                _ => (None, None, None),
            };
            if let Message::Heartbeat(h) = &frame.message {
                self.firmware = firmware.clone();
                self.signal = Some(h.signal);
            }
            events.push(DeviceEvent::Hello {
                device_id: Some(gw.to_string()),
                firmware,
                signal,
                iccid,
                port_count: None,
            });
        }
        match &frame.message {
            Message::Heartbeat(h) => {
                replies.push(
                    Frame::heartbeat_reply(gw, frame.seq, bcd_time(now_ms, self.offset_sec))
                        .to_bytes(),
                );
                super::meters().heartbeat_bkv.increment(1);
                if !first {
                    // Allocation-free unless something changed.
                    let fw = h.firmware_str();
                    let firmware = (self.firmware.as_deref() != Some(fw)).then(|| {
                        self.firmware = Some(fw.to_string());
                        fw.to_string()
                    });
                    let signal = (self.signal != Some(h.signal)).then(|| {
                        self.signal = Some(h.signal);
                        i64::from(h.signal)
                    });
                    if firmware.is_some() || signal.is_some() {
                        events.push(DeviceEvent::Hello {
                            device_id: None,
                            firmware,
                            signal,
                            iccid: None,
                            port_count: None,
                        });
                    }
                }
            }
            Message::StatusReport(r) => {
                replies.push(Frame::status_report_ack(frame, true).to_bytes());
                let states = r.socket_states();
                let (ports, progress) = sockets(&states);
                if let Some(n) = max_port(&states).filter(|n| *n > self.ports_seen) {
                    self.ports_seen = n;
                    events.push(DeviceEvent::Hello {
                        device_id: None,
                        firmware: None,
                        signal: None,
                        iccid: None,
                        port_count: Some(n),
                    });
                }
                events.push(DeviceEvent::Ports(ports));
                events.extend(progress.into_iter().map(DeviceEvent::Progress));
            }
            Message::SocketState(st) => {
                let (ports, _) = sockets(std::slice::from_ref(st));
                events.push(DeviceEvent::QueryAnswer {
                    key: frame.seq,
                    ports,
                });
            }
            Message::ControlReply(r) => events.push(DeviceEvent::Reply {
                key: frame.seq,
                reply: if r.result == 1 {
                    Reply::Done {
                        device_ref: business_ref(r.business_no),
                    }
                } else {
                    Reply::Refused {
                        reason: "refused".into(),
                    }
                },
            }),
            Message::PowerChargeReply(r) => events.push(DeviceEvent::Reply {
                key: frame.seq,
                reply: if r.result == 1 {
                    Reply::Done {
                        device_ref: business_ref(r.business_no),
                    }
                } else {
                    Reply::Refused {
                        reason: "refused".into(),
                    }
                },
            }),
            Message::FeeChargeReply(a) => events.push(DeviceEvent::Reply {
                key: frame.seq,
                reply: if a.result == 1 {
                    Reply::Done { device_ref: None }
                } else {
                    Reply::Refused {
                        reason: "refused".into(),
                    }
                },
            }),
            Message::ChargeEnd(e) => {
                let obs = EndObs {
                    port_no: u32::from(
                        pile_protocol::port::bkv_port_no(e.socket, e.hole).unwrap_or(0),
                    ),
                    device_ref: business_ref(e.business_no),
                    energy_wh: i64::from(e.energy_wh),
                    device_duration_sec: Some(i64::from(e.minutes) * 60),
                    duration_resolution_sec: 60,
                    device_end_at_ms: None,
                    peak_power_dw: None,
                    reason: DeviceReason::Bkv {
                        explicit: None,
                        status: e.status.0,
                    },
                    seen_live: false,
                    stop_written_at_ms: None,
                    raw_hex: hex::encode(raw),
                };
                let ack = Frame::charge_end_ack(gw, frame.seq, e.socket, e.hole, true).to_bytes();
                events.push(DeviceEvent::End(obs, ack));
            }
            Message::ChargeEndReport(e) => {
                let obs = EndObs {
                    port_no: u32::from(e.port_no().unwrap_or(0)),
                    device_ref: business_ref(e.business_no()),
                    energy_wh: i64::from(e.energy_wh()),
                    device_duration_sec: Some(i64::from(e.minutes()) * 60),
                    duration_resolution_sec: 60,
                    // Tag 0x2E is optional (older / partial reports).
                    device_end_at_ms: e.end_time().and_then(|t| {
                        local_to_unix_ms(
                            t.year,
                            t.month,
                            t.day,
                            t.hour,
                            t.minute,
                            t.second,
                            self.offset_sec,
                        )
                    }),
                    peak_power_dw: None,
                    reason: DeviceReason::Bkv {
                        explicit: e.end_reason().map(|r| r.0),
                        status: e.status().0,
                    },
                    seen_live: false,
                    stop_written_at_ms: None,
                    raw_hex: hex::encode(raw),
                };
                let ack =
                    Frame::charge_end_report_ack(frame, e.socket(), e.hole(), true).to_bytes();
                events.push(DeviceEvent::End(obs, ack));
            }
            Message::PowerChargeEnd(e) => {
                let t = e.end_time;
                let obs = EndObs {
                    port_no: u32::from(
                        pile_protocol::port::bkv_port_no(e.socket, e.hole).unwrap_or(0),
                    ),
                    device_ref: business_ref(e.business_no),
                    energy_wh: i64::from(e.energy_wh),
                    device_duration_sec: Some(i64::from(e.minutes) * 60),
                    duration_resolution_sec: 60,
                    device_end_at_ms: local_to_unix_ms(
                        t.year,
                        t.month,
                        t.day,
                        t.hour,
                        t.minute,
                        t.second,
                        self.offset_sec,
                    ),
                    peak_power_dw: Some(i64::from(e.settle_power_dw)),
                    reason: DeviceReason::Bkv {
                        explicit: Some(e.end_reason.0),
                        status: e.status.0,
                    },
                    seen_live: false,
                    stop_written_at_ms: None,
                    raw_hex: hex::encode(raw),
                };
                // 0x18 is acknowledged with 0x18 (our rule, like 0x02), not with a 0x02 ack.
                let ack =
                    Frame::power_charge_end_ack(gw, frame.seq, e.socket, e.hole, true).to_bytes();
                events.push(DeviceEvent::End(obs, ack));
            }
            _ => {}
        }
    }

    /// Encodes a command; the key is the frame sequence. `None` when BKV has no such command
    /// or the port is out of range.
    pub fn encode(&mut self, cmd: &CommandSpec) -> Option<(u32, Bytes)> {
        let gw = self.gw?;
        let port = u16::try_from(cmd.port_no().unwrap_or(1)).ok()?;
        let (socket, hole) = pile_protocol::port::bkv_socket_hole(port)?;
        let seq = self.seq();
        let clamp16 = |v: i64| u16::try_from(v.clamp(0, 65_535)).unwrap_or(u16::MAX);
        let frame = match cmd {
            CommandSpec::Start {
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
                2 => Frame::start_by_energy(gw, seq, socket, hole, clamp16((*energy_wh).max(1))),
                3 => Frame::fee_charge(
                    gw,
                    seq,
                    socket,
                    hole,
                    true,
                    1,
                    clamp16(*amount),
                    1,
                    vec![FeeTier {
                        time: HourMinute {
                            hour: 23,
                            minute: 59,
                        },
                        energy_price_fen: clamp16(*price_per_kwh),
                        service_fee_fen: clamp16(*service_fee),
                    }],
                ),
                // Until full: the longest time target; the device stops when full.
                _ => Frame::start_by_time(gw, seq, socket, hole, 900),
            },
            CommandSpec::Stop { .. } => Frame::stop(gw, seq, socket, hole),
            CommandSpec::Query { .. } => Frame::query_socket(gw, seq, socket),
            CommandSpec::Locate { .. } => return None,
        };
        Some((seq, frame.to_bytes()))
    }
}

fn max_port(sockets: &[SocketState]) -> Option<i64> {
    sockets.iter().map(|s| i64::from(s.socket) * 2).max()
}

/// Port states and progress samples of reported sockets.
fn sockets(sockets: &[SocketState]) -> (Vec<PortObs>, Vec<ProgressObs>) {
    let mut ports = Vec::new();
    let mut progress = Vec::new();
    for s in sockets {
        for h in &s.holes {
            let Some(port_no) = pile_protocol::port::bkv_port_no(s.socket, h.hole) else {
                continue;
            };
            let status = port_status(h.status);
            let charging = status == PortStatus::Charging;
            ports.push(PortObs {
                port_no: u32::from(port_no),
                socket_no: Some(u32::from(s.socket)),
                hole: Some(u32::from(h.hole)),
                status,
                power_dw: i64::from(h.power_dw),
                device_ref: if charging {
                    business_ref(h.business_no)
                } else {
                    None
                },
            });
            if charging {
                progress.push(ProgressObs {
                    port_no: u32::from(port_no),
                    device_ref: business_ref(h.business_no),
                    device_duration_sec: i64::from(h.minutes) * 60,
                    duration_resolution_sec: 60,
                    energy_wh: i64::from(h.energy_wh),
                    power_dw: i64::from(h.power_dw),
                    peak_power_dw: None,
                    device_at_ms: None,
                });
            }
        }
    }
    (ports, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_local_time_round_trips_through_the_offset() {
        let unix_ms = 1_764_600_000_000; // 2025-12-01T14:40:00Z
        let t = bcd_time(unix_ms, 8 * 3600);
        assert_eq!((t.hour, t.minute), (22, 40));
        assert_eq!(
            local_to_unix_ms(t.year, t.month, t.day, t.hour, t.minute, t.second, 8 * 3600),
            Some(unix_ms)
        );
        let utc = bcd_time(unix_ms, 0);
        assert_eq!(utc.hour, 14);
    }
}
