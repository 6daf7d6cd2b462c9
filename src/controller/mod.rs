//! The controller: kube-rs watches feed one `Index` of the cluster; its routing projection
//! becomes the injection table (one atomic swap in the [`crate::table::TableStore`]), its
//! `MeshView` is what `/validate` judges with, and the status writer (the replica holding
//! the `LeaseHandle`'s Lease) writes MeshRevision and RevisionTag status from it (see
//! `run`).
//!
//! Ownership: `ClusterView` shares the index. Only the controller's watch drivers mutate
//! it; `/validate` and the status writer read it.
//!
//! Crate-internal except [`metric_names`], which the manifests test checks dashboards and
//! alert rules against.

#[cfg(test)]
mod fake_api;
mod index;
pub(crate) mod lease;
mod run;
pub(crate) mod status;

use std::sync::{Arc, Mutex};

pub(crate) use index::{Index, Observed, node_supports_native_sidecars};
pub(crate) use lease::{Identity, LeaseHandle};
pub use run::metric_names;
pub(crate) use run::{ControllerError, run};

use crate::upgrade::MeshView;

/// A handle on the controller's [`Index`]; clones share it. Made by whoever wires the
/// controller (before the server starts, so `/validate` can hold it), filled by [`run`].
#[derive(Clone, Debug, Default)]
pub(crate) struct ClusterView {
    index: Arc<Mutex<Index>>,
}

impl ClusterView {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A snapshot for the upgrade guards, once every watch has listed; `None` before.
    pub(crate) fn view(&self) -> Option<MeshView> {
        self.with(|ix| ix.synced().then(|| ix.view()))
    }

    /// Revisions and tags only (what a guard of a write reads), once every watch has
    /// listed; `None` before.
    pub(crate) fn config_view(&self) -> Option<MeshView> {
        self.with(|ix| ix.synced().then(|| ix.config_view()))
    }

    /// Runs `f` on the index under its lock (never across an `.await`).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Index) -> R) -> R {
        // The index's methods do not panic; if one did, the poison is ignored rather than
        // taking `/validate` and the status writer down with it (the index may then be off
        // until the next relist of that kind).
        let mut ix = self.index.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut ix)
    }
}
