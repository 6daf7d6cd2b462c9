//! The configuration model: what operators write with kubectl.
//!
//! Two cluster-scoped CRDs in API group `meshrev.io/v1alpha1`:
//! - [`MeshRevision`] (`mrev`): one control-plane revision and the sidecar it injects;
//! - [`RevisionTag`] (`rtag`): a movable name (`stable`, `canary`, …) for a revision.
//!
//! A *table file* is a multi-document YAML of these objects plus optional `Namespace`
//! objects (for their labels): exactly what `kubectl apply -f` takes. These types carry no
//! behaviour beyond parsing; the [`crate::table`] module validates them and builds the table.

mod crd;
mod file;

pub use crd::*;
pub use file::{ConfigObjects, EMBEDDED_DEFAULT, NamespaceObject, ParseError, parse_objects};
