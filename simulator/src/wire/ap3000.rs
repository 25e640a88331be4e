//! AP3000 pile: ICCID preamble, 0x20 until answered, 0x22, 0x21 heartbeats,
//! 0x06 while charging, 0x03 settlements, 0x82 answers with the vendor's
//! result codes.

use bytes::{Bytes, BytesMut};
use pile_protocol::ap3000::{
    self, Decoder, Direction, Frame, Heartbeat, Message, OrderNo, PhysicalId, PortStatus,
    PowerHeartbeat, ProtocolVersion, Register, Settlement, StartResult, StartStop, StartStopReply,
    StopReason,
};
use pile_protocol::port::{ap3000_port_no, ap3000_wire_port};
use pile_protocol::Item;
use tokio::time::Instant;

use super::sat_u16;
use crate::firmware::Firmware;
use crate::msg::{
    AckMatch, CommandResult, Down, EndRecord, Order, Origin, PortSel, ProgressRecord, ReplyCtx,
    StartRequest, Target, Up,
};
use crate::pile::{self, Codec, Inbound, PileState};
use std::time::Duration;

const FIRMWARE: u16 = 100;
/// Vendor default maximum charge time: 10 hours.
const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(10 * 3600);
/// 25 °C in the vendor's encoding (value − 65).
const TEMPERATURE_RAW: u8 = 90;

#[derive(Debug)]
pub struct Ap3000Codec {
    decoder: Decoder,
    physical: Option<PhysicalId>,
    next_id: u16,
    /// The protocol revision the pile's firmware speaks.
    firmware: Firmware,
}

impl Default for Ap3000Codec {
    fn default() -> Self {
        Ap3000Codec {
            decoder: Decoder::new(Direction::FromServer),
            physical: None,
            next_id: 0,
            firmware: Firmware::Latest,
        }
    }
}

impl Ap3000Codec {
    fn physical(&mut self, pile: &PileState) -> Option<PhysicalId> {
        if self.physical.is_none() {
            self.physical = pile.id.parse().ok();
        }
        self.physical
    }

    fn next_id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }
}

fn order_no(order: Order) -> OrderNo {
    match order {
        Order::Ap3000(b) => OrderNo(b),
        Order::Bkv(n) => {
            let mut b = [0u8; 16];
            b[14..].copy_from_slice(&n.to_be_bytes());
            OrderNo(b)
        }
    }
}

fn wire_port(port_no: u16) -> u8 {
    ap3000_wire_port(port_no).unwrap_or(0xFF)
}

fn start_mode(origin: Origin) -> u8 {
    // 1 = started online (by the server).
    let _ = origin;
    1
}

fn port_status(port: &pile::Port) -> PortStatus {
    match (&port.charge, port.plugged, port.full) {
        (Some(_), _, _) => PortStatus::CHARGING,
        (None, true, true) => PortStatus::FULL,
        (None, true, false) => PortStatus::PLUGGED,
        (None, false, _) => PortStatus::IDLE,
    }
}

fn progress(p: &ProgressRecord) -> PowerHeartbeat {
    PowerHeartbeat {
        port: wire_port(p.port_no),
        status: PortStatus::CHARGING,
        duration_s: u16::try_from(p.duration_s).unwrap_or(u16::MAX),
        energy_cwh: sat_u16((p.energy_wh / 10.0).floor()),
        start_mode: start_mode(p.origin),
        power_dw: sat_u16(p.power_w * 10.0),
        max_power_dw: sat_u16(p.max_power_w * 10.0),
        min_power_dw: sat_u16(p.min_power_w * 10.0),
        avg_power_dw: sat_u16(p.avg_power_w * 10.0),
        order_no: order_no(p.order),
        period_energy_raw: Some(sat_u16((p.period_energy_wh / 10.0).floor())),
        peak_power_dw: Some(sat_u16(p.max_power_w * 10.0)),
        voltage_dv: Some(sat_u16(p.voltage_v * 10.0)),
        current_ma: Some(sat_u16(p.current_a * 1000.0)),
        ambient_temperature_raw: Some(TEMPERATURE_RAW),
        port_temperature_raw: Some(TEMPERATURE_RAW + 5),
        timestamp: Some(u32::try_from(p.at_unix).unwrap_or(u32::MAX)),
        occupancy_min: Some(0),
        extra: Vec::new(),
    }
}

