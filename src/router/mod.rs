//! The router: which revision injects a pod, or why none does.
//!
//! Pure function of the table, the namespace's labels and the pod. Rules, in order (Istio's
//! where Istio has one; Istio spreads them over webhook selectors and `injectRequired`,
//! meshrev resolves tags itself in one webhook):
//! 1. `hostNetwork: true` → skip; system namespaces → skip;
//! 2. pod label `sidecar.istio.io/inject: "false"` (or, without the label, the annotation)
//!    → skip;
//! 3. namespace `istio-injection: enabled` → tag `stable` (it wins over a namespace
//!    `istio.io/rev`, with a warning); any other value of it → skip;
//! 4. namespace `istio.io/rev: X` → tag X, else revision X, else skip (`unknown-revision`);
//! 5. otherwise the pod decides: label `istio.io/rev: X` as in 4, label
//!    `sidecar.istio.io/inject: "true"` → tag `stable`, else skip (`not-in-mesh`).

use std::sync::Arc;

use crate::injector::pod::Meta;
use crate::table::{LABEL_INJECTION, LABEL_REV, NamespaceLabels, Revision, TAG_STABLE, Table};

/// Pod label (and annotation) that opts a pod in or out.
pub const LABEL_INJECT: &str = "sidecar.istio.io/inject";

/// Namespaces Istio never injects.
pub const SYSTEM_NAMESPACES: [&str; 4] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
];

/// Why a pod is not injected. A small fixed set: these are metric label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    HostNetwork,
    SystemNamespace,
    PodOptOut,
    NamespaceDisabled,
    UnknownRevision,
    NotInMesh,
    NotCreate,
}

impl SkipReason {
    pub const ALL: [SkipReason; 7] = [
        SkipReason::HostNetwork,
        SkipReason::SystemNamespace,
        SkipReason::PodOptOut,
        SkipReason::NamespaceDisabled,
        SkipReason::UnknownRevision,
        SkipReason::NotInMesh,
        SkipReason::NotCreate,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::HostNetwork => "host-network",
            SkipReason::SystemNamespace => "system-namespace",
            SkipReason::PodOptOut => "pod-opt-out",
            SkipReason::NamespaceDisabled => "namespace-disabled",
            SkipReason::UnknownRevision => "unknown-revision",
            SkipReason::NotInMesh => "not-in-mesh",
            SkipReason::NotCreate => "not-create",
        }
    }
}

/// How the revision was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via<'t> {
    /// Through a tag (`stable`, `canary`, …).
    Tag(&'t str),
    /// A revision named directly (`istio.io/rev: 1-23-6`).
    Pinned,
}

impl Via<'_> {
    /// The metric label value: the tag, or `none` for a pinned revision.
    pub fn tag(&self) -> &str {
        match self {
            Via::Tag(t) => t,
            Via::Pinned => "none",
        }
    }
}

/// The router's answer.
#[derive(Debug)]
pub enum Decision<'t> {
    Inject {
        revision: &'t Arc<Revision>,
        via: Via<'t>,
        /// An admission warning (e.g. both namespace labels set).
        warning: Option<String>,
    },
    Skip {
        reason: SkipReason,
        warning: Option<String>,
    },
}

impl Decision<'_> {
    fn skip(reason: SkipReason) -> Self {
        Decision::Skip {
            reason,
            warning: None,
        }
    }
}

