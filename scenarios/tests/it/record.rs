//! The record's rendering rules, read off the rendered markdown: ☐ for what was not chosen,
//! no acceptance verdict from the quick profile, and a money check that fails on one fen.

use pile_api::{OrderStatus, OrderView};
use pile_scenarios::cases::common::{bill_check, time_request};
use pile_scenarios::render::record;
use pile_scenarios::report::{CaseResult, Check, RunReport, SCHEMA_VERSION};
use pile_scenarios::{cases, score};

fn run(profile: &str, pass: bool) -> RunReport {
    RunReport {
        schema_version: SCHEMA_VERSION,
        profile: profile.into(),
        seed: 1,
        target: "embedded".into(),
        gateway_mode: "child".into(),
        database: "sqlite".into(),
        started_at: 1_764_000_000,
        ended_at: 1_764_000_150,
        elapsed_s: 150.0,
        cases: cases::all()
            .iter()
            .map(|d| {
                let mut c = CaseResult::new(d.id, d.title);
                for k in [
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
                ] {
                    c.push(Check::new(k, k, "x", "y", pass || d.id != "3.2"));
                }
                c.set("qps", 150.0);
                c.set("online", 200);
                c.decide();
                c
            })
            .collect(),
        omitted: Default::default(),
    }
}

#[test]
fn unchosen_options_are_empty_boxes_never_crossed() {
    for pass in [true, false] {
        let md = record::render(&run("seed", pass), &[]);
        assert!(!md.contains('☒'), "☒ printed (pass = {pass})");
        // Every verdict line marks exactly one of its two options.
        for line in md
            .lines()
            .filter(|l| l.starts_with("**测试结果:**") && l.contains("通过"))
        {
            assert_eq!(line.matches('☑').count(), 1, "{line}");
            assert_eq!(line.matches('☐').count(), 1, "{line}");
        }
    }
    let md = record::render(&run("seed", false), &[]);
    let sec = md.split("### 测试用例 3.2").nth(1).unwrap();
    assert!(sec.contains("**测试结果:** ☐ 通过 ☑ 失败"));
    let sec = md.split("### 测试用例 3.3").nth(1).unwrap();
    assert!(sec.contains("**测试结果:** ☑ 通过 ☐ 失败"));
    assert!(md.contains("**是否通过验收:** ☐ 是 ☑ 否"));
}

#[test]
fn the_quick_profile_never_ticks_acceptance() {
    let quick = run("quick", true);
    assert!(quick.all_passed());
    let s = score::compute(&quick);
    assert_eq!(s.total, 100, "the score is still computed");
    assert!(!s.accepted);
    let md = record::render(&quick, &[]);
    let line = md
        .lines()
        .find(|l| l.starts_with("**是否通过验收:**"))
        .unwrap();
    assert!(!line.contains('☑'), "{line}");
    assert!(
        line.contains("☐ 是 ☐ 否") && line.contains("--profile seed"),
        "{line}"
    );
    // The seed profile concludes for real.
    let seed = run("seed", true);
    assert!(score::compute(&seed).accepted);
    assert!(record::render(&seed, &[]).contains("**是否通过验收:** ☑ 是 ☐ 否"));
}

#[test]
fn the_record_marks_the_added_section_and_why_cases_were_left_out() {
    let mut r = run("quick", true);
    r.cases.retain(|c| c.id != "B.5");
    r.omitted.insert(
        "B.5".into(),
        "仅 seed profile 运行 (10 分钟接收端故障)".into(),
    );
    let md = record::render(&r, &[]);
    let sixth = md.find("## 第六阶段").unwrap();
    let added = md.find("## 模板之外 (新增)").expect("added section");
    assert!(added > sixth);
    assert!(md.contains("本节为 pile-scenarios 新增, 不属于原测试记录模板"));
    assert!(md.contains("本次不适用: 仅 seed profile 运行"));
}

fn order(wh: i64, energy_fee: i64, service: i64, final_amount: i64) -> OrderView {
    OrderView {
        order_no: "O1".into(),
        device_id: "82210225000520".into(),
        port_no: 1,
        status: OrderStatus::Completed,
        charge_mode: 1,
        target_duration: 60,
        amount: 500,
        created_at: 0,
        started_at: Some(1),
        ended_at: Some(61),
        duration_sec: 60,
        total_kwh: wh as f64 / 1000.0,
        current_power: 0.0,
        peak_power: 800.0,
        energy_fee,
        service_fee_amount: service,
        final_amount,
        end_reason: Some(1),
        end_reason_name: None,
        end_reason_text: None,
        offline_replayed: false,
    }
}

#[test]
fn the_bill_check_fails_when_the_fen_differ() {
    let req = time_request(1, 60); // 150 + 50 fen per kWh, capped at 500
                                   // 13 Wh: 1.95 → 2 fen energy, 0.65 → 1 fen service (half up): 3 fen.
    assert!(bill_check(&order(13, 2, 1, 3), &req, true).ok);
    // One fen off, either in the total or in a part, fails.
    assert!(!bill_check(&order(13, 2, 1, 4), &req, true).ok);
    assert!(!bill_check(&order(13, 2, 1, 2), &req, true).ok);
    assert!(!bill_check(&order(13, 1, 2, 3), &req, true).ok);
    // Rounding down instead of half up: 10 Wh → 1.5 → 2 and 0.5 → 1, not 1 + 0.
    assert!(bill_check(&order(10, 2, 1, 3), &req, true).ok);
    assert!(!bill_check(&order(10, 1, 0, 1), &req, true).ok);
    // A bill of nothing proves nothing where a non-zero bill is required.
    assert!(!bill_check(&order(2, 0, 0, 0), &req, true).ok);
    assert!(bill_check(&order(2, 0, 0, 0), &req, false).ok);
    // The cap.
    assert!(bill_check(&order(10_000, 1500, 500, 500), &req, true).ok);
    assert!(!bill_check(&order(10_000, 1500, 500, 2000), &req, true).ok);
}
