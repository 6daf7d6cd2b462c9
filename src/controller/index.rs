//! [`Index`]: the controller's in-memory picture of the cluster, fed by watches.
//!
//! It reflects MeshRevisions, RevisionTags, namespace labels, Nodes (their kubelet version),
//! live pods (a compact projection of their metadata, see [`PodEntry`]) and the control-plane
//! Deployments (those labelled `istio.io/rev`, each as a [`DeploymentSummary`]: what a
//! revision's readiness is judged from). Watch events are
//! applied one by one ([`Index::apply`], [`Index::delete`]); a relist is handed over whole
//! at `InitDone` and swapped in with [`Index::reset`], so no reader ever sees half a relist
//! (kube-rs reflector semantics).
//!
//! Every change reports what it dirtied ([`Dirty`]): the **routing** projection (what goes
//! into the injection [`Table`]: revision and tag specs, namespace injection labels, the
//! nodes' native-sidecar support) and the **status** projection (what the status writer
//! computes from: the routing projection, pods per revision, the statuses last observed). An
//! annotation or finalizer on a namespace, a pod update that keeps its revision (labels,
//! conditions), a new unlabelled namespace dirty neither, so they neither republish the
//! table nor wake the status writer. A control-plane Deployment dirties routing only when a
//! revision's readiness (its state's reason: `Available`, `Progressing`, …) changes, since
//! the table carries the injection warning for revisions whose istiod is not ready; other
//! changes of a revision's control-plane state (replica counts) dirty status only, and a
//! Deployment no revision names dirties nothing.
//!
//! ## Pods: what is kept, and why no phase or readiness
//!
//! Pods are watched as metadata only (`watcher` over `Api<PartialObjectMeta<Pod>>`, what
//! kube 5 made of the deprecated `metadata_watcher`) with the field selector
//! [`COUNTED_PODS`] (`status.phase!=Succeeded,status.phase!=Failed`): the API server filters,
//! and a pod that completes leaves the watch as a `DELETED` event. So every pod in the index
//! is live (Pending, Running or Unknown), which is all the status counts and the guards read
//! ("which pods still run revision R", "which pods' own labels select R"). Phase and
//! readiness are not in metadata and would cost a second watch of whole pods (every status
//! change of every pod, cluster-wide); nothing on the controller's side needs them, so the
//! projection leaves them out and [`Index::view`] reports an empty phase, as the metadata
//! LIST `/validate` used before did. `meshrev upgrade status`, run outside the cluster,
//! still LISTs whole pods for its phase and readiness columns.
//!
//! Ownership: one [`Index`] per controller, behind the controller's mutex; only the watch
//! drivers in [`super::run`] mutate it. `/validate` and the status writer read it (a
//! [`MeshView`] snapshot, pod counts, observed statuses) under the same mutex.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::PartialObjectMeta;
use kube::core::ObjectMeta;

use crate::config::{MeshRevision, MeshRevisionStatus, RevisionTag, RevisionTagStatus};
use crate::core::{LABEL_INJECT, LABEL_REV};
use crate::table::{Problem, Table, TableBuilder};
use crate::upgrade::view::{
    ControlPlane, ControlPlaneRef, ControlPlaneState, DeploymentSummary, MeshView, NamespaceLabels,
    PodInfo, PodSelector, RevisionInfo, TagInfo, control_plane_entry,
};

/// The pods that count: the field selector of the pod watch.
pub(crate) const COUNTED_PODS: &str = "status.phase!=Succeeded,status.phase!=Failed";

/// What a change touched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Dirty {
    /// The injection table must be rebuilt and published.
    pub(crate) routing: bool,
    /// The status writer must recompute (implied by `routing`).
    pub(crate) status: bool,
}

impl Dirty {
    const NONE: Dirty = Dirty {
        routing: false,
        status: false,
    };
    const ROUTING: Dirty = Dirty {
        routing: true,
        status: true,
    };
    const STATUS: Dirty = Dirty {
        routing: false,
        status: true,
    };
    fn or(self, other: Dirty) -> Dirty {
        Dirty {
            routing: self.routing || other.routing,
            status: self.status || other.status,
        }
    }
    pub(crate) fn any(self) -> bool {
        self.routing || self.status
    }
}

/// The kinds the index reflects (one watch each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Revisions,
    Tags,
    Namespaces,
    Nodes,
    Pods,
    /// Deployments labelled `istio.io/rev`.
    ControlPlanes,
}

impl Kind {
    pub(crate) const ALL: [Kind; 6] = [
        Kind::Revisions,
        Kind::Tags,
        Kind::Namespaces,
        Kind::Nodes,
        Kind::Pods,
        Kind::ControlPlanes,
    ];
    /// The resource name (metrics labels, readiness gates, logs).
    pub(crate) fn resource(self) -> &'static str {
        match self {
            Kind::Revisions => "meshrevisions",
            Kind::Tags => "revisiontags",
            Kind::Namespaces => "namespaces",
            Kind::Nodes => "nodes",
            Kind::Pods => "pods",
            Kind::ControlPlanes => "deployments",
        }
    }
    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// One live pod, as much as the status writer and the guards read (about 60 bytes plus
/// the owner's name; the pod's name is the key).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PodEntry {
    /// The revision whose sidecar it runs ([`crate::core::pod_revision`]), interned.
    pub(crate) revision: Option<Arc<str>>,
    /// The controlling owner; a ReplicaSet that a Deployment made (its name is the
    /// Deployment's plus `-<pod-template-hash>`) is given as that Deployment.
    pub(crate) owner: Option<(OwnerKind, Box<str>)>,
    /// The pod's own injection labels, boxed: most pods have none.
    pub(crate) selection: Option<Box<PodSelection>>,
    /// Being deleted.
    pub(crate) terminating: bool,
}

/// The kind of a pod's controlling owner, without an allocation for the usual ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OwnerKind {
    Deployment,
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
    Other(Box<str>),
}

