//! Configuration: command-line flags, each also read from a `PILE_…` environment variable,
//! over an optional TOML file (`--config`). Flags and env win over the file.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// `pile-server` command line.
#[derive(Debug, Clone, Parser, Default)]
#[command(
    name = "pile-server",
    version,
    about = "Gateway for e-bike charging piles"
)]
pub struct Cli {
    /// TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "PILE_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP API address [default: 0.0.0.0:7055].
    #[arg(long, env = "PILE_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// Device TCP address, both protocol families [default: 0.0.0.0:7065].
    #[arg(long, env = "PILE_DEVICE_LISTEN")]
    pub device_listen: Option<String>,
    /// `sqlite://pile.db` (default) or `postgres://…`.
    #[arg(long, env = "PILE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// API key (repeatable; comma-separated in the env var).
    #[arg(long = "api-key", env = "PILE_API_KEY", value_delimiter = ',')]
    pub api_keys: Vec<String>,
    #[arg(long, env = "PILE_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    #[arg(long, env = "PILE_WEBHOOK_SECRET")]
    pub webhook_secret: Option<String>,
    /// Seconds without a frame before a device is offline [default: 30].
    #[arg(long, env = "PILE_OFFLINE_AFTER")]
    pub offline_after: Option<u64>,
    /// Seconds a command for an offline device waits [default: 600].
    #[arg(long, env = "PILE_COMMAND_TTL")]
    pub command_ttl: Option<u64>,
    /// Seconds past an order's target before an absent device's order is settled [default: 1800].
    #[arg(long, env = "PILE_OFFLINE_SETTLE_GRACE")]
    pub offline_settle_grace: Option<u64>,
    #[arg(long, env = "PILE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Largest accepted request body in bytes [default: 65536].
    #[arg(long, env = "PILE_BODY_LIMIT")]
    pub body_limit: Option<usize>,
    /// Most simultaneous device connections [default: 200000].
    #[arg(long, env = "PILE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Requests per second per API key; off when absent.
    #[arg(long, env = "PILE_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Database pool size [default: 16].
    #[arg(long, env = "PILE_DB_POOL")]
    pub db_pool: Option<u32>,
    /// Offset of the devices' local clock from UTC, as `+08:00` (BKV heartbeat answers and the
    /// end times in BKV reports) [default: +08:00, China Standard Time].
    #[arg(long, env = "PILE_DEVICE_UTC_OFFSET", value_parser = parse_utc_offset, allow_hyphen_values = true)]
    pub device_utc_offset: Option<i64>,
    /// Consecutive idle reports of an open order's port before its charge is settled as lost
    /// (reason 13) [default: 3].
    #[arg(long, env = "PILE_RECONCILE_REPORTS")]
    pub reconcile_reports: Option<u32>,
    /// …spanning at least this many seconds [default: 60].
    #[arg(long, env = "PILE_RECONCILE_AFTER")]
    pub reconcile_after: Option<u64>,
    // #13 delivery/retention: flags in `DeliveryFlags` below.
    #[command(flatten)]
    pub delivery: DeliveryFlags,
}

/// `+08:00`, `-05:30`, `+8`, `0` → seconds east of UTC.
pub fn parse_utc_offset(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => (1, t),
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        None => (rest, "0"),
    };
    let bad = || format!("`{s}` is not a UTC offset like +08:00");
    let h: i64 = h.parse().map_err(|_| bad())?;
    let m: i64 = m.parse().map_err(|_| bad())?;
    if !(0..=14).contains(&h) || !(0..60).contains(&m) {
        return Err(bad());
    }
    Ok(sign * (h * 3600 + m * 60))
}

