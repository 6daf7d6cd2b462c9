//! [`MeshView`]: what upgrade decisions need to know about a cluster, as plain data.
//!
//! Built by [`crate::upgrade::cluster::load_view`] from LIST calls, or by hand in tests. The
//! routing rules here ([`MeshView::route`]) are the router's ([`crate::router`]) over this
//! data: a unit test checks that both agree.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use crate::config::{MeshRevision, RevisionTag};
use crate::injector::ANNOTATION_STATUS;
use crate::router::{LABEL_INJECT, SYSTEM_NAMESPACES};
use crate::table::{LABEL_INJECTION, LABEL_REV, TAG_CANARY, TAG_STABLE};

use super::{ANNOTATION_FORCE_DELETE, ANNOTATION_PROMOTED_FROM, ANNOTATION_REV};

/// A snapshot of revisions, tags, namespace labels, pods and workloads.
///
/// Which parts are filled depends on who built it: the webhook lists only what the
/// change at hand needs (see [`crate::upgrade::cluster::Needs`]).
#[derive(Clone, Debug, Default)]
pub struct MeshView {
    /// `MeshRevision`s by name.
    pub revisions: BTreeMap<String, RevisionInfo>,
    /// `RevisionTag`s by name.
    pub tags: BTreeMap<String, TagInfo>,
    /// Every namespace (also those without injection labels) by name.
    pub namespaces: BTreeMap<String, NamespaceLabels>,
    /// Pods that count: every pod that is not `Succeeded` or `Failed`.
    pub pods: Vec<PodInfo>,
    /// Deployments, StatefulSets and DaemonSets.
    pub workloads: Vec<WorkloadInfo>,
}

/// One `MeshRevision`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevisionInfo {
    /// `spec.version` as written.
    pub version: String,
    /// Annotation `meshrev.io/force-delete: "true"`.
    pub force_delete: bool,
}

impl RevisionInfo {
    pub fn new(version: &str) -> Self {
        RevisionInfo {
            version: version.to_string(),
            force_delete: false,
        }
    }
    /// The version, parsed.
    pub fn semver(&self) -> Result<semver::Version, String> {
        parse_version(&self.version)
    }
}

/// Parses a revision's version (`1.23.6`, a leading `v` allowed).
pub fn parse_version(v: &str) -> Result<semver::Version, String> {
    semver::Version::parse(v.trim_start_matches('v'))
        .map_err(|e| format!("version {v:?} is not a semantic version like 1.23.6: {e}"))
}

/// One `RevisionTag`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagInfo {
    /// `spec.revision`.
    pub revision: String,
    /// Annotation `meshrev.io/promoted-from` (on `stable` after a promotion).
    pub promoted_from: Option<String>,
}

impl TagInfo {
    pub fn new(revision: &str) -> Self {
        TagInfo {
            revision: revision.to_string(),
            promoted_from: None,
        }
    }
}

/// A namespace's injection labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NamespaceLabels {
    /// `istio-injection`.
    pub injection: Option<String>,
    /// `istio.io/rev`.
    pub rev: Option<String>,
}

impl NamespaceLabels {
    pub fn from_map(labels: Option<&BTreeMap<String, String>>) -> Self {
        let get = |k: &str| labels.and_then(|l| l.get(k)).cloned();
        NamespaceLabels {
            injection: get(LABEL_INJECTION),
            rev: get(LABEL_REV),
        }
    }
    pub fn injection_enabled() -> Self {
        NamespaceLabels {
            injection: Some("enabled".into()),
            rev: None,
        }
    }
    pub fn rev(name: &str) -> Self {
        NamespaceLabels {
            injection: None,
            rev: Some(name.into()),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.injection.is_none() && self.rev.is_none()
    }
    /// What the labels select, before tags are resolved (the router's rules 3 and 4).
    pub fn select(&self) -> NamespaceSelect {
        match (&self.injection, &self.rev) {
            (Some(inj), rev) if inj == "enabled" => NamespaceSelect::Name {
                name: TAG_STABLE.into(),
                ignored_rev: rev.clone(),
            },
            (Some(inj), _) => NamespaceSelect::Disabled(inj.clone()),
            (None, Some(rev)) => NamespaceSelect::Name {
                name: rev.clone(),
                ignored_rev: None,
            },
            (None, None) => NamespaceSelect::Unlabelled,
        }
    }
    /// `istio-injection=enabled,istio.io/rev=canary`, or `-`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(v) = &self.injection {
            parts.push(format!("{LABEL_INJECTION}={v}"));
        }
        if let Some(v) = &self.rev {
            parts.push(format!("{LABEL_REV}={v}"));
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(",")
        }
    }
    /// True when this namespace names `name` (a tag or revision) in `istio.io/rev`, or, for
    /// `stable`, has `istio-injection=enabled`.
    pub fn names(&self, name: &str) -> bool {
        self.rev.as_deref() == Some(name)
            || (name == TAG_STABLE && self.injection.as_deref() == Some("enabled"))
    }
}