/// Routes one pod. `namespace` is the request's namespace; its labels come from the table.
pub fn route<'t>(
    table: &'t Table,
    namespace: &str,
    host_network: bool,
    pod: &Meta<'_>,
) -> Decision<'t> {
    if host_network {
        return Decision::skip(SkipReason::HostNetwork);
    }
    if SYSTEM_NAMESPACES.contains(&namespace) {
        return Decision::skip(SkipReason::SystemNamespace);
    }
    let opt = pod
        .label(LABEL_INJECT)
        .or_else(|| pod.annotation(LABEL_INJECT));
    if opt == Some("false") {
        return Decision::skip(SkipReason::PodOptOut);
    }
    static NONE: NamespaceLabels = NamespaceLabels {
        injection: None,
        rev: None,
    };
    let ns = table.namespace(namespace).unwrap_or(&NONE);
    if let Some(inj) = ns.injection.as_deref() {
        if inj != "enabled" {
            return Decision::skip(SkipReason::NamespaceDisabled);
        }
        let warning = ns.rev.as_deref().map(|rev| {
            format!(
                "namespace {namespace} has both {LABEL_INJECTION}=enabled and {LABEL_REV}={rev}; {LABEL_INJECTION} wins (tag {TAG_STABLE}): remove one of the labels"
            )
        });
        return by_tag_or_revision(table, TAG_STABLE, warning, "namespace", namespace);
    }
    if let Some(rev) = ns.rev.as_deref() {
        return by_tag_or_revision(table, rev, None, "namespace", namespace);
    }
    if let Some(rev) = pod.label(LABEL_REV) {
        return by_tag_or_revision(table, rev, None, "pod label in namespace", namespace);
    }
    if pod.label(LABEL_INJECT) == Some("true") {
        return by_tag_or_revision(table, TAG_STABLE, None, "pod label in namespace", namespace);
    }
    Decision::skip(SkipReason::NotInMesh)
}

/// The revision new pods of namespace `ns` get by its labels alone (no pod-level opt-in).
pub fn resolve_namespace<'t>(table: &'t Table, ns: &str) -> Option<&'t Arc<Revision>> {
    match route(table, ns, false, &Meta::default()) {
        Decision::Inject { revision, .. } => Some(revision),
        Decision::Skip { .. } => None,
    }
}

