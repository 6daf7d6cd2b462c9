//! `/validate`: the upgrade guards for plain `kubectl` users, as a validating webhook for
//! `meshrev.io` `revisiontags` and `meshrevisions` (CREATE, UPDATE, DELETE), and for
//! namespaces carrying `istio.io/rev` or `istio-injection` (CREATE, UPDATE: the webhook's
//! object selectors send only those).
//!
//! The same rules as `meshrev upgrade` ([`crate::upgrade::guards`]): the version skip policy
//! when tag `canary` is created or moved; no tag pointing at a missing revision; no deleting
//! a tag or revision while namespaces or pods use it; no tag moving, and no namespace label
//! switching, to a revision whose control plane (istiod Deployment) is not ready, and no
//! revision in use repointed (`spec.controlPlane`) at a Deployment that is not ready. There is
//! no force here: `--force` belongs to the CLI. A refusal is `allowed: false` with
//! `status.code` 403 and a `status.message` that lists the blocking objects.
//!
//! Not the injection hot path, and no API call: a guarded review is judged against a
//! [`MeshView`] snapshot of the controller's index (revisions, tags, every namespace, the
//! live pods), which the watches keep current. Changes that cannot break a rule (a status
//! write, a label, an annotation) are allowed without taking a snapshot.
//!
//! The index trails the API server by the watch latency (usually milliseconds): a change
//! made just before a guarded request may not be seen by it. The guards protect against
//! mistakes, not against concurrent writers, as they did with LISTs (a LIST raced the same
//! way).

use serde::Deserialize;
use serde_json::Value;

use crate::config::{GROUP, MeshRevision, RevisionTag};
use crate::core::NamespaceLabels;
use crate::upgrade::view::{ControlPlaneRef, RevisionInfo};
use crate::upgrade::{MeshView, guards};

use super::write_reply;

/// What one review asks to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// CREATE, or an UPDATE that changes `spec.revision`.
    TagWrite {
        tag: String,
        revision: String,
        /// The new object's [`ANNOTATION_FORCE_CONTROL_PLANE`](crate::core::ANNOTATION_FORCE_CONTROL_PLANE)
        /// names `revision`: skip the control-plane check.
        forced: bool,
    },
    TagDelete {
        tag: String,
    },
    /// CREATE, or an UPDATE that changes `spec.version`.
    RevisionWrite {
        name: String,
        version: String,
    },
    /// `force`: the stored object has `meshrev.io/force-delete: "true"`.
    RevisionDelete {
        name: String,
        force: bool,
    },
    /// An UPDATE that points `spec.controlPlane` at another Deployment (defaults resolved),
    /// with the new version when that changes too.
    ControlPlaneWrite {
        name: String,
        deployment: ControlPlaneRef,
        version: Option<String>,
    },
    /// A namespace's injection labels change (CREATE with labels, or UPDATE).
    NamespaceWrite {
        namespace: String,
        /// `None` on CREATE.
        before: Option<NamespaceLabels>,
        after: NamespaceLabels,
        /// The new object's force annotation: the revision it may route to unready.
        forced: Option<String>,
    },
    /// Nothing a guard checks changed.
    Unguarded,
}

/// How much of the cluster a guard reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Needs {
    /// Revisions and tags.
    Config,
    /// Also every namespace and the live pods (what still uses a tag or revision).
    Usage,
}

impl Change {
    /// What judging it reads; `None` when no guard judges it.
    pub(crate) fn needs(&self) -> Option<Needs> {
        match self {
            Change::Unguarded => None,
            Change::TagWrite { .. }
            | Change::RevisionWrite { .. }
            | Change::NamespaceWrite { .. } => Some(Needs::Config),
            Change::TagDelete { .. }
            | Change::RevisionDelete { .. }
            | Change::ControlPlaneWrite { .. } => Some(Needs::Usage),
        }
    }

