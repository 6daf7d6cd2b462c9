//! The AdmissionReview wire format (`admission.k8s.io/v1`): read a request, write a reply.
//!
//! [`review`] is the whole of the webhook's work for one `/inject` request: one borrowed,
//! field-selective parse, the router and injector, and one reply written into a buffer.
//! It never panics on input and always produces a well-formed AdmissionReview.

pub(crate) mod envelope;
pub(crate) mod validate;
pub(crate) use validate::validate;

use serde::Deserialize;

use crate::injector::pod::{Pod, Str};
use crate::router::{self, Outcome, SkipReason, Via};
use crate::table::{Revision, Table};

/// What happened to a request, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReviewResult {
    /// The pod was patched with a sidecar.
    Injected,
    /// The pod was admitted unchanged (see [`crate::router::SkipReason`]).
    Skipped,
    /// The pod was refused (an invalid annotation).
    Denied,
    /// The request was not a valid AdmissionReview of a Pod.
    Error,
}

impl ReviewResult {
    pub(crate) const ALL: [ReviewResult; 4] = [
        ReviewResult::Injected,
        ReviewResult::Skipped,
        ReviewResult::Denied,
        ReviewResult::Error,
    ];
    /// The Prometheus label value (`injected`, `skipped`, `denied`, `error`); must not change.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ReviewResult::Injected => "injected",
            ReviewResult::Skipped => "skipped",
            ReviewResult::Denied => "denied",
            ReviewResult::Error => "error",
        }
    }
}

/// The reply to one review and what it did. Borrows from the table it was computed with.
#[derive(Debug)]
pub struct Reply<'t> {
    /// The AdmissionReview JSON to send.
    pub body: Vec<u8>,
    /// What the review did, for metrics.
    pub result: ReviewResult,
    pub(crate) skip: Option<SkipReason>,
    pub(crate) injected: Option<(&'t Revision, Via<'t>)>,
    /// The error or denial message, when there is one (for logs).
    pub(crate) message: Option<String>,
}

#[derive(Deserialize)]
struct Review<'a> {
    #[serde(rename = "apiVersion", borrow, default)]
    api_version: Option<Str<'a>>,
    #[serde(borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    request: Option<Request<'a>>,
}

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow, default)]
    uid: Option<Str<'a>>,
    #[serde(borrow, default)]
    kind: Option<Gvk<'a>>,
    #[serde(borrow, default)]
    namespace: Option<Str<'a>>,
    #[serde(borrow, default)]
    operation: Option<Str<'a>>,
    #[serde(borrow, default)]
    object: Option<Pod<'a>>,
}

#[derive(Deserialize)]
struct Gvk<'a> {
    #[serde(borrow, default)]
    group: Str<'a>,
    #[serde(borrow, default)]
    kind: Str<'a>,
}

const V1: &str = "admission.k8s.io/v1";
const V1BETA1: &str = "admission.k8s.io/v1beta1";

fn reply_version(v: Option<&str>) -> &'static str {
    if v == Some(V1BETA1) { V1BETA1 } else { V1 }
}

