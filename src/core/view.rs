//! [`MeshView`]: what upgrade decisions need to know about a cluster, as plain data, and
//! the routing of its pods and workloads (through [`super::route()`], the router the
//! webhook uses too).
//!
//! Built from Kubernetes objects by the conversions in [`crate::upgrade::view`] (from LIST
//! calls), or by hand in tests. Owned by whoever built it; nothing mutates a view that a
//! guard or a report is reading.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use super::Error;
use super::control_plane::{ControlPlane, ControlPlaneRef, ControlPlaneState, DeploymentSummary};
use super::labels::{NamespaceLabels, NamespaceSelect, NoLabels, PodLabels};
use super::route::{self, Decision, Namespaces, Revisions, SkipReason};
use super::validate;
use super::vocab::{LABEL_INJECT, LABEL_REV, TAG_CANARY, TAG_STABLE};

/// A snapshot of revisions, tags, namespace labels, pods and workloads.
///
/// Which parts are filled depends on who built it: the webhook lists only what the
/// change at hand needs (see [`crate::upgrade::cluster::Needs`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct MeshView {
    /// `MeshRevision`s by name.
    pub(crate) revisions: BTreeMap<String, RevisionInfo>,
    /// `RevisionTag`s by name.
    pub(crate) tags: BTreeMap<String, TagInfo>,
    /// Every namespace (also those without injection labels) by name.
    pub(crate) namespaces: BTreeMap<String, NamespaceLabels>,
    /// Pods that count: every pod that is not `Succeeded` or `Failed`.
    pub(crate) pods: Vec<PodInfo>,
    /// Deployments, StatefulSets and DaemonSets.
    pub(crate) workloads: Vec<WorkloadInfo>,
    /// The control-plane Deployments (those labelled `istio.io/rev`), by namespace/name:
    /// what [`MeshView::control_plane`] judges each revision's readiness from. Always
    /// filled where a guard reads the view (a missing entry means "not found", so not
    /// ready).
    pub(crate) deployments: BTreeMap<ControlPlaneRef, DeploymentSummary>,
}

/// One `MeshRevision`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RevisionInfo {
    /// `spec.version` as written.
    pub(crate) version: String,
    /// Annotation `meshrev.io/force-delete: "true"`.
    pub(crate) force_delete: bool,
    /// Its istiod Deployment (`spec.controlPlane`, defaults resolved); `None` means the
    /// default for its name ([`ControlPlaneRef::resolve`]).
    pub(crate) control_plane: Option<ControlPlaneRef>,
}

impl RevisionInfo {
    #[cfg(test)]
    pub(crate) fn new(version: &str) -> Self {
        RevisionInfo {
            version: version.to_string(),
            force_delete: false,
            control_plane: None,
        }
    }
    /// The version, parsed.
    pub(crate) fn semver(&self) -> Result<semver::Version, Error> {
        parse_version(&self.version)
    }
}

/// Parses a revision's version (`1.23.6`, a leading `v` allowed).
pub(crate) fn parse_version(v: &str) -> Result<semver::Version, Error> {
    validate::version(v)
}

/// One `RevisionTag`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TagInfo {
    /// `spec.revision`.
    pub(crate) revision: String,
    /// Annotation `meshrev.io/promoted-from` (on `stable` after a promotion).
    pub(crate) promoted_from: Option<String>,
}

impl TagInfo {
    pub(crate) fn new(revision: &str) -> Self {
        TagInfo {
            revision: revision.to_string(),
            promoted_from: None,
        }
    }
}

/// The injection-relevant labels and annotations of a pod or pod template.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PodSelector {
    /// Label `istio.io/rev`.
    pub(crate) rev_label: Option<String>,
    /// Label `sidecar.istio.io/inject`.
    pub(crate) inject_label: Option<String>,
    /// Annotation `sidecar.istio.io/inject`.
    pub(crate) inject_annotation: Option<String>,
    pub(crate) host_network: bool,
}

impl PodLabels for PodSelector {
    fn label(&self, key: &str) -> Option<&str> {
        match key {
            LABEL_REV => self.rev_label.as_deref(),
            LABEL_INJECT => self.inject_label.as_deref(),
            _ => None,
        }
    }
    fn annotation(&self, key: &str) -> Option<&str> {
        match key {
            LABEL_INJECT => self.inject_annotation.as_deref(),
            _ => None,
        }
    }
    fn host_network(&self) -> bool {
        self.host_network
    }
}

