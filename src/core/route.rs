//! The router: which revision injects a pod, or why none does. Written once, for the
//! webhook ([`crate::router`], over a [`crate::table::Table`] and the request's borrowed pod)
//! and for the upgrade tooling ([`super::view::MeshView`], over plain data).
//!
//! Rules, in order (Istio's where Istio has one; Istio spreads them over webhook selectors
//! and `injectRequired`, meshrev resolves tags itself in one webhook):
//! 1. `hostNetwork: true` → skip; system namespaces → skip;
//! 2. pod label `sidecar.istio.io/inject: "false"` (or, without the label, the annotation)
//!    → skip;
//! 3. namespace `istio-injection: enabled` → tag `stable` (it wins over a namespace
//!    `istio.io/rev`, with a warning); any other value of it → skip;
//! 4. namespace `istio.io/rev: X` → tag X, else revision X, else skip (`unknown-revision`);
//! 5. otherwise the pod decides: label `istio.io/rev: X` as in 4, label
//!    `sidecar.istio.io/inject: "true"` → tag `stable`, else skip (`not-in-mesh`).
//!
//! [`route`] does not allocate unless it has a warning to give (a label conflict, a name
//! that is neither a tag nor a revision): it returns borrows of the mesh's own names.

use std::fmt;

use serde::Serialize;

use super::labels::{NamespaceLabels, NamespaceSelect, PodLabels};
use super::vocab::{LABEL_INJECT, LABEL_INJECTION, LABEL_REV, TAG_STABLE, is_system_namespace};

/// Revisions and tags, as routing resolves names against them.
pub(crate) trait Revisions {
    /// What a resolved name gives: the table's rendered revision, or a revision name.
    type Revision: ?Sized;
    /// The tag's own name (borrowed from `self`) and the revision it points at, when the
    /// tag exists and so does its revision.
    fn tag(&self, name: &str) -> Option<(&str, &Self::Revision)>;
    /// The revision of that name, when it exists.
    fn revision(&self, name: &str) -> Option<&Self::Revision>;
}

/// The injection labels of namespaces.
pub(crate) trait Namespaces {
    /// `None` for a namespace without injection labels (or unknown).
    fn namespace_labels(&self, namespace: &str) -> Option<&NamespaceLabels>;
}

/// Why a pod is not injected. A small fixed set: [`SkipReason::as_str`] gives the
/// Prometheus label values, which must not change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The pod uses the host's network (`hostNetwork: true`).
    HostNetwork,
    /// The pod is in a system namespace (`kube-system`, `kube-public`, …).
    SystemNamespace,
    /// The pod opts out (`sidecar.istio.io/inject: "false"`, label or annotation).
    PodOptOut,
    /// The namespace's `istio-injection` label is set to something other than `enabled`.
    NamespaceDisabled,
    /// The selected name is neither a tag nor a revision.
    UnknownRevision,
    /// Neither the namespace nor the pod asks for injection.
    NotInMesh,
    /// The admission request is not a pod CREATE (the webhook's own reason).
    NotCreate,
}

impl SkipReason {
    /// Every reason, in metric order.
    pub(crate) const ALL: [SkipReason; 7] = [
        SkipReason::HostNetwork,
        SkipReason::SystemNamespace,
        SkipReason::PodOptOut,
        SkipReason::NamespaceDisabled,
        SkipReason::UnknownRevision,
        SkipReason::NotInMesh,
        SkipReason::NotCreate,
    ];
    /// The metric label value.
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

/// For people (`meshrev upgrade status`); see `Decision::skip_text` for the unknown name.
impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::HostNetwork => "host network",
            SkipReason::SystemNamespace => "system namespace",
            SkipReason::PodOptOut => "opted out (sidecar.istio.io/inject=false)",
            SkipReason::NamespaceDisabled => "injection disabled in namespace",
            SkipReason::UnknownRevision => "names no tag or revision",
            SkipReason::NotInMesh => "not in the mesh",
            SkipReason::NotCreate => "not a pod creation",
        })
    }
}

/// How the revision was chosen. `T` is the tag name: borrowed (`&str`) from the router,
/// owned (`String`) in reports that outlive the mesh they were computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via<T> {
    /// Through a tag (`stable`, `canary`, …).
    Tag(T),
    /// A revision named directly (`istio.io/rev: 1-23-6`).
    Pinned,
}

