//! Each lifecycle step against a mock API server: a `kube::Client` over
//! `tower_test::mock::pair` (as kube-rs's controller-rs example does), answered by
//! [`FakeApi`], a small in-memory API server that records every request. Each test asserts
//! the exact calls (method, path, query, body essentials), that the writes are exactly the
//! ones the plan announced, and, for the guards, that a refusal names its blockers and
//! makes no mutating call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

use super::*;

/// One request the mock API server received.
#[derive(Clone, Debug)]
struct Call {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    body: Option<Value>,
}

impl Call {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
    fn is_write(&self) -> bool {
        self.method != "GET" && !self.query.contains_key("dryRun")
    }
}

/// Reacts to a rolling restart of (namespace, deployment name) by changing the objects,
/// as the controllers and the injector would.
type OnRestart = Box<dyn FnMut(&mut Objects, &str, &str) + Send>;

/// Objects per resource path (`meshrevisions`, `pods`, …).
#[derive(Default)]
struct Objects(BTreeMap<String, Vec<Value>>);

impl Objects {
    fn add(&mut self, resource: &str, obj: Value) {
        self.0.entry(resource.into()).or_default().push(obj);
    }
    fn find(&mut self, resource: &str, ns: Option<&str>, name: &str) -> Option<&mut Value> {
        self.0.get_mut(resource)?.iter_mut().find(|o| {
            o["metadata"]["name"] == name
                && ns.is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
        })
    }
}

/// An in-memory API server: LIST/GET/POST/PATCH (merge)/DELETE over [`Objects`], and a
/// mutating webhook for dry-run pods that injects `inject`.
struct FakeApi {
    objects: Objects,
    /// The revision a dry-run pod gets from the injector.
    inject: Option<String>,
    on_restart: Option<OnRestart>,
    calls: Vec<Call>,
}

const MESHREV: &str = "/apis/meshrev.io/v1alpha1";

fn api_status(code: u16, reason: &str, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    Response::builder()
        .status(StatusCode::from_u16(code).expect("a valid status code"))
        .body(Body::from(body.to_string().into_bytes()))
        .expect("a valid response")
}

fn ok(v: &Value) -> Response<Body> {
    Response::new(Body::from(v.to_string().into_bytes()))
}

/// `(namespace, resource, name)` of an API path.
fn parse_path(path: &str) -> (Option<String>, String, Option<String>) {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest = if segs[0] == "api" {
        &segs[2..]
    } else {
        &segs[3..]
    };
    if rest[0] == "namespaces" && rest.len() >= 3 {
        (
            Some(rest[1].to_string()),
            rest[2].to_string(),
            rest.get(3).map(|s| s.to_string()),
        )
    } else {
        (
            None,
            rest[0].to_string(),
            rest.get(1).map(|s| s.to_string()),
        )
    }
}

impl FakeApi {
    fn new() -> Self {
        FakeApi {
            objects: Objects::default(),
            inject: None,
            on_restart: None,
            calls: Vec::new(),
        }
    }

    fn handle(&mut self, call: &Call) -> Response<Body> {
        let (ns, resource, name) = parse_path(&call.path);
        let ns = ns.as_deref();
        match (call.method.as_str(), name) {
            ("GET", None) => {
                let items: Vec<Value> = self
                    .objects
                    .0
                    .get(&resource)
                    .map(|v| {
                        v.iter()
                            .filter(|o| {
                                ns.is_none_or(|ns| o["metadata"]["namespace"].as_str() == Some(ns))
                            })
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                ok(&json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}))
            }
            ("GET", Some(name)) => match self.objects.find(&resource, ns, &name) {
                Some(o) => ok(o),
                None => api_status(404, "NotFound", &format!("{resource} \"{name}\" not found")),
            },
            ("POST", None) => {
                let mut obj = call.body.clone().unwrap_or_default();
                if call.query.contains_key("dryRun") {
                    // The mutating webhook: inject the configured revision.
                    if let Some(rev) = &self.inject {
                        obj["metadata"]["annotations"]["istio.io/rev"] = json!(rev);
                    }
                    return ok(&obj);
                }
                let name = obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if self.objects.find(&resource, ns, &name).is_some() {
                    return api_status(
                        409,
                        "AlreadyExists",
                        &format!("{resource} \"{name}\" already exists"),
                    );
                }
                self.objects.add(&resource, obj.clone());
                ok(&obj)
            }
            ("PATCH", Some(name)) => {
                let patch = call.body.clone().unwrap_or_default();
                let Some(obj) = self.objects.find(&resource, ns, &name) else {
                    return api_status(
                        404,
                        "NotFound",
                        &format!("{resource} \"{name}\" not found"),
                    );
                };
                json_patch::merge(obj, &patch);
                let out = obj.clone();
                if patch["spec"]["template"]["metadata"]["annotations"]
                    .get(crate::core::ANNOTATION_RESTARTED_AT)
                    .is_some()
                    && let (Some(f), Some(ns)) = (self.on_restart.as_mut(), ns)
                {
                    f(&mut self.objects, ns, &name);
                }
                ok(&out)
            }
            ("DELETE", Some(name)) => {
                let Some(list) = self.objects.0.get_mut(&resource) else {
                    return api_status(
                        404,
                        "NotFound",
                        &format!("{resource} \"{name}\" not found"),
                    );
                };
                match list
                    .iter()
                    .position(|o| o["metadata"]["name"] == name.as_str())
                {
                    Some(i) => ok(&list.remove(i)),
                    None => {
                        api_status(404, "NotFound", &format!("{resource} \"{name}\" not found"))
                    }
                }
            }
            _ => api_status(405, "MethodNotAllowed", "not in the fake"),
        }
    }
}

