//! The Kubernetes calls of the upgrade tooling: LISTs that build a [`MeshView`], the patches
//! each step makes, rolling restarts and the injector probe.
//!
//! This is the seam between the upgrade operations (`upgrade::ops`) and the API server:
//! every call goes through the [`kube::Client`] it is given, so unit tests drive it with a
//! mock API server (a client over `tower_test::mock::pair`, see `ops`' tests). Nothing here
//! keeps state between calls; the cluster owns every object, and each function changes only
//! the object it names. Failures are [`ClusterError`]s, classified by status code.

use std::collections::HashMap;
use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodTemplateSpec};
use kube::api::{Api, DeleteParams, ListParams, ObjectList, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::config::{MeshRevision, MeshRevisionSpec, RevisionTag, RevisionTagSpec};
use crate::core::{
    ANNOTATION_FORCE_CONTROL_PLANE, ANNOTATION_FORCE_DELETE, ANNOTATION_PROMOTED_FROM,
    ANNOTATION_RESTARTED_AT, LABEL_INJECTION, LABEL_REV,
};

use super::rollout::{self, Progress};
use super::view::{
    CONTROL_PLANE_LABEL, MeshView, NamespaceLabels, PodInfo, RevisionInfo, TagInfo, WorkloadId,
    WorkloadInfo, WorkloadKind, control_plane_entry, injected_revision, namespace_entry,
};

/// Field manager of meshrev's writes.
pub(crate) const FIELD_MANAGER: &str = "meshrev-upgrade";
/// Pods that count: everything but completed and failed pods.
pub(crate) const COUNTED_PODS: &str = "status.phase!=Succeeded,status.phase!=Failed";
const PAGE: u32 = 500;

/// Names meshrev in every request `config`'s client makes (`meshrev/<version> (<role>)`),
/// so that the API server's audit log and its per-client metrics tell the webhook's
/// controller (`serve`) apart from an operator's CLI (`upgrade`). Without it the requests
/// carry no User-Agent at all.
pub(crate) fn identify(config: &mut kube::Config, role: &str) {
    let agent = format!("meshrev/{} ({role})", env!("CARGO_PKG_VERSION"));
    let value = http::HeaderValue::try_from(agent)
        .expect("a user agent built from the crate version and a role name must be a valid header");
    config
        .headers
        .retain(|(k, _)| k != http::header::USER_AGENT);
    config.headers.push((http::header::USER_AGENT, value));
}

/// How much of the pods a view needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PodDetail {
    None,
    /// Whole pods (phase, readiness, owners resolved to workloads).
    Full,
}

/// What [`load_view`] lists. Revisions and tags are always listed.
#[derive(Clone, Debug)]
pub(crate) struct Needs {
    pub(crate) namespaces: bool,
    pub(crate) pods: PodDetail,
    pub(crate) workloads: bool,
    /// The control-plane Deployments (labelled `istio.io/rev`, every namespace): what
    /// the readiness guards and the status's control-plane column read.
    pub(crate) control_planes: bool,
    /// Limit pods and workloads to one namespace.
    pub(crate) namespace: Option<String>,
}

impl Needs {
    /// Everything, cluster-wide.
    pub(crate) fn all() -> Self {
        Needs {
            namespaces: true,
            pods: PodDetail::Full,
            workloads: true,
            control_planes: true,
            namespace: None,
        }
    }
    /// Revisions, tags and their control planes.
    pub(crate) fn config() -> Self {
        Needs {
            namespaces: false,
            pods: PodDetail::None,
            workloads: false,
            control_planes: true,
            namespace: None,
        }
    }
    /// Everything about one namespace (all namespaces' labels).
    pub(crate) fn namespace(ns: &str) -> Self {
        Needs {
            namespace: Some(ns.to_string()),
            ..Needs::all()
        }
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// LIST, every page.
pub(crate) async fn list_all<K>(api: &Api<K>, lp: &ListParams) -> kube::Result<Vec<K>>
where
    K: Clone + DeserializeOwned + Debug,
{
    let mut lp = lp.clone().limit(PAGE);
    let mut out = Vec::new();
    loop {
        let page: ObjectList<K> = api.list(&lp).await?;
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => return Ok(out),
        }
    }
}

/// Metadata-only LIST, every page.
pub(crate) async fn list_meta<K>(
    api: &Api<K>,
    lp: &ListParams,
) -> kube::Result<Vec<kube::api::PartialObjectMeta<K>>>
where
    K: Clone + DeserializeOwned + Debug + Resource,
{
    let mut lp = lp.clone().limit(PAGE);
    let mut out = Vec::new();
    loop {
        let page = api.list_metadata(&lp).await?;
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => return Ok(out),
        }
    }
}

