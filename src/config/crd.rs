use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of meshrev's CRDs.
pub const GROUP: &str = "meshrev.io";
/// The API version of meshrev's CRDs.
pub const VERSION: &str = "v1alpha1";

/// One control-plane revision: `metadata.name` is the revision name (Istio's naming,
/// `1-23-6`), the spec says which sidecar it injects.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "meshrev.io",
    version = "v1alpha1",
    kind = "MeshRevision",
    plural = "meshrevisions",
    shortname = "mrev",
    status = "MeshRevisionStatus",
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Tags","type":"string","jsonPath":".status.tags"}"#,
    printcolumn = r#"{"name":"Namespaces","type":"integer","jsonPath":".status.namespaces"}"#,
    printcolumn = r#"{"name":"Pods","type":"integer","jsonPath":".status.pods"}"#,
    printcolumn = r#"{"name":"In-Use","type":"string","jsonPath":".status.conditions[?(@.type==\"InUse\")].status"}"#,
    printcolumn = r#"{"name":"Control-Plane","type":"string","jsonPath":".status.conditions[?(@.type==\"ControlPlaneReady\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MeshRevisionSpec {
    /// The Istio version of this revision, as semver (`1.23.6`).
    pub version: String,
    /// The sidecar image; defaults to `docker.io/istio/proxyv2:<version>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_image: Option<String>,
    /// istiod's xDS and CA address; defaults to `istiod-<name>.istio-system.svc:15012`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_address: Option<String>,
    /// Overrides applied to the default sidecar of this revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<SidecarOverrides>,
    /// Whether `istio-proxy` runs as a Kubernetes native sidecar (an init container with
    /// `restartPolicy: Always`): `auto` (the default) follows the version (native from Istio
    /// 1.27 on, as Istio's `auto` on kubelets that support it). The pod annotation
    /// `sidecar.istio.io/nativeSidecar` still overrides it per pod where the version reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_sidecars: Option<NativeSidecars>,
    /// Istio's `values.global.proxy.holdApplicationUntilProxyStarts` (default false): the
    /// proxy starts first and the app waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_application_until_proxy_starts: Option<bool>,
    /// Istio's `values.global.hub`: the registry of `proxyv2` (default `docker.io/istio`).
    /// `proxyImage` overrides `hub` and `tag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// Istio's `values.global.tag`: the tag of `proxyv2` (default: `version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Istio's `values.global.imagePullPolicy` for the injected containers (default: unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Istio's `values.global.proxy.privileged` (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    /// Istio's `values.global.proxy.logLevel`: Envoy's log level (default `warning`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Istio's `values.global.proxy.componentLogLevel` (default `misc:error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_log_level: Option<String>,
    /// Istio's `values.global.logging.level`: the agent's log level (default `default:info`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_log_level: Option<String>,
    /// Istio's `values.global.proxy.includeIPRanges` (default `*`).
    #[serde(
        default,
        rename = "includeIPRanges",
        skip_serializing_if = "Option::is_none"
    )]
    pub include_ip_ranges: Option<String>,
    /// Istio's `values.global.proxy.excludeIPRanges` (default empty).
    #[serde(
        default,
        rename = "excludeIPRanges",
        skip_serializing_if = "Option::is_none"
    )]
    pub exclude_ip_ranges: Option<String>,
    /// The revision's istiod Deployment, whose readiness the controller reports
    /// (`ControlPlaneReady`) and the upgrade guards require; defaults to `istiod-<name>` in
    /// `istio-system`. The Deployment must carry the label `istio.io/rev` (Istio's charts
    /// set it) for the controller to see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlaneRef>,
}

// Doc comments here would become descriptions in the CRD schema (manifests/crds.yaml, the
// contract with the cluster), so these fields stay undocumented.
#[allow(missing_docs)]
/// `MeshRevision.spec.controlPlane`: the istiod Deployment of a revision. An unset field
/// takes its default (`istiod-<revision>`, `istio-system`); see
/// `core::control_plane::ControlPlaneRef::resolve`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

// Doc comments here would become descriptions in the CRD schema (manifests/crds.yaml, the
// contract with the cluster), so these fields and variants stay undocumented.
#[allow(missing_docs)]
/// `MeshRevision.spec.nativeSidecars`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum NativeSidecars {
    #[default]
    Auto,
    Enabled,
    Disabled,
}

/// Overrides of the default sidecar, per revision.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarOverrides {
    /// Resource requests and limits of `istio-proxy` (`cpu`, `memory` quantities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ProxyResources>,
    /// Extra environment variables of `istio-proxy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Extra annotations set on every injected pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

// Doc comments here would become descriptions in the CRD schema (manifests/crds.yaml, the
// contract with the cluster), so these fields and variants stay undocumented.
#[allow(missing_docs)]
/// `istio-proxy` requests and limits.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ProxyResources {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

// Doc comments here would become descriptions in the CRD schema (manifests/crds.yaml, the
// contract with the cluster), so these fields and variants stay undocumented.
#[allow(missing_docs)]
/// A plain `name`/`value` environment variable.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

// Doc comments here would become descriptions in the CRD schema (manifests/crds.yaml, the
// contract with the cluster), so these fields and variants stay undocumented.
#[allow(missing_docs)]
/// What the controller observed about a revision. Written by the leader replica only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshRevisionStatus {
    /// Tags that resolve to this revision.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Number of namespaces whose labels resolve to this revision.
    #[serde(default)]
    pub namespaces: u32,
    /// Number of running or pending pods that carry this revision's sidecar.
    #[serde(default)]
    pub pods: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

// Doc comments here would become descriptions in the CRD schema (manifests/crds.yaml, the
// contract with the cluster), so these fields and variants stay undocumented.
#[allow(missing_docs)]
/// A Kubernetes-style status condition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// A movable name for a revision: `metadata.name` is the tag (`stable`, `canary`, …).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "meshrev.io",
    version = "v1alpha1",
    kind = "RevisionTag",
    plural = "revisiontags",
    shortname = "rtag",
    status = "RevisionTagStatus",
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".spec.revision"}"#,
    printcolumn = r#"{"name":"Resolved","type":"string","jsonPath":".status.resolvedRevision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RevisionTagSpec {
    /// The name of the `MeshRevision` this tag points at.
    pub revision: String,
}

/// What the controller resolved a tag to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionTagStatus {
    /// The revision the tag resolves to, empty when it points at a missing revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_revision: Option<String>,
    /// Why the tag does not resolve, when it does not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The CRD YAML for both kinds, as `meshrev crd` prints it and `manifests/crds.yaml` holds.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let mut out = String::new();
    for crd in [MeshRevision::crd(), RevisionTag::crd()] {
        out.push_str("---\n");
        out.push_str(&crate::yaml::to_string_of(&crd).expect("a CRD must serialize to YAML"));
    }
    out
}