/// A client whose requests the fake answers; the fake stays inspectable.
fn serve(fake: FakeApi) -> (Client, Arc<Mutex<FakeApi>>) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let fake = Arc::new(Mutex::new(fake));
    let shared = fake.clone();
    tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.expect("a request body");
            let query = parts
                .uri
                .query()
                .map(|q| {
                    q.split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let call = Call {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query,
                body: serde_json::from_slice(&bytes).ok(),
            };
            let mut fake = shared.lock().expect("the fake must not be poisoned");
            let resp = fake.handle(&call);
            fake.calls.push(call);
            send.send_response(resp);
        }
    });
    (Client::new(svc, "default"), fake)
}

// ---- the mesh the tests start from ----

fn revision(name: &str, version: &str) -> Value {
    json!({"apiVersion": "meshrev.io/v1alpha1", "kind": "MeshRevision",
        "metadata": {"name": name}, "spec": {"version": version}})
}

fn tag(name: &str, rev: &str, promoted_from: Option<&str>) -> Value {
    let mut t = json!({"apiVersion": "meshrev.io/v1alpha1", "kind": "RevisionTag",
        "metadata": {"name": name}, "spec": {"revision": rev}});
    if let Some(p) = promoted_from {
        t["metadata"]["annotations"] = json!({"meshrev.io/promoted-from": p});
    }
    t
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// A Deployment whose rollout is complete, its ReplicaSet, and one ready pod per entry of
/// `pods` (the revision its sidecar runs).
fn deployment(f: &mut FakeApi, ns: &str, name: &str, pods: &[&str]) {
    f.objects.add(
        "deployments",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "generation": 1},
            "spec": {"replicas": pods.len(), "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": name, "image": "app"}]}}},
            "status": {"observedGeneration": 1, "replicas": pods.len(), "updatedReplicas": pods.len(),
                       "availableReplicas": pods.len()}}),
    );
    let rs = format!("{name}-rs");
    f.objects.add(
        "replicasets",
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": rs, "namespace": ns, "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": "u", "controller": true}]}}),
    );
    for (i, rev) in pods.iter().enumerate() {
        f.objects
            .add("pods", pod(ns, &format!("{name}-{i}"), &rs, rev, true));
    }
}

/// Revision `rev`'s istiod as Istio's chart labels it (`istio.io/rev`), in istio-system,
/// available (1/1) or not (0/1, Available False).
fn istiod(f: &mut FakeApi, rev: &str, available: bool) {
    let n = i32::from(available);
    f.objects.add(
        "deployments",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": format!("istiod-{rev}"), "namespace": "istio-system", "generation": 1,
                         "labels": {"app": "istiod", "istio.io/rev": rev}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "istiod"}},
                     "template": {"metadata": {"labels": {"app": "istiod", "sidecar.istio.io/inject": "false"}},
                                  "spec": {"containers": [{"name": "discovery", "image": "pilot"}]}}},
            "status": {"observedGeneration": 1, "replicas": 1, "availableReplicas": n,
                       "conditions": [{"type": "Available", "status": if available { "True" } else { "False" }}]}}),
    );
}

fn pod(ns: &str, name: &str, rs: &str, rev: &str, ready: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name},
                     "annotations": {"istio.io/rev": rev},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                                          "uid": "u", "controller": true}]},
        "spec": {"containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": if ready { "Running" } else { "Pending" },
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
}

/// Stable `1-22-6` only; `default` has `istio-injection=enabled`, bookinfo's reviews-v1
/// and reviews-v2 run 1-22-6.
fn stable_mesh() -> FakeApi {
    let mut f = FakeApi::new();
    f.objects.add("meshrevisions", revision("1-22-6", "1.22.6"));
    f.objects.add("revisiontags", tag("stable", "1-22-6", None));
    f.objects.add(
        "namespaces",
        namespace("default", json!({"istio-injection": "enabled"})),
    );
    f.objects
        .add("namespaces", namespace("kube-system", json!({})));
    deployment(&mut f, "default", "reviews-v1", &["1-22-6"]);
    deployment(&mut f, "default", "reviews-v2", &["1-22-6"]);
    // Both control planes run: the canary's istiod is deployed before `canary`.
    istiod(&mut f, "1-22-6", true);
    istiod(&mut f, "1-23-6", true);
    f
}

/// A canary `1-23-6` deployed; `default` switched to it and reviews-v2 redeployed on it.
fn canary_mesh() -> FakeApi {
    let mut f = FakeApi::new();
    f.objects.add("meshrevisions", revision("1-22-6", "1.22.6"));
    f.objects.add("meshrevisions", revision("1-23-6", "1.23.6"));
    f.objects.add("revisiontags", tag("stable", "1-22-6", None));
    f.objects.add("revisiontags", tag("canary", "1-23-6", None));
    f.objects.add(
        "namespaces",
        namespace("default", json!({"istio.io/rev": "canary"})),
    );
    f.objects.add(
        "namespaces",
        namespace("other", json!({"istio-injection": "enabled"})),
    );
    deployment(&mut f, "default", "reviews-v1", &["1-22-6"]);
    deployment(&mut f, "default", "reviews-v2", &["1-23-6"]);
    deployment(&mut f, "other", "details", &["1-22-6"]);
    istiod(&mut f, "1-22-6", true);
    istiod(&mut f, "1-23-6", true);
    f
}

/// Promoted to `1-23-6`; details in `other` still runs 1-22-6.
fn promoted_mesh() -> FakeApi {
    let mut f = FakeApi::new();
    f.objects.add("meshrevisions", revision("1-22-6", "1.22.6"));
    f.objects.add("meshrevisions", revision("1-23-6", "1.23.6"));
    f.objects
        .add("revisiontags", tag("stable", "1-23-6", Some("1-22-6")));
    f.objects.add(
        "namespaces",
        namespace("default", json!({"istio.io/rev": "stable"})),
    );
    f.objects.add(
        "namespaces",
        namespace("other", json!({"istio-injection": "enabled"})),
    );
    deployment(&mut f, "default", "reviews-v2", &["1-23-6"]);
    deployment(&mut f, "other", "details", &["1-22-6"]);
    istiod(&mut f, "1-22-6", true);
    istiod(&mut f, "1-23-6", true);
    f
}

