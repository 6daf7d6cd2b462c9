//! Liveness and readiness, shared by the server (which answers `/healthz` and `/readyz`
//! from it) and the controller (which registers and opens gates); neither imports the other.
//!
//! `/healthz` answers 200 while the process serves at all. `/readyz` answers 200 only when
//! a table is loaded, every registered [`Gate`] is ready, and the server is not shutting
//! down; otherwise 503 with the reasons (e.g. the names of the gates not ready yet).
//!
//! Ownership: one [`Readiness`] per server, created by the server
//! (`server::serve_with`).
//! The server sets "table loaded" and "shutting down"; each gate is opened by whoever
//! registered it (the controller opens one per watch once it has listed, and
//! [`CONTROLLER_GATE`] once it has published its first table). Gates never close again.

#![deny(missing_docs)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The gate the server registers (not ready) when the table comes from the cluster: the
/// controller opens it, with `readiness.gate(CONTROLLER_GATE).set_ready()`, once it has
/// published its first table. Until then `/readyz` lists it as not ready (the cluster's
/// table is not loaded yet).
pub const CONTROLLER_GATE: &str = "table";

/// Readiness of the server: shared (`Arc`) by the server and whoever registers gates.
#[derive(Debug, Default)]
pub struct Readiness {
    table_loaded: AtomicBool,
    shutting_down: AtomicBool,
    gates: Mutex<Vec<Gate>>,
}

/// One named condition of readiness. Cloning gives another handle to the same gate.
#[derive(Clone, Debug)]
pub struct Gate {
    name: Arc<str>,
    ready: Arc<AtomicBool>,
}

impl Gate {
    /// Opens the gate, for good.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
    /// Whether the gate is open.
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

impl Readiness {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The gate named `name`, registered (not ready) on first use; later calls with the
    /// same name return the same gate.
    pub fn gate(&self, name: &str) -> Gate {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = gates.iter().find(|g| &*g.name == name) {
            return g.clone();
        }
        let g = Gate {
            name: name.into(),
            ready: Arc::new(AtomicBool::new(false)),
        };
        gates.push(g.clone());
        g
    }

    /// Marks the table as loaded (the server does, once it has one to serve).
    pub(crate) fn set_table_loaded(&self) {
        self.table_loaded.store(true, Ordering::Release);
    }

    /// Marks the server as draining: never ready again.
    pub(crate) fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// `Ok` when ready, else why not (one line, for the `/readyz` body).
    pub(crate) fn status(&self) -> Result<(), String> {
        let mut reasons = Vec::new();
        if self.shutting_down.load(Ordering::Acquire) {
            reasons.push("shutting down".to_string());
        }
        if !self.table_loaded.load(Ordering::Acquire) {
            reasons.push("no table loaded".to_string());
        }
        let gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        let waiting: Vec<&str> = gates
            .iter()
            .filter(|g| !g.is_ready())
            .map(|g| &*g.name)
            .collect();
        if !waiting.is_empty() {
            reasons.push(format!("gates not ready: {}", waiting.join(", ")));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_table_and_gates_and_no_shutdown() {
        let r = Readiness::new();
        assert_eq!(r.status().unwrap_err(), "no table loaded");
        r.set_table_loaded();
        assert!(r.status().is_ok());
        let g = r.gate(CONTROLLER_GATE);
        let err = r.status().unwrap_err();
        assert!(err.contains("gates not ready: table"), "{err}");
        r.gate(CONTROLLER_GATE).set_ready();
        assert!(g.is_ready() && r.status().is_ok());
        r.set_shutting_down();
        assert_eq!(r.status().unwrap_err(), "shutting down");
    }
}
