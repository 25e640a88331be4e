//! What the cases run against: the gateway (embedded child process or external target), the
//! simulated piles and the webhook receiver, bundled in a [`Ctx`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use pile_api::Client;
use pile_sim::config::{FleetConfig, ProtocolChoice};
use pile_sim::fleet::{FleetHandle, PileHandle};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::gateway::{GatewayProcess, GatewaySpec};
use crate::profile::Profile;
use crate::receiver::Receiver;

/// The record's two BKV gateways and the AP3000 pile.
pub const SEED_BKV_A: &str = "82210225000520";
pub const SEED_BKV_B: &str = "82241218000382";
pub const SEED_AP3000: &str = "04AB373B";
/// Charger power on `82210225000520` (2.1, 2.2): an e-bike pile's socket allows up to
/// ~1 kW; 800 W makes even the quick profile's one-minute charge cost whole fen, so 2.1's
/// money check compares a non-zero bill.
pub const SEED_A_POWER_W: f64 = 800.0;
/// First ID of the per-case BKV piles (one pile per case that needs a pile to itself).
pub const WORK_FIRST_ID: &str = "82990000000001";
pub const WORK_PILES: u32 = 12;
/// First IDs of the 4.2 load fleet (mixed families).
pub const LOAD_FIRST_BKV: &str = "83000000000000";
pub const LOAD_FIRST_AP3000: &str = "0B000000";

/// The work pile a case owns.
pub mod work {
    pub const OFFLINE_DROP: u32 = 0; // 3.1
    pub const PORT_BUSY: u32 = 1; // 3.2
    pub const OFFLINE_START: u32 = 2; // X.1
    pub const RESTART: u32 = 3; // X.3
    pub const WEBHOOK_OUTAGE: u32 = 4; // X.4
    pub const IDEMPOTENT: u32 = 5; // X.2
    pub const BAD_FIRST: u32 = 6; // X.5: 6..10 misbehave
    pub const GOOD_FIRST: u32 = 10; // X.5: 10, 11 charge
}

/// First ID of the piles of the "beyond the template" cases (B.x), a fleet of their own that
/// dials in again at once after a drop (B.1's takeover must beat the offline threshold).
pub const BEYOND_FIRST_ID: &str = "82980000000001";
pub const BEYOND_PILES: u32 = 5;

/// The beyond pile a case owns.
pub mod beyond {
    pub const LOST_START: u32 = 0; // B.1
    pub const RESENT_END: u32 = 1; // B.2
    pub const CHARGE_LOST: u32 = 2; // B.3
    pub const RECONNECT_END: u32 = 3; // B.4
    pub const LONG_OUTAGE: u32 = 4; // B.5
}

/// The ID of beyond pile `i`.
pub fn beyond_id(i: u32) -> String {
    let first: u64 = BEYOND_FIRST_ID.parse().unwrap_or(82_980_000_000_001);
    format!("{:014}", first + u64::from(i))
}

/// The ID of work pile `i`.
pub fn work_id(i: u32) -> String {
    let first: u64 = WORK_FIRST_ID.parse().unwrap_or(82_990_000_000_001);
    format!("{:014}", first + u64::from(i))
}

/// The simulated piles of a run.
#[derive(Clone)]
pub struct Fleets {
    pub seed_a: FleetHandle,
    pub seed_b: FleetHandle,
    pub ap3000: FleetHandle,
    pub work: FleetHandle,
    pub beyond: FleetHandle,
    /// Only when 4.2 runs.
    pub load: Option<FleetHandle>,
}

impl Fleets {
    /// The pile with this ID, in whichever fleet holds it.
    pub fn pile(&self, id: &str) -> Option<PileHandle> {
        self.all().find_map(|f| f.pile(id))
    }

    fn all(&self) -> impl Iterator<Item = &FleetHandle> {
        [
            &self.seed_a,
            &self.seed_b,
            &self.ap3000,
            &self.work,
            &self.beyond,
        ]
        .into_iter()
        .chain(self.load.as_ref())
    }

    pub async fn shutdown(&self) {
        for f in self.all() {
            f.shutdown().await;
        }
    }
}

/// Starts a fleet with the simulator's real protocol codecs.
pub async fn start_fleet(cfg: FleetConfig) -> Result<FleetHandle, String> {
    FleetHandle::start(cfg).await.map_err(|e| e.to_string())
}

