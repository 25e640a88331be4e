//! A real gateway (`pile_server::start`) in this process: a fresh SQLite file, port-0 listeners.

use std::time::Duration;

use pile_server::Config;
use tokio_util::sync::CancellationToken;

pub const API_KEY: &str = "fleet-test-key";

pub struct Gateway {
    pub api: String,
    pub devices: String,
    shutdown: CancellationToken,
    app: Option<pile_server::App>,
}

pub async fn spawn() -> Gateway {
    let dir = std::env::temp_dir().join("pile-load-fleet-tests");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db = dir.join(format!(
        "{}-{}.db",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let config = Config {
        database_url: format!("sqlite://{}", db.display()),
        api_keys: vec![API_KEY.into()],
        db_pool: 8,
        flush_interval: Duration::from_millis(20),
        ..Config::default()
    };
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let devices = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let app = pile_server::start(config, http, devices, shutdown.clone())
        .await
        .expect("gateway starts");
    Gateway {
        api: format!("http://{}", app.http_addr),
        devices: app.device_addr.to_string(),
        shutdown,
        app: Some(app),
    }
}

impl Gateway {
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(app) = self.app.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), app.wait()).await;
        }
    }
}
