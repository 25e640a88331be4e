//! The gateway's CPU and memory over a run: `/proc/PID/stat` and `/proc/PID/status` when the
//! gateway's PID is known, else the standard Prometheus process series on its `/metrics`
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`) if it exports them.

use std::time::Instant;

/// One reading of a process: total CPU time used so far and resident memory now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    pub at: Instant,
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

/// Where the gateway's figures came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Proc(u32),
    Metrics(String),
    None,
}

impl Source {
    pub fn name(&self) -> &'static str {
        match self {
            Source::Proc(_) => "proc",
            Source::Metrics(_) => "metrics",
            Source::None => "none",
        }
    }
}

/// Clock ticks per second of `/proc/PID/stat`'s CPU times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the running system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Reads `/proc/PID/stat` (utime + stime) and `/proc/PID/status` (VmRSS).
pub fn read_proc(pid: u32) -> std::io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let cpu_seconds = parse_stat_cpu_ticks(&stat).ok_or_else(|| bad("unreadable /proc stat"))?
        as f64
        / clock_ticks();
    let rss_bytes = parse_status_rss(&status).ok_or_else(|| bad("no VmRSS in /proc status"))?;
    Ok(ProcSample {
        at: Instant::now(),
        cpu_seconds,
        rss_bytes,
    })
}

/// utime + stime in clock ticks: fields 14 and 15 of `/proc/PID/stat`, counted after the
/// command name, which is parenthesised and may itself contain spaces or parentheses.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS:  1234 kB` in bytes.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The process series of a Prometheus exposition, if both are there.
pub fn parse_metrics(text: &str) -> Option<(f64, u64)> {
    let value = |name: &str| -> Option<f64> {
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let mut parts = l.split_whitespace();
            let key = parts.next()?;
            (key == name).then(|| parts.next()?.parse::<f64>().ok())?
        })
    };
    let cpu = value("process_cpu_seconds_total")?;
    let rss = value("process_resident_memory_bytes")?;
    Some((cpu, rss as u64))
}

/// Fetches `/metrics` and reads the process series from it.
pub async fn read_metrics(http: &reqwest::Client, url: &str) -> Option<ProcSample> {
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    let (cpu_seconds, rss_bytes) = parse_metrics(&text)?;
    Some(ProcSample {
        at: Instant::now(),
        cpu_seconds,
        rss_bytes,
    })
}

/// The samples of one run and what they add up to.
#[derive(Debug, Default)]
pub struct Series {
    pub samples: Vec<ProcSample>,
}

impl Series {
    pub fn push(&mut self, s: ProcSample) {
        self.samples.push(s);
    }

    /// CPU % of one core over the whole series.
    pub fn cpu_percent_mean(&self) -> Option<f64> {
        let (a, b) = (self.samples.first()?, self.samples.last()?);
        let wall = b.at.duration_since(a.at).as_secs_f64();
        (wall > 0.0).then(|| (b.cpu_seconds - a.cpu_seconds).max(0.0) / wall * 100.0)
    }

    /// The busiest interval between two consecutive samples, CPU % of one core.
    pub fn cpu_percent_max(&self) -> Option<f64> {
        self.samples
            .windows(2)
            .filter_map(|w| {
                let wall = w[1].at.duration_since(w[0].at).as_secs_f64();
                (wall > 0.0).then(|| (w[1].cpu_seconds - w[0].cpu_seconds).max(0.0) / wall * 100.0)
            })
            .reduce(f64::max)
    }

    /// CPU % of one core between the last two samples.
    pub fn last_cpu_percent(&self) -> Option<f64> {
        let n = self.samples.len();
        let (a, b) = (
            self.samples.get(n.checked_sub(2)?)?,
            self.samples.get(n - 1)?,
        );
        let wall = b.at.duration_since(a.at).as_secs_f64();
        (wall > 0.0).then(|| (b.cpu_seconds - a.cpu_seconds).max(0.0) / wall * 100.0)
    }

    pub fn rss_max(&self) -> Option<u64> {
        self.samples.iter().map(|s| s.rss_bytes).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_fields_even_with_odd_command_names() {
        let stat = "1234 (pile (server) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 \
                    9 0 100 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
        let status = "Name:\tpile-server\nVmPeak:\t  9999 kB\nVmRSS:\t   2048 kB\nThreads:\t9\n";
        assert_eq!(parse_status_rss(status), Some(2048 * 1024));
    }

    #[test]
    fn reads_own_process() {
        let s = read_proc(std::process::id()).unwrap();
        assert!(s.rss_bytes > 1024 * 1024, "rss {}", s.rss_bytes);
        assert!(s.cpu_seconds >= 0.0);
    }

    #[test]
    fn reads_prometheus_process_series() {
        let text = "# HELP process_cpu_seconds_total x\nprocess_cpu_seconds_total 12.5\n\
                    process_resident_memory_bytes 1.048576e6\nother 1\n";
        assert_eq!(parse_metrics(text), Some((12.5, 1_048_576)));
        assert_eq!(parse_metrics("active_sessions 3\n"), None);
    }

    #[test]
    fn cpu_percent_from_samples() {
        let t = Instant::now();
        let mut s = Series::default();
        for (i, cpu) in [0.0, 0.5, 1.5].into_iter().enumerate() {
            s.push(ProcSample {
                at: t + std::time::Duration::from_secs(i as u64),
                cpu_seconds: cpu,
                rss_bytes: 100 + i as u64,
            });
        }
        assert!((s.cpu_percent_mean().unwrap() - 75.0).abs() < 1e-9);
        assert!((s.cpu_percent_max().unwrap() - 100.0).abs() < 1e-9);
        assert_eq!(s.rss_max(), Some(102));
    }
}
