//! The controller: kube-rs watches on MeshRevision, RevisionTag and Namespace that rebuild
//! the revision table and publish it with one atomic swap (see [`run`]).

mod run;
pub mod status;

pub use run::run;
