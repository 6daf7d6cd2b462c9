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
//!   kept in the kube-free [`crate::core::view`], routed by [`crate::core::route()`]; this
//!   module adds its pure conversions from Kubernetes objects;
//! - [`guards`] ([`crate::core::guards`]): pure functions over a view that allow or refuse
//!   each step, listing the objects that block it. Shared by the CLI and the validating
//!   webhook ([`crate::admission::validate`](mod@crate::admission::validate));
//! - [`status`]: the phase and the per-namespace, per-workload report;
//! - [`rollout`]: rollout completion, the way `kubectl rollout status` judges it;
//! - [`cluster`]: the Kubernetes calls (LISTs that build a view, patches, dry-run probes);
//! - [`ops`]: each step as plan → execute → outcome, over a `kube::Client` (unit-tested
//!   against a mock API server), no clap and no printing;
//! - [`cli`]: the flags, and the rendering of plans, events and outcomes.

pub(crate) mod cli;
pub(crate) mod cluster;
pub(crate) mod ops;
pub(crate) mod rollout;
pub(crate) mod status;
pub(crate) mod view;

pub(crate) use crate::core::guards;
pub(crate) use cluster::identify;
pub(crate) use view::MeshView;
