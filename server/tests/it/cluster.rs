//! Several gateway instances on one PostgreSQL (issue #17): two `start`s in this process on
//! one database, each on a runtime of its own so that "killing" one (dropping its runtime:
//! no graceful shutdown, no lease released, its sockets and database connections cut) is
//! what a SIGKILL does to a process. Piles are real TCP piles (`piles.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pile_api::OrderStatus;
use pile_protocol::ap3000;
use pile_server::clock::Clock;
use pile_server::config::Config;
use pile_server::service::Service;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::piles::ApPile;
use crate::*;

/// One gateway instance on its own runtime.
pub struct Instance {
    rt: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
    done: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub address: String,
    pub device_addr: SocketAddr,
    pub service: Arc<Service>,
    pub client: pile_api::Client,
    http: reqwest::Client,
}

/// Cluster settings for a test: beats every `renew_ms`, the poll every `poll_ms`.
fn settings(id: &str, renew_ms: u64, poll_ms: u64) -> pile_server::cluster::Settings {
    pile_server::cluster::Settings {
        instance_id: Some(id.into()),
        renew: Duration::from_millis(renew_ms),
        poll: Duration::from_millis(poll_ms),
    }
}

impl Instance {
    pub async fn start(
        url: &str,
        cluster: pile_server::cluster::Settings,
        clock: Clock,
    ) -> Instance {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let config = Config {
            database_url: url.into(),
            api_keys: vec!["test-key".into()],
            db_pool: 4,
            flush_interval: Duration::from_millis(20),
            cluster,
            ..Config::default()
        };
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let app = rt
            .spawn(async move {
                let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let devices = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                pile_server::start_with_clock(config, http, devices, token, clock).await
            })
            .await
            .expect("start task")
            .expect("instance starts");
        let address = format!("http://{}", app.http_addr);
        let device_addr = app.device_addr;
        let service = app.service.clone();
        let done = rt.spawn(app.wait());
        Instance {
            rt: Some(rt),
            shutdown,
            done: Some(done),
            client: pile_api::Client::new(&address, "test-key"),
            address,
            device_addr,
            service,
            http: reqwest::Client::new(),
        }
    }

    fn cluster(&self) -> &pile_server::cluster::Cluster {
        self.service.cluster().expect("clustered on PostgreSQL")
    }