/// A failed Kubernetes call of the upgrade tooling. Each names the object and the fix.
///
/// The message carries the API server's own message (which, for a refusal by a webhook,
/// names its blockers and fix); the `kube::Error` is kept for classification by status
/// code rather than repeated as a `source`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
    /// Listing meshrev's own resources got 404: the CRDs are not installed.
    #[error(
        "listing {kind}: the meshrev.io CRDs are not installed in this cluster (kubectl apply -f manifests/crds.yaml)"
    )]
    CrdsMissing {
        /// `MeshRevisions` or `RevisionTags`.
        kind: &'static str,
    },
    /// An API call failed: `action` names it and its object (`relabelling namespace
    /// default`, `listing pods`).
    #[error("{action}: {}{}", describe(error), fix(error))]
    Api { action: String, error: kube::Error },
    /// A workload without a `spec` (the API server never returns one).
    #[error("{workload} has no spec; fix: check it with kubectl get {} -o yaml", workload.kind.as_str().to_ascii_lowercase())]
    NoSpec { workload: WorkloadId },
}

impl ClusterError {
    fn api(action: impl Into<String>, error: kube::Error) -> Self {
        ClusterError::Api {
            action: action.into(),
            error,
        }
    }

    /// What went wrong, without the action: the API server's message when it answered.
    pub(crate) fn detail(&self) -> String {
        match self {
            ClusterError::Api { error, .. } => describe(error),
            other => other.to_string(),
        }
    }
}

