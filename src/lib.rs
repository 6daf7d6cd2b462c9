//! meshrev: revision- and tag-aware sidecar injection for Istio-compatible meshes, and the
//! tooling that makes control-plane canary upgrades safe.
//!
//! Where things live (linked modules are the library's public API, what `tests/`,
//! `benches/`, `examples/` and `fuzz/` use; the others are crate-internal):
//! - `core`: the kube-free domain core: Istio's vocabulary, the one router, the revision
//!   of a pod, validation, the version skip policy and the upgrade guards.
//! - [`config`]: the kubectl-managed configuration model (the `MeshRevision` and
//!   `RevisionTag` CRDs) and table files (multi-document YAML of those objects).
//! - [`table`]: the immutable revision table built from that configuration, and the
//!   [`table::TableStore`] that publishes it with one atomic swap.
//! - [`router`]: the webhook's routing step: the core's router over a table, then the
//!   injector.
//! - [`injector`]: turns a routing decision into an RFC 6902 JSON Patch from fragments that were
//!   rendered once per revision.
//! - [`admission`]: the AdmissionReview wire format: parse a request, write a reply.
//! - [`server`]: the TLS webhook server in parts (TLS server, inject and validate
//!   services, admin listener), certificates and metrics; takes plain options.
//! - `runtime`: `meshrev serve` as a process (flags, client, signals, the controller,
//!   the Lease hand-off); runtime → {server, controller}, never controller → server.
//! - [`health`]: readiness gates, shared by the server and the controller.
//! - `telemetry`: the metrics registry and table gauges, shared the same way.
//! - [`controller`]: the kube-rs watches that feed one cluster index, from which it
//!   publishes the table and `/validate`'s view; the status writer and its Lease.
//! - `upgrade`: `meshrev upgrade …` (plan → execute → outcome over the cluster) and the
//!   conversions from Kubernetes objects into the core's view.
//! - [`cli`]: the `meshrev` command line.
//! - [`yaml`]: YAML in (depth-limited, one document at a time) and out (YAML 1.1-safe).
//! - `errors`: rendering typed errors with their causes.
//!
//! ARCHITECTURE.md (at the repository root) has the module map by layer, who owns which
//! state, one AdmissionReview from socket to patch, one watch event from the API server to
//! the table swap, and the module dependency list (`tests/architecture.rs` keeps it acyclic).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub(crate) mod adopt;
pub mod cli;
pub mod config;
pub mod controller;
pub(crate) mod core;
mod errors;
pub mod health;
pub mod injector;
pub mod router;
mod runtime;
pub mod server;
pub mod table;
pub(crate) mod telemetry;
pub(crate) mod upgrade;
pub mod yaml;
