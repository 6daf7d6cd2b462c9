//! A fake API server for the controller's unit tests: a `kube::Client` over
//! `tower::service_fn` that answers scripted replies in order and records every request.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use kube::Client;
use serde_json::Value;

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: String,
    pub(crate) body: Value,
}

/// The recorded requests of one fake.
pub(crate) struct Fake {
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Fake {
    /// "METHOD path" of every request, in order.
    pub(crate) fn calls(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .map(|c| format!("{} {}", c.method, c.path))
            .collect()
    }
    pub(crate) fn requests(&self) -> Vec<Call> {
        self.calls
            .lock()
            .expect("the test's lock must not be poisoned")
            .clone()
    }
}

/// A client whose every request gets the next of `replies` (HTTP status, JSON body).
pub(crate) fn fake(replies: Vec<(u16, Value)>) -> (Client, Fake) {
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
    let seen = calls.clone();
    let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let seen = seen.clone();
        let replies = replies.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            seen.lock()
                .expect("the test's lock must not be poisoned")
                .push(Call {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or_default().to_string(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                });
            let (code, body) = replies
                .lock()
                .expect("the test's lock must not be poisoned")
                .pop_front()
                .expect("the test must script every reply");
            let resp = http::Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(
                    serde_json::to_vec(&body).expect("json must serialize"),
                ))
                .expect("a response must build");
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    (Client::new(svc, "default"), Fake { calls })
}

/// A `Status` error reply.
pub(crate) fn status(code: u16, reason: &str) -> (u16, Value) {
    (
        code,
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": reason, "code": code, "message": reason}),
    )
}
