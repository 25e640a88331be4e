//! Every SQL statement of the gateway lives here. SQLite (default) and PostgreSQL run the same
//! statements through sqlx's `Any` driver: `$n` placeholders, BIGINT columns, 0/1 flags.
//! Migrations are embedded, one directory per database (`migrations/sqlite`, `…/postgres`).
//!
//! Invariants kept by the schema, not only by code: one order per client `order_no`
//! (unique), one active order per port (partial unique index), one settlement per order
//! (primary key). Each state change writes its outbox events in the same transaction.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pile_api::OrderStatus;
use serde_json::Value;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

pub mod outbox;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("port is busy")]
    PortBusy { order_no: String },
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("bad stored value: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// A unique-constraint violation (the API answers 409).
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Db(e) => e
                .as_database_error()
                .is_some_and(|d| d.is_unique_violation()),
            StoreError::Conflict(_) | StoreError::PortBusy { .. } => true,
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Counters of query timing for `/api/v1/admin/stats`.
#[derive(Debug, Default)]
pub struct QueryStats {
    pub slow: AtomicU64,
    pub slowest_ms: AtomicU64,
}

/// Queries slower than this count as slow.
pub const SLOW_QUERY_MS: u64 = 200;

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    max_connections: u32,
    stats: Arc<QueryStats>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

// ---------------------------------------------------------------------------------------------
// Rows

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRow {
    pub device_id: String,
    pub protocol: String,
    pub online: bool,
    pub last_seen_at: Option<i64>,
    pub connected_at: Option<i64>,
    pub remote_addr: Option<String>,
    pub firmware: Option<String>,
    pub signal: Option<i64>,
    pub port_count: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PortRow {
    pub device_id: String,
    pub port_no: i64,
    pub socket_no: Option<i64>,
    pub hole: Option<i64>,
    pub status: String,
    pub power_dw: i64,
    pub reported_status: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderRow {
    pub order_no: String,
    pub device_id: String,
    pub port_no: i64,
    pub status: OrderStatus,
    pub charge_mode: i64,
    pub target_duration: i64,
    pub target_energy_wh: i64,
    pub amount: i64,
    pub price_per_kwh: i64,
    pub service_fee: i64,
    pub device_ref: Option<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    pub last_report_at_ms: Option<i64>,
    pub duration_sec: i64,
    pub energy_wh: i64,
    pub current_power_dw: i64,
    pub peak_power_dw: i64,
    pub energy_fee: i64,
    pub service_fee_amount: i64,
    pub final_amount: i64,
    pub end_reason: Option<i64>,
    pub device_duration_sec: Option<i64>,
    pub offline_replayed: bool,
    pub was_offline: bool,
    pub stop_requested: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProgressRow {
    pub at_ms: i64,
    pub duration_sec: i64,
    pub energy_wh: i64,
    pub power_dw: i64,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CmdRow {
    pub id: i64,
    pub device_id: String,
    pub order_no: Option<String>,
    pub command: String,
    pub payload: String,
    pub status: String,
    pub attempts: i64,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
}

/// A new order with its queued command and its `order.created` event.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub order_no: String,
    pub device_id: String,
    pub port_no: i64,
    pub charge_mode: i64,
    pub target_duration: i64,
    pub target_energy_wh: i64,
    pub amount: i64,
    pub price_per_kwh: i64,
    pub service_fee: i64,
    pub device_ref: String,
    pub now_ms: i64,
    pub expires_at_ms: i64,
    /// The start command, serialised; queued in `cmd_logs`.
    pub command: String,
    pub command_payload: String,
}

#[derive(Debug, Clone)]
pub enum CreateOutcome {
    Created {
        order: OrderRow,
        command_id: i64,
    },
    /// The client's `order_no` already exists: the same order back.
    Existing(OrderRow),
}

/// The figures a settlement writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    pub order_no: String,
    pub at_ms: i64,
    /// `device` or `server`.
    pub source: &'static str,
    pub duration_sec: i64,
    pub device_duration_sec: Option<i64>,
    pub energy_wh: i64,
    pub peak_power_dw: i64,
    pub energy_fee: i64,
    pub service_fee_amount: i64,
    pub final_amount: i64,
    pub end_reason: i64,
    pub offline_replayed: bool,
    pub detail: String,
}

/// One event to put in the outbox.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_type: &'static str,
    pub device_id: String,
    pub order_no: Option<String>,
    pub data: Value,
}

/// Work the batched writer hands in; one transaction per batch.
#[derive(Debug, Clone)]
pub enum BatchOp {
    /// A device connected: created (with `device.registered`) when new, refreshed when known,
    /// with its `device.online` event; the same rows and events as [`Store::device_online`].
    Online(DeviceOnline),
    /// Registration data (firmware, signal, port count); queued behind the device's `Online`
    /// so it lands on the row even when that row is created in the same batch.
    Info {
        device_id: String,
        firmware: Option<String>,
        signal: Option<i64>,
        port_count: Option<i64>,
        now: i64,
    },
    /// A device went away.
    Offline {
        device_id: String,
        last_seen_at: i64,
        now: i64,
    },
    Liveness {
        device_id: String,
        last_seen_at: i64,
    },
    Port {
        device_id: String,
        port_no: i64,
        socket_no: Option<i64>,
        hole: Option<i64>,
        status: String,
        power_dw: i64,
        at: i64,
        /// Writes a `socket.state_changed` event.
        status_changed: bool,
    },
    Progress {
        order_no: String,
        device_id: String,
        at_ms: i64,
        duration_sec: i64,
        energy_wh: i64,
        power_dw: i64,
        status: String,
    },
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

fn order_from_row(r: &AnyRow) -> Result<OrderRow> {
    let status: String = r.try_get("status")?;
    let status = OrderStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("order status {status}")))?;
    Ok(OrderRow {
        order_no: r.try_get("order_no")?,
        device_id: r.try_get("device_id")?,
        port_no: r.try_get("port_no")?,
        status,
        charge_mode: r.try_get("charge_mode")?,
        target_duration: r.try_get("target_duration")?,
        target_energy_wh: r.try_get("target_energy_wh")?,
        amount: r.try_get("amount")?,
        price_per_kwh: r.try_get("price_per_kwh")?,
        service_fee: r.try_get("service_fee")?,
        device_ref: r.try_get("device_ref")?,
        created_at_ms: r.try_get("created_at_ms")?,
        expires_at_ms: r.try_get("expires_at_ms")?,
        started_at_ms: r.try_get("started_at_ms")?,
        ended_at_ms: r.try_get("ended_at_ms")?,
        last_report_at_ms: r.try_get("last_report_at_ms")?,
        duration_sec: r.try_get("duration_sec")?,
        energy_wh: r.try_get("energy_wh")?,
        current_power_dw: r.try_get("current_power_dw")?,
        peak_power_dw: r.try_get("peak_power_dw")?,
        energy_fee: r.try_get("energy_fee")?,
        service_fee_amount: r.try_get("service_fee_amount")?,
        final_amount: r.try_get("final_amount")?,
        end_reason: r.try_get("end_reason")?,
        device_duration_sec: r.try_get("device_duration_sec")?,
        offline_replayed: r.try_get::<i64, _>("offline_replayed")? != 0,
        was_offline: r.try_get::<i64, _>("was_offline")? != 0,
        stop_requested: r.try_get::<i64, _>("stop_requested")? != 0,
    })
}

fn device_from_row(r: &AnyRow) -> Result<DeviceRow> {
    Ok(DeviceRow {
        device_id: r.try_get("device_id")?,
        protocol: r.try_get("protocol")?,
        online: r.try_get::<i64, _>("online")? != 0,
        last_seen_at: r.try_get("last_seen_at")?,
        connected_at: r.try_get("connected_at")?,
        remote_addr: r.try_get("remote_addr")?,
        firmware: r.try_get("firmware")?,
        signal: r.try_get("signal")?,
        port_count: r.try_get("port_count")?,
    })
}

fn port_from_row(r: &AnyRow) -> Result<PortRow> {
    Ok(PortRow {
        device_id: r.try_get("device_id")?,
        port_no: r.try_get("port_no")?,
        socket_no: r.try_get("socket_no")?,
        hole: r.try_get("hole")?,
        status: r.try_get("status")?,
        power_dw: r.try_get("power_dw")?,
        reported_status: r.try_get("reported_status")?,
    })
}

fn cmd_from_row(r: &AnyRow) -> Result<CmdRow> {
    Ok(CmdRow {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        order_no: r.try_get("order_no")?,
        command: r.try_get("command")?,
        payload: r.try_get("payload")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        created_at_ms: r.try_get("created_at_ms")?,
        expires_at_ms: r.try_get("expires_at_ms")?,
    })
}

const ORDER_COLS: &str = "order_no, device_id, port_no, status, charge_mode, target_duration, \
    target_energy_wh, amount, price_per_kwh, service_fee, device_ref, created_at_ms, expires_at_ms, \
    started_at_ms, ended_at_ms, last_report_at_ms, duration_sec, energy_wh, current_power_dw, \
    peak_power_dw, energy_fee, service_fee_amount, final_amount, end_reason, device_duration_sec, \
    offline_replayed, was_offline, stop_requested";

const DEVICE_COLS: &str = "device_id, protocol, online, last_seen_at, connected_at, remote_addr, \
    firmware, signal, port_count";

const PORT_COLS: &str = "device_id, port_no, socket_no, hole, status, power_dw, reported_status";

type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Writes one outbox row inside the caller's transaction (see [`outbox`]).
async fn insert_event(tx: &mut Tx, ev: &Event, now_ms: i64) -> Result<()> {
    outbox::insert_event(tx, ev, now_ms).await
}

/// A device that identified itself on a connection.
#[derive(Debug, Clone)]
pub struct DeviceOnline {
    pub device_id: String,
    pub protocol: String,
    pub remote_addr: String,
    pub firmware: Option<String>,
    pub iccid: Option<String>,
    pub signal: Option<i64>,
    /// Unix seconds.
    pub now: i64,
}

const UPDATE_DEVICE_INFO: &str = "UPDATE devices SET firmware = COALESCE($2, firmware), \
     signal = COALESCE($3, signal), port_count = COALESCE($4, port_count), updated_at = $5 \
     WHERE device_id = $1";

async fn device_online_tx(tx: &mut Tx, d: &DeviceOnline) -> Result<bool> {
    let existed = sqlx::query("SELECT online FROM devices WHERE device_id = $1")
        .bind(&d.device_id)
        .fetch_optional(&mut **tx)
        .await?
        .is_some();
    sqlx::query(
        "INSERT INTO devices (device_id, protocol, online, last_seen_at, connected_at, \
         remote_addr, firmware, iccid, signal, port_count, created_at, updated_at) \
         VALUES ($1, $2, 1, $3, $3, $4, $5, $6, $7, 0, $3, $3) \
         ON CONFLICT (device_id) DO UPDATE SET protocol = $2, online = 1, last_seen_at = $3, \
         connected_at = $3, remote_addr = $4, firmware = COALESCE($5, devices.firmware), \
         iccid = COALESCE($6, devices.iccid), signal = COALESCE($7, devices.signal), \
         updated_at = $3",
    )
    .bind(&d.device_id)
    .bind(&d.protocol)
    .bind(d.now)
    .bind(&d.remote_addr)
    .bind(d.firmware.clone())
    .bind(d.iccid.clone())
    .bind(d.signal)
    .execute(&mut **tx)
    .await?;
    let now_ms = d.now * 1000;
    if !existed {
        insert_event(
            tx,
            &Event {
                event_type: "device.registered",
                device_id: d.device_id.clone(),
                order_no: None,
                data: serde_json::json!({"protocol": d.protocol}),
            },
            now_ms,
        )
        .await?;
    }
    insert_event(
        tx,
        &Event {
            event_type: "device.online",
            device_id: d.device_id.clone(),
            order_no: None,
            data: serde_json::json!({"remote_addr": d.remote_addr, "protocol": d.protocol}),
        },
        now_ms,
    )
    .await?;
    Ok(!existed)
}

async fn device_offline_tx(
    tx: &mut Tx,
    device_id: &str,
    last_seen_at: i64,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE devices SET online = 0, last_seen_at = $2, updated_at = $3 WHERE device_id = $1",
    )
    .bind(device_id)
    .bind(last_seen_at)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE ports SET status = 'offline', power_dw = 0 WHERE device_id = $1")
        .bind(device_id)
        .execute(&mut **tx)
        .await?;
    // Orders charging on a device that went away may end while it is offline.
    sqlx::query(
        "UPDATE orders SET was_offline = 1 WHERE device_id = $1 AND status IN ('pending', 'charging')",
    )
    .bind(device_id)
    .execute(&mut **tx)
    .await?;
    insert_event(
        tx,
        &Event {
            event_type: "device.offline",
            device_id: device_id.to_string(),
            order_no: None,
            data: serde_json::json!({"last_seen_at": last_seen_at}),
        },
        now * 1000,
    )
    .await?;
    Ok(())
}

