//! Bounds on what clients can make the server hold: request bytes in flight across all
//! connections ([`BodyBudget`]), open connections ([`ConnSlots`]), and idle connections
//! ([`Activity`]).
//!
//! The budget is a semaphore of bytes. A request with a `Content-Length` reserves that
//! many bytes before reading any of its body; a request without one reserves as its frames
//! arrive. While a request waits for bytes its body is not read, so HTTP/2 flow control
//! (and TCP for HTTP/1) holds the client back. A request that cannot get its bytes within
//! the budget wait is refused (503, see `server::body`). The bytes are returned when the
//! reply has been built.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Smallest reservation a streamed body (no `Content-Length`) makes at a time.
const STREAM_CHUNK: usize = 64 * 1024;
/// Requests that may wait for room at once; more are refused at once. A waiting request
/// holds what its client sent before the server stopped reading (at most an HTTP/2 stream
/// window, 64 KiB), outside the budget: this caps that at 32 MiB.
pub(crate) const MAX_WAITING: usize = 512;

/// The global budget of request-body bytes held at once.
#[derive(Debug)]
pub(crate) struct BodyBudget {
    sem: Arc<Semaphore>,
    total: usize,
    wait: Duration,
    gauge: IntGauge,
    waiting: AtomicUsize,
    waiting_gauge: IntGauge,
}

/// The request could not get its bytes within the wait.
#[derive(Debug)]
pub(crate) struct OverBudget {
    pub(crate) wanted: usize,
}

/// Bytes reserved by one request; returned on drop.
#[derive(Debug)]
pub(crate) struct BodyPermit {
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
    gauge: IntGauge,
}

impl BodyBudget {
    /// `total` bytes in all, each reservation waiting at most `wait`; `gauge` tracks the
    /// bytes reserved (`meshrev_inflight_body_bytes`), `waiting_gauge` the requests waiting
    /// for room (`meshrev_inflight_body_waiting`).
    pub(crate) fn new(
        total: usize,
        wait: Duration,
        gauge: IntGauge,
        waiting_gauge: IntGauge,
    ) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        BodyBudget {
            sem: Arc::new(Semaphore::new(total)),
            total,
            wait,
            gauge,
            waiting: AtomicUsize::new(0),
            waiting_gauge,
        }
    }

    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// A permit holding nothing yet.
    pub(crate) fn permit(&self) -> BodyPermit {
        BodyPermit {
            permit: None,
            bytes: 0,
            gauge: self.gauge.clone(),
        }
    }

    /// Grows `permit` to hold at least `bytes` in all, waiting at most the budget wait.
    /// `streamed`: the size is not known in advance, so reserve at least a chunk ahead.
    pub(crate) async fn reserve(
        &self,
        permit: &mut BodyPermit,
        bytes: usize,
        streamed: bool,
    ) -> Result<(), OverBudget> {
        if bytes <= permit.bytes {
            return Ok(());
        }
        let mut more = bytes - permit.bytes;
        if streamed {
            more = more.max(STREAM_CHUNK);
        }
        let more = more.min(self.total.saturating_sub(permit.bytes));
        if more == 0 || permit.bytes + more < bytes {
            return Err(OverBudget { wanted: bytes });
        }
        let n = u32::try_from(more).map_err(|_| OverBudget { wanted: bytes })?;
        let got = match self.sem.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => return Err(OverBudget { wanted: bytes }),
            Err(TryAcquireError::NoPermits) => {
                // Counted until this future ends or is dropped (a request deadline).
                struct Waiting<'a>(&'a BodyBudget);
                impl Drop for Waiting<'_> {
                    fn drop(&mut self) {
                        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
                        self.0.waiting_gauge.dec();
                    }
                }
                let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
                self.waiting_gauge.inc();
                let _waiting = Waiting(self);
                if queued >= MAX_WAITING {
                    return Err(OverBudget { wanted: bytes });
                }
                let waited =
                    tokio::time::timeout(self.wait, self.sem.clone().acquire_many_owned(n)).await;
                match waited {
                    Ok(Ok(p)) => p,
                    _ => return Err(OverBudget { wanted: bytes }),
                }
            }
        };
        match &mut permit.permit {
            Some(p) => p.merge(got),
            slot @ None => *slot = Some(got),
        }
        permit.bytes += more;
        permit.gauge.add(more as i64);
        Ok(())
    }
}

impl BodyPermit {
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for BodyPermit {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes as i64);
    }
}

/// Slots for open connections on the TLS listener (`--max-connections`).
#[derive(Debug, Clone)]
pub(crate) struct ConnSlots {
    sem: Arc<Semaphore>,
    gauge: IntGauge,
}