/// Answers one `/inject` review. `patch` is scratch space (cleared first), kept by the
/// caller to avoid an allocation per request.
pub fn review<'t>(table: &'t Table, body: &[u8], patch: &mut Vec<u8>) -> Reply<'t> {
    patch.clear();
    // JSON is UTF-8 (RFC 8259) and the API server sends nothing else. Checking the whole
    // body once, up front, is cheaper than serde_json's check of each string and raw value
    // it reads (the parser over a `&str` skips them).
    let text = match simdutf8::basic::from_utf8(body) {
        Ok(t) => t,
        Err(_) => {
            let found = envelope::scan(body);
            let at = std::str::from_utf8(body)
                .err()
                .map_or(0, |e| e.valid_up_to());
            return error(
                reply_version(found.api_version.as_deref()),
                found.uid.as_deref().unwrap_or(""),
                format!(
                    "body is not valid UTF-8 (at byte {at}): an AdmissionReview is JSON, which must be UTF-8"
                ),
            );
        }
    };
    let rev: Review = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            // NaN, a byte-order mark, a field of the wrong type…: the reply still carries
            // the uid when the envelope shows one.
            let found = envelope::scan(body);
            let what = if body.iter().all(u8::is_ascii_whitespace) {
                "empty request body: expected an AdmissionReview".to_string()
            } else if found.uid.is_some() {
                format!("request.object is not a valid Pod, or the review is not valid JSON: {e}")
            } else {
                format!("body is not a valid AdmissionReview JSON document: {e}")
            };
            return error(
                reply_version(found.api_version.as_deref()),
                found.uid.as_deref().unwrap_or(""),
                what,
            );
        }
    };
    let ver = rev.api_version.as_ref().map(Str::as_str);
    let version = reply_version(ver);
    let uid = rev
        .request
        .as_ref()
        .and_then(|r| r.uid.as_ref())
        .map(Str::as_str)
        .unwrap_or("");
    if ver != Some(V1) && ver != Some(V1BETA1) {
        return error(
            version,
            uid,
            format!("apiVersion is {:?}; expected {V1:?}", ver.unwrap_or("")),
        );
    }
    if rev.kind.as_ref().map(Str::as_str) != Some("AdmissionReview") {
        return error(
            version,
            uid,
            format!(
                "kind is {:?}; expected \"AdmissionReview\"",
                rev.kind.as_ref().map(Str::as_str).unwrap_or("")
            ),
        );
    }
    let Some(req) = &rev.request else {
        return error(version, "", "missing field `request`".into());
    };
    if uid.is_empty() {
        return error(version, "", "missing field `request.uid`".into());
    }
    match &req.kind {
        Some(k) if k.group.as_str().is_empty() && k.kind.as_str() == "Pod" => {}
        Some(k) => {
            return error(
                version,
                uid,
                format!(
                    "request.kind is {}/{}; this webhook only injects Pods (check the webhook's rules)",
                    k.group.as_str(),
                    k.kind.as_str()
                ),
            );
        }
        None => return error(version, uid, "missing field `request.kind`".into()),
    }
    if req.operation.as_ref().map(Str::as_str) != Some("CREATE") {
        let mut body = Vec::with_capacity(160);
        write_reply(&mut body, version, uid, true, None, None, &[]);
        return Reply {
            body,
            result: ReviewResult::Skipped,
            skip: Some(SkipReason::NotCreate),
            injected: None,
            message: None,
        };
    }
    let Some(pod) = &req.object else {
        return error(version, uid, "missing field `request.object`".into());
    };
    let namespace = req
        .namespace
        .as_ref()
        .or(pod.metadata.namespace.as_ref())
        .map(Str::as_str)
        .unwrap_or("default");

    let whole_pod = || {
        let mut review: serde_json::Value = serde_json::from_slice(body).ok()?;
        Some(review.get_mut("request")?.get_mut("object")?.take())
    };
    let outcome = router::inject(table, namespace, pod, patch, whole_pod);
    if matches!(outcome, Outcome::Injected { .. })
        && let Some(missing) = unpatchable(pod, body)
    {
        // The patch appends to `/spec/containers/-` and adds under `/metadata`: on a pod
        // without them (not a valid Pod anyway) it would not apply. Admit it untouched and
        // say why; the API server's validation then refuses it.
        patch.clear();
        let warning = format!("meshrev: no sidecar injected: the pod has no {missing}");
        let mut body = Vec::with_capacity(256);
        write_reply(&mut body, version, uid, true, None, None, &[&warning]);
        return Reply {
            body,
            result: ReviewResult::Skipped,
            skip: None,
            injected: None,
            message: Some(warning),
        };
    }
    match outcome {
        Outcome::Injected {
            revision,
            via,
            warning,
        } => {
            let mut body = Vec::with_capacity(256 + patch.len() * 4 / 3);
            // A pinned revision whose istiod is down still injects (pods must stay
            // creatable), with the warning the controller rendered into the table.
            let warnings: Vec<&str> = warning
                .as_deref()
                .into_iter()
                .chain(table.control_plane_warning(&revision.name))
                .collect();
            write_reply(&mut body, version, uid, true, Some(patch), None, &warnings);
            Reply {
                body,
                result: ReviewResult::Injected,
                skip: None,
                injected: Some((revision, via)),
                message: None,
            }
        }
        Outcome::Skipped { reason, warning } => {
            let mut body = Vec::with_capacity(256);
            let warnings: Vec<&str> = warning.as_deref().into_iter().collect();
            write_reply(&mut body, version, uid, true, None, None, &warnings);
            Reply {
                body,
                result: ReviewResult::Skipped,
                skip: Some(reason),
                injected: None,
                message: None,
            }
        }
        Outcome::Denied(refusal) => {
            let message = refusal.into_message();
            let mut body = Vec::with_capacity(256 + message.len());
            write_reply(
                &mut body,
                version,
                uid,
                false,
                None,
                Some((400, &message)),
                &[],
            );
            Reply {
                body,
                result: ReviewResult::Denied,
                skip: None,
                injected: None,
                message: Some(message),
            }
        }
    }
}

