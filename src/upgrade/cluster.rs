//! The Kubernetes calls of the upgrade tooling: LISTs that build a [`MeshView`], the patches
//! each step makes, rolling restarts and the injector probe.

use std::collections::HashMap;
use std::fmt::Debug;
use std::path::Path;

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodTemplateSpec};
use kube::api::{Api, DeleteParams, ListParams, ObjectList, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::config::{MeshRevision, MeshRevisionSpec, RevisionTag, RevisionTagSpec};
use crate::core::{
    ANNOTATION_FORCE_DELETE, ANNOTATION_PROMOTED_FROM, ANNOTATION_RESTARTED_AT, LABEL_INJECTION,
    LABEL_REV,
};

use super::rollout::{self, Progress};
use super::view::{
    MeshView, NamespaceLabels, PodInfo, RevisionInfo, TagInfo, WorkloadId, WorkloadInfo,
    WorkloadKind, injected_revision, namespace_entry,
};

/// Field manager of meshrev's writes.
pub const FIELD_MANAGER: &str = "meshrev-upgrade";
/// Pods that count: everything but completed and failed pods.
pub const COUNTED_PODS: &str = "status.phase!=Succeeded,status.phase!=Failed";
const PAGE: u32 = 500;

/// A client: from `kubeconfig` when given, else the usual inference (`$KUBECONFIG`,
/// `~/.kube/config`, in-cluster).
pub async fn client(kubeconfig: Option<&Path>, context: Option<&str>) -> anyhow::Result<Client> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .context("loading the kubeconfig ($KUBECONFIG or ~/.kube/config)")?,
        None => kube::Config::infer().await.context(
            "no cluster configured: pass --kubeconfig PATH, set KUBECONFIG, or run inside a pod",
        )?,
    };
    Ok(Client::try_from(config)?)
}

/// How much of the pods a view needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodDetail {
    None,
    /// Labels and annotations only (a metadata-only LIST; phase unknown).
    Metadata,
    /// Whole pods (phase, readiness, owners resolved to workloads).
    Full,
}

/// What [`load_view`] lists. Revisions and tags are always listed.
#[derive(Clone, Debug)]
pub struct Needs {
    pub namespaces: bool,
    pub pods: PodDetail,
    pub workloads: bool,
    /// Limit pods and workloads to one namespace.
    pub namespace: Option<String>,
}