impl OwnerKind {
    fn parse(kind: &str) -> Self {
        match kind {
            "Deployment" => OwnerKind::Deployment,
            "ReplicaSet" => OwnerKind::ReplicaSet,
            "StatefulSet" => OwnerKind::StatefulSet,
            "DaemonSet" => OwnerKind::DaemonSet,
            "Job" => OwnerKind::Job,
            other => OwnerKind::Other(other.into()),
        }
    }
    pub(crate) fn as_str(&self) -> &str {
        match self {
            OwnerKind::Deployment => "Deployment",
            OwnerKind::ReplicaSet => "ReplicaSet",
            OwnerKind::StatefulSet => "StatefulSet",
            OwnerKind::DaemonSet => "DaemonSet",
            OwnerKind::Job => "Job",
            OwnerKind::Other(k) => k,
        }
    }
}

/// A pod's own injection labels and annotation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PodSelection {
    /// Label `istio.io/rev`.
    pub(crate) rev_label: Option<Box<str>>,
    /// Label `sidecar.istio.io/inject`.
    pub(crate) inject_label: Option<Box<str>>,
    /// Annotation `sidecar.istio.io/inject`.
    pub(crate) inject_annotation: Option<Box<str>>,
}

impl PodEntry {
    /// Projects a pod's metadata. This is the one place the controller decides which
    /// revision a pod runs.
    pub(crate) fn from_meta(meta: &ObjectMeta) -> Self {
        let label = |k: &str| {
            meta.labels
                .as_ref()
                .and_then(|l| l.get(k))
                .map(|v| v.as_str().into())
        };
        let owner = meta
            .owner_references
            .as_ref()
            .and_then(|os| os.iter().find(|o| o.controller == Some(true)))
            .map(|o| {
                let hash = meta
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("pod-template-hash"));
                match hash.and_then(|h| o.name.strip_suffix(h.as_str())?.strip_suffix('-')) {
                    Some(deployment) if o.kind == "ReplicaSet" && !deployment.is_empty() => {
                        (OwnerKind::Deployment, deployment.into())
                    }
                    _ => (OwnerKind::parse(&o.kind), o.name.as_str().into()),
                }
            });
        let selection = PodSelection {
            rev_label: label(LABEL_REV),
            inject_label: label(LABEL_INJECT),
            inject_annotation: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(LABEL_INJECT))
                .map(|v| v.as_str().into()),
        };
        PodEntry {
            revision: crate::core::pod_revision(|k| {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(k))
                    .map(String::as_str)
            })
            .map(|r| Arc::from(r.as_ref())),
            owner,
            selection: (selection != PodSelection::default()).then(|| Box::new(selection)),
            terminating: meta.deletion_timestamp.is_some(),
        }
    }
}

/// One object of a watched kind, projected; what [`Index::apply`] and [`Index::reset`]
/// take.
#[derive(Clone, Debug)]
pub(crate) enum Object {
    Revision(Box<MeshRevision>),
    Tag(Box<RevisionTag>),
    Namespace {
        name: String,
        labels: NamespaceLabels,
    },
    /// A node and its kubelet version.
    Node {
        name: String,
        kubelet: Option<String>,
    },
    Pod {
        namespace: String,
        name: String,
        entry: PodEntry,
    },
    /// A Deployment labelled `istio.io/rev`, summarised.
    ControlPlane {
        deployment: ControlPlaneRef,
        summary: DeploymentSummary,
    },
}

impl Object {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Object::Revision(_) => Kind::Revisions,
            Object::Tag(_) => Kind::Tags,
            Object::Namespace { .. } => Kind::Namespaces,
            Object::Node { .. } => Kind::Nodes,
            Object::Pod { .. } => Kind::Pods,
            Object::ControlPlane { .. } => Kind::ControlPlanes,
        }
    }
    /// A MeshRevision, without its managed fields.
    pub(crate) fn revision(mut r: MeshRevision) -> Self {
        r.metadata.managed_fields = None;
        Object::Revision(Box::new(r))
    }
    /// A RevisionTag, without its managed fields.
    pub(crate) fn tag(mut t: RevisionTag) -> Self {
        t.metadata.managed_fields = None;
        Object::Tag(Box::new(t))
    }
    pub(crate) fn namespace(ns: &PartialObjectMeta<Namespace>) -> Self {
        Object::Namespace {
            name: ns.metadata.name.clone().unwrap_or_default(),
            labels: NamespaceLabels::from_map(ns.metadata.labels.as_ref()),
        }
    }
    pub(crate) fn node(n: &Node) -> Self {
        Object::Node {
            name: n.metadata.name.clone().unwrap_or_default(),
            kubelet: n
                .status
                .as_ref()
                .and_then(|s| s.node_info.as_ref())
                .map(|i| i.kubelet_version.clone()),
        }
    }
    /// A Deployment of the control-plane watch (label `istio.io/rev`; one that loses the
    /// label leaves the watch as a deletion). Should an unlabelled one arrive all the same,
    /// it is kept under its name with an empty summary (0 replicas: not ready).
    pub(crate) fn control_plane(d: &Deployment) -> Self {
        let (deployment, summary) = control_plane_entry(d).unwrap_or_else(|| {
            (
                ControlPlaneRef {
                    namespace: d.metadata.namespace.clone().unwrap_or_default(),
                    name: d.metadata.name.clone().unwrap_or_default(),
                },
                DeploymentSummary::default(),
            )
        });
        Object::ControlPlane {
            deployment,
            summary,
        }
    }
    pub(crate) fn pod(p: &PartialObjectMeta<Pod>) -> Self {
        Object::Pod {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone().unwrap_or_default(),
            entry: PodEntry::from_meta(&p.metadata),
        }
    }
    fn key(&self) -> Key {
        match self {
            Object::Revision(r) => Key::Revision(r.metadata.name.clone().unwrap_or_default()),
            Object::Tag(t) => Key::Tag(t.metadata.name.clone().unwrap_or_default()),
            Object::Namespace { name, .. } => Key::Namespace(name.clone()),
            Object::Node { name, .. } => Key::Node(name.clone()),
            Object::Pod {
                namespace, name, ..
            } => Key::Pod {
                namespace: namespace.clone(),
                name: name.clone(),
            },
            Object::ControlPlane { deployment, .. } => Key::ControlPlane(deployment.clone()),
        }
    }
}

