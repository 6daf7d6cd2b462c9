//! The upgrade view's edge: [`MeshView`] and its parts (plain data, in
//! [`crate::core::view`]) built from Kubernetes objects. Pure conversions; the LIST calls
//! that feed them are in [`crate::upgrade::cluster`].

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::config::{MeshRevision, RevisionTag};
use crate::core::vocab::{
    ANNOTATION_FORCE_DELETE, ANNOTATION_PROMOTED_FROM, ANNOTATION_TEMPLATES, LABEL_INJECT,
    LABEL_REV,
};

pub(crate) use crate::core::control_plane::{
    CONTROL_PLANE_LABEL, ControlPlane, ControlPlaneRef, ControlPlaneState, DeploymentSummary,
};
pub(crate) use crate::core::view::*;
pub(crate) use crate::core::{NamespaceLabels, NamespaceSelect};

/// A label or annotation of `meta`.
fn get<'m>(map: &'m Option<BTreeMap<String, String>>, key: &str) -> Option<&'m str> {
    map.as_ref().and_then(|m| m.get(key)).map(String::as_str)
}

impl PodSelector {
    pub(crate) fn from_meta(meta: &ObjectMeta, host_network: bool) -> Self {
        PodSelector {
            rev_label: get(&meta.labels, LABEL_REV).map(str::to_string),
            inject_label: get(&meta.labels, LABEL_INJECT).map(str::to_string),
            inject_annotation: get(&meta.annotations, LABEL_INJECT).map(str::to_string),
            host_network,
        }
    }
    pub(crate) fn from_template(t: &PodTemplateSpec) -> Self {
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

impl PodInfo {
    /// From a full Pod. `replica_set_owner` maps (namespace, ReplicaSet name) to the name
    /// of the Deployment that controls that ReplicaSet.
    pub(crate) fn from_pod(
        pod: &Pod,
        replica_set_owner: &dyn Fn(&str, &str) -> Option<String>,
    ) -> Self {
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
    pub(crate) fn from_meta(
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

/// The revision recorded on an injected pod, by the one rule of [`crate::core::pod_revision`].
pub(crate) fn injected_revision(meta: &ObjectMeta) -> Option<String> {
    crate::core::pod_revision(|k| get(&meta.annotations, k)).map(Into::into)
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
                .and_then(|a| a.get(ANNOTATION_TEMPLATES))
                .is_some_and(|t| t.split(',').any(|t| t.trim() == "gateway")),
        }
    }
    pub(crate) fn from_deployment(d: &Deployment) -> Option<Self> {
        let spec = d.spec.as_ref()?;
        let mut w = WorkloadInfo::new(&d.metadata, WorkloadKind::Deployment, &spec.template);
        w.replicas = spec.replicas.unwrap_or(1);
        w.paused = spec.paused.unwrap_or(false);
        Some(w)
    }
    pub(crate) fn from_statefulset(s: &StatefulSet) -> Option<Self> {
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
    pub(crate) fn from_daemonset(d: &DaemonSet) -> Option<Self> {
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
        let cp = r.spec.control_plane.as_ref();
        RevisionInfo {
            control_plane: Some(ControlPlaneRef::resolve(
                r.metadata.name.as_deref().unwrap_or_default(),
                cp.and_then(|c| c.name.as_deref()),
                cp.and_then(|c| c.namespace.as_deref()),
            )),
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

/// A Deployment as a control plane: where it is, and the summary readiness is judged from.
/// `None` for one without the label [`CONTROL_PLANE_LABEL`] (not a control plane to
/// meshrev, whoever LISTed or watched it).
pub(crate) fn control_plane_entry(d: &Deployment) -> Option<(ControlPlaneRef, DeploymentSummary)> {
    get(&d.metadata.labels, CONTROL_PLANE_LABEL)?;
    let status = d.status.as_ref();
    let summary = DeploymentSummary {
        generation: d.metadata.generation,
        observed_generation: status.and_then(|s| s.observed_generation),
        replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        available_replicas: status.and_then(|s| s.available_replicas).unwrap_or(0),
        available: status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Available"))
            .map(|c| c.status == "True"),
    };
    Some((
        ControlPlaneRef {
            namespace: d.metadata.namespace.clone().unwrap_or_default(),
            name: d.metadata.name.clone().unwrap_or_default(),
        },
        summary,
    ))
}

/// A namespace's name and labels.
pub(crate) fn namespace_entry(ns: &Namespace) -> (String, NamespaceLabels) {
    (
        ns.metadata.name.clone().unwrap_or_default(),
        NamespaceLabels::from_map(ns.metadata.labels.as_ref()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::vocab::{ANNOTATION_REV, ANNOTATION_STATUS};

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
    fn control_plane_entries_only_for_labelled_deployments() {
        let d = |labels: serde_json::Value, status: serde_json::Value| -> Deployment {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "istiod-1-23-6", "namespace": "istio-system",
                             "generation": 2, "labels": labels},
                "spec": {"replicas": 2, "selector": {}, "template": {}},
                "status": status,
            }))
            .unwrap()
        };
        let ok = d(
            serde_json::json!({"app": "istiod", "istio.io/rev": "1-23-6"}),
            serde_json::json!({"observedGeneration": 2, "availableReplicas": 2,
                "conditions": [{"type": "Available", "status": "True"}]}),
        );
        let (r, s) = control_plane_entry(&ok).unwrap();
        assert_eq!(r.to_string(), "istio-system/istiod-1-23-6");
        assert_eq!(ControlPlaneState::of(Some(&s)).to_string(), "Available 2/2");
        let down = d(
            serde_json::json!({"istio.io/rev": "1-23-6"}),
            serde_json::json!({"observedGeneration": 2, "unavailableReplicas": 2,
                "conditions": [{"type": "Available", "status": "False"}]}),
        );
        let (_, s) = control_plane_entry(&down).unwrap();
        assert_eq!(
            ControlPlaneState::of(Some(&s)).to_string(),
            "Progressing 0/2 available"
        );
        assert!(
            control_plane_entry(&d(
                serde_json::json!({"app": "istiod"}),
                serde_json::json!({})
            ))
            .is_none()
        );
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
}
