//! The report of one `pile-load http` run: versioned JSON for machines, text for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Bumped whenever a key is renamed, removed or changes meaning; adding keys does not bump it.
pub const SCHEMA_VERSION: u32 = 1;

/// Transport errors by kind: requests that never produced an HTTP status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// The TCP connection or the HTTP handshake could not be established.
    pub connect: u64,
    /// No complete response within `--timeout`.
    pub timeout: u64,
    /// The peer closed or reset the connection mid-exchange.
    pub reset: u64,
    /// Anything else (malformed response, local I/O error).
    pub other: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.reset + self.other
    }

    fn merge(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.reset += other.reset;
        self.other += other.other;
    }
}

/// What one run measured. Success means a 2xx status; everything else (other statuses and
/// transport errors) is `failed`. Rates are percentages (0–100). Latencies are in milliseconds,
/// over every request that got an HTTP response, whatever its status; in the open model a request
/// that fell due while its connection was busy is timed from its scheduled start, not from when
/// it was sent (coordinated-omission correction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub url: String,
    pub method: String,
    /// Connections (and workers).
    pub concurrency: usize,
    /// Asked rate in requests/s for the open model; `null` for the closed model.
    pub rate: Option<f64>,
    /// From the first request's start to the last response.
    pub duration_s: f64,
    pub requests: u64,
    pub success: u64,
    pub failed: u64,
    pub qps: f64,
    pub success_rate: f64,
    pub error_rate: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Responses by HTTP status, 2xx included.
    pub status_codes: BTreeMap<u16, u64>,
    pub errors: ErrorCounts,
}

/// One worker's tally. Workers never share these; the aggregator merges them at the end.
#[derive(Debug)]
pub(crate) struct Tally {
    /// Latency in microseconds of every request that got a response.
    pub latency_us: Histogram<u64>,
    pub status_codes: BTreeMap<u16, u64>,
    pub errors: ErrorCounts,
}

/// An hour in microseconds: the histogram's ceiling. Larger samples saturate to it.
const MAX_LATENCY_US: u64 = 3_600_000_000;

impl Tally {
    pub fn new() -> Self {
        Tally {
            // Three significant digits over 1 µs .. 1 h: about 0.1 % value error.
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant histogram bounds are valid"),
            status_codes: BTreeMap::new(),
            errors: ErrorCounts::default(),
        }
    }

    pub fn record_response(&mut self, status: u16, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us
            .saturating_record(us.clamp(1, MAX_LATENCY_US));
        *self.status_codes.entry(status).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &Tally) {
        // Both histograms share the same bounds, so adding cannot fail; saturate if it ever did.
        if self.latency_us.add(&other.latency_us).is_err() {
            for v in other.latency_us.iter_recorded() {
                self.latency_us
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
        for (status, count) in &other.status_codes {
            *self.status_codes.entry(*status).or_insert(0) += count;
        }
        self.errors.merge(&other.errors);
    }
}

fn connections(n: usize) -> String {
    if n == 1 {
        "1 connection".to_string()
    } else {
        format!("{n} connections")
    }
}

fn ms(us: u64) -> f64 {
    round3(us as f64 / 1000.0)
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        round3(part as f64 * 100.0 / whole as f64)
    }
}

pub(crate) struct RunInfo {
    pub url: String,
    pub method: String,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub elapsed: Duration,
}

impl Report {
    pub(crate) fn build(info: RunInfo, tally: &Tally) -> Report {
        let responses: u64 = tally.status_codes.values().sum();
        let requests = responses + tally.errors.total();
        let success: u64 = tally
            .status_codes
            .iter()
            .filter(|(status, _)| (200..300).contains(*status))
            .map(|(_, count)| count)
            .sum();
        let h = &tally.latency_us;
        let empty = h.is_empty();
        let q = |quantile: f64| {
            if empty {
                0.0
            } else {
                ms(h.value_at_quantile(quantile))
            }
        };
        let secs = info.elapsed.as_secs_f64();
        Report {
            schema_version: SCHEMA_VERSION,
            url: info.url,
            method: info.method,
            concurrency: info.concurrency,
            rate: info.rate,
            duration_s: round3(secs),
            requests,
            success,
            failed: requests - success,
            qps: if secs > 0.0 {
                round3(requests as f64 / secs)
            } else {
                0.0
            },
            success_rate: percent(success, requests),
            error_rate: percent(requests - success, requests),
            min_ms: if empty { 0.0 } else { ms(h.min()) },
            max_ms: if empty { 0.0 } else { ms(h.max()) },
            mean_ms: if empty {
                0.0
            } else {
                round3(h.mean() / 1000.0)
            },
            p50_ms: q(0.50),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            status_codes: tally.status_codes.clone(),
            errors: tally.errors,
        }
    }

