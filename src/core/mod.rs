//! The domain core: Istio's vocabulary, routing, the revision of a pod, validation, the
//! version skip policy and the upgrade guards. Pure: no Kubernetes client or API types, no
//! I/O, no async (std, serde, semver and thiserror only), in the manner of Linkerd's
//! policy-controller `core` crate. Everything that talks to a cluster or a socket converts
//! its objects into these types at its edge and calls in.
//!
//! - [`vocab`]: every shared label and annotation key, the tag names, the system namespaces;
//! - [`labels`]: [`NamespaceLabels`], the [`PodLabels`] a router reads, and [`pod_revision`];
//! - [`route`](mod@route): the one router ([`route()`]) over the [`Revisions`] and [`Namespaces`]
//!   traits, which both [`crate::table::Table`] and [`view::MeshView`] implement;
//! - [`validate`]: names, versions, image references, quantities, durations;
//! - [`view`]: [`view::MeshView`], what upgrade decisions know about a cluster, as plain data;
//! - [`control_plane`]: a revision's istiod Deployment and its readiness, from a kube-free
//!   summary of the Deployment;
//! - [`guards`]: the version skip policy and the pure allow-or-refuse decisions of every
//!   upgrade step, shared by the CLI and the validating webhook.
//!
//! Nothing here holds state across calls: every value is built by its caller and owned by it.

pub(crate) mod control_plane;
pub(crate) mod guards;
pub(crate) mod labels;
pub(crate) mod route;
pub(crate) mod validate;
pub(crate) mod view;
pub(crate) mod vocab;

pub use labels::NamespaceLabels;
pub(crate) use labels::{NamespaceSelect, NoLabels, PodLabels, pod_revision};
pub(crate) use route::{Decision, Namespaces, Revisions, route};
pub use route::{SkipReason, Via};
pub(crate) use vocab::*;

/// What the core refuses. Messages name the offending value; callers add where it came from
/// (`spec.version`, `--proxy-image`, …).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Error {
    #[error("name {0:?} must be a DNS label: lowercase letters, digits and '-', at most 63")]
    Name(String),
    #[error("version {version:?} is not a semantic version like 1.23.6: {reason}")]
    Version { version: String, reason: String },
    #[error("{0:?} is not an image reference")]
    Image(String),
    #[error("{0:?} is not a Kubernetes quantity")]
    Quantity(String),
    #[error("{0:?} is not a duration like 500ms, 90s, 10m or 1h30m")]
    Duration(String),
    #[error("canary version {canary} is not newer than stable version {stable}")]
    NotNewer {
        stable: semver::Version,
        canary: semver::Version,
    },
    #[error(
        "version skip policy: {stable} → {canary} changes the major version; a canary upgrade stays within {}.x",
        stable.major
    )]
    MajorVersion {
        stable: semver::Version,
        canary: semver::Version,
    },
    #[error(
        "version skip policy: {stable} → {canary} skips {} minor version(s); a canary upgrade goes at most one minor version ahead (to {}.{}.x)",
        canary.minor - stable.minor - 1,
        stable.major,
        stable.minor + 1
    )]
    MinorSkip {
        stable: semver::Version,
        canary: semver::Version,
    },
}

#[cfg(test)]
mod tests {
    /// The core stays a leaf: its non-test code uses no Kubernetes, HTTP or async crate and
    /// no other module of meshrev (the rest of the crate depends on the core, never the
    /// reverse).
    #[test]
    fn core_imports_nothing_but_pure_crates() {
        let sources = [
            ("mod.rs", include_str!("mod.rs")),
            ("guards.rs", include_str!("guards.rs")),
            ("labels.rs", include_str!("labels.rs")),
            ("route.rs", include_str!("route.rs")),
            ("validate.rs", include_str!("validate.rs")),
            ("view.rs", include_str!("view.rs")),
            ("vocab.rs", include_str!("vocab.rs")),
        ];
        let forbidden = [
            "kube::",
            "k8s_openapi",
            "hyper",
            "tokio",
            "anyhow",
            "clap::",
            "rustls",
            "prometheus",
        ];
        for (file, text) in sources {
            let code_before_tests = text.split("#[cfg(test)]").next().unwrap_or(text);
            for (n, line) in code_before_tests.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for f in forbidden {
                    assert!(!code.contains(f), "src/core/{file}:{}: uses {f}", n + 1);
                }
                if let Some(at) = code.find("crate::") {
                    assert!(
                        code[at..].starts_with("crate::core::"),
                        "src/core/{file}:{}: imports another meshrev module: {line}",
                        n + 1
                    );
                }
            }
        }
    }
}
