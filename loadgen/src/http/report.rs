//! The report of one `pile-load http` run: versioned JSON for machines, text for people, and
//! ApacheBench's layout (`--format ab`, in [`super::ab`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Bumped whenever a key is renamed, removed or changes meaning; adding keys does not bump it.
pub const SCHEMA_VERSION: u32 = 1;

/// ab's "Percentage of the requests served within a certain time" ladder.
pub const LADDER: [u8; 9] = [50, 66, 75, 80, 90, 95, 98, 99, 100];

/// Transport errors by kind: requests that never produced an HTTP status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    /// The TCP connection could not be established (refused, unreachable).
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

    pub(crate) fn merge(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.reset += other.reset;
        self.other += other.other;
    }
}

/// One stage of the exchange over the answered requests, in milliseconds (ab's "Connection
/// Times" row): `min mean[+/-sd] median max`. All zero when `count` is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub sd_ms: f64,
    pub median_ms: f64,
    pub max_ms: f64,
}

impl Stage {
    fn of(h: &Histogram<u64>) -> Stage {
        if h.is_empty() {
            return Stage::default();
        }
        Stage {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: round3(h.mean() / 1000.0),
            sd_ms: round3(h.stdev() / 1000.0),
            median_ms: ms(h.value_at_quantile(0.5)),
            max_ms: ms(h.max()),
        }
    }
}

/// One rung of the percentage ladder: `percent` of the answered requests took at most `ms`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Served {
    pub percent: u8,
    pub ms: f64,
}

/// Whether the run itself is believable as a result: some request succeeded and no more than
/// `max_error_rate` % failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub passed: bool,
    /// One line, set when `passed` is false.
    pub reason: Option<String>,
}

/// What one run measured. Success means a 2xx status; everything else (other statuses and
/// transport errors) is `failed`. Rates are percentages (0–100). Latencies are in milliseconds,
/// over the `answered` requests only (those that got an HTTP response, whatever its status):
/// with `answered == 0` they are 0 and `verdict.passed` is false. In the open model a request
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
    /// `requests / duration_s`: every request, failed ones included (ab's "Requests per second").
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
    /// Requests that got an HTTP response (the latency samples).
    #[serde(default)]
    pub answered: u64,
    /// Connections were kept alive between requests (`-k`); else one connection per request.
    #[serde(default)]
    pub keep_alive: bool,
    /// Responses after which the connection stayed open for the next request.
    #[serde(default)]
    pub keep_alive_responses: u64,
    /// The target as ab names it.
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub path: String,
    /// The first response's `Server` header.
    #[serde(default)]
    pub server_software: Option<String>,
    /// The first answered response's body length (ab's "Document Length").
    #[serde(default)]
    pub document_length: Option<u64>,
    /// Answered responses whose body length differed from `document_length` (ab's "Length"
    /// failures; informational here, a 2xx of another length is still a success).
    #[serde(default)]
    pub length_mismatches: u64,
    /// Response bytes, head and body (ab's "Total transferred").
    #[serde(default)]
    pub bytes_received: u64,
    /// Response body bytes (ab's "HTML transferred").
    #[serde(default)]
    pub body_bytes_received: u64,
    /// Request body bytes sent (ab's "Total body sent").
    #[serde(default)]
    pub body_bytes_sent: u64,
    /// Request bytes sent, head and body.
    #[serde(default)]
    pub bytes_sent: u64,
    /// `bytes_received / 1024 / duration_s` (ab's "Transfer rate").
    #[serde(default)]
    pub transfer_rate_kbps: f64,
    /// ab's Connection Times: TCP connect (0 on a reused connection), processing (total minus
    /// connect), waiting (request written → first response byte), total.
    #[serde(default)]
    pub connect: Stage,
    #[serde(default)]
    pub processing: Stage,
    #[serde(default)]
    pub waiting: Stage,
    #[serde(default)]
    pub total: Stage,
    /// The 50/66/75/80/90/95/98/99/100 % ladder over the answered requests' total time.
    #[serde(default)]
    pub served_within: Vec<Served>,
    /// The error budget the verdict was judged against, in percent.
    #[serde(default)]
    pub max_error_rate: f64,
    #[serde(default = "passed")]
    pub verdict: Verdict,
}

fn passed() -> Verdict {
    Verdict {
        passed: true,
        reason: None,
    }
}

/// An hour in microseconds: the histograms' ceiling. Larger samples saturate to it.
const MAX_LATENCY_US: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    // Three significant digits over 1 µs .. 1 h: about 0.1 % value error.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

