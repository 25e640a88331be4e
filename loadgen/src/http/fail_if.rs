//! `--fail-if 'p99>200ms,success<99%'`: thresholds that turn a finished run into a failed one.
//!
//! Each comma-separated condition names a metric, a comparison and a threshold; the run fails
//! when any condition holds. Latencies (`p50 p95 p99 p99.9|p999 mean min max`) take `us`, `ms` or
//! `s` (bare numbers are ms); `success` and `errors` are percentages (`%` optional); `qps` is
//! requests per second; `requests` and `failed` are counts.

use std::fmt;

use thiserror::Error;

use super::Report;

#[derive(Debug, Error, PartialEq)]
pub enum FailIfError {
    #[error("--fail-if: empty condition in {0:?}")]
    Empty(String),
    #[error("--fail-if: {0:?} has no comparison; write e.g. p99>200ms or success<99%")]
    NoOperator(String),
    #[error("--fail-if: unknown metric {metric:?} in {condition:?}; known: p50 p95 p99 p99.9 mean min max qps success errors requests failed")]
    UnknownMetric { metric: String, condition: String },
    #[error("--fail-if: bad threshold {value:?} in {condition:?}: {reason}")]
    BadValue {
        value: String,
        condition: String,
        reason: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    P50,
    P95,
    P99,
    P999,
    Mean,
    Min,
    Max,
    Qps,
    Success,
    Errors,
    Requests,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
}

/// One parsed condition; `threshold` is in the metric's unit (ms, %, req/s or a count).
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub metric: Metric,
    pub op: Op,
    pub threshold: f64,
    /// The condition as the user wrote it, for messages.
    pub text: String,
}

/// A condition that held, with the measured value.
#[derive(Debug, Clone, PartialEq)]
pub struct Breach {
    pub condition: Condition,
    pub actual: f64,
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.condition.metric {
            Metric::Success | Metric::Errors => " %",
            Metric::Qps => " req/s",
            Metric::Requests | Metric::Failed => "",
            _ => " ms",
        };
        write!(
            f,
            "fail-if {} holds: measured {}{unit}",
            self.condition.text, self.actual
        )
    }
}

enum Unit {
    Millis,
    Percent,
    Rate,
    Count,
}

fn metric(name: &str) -> Option<(Metric, Unit)> {
    Some(match name {
        "p50" => (Metric::P50, Unit::Millis),
        "p95" => (Metric::P95, Unit::Millis),
        "p99" => (Metric::P99, Unit::Millis),
        "p99.9" | "p999" => (Metric::P999, Unit::Millis),
        "mean" | "avg" => (Metric::Mean, Unit::Millis),
        "min" => (Metric::Min, Unit::Millis),
        "max" => (Metric::Max, Unit::Millis),
        "qps" | "rps" => (Metric::Qps, Unit::Rate),
        "success" | "success_rate" => (Metric::Success, Unit::Percent),
        "errors" | "error_rate" => (Metric::Errors, Unit::Percent),
        "requests" => (Metric::Requests, Unit::Count),
        "failed" => (Metric::Failed, Unit::Count),
        _ => return None,
    })
}

fn threshold(value: &str, unit: Unit) -> Result<f64, &'static str> {
    let (number, scale) = match unit {
        Unit::Millis => {
            if let Some(n) = value.strip_suffix("ms") {
                (n, 1.0)
            } else if let Some(n) = value.strip_suffix("us") {
                (n, 1e-3)
            } else if let Some(n) = value.strip_suffix('s') {
                (n, 1e3)
            } else {
                (value, 1.0)
            }
        }
        Unit::Percent => (value.strip_suffix('%').unwrap_or(value), 1.0),
        Unit::Rate => (value.strip_suffix("/s").unwrap_or(value), 1.0),
        Unit::Count => (value, 1.0),
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| "expected a number with the metric's unit (ms, %, req/s or a count)")?;
    if !n.is_finite() || n < 0.0 {
        return Err("expected a non-negative number");
    }
    Ok(n * scale)
}

/// Parses a comma-separated list of conditions.
pub fn parse_fail_if(expr: &str) -> Result<Vec<Condition>, FailIfError> {
    expr.split(',').map(|c| parse_condition(c, expr)).collect()
}

