//! Figures over time for the overview's charts.
//!
//! Rates are computed over a trailing window ([`RATE_WINDOW_MS`]), never between two
//! consecutive scrapes: piles heartbeat in bursts (every 11 s for BKV), so the increase between
//! two scrapes 2 s apart is either a burst or nothing, and an "instant" rate flips between 25
//! and 0. Over 60 s a burst is a small fraction of the total.

use std::collections::VecDeque;

use pile_api::Stats;

use crate::prom::{self, MetricsSample};

/// The window of every rate and of the API p99.
pub const RATE_WINDOW_MS: i64 = 60_000;
/// How far back the fleet chart and the sparklines go.
pub const FLEET_SPAN_MS: i64 = 30 * 60_000;
/// Points kept per series at most (one per poll: 30 min at a 1 s refresh).
pub const SERIES_CAP: usize = 1800;

/// One value per poll, with its time (the app's clock, ms).
pub type Series = VecDeque<(i64, f64)>;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// Piles online and offline.
    pub online: Series,
    pub offline: Series,
    /// Rates over the window, per second.
    pub heartbeats_per_sec: Series,
    pub accepts_per_sec: Series,
    /// The 99th percentile of API latency over the window, ms.
    pub api_p99_ms: Series,
    /// Webhook events waiting for delivery.
    pub backlog: Series,
    /// Scrapes of `/metrics` within the window, and the newest one before it.
    scrapes: VecDeque<(i64, MetricsSample)>,
}

fn push(q: &mut Series, at_ms: i64, v: f64) {
    q.push_back((at_ms, v));
    while q.len() > SERIES_CAP || q.front().is_some_and(|(t, _)| *t < at_ms - FLEET_SPAN_MS) {
        q.pop_front();
    }
}

/// The newest value of a series.
pub fn last(q: &Series) -> Option<f64> {
    q.back().map(|(_, v)| *v)
}

impl History {
    /// Records one poll at `at_ms`.
    pub fn record(
        &mut self,
        at_ms: i64,
        stats: Option<&Stats>,
        devices_total: i64,
        metrics: Option<&MetricsSample>,
    ) {
        if let Some(s) = stats {
            let total = devices_total.max(s.tables.devices);
            push(&mut self.online, at_ms, s.online_devices as f64);
            push(
                &mut self.offline,
                at_ms,
                (total - s.online_devices).max(0) as f64,
            );
            let backlog = s.webhook.as_ref().map_or(s.event_backlog, |w| w.backlog);
            push(&mut self.backlog, at_ms, backlog as f64);
        }
        let Some(m) = metrics else { return };
        // A counter that went down means the gateway restarted: start the window again.
        if let Some((_, prev)) = self.scrapes.back() {
            let hb = |s: &MetricsSample| s.get("heartbeats_total").unwrap_or(0.0);
            if hb(m) < hb(prev) {
                self.scrapes.clear();
            }
        }
        self.scrapes.push_back((at_ms, m.clone()));
        // Keep one scrape at or before the window's start, as the rates' base.
        while self.scrapes.len() > 2 && self.scrapes[1].0 <= at_ms - RATE_WINDOW_MS {
            self.scrapes.pop_front();
        }
        let Some((base_ms, base)) = self.scrapes.front() else {
            return;
        };
        let secs = (at_ms - base_ms) as f64 / 1000.0;
        if secs <= 0.0 {
            return;
        }
        let rate = |name: &str| {
            let d = m.get(name).unwrap_or(0.0) - base.get(name).unwrap_or(0.0);
            (d / secs).max(0.0)
        };
        push(
            &mut self.heartbeats_per_sec,
            at_ms,
            rate("heartbeats_total"),
        );
        push(
            &mut self.accepts_per_sec,
            at_ms,
            rate("tcp_connections_accepted_total"),
        );
        let delta = prom::bucket_delta(&m.http_buckets, &base.http_buckets);
        if let Some(p99) = prom::p99(&delta) {
            push(&mut self.api_p99_ms, at_ms, p99 * 1000.0);
        }
    }

    /// How much time the rates currently span, ms (shorter than the window just after start).
    pub fn rate_span_ms(&self) -> i64 {
        match (self.scrapes.front(), self.scrapes.back()) {
            (Some((a, _)), Some((b, _))) => (b - a).min(RATE_WINDOW_MS),
            _ => 0,
        }
    }
}
