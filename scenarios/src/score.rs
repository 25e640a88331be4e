//! The record's final section: functional 8, accuracy 4, reliability 4, performance 4 items,
//! each ticked only from measured checks; 5 points per item, out of 100.

use serde::Serialize;

use crate::report::{RunReport, Status};

/// One scored item and the evidence it was judged on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    pub label: &'static str,
    pub ok: bool,
    /// Which checks decided it (`2.1/command_sent`…).
    pub basis: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub title: &'static str,
    pub items: Vec<Item>,
}

impl Group {
    pub fn done(&self) -> usize {
        self.items.iter().filter(|i| i.ok).count()
    }
}

/// A problem-table row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub case_id: String,
    pub title: String,
    pub description: String,
    /// `P0`, `P1` or `P2`.
    pub severity: &'static str,
    /// The record's stage (第二阶段…).
    pub stage: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    pub groups: Vec<Group>,
    /// 0–100.
    pub total: u32,
    /// Every case of the record ran and passed.
    pub accepted: bool,
    pub problems: Vec<Problem>,
}

/// A reference to a check: `(case, key)`; `key` `*` means "the whole case passed".
type Ref = (&'static str, &'static str);

fn holds(r: &RunReport, refs: &[Ref]) -> bool {
    refs.iter().all(|(case, key)| {
        r.case(case).is_some_and(|c| {
            if *key == "*" {
                c.status == Status::Passed
            } else {
                !matches!(c.status, Status::NotRun(_)) && c.check_ok(key)
            }
        })
    })
}

fn item(r: &RunReport, label: &'static str, refs: &[Ref]) -> Item {
    Item {
        label,
        ok: holds(r, refs),
        basis: refs
            .iter()
            .map(|(c, k)| {
                if *k == "*" {
                    c.to_string()
                } else {
                    format!("{c}/{k}")
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Severity of a failure in a case: P0 for the charging core, P2 for observability
/// figures, P1 for the rest.
pub fn severity(case_id: &str) -> &'static str {
    match case_id {
        "1.1" | "1.2" | "2.1" | "2.2" | "5.1" | "X.3" => "P0",
        "4.3" | "6.1" | "6.2" => "P2",
        "B.1" | "B.2" | "B.3" | "B.4" => "P0",
        _ => "P1",
    }
}

/// The record's stage a case belongs to.
pub fn stage(case_id: &str) -> &'static str {
    match case_id.chars().next() {
        Some('1') => "第一阶段",
        Some('2') => "第二阶段",
        Some('3') => "第三阶段",
        Some('4') => "第四阶段",
        Some('5') => "第五阶段",
        Some('6') => "第六阶段",
        Some('B') => "模板之外 (新增)",
        _ => "附加场景",
    }
}

/// Whether a run's record may conclude at all: only the seed profile (the template's own
/// timings) can; the quick profile is a rehearsal.
pub fn concludes(r: &RunReport) -> bool {
    r.profile == "seed"
}

pub fn compute(r: &RunReport) -> Score {
    let groups = vec![
        Group {
            title: "功能完整性",
            items: vec![
                item(r, "设备上线注册和心跳", &[("1.2", "*")]),
                item(r, "充电指令下发成功", &[("2.1", "command_sent")]),
                item(
                    r,
                    "订单创建和确认",
                    &[("2.1", "order_pending"), ("2.1", "charging")],
                ),
                item(
                    r,
                    "充电进度实时上报",
                    &[("2.1", "progress"), ("2.1", "progress_seconds")],
                ),
                item(r, "订单正常结算", &[("2.1", "completed")]),
                item(r, "远程停止充电", &[("2.2", "*")]),
                item(r, "第三方Webhook推送", &[("1.3", "*"), ("2.1", "webhooks")]),
                item(
                    r,
                    "异常场景恢复",
                    &[("3.1", "*"), ("X.1", "*"), ("X.3", "*")],
                ),
            ],
        },
        Group {
            title: "数据准确性",
            items: vec![
                item(
                    r,
                    "充电时长误差 < 5秒",
                    &[("2.1", "duration_error"), ("2.2", "duration")],
                ),
                item(
                    r,
                    "电量计量合理",
                    &[("2.1", "energy_plausible"), ("3.3", "no_crosstalk")],
                ),
                item(r, "金额计算正确", &[("2.1", "amount_correct")]),
                item(
                    r,
                    "数据无丢失",
                    &[("3.1", "data_synced"), ("X.3", "events"), ("X.4", "*")],
                ),
            ],
        },
        Group {
            title: "可靠性",
            items: vec![
                item(r, "设备断线重连 < 10秒", &[("3.1", "reconnected")]),
                item(r, "指令下发成功率 > 99%", &[("5.2", "match_rate")]),
                item(r, "API响应时间 < 200ms", &[("4.1", "mean")]),
                item(r, "Webhook推送成功率 > 99%", &[("6.3", "success_rate")]),
            ],
        },
        Group {
            title: "性能指标",
            items: vec![
                Item {
                    label: "支持100+ QPS",
                    ok: r
                        .case("4.1")
                        .and_then(|c| c.value("qps"))
                        .and_then(|v| v.as_f64())
                        .is_some_and(|q| q >= 100.0)
                        && holds(r, &[("4.1", "success_rate")]),
                    basis: "4.1/qps ≥ 100, 4.1/success_rate".into(),
                },
                Item {
                    label: "并发连接 > 100",
                    ok: r
                        .case("4.2")
                        .and_then(|c| c.value("online"))
                        .and_then(|v| v.as_u64())
                        .is_some_and(|n| n > 100)
                        && holds(r, &[("4.2", "all_online")]),
                    basis: "4.2/online > 100, 4.2/all_online".into(),
                },
                item(r, "内存使用 < 2GB", &[("4.2", "rss")]),
                item(r, "CPU使用 < 50%", &[("4.2", "cpu")]),
            ],
        },
    ];
    let ticked: usize = groups.iter().map(Group::done).sum();
    let items: usize = groups.iter().map(|g| g.items.len()).sum();
    let total = (ticked * 100).checked_div(items).unwrap_or(0) as u32;
    let problems = r
        .cases
        .iter()
        .filter(|c| !c.status.passed())
        .map(|c| Problem {
            case_id: c.id.clone(),
            title: c.title.clone(),
            description: c.failure_summary().unwrap_or_default(),
            severity: severity(&c.id),
            stage: stage(&c.id),
        })
        .collect();
    Score {
        groups,
        total,
        // The record is accepted only whole, and only by the seed profile: a subset run can
        // pass its cases, not the record; a quick run is a rehearsal.
        accepted: concludes(r)
            && r.all_passed()
            && crate::cases::ids()
                .iter()
                .filter(|id| crate::cases::required(id))
                .all(|id| r.case(id).is_some()),
        problems,
    }
}