/// The API server's message, or for a call that got no answer, the whole error chain.
fn describe(e: &kube::Error) -> String {
    if let kube::Error::Api(s) = e {
        return s.message.clone();
    }
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// The fix for failures that are not the API server's refusal: it could not be reached,
/// or refused the credentials. (A refusal carries its own fix in its message.)
fn fix(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) if s.code == 401 => {
            "\nfix: the kubeconfig's credentials were refused; log in again (or pass --kubeconfig/--context)"
        }
        kube::Error::Api(_) => "",
        _ => {
            "\nfix: check that the cluster is reachable with this kubeconfig (kubectl cluster-info)"
        }
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn crd_context(e: kube::Error, kind: &'static str) -> ClusterError {
    if is_not_found(&e) {
        ClusterError::CrdsMissing { kind }
    } else {
        ClusterError::api(format!("listing {kind}"), e)
    }
}

fn listing(what: &'static str) -> impl FnOnce(kube::Error) -> ClusterError {
    move |e| ClusterError::api(format!("listing {what}"), e)
}

/// Builds a view with LIST calls (as many as `needs` asks for).
pub(crate) async fn load_view(client: &Client, needs: &Needs) -> Result<MeshView, ClusterError> {
    let mut view = MeshView::default();
    let ns = needs.namespace.as_deref();
    let all = ListParams::default();
    let (rev_api, tag_api) = (
        Api::<MeshRevision>::all(client.clone()),
        Api::<RevisionTag>::all(client.clone()),
    );
    // Both LISTs run at once; when both fail, the revisions' error is the one reported
    // (not whichever failed first), so the message does not depend on timing.
    let (revs, tags) = futures::join!(list_all(&rev_api, &all), list_all(&tag_api, &all));
    let revs = revs.map_err(|e| crd_context(e, "MeshRevisions"))?;
    let tags = tags.map_err(|e| crd_context(e, "RevisionTags"))?;
    for r in &revs {
        view.revisions.insert(
            r.metadata.name.clone().unwrap_or_default(),
            RevisionInfo::from(r),
        );
    }
    for t in &tags {
        view.tags.insert(
            t.metadata.name.clone().unwrap_or_default(),
            TagInfo::from(t),
        );
    }
    if needs.namespaces {
        let nss = list_meta(
            &Api::<Namespace>::all(client.clone()),
            &ListParams::default(),
        )
        .await
        .map_err(listing("namespaces"))?;
        for n in nss {
            let ns = Namespace {
                metadata: n.metadata,
                ..Default::default()
            };
            let (name, labels) = namespace_entry(&ns);
            view.namespaces.insert(name, labels);
        }
    }
    let counted = ListParams::default().fields(COUNTED_PODS);
    match needs.pods {
        PodDetail::None => {}
        PodDetail::Full => {
            let (pods, rss) = futures::try_join!(
                async {
                    list_all(&api::<Pod>(client, ns), &counted)
                        .await
                        .map_err(listing("pods"))
                },
                async {
                    list_meta(&api::<ReplicaSet>(client, ns), &ListParams::default())
                        .await
                        .map_err(listing("replicasets"))
                },
            )?;
            let rs_owner: HashMap<(String, String), String> = rss
                .iter()
                .filter_map(|rs| {
                    let owner = rs
                        .metadata
                        .owner_references
                        .as_ref()?
                        .iter()
                        .find(|o| o.controller == Some(true) && o.kind == "Deployment")?;
                    Some((
                        (
                            rs.metadata.namespace.clone().unwrap_or_default(),
                            rs.metadata.name.clone().unwrap_or_default(),
                        ),
                        owner.name.clone(),
                    ))
                })
                .collect();
            let lookup =
                |ns: &str, rs: &str| rs_owner.get(&(ns.to_string(), rs.to_string())).cloned();
            view.pods = pods.iter().map(|p| PodInfo::from_pod(p, &lookup)).collect();
        }
    }
    if needs.control_planes {
        // The controller's watch reads the same selector, so the CLI and the webhook judge
        // the same Deployments (see `core::control_plane`).
        let lp = ListParams::default().labels(CONTROL_PLANE_LABEL);
        let ds = list_all(&Api::<Deployment>::all(client.clone()), &lp)
            .await
            .map_err(listing("control-plane deployments (labelled istio.io/rev)"))?;
        view.deployments = ds.iter().filter_map(control_plane_entry).collect();
    }
    if needs.workloads {
        let lp = ListParams::default();
        let (ds, ss, dss) = futures::try_join!(
            async {
                list_all(&api::<Deployment>(client, ns), &lp)
                    .await
                    .map_err(listing("deployments"))
            },
            async {
                list_all(&api::<StatefulSet>(client, ns), &lp)
                    .await
                    .map_err(listing("statefulsets"))
            },
            async {
                list_all(&api::<DaemonSet>(client, ns), &lp)
                    .await
                    .map_err(listing("daemonsets"))
            },
        )?;
        view.workloads
            .extend(ds.iter().filter_map(WorkloadInfo::from_deployment));
        view.workloads
            .extend(ss.iter().filter_map(WorkloadInfo::from_statefulset));
        view.workloads
            .extend(dss.iter().filter_map(WorkloadInfo::from_daemonset));
    }
    Ok(view)
}

/// Sets a namespace's injection labels (a `None` removes the label) and, in the same patch,
/// its force annotation: `forced` names the revision whose unready istiod the validating
/// webhook may let this write route to (`--force`); `None` clears a stale one.
pub(crate) async fn set_namespace_labels(
    client: &Client,
    namespace: &str,
    labels: &NamespaceLabels,
    forced: Option<&str>,
) -> Result<(), ClusterError> {
    let patch = json!({"metadata": {
        "labels": {
            LABEL_INJECTION: labels.injection,
            LABEL_REV: labels.rev,
        },
        "annotations": {ANNOTATION_FORCE_CONTROL_PLANE: forced},
    }});
    Api::<Namespace>::all(client.clone())
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| ClusterError::api(format!("relabelling namespace {namespace}"), e))?;
    Ok(())
}

