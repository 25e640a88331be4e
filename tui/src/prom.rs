//! Just enough of the Prometheus text format for the overview: counters summed over their
//! labels, and the HTTP latency histogram's buckets summed over routes.

use std::collections::BTreeMap;

/// The HTTP latency histogram the gateway exports.
pub const HTTP_DURATION: &str = "http_request_duration_seconds";

/// One scrape of `/metrics`, reduced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSample {
    /// Metric name → sum of its series' values (histogram series are not in here).
    pub sums: BTreeMap<String, f64>,
    /// `le` → cumulative count of [`HTTP_DURATION`], summed over all routes, sorted by `le`.
    pub http_buckets: Vec<(f64, f64)>,
}

impl MetricsSample {
    pub fn get(&self, name: &str) -> Option<f64> {
        self.sums.get(name).copied()
    }
}

pub fn parse(text: &str) -> MetricsSample {
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let bucket_name = format!("{HTTP_DURATION}_bucket");
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.find('{') {
            Some(i) => (&series[..i], &series[i..]),
            None => (series, ""),
        };
        if name == bucket_name {
            let Some(le) = label(labels, "le") else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                match le.parse::<f64>() {
                    Ok(v) => v,
                    Err(_) => continue,
                }
            };
            match buckets.iter_mut().find(|(l, _)| *l == le) {
                Some((_, c)) => *c += value,
                None => buckets.push((le, value)),
            }
            continue;
        }
        if name.starts_with(HTTP_DURATION) {
            continue;
        }
        *sums.entry(name.to_string()).or_default() += value;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    MetricsSample {
        sums,
        http_buckets: buckets,
    }
}

fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("{key}=\"");
    let i = labels.find(&pat)? + pat.len();
    let rest = &labels[i..];
    Some(&rest[..rest.find('"')?])
}

/// The 99th percentile (seconds) of cumulative `buckets`: the upper bound of the first bucket
/// holding 99 % of the requests. `None` without requests; the largest finite bound when only
/// `+Inf` reaches 99 %.
pub fn p99(buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.iter().map(|b| b.1).fold(0.0, f64::max);
    if total <= 0.0 {
        return None;
    }
    let target = total * 0.99;
    let bucket = buckets.iter().find(|(_, c)| *c >= target)?;
    if bucket.0.is_finite() {
        Some(bucket.0)
    } else {
        buckets.iter().rev().find(|b| b.0.is_finite()).map(|b| b.0)
    }
}

/// `now - before`, bucket by bucket (for the latency of the last interval only).
pub fn bucket_delta(now: &[(f64, f64)], before: &[(f64, f64)]) -> Vec<(f64, f64)> {
    now.iter()
        .map(|(le, c)| {
            let prev = before
                .iter()
                .find(|(l, _)| l == le)
                .map(|b| b.1)
                .unwrap_or(0.0);
            (*le, (c - prev).max(0.0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
# TYPE heartbeats_total counter
heartbeats_total{protocol="bkv"} 10
heartbeats_total{protocol="ap3000"} 5
tcp_connections_accepted_total 7
http_request_duration_seconds_bucket{method="GET",route="/a",le="0.001"} 90
http_request_duration_seconds_bucket{method="GET",route="/a",le="0.01"} 99
http_request_duration_seconds_bucket{method="GET",route="/a",le="+Inf"} 100
http_request_duration_seconds_bucket{method="GET",route="/b",le="0.001"} 0
http_request_duration_seconds_bucket{method="GET",route="/b",le="0.01"} 0
http_request_duration_seconds_bucket{method="GET",route="/b",le="+Inf"} 0
http_request_duration_seconds_sum{method="GET",route="/a"} 0.2
"#;

    #[test]
    fn sums_counters_over_labels() {
        let m = parse(TEXT);
        assert_eq!(m.get("heartbeats_total"), Some(15.0));
        assert_eq!(m.get("tcp_connections_accepted_total"), Some(7.0));
        assert_eq!(m.get("http_request_duration_seconds_sum"), None);
    }

    #[test]
    fn p99_is_the_bound_of_the_bucket_reaching_99_percent() {
        let m = parse(TEXT);
        assert_eq!(m.http_buckets.len(), 3);
        assert_eq!(p99(&m.http_buckets), Some(0.01));
        assert_eq!(p99(&[]), None);
        let d = bucket_delta(&m.http_buckets, &m.http_buckets);
        assert_eq!(p99(&d), None);
    }
}
