//! Rendering is pure: these tests build results by hand and read the files back.

use serde_json::json;

use super::*;
use crate::cases;
use crate::report::{CaseResult, Check, Status};

const TEMPLATE: &str = include_str!("../../templates/production-test-record.zh.md");

/// Every check key the score looks up.
const KEYS: &[&str] = &[
    "command_sent",
    "order_pending",
    "charging",
    "progress",
    "progress_seconds",
    "completed",
    "webhooks",
    "duration_error",
    "duration",
    "energy_plausible",
    "no_crosstalk",
    "amount_correct",
    "data_synced",
    "events",
    "reconnected",
    "match_rate",
    "mean",
    "success_rate",
    "all_online",
    "rss",
    "cpu",
];

fn report(cases: Vec<CaseResult>) -> RunReport {
    RunReport {
        schema_version: crate::report::SCHEMA_VERSION,
        profile: "seed".into(),
        seed: 7,
        target: "embedded".into(),
        gateway_mode: "child".into(),
        database: "sqlite".into(),
        started_at: 1_764_000_000,
        ended_at: 1_764_000_150,
        elapsed_s: 150.0,
        cases,
        omitted: Default::default(),
    }
}

fn passing() -> RunReport {
    report(
        cases::all()
            .iter()
            .map(|d| {
                let mut c = CaseResult::new(d.id, d.title);
                for k in KEYS {
                    c.push(Check::new(k, k, "x", "y", true));
                }
                c.set("qps", 150.0);
                c.set("online", 200);
                c.decide();
                c
            })
            .collect(),
    )
}

fn not_run() -> RunReport {
    report(
        cases::all()
            .iter()
            .map(|d| CaseResult::not_run(d.id, d.title, "no piles"))
            .collect(),
    )
}

fn headings(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with('#')).collect()
}

#[test]
fn every_template_section_and_table_is_kept() {
    for r in [passing(), not_run()] {
        let md = record::render(&r, &[]);
        for h in headings(TEMPLATE) {
            assert!(md.contains(h), "missing heading {h:?}");
        }
        // Every table header row of the template is there too.
        for line in TEMPLATE
            .lines()
            .filter(|l| l.starts_with("| ") && !l.contains("|--"))
        {
            if line.contains("____") || line.contains("☐") || line.starts_with("| 1 ") {
                continue;
            }
            if line.starts_with("| 步骤")
                || line.starts_with("| 检查项")
                || line.starts_with("| 设备ID")
                || line.starts_with("| 时间")
                || line.starts_with("| 端口")
                || line.starts_with("| 指标")
                || line.starts_with("| 编号")
            {
                assert!(md.contains(line), "missing table header {line:?}");
            }
        }
        for label in [
            "healthz接口",
            "Webhook连通性测试通过",
            "平均响应时间",
            "cmd_logs",
            "tcp_connections_accepted_total",
            "异常场景恢复",
            "CPU使用 < 50%",
        ] {
            assert!(md.contains(label), "missing {label}");
        }
    }
}

#[test]
fn no_blank_or_unmarked_box_is_left() {
    for r in [passing(), not_run()] {
        let md = record::render(&r, &["charge_2_1.svg".into()]);
        for blank in ["____", "☒", "[ ]", "****", "P0/P1/P2", "待修复/已修复"] {
            assert!(!md.contains(blank), "{blank:?} left in the record");
        }
    }
    let md = record::render(&not_run(), &[]);
    assert!(md.contains("n/a (用例未运行, 原因见测试结果)"));
    assert!(md.contains("☐ 通过 ☑ 失败 (未运行: no piles)"));
}

#[test]
fn boxes_follow_the_results() {
    let mut ok = CaseResult::new("3.2", "端口占用冲突");
    ok.push(Check::new("first", "第一次充电", "成功", "200 A", true));
    ok.push(Check::new(
        "second",
        "第二次充电(同端口)",
        "409错误",
        "409",
        true,
    ));
    ok.push(Check::new(
        "message",
        "错误信息",
        "port is busy",
        "port is busy",
        true,
    ));
    ok.decide();
    let md = record::render(&report(vec![ok.clone()]), &[]);
    assert!(md.contains("| 第二次充电(同端口) | 409错误 | 409 | ☑ |"));
    let sec = md.split("### 测试用例 3.2").nth(1).unwrap();
    assert!(sec.contains("**测试结果:** ☑ 通过 ☐ 失败"));

    let mut bad = ok;
    bad.checks[1] = Check::new("second", "第二次充电(同端口)", "409错误", "200", false);
    bad.decide();
    let md = record::render(&report(vec![bad]), &[]);
    assert!(md.contains("| 第二次充电(同端口) | 409错误 | 200 | ☐ |"));
    let sec = md.split("### 测试用例 3.2").nth(1).unwrap();
    assert!(sec.contains("**测试结果:** ☐ 通过 ☑ 失败"));
    assert!(md.contains("| 1 | 3.2 端口占用冲突"));
    assert!(md.contains("**是否通过验收:** ☐ 是 ☑ 否"));
}

#[test]
fn a_subset_that_passes_does_not_accept_the_record() {
    let mut r = passing();
    r.cases.retain(|c| c.id == "1.1");
    assert!(r.all_passed());
    assert!(!crate::score::compute(&r).accepted);
}