    /// The guards' verdict: warnings when allowed.
    pub(crate) fn check(&self, view: &MeshView) -> Result<Vec<String>, guards::Refusal> {
        match self {
            Change::Unguarded => Ok(Vec::new()),
            Change::TagWrite {
                tag,
                revision,
                forced,
            } => {
                // Skipped only for a write that names its revision in the force annotation
                // (`meshrev upgrade … --force` sets it in the same patch).
                let check = if *forced {
                    guards::ControlPlanes::Force
                } else {
                    guards::ControlPlanes::Require
                };
                guards::tag_write(view, tag, revision, check).map(|()| Vec::new())
            }
            Change::TagDelete { tag } => guards::tag_delete(view, tag).map(|()| Vec::new()),
            Change::RevisionWrite { name, version } => {
                guards::revision_write(view, name, version).map(|()| Vec::new())
            }
            Change::RevisionDelete { name, force } => guards::revision_delete(view, name, *force),
            Change::NamespaceWrite {
                namespace,
                before,
                after,
                forced,
            } => {
                guards::namespace_write(view, namespace, before.as_ref(), after, forced.as_deref())
                    .map(|()| Vec::new())
            }
            Change::ControlPlaneWrite {
                name,
                deployment,
                version,
            } => {
                if let Some(v) = version {
                    guards::revision_write(view, name, v)?;
                }
                guards::control_plane_write(view, name, deployment).map(|()| Vec::new())
            }
        }
    }
}

/// A parsed review: reply version, uid, and the change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub(crate) version: &'static str,
    pub(crate) uid: String,
    pub(crate) change: Change,
}

#[derive(Deserialize)]
struct Review {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    request: Option<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    kind: Option<Gvk>,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    object: Option<Value>,
    #[serde(default)]
    old_object: Option<Value>,
}

#[derive(Deserialize)]
struct Gvk {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

const V1: &str = "admission.k8s.io/v1";
const V1BETA1: &str = "admission.k8s.io/v1beta1";

/// A review `/validate` cannot judge, with what its error reply needs.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ParseError {
    /// The AdmissionReview version to answer with.
    pub(crate) version: &'static str,
    /// The request's uid, empty when it has none.
    pub(crate) uid: String,
    /// What is wrong with the review, for the reply's `status.message`.
    pub(crate) message: String,
}

