//! BKV gateway: heartbeats, 0x1017 status reports, 0x07/0x1007 answers,
//! 0x1C socket states, 0x02/0x1004 end reports.

use bytes::{Bytes, BytesMut};
use pile_protocol::bkv::{
    BcdTime, ChargeEnd, ChargeEndFields, Decoder, Direction, EndReasonCode, Frame, GatewayId,
    HoleState, Message, SocketState, SocketStatus, TlvHeader, TlvPortAck,
};
use pile_protocol::port::{bkv_port_no, bkv_socket_hole};
use pile_protocol::Item;
use tokio::time::Instant;

use super::sat_u16;
use crate::msg::{
    AckMatch, CommandResult, Down, EndReason, EndRecord, Order, Origin, PortSel, ReplyCtx,
    StartRequest, Target, Up,
};
use crate::pile::{self, Codec, Inbound, PileState};

const FIRMWARE: &str = "cV.1r46";
const SIGNAL: u8 = 31;
const SOCKET_VERSION: u16 = 0x5036;
const TEMPERATURE_C: u8 = 30;
const RSSI: u8 = 31;

#[derive(Debug, Default)]
pub struct BkvCodec {
    decoder: Decoder,
    gateway: Option<GatewayId>,
}

impl BkvCodec {
    fn gateway(&mut self, pile: &PileState) -> Option<GatewayId> {
        if self.gateway.is_none() {
            self.gateway = pile.id.parse().ok();
        }
        self.gateway
    }
}

/// Minutes as a BKV socket counts them: every started minute.
fn minutes(secs: u64) -> u16 {
    u16::try_from(secs.div_ceil(60)).unwrap_or(u16::MAX)
}

fn business_no(order: Order) -> u16 {
    match order {
        Order::Bkv(n) => n,
        // An AP3000 order never runs on a BKV pile; keep the low bits.
        Order::Ap3000(b) => u16::from_be_bytes([b[14], b[15]]),
    }
}

/// The status byte of a port (PROTOCOL.md's reading of the bits).
fn port_status(port: &pile::Port) -> SocketStatus {
    match (&port.charge, port.plugged) {
        (Some(_), true) => SocketStatus(SocketStatus::ONLINE | SocketStatus::CHARGING),
        (Some(_), false) => {
            SocketStatus(SocketStatus::ONLINE | SocketStatus::CHARGING | SocketStatus::NO_LOAD)
        }
        (None, _) => SocketStatus::IDLE,
    }
}

/// The status byte a 0x02 end report carries: the gateway reads no-load as
/// "no load / full" and a bare online byte before the target as "unplugged".
fn end_status(reason: EndReason) -> SocketStatus {
    match reason {
        EndReason::NoLoad | EndReason::Full => {
            SocketStatus(SocketStatus::ONLINE | SocketStatus::NO_LOAD)
        }
        _ => SocketStatus::IDLE,
    }
}

/// The 0x2F end reason of a 0x1004 report. The vendor guide does not list
/// the codes; we use the AP3000 stop reasons, which name the same causes.
fn end_reason_code(reason: EndReason) -> EndReasonCode {
    EndReasonCode(reason.ap3000_code())
}

fn socket_state(pile: &PileState, socket: u8, now: Instant) -> SocketState {
    let holes = (0..2u8)
        .filter_map(|hole| {
            let port_no = bkv_port_no(socket, hole)?;
            let port = pile.port(port_no)?;
            let status = port_status(port);
            Some(match &port.charge {
                Some(ch) => HoleState {
                    hole,
                    status,
                    business_no: business_no(ch.order),
                    voltage_dv: sat_u16(ch.charger.voltage_v() * 10.0),
                    power_dw: sat_u16(ch.charger.power_w() * 10.0),
                    current_ma: sat_u16(ch.charger.current_a() * 1000.0),
                    energy_wh: ch.charger.energy_wh_u16(),
                    minutes: minutes(ch.elapsed(now).as_secs()),
                },
                None => HoleState {
                    hole,
                    status,
                    business_no: 0,
                    voltage_dv: 2200,
                    power_dw: 0,
                    current_ma: 0,
                    energy_wh: 0,
                    minutes: 0,
                },
            })
        })
        .collect();
    SocketState {
        socket,
        socket_version: SOCKET_VERSION,
        temperature_c: TEMPERATURE_C,
        rssi: RSSI,
        holes,
    }
}