/// Creates a MeshRevision.
pub(crate) async fn create_revision(
    client: &Client,
    name: &str,
    spec: MeshRevisionSpec,
) -> Result<(), ClusterError> {
    let rev = MeshRevision::new(name, spec);
    Api::<MeshRevision>::all(client.clone())
        .create(&pp(), &rev)
        .await
        .map_err(|e| ClusterError::api(format!("creating MeshRevision {name}"), e))?;
    Ok(())
}

/// Creates a RevisionTag; `forced` annotates it so that the validating webhook lets it
/// point at a revision whose istiod is not ready (`--force`).
pub(crate) async fn create_tag(
    client: &Client,
    tag: &str,
    revision: &str,
    forced: bool,
) -> Result<(), ClusterError> {
    let mut t = RevisionTag::new(
        tag,
        RevisionTagSpec {
            revision: revision.to_string(),
        },
    );
    if forced {
        t.metadata.annotations = Some(
            [(
                ANNOTATION_FORCE_CONTROL_PLANE.to_string(),
                revision.to_string(),
            )]
            .into(),
        );
    }
    Api::<RevisionTag>::all(client.clone())
        .create(&pp(), &t)
        .await
        .map_err(|e| ClusterError::api(format!("creating RevisionTag {tag} → {revision}"), e))?;
    Ok(())
}

/// Points `tag` at `revision` and records `promoted_from`, in one patch; with `forced` the
/// patch also names `revision` in the force annotation (the validating webhook then lets
/// the tag move although its istiod is not ready), else it clears a stale one.
pub(crate) async fn move_tag(
    client: &Client,
    tag: &str,
    revision: &str,
    promoted_from: Option<&str>,
    forced: bool,
) -> Result<(), ClusterError> {
    let mut patch = json!({
        "spec": {"revision": revision},
        "metadata": {"annotations": {ANNOTATION_FORCE_CONTROL_PLANE: forced.then_some(revision)}},
    });
    if let Some(prev) = promoted_from {
        patch["metadata"]["annotations"][ANNOTATION_PROMOTED_FROM] = json!(prev);
    }
    Api::<RevisionTag>::all(client.clone())
        .patch(tag, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| ClusterError::api(format!("moving RevisionTag {tag} to {revision}"), e))?;
    Ok(())
}

/// Deletes a tag; `Ok(false)` when it was already gone.
pub(crate) async fn delete_tag(client: &Client, tag: &str) -> Result<bool, ClusterError> {
    match Api::<RevisionTag>::all(client.clone())
        .delete(tag, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(ClusterError::api(format!("deleting RevisionTag {tag}"), e)),
    }
}

/// Deletes a revision; with `force`, first annotates it so the validating webhook lets pods
/// that still run it not block. `Ok(false)` when it was already gone.
pub(crate) async fn delete_revision(
    client: &Client,
    name: &str,
    force: bool,
) -> Result<bool, ClusterError> {
    let api = Api::<MeshRevision>::all(client.clone());
    if force {
        let patch = json!({"metadata": {"annotations": {ANNOTATION_FORCE_DELETE: "true"}}});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => {
                return Err(ClusterError::api(
                    format!("annotating MeshRevision {name}"),
                    e,
                ));
            }
        }
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(ClusterError::api(
            format!("deleting MeshRevision {name}"),
            e,
        )),
    }
}

fn pp() -> PostParams {
    PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.into()),
    }
}