// ---- what the tests assert ----

const REVS: &str = "GET /apis/meshrev.io/v1alpha1/meshrevisions";
const TAGS: &str = "GET /apis/meshrev.io/v1alpha1/revisiontags";
const NSS: &str = "GET /api/v1/namespaces";

/// The LISTs of `load_view` for `needs` (a set: some run concurrently).
fn view_reads(needs: &Needs) -> Vec<String> {
    let mut out = vec![REVS.to_string(), TAGS.to_string()];
    if needs.namespaces {
        out.push(NSS.into());
    }
    let scope = |r: &str, group: &str| match &needs.namespace {
        Some(ns) => format!("GET {group}/namespaces/{ns}/{r}"),
        None => format!("GET {group}/{r}"),
    };
    if needs.pods != PodDetail::None {
        out.push(scope("pods", "/api/v1"));
    }
    if needs.pods == PodDetail::Full {
        out.push(scope("replicasets", "/apis/apps/v1"));
    }
    if needs.workloads {
        for r in ["deployments", "statefulsets", "daemonsets"] {
            out.push(scope(r, "/apis/apps/v1"));
        }
    }
    if needs.control_planes {
        // Every namespace, labelled istio.io/rev (the query is not part of the line).
        out.push("GET /apis/apps/v1/deployments".into());
    }
    out.sort();
    out.dedup();
    out
}

fn reads(calls: &[Call]) -> Vec<String> {
    let mut r: Vec<String> = calls
        .iter()
        .filter(|c| c.method == "GET")
        .map(Call::line)
        .collect();
    r.sort();
    r.dedup();
    r
}

fn writes(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c.is_write())
        .map(Call::line)
        .collect()
}

/// The API path a planned call acts on.
fn planned(calls: &[PlannedCall]) -> Vec<String> {
    calls
        .iter()
        .map(|c| {
            let item = match &c.object {
                Object::MeshRevision(n) => format!("{MESHREV}/meshrevisions/{n}"),
                Object::RevisionTag(n) => format!("{MESHREV}/revisiontags/{n}"),
                Object::Namespace(n) => format!("/api/v1/namespaces/{n}"),
                Object::Workload(id) => format!(
                    "/apis/apps/v1/namespaces/{}/{}s/{}",
                    id.namespace,
                    id.kind.as_str().to_ascii_lowercase(),
                    id.name
                ),
            };
            let path = match c.verb {
                Verb::Create => item
                    .rsplit_once('/')
                    .map(|(p, _)| p.to_string())
                    .unwrap_or(item),
                _ => item,
            };
            format!("{} {path}", c.verb.method())
        })
        .collect()
}

fn calls(fake: &Arc<Mutex<FakeApi>>) -> Vec<Call> {
    fake.lock()
        .expect("the fake must not be poisoned")
        .calls
        .clone()
}

fn take_calls(fake: &Arc<Mutex<FakeApi>>) -> Vec<Call> {
    std::mem::take(&mut fake.lock().expect("the fake must not be poisoned").calls)
}

/// Runs `f` with a sink that collects events.
macro_rules! with_events {
    ($events:ident, $body:expr) => {{
        let mut $events: Vec<Event> = Vec::new();
        let r = {
            let mut sink = |e: Event| $events.push(e);
            let sink: Sink<'_> = &mut sink;
            $body(sink).await
        };
        (r, $events)
    }};
}

fn writes_of(calls: &[Call]) -> Vec<&Call> {
    calls.iter().filter(|c| c.is_write()).collect()
}

// ---- one test per lifecycle step ----

#[tokio::test]
async fn status_lists_and_writes_nothing() {
    let (client, fake) = serve(canary_mesh());
    let report = status(&client).await.expect("status");
    assert_eq!(report.phase, crate::upgrade::status::Phase::CanaryDeployed);
    assert_eq!(report.canary.as_deref(), Some("1-23-6"));
    // details in `other` is on stable's 1-22-6, as its namespace selects: not stale.
    assert_eq!(report.needs_upgrade, 1, "{report:?}");
    let c = calls(&fake);
    assert_eq!(reads(&c), view_reads(&Needs::all()));
    assert!(writes(&c).is_empty());
    // Pods are listed without completed ones, in pages.
    let pods = c
        .iter()
        .find(|c| c.path == "/api/v1/pods")
        .expect("a pod LIST");
    assert_eq!(
        pods.query.get("fieldSelector").map(String::as_str),
        Some("status.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed")
    );
    assert_eq!(pods.query.get("limit").map(String::as_str), Some("500"));
}

#[tokio::test]
async fn canary_creates_the_revision_then_the_tag() {
    let (client, fake) = serve(stable_mesh());
    let options = CanaryOptions {
        revision: "1-23-6".into(),
        version: "1.23.6".into(),
        proxy_image: None,
        discovery_address: Some("istiod.istio-system.svc:15012".into()),
        ..Default::default()
    };
    let plan = plan_canary(&client, options).await.expect("plan");
    assert!(plan.create_revision && plan.create_tag);
    assert_eq!(
        (plan.stable.as_str(), plan.stable_version.as_str()),
        ("1-22-6", "1.22.6")
    );
    let c = take_calls(&fake);
    assert_eq!(reads(&c), view_reads(&Needs::config()));
    assert!(writes(&c).is_empty(), "planning writes nothing");

    let (r, events) = with_events!(events, |s| execute_canary(&client, &plan, s));
    assert_eq!(
        r.expect("execute"),
        CanaryOutcome {
            revision_created: true,
            tag_created: true
        }
    );
    let c = calls(&fake);
    assert_eq!(
        writes(&c),
        vec![
            format!("POST {MESHREV}/meshrevisions"),
            format!("POST {MESHREV}/revisiontags"),
        ]
    );
    assert_eq!(writes(&c), planned(&plan.calls()));
    let w = writes_of(&c);
    let rev = w[0].body.as_ref().expect("a body");
    assert_eq!(rev["metadata"]["name"], "1-23-6");
    assert_eq!(rev["spec"]["version"], "1.23.6");
    assert_eq!(
        rev["spec"]["discoveryAddress"],
        "istiod.istio-system.svc:15012"
    );
    assert_eq!(
        w[0].query.get("fieldManager").map(String::as_str),
        Some(cluster::FIELD_MANAGER)
    );
    let t = w[1].body.as_ref().expect("a body");
    assert_eq!(
        (&t["metadata"]["name"], &t["spec"]["revision"]),
        (&json!("canary"), &json!("1-23-6"))
    );
    assert_eq!(
        events,
        vec![
            Event::RevisionCreated {
                name: "1-23-6".into(),
                version: "1.23.6".into(),
                proxy_image: "docker.io/istio/proxyv2:1.23.6".into()
            },
            Event::TagCreated {
                tag: "canary".into(),
                revision: "1-23-6".into()
            },
        ]
    );
}