/// The kinds of workload `meshrev upgrade` restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub(crate) enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl WorkloadKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }
    /// kubectl's spellings: `deployment`, `deploy`, `deployments`, `sts`, `ds`, any case.
    pub(crate) fn parse(s: &str) -> Option<Self> {
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
pub(crate) struct WorkloadId {
    pub(crate) namespace: String,
    pub(crate) kind: WorkloadKind,
    pub(crate) name: String,
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
pub(crate) struct PodInfo {
    pub(crate) namespace: String,
    pub(crate) name: String,
    /// The revision whose sidecar it runs (annotation `istio.io/rev`, else the `revision`
    /// of `sidecar.istio.io/status`); `None` without a sidecar.
    pub(crate) revision: Option<String>,
    /// `status.phase` (`Pending`, `Running`, …; empty when unknown).
    pub(crate) phase: String,
    /// Condition `Ready` is `True`.
    pub(crate) ready: bool,
    /// Being deleted.
    pub(crate) terminating: bool,
    pub(crate) selector: PodSelector,
    /// The controlling workload (a ReplicaSet's Deployment already resolved), as
    /// (kind, name); `None` for a bare pod.
    pub(crate) owner: Option<(String, String)>,
}

impl PodInfo {
    /// `namespace/name`.
    pub(crate) fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
    /// The workload that owns it, when it is one meshrev restarts.
    pub(crate) fn workload(&self) -> Option<WorkloadId> {
        let (kind, name) = self.owner.as_ref()?;
        Some(WorkloadId {
            namespace: self.namespace.clone(),
            kind: WorkloadKind::parse(kind)?,
            name: name.clone(),
        })
    }
    /// Phase for display: `Terminating` wins.
    pub(crate) fn display_phase(&self) -> &str {
        if self.terminating {
            "Terminating"
        } else if self.phase.is_empty() {
            "Unknown"
        } else {
            &self.phase
        }
    }
}

/// A Deployment, StatefulSet or DaemonSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WorkloadInfo {
    pub(crate) id: WorkloadId,
    /// Of the pod template.
    pub(crate) selector: PodSelector,
    /// Desired pods (`spec.replicas`; for a DaemonSet `status.desiredNumberScheduled`).
    pub(crate) replicas: i32,
    /// `spec.paused` of a Deployment.
    pub(crate) paused: bool,
    /// A StatefulSet with `updateStrategy: OnDelete` (a restart does not replace pods).
    pub(crate) on_delete: bool,
    /// Its pods ask for Istio's `gateway` template (`inject.istio.io/templates`).
    pub(crate) gateway: bool,
}

/// The router's decision, owning its names: what [`WorkloadState`] keeps.
pub(crate) type Route = Decision<String, String>;

impl Revisions for MeshView {
    type Revision = str;
    fn tag(&self, name: &str) -> Option<(&str, &str)> {
        let (tag, t) = self.tags.get_key_value(name)?;
        let (rev, _) = self.revisions.get_key_value(&t.revision)?;
        Some((tag.as_str(), rev.as_str()))
    }
    fn revision(&self, name: &str) -> Option<&str> {
        self.revisions
            .get_key_value(name)
            .map(|(rev, _)| rev.as_str())
    }
}

impl Namespaces for MeshView {
    fn namespace_labels(&self, namespace: &str) -> Option<&NamespaceLabels> {
        self.namespaces.get(namespace)
    }
}

impl MeshView {
    /// The control plane of `revision` (a revision name, not a tag) and its state. A
    /// revision the view does not know gets the default Deployment name (what a new
    /// revision of that name would get).
    pub(crate) fn control_plane(&self, revision: &str) -> ControlPlane {
        let deployment = self
            .revisions
            .get(revision)
            .and_then(|r| r.control_plane.clone())
            .unwrap_or_else(|| ControlPlaneRef::resolve(revision, None, None));
        let state = ControlPlaneState::of(self.deployments.get(&deployment));
        ControlPlane { deployment, state }
    }

    /// Test fixtures: every revision's control plane available (1/1).
    #[cfg(test)]
    pub(crate) fn with_ready_control_planes(mut self) -> Self {
        let names: Vec<String> = self.revisions.keys().cloned().collect();
        for r in names {
            let d = self.control_plane(&r).deployment;
            self.deployments.insert(d, DeploymentSummary::ready(1));
        }
        self
    }

    /// Labels of a namespace (empty when unknown).
    pub(crate) fn namespace(&self, name: &str) -> NamespaceLabels {
        self.namespaces.get(name).cloned().unwrap_or_default()
    }

    /// The revision a tag resolves to, when the tag exists and its revision does.
    pub(crate) fn tag_revision(&self, tag: &str) -> Option<&str> {
        Revisions::tag(self, tag).map(|(_, revision)| revision)
    }
    pub(crate) fn stable(&self) -> Option<&str> {
        self.tag_revision(TAG_STABLE)
    }
    pub(crate) fn canary(&self) -> Option<&str> {
        self.tag_revision(TAG_CANARY)
    }

    /// The router's decision for a pod (or pod template) in `namespace`.
    pub(crate) fn route(&self, namespace: &str, pod: &PodSelector) -> Route {
        route::route(self, namespace, pod).into_owned()
    }

    /// The namespace-level decision (what a pod without labels of its own gets).
    pub(crate) fn namespace_route(&self, namespace: &str) -> Route {
        route::route(self, namespace, &NoLabels).into_owned()
    }

    /// True when a pod's own labels (not its namespace's) select `name` (a tag or revision),
    /// the way the router reads them: only in a namespace without injection labels, and
    /// not for a pod the router never injects (its own opt-out, host network, a system
    /// namespace): istiod's pods carry `istio.io/rev: <revision>` and
    /// `sidecar.istio.io/inject: "false"`, and do not use the revision they serve.
    pub(crate) fn pod_selects(&self, pod: &PodInfo, name: &str) -> bool {
        let unlabelled = self
            .namespaces
            .get(&pod.namespace)
            .is_none_or(|l| l.select() == NamespaceSelect::Unlabelled);
        unlabelled
            && route::pod_selection(&pod.selector) == Some(name)
            && route::never_injected(&pod.namespace, &pod.selector).is_none()
    }

    /// Pods whose sidecar is `revision`.
    pub(crate) fn pods_on<'a>(
        &'a self,
        revision: &'a str,
    ) -> impl Iterator<Item = &'a PodInfo> + 'a {
        self.pods
            .iter()
            .filter(move |p| p.revision.as_deref() == Some(revision))
    }

    /// Names of the tags that point at `revision`.
    pub(crate) fn tags_of(&self, revision: &str) -> Vec<&str> {
        self.tags
            .iter()
            .filter(|(_, t)| t.revision == revision)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Revisions no tag points at.
    pub(crate) fn untagged_revisions(&self) -> Vec<&str> {
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
    pub(crate) fn workload_states(&self) -> Vec<WorkloadState> {
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
pub(crate) struct WorkloadState {
    /// Set for Deployments, StatefulSets and DaemonSets (what `rollout` can restart).
    pub(crate) id: Option<WorkloadId>,
    pub(crate) namespace: String,
    pub(crate) kind: String,
    pub(crate) name: String,
    /// What new pods of it get now.
    pub(crate) target: Route,
    /// Pods per sidecar revision (`None`: no sidecar).
    pub(crate) revisions: BTreeMap<Option<String>, usize>,
    /// Names of its pods whose revision differs from the target.
    pub(crate) stale_pods: Vec<String>,
    pub(crate) pods: usize,
    pub(crate) ready: usize,
    pub(crate) replicas: i32,
    pub(crate) paused: bool,
    pub(crate) on_delete: bool,
    /// Runs the proxy as a gateway (`inject.istio.io/templates: gateway`).
    pub(crate) gateway: bool,
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
            if let Decision::Inject { revision, .. } = &target
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
    pub(crate) fn in_mesh(&self) -> bool {
        self.target.selects_something() || self.revisions.keys().any(Option::is_some)
    }

    /// Some pod runs a sidecar of another revision than new pods would get.
    pub(crate) fn needs_upgrade(&self) -> bool {
        !self.stale_pods.is_empty()
    }

    /// `rollout` can restart it.
    pub(crate) fn restartable(&self) -> bool {
        self.id.is_some()
    }

    /// Has a pod on `revision`.
    pub(crate) fn runs(&self, revision: &str) -> bool {
        self.revisions.contains_key(&Some(revision.to_string()))
    }

    /// A short state for display.
    pub(crate) fn state(&self) -> String {
        match (&self.target, self.target.skip_text()) {
            (
                Decision::Skip {
                    reason: SkipReason::UnknownRevision,
                    ..
                },
                Some(why),
            ) => format!("broken: {why}"),
            (Decision::Skip { .. }, Some(why)) if self.revisions.keys().any(Option::is_some) => {
                format!("sidecar no longer selected ({why})")
            }
            (Decision::Skip { .. }, why) => why.unwrap_or_default(),
            (Decision::Inject { .. }, _) if self.needs_upgrade() => "needs upgrade".into(),
            (Decision::Inject { .. }, _) if self.pods == 0 => "no pods".into(),
            (Decision::Inject { .. }, _) if self.revisions.contains_key(&None) => {
                "pods without sidecar".into()
            }
            (Decision::Inject { .. }, _) => "up to date".into(),
        }
    }

    /// `deployment default/reviews-v2`.
    pub(crate) fn label(&self) -> String {
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
