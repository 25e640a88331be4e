//! Billing in integer fen, rounding half up (API.md).

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
}
