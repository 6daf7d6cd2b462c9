//! What routing reads of a namespace ([`NamespaceLabels`]) and of a pod ([`PodLabels`]), and
//! the one rule for which revision an injected pod runs ([`pod_revision`]).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::vocab::{
    ANNOTATION_REV, ANNOTATION_STATUS, INJECTION_ENABLED, LABEL_INJECTION, LABEL_REV, TAG_STABLE,
};

/// The injection labels of a namespace: all routing needs of it.
///
/// Plain data, built by whoever reads namespaces (the table builder, the controller, the
/// upgrade view) and never mutated once it is in a [`crate::table::Table`] or a
/// `MeshView` (the upgrade view).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NamespaceLabels {
    /// `istio-injection`.
    pub injection: Option<String>,
    /// `istio.io/rev`.
    pub rev: Option<String>,
}

impl NamespaceLabels {
    /// From any label lookup.
    pub(crate) fn from_labels<'a>(mut get: impl FnMut(&str) -> Option<&'a str>) -> NamespaceLabels {
        NamespaceLabels {
            injection: get(LABEL_INJECTION).map(Into::into),
            rev: get(LABEL_REV).map(Into::into),
        }
    }
    /// From a label map (`metadata.labels`, absent or not).
    pub(crate) fn from_map(labels: Option<&BTreeMap<String, String>>) -> Self {
        NamespaceLabels::from_labels(|k| labels.and_then(|l| l.get(k)).map(String::as_str))
    }
    #[cfg(test)]
    /// `istio-injection: enabled`.
    pub(crate) fn injection_enabled() -> Self {
        NamespaceLabels {
            injection: Some(INJECTION_ENABLED.into()),
            rev: None,
        }
    }
    /// `istio.io/rev: NAME`.
    pub(crate) fn rev(name: &str) -> Self {
        NamespaceLabels {
            injection: None,
            rev: Some(name.into()),
        }
    }
    /// Neither label.
    pub(crate) fn is_empty(&self) -> bool {
        self.injection.is_none() && self.rev.is_none()
    }
    /// What the labels select, before tags are resolved (routing rules 3 and 4). Borrows: the
    /// webhook calls it per request.
    pub(crate) fn select(&self) -> NamespaceSelect<'_> {
        match (self.injection.as_deref(), self.rev.as_deref()) {
            (Some(INJECTION_ENABLED), ignored_rev) => NamespaceSelect::Name {
                name: TAG_STABLE,
                ignored_rev,
            },
            (Some(other), _) => NamespaceSelect::Disabled(other),
            (None, Some(rev)) => NamespaceSelect::Name {
                name: rev,
                ignored_rev: None,
            },
            (None, None) => NamespaceSelect::Unlabelled,
        }
    }
    /// `istio-injection=enabled,istio.io/rev=canary`, or `-`.
    pub(crate) fn describe(&self) -> String {
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
    pub(crate) fn names(&self, name: &str) -> bool {
        self.rev.as_deref() == Some(name)
            || (name == TAG_STABLE && self.injection.as_deref() == Some(INJECTION_ENABLED))
    }
}

/// What a namespace's labels select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NamespaceSelect<'a> {
    /// No injection label: each pod's labels decide.
    Unlabelled,
    /// `istio-injection` set to something other than `enabled`.
    Disabled(&'a str),
    /// A tag or revision name; `ignored_rev` is an `istio.io/rev` that `istio-injection`
    /// overrides (a conflict).
    Name {
        name: &'a str,
        ignored_rev: Option<&'a str>,
    },
}

/// The labels and annotations of a pod (or pod template) that routing reads.
///
/// Implemented by the webhook's borrowed wire view ([`crate::router`]) and by the upgrade
/// view's [`super::view::PodSelector`]; lookups borrow, so routing never allocates.
pub(crate) trait PodLabels {
    /// A label's value.
    fn label(&self, key: &str) -> Option<&str>;
    /// An annotation's value.
    fn annotation(&self, key: &str) -> Option<&str>;
    /// `spec.hostNetwork`.
    fn host_network(&self) -> bool;
}