fn bcd_time(unix_s: u64) -> BcdTime {
    let days = unix_s / 86_400;
    let secs = unix_s % 86_400;
    // Civil-from-days (Howard Hinnant), UTC+8 as Chinese devices keep it.
    let secs_local = secs + 8 * 3600;
    let days = days + secs_local / 86_400;
    let secs = secs_local % 86_400;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
    BcdTime {
        year,
        month,
        day,
        hour: (secs / 3600) as u8,
        minute: (secs % 3600 / 60) as u8,
        second: (secs % 60) as u8,
    }
}

fn end_frame(gw: GatewayId, e: &EndRecord) -> Frame {
    let (socket, hole) = bkv_socket_hole(e.port_no).unwrap_or((1, 0));
    let status = end_status(e.reason);
    let power_dw = sat_u16(e.power_w * 10.0);
    let current_ma = sat_u16(e.current_a * 1000.0);
    let energy_wh = sat_u16(e.energy_wh.floor());
    match e.origin {
        Origin::Bkv1007 => Frame::charge_end_report(
            gw,
            &ChargeEndFields {
                mcu_temperature_c: Some(TEMPERATURE_C),
                socket,
                hole,
                status,
                business_no: business_no(e.order),
                power_dw,
                current_ma,
                energy_wh,
                minutes: minutes(e.duration_s),
                end_time: Some(bcd_time(e.end_unix)),
                end_reason: Some(end_reason_code(e.reason)),
                mode: Some(4),
                energy_fee_fen: Some(0),
                service_fee_fen: Some(0),
                tier_count: Some(1),
                tier_usage: Some(vec![0; 6]),
                extra: Vec::new(),
            },
        ),
        _ => Frame::charge_end(
            gw,
            ChargeEnd {
                socket,
                socket_version: SOCKET_VERSION,
                temperature_c: TEMPERATURE_C,
                rssi: RSSI,
                hole,
                status,
                business_no: business_no(e.order),
                power_dw,
                current_ma,
                energy_wh,
                minutes: minutes(e.duration_s),
            },
        ),
    }
}

fn reply_frame(
    gw: GatewayId,
    ctx: ReplyCtx,
    origin: Origin,
    port_no: Option<u16>,
    result: CommandResult,
    order: Option<Order>,
) -> Frame {
    let (socket, hole) = port_no.and_then(bkv_socket_hole).unwrap_or((0, 0));
    let ok = result == CommandResult::Done;
    match origin {
        Origin::Bkv1007 => Frame::new(
            Direction::Up,
            ctx.seq,
            gw,
            Message::FeeChargeReply(TlvPortAck {
                header: TlvHeader {
                    seq: ctx.tlv_seq,
                    gateway_id: gw,
                },
                result: u8::from(ok),
                socket,
                hole,
                extra: Vec::new(),
            }),
        ),
        _ => Frame::control_reply(
            gw,
            ctx.seq,
            socket,
            hole,
            ok,
            order.map(business_no).unwrap_or(0),
        ),
    }
}

fn port_sel(socket: u8, hole: u8) -> PortSel {
    bkv_port_no(socket, hole).map_or(PortSel::Invalid, PortSel::Port)
}

