//! Reading an admission request's body under the shared limits and the endpoint's
//! deadline, for both webhooks.
//!
//! Before the endpoint sees a body: a `Content-Length` over [`MAX_BODY_BYTES`] gets 413
//! (before any of it is read; the streamed read is capped too), a body that fails to
//! arrive gets 400, a body that does not fit in the in-flight budget within its wait gets
//! 503 (`Retry-After: 1`), and a request not answered within the endpoint's deadline gets
//! 504 — each an AdmissionReview error body ([`respond::refusal`]).

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderValue, RETRY_AFTER};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::MAX_BODY_BYTES;
use super::limits::{BodyBudget, BodyPermit, OverBudget};
use super::respond::{self, Reply};

/// The request-body bytes held at once across every connection and both webhooks, and how
/// long a request waits for room. Owned by the webhook router; requests only reserve from
/// it (the bytes come back when their permit drops).
pub(crate) struct BodyLimits {
    pub(super) budget: BodyBudget,
    pub(super) wait: Duration,
}

enum ReadError {
    TooLarge,
    Body(hyper::Error),
    OverBudget(OverBudget),
}

/// The body as it is read. A body that arrives in one frame is not copied.
#[derive(Default)]
struct BodyBuf {
    first: Option<Bytes>,
    buf: Vec<u8>,
}

impl BodyBuf {
    /// What was read so far.
    fn read(&self) -> &[u8] {
        match &self.first {
            Some(f) => f,
            None => &self.buf,
        }
    }
    fn take(&mut self) -> Bytes {
        match self.first.take() {
            Some(f) => f,
            None => Bytes::from(std::mem::take(&mut self.buf)),
        }
    }
}

/// Reads the body into `out`, at most [`MAX_BODY_BYTES`] of it, holding every byte it
/// keeps in `permit` first: a body with a `Content-Length` was reserved whole before this
/// is called; a streamed one reserves as its frames arrive.
async fn read_body(
    mut body: Incoming,
    declared: Option<u64>,
    out: &mut BodyBuf,
    budget: &BodyBudget,
    permit: &mut BodyPermit,
) -> Result<(), ReadError> {
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ReadError::Body)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        total += data.len();
        if total > MAX_BODY_BYTES {
            return Err(ReadError::TooLarge);
        }
        if total > permit.bytes() {
            budget
                .reserve(permit, total, true)
                .await
                .map_err(ReadError::OverBudget)?;
        }
        match out.first.take() {
            None if out.buf.is_empty() => out.first = Some(data),
            None => out.buf.extend_from_slice(&data),
            Some(f) => {
                let cap = declared.map_or(0, |n| n as usize).max(total);
                out.buf.reserve(cap);
                out.buf.extend_from_slice(&f);
                out.buf.extend_from_slice(&data);
            }
        }
    }
    Ok(())
}

fn content_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Reads `req`'s body within `limits` and, all within `deadline`, answers it with
/// `answer`. A refused request (see the module doc) is reported to `refused` with the time
/// since `start`, and answered with the refusal. `endpoint` names the path in logs.
pub(super) async fn read_then<F, Fut>(
    limits: &BodyLimits,
    req: Request<Incoming>,
    start: Instant,
    deadline: Duration,
    endpoint: &'static str,
    refused: impl Fn(Duration),
    answer: F,
) -> Reply
where
    F: FnOnce(Bytes) -> Fut,
    Fut: Future<Output = Reply>,
{
    let version = req.version();
    let declared = content_length(&req);
    if let Some(n) = declared
        && n > MAX_BODY_BYTES as u64
    {
        refused(start.elapsed());
        tracing::debug!("refused an {endpoint} body of {n} bytes");
        return respond::refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            version,
            b"",
            &format!("request body of {n} bytes is over the limit of {MAX_BODY_BYTES} bytes"),
        );
    }
    // Bytes held for this request until its reply is built (dropped last).
    let mut permit = limits.budget.permit();
    let mut read = BodyBuf::default();
    let work = async {
        if let Some(n) = declared {
            limits
                .budget
                .reserve(&mut permit, n as usize, false)
                .await
                .map_err(ReadError::OverBudget)?;
        }
        read_body(
            req.into_body(),
            declared,
            &mut read,
            &limits.budget,
            &mut permit,
        )
        .await?;
        let body = read.take();
        Ok::<_, ReadError>(answer(body).await)
    };
    let outcome = tokio::time::timeout(deadline, work).await;
    let refuse = |status, message: &str| {
        refused(start.elapsed());
        tracing::debug!("refused an {endpoint} request: {message}");
        respond::refusal(status, version, read.read(), message)
    };
    match outcome {
        Ok(Ok(response)) => response,
        Ok(Err(ReadError::TooLarge)) => refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body is over the limit of {MAX_BODY_BYTES} bytes"),
        ),
        Ok(Err(ReadError::Body(e))) => refuse(
            StatusCode::BAD_REQUEST,
            &format!("reading the request body: {e}"),
        ),
        Ok(Err(ReadError::OverBudget(o))) => {
            let mut r = refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "meshrev is busy: {} request-body bytes would not fit in --max-inflight-body-bytes ({}) within {:?}; retry",
                    o.wanted,
                    limits.budget.total(),
                    limits.wait,
                ),
            );
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Err(_) => refuse(
            StatusCode::GATEWAY_TIMEOUT,
            &format!("the request was not complete within {deadline:?}"),
        ),
    }
}