fn by_tag_or_revision<'t>(
    table: &'t Table,
    name: &str,
    warning: Option<String>,
    whose: &str,
    namespace: &str,
) -> Decision<'t> {
    if let Some((tag, revision)) = table.tag_entry(name) {
        return Decision::Inject {
            revision,
            via: Via::Tag(tag),
            warning,
        };
    }
    if let Some(revision) = table.revision(name) {
        return Decision::Inject {
            revision,
            via: Via::Pinned,
            warning,
        };
    }
    Decision::Skip {
        reason: SkipReason::UnknownRevision,
        warning: Some(format!(
            "{whose} {namespace} selects {LABEL_REV}={name}, which is neither a RevisionTag nor a MeshRevision: the pod was not injected"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::injector::pod::Pod;
    use std::collections::HashMap;

    fn table(ns: &[(&str, &[(&str, &str)])]) -> Table {
        let namespaces: HashMap<_, _> = ns
            .iter()
            .map(|(n, labels)| {
                (
                    n.to_string(),
                    NamespaceLabels::from_labels(|k| {
                        labels.iter().find(|(lk, _)| *lk == k).map(|(_, v)| *v)
                    }),
                )
            })
            .collect();
        crate::table::embedded_default().with_namespaces(namespaces)
    }

    fn meta(json: &str) -> Pod<'_> {
        serde_json::from_str(json).expect("test pod must parse")
    }

    fn decide(t: &Table, ns: &str, pod_json: &str) -> (String, String, Option<String>) {
        let pod = meta(pod_json);
        let host = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        match route(t, ns, host, &pod.metadata) {
            Decision::Inject {
                revision,
                via,
                warning,
            } => (revision.name.clone(), via.tag().to_string(), warning),
            Decision::Skip { reason, warning } => ("skip".into(), reason.as_str().into(), warning),
        }
    }

    const PLAIN: &str = r#"{"metadata":{},"spec":{"containers":[{"name":"app"}]}}"#;

    #[test]
    fn injection_enabled_is_stable() {
        let t = table(&[("a", &[("istio-injection", "enabled")])]);
        assert_eq!(
            decide(&t, "a", PLAIN),
            ("1-22-6".into(), "stable".into(), None)
        );
    }

    #[test]
    fn rev_tag_then_revision() {
        let t = table(&[
            ("c", &[("istio.io/rev", "canary")]),
            ("p", &[("istio.io/rev", "1-23-6")]),
        ]);
        assert_eq!(decide(&t, "c", PLAIN).0, "1-23-6");
        assert_eq!(decide(&t, "c", PLAIN).1, "canary");
        assert_eq!(
            decide(&t, "p", PLAIN),
            ("1-23-6".into(), "none".into(), None)
        );
    }

    #[test]
    fn unknown_revision_skips_with_warning() {
        let t = table(&[("x", &[("istio.io/rev", "1-99-0")])]);
        let (r, reason, w) = decide(&t, "x", PLAIN);
        assert_eq!((r.as_str(), reason.as_str()), ("skip", "unknown-revision"));
        assert!(w.unwrap().contains("1-99-0"));
    }

    #[test]
    fn injection_label_wins_over_rev_with_warning() {
        let t = table(&[(
            "b",
            &[("istio-injection", "enabled"), ("istio.io/rev", "canary")],
        )]);
        let (r, via, w) = decide(&t, "b", PLAIN);
        assert_eq!((r.as_str(), via.as_str()), ("1-22-6", "stable"));
        assert!(w.unwrap().contains("istio-injection wins"));
    }

    #[test]
    fn disabled_namespace_skips_even_with_rev() {
        let t = table(&[(
            "d",
            &[("istio-injection", "disabled"), ("istio.io/rev", "canary")],
        )]);
        assert_eq!(decide(&t, "d", PLAIN).1, "namespace-disabled");
    }

    #[test]
    fn host_network_and_system_namespaces_skip_first() {
        let t = table(&[
            ("kube-system", &[("istio-injection", "enabled")]),
            ("a", &[("istio-injection", "enabled")]),
        ]);
        assert_eq!(decide(&t, "kube-system", PLAIN).1, "system-namespace");
        let host = r#"{"metadata":{"labels":{"sidecar.istio.io/inject":"true"}},"spec":{"hostNetwork":true,"containers":[]}}"#;
        assert_eq!(decide(&t, "a", host).1, "host-network");
    }

    #[test]
    fn pod_opt_out_label_beats_annotation_and_namespace() {
        let t = table(&[("a", &[("istio-injection", "enabled")])]);
        let label_false = r#"{"metadata":{"labels":{"sidecar.istio.io/inject":"false"}}}"#;
        assert_eq!(decide(&t, "a", label_false).1, "pod-opt-out");
        let ann_false = r#"{"metadata":{"annotations":{"sidecar.istio.io/inject":"false"}}}"#;
        assert_eq!(decide(&t, "a", ann_false).1, "pod-opt-out");
        let label_true_ann_false = r#"{"metadata":{"labels":{"sidecar.istio.io/inject":"true"},"annotations":{"sidecar.istio.io/inject":"false"}}}"#;
        assert_eq!(decide(&t, "a", label_true_ann_false).0, "1-22-6");
    }

    #[test]
    fn pod_level_opt_in_only_without_namespace_labels() {
        let t = table(&[("c", &[("istio.io/rev", "canary")])]);
        let pod_rev = r#"{"metadata":{"labels":{"istio.io/rev":"1-22-6"}}}"#;
        // The namespace's label beats the pod's.
        assert_eq!(decide(&t, "c", pod_rev).0, "1-23-6");
        // No namespace labels: the pod's label decides.
        assert_eq!(
            decide(&t, "plain", pod_rev),
            ("1-22-6".into(), "none".into(), None)
        );
        let pod_canary = r#"{"metadata":{"labels":{"istio.io/rev":"canary"}}}"#;
        assert_eq!(decide(&t, "plain", pod_canary).0, "1-23-6");
        let opt_in = r#"{"metadata":{"labels":{"sidecar.istio.io/inject":"true"}}}"#;
        assert_eq!(decide(&t, "plain", opt_in).0, "1-22-6");
        // The annotation alone does not opt in (Istio's objectSelector reads labels).
        let ann_in = r#"{"metadata":{"annotations":{"sidecar.istio.io/inject":"true"}}}"#;
        assert_eq!(decide(&t, "plain", ann_in).1, "not-in-mesh");
        assert_eq!(decide(&t, "plain", PLAIN).1, "not-in-mesh");
    }

    #[test]
    fn skip_reasons_are_distinct_metric_values() {
        let mut v: Vec<&str> = SkipReason::ALL.iter().map(|r| r.as_str()).collect();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), SkipReason::ALL.len());
    }
}