fn to_down(frame: &Frame) -> Down {
    let ctx = ReplyCtx {
        seq: frame.seq,
        tlv_seq: u64::from(frame.seq),
    };
    if frame.direction != Direction::Down {
        return Down::Ignored;
    }
    match &frame.message {
        Message::HeartbeatReply(_) => Down::HeartbeatAck,
        Message::StatusReportAck(_) => Down::StatusAck,
        Message::Control(c) if c.switch == 0 => Down::Stop {
            ctx,
            origin: Origin::Bkv07,
            port: port_sel(c.socket, c.hole),
            order: None,
        },
        Message::Control(c) => {
            let target = match (c.mode, c.minutes, c.energy_wh) {
                (1, 0, _) | (0, _, 0) => Target::Full,
                (1, m, _) => Target::Time {
                    secs: u64::from(m) * 60,
                },
                (_, _, wh) => Target::Energy { wh: f64::from(wh) },
            };
            Down::Start {
                ctx,
                req: StartRequest {
                    port: port_sel(c.socket, c.hole),
                    order: None,
                    target,
                    stop_on_full: true,
                    max_duration: None,
                    origin: Origin::Bkv07,
                },
            }
        }
        Message::FeeCharge(f) => {
            let ctx = ReplyCtx {
                seq: frame.seq,
                tlv_seq: f.header.seq,
            };
            if f.switch == 0 {
                Down::Stop {
                    ctx,
                    origin: Origin::Bkv1007,
                    port: port_sel(f.socket, f.hole),
                    order: None,
                }
            } else {
                Down::Start {
                    ctx,
                    req: StartRequest {
                        port: port_sel(f.socket, f.hole),
                        order: None,
                        target: Target::Full,
                        stop_on_full: true,
                        max_duration: None,
                        origin: Origin::Bkv1007,
                    },
                }
            }
        }
        Message::ChargeEndAck(a) => match bkv_port_no(a.socket, a.hole) {
            Some(port_no) if a.result == 1 => Down::EndAck(AckMatch::Port {
                port_no,
                origin: Origin::Bkv07,
            }),
            _ => Down::Ignored,
        },
        Message::ChargeEndReportAck(a) => match bkv_port_no(a.socket, a.hole) {
            Some(port_no) if a.result == 1 => Down::EndAck(AckMatch::Port {
                port_no,
                origin: Origin::Bkv1007,
            }),
            _ => Down::Ignored,
        },
        Message::QuerySocket(q) => Down::QuerySocket {
            ctx,
            socket: q.socket,
        },
        _ => Down::Ignored,
    }
}

impl Codec for BkvCodec {
    fn encode(&mut self, pile: &PileState, up: &Up, now: Instant) -> Option<Bytes> {
        let gw = self.gateway(pile)?;
        let frame = match up {
            Up::Heartbeat => Frame::heartbeat(gw, &pile.iccid, FIRMWARE, SIGNAL),
            Up::Status { socket } => Frame::status_report(gw, &[socket_state(pile, *socket, now)]),
            Up::End(e) => end_frame(gw, e),
            Up::StartReply {
                ctx,
                origin,
                port_no,
                result,
                order,
            }
            | Up::StopReply {
                ctx,
                origin,
                port_no,
                result,
                order,
            } => reply_frame(gw, *ctx, *origin, *port_no, *result, *order),
            Up::SocketState { ctx, socket } => {
                Frame::socket_state(gw, ctx.seq, socket_state(pile, *socket, now))
            }
            Up::Iccid | Up::Register | Up::GetTime | Up::Link | Up::Progress(_) => return None,
        };
        Some(frame.to_bytes())
    }

    fn decode(&mut self, _pile: &PileState, buf: &mut BytesMut, out: &mut Vec<Inbound>) {
        while let Some(item) = self.decoder.decode(buf) {
            match item {
                Item::Frame { frame, raw } => out.push(Inbound {
                    down: Some(to_down(&frame)),
                    raw,
                }),
                Item::Diagnostic(d) => out.push(Inbound {
                    raw: d.raw,
                    down: None,
                }),
                // Not BKV items; nothing to do with them.
                Item::Iccid(_) | Item::KeepAlive => {}
            }
        }
    }

    fn corrupt_checksum(&self, frame: &mut [u8]) {
        let len = frame.len();
        if len >= 3 && frame.starts_with(&[0xFC]) {
            if let Some(sum) = frame.get_mut(len - 3) {
                *sum = sum.wrapping_add(1);
            }
        }
    }

    fn describe(&self, raw: &[u8], _dir: pile::Direction) -> String {
        match pile_protocol::bkv::decode_frame(raw) {
            Ok(frame) => frame.summary(),
            Err(e) => format!("not a valid frame: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcd_time_is_beijing_time() {
        // 2024-08-23 02:17:29 UTC = 10:17:29 in UTC+8.
        let t = bcd_time(1_724_379_449);
        assert_eq!(t.to_string(), "20240823101729");
    }

    #[test]
    fn minutes_count_every_started_minute() {
        assert_eq!(minutes(0), 0);
        assert_eq!(minutes(60), 1);
        assert_eq!(minutes(61), 2);
        assert_eq!(minutes(300), 5);
    }
}
