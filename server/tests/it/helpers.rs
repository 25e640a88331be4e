use std::sync::Arc;
use std::time::Duration;

use pile_server::clock::Clock;
use pile_server::config::Config;
use pile_server::core::{
    Command, EndObs, Hello, Intent, IntentResult, PortChange, PortObs, ProgressObs, Reply,
};
use pile_server::domain::{DeviceReason, EndReason};
use pile_server::gateway::SessionHandle;
use pile_server::service::{Service, SessionLink};
use sqlx::Connection;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A PostgreSQL test, registered for the `pg` test binary (`tests/pg/main.rs`), which runs
/// it when PostgreSQL answers and shows it as ignored when it does not (failing under `CI`).
pub struct PgCase {
    pub name: &'static str,
    pub run: fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
}

inventory::collect!(PgCase);

/// Registers a PostgreSQL test body (an `async` expression) under `<module>::postgres`; only
/// the `pg` binary runs the registry.
#[macro_export]
macro_rules! pg {
    ($body:expr) => {
        inventory::submit! {
            $crate::PgCase {
                name: concat!(module_path!(), "::postgres"),
                run: || Box::pin($body),
            }
        }
    };
}

/// Runs an async test body once per database: `both!(name, |app| async move { … })`
/// defines `name::sqlite` (a test of this binary) and `name::postgres` (see [`PgCase`]).
#[macro_export]
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test]
            async fn sqlite() {
                if let Some(app) = $crate::spawn_app_on($crate::Db::Sqlite, |_| {}).await {
                    ($body)(app).await;
                }
            }
            $crate::pg!(async {
                if let Some(app) = $crate::spawn_app_on($crate::Db::Postgres, |_| {}).await {
                    ($body)(app).await;
                }
            });
        }
    };
}

/// [`both!`] with a manual clock the test moves: `both_clocked!(name, |app, clock| …)`.
#[macro_export]
macro_rules! both_clocked {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn clock() -> pile_server::clock::Clock {
                pile_server::clock::Clock::manual(1_764_000_000_000)
            }
            #[tokio::test]
            async fn sqlite() {
                let c = clock();
                if let Some(app) =
                    $crate::spawn_app_on_clock($crate::Db::Sqlite, |_| {}, c.clone()).await
                {
                    ($body)(app, c).await;
                }
            }
            $crate::pg!(async {
                let c = clock();
                if let Some(app) =
                    $crate::spawn_app_on_clock($crate::Db::Postgres, |_| {}, c.clone()).await
                {
                    ($body)(app, c).await;
                }
            });
        }
    };
}

pub struct TestApp {
    pub address: String,
    pub api_key: String,
    pub client: pile_api::Client,
    pub http: reqwest::Client,
    pub service: Arc<Service>,
    pub database_url: String,
    pub device_addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    app: Option<pile_server::App>,
}

/// A device that talks to the gateway at the intent level (no socket, no core): it applies
/// the intents its session core would, so a test states exactly what the device said.
pub struct FakeSession {
    pub device_id: String,
    pub conn_id: u64,
    pub link: SessionLink,
    pub service: Arc<Service>,
    pub commands: mpsc::Receiver<Box<Command>>,
    /// Open commands loaded at identification.
    pub queued: Vec<Command>,
    /// The device's live cell (its frames update it).
    pub live: Arc<pile_server::core::LiveCell>,
    next_token: u64,
}

/// An end report as a device would give it, with the platform reason.
pub fn end_obs(port_no: u32, energy_wh: i64, reason: EndReason) -> EndObs {
    EndObs {
        port_no,
        device_ref: None,
        energy_wh,
        device_duration_sec: None,
        duration_resolution_sec: 1,
        device_end_at_ms: None,
        peak_power_dw: Some(2_000),
        reason: DeviceReason::Platform(reason),
        seen_live: true,
        stop_written_at_ms: None,
        raw_hex: "00".into(),
    }
}

/// The device handle of an AP3000 order (its 16-byte order number, hex).
pub fn ap_ref(order_no: &str) -> Option<String> {
    Some(hex::encode(pile_server::core::device_order_ref(order_no)))
}

/// An AP3000 end report naming its order.
pub fn ap_end(order_no: &str, port_no: u32, energy_wh: i64, reason: EndReason) -> EndObs {
    EndObs {
        device_ref: ap_ref(order_no),
        ..end_obs(port_no, energy_wh, reason)
    }
}

/// A progress sample of a charging port.
pub fn progress_obs(
    port_no: u32,
    device_duration_sec: i64,
    energy_wh: i64,
    power_dw: i64,
) -> ProgressObs {
    ProgressObs {
        port_no,
        device_ref: None,
        device_duration_sec,
        duration_resolution_sec: 1,
        energy_wh,
        power_dw,
        peak_power_dw: None,
        device_at_ms: None,
    }
}