/// `kubectl rollout restart`: sets the pod-template annotation
/// `kubectl.kubernetes.io/restartedAt` to now.
pub(crate) async fn restart(client: &Client, id: &WorkloadId) -> Result<(), ClusterError> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {ANNOTATION_RESTARTED_AT: now}}}}});
    let params = PatchParams::default();
    let ns = id.namespace.as_str();
    let r = match id.kind {
        WorkloadKind::Deployment => api::<Deployment>(client, Some(ns))
            .patch(&id.name, &params, &Patch::Merge(&patch))
            .await
            .map(drop),
        WorkloadKind::StatefulSet => api::<StatefulSet>(client, Some(ns))
            .patch(&id.name, &params, &Patch::Merge(&patch))
            .await
            .map(drop),
        WorkloadKind::DaemonSet => api::<DaemonSet>(client, Some(ns))
            .patch(&id.name, &params, &Patch::Merge(&patch))
            .await
            .map(drop),
    };
    r.map_err(|e| ClusterError::api(format!("restarting {id}"), e))
}

/// Where a workload's rollout stands.
pub(crate) async fn progress(client: &Client, id: &WorkloadId) -> Result<Progress, ClusterError> {
    let ns = Some(id.namespace.as_str());
    let r = match id.kind {
        WorkloadKind::Deployment => api::<Deployment>(client, ns)
            .get(&id.name)
            .await
            .map(|d| rollout::deployment(&d)),
        WorkloadKind::StatefulSet => api::<StatefulSet>(client, ns)
            .get(&id.name)
            .await
            .map(|s| rollout::statefulset(&s)),
        WorkloadKind::DaemonSet => api::<DaemonSet>(client, ns)
            .get(&id.name)
            .await
            .map(|d| rollout::daemonset(&d)),
    };
    r.map_err(|e| ClusterError::api(format!("reading {id}"), e))
}

/// A workload's pod template.
pub(crate) async fn template(
    client: &Client,
    id: &WorkloadId,
) -> Result<PodTemplateSpec, ClusterError> {
    let ns = Some(id.namespace.as_str());
    let r = match id.kind {
        WorkloadKind::Deployment => api::<Deployment>(client, ns)
            .get(&id.name)
            .await
            .map(|d| d.spec.map(|s| s.template)),
        WorkloadKind::StatefulSet => api::<StatefulSet>(client, ns)
            .get(&id.name)
            .await
            .map(|s| s.spec.map(|s| s.template)),
        WorkloadKind::DaemonSet => api::<DaemonSet>(client, ns)
            .get(&id.name)
            .await
            .map(|d| d.spec.map(|s| s.template)),
    };
    r.map_err(|e| ClusterError::api(format!("reading {id}"), e))?
        .ok_or_else(|| ClusterError::NoSpec {
            workload: id.clone(),
        })
}

/// Asks the API server what the sidecar injector would do to a new pod of this template
/// right now: a server-side dry-run CREATE goes through the mutating webhooks without
/// storing anything. Returns the injected revision (`None`: not injected).
pub(crate) async fn probe_injection(
    client: &Client,
    namespace: &str,
    template: &PodTemplateSpec,
) -> Result<Option<String>, ClusterError> {
    let mut meta = template.metadata.clone().unwrap_or_default();
    meta.name = None;
    meta.generate_name = Some("meshrev-probe-".into());
    meta.namespace = Some(namespace.to_string());
    let pod = Pod {
        metadata: meta,
        spec: template.spec.clone(),
        status: None,
    };
    let params = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    let created = api::<Pod>(client, Some(namespace))
        .create(&params, &pod)
        .await
        .map_err(|e| ClusterError::api(format!("dry-run creating a pod in {namespace}"), e))?;
    Ok(injected_revision(&created.metadata))
}

#[cfg(test)]
mod tests {
    use super::identify;

    #[test]
    fn clients_say_they_are_meshrev_and_which_role_once() {
        let mut config = kube::Config::new("https://127.0.0.1:6443".parse().expect("a URI"));
        config.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_static("kube-rs"),
        ));
        identify(&mut config, "serve");
        identify(&mut config, "upgrade");
        let agents: Vec<_> = config
            .headers
            .iter()
            .filter(|(k, _)| k == http::header::USER_AGENT)
            .map(|(_, v)| v.to_str().expect("ASCII"))
            .collect();
        assert_eq!(
            agents,
            [format!("meshrev/{} (upgrade)", env!("CARGO_PKG_VERSION"))]
        );
    }
}
