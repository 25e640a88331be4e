//! Pure domain logic: the order state machine, billing in integer fen, end reasons and
//! durations. Nothing here does I/O or reads a clock; every function is unit-tested.

use pile_api::OrderStatus;

/// How an order is meant to end (`charge_mode` of the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeMode {
    /// Mode 1: `duration` seconds.
    ByTime,
    /// Mode 2: `energy_wh`.
    ByEnergy,
    /// Mode 3: until `amount` is used up at the given prices.
    ByAmount,
    /// Mode 4: until the battery is full.
    UntilFull,
}

impl ChargeMode {
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(ChargeMode::ByTime),
            2 => Some(ChargeMode::ByEnergy),
            3 => Some(ChargeMode::ByAmount),
            4 => Some(ChargeMode::UntilFull),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        match self {
            ChargeMode::ByTime => 1,
            ChargeMode::ByEnergy => 2,
            ChargeMode::ByAmount => 3,
            ChargeMode::UntilFull => 4,
        }
    }
}

/// A request field that failed validation; the API answers 400 naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field `{field}`: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// A charge request after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeSpec {
    pub port_no: u32,
    pub mode: ChargeMode,
    /// Seconds; 0 when the mode has no time target.
    pub duration_sec: i64,
    pub energy_wh: i64,
    pub amount: i64,
    pub price_per_kwh: i64,
    pub service_fee: i64,
}

/// Longest time target a device accepts (BKV: 900 minutes).
pub const MAX_DURATION_SEC: i64 = 900 * 60;

/// Checks a charge request's numbers. `port_count` is the device's known port count, if any.
#[allow(clippy::too_many_arguments)]
pub fn validate_charge(
    port_no: i64,
    mode: i64,
    duration: i64,
    energy_wh: i64,
    amount: i64,
    price_per_kwh: i64,
    service_fee: i64,
    port_count: Option<u32>,
) -> Result<ChargeSpec, FieldError> {
    let max_port = port_count.unwrap_or(500);
    if port_no < 1 || port_no > i64::from(max_port) {
        return Err(FieldError::new(
            "port_no",
            format!("must be between 1 and {max_port}"),
        ));
    }
    let mode = ChargeMode::from_code(mode)
        .ok_or_else(|| FieldError::new("charge_mode", "must be 1, 2, 3 or 4"))?;
    if !(0..=MAX_DURATION_SEC).contains(&duration) {
        return Err(FieldError::new(
            "duration",
            format!("must be between 0 and {MAX_DURATION_SEC}"),
        ));
    }
    if mode == ChargeMode::ByTime && duration == 0 {
        return Err(FieldError::new(
            "duration",
            "must be positive for charge_mode 1",
        ));
    }
    if !(0..=65_535).contains(&energy_wh) {
        return Err(FieldError::new("energy_wh", "must be between 0 and 65535"));
    }
    if mode == ChargeMode::ByEnergy && energy_wh == 0 {
        return Err(FieldError::new(
            "energy_wh",
            "must be positive for charge_mode 2",
        ));
    }
    if !(0..=100_000_000).contains(&amount) {
        return Err(FieldError::new(
            "amount",
            "must be between 0 and 100000000 fen",
        ));
    }
    if mode == ChargeMode::ByAmount && amount == 0 {
        return Err(FieldError::new(
            "amount",
            "must be positive for charge_mode 3",
        ));
    }
    if !(0..=100_000).contains(&price_per_kwh) {
        return Err(FieldError::new(
            "price_per_kwh",
            "must be between 0 and 100000",
        ));
    }
    if !(0..=100_000).contains(&service_fee) {
        return Err(FieldError::new(
            "service_fee",
            "must be between 0 and 100000",
        ));
    }
    if mode == ChargeMode::ByAmount && price_per_kwh + service_fee == 0 {
        return Err(FieldError::new(
            "price_per_kwh",
            "charge_mode 3 needs price_per_kwh or service_fee",
        ));
    }
    Ok(ChargeSpec {
        port_no: port_no as u32,
        mode,
        duration_sec: if mode == ChargeMode::ByTime {
            duration
        } else {
            0
        },
        energy_wh,
        amount,
        price_per_kwh,
        service_fee,
    })
}

