//! Durations and port numbering.

use super::billing::div_round_half_up;

/// Whole seconds between the gateway's two timestamps (ms), rounded half up.
pub fn duration_sec(started_at_ms: i64, ended_at_ms: i64) -> i64 {
    div_round_half_up(i128::from((ended_at_ms - started_at_ms).max(0)), 1000) as i64
}

/// Whether the device's own duration agrees with the gateway's measurement; `resolution_sec`
/// is the device's unit (60 for BKV minutes, 1 for AP3000), plus 5 s for latency.
pub fn duration_agrees(gateway_sec: i64, device_sec: i64, resolution_sec: i64) -> bool {
    (gateway_sec - device_sec).abs() <= resolution_sec + 5
}

/// BKV time targets are whole minutes: round up so the device never stops early; the gateway
/// stops it at the exact second itself.
pub fn minutes_rounded_up(seconds: i64) -> i64 {
    (seconds.max(0) + 59) / 60
}

/// Platform port number → BKV (socket, hole).
pub fn bkv_socket_hole(port_no: u32) -> (u32, u32) {
    let p = port_no.max(1) - 1;
    (p / 2 + 1, p % 2)
}

/// BKV (socket, hole) → platform port number.
pub fn bkv_port_no(socket: u32, hole: u32) -> u32 {
    socket.saturating_sub(1) * 2 + hole.min(1) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_come_from_gateway_milliseconds() {
        assert_eq!(duration_sec(1_000, 301_000), 300);
        assert_eq!(duration_sec(1_000, 301_499), 300);
        assert_eq!(duration_sec(1_000, 301_500), 301);
        assert_eq!(duration_sec(5_000, 1_000), 0);
        assert!(duration_agrees(300, 300, 1));
        assert!(duration_agrees(305, 240, 60));
        assert!(!duration_agrees(400, 300, 60));
    }

    #[test]
    fn bkv_minutes_round_up_and_ports_map_to_socket_and_hole() {
        assert_eq!(minutes_rounded_up(60), 1);
        assert_eq!(minutes_rounded_up(61), 2);
        assert_eq!(minutes_rounded_up(90), 2);
        assert_eq!(bkv_socket_hole(1), (1, 0));
        assert_eq!(bkv_socket_hole(2), (1, 1));
        assert_eq!(bkv_socket_hole(3), (2, 0));
        for p in 1..=500 {
            let (s, h) = bkv_socket_hole(p);
            assert_eq!(bkv_port_no(s, h), p);
        }
    }
}