/// Makes revision `rev`'s istiod unavailable (0/1, Available False), or removes it.
fn istiod_down(f: &mut FakeApi, rev: &str, remove: bool) {
    let name = format!("istiod-{rev}");
    if remove {
        if let Some(ds) = f.objects.0.get_mut("deployments") {
            ds.retain(|d| d["metadata"]["name"] != name.as_str());
        }
    } else if let Some(d) = f.objects.find("deployments", Some("istio-system"), &name) {
        d["status"]["availableReplicas"] = json!(0);
        d["status"]["conditions"][0]["status"] = json!("False");
    }
}

#[tokio::test]
async fn canary_is_refused_while_its_istiod_is_not_available_unless_forced() {
    let mut f = stable_mesh();
    istiod_down(&mut f, "1-23-6", false);
    let (client, fake) = serve(f);
    let options = CanaryOptions {
        revision: "1-23-6".into(),
        version: "1.23.6".into(),
        ..Default::default()
    };
    let err = plan_canary(&client, options.clone())
        .await
        .expect_err("istiod-1-23-6 is not available");
    let OpError::Refused(refusal) = &err else {
        panic!("not a refusal: {err}")
    };
    let text = err.to_string();
    assert!(
        text.contains("Deployment istio-system/istiod-1-23-6 (Progressing 0/1 available)"),
        "{text}"
    );
    assert!(refusal.fix.contains("--force"), "{refusal:?}");
    let c = calls(&fake);
    assert!(writes(&c).is_empty());
    // The control planes were LISTed by the label istiod carries, in every namespace.
    let cp = c
        .iter()
        .find(|c| c.path == "/apis/apps/v1/deployments")
        .expect("a LIST of the control-plane Deployments");
    assert_eq!(
        cp.query.get("labelSelector").map(String::as_str),
        Some("istio.io%2Frev")
    );
    // --force: planned and executed.
    let forced = CanaryOptions {
        control_planes: ControlPlanes::Force,
        ..options
    };
    let plan = plan_canary(&client, forced).await.expect("forced");
    assert!(plan.create_revision && plan.create_tag);
    execute_canary(&client, &plan, &mut |_| {})
        .await
        .expect("execute");
    let c = take_calls(&fake);
    assert_eq!(writes(&c).len(), 2);
    // The tag carries the force annotation naming its revision, for the validating webhook.
    let tag = writes_of(&c)[1].body.as_ref().expect("the tag");
    assert_eq!(
        tag["metadata"]["annotations"]["meshrev.io/force-control-plane"],
        "1-23-6"
    );
}

#[tokio::test]
async fn switch_and_promote_are_refused_while_the_canary_istiod_is_missing_unless_forced() {
    let mut f = canary_mesh();
    istiod_down(&mut f, "1-23-6", true);
    let (client, fake) = serve(f);
    let err = plan_switch(&client, "other", "canary", false, ControlPlanes::Require)
        .await
        .expect_err("no istiod-1-23-6");
    let text = err.to_string();
    assert!(
        text.contains("cannot switch namespace other to canary"),
        "{text}"
    );
    assert!(
        text.contains("Deployment istio-system/istiod-1-23-6 (NotFound)"),
        "{text}"
    );
    let err = plan_promote(&client, ControlPlanes::Require)
        .await
        .expect_err("no istiod-1-23-6");
    assert!(err.to_string().contains("cannot promote"), "{err}");
    assert!(err.to_string().contains("istiod-1-23-6"), "{err}");
    assert!(writes(&take_calls(&fake)).is_empty());
    // Rolling back to stable is still allowed: stable's istiod is up.
    plan_rollback(&client, "default", false, ControlPlanes::Require)
        .await
        .expect("stable is up");
    // --force plans both, and each write names the revision in the force annotation.
    let plan = plan_switch(&client, "other", "canary", false, ControlPlanes::Force)
        .await
        .expect("forced switch");
    assert!(plan.relabels());
    take_calls(&fake);
    execute_relabel(&client, &plan, &mut |_| {})
        .await
        .expect("forced relabel");
    let c = take_calls(&fake);
    let ns = writes_of(&c)[0].body.as_ref().expect("the namespace patch");
    assert_eq!(
        ns["metadata"]["annotations"]["meshrev.io/force-control-plane"],
        "1-23-6"
    );
    let plan = plan_promote(&client, ControlPlanes::Force)
        .await
        .expect("forced promote");
    assert!(plan.steps.move_stable);
    take_calls(&fake);
    execute_promote(&client, &plan, &mut |_| {})
        .await
        .expect("forced promote");
    let c = take_calls(&fake);
    let stable = writes_of(&c)[0]
        .body
        .as_ref()
        .expect("the stable tag patch");
    assert_eq!(stable["spec"]["revision"], "1-23-6");
    assert_eq!(
        stable["metadata"]["annotations"]["meshrev.io/force-control-plane"],
        "1-23-6"
    );
}