/// Parses an AdmissionReview of a meshrev.io object into the change it asks for.
pub(crate) fn parse(body: &[u8]) -> Result<Parsed, ParseError> {
    let review: Review = serde_json::from_slice(body).map_err(|e| {
        let found = super::envelope::scan(body);
        ParseError {
            version: if found.api_version.as_deref() == Some(V1BETA1) {
                V1BETA1
            } else {
                V1
            },
            uid: found.uid.unwrap_or_default(),
            message: format!("body is not a valid AdmissionReview JSON document: {e}"),
        }
    })?;
    let uid = review
        .request
        .as_ref()
        .map(|r| r.uid.clone())
        .unwrap_or_default();
    let version = if review.api_version.as_deref() == Some(V1BETA1) {
        V1BETA1
    } else {
        V1
    };
    if review.api_version.as_deref() != Some(V1) && version != V1BETA1 {
        return Err(ParseError {
            version,
            uid,
            message: format!(
                "apiVersion is {:?}; expected {V1:?}",
                review.api_version.unwrap_or_default()
            ),
        });
    }
    if review.kind.as_deref() != Some("AdmissionReview") {
        return Err(ParseError {
            version,
            uid,
            message: "kind must be AdmissionReview".into(),
        });
    }
    let Some(req) = review.request else {
        return Err(ParseError {
            version,
            uid: String::new(),
            message: "missing field `request`".into(),
        });
    };
    if uid.is_empty() {
        return Err(ParseError {
            version,
            uid: String::new(),
            message: "missing field `request.uid`".into(),
        });
    }
    let fail = |message: String| ParseError {
        version,
        uid: uid.clone(),
        message,
    };
    let kind = match &req.kind {
        Some(k) if k.group == GROUP => k.kind.clone(),
        Some(k) if k.group.is_empty() && k.kind == "Namespace" => k.kind.clone(),
        Some(k) => {
            return Err(fail(format!(
                "request.kind is {}/{}; /validate only judges meshrev.io RevisionTags and MeshRevisions, and Namespaces (check the webhook's rules)",
                k.group, k.kind
            )));
        }
        None => return Err(fail("missing field `request.kind`".into())),
    };
    if req.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        // Status writes by the controller: nothing to guard.
        return Ok(Parsed {
            version,
            uid,
            change: Change::Unguarded,
        });
    }
    let name = req.name.clone().unwrap_or_default();
    let change = match (kind.as_str(), req.operation.as_str()) {
        ("RevisionTag", "CREATE" | "UPDATE") => {
            let (new, old): (RevisionTag, Option<RevisionTag>) = new_and_old(&req).map_err(fail)?;
            let tag = new.metadata.name.clone().unwrap_or(name);
            if old.is_some_and(|o| o.spec.revision == new.spec.revision) {
                Change::Unguarded
            } else {
                let forced = force_annotation(&req.object) == Some(new.spec.revision.as_str());
                Change::TagWrite {
                    tag,
                    revision: new.spec.revision,
                    forced,
                }
            }
        }
        ("RevisionTag", "DELETE") => Change::TagDelete { tag: name },
        ("MeshRevision", "CREATE" | "UPDATE") => {
            let (new, old): (MeshRevision, Option<MeshRevision>) =
                new_and_old(&req).map_err(fail)?;
            let rev = new.metadata.name.clone().unwrap_or(name);
            let deployment = |r: &MeshRevision| RevisionInfo::from(r).control_plane;
            let version_changed = old
                .as_ref()
                .is_none_or(|o| o.spec.version != new.spec.version);
            let moved = old
                .as_ref()
                .and_then(|o| deployment(&new).filter(|d| deployment(o).as_ref() != Some(d)));
            match (moved, version_changed) {
                (Some(deployment), changed) => Change::ControlPlaneWrite {
                    name: rev,
                    deployment,
                    version: changed.then_some(new.spec.version),
                },
                (None, true) => Change::RevisionWrite {
                    name: rev,
                    version: new.spec.version,
                },
                (None, false) => Change::Unguarded,
            }
        }
        ("MeshRevision", "DELETE") => {
            let force = req
                .old_object
                .as_ref()
                .and_then(|o| o.pointer("/metadata/annotations"))
                .and_then(|a| a.get(crate::core::ANNOTATION_FORCE_DELETE))
                .and_then(Value::as_str)
                == Some("true");
            Change::RevisionDelete { name, force }
        }
        ("Namespace", "CREATE" | "UPDATE") => {
            let labels = |v: &Option<Value>| -> Option<NamespaceLabels> {
                let v = v.as_ref().filter(|v| !v.is_null())?;
                let map = v.pointer("/metadata/labels").and_then(Value::as_object);
                Some(NamespaceLabels::from_labels(|k| {
                    map.and_then(|m| m.get(k)).and_then(Value::as_str)
                }))
            };
            let after = labels(&req.object).unwrap_or_default();
            let before = labels(&req.old_object);
            let namespace = req
                .object
                .as_ref()
                .and_then(|o| o.pointer("/metadata/name"))
                .and_then(Value::as_str)
                .map_or(name, str::to_string);
            if before.as_ref() == Some(&after) || (before.is_none() && after.is_empty()) {
                Change::Unguarded
            } else {
                Change::NamespaceWrite {
                    namespace,
                    before,
                    after,
                    forced: force_annotation(&req.object).map(str::to_string),
                }
            }
        }
        ("Namespace", _) | (_, "CONNECT") => Change::Unguarded,
        (k, op) => {
            return Err(fail(format!(
                "cannot judge {op} of {k}: /validate handles CREATE, UPDATE and DELETE of RevisionTag and MeshRevision"
            )));
        }
    };
    Ok(Parsed {
        version,
        uid,
        change,
    })
}

