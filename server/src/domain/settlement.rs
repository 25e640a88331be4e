//! The one settlement policy: from an order, the device's end report and what the gateway saw,
//! to the figures that are billed — with where the duration came from.
//!
//! Every settlement, whoever triggers it (a device's end report, the gateway's own stop, the
//! offline grace, reconciliation of a charge the device lost), is computed here, so the rules
//! below hold everywhere:
//!
//! * **Duration** — the gateway's clock when it saw the start and the end live (on whichever
//!   connection); else the device's own clock when the frame carries one (AP3000 counts
//!   seconds, BKV 0x1004 / 0x18 carry an end time); else the device's counter (BKV minutes);
//!   else the last report the gateway had.
//! * **Energy** — the device's figure (the meter is the truth); a settlement without a device
//!   report uses the last reported energy.
//! * **Reason** — a stop the API asked for is a remote stop (3); a stop the gateway made
//!   because the target or the money was reached is 1; otherwise the device's own reason.
//! * **Money** — [`bill`](super::bill), integer fen, half up, once.

use pile_api::OrderStatus;

use super::billing::{bill, Bill, Tariff};
use super::order::ChargeMode;
use super::reasons::EndReason;
use super::units::duration_sec;

/// Where a settled duration came from (`orders.duration_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationSource {
    /// The gateway saw the start and the end live: its own clock, to the millisecond.
    Gateway,
    /// The device's clock: its seconds counter (AP3000) or its end time against the
    /// gateway's start (BKV 0x1004 / 0x18).
    DeviceClock,
    /// The device's coarse counter (BKV whole minutes).
    DeviceCounter,
    /// No end report: from the start to the last report the gateway had.
    LastReport,
}

impl DurationSource {
    pub fn as_str(self) -> &'static str {
        match self {
            DurationSource::Gateway => "gateway",
            DurationSource::DeviceClock => "device_clock",
            DurationSource::DeviceCounter => "device_counter",
            DurationSource::LastReport => "last_report",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            DurationSource::Gateway,
            DurationSource::DeviceClock,
            DurationSource::DeviceCounter,
            DurationSource::LastReport,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
    }
}

/// Who asked an order to stop before the device ended it by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// The API (`POST …/stop`): a remote stop, reason 3.
    Api,
    /// The gateway: the target second (BKV whole-minute rounding) or the money was reached,
    /// reason 1.
    Target,
    /// The gateway stopped a charge it had no open order for (a late confirmation).
    Orphan,
}

impl StopCause {
    pub fn code(self) -> i64 {
        match self {
            StopCause::Api => 1,
            StopCause::Target => 2,
            StopCause::Orphan => 3,
        }
    }

    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(StopCause::Api),
            2 => Some(StopCause::Target),
            3 => Some(StopCause::Orphan),
            _ => None,
        }
    }
}

/// What settlement needs to know about an order.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderFacts {
    pub status: OrderStatus,
    pub mode: ChargeMode,
    pub tariff: Tariff,
    /// When the charge started by the gateway's clock (its confirmation, or the first send of
    /// a start the device turned out to have executed).
    pub started_at_ms: Option<i64>,
    /// The last progress or status report the gateway stored for the order.
    pub last_report_at_ms: Option<i64>,
    pub last_energy_wh: i64,
    pub peak_power_dw: i64,
    pub stop: Option<StopCause>,
    /// The device was marked offline while the order was open: the charge lived through an
    /// offline spell, so its record includes what the device kept meanwhile.
    pub was_offline: bool,
}

/// The device's own reason for an end, in its family's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceReason {
    /// AP3000 `0x03` stop reason.
    Ap3000(u8),
    /// BKV: the explicit end-reason byte or tag when the frame has one, and the status bits.
    Bkv { explicit: Option<u8>, status: u8 },
    /// Already a platform reason.
    Platform(EndReason),
}

/// A device's end report, family-neutral.
#[derive(Debug, Clone, PartialEq)]
pub struct EndEvidence {
    pub energy_wh: i64,
    /// The device's duration, seconds (BKV: minutes × 60).
    pub device_duration_sec: Option<i64>,
    /// The unit of `device_duration_sec`: 1 (AP3000) or 60 (BKV).
    pub duration_resolution_sec: i64,
    /// The end by the device's clock (Unix ms), when the frame carries it.
    pub device_end_at_ms: Option<i64>,
    pub peak_power_dw: Option<i64>,
    pub reason: DeviceReason,
}