/// What a namespace's labels select.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceSelect {
    /// No injection label: each pod's labels decide.
    Unlabelled,
    /// `istio-injection` set to something other than `enabled`.
    Disabled(String),
    /// A tag or revision name; `ignored_rev` is an `istio.io/rev` that `istio-injection`
    /// overrides (a conflict).
    Name {
        name: String,
        ignored_rev: Option<String>,
    },
}

/// The injection-relevant labels and annotations of a pod or pod template.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodSelector {
    /// Label `istio.io/rev`.
    pub rev_label: Option<String>,
    /// Label `sidecar.istio.io/inject`.
    pub inject_label: Option<String>,
    /// Annotation `sidecar.istio.io/inject`.
    pub inject_annotation: Option<String>,
    pub host_network: bool,
}

impl PodSelector {
    pub fn from_meta(meta: &ObjectMeta, host_network: bool) -> Self {
        let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k)).cloned();
        PodSelector {
            rev_label: label(LABEL_REV),
            inject_label: label(LABEL_INJECT),
            inject_annotation: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(LABEL_INJECT))
                .cloned(),
            host_network,
        }
    }
    pub fn from_template(t: &PodTemplateSpec) -> Self {
        let host = t
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        t.metadata
            .as_ref()
            .map(|m| PodSelector::from_meta(m, host))
            .unwrap_or(PodSelector {
                host_network: host,
                ..Default::default()
            })
    }
}

/// The kinds of workload `meshrev upgrade` restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }
    /// kubectl's spellings: `deployment`, `deploy`, `deployments`, `sts`, `ds`, any case.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "deployment" | "deployments" | "deploy" => Some(WorkloadKind::Deployment),
            "statefulset" | "statefulsets" | "sts" => Some(WorkloadKind::StatefulSet),
            "daemonset" | "daemonsets" | "ds" => Some(WorkloadKind::DaemonSet),
            _ => None,
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A workload: namespace, kind and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct WorkloadId {
    pub namespace: String,
    pub kind: WorkloadKind,
    pub name: String,
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{}",
            self.kind.as_str().to_ascii_lowercase(),
            self.namespace,
            self.name
        )
    }
}

/// One pod that counts (not `Succeeded`/`Failed`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// The revision whose sidecar it runs (annotation `istio.io/rev`, else the `revision`
    /// of `sidecar.istio.io/status`); `None` without a sidecar.
    pub revision: Option<String>,
    /// `status.phase` (`Pending`, `Running`, …; empty when unknown).
    pub phase: String,
    /// Condition `Ready` is `True`.
    pub ready: bool,
    /// Being deleted.
    pub terminating: bool,
    pub selector: PodSelector,
    /// The controlling workload (a ReplicaSet's Deployment already resolved), as
    /// (kind, name); `None` for a bare pod.
    pub owner: Option<(String, String)>,
}

impl PodInfo {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
    /// The workload that owns it, when it is one meshrev restarts.
    pub fn workload(&self) -> Option<WorkloadId> {
        let (kind, name) = self.owner.as_ref()?;
        Some(WorkloadId {
            namespace: self.namespace.clone(),
            kind: WorkloadKind::parse(kind)?,
            name: name.clone(),
        })
    }
    /// Phase for display: `Terminating` wins.
    pub fn display_phase(&self) -> &str {
        if self.terminating {
            "Terminating"
        } else if self.phase.is_empty() {
            "Unknown"
        } else {
            &self.phase
        }
    }