/// The file form: the same settings, all optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub http_listen: Option<String>,
    pub device_listen: Option<String>,
    pub database_url: Option<String>,
    #[serde(default)]
    pub api_keys: Vec<String>,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    pub offline_after: Option<u64>,
    pub command_ttl: Option<u64>,
    pub offline_settle_grace: Option<u64>,
    pub log_format: Option<LogFormat>,
    pub body_limit: Option<usize>,
    pub max_connections: Option<usize>,
    pub rate_limit: Option<u32>,
    pub db_pool: Option<u32>,
    pub device_utc_offset: Option<String>,
    pub reconcile_reports: Option<u32>,
    pub reconcile_after: Option<u64>,
    // #13 delivery/retention (durations as in the flags: `30s`, `5m`, `2h`, `7d`, `off`).
    pub webhook_retry_schedule: Option<String>,
    pub webhook_breaker_failures: Option<u32>,
    pub webhook_probe_interval: Option<String>,
    pub retain_events: Option<String>,
    pub retain_command_logs: Option<String>,
    pub retain_progress: Option<String>,
    pub retention_interval: Option<String>,
    pub retention_batch: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{path}: device_utc_offset: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: {field}: {reason}")]
    InvalidField {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
}

/// The resolved settings the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub http_listen: String,
    pub device_listen: String,
    pub database_url: String,
    pub api_keys: Vec<String>,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    pub offline_after: Duration,
    pub command_ttl: Duration,
    pub offline_settle_grace: Duration,
    pub log_format: LogFormat,
    pub body_limit: usize,
    pub max_connections: usize,
    pub rate_limit: Option<u32>,
    pub db_pool: u32,
    /// Sockets that never send a valid frame are closed after this long.
    pub first_frame_timeout: Duration,
    /// How often the batched writer flushes.
    pub flush_interval: Duration,
    /// An unanswered device command is resent once after this long (vendor rule: 15 s).
    pub command_resend_after: Duration,
    /// Seconds east of UTC of the devices' local clock.
    pub device_utc_offset_sec: i64,
    pub reconcile: crate::domain::ReconcileRule,
    /// #13 delivery/retention: webhook retry schedule and breaker.
    pub delivery: DeliverySettings,
    /// #13 delivery/retention: what the maintenance task prunes, and when.
    pub retention: crate::retention::RetentionPolicy,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_listen: "0.0.0.0:7055".into(),
            device_listen: "0.0.0.0:7065".into(),
            database_url: "sqlite://pile.db".into(),
            api_keys: Vec::new(),
            webhook_url: None,
            webhook_secret: None,
            offline_after: Duration::from_secs(30),
            command_ttl: Duration::from_secs(600),
            offline_settle_grace: Duration::from_secs(30 * 60),
            log_format: LogFormat::Pretty,
            body_limit: 64 * 1024,
            max_connections: 200_000,
            rate_limit: None,
            db_pool: 16,
            first_frame_timeout: Duration::from_secs(10),
            flush_interval: Duration::from_millis(200),
            command_resend_after: Duration::from_secs(15),
            device_utc_offset_sec: 8 * 3600,
            reconcile: crate::domain::ReconcileRule::default(),
            delivery: DeliverySettings::default(),
            retention: crate::retention::RetentionPolicy::default(),
        }
    }
}

