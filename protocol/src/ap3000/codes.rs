//! Named values of the AP3000 code bytes: port status, `0x82` result and
//! `0x03` stop reason. Each is a transparent newtype over the wire byte so an
//! unknown value (vendors keep adding them) is carried, not rejected.

use serde::Serialize;

macro_rules! code_type {
    ($(#[$doc:meta])* $name:ident { $($konst:ident = $value:literal => $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub u8);

        impl $name {
            $(pub const $konst: $name = $name($value);)*

            /// Short snake_case name of the code, `"unknown"` for values the
            /// vendor document does not list.
            pub fn name(self) -> &'static str {
                match self.0 {
                    $($value => $text,)*
                    _ => "unknown",
                }
            }
        }

        impl From<u8> for $name {
            fn from(v: u8) -> Self {
                $name(v)
            }
        }
    };
}

code_type! {
    /// Port status byte of the `0x21` (and `0x01`) heartbeat.
    PortStatus {
        IDLE = 0x00 => "idle",
        CHARGING = 0x01 => "charging",
        PLUGGED = 0x02 => "plugged_not_charging",
        FULL = 0x03 => "plugged_full",
        NO_METERING = 0x04 => "no_metering",
        FLOAT = 0x05 => "float_charging",
        MEMORY_DAMAGED = 0x06 => "memory_damaged",
        CONTACT_STUCK = 0x07 => "contact_stuck",
        BAD_CONTACT_OR_FUSE = 0x08 => "bad_contact_or_fuse",
        RELAY_WELDED = 0x09 => "relay_welded",
        HALL_SENSOR_FAULT = 0x0A => "hall_sensor_fault",
        PRECHECK_RELAY_OR_FUSE = 0x0B => "precheck_relay_or_fuse",
        PRECHECK_SHORT = 0x0D => "precheck_short_circuit",
        PRECHECK_RELAY_WELDED = 0x0E => "precheck_relay_welded",
        CARD_READER_FAULT = 0x0F => "card_reader_fault",
        DETECTION_CIRCUIT_FAULT = 0x10 => "detection_circuit_fault",
    }
}

impl PortStatus {
    /// Statuses 6 and above are faults.
    pub fn is_fault(self) -> bool {
        self.0 >= 6
    }
}

code_type! {
    /// Result code of the device's `0x82` reply.
    StartResult {
        DONE = 0x00 => "done",
        NO_CHARGER = 0x01 => "no_charger_plugged",
        SAME_STATE = 0x02 => "same_state",
        PORT_FAULT = 0x03 => "port_fault",
        NO_SUCH_PORT = 0x04 => "no_such_port",
        SEVERAL_WAITING = 0x05 => "several_ports_waiting",
        OVER_POWER = 0x06 => "over_power",
        MEMORY_DAMAGED = 0x07 => "memory_damaged",
        PRECHECK_RELAY_OR_FUSE = 0x08 => "precheck_relay_or_fuse",
        PRECHECK_RELAY_WELDED = 0x09 => "precheck_relay_welded",
        PRECHECK_SHORT = 0x0A => "precheck_short_circuit",
        SMOKE_ALARM = 0x0B => "smoke_alarm",
        OVER_VOLTAGE = 0x0C => "over_voltage",
        UNDER_VOLTAGE = 0x0D => "under_voltage",
        NO_RESPONSE = 0x0E => "no_response",
    }
}