    /// From a full Pod. `replica_set_owner` maps (namespace, ReplicaSet name) to the name
    /// of the Deployment that controls that ReplicaSet.
    pub fn from_pod(pod: &Pod, replica_set_owner: &dyn Fn(&str, &str) -> Option<String>) -> Self {
        let host = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let mut info = PodInfo::from_meta(&pod.metadata, host, replica_set_owner);
        if let Some(status) = &pod.status {
            info.phase = status.phase.clone().unwrap_or_default();
            info.ready = status
                .conditions
                .as_ref()
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        }
        info
    }

    /// From metadata alone (the webhook's metadata-only LIST): phase unknown.
    pub fn from_meta(
        meta: &ObjectMeta,
        host_network: bool,
        replica_set_owner: &dyn Fn(&str, &str) -> Option<String>,
    ) -> Self {
        let namespace = meta.namespace.clone().unwrap_or_default();
        let owner = meta
            .owner_references
            .as_ref()
            .and_then(|os| os.iter().find(|o| o.controller == Some(true)))
            .map(|o| {
                if o.kind == "ReplicaSet"
                    && let Some(d) = replica_set_owner(&namespace, &o.name)
                {
                    ("Deployment".to_string(), d)
                } else {
                    (o.kind.clone(), o.name.clone())
                }
            });
        PodInfo {
            name: meta.name.clone().unwrap_or_default(),
            revision: injected_revision(meta),
            phase: String::new(),
            ready: false,
            terminating: meta.deletion_timestamp.is_some(),
            selector: PodSelector::from_meta(meta, host_network),
            owner,
            namespace,
        }
    }
}

/// The revision recorded on an injected pod: annotation `istio.io/rev`, else the
/// `revision` field of `sidecar.istio.io/status`.
pub fn injected_revision(meta: &ObjectMeta) -> Option<String> {
    let ann = meta.annotations.as_ref()?;
    if let Some(r) = ann.get(ANNOTATION_REV).filter(|r| !r.is_empty()) {
        return Some(r.clone());
    }
    let status: serde_json::Value = serde_json::from_str(ann.get(ANNOTATION_STATUS)?).ok()?;
    status
        .get("revision")
        .and_then(|r| r.as_str())
        .filter(|r| !r.is_empty())
        .map(str::to_string)
}

/// A Deployment, StatefulSet or DaemonSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadInfo {
    pub id: WorkloadId,
    /// Of the pod template.
    pub selector: PodSelector,
    /// Desired pods (`spec.replicas`; for a DaemonSet `status.desiredNumberScheduled`).
    pub replicas: i32,
    /// `spec.paused` of a Deployment.
    pub paused: bool,
    /// A StatefulSet with `updateStrategy: OnDelete` (a restart does not replace pods).
    pub on_delete: bool,
    /// Its pods ask for Istio's `gateway` template (`inject.istio.io/templates`).
    pub gateway: bool,
}