impl Config {
    /// Flags and env over the file over the defaults.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source,
                })?
            }
            None => FileConfig::default(),
        };
        if let (Some(path), Some(off)) = (&cli.config, &file.device_utc_offset) {
            parse_utc_offset(off).map_err(|reason| ConfigError::Invalid {
                path: path.clone(),
                reason,
            })?;
        }
        if let Some(path) = &cli.config {
            check_delivery_file(&file).map_err(|(field, reason)| ConfigError::InvalidField {
                path: path.clone(),
                field,
                reason,
            })?;
        }
        Ok(Self::merge(cli, file))
    }

    pub fn merge(cli: Cli, file: FileConfig) -> Config {
        let d = Config::default();
        let secs = Duration::from_secs;
        // #13 delivery/retention
        let (delivery, retention) = (
            DeliverySettings::merge(&cli.delivery, &file),
            crate::retention::RetentionPolicy::merge(&cli.delivery, &file),
        );
        Config {
            http_listen: cli
                .http_listen
                .or(file.http_listen)
                .unwrap_or(d.http_listen),
            device_listen: cli
                .device_listen
                .or(file.device_listen)
                .unwrap_or(d.device_listen),
            database_url: cli
                .database_url
                .or(file.database_url)
                .unwrap_or(d.database_url),
            api_keys: if cli.api_keys.is_empty() {
                file.api_keys
            } else {
                cli.api_keys
            }
            .into_iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect(),
            webhook_url: cli.webhook_url.or(file.webhook_url),
            webhook_secret: cli.webhook_secret.or(file.webhook_secret),
            offline_after: cli
                .offline_after
                .or(file.offline_after)
                .map(secs)
                .unwrap_or(d.offline_after),
            command_ttl: cli
                .command_ttl
                .or(file.command_ttl)
                .map(secs)
                .unwrap_or(d.command_ttl),
            offline_settle_grace: cli
                .offline_settle_grace
                .or(file.offline_settle_grace)
                .map(secs)
                .unwrap_or(d.offline_settle_grace),
            log_format: cli.log_format.or(file.log_format).unwrap_or(d.log_format),
            body_limit: cli.body_limit.or(file.body_limit).unwrap_or(d.body_limit),
            max_connections: cli
                .max_connections
                .or(file.max_connections)
                .unwrap_or(d.max_connections),
            rate_limit: cli.rate_limit.or(file.rate_limit).filter(|r| *r > 0),
            db_pool: cli.db_pool.or(file.db_pool).unwrap_or(d.db_pool),
            device_utc_offset_sec: cli
                .device_utc_offset
                .or(file
                    .device_utc_offset
                    .as_deref()
                    .and_then(|o| parse_utc_offset(o).ok()))
                .unwrap_or(d.device_utc_offset_sec),
            reconcile: crate::domain::ReconcileRule {
                idle_reports: cli
                    .reconcile_reports
                    .or(file.reconcile_reports)
                    .unwrap_or(d.reconcile.idle_reports)
                    .max(1),
                after_ms: cli
                    .reconcile_after
                    .or(file.reconcile_after)
                    .map_or(d.reconcile.after_ms, |s| s as i64 * 1000),
            },
            delivery,
            retention,
            ..d
        }
    }
}

// ---- #13 delivery/retention -------------------------------------------------------------
// Webhook retry schedule and circuit breaker, and the retention of delivered events, command
// logs and progress samples. Durations read `500ms`, `30s`, `5m`, `2h`, `7d` (a bare number
// is seconds); retention ages also `off` (keep forever).

/// The #13 flags (flattened into [`Cli`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DeliveryFlags {
    /// Waits between webhook attempts, comma-separated; the failure after the last is final
    /// (dead letter) [default: 5s,5m,30m,2h,5h,10h,10h, about 27.6 h in all].
    #[arg(long, env = "PILE_WEBHOOK_RETRY_SCHEDULE", value_parser = parse_schedule)]
    pub webhook_retry_schedule: Option<Schedule>,
    /// Failed webhook attempts in a row that open the endpoint's circuit breaker; while open,
    /// events wait without spending attempts [default: 5].
    #[arg(long, env = "PILE_WEBHOOK_BREAKER_FAILURES", value_parser = clap::value_parser!(u32).range(1..))]
    pub webhook_breaker_failures: Option<u32>,
    /// While the breaker is open, one probe at most this often [default: 30s].
    #[arg(long, env = "PILE_WEBHOOK_PROBE_INTERVAL", value_parser = parse_duration)]
    pub webhook_probe_interval: Option<Duration>,
    /// Delivered (and switched-off) outbox events are deleted this long after delivery;
    /// without --webhook-url, undelivered ones this long after they were written [default: 7d].
    #[arg(long, env = "PILE_RETAIN_EVENTS", value_parser = parse_retention)]
    pub retain_events: Option<Retain>,
    /// Finished command-log rows (acked, refused, expired, superseded) of devices and settled
    /// orders are deleted at this age [default: 30d].
    #[arg(long, env = "PILE_RETAIN_COMMAND_LOGS", value_parser = parse_retention)]
    pub retain_command_logs: Option<Retain>,
    /// Progress samples of settled orders are deleted at this age (orders, settlements and end
    /// reports are kept) [default: 30d].
    #[arg(long, env = "PILE_RETAIN_PROGRESS", value_parser = parse_retention)]
    pub retain_progress: Option<Retain>,
    /// How often the retention task runs [default: 5m].
    #[arg(long, env = "PILE_RETENTION_INTERVAL", value_parser = parse_duration)]
    pub retention_interval: Option<Duration>,
    /// Rows deleted per statement (each its own short transaction) [default: 500].
    #[arg(long, env = "PILE_RETENTION_BATCH", value_parser = clap::value_parser!(u32).range(1..))]
    pub retention_batch: Option<u32>,
}

