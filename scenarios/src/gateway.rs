//! The embedded gateway: `pile_server` run as a child process of this binary (hidden
//! subcommand `__gateway`), so its CPU and memory are its own and X.3 can stop and restart
//! it on the same database and the same ports.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// What the child is started with.
#[derive(Debug, Clone)]
pub struct GatewaySpec {
    pub exe: PathBuf,
    pub database_url: String,
    pub api_key: String,
    pub offline_after: Duration,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    /// Where the child's log goes (appended across restarts).
    pub log_path: PathBuf,
    /// `--reconcile-reports 3 --reconcile-after N` (B.3).
    pub reconcile_after: Duration,
}

/// A running child gateway.
pub struct GatewayProcess {
    child: Child,
    pub pid: u32,
    pub http_addr: String,
    pub device_addr: String,
}

/// The line the child prints once both listeners are bound.
const READY: &str = "PILE_GATEWAY_READY";

impl GatewayProcess {
    /// Starts the child on the given addresses (`127.0.0.1:0` for fresh ports) and waits for
    /// it to report its bound addresses.
    pub async fn spawn(spec: &GatewaySpec, http: &str, device: &str) -> anyhow::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_path)
            .with_context(|| format!("opening {}", spec.log_path.display()))?;
        let mut cmd = Command::new(&spec.exe);
        cmd.arg("__gateway")
            .arg("--http-listen")
            .arg(http)
            .arg("--device-listen")
            .arg(device)
            .arg("--database-url")
            .arg(&spec.database_url)
            .arg("--api-key")
            .arg(&spec.api_key)
            .arg("--offline-after")
            .arg(spec.offline_after.as_secs().max(1).to_string())
            .arg("--log-format")
            .arg("json")
            .arg("--reconcile-reports")
            .arg("3")
            .arg("--reconcile-after")
            .arg(spec.reconcile_after.as_secs().max(1).to_string());
        if let Some(u) = &spec.webhook_url {
            cmd.arg("--webhook-url").arg(u);
        }
        if let Some(s) = &spec.webhook_secret {
            cmd.arg("--webhook-secret").arg(s);
        }
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", spec.exe.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("gateway exited at once"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix(READY) {
                    return Ok::<_, anyhow::Error>(rest.trim().to_string());
                }
            }
            bail!(
                "gateway exited before it was ready (see {})",
                spec.log_path.display()
            )
        })
        .await
        .map_err(|_| anyhow!("gateway not ready within 30 s"))??;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut http_addr = None;
        let mut device_addr = None;
        for part in ready.split_whitespace() {
            if let Some(v) = part.strip_prefix("http=") {
                http_addr = Some(v.to_string());
            } else if let Some(v) = part.strip_prefix("device=") {
                device_addr = Some(v.to_string());
            }
        }
        Ok(GatewayProcess {
            child,
            pid,
            http_addr: http_addr.ok_or_else(|| anyhow!("ready line without http="))?,
            device_addr: device_addr.ok_or_else(|| anyhow!("ready line without device="))?,
        })
    }

    /// Whether the child still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks the child to stop (SIGTERM), waits up to `grace`, then kills it.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(r) => {
                r?;
            }
            Err(_) => {
                self.child.kill().await?;
            }
        }
        Ok(())
    }

    /// CPU seconds (user + system) the child has used, and its resident set in bytes.
    pub fn usage(&self) -> Option<ProcUsage> {
        ProcUsage::read(self.pid)
    }
}

/// Whether the gateway can run as one of several instances on one PostgreSQL database (B.6):
/// `Ok` when the target was given a PostgreSQL URL and its binary knows a cluster mode, else
/// why not.
pub async fn cluster_support(ctx: &crate::stack::Ctx) -> Result<(), String> {
    let crate::stack::Target::Embedded { spec, .. } = &ctx.target else {
        return Err("外部目标: 本工具不能杀死或启动它的实例".into());
    };
    if !spec.database_url.starts_with("postgres") {
        return Err("未提供 PostgreSQL URL (--database-url postgres://…)".into());
    }
    let out = Command::new(&spec.exe)
        .arg("__gateway")
        .arg("--help")
        .output()
        .await
        .map_err(|e| format!("无法读取网关参数: {e}"))?;
    let help = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    if help.contains("--cluster") || help.contains("--instance-id") {
        Ok(())
    } else {
        Err("网关未编译/未提供 cluster 功能 (`__gateway --help` 无 --cluster / --instance-id): 多实例接管无从测试".into())
    }
}

/// One reading of a process's CPU time and memory from `/proc`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcUsage {
    pub cpu_s: f64,
    pub rss_bytes: u64,
}

impl ProcUsage {
    pub fn read(pid: u32) -> Option<ProcUsage> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        parse_proc(&stat, &status, clock_ticks())
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Parses `/proc/<pid>/stat` (utime and stime, fields 14 and 15) and `VmRSS` of
/// `/proc/<pid>/status`.
pub fn parse_proc(stat: &str, status: &str, ticks: f64) -> Option<ProcUsage> {
    // The command name may hold spaces; fields count from after its closing parenthesis.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state), so utime (14) is index 11.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(ProcUsage {
        cpu_s: (utime + stime) / ticks,
        rss_bytes: rss_kb * 1024,
    })
}

/// The hidden `__gateway` subcommand: the gateway library in this process, with the log-level
/// counter installed, printing its bound addresses once ready.
pub async fn child_main(cli: pile_server::config::Cli) -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let config = pile_server::Config::load(cli)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(pile_server::metrics::CountingLayer)
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_ansi(false)
                .with_writer(std::io::stderr),
        )
        .init();
    let http = pile_server::listen(&config.http_listen)
        .await
        .with_context(|| format!("binding HTTP {}", config.http_listen))?;
    let devices = pile_server::listen(&config.device_listen)
        .await
        .with_context(|| format!("binding devices {}", config.device_listen))?;
    let shutdown = CancellationToken::new();
    let app = pile_server::start(config, http, devices, shutdown.clone()).await?;
    println!("{READY} http={} device={}", app.http_addr, app.device_addr);
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            } else {
                let _ = tokio::signal::ctrl_c().await;
            }
            shutdown.cancel();
        });
    }
    app.wait().await
}

/// Counts log lines by level in a JSON log file (the gateway's own view is in
/// `/api/v1/admin/stats`; this is the record's "grep the log" cross-check).
pub fn count_log_levels(path: &Path) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines() {
            let level = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| {
                    v.get("level")
                        .and_then(|l| l.as_str())
                        .map(str::to_lowercase)
                });
            if let Some(level) = level {
                *out.entry(level).or_insert(0) += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_figures_parse() {
        let stat = "1234 (pile scen) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0 100 0 0";
        let status = "Name:\tx\nVmRSS:\t  20480 kB\nThreads: 8\n";
        let u = parse_proc(stat, status, 100.0).unwrap();
        assert!((u.cpu_s - 3.0).abs() < 1e-9);
        assert_eq!(u.rss_bytes, 20480 * 1024);
        assert!(parse_proc("garbage", status, 100.0).is_none());
    }

    #[test]
    fn own_process_can_be_read() {
        let u = ProcUsage::read(std::process::id()).unwrap();
        assert!(u.rss_bytes > 0);
    }
}
