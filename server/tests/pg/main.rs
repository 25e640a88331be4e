//! The PostgreSQL variants of the integration tests (`tests/it`, registered there with
//! `both!` / `pg!`), under a custom harness: each runs in a fresh database on the local
//! PostgreSQL (`PILE_TEST_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`).
//! Without PostgreSQL they are reported as ignored, not as passed — and with `CI` set the run
//! fails instead.

// The modules are shared with `tests/it`; their SQLite tests are not compiled here.
#![allow(dead_code, unused_imports, unused_macros)]

#[path = "../it/helpers.rs"]
mod helpers;

#[path = "../it/api.rs"]
mod api;
#[path = "../it/cluster.rs"]
mod cluster;
#[path = "../it/devices.rs"]
mod devices;
#[path = "../it/events.rs"]
mod events;
#[path = "../it/limits.rs"]
mod limits;
#[path = "../it/orders.rs"]
mod orders;
#[path = "../it/piles.rs"]
mod piles;
#[path = "../it/readmodel.rs"]
mod readmodel;
#[path = "../it/retention.rs"]
mod retention;

pub use helpers::*;

use std::time::Duration;

use sqlx::Connection;

fn main() {
    if std::env::var_os("PILE_TEST_LOG").is_some() {
        // `PILE_TEST_LOG=debug` prints the gateways' logs (for a failing test).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                std::env::var("PILE_TEST_LOG").unwrap_or_default(),
            ))
            .try_init();
    }
    let args = libtest_mimic::Arguments::from_args();
    let url = std::env::var("PILE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let reachable = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
        .and_then(|rt| {
            rt.block_on(async {
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    sqlx::PgConnection::connect(&url),
                )
                .await
                {
                    Ok(Ok(c)) => {
                        let _ = c.close().await;
                        Some(())
                    }
                    Ok(Err(e)) => {
                        eprintln!("PostgreSQL at {url} is unreachable: {e}");
                        None
                    }
                    Err(_) => {
                        eprintln!("PostgreSQL at {url} is unreachable: timed out");
                        None
                    }
                }
            })
        })
        .is_some();
    if !reachable {
        if std::env::var_os("CI").is_some() {
            eprintln!("CI is set: the PostgreSQL tests must run");
            std::process::exit(101);
        }
        eprintln!("NOTICE: PostgreSQL unreachable: its tests are shown as ignored");
    }
    let mut trials: Vec<libtest_mimic::Trial> = IntoIterator::into_iter(inventory::iter::<PgCase>)
        .map(|case| {
            let run = case.run;
            libtest_mimic::Trial::test(case.name, move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(run());
                Ok(())
            })
            .with_ignored_flag(!reachable)
        })
        .collect();
    trials.sort_by(|a, b| a.name().cmp(b.name()));
    libtest_mimic::run(&args, trials).exit();
}