impl WorkloadInfo {
    fn new(meta: &ObjectMeta, kind: WorkloadKind, template: &PodTemplateSpec) -> Self {
        WorkloadInfo {
            id: WorkloadId {
                namespace: meta.namespace.clone().unwrap_or_default(),
                kind,
                name: meta.name.clone().unwrap_or_default(),
            },
            selector: PodSelector::from_template(template),
            replicas: 1,
            paused: false,
            on_delete: false,
            gateway: template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get("inject.istio.io/templates"))
                .is_some_and(|t| t.split(',').any(|t| t.trim() == "gateway")),
        }
    }
    pub fn from_deployment(d: &Deployment) -> Option<Self> {
        let spec = d.spec.as_ref()?;
        let mut w = WorkloadInfo::new(&d.metadata, WorkloadKind::Deployment, &spec.template);
        w.replicas = spec.replicas.unwrap_or(1);
        w.paused = spec.paused.unwrap_or(false);
        Some(w)
    }
    pub fn from_statefulset(s: &StatefulSet) -> Option<Self> {
        let spec = s.spec.as_ref()?;
        let mut w = WorkloadInfo::new(&s.metadata, WorkloadKind::StatefulSet, &spec.template);
        w.replicas = spec.replicas.unwrap_or(1);
        w.on_delete = spec
            .update_strategy
            .as_ref()
            .and_then(|u| u.type_.as_deref())
            == Some("OnDelete");
        Some(w)
    }
    pub fn from_daemonset(d: &DaemonSet) -> Option<Self> {
        let spec = d.spec.as_ref()?;
        let mut w = WorkloadInfo::new(&d.metadata, WorkloadKind::DaemonSet, &spec.template);
        w.replicas = d
            .status
            .as_ref()
            .map(|s| s.desired_number_scheduled)
            .unwrap_or(0);
        w.on_delete = spec
            .update_strategy
            .as_ref()
            .and_then(|u| u.type_.as_deref())
            == Some("OnDelete");
        Some(w)
    }
}

impl From<&MeshRevision> for RevisionInfo {
    fn from(r: &MeshRevision) -> Self {
        RevisionInfo {
            version: r.spec.version.clone(),
            force_delete: r
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_FORCE_DELETE))
                .is_some_and(|v| v == "true"),
        }
    }
}

impl From<&RevisionTag> for TagInfo {
    fn from(t: &RevisionTag) -> Self {
        TagInfo {
            revision: t.spec.revision.clone(),
            promoted_from: t
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_PROMOTED_FROM))
                .cloned(),
        }
    }
}

/// A namespace's name and labels.
pub fn namespace_entry(ns: &Namespace) -> (String, NamespaceLabels) {
    (
        ns.metadata.name.clone().unwrap_or_default(),
        NamespaceLabels::from_map(ns.metadata.labels.as_ref()),
    )
}

/// Which label chose the revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    Namespace,
    Pod,
}

/// Why a pod (or template) gets no sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    HostNetwork,
    SystemNamespace,
    PodOptOut,
    NamespaceDisabled,
    /// The selected name is neither a tag nor a revision.
    UnknownRevision(String),
    NotInMesh,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::HostNetwork => f.write_str("host network"),
            Skip::SystemNamespace => f.write_str("system namespace"),
            Skip::PodOptOut => f.write_str("opted out (sidecar.istio.io/inject=false)"),
            Skip::NamespaceDisabled => f.write_str("injection disabled in namespace"),
            Skip::UnknownRevision(n) => write!(f, "{LABEL_REV}={n} names no tag or revision"),
            Skip::NotInMesh => f.write_str("not in the mesh"),
        }
    }
}

/// The revision new pods get, and how it was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Inject {
        revision: String,
        /// The tag it went through; `None` when the revision was named directly.
        tag: Option<String>,
        level: Level,
    },
    Skip(Skip),
}

impl Route {
    pub fn revision(&self) -> Option<&str> {
        match self {
            Route::Inject { revision, .. } => Some(revision),
            Route::Skip(_) => None,
        }
    }
}

impl MeshView {
    /// Labels of a namespace (empty when unknown).
    pub fn namespace(&self, name: &str) -> NamespaceLabels {
        self.namespaces.get(name).cloned().unwrap_or_default()
    }

    /// The revision a tag resolves to, when the tag exists and its revision does.
    pub fn tag_revision(&self, tag: &str) -> Option<&str> {
        let t = self.tags.get(tag)?;
        self.revisions
            .contains_key(&t.revision)
            .then_some(t.revision.as_str())
    }
    pub fn stable(&self) -> Option<&str> {
        self.tag_revision(TAG_STABLE)
    }
    pub fn canary(&self) -> Option<&str> {
        self.tag_revision(TAG_CANARY)
    }

    /// A tag, else a revision of that name: (revision, tag).
    pub fn resolve_name(&self, name: &str) -> Option<(String, Option<String>)> {
        if let Some(rev) = self.tag_revision(name) {
            return Some((rev.to_string(), Some(name.to_string())));
        }
        self.revisions
            .contains_key(name)
            .then(|| (name.to_string(), None))
    }