/// One open connection; frees its slot on drop.
#[derive(Debug)]
pub(crate) struct ConnSlot {
    _permit: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl ConnSlots {
    pub(crate) fn new(max: usize, gauge: IntGauge) -> Self {
        ConnSlots {
            sem: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            gauge,
        }
    }
    /// A slot if one is free.
    pub(crate) fn try_take(&self) -> Option<ConnSlot> {
        let permit = self.sem.clone().try_acquire_owned().ok()?;
        self.gauge.inc();
        Some(ConnSlot {
            _permit: permit,
            gauge: self.gauge.clone(),
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Request activity of one connection: what the idle timeout looks at. HTTP/2 pings and
/// other frames are not activity; only requests are.
#[derive(Debug)]
pub(crate) struct Activity {
    born: Instant,
    inflight: AtomicUsize,
    seen: AtomicBool,
    /// Milliseconds after `born` when the last request ended (or the connection started).
    last_ms: AtomicU64,
}

/// Marks one request in progress; ends it on drop.
pub(crate) struct Busy(Arc<Activity>);

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Activity {
            born: Instant::now(),
            inflight: AtomicUsize::new(0),
            seen: AtomicBool::new(false),
            last_ms: AtomicU64::new(0),
        })
    }
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.seen.store(true, Ordering::Relaxed);
        self.inflight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }
    /// Whether a request ever started.
    pub(crate) fn seen(&self) -> bool {
        self.seen.load(Ordering::Relaxed)
    }
    /// When the connection, if nothing starts before, has been idle for `timeout`; `None`
    /// while a request is in progress.
    pub(crate) fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.inflight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Acquire));
        Some(self.born + last + timeout)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_ms.fetch_max(ms, Ordering::AcqRel);
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge() -> IntGauge {
        IntGauge::new("g", "g").unwrap()
    }

    #[tokio::test]
    async fn budget_reserves_returns_and_refuses_when_full() {
        let g = gauge();
        let b = BodyBudget::new(1000, Duration::from_millis(10), g.clone(), gauge());
        let mut a = b.permit();
        b.reserve(&mut a, 600, false).await.unwrap();
        assert_eq!((a.bytes(), g.get()), (600, 600));
        let mut c = b.permit();
        assert!(b.reserve(&mut c, 600, false).await.is_err());
        b.reserve(&mut c, 400, false).await.unwrap();
        assert_eq!(g.get(), 1000);
        drop(a);
        assert_eq!(g.get(), 400);
        // Grows in place; a streamed reservation takes a chunk ahead, capped by the total.
        b.reserve(&mut c, 500, true).await.unwrap();
        assert_eq!(c.bytes(), 1000);
        assert!(b.reserve(&mut c, 1001, true).await.is_err());
        drop(c);
        assert_eq!(g.get(), 0);
    }

    #[tokio::test]
    async fn a_waiting_reservation_gets_freed_bytes() {
        let b = Arc::new(BodyBudget::new(
            100,
            Duration::from_secs(30),
            gauge(),
            gauge(),
        ));
        let mut a = b.permit();
        b.reserve(&mut a, 100, false).await.unwrap();
        let b2 = b.clone();
        let waiter = tokio::spawn(async move {
            let mut p = b2.permit();
            b2.reserve(&mut p, 50, false).await.map(|()| p.bytes())
        });
        tokio::task::yield_now().await;
        drop(a);
        assert_eq!(waiter.await.unwrap().unwrap(), 50);
    }

    #[tokio::test]
    async fn waiting_requests_are_capped() {
        let waiting = gauge();
        let b = Arc::new(BodyBudget::new(
            10,
            Duration::from_secs(3600),
            gauge(),
            waiting.clone(),
        ));
        let mut full = b.permit();
        b.reserve(&mut full, 10, false).await.unwrap();
        let mut waiters = tokio::task::JoinSet::new();
        for _ in 0..MAX_WAITING {
            let b = b.clone();
            waiters.spawn(async move {
                let mut p = b.permit();
                b.reserve(&mut p, 1, false).await.is_ok()
            });
        }
        while waiting.get() < MAX_WAITING as i64 {
            tokio::task::yield_now().await;
        }
        // One more is refused without waiting (the wait is an hour).
        let mut p = b.permit();
        assert!(b.reserve(&mut p, 1, false).await.is_err());
        assert_eq!(waiting.get(), MAX_WAITING as i64);
        waiters.abort_all();
        while waiters.join_next().await.is_some() {}
        assert_eq!(waiting.get(), 0, "aborted waiters are not counted");
    }

    #[test]
    fn slots_are_counted_and_freed() {
        let g = gauge();
        let s = ConnSlots::new(2, g.clone());
        let a = s.try_take().unwrap();
        let _b = s.try_take().unwrap();
        assert!(s.try_take().is_none());
        assert_eq!(g.get(), 2);
        drop(a);
        assert_eq!(g.get(), 1);
        assert!(s.try_take().is_some());
    }
}
