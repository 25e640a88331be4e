//! Whether a finished run is a result at all: a run in which no request succeeded, or more than
//! `max_error_rate` % failed, is a failed run (the binary exits 3) with a one-line reason that
//! says what the failures were.

use super::report::{Report, Verdict};

/// What the failed requests were, largest share first: `50 connect errors`, `10 × 401`.
pub fn describe_failures(r: &Report) -> String {
    let mut parts: Vec<(u64, String)> = Vec::new();
    let e = &r.errors;
    for (n, what) in [
        (e.connect, "connect errors (refused or unreachable)"),
        (e.timeout, "timeouts"),
        (e.reset, "connections closed or reset mid-exchange"),
        (
            e.other,
            "other transport errors (malformed answer or local I/O)",
        ),
    ] {
        if n > 0 {
            parts.push((n, format!("{n} {what}")));
        }
    }
    for (status, n) in &r.status_codes {
        if !(200..300).contains(status) {
            parts.push((*n, format!("{n} × HTTP {status}")));
        }
    }
    parts.sort_by_key(|p| std::cmp::Reverse(p.0));
    parts
        .into_iter()
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Judges a report against its `max_error_rate`.
pub fn judge(r: &Report) -> Verdict {
    let reason = if r.requests == 0 {
        Some("no request was made".to_string())
    } else if r.success == 0 {
        Some(format!(
            "no request succeeded: {} of {} failed ({}) against {}",
            r.failed,
            r.requests,
            describe_failures(r),
            r.url
        ))
    } else if r.error_rate > r.max_error_rate {
        Some(format!(
            "{:.2} % of requests failed, above --max-error-rate {} % ({} of {}: {})",
            r.error_rate,
            r.max_error_rate,
            r.failed,
            r.requests,
            describe_failures(r)
        ))
    } else {
        None
    };
    Verdict {
        passed: reason.is_none(),
        reason,
    }
}