    /// The router's decision for a pod (or pod template) in `namespace`.
    pub fn route(&self, namespace: &str, pod: &PodSelector) -> Route {
        if pod.host_network {
            return Route::Skip(Skip::HostNetwork);
        }
        if SYSTEM_NAMESPACES.contains(&namespace) {
            return Route::Skip(Skip::SystemNamespace);
        }
        if pod
            .inject_label
            .as_deref()
            .or(pod.inject_annotation.as_deref())
            == Some("false")
        {
            return Route::Skip(Skip::PodOptOut);
        }
        let by = |name: &str, level| match self.resolve_name(name) {
            Some((revision, tag)) => Route::Inject {
                revision,
                tag,
                level,
            },
            None => Route::Skip(Skip::UnknownRevision(name.to_string())),
        };
        match self.namespace(namespace).select() {
            NamespaceSelect::Disabled(_) => Route::Skip(Skip::NamespaceDisabled),
            NamespaceSelect::Name { name, .. } => by(&name, Level::Namespace),
            NamespaceSelect::Unlabelled => {
                if let Some(rev) = &pod.rev_label {
                    by(rev, Level::Pod)
                } else if pod.inject_label.as_deref() == Some("true") {
                    by(TAG_STABLE, Level::Pod)
                } else {
                    Route::Skip(Skip::NotInMesh)
                }
            }
        }
    }

    /// The namespace-level decision (what a pod without labels of its own gets).
    pub fn namespace_route(&self, namespace: &str) -> Route {
        self.route(namespace, &PodSelector::default())
    }

    /// True when a pod's own labels (not its namespace's) select `name` (a tag or revision),
    /// the way the router reads them: only in a namespace without injection labels.
    pub fn pod_selects(&self, pod: &PodInfo, name: &str) -> bool {
        if self.namespace(&pod.namespace).select() != NamespaceSelect::Unlabelled {
            return false;
        }
        pod.selector.rev_label.as_deref() == Some(name)
            || (name == TAG_STABLE
                && pod.selector.rev_label.is_none()
                && pod.selector.inject_label.as_deref() == Some("true"))
    }

    /// Pods whose sidecar is `revision`.
    pub fn pods_on<'a>(&'a self, revision: &'a str) -> impl Iterator<Item = &'a PodInfo> + 'a {
        self.pods
            .iter()
            .filter(move |p| p.revision.as_deref() == Some(revision))
    }

    /// Names of the tags that point at `revision`.
    pub fn tags_of(&self, revision: &str) -> Vec<&str> {
        self.tags
            .iter()
            .filter(|(_, t)| t.revision == revision)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Revisions no tag points at.
    pub fn untagged_revisions(&self) -> Vec<&str> {
        let tagged: BTreeSet<&str> = self.tags.values().map(|t| t.revision.as_str()).collect();
        self.revisions
            .keys()
            .map(String::as_str)
            .filter(|r| !tagged.contains(r))
            .collect()
    }

    /// Every workload in the mesh with its pods and target, sorted by namespace, kind, name.
    /// Pods that no Deployment/StatefulSet/DaemonSet owns appear as their own rows
    /// ([`WorkloadState::restartable`] false).
    pub fn workload_states(&self) -> Vec<WorkloadState> {
        let mut by_id: BTreeMap<WorkloadId, Vec<&PodInfo>> = BTreeMap::new();
        let mut loose: Vec<&PodInfo> = Vec::new();
        let known: BTreeSet<&WorkloadId> = self.workloads.iter().map(|w| &w.id).collect();
        for p in &self.pods {
            match p.workload() {
                Some(id) if known.contains(&id) => by_id.entry(id).or_default().push(p),
                _ => loose.push(p),
            }
        }
        let mut out = Vec::new();
        for w in &self.workloads {
            let pods = by_id.remove(&w.id).unwrap_or_default();
            let target = self.route(&w.id.namespace, &w.selector);
            let mut st = WorkloadState::new(
                w.id.namespace.clone(),
                w.id.kind.as_str().to_string(),
                w.id.name.clone(),
                target,
                &pods,
            );
            st.id = Some(w.id.clone());
            st.replicas = w.replicas;
            st.paused = w.paused;
            st.on_delete = w.on_delete;
            st.gateway = w.gateway;
            if st.in_mesh() {
                out.push(st);
            }
        }
        // Pods of other controllers (Jobs, bare ReplicaSets, …) or of none: one row per
        // owner, or per pod.
        let mut others: BTreeMap<(String, String, String), Vec<&PodInfo>> = BTreeMap::new();
        for p in loose {
            let (kind, name) = p
                .owner
                .clone()
                .unwrap_or_else(|| ("Pod".to_string(), p.name.clone()));
            others
                .entry((p.namespace.clone(), kind, name))
                .or_default()
                .push(p);
        }
        for ((ns, kind, name), pods) in others {
            // The router's decision for the first pod stands for all (same owner, same
            // template, as a rule).
            let target = self.route(&ns, &pods[0].selector);
            let mut st = WorkloadState::new(ns, kind, name, target, &pods);
            st.replicas = pods.len() as i32;
            if st.in_mesh() {
                out.push(st);
            }
        }
        out.sort_by(|a, b| (&a.namespace, &a.kind, &a.name).cmp(&(&b.namespace, &b.kind, &b.name)));
        out
    }
}

