//! The webhook's routing step: which revision injects a pod, by the one router
//! (`core::route`) over the published [`Table`] and the request's borrowed pod,
//! then the injector's patch for that revision ([`inject`]).
//!
//! Pure functions of their arguments; the table is read, never mutated. Nothing here
//! allocates on the common path: decisions borrow the table's revisions and tag names.

use std::sync::Arc;

use crate::core::{self, NoLabels, PodLabels};
use crate::injector::{self, pod::Meta, pod::Pod};
use crate::table::{Revision, Table};

pub use crate::core::SkipReason;

/// How the revision was chosen: a tag name borrowed from the table, or pinned.
pub(crate) type Via<'t> = core::Via<&'t str>;

/// The router's answer over a table.
pub(crate) type Decision<'t> = core::Decision<&'t Arc<Revision>, &'t str>;

/// The request's pod as routing reads it: its metadata, and `spec.hostNetwork`.
struct WirePod<'a, 'p> {
    meta: &'a Meta<'p>,
    host_network: bool,
}

impl PodLabels for WirePod<'_, '_> {
    fn label(&self, key: &str) -> Option<&str> {
        self.meta.label(key)
    }
    fn annotation(&self, key: &str) -> Option<&str> {
        self.meta.annotation(key)
    }
    fn host_network(&self) -> bool {
        self.host_network
    }
}

/// Routes one pod. `namespace` is the request's namespace; its labels come from the table.
pub(crate) fn route<'t>(
    table: &'t Table,
    namespace: &str,
    host_network: bool,
    pod: &Meta<'_>,
) -> Decision<'t> {
    core::route(
        table,
        namespace,
        &WirePod {
            meta: pod,
            host_network,
        },
    )
}

/// The revision new pods of namespace `ns` get by its labels alone (no pod-level opt-in).
pub(crate) fn resolve_namespace<'t>(table: &'t Table, ns: &str) -> Option<&'t Arc<Revision>> {
    match core::route(table, ns, &NoLabels) {
        core::Decision::Inject { revision, .. } => Some(revision),
        core::Decision::Skip { .. } => None,
    }
}

/// What [`inject`] did.
#[derive(Debug)]
pub enum Outcome<'t> {
    /// A patch was written to the buffer.
    Injected {
        /// The revision whose sidecar was injected.
        revision: &'t Arc<Revision>,
        /// How the pod reached it (tag or revision, namespace or pod label).
        via: Via<'t>,
        /// For the AdmissionReview's `warnings` (a label conflict, a too-new version).
        warning: Option<String>,
    },
    /// No patch; the pod is admitted as it is.
    Skipped {
        /// Why no sidecar.
        reason: SkipReason,
        /// For the AdmissionReview's `warnings` (a name that is neither tag nor revision).
        warning: Option<String>,
    },
    /// The pod asks for something invalid (a malformed annotation); the message names it.
    Denied(injector::Refusal),
}

/// Routes `pod` (created in `namespace`) and, when it is to be injected, appends the JSON
/// Patch to `patch` (which must be empty); see `injector::patch` for `whole_pod`.
pub fn inject<'t>(
    table: &'t Table,
    namespace: &str,
    pod: &Pod<'_>,
    patch: &mut Vec<u8>,
    whole_pod: impl FnOnce() -> Option<serde_json::Value>,
) -> Outcome<'t> {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    match route(table, namespace, host_network, &pod.metadata) {
        core::Decision::Skip {
            reason, warning, ..
        } => Outcome::Skipped { reason, warning },
        core::Decision::Inject {
            revision,
            via,
            warning,
            ..
        } => match injector::patch(
            &revision.template,
            table.nodes_support_native_sidecars,
            namespace,
            pod,
            patch,
            whole_pod,
        ) {
            Ok(()) => Outcome::Injected {
                revision,
                via,
                warning,
            },
            Err(e) => Outcome::Denied(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::NamespaceLabels;
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
                ..
            } => (revision.name.clone(), via.tag().to_string(), warning),
            Decision::Skip {
                reason, warning, ..
            } => ("skip".into(), reason.as_str().into(), warning),
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
}
