//! Results as data: what each case measured and decided. Running fills these in; rendering
//! (`crate::render`) only reads them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The version of `report.json`'s shape.
pub const SCHEMA_VERSION: u32 = 1;

/// How a case ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum Status {
    Passed,
    Failed,
    /// The case could not run (a dependency is missing, the target cannot be measured…).
    /// Never counts as a pass.
    NotRun(String),
}

impl Status {
    pub fn passed(&self) -> bool {
        matches!(self, Status::Passed)
    }

    pub fn label(&self) -> &'static str {
        match self {
            Status::Passed => "PASS",
            Status::Failed => "FAIL",
            Status::NotRun(_) => "NOT RUN",
        }
    }
}

/// One criterion of a case: what was expected, what was measured, whether it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Stable key (`api_call`, `duration_error`…) the record and the score look up.
    pub key: String,
    /// What the record calls it.
    pub label: String,
    pub expected: String,
    pub actual: String,
    pub ok: bool,
}

impl Check {
    pub fn new(
        key: &str,
        label: &str,
        expected: impl Into<String>,
        actual: impl Into<String>,
        ok: bool,
    ) -> Self {
        Check {
            key: key.to_string(),
            label: label.to_string(),
            expected: expected.into(),
            actual: actual.into(),
            ok,
        }
    }
}

/// Everything one case produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    pub id: String,
    pub title: String,
    #[serde(flatten)]
    pub status: Status,
    /// Unix seconds.
    pub started_at: i64,
    pub ended_at: i64,
    pub elapsed_s: f64,
    pub checks: Vec<Check>,
    /// Every measured value, by name.
    pub values: BTreeMap<String, Value>,
    /// Tables of samples (`progress`, `ports`…), each a list of rows.
    pub tables: BTreeMap<String, Vec<BTreeMap<String, Value>>>,
    /// Free-text remarks, most important first (failure causes go here).
    pub notes: Vec<String>,
}

impl CaseResult {
    pub fn new(id: &str, title: &str) -> Self {
        CaseResult {
            id: id.to_string(),
            title: title.to_string(),
            status: Status::Failed,
            started_at: 0,
            ended_at: 0,
            elapsed_s: 0.0,
            checks: Vec::new(),
            values: BTreeMap::new(),
            tables: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    pub fn not_run(id: &str, title: &str, reason: impl Into<String>) -> Self {
        let mut r = CaseResult::new(id, title);
        r.status = Status::NotRun(reason.into());
        r
    }

    pub fn check(&self, key: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.key == key)
    }

    /// Whether the named check exists and holds.
    pub fn check_ok(&self, key: &str) -> bool {
        self.check(key).is_some_and(|c| c.ok)
    }

    pub fn value(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    pub fn set(&mut self, key: &str, v: impl Into<Value>) {
        self.values.insert(key.to_string(), v.into());
    }

    pub fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Decides the status from the checks, unless the case was marked not run. A case with
    /// no checks at all failed: nothing was shown to hold.
    pub fn decide(&mut self) {
        if matches!(self.status, Status::NotRun(_)) {
            return;
        }
        self.status = if !self.checks.is_empty() && self.checks.iter().all(|c| c.ok) {
            Status::Passed
        } else {
            Status::Failed
        };
    }

    /// The first failed check's description, or the not-run reason.
    pub fn failure_summary(&self) -> Option<String> {
        match &self.status {
            Status::Passed => None,
            Status::NotRun(r) => Some(format!("未运行: {r}")),
            Status::Failed => {
                let failed: Vec<String> = self
                    .checks
                    .iter()
                    .filter(|c| !c.ok)
                    .map(|c| format!("{}: 预期 {}, 实际 {}", c.label, c.expected, c.actual))
                    .collect();
                if failed.is_empty() {
                    Some(
                        self.notes
                            .first()
                            .cloned()
                            .unwrap_or_else(|| "no criterion could be checked".into()),
                    )
                } else {
                    Some(failed.join("; "))
                }
            }
        }
    }
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub schema_version: u32,
    pub profile: String,
    pub seed: u64,
    /// `embedded` or the external target's HTTP URL.
    pub target: String,
    /// How the gateway ran (child process, external…).
    pub gateway_mode: String,
    pub database: String,
    pub started_at: i64,
    pub ended_at: i64,
    pub elapsed_s: f64,
    pub cases: Vec<CaseResult>,
    /// Cases left out of this run because they do not apply to it (B.5 outside the seed
    /// profile, B.6 without PostgreSQL), with the reason the record prints.
    #[serde(default)]
    pub omitted: BTreeMap<String, String>,
}

impl RunReport {
    pub fn case(&self, id: &str) -> Option<&CaseResult> {
        self.cases.iter().find(|c| c.id == id)
    }

    pub fn all_passed(&self) -> bool {
        !self.cases.is_empty() && self.cases.iter().all(|c| c.status.passed())
    }
}

/// Unix seconds now.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Unix milliseconds now.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
