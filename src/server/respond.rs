//! Building replies: plain text, JSON, 405, `/readyz`, and the non-200 AdmissionReview
//! refusals. Shared by every listener; holds no state.

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body_util::Full;

use crate::admission;
use crate::health::Readiness;

/// The body type of every reply.
pub(crate) type Reply = Response<Full<Bytes>>;

pub(super) fn text(status: StatusCode, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub(super) fn not_allowed(allow: &'static str) -> Reply {
    let mut r = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed: use {allow}\n"),
    );
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

pub(super) fn json(status: StatusCode, body: Bytes) -> Reply {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// `GET /healthz`: 200 while the process serves.
pub(super) fn healthz() -> Reply {
    text(StatusCode::OK, "ok\n".into())
}

/// `GET /readyz`: 200, or 503 with the reasons.
pub(super) fn readyz(readiness: &Readiness) -> Reply {
    match readiness.status() {
        Ok(()) => text(StatusCode::OK, "ok\n".into()),
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// An AdmissionReview error with a non-200 status; HTTP/1 connections are closed after it
/// (the unread rest of the body makes them unusable anyway). `read` is what was read of
/// the body: the reply carries the request's uid when it shows one.
pub(super) fn refusal(status: StatusCode, version: Version, read: &[u8], message: &str) -> Reply {
    let mut r = json(status, Bytes::from(admission::error_reply(read, message)));
    if version < Version::HTTP_2 {
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    r
}