/// The name of an object of a watched kind; what [`Index::delete`] takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Key {
    Revision(String),
    Tag(String),
    Namespace(String),
    Node(String),
    Pod { namespace: String, name: String },
    ControlPlane(ControlPlaneRef),
}

impl From<&Object> for Key {
    fn from(o: &Object) -> Self {
        o.key()
    }
}

/// The reflected cluster. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Index {
    revisions: BTreeMap<String, MeshRevision>,
    tags: BTreeMap<String, RevisionTag>,
    /// Every namespace, labelled or not (the guards list namespaces by name).
    namespaces: BTreeMap<String, NamespaceLabels>,
    /// Node name → does its kubelet run native sidecars.
    nodes: HashMap<String, bool>,
    /// Nodes whose kubelet is too old (or unknown): native sidecars need none.
    nodes_too_old: usize,
    /// namespace → pod name → entry.
    pods: HashMap<Box<str>, HashMap<Box<str>, PodEntry>>,
    pod_count: usize,
    /// Live pods per revision (the status writer's `pods`).
    pods_per_revision: BTreeMap<Arc<str>, u32>,
    /// Control-plane Deployments (labelled `istio.io/rev`) by namespace/name.
    deployments: BTreeMap<ControlPlaneRef, DeploymentSummary>,
    /// Kinds that have listed at least once (bit per [`Kind`]).
    listed: u8,
    /// What changed since [`Index::take_dirty`] last ran.
    pending: Dirty,
}

impl Index {
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Applies one watched object (created or changed).
    pub(crate) fn apply(&mut self, obj: Object) -> Dirty {
        let d = match obj {
            Object::Revision(r) => {
                let name = r.metadata.name.clone().unwrap_or_default();
                let old = self.revisions.insert(name.clone(), *r);
                revision_dirty(old.as_ref(), self.revisions.get(&name))
            }
            Object::Tag(t) => {
                let name = t.metadata.name.clone().unwrap_or_default();
                let old = self.tags.insert(name.clone(), *t);
                tag_dirty(old.as_ref(), self.tags.get(&name))
            }
            Object::Namespace { name, labels } => {
                let old = self.namespaces.insert(name, labels.clone());
                namespace_dirty(old.as_ref(), Some(&labels))
            }
            Object::Node { name, kubelet } => {
                let supports = node_supports_native_sidecars(kubelet.as_deref());
                let before = self.native_sidecars();
                if let Some(old) = self.nodes.insert(name, supports) {
                    self.nodes_too_old -= usize::from(!old);
                }
                self.nodes_too_old += usize::from(!supports);
                routing_if(before != self.native_sidecars())
            }
            Object::Pod {
                namespace,
                name,
                mut entry,
            } => {
                entry.revision = entry.revision.map(|r| self.intern(&r));
                let new_rev = entry.revision.clone();
                let old = self
                    .pods
                    .entry(namespace.into_boxed_str())
                    .or_default()
                    .insert(name.into_boxed_str(), entry);
                if old.is_none() {
                    self.pod_count += 1;
                }
                let old_rev = old.and_then(|o| o.revision);
                self.count_pod(old_rev.as_ref(), new_rev.as_ref())
            }
            Object::ControlPlane {
                deployment,
                summary,
            } => {
                let before = self.control_planes();
                self.deployments.insert(deployment, summary);
                control_planes_dirty(&before, &self.control_planes())
            }
        };
        self.pending = self.pending.or(d);
        d
    }

    /// Removes one watched object (deleted, or no longer matching the watch).
    pub(crate) fn delete(&mut self, key: &Key) -> Dirty {
        let d = match key {
            Key::Revision(name) => match self.revisions.remove(name) {
                Some(old) => revision_dirty(Some(&old), None),
                None => Dirty::NONE,
            },
            Key::Tag(name) => match self.tags.remove(name) {
                Some(old) => tag_dirty(Some(&old), None),
                None => Dirty::NONE,
            },
            Key::Namespace(name) => {
                let old = self.namespaces.remove(name);
                namespace_dirty(old.as_ref(), None)
            }
            Key::Node(name) => {
                let before = self.native_sidecars();
                if let Some(old) = self.nodes.remove(name) {
                    self.nodes_too_old -= usize::from(!old);
                }
                routing_if(before != self.native_sidecars())
            }
            Key::Pod { namespace, name } => {
                let Some(pods) = self.pods.get_mut(namespace.as_str()) else {
                    return Dirty::NONE;
                };
                let old = pods.remove(name.as_str());
                if pods.is_empty() {
                    self.pods.remove(namespace.as_str());
                }
                match old {
                    Some(old) => {
                        self.pod_count -= 1;
                        self.count_pod(old.revision.as_ref(), None)
                    }
                    None => Dirty::NONE,
                }
            }
            Key::ControlPlane(deployment) => {
                let before = self.control_planes();
                self.deployments.remove(deployment);
                control_planes_dirty(&before, &self.control_planes())
            }
        };
        self.pending = self.pending.or(d);
        d
    }

