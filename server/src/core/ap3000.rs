//! The AP3000 ("DNY") strategy: 0x20 / 0x21 / 0x01 answered, 0x22 answered with Unix time,
//! 0x06 power heartbeats read as progress, 0x03 settlements read with their ack held until the
//! settlement is committed, commands as 0x82 (start / stop, carrying the 16-byte order number,
//! so a resend is idempotent) and 0x81 (query); replies matched by message ID.

use std::str::FromStr;

use bytes::{Bytes, BytesMut};
use pile_api::PortStatus;
use pile_protocol::ap3000::{Decoder, Direction, Frame, Message, OrderNo, PhysicalId};
use pile_protocol::Item;

use super::{CommandSpec, Decoded, DeviceEvent, EndObs, PortObs, ProgressObs, Reply};
use crate::domain::DeviceReason;

/// AP3000 port status byte → platform port status.
pub(crate) fn port_status(raw: u8) -> PortStatus {
    match raw {
        0 => PortStatus::Idle,
        1 | 5 => PortStatus::Charging,
        2 | 3 => PortStatus::Plugged,
        _ => PortStatus::Fault,
    }
}

/// The 16-byte device order number derived from an order number (AP3000 `0x82`).
pub fn device_order_ref(order_no: &str) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(order_no.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

pub(super) struct Ap3000 {
    decoder: Decoder,
    id: Option<PhysicalId>,
    next_msg: u16,
    signal: Option<u8>,
    port_count: Option<usize>,
}

impl Ap3000 {
    pub fn new(max_frame: usize) -> Self {
        Ap3000 {
            decoder: Decoder::new(Direction::FromDevice).with_max_frame_len(max_frame),
            id: None,
            next_msg: 0,
            signal: None,
            port_count: None,
        }
    }

    /// A message ID for something this connection says of its own accord: the upper half of
    /// the space (`0x8000..=0xFFFF`), so it never equals a durable command's ID.
    fn msg_id(&mut self) -> u16 {
        self.next_msg = self.next_msg.wrapping_add(1) & 0x7FFF;
        0x8000 | self.next_msg
    }

    /// The message ID of a durable command: derived from its ID (`1..=0x7FFF`), so every write
    /// of it — on this connection or a later one, by this gateway process or another — carries
    /// the same ID. The vendor's rule (§1.03: "重发的命令的消息ID必须相同") is what lets a pile
    /// that already ran the command recognise a resend and not run it again.
    pub fn command_msg_id(command_id: i64) -> u16 {
        (command_id.rem_euclid(0x7FFF) + 1) as u16
    }

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
                let first = match self.id {
                    None => {
                        self.id = Some(frame.physical_id);
                        true
                    }
                    Some(id) if id != frame.physical_id => return Some(Decoded::Foreign),
                    Some(_) => false,
                };
                self.on_frame(frame, &raw, first, now_ms, events, replies);
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
        frame: Frame,
        raw: &Bytes,
        first: bool,
        now_ms: i64,
        events: &mut Vec<DeviceEvent>,
        replies: &mut Vec<Bytes>,
    ) {
        let id = frame.physical_id;
        let msg_id = frame.message_id;
        let mut hello = first.then(|| DeviceEvent::Hello {
            device_id: Some(id.to_string()),
            firmware: None,
            signal: None,
            iccid: None,
            port_count: None,
        });
        let reply = |f: Frame| Bytes::from(f.to_vec());
        match frame.message {
            Message::Register(r) => {
                replies.push(reply(Frame::ack(id, msg_id, 0x20)));
                self.port_count = Some(usize::from(r.port_count));
                let h = hello.get_or_insert(DeviceEvent::Hello {
                    device_id: None,
                    firmware: None,
                    signal: None,
                    iccid: None,
                    port_count: None,
                });
                if let DeviceEvent::Hello {
                    firmware,
                    port_count,
                    ..
                } = h
                {
                    *firmware = Some(r.firmware.to_string());
                    *port_count = Some(i64::from(r.port_count));
                }
            }
            Message::Heartbeat(h) => {
                replies.push(reply(Frame::ack(id, msg_id, 0x21)));
                super::meters().heartbeat_ap3000.increment(1);
                let statuses = h.ports.as_slice();
                let count_changed = self.port_count.is_none_or(|n| statuses.len() > n);
                let signal_changed = self.signal != Some(h.signal);
                if count_changed || signal_changed || first {
                    if count_changed {
                        self.port_count = Some(statuses.len());
                    }
                    self.signal = Some(h.signal);
                    let e = hello.get_or_insert(DeviceEvent::Hello {
                        device_id: None,
                        firmware: None,
                        signal: None,
                        iccid: None,
                        port_count: None,
                    });
                    if let DeviceEvent::Hello {
                        signal, port_count, ..
                    } = e
                    {
                        *signal = Some(i64::from(h.signal));
                        if count_changed {
                            *port_count = Some(statuses.len() as i64);
                        }
                    }
                }
                events.extend(hello.take());
                events.push(DeviceEvent::Ports(
                    statuses
                        .iter()
                        .enumerate()
                        .map(|(i, st)| PortObs {
                            port_no: i as u32 + 1,
                            socket_no: None,
                            hole: None,
                            status: port_status(st.0),
                            power_dw: 0,
                            device_ref: None,
                        })
                        .collect(),
                ));
            }
            Message::LegacyHeartbeat(_) => {
                replies.push(reply(Frame::ack(id, msg_id, 0x01)));
                super::meters().heartbeat_ap3000.increment(1);
            }
            Message::TimeRequest => {
                let unix = u32::try_from(now_ms.div_euclid(1000)).unwrap_or(0);
                replies.push(reply(Frame::time_reply(id, msg_id, unix)));
            }
            Message::PowerHeartbeat(p) => {
                if let Some(port_no) = pile_protocol::port::ap3000_port_no(p.port) {
                    let r = p.order_no.to_string();
                    // The port state follows from the sample in the core, which knows whether
                    // it is live or replayed from the device's memory.
                    events.extend(hello.take());
                    events.push(DeviceEvent::Progress(ProgressObs {
                        port_no: u32::from(port_no),
                        device_ref: Some(r),
                        device_duration_sec: i64::from(p.duration_s),
                        duration_resolution_sec: 1,
                        energy_wh: i64::from(p.energy_cwh) * 10,
                        power_dw: i64::from(p.power_dw),
                        peak_power_dw: p.peak_power_dw.map(i64::from),
                        device_at_ms: p.timestamp.filter(|t| *t > 0).map(|t| i64::from(t) * 1000),
                    }));
                }
            }
            Message::Settlement(st) => {
                if let Some(port_no) = pile_protocol::port::ap3000_port_no(st.port) {
                    let obs = EndObs {
                        port_no: u32::from(port_no),
                        device_ref: Some(st.order_no.to_string()),
                        energy_wh: i64::from(st.energy_cwh) * 10,
                        device_duration_sec: Some(i64::from(st.duration_s)),
                        duration_resolution_sec: 1,
                        device_end_at_ms: st
                            .timestamp
                            .filter(|t| *t > 0)
                            .map(|t| i64::from(t) * 1000),
                        peak_power_dw: Some(i64::from(st.max_power_dw)),
                        reason: DeviceReason::Ap3000(st.stop_reason.0),
                        seen_live: false,
                        stop_written_at_ms: None,
                        raw_hex: hex::encode(raw),
                    };
                    events.extend(hello.take());
                    events.push(DeviceEvent::End(obs, reply(Frame::ack(id, msg_id, 0x03))));
                }
            }
            Message::StartStopReply(r) => {
                let reply = match r.result.0 {
                    0 => Reply::Done { device_ref: None },
                    2 => Reply::SameState {
                        // A pre-V6.2 answer has no order number.
                        device_ref: r
                            .order_no
                            .map(|o| o.to_string())
                            .filter(|s| s.bytes().any(|b| b != b'0')),
                    },
                    _ => Reply::Refused {
                        reason: r.result.name().to_string(),
                    },
                };
                events.extend(hello.take());
                events.push(DeviceEvent::Reply {
                    key: u32::from(msg_id),
                    reply,
                });
            }
            // The one-byte answer to 0x96 locate (0 = done).
            Message::Ack {
                command: 0x96,
                result,
                ..
            } => {
                events.extend(hello.take());
                events.push(DeviceEvent::Reply {
                    key: u32::from(msg_id),
                    reply: if result == 0 {
                        Reply::Done { device_ref: None }
                    } else {
                        Reply::Refused {
                            reason: format!("locate refused ({result})"),
                        }
                    },
                });
            }
            Message::Alarm {
                kind,
                port,
                trigger,
                ..
            } => {
                // The vendor document says 0x42 needs no answer.
                events.extend(hello.take());
                events.push(DeviceEvent::Alarm(
                    serde_json::json!({"kind": kind, "port": port, "trigger": trigger}),
                ));
            }
            _ => {}
        }
        // Every branch that adds events puts the hello first; what is left is a frame with
        // nothing else to say.
        events.extend(hello);
    }

    /// Encodes a command; the key is the message ID. `command_id`: the durable command this
    /// is (its message ID follows from it); `None` for what the session asks of its own accord.
    pub fn encode(&mut self, command_id: Option<i64>, cmd: &CommandSpec) -> Option<(u32, Bytes)> {
        let id = self.id?;
        let order_ref = |device_ref: &str, order_no: &str| {
            OrderNo::from_str(device_ref)
                .unwrap_or_else(|_| OrderNo::from_bytes(device_order_ref(order_no)))
        };
        let msg_id = match command_id {
            Some(c) => Self::command_msg_id(c),
            None => self.msg_id(),
        };
        let frame = match cmd {
            CommandSpec::Start {
                order_no,
                port_no,
                charge_mode,
                duration_sec,
                energy_wh,
                amount,
                device_ref,
                ..
            } => {
                let port = pile_protocol::port::ap3000_wire_port(u16::try_from(*port_no).ok()?)?;
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
                    // By amount and until full: 0 = until full; the gateway stops it when the
                    // money is used up.
                    _ => Frame::start_by_seconds(id, msg_id, port, 0, order, balance),
                }
            }
            CommandSpec::Stop {
                order_no,
                port_no,
                device_ref,
            } => {
                let port = pile_protocol::port::ap3000_wire_port(u16::try_from(*port_no).ok()?)?;
                Frame::stop(id, msg_id, port, order_ref(device_ref, order_no))
            }
            CommandSpec::Query { .. } => Frame::query(id, msg_id),
            CommandSpec::Locate { seconds, .. } => Frame::locate(id, msg_id, *seconds),
        };
        Some((u32::from(msg_id), Bytes::from(frame.to_vec())))
    }
}
