//! `test_results.md`: the production test record (`templates/production-test-record.zh.md`)
//! with every section and table kept, every blank filled with a measured value or a stated
//! "n/a" reason, and every box ticked (☑) from a check that held; an unchosen option or a
//! check that did not hold stays ☐, the template's own convention (☒ is never printed).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

use super::{fmt_clock, fmt_time};
use crate::report::{CaseResult, RunReport, Status};
use crate::score;

struct Rec<'a> {
    r: &'a RunReport,
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(match n.as_f64() {
            Some(f) if n.is_f64() => {
                // Small figures (kWh of a one-minute charge) keep four decimals.
                let t = if f.abs() < 1.0 {
                    format!("{f:.4}")
                } else {
                    format!("{f:.2}")
                };
                if t.contains('.') {
                    t.trim_end_matches('0').trim_end_matches('.').to_string()
                } else {
                    t
                }
            }
            _ => n.to_string(),
        }),
        Value::Bool(b) => Some(if *b { "是" } else { "否" }.to_string()),
        other => Some(other.to_string()),
    }
}

impl<'a> Rec<'a> {
    fn case(&self, id: &str) -> Option<&'a CaseResult> {
        self.r.case(id)
    }

    /// Why a blank has no measured value.
    fn na(&self, id: &str) -> String {
        match self.case(id) {
            None => match self.r.omitted.get(id) {
                Some(why) => format!("n/a (本次不适用: {why})"),
                None => "n/a (本次未选择运行)".into(),
            },
            Some(c) => match &c.status {
                // The reason itself is printed once, on the case's result line.
                Status::NotRun(_) => "n/a (用例未运行, 原因见测试结果)".into(),
                _ => "n/a (未测得)".into(),
            },
        }
    }

    fn actual(&self, id: &str, key: &str) -> String {
        self.case(id)
            .and_then(|c| c.check(key))
            .map(|c| c.actual.replace('|', "/"))
            .unwrap_or_else(|| self.na(id))
    }

    fn bx(&self, id: &str, key: &str) -> &'static str {
        if self.case(id).is_some_and(|c| c.check_ok(key)) {
            "☑"
        } else {
            "☐"
        }
    }

    fn val(&self, id: &str, key: &str) -> String {
        self.case(id)
            .and_then(|c| c.value(key))
            .and_then(value_text)
            .map(|s| s.replace('|', "/"))
            .unwrap_or_else(|| self.na(id))
    }

    fn result(&self, id: &str) -> String {
        match self.case(id).map(|c| &c.status) {
            Some(Status::Passed) => "☑ 通过 ☐ 失败".into(),
            Some(Status::Failed) => "☐ 通过 ☑ 失败".into(),
            Some(Status::NotRun(why)) => format!("☐ 通过 ☑ 失败 (未运行: {why})"),
            None => match self.r.omitted.get(id) {
                Some(why) => format!("☐ 通过 ☐ 失败 (本次不适用: {why})"),
                None => "☐ 通过 ☐ 失败 (本次未选择运行)".into(),
            },
        }
    }

    fn problems(&self, id: &str) -> String {
        match self.case(id) {
            Some(c) => {
                let mut s = c.failure_summary().unwrap_or_else(|| "无".into());
                if !c.notes.is_empty() {
                    s.push_str(&format!(" (备注: {})", c.notes.join("; ")));
                }
                s
            }
            None => "本次未选择运行".into(),
        }
    }

    fn when(&self, id: &str, key: &str) -> String {
        self.case(id)
            .and_then(|c| c.value(key))
            .and_then(|v| v.as_i64())
            .map(fmt_time)
            .unwrap_or_else(|| self.na(id))
    }

    fn row(&self, id: &str, step: usize, key: &str, label: &str, expected: &str) -> String {
        format!(
            "| {step} | {label} | {expected} | {} | {} |",
            self.actual(id, key),
            self.bx(id, key)
        )
    }

    fn check_item(&self, id: &str, key: &str, label: &str) -> String {
        format!("- {} {label}: {}", self.bx(id, key), self.actual(id, key))
    }
}

fn progress_table(rows: Option<&Vec<BTreeMap<String, Value>>>, na: &str) -> String {
    let mut s = String::from(
        "| 时间 | 时长(秒) | 电量(度) | 功率(W) | 状态 |\n|------|----------|----------|---------|------|\n",
    );
    let rows = match rows {
        Some(r) if !r.is_empty() => r,
        _ => {
            let _ = writeln!(s, "| {na} | {na} | {na} | {na} | {na} |");
            return s;
        }
    };
    // At most 12 rows in the record, evenly spread and always the last; report.json has all.
    let n = rows.len();
    let step = n.div_ceil(12).max(1);
    let mut idx: Vec<usize> = (0..n).step_by(step).collect();
    if idx.last() != Some(&(n - 1)) {
        idx.push(n - 1);
    }
    for i in idx {
        let r = &rows[i];
        let g = |k: &str| r.get(k).cloned().unwrap_or(Value::Null);
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.0} | {} |",
            g("at").as_i64().map(fmt_clock).unwrap_or_default(),
            g("duration_sec").as_i64().unwrap_or(0),
            g("energy_wh").as_f64().unwrap_or(0.0) / 1000.0,
            g("power_w").as_f64().unwrap_or(0.0),
            g("status").as_str().unwrap_or("")
        );
    }
    if n > 12 {
        let _ = writeln!(s, "\n(共 {n} 条样本, 此处抽取显示; 全部见 report.json)");
    }
    s
}