/// What the gateway saw of the charge when the report arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub now_ms: i64,
    /// The gateway saw this charge running on the connection that carried the end report
    /// (its start confirmation, a progress or status report naming it, a query answer) — so
    /// the end happened while it watched, not during an offline spell.
    pub end_live: bool,
    /// The gateway's write of a stop for this order (its own or the API's) that the device
    /// answered as done, if any: a device stops at once and reports at once, so an end report
    /// that arrives well after it is a copy resent after the first was lost, and the charge
    /// ended at the stop.
    pub stop_sent_at_ms: Option<i64>,
}

/// The figures a settlement writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub duration_sec: i64,
    pub duration_source: DurationSource,
    pub device_duration_sec: Option<i64>,
    pub energy_wh: i64,
    pub peak_power_dw: i64,
    pub bill: Bill,
    pub reason: EndReason,
    /// The charge lived through an offline spell, or its end happened while the gateway could
    /// not see it: its record includes figures the device kept and replayed. (Independent of
    /// the duration's source: a charge seen running again after the spell and ending live is
    /// still timed by the gateway.)
    pub offline_replayed: bool,
}

/// Time and energy targets reached, for reasons that depend on them (BKV status bits).
fn target_reached(order: &OrderFacts, duration: i64, resolution: i64, energy_wh: i64) -> bool {
    (order.tariff.target_duration > 0 && duration + resolution >= order.tariff.target_duration)
        || (order.tariff.target_energy_wh > 0 && energy_wh >= order.tariff.target_energy_wh)
}

fn device_reason(
    order: &OrderFacts,
    r: DeviceReason,
    duration: i64,
    resolution: i64,
    energy: i64,
) -> EndReason {
    match r {
        DeviceReason::Ap3000(code) => EndReason::from_ap3000(code),
        DeviceReason::Bkv { explicit, status } => bkv_reason(
            explicit,
            status,
            target_reached(order, duration, resolution, energy),
        ),
        DeviceReason::Platform(p) => p,
    }
}

/// The BKV mapping of `reasons.rs` (explicit reason first, then the status bits).
fn bkv_reason(explicit: Option<u8>, status: u8, target_reached: bool) -> EndReason {
    EndReason::from_bkv(explicit, status, target_reached)
}

/// A reason a stop request does not override: the device stopped for its own safety first.
fn is_fault(r: EndReason) -> bool {
    matches!(
        r,
        EndReason::Overload
            | EndReason::OverTemperature
            | EndReason::ElectricalProtection
            | EndReason::DeviceFault
            | EndReason::PowerOutage
    )
}

/// Settles an order from a device's end report.
pub fn settle_report(order: &OrderFacts, end: &EndEvidence, seen: Observation) -> Settled {
    let gateway = match (order.started_at_ms, seen.end_live) {
        (Some(start), true) if !arrived_late(order, end, seen.now_ms) => {
            let end_at = match seen.stop_sent_at_ms {
                Some(stop) if stop >= start && seen.now_ms - stop > LATE_END_MS => stop,
                _ => seen.now_ms,
            };
            Some(duration_sec(start, end_at))
        }
        _ => None,
    };
    let (duration, source) = match gateway {
        // A gateway-clock duration that contradicts the device's own counter by more than its
        // unit did not see both ends as they happened (an end report resent after the first
        // copy was lost, a start confirmed late): the device's figures win then.
        Some(g)
            if end.device_duration_sec.is_none_or(|d| {
                super::duration_agrees(g, d, end.duration_resolution_sec.max(1))
            }) && device_timer_sec(order, end).is_none_or(|t| g <= t + LATE_END_MS / 1000) =>
        {
            (g, DurationSource::Gateway)
        }
        _ => device_duration(order, end),
    };
    let energy = end.energy_wh.max(0);
    let device = device_reason(
        order,
        end.reason,
        end.device_duration_sec.unwrap_or(duration),
        end.duration_resolution_sec,
        energy,
    );
    let reason = match order.stop {
        Some(StopCause::Api) if !is_fault(device) => EndReason::RemoteStop,
        Some(StopCause::Target) if !is_fault(device) => EndReason::TargetReached,
        _ => device,
    };
    let peak = end.peak_power_dw.unwrap_or(0).max(order.peak_power_dw);
    Settled {
        duration_sec: duration,
        duration_source: source,
        device_duration_sec: end.device_duration_sec,
        energy_wh: energy,
        peak_power_dw: peak,
        bill: bill(&order.tariff, energy, duration),
        reason,
        offline_replayed: !seen.end_live || order.was_offline,
    }
}