    /// A graceful stop (SIGTERM).
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(done) = self.done.take() {
            done.await.expect("join").expect("clean shutdown");
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// SIGKILL: every task of the instance stops where it is.
    pub fn kill(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    pub async fn charge(&self, device_id: &str, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!(
                "{}/api/v1/third/devices/{device_id}/charge",
                self.address
            ))
            .header("X-Api-Key", "test-key")
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    async fn lease_owner(&self, device_id: &str) -> Option<String> {
        self.service
            .store
            .lease_of(device_id, self.service.clock.now_ms())
            .await
            .expect("lease")
            .map(|(o, _)| o)
    }

    async fn wait_status(&self, order_no: &str, want: OrderStatus) {
        eventually(|| async {
            let o = self.client.order(order_no).await.ok()?;
            (o.status == want).then_some(())
        })
        .await
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn start_of(frame: &ap3000::Frame) -> &ap3000::StartStop {
    match &frame.message {
        ap3000::Message::StartStop(s) => s,
        other => panic!("expected 0x82, got {other:?}"),
    }
}

/// The database of a test, dropped at its end.
struct Db(String);

impl Db {
    async fn new() -> Db {
        Db(postgres_url().await.expect("PostgreSQL"))
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        drop_postgres_database(&self.0);
    }
}

/// Waits until the device row is written online (the batched writer flushed).
async fn written_online(i: &Instance, device_id: &str) {
    eventually(|| async {
        let d = i.service.store.device(device_id).await.ok()??;
        d.online.then_some(())
    })
    .await
}

mod a_charge_asked_of_one_instance_reaches_a_pile_on_another {
    use super::*;
    crate::pg!(async {
        let db = Db::new().await;
        // A long poll: the command can only arrive this fast through the notification.
        let a = Instance::start(&db.0, settings("gw-a", 500, 60_000), Clock::system()).await;
        let b = Instance::start(&db.0, settings("gw-b", 500, 60_000), Clock::system()).await;
        let mut pile = ApPile::connect(a.device_addr, "04AB373B").await;
        pile.boot(2).await;
        written_online(&a, "04AB373B").await;
        // Liveness as the owner reports it, from the other instance.
        let d = b.client.device("04AB373B").await.expect("device on B");
        assert!(d.online, "B reports the pile A holds online");
        assert_eq!(b.lease_owner("04AB373B").await.as_deref(), Some("gw-a"));
        assert!(!b.service.gateway.is_online("04AB373B"));

        let mut latencies = Vec::new();
        for (port, no) in [(1, "route-1"), (2, "route-2")] {
            let asked = Instant::now();
            envelope(
                b.charge(
                    "04AB373B",
                    json!({"port_no": port, "charge_mode": 1, "amount": 0, "duration": 600, "order_no": no}),
                )
                .await,
                200,
            )
            .await;
            let cmd = pile.expect().await;
            latencies.push(asked.elapsed());
            let start = start_of(&cmd).clone();
            assert_eq!(start.command, 1, "a start");
            pile.send(ap3000::Frame::start_stop_reply(
                pile.id,
                cmd.message_id,
                ap3000::StartResult::DONE,
                start.order_no,
                0,
            ))
            .await;
            b.wait_status(no, OrderStatus::Charging).await;
            // The pile's 0x82 answers are spaced 0.5 s apart by the gateway anyway.
        }
        eprintln!("charge through B → start frame at the pile on A: {latencies:?}");
        assert_eq!(
            a.cluster().woken.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "both came through the notification, none through the poll"
        );
        // The owner's stats and the instances view.
        let stats = b.client.stats().await.expect("stats");
        assert_eq!(stats.instance_id.as_deref(), Some("gw-b"));
        let list = b.client.instances().await.expect("instances");
        let mut ids: Vec<(String, bool)> = list
            .iter()
            .map(|i| (i.instance_id.clone(), i.alive))
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            vec![("gw-a".to_string(), true), ("gw-b".to_string(), true)]
        );
        assert!(list.iter().filter(|i| i.dispatcher).count() <= 1);
        assert_eq!(
            list.iter()
                .find(|i| i.instance_id == "gw-a")
                .map(|i| i.sessions),
            Some(1)
        );
    });
}

mod a_command_whose_notification_is_lost_arrives_through_the_owners_poll {
    use super::*;
    crate::pg!(async {
        let db = Db::new().await;
        let a = Instance::start(&db.0, settings("gw-a", 500, 200), Clock::system()).await;
        let b = Instance::start(&db.0, settings("gw-b", 500, 200), Clock::system()).await;
        let mut pile = ApPile::connect(a.device_addr, "04AB373B").await;
        pile.boot(2).await;
        written_online(&a, "04AB373B").await;
        // B commits the row but no notification goes out (as if it were lost).
        let now_ms = b.service.clock.now_ms();
        let spec = pile_server::core::CommandSpec::Query { port_no: None };
        b.service
            .store
            .queue_command(&pile_server::store::NewCommand {
                device_id: "04AB373B".into(),
                order_no: None,
                port_no: None,
                command: "query",
                payload: serde_json::to_string(&spec).unwrap(),
                now_ms,
                expires_at_ms: Some(now_ms + 60_000),
            })
            .await
            .unwrap();
        let frame = pile.expect().await;
        assert!(
            !matches!(frame.message, ap3000::Message::Ack { .. }),
            "the query went out: {frame:?}"
        );
        assert!(
            a.cluster()
                .polled
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 1
        );
        assert_eq!(
            a.cluster().woken.load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    });
}

mod a_pile_that_moves_to_another_instance_takes_its_lease_and_its_pending_command {
    use super::*;
    crate::pg!(async {
        let db = Db::new().await;
        let a = Instance::start(&db.0, settings("gw-a", 500, 200), Clock::system()).await;
        let b = Instance::start(&db.0, settings("gw-b", 500, 200), Clock::system()).await;
        let mut old = ApPile::connect(a.device_addr, "04AB373B").await;
        old.boot(2).await;
        written_online(&a, "04AB373B").await;
        envelope(
            a.charge(
                "04AB373B",
                json!({"port_no": 1, "charge_mode": 1, "amount": 0, "duration": 600, "order_no": "moves"}),
            )
            .await,
            200,
        )
        .await;
        // Written to the pile on A, never answered: in flight.
        let first = old.expect().await;
        let first_id = first.message_id;
        let first = start_of(&first).clone();

        // The pile comes back through B (its network flapped; the balancer chose B).
        let mut new = ApPile::connect(b.device_addr, "04AB373B").await;
        let reg = new.register_frame(2);
        new.send(reg).await;
        // The in-flight start may have reached the pile: B asks the port first (0x81, answered
        // by a heartbeat), then resends it with the same order number and message ID.
        let mut asked = false;
        let again = loop {
            let f = new.expect().await;
            match f.message {
                ap3000::Message::StartStop(_) => break f,
                ap3000::Message::Query => {
                    asked = true;
                    let hb = new.heartbeat_frame(&[0, 0]);
                    new.send(hb).await;
                }
                _ => {}
            }
        };
        assert!(asked, "the port was asked before the resend");
        assert_eq!(again.message_id, first_id, "the same message ID as on A");
        assert!(old.recv().await.is_none(), "A closed the old socket");
        assert_eq!(b.lease_owner("04AB373B").await.as_deref(), Some("gw-b"));
        eventually(|| async { (!a.service.gateway.is_online("04AB373B")).then_some(()) }).await;
        let again_start = start_of(&again).clone();
        assert_eq!(again_start.order_no, first.order_no);
        new.send(ap3000::Frame::start_stop_reply(
            new.id,
            again.message_id,
            ap3000::StartResult::DONE,
            again_start.order_no,
            0,
        ))
        .await;
        a.wait_status("moves", OrderStatus::Charging).await;
        // A charge asked of A now reaches the pile on B.
        envelope(
            a.charge(
                "04AB373B",
                json!({"port_no": 2, "charge_mode": 1, "amount": 0, "duration": 600, "order_no": "after-move"}),
            )
            .await,
            200,
        )
        .await;
        let cmd = new.expect().await;
        assert_eq!(start_of(&cmd).command, 1);
        // A forgot the pile without marking it offline.
        assert!(
            a.service
                .store
                .device("04AB373B")
                .await
                .unwrap()
                .unwrap()
                .online
        );
    });
}

mod a_killed_instances_leases_expire_and_its_orders_continue_elsewhere {
    use super::*;
    crate::pg!(async {
        let db = Db::new().await;
        // Both read one manual clock: a lease expires when the clock passes it, not when
        // this machine gets round to it.
        let clock = Clock::manual(1_764_000_000_000);
        let a = Instance::start(&db.0, settings("gw-a", 1_000, 200), clock.clone()).await;
        let b = Instance::start(&db.0, settings("gw-b", 1_000, 200), clock.clone()).await;
        let mut pile = ApPile::connect(a.device_addr, "04AB373B").await;
        pile.boot(2).await;
        written_online(&a, "04AB373B").await;
        envelope(
            b.charge(
                "04AB373B",
                json!({"port_no": 1, "charge_mode": 1, "amount": 0, "duration": 600, "order_no": "survives"}),
            )
            .await,
            200,
        )
        .await;
        let cmd = pile.expect().await;
        let start = start_of(&cmd).clone();
        pile.send(ap3000::Frame::start_stop_reply(
            pile.id,
            cmd.message_id,
            ap3000::StartResult::DONE,
            start.order_no,
            0,
        ))
        .await;
        b.wait_status("survives", OrderStatus::Charging).await;

        a.kill();
        assert!(
            pile.recv().await.is_none(),
            "the killed instance's socket is gone"
        );
        // Within the lease time nobody takes the device.
        pile_server::cluster::beat(&b.service, b.cluster())
            .await
            .unwrap();
        assert_eq!(b.lease_owner("04AB373B").await.as_deref(), Some("gw-a"));
        assert!(!b.service.gateway.is_online("04AB373B"));
        // Past it, B's beat takes the orphan and keeps it online for the offline threshold.
        clock.advance_ms(b.cluster().lease_ttl_ms() + 1);
        pile_server::cluster::beat(&b.service, b.cluster())
            .await
            .unwrap();
        assert_eq!(b.lease_owner("04AB373B").await.as_deref(), Some("gw-b"));
        assert!(b.service.gateway.is_online("04AB373B"));
        let gone = b.client.instances().await.unwrap();
        assert_eq!(
            gone.iter()
                .find(|i| i.instance_id == "gw-a")
                .map(|i| i.alive),
            Some(false)
        );

        // The pile reconnects to B and ends its charge there: settled once.
        let mut pile = ApPile::connect(b.device_addr, "04AB373B").await;
        pile.boot(2).await;
        let end = pile.settlement(77, 0, start.order_no, 60, 5, 7);
        pile.send(end).await;
        let _ack = pile.expect().await;
        b.wait_status("survives", OrderStatus::Completed).await;
        assert_eq!(
            b.service.store.settlement_count("survives").await.unwrap(),
            1
        );
        let c = b.client.consistency().await.unwrap();
        assert!(
            c.orphan_orders.is_empty() && c.stale_orders.is_empty(),
            "{c:?}"
        );
    });
}

mod a_restart_of_one_instance_leaves_the_others_piles_online {
    use super::*;
    crate::pg!(async {
        let db = Db::new().await;
        let a = Instance::start(&db.0, settings("gw-a", 300, 200), Clock::system()).await;
        let b = Instance::start(&db.0, settings("gw-b", 300, 200), Clock::system()).await;
        let mut on_a = ApPile::connect(a.device_addr, "04AB3701").await;
        on_a.boot(2).await;
        let mut on_b = ApPile::connect(b.device_addr, "04AB3702").await;
        on_b.boot(2).await;
        written_online(&a, "04AB3701").await;
        written_online(&b, "04AB3702").await;

        a.stop().await;
        assert!(
            on_a.recv().await.is_none(),
            "a stopped instance closes its sockets"
        );
        let a = Instance::start(&db.0, settings("gw-a", 300, 200), Clock::system()).await;
        // B's pile: untouched by A's start-up, still B's, still online everywhere.
        assert!(
            !a.service.gateway.is_online("04AB3702"),
            "A's start-up left B's pile alone"
        );
        assert_eq!(a.lease_owner("04AB3702").await.as_deref(), Some("gw-b"));
        assert!(b.service.gateway.is_connected("04AB3702"));
        assert!(a.client.device("04AB3702").await.unwrap().online);
        let hb = on_b.heartbeat_frame(&[0, 0]);
        on_b.send(hb).await;
        assert!(on_b.recv().await.is_some(), "B still answers its pile");
        // A's pile: kept online by whichever instance took its released lease.
        eventually(|| async {
            let owner = a.lease_owner("04AB3701").await?;
            let holder = if owner == "gw-a" { &a } else { &b };
            holder.service.gateway.is_online("04AB3701").then_some(())
        })
        .await;
        assert!(
            a.service
                .store
                .device("04AB3701")
                .await
                .unwrap()
                .unwrap()
                .online
        );
    });
}

/// SQLite is single-instance: asked to share, the gateway refuses to start, saying why.
#[tokio::test]
async fn an_instance_id_with_sqlite_is_refused_at_start_up() {
    let dir = std::env::temp_dir().join("pile-server-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let config = Config {
        database_url: format!(
            "sqlite://{}/{}.db",
            dir.display(),
            uuid::Uuid::new_v4().simple()
        ),
        api_keys: vec!["test-key".into()],
        cluster: settings("gw-a", 5_000, 1_000),
        ..Config::default()
    };
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let devices = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = pile_server::start(config, http, devices, CancellationToken::new())
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("SQLite is single-instance"), "{msg}");
}

/// On SQLite the instances route says the gateway is one instance.
#[tokio::test]
async fn a_sqlite_gateway_has_no_instances_route_answer() {
    let app = spawn_app().await;
    let resp = app.get("/api/v1/admin/instances").send().await.unwrap();
    let v = envelope(resp, 404).await;
    assert!(v["message"]
        .as_str()
        .unwrap_or("")
        .contains("single instance"));
    assert!(app.client.stats().await.unwrap().instance_id.is_none());
}