fn settlement(e: &EndRecord) -> Settlement {
    Settlement {
        duration_s: u16::try_from(e.duration_s).unwrap_or(u16::MAX),
        max_power_dw: sat_u16(e.max_power_w * 10.0),
        energy_cwh: sat_u16((e.energy_wh / 10.0).floor()),
        port: wire_port(e.port_no),
        start_mode: start_mode(e.origin),
        card_id: 0,
        stop_reason: StopReason(e.reason.ap3000_code()),
        order_no: order_no(e.order),
        second_max_power_dw: Some(sat_u16(e.max_power_w * 10.0)),
        timestamp: Some(u32::try_from(e.end_unix).unwrap_or(u32::MAX)),
        occupancy_min: Some(0),
        extra: Vec::new(),
    }
}

fn reply(
    ctx: ReplyCtx,
    port_no: Option<u16>,
    result: CommandResult,
    order: Option<Order>,
) -> StartStopReply {
    StartStopReply {
        result: StartResult(result.ap3000_code()),
        order_no: Some(order.map(order_no).unwrap_or_default()),
        port: Some(port_no.map_or(0xFF, wire_port)),
        waiting_ports: Some(match result {
            CommandResult::SeveralWaiting { ports } => ports,
            _ => 0,
        }),
        extra: {
            let _ = ctx;
            Vec::new()
        },
    }
}

fn start_request(s: &StartStop) -> StartRequest {
    let ext = s.extension_fields();
    let force_full = ext.force_auto_stop == Some(1);
    let limit = match s.max_duration_s {
        Some(secs) if secs > 0 => Duration::from_secs(u64::from(secs)),
        _ => DEFAULT_MAX_DURATION,
    };
    // Vendor §4.2: a duration charges for exactly that long (full does not
    // stop it, nor does the maximum charge time); an energy amount charges
    // until reached (full does not stop it, the maximum time does); 0 and
    // the monthly / per-use modes charge until full.
    let (target, stop_on_full, max_duration) = match (s.rate_mode, s.amount) {
        (StartStop::RATE_ENERGY, n) if n > 0 => (
            Target::Energy {
                wh: f64::from(n) * 10.0,
            },
            force_full,
            Some(limit),
        ),
        (StartStop::RATE_TIME, n) if n > 0 => {
            (Target::Time { secs: u64::from(n) }, force_full, None)
        }
        _ => (Target::Full, true, Some(limit)),
    };
    StartRequest {
        port: if s.port == 0xFF {
            PortSel::Any
        } else {
            ap3000_port_no(s.port).map_or(PortSel::Invalid, PortSel::Port)
        },
        order: Some(Order::Ap3000(s.order_no.0)),
        target,
        stop_on_full,
        max_duration,
        origin: Origin::Ap3000 {
            rate_mode: s.rate_mode,
        },
        billing: None,
    }
}

fn to_down(frame: &Frame, version: ProtocolVersion) -> Down {
    let ctx = ReplyCtx {
        seq: u32::from(frame.message_id),
        tlv_seq: 0,
    };
    // Firmware that predates a command ignores it, without an answer.
    if matches!(frame.message.direction(), Some(Direction::FromServer))
        && !version.knows_command(frame.command())
    {
        return Down::Ignored;
    }
    match &frame.message {
        Message::Ack { command: 0x20, .. } => Down::RegisterAck,
        Message::Ack { command: 0x21, .. } => Down::HeartbeatAck,
        Message::Ack {
            command: 0x03,
            result: 0,
            ..
        } => Down::EndAck(AckMatch::MsgId(frame.message_id)),
        Message::TimeReply { .. } => Down::TimeAck,
        Message::Query => Down::Query,
        Message::Locate { seconds } => Down::Locate {
            ctx,
            seconds: *seconds,
        },
        Message::SetMute { .. } => Down::Setting {
            ctx,
            command: 0x97,
            socket: None,
        },
        Message::StartStop(s) if s.is_start() => Down::Start {
            ctx,
            req: start_request(s),
        },
        Message::StartStop(s) => Down::Stop {
            ctx,
            origin: Origin::Ap3000 {
                rate_mode: s.rate_mode,
            },
            port: ap3000_port_no(s.port).map_or(PortSel::Invalid, PortSel::Port),
            order: Some(Order::Ap3000(s.order_no.0)),
        },
        _ => Down::Ignored,
    }
}