impl FakeSession {
    pub async fn next_command(&mut self) -> Command {
        if !self.queued.is_empty() {
            return self.queued.remove(0);
        }
        tokio::time::timeout(Duration::from_secs(5), self.commands.recv())
            .await
            .expect("a command within 5 s")
            .map(|c| *c)
            .expect("session mailbox open")
    }

    async fn apply(&mut self, intent_of: impl FnOnce(u64) -> Intent) -> Option<IntentResult> {
        self.next_token += 1;
        let intent = intent_of(self.next_token);
        self.service
            .apply(&self.link, Some(&self.device_id), intent)
            .await
            .map(|(_, r)| r)
    }

    /// The device wrote the command's bytes and answered it.
    pub async fn answer(&mut self, cmd: &Command, reply: Reply) -> Option<IntentResult> {
        let (id, conn) = (cmd.id, self.conn_id);
        self.apply(|token| Intent::MarkSent {
            token,
            command_id: id,
            key: 1,
            request_hex: String::new(),
            conn_id: conn,
        })
        .await;
        let cmd = cmd.clone();
        self.apply(|token| Intent::Replied {
            token,
            command: cmd,
            reply,
            reply_hex: "aa".into(),
        })
        .await
    }

    pub async fn confirm(&mut self, cmd: &Command) -> Option<IntentResult> {
        self.answer(cmd, Reply::Done { device_ref: None }).await
    }

    pub async fn refuse(&mut self, cmd: &Command, reason: &str) -> Option<IntentResult> {
        self.answer(
            cmd,
            Reply::Refused {
                reason: reason.into(),
            },
        )
        .await
    }

    pub async fn progress(&mut self, obs: ProgressObs) -> Option<IntentResult> {
        self.apply(|token| Intent::Progress { token, obs }).await
    }

    /// Returns whether the report is committed (the ack may go) and what it settled.
    pub async fn end(&mut self, obs: EndObs) -> (bool, Option<String>) {
        match self.apply(|token| Intent::End { token, obs }).await {
            Some(IntentResult::End { committed, settled }) => (committed, settled),
            other => panic!("end report answered {other:?}"),
        }
    }

    pub async fn ports(&mut self, changes: Vec<(PortObs, Option<pile_api::PortStatus>)>) {
        let changes = changes
            .into_iter()
            .map(|(obs, previous)| PortChange { obs, previous })
            .collect();
        self.apply(|_| Intent::Ports(changes)).await;
    }
}

/// A fresh database on the local PostgreSQL (dropped by [`drop_postgres_database`]).
pub async fn postgres_url() -> Option<String> {
    let base = std::env::var("PILE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let conn =
        tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&base)).await;
    let mut conn = match conn {
        Ok(Ok(c)) => c,
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            // The `pg` harness checked it answered before running any PostgreSQL test.
            panic!("PostgreSQL at {base} stopped answering: {why}");
        }
    };
    let name = format!("pile_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let _ = conn.close().await;
    let (prefix, _) = base.rsplit_once('/').expect("database URL with a path");
    Some(format!("{prefix}/{name}"))
}

pub fn sqlite_url() -> String {
    let dir = std::env::temp_dir().join("pile-server-tests");
    std::fs::create_dir_all(&dir).expect("temp dir");
    format!(
        "sqlite://{}/{}.db",
        dir.display(),
        uuid::Uuid::new_v4().simple()
    )
}

pub async fn spawn_app() -> TestApp {
    spawn_app_on(Db::Sqlite, |_| {}).await.expect("sqlite app")
}

/// Starts a gateway on port 0 with a fresh database; `None` when PostgreSQL is skipped.
pub async fn spawn_app_on(db: Db, tweak: impl FnOnce(&mut Config)) -> Option<TestApp> {
    spawn_app_on_clock(db, tweak, Clock::system()).await
}

/// [`spawn_app_on`] with the gateway reading `clock`.
pub async fn spawn_app_on_clock(
    db: Db,
    tweak: impl FnOnce(&mut Config),
    clock: Clock,
) -> Option<TestApp> {
    let url = match db {
        Db::Sqlite => sqlite_url(),
        Db::Postgres => postgres_url().await?,
    };
    let mut config = Config {
        database_url: url,
        api_keys: vec!["test-key".into()],
        db_pool: 8,
        flush_interval: Duration::from_millis(20),
        // #13: a webhook URL needs a secret; tests that check signatures set their own.
        webhook_secret: Some("test-webhook-secret".into()),
        ..Config::default()
    };
    tweak(&mut config);
    Some(spawn_with_clock(config, clock).await)
}

