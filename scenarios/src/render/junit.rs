//! `junit.xml`: one test case per case ID.

use crate::report::{RunReport, Status};

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' && c != '\r' => {}
            c => out.push(c),
        }
    }
    out
}

pub fn render(r: &RunReport) -> String {
    // A case that could not run is reported as a failure, never as a skip: CI must not
    // show it green.
    let failures = r.cases.iter().filter(|c| !c.status.passed()).count();
    let skipped = 0;
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    s.push_str(&format!(
        "<testsuites name=\"pile-scenarios\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.1}\">\n",
        r.cases.len(),
        failures,
        skipped,
        r.elapsed_s
    ));
    s.push_str(&format!(
        "  <testsuite name=\"acceptance-{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.1}\">\n",
        escape(&r.profile),
        r.cases.len(),
        failures,
        skipped,
        r.elapsed_s
    ));
    for c in &r.cases {
        s.push_str(&format!(
            "    <testcase classname=\"acceptance.{}\" name=\"{} {}\" time=\"{:.1}\">\n",
            escape(&r.profile),
            escape(&c.id),
            escape(&c.title),
            c.elapsed_s
        ));
        match &c.status {
            Status::Passed => {}
            Status::Failed => {
                let msg = c.failure_summary().unwrap_or_default();
                s.push_str(&format!(
                    "      <failure message=\"{}\">{}</failure>\n",
                    escape(&msg),
                    escape(
                        &c.checks
                            .iter()
                            .map(|k| format!(
                                "[{}] {}: expected {}, actual {}",
                                if k.ok { "ok" } else { "FAIL" },
                                k.label,
                                k.expected,
                                k.actual
                            ))
                            .collect::<Vec<_>>()
                            .join("\n")
                    )
                ));
            }
            Status::NotRun(reason) => {
                s.push_str(&format!(
                    "      <failure type=\"not-run\" message=\"{}\"/>\n",
                    escape(&format!("not run: {reason}"))
                ));
            }
        }
        s.push_str("    </testcase>\n");
    }
    s.push_str("  </testsuite>\n</testsuites>\n");
    s
}
