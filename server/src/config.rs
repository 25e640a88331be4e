//! Configuration: command-line flags, each also read from a `PILE_…` environment variable,
//! over an optional TOML file (`--config`). Flags and env win over the file.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use secrecy::{ExposeSecret, SecretString};
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
    /// API key (repeatable; comma-separated in the env var). The configured set is the whole
    /// set: a key removed here stops working at the next start. Two keys may be configured at
    /// once while clients rotate. None configured: one is generated on first start.
    #[arg(
        long = "api-key",
        env = "PILE_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<SecretString>,
    #[arg(long, env = "PILE_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// HMAC key of webhook signatures; required with --webhook-url (an empty one is refused)
    /// unless --allow-unsigned-webhooks.
    #[arg(long, env = "PILE_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<SecretString>,
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

    // #13 limits/keys
    /// Start with --webhook-url but no (or an empty) --webhook-secret: webhooks then carry a
    /// signature made with an empty key, which proves nothing [default: refused at start-up].
    #[arg(long, env = "PILE_ALLOW_UNSIGNED_WEBHOOKS")]
    pub allow_unsigned_webhooks: bool,
    /// Failed API-key attempts per source address per minute; past it every keyed request
    /// from the address answers 429 with Retry-After until the minute ends; 0: off [default: 20].
    #[arg(long, env = "PILE_AUTH_FAILURES_PER_MINUTE")]
    pub auth_failures_per_minute: Option<u32>,
    /// Most simultaneous HTTP connections; more are closed at once [default: 1024].
    #[arg(long, env = "PILE_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// Seconds a connection may take to send a request's headers, counted from the moment it
    /// waits for a request — so also the idle keep-alive timeout [default: 10].
    #[arg(long, env = "PILE_HTTP_HEADER_TIMEOUT")]
    pub http_header_timeout: Option<u64>,
    /// Seconds from a request's headers to its answer, reading the body included; past it the
    /// answer is 408 [default: 30].
    #[arg(long, env = "PILE_HTTP_REQUEST_TIMEOUT")]
    pub http_request_timeout: Option<u64>,
    /// File descriptors kept out of both connection caps (database, webhooks, logs); the HTTP
    /// and device caps are lowered so that together they stay under RLIMIT_NOFILE minus this
    /// [default: 256].
    #[arg(long, env = "PILE_FD_RESERVE")]
    pub fd_reserve: Option<usize>,
    /// `FILE` (one device ID a line, `#` comments) or `off`: only listed IDs may connect
    /// [default: off].
    #[arg(long, env = "PILE_DEVICE_ALLOWLIST")]
    pub device_allowlist: Option<String>,
    /// New (unknown) device IDs registered per minute at most (a bucket of this size, refilled
    /// over a minute); past it the connection is refused; 0: off [default: 20000 — a first-time
    /// fleet of one process's worth of piles registers at once].
    #[arg(long, env = "PILE_DEVICE_REGISTRATIONS_PER_MINUTE")]
    pub device_registrations_per_minute: Option<u32>,
    /// Connections of one device ID per minute past which it is held off (flapping); 0: off
    /// [default: 15].
    #[arg(long, env = "PILE_DEVICE_FLAP_MAX")]
    pub device_flap_max: Option<u32>,
    /// Seconds a flapping device ID is held off [default: 300].
    #[arg(long, env = "PILE_DEVICE_FLAP_HOLD")]
    pub device_flap_hold: Option<u64>,
    /// Seconds the frame ring of a device that is no longer online is kept [default: 86400].
    #[arg(long, env = "PILE_FRAME_RING_TTL")]
    pub frame_ring_ttl: Option<u64>,
    // -- issue #17: several instances on one PostgreSQL ------------------------------------
    /// This instance's ID among the gateways sharing a PostgreSQL database [default: host
    /// name and a random suffix]. Refused with SQLite, which is single-instance.
    #[arg(long, env = "PILE_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Seconds between an instance's beats (lease renewals); a lease expires after 3× this
    /// [default: 5].
    #[arg(long, env = "PILE_LEASE_RENEW")]
    pub lease_renew: Option<u64>,
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
    pub api_keys: Vec<SecretString>,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<SecretString>,
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
    // #13 limits/keys
    #[serde(default)]
    pub allow_unsigned_webhooks: bool,
    pub auth_failures_per_minute: Option<u32>,
    pub http_max_connections: Option<usize>,
    pub http_header_timeout: Option<u64>,
    pub http_request_timeout: Option<u64>,
    pub fd_reserve: Option<usize>,
    pub device_allowlist: Option<String>,
    pub device_registrations_per_minute: Option<u32>,
    pub device_flap_max: Option<u32>,
    pub device_flap_hold: Option<u64>,
    pub frame_ring_ttl: Option<u64>,
    // issue #17
    pub instance_id: Option<String>,
    pub lease_renew: Option<u64>,
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
    pub api_keys: Vec<SecretString>,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<SecretString>,
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
    // #13 limits/keys
    pub allow_unsigned_webhooks: bool,
    /// 0: off.
    pub auth_failures_per_minute: u32,
    pub http_max_connections: usize,
    pub http_header_timeout: Duration,
    pub http_request_timeout: Duration,
    pub fd_reserve: usize,
    pub device_allowlist: Option<PathBuf>,
    /// 0: off.
    pub device_registrations_per_minute: u32,
    /// 0: off.
    pub device_flap_max: u32,
    pub device_flap_hold: Duration,
    pub frame_ring_ttl: Duration,
    /// Several instances on one PostgreSQL (issue #17).
    pub cluster: crate::cluster::Settings,
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
            // #13 limits/keys
            allow_unsigned_webhooks: false,
            auth_failures_per_minute: 20,
            http_max_connections: 1024,
            http_header_timeout: Duration::from_secs(10),
            http_request_timeout: Duration::from_secs(30),
            fd_reserve: 256,
            device_allowlist: None,
            device_registrations_per_minute: 20_000,
            device_flap_max: 15,
            device_flap_hold: Duration::from_secs(300),
            frame_ring_ttl: Duration::from_secs(24 * 3600),
            cluster: crate::cluster::Settings::default(),
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
            .map(|k| k.expose_secret().trim().to_string())
            .filter(|k| !k.is_empty())
            .map(SecretString::from)
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
            // #13 limits/keys
            allow_unsigned_webhooks: cli.allow_unsigned_webhooks || file.allow_unsigned_webhooks,
            auth_failures_per_minute: cli
                .auth_failures_per_minute
                .or(file.auth_failures_per_minute)
                .unwrap_or(d.auth_failures_per_minute),
            http_max_connections: cli
                .http_max_connections
                .or(file.http_max_connections)
                .unwrap_or(d.http_max_connections)
                .max(1),
            http_header_timeout: cli
                .http_header_timeout
                .or(file.http_header_timeout)
                .map(secs)
                .unwrap_or(d.http_header_timeout),
            http_request_timeout: cli
                .http_request_timeout
                .or(file.http_request_timeout)
                .map(secs)
                .unwrap_or(d.http_request_timeout),
            fd_reserve: cli.fd_reserve.or(file.fd_reserve).unwrap_or(d.fd_reserve),
            device_allowlist: cli
                .device_allowlist
                .or(file.device_allowlist)
                .filter(|a| !a.trim().is_empty() && !a.trim().eq_ignore_ascii_case("off"))
                .map(PathBuf::from),
            device_registrations_per_minute: cli
                .device_registrations_per_minute
                .or(file.device_registrations_per_minute)
                .unwrap_or(d.device_registrations_per_minute),
            device_flap_max: cli
                .device_flap_max
                .or(file.device_flap_max)
                .unwrap_or(d.device_flap_max),
            device_flap_hold: cli
                .device_flap_hold
                .or(file.device_flap_hold)
                .map(secs)
                .unwrap_or(d.device_flap_hold),
            frame_ring_ttl: cli
                .frame_ring_ttl
                .or(file.frame_ring_ttl)
                .map(secs)
                .unwrap_or(d.frame_ring_ttl),
            cluster: crate::cluster::Settings {
                instance_id: cli.instance_id.or(file.instance_id),
                renew: cli
                    .lease_renew
                    .or(file.lease_renew)
                    .map(secs)
                    .unwrap_or(d.cluster.renew),
                ..d.cluster.clone()
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
        // #13 limits/keys
        assert!(!c.allow_unsigned_webhooks);
        assert_eq!(c.auth_failures_per_minute, 20);
        assert_eq!(c.http_max_connections, 1024);
        assert_eq!(c.http_header_timeout, Duration::from_secs(10));
        assert_eq!(c.http_request_timeout, Duration::from_secs(30));
        assert_eq!(c.fd_reserve, 256);
        assert_eq!(c.device_allowlist, None);
        assert_eq!(c.device_registrations_per_minute, 20_000);
        assert_eq!(c.device_flap_max, 15);
        assert_eq!(c.device_flap_hold, Duration::from_secs(300));
        assert_eq!(c.frame_ring_ttl, Duration::from_secs(86_400));
    }

    #[test]
    fn secrets_never_print() {
        let cli = Cli::parse_from([
            "pile-server",
            "--api-key",
            "k-very-secret",
            "--webhook-secret",
            "w-very-secret",
            "--device-allowlist",
            "off",
        ]);
        let c = Config::merge(cli.clone(), FileConfig::default());
        let printed = format!("{cli:?} {c:?}");
        assert!(!printed.contains("very-secret"), "{printed}");
        assert_eq!(c.device_allowlist, None);
        let file: FileConfig =
            toml::from_str("api_keys = [\"f-very-secret\"]\nwebhook_secret = \"x\"\n").unwrap();
        assert!(!format!("{file:?}").contains("very-secret"));
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
        let keys: Vec<&str> = c.api_keys.iter().map(|k| k.expose_secret()).collect();
        assert_eq!(keys, vec!["a", "b"]);
        assert_eq!(c.offline_after, Duration::from_secs(3));
        assert_eq!(c.log_format, LogFormat::Json);
    }
}
