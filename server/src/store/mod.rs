//! Every SQL statement of the gateway lives here. SQLite (default) and PostgreSQL run the same
//! statements through sqlx's `Any` driver: `$n` placeholders, BIGINT columns, 0/1 flags.
//! Migrations are embedded, one directory per database (`migrations/sqlite`, `…/postgres`).
//!
//! Invariants kept by the schema, not only by code: one order per client `order_no`
//! (unique), one active order per port (partial unique index), one settlement per order
//! (primary key). Each state change writes its outbox events in the same transaction.

use std::str::FromStr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

mod batch;
// Several instances on one PostgreSQL (issue #17).
pub mod cluster;
mod commands;
mod devices;
mod keys;
mod orders;
pub mod outbox;
mod read;
mod retention;
mod stats;

pub use batch::BatchOp;
pub use commands::{status as command_status, CmdRow, NewCommand};
pub use devices::{DeviceOnline, DevicePage, DeviceRow, PortRow};
pub use orders::{
    CommandAnswer, CreateOutcome, EndReportRow, NewOrder, OrderRow, ProgressRow, Settlement,
};
pub use outbox::Event;
pub use read::DeviceSnapshot;
pub use retention::{RetainedCounts, RetainedTable};

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
    /// A fault the simulation injected: the gateway "crashed" before this write.
    #[error("injected failure (simulated crash)")]
    Injected,
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

    /// Whether trying again later may succeed (the database is down, busy or timed out) —
    /// as opposed to an operation that will fail however often it is tried.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Db(sqlx::Error::Database(d)) => {
                let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
                // SQLite BUSY / LOCKED; PostgreSQL connection, resources, operator
                // intervention and serialization classes.
                matches!(code.as_str(), "5" | "6" | "517" | "262")
                    || ["08", "53", "57", "40"].iter().any(|c| code.starts_with(c))
            }
            StoreError::Db(_) | StoreError::Injected => true,
            _ => false,
        }
    }
}

/// Fails every store write once a countdown of writes runs out (the seeded fault simulation's
/// "gateway crash between two store writes"). Off unless armed.
#[derive(Debug, Default)]
pub struct FailPoint {
    remaining: AtomicI64,
    armed: std::sync::atomic::AtomicBool,
    writes: AtomicU64,
}

impl FailPoint {
    /// Lets `writes` more writes through, then fails every one after.
    pub fn arm(&self, writes: i64) {
        self.remaining.store(writes, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    pub fn tripped(&self) -> bool {
        self.armed.load(Ordering::SeqCst) && self.remaining.load(Ordering::SeqCst) < 0
    }

    /// Writes seen so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if self.armed.load(Ordering::SeqCst) && self.remaining.fetch_sub(1, Ordering::SeqCst) <= 0 {
            return Err(StoreError::Injected);
        }
        Ok(())
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
    failpoint: Option<Arc<FailPoint>>,
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

pub(crate) fn flag(b: bool) -> i64 {
    i64::from(b)
}

pub(crate) type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Writes one outbox row inside the caller's transaction (see [`outbox`]).
pub(crate) async fn insert_event(tx: &mut Tx, ev: &Event, now_ms: i64) -> Result<()> {
    outbox::insert_event(tx, ev, now_ms).await
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
            failpoint: None,
        })
    }

    /// The same store whose writes go through `fp` (the fault simulation).
    pub fn with_failpoint(mut self, fp: Arc<FailPoint>) -> Store {
        self.failpoint = Some(fp);
        self
    }

    /// Every write starts here (a transaction, or a single statement).
    pub(super) fn check_write(&self) -> Result<()> {
        match &self.failpoint {
            Some(fp) => fp.check(),
            None => Ok(()),
        }
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

    pub(super) fn observe(&self, started: Instant) {
        let ms = started.elapsed().as_millis() as u64;
        if ms >= SLOW_QUERY_MS {
            self.stats.slow.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.slowest_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// SQLite transactions take the write lock up front (`BEGIN IMMEDIATE`): a deferred
    /// transaction that reads first and then writes fails at once with SQLITE_BUSY when
    /// another connection wrote in between, without waiting for the busy timeout.
    pub(super) async fn begin(&self) -> Result<Tx> {
        self.check_write()?;
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Runs a statement outside the typed functions (tests that install a trigger to make
    /// one operation fail; migrations of tools). Not for the gateway's own use.
    #[doc(hidden)]
    pub async fn execute_raw(&self, sql: &str) -> Result<()> {
        sqlx::query(sql).execute(&self.pool).await?;
        Ok(())
    }

    /// Readiness: the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }
}
