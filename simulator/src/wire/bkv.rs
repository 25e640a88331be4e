//! BKV gateway: heartbeats, 0x1017 status reports, 0x07/0x1007 answers,
//! 0x1C socket states, 0x02/0x1004 end reports.

use bytes::{Bytes, BytesMut};
use pile_protocol::bkv::{
    BcdTime, BinTime, ChargeEnd, ChargeEndFields, Decoder, Direction, EndReasonCode, FeeTier,
    Frame, GatewayId, HoleState, Message, PowerChargeEnd, PowerTier, SocketParams, SocketState,
    SocketStatus, TlvHeader, TlvPortAck,
};
use pile_protocol::port::{bkv_port_no, bkv_socket_hole};
use pile_protocol::Item;
use tokio::time::Instant;

use super::sat_u16;
use crate::billing::{self, Billing};
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

/// The status byte an end report carries. A socket whose load went away
/// (no load, or a full battery that stopped drawing) reports what the
/// vendor's 2.2.9 example shows, `0x98` (online, no load, ended); every other
/// end is online + ended (`0x88`), no fault bit.
fn end_status(reason: EndReason) -> SocketStatus {
    match reason {
        EndReason::NoLoad | EndReason::Full => SocketStatus::NO_LOAD_END,
        _ => SocketStatus(SocketStatus::ONLINE | SocketStatus::ENDED),
    }
}

/// The explicit end-reason byte of 0x18 and tag 0x2F of 0x1004. The vendor
/// guide names the field but lists no codes; we write the AP3000 stop
/// reasons, which name the same causes (the gateway decides from the status
/// byte, which the guide does document).
fn end_reason_code(reason: EndReason) -> EndReasonCode {
    EndReasonCode(reason.ap3000_code())
}

fn bin_time(unix_s: u64) -> BinTime {
    let t = bcd_time(unix_s);
    BinTime {
        year: t.year,
        month: t.month,
        day: t.day,
        hour: t.hour,
        minute: t.minute,
        second: t.second,
    }
}

/// 0x17 tiers as the socket bills them (power ceiling 0.1 W → W).
fn power_billing(amount_fen: u16, tiers: &[PowerTier]) -> Billing {
    Billing::PowerTiers {
        amount_fen: u32::from(amount_fen),
        tiers: tiers
            .iter()
            .map(|t| billing::PowerTier {
                max_power_w: f64::from(t.power_dw) / 10.0,
                price_fen: u32::from(t.price_fen),
                minutes: u32::from(t.minutes),
            })
            .collect(),
    }
}

/// 0x1007 tiers: each holds until its hh:mm (the list ends at 23:59).
fn fee_billing(paid_fen: u16, service_fee_mode: u8, tiers: &[FeeTier]) -> Billing {
    Billing::Fee {
        paid_fen: u32::from(paid_fen),
        service_by_energy: service_fee_mode == 1,
        tiers: tiers
            .iter()
            .map(|t| billing::FeeTier {
                until_minute: u16::from(t.time.hour) * 60 + u16::from(t.time.minute),
                energy_fen_per_kwh: u32::from(t.energy_price_fen),
                service_fen: u32::from(t.service_fee_fen),
            })
            .collect(),
    }
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
        Origin::Bkv17 => {
            let b = e.billing.clone().unwrap_or(billing::EndBilling {
                spent_fen: 0,
                energy_fee_fen: 0,
                service_fee_fen: 0,
                settle_power_dw: 0,
                tier_minutes: Vec::new(),
                tier_energy_wh: Vec::new(),
            });
            Frame::power_charge_end(
                gw,
                PowerChargeEnd {
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
                    end_time: bin_time(e.end_unix),
                    end_reason: end_reason_code(e.reason),
                    amount_fen: u16::try_from(b.spent_fen).unwrap_or(u16::MAX),
                    settle_power_dw: b.settle_power_dw,
                    tier_minutes: b.tier_minutes,
                },
            )
        }
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
                energy_fee_fen: Some(
                    e.billing
                        .as_ref()
                        .map_or(0, |b| u16::try_from(b.energy_fee_fen).unwrap_or(u16::MAX)),
                ),
                service_fee_fen: Some(
                    e.billing
                        .as_ref()
                        .map_or(0, |b| u16::try_from(b.service_fee_fen).unwrap_or(u16::MAX)),
                ),
                tier_count: Some(
                    e.billing
                        .as_ref()
                        .map_or(1, |b| u8::try_from(b.tier_minutes.len()).unwrap_or(u8::MAX)),
                ),
                tier_usage: Some(tier_usage(e)),
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

/// Tag 0x84: per tier, minutes u16 · energy Wh u32 (our reading of the
/// vendor's `000100000000`: one minute, no energy).
fn tier_usage(e: &EndRecord) -> Vec<u8> {
    let Some(b) = &e.billing else {
        return vec![0; 6];
    };
    let mut out = Vec::with_capacity(b.tier_minutes.len() * 6);
    for (m, wh) in b.tier_minutes.iter().zip(&b.tier_energy_wh) {
        out.extend_from_slice(&m.to_be_bytes());
        out.extend_from_slice(&wh.to_be_bytes());
    }
    out
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
        Origin::Bkv17 => Frame::power_charge_reply(
            gw,
            ctx.seq,
            socket,
            hole,
            ok,
            order.map(business_no).unwrap_or(0),
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
                    billing: None,
                },
            }
        }
        Message::PowerCharge(p) if p.switch == 0 => Down::Stop {
            ctx,
            origin: Origin::Bkv17,
            port: port_sel(p.socket, p.hole),
            order: None,
        },
        Message::PowerCharge(p) => Down::Start {
            ctx,
            req: StartRequest {
                port: port_sel(p.socket, p.hole),
                order: None,
                target: Target::Full,
                stop_on_full: true,
                max_duration: None,
                origin: Origin::Bkv17,
                billing: Some(power_billing(p.amount_fen, &p.tiers)),
            },
        },
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
                        billing: (f.paid_fen > 0)
                            .then(|| fee_billing(f.paid_fen, f.service_fee_mode, &f.tiers)),
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
        Message::PowerChargeEndAck(a) => match bkv_port_no(a.socket, a.hole) {
            Some(port_no) if a.result == 1 => Down::EndAck(AckMatch::Port {
                port_no,
                origin: Origin::Bkv17,
            }),
            _ => Down::Ignored,
        },
        Message::Mute(m) => Down::Setting {
            ctx: ReplyCtx {
                seq: frame.seq,
                tlv_seq: m.header.seq,
            },
            command: 0x1013,
            socket: Some(m.socket),
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
            Up::SettingAck {
                ctx,
                command: 0x1013,
                socket,
                ok,
            } => Frame::new(
                Direction::Up,
                ctx.seq,
                gw,
                Message::MuteReply(SocketParams {
                    header: TlvHeader {
                        seq: ctx.tlv_seq,
                        gateway_id: gw,
                    },
                    socket: socket.unwrap_or(0),
                    result: Some(u8::from(*ok)),
                    params: Vec::new(),
                }),
            ),
            Up::SettingAck { .. } => return None,
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