    /// The report for people, in the shape of the production acceptance record (§4.1):
    /// totals, success and failure, min/max/mean and percentiles, then QPS, rates, statuses, errors.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let model = match self.rate {
            Some(rate) => format!(
                "open, {rate} req/s over {} (latency from scheduled start)",
                connections(self.concurrency)
            ),
            None => format!("closed, {}", connections(self.concurrency)),
        };
        // Writing to a String cannot fail.
        let _ = writeln!(out, "Target:            {} {}", self.method, self.url);
        let _ = writeln!(out, "Model:             {model}");
        let _ = writeln!(out, "Duration:          {:.3} s", self.duration_s);
        let _ = writeln!(out);
        let _ = writeln!(out, "Total requests:    {}", self.requests);
        let _ = writeln!(out, "Success:           {}  (2xx)", self.success);
        let _ = writeln!(out, "Failed:            {}", self.failed);
        let _ = writeln!(out, "Min latency:       {:.3} ms", self.min_ms);
        let _ = writeln!(out, "Max latency:       {:.3} ms", self.max_ms);
        let _ = writeln!(out, "Mean latency:      {:.3} ms", self.mean_ms);
        let _ = writeln!(out, "P50:               {:.3} ms", self.p50_ms);
        let _ = writeln!(out, "P95:               {:.3} ms", self.p95_ms);
        let _ = writeln!(out, "P99:               {:.3} ms", self.p99_ms);
        let _ = writeln!(out, "P99.9:             {:.3} ms", self.p999_ms);
        let _ = writeln!(out);
        let _ = writeln!(out, "QPS:               {:.1}", self.qps);
        let _ = writeln!(out, "Success rate:      {:.2} %", self.success_rate);
        let _ = writeln!(out, "Error rate:        {:.2} %", self.error_rate);
        let _ = writeln!(out);
        let _ = writeln!(out, "Status codes:");
        if self.status_codes.is_empty() {
            let _ = writeln!(out, "  (no responses)");
        }
        for (status, count) in &self.status_codes {
            let _ = writeln!(out, "  {status}: {count}");
        }
        let e = &self.errors;
        let _ = writeln!(out, "Errors by kind:");
        let _ = writeln!(
            out,
            "  connect: {}  timeout: {}  reset: {}  other: {}",
            e.connect, e.timeout, e.reset, e.other
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            url: "http://x/".into(),
            method: "GET".into(),
            concurrency: 2,
            rate: None,
            elapsed: Duration::from_secs(2),
        }
    }

    #[test]
    fn merged_tallies_count_every_request_once() {
        let mut a = Tally::new();
        a.record_response(200, Duration::from_millis(10));
        a.record_response(500, Duration::from_millis(30));
        let mut b = Tally::new();
        b.record_response(200, Duration::from_millis(20));
        b.errors.timeout += 1;
        a.merge(&b);
        let r = Report::build(info(), &a);
        assert_eq!((r.requests, r.success, r.failed), (4, 2, 2));
        assert_eq!(r.status_codes.get(&200), Some(&2));
        assert_eq!(r.errors.timeout, 1);
        assert_eq!(r.qps, 2.0);
        assert_eq!((r.success_rate, r.error_rate), (50.0, 50.0));
        assert!((r.min_ms - 10.0).abs() < 0.05 && (r.max_ms - 30.0).abs() < 0.05);
        assert!((r.p50_ms - 20.0).abs() < 0.05);
    }

    #[test]
    fn an_empty_run_reports_zeros_not_nan() {
        let r = Report::build(info(), &Tally::new());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["p99_ms"], 0.0);
        assert_eq!(json["success_rate"], 0.0);
        assert!(r.render_text().contains("(no responses)"));
    }

    #[test]
    fn text_carries_the_record_fields() {
        let mut t = Tally::new();
        t.record_response(200, Duration::from_millis(5));
        let text = Report::build(info(), &t).render_text();
        for label in [
            "Total requests:",
            "Success:",
            "Failed:",
            "Min latency:",
            "Max latency:",
            "Mean latency:",
            "P50:",
            "P95:",
            "P99:",
            "P99.9:",
            "QPS:",
            "Success rate:",
            "Error rate:",
            "Status codes:",
            "  200: 1",
            "Errors by kind:",
        ] {
            assert!(text.contains(label), "missing {label:?} in\n{text}");
        }
    }
}