/// A workload's pods against the revision new pods would get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadState {
    /// Set for Deployments, StatefulSets and DaemonSets (what `rollout` can restart).
    pub id: Option<WorkloadId>,
    pub namespace: String,
    pub kind: String,
    pub name: String,
    /// What new pods of it get now.
    pub target: Route,
    /// Pods per sidecar revision (`None`: no sidecar).
    pub revisions: BTreeMap<Option<String>, usize>,
    /// Names of its pods whose revision differs from the target.
    pub stale_pods: Vec<String>,
    pub pods: usize,
    pub ready: usize,
    pub replicas: i32,
    pub paused: bool,
    pub on_delete: bool,
    /// Runs the proxy as a gateway (`inject.istio.io/templates: gateway`).
    pub gateway: bool,
}

impl WorkloadState {
    fn new(
        namespace: String,
        kind: String,
        name: String,
        target: Route,
        pods: &[&PodInfo],
    ) -> Self {
        let mut revisions: BTreeMap<Option<String>, usize> = BTreeMap::new();
        let mut stale_pods = Vec::new();
        for p in pods {
            *revisions.entry(p.revision.clone()).or_default() += 1;
            if let Route::Inject { revision, .. } = &target
                && p.revision.as_deref().is_some_and(|r| r != revision)
            {
                stale_pods.push(p.name.clone());
            }
        }
        WorkloadState {
            id: None,
            namespace,
            kind,
            name,
            target,
            revisions,
            stale_pods,
            pods: pods.len(),
            ready: pods.iter().filter(|p| p.ready).count(),
            replicas: 0,
            paused: false,
            on_delete: false,
            gateway: false,
        }
    }

    /// In the mesh: new pods get a sidecar, or some pod has one, or its labels name a
    /// missing revision.
    pub fn in_mesh(&self) -> bool {
        matches!(
            self.target,
            Route::Inject { .. } | Route::Skip(Skip::UnknownRevision(_))
        ) || self.revisions.keys().any(Option::is_some)
    }

    /// Some pod runs a sidecar of another revision than new pods would get.
    pub fn needs_upgrade(&self) -> bool {
        !self.stale_pods.is_empty()
    }

    /// `rollout` can restart it.
    pub fn restartable(&self) -> bool {
        self.id.is_some()
    }

    /// Has a pod on `revision`.
    pub fn runs(&self, revision: &str) -> bool {
        self.revisions.contains_key(&Some(revision.to_string()))
    }