/// What happens to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderEvent {
    /// The device confirmed the start and reports charging.
    Confirmed,
    /// The device refused the start.
    Rejected,
    /// Stopped or expired before charging began.
    Cancelled,
    /// An end report (or the server's own settlement) closed it.
    Settled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("order cannot go from {from} on {event:?}")]
pub struct TransitionError {
    pub from: OrderStatus,
    pub event: OrderEvent,
}

/// The order state machine: pending → charging → completed, or failed / cancelled.
///
/// A settlement may arrive for a pending order whose confirmation was lost (the device
/// charged while the gateway never saw it start): that completes it too.
pub fn transition(from: OrderStatus, event: OrderEvent) -> Result<OrderStatus, TransitionError> {
    use OrderEvent as E;
    use OrderStatus as S;
    match (from, event) {
        (S::Pending, E::Confirmed) => Ok(S::Charging),
        (S::Charging, E::Confirmed) => Ok(S::Charging),
        (S::Pending, E::Rejected) => Ok(S::Failed),
        (S::Pending, E::Cancelled) => Ok(S::Cancelled),
        (S::Pending | S::Charging, E::Settled) => Ok(S::Completed),
        _ => Err(TransitionError { from, event }),
    }
}

/// Integer division rounding half up, for non-negative numerators and positive divisors.
pub fn div_round_half_up(num: i128, den: i128) -> i128 {
    if den <= 0 {
        return 0;
    }
    if num >= 0 {
        (num * 2 + den) / (den * 2)
    } else {
        -((-num * 2 + den) / (den * 2))
    }
}

/// The money side of one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tariff {
    /// Fen; 0 means no cap.
    pub amount: i64,
    /// Fen per kWh.
    pub price_per_kwh: i64,
    /// Fen per kWh.
    pub service_fee: i64,
    /// Seconds, for pricing by time when there are no prices.
    pub target_duration: i64,
    /// Wh, for pricing by energy when there are no prices.
    pub target_energy_wh: i64,
}

/// A settlement's figures, in fen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bill {
    pub energy_fee: i64,
    pub service_fee_amount: i64,
    pub final_amount: i64,
}

/// Billing exactly as API.md says, computed once at settlement.
///
/// - With prices: `energy_fee = round(kWh × price_per_kwh)`, `service_fee_amount =
///   round(kWh × service_fee)`, `final_amount = min(amount, sum)`; an amount of 0 means
///   no cap (a request without an amount is not free).
/// - Without prices, by time: `round(amount × min(1, duration / target))`; by energy the same
///   with energy; with no target the whole amount.
/// - A failed or cancelled order costs 0 (the caller does not bill those).
pub fn bill(tariff: &Tariff, energy_wh: i64, duration_sec: i64) -> Bill {
    let energy_wh = energy_wh.max(0);
    let duration_sec = duration_sec.max(0);
    if tariff.price_per_kwh > 0 || tariff.service_fee > 0 {
        let energy_fee = div_round_half_up(
            i128::from(energy_wh) * i128::from(tariff.price_per_kwh),
            1000,
        ) as i64;
        let service_fee_amount =
            div_round_half_up(i128::from(energy_wh) * i128::from(tariff.service_fee), 1000) as i64;
        let sum = energy_fee + service_fee_amount;
        let final_amount = if tariff.amount > 0 {
            sum.min(tariff.amount)
        } else {
            sum
        };
        return Bill {
            energy_fee,
            service_fee_amount,
            final_amount,
        };
    }
    let (used, target) = if tariff.target_duration > 0 {
        (duration_sec, tariff.target_duration)
    } else if tariff.target_energy_wh > 0 {
        (energy_wh, tariff.target_energy_wh)
    } else {
        (1, 1)
    };
    let used = used.min(target);
    let final_amount = div_round_half_up(
        i128::from(tariff.amount) * i128::from(used),
        i128::from(target),
    ) as i64;
    Bill {
        energy_fee: 0,
        service_fee_amount: 0,
        final_amount,
    }
}

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
}

