//! The Istio (and meshrev) vocabulary: every label and annotation key, tag name and
//! namespace name that more than one module reads or writes.
//!
//! Keys that only the injector's reproduction of Istio's template reads (`sidecar.istio.io/
//! proxyCPU`, `traffic.sidecar.istio.io/…`, …) stay next to that code in
//! [`crate::injector`]; everything shared lives here, so a key is spelled once.

/// Namespace label: `enabled` means tag `stable`, any other value opts the namespace out.
pub(crate) const LABEL_INJECTION: &str = "istio-injection";
/// The value of [`LABEL_INJECTION`] that turns injection on.
pub(crate) const INJECTION_ENABLED: &str = "enabled";
/// Namespace or pod label naming a tag or a revision.
pub(crate) const LABEL_REV: &str = "istio.io/rev";
/// Pod label (and, without the label, annotation) that opts a pod in (`"true"`) or out
/// (`"false"`).
pub(crate) const LABEL_INJECT: &str = "sidecar.istio.io/inject";

/// Annotation of injected pods naming their revision (Istio's injection template writes it,
/// and so does meshrev's injector). Same key as [`LABEL_REV`], on the other map.
pub(crate) const ANNOTATION_REV: &str = "istio.io/rev";
/// Annotation recording what was injected (Istio's JSON format; its `revision` field names
/// the revision).
pub(crate) const ANNOTATION_STATUS: &str = "sidecar.istio.io/status";
/// Pod annotation choosing Istio's injection templates (`sidecar`, `gateway`, …).
pub(crate) const ANNOTATION_TEMPLATES: &str = "inject.istio.io/templates";
/// Annotation on a `MeshRevision` that lets it be deleted while pods still run its sidecar
/// (`meshrev upgrade unpublish --force` sets it; so can `kubectl annotate`).
pub(crate) const ANNOTATION_FORCE_DELETE: &str = "meshrev.io/force-delete";
/// Annotation on a `RevisionTag` or a `Namespace` naming the one revision it may route pods
/// to while that revision's istiod is not ready: the validating webhook skips its
/// control-plane check for a write to exactly that revision. `meshrev upgrade … --force`
/// sets it in the same patch as the move (and clears it on an unforced one), so the CLI's
/// `--force` works where the webhook is installed; `kubectl annotate` can set it too.
pub(crate) const ANNOTATION_FORCE_CONTROL_PLANE: &str = "meshrev.io/force-control-plane";
/// Annotation on tag `stable` recording the revision it pointed at before a promotion.
pub(crate) const ANNOTATION_PROMOTED_FROM: &str = "meshrev.io/promoted-from";
/// The pod-template annotation `kubectl rollout restart` sets.
pub(crate) const ANNOTATION_RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// The tag that `istio-injection: enabled` and pod opt-in resolve to.
pub(crate) const TAG_STABLE: &str = "stable";
/// The tag of the canary revision during an upgrade.
pub(crate) const TAG_CANARY: &str = "canary";

/// Namespaces Istio never injects.
pub(crate) const SYSTEM_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

/// Whether `namespace` is one Istio never injects.
pub(crate) fn is_system_namespace(namespace: &str) -> bool {
    SYSTEM_NAMESPACES.contains(&namespace)
}
