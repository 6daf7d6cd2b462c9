//! The canary upgrade lifecycle: `meshrev upgrade …` and the server-side upgrade guards.
//!
//! The lifecycle (after Alibaba Cloud ASM's canary upgrade, with Istio's labels):
//! 1. `canary`: a new [`MeshRevision`](crate::config::MeshRevision) and tag `canary` → it,
//!    within the version skip policy ([`guards::skip_policy`]);
//! 2. `switch NS --to canary` (+ redeploy a workload), `verify`;
//! 3. `promote --yes`: tag `stable` → the canary's revision (one patch, so one table swap in
//!    every meshrev replica), `istio.io/rev: canary` namespaces → `stable`, tag `canary`
//!    removed; from here the upgrade cannot be revoked;
//! 4. `rollout`: rolling restarts of exactly the workloads still on an old revision;
//! 5. `unpublish`: the old revision deleted once no pod runs its sidecar.
//!
//! Or, instead of 3–5: `rollback NS`, then `revoke` (tag `canary` and its revision deleted).
//!
//! Layers:
//! - [`view`]: [`MeshView`], plain data (revisions, tags, namespace labels, pods, workloads)
//!   and the routing rules over it; built from Kubernetes objects by pure conversions;
//! - [`guards`]: pure functions over a view that allow or refuse each step, listing the
//!   objects that block it. Shared by the CLI and the validating webhook
//!   ([`crate::admission::validate`]);
//! - [`status`]: the phase and the per-namespace, per-workload report;
//! - [`rollout`]: rollout completion, the way `kubectl rollout status` judges it;
//! - [`cluster`]: the Kubernetes calls (LISTs that build a view, patches, dry-run probes);
//! - [`ops`] and [`cli`]: the subcommands.

pub mod cli;
pub mod cluster;
pub mod guards;
pub mod ops;
pub mod rollout;
pub mod status;
pub mod view;

pub use guards::{Blocker, Refusal, skip_policy};
pub use status::{Phase, StatusReport};
pub use view::MeshView;

/// Annotation of injected pods naming their revision (set by the injector).
pub const ANNOTATION_REV: &str = "istio.io/rev";
/// Annotation on a `MeshRevision` that lets it be deleted while pods still run its sidecar
/// (`meshrev upgrade unpublish --force` sets it; so can `kubectl annotate`).
pub const ANNOTATION_FORCE_DELETE: &str = "meshrev.io/force-delete";
/// Annotation on tag `stable` recording the revision it pointed at before a promotion.
pub const ANNOTATION_PROMOTED_FROM: &str = "meshrev.io/promoted-from";
/// The pod-template annotation `kubectl rollout restart` sets.
pub const ANNOTATION_RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