#[tokio::test]
async fn canary_refused_by_the_skip_policy_makes_no_call() {
    let (client, fake) = serve(stable_mesh());
    let options = CanaryOptions {
        revision: "1-24-0".into(),
        version: "1.24.0".into(),
        ..Default::default()
    };
    let err = plan_canary(&client, options)
        .await
        .expect_err("skips a minor");
    let OpError::Refused(refusal) = &err else {
        panic!("not a refusal: {err}")
    };
    let text = err.to_string();
    assert!(text.contains("skip policy"), "{text}");
    assert!(text.contains("1.23.x"), "{text}");
    assert!(refusal.fix.contains("1.23"), "{refusal:?}");
    let c = calls(&fake);
    assert_eq!(reads(&c), view_reads(&Needs::config()));
    assert!(writes(&c).is_empty());
}

#[tokio::test]
async fn switch_relabels_the_namespace_and_restarts_what_runs_another_revision() {
    let mut f = stable_mesh();
    f.objects.add("meshrevisions", revision("1-23-6", "1.23.6"));
    f.objects.add("revisiontags", tag("canary", "1-23-6", None));
    f.inject = Some("1-23-6".into());
    let (client, fake) = serve(f);
    let plan = plan_switch(&client, "default", "canary", true, ControlPlanes::Require)
        .await
        .expect("plan");
    assert_eq!(plan.before.describe(), "istio-injection=enabled");
    assert_eq!(plan.after.describe(), "istio.io/rev=canary");
    assert_eq!(plan.revision, "1-23-6");
    let names: Vec<&str> = plan.targets.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["reviews-v1", "reviews-v2"]);
    let c = take_calls(&fake);
    assert_eq!(reads(&c), view_reads(&Needs::namespace("default")));
    assert!(writes(&c).is_empty());

    let (r, events) = with_events!(events, |s| execute_relabel(&client, &plan, s));
    let outcome = r.expect("execute");
    assert!(outcome.relabelled);
    assert_eq!(outcome.restarted.len(), 2);
    let c = calls(&fake);
    let dep = "/apis/apps/v1/namespaces/default/deployments";
    // Each restart is preceded by a dry-run pod of its template that gets the canary.
    let lines: Vec<String> = c
        .iter()
        .map(|c| match c.query.get("dryRun") {
            Some(d) => format!("{} dryRun={d}", c.line()),
            None => c.line(),
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            "PATCH /api/v1/namespaces/default".to_string(),
            format!("GET {dep}/reviews-v1"),
            "POST /api/v1/namespaces/default/pods dryRun=All".into(),
            format!("PATCH {dep}/reviews-v1"),
            format!("GET {dep}/reviews-v2"),
            "POST /api/v1/namespaces/default/pods dryRun=All".into(),
            format!("PATCH {dep}/reviews-v2"),
        ]
    );
    assert_eq!(writes(&c), planned(&plan.calls()));
    // Both labels are set: istio-injection removed (null), istio.io/rev=canary.
    assert_eq!(
        c[0].body.as_ref().expect("a body"),
        &json!({"metadata": {
            "labels": {"istio-injection": null, "istio.io/rev": "canary"},
            // Unforced: a stale force annotation is cleared.
            "annotations": {"meshrev.io/force-control-plane": null},
        }})
    );
    let probe = c[2].body.as_ref().expect("a body");
    assert_eq!(probe["metadata"]["generateName"], "meshrev-probe-");
    assert_eq!(probe["metadata"]["namespace"], "default");
    let restart = c[3].body.as_ref().expect("a body");
    assert!(
        restart["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string(),
        "{restart}"
    );
    assert!(
        matches!(&events[0], Event::Relabelled { namespace, revision, .. } if namespace == "default" && revision == "1-23-6")
    );
    assert!(matches!(&events[1], Event::Redeploy { targets, .. } if targets.len() == 2));
    assert!(
        matches!(&events[2], Event::Restarted { index: 1, total: 2, to, .. } if to == "1-23-6")
    );
    assert!(matches!(
        &events[3],
        Event::Restarted {
            index: 2,
            total: 2,
            ..
        }
    ));
    assert_eq!(events.len(), 4, "{events:?}");
}

#[tokio::test]
async fn verify_reads_pods_and_names_those_not_ready() {
    let mut f = canary_mesh();
    f.objects.add(
        "pods",
        pod("default", "reviews-v2-9", "reviews-v2-rs", "1-23-6", false),
    );
    let (client, fake) = serve(f);
    let report = verify(&client).await.expect("verify");
    assert_eq!(report.canary, "1-23-6");
    assert_eq!(report.pods.len(), 2);
    let err = report.check().expect_err("one pod is Pending");
    let text = err.to_string();
    assert!(
        text.contains("1 of 2 pod(s) on canary revision 1-23-6 are not ready"),
        "{text}"
    );
    assert!(text.contains("default/reviews-v2-9 (Pending)"), "{text}");
    assert!(text.contains("fix:"), "{text}");
    let needs = Needs {
        namespaces: false,
        pods: PodDetail::Full,
        workloads: false,
        control_planes: false,
        namespace: None,
    };
    let c = calls(&fake);
    assert_eq!(reads(&c), view_reads(&needs));
    assert!(writes(&c).is_empty());
}

