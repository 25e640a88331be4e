//! Platform end reasons (PROTOCOL.md §3) and the vendors' codes mapped onto them.

use pile_protocol::bkv::SocketStatus;

/// Platform end reasons (PROTOCOL.md §3), the API's `end_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EndReason {
    Unknown = 0,
    TargetReached = 1,
    Full = 2,
    RemoteStop = 3,
    Unplugged = 4,
    NoLoad = 5,
    Overload = 6,
    OverTemperature = 7,
    ElectricalProtection = 8,
    DeviceFault = 9,
    PowerOutage = 10,
    CommunicationLost = 11,
    StartRejected = 12,
    /// The device reports the port idle (or denies the charge when asked) while the order is
    /// still open: the charge was lost on the device (reboot, missed end report); settled by
    /// reconciliation with the last figures.
    ChargeLost = 13,
}

impl EndReason {
    pub const ALL: [EndReason; 14] = [
        EndReason::Unknown,
        EndReason::TargetReached,
        EndReason::Full,
        EndReason::RemoteStop,
        EndReason::Unplugged,
        EndReason::NoLoad,
        EndReason::Overload,
        EndReason::OverTemperature,
        EndReason::ElectricalProtection,
        EndReason::DeviceFault,
        EndReason::PowerOutage,
        EndReason::CommunicationLost,
        EndReason::StartRejected,
        EndReason::ChargeLost,
    ];

    pub fn code(self) -> i64 {
        self as u8 as i64
    }

    pub fn from_code(code: i64) -> EndReason {
        Self::ALL
            .into_iter()
            .find(|r| r.code() == code)
            .unwrap_or(EndReason::Unknown)
    }

    /// Stable machine name (`end_reason_name`).
    pub fn name(self) -> &'static str {
        match self {
            EndReason::Unknown => "unknown",
            EndReason::TargetReached => "target_reached",
            EndReason::Full => "full",
            EndReason::RemoteStop => "remote_stop",
            EndReason::Unplugged => "unplugged",
            EndReason::NoLoad => "no_load",
            EndReason::Overload => "overload",
            EndReason::OverTemperature => "over_temperature",
            EndReason::ElectricalProtection => "electrical_protection",
            EndReason::DeviceFault => "device_fault",
            EndReason::PowerOutage => "power_outage",
            EndReason::CommunicationLost => "communication_lost",
            EndReason::StartRejected => "start_rejected",
            EndReason::ChargeLost => "charge_lost",
        }
    }

    /// Chinese text for operators (`end_reason_text`).
    pub fn text_zh(self) -> &'static str {
        match self {
            EndReason::Unknown => "未知原因",
            EndReason::TargetReached => "充电目标已达到",
            EndReason::Full => "已充满",
            EndReason::RemoteStop => "远程停止",
            EndReason::Unplugged => "插头拔出",
            EndReason::NoLoad => "空载或功率过低",
            EndReason::Overload => "过载",
            EndReason::OverTemperature => "温度过高",
            EndReason::ElectricalProtection => "电气保护",
            EndReason::DeviceFault => "设备故障",
            EndReason::PowerOutage => "断电",
            EndReason::CommunicationLost => "通信中断",
            EndReason::StartRejected => "设备拒绝启动",
            EndReason::ChargeLost => "设备端口已空闲，对账结算",
        }
    }

    pub fn text_en(self) -> &'static str {
        match self {
            EndReason::Unknown => "unknown",
            EndReason::TargetReached => "target reached",
            EndReason::Full => "battery full",
            EndReason::RemoteStop => "remote stop",
            EndReason::Unplugged => "unplugged",
            EndReason::NoLoad => "no load or power too low",
            EndReason::Overload => "overload",
            EndReason::OverTemperature => "over-temperature",
            EndReason::ElectricalProtection => "electrical protection",
            EndReason::DeviceFault => "device fault",
            EndReason::PowerOutage => "power outage",
            EndReason::CommunicationLost => "communication lost",
            EndReason::StartRejected => "start rejected by device",
            EndReason::ChargeLost => "device reports the port idle; settled by reconciliation",
        }
    }

    /// AP3000 `0x03` stop reason → platform reason (PROTOCOL.md §3).
    pub fn from_ap3000(stop_reason: u8) -> EndReason {
        match stop_reason {
            2..=4 => EndReason::TargetReached,
            1 => EndReason::Full,
            7 => EndReason::RemoteStop,
            5 | 0x0D => EndReason::Unplugged,
            9 | 0x0E | 0x1C => EndReason::NoLoad,
            6 | 8 => EndReason::Overload,
            0x0A | 0x0B => EndReason::OverTemperature,
            0x0C | 0x1A | 0x1B => EndReason::ElectricalProtection,
            _ => EndReason::DeviceFault,
        }
    }

    /// BKV end report → platform reason, from the vendor's own rules, in this order:
    ///
    /// 1. an explicit end-reason code (the 0x18 byte, tag 0x2F of 0x1004) beats the status
    ///    bits — for the codes whose meaning the vendor documents, listed in
    ///    [`BKV_DOCUMENTED_CODES`]. The V1.7 guide names the field but lists no code, so an
    ///    explicit code decides nothing today (its two examples, 0x02 and 0x08, both come with
    ///    the status 0x98 the guide reads as a no-load end);
    /// 2. the fault bits of the status byte (see `pile_protocol::bkv::SocketStatus`):
    ///    over-temperature → 7, over-current → 8, over-power → 6, metering fault → 9;
    /// 3. a reached time/energy/amount target → 1;
    /// 4. the no-load bit → 5 (the vendor's 2.2.9 example, 0x98 "空载 - 温度正常",
    ///    concludes 【空载结束】);
    /// 5. otherwise the load went away without a fault: unplugged → 4.
    ///
    /// A stop the server commanded is the caller's business (settlement policy: remote stop).
    pub fn from_bkv(explicit_reason: Option<u8>, status: u8, target_reached: bool) -> EndReason {
        Self::from_bkv_with(
            BKV_DOCUMENTED_CODES,
            explicit_reason,
            status,
            target_reached,
        )
    }

    fn from_bkv_with(
        documented: &[(u8, EndReason)],
        explicit_reason: Option<u8>,
        status: u8,
        target_reached: bool,
    ) -> EndReason {
        let explicit = explicit_reason.and_then(|code| {
            documented
                .iter()
                .find(|(c, _)| *c == code)
                .map(|(_, reason)| *reason)
        });
        if let Some(reason) = explicit {
            return reason;
        }
        let s = SocketStatus(status);
        if s.over_temperature() {
            EndReason::OverTemperature
        } else if s.over_current() {
            EndReason::ElectricalProtection
        } else if s.over_power() {
            EndReason::Overload
        } else if s.metering_fault() {
            EndReason::DeviceFault
        } else if target_reached {
            EndReason::TargetReached
        } else if s.no_load() {
            EndReason::NoLoad
        } else {
            EndReason::Unplugged
        }
    }
}