    /// Replaces everything of `kind` with a complete relist, in one step, and marks `kind`
    /// as listed. Objects of another kind are ignored (a caller bug, logged).
    pub(crate) fn reset(&mut self, kind: Kind, objects: Vec<Object>) -> Dirty {
        let d = match kind {
            Kind::Revisions => {
                let old = std::mem::take(&mut self.revisions);
                for o in objects {
                    if let Object::Revision(r) = checked(kind, o) {
                        self.revisions
                            .insert(r.metadata.name.clone().unwrap_or_default(), *r);
                    }
                }
                let spec_changed = !same_by(&old, &self.revisions, |a, b| a.spec == b.spec);
                let status_changed = !same_by(&old, &self.revisions, |a, b| a.status == b.status);
                if spec_changed {
                    Dirty::ROUTING
                } else {
                    status_if(status_changed)
                }
            }
            Kind::Tags => {
                let old = std::mem::take(&mut self.tags);
                for o in objects {
                    if let Object::Tag(t) = checked(kind, o) {
                        self.tags
                            .insert(t.metadata.name.clone().unwrap_or_default(), *t);
                    }
                }
                let spec_changed = !same_by(&old, &self.tags, |a, b| a.spec == b.spec);
                let status_changed = !same_by(&old, &self.tags, |a, b| a.status == b.status);
                if spec_changed {
                    Dirty::ROUTING
                } else {
                    status_if(status_changed)
                }
            }
            Kind::Namespaces => {
                let old = std::mem::take(&mut self.namespaces);
                for o in objects {
                    if let Object::Namespace { name, labels } = checked(kind, o) {
                        self.namespaces.insert(name, labels);
                    }
                }
                let labelled =
                    |m: &BTreeMap<String, NamespaceLabels>| -> Vec<(String, NamespaceLabels)> {
                        m.iter()
                            .filter(|(_, l)| !l.is_empty())
                            .map(|(n, l)| (n.clone(), l.clone()))
                            .collect()
                    };
                routing_if(labelled(&old) != labelled(&self.namespaces))
            }
            Kind::Nodes => {
                let before = self.native_sidecars();
                self.nodes.clear();
                self.nodes_too_old = 0;
                for o in objects {
                    if let Object::Node { name, kubelet } = checked(kind, o) {
                        let supports = node_supports_native_sidecars(kubelet.as_deref());
                        if let Some(old) = self.nodes.insert(name, supports) {
                            self.nodes_too_old -= usize::from(!old);
                        }
                        self.nodes_too_old += usize::from(!supports);
                    }
                }
                routing_if(before != self.native_sidecars())
            }
            Kind::Pods => {
                let before = std::mem::take(&mut self.pods_per_revision);
                self.pods.clear();
                self.pod_count = 0;
                for o in objects {
                    if let Object::Pod {
                        namespace,
                        name,
                        mut entry,
                    } = checked(kind, o)
                    {
                        entry.revision = entry.revision.map(|r| self.intern(&r));
                        let rev = entry.revision.clone();
                        let old = self
                            .pods
                            .entry(namespace.into_boxed_str())
                            .or_default()
                            .insert(name.into_boxed_str(), entry);
                        match old {
                            None => self.pod_count += 1,
                            Some(o) => {
                                self.count_pod(o.revision.as_ref(), None);
                            }
                        }
                        self.count_pod(None, rev.as_ref());
                    }
                }
                self.pods.shrink_to_fit();
                status_if(before != self.pods_per_revision)
            }
            Kind::ControlPlanes => {
                let before = self.control_planes();
                self.deployments.clear();
                for o in objects {
                    if let Object::ControlPlane {
                        deployment,
                        summary,
                    } = checked(kind, o)
                    {
                        self.deployments.insert(deployment, summary);
                    }
                }
                control_planes_dirty(&before, &self.control_planes())
            }
        };
        self.listed |= kind.bit();
        self.pending = self.pending.or(d);
        d
    }

    /// True once every kind has listed at least once.
    pub(crate) fn synced(&self) -> bool {
        Kind::ALL.iter().all(|k| self.listed & k.bit() != 0)
    }

    /// What changed since the last call, and clears it.
    pub(crate) fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.pending)
    }

    /// Istio's native-sidecar `auto`: every node's kubelet is 1.33 or newer (no nodes:
    /// supported).
    pub(crate) fn native_sidecars(&self) -> bool {
        self.nodes_too_old == 0
    }

    /// The routing projection as an injection table (not yet published), and the objects
    /// left out of it.
    pub(crate) fn table(&self, builder: &mut TableBuilder) -> (Table, Vec<Problem>) {
        let namespaces: HashMap<String, NamespaceLabels> = self
            .namespaces
            .iter()
            .filter(|(_, l)| !l.is_empty())
            .map(|(n, l)| (n.clone(), l.clone()))
            .collect();
        let (mut table, problems) =
            builder.build_lenient(self.revisions.values(), self.tags.values(), namespaces);
        table.nodes_support_native_sidecars = Some(self.native_sidecars());
        // Rendered here, once per table, so `/inject` only splices it (see
        // `Table::control_plane_warning`).
        table.control_plane_warnings = self
            .control_planes()
            .into_iter()
            .filter(|(_, cp)| !cp.ready())
            .map(|(rev, cp)| {
                let warning = cp.injection_warning(&rev).into_boxed_str();
                (rev, warning)
            })
            .collect();
        (table, problems)
    }

    /// Every revision's control plane and its state, by revision name.
    pub(crate) fn control_planes(&self) -> BTreeMap<String, ControlPlane> {
        self.revisions
            .iter()
            .map(|(name, r)| {
                let deployment = RevisionInfo::from(r)
                    .control_plane
                    .unwrap_or_else(|| ControlPlaneRef::resolve(name, None, None));
                let state = ControlPlaneState::of(self.deployments.get(&deployment));
                (name.clone(), ControlPlane { deployment, state })
            })
            .collect()
    }

    /// A [`MeshView`] of revisions and tags only (what the guards of a write read).
    pub(crate) fn config_view(&self) -> MeshView {
        MeshView {
            revisions: self
                .revisions
                .iter()
                .map(|(n, r)| (n.clone(), RevisionInfo::from(r)))
                .collect(),
            tags: self
                .tags
                .iter()
                .map(|(n, t)| (n.clone(), TagInfo::from(t)))
                .collect(),
            deployments: self.deployments.clone(),
            ..MeshView::default()
        }
    }

    /// A [`MeshView`] of revisions, tags, every namespace and the live pods (no
    /// workloads; pods' phase empty, see the module docs). What `/validate` judges a
    /// deletion with.
    pub(crate) fn view(&self) -> MeshView {
        let mut view = self.config_view();
        view.namespaces = self.namespaces.clone();
        view.pods.reserve_exact(self.pod_count);
        for (ns, pods) in &self.pods {
            for (name, p) in pods {
                view.pods.push(PodInfo {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    revision: p.revision.as_deref().map(str::to_string),
                    phase: String::new(),
                    ready: false,
                    terminating: p.terminating,
                    selector: p
                        .selection
                        .as_deref()
                        .map(|s| PodSelector {
                            rev_label: s.rev_label.as_deref().map(str::to_string),
                            inject_label: s.inject_label.as_deref().map(str::to_string),
                            inject_annotation: s.inject_annotation.as_deref().map(str::to_string),
                            host_network: false,
                        })
                        .unwrap_or_default(),
                    owner: p
                        .owner
                        .as_ref()
                        .map(|(k, n)| (k.as_str().to_string(), n.to_string())),
                });
            }
        }
        view.pods
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        view
    }

    /// Live pods per revision they run.
    pub(crate) fn pods_per_revision(&self) -> BTreeMap<String, u32> {
        self.pods_per_revision
            .iter()
            .map(|(r, n)| (r.to_string(), *n))
            .collect()
    }

    /// Names of the namespaces with injection labels.
    pub(crate) fn labelled_namespaces(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .filter(|(_, l)| !l.is_empty())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The status last observed on each MeshRevision, with its uid.
    pub(crate) fn revision_statuses(&self) -> BTreeMap<String, Observed<MeshRevisionStatus>> {
        self.revisions
            .iter()
            .map(|(n, r)| (n.clone(), Observed::of(&r.metadata, r.status.clone())))
            .collect()
    }

    /// The status last observed on each RevisionTag, with its uid.
    pub(crate) fn tag_statuses(&self) -> BTreeMap<String, Observed<RevisionTagStatus>> {
        self.tags
            .iter()
            .map(|(n, t)| (n.clone(), Observed::of(&t.metadata, t.status.clone())))
            .collect()
    }

    /// Objects indexed of `kind` (pods: live pods).
    pub(crate) fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Revisions => self.revisions.len(),
            Kind::Tags => self.tags.len(),
            Kind::Namespaces => self.namespaces.len(),
            Kind::Nodes => self.nodes.len(),
            Kind::Pods => self.pod_count,
            Kind::ControlPlanes => self.deployments.len(),
        }
    }

    /// The shared copy of a revision name (pods of one revision share one string).
    fn intern(&mut self, rev: &Arc<str>) -> Arc<str> {
        match self.pods_per_revision.get_key_value(rev) {
            Some((k, _)) => k.clone(),
            None => rev.clone(),
        }
    }

    fn count_pod(&mut self, old: Option<&Arc<str>>, new: Option<&Arc<str>>) -> Dirty {
        if old == new {
            return Dirty::NONE;
        }
        if let Some(old) = old
            && let Some(n) = self.pods_per_revision.get_mut(old)
        {
            *n -= 1;
            if *n == 0 {
                self.pods_per_revision.remove(old);
            }
        }
        if let Some(new) = new {
            *self.pods_per_revision.entry(new.clone()).or_default() += 1;
        }
        Dirty::STATUS
    }
}