/// The object of a CREATE/UPDATE and, for an UPDATE, the object it replaces.
/// The object's [`ANNOTATION_FORCE_CONTROL_PLANE`](crate::core::ANNOTATION_FORCE_CONTROL_PLANE).
fn force_annotation(object: &Option<Value>) -> Option<&str> {
    object
        .as_ref()?
        .pointer("/metadata/annotations")?
        .get(crate::core::ANNOTATION_FORCE_CONTROL_PLANE)?
        .as_str()
}

fn new_and_old<T: serde::de::DeserializeOwned>(req: &Request) -> Result<(T, Option<T>), String> {
    let new = object(&req.object, "object")?;
    let old = match &req.old_object {
        Some(v) if !v.is_null() => Some(object(&req.old_object, "oldObject")?),
        _ => None,
    };
    Ok((new, old))
}

fn object<T: serde::de::DeserializeOwned>(v: &Option<Value>, field: &str) -> Result<T, String> {
    let v = v
        .as_ref()
        .ok_or_else(|| format!("missing field `request.{field}`"))?;
    T::deserialize(v).map_err(|e| format!("request.{field} is not valid: {e}"))
}

/// What a `/validate` reply says, for the service's metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allowed,
    /// Refused by a guard.
    Denied,
    /// Refused before review: malformed, or not checked (the cluster view is not ready).
    Error,
}

/// Judges `change` against `view` and writes the reply.
pub(crate) fn reply_with_view(parsed: &Parsed, view: &MeshView) -> (Vec<u8>, Verdict) {
    let mut out = Vec::with_capacity(512);
    let verdict = match parsed.change.check(view) {
        Ok(warnings) => {
            let w: Vec<&str> = warnings.iter().map(String::as_str).collect();
            write_reply(&mut out, parsed.version, &parsed.uid, true, None, None, &w);
            Verdict::Allowed
        }
        Err(refusal) => {
            write_reply(
                &mut out,
                parsed.version,
                &parsed.uid,
                false,
                None,
                Some((403, &refusal.one_line())),
                &[],
            );
            Verdict::Denied
        }
    };
    (out, verdict)
}

/// Answers one `/validate` review: the body of the HTTP reply (an AdmissionReview, always
/// well-formed; `application/json`, status 200). `view` gives the controller's snapshot of
/// what the change [`Needs`], or `None` while its watches have not all listed; it is
/// called only for a guarded change.
/// Without a view the change is refused (code 500) rather than allowed unchecked (the
/// webhook's `failurePolicy` is `Fail` too).
pub(crate) fn validate(
    body: &[u8],
    view: impl FnOnce(Needs) -> Option<MeshView>,
) -> (Vec<u8>, Verdict) {
    let parsed = match parse(body) {
        Ok(p) => p,
        Err(ParseError {
            version,
            uid,
            message,
        }) => {
            let mut out = Vec::with_capacity(256 + message.len());
            write_reply(
                &mut out,
                version,
                &uid,
                false,
                None,
                Some((400, &message)),
                &[],
            );
            return (out, Verdict::Error);
        }
    };
    let Some(needs) = parsed.change.needs() else {
        let mut out = Vec::with_capacity(160);
        write_reply(&mut out, parsed.version, &parsed.uid, true, None, None, &[]);
        return (out, Verdict::Allowed);
    };
    match view(needs) {
        Some(view) => reply_with_view(&parsed, &view),
        None => (
            unavailable(
                &parsed,
                "the controller has not listed the cluster yet (its watches are starting or failing)",
            ),
            Verdict::Error,
        ),
    }
}