#[tokio::test]
async fn promote_moves_stable_relabels_and_deletes_the_canary_tag() {
    let (client, fake) = serve(canary_mesh());
    let plan = plan_promote(&client, ControlPlanes::Require)
        .await
        .expect("plan");
    assert_eq!(plan.steps.revision, "1-23-6");
    assert_eq!(plan.steps.previous, "1-22-6");
    let c = take_calls(&fake);
    assert_eq!(reads(&c), view_reads(&Needs::all()));
    assert!(
        writes(&c).is_empty(),
        "planning (and so a refusal for want of --yes) writes nothing"
    );

    let (r, events) = with_events!(events, |s| execute_promote(&client, &plan, s));
    let outcome = r.expect("execute");
    let c = calls(&fake);
    assert_eq!(
        writes(&c),
        vec![
            format!("PATCH {MESHREV}/revisiontags/stable"),
            "PATCH /api/v1/namespaces/default".to_string(),
            format!("DELETE {MESHREV}/revisiontags/canary"),
        ]
    );
    assert_eq!(writes(&c), planned(&plan.calls()));
    let w = writes_of(&c);
    assert_eq!(
        w[0].body.as_ref().expect("a body"),
        &json!({"spec": {"revision": "1-23-6"},
                "metadata": {"annotations": {"meshrev.io/promoted-from": "1-22-6",
                                             "meshrev.io/force-control-plane": null}}})
    );
    assert_eq!(
        w[1].body.as_ref().expect("a body"),
        &json!({"metadata": {
            "labels": {"istio-injection": null, "istio.io/rev": "stable"},
            // Unforced: a stale force annotation is cleared.
            "annotations": {"meshrev.io/force-control-plane": null},
        }})
    );
    // Afterwards: every workload on 1-22-6 needs upgrade (reviews-v1, details).
    assert_eq!(outcome.needs_upgrade, 2);
    assert_eq!(
        events,
        vec![
            Event::StableMoved {
                revision: "1-23-6".into(),
                previous: "1-22-6".into()
            },
            Event::NamespacePromoted {
                namespace: "default".into()
            },
            Event::TagDeleted {
                tag: "canary".into(),
                existed: true
            },
        ]
    );
    // Run again: complete already, nothing planned.
    let again = plan_promote(&client, ControlPlanes::Require)
        .await
        .expect("plan again");
    assert!(again.is_done());
    assert!(again.calls().is_empty());
}

#[tokio::test]
async fn rollout_restarts_the_stale_workloads_in_batches_and_checks_their_pods() {
    let mut f = promoted_mesh();
    deployment(&mut f, "other", "ratings", &["1-22-6", "1-22-6"]);
    f.inject = Some("1-23-6".into());
    // The controllers and the injector: a restart replaces the pods with 1-23-6 ones.
    f.on_restart = Some(Box::new(|objs: &mut Objects, ns: &str, name: &str| {
        let rs = format!("{name}-rs");
        if let Some(pods) = objs.0.get_mut("pods") {
            for p in pods.iter_mut().filter(|p| {
                p["metadata"]["namespace"] == ns
                    && p["metadata"]["ownerReferences"][0]["name"] == rs.as_str()
            }) {
                p["metadata"]["annotations"]["istio.io/rev"] = json!("1-23-6");
            }
        }
    }));
    let (client, fake) = serve(f);
    let options = RolloutOptions {
        namespace: None,
        workload: None,
        restart: RestartOptions {
            max_in_flight: 1,
            wait: true,
            timeout: Duration::from_secs(60),
        },
    };
    let plan = plan_rollout(&client, options).await.expect("plan");
    let names: Vec<&str> = plan.targets.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(
        names,
        ["details", "ratings"],
        "reviews-v2 runs 1-23-6 already"
    );
    let c = take_calls(&fake);
    assert_eq!(reads(&c), view_reads(&Needs::all()));
    assert!(writes(&c).is_empty());

    let (r, events) = with_events!(events, |s| execute_rollout(&client, &plan, s));
    let outcome = r.expect("execute");
    assert_eq!(outcome.left, Some(0));
    let c = calls(&fake);
    let dep = "/apis/apps/v1/namespaces/other/deployments";
    let probe = "POST /api/v1/namespaces/other/pods".to_string();
    let mesh_reads = view_reads(&Needs::all());
    let lines: Vec<String> = c.iter().map(Call::line).collect();
    // Batch 1: template, dry-run probe, restart, progress; batch 2 the same; then the
    // view again to check the new pods.
    assert_eq!(
        lines[..8],
        [
            format!("GET {dep}/details"),
            probe.clone(),
            format!("PATCH {dep}/details"),
            format!("GET {dep}/details"),
            format!("GET {dep}/ratings"),
            probe,
            format!("PATCH {dep}/ratings"),
            format!("GET {dep}/ratings"),
        ]
    );
    let mut rest = lines[8..].to_vec();
    rest.sort();
    assert_eq!(rest, mesh_reads);
    assert_eq!(writes(&c), planned(&plan.calls()));
    assert!(matches!(&events[0], Event::Batch { index: 1, count: 2 }));
    assert!(
        matches!(&events[1], Event::Restarted { index: 1, total: 2, from, to, .. } if from == "1-22-6" && to == "1-23-6")
    );
    assert!(matches!(&events[2], Event::RolledOut { workload, .. } if workload.name == "details"));
    assert!(matches!(&events[3], Event::Batch { index: 2, count: 2 }));
    assert!(matches!(&events[5], Event::RolledOut { workload, .. } if workload.name == "ratings"));
}

#[tokio::test]
async fn rollout_stops_when_the_injector_would_give_the_old_sidecar() {
    let mut f = promoted_mesh();
    f.inject = Some("1-22-6".into());
    let (client, fake) = serve(f);
    let options = RolloutOptions {
        namespace: Some("other".into()),
        workload: Some((WorkloadKind::Deployment, "details".into())),
        restart: RestartOptions {
            max_in_flight: 1,
            wait: false,
            timeout: Duration::from_secs(60),
        },
    };
    let plan = plan_rollout(&client, options).await.expect("plan");
    assert_eq!(plan.targets.len(), 1);
    tokio::time::pause(); // the injector deadline passes without waiting for it
    let (r, events) = with_events!(events, |s| execute_rollout(&client, &plan, s));
    let err = r.expect_err("the injector gives 1-22-6");
    let text = err.to_string();
    assert!(
        text.contains("not restarting deployment other/details"),
        "{text}"
    );
    assert!(text.contains("it injects 1-22-6"), "{text}");
    assert!(events.is_empty(), "{events:?}");
    assert!(writes(&calls(&fake)).is_empty(), "no restart");
}