fn merge_histogram(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    // Same bounds everywhere, so adding cannot fail; saturate if it ever did.
    if into.add(from).is_err() {
        for v in from.iter_recorded() {
            into.saturating_record_n(v.value_iterated_to(), v.count_at_value());
        }
    }
}

/// The timings of one answered request.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Timing {
    pub total: Duration,
    pub connect: Duration,
    pub waiting: Duration,
}

/// One answered request's sizes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sizes {
    pub head: u64,
    pub body: u64,
    pub kept_alive: bool,
}

/// One worker's tally. Workers never share these; the aggregator merges them at the end.
#[derive(Debug)]
pub(crate) struct Tally {
    /// Total time of every request that got a response, µs.
    pub latency_us: Histogram<u64>,
    pub connect_us: Histogram<u64>,
    pub processing_us: Histogram<u64>,
    pub waiting_us: Histogram<u64>,
    /// Responses by status, indexed by the status code (0..=999).
    pub statuses: Box<[u64; 1000]>,
    pub errors: ErrorCounts,
    pub bytes_received: u64,
    pub body_bytes_received: u64,
    pub document_length: Option<u64>,
    pub length_mismatches: u64,
    pub keep_alive_responses: u64,
    /// Requests whose bytes were written (for `bytes_sent`).
    pub sent: u64,
    pub server: Option<String>,
}

impl Tally {
    pub fn new() -> Self {
        Tally {
            latency_us: histogram(),
            connect_us: histogram(),
            processing_us: histogram(),
            waiting_us: histogram(),
            statuses: Box::new([0; 1000]),
            errors: ErrorCounts::default(),
            bytes_received: 0,
            body_bytes_received: 0,
            document_length: None,
            length_mismatches: 0,
            keep_alive_responses: 0,
            sent: 0,
            server: None,
        }
    }

    /// A response with only a total time (tests, and callers that time nothing else).
    #[cfg(test)]
    pub fn record_response(&mut self, status: u16, latency: Duration) {
        self.record_answer(
            status,
            Timing {
                total: latency,
                ..Timing::default()
            },
            Sizes::default(),
        );
    }

    pub fn record_answer(&mut self, status: u16, t: Timing, sizes: Sizes) {
        record(&mut self.latency_us, t.total);
        record(&mut self.connect_us, t.connect);
        record(&mut self.processing_us, t.total.saturating_sub(t.connect));
        record(&mut self.waiting_us, t.waiting);
        if let Some(slot) = self.statuses.get_mut(usize::from(status)) {
            *slot += 1;
        }
        self.bytes_received += sizes.head + sizes.body;
        self.body_bytes_received += sizes.body;
        match self.document_length {
            None => self.document_length = Some(sizes.body),
            Some(len) if len != sizes.body => self.length_mismatches += 1,
            Some(_) => {}
        }
        if sizes.kept_alive {
            self.keep_alive_responses += 1;
        }
    }

    pub fn status_codes(&self) -> BTreeMap<u16, u64> {
        self.statuses
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(code, n)| (code as u16, *n))
            .collect()
    }

    pub fn answered(&self) -> u64 {
        self.statuses.iter().sum()
    }

    pub fn merge(&mut self, other: &Tally) {
        merge_histogram(&mut self.latency_us, &other.latency_us);
        merge_histogram(&mut self.connect_us, &other.connect_us);
        merge_histogram(&mut self.processing_us, &other.processing_us);
        merge_histogram(&mut self.waiting_us, &other.waiting_us);
        for (a, b) in self.statuses.iter_mut().zip(other.statuses.iter()) {
            *a += b;
        }
        self.errors.merge(&other.errors);
        self.bytes_received += other.bytes_received;
        self.body_bytes_received += other.body_bytes_received;
        // Another worker's first length may differ from ours: then the answers it found of its
        // own first length are mismatches here (an approximation of ab's single-stream count).
        match (self.document_length, other.document_length) {
            (None, theirs) => {
                self.document_length = theirs;
                self.length_mismatches += other.length_mismatches;
            }
            (Some(a), Some(b)) if a != b => {
                self.length_mismatches += other.answered() - other.length_mismatches;
            }
            _ => self.length_mismatches += other.length_mismatches,
        }
        self.keep_alive_responses += other.keep_alive_responses;
        self.sent += other.sent;
        if self.server.is_none() {
            self.server.clone_from(&other.server);
        }
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

pub(crate) fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        round3(part as f64 * 100.0 / whole as f64)
    }
}

/// What the run was, for the report.
pub(crate) struct RunInfo {
    pub url: String,
    pub method: String,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub elapsed: Duration,
    pub keep_alive: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
    /// Request head and body sizes.
    pub request_bytes: u64,
    pub body_bytes: u64,
    pub max_error_rate: f64,
}

