//! A tiny HTTP server for benchmarking the load generator against wrk:
//! `cargo run --release -p pile-load --example hello_server -- 127.0.0.1:8099`
//! answers every GET with a fixed JSON body.

use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8099".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "hello_server listening on http://{}",
        listener.local_addr()?
    );
    let app = Router::new().fallback(get(|| async {
        Json(json!({"status": "ok", "service": "pilekit", "piles_online": 42}))
    }));
    axum::serve(listener, app).await
}