code_type! {
    /// Stop reason of the `0x03` settlement (and `0x43`).
    StopReason {
        FULL = 0x01 => "full",
        MAX_DURATION = 0x02 => "max_duration",
        PRESET_TIME = 0x03 => "preset_time_reached",
        PRESET_ENERGY = 0x04 => "preset_energy_reached",
        UNPLUGGED = 0x05 => "unplugged",
        OVERLOAD = 0x06 => "overload",
        SERVER_STOP = 0x07 => "stopped_by_server",
        DYNAMIC_OVERLOAD = 0x08 => "dynamic_overload",
        POWER_TOO_LOW = 0x09 => "power_too_low",
        AMBIENT_TOO_HOT = 0x0A => "ambient_too_hot",
        PORT_TOO_HOT = 0x0B => "port_too_hot",
        OVER_CURRENT = 0x0C => "over_current",
        UNPLUGGED_STUCK = 0x0D => "unplugged_stuck_contact",
        NO_POWER = 0x0E => "no_power",
        PRECHECK_FAILED = 0x0F => "precheck_failed",
        WATER = 0x10 => "cabinet_water",
        FIRE_THIS_PORT = 0x11 => "cabinet_fire_this_port",
        FIRE_OTHER_PORT = 0x12 => "cabinet_fire_other_port",
        PASSWORD_OPEN = 0x13 => "cabinet_password_open",
        DOOR_NOT_CLOSED = 0x14 => "cabinet_door_not_closed",
        EXTERNAL_STOP = 0x15 => "cabinet_external_stop",
        CARD_STOP = 0x16 => "cabinet_card_stop",
        FORCED_SERVER_STOP = 0x17 => "cabinet_forced_server_stop",
        FIRE_SYSTEM = 0x18 => "cabinet_fire_system",
        MEMORY_ERROR = 0x19 => "memory_error",
        OVER_VOLTAGE = 0x1A => "over_voltage",
        UNDER_VOLTAGE = 0x1B => "under_voltage",
        LOW_POWER_CUT = 0x1C => "low_power_cut",
    }
}

impl StopReason {
    /// The platform `end_reason` (PROTOCOL.md §3) for this stop reason.
    pub fn platform_end_reason(self) -> u8 {
        platform_end_reason(self.0)
    }
}

/// Maps an AP3000 `0x03` stop reason to the platform's `end_reason`
/// (PROTOCOL.md §3): 1 target reached, 2 full, 3 remote stop, 4 unplugged,
/// 5 no load / power too low, 6 overload, 7 over-temperature, 8 electrical
/// protection, 9 device fault (everything not listed).
pub fn platform_end_reason(stop_reason: u8) -> u8 {
    match stop_reason {
        0x02..=0x04 => 1,
        0x01 => 2,
        0x07 => 3,
        0x05 | 0x0D => 4,
        0x09 | 0x0E | 0x1C => 5,
        0x06 | 0x08 => 6,
        0x0A | 0x0B => 7,
        0x0C | 0x1A | 0x1B => 8,
        _ => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_stop_reason_maps_to_its_platform_end_reason() {
        let table: &[(u8, u8)] = &[
            (0x03, 1),
            (0x04, 1),
            (0x02, 1),
            (0x01, 2),
            (0x07, 3),
            (0x05, 4),
            (0x0D, 4),
            (0x09, 5),
            (0x0E, 5),
            (0x1C, 5),
            (0x06, 6),
            (0x08, 6),
            (0x0A, 7),
            (0x0B, 7),
            (0x0C, 8),
            (0x1A, 8),
            (0x1B, 8),
        ];
        for &(reason, end) in table {
            assert_eq!(
                platform_end_reason(reason),
                end,
                "stop reason {reason:#04x}"
            );
            assert_eq!(StopReason(reason).platform_end_reason(), end);
        }
        for other in [0x00, 0x0F, 0x10, 0x17, 0x18, 0x19, 0x1D, 0xFF] {
            assert_eq!(platform_end_reason(other), 9, "stop reason {other:#04x}");
        }
    }

    #[test]
    fn codes_have_names() {
        assert_eq!(StartResult(5).name(), "several_ports_waiting");
        assert_eq!(StopReason::SERVER_STOP.name(), "stopped_by_server");
        assert_eq!(PortStatus(1).name(), "charging");
        assert_eq!(PortStatus(0x77).name(), "unknown");
        assert!(PortStatus(9).is_fault());
    }
}