/// A chart's lines in the record: a link to its SVG, then its PNG shown inline (the PNG reads
/// in viewers without SVG or CJK fonts). Empty when no SVG whose name contains `key` exists.
fn chart(charts: &[String], key: &str, caption: &str) -> String {
    let Some(svg) = charts
        .iter()
        .find(|c| c.contains(key) && c.ends_with(".svg"))
    else {
        return String::new();
    };
    let mut s = format!("\n{caption}: [{svg}]({svg})\n");
    let png = super::png_name(svg);
    if charts.contains(&png) {
        let _ = writeln!(s, "\n![{caption}]({png})");
    }
    s
}

/// Renders the record. `charts` are the chart file names written next to it (SVGs and the
/// PNGs rendered from them).
pub fn render(r: &RunReport, charts: &[String]) -> String {
    let x = Rec { r };
    let sc = score::compute(r);
    let mut s = String::new();
    let w = &mut s;
    let p = &r.profile;
    let _ = writeln!(w, "# 生产环境测试结果记录\n");
    let _ = writeln!(w, "## 测试信息\n");
    let _ = writeln!(
        w,
        "- **测试日期:** {} 至 {}",
        fmt_time(r.started_at),
        fmt_time(r.ended_at)
    );
    let _ = writeln!(
        w,
        "- **测试人员:** pile-scenarios (自动化, profile `{p}`, seed {})",
        r.seed
    );
    let _ = writeln!(
        w,
        "- **测试环境:** {} (网关: {}; 数据库: {})",
        r.target, r.gateway_mode, r.database
    );
    let _ = writeln!(
        w,
        "- **设备ID:** 82210225000520, 82241218000382 (模拟 BKV), 04AB373B (模拟 AP3000)\n"
    );

    // ---- 1
    let _ = writeln!(w, "## 第一阶段：环境验证与准备\n");
    let _ = writeln!(w, "### 1.1 服务器健康检查\n");
    let _ = writeln!(
        w,
        "| 检查项 | 预期 | 实际 | 状态 |\n|--------|------|------|------|"
    );
    for (key, label, exp) in [
        ("healthz", "healthz接口", "200 OK"),
        ("readyz", "readyz接口", "200 OK"),
        ("running", "容器状态", "Running"),
        ("no_errors", "日志状态", "无ERROR"),
    ] {
        let _ = writeln!(
            w,
            "| {label} | {exp} | {} | {} |",
            x.actual("1.1", key),
            x.bx("1.1", key)
        );
    }
    let _ = writeln!(w, "\n**备注:** {}\n", x.problems("1.1"));

    let _ = writeln!(w, "### 1.2 设备在线状态\n");
    let _ = writeln!(
        w,
        "| 设备ID | 在线状态 | 最后心跳时间 | 备注 |\n|--------|----------|--------------|------|"
    );
    for id in ["82210225000520", "82241218000382"] {
        let online = x
            .case("1.2")
            .and_then(|c| c.value(&format!("{id}.online")))
            .and_then(|v| v.as_bool());
        let boxes = match online {
            Some(true) => "☑ 在线 ☐ 离线".to_string(),
            Some(false) => "☐ 在线 ☑ 离线".to_string(),
            None => format!("☐ 在线 ☐ 离线 ({})", x.na("1.2")),
        };
        let _ = writeln!(
            w,
            "| {id} | {boxes} | {} | {} {} |",
            x.actual("1.2", &format!("{id}.heartbeat")),
            x.bx("1.2", &format!("{id}.heartbeat")),
            if x.case("1.2")
                .is_some_and(|c| c.check_ok(&format!("{id}.heartbeat")))
            {
                "心跳正常"
            } else {
                "心跳未见更新"
            }
        );
    }
    let _ = writeln!(w, "\n**备注:** {}\n", x.problems("1.2"));

    let _ = writeln!(w, "### 1.3 Webhook配置\n");
    let _ = writeln!(w, "{}", x.check_item("1.3", "url", "Webhook URL已配置"));
    let _ = writeln!(w, "{}", x.check_item("1.3", "secret", "Webhook密钥已配置"));
    let _ = writeln!(
        w,
        "{}",
        x.check_item("1.3", "connectivity", "Webhook连通性测试通过")
    );
    let _ = writeln!(w, "{}", x.check_item("1.3", "receiver", "接收端点已部署"));
    let _ = writeln!(w, "\n**备注:** {}\n", x.problems("1.3"));

    let _ = writeln!(w, "### 1.4 API认证\n");
    let _ = writeln!(w, "{}", x.check_item("1.4", "valid_key", "API Key验证通过"));
    let _ = writeln!(w, "{}", x.check_item("1.4", "api_call", "API调用正常"));
    let _ = writeln!(w, "{}", x.check_item("1.4", "envelope", "返回数据格式正确"));
    let _ = writeln!(w, "\n**备注:** {}\n", x.problems("1.4"));
    let _ = writeln!(w, "---\n");

    // ---- 2
    let _ = writeln!(w, "## 第二阶段：基础充电流程测试\n");
    let _ = writeln!(w, "### 测试用例 2.1: 按时长充电\n");
    let _ = writeln!(
        w,
        "**测试时间:** {} 到 {}\n",
        x.when("2.1", "start_time"),
        x.when("2.1", "end_time")
    );
    let _ = writeln!(w, "**订单信息:**\n");
    let _ = writeln!(w, "- 订单号: {}", x.val("2.1", "order_no"));
    let _ = writeln!(w, "- 设备: 82210225000520");
    let _ = writeln!(w, "- 端口: 1");
    let _ = writeln!(w, "- 目标时长: {}秒", x.val("2.1", "target_duration_s"));
    let _ = writeln!(w, "- 目标金额: 500分\n");
    let _ = writeln!(w, "**测试步骤记录:**\n");
    let _ = writeln!(
        w,
        "| 步骤 | 检查项 | 预期 | 实际 | 状态 |\n|------|--------|------|------|------|"
    );
    let period = x
        .case("2.1")
        .and_then(|c| c.check("progress"))
        .map(|c| c.expected.clone())
        .unwrap_or_else(|| "每周期更新".into());
    for (i, (key, label, exp)) in [
        ("api_call", "API调用", "200".to_string()),
        ("order_pending", "订单创建", "pending".to_string()),
        ("command_sent", "指令下发", "启动指令下发".to_string()),
        ("plugged", "插入插头", "指示灯亮".to_string()),
        ("charging", "订单确认", "charging".to_string()),
        ("progress", "充电进度", period),
        ("completed", "充电结束", "completed".to_string()),
        ("duration_error", "时长误差", "≤5秒".to_string()),
    ]
    .iter()
    .enumerate()
    {
        let mut line = x.row("2.1", i + 1, key, label, exp);
        if *key == "duration_error" && x.case("2.1").and_then(|c| c.check(key)).is_some() {
            line = line.replacen(
                &format!("| {} |", x.actual("2.1", key)),
                &format!("| {}秒 |", x.actual("2.1", key)),
                1,
            );
        }
        let _ = writeln!(w, "{line}");
    }
    let _ = writeln!(w, "\n**充电进度数据记录:**\n");
    let na21 = x.na("2.1");
    let _ = write!(
        w,
        "{}",
        progress_table(x.case("2.1").and_then(|c| c.tables.get("progress")), &na21)
    );
    let _ = write!(w, "{}", chart(charts, "2_1", "功率与电量曲线"));
    let _ = writeln!(w, "\n**最终结算数据:**\n");
    let _ = writeln!(w, "- 实际时长: {}秒", x.val("2.1", "duration_sec"));
    let _ = writeln!(w, "- 实际电量: {}度", x.val("2.1", "total_kwh"));
    let _ = writeln!(w, "- 最终金额: {}分", x.val("2.1", "final_amount"));
    let _ = writeln!(
        w,
        "- 结束原因: {} ({})",
        x.val("2.1", "end_reason"),
        x.val("2.1", "end_reason_name")
    );
    let _ = writeln!(w, "- 峰值功率: {}W", x.val("2.1", "peak_power_w"));
    let _ = writeln!(
        w,
        "- 电量校验: {} {}; 金额校验: {} {}\n",
        x.bx("2.1", "energy_plausible"),
        x.actual("2.1", "energy_plausible"),
        x.bx("2.1", "amount_correct"),
        x.actual("2.1", "amount_correct")
    );
    let _ = writeln!(w, "**Webhook事件接收:**\n");
    let count = |k: &str| {
        x.case("2.1")
            .and_then(|c| c.value(k))
            .and_then(|v| v.as_u64())
    };
    let tick = |n: Option<u64>| if n.unwrap_or(0) >= 1 { "☑" } else { "☐" };
    let _ = writeln!(
        w,
        "- {} charging.started ({})",
        tick(count("webhook.charging_started")),
        count("webhook.charging_started").map_or(x.na("2.1"), |n| format!("{n}次"))
    );
    let _ = writeln!(
        w,
        "- {} charging.progress ({})",
        tick(count("webhook.charging_progress")),
        count("webhook.charging_progress").map_or(x.na("2.1"), |n| format!("{n}次"))
    );
    let _ = writeln!(
        w,
        "- {} order.completed ({})",
        tick(count("webhook.order_completed")),
        count("webhook.order_completed").map_or(x.na("2.1"), |n| format!("{n}次"))
    );
    let _ = writeln!(w, "\n**测试结果:** {}\n", x.result("2.1"));
    let _ = writeln!(w, "**问题记录:** {}\n", x.problems("2.1"));
    let _ = writeln!(w, "---\n");

    let _ = writeln!(w, "### 测试用例 2.2: 远程停止充电\n");
    let _ = writeln!(
        w,
        "**测试时间:** {} 到 {}\n",
        x.when("2.2", "start_time"),
        x.when("2.2", "end_time")
    );
    let _ = writeln!(w, "**订单信息:**\n");
    let _ = writeln!(w, "- 订单号: {}", x.val("2.2", "order_no"));
    let _ = writeln!(
        w,
        "- 充电时长: 约{}秒后停止 (82210225000520 端口 2)\n",
        x.val("2.2", "stop_after_s")
    );
    let _ = writeln!(w, "**测试记录:**\n");
    let _ = writeln!(
        w,
        "| 步骤 | 检查项 | 预期 | 实际 | 状态 |\n|------|--------|------|------|------|"
    );
    let wait_label = x
        .case("2.2")
        .and_then(|c| c.check("still_charging"))
        .map(|c| c.label.clone())
        .unwrap_or_else(|| "等待".into());
    let stop_exp = x
        .case("2.2")
        .and_then(|c| c.check("duration"))
        .map(|c| c.expected.clone())
        .unwrap_or_else(|| "≈等待时长".into());
    for (i, (key, label, exp)) in [
        ("started", "启动充电".to_string(), "成功".to_string()),
        ("still_charging", wait_label, "charging".to_string()),
        ("stop_api", "调用停止API".into(), "200".into()),
        ("device_stopped", "设备停止".into(), "指示灯灭".into()),
        ("completed", "订单结算".into(), "completed".into()),
        ("duration", "时长验证".into(), stop_exp),
        ("end_reason", "结束原因".into(), "远程停止(3)".into()),
    ]
    .iter()
    .enumerate()
    {
        let _ = writeln!(w, "{}", x.row("2.2", i + 1, key, label, exp));
    }
    let _ = writeln!(w, "\n**测试结果:** {}\n", x.result("2.2"));
    let _ = writeln!(w, "**问题记录:** {}\n", x.problems("2.2"));
    let _ = writeln!(w, "---\n");

    // ---- 3
    let _ = writeln!(w, "## 第三阶段：异常场景测试\n");
    let _ = writeln!(w, "### 测试用例 3.1: 充电中设备断网\n");
    let _ = writeln!(w, "**测试时间:** {}\n", x.when("3.1", "start_time"));
    let _ = writeln!(w, "**测试记录:**\n");
    let _ = writeln!(
        w,
        "| 步骤 | 操作 | 预期结果 | 实际结果 | 状态 |\n|------|------|----------|----------|------|"
    );
    let exp_of = |key: &str, d: &str| {
        x.case("3.1")
            .and_then(|c| c.check(key))
            .map(|c| c.expected.clone())
            .unwrap_or_else(|| d.to_string())
    };
    let charged_label = x
        .case("3.1")
        .and_then(|c| c.check("charged"))
        .map(|c| c.label.clone())
        .unwrap_or_else(|| "充电一段时间".into());
    for (i, (key, label, exp)) in [
        ("started", "启动充电".to_string(), "成功".to_string()),
        ("charged", charged_label, "正常".to_string()),
        (
            "offline_detected",
            "断开网络".into(),
            exp_of("offline_detected", "阈值内离线"),
        ),
        ("local_charging", "设备本地充电".into(), "继续".into()),
        ("reconnected", "恢复网络".into(), "5-10秒重连".into()),
        ("data_synced", "数据同步".into(), "包含离线数据".into()),
    ]
    .iter()
    .enumerate()
    {
        let mut line = x.row("3.1", i + 1, key, label, exp);
        if matches!(*key, "offline_detected" | "reconnected")
            && x.case("3.1")
                .and_then(|c| c.check(key))
                .is_some_and(|c| c.actual.parse::<f64>().is_ok())
        {
            line = line.replacen(
                &format!("| {} |", x.actual("3.1", key)),
                &format!("| {}秒 |", x.actual("3.1", key)),
                1,
            );
        }
        let _ = writeln!(w, "{line}");
    }
    let _ = writeln!(w, "\n**测试结果:** {}\n", x.result("3.1"));
    let _ = writeln!(w, "**问题记录:** {}\n", x.problems("3.1"));
    let _ = writeln!(w, "---\n");

    let _ = writeln!(w, "### 测试用例 3.2: 端口占用冲突\n");
    let _ = writeln!(w, "**测试记录:**\n");
    let _ = writeln!(
        w,
        "| 检查项 | 预期 | 实际 | 状态 |\n|--------|------|------|------|"
    );
    for (key, label, exp) in [
        ("first", "第一次充电", "成功"),
        ("second", "第二次充电(同端口)", "409错误"),
        ("message", "错误信息", "port is busy"),
    ] {
        let _ = writeln!(
            w,
            "| {label} | {exp} | {} | {} |",
            x.actual("3.2", key),
            x.bx("3.2", key)
        );
    }
    let _ = writeln!(w, "\n**测试结果:** {}\n", x.result("3.2"));
    let _ = writeln!(w, "---\n");

    let _ = writeln!(w, "### 测试用例 3.3: 多端口并发充电\n");
    let _ = writeln!(w, "**测试时间:** {}\n", x.when("3.3", "start_time"));
    let _ = writeln!(w, "**测试记录:**\n");
    let _ = writeln!(
        w,
        "| 端口 | 订单号 | 状态 | 时长 | 电量 | 备注 |\n|------|--------|------|------|------|------|"
    );
    let ports = x.case("3.3").and_then(|c| c.tables.get("ports"));
    for port in 1..=4u64 {
        let row = ports.and_then(|rows| {
            rows.iter()
                .find(|r| r.get("port").and_then(|v| v.as_u64()) == Some(port))
        });
        let na = x.na("3.3");
        let g = |k: &str| {
            row.and_then(|r| r.get(k))
                .and_then(value_text)
                .unwrap_or_else(|| na.clone())
        };
        let remark = row
            .and_then(|r| r.get("remark"))
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| {
                if row.is_some() {
                    "正常".into()
                } else {
                    na.clone()
                }
            });
        let _ = writeln!(
            w,
            "| {port} | {} | {} | {}{} | {}{} | {} |",
            g("order_no"),
            g("status"),
            g("duration_sec"),
            if row
                .and_then(|r| r.get("duration_sec"))
                .is_some_and(|v| !v.is_null())
            {
                "秒"
            } else {
                ""
            },
            g("total_kwh"),
            if row
                .and_then(|r| r.get("total_kwh"))
                .is_some_and(|v| !v.is_null())
            {
                "度"
            } else {
                ""
            },
            remark.replace('|', "/")
        );
    }
    let _ = writeln!(w, "\n**验证项:**\n");
    let _ = writeln!(w, "{}", x.check_item("3.3", "created", "4个订单同时创建"));
    let _ = writeln!(
        w,
        "{}",
        x.check_item("3.3", "independent", "4个端口独立工作")
    );
    let _ = writeln!(w, "{}", x.check_item("3.3", "no_crosstalk", "数据互不干扰"));
    let _ = writeln!(w, "{}", x.check_item("3.3", "total_power", "总功率合理"));
    let _ = writeln!(w, "\n**测试结果:** {}\n", x.result("3.3"));
    let _ = writeln!(w, "---\n");

    // ---- 4
    let _ = writeln!(w, "## 第四阶段：性能与压力测试\n");
    let _ = writeln!(w, "### 4.1 API并发测试\n");
    let _ = writeln!(
        w,
        "**测试工具:** pile-load (代替 Apache Bench, 闭环模型 -n 1000 -c 10)\n"
    );
    let _ = writeln!(w, "**测试参数:**\n");
    let _ = writeln!(w, "- 请求总数: 1000");
    let _ = writeln!(w, "- 并发数: 10");
    let _ = writeln!(w, "- 目标设备: 82210225000520\n");
    let _ = writeln!(w, "**测试结果:**\n");
    let _ = writeln!(
        w,
        "| 指标 | 预期 | 实际 | 状态 |\n|------|------|------|------|"
    );
    for (key, label, exp, unit) in [
        ("success_rate", "成功率", ">99%", "%"),
        ("mean", "平均响应时间", "<200ms", "ms"),
        ("qps", "QPS", ">50", ""),
        ("error_rate", "错误率", "<1%", "%"),
    ] {
        let a = x.actual("4.1", key);
        let unit = if a.parse::<f64>().is_ok() { unit } else { "" };
        let _ = writeln!(w, "| {label} | {exp} | {a}{unit} | {} |", x.bx("4.1", key));
    }
    let _ = writeln!(w, "\n**详细数据:**\n");
    let ms = |k: &str| {
        let v = x.val("4.1", k);
        if v.starts_with("n/a") {
            v
        } else {
            format!("{v}ms")
        }
    };
    let _ = writeln!(w, "```");
    let _ = writeln!(w, "总请求数: {}", x.val("4.1", "total"));
    let _ = writeln!(w, "成功: {}", x.val("4.1", "success"));
    let _ = writeln!(w, "失败: {}", x.val("4.1", "failed"));
    let _ = writeln!(w, "最小响应时间: {}", ms("min_ms"));
    let _ = writeln!(w, "最大响应时间: {}", ms("max_ms"));
    let _ = writeln!(w, "平均响应时间: {}", ms("mean_ms"));
    let _ = writeln!(w, "P50: {}", ms("p50_ms"));
    let _ = writeln!(w, "P95: {}", ms("p95_ms"));
    let _ = writeln!(w, "P99: {}", ms("p99_ms"));
    let _ = writeln!(w, "```");
    let _ = write!(w, "{}", chart(charts, "4_1", "响应时间分布"));
    let _ = writeln!(w, "\n**测试结果:** {}\n", x.result("4.1"));
    let _ = writeln!(w, "---\n");

    let _ = writeln!(w, "### 4.2 心跳处理性能\n");
    let _ = writeln!(
        w,
        "**活跃设备数:** {} / {}",
        x.val("4.2", "online"),
        x.val("4.2", "fleet")
    );
    let _ = writeln!(w, "**心跳频率:** {}秒/次", x.val("4.2", "heartbeat_s"));
    let cpu = x.val("4.2", "cpu_percent");
    let _ = writeln!(
        w,
        "**CPU使用率:** {}{} {}",
        cpu,
        if cpu.starts_with("n/a") { "" } else { "%" },
        x.bx("4.2", "cpu")
    );
    let rss = x.val("4.2", "rss_mb");
    let _ = writeln!(
        w,
        "**内存使用:** {}{} {}\n",
        rss,
        if rss.starts_with("n/a") { "" } else { "MB" },
        x.bx("4.2", "rss")
    );
    let _ = writeln!(w, "**测试结果:** {}\n", x.result("4.2"));
    let _ = writeln!(w, "---\n");

    let _ = writeln!(w, "### 4.3 数据库性能\n");
    let _ = writeln!(
        w,
        "**慢查询数量:** {} (阈值 {} ms)",
        x.val("4.3", "slow_queries"),
        x.val("4.3", "slow_query_threshold_ms")
    );
    let _ = writeln!(
        w,
        "**最慢查询时间:** {}ms",
        x.val("4.3", "slowest_query_ms")
    );
    let _ = writeln!(
        w,
        "**数据库连接池:** 使用{}/最大{}\n",
        x.val("4.3", "pool_in_use"),
        x.val("4.3", "pool_max")
    );
    let _ = writeln!(w, "**表大小:**\n");
    for t in ["devices", "orders", "cmd_logs"] {
        let _ = writeln!(w, "- {t}: {}", x.val("4.3", t));
    }
    let _ = writeln!(w, "\n**测试结果:** {}\n", x.result("4.3"));
    let _ = writeln!(w, "---\n");

    // ---- 5
    let _ = writeln!(w, "## 第五阶段：数据一致性验证\n");
    let _ = writeln!(w, "### 5.1 订单完整性\n");
    let _ = writeln!(
        w,
        "- 孤立订单数: {} (预期: 0)",
        x.val("5.1", "orphan_orders")
    );
    let _ = writeln!(
        w,
        "- 长时间未完成订单: {} (预期: 0)",
        x.val("5.1", "stale_orders")
    );
    let _ = writeln!(w, "\n**测试结果:** {}\n", x.result("5.1"));
    let _ = writeln!(w, "---\n");
    let _ = writeln!(w, "### 5.2 命令日志一致性\n");
    let _ = writeln!(w, "- 下行命令数: {}", x.val("5.2", "sent"));
    let _ = writeln!(w, "- 上行响应数: {}", x.val("5.2", "matched"));
    let rate = x.val("5.2", "match_rate_percent");
    let _ = writeln!(
        w,
        "- 匹配率: {}{}",
        rate,
        if rate.starts_with("n/a") { "" } else { "%" }
    );
    let _ = writeln!(w, "\n**测试结果:** {}\n", x.result("5.2"));
    let _ = writeln!(w, "---\n");
    let _ = writeln!(w, "### 5.3 端口状态一致性\n");
    let _ = writeln!(w, "- 检查端口数: {}", x.val("5.3", "ports_checked"));
    let _ = writeln!(w, "- 状态一致: {}", x.val("5.3", "consistent"));
    let _ = writeln!(w, "- 状态不一致: {}", x.val("5.3", "inconsistent"));
    let _ = writeln!(w, "\n**测试结果:** {}\n", x.result("5.3"));
    let _ = writeln!(w, "---\n");

    // ---- 6
    let _ = writeln!(w, "## 第六阶段：监控验证\n");
    let _ = writeln!(w, "### 6.1 Prometheus指标\n");
    for name in [
        "tcp_connections_accepted_total",
        "active_sessions",
        "orders_created_total",
        "orders_settled_total",
        "outbound_messages_sent_total",
    ] {
        let _ = writeln!(
            w,
            "- {} {name}: {}",
            x.bx("6.1", name),
            x.actual("6.1", name)
        );
    }
    let _ = writeln!(w, "\n**测试结果:** {}\n", x.result("6.1"));
    let _ = writeln!(w, "---\n");
    let _ = writeln!(w, "### 6.2 日志完整性\n");
    let _ = writeln!(w, "**日志级别分布:**\n");
    for l in ["info", "warn", "error"] {
        let _ = writeln!(w, "- {l}: {}", x.val("6.2", l));
    }
    let _ = writeln!(w, "\n**测试结果:** {}\n", x.result("6.2"));
    let _ = writeln!(w, "---\n");
    let _ = writeln!(w, "### 6.3 事件推送成功率\n");
    let _ = writeln!(
        w,
        "- 事件队列积压: {} (预期: <10)",
        x.val("6.3", "event_backlog")
    );
    let _ = writeln!(
        w,
        "- 推送成功率: {} (预期: >99%) {}",
        x.actual("6.3", "success_rate"),
        x.bx("6.3", "success_rate")
    );
    let _ = writeln!(w, "  - 判定依据: {}", x.val("6.3", "judged_by"));
    let lat = x.val("6.3", "mean_push_latency_ms");
    let _ = writeln!(
        w,
        "- 平均推送延迟: {}{} (接收端测得: {})",
        lat,
        if lat.starts_with("n/a") { "" } else { "ms" },
        x.val("6.3", "receiver_mean_latency_ms")
    );
    let _ = writeln!(w, "\n**测试结果:** {}\n", x.result("6.3"));
    let _ = writeln!(w, "---\n");

    // ---- extra cases (not in the paper record)
    let _ = writeln!(w, "## 附加场景 (X.1–X.6)\n");
    let _ = writeln!(
        w,
        "| 编号 | 场景 | 结果 | 实测 |\n|------|------|------|------|"
    );
    for id in ["X.1", "X.2", "X.3", "X.4", "X.5", "X.6"] {
        let (title, detail) = match x.case(id) {
            Some(c) => (
                c.title.clone(),
                if c.checks.is_empty() {
                    x.na(id)
                } else {
                    c.checks
                        .iter()
                        .map(|k| {
                            format!("{} {}: {}", if k.ok { "☑" } else { "☐" }, k.label, k.actual)
                        })
                        .collect::<Vec<_>>()
                        .join("<br>")
                },
            ),
            None => ("-".into(), x.na(id)),
        };
        let res = x.result(id);
        let _ = writeln!(
            w,
            "| {id} | {title} | {res} | {} |",
            detail.replace('|', "/")
        );
    }
    let _ = writeln!(w, "\n---\n");

    // ---- beyond the template (added)
    let _ = writeln!(w, "## 模板之外 (新增): 现场时序\n");
    let _ = writeln!(
        w,
        "> **本节为 pile-scenarios 新增, 不属于原测试记录模板。** 以下为模板未覆盖、但网关核心与加固工作必须处理正确的现场时序; 每项给出结论与实测值。B.1–B.5 计入验收 (B.5 仅 seed profile 运行), B.6 仅在提供 PostgreSQL URL 时运行。\n"
    );
    for (id, what) in [
        ("B.1", "启动指令写入半开连接后丢失; 设备在旧连接未超时时以新连接重连 (接管); 网关的持久化指令在新连接上重发; 订单充电并只结算一次"),
        ("B.2", "设备结束时每帧发送两次 (结束报告重复上报); 只计费一次"),
        ("B.3", "设备在线时复位, 丢失正在进行的充电 (无结束记录, 端口上报空闲); 网关按 `--reconcile-reports` 对账, 以原因 13 (ChargeLost) 结算"),
        ("B.4", "BKV 充电经历断网离线, 重连后在线结束; 按网关时钟计时, 时长≈真实充电秒数"),
        ("B.5", "接收端对所有 Webhook 连续 10 分钟回 500 (单独运行, 在其他用例之后); 熔断器打开, 故障结束后 5 分钟内所有事件各送达一次, 无死信"),
        ("B.6", "PostgreSQL 上的网关实例在充电中被杀, 设备迁移到另一实例, 订单完成"),
    ] {
        let title = x
            .case(id)
            .map(|c| c.title.clone())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(w, "### {id} {title}\n");
        let _ = writeln!(w, "**场景:** {what}\n");
        let _ = writeln!(w, "**结论:** {}\n", x.result(id));
        match x.case(id) {
            Some(c) if !c.checks.is_empty() => {
                let _ = writeln!(
                    w,
                    "| 检查项 | 预期 | 实际 | 状态 |\n|--------|------|------|------|"
                );
                for k in &c.checks {
                    let _ = writeln!(
                        w,
                        "| {} | {} | {} | {} |",
                        k.label.replace('|', "/"),
                        k.expected.replace('|', "/"),
                        k.actual.replace('|', "/"),
                        if k.ok { "☑" } else { "☐" }
                    );
                }
                let _ = writeln!(w);
            }
            _ => {
                let _ = writeln!(w, "**实测:** {}\n", x.na(id));
            }
        }
        if x.case(id).is_some_and(|c| !c.notes.is_empty()) {
            let _ = writeln!(w, "**备注:** {}\n", x.problems(id));
        }
    }
    let _ = writeln!(w, "---\n");

    // ---- summary
    let _ = writeln!(w, "## 最终验收总结\n");
    for g in &sc.groups {
        let _ = writeln!(w, "### {}\n", g.title);
        for it in &g.items {
            let _ = writeln!(
                w,
                "- {} {} (依据: {})",
                if it.ok { "☑" } else { "☐" },
                it.label,
                it.basis
            );
        }
        let n = g.items.len();
        let _ = writeln!(
            w,
            "\n**完成度:** {}/{} ({}%)\n",
            g.done(),
            n,
            (g.done() * 100).checked_div(n).unwrap_or(0)
        );
        let _ = writeln!(w, "---\n");
    }

    let _ = writeln!(w, "## 问题汇总\n");
    let _ = writeln!(
        w,
        "| 编号 | 问题描述 | 严重程度 | 发现阶段 | 状态 | 备注 |\n|------|----------|----------|----------|------|------|"
    );
    if sc.problems.is_empty() {
        let _ = writeln!(w, "| - | 无 (全部用例通过) | - | - | - | - |");
    }
    for (i, p) in sc.problems.iter().enumerate() {
        let _ = writeln!(
            w,
            "| {} | {} {}: {} | {} | {} | 待修复 | 见 report.json 用例 {} |",
            i + 1,
            p.case_id,
            p.title,
            p.description.replace('|', "/").replace('\n', " "),
            p.severity,
            p.stage,
            p.case_id
        );
    }
    let _ = writeln!(w, "\n---\n");

    let _ = writeln!(w, "## 测试结论\n");
    let _ = writeln!(w, "**总体评分:** {}/100\n", sc.total);
    let rehearsal = !score::concludes(r);
    if rehearsal {
        let _ = writeln!(
            w,
            "**是否通过验收:** ☐ 是 ☐ 否 (本次为 `{p}` profile 的演练: 时序按 CI 缩短, 不作验收结论; 签署验收须以 `pile-scenarios run --profile seed` (release 构建, 模板原时序, 4.2 为 1000 台设备) 运行并通过)\n"
        );
    } else {
        let _ = writeln!(
            w,
            "**是否通过验收:** {}\n",
            if sc.accepted {
                "☑ 是 ☐ 否"
            } else {
                "☐ 是 ☑ 否"
            }
        );
    }
    let passed = r.cases.iter().filter(|c| c.status.passed()).count();
    let not_run = r
        .cases
        .iter()
        .filter(|c| matches!(c.status, Status::NotRun(_)))
        .count();
    let _ = writeln!(w, "**建议:**");
    let _ = writeln!(
        w,
        "- 本次运行 {} 个用例: 通过 {passed}, 失败 {}, 未运行 {not_run}; 用时 {:.0} 秒。",
        r.cases.len(),
        r.cases.len() - passed - not_run,
        r.elapsed_s
    );
    let p0 = sc.problems.iter().filter(|p| p.severity == "P0").count();
    let _ = writeln!(
        w,
        "- {}",
        if rehearsal && sc.problems.is_empty() {
            "演练全部通过; 签署验收前须运行 seed profile。".to_string()
        } else if sc.problems.is_empty() {
            "全部用例通过, 可进入人工复核与上线流程。".to_string()
        } else if p0 > 0 {
            format!("存在 {p0} 个 P0 问题, 修复前不得上线; 修复后以 `pile-scenarios run --profile seed` 复测。")
        } else {
            "无 P0 问题; 修复 P1/P2 问题后复测。".to_string()
        }
    );
    let _ = writeln!(
        w,
        "- 所有实测值见同目录 report.json, CI 结果见 junit.xml{}。\n",
        if charts.is_empty() {
            String::new()
        } else {
            format!(", 图表: {}", charts.join(", "))
        }
    );
    let _ = writeln!(w, "**测试人签名:** pile-scenarios (自动生成)");
    let _ = writeln!(w, "**审核人签名:** 待人工审核");
    let _ = writeln!(w, "**日期:** {}", fmt_time(r.ended_at));
    s
}

#[cfg(test)]
mod tests {
    use super::value_text;
    use serde_json::json;

    #[test]
    fn numbers_keep_their_meaningful_digits() {
        assert_eq!(value_text(&json!(0.002)).unwrap(), "0.002");
        assert_eq!(value_text(&json!(185.3)).unwrap(), "185.3");
        assert_eq!(value_text(&json!(60.0)).unwrap(), "60");
        assert_eq!(value_text(&json!(12)).unwrap(), "12");
        assert_eq!(value_text(&json!(true)).unwrap(), "是");
        assert!(value_text(&json!(null)).is_none());
    }
}
