//! Charge request validation: every failure names its field.

use super::order::ChargeMode;

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

#[cfg(test)]
mod tests {
    use super::*;

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
