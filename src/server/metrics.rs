//! The webhook's Prometheus metrics: one private [`Registry`] per server, low-cardinality
//! labels only (results, skip reasons, revision and tag names).
//!
//! The request path touches only pre-resolved counters (one per result and per skip reason)
//! and the histogram; `meshrev_injections_total{revision,tag}` is the one label lookup, and
//! only for injected pods.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::admission::{Reply, ReviewResult};
use crate::router::SkipReason;
use crate::table::Table;

/// Buckets of `meshrev_injection_duration_seconds`: 50µs to 1s, sub-millisecond resolution
/// where a healthy webhook lives.
pub const DURATION_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_15, 0.000_25, 0.000_5, 0.000_75, 0.001, 0.002, 0.003_5, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// All of the server's metrics. Shared (`Arc`) by the server, the certificate and table-file
/// watchers, and the controller (which calls [`Metrics::observe_table`] after each publish).
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    /// `requests` resolved per [`ReviewResult::ALL`] index.
    by_result: [IntCounter; 4],
    /// `skips` resolved per [`SkipReason::ALL`] index.
    by_skip: [IntCounter; 7],
    injections: IntCounterVec,
    duration: Histogram,
    table_generation: IntGauge,
    table_revisions: IntGauge,
    tls_reloads: IntCounterVec,
    table_reloads: IntCounterVec,
    inflight_body_bytes: IntGauge,
    inflight_body_waiting: IntGauge,
    connections: IntGauge,
    connections_refused: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn result_index(r: ReviewResult) -> usize {
    match r {
        ReviewResult::Injected => 0,
        ReviewResult::Skipped => 1,
        ReviewResult::Denied => 2,
        ReviewResult::Error => 3,
    }
}

fn skip_index(r: SkipReason) -> usize {
    SkipReason::ALL.iter().position(|s| *s == r).unwrap_or(0)
}