#[tokio::test]
async fn unpublish_deletes_the_old_revision() {
    let mut f = promoted_mesh();
    // details runs 1-23-6 now: nothing runs 1-22-6.
    if let Some(p) = f.objects.find("pods", Some("other"), "details-0") {
        p["metadata"]["annotations"]["istio.io/rev"] = json!("1-23-6");
    }
    let (client, fake) = serve(f);
    let plan = plan_unpublish(&client, None, false).await.expect("plan");
    assert_eq!(plan.revisions, vec![("1-22-6".to_string(), false)]);
    let needs = Needs {
        workloads: false,
        ..Needs::all()
    };
    let c = take_calls(&fake);
    assert_eq!(reads(&c), view_reads(&needs));
    let (r, events) = with_events!(events, |s| execute_unpublish(&client, &plan, s));
    assert_eq!(r.expect("execute"), ["1-22-6"]);
    let c = calls(&fake);
    assert_eq!(
        writes(&c),
        vec![format!("DELETE {MESHREV}/meshrevisions/1-22-6")]
    );
    assert_eq!(writes(&c), planned(&plan.calls()));
    assert_eq!(
        events,
        vec![Event::RevisionDeleted {
            name: "1-22-6".into(),
            existed: true
        }]
    );
}

#[tokio::test]
async fn unpublish_is_refused_while_pods_run_the_old_revision() {
    let (client, fake) = serve(promoted_mesh());
    let err = plan_unpublish(&client, None, false)
        .await
        .expect_err("details runs 1-22-6");
    let OpError::Refused(refusal) = &err else {
        panic!("not a refusal: {err}")
    };
    let blockers: Vec<String> = refusal
        .blockers
        .iter()
        .map(|b| format!("{} {}", b.kind, b.name))
        .collect();
    assert_eq!(blockers, ["pod other/details-0"], "{refusal}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert!(writes(&calls(&fake)).is_empty());
}

#[tokio::test]
async fn unpublish_force_annotates_then_deletes() {
    let (client, fake) = serve(promoted_mesh());
    let plan = plan_unpublish(&client, None, true).await.expect("plan");
    assert_eq!(plan.revisions, vec![("1-22-6".to_string(), true)]);
    assert!(
        plan.warnings.iter().any(|w| w.contains("other/details-0")),
        "{plan:?}"
    );
    take_calls(&fake);
    let (r, _) = with_events!(events, |s| execute_unpublish(&client, &plan, s));
    r.expect("execute");
    let c = calls(&fake);
    let rev = format!("{MESHREV}/meshrevisions/1-22-6");
    assert_eq!(
        writes(&c),
        vec![format!("PATCH {rev}"), format!("DELETE {rev}")]
    );
    assert_eq!(writes(&c), planned(&plan.calls()));
    assert_eq!(
        writes_of(&c)[0].body.as_ref().expect("a body"),
        &json!({"metadata": {"annotations": {"meshrev.io/force-delete": "true"}}})
    );
}

#[tokio::test]
async fn rollback_relabels_stable_and_lists_the_canary_workloads() {
    let (client, fake) = serve(canary_mesh());
    let plan = plan_rollback(&client, "default", false, ControlPlanes::Require)
        .await
        .expect("plan");
    assert_eq!(plan.after.describe(), "istio.io/rev=stable");
    let names: Vec<&str> = plan.targets.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["reviews-v2"], "only what runs the canary");
    take_calls(&fake);
    let (r, events) = with_events!(events, |s| execute_relabel(&client, &plan, s));
    let outcome = r.expect("execute");
    assert!(outcome.restarted.is_empty(), "no --restart");
    let c = calls(&fake);
    assert_eq!(
        writes(&c),
        vec!["PATCH /api/v1/namespaces/default".to_string()]
    );
    assert_eq!(writes(&c), planned(&plan.calls()));
    assert_eq!(
        c[0].body.as_ref().expect("a body"),
        &json!({"metadata": {
            "labels": {"istio-injection": null, "istio.io/rev": "stable"},
            // Unforced: a stale force annotation is cleared.
            "annotations": {"meshrev.io/force-control-plane": null},
        }})
    );
    assert_eq!(events.len(), 2, "{events:?}");
}

#[tokio::test]
async fn revoke_deletes_the_canary_tag_then_its_revision() {
    let mut f = canary_mesh();
    // Rolled back: default on stable, reviews-v2 back on 1-22-6.
    if let Some(n) = f.objects.find("namespaces", None, "default") {
        n["metadata"]["labels"] = json!({"istio.io/rev": "stable"});
    }
    if let Some(p) = f.objects.find("pods", Some("default"), "reviews-v2-0") {
        p["metadata"]["annotations"]["istio.io/rev"] = json!("1-22-6");
    }
    let (client, fake) = serve(f);
    let plan = plan_revoke(&client).await.expect("plan").expect("a canary");
    assert_eq!(plan.steps.revision, "1-23-6");
    let c = take_calls(&fake);
    assert_eq!(reads(&c), view_reads(&Needs::all()));
    let (r, events) = with_events!(events, |s| execute_revoke(&client, &plan, s));
    assert_eq!(
        r.expect("execute"),
        RevokeOutcome {
            tag_deleted: true,
            revision_deleted: true
        }
    );
    let c = calls(&fake);
    assert_eq!(
        writes(&c),
        vec![
            format!("DELETE {MESHREV}/revisiontags/canary"),
            format!("DELETE {MESHREV}/meshrevisions/1-23-6"),
        ]
    );
    assert_eq!(writes(&c), planned(&plan.calls()));
    assert_eq!(events.len(), 2);
    // Nothing left to revoke.
    assert!(plan_revoke(&client).await.expect("plan again").is_none());
}

