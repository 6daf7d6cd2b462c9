//! `POST /inject`: the mutating webhook. One AdmissionReview in, one out
//! ([`crate::admission::review`]); the hot path is a table load and a splice.
//!
//! Ownership: the service reads the table from the [`TableStore`] (written by whoever
//! publishes: the table-file watcher or the controller) and only ever loads it. Its
//! metrics ([`InjectMetrics`]) are resolved once at startup; a request touches
//! pre-resolved counters and the histogram, and one labelled lookup for an injected pod.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

use super::body::{self, BodyLimits};
use super::respond::{self, Reply};
use crate::admission::{self, ReviewResult};
use crate::router::SkipReason;
use crate::table::TableStore;

/// Buckets of `meshrev_injection_duration_seconds`: 50µs to 10s, sub-millisecond resolution
/// where a healthy webhook lives, and up to the API server's 10 s webhook timeout so that an
/// alert can see p99 approach it.
pub(crate) const DURATION_BUCKETS: [f64; 20] = [
    0.000_05, 0.000_1, 0.000_15, 0.000_25, 0.000_5, 0.000_75, 0.001, 0.002, 0.003_5, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

thread_local! {
    /// Patch scratch space of [`admission::review`], reused by every request this worker
    /// thread answers (the review never awaits, so the borrow never spans requests).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(16 * 1024));
}

/// The metrics of `/inject`, registered once; cloning shares them.
#[derive(Clone)]
pub(crate) struct InjectMetrics {
    requests: IntCounterVec,
    /// `requests` resolved per [`ReviewResult::ALL`] index.
    by_result: [IntCounter; 4],
    /// `meshrev_injection_skips_total` resolved per [`SkipReason::ALL`] index.
    by_skip: [IntCounter; 7],
    injections: IntCounterVec,
    duration: Histogram,
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

impl InjectMetrics {
    /// Registers every `/inject` metric in `registry`, every fixed label value at 0.
    pub(crate) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
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
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(skips.clone()))?;
        registry.register(Box::new(injections.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        let by_result = ReviewResult::ALL.map(|r| requests.with_label_values(&[r.as_str()]));
        let by_skip = SkipReason::ALL.map(|r| skips.with_label_values(&[r.as_str()]));
        Ok(InjectMetrics {
            requests,
            by_result,
            by_skip,
            injections,
            duration,
        })
    }

    /// Records one answered review.
    fn observe_reply(&self, reply: &admission::Reply<'_>, elapsed: Duration) {
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
    fn observe_refused(&self, elapsed: Duration) {
        self.by_result[result_index(ReviewResult::Error)].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// The value of `meshrev_injection_requests_total{result}`.
    pub(crate) fn requests(&self, result: ReviewResult) -> u64 {
        self.requests.with_label_values(&[result.as_str()]).get()
    }
}

/// The `/inject` service: the table it reviews against, its metrics and its deadline.
pub(crate) struct InjectService {
    pub(super) store: Arc<TableStore>,
    pub(super) metrics: InjectMetrics,
    /// Deadline of one request, body read included (504 after it).
    pub(super) deadline: Duration,
    /// When set, answered for every body without a review (the transport's floor, for
    /// benches).
    pub(super) fixed_body: Option<Bytes>,
}

impl InjectService {
    /// Answers one `POST /inject`.
    pub(super) async fn call(&self, limits: &BodyLimits, req: Request<Incoming>) -> Reply {
        let start = Instant::now();
        body::read_then(
            limits,
            req,
            start,
            self.deadline,
            "/inject",
            |elapsed| self.metrics.observe_refused(elapsed),
            |body| std::future::ready(self.answer(&body, start)),
        )
        .await
    }

    /// Reviews one body against the current table and records it.
    fn answer(&self, body: &[u8], start: Instant) -> Reply {
        if let Some(fixed) = &self.fixed_body {
            return respond::json(StatusCode::OK, fixed.clone());
        }
        let table = self.store.load();
        let reply = SCRATCH.with_borrow_mut(|scratch| {
            let reply = admission::review(&table, body, scratch);
            if scratch.capacity() > 4 * 1024 * 1024 {
                *scratch = Vec::with_capacity(16 * 1024);
            }
            reply
        });
        self.metrics.observe_reply(&reply, start.elapsed());
        if let Some(message) = &reply.message {
            tracing::debug!(result = reply.result.as_str(), "{message}");
        }
        respond::json(StatusCode::OK, Bytes::from(reply.body))
    }
}