impl Codec for Ap3000Codec {
    fn encode(&mut self, pile: &PileState, up: &Up, _now: Instant) -> Option<Bytes> {
        let pid = self.physical(pile)?;
        let version = self.firmware.ap3000();
        let mut frame = match up {
            Up::Iccid => {
                let mut out = BytesMut::new();
                ap3000::encode_iccid(&pile.iccid, &mut out);
                return Some(out.freeze());
            }
            Up::Link => {
                let mut out = BytesMut::new();
                ap3000::encode_keep_alive(&mut out);
                return Some(out.freeze());
            }
            Up::Register => Frame::register(
                pid,
                self.next_id(),
                Register {
                    firmware: FIRMWARE,
                    port_count: u8::try_from(pile.ports.len()).unwrap_or(u8::MAX),
                    virtual_id: 0,
                    device_type: pid.device_type(),
                    work_mode: Some(0),
                    power_board_version: Some(1),
                    extra: Vec::new(),
                },
            ),
            // 0x22 came with V7.3; older piles keep the time they have.
            Up::GetTime if !version.sends_command(0x22) => return None,
            Up::GetTime => Frame::new(pid, self.next_id(), Message::TimeRequest),
            Up::Heartbeat => {
                let statuses: Vec<PortStatus> = pile.ports.iter().map(port_status).collect();
                let hb = Heartbeat::new(2200, &statuses, 0, TEMPERATURE_RAW)?;
                Frame::heartbeat(pid, self.next_id(), hb)
            }
            Up::Progress(p) => Frame::power_heartbeat(pid, p.msg_id, progress(p)),
            Up::End(e) => Frame::settlement(pid, e.msg_id, settlement(e)),
            Up::StartReply {
                ctx,
                port_no,
                result,
                order,
                ..
            }
            | Up::StopReply {
                ctx,
                port_no,
                result,
                order,
                ..
            } => Frame::new(
                pid,
                ctx.seq as u16,
                Message::StartStopReply(reply(*ctx, *port_no, *result, *order)),
            ),
            Up::SettingAck {
                ctx, command, ok, ..
            } => Frame::device_ack(pid, ctx.seq as u16, *command as u8, u8::from(!ok)),
            Up::Status { .. } | Up::SocketState { .. } => return None,
        };
        // What a pile of an older revision writes: the later fields dropped.
        frame.message.downgrade(version);
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        Some(out.freeze())
    }

    fn decode(&mut self, _pile: &PileState, buf: &mut BytesMut, out: &mut Vec<Inbound>) {
        while let Some(item) = self.decoder.decode(buf) {
            match item {
                Item::Frame { frame, raw } => out.push(Inbound {
                    down: Some(to_down(&frame, self.firmware.ap3000())),
                    raw,
                }),
                Item::Diagnostic(d) => out.push(Inbound {
                    raw: d.raw,
                    down: None,
                }),
                // The server sends neither; nothing to act on.
                Item::Iccid(_) | Item::KeepAlive => {}
            }
        }
    }

    fn corrupt_checksum(&self, frame: &mut [u8]) {
        if frame.starts_with(&ap3000::HEADER) {
            if let Some(last) = frame.last_mut() {
                *last = last.wrapping_add(1);
            }
        }
    }

    fn set_firmware(&mut self, firmware: Firmware) {
        self.firmware = firmware;
    }

    fn firmware(&self) -> Firmware {
        self.firmware
    }

    fn describe(&self, raw: &[u8], dir: pile::Direction) -> String {
        if raw == ap3000::KEEP_ALIVE {
            return "keep-alive link".to_string();
        }
        if !raw.is_empty() && raw.iter().all(u8::is_ascii_digit) {
            return format!("iccid {}", String::from_utf8_lossy(raw));
        }
        let dir = match dir {
            pile::Direction::Up => Direction::FromDevice,
            pile::Direction::Down => Direction::FromServer,
        };
        match ap3000::decode_frame(raw, dir) {
            Ok(frame) => frame.summary(),
            Err(e) => format!("not a valid frame: {e}"),
        }
    }
}