/// A status as observed on an object, and which object (uid) carried it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Observed<S> {
    pub(crate) uid: Option<String>,
    pub(crate) status: Option<S>,
}

impl<S> Observed<S> {
    fn of(meta: &ObjectMeta, status: Option<S>) -> Self {
        Observed {
            uid: meta.uid.clone(),
            status,
        }
    }
}

/// Native sidecars are stable from kubelet 1.33; a version that does not parse counts as
/// too old.
pub(crate) fn node_supports_native_sidecars(version: Option<&str>) -> bool {
    const MIN_MINOR: u64 = 33;
    version
        .and_then(|v| {
            let mut parts = v.trim_start_matches('v').split(['.', '-', '+']);
            let major: u64 = parts.next()?.parse().ok()?;
            let minor: u64 = parts.next()?.parse().ok()?;
            Some(major > 1 || minor >= MIN_MINOR)
        })
        .unwrap_or(false)
}

fn checked(kind: Kind, o: Object) -> Object {
    if o.kind() != kind {
        tracing::error!(?kind, got = ?o.kind(), "index: an object of another kind in a relist; ignored");
    }
    o
}

fn routing_if(b: bool) -> Dirty {
    if b { Dirty::ROUTING } else { Dirty::NONE }
}

fn status_if(b: bool) -> Dirty {
    if b { Dirty::STATUS } else { Dirty::NONE }
}

fn revision_dirty(old: Option<&MeshRevision>, new: Option<&MeshRevision>) -> Dirty {
    match (old, new) {
        (Some(a), Some(b)) if a.spec == b.spec => status_if(a.status != b.status),
        (None, None) => Dirty::NONE,
        _ => Dirty::ROUTING,
    }
}

fn tag_dirty(old: Option<&RevisionTag>, new: Option<&RevisionTag>) -> Dirty {
    match (old, new) {
        (Some(a), Some(b)) if a.spec == b.spec => status_if(a.status != b.status),
        (None, None) => Dirty::NONE,
        _ => Dirty::ROUTING,
    }
}

/// What a change of the control-plane Deployments (or of the revisions naming them) did to
/// each revision's control plane: a changed reason (readiness, and the injection warning's
/// text) routes; another change of a state (replica counts) is status only.
fn control_planes_dirty(
    before: &BTreeMap<String, ControlPlane>,
    after: &BTreeMap<String, ControlPlane>,
) -> Dirty {
    let reasons =
        |m: &BTreeMap<String, ControlPlane>| -> Vec<(String, ControlPlaneRef, &'static str)> {
            m.iter()
                .map(|(r, cp)| (r.clone(), cp.deployment.clone(), cp.state.reason()))
                .collect()
        };
    if reasons(before) != reasons(after) {
        Dirty::ROUTING
    } else {
        status_if(before != after)
    }
}

/// Only injection labels route; an unlabelled namespace coming or going changes nothing.
fn namespace_dirty(old: Option<&NamespaceLabels>, new: Option<&NamespaceLabels>) -> Dirty {
    let empty = NamespaceLabels::default();
    routing_if(old.unwrap_or(&empty) != new.unwrap_or(&empty))
}