#[cfg(test)]
impl RunInfo {
    pub fn for_test(elapsed: Duration) -> RunInfo {
        RunInfo {
            url: "http://x/".into(),
            method: "GET".into(),
            concurrency: 2,
            rate: None,
            elapsed,
            keep_alive: true,
            host: "x".into(),
            port: 80,
            path: "/".into(),
            request_bytes: 40,
            body_bytes: 0,
            max_error_rate: 1.0,
        }
    }
}

impl Report {
    pub(crate) fn build(info: RunInfo, tally: &Tally) -> Report {
        let status_codes = tally.status_codes();
        let answered: u64 = status_codes.values().sum();
        let requests = answered + tally.errors.total();
        let success: u64 = status_codes
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
        let per_sec = |n: f64| if secs > 0.0 { round3(n / secs) } else { 0.0 };
        let served_within = if empty {
            Vec::new()
        } else {
            LADDER
                .iter()
                .map(|&p| Served {
                    percent: p,
                    ms: if p == 100 {
                        ms(h.max())
                    } else {
                        q(f64::from(p) / 100.0)
                    },
                })
                .collect()
        };
        let mut report = Report {
            schema_version: SCHEMA_VERSION,
            url: info.url,
            method: info.method,
            concurrency: info.concurrency,
            rate: info.rate,
            duration_s: round3(secs),
            requests,
            success,
            failed: requests - success,
            qps: per_sec(requests as f64),
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
            status_codes,
            errors: tally.errors,
            answered,
            keep_alive: info.keep_alive,
            keep_alive_responses: tally.keep_alive_responses,
            host: info.host,
            port: info.port,
            path: info.path,
            server_software: tally.server.clone(),
            document_length: tally.document_length,
            length_mismatches: tally.length_mismatches,
            bytes_received: tally.bytes_received,
            body_bytes_received: tally.body_bytes_received,
            body_bytes_sent: tally.sent * info.body_bytes,
            bytes_sent: tally.sent * info.request_bytes,
            transfer_rate_kbps: per_sec(tally.bytes_received as f64 / 1024.0),
            connect: Stage::of(&tally.connect_us),
            processing: Stage::of(&tally.processing_us),
            waiting: Stage::of(&tally.waiting_us),
            total: Stage::of(&tally.latency_us),
            served_within,
            max_error_rate: info.max_error_rate,
            verdict: passed(),
        };
        report.verdict = super::verdict::judge(&report);
        report
    }