/// What an injected pod lacks for the patch to apply: `spec.containers` (or `spec`), or
/// `metadata`. Free for a normal pod; only a pod whose metadata reads as empty costs a
/// second, field-selective parse of `body`.
fn unpatchable(pod: &Pod<'_>, body: &[u8]) -> Option<&'static str> {
    if pod.spec.as_ref().is_none_or(|s| s.containers.is_empty()) {
        return Some("spec.containers");
    }
    let m = &pod.metadata;
    if m.name.is_some()
        || m.generate_name.is_some()
        || m.labels.is_some()
        || m.annotations.is_some()
    {
        return None;
    }
    #[derive(Deserialize)]
    struct R {
        request: Q,
    }
    #[derive(Deserialize)]
    struct Q {
        object: O,
    }
    #[derive(Deserialize)]
    struct O {
        #[serde(default)]
        metadata: Option<serde::de::IgnoredAny>,
    }
    match serde_json::from_slice::<R>(body) {
        Ok(r) if r.request.object.metadata.is_none() => Some("metadata"),
        _ => None,
    }
}

fn error(version: &str, uid: &str, message: String) -> Reply<'static> {
    let mut body = Vec::with_capacity(256 + message.len());
    write_reply(
        &mut body,
        version,
        uid,
        false,
        None,
        Some((400, &message)),
        &[],
    );
    Reply {
        body,
        result: ReviewResult::Error,
        skip: None,
        injected: None,
        message: Some(message),
    }
}

/// An AdmissionReview error for a request that was not reviewed (an oversize, unreadable,
/// late or over-budget body, or `/validate` without a cluster). `body` is what was read of
/// the request, possibly nothing or a prefix: the reply carries its uid and apiVersion
/// when they can be found in it ([`envelope::scan`]).
pub(crate) fn error_reply(body: &[u8], message: &str) -> Vec<u8> {
    let found = envelope::scan(body);
    let mut out = Vec::with_capacity(256 + message.len());
    write_reply(
        &mut out,
        reply_version(found.api_version.as_deref()),
        found.uid.as_deref().unwrap_or(""),
        false,
        None,
        Some((400, message)),
        &[],
    );
    out
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing a string to a Vec must not fail");
}

/// Writes an AdmissionReview reply.
pub(crate) fn write_reply(
    out: &mut Vec<u8>,
    version: &str,
    uid: &str,
    allowed: bool,
    patch: Option<&[u8]>,
    status: Option<(u16, &str)>,
    warnings: &[&str],
) {
    out.extend_from_slice(b"{\"apiVersion\":\"");
    out.extend_from_slice(version.as_bytes());
    out.extend_from_slice(b"\",\"kind\":\"AdmissionReview\",\"response\":{\"uid\":");
    push_json_str(out, uid);
    out.extend_from_slice(if allowed {
        b",\"allowed\":true"
    } else {
        b",\"allowed\":false"
    });
    if let Some(p) = patch {
        out.extend_from_slice(b",\"patchType\":\"JSONPatch\",\"patch\":\"");
        // SIMD base64 (a tenth of a review's time with the scalar engine).
        base64_simd::STANDARD.encode_append(p, out);
        out.push(b'"');
    }
    if let Some((code, message)) = status {
        out.extend_from_slice(b",\"status\":{\"code\":");
        out.extend_from_slice(code.to_string().as_bytes());
        out.extend_from_slice(b",\"message\":");
        push_json_str(out, message);
        out.push(b'}');
    }
    if !warnings.is_empty() {
        out.extend_from_slice(b",\"warnings\":[");
        for (i, w) in warnings.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_json_str(out, w);
        }
        out.push(b']');
    }
    out.extend_from_slice(b"}}");
}

#[cfg(test)]
mod tests;