/// A retry schedule (a newtype so clap takes the whole list as one value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(pub Vec<Duration>);

/// A retention age; `None` keeps forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retain(pub Option<Duration>);

/// The webhook dispatcher's retry schedule and breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    pub retry_schedule: Vec<Duration>,
    pub breaker_failures: u32,
    pub probe_interval: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        use crate::events::dispatcher as d;
        DeliverySettings {
            retry_schedule: d::DEFAULT_RETRY_SCHEDULE.to_vec(),
            breaker_failures: d::DEFAULT_BREAKER_FAILURES,
            probe_interval: d::DEFAULT_PROBE_INTERVAL,
        }
    }
}

impl DeliverySettings {
    fn merge(cli: &DeliveryFlags, file: &FileConfig) -> Self {
        let d = DeliverySettings::default();
        DeliverySettings {
            retry_schedule: cli
                .webhook_retry_schedule
                .clone()
                .or_else(|| {
                    file.webhook_retry_schedule
                        .as_deref()
                        .and_then(|s| parse_schedule(s).ok())
                })
                .map_or(d.retry_schedule, |s| s.0),
            breaker_failures: cli
                .webhook_breaker_failures
                .or(file.webhook_breaker_failures)
                .unwrap_or(d.breaker_failures)
                .max(1),
            probe_interval: cli
                .webhook_probe_interval
                .or_else(|| file_duration(&file.webhook_probe_interval))
                .unwrap_or(d.probe_interval),
        }
    }
}

pub(crate) fn file_duration(v: &Option<String>) -> Option<Duration> {
    v.as_deref().and_then(|s| parse_duration(s).ok())
}

pub(crate) fn file_retain(v: &Option<String>) -> Option<Retain> {
    v.as_deref().and_then(|s| parse_retention(s).ok())
}

/// The file's #13 values parse (the flags are checked by clap).
fn check_delivery_file(f: &FileConfig) -> Result<(), (&'static str, String)> {
    if let Some(s) = &f.webhook_retry_schedule {
        parse_schedule(s).map_err(|e| ("webhook_retry_schedule", e))?;
    }
    for (field, v) in [
        ("webhook_probe_interval", &f.webhook_probe_interval),
        ("retention_interval", &f.retention_interval),
    ] {
        if let Some(s) = v {
            parse_duration(s).map_err(|e| (field, e))?;
        }
    }
    for (field, v) in [
        ("retain_events", &f.retain_events),
        ("retain_command_logs", &f.retain_command_logs),
        ("retain_progress", &f.retain_progress),
    ] {
        if let Some(s) = v {
            parse_retention(s).map_err(|e| (field, e))?;
        }
    }
    Ok(())
}

/// `500ms`, `30s`, `5m`, `2h`, `7d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("`{s}` is not a duration like 30s, 5m, 2h or 7d");
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(ms).map(Duration::from_millis).ok_or_else(bad)
}

/// A comma-separated list of durations, at least one.
pub fn parse_schedule(s: &str) -> Result<Schedule, String> {
    let waits = s
        .split(',')
        .map(parse_duration)
        .collect::<Result<Vec<_>, _>>()?;
    if waits.is_empty() || waits.len() > 50 {
        return Err(format!("`{s}` must list 1 to 50 waits"));
    }
    Ok(Schedule(waits))
}