impl EndReason {
    pub const ALL: [EndReason; 13] = [
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
    fn billing_with_prices_rounds_half_up_in_fen() {
        let t = Tariff {
            amount: 500,
            price_per_kwh: 150,
            service_fee: 50,
            ..Tariff::default()
        };
        // 0.123 kWh × 150 = 18.45 → 18; × 50 = 6.15 → 6.
        assert_eq!(
            bill(&t, 123, 300),
            Bill {
                energy_fee: 18,
                service_fee_amount: 6,
                final_amount: 24
            }
        );
        // 0.01 kWh × 150 = 1.5 → 2 (half up); × 50 = 0.5 → 1.
        assert_eq!(
            bill(&t, 10, 300),
            Bill {
                energy_fee: 2,
                service_fee_amount: 1,
                final_amount: 3
            }
        );
    }

    #[test]
    fn billing_with_prices_is_capped_by_the_amount() {
        let t = Tariff {
            amount: 500,
            price_per_kwh: 150,
            service_fee: 50,
            ..Tariff::default()
        };
        let b = bill(&t, 3000, 300);
        assert_eq!(
            (b.energy_fee, b.service_fee_amount, b.final_amount),
            (450, 150, 500)
        );
    }

    #[test]
    fn billing_without_prices_is_proportional_to_time_and_capped_at_one() {
        let t = Tariff {
            amount: 500,
            target_duration: 300,
            ..Tariff::default()
        };
        assert_eq!(bill(&t, 0, 150).final_amount, 250);
        assert_eq!(bill(&t, 0, 1).final_amount, 2); // 1.666… → 2
        assert_eq!(bill(&t, 0, 3).final_amount, 5);
        assert_eq!(bill(&t, 0, 900).final_amount, 500);
        // 500 × 0.3/300 … 100 × 1/200 = 0.5 → 1
        let t = Tariff {
            amount: 100,
            target_duration: 200,
            ..Tariff::default()
        };
        assert_eq!(bill(&t, 0, 1).final_amount, 1);
    }

    #[test]
    fn half_up_rounding_is_exact_at_the_half() {
        assert_eq!(div_round_half_up(5, 10), 1);
        assert_eq!(div_round_half_up(4, 10), 0);
        assert_eq!(div_round_half_up(15, 10), 2);
        assert_eq!(div_round_half_up(1499, 1000), 1);
        assert_eq!(div_round_half_up(1500, 1000), 2);
    }

    #[test]
    fn the_state_machine_allows_only_the_documented_transitions() {
        use OrderStatus::*;
        assert_eq!(transition(Pending, OrderEvent::Confirmed), Ok(Charging));
        assert_eq!(transition(Pending, OrderEvent::Rejected), Ok(Failed));
        assert_eq!(transition(Pending, OrderEvent::Cancelled), Ok(Cancelled));
        assert_eq!(transition(Charging, OrderEvent::Settled), Ok(Completed));
        assert_eq!(transition(Pending, OrderEvent::Settled), Ok(Completed));
        assert!(transition(Completed, OrderEvent::Settled).is_err());
        assert!(transition(Charging, OrderEvent::Rejected).is_err());
        assert!(transition(Cancelled, OrderEvent::Confirmed).is_err());
        assert!(transition(Failed, OrderEvent::Cancelled).is_err());
    }

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

    #[test]
    fn charge_validation_names_the_offending_field() {
        let ok = validate_charge(1, 1, 300, 0, 500, 150, 50, Some(4));
        assert!(ok.is_ok());
        let field = |r: Result<ChargeSpec, FieldError>| r.err().map(|e| e.field);
        assert_eq!(
            field(validate_charge(5, 1, 300, 0, 500, 0, 0, Some(4))),
            Some("port_no")
        );
        assert_eq!(
            field(validate_charge(0, 1, 300, 0, 500, 0, 0, None)),
            Some("port_no")
        );
        assert_eq!(
            field(validate_charge(1, 9, 300, 0, 500, 0, 0, None)),
            Some("charge_mode")
        );
        assert_eq!(
            field(validate_charge(1, 1, 0, 0, 500, 0, 0, None)),
            Some("duration")
        );
        assert_eq!(
            field(validate_charge(1, 1, 60, 0, -1, 0, 0, None)),
            Some("amount")
        );
        assert_eq!(
            field(validate_charge(1, 2, 0, 0, 0, 0, 0, None)),
            Some("energy_wh")
        );
    }
}
