//! The server's Prometheus metrics: one private registry per server ([`Telemetry`]),
//! low-cardinality labels only (results, skip reasons, revision and tag names).
//!
//! Each part registers its own: `/inject` ([`InjectMetrics`]), `/validate`
//! ([`ValidateMetrics`]), the table gauges ([`crate::telemetry::TableGauges`]), and here
//! the transport (connections, the body budget) and the reload counters. Request paths
//! touch only handles resolved once, at startup.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use super::inject::InjectMetrics;
use super::validate::ValidateMetrics;
use crate::admission::ReviewResult;
use crate::table::Table;
use crate::telemetry::Telemetry;

/// The content type of [`Metrics::encode`]'s output.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A `{result="success"|"failure"}` pair of counters, resolved once.
#[derive(Clone, Debug)]
pub(crate) struct ReloadCounters {
    success: IntCounter,
    failure: IntCounter,
}

impl ReloadCounters {
    fn register(registry: &Registry, name: &str, help: &str) -> Result<Self, prometheus::Error> {
        let v = IntCounterVec::new(Opts::new(name, help), &["result"])?;
        registry.register(Box::new(v.clone()))?;
        Ok(ReloadCounters {
            success: v.with_label_values(&["success"]),
            failure: v.with_label_values(&["failure"]),
        })
    }

    /// Counts one reload attempt.
    pub(crate) fn count(&self, success: bool) {
        if success {
            self.success.inc();
        } else {
            self.failure.inc();
        }
    }
}

/// All of the server's metrics. Created by [`super::serve_with`]; shared (`Arc`) by the
/// services, the certificate and table-file watchers, and (through `Metrics::telemetry`)
/// the controller.
pub struct Metrics {
    telemetry: Telemetry,
    pub(super) inject: InjectMetrics,
    pub(super) validate: ValidateMetrics,
    pub(super) tls_reloads: ReloadCounters,
    /// `meshrev_tls_certificate_expiry_timestamp_seconds`: set by [`super::tls::load`] and
    /// by its file poller after every certificate it swaps in; read only by scrapes.
    pub(super) tls_cert_expiry: IntGauge,
    pub(super) table_reloads: ReloadCounters,
    pub(super) inflight_body_bytes: IntGauge,
    pub(super) inflight_body_waiting: IntGauge,
    pub(super) connections: IntGauge,
    pub(super) connections_refused: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered and every fixed label value at 0.
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        let telemetry = Telemetry::new()?;
        let registry = &telemetry.registry;
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
        let inject = InjectMetrics::register(registry)?;
        let validate = ValidateMetrics::register(registry)?;
        let tls_reloads = ReloadCounters::register(
            registry,
            "meshrev_tls_reloads_total",
            "Reloads of the serving certificate after its files changed, by result.",
        )?;
        let tls_cert_expiry = IntGauge::new(
            "meshrev_tls_certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate in service, in seconds since the Unix epoch (0 if it does not parse).",
        )?;
        registry.register(Box::new(tls_cert_expiry.clone()))?;
        let table_reloads = ReloadCounters::register(
            registry,
            "meshrev_table_reloads_total",
            "Reloads of the table file after it changed, by result.",
        )?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            telemetry,
            inject,
            validate,
            tls_reloads,
            tls_cert_expiry,
            table_reloads,
            inflight_body_bytes,
            inflight_body_waiting,
            connections,
            connections_refused,
        })
    }

    /// The registry and table gauges, for other publishers (the controller).
    pub(crate) fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Records the table now being served. Call after every publish.
    pub fn observe_table(&self, table: &Table) {
        self.telemetry.table.observe(table);
    }

    /// The value of `meshrev_injection_requests_total{result}` (for tests and benches).
    pub fn requests(&self, result: ReviewResult) -> u64 {
        self.inject.requests(result)
    }

    /// The text exposition of every metric of the registry.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.telemetry.registry.gather(), &mut out) {
            tracing::warn!("encoding metrics: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::SkipReason;

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
        for r in ["allowed", "denied", "error"] {
            let line = format!("meshrev_validate_requests_total{{result=\"{r}\"}} 0");
            assert!(text.contains(&line), "{line} missing");
        }
        assert!(text.contains("meshrev_tls_reloads_total{result=\"failure\"} 0"));
        assert!(text.contains("meshrev_table_reloads_total{result=\"success\"} 0"));
        assert!(text.contains("meshrev_tls_certificate_expiry_timestamp_seconds 0"));
        assert!(text.contains("meshrev_injection_duration_seconds_bucket{le=\"0.00005\"} 0"));
        assert!(text.contains("meshrev_validate_duration_seconds_bucket{le=\"10\"} 0"));
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