    /// A short state for display.
    pub fn state(&self) -> String {
        match &self.target {
            Route::Skip(Skip::UnknownRevision(n)) => {
                format!("broken: {LABEL_REV}={n} names no tag or revision")
            }
            Route::Skip(why) if self.revisions.keys().any(Option::is_some) => {
                format!("sidecar no longer selected ({why})")
            }
            Route::Skip(why) => why.to_string(),
            Route::Inject { .. } if self.needs_upgrade() => "needs upgrade".into(),
            Route::Inject { .. } if self.pods == 0 => "no pods".into(),
            Route::Inject { .. } if self.revisions.contains_key(&None) => {
                "pods without sidecar".into()
            }
            Route::Inject { .. } => "up to date".into(),
        }
    }

    /// `deployment default/reviews-v2`.
    pub fn label(&self) -> String {
        format!(
            "{} {}/{}",
            self.kind.to_ascii_lowercase(),
            self.namespace,
            self.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::injector::pod::Pod as RouterPod;
    use crate::router::{self, Decision, Via};

    pub(crate) fn sample() -> MeshView {
        let mut v = MeshView::default();
        v.revisions
            .insert("1-22-6".into(), RevisionInfo::new("1.22.6"));
        v.revisions
            .insert("1-23-6".into(), RevisionInfo::new("1.23.6"));
        v.tags.insert("stable".into(), TagInfo::new("1-22-6"));
        v.tags.insert("canary".into(), TagInfo::new("1-23-6"));
        v
    }

    fn ns(v: &mut MeshView, name: &str, injection: Option<&str>, rev: Option<&str>) {
        v.namespaces.insert(
            name.into(),
            NamespaceLabels {
                injection: injection.map(Into::into),
                rev: rev.map(Into::into),
            },
        );
    }

    #[test]
    fn agrees_with_the_router() {
        let mut v = sample();
        ns(&mut v, "en", Some("enabled"), None);
        ns(&mut v, "both", Some("enabled"), Some("canary"));
        ns(&mut v, "dis", Some("disabled"), Some("canary"));
        ns(&mut v, "can", None, Some("canary"));
        ns(&mut v, "pin", None, Some("1-23-6"));
        ns(&mut v, "bad", None, Some("1-99-0"));
        ns(&mut v, "plain", None, None);
        ns(&mut v, "kube-system", Some("enabled"), None);
        let namespaces = v
            .namespaces
            .iter()
            .map(|(n, l)| {
                (
                    n.clone(),
                    crate::table::NamespaceLabels::from_labels(|k| match k {
                        LABEL_INJECTION => l.injection.as_deref(),
                        LABEL_REV => l.rev.as_deref(),
                        _ => None,
                    }),
                )
            })
            .collect();
        let table = crate::table::embedded_default().with_namespaces(namespaces);
        let pods = [
            r#"{"metadata":{}}"#,
            r#"{"metadata":{"labels":{"istio.io/rev":"1-22-6"}}}"#,
            r#"{"metadata":{"labels":{"istio.io/rev":"canary"}}}"#,
            r#"{"metadata":{"labels":{"istio.io/rev":"nope"}}}"#,
            r#"{"metadata":{"labels":{"sidecar.istio.io/inject":"true"}}}"#,
            r#"{"metadata":{"labels":{"sidecar.istio.io/inject":"false"}}}"#,
            r#"{"metadata":{"annotations":{"sidecar.istio.io/inject":"false"}}}"#,
            r#"{"metadata":{"labels":{"sidecar.istio.io/inject":"true"},"annotations":{"sidecar.istio.io/inject":"false"}}}"#,
            r#"{"metadata":{"labels":{"sidecar.istio.io/inject":"true"}},"spec":{"hostNetwork":true}}"#,
        ];
        for namespace in v.namespaces.keys().map(String::as_str).chain(["absent"]) {
            for json in pods {
                let rp: RouterPod = serde_json::from_str(json).unwrap();
                let host = rp
                    .spec
                    .as_ref()
                    .and_then(|s| s.host_network)
                    .unwrap_or(false);
                let expected = match router::route(&table, namespace, host, &rp.metadata) {
                    Decision::Inject { revision, via, .. } => Some((
                        revision.name.clone(),
                        match via {
                            Via::Tag(t) => Some(t.to_string()),
                            Via::Pinned => None,
                        },
                    )),
                    Decision::Skip { .. } => None,
                };
                let k8s: Pod = serde_json::from_str(json).unwrap();
                let sel = PodSelector::from_meta(&k8s.metadata, host);
                let got = match v.route(namespace, &sel) {
                    Route::Inject { revision, tag, .. } => Some((revision, tag)),
                    Route::Skip(_) => None,
                };
                assert_eq!(got, expected, "namespace {namespace}, pod {json}");
            }
        }
    }

    #[test]
    fn revision_from_annotation_or_status() {
        let mut m = ObjectMeta::default();
        assert_eq!(injected_revision(&m), None);
        m.annotations = Some(BTreeMap::from([(
            ANNOTATION_STATUS.to_string(),
            r#"{"containers":["istio-proxy"],"revision":"1-22-6"}"#.to_string(),
        )]));
        assert_eq!(injected_revision(&m).as_deref(), Some("1-22-6"));
        m.annotations
            .as_mut()
            .unwrap()
            .insert(ANNOTATION_REV.into(), "1-23-6".into());
        assert_eq!(injected_revision(&m).as_deref(), Some("1-23-6"));
    }

    #[test]
    fn pod_owner_resolves_replica_sets() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "reviews-v2-abc-xyz", "namespace": "default",
                "annotations": {"istio.io/rev": "1-22-6"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "reviews-v2-abc", "uid": "u", "controller": true}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let p = PodInfo::from_pod(&pod, &|ns, rs| {
            (ns == "default" && rs == "reviews-v2-abc").then(|| "reviews-v2".to_string())
        });
        assert_eq!(
            p.workload(),
            Some(WorkloadId {
                namespace: "default".into(),
                kind: WorkloadKind::Deployment,
                name: "reviews-v2".into()
            })
        );
        assert!(p.ready);
        assert_eq!(p.phase, "Running");
        assert_eq!(p.revision.as_deref(), Some("1-22-6"));
    }

    #[test]
    fn workload_states_flag_stale_pods() {
        let mut v = sample();
        ns(&mut v, "default", None, Some("canary"));
        let id = |name: &str| WorkloadId {
            namespace: "default".into(),
            kind: WorkloadKind::Deployment,
            name: name.into(),
        };
        for name in ["old", "new", "empty"] {
            v.workloads.push(WorkloadInfo {
                id: id(name),
                selector: PodSelector::default(),
                replicas: 1,
                paused: false,
                on_delete: false,
                gateway: false,
            });
        }
        let pod = |name: &str, owner: &str, rev: &str| PodInfo {
            namespace: "default".into(),
            name: name.into(),
            revision: Some(rev.into()),
            phase: "Running".into(),
            ready: true,
            owner: Some(("Deployment".into(), owner.into())),
            ..Default::default()
        };
        v.pods.push(pod("old-1", "old", "1-22-6"));
        v.pods.push(pod("new-1", "new", "1-23-6"));
        v.pods.push(PodInfo {
            owner: None,
            ..pod("bare", "", "1-22-6")
        });
        let states = v.workload_states();
        let names: Vec<(&str, String)> = states
            .iter()
            .map(|s| (s.name.as_str(), s.state()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("empty", "no pods".to_string()),
                ("new", "up to date".to_string()),
                ("old", "needs upgrade".to_string()),
                ("bare", "needs upgrade".to_string()),
            ]
        );
        assert!(states[2].restartable());
        assert!(!states[3].restartable());
        assert_eq!(states[2].stale_pods, vec!["old-1".to_string()]);
    }

    #[test]
    fn workload_kind_spellings() {
        for s in ["deploy", "Deployment", "deployments"] {
            assert_eq!(WorkloadKind::parse(s), Some(WorkloadKind::Deployment));
        }
        assert_eq!(WorkloadKind::parse("sts"), Some(WorkloadKind::StatefulSet));
        assert_eq!(WorkloadKind::parse("ds"), Some(WorkloadKind::DaemonSet));
        assert_eq!(WorkloadKind::parse("job"), None);
    }
}
