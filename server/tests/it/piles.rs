//! Test devices built from the protocol crate's encoders, speaking to the gateway over
//! loopback exactly as real piles do.

use std::str::FromStr;
use std::time::Duration;

use bytes::BytesMut;
use pile_protocol::{ap3000, bkv, Item};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

/// Reads frames from a stream with a protocol decoder.
async fn read_item<F>(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    mut decode: impl FnMut(&mut BytesMut) -> Option<Item<F>>,
) -> Option<F> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while let Some(item) = decode(buf) {
            if let Item::Frame { frame, .. } = item {
                return Some(frame);
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read_buf(buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
    }
}

/// An AP3000 pile.
pub struct ApPile {
    pub stream: TcpStream,
    pub id: ap3000::PhysicalId,
    buf: BytesMut,
    decoder: ap3000::Decoder,
    msg_id: u16,
}

impl ApPile {
    pub async fn connect(addr: std::net::SocketAddr, id: &str) -> ApPile {
        ApPile {
            stream: TcpStream::connect(addr).await.expect("connect"),
            id: ap3000::PhysicalId::from_str(id).expect("physical id"),
            buf: BytesMut::new(),
            decoder: ap3000::Decoder::new(ap3000::Direction::FromServer),
            msg_id: 0,
        }
    }

    pub fn next_id(&mut self) -> u16 {
        self.msg_id = self.msg_id.wrapping_add(1);
        self.msg_id
    }

    pub async fn send(&mut self, frame: ap3000::Frame) {
        self.stream.write_all(&frame.to_vec()).await.expect("write");
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next frame from the gateway; `None` if the gateway closed the socket.
    pub async fn recv(&mut self) -> Option<ap3000::Frame> {
        let decoder = &mut self.decoder;
        read_item(&mut self.stream, &mut self.buf, |b| decoder.decode(b)).await
    }

    pub async fn expect(&mut self) -> ap3000::Frame {
        self.recv().await.expect("a frame from the gateway")
    }

    pub fn register_frame(&mut self, ports: u8) -> ap3000::Frame {
        let id = self.next_id();
        ap3000::Frame::register(
            self.id,
            id,
            ap3000::Register {
                firmware: 0x0123,
                port_count: ports,
                virtual_id: 0,
                device_type: 0x04,
                work_mode: Some(0),
                power_board_version: Some(1),
                extra: Vec::new(),
            },
        )
    }

    pub fn heartbeat_frame(&mut self, statuses: &[u8]) -> ap3000::Frame {
        let id = self.next_id();
        let ports: Vec<ap3000::PortStatus> =
            statuses.iter().map(|s| ap3000::PortStatus(*s)).collect();
        ap3000::Frame::heartbeat(
            self.id,
            id,
            ap3000::Heartbeat::new(2200, &ports, 25, 90).expect("heartbeat"),
        )
    }

    /// Registers and heartbeats; returns after both are acknowledged.
    pub async fn boot(&mut self, ports: u8) {
        let reg = self.register_frame(ports);
        self.send(reg).await;
        let ack = self.expect().await;
        assert!(
            matches!(ack.message, ap3000::Message::Ack { command: 0x20, .. }),
            "{ack:?}"
        );
        let hb = self.heartbeat_frame(&vec![0; ports as usize]);
        self.send(hb).await;
        let ack = self.expect().await;
        assert!(
            matches!(ack.message, ap3000::Message::Ack { command: 0x21, .. }),
            "{ack:?}"
        );
    }

    pub fn power_heartbeat(
        &mut self,
        port: u8,
        order_no: ap3000::OrderNo,
        duration_s: u16,
        energy_cwh: u16,
        power_dw: u16,
    ) -> ap3000::Frame {
        let id = self.next_id();
        ap3000::Frame::power_heartbeat(
            self.id,
            id,
            ap3000::PowerHeartbeat {
                port,
                status: ap3000::PortStatus(1),
                duration_s,
                energy_cwh,
                start_mode: 1,
                power_dw,
                max_power_dw: power_dw,
                min_power_dw: power_dw,
                avg_power_dw: power_dw,
                order_no,
                period_energy_raw: None,
                peak_power_dw: None,
                voltage_dv: None,
                current_ma: None,
                ambient_temperature_raw: None,
                port_temperature_raw: None,
                timestamp: None,
                occupancy_min: None,
                extra: Vec::new(),
            },
        )
    }

    pub fn settlement(
        &mut self,
        msg_id: u16,
        port: u8,
        order_no: ap3000::OrderNo,
        duration_s: u16,
        energy_cwh: u16,
        stop_reason: u8,
    ) -> ap3000::Frame {
        ap3000::Frame::settlement(
            self.id,
            msg_id,
            ap3000::Settlement {
                duration_s,
                max_power_dw: 2500,
                energy_cwh,
                port,
                start_mode: 1,
                card_id: 0,
                stop_reason: ap3000::StopReason(stop_reason),
                order_no,
                second_max_power_dw: None,
                timestamp: None,
                occupancy_min: None,
                extra: Vec::new(),
            },
        )
    }
}

/// A BKV gateway with radio sockets.
pub struct BkvPile {
    pub stream: TcpStream,
    pub id: bkv::GatewayId,
    buf: BytesMut,
    decoder: bkv::Decoder,
}

impl BkvPile {
    pub async fn connect(addr: std::net::SocketAddr, id: &str) -> BkvPile {
        BkvPile {
            stream: TcpStream::connect(addr).await.expect("connect"),
            id: bkv::GatewayId::from_str(id).expect("gateway id"),
            buf: BytesMut::new(),
            decoder: bkv::Decoder::new(),
        }
    }

    pub async fn send(&mut self, frame: bkv::Frame) {
        self.stream.write_all(&frame.to_vec()).await.expect("write");
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    pub async fn recv(&mut self) -> Option<bkv::Frame> {
        let decoder = &mut self.decoder;
        read_item(&mut self.stream, &mut self.buf, |b| decoder.decode(b)).await
    }

    pub async fn expect(&mut self) -> bkv::Frame {
        self.recv().await.expect("a frame from the gateway")
    }

    pub fn heartbeat_frame(&self) -> bkv::Frame {
        bkv::Frame::heartbeat(self.id, "89860000000000000001", "cV.1r46", 28)
    }

    pub async fn heartbeat(&mut self) {
        let hb = self.heartbeat_frame();
        self.send(hb).await;
        let reply = self.expect().await;
        assert!(
            matches!(reply.message, bkv::Message::HeartbeatReply(_)),
            "{reply:?}"
        );
    }

    pub fn socket(socket: u8, holes: &[(u8, u8, u16, u16, u16, u16)]) -> bkv::SocketState {
        bkv::SocketState {
            socket,
            socket_version: 0x5036,
            temperature_c: 30,
            rssi: 31,
            holes: holes
                .iter()
                .map(
                    |(hole, status, business_no, power_dw, energy_wh, minutes)| bkv::HoleState {
                        hole: *hole,
                        status: bkv::SocketStatus(*status),
                        business_no: *business_no,
                        voltage_dv: 2200,
                        power_dw: *power_dw,
                        current_ma: 1000,
                        energy_wh: *energy_wh,
                        minutes: *minutes,
                    },
                )
                .collect(),
        }
    }

    /// Reports sockets 1..=n idle and waits for the ack.
    pub async fn report_idle(&mut self, sockets: u8) {
        let states: Vec<_> = (1..=sockets)
            .map(|s| Self::socket(s, &[(0, 0x80, 0, 0, 0, 0), (1, 0x80, 0, 0, 0, 0)]))
            .collect();
        self.send(bkv::Frame::status_report(self.id, &states)).await;
        let ack = self.expect().await;
        assert!(
            matches!(ack.message, bkv::Message::StatusReportAck(_)),
            "{ack:?}"
        );
    }
}