/// Starts every fleet a run uses against `device_addr`.
pub async fn start_fleets(
    profile: &Profile,
    device_addr: &str,
    seed: u64,
    with_load: bool,
) -> Result<Fleets, String> {
    let base = FleetConfig {
        server: device_addr.to_string(),
        heartbeat: profile.heartbeat,
        seed,
        ports: 4,
        plug_delay: Duration::from_secs(2),
        // A pile retries soon after a drop, as the record expects (5–10 s).
        reconnect_delay: Duration::from_secs(5),
        // Unacknowledged records are sent again within a heartbeat or two.
        resend_after: (profile.heartbeat * 3).max(Duration::from_secs(3)),
        link_after: profile.heartbeat.max(Duration::from_secs(1)) * 3,
        frames_kept: 256,
        progress_kept: 4096,
        ..FleetConfig::default()
    };
    let one = |id: &str, protocol: ProtocolChoice| FleetConfig {
        devices: 1,
        protocol,
        first_bkv_id: if protocol == ProtocolChoice::Bkv {
            id.to_string()
        } else {
            SEED_BKV_A.to_string()
        },
        first_ap3000_id: if protocol == ProtocolChoice::Ap3000 {
            id.to_string()
        } else {
            SEED_AP3000.to_string()
        },
        ..base.clone()
    };
    let seed_a = start_fleet(FleetConfig {
        power_w: SEED_A_POWER_W,
        ..one(SEED_BKV_A, ProtocolChoice::Bkv)
    })
    .await?;
    let seed_b = start_fleet(one(SEED_BKV_B, ProtocolChoice::Bkv)).await?;
    let ap3000 = start_fleet(one(SEED_AP3000, ProtocolChoice::Ap3000)).await?;
    let work = start_fleet(FleetConfig {
        devices: WORK_PILES,
        protocol: ProtocolChoice::Bkv,
        first_bkv_id: WORK_FIRST_ID.to_string(),
        ..base.clone()
    })
    .await?;
    let beyond = start_fleet(FleetConfig {
        devices: BEYOND_PILES,
        protocol: ProtocolChoice::Bkv,
        first_bkv_id: BEYOND_FIRST_ID.to_string(),
        reconnect_delay: Duration::from_millis(300),
        // Bills in whole fen even for short charges.
        power_w: SEED_A_POWER_W,
        ..base.clone()
    })
    .await?;
    let load = if !with_load {
        None
    } else {
        Some(
            start_fleet(FleetConfig {
                devices: profile.fleet,
                protocol: ProtocolChoice::Mixed,
                first_bkv_id: LOAD_FIRST_BKV.to_string(),
                first_ap3000_id: LOAD_FIRST_AP3000.to_string(),
                ramp_per_sec: 200.0,
                frames_kept: 0,
                ..base
            })
            .await?,
        )
    };
    Ok(Fleets {
        seed_a,
        seed_b,
        ap3000,
        work,
        beyond,
        load,
    })
}

/// Where the gateway under test runs.
// One value per run: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Target {
    /// A child process of this binary; X.3 may stop and restart it.
    Embedded {
        spec: GatewaySpec,
        process: Mutex<Option<GatewayProcess>>,
    },
    External,
}

/// Everything a case needs.
pub struct Ctx {
    pub profile: Profile,
    pub seed: u64,
    pub base_url: String,
    pub device_addr: String,
    pub api_key: String,
    pub client: Client,
    pub http: reqwest::Client,
    pub receiver: Receiver,
    /// Whether the gateway was pointed at [`Ctx::receiver`] by this runner.
    pub webhook_configured: Option<(String, bool)>,
    pub fleets: Result<Fleets, String>,
    pub target: Target,
    pub out_dir: PathBuf,
    pub log_path: Option<PathBuf>,
    pub started: Instant,
    pub shutdown: CancellationToken,
    /// Set once 4.2's CPU window is over (or 4.2 is not selected), so 4.1's load does not
    /// land inside it.
    pub heartbeat_window_done: tokio::sync::watch::Sender<bool>,
    /// `/metrics` text read just before each deliberate gateway stop (X.3): the counters of
    /// the process that ended, so 6.1 can sum them with the new process's.
    pub metrics_before_restart: std::sync::Mutex<Vec<String>>,
}

/// How a run reaches its gateway.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    Embedded {
        exe: PathBuf,
        database_url: Option<String>,
    },
    External {
        http: String,
        device: String,
        api_key: String,
    },
}

pub const WEBHOOK_SECRET: &str = "pile-scenarios-webhook-secret";