/// A duration, or `off` (keep forever).
pub fn parse_retention(s: &str) -> Result<Retain, String> {
    match s.trim() {
        "off" | "never" => Ok(Retain(None)),
        t => parse_duration(t).map(|d| Retain(Some(d))),
    }
}
// ---- end #13 delivery/retention ----------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_issue() {
        let c = Config::merge(Cli::default(), FileConfig::default());
        assert_eq!(c.http_listen, "0.0.0.0:7055");
        assert_eq!(c.device_listen, "0.0.0.0:7065");
        assert_eq!(c.database_url, "sqlite://pile.db");
        assert_eq!(c.offline_after, Duration::from_secs(30));
        assert_eq!(c.command_ttl, Duration::from_secs(600));
        assert_eq!(c.offline_settle_grace, Duration::from_secs(1800));
        assert_eq!(c.rate_limit, None);
        assert_eq!(c.device_utc_offset_sec, 8 * 3600);
        assert_eq!(c.reconcile.idle_reports, 3);
        // #13 delivery/retention
        let h = 3600;
        assert_eq!(
            c.delivery.retry_schedule,
            [5, 300, 1800, 2 * h, 5 * h, 10 * h, 10 * h].map(Duration::from_secs)
        );
        assert_eq!(c.delivery.breaker_failures, 5);
        assert_eq!(c.delivery.probe_interval, Duration::from_secs(30));
        let day = Duration::from_secs(86_400);
        assert_eq!(c.retention.events, Some(7 * day));
        assert_eq!(c.retention.command_logs, Some(30 * day));
        assert_eq!(c.retention.progress, Some(30 * day));
        assert_eq!(c.retention.interval, Duration::from_secs(300));
        assert_eq!(c.retention.batch, 500);
    }

    #[test]
    fn delivery_and_retention_flags_read_durations() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_schedule("5s,,1h").is_err());
        let cli = Cli::parse_from([
            "pile-server",
            "--webhook-retry-schedule",
            "1s,1m",
            "--retain-events",
            "off",
            "--retain-progress",
            "2d",
        ]);
        let file: FileConfig =
            toml::from_str("retain_progress = \"1d\"\nwebhook_probe_interval = \"10s\"\n").unwrap();
        let c = Config::merge(cli, file);
        assert_eq!(
            c.delivery.retry_schedule,
            [Duration::from_secs(1), Duration::from_secs(60)]
        );
        assert_eq!(c.delivery.probe_interval, Duration::from_secs(10));
        assert_eq!(c.retention.events, None, "off keeps forever");
        assert_eq!(c.retention.progress, Some(Duration::from_secs(2 * 86_400)));
        assert!(Cli::try_parse_from(["pile-server", "--retain-events", "soon"]).is_err());
    }

    #[test]
    fn the_device_utc_offset_reads_like_a_clock() {
        assert_eq!(parse_utc_offset("+08:00"), Ok(28_800));
        assert_eq!(parse_utc_offset("-05:30"), Ok(-19_800));
        assert_eq!(parse_utc_offset("0"), Ok(0));
        assert_eq!(parse_utc_offset("+8"), Ok(28_800));
        assert!(parse_utc_offset("+25:00").is_err());
        assert!(parse_utc_offset("CST").is_err());
        let cli = Cli::parse_from(["pile-server", "--device-utc-offset", "-03:00"]);
        let c = Config::merge(cli, FileConfig::default());
        assert_eq!(c.device_utc_offset_sec, -10_800);
    }

    #[test]
    fn flags_win_over_the_file() {
        let cli = Cli::parse_from([
            "pile-server",
            "--http-listen",
            "127.0.0.1:1",
            "--api-key",
            "a",
            "--api-key",
            "b",
            "--offline-after",
            "3",
            "--log-format",
            "json",
        ]);
        let file: FileConfig =
            toml::from_str("http_listen = \"127.0.0.1:2\"\ndevice_listen = \"127.0.0.1:3\"\n")
                .unwrap();
        let c = Config::merge(cli, file);
        assert_eq!(c.http_listen, "127.0.0.1:1");
        assert_eq!(c.device_listen, "127.0.0.1:3");
        assert_eq!(c.api_keys, vec!["a", "b"]);
        assert_eq!(c.offline_after, Duration::from_secs(3));
        assert_eq!(c.log_format, LogFormat::Json);
    }
}
