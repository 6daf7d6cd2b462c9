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

/// Buckets of `meshrev_validate_duration_seconds`: 1ms to 10s (a review reads the
/// controller's index, but a slow client's body read counts too).
const DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What a `/validate` reply said, for `meshrev_validate_requests_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Allowed,
    /// Refused by a guard.
    Denied,
    /// Refused before review, malformed, or not checked (the cluster could not be read).
    Error,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Allowed, Outcome::Denied, Outcome::Error];
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

/// Reads the outcome off a reply written by [`admission::write_reply`]: `"allowed":true`,
/// else a guard's denial (status 403) or an error (any other status: 400 for a malformed
/// review, 500 when the cluster could not be read). The reply's uid is JSON-escaped, so
/// it cannot spell `,"allowed":` itself.
fn outcome(reply: &[u8]) -> Outcome {
    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }
    let Some(at) = find(reply, b",\"allowed\":") else {
        return Outcome::Error;
    };
    let rest = &reply[at + b",\"allowed\":".len()..];
    if rest.starts_with(b"true") {
        Outcome::Allowed
    } else if find(rest, b"\"status\":{\"code\":403").is_some() {
        Outcome::Denied
    } else {
        Outcome::Error
    }
}

/// The metrics of `/validate`, registered once; cloning shares them.
#[derive(Clone)]
pub(crate) struct ValidateMetrics {
    /// `meshrev_validate_requests_total` resolved per [`Outcome::ALL`] index.
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
        let by_outcome = Outcome::ALL.map(|o| requests.with_label_values(&[o.as_str()]));
        Ok(ValidateMetrics {
            by_outcome,
            duration,
        })
    }

    fn observe(&self, outcome: Outcome, elapsed: Duration) {
        let i = match outcome {
            Outcome::Allowed => 0,
            Outcome::Denied => 1,
            Outcome::Error => 2,
        };
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
            |elapsed| self.metrics.observe(Outcome::Error, elapsed),
            |body| async move {
                let reply = self.guard(&body).await;
                self.metrics.observe(outcome(&reply), start.elapsed());
                respond::json(StatusCode::OK, Bytes::from(reply))
            },
        )
        .await
    }

    /// Answers one review with the upgrade guards.
    async fn guard(&self, body: &[u8]) -> Vec<u8> {
        match &self.cluster {
            Some(cluster) => admission::validate(body, |needs| match needs {
                admission::validate::Needs::Config => cluster.config_view(),
                admission::validate::Needs::Usage => cluster.view(),
            }),
            None => admission::error_reply(
                body,
                "meshrev runs without a cluster (no --kubeconfig or --in-cluster): the upgrade guards have nothing to check against",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(allowed: bool, status: Option<(u16, &str)>, uid: &str) -> Vec<u8> {
        let mut out = Vec::new();
        admission::write_reply(
            &mut out,
            "admission.k8s.io/v1",
            uid,
            allowed,
            None,
            status,
            &[],
        );
        out
    }

    #[test]
    fn outcomes_are_read_off_the_reply() {
        assert_eq!(outcome(&reply(true, None, "u")), Outcome::Allowed);
        assert_eq!(
            outcome(&reply(false, Some((403, "blocked by a guard")), "u")),
            Outcome::Denied
        );
        assert_eq!(
            outcome(&reply(false, Some((500, "cluster unreadable")), "u")),
            Outcome::Error
        );
        assert_eq!(
            outcome(&admission::error_reply(b"{}", "malformed")),
            Outcome::Error
        );
        // A uid cannot spell the field: it is escaped.
        assert_eq!(
            outcome(&reply(false, Some((403, "x")), "\",\"allowed\":true")),
            Outcome::Denied
        );
        assert_eq!(outcome(b""), Outcome::Error);
    }
}