/// The timer a device with a coarse counter (BKV whole minutes) was given for a by-time
/// charge: the target rounded up to its unit, which is what the start command carries. The
/// device stops by itself when it runs out, so a charge it timed cannot have lasted longer: a
/// gateway measurement beyond it (with latency's slack) timed a resent report, not the end —
/// seed 9845: the gateway's stop and the end report were lost in a half-open spell, the copy
/// resent 15 s later was billed 75 s for the 60 s the pile's 1-minute timer allowed.
fn device_timer_sec(order: &OrderFacts, end: &EndEvidence) -> Option<i64> {
    let unit = end.duration_resolution_sec;
    (order.mode == ChargeMode::ByTime && order.tariff.target_duration > 0 && unit > 1)
        .then(|| (order.tariff.target_duration + unit - 1) / unit * unit)
}

/// How long after the end its device timestamps a report may arrive and still be the end
/// the gateway watched happen: network latency, the device clock's one-second unit and its
/// synchronisation (the gateway answers its time requests) stay well inside it; a copy resent
/// after the first was lost (the devices resend after 15 s or more) does not.
pub const LATE_END_MS: i64 = 5_000;

/// The report says the charge ended well before it arrived (a resent copy whose first was
/// lost, a report held up on the way): the arrival is not the end. The device's end time is
/// believed only where it is plausible against the gateway's own clock — after the start and
/// not in the future — so a device with a wrong clock is timed by the gateway as before.
fn arrived_late(order: &OrderFacts, end: &EndEvidence, now_ms: i64) -> bool {
    match (end.device_end_at_ms, order.started_at_ms) {
        (Some(end_at), Some(start)) => {
            end_at >= start && end_at <= now_ms + 1_000 && now_ms - end_at > LATE_END_MS
        }
        _ => false,
    }
}

/// The device's idea of the duration, best source first.
fn device_duration(order: &OrderFacts, end: &EndEvidence) -> (i64, DurationSource) {
    if end.duration_resolution_sec <= 1 {
        if let Some(d) = end.device_duration_sec {
            return (d.max(0), DurationSource::DeviceClock);
        }
    }
    if let (Some(end_at), Some(start)) = (end.device_end_at_ms, order.started_at_ms) {
        if end_at >= start {
            return (duration_sec(start, end_at), DurationSource::DeviceClock);
        }
    }
    if let Some(d) = end.device_duration_sec {
        return (d.max(0), DurationSource::DeviceCounter);
    }
    last_report_duration(order)
}

fn last_report_duration(order: &OrderFacts) -> (i64, DurationSource) {
    match order.started_at_ms {
        Some(start) => (
            duration_sec(start, order.last_report_at_ms.unwrap_or(start)),
            DurationSource::LastReport,
        ),
        None => (0, DurationSource::LastReport),
    }
}

/// Settles an order without a device report, with the last figures the gateway has: the
/// device never came back within the grace (reason 11), or it reports the port idle (13).
pub fn settle_without_report(order: &OrderFacts, reason: EndReason) -> Settled {
    let (duration, source) = last_report_duration(order);
    let energy = order.last_energy_wh.max(0);
    Settled {
        duration_sec: duration,
        duration_source: source,
        device_duration_sec: None,
        energy_wh: energy,
        peak_power_dw: order.peak_power_dw,
        bill: bill(&order.tariff, energy, duration),
        reason,
        offline_replayed: order.was_offline,
    }
}

/// Whether a charge with a money cap has used its money up at this energy and duration (the
/// gateway then stops the port, for either family, whether or not the device enforces it).
pub fn money_used_up(order: &OrderFacts, energy_wh: i64, duration: i64) -> bool {
    let t = &order.tariff;
    t.amount > 0
        && (t.price_per_kwh > 0 || t.service_fee > 0)
        && bill(
            &Tariff {
                amount: 0,
                ..order.tariff
            },
            energy_wh,
            duration,
        )
        .final_amount
            >= t.amount
}

// ---------------------------------------------------------------------------------------------
// Which order a report is about

