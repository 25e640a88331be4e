//! Platform end reasons (PROTOCOL.md §3) and the vendors' codes mapped onto them.

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

    /// BKV end: a stop the server commanded → 3; else from the socket status bits
    /// (bit 6 metering fault, bit 4 no-load, bit 3 over-temperature, bit 2 over-current,
    /// bit 1 over-power); a reached time/energy target → 1.
    pub fn from_bkv(server_stopped: bool, status: u8, target_reached: bool) -> EndReason {
        if server_stopped {
            EndReason::RemoteStop
        } else if status & 0x08 != 0 {
            EndReason::OverTemperature
        } else if status & 0x04 != 0 {
            EndReason::ElectricalProtection
        } else if status & 0x02 != 0 {
            EndReason::Overload
        } else if status & 0x40 != 0 {
            EndReason::DeviceFault
        } else if target_reached {
            EndReason::TargetReached
        } else if status & 0x10 != 0 {
            EndReason::NoLoad
        } else {
            EndReason::Unplugged
        }
    }
}

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

    #[test]
    fn bkv_end_reasons_prefer_the_server_stop_then_faults_then_the_target() {
        assert_eq!(EndReason::from_bkv(true, 0x88, true), EndReason::RemoteStop);
        assert_eq!(
            EndReason::from_bkv(false, 0x88, true),
            EndReason::OverTemperature
        );
        assert_eq!(
            EndReason::from_bkv(false, 0x80, true),
            EndReason::TargetReached
        );
        assert_eq!(EndReason::from_bkv(false, 0x90, false), EndReason::NoLoad);
        assert_eq!(
            EndReason::from_bkv(false, 0x80, false),
            EndReason::Unplugged
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