impl Needs {
    /// Everything, cluster-wide.
    pub fn all() -> Self {
        Needs {
            namespaces: true,
            pods: PodDetail::Full,
            workloads: true,
            namespace: None,
        }
    }
    /// Revisions and tags only.
    pub fn config() -> Self {
        Needs {
            namespaces: false,
            pods: PodDetail::None,
            workloads: false,
            namespace: None,
        }
    }
    /// Everything about one namespace (all namespaces' labels).
    pub fn namespace(ns: &str) -> Self {
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
pub async fn list_all<K>(api: &Api<K>, lp: &ListParams) -> kube::Result<Vec<K>>
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
pub async fn list_meta<K>(
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

fn crd_context(e: kube::Error, what: &str) -> anyhow::Error {
    match &e {
        kube::Error::Api(s) if s.code == 404 => anyhow::anyhow!(
            "listing {what}: the meshrev.io CRDs are not installed in this cluster (kubectl apply -f manifests/crds.yaml)"
        ),
        _ => anyhow::Error::new(e).context(format!("listing {what}")),
    }
}

/// Builds a view with LIST calls (as many as `needs` asks for).
pub async fn load_view(client: &Client, needs: &Needs) -> anyhow::Result<MeshView> {
    let mut view = MeshView::default();
    let ns = needs.namespace.as_deref();
    let all = ListParams::default();
    let (rev_api, tag_api) = (
        Api::<MeshRevision>::all(client.clone()),
        Api::<RevisionTag>::all(client.clone()),
    );
    let (revs, tags) = futures::try_join!(
        async {
            list_all(&rev_api, &all)
                .await
                .map_err(|e| crd_context(e, "MeshRevisions"))
        },
        async {
            list_all(&tag_api, &all)
                .await
                .map_err(|e| crd_context(e, "RevisionTags"))
        },
    )?;
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
        .context("listing namespaces")?;
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
        PodDetail::Metadata => {
            let pods = list_meta(&api::<Pod>(client, ns), &counted)
                .await
                .context("listing pods")?;
            view.pods = pods
                .iter()
                .map(|p| PodInfo::from_meta(&p.metadata, false, &|_, _| None))
                .collect();
        }
        PodDetail::Full => {
            let (pods, rss) = futures::try_join!(
                async {
                    list_all(&api::<Pod>(client, ns), &counted)
                        .await
                        .context("listing pods")
                },
                async {
                    list_meta(&api::<ReplicaSet>(client, ns), &ListParams::default())
                        .await
                        .context("listing replicasets")
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
    if needs.workloads {
        let lp = ListParams::default();
        let (ds, ss, dss) = futures::try_join!(
            async {
                list_all(&api::<Deployment>(client, ns), &lp)
                    .await
                    .context("listing deployments")
            },
            async {
                list_all(&api::<StatefulSet>(client, ns), &lp)
                    .await
                    .context("listing statefulsets")
            },
            async {
                list_all(&api::<DaemonSet>(client, ns), &lp)
                    .await
                    .context("listing daemonsets")
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

/// An API error as one line, keeping the API server's message (which carries the
/// webhook's refusal and its blockers).
pub fn api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Sets a namespace's injection labels (a `None` removes the label).
pub async fn set_namespace_labels(
    client: &Client,
    namespace: &str,
    labels: &NamespaceLabels,
) -> anyhow::Result<()> {
    let patch = json!({"metadata": {"labels": {
        LABEL_INJECTION: labels.injection,
        LABEL_REV: labels.rev,
    }}});
    Api::<Namespace>::all(client.clone())
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| anyhow::anyhow!("relabelling namespace {namespace}: {}", api_error(&e)))?;
    Ok(())
}

/// Creates a MeshRevision.
pub async fn create_revision(
    client: &Client,
    name: &str,
    spec: MeshRevisionSpec,
) -> anyhow::Result<()> {
    let rev = MeshRevision::new(name, spec);
    Api::<MeshRevision>::all(client.clone())
        .create(&pp(), &rev)
        .await
        .map_err(|e| anyhow::anyhow!("creating MeshRevision {name}: {}", api_error(&e)))?;
    Ok(())
}

/// Creates a RevisionTag.
pub async fn create_tag(client: &Client, tag: &str, revision: &str) -> anyhow::Result<()> {
    let t = RevisionTag::new(
        tag,
        RevisionTagSpec {
            revision: revision.to_string(),
        },
    );
    Api::<RevisionTag>::all(client.clone())
        .create(&pp(), &t)
        .await
        .map_err(|e| {
            anyhow::anyhow!("creating RevisionTag {tag} → {revision}: {}", api_error(&e))
        })?;
    Ok(())
}

/// Points `tag` at `revision` and records `promoted_from`, in one patch.
pub async fn move_tag(
    client: &Client,
    tag: &str,
    revision: &str,
    promoted_from: Option<&str>,
) -> anyhow::Result<()> {
    let mut patch = json!({"spec": {"revision": revision}});
    if let Some(prev) = promoted_from {
        patch["metadata"] = json!({"annotations": {ANNOTATION_PROMOTED_FROM: prev}});
    }
    Api::<RevisionTag>::all(client.clone())
        .patch(tag, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| {
            anyhow::anyhow!("moving RevisionTag {tag} to {revision}: {}", api_error(&e))
        })?;
    Ok(())
}

/// Deletes a tag; `Ok(false)` when it was already gone.
pub async fn delete_tag(client: &Client, tag: &str) -> anyhow::Result<bool> {
    match Api::<RevisionTag>::all(client.clone())
        .delete(tag, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => bail!("deleting RevisionTag {tag}: {}", api_error(&e)),
    }
}

/// Deletes a revision; with `force`, first annotates it so the validating webhook lets pods
/// that still run it not block. `Ok(false)` when it was already gone.
pub async fn delete_revision(client: &Client, name: &str, force: bool) -> anyhow::Result<bool> {
    let api = Api::<MeshRevision>::all(client.clone());
    if force {
        let patch = json!({"metadata": {"annotations": {ANNOTATION_FORCE_DELETE: "true"}}});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => bail!("annotating MeshRevision {name}: {}", api_error(&e)),
        }
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => bail!("deleting MeshRevision {name}: {}", api_error(&e)),
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
pub async fn restart(client: &Client, id: &WorkloadId) -> anyhow::Result<()> {
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
    r.map_err(|e| anyhow::anyhow!("restarting {id}: {}", api_error(&e)))
}

/// Where a workload's rollout stands.
pub async fn progress(client: &Client, id: &WorkloadId) -> anyhow::Result<Progress> {
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
    r.map_err(|e| anyhow::anyhow!("reading {id}: {}", api_error(&e)))
}

/// A workload's pod template.
pub async fn template(client: &Client, id: &WorkloadId) -> anyhow::Result<PodTemplateSpec> {
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
    r.map_err(|e| anyhow::anyhow!("reading {id}: {}", api_error(&e)))?
        .with_context(|| format!("{id} has no spec"))
}

/// Asks the API server what the sidecar injector would do to a new pod of this template
/// right now: a server-side dry-run CREATE goes through the mutating webhooks without
/// storing anything. Returns the injected revision (`None`: not injected).
pub async fn probe_injection(
    client: &Client,
    namespace: &str,
    template: &PodTemplateSpec,
) -> kube::Result<Option<String>> {
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
        .await?;
    Ok(injected_revision(&created.metadata))
}
