//! What the server and the controller both report to, without either importing the other:
//! the process's Prometheus [`Registry`] and the gauges of the table being served.
//!
//! Ownership: the server creates one [`Telemetry`] with its metrics; the runtime hands a
//! clone to the controller. Whoever publishes a table (the server at startup and its
//! table-file watcher, or the controller) calls [`TableGauges::observe`] after the publish. The
//! registry is only added to (collectors registered once at startup) and gathered.

#![deny(missing_docs)]

use prometheus::{IntGauge, Registry};

use crate::table::Table;

/// The registry metrics are registered in, and the table gauges. Cloning gives another
/// handle to the same registry and gauges.
#[derive(Clone)]
pub(crate) struct Telemetry {
    /// Every collector of the process, gathered by the admin listener's `/metrics`.
    pub(crate) registry: Registry,
    /// `meshrev_table_generation` and `meshrev_table_revisions`.
    pub(crate) table: TableGauges,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// A fresh registry with the table gauges registered (at 0).
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let table = TableGauges::register(&registry)?;
        Ok(Telemetry { registry, table })
    }
}

/// The gauges describing the table being served; set by whoever publishes it.
#[derive(Clone, Debug)]
pub(crate) struct TableGauges {
    generation: IntGauge,
    revisions: IntGauge,
}

impl TableGauges {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let generation = IntGauge::new(
            "meshrev_table_generation",
            "Generation of the revision table being served.",
        )?;
        let revisions = IntGauge::new(
            "meshrev_table_revisions",
            "Revisions in the table being served.",
        )?;
        registry.register(Box::new(generation.clone()))?;
        registry.register(Box::new(revisions.clone()))?;
        Ok(TableGauges {
            generation,
            revisions,
        })
    }

    /// Records the table now being served. Call after every publish.
    pub(crate) fn observe(&self, table: &Table) {
        self.generation
            .set(i64::try_from(table.generation).unwrap_or(i64::MAX));
        self.revisions
            .set(i64::try_from(table.revision_count()).unwrap_or(i64::MAX));
    }
}