fn same_by<V>(
    a: &BTreeMap<String, V>,
    b: &BTreeMap<String, V>,
    eq: impl Fn(&V, &V) -> bool,
) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && eq(va, vb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MeshRevisionSpec, RevisionTagSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn rev(name: &str, version: &str) -> Object {
        Object::revision(MeshRevision::new(
            name,
            MeshRevisionSpec {
                version: version.into(),
                ..Default::default()
            },
        ))
    }

    fn tag(name: &str, revision: &str) -> Object {
        Object::tag(RevisionTag::new(
            name,
            RevisionTagSpec {
                revision: revision.into(),
            },
        ))
    }

    fn ns(name: &str, rev: Option<&str>) -> Object {
        Object::Namespace {
            name: name.into(),
            labels: NamespaceLabels {
                injection: None,
                rev: rev.map(Into::into),
            },
        }
    }

    fn pod(ns: &str, name: &str, revision: Option<&str>) -> Object {
        let mut meta = ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        };
        if let Some(r) = revision {
            meta.annotations = Some([("istio.io/rev".to_string(), r.to_string())].into());
        }
        Object::Pod {
            namespace: ns.into(),
            name: name.into(),
            entry: PodEntry::from_meta(&meta),
        }
    }

    fn node(name: &str, kubelet: &str) -> Object {
        Object::Node {
            name: name.into(),
            kubelet: Some(kubelet.into()),
        }
    }

    /// Revision `rev`'s istiod (`istio-system/istiod-<rev>`, labelled as Istio's chart does)
    /// with `available` of `replicas` replicas available.
    fn istiod(rev: &str, replicas: i32, available: i32) -> Object {
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("istiod-{rev}"), "namespace": "istio-system",
                         "generation": 1, "labels": {"app": "istiod", "istio.io/rev": rev}},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "availableReplicas": available,
                       "conditions": [{"type": "Available",
                                       "status": if available > 0 { "True" } else { "False" }}]},
        }))
        .unwrap();
        Object::control_plane(&d)
    }

    /// An index with every kind listed: two revisions, two tags, namespaces, a node, pods,
    /// both revisions' istiod available.
    fn synced() -> Index {
        let mut ix = Index::new();
        ix.reset(
            Kind::Revisions,
            vec![rev("1-22-6", "1.22.6"), rev("1-23-6", "1.23.6")],
        );
        ix.reset(
            Kind::Tags,
            vec![tag("stable", "1-22-6"), tag("canary", "1-23-6")],
        );
        ix.reset(
            Kind::Namespaces,
            vec![ns("default", Some("canary")), ns("plain", None)],
        );
        ix.reset(Kind::Nodes, vec![node("n1", "v1.34.0")]);
        ix.reset(
            Kind::Pods,
            vec![
                pod("default", "a", Some("1-23-6")),
                pod("default", "b", Some("1-22-6")),
                pod("plain", "c", None),
            ],
        );
        ix.reset(
            Kind::ControlPlanes,
            vec![istiod("1-22-6", 1, 1), istiod("1-23-6", 1, 1)],
        );
        ix.take_dirty();
        ix
    }

    #[test]
    fn control_planes_route_on_readiness_and_reach_table_status_and_view() {
        let mut ix = synced();
        assert!(ix.synced());
        let (table, _) = ix.table(&mut TableBuilder::new());
        assert!(table.control_plane_warning("1-23-6").is_none());
        // The canary's istiod loses its replica: readiness flips, the table must change.
        assert_eq!(ix.apply(istiod("1-23-6", 1, 0)), Dirty::ROUTING);
        let (table, _) = ix.table(&mut TableBuilder::new());
        let w = table
            .control_plane_warning("1-23-6")
            .expect("a warning for the canary");
        assert!(
            w.contains("revision 1-23-6") && w.contains("istio-system/istiod-1-23-6"),
            "{w}"
        );
        assert!(table.control_plane_warning("1-22-6").is_none());
        let cp = &ix.control_planes()["1-23-6"];
        assert_eq!(cp.state.to_string(), "Progressing 0/1 available");
        // Still not ready, only the count changed: status, not routing.
        assert_eq!(ix.apply(istiod("1-23-6", 2, 0)), Dirty::STATUS);
        // The same again: nothing.
        assert_eq!(ix.apply(istiod("1-23-6", 2, 0)), Dirty::NONE);
        // A labelled Deployment no revision names: nothing, but kept (the guards see it).
        assert_eq!(ix.apply(istiod("1-99-0", 1, 1)), Dirty::NONE);
        assert_eq!(ix.count(Kind::ControlPlanes), 3);
        // Gone: not found, not ready (a flip from Progressing: routing).
        let key = Key::ControlPlane(ControlPlaneRef::resolve("1-23-6", None, None));
        assert_eq!(ix.delete(&key), Dirty::ROUTING);
        assert_eq!(
            ix.control_planes()["1-23-6"].state,
            ControlPlaneState::NotFound
        );
        // The guards' views carry the Deployments.
        let v = ix.config_view();
        assert!(!v.control_plane("1-23-6").ready());
        assert!(v.control_plane("1-22-6").ready());
        assert!(!ix.view().control_plane("1-23-6").ready());
        // Back, available: routing; a relist that changes nothing: nothing.
        assert_eq!(ix.apply(istiod("1-23-6", 1, 1)), Dirty::ROUTING);
        let same = vec![
            istiod("1-22-6", 1, 1),
            istiod("1-23-6", 1, 1),
            istiod("1-99-0", 1, 1),
        ];
        assert_eq!(ix.reset(Kind::ControlPlanes, same), Dirty::NONE);
        // A revision pointed at another Deployment (spec.controlPlane) routes by itself.
        let mut r = MeshRevision::new(
            "1-23-6",
            MeshRevisionSpec {
                version: "1.23.6".into(),
                control_plane: Some(crate::config::ControlPlaneRef {
                    name: Some("istiod-canary".into()),
                    namespace: None,
                }),
                ..Default::default()
            },
        );
        r.metadata.uid = None;
        assert_eq!(ix.apply(Object::revision(r)), Dirty::ROUTING);
        assert_eq!(
            ix.control_planes()["1-23-6"].describe().split(':').next(),
            Some("Deployment istio-system/istiod-canary")
        );
    }

    #[test]
    fn synced_only_after_every_kind_listed() {
        let mut ix = Index::new();
        for k in Kind::ALL {
            assert!(!ix.synced());
            ix.reset(k, Vec::new());
        }
        assert!(ix.synced());
        // Events before a kind listed are applied, but do not make it listed.
        let mut ix = Index::new();
        ix.apply(rev("1-22-6", "1.22.6"));
        for k in [Kind::Tags, Kind::Namespaces, Kind::Nodes, Kind::Pods] {
            ix.reset(k, Vec::new());
        }
        assert!(!ix.synced());
    }

    #[test]
    fn namespace_metadata_that_does_not_route_dirties_nothing() {
        let mut ix = synced();
        // The same labels again (what an annotation or finalizer change looks like after
        // projection), and a new unlabelled namespace: nothing to publish, nobody to wake.
        assert_eq!(ix.apply(ns("default", Some("canary"))), Dirty::NONE);
        assert_eq!(ix.apply(ns("new", None)), Dirty::NONE);
        assert_eq!(ix.delete(&Key::Namespace("new".into())), Dirty::NONE);
        assert_eq!(ix.take_dirty(), Dirty::NONE);
        // A label change routes.
        assert_eq!(ix.apply(ns("default", Some("stable"))), Dirty::ROUTING);
        assert_eq!(ix.apply(ns("plain", Some("canary"))), Dirty::ROUTING);
        assert_eq!(ix.delete(&Key::Namespace("plain".into())), Dirty::ROUTING);
        assert_eq!(ix.take_dirty(), Dirty::ROUTING);
        assert_eq!(ix.take_dirty(), Dirty::NONE, "taking clears");
        assert_eq!(ix.labelled_namespaces(), ["default"]);
    }

    #[test]
    fn revisions_and_tags_route_on_spec_and_wake_status_on_status() {
        let mut ix = synced();
        assert_eq!(ix.apply(rev("1-22-6", "1.22.6")), Dirty::NONE);
        let Object::Revision(mut r) = rev("1-22-6", "1.22.6") else {
            unreachable!()
        };
        r.status = Some(MeshRevisionStatus {
            pods: 1,
            ..Default::default()
        });
        assert_eq!(ix.apply(Object::Revision(r)), Dirty::STATUS);
        assert_eq!(ix.apply(rev("1-22-6", "1.22.7")), Dirty::ROUTING);
        assert_eq!(ix.apply(tag("canary", "1-23-6")), Dirty::NONE);
        assert_eq!(ix.apply(tag("canary", "1-22-6")), Dirty::ROUTING);
        assert_eq!(ix.delete(&Key::Tag("canary".into())), Dirty::ROUTING);
        assert_eq!(ix.delete(&Key::Tag("canary".into())), Dirty::NONE);
        assert_eq!(
            ix.revision_statuses()["1-22-6"].status,
            None,
            "the newer object replaced the older"
        );
    }

    #[test]
    fn pods_count_per_revision_and_wake_status_only_when_counts_change() {
        let mut ix = synced();
        assert_eq!(
            ix.pods_per_revision(),
            BTreeMap::from([("1-22-6".into(), 1), ("1-23-6".into(), 1)])
        );
        // A pod that changes but keeps its revision (labels, a status update): nothing.
        assert_eq!(ix.apply(pod("default", "a", Some("1-23-6"))), Dirty::NONE);
        assert_eq!(ix.apply(pod("plain", "d", None)), Dirty::NONE);
        assert_eq!(ix.count(Kind::Pods), 4);
        // Restarted onto another revision, or gone: counts move.
        assert_eq!(ix.apply(pod("default", "b", Some("1-23-6"))), Dirty::STATUS);
        assert_eq!(
            ix.delete(&Key::Pod {
                namespace: "default".into(),
                name: "a".into()
            }),
            Dirty::STATUS
        );
        assert_eq!(
            ix.delete(&Key::Pod {
                namespace: "default".into(),
                name: "a".into()
            }),
            Dirty::NONE
        );
        assert_eq!(
            ix.pods_per_revision(),
            BTreeMap::from([("1-23-6".into(), 1)])
        );
        assert_eq!(ix.count(Kind::Pods), 3);
        // Pods of one revision share one string.
        ix.apply(pod("x", "p1", Some("1-23-6")));
        let revs: Vec<Arc<str>> = ["x", "default"]
            .iter()
            .flat_map(|n| ix.pods[*n].values())
            .filter_map(|p| p.revision.clone())
            .collect();
        assert!(Arc::ptr_eq(&revs[0], &revs[1]));
    }

    #[test]
    fn a_relist_is_swapped_in_whole() {
        let mut ix = synced();
        // A relist that finds the same pods: no change.
        let same = vec![
            pod("default", "a", Some("1-23-6")),
            pod("default", "b", Some("1-22-6")),
            pod("plain", "c", None),
        ];
        assert_eq!(ix.reset(Kind::Pods, same), Dirty::NONE);
        // One that misses deletions while the watch was down: they are gone after it.
        let fewer = vec![pod("default", "a", Some("1-23-6"))];
        assert_eq!(ix.reset(Kind::Pods, fewer), Dirty::STATUS);
        assert_eq!(ix.count(Kind::Pods), 1);
        assert_eq!(
            ix.pods_per_revision(),
            BTreeMap::from([("1-23-6".into(), 1)])
        );
        // Revisions: the same specs route nothing; one fewer does.
        assert_eq!(
            ix.reset(
                Kind::Revisions,
                vec![rev("1-22-6", "1.22.6"), rev("1-23-6", "1.23.6")]
            ),
            Dirty::NONE
        );
        assert_eq!(
            ix.reset(Kind::Revisions, vec![rev("1-22-6", "1.22.6")]),
            Dirty::ROUTING
        );
        // Namespaces: only labelled ones count.
        assert_eq!(
            ix.reset(
                Kind::Namespaces,
                vec![ns("default", Some("canary")), ns("other", None)]
            ),
            Dirty::NONE
        );
        assert_eq!(ix.count(Kind::Namespaces), 2);
        assert_eq!(ix.reset(Kind::Namespaces, Vec::new()), Dirty::ROUTING);
        // An object of the wrong kind in a relist is ignored.
        assert_eq!(
            ix.reset(Kind::Tags, vec![tag("stable", "1-22-6"), ns("x", None)]),
            Dirty::ROUTING
        );
        assert_eq!(ix.count(Kind::Tags), 1);
    }

    #[test]
    fn nodes_route_only_when_native_sidecar_support_flips() {
        let mut ix = synced();
        assert!(ix.native_sidecars());
        assert_eq!(ix.apply(node("n2", "v1.33.1")), Dirty::NONE);
        assert_eq!(ix.apply(node("old", "v1.28.0")), Dirty::ROUTING);
        assert!(!ix.native_sidecars());
        assert_eq!(ix.apply(node("old2", "garbage")), Dirty::NONE);
        assert_eq!(ix.delete(&Key::Node("old".into())), Dirty::NONE);
        assert_eq!(ix.apply(node("old2", "v1.35.0")), Dirty::ROUTING);
        assert!(ix.native_sidecars());
        assert_eq!(
            ix.reset(Kind::Nodes, vec![node("n", "1.2")]),
            Dirty::ROUTING
        );
        assert_eq!(ix.reset(Kind::Nodes, Vec::new()), Dirty::ROUTING);
        assert!(ix.native_sidecars(), "no nodes: supported");
        assert!(node_supports_native_sidecars(Some("v1.34.1-gke.2")));
        assert!(node_supports_native_sidecars(Some("2.0.0")));
        assert!(!node_supports_native_sidecars(None));
    }

    #[test]
    fn projects_into_the_table() {
        let ix = synced();
        let (table, problems) = ix.table(&mut TableBuilder::new());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(table.revision_count(), 2);
        assert_eq!(table.tags().get("canary"), Some(&"1-23-6"));
        assert_eq!(
            table.namespace("default").and_then(|l| l.rev.as_deref()),
            Some("canary")
        );
        assert!(
            table.namespace("plain").is_none(),
            "only labelled namespaces"
        );
        assert_eq!(table.nodes_support_native_sidecars, Some(true));
        // A tag at a missing revision is left out, as a problem.
        let mut ix = ix;
        ix.apply(tag("broken", "9-9-9"));
        let (table, problems) = ix.table(&mut TableBuilder::new());
        assert!(table.tag("broken").is_none());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].name, "broken");
    }

    #[test]
    fn projects_into_the_guards_view() {
        let mut ix = synced();
        let mut meta = ObjectMeta {
            namespace: Some("plain".into()),
            name: Some("web-7d9f8-xk2".into()),
            labels: Some(
                [
                    ("pod-template-hash".to_string(), "7d9f8".to_string()),
                    ("istio.io/rev".to_string(), "canary".to_string()),
                ]
                .into(),
            ),
            owner_references: Some(vec![OwnerReference {
                kind: "ReplicaSet".into(),
                name: "web-7d9f8".into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        };
        meta.annotations = Some(
            [(
                "sidecar.istio.io/status".to_string(),
                r#"{"revision":"1-23-6"}"#.to_string(),
            )]
            .into(),
        );
        ix.apply(Object::Pod {
            namespace: "plain".into(),
            name: "web-7d9f8-xk2".into(),
            entry: PodEntry::from_meta(&meta),
        });
        let config = ix.config_view();
        assert_eq!(config.revisions.len(), 2);
        assert!(config.namespaces.is_empty() && config.pods.is_empty());
        let view = ix.view();
        assert_eq!(view.revisions["1-23-6"].version, "1.23.6");
        assert_eq!(view.tags["canary"].revision, "1-23-6");
        assert_eq!(view.namespaces.len(), 2, "every namespace, labelled or not");
        let keys: Vec<String> = view.pods.iter().map(|p| p.key()).collect();
        assert_eq!(
            keys,
            ["default/a", "default/b", "plain/c", "plain/web-7d9f8-xk2"]
        );
        let web = &view.pods[3];
        assert_eq!(web.revision.as_deref(), Some("1-23-6"));
        assert_eq!(
            web.owner,
            Some(("Deployment".to_string(), "web".to_string()))
        );
        assert_eq!(web.selector.rev_label.as_deref(), Some("canary"));
        assert!(view.pod_selects(web, "canary"));
        assert_eq!(view.pods_on("1-23-6").count(), 2);
        // The guards read it: deleting tag canary is blocked by namespace default and the
        // pod whose own label names it.
        let refusal = crate::upgrade::guards::tag_delete(&view, "canary").unwrap_err();
        let msg = refusal.one_line();
        assert!(
            msg.contains("namespace default") && msg.contains("plain/web-7d9f8-xk2"),
            "{msg}"
        );
    }

    #[test]
    fn owners_other_than_deployment_replica_sets_stay_as_they_are() {
        let owned = |kind: &str, name: &str, hash: Option<&str>| {
            let meta = ObjectMeta {
                labels: hash.map(|h| [("pod-template-hash".to_string(), h.to_string())].into()),
                owner_references: Some(vec![OwnerReference {
                    kind: kind.into(),
                    name: name.into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            };
            PodEntry::from_meta(&meta)
                .owner
                .map(|(k, n)| (k.as_str().to_string(), n.to_string()))
        };
        let pair = |k: &str, n: &str| Some((k.to_string(), n.to_string()));
        assert_eq!(owned("StatefulSet", "db", None), pair("StatefulSet", "db"));
        assert_eq!(
            owned("ReplicaSet", "bare", None),
            pair("ReplicaSet", "bare")
        );
        assert_eq!(
            owned("ReplicaSet", "rs-abc", Some("xyz")),
            pair("ReplicaSet", "rs-abc")
        );
        assert_eq!(
            owned("ReplicaSet", "api-abc", Some("abc")),
            pair("Deployment", "api")
        );
        assert_eq!(owned("Job", "batch", None), pair("Job", "batch"));
        assert_eq!(owned("Widget", "w", None), pair("Widget", "w"));
        let bare = PodEntry::from_meta(&ObjectMeta::default());
        assert_eq!((bare.owner, bare.selection), (None, None));
    }
}