impl Store {
    /// Connects, applies the pragmas SQLite needs (WAL, `synchronous=FULL`) and runs the
    /// embedded migrations. `sqlite://file.db` creates the file if it is missing.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") && !url.contains(":memory:") => {
                if url.contains('?') {
                    format!("{url}&mode=rwc")
                } else {
                    format!("{url}?mode=rwc")
                }
            }
            _ => url.to_string(),
        };
        let opts = AnyConnectOptions::from_str(&url)?;
        let max_connections = max_connections.max(1);
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;
        match backend {
            Backend::Sqlite => SQLITE_MIGRATOR.run(&pool).await?,
            Backend::Postgres => POSTGRES_MIGRATOR.run(&pool).await?,
        }
        Ok(Store {
            pool,
            backend,
            max_connections,
            stats: Arc::new(QueryStats::default()),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn query_stats(&self) -> &QueryStats {
        &self.stats
    }

    /// (in use, idle, max) connections.
    pub fn pool_usage(&self) -> (u32, u32, u32) {
        let size = self.pool.size();
        let idle = self.pool.num_idle() as u32;
        (size.saturating_sub(idle), idle, self.max_connections)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn observe(&self, started: Instant) {
        let ms = started.elapsed().as_millis() as u64;
        if ms >= SLOW_QUERY_MS {
            self.stats.slow.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.slowest_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// SQLite transactions take the write lock up front (`BEGIN IMMEDIATE`): a deferred
    /// transaction that reads first and then writes fails at once with SQLITE_BUSY when
    /// another connection wrote in between, without waiting for the busy timeout.
    async fn begin(&self) -> Result<Tx> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Readiness: the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }

    // -- API keys -------------------------------------------------------------------------

    pub async fn api_key_hashes(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT key_hash FROM api_keys")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("key_hash")?))
            .collect()
    }

    /// Stores a key's hash; an existing hash is left alone.
    pub async fn add_api_key(&self, key_hash: &str, label: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (key_hash, label, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (key_hash) DO NOTHING",
        )
        .bind(key_hash)
        .bind(label)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // -- devices and ports ----------------------------------------------------------------

    /// A device connected (or identified itself): create or refresh it, online, with its
    /// `device.registered` (first time) and `device.online` events. Returns whether it is new.
    pub async fn device_online(&self, d: &DeviceOnline) -> Result<bool> {
        let started = Instant::now();
        let mut tx = self.begin().await?;
        let new = device_online_tx(&mut tx, d).await?;
        tx.commit().await?;
        self.observe(started);
        Ok(new)
    }

    /// Writes one event on its own (alarms and other events without a state change).
    pub async fn record_event(&self, ev: &Event, now_ms: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        insert_event(&mut tx, ev, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn device_exists(&self, device_id: &str) -> Result<bool> {
        Ok(
            sqlx::query("SELECT 1 AS one FROM devices WHERE device_id = $1")
                .bind(device_id)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    /// Firmware, signal and port count learnt from registration or heartbeat frames.
    pub async fn update_device_info(
        &self,
        device_id: &str,
        firmware: Option<&str>,
        signal: Option<i64>,
        port_count: Option<i64>,
        now: i64,
    ) -> Result<()> {
        sqlx::query(UPDATE_DEVICE_INFO)
            .bind(device_id)
            .bind(firmware.map(str::to_string))
            .bind(signal)
            .bind(port_count)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A device went away: offline, its ports offline, its active orders marked as having
    /// lived through an offline spell, and a `device.offline` event.
    pub async fn device_offline(&self, device_id: &str, last_seen_at: i64, now: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        device_offline_tx(&mut tx, device_id, last_seen_at, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// At start-up nobody is connected yet.
    pub async fn mark_all_offline(&self) -> Result<()> {
        sqlx::query("UPDATE devices SET online = 0 WHERE online = 1")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn device(&self, device_id: &str) -> Result<Option<DeviceRow>> {
        let started = Instant::now();
        let row = sqlx::query(&format!(
            "SELECT {DEVICE_COLS} FROM devices WHERE device_id = $1"
        ))
        .bind(device_id)
        .fetch_optional(&self.pool)
        .await?;
        self.observe(started);
        row.as_ref().map(device_from_row).transpose()
    }

    /// A page of devices and the count of all matches.
    pub async fn devices(
        &self,
        online: Option<bool>,
        page: u32,
        size: u32,
    ) -> Result<(Vec<DeviceRow>, i64)> {
        let started = Instant::now();
        let filter = match online {
            Some(true) => "WHERE online = 1",
            Some(false) => "WHERE online = 0",
            None => "",
        };
        let total: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM devices {filter}"))
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        let offset = i64::from(page.saturating_sub(1)) * i64::from(size);
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLS} FROM devices {filter} ORDER BY device_id LIMIT $1 OFFSET $2"
        ))
        .bind(i64::from(size))
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        self.observe(started);
        let rows = rows.iter().map(device_from_row).collect::<Result<_>>()?;
        Ok((rows, total))
    }

    /// A device with its ports and each port's active order, in one round trip (the API's
    /// most frequent read). `None` when the device is unknown.
    pub async fn device_with_ports(
        &self,
        device_id: &str,
    ) -> Result<Option<(DeviceRow, Vec<PortRow>, Vec<(i64, String)>)>> {
        let started = Instant::now();
        let rows = sqlx::query(
            "SELECT d.device_id, d.protocol, d.online, d.last_seen_at, d.connected_at, \
             d.remote_addr, d.firmware, d.signal, d.port_count, p.port_no AS p_port_no, \
             p.socket_no AS p_socket_no, p.hole AS p_hole, p.status AS p_status, \
             p.power_dw AS p_power_dw, p.reported_status AS p_reported, \
             (SELECT o.order_no FROM orders o WHERE o.device_id = d.device_id \
              AND o.port_no = p.port_no AND o.status IN ('pending', 'charging') LIMIT 1) AS p_order_no \
             FROM devices d LEFT JOIN ports p ON p.device_id = d.device_id \
             WHERE d.device_id = $1 ORDER BY p.port_no",
        )
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        self.observe(started);
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let device = device_from_row(first)?;
        let mut ports = Vec::with_capacity(rows.len());
        let mut active = Vec::new();
        for r in &rows {
            let Some(port_no) = r.try_get::<Option<i64>, _>("p_port_no")? else {
                continue;
            };
            ports.push(PortRow {
                device_id: device.device_id.clone(),
                port_no,
                socket_no: r.try_get("p_socket_no")?,
                hole: r.try_get("p_hole")?,
                status: r
                    .try_get::<Option<String>, _>("p_status")?
                    .unwrap_or_default(),
                power_dw: r.try_get::<Option<i64>, _>("p_power_dw")?.unwrap_or(0),
                reported_status: r.try_get("p_reported")?,
            });
            if let Some(order_no) = r.try_get::<Option<String>, _>("p_order_no")? {
                active.push((port_no, order_no));
            }
        }
        if ports.is_empty() && device.port_count > 0 {
            // Ports not reported yet: the view is built from the port count.
            active = self
                .active_orders_of(device_id)
                .await?
                .into_iter()
                .map(|o| (o.port_no, o.order_no))
                .collect();
        }
        Ok(Some((device, ports, active)))
    }

    pub async fn ports(&self, device_id: &str) -> Result<Vec<PortRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {PORT_COLS} FROM ports WHERE device_id = $1 ORDER BY port_no"
        ))
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(port_from_row).collect()
    }

    /// Active (pending or charging) order numbers by port of one device.
    pub async fn active_orders_of(&self, device_id: &str) -> Result<Vec<OrderRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ORDER_COLS} FROM orders WHERE device_id = $1 \
             AND status IN ('pending', 'charging') ORDER BY port_no"
        ))
        .bind(device_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(order_from_row).collect()
    }

    // -- orders ---------------------------------------------------------------------------

    pub async fn order(&self, order_no: &str) -> Result<Option<OrderRow>> {
        let started = Instant::now();
        let row = sqlx::query(&format!(
            "SELECT {ORDER_COLS} FROM orders WHERE order_no = $1"
        ))
        .bind(order_no)
        .fetch_optional(&self.pool)
        .await?;
        self.observe(started);
        row.as_ref().map(order_from_row).transpose()
    }

    pub async fn order_by_device_ref(
        &self,
        device_id: &str,
        device_ref: &str,
    ) -> Result<Option<OrderRow>> {
        let row = sqlx::query(&format!(
            "SELECT {ORDER_COLS} FROM orders WHERE device_id = $1 AND device_ref = $2 \
             ORDER BY id DESC LIMIT 1"
        ))
        .bind(device_id)
        .bind(device_ref)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(order_from_row).transpose()
    }

    /// The newest order on a port whatever its state (to match an end report without a reference).
    pub async fn latest_order_on_port(
        &self,
        device_id: &str,
        port_no: i64,
    ) -> Result<Option<OrderRow>> {
        let row = sqlx::query(&format!(
            "SELECT {ORDER_COLS} FROM orders WHERE device_id = $1 AND port_no = $2 \
             ORDER BY id DESC LIMIT 1"
        ))
        .bind(device_id)
        .bind(port_no)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(order_from_row).transpose()
    }

    pub async fn orders(
        &self,
        status: Option<OrderStatus>,
        device_id: Option<&str>,
        page: u32,
        size: u32,
    ) -> Result<(Vec<OrderRow>, i64)> {
        let started = Instant::now();
        // Placeholders are numbered by position; unused filters compare against NULL.
        let filter = "WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR device_id = $2)";
        let status = status.map(|s| s.as_str().to_string());
        let device_id = device_id.map(str::to_string);
        let total: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM orders {filter}"))
            .bind(status.clone())
            .bind(device_id.clone())
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        let offset = i64::from(page.saturating_sub(1)) * i64::from(size);
        let rows = sqlx::query(&format!(
            "SELECT {ORDER_COLS} FROM orders {filter} ORDER BY id DESC LIMIT $3 OFFSET $4"
        ))
        .bind(status)
        .bind(device_id)
        .bind(i64::from(size))
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        self.observe(started);
        let rows = rows.iter().map(order_from_row).collect::<Result<_>>()?;
        Ok((rows, total))
    }

    pub async fn progress(&self, order_no: &str) -> Result<Vec<ProgressRow>> {
        let rows = sqlx::query(
            "SELECT at_ms, duration_sec, energy_wh, power_dw, status FROM order_progress \
             WHERE order_no = $1 ORDER BY at_ms, id",
        )
        .bind(order_no)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ProgressRow {
                    at_ms: r.try_get("at_ms")?,
                    duration_sec: r.try_get("duration_sec")?,
                    energy_wh: r.try_get("energy_wh")?,
                    power_dw: r.try_get("power_dw")?,
                    status: r.try_get("status")?,
                })
            })
            .collect()
    }

    /// Creates an order, its queued start command and its `order.created` event in one
    /// transaction. The same `order_no` again returns the existing order; another active
    /// order on the port is [`StoreError::PortBusy`].
    pub async fn create_order(&self, o: &NewOrder) -> Result<CreateOutcome> {
        let started = Instant::now();
        if let Some(existing) = self.order(&o.order_no).await? {
            return Ok(CreateOutcome::Existing(existing));
        }
        let mut tx = self.begin().await?;
        let busy = sqlx::query(
            "SELECT order_no FROM orders WHERE device_id = $1 AND port_no = $2 \
             AND status IN ('pending', 'charging')",
        )
        .bind(&o.device_id)
        .bind(o.port_no)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = busy {
            return Err(StoreError::PortBusy {
                order_no: row.try_get("order_no")?,
            });
        }
        let inserted = sqlx::query(
            "INSERT INTO orders (order_no, device_id, port_no, status, charge_mode, target_duration, \
             target_energy_wh, amount, price_per_kwh, service_fee, device_ref, created_at_ms, \
             expires_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9, $10, $11, $12, $11)",
        )
        .bind(&o.order_no)
        .bind(&o.device_id)
        .bind(o.port_no)
        .bind(o.charge_mode)
        .bind(o.target_duration)
        .bind(o.target_energy_wh)
        .bind(o.amount)
        .bind(o.price_per_kwh)
        .bind(o.service_fee)
        .bind(&o.device_ref)
        .bind(o.now_ms)
        .bind(o.expires_at_ms)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            let e = StoreError::from(e);
            drop(tx);
            if e.is_unique_violation() {
                // A concurrent request won the race: same order_no → that order; else busy.
                if let Some(existing) = self.order(&o.order_no).await? {
                    return Ok(CreateOutcome::Existing(existing));
                }
                return Err(StoreError::PortBusy {
                    order_no: String::new(),
                });
            }
            return Err(e);
        }
        let command_id: i64 = sqlx::query(
            "INSERT INTO cmd_logs (device_id, order_no, command, payload, status, attempts, \
             created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, 'queued', 0, $5, $6) RETURNING id",
        )
        .bind(&o.device_id)
        .bind(&o.order_no)
        .bind(&o.command)
        .bind(&o.command_payload)
        .bind(o.now_ms)
        .bind(o.expires_at_ms)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        insert_event(
            &mut tx,
            &Event {
                event_type: "order.created",
                device_id: o.device_id.clone(),
                order_no: Some(o.order_no.clone()),
                data: serde_json::json!({
                    "port_no": o.port_no, "charge_mode": o.charge_mode,
                    "target_duration": o.target_duration, "amount": o.amount,
                }),
            },
            o.now_ms,
        )
        .await?;
        tx.commit().await?;
        self.observe(started);
        let order = self
            .order(&o.order_no)
            .await?
            .ok_or_else(|| StoreError::Corrupt("order vanished after insert".into()))?;
        Ok(CreateOutcome::Created { order, command_id })
    }

    /// Queues another command (e.g. a stop) for an order.
    pub async fn queue_command(
        &self,
        device_id: &str,
        order_no: Option<&str>,
        command: &str,
        payload: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<i64> {
        let id: i64 = sqlx::query(
            "INSERT INTO cmd_logs (device_id, order_no, command, payload, status, attempts, \
             created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, 'queued', 0, $5, $6) RETURNING id",
        )
        .bind(device_id)
        .bind(order_no.map(str::to_string))
        .bind(command)
        .bind(payload)
        .bind(now_ms)
        .bind(expires_at_ms)
        .fetch_one(&self.pool)
        .await?
        .try_get("id")?;
        Ok(id)
    }

    /// Replaces the device's handle of an order (BKV: the business number from the reply).
    pub async fn set_device_ref(&self, order_no: &str, device_ref: &str) -> Result<()> {
        sqlx::query("UPDATE orders SET device_ref = $2 WHERE order_no = $1")
            .bind(order_no)
            .bind(device_ref)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn mark_stop_requested(&self, order_no: &str) -> Result<()> {
        sqlx::query("UPDATE orders SET stop_requested = 1 WHERE order_no = $1")
            .bind(order_no)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// pending → charging, with `order.confirmed` and `charging.started`. Returns false when the
    /// order was not pending (a repeated confirmation).
    pub async fn confirm_order(&self, order_no: &str, device_id: &str, at_ms: i64) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE orders SET status = 'charging', started_at_ms = $2, last_report_at_ms = $2, \
             updated_at_ms = $2 WHERE order_no = $1 AND status = 'pending'",
        )
        .bind(order_no)
        .bind(at_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            for t in ["order.confirmed", "charging.started"] {
                insert_event(
                    &mut tx,
                    &Event {
                        event_type: t,
                        device_id: device_id.to_string(),
                        order_no: Some(order_no.to_string()),
                        data: serde_json::json!({"started_at": at_ms / 1000}),
                    },
                    at_ms,
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// pending → failed (12) or cancelled (11 etc.), costing 0. Returns false when the order was
    /// no longer pending.
    pub async fn close_pending(
        &self,
        order_no: &str,
        device_id: &str,
        to: OrderStatus,
        end_reason: i64,
        at_ms: i64,
    ) -> Result<bool> {
        let event_type = match to {
            OrderStatus::Failed => "order.failed",
            _ => "order.cancelled",
        };
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE orders SET status = $2, end_reason = $3, ended_at_ms = $4, updated_at_ms = $4, \
             final_amount = 0 WHERE order_no = $1 AND status = 'pending'",
        )
        .bind(order_no)
        .bind(to.as_str())
        .bind(end_reason)
        .bind(at_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            sqlx::query(
                "UPDATE cmd_logs SET status = 'expired' WHERE order_no = $1 AND status = 'queued'",
            )
            .bind(order_no)
            .execute(&mut *tx)
            .await?;
            insert_event(
                &mut tx,
                &Event {
                    event_type,
                    device_id: device_id.to_string(),
                    order_no: Some(order_no.to_string()),
                    data: serde_json::json!({"end_reason": end_reason}),
                },
                at_ms,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// Settles an order exactly once. Every report is kept in `end_reports`; only the first
    /// one for an active order changes it (the settlements primary key makes sure).
    /// Returns true when this call settled the order.
    pub async fn settle(&self, s: &Settlement, device_id: &str, port_no: i64) -> Result<bool> {
        let started = Instant::now();
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "UPDATE orders SET status = 'completed', ended_at_ms = $2, duration_sec = $3, \
             device_duration_sec = $4, energy_wh = $5, peak_power_dw = MAX(peak_power_dw, $6), \
             energy_fee = $7, service_fee_amount = $8, final_amount = $9, end_reason = $10, \
             offline_replayed = $11, current_power_dw = 0, updated_at_ms = $2 \
             WHERE order_no = $1 AND status IN ('pending', 'charging')"
                .replace(
                    "MAX(peak_power_dw, $6)",
                    match self.backend {
                        Backend::Sqlite => "MAX(peak_power_dw, $6)",
                        Backend::Postgres => "GREATEST(peak_power_dw, $6)",
                    },
                )
                .as_str(),
        )
        .bind(&s.order_no)
        .bind(s.at_ms)
        .bind(s.duration_sec)
        .bind(s.device_duration_sec)
        .bind(s.energy_wh)
        .bind(s.peak_power_dw)
        .bind(s.energy_fee)
        .bind(s.service_fee_amount)
        .bind(s.final_amount)
        .bind(s.end_reason)
        .bind(flag(s.offline_replayed))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let applied = n == 1;
        sqlx::query(
            "INSERT INTO end_reports (order_no, device_id, port_no, received_at_ms, applied, detail) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&s.order_no)
        .bind(device_id)
        .bind(port_no)
        .bind(s.at_ms)
        .bind(flag(applied))
        .bind(&s.detail)
        .execute(&mut *tx)
        .await?;
        if applied {
            sqlx::query(
                "INSERT INTO settlements (order_no, settled_at_ms, source, duration_sec, \
                 device_duration_sec, energy_wh, energy_fee, service_fee_amount, final_amount, \
                 end_reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&s.order_no)
            .bind(s.at_ms)
            .bind(s.source)
            .bind(s.duration_sec)
            .bind(s.device_duration_sec)
            .bind(s.energy_wh)
            .bind(s.energy_fee)
            .bind(s.service_fee_amount)
            .bind(s.final_amount)
            .bind(s.end_reason)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE cmd_logs SET status = 'expired' WHERE order_no = $1 AND status = 'queued'",
            )
            .bind(&s.order_no)
            .execute(&mut *tx)
            .await?;
            // The port stopped with the order; the next report refreshes it.
            sqlx::query(
                "UPDATE ports SET status = 'idle', power_dw = 0 \
                 WHERE device_id = $1 AND port_no = $2 AND status = 'charging'",
            )
            .bind(device_id)
            .bind(port_no)
            .execute(&mut *tx)
            .await?;
            let data = serde_json::json!({
                "port_no": port_no,
                "duration_sec": s.duration_sec,
                "total_kwh": s.energy_wh as f64 / 1000.0,
                "energy_wh": s.energy_wh,
                "peak_power": s.peak_power_dw as f64 / 10.0,
                "energy_fee": s.energy_fee,
                "service_fee_amount": s.service_fee_amount,
                "final_amount": s.final_amount,
                "end_reason": s.end_reason,
                "end_reason_name": crate::domain::EndReason::from_code(s.end_reason).name(),
                "end_reason_text": crate::domain::EndReason::from_code(s.end_reason).text_zh(),
                "offline_replayed": s.offline_replayed,
                "ended_at": s.at_ms / 1000,
            });
            for t in ["charging.ended", "order.completed"] {
                insert_event(
                    &mut tx,
                    &Event {
                        event_type: t,
                        device_id: device_id.to_string(),
                        order_no: Some(s.order_no.clone()),
                        data: data.clone(),
                    },
                    s.at_ms,
                )
                .await?;
            }
        }
        tx.commit().await?;
        self.observe(started);
        Ok(applied)
    }

    /// Charging orders whose device is away and whose target plus `grace_ms` has passed.
    pub async fn overdue_charging(&self, now_ms: i64, grace_ms: i64) -> Result<Vec<OrderRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ORDER_COLS} FROM orders o WHERE status = 'charging' AND EXISTS \
             (SELECT 1 FROM devices d WHERE d.device_id = o.device_id AND d.online = 0) \
             AND COALESCE(started_at_ms, created_at_ms) + target_duration * 1000 + $2 < $1"
        ))
        .bind(now_ms)
        .bind(grace_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(order_from_row).collect()
    }

    /// Pending orders whose command TTL has passed.
    pub async fn expired_pending(&self, now_ms: i64) -> Result<Vec<OrderRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {ORDER_COLS} FROM orders WHERE status = 'pending' AND expires_at_ms IS NOT NULL \
             AND expires_at_ms < $1"
        ))
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(order_from_row).collect()
    }

    // -- commands -------------------------------------------------------------------------

    /// Commands waiting for this device, oldest first.
    pub async fn queued_commands(&self, device_id: &str, now_ms: i64) -> Result<Vec<CmdRow>> {
        let rows = sqlx::query(
            "SELECT id, device_id, order_no, command, payload, status, attempts, created_at_ms, \
             expires_at_ms FROM cmd_logs WHERE device_id = $1 AND status = 'queued' \
             AND (expires_at_ms IS NULL OR expires_at_ms >= $2) ORDER BY id",
        )
        .bind(device_id)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cmd_from_row).collect()
    }

    pub async fn command(&self, id: i64) -> Result<Option<CmdRow>> {
        let row = sqlx::query(
            "SELECT id, device_id, order_no, command, payload, status, attempts, created_at_ms, \
             expires_at_ms FROM cmd_logs WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(cmd_from_row).transpose()
    }

    /// A command went out on the wire (first time or resend).
    pub async fn command_sent(
        &self,
        id: i64,
        seq: i64,
        request_hex: &str,
        at_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE cmd_logs SET status = 'sent', seq = $2, request_hex = $3, \
             sent_at_ms = COALESCE(sent_at_ms, $4), attempts = attempts + 1 WHERE id = $1",
        )
        .bind(id)
        .bind(seq)
        .bind(request_hex)
        .bind(at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The device answered a command.
    pub async fn command_replied(
        &self,
        id: i64,
        reply_hex: &str,
        result: &str,
        at_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE cmd_logs SET status = 'replied', reply_hex = $2, result = $3, replied_at_ms = $4, \
             latency_ms = $4 - COALESCE(sent_at_ms, $4) WHERE id = $1",
        )
        .bind(id)
        .bind(reply_hex)
        .bind(result)
        .bind(at_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// No reply after the resend.
    pub async fn command_unanswered(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE cmd_logs SET status = 'unanswered' WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // -- batched writes -------------------------------------------------------------------

    /// Applies a batch in one transaction. Progress samples also update their order's live
    /// figures and write `charging.progress` events.
    pub async fn apply_batch(&self, ops: &[BatchOp]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let peak = match self.backend {
            Backend::Sqlite => "MAX(peak_power_dw, $5)",
            Backend::Postgres => "GREATEST(peak_power_dw, $5)",
        };
        let mut tx = self.begin().await?;
        for op in ops {
            match op {
                BatchOp::Online(d) => {
                    device_online_tx(&mut tx, d).await?;
                }
                BatchOp::Info {
                    device_id,
                    firmware,
                    signal,
                    port_count,
                    now,
                } => {
                    sqlx::query(UPDATE_DEVICE_INFO)
                        .bind(device_id)
                        .bind(firmware.clone())
                        .bind(*signal)
                        .bind(*port_count)
                        .bind(*now)
                        .execute(&mut *tx)
                        .await?;
                }
                BatchOp::Offline {
                    device_id,
                    last_seen_at,
                    now,
                } => {
                    device_offline_tx(&mut tx, device_id, *last_seen_at, *now).await?;
                }
                BatchOp::Liveness {
                    device_id,
                    last_seen_at,
                } => {
                    sqlx::query("UPDATE devices SET last_seen_at = $2 WHERE device_id = $1")
                        .bind(device_id)
                        .bind(*last_seen_at)
                        .execute(&mut *tx)
                        .await?;
                }
                BatchOp::Port {
                    device_id,
                    port_no,
                    socket_no,
                    hole,
                    status,
                    power_dw,
                    at,
                    status_changed,
                } => {
                    if *status_changed {
                        // Only on a change (rare), so the extra read stays off the hot path.
                        let previous: Option<String> = sqlx::query(
                            "SELECT status FROM ports WHERE device_id = $1 AND port_no = $2",
                        )
                        .bind(device_id)
                        .bind(port_no)
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|r| r.try_get("status"))
                        .transpose()?;
                        insert_event(
                            &mut tx,
                            &Event {
                                event_type: "socket.state_changed",
                                device_id: device_id.clone(),
                                order_no: None,
                                data: serde_json::json!({
                                    "port_no": port_no, "socket_no": socket_no, "hole": hole,
                                    "from": previous, "to": status, "status": status,
                                    "power_w": *power_dw as f64 / 10.0, "changed_at": at,
                                }),
                            },
                            *at * 1000,
                        )
                        .await?;
                    }
                    sqlx::query(
                        "INSERT INTO ports (device_id, port_no, socket_no, hole, status, power_dw, \
                         reported_status, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $5, $7) \
                         ON CONFLICT (device_id, port_no) DO UPDATE SET socket_no = $3, hole = $4, \
                         status = $5, power_dw = $6, reported_status = $5, updated_at = $7",
                    )
                    .bind(device_id)
                    .bind(*port_no)
                    .bind(*socket_no)
                    .bind(*hole)
                    .bind(status)
                    .bind(*power_dw)
                    .bind(*at)
                    .execute(&mut *tx)
                    .await?;
                }
                BatchOp::Progress {
                    order_no,
                    device_id,
                    at_ms,
                    duration_sec,
                    energy_wh,
                    power_dw,
                    status,
                } => {
                    sqlx::query(
                        "INSERT INTO order_progress (order_no, at_ms, duration_sec, energy_wh, \
                         power_dw, status) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(order_no)
                    .bind(*at_ms)
                    .bind(*duration_sec)
                    .bind(*energy_wh)
                    .bind(*power_dw)
                    .bind(status)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(&format!(
                        "UPDATE orders SET energy_wh = $2, current_power_dw = $3, \
                         last_report_at_ms = $4, peak_power_dw = {peak}, updated_at_ms = $4 \
                         WHERE order_no = $1 AND status IN ('pending', 'charging')"
                    ))
                    .bind(order_no)
                    .bind(*energy_wh)
                    .bind(*power_dw)
                    .bind(*at_ms)
                    .bind(*power_dw)
                    .execute(&mut *tx)
                    .await?;
                    insert_event(
                        &mut tx,
                        &Event {
                            event_type: "charging.progress",
                            device_id: device_id.clone(),
                            order_no: Some(order_no.clone()),
                            data: serde_json::json!({
                                "duration_sec": duration_sec, "energy_wh": energy_wh,
                                "power_w": *power_dw as f64 / 10.0, "status": status,
                            }),
                        },
                        *at_ms,
                    )
                    .await?;
                }
            }
        }
        tx.commit().await?;
        self.observe(started);
        Ok(())
    }

    // -- operations -----------------------------------------------------------------------

    /// Row counts of devices, orders and cmd_logs.
    pub async fn table_counts(&self) -> Result<(i64, i64, i64)> {
        let r = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM devices) AS d, (SELECT COUNT(*) FROM orders) AS o, \
             (SELECT COUNT(*) FROM cmd_logs) AS c",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((r.try_get("d")?, r.try_get("o")?, r.try_get("c")?))
    }

    pub async fn orders_by_status(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM orders GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }

    pub async fn online_count(&self) -> Result<i64> {
        Ok(
            sqlx::query("SELECT COUNT(*) AS n FROM devices WHERE online = 1")
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?,
        )
    }

    /// (backlog, delivered, failed attempts) of the outbox.
    pub async fn outbox_figures(&self) -> Result<(i64, i64, i64)> {
        let r = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM outbox WHERE status = 'pending') AS b, \
             (SELECT COUNT(*) FROM outbox WHERE status = 'delivered') AS d, \
             (SELECT COUNT(*) FROM outbox WHERE status = 'dead') AS f",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((r.try_get("b")?, r.try_get("d")?, r.try_get("f")?))
    }

    /// Events of one order, oldest first (type names), for tests and diagnostics.
    pub async fn event_types_of_order(&self, order_no: &str) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT event_type FROM outbox WHERE order_no = $1 ORDER BY id")
            .bind(order_no)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("event_type")?))
            .collect()
    }

    /// How many end reports arrived for an order, and how many were applied.
    pub async fn end_report_counts(&self, order_no: &str) -> Result<(i64, i64)> {
        let r = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM end_reports WHERE order_no = $1) AS n, \
             (SELECT COUNT(*) FROM end_reports WHERE order_no = $1 AND applied = 1) AS a",
        )
        .bind(order_no)
        .fetch_one(&self.pool)
        .await?;
        Ok((r.try_get("n")?, r.try_get("a")?))
    }

    pub async fn settlement_count(&self, order_no: &str) -> Result<i64> {
        Ok(
            sqlx::query("SELECT COUNT(*) AS n FROM settlements WHERE order_no = $1")
                .bind(order_no)
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?,
        )
    }

    /// Orders whose device is unknown.
    pub async fn orphan_orders(&self) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT order_no FROM orders o WHERE NOT EXISTS \
             (SELECT 1 FROM devices d WHERE d.device_id = o.device_id) ORDER BY id LIMIT 1000",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("order_no")?))
            .collect()
    }

    /// Pending orders past their TTL, charging orders past their target plus `grace_ms`.
    pub async fn stale_orders(&self, now_ms: i64, grace_ms: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT order_no FROM orders WHERE \
             (status = 'pending' AND expires_at_ms IS NOT NULL AND expires_at_ms + 60000 < $1) OR \
             (status = 'charging' AND target_duration > 0 AND \
              COALESCE(started_at_ms, created_at_ms) + target_duration * 1000 + $2 < $1) \
             ORDER BY id LIMIT 1000",
        )
        .bind(now_ms)
        .bind(grace_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("order_no")?))
            .collect()
    }

    /// (sent, matched) downlink commands.
    pub async fn command_match(&self) -> Result<(i64, i64)> {
        let r = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM cmd_logs WHERE status IN ('sent', 'replied', 'unanswered')) AS s, \
             (SELECT COUNT(*) FROM cmd_logs WHERE status = 'replied') AS m",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((r.try_get("s")?, r.try_get("m")?))
    }

    /// Ports stored as charging without an active order, or idle with one charging.
    pub async fn port_mismatches(&self) -> Result<Vec<(String, i64, String, String)>> {
        let rows = sqlx::query(
            "SELECT p.device_id, p.port_no, p.status, o.status AS order_status FROM ports p \
             LEFT JOIN orders o ON o.device_id = p.device_id AND o.port_no = p.port_no \
             AND o.status IN ('pending', 'charging') \
             JOIN devices d ON d.device_id = p.device_id AND d.online = 1 \
             WHERE (p.status = 'charging' AND o.status IS NULL) \
             OR (p.status IN ('idle', 'plugged') AND o.status = 'charging') LIMIT 1000",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let order_status: Option<String> = r.try_get("order_status")?;
                Ok((
                    r.try_get("device_id")?,
                    r.try_get("port_no")?,
                    order_status.unwrap_or_else(|| "none".into()),
                    r.try_get("status")?,
                ))
            })
            .collect()
    }
}