impl<T: AsRef<str>> Via<T> {
    /// The metric label value: the tag, or `none` for a pinned revision.
    pub(crate) fn tag(&self) -> &str {
        match self {
            Via::Tag(t) => t.as_ref(),
            Via::Pinned => "none",
        }
    }
    /// The tag, `None` for a pinned revision.
    pub(crate) fn tag_name(&self) -> Option<&str> {
        match self {
            Via::Tag(t) => Some(t.as_ref()),
            Via::Pinned => None,
        }
    }
}

/// Which label chose the revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    Namespace,
    Pod,
}

/// The router's answer. `R` is the revision (`&Arc<Revision>` from a table, `&str` or
/// `String` from the upgrade view), `T` the tag name as in [`Via`]. [`route`] returns
/// borrows; [`Decision::into_owned`] detaches one from the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision<R, T> {
    Inject {
        revision: R,
        via: Via<T>,
        level: Level,
        /// An admission warning (e.g. both namespace labels set).
        warning: Option<String>,
    },
    Skip {
        reason: SkipReason,
        /// For [`SkipReason::UnknownRevision`]: the name the labels select.
        unknown: Option<String>,
        /// An admission warning (the unknown name, for one).
        warning: Option<String>,
    },
}

impl<R, T> Decision<R, T> {
    /// A skip without a warning.
    pub(crate) fn skip(reason: SkipReason) -> Self {
        Decision::Skip {
            reason,
            unknown: None,
            warning: None,
        }
    }
    #[cfg(test)]
    /// The skip reason, `None` when injected.
    pub(crate) fn skip_reason(&self) -> Option<SkipReason> {
        match self {
            Decision::Inject { .. } => None,
            Decision::Skip { reason, .. } => Some(*reason),
        }
    }
    /// Injected, or skipped because the labels name a missing revision: either way the
    /// object belongs to the mesh.
    pub(crate) fn selects_something(&self) -> bool {
        matches!(
            self,
            Decision::Inject { .. }
                | Decision::Skip {
                    reason: SkipReason::UnknownRevision,
                    ..
                }
        )
    }
    /// Why there is no sidecar, for people: [`SkipReason`]'s text, with the unknown name.
    pub(crate) fn skip_text(&self) -> Option<String> {
        match self {
            Decision::Inject { .. } => None,
            Decision::Skip {
                reason: SkipReason::UnknownRevision,
                unknown: Some(n),
                ..
            } => Some(format!("{LABEL_REV}={n} names no tag or revision")),
            Decision::Skip { reason, .. } => Some(reason.to_string()),
        }
    }
}

impl<R: ToString + ?Sized, T: AsRef<str>> Decision<&R, T> {
    /// The same decision, owning its names (for reports kept after the mesh is gone).
    pub(crate) fn into_owned(self) -> Decision<String, String> {
        match self {
            Decision::Inject {
                revision,
                via,
                level,
                warning,
            } => Decision::Inject {
                revision: revision.to_string(),
                via: match via {
                    Via::Tag(t) => Via::Tag(t.as_ref().to_string()),
                    Via::Pinned => Via::Pinned,
                },
                level,
                warning,
            },
            Decision::Skip {
                reason,
                unknown,
                warning,
            } => Decision::Skip {
                reason,
                unknown,
                warning,
            },
        }
    }
}

impl<T> Decision<String, T> {
    /// The revision new pods get, `None` when skipped.
    pub(crate) fn revision(&self) -> Option<&str> {
        match self {
            Decision::Inject { revision, .. } => Some(revision),
            Decision::Skip { .. } => None,
        }
    }
}

#[cfg(test)]
impl<'r, T> Decision<&'r str, T> {
    /// The revision new pods get, `None` when skipped.
    pub(crate) fn revision(&self) -> Option<&'r str> {
        match self {
            Decision::Inject { revision, .. } => Some(revision),
            Decision::Skip { .. } => None,
        }
    }
}

