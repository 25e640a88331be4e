//! Runs the selected cases phase by phase (cases of one phase concurrently), prints live
//! progress and a summary, and writes the report directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::cases::{self, CaseDef, Phase};
use crate::profile::Profile;
use crate::report::{now_unix, CaseResult, RunReport, Status, SCHEMA_VERSION};
use crate::stack::{Ctx, TargetSpec};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub profile: Profile,
    /// Case IDs; empty = every case.
    pub cases: Vec<String>,
    pub out_dir: Option<PathBuf>,
    pub seed: u64,
    pub target: TargetSpec,
}

impl RunOptions {
    fn database_url(&self) -> Option<&str> {
        match &self.target {
            TargetSpec::Embedded { database_url, .. } => database_url.as_deref(),
            TargetSpec::External { .. } => None,
        }
    }
}

/// The default report directory: `reports/<timestamp>-<profile>`.
pub fn default_out_dir(profile: &str) -> PathBuf {
    let ts = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    PathBuf::from("reports").join(format!("{ts}-{profile}"))
}

/// The selected rows of the case table, or an error naming an unknown ID.
pub fn select(ids: &[String]) -> anyhow::Result<Vec<CaseDef>> {
    let all = cases::all();
    if ids.is_empty() {
        return Ok(all);
    }
    for id in ids {
        if !all.iter().any(|c| c.id.eq_ignore_ascii_case(id)) {
            bail!("unknown case {id:?}; known: {}", cases::ids().join(", "));
        }
    }
    Ok(all
        .into_iter()
        .filter(|c| ids.iter().any(|i| c.id.eq_ignore_ascii_case(i)))
        .collect())
}

/// A case may not run longer than this (the profile's longest flow, with room).
fn case_limit(p: &Profile, id: &str) -> Duration {
    let base = p.charge_target + p.drop_after + p.drop_len + Duration::from_secs(240);
    if id == "B.5" {
        base + cases::beyond::LONG_OUTAGE + Duration::from_secs(480)
    } else {
        base
    }
}

async fn run_one(ctx: &Ctx, def: &CaseDef) -> CaseResult {
    println!("▶ {} {}", def.id, def.title);
    let started_at = now_unix();
    let t = Instant::now();
    let limit = case_limit(&ctx.profile, def.id);
    let mut r = match tokio::time::timeout(limit, (def.run)(ctx)).await {
        Ok(r) => r,
        Err(_) => {
            let mut r = CaseResult::new(def.id, def.title);
            r.note(format!("用例超时 ({} 秒), 已中止", limit.as_secs()));
            r
        }
    };
    r.id = def.id.to_string();
    r.title = def.title.to_string();
    r.started_at = started_at;
    r.ended_at = now_unix();
    r.elapsed_s = (t.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    r.decide();
    let mark = match &r.status {
        Status::Passed => "✔",
        Status::Failed => "✘",
        Status::NotRun(_) => "–",
    };
    println!(
        "{mark} {} {} {} ({:.1} s){}",
        r.id,
        r.title,
        r.status.label(),
        r.elapsed_s,
        r.failure_summary()
            .map(|s| format!(": {}", truncate(&s, 160)))
            .unwrap_or_default()
    );
    r
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// Runs the cases against an already started stack.
pub async fn run_cases(ctx: &Ctx, defs: &[CaseDef]) -> Vec<CaseResult> {
    if !defs.iter().any(|d| d.id == "4.2") {
        let _ = ctx.heartbeat_window_done.send(true);
    }
    let mut results = Vec::new();
    for phase in [
        Phase::Setup,
        Phase::Main,
        Phase::Exclusive,
        Phase::After,
        Phase::Beyond,
        Phase::Outage,
    ] {
        let these: Vec<&CaseDef> = defs.iter().filter(|d| d.phase == phase).collect();
        if these.is_empty() {
            continue;
        }
        let done = futures::future::join_all(these.iter().map(|d| run_one(ctx, d))).await;
        results.extend(done);
    }
    // The record's order, not the finishing order.
    let order = cases::ids();
    results.sort_by_key(|r| order.iter().position(|i| *i == r.id).unwrap_or(usize::MAX));
    results
}

/// The summary table printed at the end.
pub fn summary_table(r: &RunReport) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "\n{:<5} {:<28} {:<8} {:>8}  {}\n",
        "case", "title", "result", "time", "detail"
    ));
    for c in &r.cases {
        let title: String = c.title.chars().take(14).collect();
        s.push_str(&format!(
            "{:<5} {:<28} {:<8} {:>7.1}s  {}\n",
            c.id,
            title,
            c.status.label(),
            c.elapsed_s,
            truncate(&c.failure_summary().unwrap_or_default(), 100)
        ));
    }
    let passed = r.cases.iter().filter(|c| c.status.passed()).count();
    let sc = crate::score::compute(r);
    s.push_str(&format!(
        "\n{passed}/{} passed, score {}/100, {} in {:.0} s\n",
        r.cases.len(),
        sc.total,
        if !crate::score::concludes(r) {
            "REHEARSAL (no acceptance verdict: sign-off needs --profile seed)"
        } else if sc.accepted {
            "ACCEPTED"
        } else {
            "NOT ACCEPTED"
        },
        r.elapsed_s
    ));
    s
}