/// A pod with no labels or annotations of its own: what a namespace's labels alone give.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NoLabels;

impl PodLabels for NoLabels {
    fn label(&self, _: &str) -> Option<&str> {
        None
    }
    fn annotation(&self, _: &str) -> Option<&str> {
        None
    }
    fn host_network(&self) -> bool {
        false
    }
}

/// The revision whose sidecar a pod runs, from its annotations; `None` without a sidecar.
///
/// The rule (Istio's): Istio's injection template writes the revision twice, as the
/// annotation `istio.io/rev` and as the `revision` field of `sidecar.istio.io/status`, and
/// meshrev's injector writes both too. The annotation is read first (no JSON to parse); a
/// pod that has only the status (the annotation removed, or written by a tool that kept
/// only Istio's status, which is what `istioctl` itself reads for injected pods) falls back
/// to the status's `revision`. Empty values count as absent. The webhook, the controller's
/// pod counts and the upgrade view all read a pod's revision through this function.
pub(crate) fn pod_revision<'a>(
    annotation: impl Fn(&str) -> Option<&'a str>,
) -> Option<Cow<'a, str>> {
    if let Some(r) = annotation(ANNOTATION_REV).filter(|r| !r.is_empty()) {
        return Some(Cow::Borrowed(r));
    }
    #[derive(Deserialize)]
    struct Status<'s> {
        #[serde(borrow, default)]
        revision: Option<Cow<'s, str>>,
    }
    let status: Status<'a> = serde_json::from_str(annotation(ANNOTATION_STATUS)?).ok()?;
    status.revision.filter(|r| !r.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |k| pairs.iter().find(|(pk, _)| *pk == k).map(|(_, v)| *v)
    }

    #[test]
    fn revision_from_annotation_then_status() {
        assert_eq!(pod_revision(ann(&[])), None);
        let status = r#"{"containers":["istio-proxy"],"revision":"1-22-6"}"#;
        assert_eq!(
            pod_revision(ann(&[(ANNOTATION_STATUS, status)])).as_deref(),
            Some("1-22-6")
        );
        assert_eq!(
            pod_revision(ann(&[
                (ANNOTATION_STATUS, status),
                (ANNOTATION_REV, "1-23-6")
            ]))
            .as_deref(),
            Some("1-23-6"),
            "the annotation wins"
        );
        assert_eq!(
            pod_revision(ann(&[(ANNOTATION_STATUS, status), (ANNOTATION_REV, "")])).as_deref(),
            Some("1-22-6"),
            "an empty annotation counts as absent"
        );
        assert_eq!(pod_revision(ann(&[(ANNOTATION_STATUS, "not json")])), None);
        assert_eq!(
            pod_revision(ann(&[(ANNOTATION_STATUS, r#"{"revision":""}"#)])),
            None
        );
    }

    #[test]
    fn select_follows_rules_three_and_four() {
        let l = |inj: Option<&str>, rev: Option<&str>| NamespaceLabels {
            injection: inj.map(Into::into),
            rev: rev.map(Into::into),
        };
        assert_eq!(l(None, None).select(), NamespaceSelect::Unlabelled);
        assert_eq!(
            l(Some("enabled"), Some("canary")).select(),
            NamespaceSelect::Name {
                name: "stable",
                ignored_rev: Some("canary")
            }
        );
        assert_eq!(
            l(Some("disabled"), Some("canary")).select(),
            NamespaceSelect::Disabled("disabled")
        );
        assert_eq!(
            l(None, Some("1-23-6")).select(),
            NamespaceSelect::Name {
                name: "1-23-6",
                ignored_rev: None
            }
        );
        assert!(l(Some("enabled"), None).names("stable"));
        assert_eq!(
            l(Some("enabled"), Some("x")).describe(),
            "istio-injection=enabled,istio.io/rev=x"
        );
    }
}