/// Routes one pod (or pod template) created in `namespace`.
pub(crate) fn route<'m, M, P>(
    mesh: &'m M,
    namespace: &str,
    pod: &P,
) -> Decision<&'m M::Revision, &'m str>
where
    M: Revisions + Namespaces + ?Sized,
    P: PodLabels + ?Sized,
{
    if let Some(reason) = never_injected(namespace, pod) {
        return Decision::skip(reason);
    }
    let select = mesh
        .namespace_labels(namespace)
        .map_or(NamespaceSelect::Unlabelled, NamespaceLabels::select);
    match select {
        NamespaceSelect::Disabled(_) => Decision::skip(SkipReason::NamespaceDisabled),
        NamespaceSelect::Name { name, ignored_rev } => {
            let warning = ignored_rev.map(|rev| {
                format!(
                    "namespace {namespace} has both {LABEL_INJECTION}=enabled and {LABEL_REV}={rev}; {LABEL_INJECTION} wins (tag {TAG_STABLE}): remove one of the labels"
                )
            });
            by_name(
                mesh,
                name,
                Level::Namespace,
                warning,
                "namespace",
                namespace,
            )
        }
        NamespaceSelect::Unlabelled => match pod_selection(pod) {
            Some(name) => by_name(
                mesh,
                name,
                Level::Pod,
                None,
                "pod label in namespace",
                namespace,
            ),
            None => Decision::skip(SkipReason::NotInMesh),
        },
    }
}

/// Rules 1-3: why a pod is never injected whatever the labels select (host network, a
/// system namespace, its own opt-out), if it is not.
pub(crate) fn never_injected<P: PodLabels + ?Sized>(
    namespace: &str,
    pod: &P,
) -> Option<SkipReason> {
    if pod.host_network() {
        return Some(SkipReason::HostNetwork);
    }
    if is_system_namespace(namespace) {
        return Some(SkipReason::SystemNamespace);
    }
    let opt = pod
        .label(LABEL_INJECT)
        .or_else(|| pod.annotation(LABEL_INJECT));
    (opt == Some("false")).then_some(SkipReason::PodOptOut)
}

/// Rule 5: the tag or revision a pod's own labels select (they count only in a namespace
/// without injection labels): label `istio.io/rev`, else tag `stable` for label
/// `sidecar.istio.io/inject: "true"` (the annotation does not opt in: Istio's
/// `objectSelector` reads labels).
pub(crate) fn pod_selection<P: PodLabels + ?Sized>(pod: &P) -> Option<&str> {
    pod.label(LABEL_REV)
        .or_else(|| (pod.label(LABEL_INJECT) == Some("true")).then_some(TAG_STABLE))
}