fn unavailable(parsed: &Parsed, why: &str) -> Vec<u8> {
    tracing::warn!(error = why, "upgrade guard could not read the cluster");
    let message = format!(
        "meshrev could not check this change against the upgrade guards ({why}); retry, and check meshrev's RBAC (list and watch namespaces, pods, nodes, deployments, meshrevisions, revisiontags)"
    );
    let mut out = Vec::with_capacity(256 + message.len());
    write_reply(
        &mut out,
        parsed.version,
        &parsed.uid,
        false,
        None,
        Some((500, &message)),
        &[],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::view::{NamespaceLabels, PodInfo, RevisionInfo, TagInfo};
    use serde_json::json;

    fn review(kind: &str, op: &str, name: &str, object: Value, old: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "meshrev.io", "version": "v1alpha1", "kind": kind},
                "resource": {"group": "meshrev.io", "version": "v1alpha1", "resource": "x"},
                "operation": op,
                "name": name,
                "object": object,
                "oldObject": old,
            }
        }))
        .unwrap()
    }

    fn tag(name: &str, rev: &str) -> Value {
        json!({"apiVersion": "meshrev.io/v1alpha1", "kind": "RevisionTag",
               "metadata": {"name": name}, "spec": {"revision": rev}})
    }

    fn rev(name: &str, version: &str, force: bool) -> Value {
        let mut v = json!({"apiVersion": "meshrev.io/v1alpha1", "kind": "MeshRevision",
               "metadata": {"name": name}, "spec": {"version": version}});
        if force {
            v["metadata"]["annotations"] = json!({"meshrev.io/force-delete": "true"});
        }
        v
    }

    fn view() -> MeshView {
        let mut m = MeshView::default();
        m.revisions
            .insert("1-22-6".into(), RevisionInfo::new("1.22.6"));
        m.revisions
            .insert("1-23-6".into(), RevisionInfo::new("1.23.6"));
        m.revisions
            .insert("1-24-0".into(), RevisionInfo::new("1.24.0"));
        m.tags.insert("stable".into(), TagInfo::new("1-22-6"));
        m.tags.insert("canary".into(), TagInfo::new("1-23-6"));
        m.namespaces
            .insert("default".into(), NamespaceLabels::rev("canary"));
        m.pods.push(PodInfo {
            namespace: "default".into(),
            name: "reviews-v2-abc".into(),
            revision: Some("1-23-6".into()),
            ..Default::default()
        });
        m.with_ready_control_planes()
    }

    fn answer(body: &[u8]) -> Value {
        let parsed = parse(body).unwrap();
        serde_json::from_slice(&reply_with_view(&parsed, &view()).0).unwrap()
    }

    #[test]
    fn parses_changes() {
        let p = parse(&review(
            "RevisionTag",
            "CREATE",
            "canary",
            tag("canary", "1-24-0"),
            Value::Null,
        ))
        .unwrap();
        assert_eq!(
            p.change,
            Change::TagWrite {
                tag: "canary".into(),
                revision: "1-24-0".into(),
                forced: false,
            }
        );
        let p = parse(&review(
            "RevisionTag",
            "UPDATE",
            "canary",
            tag("canary", "1-23-6"),
            tag("canary", "1-23-6"),
        ))
        .unwrap();
        assert_eq!(p.change, Change::Unguarded);
        assert!(p.change.needs().is_none());
        let p = parse(&review(
            "MeshRevision",
            "DELETE",
            "1-22-6",
            Value::Null,
            rev("1-22-6", "1.22.6", true),
        ))
        .unwrap();
        assert_eq!(
            p.change,
            Change::RevisionDelete {
                name: "1-22-6".into(),
                force: true
            }
        );
        assert_eq!(p.change.needs(), Some(Needs::Usage));
        let e = parse(b"{}").unwrap_err();
        assert!(e.message.contains("apiVersion"), "{e:?}");
        let mut pod: Value = serde_json::from_slice(&review(
            "RevisionTag",
            "CREATE",
            "x",
            tag("x", "y"),
            Value::Null,
        ))
        .unwrap();
        pod["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Pod"});
        let pod = serde_json::to_vec(&pod).unwrap();
        assert!(parse(&pod).unwrap_err().message.contains("only judges"));
    }

    #[test]
    fn refuses_with_403_and_blockers() {
        let a = answer(&review(
            "RevisionTag",
            "UPDATE",
            "canary",
            tag("canary", "1-24-0"),
            tag("canary", "1-23-6"),
        ));
        assert_eq!(a["response"]["allowed"], false);
        assert_eq!(a["response"]["uid"], "u-1");
        assert_eq!(a["response"]["status"]["code"], 403);
        assert!(
            a["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("skip policy"),
            "{a}"
        );

        let a = answer(&review(
            "RevisionTag",
            "DELETE",
            "canary",
            Value::Null,
            tag("canary", "1-23-6"),
        ));
        assert_eq!(a["response"]["allowed"], false);
        let msg = a["response"]["status"]["message"].as_str().unwrap();
        assert!(
            msg.contains("namespace default (istio.io/rev=canary)"),
            "{msg}"
        );

        let a = answer(&review(
            "MeshRevision",
            "DELETE",
            "1-23-6",
            Value::Null,
            rev("1-23-6", "1.23.6", false),
        ));
        let msg = a["response"]["status"]["message"].as_str().unwrap();
        assert!(
            msg.contains("RevisionTag canary") && msg.contains("pod default/reviews-v2-abc"),
            "{msg}"
        );

        let a = answer(&review(
            "RevisionTag",
            "CREATE",
            "prod",
            tag("prod", "1-99-0"),
            Value::Null,
        ));
        assert!(
            a["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("does not exist")
        );
    }

    #[test]
    fn allows_what_keeps_the_rules() {
        let a = answer(&review(
            "RevisionTag",
            "CREATE",
            "prod",
            tag("prod", "1-24-0"),
            Value::Null,
        ));
        assert_eq!(a["response"]["allowed"], true, "{a}");
        let a = answer(&review(
            "RevisionTag",
            "UPDATE",
            "stable",
            tag("stable", "1-23-6"),
            tag("stable", "1-22-6"),
        ));
        assert_eq!(a["response"]["allowed"], true, "{a}");
        let a = answer(&review(
            "MeshRevision",
            "DELETE",
            "1-24-0",
            Value::Null,
            rev("1-24-0", "1.24.0", false),
        ));
        assert_eq!(a["response"]["allowed"], true, "{a}");
        assert!(a["response"].get("status").is_none());
    }

    #[test]
    fn a_tag_to_a_revision_whose_control_plane_is_down_is_refused_naming_it() {
        use crate::core::control_plane::{ControlPlaneRef, DeploymentSummary};
        let mut m = view();
        let istiod = ControlPlaneRef::resolve("1-24-0", None, None);
        m.deployments
            .insert(istiod.clone(), DeploymentSummary::unavailable());
        let body = review(
            "RevisionTag",
            "UPDATE",
            "prod",
            tag("prod", "1-24-0"),
            tag("prod", "1-22-6"),
        );
        let parsed = parse(&body).unwrap();
        let (reply, verdict) = reply_with_view(&parsed, &m);
        assert_eq!(verdict, Verdict::Denied);
        let a: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(a["response"]["status"]["code"], 403);
        let msg = a["response"]["status"]["message"].as_str().unwrap();
        assert!(
            msg.contains("Deployment istio-system/istiod-1-24-0 (Progressing 0/1 available)"),
            "{msg}"
        );
        // Deleted: not found, still refused (never an error, never allowed).
        m.deployments.remove(&istiod);
        let (reply, verdict) = reply_with_view(&parsed, &m);
        assert_eq!(verdict, Verdict::Denied);
        let a: Value = serde_json::from_slice(&reply).unwrap();
        let msg = a["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.contains("istiod-1-24-0: NotFound"), "{msg}");
        // The force annotation (`--force`) passes exactly the revision it names.
        let forced = |to: &str| {
            let mut t = tag("prod", "1-24-0");
            t["metadata"]["annotations"] = json!({crate::core::ANNOTATION_FORCE_CONTROL_PLANE: to});
            parse(&review(
                "RevisionTag",
                "UPDATE",
                "prod",
                t,
                tag("prod", "1-22-6"),
            ))
            .unwrap()
        };
        assert_eq!(reply_with_view(&forced("1-24-0"), &m).1, Verdict::Allowed);
        assert_eq!(reply_with_view(&forced("1-22-6"), &m).1, Verdict::Denied);
        // Available: allowed.
        m.deployments.insert(istiod, DeploymentSummary::ready(1));
        assert_eq!(reply_with_view(&parsed, &m).1, Verdict::Allowed);
    }

    #[test]
    fn a_namespace_label_to_a_revision_whose_istiod_is_down_is_refused() {
        use crate::core::control_plane::{ControlPlaneRef, DeploymentSummary};
        let ns = |labels: Value| {
            json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "labels": labels}})
        };
        let body = |op: &str, new: Value, old: Value| {
            let mut r: Value = serde_json::from_slice(&review("x", op, "shop", new, old)).unwrap();
            r["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Namespace"});
            serde_json::to_vec(&r).unwrap()
        };
        let switch = body(
            "UPDATE",
            ns(json!({"istio.io/rev": "canary"})),
            ns(json!({"istio-injection": "enabled"})),
        );
        let p = parse(&switch).unwrap();
        assert_eq!(p.change.needs(), Some(Needs::Config));
        let mut m = view();
        m.deployments
            .remove(&ControlPlaneRef::resolve("1-23-6", None, None));
        let (reply, verdict) = reply_with_view(&p, &m);
        assert_eq!(verdict, Verdict::Denied);
        let a: Value = serde_json::from_slice(&reply).unwrap();
        let msg = a["response"]["status"]["message"].as_str().unwrap();
        assert!(
            msg.starts_with("namespace shop labelled istio.io/rev=canary refused"),
            "{msg}"
        );
        assert!(
            msg.contains("Deployment istio-system/istiod-1-23-6 (NotFound)"),
            "{msg}"
        );
        // `switch --force` annotates the namespace with the revision it may route to.
        let mut forced = ns(json!({"istio.io/rev": "canary"}));
        forced["metadata"]["annotations"] =
            json!({crate::core::ANNOTATION_FORCE_CONTROL_PLANE: "1-23-6"});
        let fp = parse(&body(
            "UPDATE",
            forced,
            ns(json!({"istio-injection": "enabled"})),
        ))
        .unwrap();
        assert_eq!(reply_with_view(&fp, &m).1, Verdict::Allowed);
        m.deployments.insert(
            ControlPlaneRef::resolve("1-23-6", None, None),
            DeploymentSummary::ready(1),
        );
        assert_eq!(reply_with_view(&p, &m).1, Verdict::Allowed);
        // Other label or annotation changes: unguarded, answered without a view.
        let same = body(
            "UPDATE",
            ns(json!({"istio.io/rev": "canary", "team": "a"})),
            ns(json!({"istio.io/rev": "canary"})),
        );
        assert_eq!(parse(&same).unwrap().change, Change::Unguarded);
        let plain = body("CREATE", ns(json!({"team": "a"})), Value::Null);
        assert_eq!(parse(&plain).unwrap().change, Change::Unguarded);
        let created = body("CREATE", ns(json!({"istio.io/rev": "1-23-6"})), Value::Null);
        assert!(matches!(
            parse(&created).unwrap().change,
            Change::NamespaceWrite { before: None, .. }
        ));
    }

    #[test]
    fn repointing_a_used_revision_at_a_deployment_that_is_not_ready_is_refused() {
        let mut new = rev("1-22-6", "1.22.6", false);
        new["spec"]["controlPlane"] = json!({"name": "istiod"});
        let body = review(
            "MeshRevision",
            "UPDATE",
            "1-22-6",
            new.clone(),
            rev("1-22-6", "1.22.6", false),
        );
        let p = parse(&body).unwrap();
        assert_eq!(p.change.needs(), Some(Needs::Usage));
        let (reply, verdict) = reply_with_view(&p, &view());
        assert_eq!(verdict, Verdict::Denied);
        let a: Value = serde_json::from_slice(&reply).unwrap();
        let msg = a["response"]["status"]["message"].as_str().unwrap();
        assert!(
            msg.contains("Deployment istio-system/istiod (NotFound)")
                && msg.contains("in use by stable"),
            "{msg}"
        );
        // The same spec again (a label added): unguarded.
        let again = review("MeshRevision", "UPDATE", "1-22-6", new.clone(), new.clone());
        assert_eq!(parse(&again).unwrap().change, Change::Unguarded);
        // With a version change too: the skip policy is judged as well.
        let mut both = new;
        both["spec"]["version"] = json!("1.25.0");
        let body = review(
            "MeshRevision",
            "UPDATE",
            "1-23-6",
            {
                let mut b = both.clone();
                b["metadata"]["name"] = json!("1-23-6");
                b
            },
            rev("1-23-6", "1.23.6", false),
        );
        let (reply, _) = reply_with_view(&parse(&body).unwrap(), &view());
        let a: Value = serde_json::from_slice(&reply).unwrap();
        let msg = a["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.contains("skip policy"), "{msg}");
    }

    #[test]
    fn bad_bodies_get_a_400_without_a_view() {
        // Parse errors and unguarded changes answer without asking for a view.
        let never = |_: Needs| -> Option<MeshView> { panic!("no view may be taken") };
        let r: Value = serde_json::from_slice(&validate(b"not json", never).0).unwrap();
        assert_eq!(r["response"]["status"]["code"], 400);
        let body = review(
            "RevisionTag",
            "UPDATE",
            "canary",
            tag("canary", "1-23-6"),
            tag("canary", "1-23-6"),
        );
        let r: Value = serde_json::from_slice(&validate(&body, never).0).unwrap();
        assert_eq!(r["response"]["allowed"], true);
        // A change that needs the cluster before the index has listed: refused, code 500.
        let body = review(
            "RevisionTag",
            "DELETE",
            "canary",
            Value::Null,
            tag("canary", "1-23-6"),
        );
        let (reply, verdict) = validate(&body, |_| None);
        let r: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(r["response"]["allowed"], false);
        assert_eq!(r["response"]["status"]["code"], 500);
        assert_eq!(verdict, Verdict::Error);
        assert_eq!(validate(&body, |_| Some(view())).1, Verdict::Denied);
        assert_eq!(validate(b"not json", never).1, Verdict::Error);
        // With the view: judged (default uses the canary tag).
        let r: Value = serde_json::from_slice(
            &validate(&body, |needs| {
                assert_eq!(needs, Needs::Usage);
                Some(view())
            })
            .0,
        )
        .unwrap();
        assert_eq!(r["response"]["status"]["code"], 403);
        // A tag write reads revisions and tags only.
        let body = review(
            "RevisionTag",
            "CREATE",
            "prod",
            tag("prod", "1-24-0"),
            Value::Null,
        );
        let r: Value = serde_json::from_slice(
            &validate(&body, |needs| {
                assert_eq!(needs, Needs::Config);
                Some(view())
            })
            .0,
        )
        .unwrap();
        assert_eq!(r["response"]["allowed"], true);
    }
}