/// How far a start command got, for matching reports to orders whose reply was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartState {
    /// Not yet written to the device.
    Queued,
    /// Written at least once; the reply may have been lost.
    Sent,
    /// The device answered.
    Answered,
}

/// An order a report might be about: the device's orders on the report's port.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub order_no: String,
    pub status: OrderStatus,
    /// The device's handle of the charge (AP3000 order number, BKV business number).
    pub device_ref: Option<String>,
    pub start: StartState,
}

/// The answer of [`match_report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// The report is about this order; `learn_ref` when the report taught the gateway the
    /// device's handle of it (a BKV business number whose start reply was lost).
    Order { order_no: String, learn_ref: bool },
    /// No order the report can be about: kept, never applied to another charge.
    Unmatched,
}

/// The one report-matching rule.
///
/// A report that names its charge (`device_ref`) matches the order with that handle, whatever
/// its status. Failing that, it may teach its handle to the one open order on the port that has
/// none yet and whose start was written to the device (its reply was lost). A report that
/// names a charge is never matched to "the active order on the port" otherwise: that order is
/// somebody else's. Only a report that names no charge falls back to the one open order on
/// the port.
pub fn match_report(device_ref: Option<&str>, candidates: &[Candidate]) -> Match {
    let open = |c: &&Candidate| c.status.is_active();
    match device_ref {
        Some(r) => {
            if let Some(c) = candidates
                .iter()
                .find(|c| c.device_ref.as_deref() == Some(r))
            {
                return Match::Order {
                    order_no: c.order_no.clone(),
                    learn_ref: false,
                };
            }
            let mut learnable = candidates
                .iter()
                .filter(open)
                .filter(|c| c.device_ref.is_none() && c.start != StartState::Queued);
            match (learnable.next(), learnable.next()) {
                (Some(c), None) => Match::Order {
                    order_no: c.order_no.clone(),
                    learn_ref: true,
                },
                _ => Match::Unmatched,
            }
        }
        None => {
            let mut active = candidates.iter().filter(open);
            match (active.next(), active.next()) {
                (Some(c), None) => Match::Order {
                    order_no: c.order_no.clone(),
                    learn_ref: false,
                },
                _ => Match::Unmatched,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reconciliation

/// When an open order whose port the device reports idle is settled as lost (reason 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileRule {
    /// Consecutive idle reports needed.
    pub idle_reports: u32,
    /// …spanning at least this long (so an end report the device is about to resend wins).
    pub after_ms: i64,
}

impl Default for ReconcileRule {
    fn default() -> Self {
        ReconcileRule {
            idle_reports: 3,
            after_ms: 60_000,
        }
    }
}

/// Consecutive idle reports of a port with an open order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdleWatch {
    pub reports: u32,
    pub since_ms: Option<i64>,
}

impl IdleWatch {
    /// One report of the port: idle (not charging) or not. Returns whether the order is now
    /// due for reconciliation.
    pub fn observe(&mut self, idle: bool, now_ms: i64, rule: ReconcileRule) -> bool {
        if !idle {
            *self = IdleWatch::default();
            return false;
        }
        self.reports += 1;
        let since = *self.since_ms.get_or_insert(now_ms);
        self.reports >= rule.idle_reports && now_ms - since >= rule.after_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(mode: ChargeMode, tariff: Tariff) -> OrderFacts {
        OrderFacts {
            status: OrderStatus::Charging,
            mode,
            tariff,
            started_at_ms: Some(1_000_000),
            last_report_at_ms: Some(1_010_000),
            last_energy_wh: 5,
            peak_power_dw: 0,
            stop: None,
            was_offline: false,
        }
    }

    fn bkv_end(energy: i64, minutes: i64) -> EndEvidence {
        EndEvidence {
            energy_wh: energy,
            device_duration_sec: Some(minutes * 60),
            duration_resolution_sec: 60,
            device_end_at_ms: None,
            peak_power_dw: None,
            reason: DeviceReason::Bkv {
                explicit: None,
                status: 0x80,
            },
        }
    }

    fn by_time(secs: i64, amount: i64) -> Tariff {
        Tariff {
            amount,
            target_duration: secs,
            ..Tariff::default()
        }
    }

    #[test]
    fn a_bkv_by_time_charge_is_never_billed_beyond_the_timer_the_device_was_given() {
        // Seed 9845: a 56 s order (the pile's timer: 1 minute); the gateway's stop at 56 s and
        // the end report were lost in a half-open spell, the copy resent 15 s later arrived
        // 75 s after the start on a connection that had seen the charge running.
        let o = order(ChargeMode::ByTime, by_time(56, 100));
        let seen = |now_ms| Observation {
            now_ms,
            end_live: true,
            stop_sent_at_ms: None,
        };
        let s = settle_report(&o, &bkv_end(3, 1), seen(1_075_000));
        assert_eq!(
            (s.duration_sec, s.duration_source),
            (60, DurationSource::DeviceCounter)
        );
        // Within the timer (and latency's slack) the gateway's clock still times it.
        let s = settle_report(&o, &bkv_end(3, 1), seen(1_063_000));
        assert_eq!(
            (s.duration_sec, s.duration_source),
            (63, DurationSource::Gateway)
        );
        // Only by-time charges have a timer: by energy the same arrival is the gateway's.
        let e = order(
            ChargeMode::ByEnergy,
            Tariff {
                target_energy_wh: 8,
                ..Tariff::default()
            },
        );
        let s = settle_report(&e, &bkv_end(3, 2), seen(1_075_000));
        assert_eq!(
            (s.duration_sec, s.duration_source),
            (75, DurationSource::Gateway)
        );
    }

    #[test]
    fn a_bkv_charge_that_ends_live_after_a_reconnect_is_timed_by_the_gateway() {
        // Sequence 6: a 15 s charge whose end arrives on a newer connection that had seen it
        // running must not be billed as the device's whole minute.
        let o = order(ChargeMode::ByTime, by_time(60, 400));
        let s = settle_report(
            &o,
            &bkv_end(3, 1),
            Observation {
                now_ms: 1_015_000,
                end_live: true,
                stop_sent_at_ms: None,
            },
        );
        assert_eq!(
            (s.duration_sec, s.duration_source),
            (15, DurationSource::Gateway)
        );
        assert_eq!(s.bill.final_amount, 100, "400 × 15/60");
        assert!(!s.offline_replayed);
        // After an offline spell the same live end is timed alike, and flagged.
        let spell = OrderFacts {
            was_offline: true,
            ..o.clone()
        };
        let s = settle_report(
            &spell,
            &bkv_end(3, 1),
            Observation {
                now_ms: 1_015_000,
                end_live: true,
                stop_sent_at_ms: None,
            },
        );
        assert_eq!((s.duration_sec, s.offline_replayed), (15, true));
    }

    #[test]
    fn a_live_end_that_contradicts_the_device_counter_uses_the_device_clock() {
        // Found by the fault simulation (seed 1556): a 100 s AP3000 charge whose end report
        // was lost and resent 15 s later on the same connection was billed 115 s.
        let o = order(ChargeMode::ByTime, by_time(100, 100));
        let end = EndEvidence {
            energy_wh: 5,
            device_duration_sec: Some(100),
            duration_resolution_sec: 1,
            device_end_at_ms: None,
            peak_power_dw: None,
            reason: DeviceReason::Ap3000(0x00),
        };
        let late = Observation {
            now_ms: 1_115_000,
            end_live: true,
            stop_sent_at_ms: None,
        };
        let s = settle_report(&o, &end, late);
        assert_eq!(
            (s.duration_sec, s.duration_source),
            (100, DurationSource::DeviceClock)
        );
        // On time, the gateway's clock keeps its sub-unit precision.
        let on_time = Observation {
            now_ms: 1_100_400,
            end_live: true,
            stop_sent_at_ms: None,
        };
        assert_eq!(
            settle_report(&o, &end, on_time).duration_source,
            DurationSource::Gateway
        );
    }

    #[test]
    fn a_resent_bkv_end_report_is_timed_by_the_device_end_time_it_carries() {
        // Found by the fault simulation (seeds 459, 950): a 68.5 s BKV charge whose 0x1004 was
        // lost and resent 15 s later on the same connection was billed 84 s by the gateway's
        // clock; the minute counter (2 min) could not contradict it within its unit.
        let o = order(ChargeMode::ByTime, by_time(68, 100));
        let mut e = bkv_end(4, 2);
        e.device_end_at_ms = Some(1_000_000 + 68_500);
        let resent = Observation {
            now_ms: 1_000_000 + 84_000,
            end_live: true,
            stop_sent_at_ms: None,
        };
        let s = settle_report(&o, &e, resent);
        assert_eq!(
            (s.duration_sec, s.duration_source),
            (69, DurationSource::DeviceClock),
            "68.5 s rounds half up"
        );
        // The first copy, on time: the gateway's clock.
        let live = Observation {
            now_ms: 1_000_000 + 68_600,
            end_live: true,
            stop_sent_at_ms: None,
        };
        assert_eq!(
            settle_report(&o, &e, live).duration_source,
            DurationSource::Gateway
        );
        // A device clock that is implausible (before the start, or ahead of the gateway) is
        // not believed: the gateway times it.
        for wrong in [1_000_000 - 10_000, 1_000_000 + 200_000] {
            e.device_end_at_ms = Some(wrong);
            assert_eq!(
                settle_report(&o, &e, resent).duration_source,
                DurationSource::Gateway,
                "device end {wrong}"
            );
        }
    }

    #[test]
    fn a_resent_end_of_a_charge_the_gateway_stopped_ends_at_the_stop() {
        // Found by the fault simulation (seeds 459, 950): the gateway stopped a 68 s BKV charge
        // at its exact second; the stop's answer and the 0x02 end report (minutes only, no
        // end time) were lost and the copy resent 15 s later was billed 84 s.
        let mut o = order(ChargeMode::ByTime, by_time(68, 100));
        o.stop = Some(StopCause::Target);
        let stop = 1_000_000 + 68_000;
        let resent = Observation {
            now_ms: stop + 15_400,
            end_live: true,
            stop_sent_at_ms: Some(stop),
        };
        let s = settle_report(&o, &bkv_end(4, 2), resent);
        assert_eq!(
            (s.duration_sec, s.duration_source),
            (68, DurationSource::Gateway)
        );
        // The report that follows the stop at once is timed at its arrival.
        let live = Observation {
            now_ms: stop + 400,
            ..resent
        };
        assert_eq!(settle_report(&o, &bkv_end(4, 2), live).duration_sec, 68);
        let live = Observation {
            now_ms: stop + 2_600,
            ..resent
        };
        assert_eq!(settle_report(&o, &bkv_end(4, 2), live).duration_sec, 71);
    }

    #[test]
    fn an_end_the_gateway_did_not_see_uses_the_device_clock_then_its_counter() {
        let o = order(ChargeMode::ByTime, by_time(300, 500));
        let replay = Observation {
            now_ms: 9_000_000,
            end_live: false,
            stop_sent_at_ms: None,
        };
        // BKV 0x02: only minutes.
        let s = settle_report(&o, &bkv_end(40, 4), replay);
        assert_eq!(
            (s.duration_sec, s.duration_source),
            (240, DurationSource::DeviceCounter)
        );
        assert!(s.offline_replayed);
        // BKV 0x1004 with an end time: the device's clock against the gateway's start.
        let mut e = bkv_end(40, 4);
        e.device_end_at_ms = Some(1_000_000 + 251_400);
        let s = settle_report(&o, &e, replay);
        assert_eq!(
            (s.duration_sec, s.duration_source),
            (251, DurationSource::DeviceClock)
        );
        // AP3000 counts seconds.
        let ap = EndEvidence {
            energy_wh: 40,
            device_duration_sec: Some(253),
            duration_resolution_sec: 1,
            device_end_at_ms: None,
            peak_power_dw: Some(2_000),
            reason: DeviceReason::Ap3000(3),
        };
        let s = settle_report(&o, &ap, replay);
        assert_eq!(
            (s.duration_sec, s.duration_source, s.reason),
            (253, DurationSource::DeviceClock, EndReason::TargetReached)
        );
    }

    #[test]
    fn the_device_energy_is_billed_and_a_stop_names_who_asked_for_it() {
        let mut o = order(
            ChargeMode::ByTime,
            Tariff {
                amount: 500,
                price_per_kwh: 150,
                service_fee: 50,
                target_duration: 300,
                ..Tariff::default()
            },
        );
        o.stop = Some(StopCause::Api);
        let live = Observation {
            now_ms: 1_120_000,
            end_live: true,
            stop_sent_at_ms: None,
        };
        let s = settle_report(&o, &bkv_end(123, 2), live);
        assert_eq!(s.energy_wh, 123);
        assert_eq!(s.reason, EndReason::RemoteStop);
        assert_eq!(
            (
                s.bill.energy_fee,
                s.bill.service_fee_amount,
                s.bill.final_amount
            ),
            (18, 6, 24)
        );
        o.stop = Some(StopCause::Target);
        assert_eq!(
            settle_report(&o, &bkv_end(123, 2), live).reason,
            EndReason::TargetReached
        );
        // The device's own fault beats a stop request.
        let mut hot = bkv_end(123, 2);
        hot.reason = DeviceReason::Ap3000(0x0B);
        assert_eq!(
            settle_report(&o, &hot, live).reason,
            EndReason::OverTemperature
        );
    }

    #[test]
    fn settling_without_a_report_uses_the_last_figures() {
        let o = order(ChargeMode::ByEnergy, Tariff::default());
        let s = settle_without_report(&o, EndReason::ChargeLost);
        assert_eq!(
            (s.duration_sec, s.energy_wh, s.duration_source, s.reason),
            (10, 5, DurationSource::LastReport, EndReason::ChargeLost)
        );
    }

    #[test]
    fn money_runs_out_at_the_prepaid_amount_for_any_mode_with_prices() {
        let o = order(
            ChargeMode::UntilFull,
            Tariff {
                amount: 30,
                price_per_kwh: 150,
                service_fee: 50,
                ..Tariff::default()
            },
        );
        assert!(!money_used_up(&o, 149, 10), "149 Wh: 22 + 7 = 29 fen");
        assert!(money_used_up(&o, 150, 10));
        let free = order(ChargeMode::ByTime, by_time(60, 30));
        assert!(
            !money_used_up(&free, 10_000, 60),
            "no prices: billed by time"
        );
    }

    fn cand(no: &str, status: OrderStatus, r: Option<&str>, start: StartState) -> Candidate {
        Candidate {
            order_no: no.into(),
            status,
            device_ref: r.map(str::to_string),
            start,
        }
    }

    #[test]
    fn a_report_naming_another_charge_never_settles_the_next_customers_order() {
        // Sequence 5: the previous customer's charge (business number 7, reply lost) ends
        // while the next customer's order waits on the port.
        use OrderStatus::*;
        let cs = [
            cand("A", Completed, Some("bkv:3"), StartState::Answered),
            cand("B", Pending, None, StartState::Queued),
        ];
        assert_eq!(match_report(Some("bkv:7"), &cs), Match::Unmatched);
        // Once B's start went out and its reply was lost, a report naming an unknown charge
        // teaches B its handle.
        let cs = [
            cand("A", Completed, Some("bkv:3"), StartState::Answered),
            cand("B", Pending, None, StartState::Sent),
        ];
        assert_eq!(
            match_report(Some("bkv:7"), &cs),
            Match::Order {
                order_no: "B".into(),
                learn_ref: true
            }
        );
        // A named report finds its order whatever its status (a late or repeated report).
        assert_eq!(
            match_report(Some("bkv:3"), &cs),
            Match::Order {
                order_no: "A".into(),
                learn_ref: false
            }
        );
        // A report that names no charge falls back to the one open order on the port.
        assert_eq!(
            match_report(None, &cs),
            Match::Order {
                order_no: "B".into(),
                learn_ref: false
            }
        );
        assert_eq!(match_report(None, &cs[..1]), Match::Unmatched);
    }

    #[test]
    fn reconciliation_needs_several_idle_reports_over_a_window() {
        let rule = ReconcileRule {
            idle_reports: 3,
            after_ms: 60_000,
        };
        let mut w = IdleWatch::default();
        assert!(!w.observe(true, 0, rule));
        assert!(!w.observe(true, 11_000, rule));
        assert!(!w.observe(true, 22_000, rule), "three reports, 22 s");
        assert!(!w.observe(false, 33_000, rule), "charging again resets");
        for t in [44_000, 55_000, 66_000, 77_000, 88_000] {
            assert!(!w.observe(true, t, rule));
        }
        assert!(w.observe(true, 104_000, rule));
    }

    #[test]
    fn duration_sources_round_trip_through_their_names() {
        for d in [
            DurationSource::Gateway,
            DurationSource::DeviceClock,
            DurationSource::DeviceCounter,
            DurationSource::LastReport,
        ] {
            assert_eq!(DurationSource::parse(d.as_str()), Some(d));
        }
        for c in [StopCause::Api, StopCause::Target, StopCause::Orphan] {
            assert_eq!(StopCause::from_code(c.code()), Some(c));
        }
    }
}