impl Metrics {
    /// A fresh registry with every metric registered and every fixed label value at 0.
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "meshrev_injection_requests_total",
                "AdmissionReview requests on /inject, by result (injected, skipped, denied, error).",
            ),
            &["result"],
        )?;
        let skips = IntCounterVec::new(
            Opts::new(
                "meshrev_injection_skips_total",
                "Pods admitted without a sidecar, by reason.",
            ),
            &["reason"],
        )?;
        let injections = IntCounterVec::new(
            Opts::new(
                "meshrev_injections_total",
                "Sidecars injected, by revision and by the tag that chose it (`none` when pinned).",
            ),
            &["revision", "tag"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "meshrev_injection_duration_seconds",
                "Time to answer an /inject request, from its headers to the reply (body read included).",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )?;
        let table_generation = IntGauge::new(
            "meshrev_table_generation",
            "Generation of the revision table being served.",
        )?;
        let table_revisions = IntGauge::new(
            "meshrev_table_revisions",
            "Revisions in the table being served.",
        )?;
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "meshrev_tls_reloads_total",
                "Reloads of the serving certificate after its files changed, by result.",
            ),
            &["result"],
        )?;
        let table_reloads = IntCounterVec::new(
            Opts::new(
                "meshrev_table_reloads_total",
                "Reloads of the table file after it changed, by result.",
            ),
            &["result"],
        )?;
        let inflight_body_bytes = IntGauge::new(
            "meshrev_inflight_body_bytes",
            "Request-body bytes reserved from the --max-inflight-body-bytes budget right now.",
        )?;
        let inflight_body_waiting = IntGauge::new(
            "meshrev_inflight_body_waiting",
            "Requests waiting for room in the --max-inflight-body-bytes budget right now.",
        )?;
        let connections = IntGauge::new(
            "meshrev_connections",
            "Open connections on the TLS listener (at most --max-connections).",
        )?;
        let connections_refused = IntCounter::new(
            "meshrev_connections_refused_total",
            "Connections closed at once because --max-connections were open.",
        )?;
        registry.register(Box::new(inflight_body_bytes.clone()))?;
        registry.register(Box::new(inflight_body_waiting.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(skips.clone()))?;
        registry.register(Box::new(injections.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(table_generation.clone()))?;
        registry.register(Box::new(table_revisions.clone()))?;
        registry.register(Box::new(tls_reloads.clone()))?;
        registry.register(Box::new(table_reloads.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        for r in ["success", "failure"] {
            tls_reloads.with_label_values(&[r]);
            table_reloads.with_label_values(&[r]);
        }
        let by_result = ReviewResult::ALL.map(|r| requests.with_label_values(&[r.as_str()]));
        let by_skip = SkipReason::ALL.map(|r| skips.with_label_values(&[r.as_str()]));
        Ok(Metrics {
            registry,
            requests,
            by_result,
            by_skip,
            injections,
            duration,
            table_generation,
            table_revisions,
            tls_reloads,
            table_reloads,
            inflight_body_bytes,
            inflight_body_waiting,
            connections,
            connections_refused,
        })
    }

    /// The registry, to register more collectors (e.g. the controller's) or to gather.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records one answered review.
    pub fn observe_reply(&self, reply: &Reply<'_>, elapsed: Duration) {
        self.by_result[result_index(reply.result)].inc();
        if let Some(reason) = reply.skip {
            self.by_skip[skip_index(reason)].inc();
        }
        if let Some((revision, via)) = &reply.injected {
            self.injections
                .with_label_values(&[revision.name.as_str(), via.tag()])
                .inc();
        }
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Records a request refused before review (oversize, unreadable, timed out): an error.
    pub fn observe_refused(&self, elapsed: Duration) {
        self.by_result[result_index(ReviewResult::Error)].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Records the table now being served. Call after every publish.
    pub fn observe_table(&self, table: &Table) {
        self.table_generation
            .set(i64::try_from(table.generation).unwrap_or(i64::MAX));
        self.table_revisions
            .set(i64::try_from(table.revision_count()).unwrap_or(i64::MAX));
    }

    /// `meshrev_inflight_body_bytes`, kept by the body budget.
    pub fn inflight_body_bytes(&self) -> IntGauge {
        self.inflight_body_bytes.clone()
    }

    /// `meshrev_inflight_body_waiting`, kept by the body budget.
    pub fn inflight_body_waiting(&self) -> IntGauge {
        self.inflight_body_waiting.clone()
    }

    /// `meshrev_connections`, kept by the connection slots.
    pub fn connections(&self) -> IntGauge {
        self.connections.clone()
    }

    /// Counts a connection closed at once because every slot was taken.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Counts one certificate reload attempt.
    pub fn tls_reload(&self, success: bool) {
        self.tls_reloads
            .with_label_values(&[if success { "success" } else { "failure" }])
            .inc();
    }

    /// Counts one table-file reload attempt.
    pub fn table_reload(&self, success: bool) {
        self.table_reloads
            .with_label_values(&[if success { "success" } else { "failure" }])
            .inc();
    }

    /// The value of `meshrev_injection_requests_total{result}` (for tests and benches).
    pub fn requests(&self, result: ReviewResult) -> u64 {
        self.requests.with_label_values(&[result.as_str()]).get()
    }

    /// The text exposition of every metric of the registry.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!("encoding metrics: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_labels_start_at_zero() {
        let m = Metrics::new().unwrap();
        let text = String::from_utf8(m.encode()).unwrap();
        for r in ReviewResult::ALL {
            let line = format!(
                "meshrev_injection_requests_total{{result=\"{}\"}} 0",
                r.as_str()
            );
            assert!(text.contains(&line), "{line} missing");
        }
        for r in SkipReason::ALL {
            let line = format!(
                "meshrev_injection_skips_total{{reason=\"{}\"}} 0",
                r.as_str()
            );
            assert!(text.contains(&line), "{line} missing");
        }
        assert!(text.contains("meshrev_tls_reloads_total{result=\"failure\"} 0"));
        assert!(text.contains("meshrev_table_reloads_total{result=\"success\"} 0"));
        assert!(text.contains("meshrev_injection_duration_seconds_bucket{le=\"0.00005\"} 0"));
    }

    #[test]
    fn observe_table_sets_gauges() {
        let m = Metrics::new().unwrap();
        let store = crate::table::TableStore::new(crate::table::embedded_default());
        m.observe_table(&store.load());
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains("meshrev_table_generation 1"), "{text}");
        assert!(text.contains("meshrev_table_revisions 2"), "{text}");
    }
}