impl Ctx {
    /// Brings the stack up: receiver, gateway (embedded) and fleets.
    pub async fn start(
        profile: Profile,
        seed: u64,
        target: TargetSpec,
        out_dir: PathBuf,
        with_load_fleet: bool,
    ) -> anyhow::Result<Arc<Ctx>> {
        let shutdown = CancellationToken::new();
        let receiver = Receiver::start(WEBHOOK_SECRET, shutdown.clone()).await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()?;
        let (base_url, device_addr, api_key, tgt, webhook, log_path) = match target {
            TargetSpec::Embedded { exe, database_url } => {
                let database_url = match database_url {
                    Some(u) => u,
                    None => format!("sqlite://{}", out_dir.join("gateway.db").display()),
                };
                let api_key = format!("scn_{}", uuid::Uuid::new_v4().simple());
                let log_path = out_dir.join("gateway.log");
                let spec = GatewaySpec {
                    exe,
                    database_url,
                    api_key: api_key.clone(),
                    offline_after: profile.offline_after,
                    webhook_url: Some(receiver.url()),
                    webhook_secret: Some(WEBHOOK_SECRET.to_string()),
                    log_path: log_path.clone(),
                    reconcile_after: profile.reconcile_after,
                };
                let process = GatewayProcess::spawn(&spec, "127.0.0.1:0", "127.0.0.1:0")
                    .await
                    .context("starting the embedded gateway")?;
                let base = format!("http://{}", process.http_addr);
                let dev = process.device_addr.clone();
                (
                    base,
                    dev,
                    api_key,
                    Target::Embedded {
                        spec,
                        process: Mutex::new(Some(process)),
                    },
                    Some((receiver.url(), true)),
                    Some(log_path),
                )
            }
            TargetSpec::External {
                http: h,
                device,
                api_key,
            } => (
                h.trim_end_matches('/').to_string(),
                device,
                api_key,
                Target::External,
                None,
                None,
            ),
        };
        let client = Client::with_http(http.clone(), base_url.clone(), api_key.clone());
        let fleets = start_fleets(&profile, &device_addr, seed, with_load_fleet).await;
        Ok(Arc::new(Ctx {
            profile,
            seed,
            base_url,
            device_addr,
            api_key,
            client,
            http,
            receiver,
            webhook_configured: webhook,
            fleets,
            target: tgt,
            out_dir,
            log_path,
            started: Instant::now(),
            shutdown,
            heartbeat_window_done: tokio::sync::watch::Sender::new(false),
            metrics_before_restart: std::sync::Mutex::new(Vec::new()),
        }))
    }

    pub fn embedded(&self) -> bool {
        matches!(self.target, Target::Embedded { .. })
    }

    /// A pile by ID, or why there is none.
    pub fn pile(&self, id: &str) -> Result<PileHandle, String> {
        match &self.fleets {
            Ok(f) => f.pile(id).ok_or_else(|| format!("no simulated pile {id}")),
            Err(e) => Err(format!("simulated piles unavailable: {e}")),
        }
    }

    /// A client with a wrong key (1.4).
    pub fn wrong_key_client(&self) -> Client {
        Client::with_http(self.http.clone(), self.base_url.clone(), "wrong-key")
    }

    /// The child gateway's pid, if embedded and running.
    pub async fn gateway_pid(&self) -> Option<u32> {
        match &self.target {
            Target::Embedded { process, .. } => process.lock().await.as_ref().map(|p| p.pid),
            Target::External => None,
        }
    }

    pub async fn gateway_alive(&self) -> Option<bool> {
        match &self.target {
            Target::Embedded { process, .. } => {
                Some(process.lock().await.as_mut().is_some_and(|p| p.alive()))
            }
            Target::External => None,
        }
    }

    /// The gateway's `/metrics` text now, if readable.
    pub async fn metrics_text(&self) -> Option<String> {
        let resp = self
            .http
            .get(format!("{}/metrics", self.base_url))
            .send()
            .await
            .ok()?;
        resp.text().await.ok()
    }

    /// Keeps the counters of a gateway process about to be stopped on purpose.
    pub async fn keep_metrics_before_stop(&self) {
        if let Some(t) = self.metrics_text().await {
            self.metrics_before_restart
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(t);
        }
    }

    /// Prints one line of live progress for a case.
    pub fn progress(&self, id: &str, msg: impl AsRef<str>) {
        let t = self.started.elapsed().as_secs_f64();
        println!("  [{t:6.1}s] {id:<4} {}", msg.as_ref());
    }

    /// Stops the fleets, the gateway and the receiver.
    pub async fn stop(&self) {
        if let Ok(f) = &self.fleets {
            f.shutdown().await;
        }
        if let Target::Embedded { process, .. } = &self.target {
            if let Some(p) = process.lock().await.take() {
                let _ = p.stop(Duration::from_secs(15)).await;
            }
        }
        self.shutdown.cancel();
    }
}