#[tokio::test]
async fn revoke_is_refused_while_a_namespace_uses_the_canary() {
    let (client, fake) = serve(canary_mesh());
    let err = plan_revoke(&client)
        .await
        .expect_err("default uses the canary");
    let OpError::Refused(refusal) = &err else {
        panic!("not a refusal: {err}")
    };
    let blockers: Vec<String> = refusal.blockers.iter().map(ToString::to_string).collect();
    assert!(
        blockers.contains(&"namespace default (istio.io/rev=canary)".to_string()),
        "{blockers:?}"
    );
    assert!(
        blockers
            .iter()
            .any(|b| b.starts_with("pod default/reviews-v2-0")),
        "{blockers:?}"
    );
    assert!(refusal.fix.contains("rollback"), "{refusal:?}");
    assert!(writes(&calls(&fake)).is_empty());
}

// ---- errors are classified by status code ----

#[tokio::test]
async fn missing_crds_are_named_from_a_404() {
    // An API server without meshrev's CRDs: their collections 404.
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        while let Some((_, send)) = handle.next_request().await {
            send.send_response(api_status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
    });
    let client = Client::new(svc, "default");
    let err = status(&client).await.expect_err("no CRDs");
    let OpError::Cluster(e) = &err else {
        panic!("not a cluster error: {err}")
    };
    assert!(
        matches!(
            e,
            ClusterError::CrdsMissing {
                kind: "MeshRevisions"
            }
        ),
        "{e:?}"
    );
    assert!(
        err.to_string()
            .contains("kubectl apply -f manifests/crds.yaml"),
        "{err}"
    );
}

#[tokio::test]
async fn a_tag_deleted_already_is_not_an_error() {
    let (client, fake) = serve(stable_mesh());
    assert!(
        !cluster::delete_tag(&client, "canary")
            .await
            .expect("404 is gone already")
    );
    assert!(
        !cluster::delete_revision(&client, "1-99-0", true)
            .await
            .expect("404 is gone already")
    );
    // A refused write keeps the API server's message and names the object.
    let err = cluster::move_tag(&client, "prod", "1-22-6", None, false)
        .await
        .expect_err("no tag prod");
    assert!(
        matches!(&err, ClusterError::Api { error: kube::Error::Api(s), .. } if s.code == 404),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "moving RevisionTag prod to 1-22-6: revisiontags \"prod\" not found"
    );
    assert_eq!(writes(&calls(&fake)).len(), 3);
}

#[tokio::test]
async fn an_interrupted_promotion_resumes_where_it_stopped() {
    let mut f = canary_mesh();
    // Step 1 was done: stable → 1-23-6, recording 1-22-6; default still says canary.
    f.objects.0.insert(
        "revisiontags".into(),
        vec![
            tag("stable", "1-23-6", Some("1-22-6")),
            tag("canary", "1-23-6", None),
        ],
    );
    let (client, fake) = serve(f);
    let plan = plan_promote(&client, ControlPlanes::Require)
        .await
        .expect("plan");
    assert!(!plan.steps.move_stable);
    assert_eq!(plan.steps.previous, "1-22-6");
    take_calls(&fake);
    let (r, events) = with_events!(events, |s| execute_promote(&client, &plan, s));
    r.expect("execute");
    let c = calls(&fake);
    assert_eq!(
        writes(&c),
        vec![
            "PATCH /api/v1/namespaces/default".to_string(),
            format!("DELETE {MESHREV}/revisiontags/canary"),
        ]
    );
    assert_eq!(writes(&c), planned(&plan.calls()));
    assert_eq!(
        events[0],
        Event::StableAlreadyMoved {
            revision: "1-23-6".into()
        }
    );
}

#[tokio::test]
async fn rollout_skips_a_paused_deployment_without_touching_it() {
    let mut f = promoted_mesh();
    if let Some(d) = f.objects.find("deployments", Some("other"), "details") {
        d["spec"]["paused"] = json!(true);
    }
    f.inject = Some("1-23-6".into());
    let (client, fake) = serve(f);
    let options = RolloutOptions {
        namespace: Some("other".into()),
        workload: None,
        restart: RestartOptions {
            max_in_flight: 1,
            wait: false,
            timeout: Duration::from_secs(60),
        },
    };
    let plan = plan_rollout(&client, options).await.expect("plan");
    assert_eq!(plan.targets.len(), 1);
    assert!(
        plan.calls().is_empty(),
        "a paused Deployment is not restarted"
    );
    let c = take_calls(&fake);
    // A rollout does not read the control planes (it routes by revisions already chosen).
    let needs = Needs {
        control_planes: false,
        ..Needs::namespace("other")
    };
    assert_eq!(reads(&c), view_reads(&needs));
    let (r, events) = with_events!(events, |s| execute_rollout(&client, &plan, s));
    assert!(r.expect("execute").restarted.is_empty());
    assert!(
        calls(&fake).is_empty(),
        "no template read, no probe, no restart"
    );
    assert_eq!(
        events,
        vec![Event::Skipped {
            workload: "deployment other/details".into(),
            why: SkipWhy::Paused
        }]
    );
}

#[tokio::test]
async fn rollout_of_a_missing_workload_names_it() {
    let (client, fake) = serve(promoted_mesh());
    let options = RolloutOptions {
        namespace: Some("other".into()),
        workload: Some((WorkloadKind::Deployment, "nope".into())),
        restart: RestartOptions {
            max_in_flight: 1,
            wait: false,
            timeout: Duration::from_secs(60),
        },
    };
    let err = plan_rollout(&client, options)
        .await
        .expect_err("no such workload");
    assert_eq!(
        err.to_string(),
        "deployment/nope not found in the mesh in namespace other (see meshrev upgrade status)"
    );
    assert!(writes(&calls(&fake)).is_empty());
}