/// BKV explicit end-reason codes (0x18 byte, 0x1004 tag 0x2F) whose meaning the vendor
/// documents. Empty: the V1.7 guide lists none (see `pile_protocol::bkv::EndReasonCode`).
/// A code added here wins over the status bits.
pub const BKV_DOCUMENTED_CODES: &[(u8, EndReason)] = &[];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ap3000_stop_reasons_map_as_protocol_section_3_says() {
        let cases = [
            (3, 1),
            (4, 1),
            (2, 1),
            (1, 2),
            (7, 3),
            (5, 4),
            (0x0D, 4),
            (9, 5),
            (0x0E, 5),
            (0x1C, 5),
            (6, 6),
            (8, 6),
            (0x0A, 7),
            (0x0B, 7),
            (0x0C, 8),
            (0x1A, 8),
            (0x1B, 8),
            (0x10, 9),
            (0x19, 9),
        ];
        for (wire, code) in cases {
            assert_eq!(
                EndReason::from_ap3000(wire).code(),
                code,
                "wire reason {wire:#x}"
            );
        }
    }

    /// Decodes a vendor example frame (hex as printed in the guide).
    fn bkv_frame(hex: &str) -> pile_protocol::bkv::Message {
        let bytes = pile_protocol::parse_hex(hex).expect("hex");
        pile_protocol::bkv::decode_frame(&bytes)
            .expect("vendor example decodes")
            .message
    }

    #[test]
    fn every_vendor_bkv_end_example_yields_its_documented_reason() {
        use pile_protocol::bkv::Message;
        // 2.2.9, 0x0015/0x02: status 0x98 "在线-计量正常-充电-空载-温度正常-电流正常-功率正常",
        // "由此订单结束原因【空载结束】". The charge was started for 240 minutes (2.2.8) and
        // ended after 45: the target was not reached.
        let Message::ChargeEnd(e) = bkv_frame(
            "fcfe00250015000000000186004459453005001102025036302000980068000000010050002d41fcee",
        ) else {
            panic!("0x02")
        };
        assert_eq!((e.status.0, e.minutes), (0x98, 45));
        assert_eq!(
            EndReason::from_bkv(None, e.status.0, false),
            EndReason::NoLoad
        );

        // Advanced 2.2.2, 0x0015/0x18: status 0x98, explicit end reason 0x02 (not listed).
        let Message::PowerChargeEnd(e) = bkv_frame(
            "fcfe003c00150000000001860044594530050028180151362d2000980017000000020001002407e406080e150702000f0000050024000000000000000037fcee",
        ) else {
            panic!("0x18")
        };
        assert_eq!((e.status.0, e.end_reason.0), (0x98, 0x02));
        assert_eq!(
            EndReason::from_bkv(Some(e.end_reason.0), e.status.0, false),
            EndReason::NoLoad
        );

        // 0x1000/0x1004 (fee orders): status 0x98, tag 0x2F = 0x08 (not listed), 1 minute.
        let Message::ChargeEndReport(e) = bkv_frame(
            "fcfe007d100000000000018221022500052004010110040a010200000000000000000901038221022500052003010             72a03014a01030108000301099804010a003304010b000004010c000004010d000004010e000109012e2024082310             172903012f08030112040401850000040186000003018901080184000100000000dbfcee",
        ) else {
            panic!("0x1004")
        };
        let code = e.end_reason().map(|r| r.0);
        assert_eq!((e.status().0, code), (0x98, Some(0x08)));
        assert_eq!(
            EndReason::from_bkv(code, e.status().0, false),
            EndReason::NoLoad
        );

        // Advanced 2.2.3, card-charge end (0x0C) by time: the same 0x98 (the power-tier
        // example beside it is printed incomplete, with the same status byte).
        let Message::CardChargeEnd(e) = bkv_frame(
            "fcfe00320015000000000186004459453005001e0c0151362d200098001a000000020002001f00000000000200010000000000bcfcee",
        ) else {
            panic!("0x0C")
        };
        assert_eq!(
            EndReason::from_bkv(None, e.status.0, false),
            EndReason::NoLoad
        );
    }

    #[test]
    fn the_vendor_ap3000_settlement_example_ends_full() {
        // §3.3 example: stop reason byte 0x01 "充满自停".
        let bytes = pile_protocol::parse_hex(
            "44 4E 59 28 00 3B 37 AB 04 01 00 03 10 0E E8 03 30 00 01 01 00 00 00 00 01 20 19 09 01 18 00 00 13 00 30 38 01 02 03 04 05 E8 03 44 05",
        )
        .unwrap();
        let frame = pile_protocol::ap3000::decode_frame(
            &bytes,
            pile_protocol::ap3000::Direction::FromDevice,
        )
        .unwrap();
        let pile_protocol::ap3000::Message::Settlement(s) = frame.message else {
            panic!("0x03")
        };
        assert_eq!(EndReason::from_ap3000(s.stop_reason.0), EndReason::Full);
    }

    #[test]
    fn bkv_status_bits_rank_faults_over_the_target_over_no_load() {
        assert_eq!(
            EndReason::from_bkv(None, 0x84, true),
            EndReason::OverTemperature
        );
        assert_eq!(
            EndReason::from_bkv(None, 0x82, true),
            EndReason::ElectricalProtection
        );
        assert_eq!(EndReason::from_bkv(None, 0x81, true), EndReason::Overload);
        assert_eq!(
            EndReason::from_bkv(None, 0xC0, true),
            EndReason::DeviceFault
        );
        assert_eq!(
            EndReason::from_bkv(None, 0x98, true),
            EndReason::TargetReached
        );
        // Bit 3 alone (set in every vendor end report) is no fault.
        assert_eq!(EndReason::from_bkv(None, 0x88, false), EndReason::Unplugged);
        assert_eq!(EndReason::from_bkv(None, 0x90, false), EndReason::NoLoad);
        assert_eq!(EndReason::from_bkv(None, 0x80, false), EndReason::Unplugged);
        // An undocumented explicit code leaves the decision to the status byte.
        assert_eq!(
            EndReason::from_bkv(Some(0x08), 0x84, false),
            EndReason::OverTemperature
        );
    }

    #[test]
    fn a_documented_explicit_bkv_code_beats_the_status_bits() {
        let table = [(0x05, EndReason::Full), (0x06, EndReason::RemoteStop)];
        assert_eq!(
            EndReason::from_bkv_with(&table, Some(0x05), 0x98, false),
            EndReason::Full
        );
        assert_eq!(
            EndReason::from_bkv_with(&table, Some(0x06), 0x84, false),
            EndReason::RemoteStop
        );
        assert_eq!(
            EndReason::from_bkv_with(&table, Some(0x07), 0x98, false),
            EndReason::NoLoad
        );
    }

    #[test]
    fn every_end_reason_has_a_name_and_both_texts() {
        for r in EndReason::ALL {
            assert_eq!(EndReason::from_code(r.code()), r);
            assert!(!r.name().is_empty() && !r.text_zh().is_empty() && !r.text_en().is_empty());
        }
        assert_eq!(EndReason::from_code(99), EndReason::Unknown);
        assert_eq!(EndReason::CommunicationLost.code(), 11);
        assert_eq!(EndReason::RemoteStop.text_zh(), "远程停止");
    }
}