fn parse_condition(raw: &str, whole: &str) -> Result<Condition, FailIfError> {
    let text: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
    if text.is_empty() {
        return Err(FailIfError::Empty(whole.to_string()));
    }
    let at = text
        .find(['<', '>'])
        .ok_or_else(|| FailIfError::NoOperator(text.clone()))?;
    let (name, rest) = text.split_at(at);
    let (op, value) = if let Some(v) = rest.strip_prefix(">=") {
        (Op::Ge, v)
    } else if let Some(v) = rest.strip_prefix("<=") {
        (Op::Le, v)
    } else if let Some(v) = rest.strip_prefix('>') {
        (Op::Gt, v)
    } else {
        (Op::Lt, rest.strip_prefix('<').unwrap_or(rest))
    };
    let (metric, unit) =
        metric(&name.to_ascii_lowercase()).ok_or_else(|| FailIfError::UnknownMetric {
            metric: name.to_string(),
            condition: text.clone(),
        })?;
    let threshold = threshold(value, unit).map_err(|reason| FailIfError::BadValue {
        value: value.to_string(),
        condition: text.clone(),
        reason,
    })?;
    Ok(Condition {
        metric,
        op,
        threshold,
        text,
    })
}

impl Condition {
    pub fn measured(&self, r: &Report) -> f64 {
        match self.metric {
            Metric::P50 => r.p50_ms,
            Metric::P95 => r.p95_ms,
            Metric::P99 => r.p99_ms,
            Metric::P999 => r.p999_ms,
            Metric::Mean => r.mean_ms,
            Metric::Min => r.min_ms,
            Metric::Max => r.max_ms,
            Metric::Qps => r.qps,
            Metric::Success => r.success_rate,
            Metric::Errors => r.error_rate,
            Metric::Requests => r.requests as f64,
            Metric::Failed => r.failed as f64,
        }
    }

    /// The breach if this condition holds for the report.
    pub fn check(&self, r: &Report) -> Option<Breach> {
        let actual = self.measured(r);
        let holds = match self.op {
            Op::Gt => actual > self.threshold,
            Op::Ge => actual >= self.threshold,
            Op::Lt => actual < self.threshold,
            Op::Le => actual <= self.threshold,
        };
        holds.then(|| Breach {
            condition: self.clone(),
            actual,
        })
    }
}

/// Every condition that holds for the report, in the order given.
pub fn breaches(conditions: &[Condition], report: &Report) -> Vec<Breach> {
    conditions.iter().filter_map(|c| c.check(report)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let c = parse_fail_if("p99>200ms, success<99%,qps<50,mean>200ms,errors>1%").unwrap();
        assert_eq!(c.len(), 5);
        assert_eq!(
            (c[0].metric, c[0].op, c[0].threshold),
            (Metric::P99, Op::Gt, 200.0)
        );
        assert_eq!(
            (c[1].metric, c[1].op, c[1].threshold),
            (Metric::Success, Op::Lt, 99.0)
        );
        assert_eq!((c[2].metric, c[2].threshold), (Metric::Qps, 50.0));
        assert_eq!((c[4].metric, c[4].threshold), (Metric::Errors, 1.0));
    }

    #[test]
    fn latency_units_convert_to_milliseconds() {
        let t = |s: &str| parse_fail_if(s).unwrap()[0].threshold;
        assert_eq!(t("p99>1.5s"), 1500.0);
        assert_eq!(t("p99>=500us"), 0.5);
        assert_eq!(t("p99.9<=20"), 20.0);
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert!(matches!(
            parse_fail_if("p99"),
            Err(FailIfError::NoOperator(_))
        ));
        assert!(matches!(
            parse_fail_if("p42>1ms"),
            Err(FailIfError::UnknownMetric { .. })
        ));
        assert!(matches!(
            parse_fail_if("success<99ms"),
            Err(FailIfError::BadValue { .. })
        ));
        assert!(matches!(
            parse_fail_if("p99>fast"),
            Err(FailIfError::BadValue { .. })
        ));
        assert!(matches!(
            parse_fail_if("p99>1ms,"),
            Err(FailIfError::Empty(_))
        ));
    }
}