    /// The report for people, in the shape of the production acceptance record (§4.1):
    /// totals, success and failure, min/max/mean and percentiles, then QPS, rates, statuses,
    /// errors; then ab's sections (document, transfer, connection times, the percentage ladder).
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let model = match self.rate {
            Some(rate) => format!(
                "open, {rate} req/s over {} (latency from scheduled start)",
                connections(self.concurrency)
            ),
            None => format!("closed, {}", connections(self.concurrency)),
        };
        let conn = if self.keep_alive {
            "kept alive (-k)"
        } else {
            "new connection per request (no -k)"
        };
        let none = self.answered == 0;
        let lat = |v: f64| {
            if none {
                "n/a (no request was answered)".to_string()
            } else {
                format!("{v:.3} ms")
            }
        };
        // Writing to a String cannot fail.
        let _ = writeln!(out, "Target:            {} {}", self.method, self.url);
        let _ = writeln!(out, "Model:             {model}, {conn}");
        let _ = writeln!(out, "Duration:          {:.3} s", self.duration_s);
        let _ = writeln!(out);
        let _ = writeln!(out, "Total requests:    {}", self.requests);
        let _ = writeln!(out, "Success:           {}  (2xx)", self.success);
        let _ = writeln!(out, "Failed:            {}", self.failed);
        let _ = writeln!(
            out,
            "Answered:          {}  (latency samples)",
            self.answered
        );
        let _ = writeln!(out, "Min latency:       {}", lat(self.min_ms));
        let _ = writeln!(out, "Max latency:       {}", lat(self.max_ms));
        let _ = writeln!(out, "Mean latency:      {}", lat(self.mean_ms));
        let _ = writeln!(out, "P50:               {}", lat(self.p50_ms));
        let _ = writeln!(out, "P95:               {}", lat(self.p95_ms));
        let _ = writeln!(out, "P99:               {}", lat(self.p99_ms));
        let _ = writeln!(out, "P99.9:             {}", lat(self.p999_ms));
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
        let _ = writeln!(out);
        match self.document_length {
            Some(len) => {
                let _ = writeln!(
                    out,
                    "Document length:   {len} bytes ({} answers of another length)",
                    self.length_mismatches
                );
            }
            None => {
                let _ = writeln!(out, "Document length:   n/a");
            }
        }
        let _ = writeln!(
            out,
            "Transferred:       {} bytes received ({} body), {} bytes sent ({} body)",
            self.bytes_received, self.body_bytes_received, self.bytes_sent, self.body_bytes_sent
        );
        let _ = writeln!(
            out,
            "Transfer rate:     {:.2} KB/s received",
            self.transfer_rate_kbps
        );
        if self.keep_alive {
            let _ = writeln!(
                out,
                "Keep-alive:        {} responses",
                self.keep_alive_responses
            );
        }
        if !none {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "Connection times (ms)  min     mean[+/-sd]     median   max"
            );
            for (name, s) in [
                ("Connect:", &self.connect),
                ("Processing:", &self.processing),
                ("Waiting:", &self.waiting),
                ("Total:", &self.total),
            ] {
                let _ = writeln!(
                    out,
                    "  {name:<12}{:>10.3} {:>8.3} {:>8.3} {:>9.3} {:>9.3}",
                    s.min_ms, s.mean_ms, s.sd_ms, s.median_ms, s.max_ms
                );
            }
            let _ = writeln!(out);
            let _ = writeln!(out, "Served within (ms):");
            for s in &self.served_within {
                let longest = if s.percent == 100 {
                    " (longest request)"
                } else {
                    ""
                };
                let _ = writeln!(out, "  {:>3}%  {:>10.3}{longest}", s.percent, s.ms);
            }
        }
        let _ = writeln!(out);
        match &self.verdict.reason {
            None => {
                let _ = writeln!(
                    out,
                    "Verdict:           passed (error rate within {} %)",
                    self.max_error_rate
                );
            }
            Some(reason) => {
                let _ = writeln!(out, "Verdict:           FAILED: {reason}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RunInfo {
        RunInfo::for_test(Duration::from_secs(2))
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
        assert_eq!(r.answered, 3);
        assert_eq!(r.status_codes.get(&200), Some(&2));
        assert_eq!(r.errors.timeout, 1);
        assert_eq!(r.qps, 2.0);
        assert_eq!((r.success_rate, r.error_rate), (50.0, 50.0));
        assert!((r.min_ms - 10.0).abs() < 0.05 && (r.max_ms - 30.0).abs() < 0.05);
        assert!((r.p50_ms - 20.0).abs() < 0.05);
        assert_eq!(r.served_within.len(), 9);
        assert_eq!(r.served_within[8].percent, 100);
        assert_eq!(r.served_within[8].ms, r.max_ms);
        assert!(!r.verdict.passed, "50 % errors is above the 1 % budget");
    }

    #[test]
    fn an_empty_run_reports_no_latency_and_fails() {
        let r = Report::build(info(), &Tally::new());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["p99_ms"], 0.0);
        assert_eq!(json["answered"], 0);
        assert_eq!(json["verdict"]["passed"], false);
        let text = r.render_text();
        assert!(text.contains("(no responses)"));
        assert!(text.contains("P99:               n/a"), "{text}");
        assert!(!text.contains("0.000 ms"), "{text}");
    }

    #[test]
    fn stages_and_sizes_are_kept_apart() {
        let mut t = Tally::new();
        let sizes = Sizes {
            head: 100,
            body: 50,
            kept_alive: true,
        };
        let timing = Timing {
            total: Duration::from_millis(10),
            connect: Duration::from_millis(4),
            waiting: Duration::from_millis(5),
        };
        t.record_answer(200, timing, sizes);
        t.record_answer(200, timing, Sizes { body: 49, ..sizes });
        t.sent = 2;
        let r = Report::build(info(), &t);
        assert_eq!((r.bytes_received, r.body_bytes_received), (299, 99));
        assert_eq!((r.document_length, r.length_mismatches), (Some(50), 1));
        assert_eq!(r.keep_alive_responses, 2);
        assert_eq!(r.bytes_sent, 80);
        assert!((r.connect.mean_ms - 4.0).abs() < 0.01);
        assert!((r.processing.mean_ms - 6.0).abs() < 0.01);
        assert!((r.waiting.median_ms - 5.0).abs() < 0.01);
        assert!((r.total.max_ms - 10.0).abs() < 0.02);
        assert!(r.verdict.passed);
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
            "Document length:",
            "Transferred:",
            "Transfer rate:",
            "Connection times (ms)",
            "Served within (ms):",
            "   66%",
            "Verdict:           passed",
        ] {
            assert!(text.contains(label), "missing {label:?} in\n{text}");
        }
    }
}