/// A tag of that name, else a revision, else an unknown-revision skip with its warning.
fn by_name<'m, M: Revisions + ?Sized>(
    mesh: &'m M,
    name: &str,
    level: Level,
    warning: Option<String>,
    whose: &str,
    namespace: &str,
) -> Decision<&'m M::Revision, &'m str> {
    if let Some((tag, revision)) = mesh.tag(name) {
        return Decision::Inject {
            revision,
            via: Via::Tag(tag),
            level,
            warning,
        };
    }
    if let Some(revision) = mesh.revision(name) {
        return Decision::Inject {
            revision,
            via: Via::Pinned,
            level,
            warning,
        };
    }
    Decision::Skip {
        reason: SkipReason::UnknownRevision,
        unknown: Some(name.to_string()),
        warning: Some(format!(
            "{whose} {namespace} selects {LABEL_REV}={name}, which is neither a RevisionTag nor a MeshRevision: the pod was not injected"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::core::labels::NoLabels;

    /// A mesh of revision names: the smallest [`Revisions`] + [`Namespaces`].
    #[derive(Default)]
    struct Mesh {
        revisions: Vec<&'static str>,
        tags: BTreeMap<&'static str, &'static str>,
        namespaces: BTreeMap<&'static str, NamespaceLabels>,
    }

    impl Revisions for Mesh {
        type Revision = str;
        fn tag(&self, name: &str) -> Option<(&str, &str)> {
            let (t, r) = self.tags.get_key_value(name)?;
            Some((*t, self.revision(r)?))
        }
        fn revision(&self, name: &str) -> Option<&str> {
            self.revisions.iter().copied().find(|r| *r == name)
        }
    }

    impl Namespaces for Mesh {
        fn namespace_labels(&self, namespace: &str) -> Option<&NamespaceLabels> {
            self.namespaces.get(namespace)
        }
    }

    #[derive(Default)]
    struct P {
        labels: Vec<(&'static str, &'static str)>,
        annotations: Vec<(&'static str, &'static str)>,
        host: bool,
    }

    impl PodLabels for P {
        fn label(&self, key: &str) -> Option<&str> {
            self.labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
        }
        fn annotation(&self, key: &str) -> Option<&str> {
            self.annotations
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| *v)
        }
        fn host_network(&self) -> bool {
            self.host
        }
    }

    fn mesh() -> Mesh {
        Mesh {
            revisions: vec!["1-22-6", "1-23-6"],
            tags: BTreeMap::from([("stable", "1-22-6"), ("canary", "1-23-6"), ("gone", "x")]),
            namespaces: BTreeMap::from([
                ("both", {
                    let mut l = NamespaceLabels::injection_enabled();
                    l.rev = Some("canary".into());
                    l
                }),
                ("bad", NamespaceLabels::rev("1-99-0")),
                ("pin", NamespaceLabels::rev("1-23-6")),
            ]),
        }
    }

    #[test]
    fn decisions_borrow_the_mesh_and_say_how() {
        let m = mesh();
        let d = route(&m, "both", &NoLabels);
        let Decision::Inject {
            revision,
            via,
            level,
            warning,
        } = &d
        else {
            panic!("{d:?}")
        };
        assert_eq!(
            (*revision, via.tag(), *level),
            ("1-22-6", "stable", Level::Namespace)
        );
        assert!(warning.as_deref().unwrap().contains("istio-injection wins"));
        let d = route(&m, "pin", &NoLabels);
        assert_eq!(d.revision(), Some("1-23-6"));
        assert!(matches!(
            d,
            Decision::Inject {
                via: Via::Pinned,
                ..
            }
        ));
    }

    #[test]
    fn unknown_names_are_kept_for_people_and_warned_about() {
        let m = mesh();
        let d = route(&m, "bad", &NoLabels);
        assert_eq!(d.skip_reason(), Some(SkipReason::UnknownRevision));
        assert!(d.selects_something());
        assert_eq!(
            d.skip_text().as_deref(),
            Some("istio.io/rev=1-99-0 names no tag or revision")
        );
        // A tag whose revision is gone resolves to nothing, like a missing name.
        let pod = P {
            labels: vec![(LABEL_REV, "gone")],
            ..P::default()
        };
        let d = route(&m, "plain", &pod).into_owned();
        assert_eq!(d.skip_reason(), Some(SkipReason::UnknownRevision));
        assert!(d.clone().skip_text().unwrap().contains("gone"));
        let Decision::Skip { warning, .. } = d else {
            unreachable!()
        };
        assert!(warning.unwrap().starts_with("pod label in namespace plain"));
    }

    #[test]
    fn pod_rules_in_order() {
        let m = mesh();
        let host = P {
            labels: vec![(LABEL_INJECT, "true")],
            host: true,
            ..P::default()
        };
        assert_eq!(
            route(&m, "plain", &host).skip_reason(),
            Some(SkipReason::HostNetwork)
        );
        assert_eq!(
            route(&m, "kube-system", &NoLabels).skip_reason(),
            Some(SkipReason::SystemNamespace)
        );
        let opt_out = P {
            annotations: vec![(LABEL_INJECT, "false")],
            ..P::default()
        };
        assert_eq!(
            route(&m, "both", &opt_out).skip_reason(),
            Some(SkipReason::PodOptOut)
        );
        let opt_in = P {
            labels: vec![(LABEL_INJECT, "true")],
            ..P::default()
        };
        assert_eq!(pod_selection(&opt_in), Some(TAG_STABLE));
        let d = route(&m, "plain", &opt_in);
        assert!(matches!(
            d,
            Decision::Inject {
                level: Level::Pod,
                ..
            }
        ));
        let ann_in = P {
            annotations: vec![(LABEL_INJECT, "true")],
            ..P::default()
        };
        assert_eq!(pod_selection(&ann_in), None);
        assert_eq!(
            route(&m, "plain", &ann_in).skip_reason(),
            Some(SkipReason::NotInMesh)
        );
    }

    #[test]
    fn skip_reasons_are_distinct_metric_values() {
        let mut v: Vec<&str> = SkipReason::ALL.iter().map(|r| r.as_str()).collect();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), SkipReason::ALL.len());
    }
}
