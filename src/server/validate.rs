//! `POST /validate`: the validating webhook, the upgrade guards
//! ([`crate::admission::validate`]), judged against the controller's index
//! ([`crate::controller::ClusterView`]; no API call). Cluster mode only: without the
//! controller every review is refused with a message that says so.
//!
//! It has its own deadline and its own metrics, apart from `/inject`'s:
//! `meshrev_validate_requests_total{result}` (`allowed`, `denied`, `error`: refused before
//! review, malformed, or the cluster could not be read) and
//! `meshrev_validate_duration_seconds`. Counters are resolved once at startup.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

use super::body::{self, BodyLimits};
use super::respond::{self, Reply};
use crate::admission;
use crate::admission::validate::Verdict;

/// Buckets of `meshrev_validate_duration_seconds`: 1ms to 10s (a review reads the
/// controller's index, but a slow client's body read counts too).
const DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `meshrev_validate_requests_total{result}` values, in [`ValidateMetrics::by_outcome`] order.
const OUTCOMES: [(Verdict, &str); 3] = [
    (Verdict::Allowed, "allowed"),
    (Verdict::Denied, "denied"),
    (Verdict::Error, "error"),
];

/// The metrics of `/validate`, registered once; cloning shares them.
#[derive(Clone)]
pub(crate) struct ValidateMetrics {
    /// `meshrev_validate_requests_total` resolved per [`OUTCOMES`] index.
    by_outcome: [IntCounter; 3],
    duration: Histogram,
}

impl ValidateMetrics {
    /// Registers every `/validate` metric in `registry`, every fixed label value at 0.
    pub(crate) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "meshrev_validate_requests_total",
                "AdmissionReview requests on /validate (the upgrade guards), by result (allowed, denied, error).",
            ),
            &["result"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "meshrev_validate_duration_seconds",
                "Time to answer a /validate request, from its headers to the reply (body read and cluster reads included).",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        let by_outcome = OUTCOMES.map(|(_, label)| requests.with_label_values(&[label]));
        Ok(ValidateMetrics {
            by_outcome,
            duration,
        })
    }

    fn observe(&self, verdict: Verdict, elapsed: Duration) {
        let i = OUTCOMES
            .iter()
            .position(|(v, _)| *v == verdict)
            .expect("OUTCOMES must list every verdict");
        self.by_outcome[i].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// The `/validate` service: the client the guards read the cluster with, its metrics and
/// its deadline.
pub(crate) struct ValidateService {
    /// `None` outside cluster mode.
    pub(super) cluster: Option<crate::controller::ClusterView>,
    pub(super) metrics: ValidateMetrics,
    /// Deadline of one request, body read and cluster reads included (504 after it).
    pub(super) deadline: Duration,
}

impl ValidateService {
    /// Answers one `POST /validate`.
    pub(super) async fn call(&self, limits: &BodyLimits, req: Request<Incoming>) -> Reply {
        let start = Instant::now();
        body::read_then(
            limits,
            req,
            start,
            self.deadline,
            "/validate",
            |elapsed| self.metrics.observe(Verdict::Error, elapsed),
            |body| async move {
                let (reply, verdict) = self.guard(&body).await;
                self.metrics.observe(verdict, start.elapsed());
                respond::json(StatusCode::OK, Bytes::from(reply))
            },
        )
        .await
    }

    /// Answers one review with the upgrade guards.
    async fn guard(&self, body: &[u8]) -> (Vec<u8>, Verdict) {
        match &self.cluster {
            Some(cluster) => admission::validate(body, |needs| match needs {
                admission::validate::Needs::Config => cluster.config_view(),
                admission::validate::Needs::Usage => cluster.view(),
            }),
            None => (
                admission::error_reply(
                    body,
                    "meshrev runs without a cluster (no --kubeconfig or --in-cluster): the upgrade guards have nothing to check against",
                ),
                Verdict::Error,
            ),
        }
    }
}
