//! The cases of `shared/design/SCENARIOS.md`, as a table of async functions over a [`Ctx`].
//! Each returns a [`CaseResult`] with every measured value; the runner decides pass/fail from
//! its checks.

pub mod beyond;
pub mod charge;
pub mod common;
pub mod extra;
pub mod faults;
pub mod ops;
pub mod perf;
pub mod setup;

use futures::future::BoxFuture;

use crate::report::CaseResult;
use crate::stack::Ctx;

/// When a case runs. Cases of one phase run concurrently, on different piles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Environment checks before anything charges.
    Setup,
    /// The charging and fault cases, all at once.
    Main,
    /// Cases that disturb everything else (X.3 restarts the gateway).
    Exclusive,
    /// Figures read after all the above (database, consistency, metrics, logs).
    After,
    /// Beyond the template (B.x): after the record's own figures are read, so their faults
    /// do not colour them.
    Beyond,
    /// B.5 alone: the webhook receiver refuses every delivery for 10 minutes, which would
    /// fail every other case's webhook checks.
    Outage,
}

pub type CaseFn = for<'a> fn(&'a Ctx) -> BoxFuture<'a, CaseResult>;

/// One row of the case table.
pub struct CaseDef {
    pub id: &'static str,
    pub title: &'static str,
    pub phase: Phase,
    pub run: CaseFn,
}

macro_rules! case {
    ($id:literal, $title:literal, $phase:ident, $f:path) => {
        CaseDef {
            id: $id,
            title: $title,
            phase: Phase::$phase,
            run: |ctx| Box::pin($f(ctx)),
        }
    };
}

/// Every case, in the record's order.
pub fn all() -> Vec<CaseDef> {
    vec![
        case!("1.1", "服务器健康检查", Setup, setup::health),
        case!("1.2", "设备在线状态", Setup, setup::devices_online),
        case!("1.3", "Webhook配置", Setup, setup::webhook),
        case!("1.4", "API认证", Setup, setup::auth),
        case!("2.1", "按时长充电", Main, charge::by_time),
        case!("2.2", "远程停止充电", Main, charge::remote_stop),
        case!("3.1", "充电中设备断网", Main, faults::network_drop),
        case!("3.2", "端口占用冲突", Main, faults::port_busy),
        case!("3.3", "多端口并发充电", Main, faults::four_ports),
        case!("4.1", "API并发测试", Main, perf::api_load),
        case!("4.2", "心跳处理性能", Main, perf::heartbeats),
        case!("4.3", "数据库性能", After, perf::database),
        case!("5.1", "订单完整性", After, ops::orders),
        case!("5.2", "命令日志一致性", After, ops::commands),
        case!("5.3", "端口状态一致性", After, ops::ports),
        case!("6.1", "Prometheus指标", After, ops::metrics),
        case!("6.2", "日志完整性", After, ops::logs),
        case!("6.3", "事件推送成功率", After, ops::push),
        case!(
            "X.1",
            "离线设备下单, 上线后下发",
            Main,
            extra::offline_start
        ),
        case!("X.2", "重复订单号幂等", Main, extra::idempotent),
        case!("X.3", "充电中重启网关", Exclusive, extra::restart),
        case!(
            "X.4",
            "Webhook接收端故障后恢复",
            Main,
            extra::webhook_outage
        ),
        case!("X.5", "异常报文与正常充电并存", Main, extra::bad_frames),
        case!("X.6", "AP3000 按时长充电与远程停止", Main, extra::ap3000),
        case!("B.1", "启动指令丢失后接管重发", Beyond, beyond::lost_start),
        case!("B.2", "结束报告重复上报", Beyond, beyond::resent_end),
        case!("B.3", "在线时充电丢失", Beyond, beyond::charge_lost),
        case!("B.4", "BKV 重连后结束", Beyond, beyond::end_after_reconnect),
        case!(
            "B.5",
            "Webhook接收端10分钟故障",
            Outage,
            beyond::long_outage
        ),
        case!(
            "B.6",
            "网关实例中途被杀, 设备迁移",
            Beyond,
            beyond::instance_killed
        ),
    ]
}

/// Why a case does not apply to this run (it is left out, and the record says why), or
/// `None` when it runs.
pub fn omitted(id: &str, profile: &str, database_url: Option<&str>) -> Option<&'static str> {
    match id {
        "B.5" if profile != "seed" => Some("仅 seed profile 运行 (10 分钟接收端故障)"),
        "B.6" if !database_url.is_some_and(|u| u.starts_with("postgres")) => {
            Some("仅在提供 PostgreSQL URL (--database-url postgres://…) 时运行")
        }
        _ => None,
    }
}

/// The cases whose failure or absence keeps the record from being accepted: the template's
/// (1.x–6.x), X.1–X.6, and B.1–B.5. B.6 counts only when it ran.
pub fn required(id: &str) -> bool {
    id != "B.6"
}

/// The case IDs, in order.
pub fn ids() -> Vec<&'static str> {
    all().iter().map(|c| c.id).collect()
}

#[cfg(test)]
mod tests;