#[test]
fn the_score_counts_ticked_items() {
    let s = crate::score::compute(&passing());
    assert_eq!(
        s.groups.iter().map(|g| g.items.len()).collect::<Vec<_>>(),
        [8, 4, 4, 4]
    );
    assert_eq!(s.total, 100);
    assert!(s.accepted && s.problems.is_empty());
    let md = record::render(&passing(), &[]);
    assert!(md.contains("**总体评分:** 100/100"));
    assert!(md.contains("**完成度:** 8/8 (100%)"));
    assert!(md.contains("**是否通过验收:** ☑ 是 ☐ 否"));

    let s = crate::score::compute(&not_run());
    assert_eq!(s.total, 0);
    assert!(!s.accepted);
    assert_eq!(s.problems.len(), cases::all().len());

    // One failed check costs exactly its item: 2.1's amount → accuracy 3/4, 95 points.
    let mut r = passing();
    let c = r.cases.iter_mut().find(|c| c.id == "2.1").unwrap();
    c.checks
        .iter_mut()
        .find(|k| k.key == "amount_correct")
        .unwrap()
        .ok = false;
    c.decide();
    let s = crate::score::compute(&r);
    assert_eq!(s.total, 95);
    assert_eq!(s.groups[1].done(), 3);
    assert!(!s.accepted);
    assert_eq!(s.problems.len(), 1);
    assert_eq!(s.problems[0].severity, "P0");
    // Low QPS unticks "100+ QPS" though 4.1's own criteria (> 50) hold.
    let mut r = passing();
    r.cases
        .iter_mut()
        .find(|c| c.id == "4.1")
        .unwrap()
        .set("qps", 80.0);
    assert_eq!(crate::score::compute(&r).total, 95);
}

#[test]
fn junit_has_one_testcase_per_case_and_never_skips() {
    let mut r = passing();
    r.cases[0].status = Status::Failed;
    r.cases[0].checks[0] = Check::new("healthz", "healthz<接口>", "200", "503 & down", false);
    r.cases[1].status = Status::NotRun("no piles".into());
    let x = junit::render(&r);
    assert_eq!(x.matches("<testcase ").count(), cases::all().len());
    for id in cases::ids() {
        assert!(x.contains(&format!("name=\"{id} ")), "no testcase for {id}");
    }
    assert!(x.contains("failures=\"2\""));
    assert!(x.contains("skipped=\"0\""));
    assert!(x.contains("healthz&lt;接口&gt;"));
    assert!(x.contains("503 &amp; down"));
    assert!(x.contains("type=\"not-run\" message=\"not run: no piles\""));
}

#[test]
fn json_keeps_every_value_and_the_score() {
    let mut r = passing();
    r.cases[0].set("healthz_status", 200);
    r.cases[0].tables.insert(
        "t".into(),
        vec![[("a".to_string(), json!(1))].into_iter().collect()],
    );
    let v = json(&r);
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["cases"].as_array().unwrap().len(), cases::all().len());
    assert_eq!(v["cases"][0]["values"]["healthz_status"], 200);
    assert_eq!(v["cases"][0]["tables"]["t"][0]["a"], 1);
    assert_eq!(v["cases"][0]["status"], "passed");
    assert_eq!(v["score"]["total"], 100);
    let nr = json(&not_run());
    assert_eq!(nr["cases"][0]["status"], "not_run");
    assert_eq!(nr["cases"][0]["reason"], "no piles");
}

#[test]
fn charts_are_linked_from_the_record() {
    let mut r = passing();
    r.cases
        .iter_mut()
        .find(|c| c.id == "4.1")
        .unwrap()
        .set("p50_ms", 1.0);
    let c21 = r.cases.iter_mut().find(|c| c.id == "2.1").unwrap();
    c21.tables.insert("progress".into(), vec![]);
    let names: Vec<String> = charts(&r).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["charge_2_1.svg", "latency_4_1.svg"]);
    let md = record::render(&r, &names);
    assert!(md.contains("[charge_2_1.svg](charge_2_1.svg)"));
    assert!(md.contains("[latency_4_1.svg](latency_4_1.svg)"));
    // No PNG was written: no image is shown.
    assert!(!md.contains(".png"));
    let mut with_png = names.clone();
    with_png.push("latency_4_1.png".into());
    let md = record::render(&r, &with_png);
    assert!(md.contains("![响应时间分布](latency_4_1.png)"));
    assert!(!md.contains("charge_2_1.png"));
}

#[test]
fn write_all_puts_a_png_beside_each_svg_and_shows_it() {
    let mut r = passing();
    let c41 = r.cases.iter_mut().find(|c| c.id == "4.1").unwrap();
    c41.set("p50_ms", 1.0);
    c41.set("mean_ms", 1.2);
    let c21 = r.cases.iter_mut().find(|c| c.id == "2.1").unwrap();
    c21.tables.insert(
        "progress".into(),
        (0..4)
            .map(|i| {
                [
                    ("duration_sec".to_string(), json!(i * 20)),
                    ("power_w".to_string(), json!(150)),
                    ("energy_wh".to_string(), json!(i)),
                ]
                .into_iter()
                .collect()
            })
            .collect(),
    );
    let dir = std::env::temp_dir().join(format!("pile-scenarios-charts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_all(&r, &dir).unwrap();
    let md = std::fs::read_to_string(dir.join("test_results.md")).unwrap();
    for (svg, caption) in [
        ("charge_2_1.svg", "功率与电量曲线"),
        ("latency_4_1.svg", "响应时间分布"),
    ] {
        let png = png_name(svg);
        let bytes = std::fs::read(dir.join(&png)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{png}");
        assert!(std::fs::read_to_string(dir.join(svg))
            .unwrap()
            .starts_with("<svg"));
        assert!(md.contains(&format!("{caption}: [{svg}]({svg})")), "{svg}");
        assert!(md.contains(&format!("![{caption}]({png})")), "{png}");
    }
    assert!(md.contains("图表: charge_2_1.svg, charge_2_1.png, latency_4_1.svg, latency_4_1.png"));
    std::fs::remove_dir_all(&dir).unwrap();
}