/// Brings the stack up, runs, writes the report; returns it and where it went.
pub async fn run(opts: RunOptions) -> anyhow::Result<(RunReport, PathBuf)> {
    let mut omitted = std::collections::BTreeMap::new();
    let defs: Vec<CaseDef> = select(&opts.cases)?
        .into_iter()
        .filter(
            |d| match cases::omitted(d.id, opts.profile.name, opts.database_url()) {
                Some(why) => {
                    omitted.insert(d.id.to_string(), why.to_string());
                    false
                }
                None => true,
            },
        )
        .collect();
    let out = opts
        .out_dir
        .clone()
        .unwrap_or_else(|| default_out_dir(opts.profile.name));
    std::fs::create_dir_all(&out)?;
    let started_at = now_unix();
    let t = Instant::now();
    let (target, gateway_mode, database) = match &opts.target {
        TargetSpec::Embedded { database_url, .. } => (
            "embedded (127.0.0.1)".to_string(),
            "内嵌网关子进程 (pile-scenarios __gateway)".to_string(),
            database_url
                .as_deref()
                .map(redact)
                .unwrap_or_else(|| "临时 SQLite (报告目录下 gateway.db)".into()),
        ),
        TargetSpec::External { http, device, .. } => (
            format!("{http} (设备端口 {device})"),
            "外部目标".to_string(),
            "由目标自行管理".to_string(),
        ),
    };
    println!(
        "pile-scenarios: profile {}, seed {}, {} case(s), target {target}, report {}",
        opts.profile.name,
        opts.seed,
        defs.len(),
        out.display()
    );
    let with_load = defs.iter().any(|d| d.id == "4.2");
    let ctx = Ctx::start(
        opts.profile.clone(),
        opts.seed,
        opts.target.clone(),
        out.clone(),
        with_load,
    )
    .await?;
    if let Err(e) = &ctx.fleets {
        println!("! simulated piles unavailable: {e}");
    }
    let results = run_cases(&ctx, &defs).await;
    ctx.stop().await;
    let report = RunReport {
        schema_version: SCHEMA_VERSION,
        profile: opts.profile.name.to_string(),
        seed: opts.seed,
        target,
        gateway_mode,
        database,
        started_at,
        ended_at: now_unix(),
        elapsed_s: (t.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        cases: results,
        omitted,
    };
    crate::render::write_all(&report, &out)?;
    print!("{}", summary_table(&report));
    println!("report: {}", out.join("test_results.md").display());
    Ok((report, out))
}

/// Hides a password in a database URL.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