pub async fn spawn_with(config: Config) -> TestApp {
    spawn_with_clock(config, Clock::system()).await
}

/// A gateway whose decisions read `clock` (a manual clock makes TTLs and graces a matter of
/// moving it, not of waiting).
pub async fn spawn_with_clock(config: Config, clock: Clock) -> TestApp {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let devices = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let shutdown = CancellationToken::new();
    let database_url = config.database_url.clone();
    let api_key = config
        .api_keys
        .first()
        .map(|k| secrecy::ExposeSecret::expose_secret(k).to_string())
        .unwrap_or_default();
    let app = pile_server::start_with_clock(config, http, devices, shutdown.clone(), clock)
        .await
        .expect("gateway starts");
    let address = format!("http://{}", app.http_addr);
    let api_key = app.generated_api_key.clone().unwrap_or(api_key);
    TestApp {
        client: pile_api::Client::new(&address, &api_key),
        http: reqwest::Client::new(),
        address,
        api_key,
        service: app.service.clone(),
        database_url,
        device_addr: app.device_addr,
        shutdown,
        app: Some(app),
    }
}

impl TestApp {
    /// Stops the gateway gracefully and waits for the flush.
    pub async fn stop(mut self) -> String {
        self.shutdown.cancel();
        if let Some(app) = self.app.take() {
            app.wait().await.expect("clean shutdown");
        }
        // The database outlives this gateway (restart tests reopen it).
        std::mem::take(&mut self.database_url)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{}", self.address, path))
            .header("X-Api-Key", &self.api_key)
    }

    pub fn post(&self, path: &str, body: serde_json::Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{}", self.address, path))
            .header("X-Api-Key", &self.api_key)
            .json(&body)
    }

    /// Connects a device through the seam, with `ports` ports.
    pub async fn connect_fake(
        &self,
        device_id: &str,
        protocol: &'static str,
        ports: i64,
    ) -> FakeSession {
        let (tx, rx) = mpsc::channel(16);
        let conn_id = self.service.gateway.next_conn_id();
        let link = SessionLink {
            conn_id,
            handle: SessionHandle {
                conn_id,
                commands: tx,
                close: CancellationToken::new(),
            },
        };
        let hello = Hello {
            device_id: device_id.into(),
            protocol,
            remote_addr: "127.0.0.1:9".into(),
            firmware: Some("test-fw".into()),
            iccid: None,
            signal: Some(20),
            conn_id,
            at_ms: self.service.clock.now_ms(),
        };
        let (queued, live) = match self
            .service
            .apply(&link, None, Intent::Identify { token: 1, hello })
            .await
        {
            Some((_, IntentResult::Identified { commands, live, .. })) => (commands, live),
            other => panic!("identification answered {other:?}"),
        };
        self.service
            .apply(
                &link,
                Some(device_id),
                Intent::DeviceInfo {
                    firmware: None,
                    signal: None,
                    port_count: Some(ports),
                },
            )
            .await;
        FakeSession {
            device_id: device_id.into(),
            conn_id,
            link,
            service: self.service.clone(),
            commands: rx,
            queued,
            live,
            next_token: 1,
        }
    }

    /// The device's connection ended past the offline threshold: it is offline.
    pub async fn disconnect_fake(&self, s: &FakeSession) {
        // It was alive until the connection dropped.
        s.live.seen(self.service.clock.now_ms());
        self.service
            .session_ended(&s.device_id, s.conn_id, true, false)
            .await;
        self.service.writer.flush().await;
    }

    pub async fn charge(&self, device_id: &str, body: serde_json::Value) -> reqwest::Response {
        self.post(&format!("/api/v1/third/devices/{device_id}/charge"), body)
            .send()
            .await
            .expect("request")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if self.database_url.starts_with("postgres") {
            drop_postgres_database(&self.database_url);
        }
    }
}

/// Drops a per-test PostgreSQL database (connections are closed by force), on a thread of its
/// own because `Drop` cannot await.
pub fn drop_postgres_database(url: &str) {
    let Some((base, name)) = url.rsplit_once('/') else {
        return;
    };
    if !name.starts_with("pile_test_") {
        return;
    }
    let admin = std::env::var("PILE_TEST_DATABASE_URL").unwrap_or_else(|_| format!("{base}/test"));
    let name = name.to_string();
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
                let _ = conn.close().await;
            }
        });
    })
    .join();
}

/// Reads an envelope, asserting its HTTP status.
pub async fn envelope(resp: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "HTTP status");
    let v: serde_json::Value = resp.json().await.expect("JSON envelope");
    v
}

/// Polls until `f` returns `Some`, for at most 30 s (a bound for a hung gateway, not a timing:
/// this shared machine can be slow under load).
pub async fn eventually<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
