//! `--format ab`: the report in ApacheBench 2.3's layout, line for line and column for column,
//! so that scripts which parse ab's output (`awk '/Requests per second/ {print $4}'`) keep
//! working. Checked against reports captured from a real `ab` in `tests/fixtures/`.
//!
//! Where pile-load's counting differs from ab's, the ab layout follows ab's meaning: "Failed
//! requests" are transport failures plus answers of another length than the first (ab's
//! Connect/Receive/Length/Exceptions split; timeouts and resets are ab's "Receive"), and
//! non-2xx answers are listed apart as "Non-2xx responses", as ab does. Times in the
//! Connection Times table and the ladder are whole milliseconds, rounded, as ab prints them.

use std::fmt::Write as _;

use super::report::{Report, Stage};

fn round_ms(ms: f64) -> u64 {
    ms.max(0.0).round() as u64
}

fn row(out: &mut String, label: &str, s: &Stage) {
    // ab: "Connect:    %5 %4 %5.1f %6 %7", each label padded to 12 columns.
    let _ = writeln!(
        out,
        "{label:<12}{:>5} {:>4} {:>5.1} {:>6} {:>7}",
        round_ms(s.min_ms),
        round_ms(s.mean_ms),
        s.sd_ms,
        round_ms(s.median_ms),
        round_ms(s.max_ms)
    );
}

/// The whole report as `ab` prints it on stdout (the banner names pile-load, not Apache).
pub fn render_ab(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "This is pile-load, Version {} (ApacheBench 2.3 report layout)",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        out,
        "Same sections and columns as ab; see pile-load's README."
    );
    let _ = writeln!(out, "Counting differences are listed there.");
    let _ = writeln!(out);
    let done = if r.requests <= 150 { "...done" } else { "" };
    let _ = writeln!(out, "Benchmarking {} (be patient){done}", r.host);
    let _ = writeln!(out);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Server Software:        {}",
        r.server_software.as_deref().unwrap_or("")
    );
    let _ = writeln!(out, "Server Hostname:        {}", r.host);
    let _ = writeln!(out, "Server Port:            {}", r.port);
    let _ = writeln!(out);
    let _ = writeln!(out, "Document Path:          {}", r.path);
    let _ = writeln!(
        out,
        "Document Length:        {} bytes",
        r.document_length.unwrap_or(0)
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "Concurrency Level:      {}", r.concurrency);
    let _ = writeln!(out, "Time taken for tests:   {:.3} seconds", r.duration_s);
    let _ = writeln!(out, "Complete requests:      {}", r.requests);
    let e = &r.errors;
    let receive = e.timeout + e.reset;
    let failed = e.connect + receive + e.other + r.length_mismatches;
    let _ = writeln!(out, "Failed requests:        {failed}");
    if failed > 0 {
        let _ = writeln!(
            out,
            "   (Connect: {}, Receive: {receive}, Length: {}, Exceptions: {})",
            e.connect, r.length_mismatches, e.other
        );
    }
    let non_2xx: u64 = r
        .status_codes
        .iter()
        .filter(|(s, _)| !(200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();
    if non_2xx > 0 {
        let _ = writeln!(out, "Non-2xx responses:      {non_2xx}");
    }
    if r.keep_alive {
        let _ = writeln!(out, "Keep-Alive requests:    {}", r.keep_alive_responses);
    }
    let _ = writeln!(out, "Total transferred:      {} bytes", r.bytes_received);
    let sent_body = r.body_bytes_sent > 0;
    if sent_body {
        let _ = writeln!(out, "Total body sent:        {}", r.bytes_sent);
    }
    let _ = writeln!(
        out,
        "HTML transferred:       {} bytes",
        r.body_bytes_received
    );
    if r.duration_s > 0.0 && r.requests > 0 {
        let per_req = r.duration_s * 1000.0 / r.requests as f64;
        let _ = writeln!(
            out,
            "Requests per second:    {:.2} [#/sec] (mean)",
            r.requests as f64 / r.duration_s
        );
        let _ = writeln!(
            out,
            "Time per request:       {:.3} [ms] (mean)",
            per_req * r.concurrency as f64
        );
        let _ = writeln!(
            out,
            "Time per request:       {per_req:.3} [ms] (mean, across all concurrent requests)"
        );
        let _ = writeln!(
            out,
            "Transfer rate:          {:.2} [Kbytes/sec] received",
            r.bytes_received as f64 / 1024.0 / r.duration_s
        );
        if sent_body {
            let sent = r.bytes_sent as f64 / 1024.0 / r.duration_s;
            let _ = writeln!(out, "                        {sent:.2} kb/s sent");
            let _ = writeln!(
                out,
                "                        {:.2} kb/s total",
                sent + r.bytes_received as f64 / 1024.0 / r.duration_s
            );
        }
    }
    let _ = writeln!(out);
    if r.answered > 0 {
        let _ = writeln!(out, "Connection Times (ms)");
        let _ = writeln!(out, "              min  mean[+/-sd] median   max");
        row(&mut out, "Connect:", &r.connect);
        row(&mut out, "Processing:", &r.processing);
        row(&mut out, "Waiting:", &r.waiting);
        row(&mut out, "Total:", &r.total);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Percentage of the requests served within a certain time (ms)"
        );
        for s in &r.served_within {
            if s.percent >= 100 {
                let _ = writeln!(out, " 100%  {:>5} (longest request)", round_ms(s.ms));
            } else {
                let _ = writeln!(out, "  {}%  {:>5}", s.percent, round_ms(s.ms));
            }
        }
    }
    out
}
