//! A revision's control plane: which istiod Deployment it is ([`ControlPlaneRef`]) and
//! whether it is ready ([`ControlPlaneState`]), judged from a small, kube-free summary of
//! the Deployment ([`DeploymentSummary`]).
//!
//! The controller (from its watch), the upgrade CLI (from a LIST) and the tests fill a
//! [`DeploymentSummary`]; everything that decides (the `ControlPlaneReady` condition, the
//! guards, the injection warning) goes through [`ControlPlaneState::of`], so they agree.
//!
//! Which Deployments are looked at: those labelled [`CONTROL_PLANE_LABEL`] (`istio.io/rev`).
//! Istio's `istio-discovery` chart (and so `istioctl install`, which renders it) labels every
//! istiod Deployment with it (`istio.io/rev: <revision>`, `default` for the default
//! revision), so watching that label sees every Istio-installed control plane and not the
//! thousands of other Deployments of a cluster. A Deployment named in
//! `spec.controlPlane` without the label is reported as not found, with a message that says
//! to label it.

use std::fmt;

use super::vocab::LABEL_REV;

/// The namespace of a revision's istiod unless `spec.controlPlane.namespace` says otherwise.
pub(crate) const DEFAULT_NAMESPACE: &str = "istio-system";
/// The label a Deployment must carry for meshrev to see it as a control plane (the label
/// selector of the controller's watch and of the CLI's LIST: the label exists).
pub(crate) const CONTROL_PLANE_LABEL: &str = LABEL_REV;
/// The `ControlPlaneReady` condition type on a `MeshRevision`.
pub(crate) const CONDITION: &str = "ControlPlaneReady";

/// A revision's istiod Deployment: namespace and name.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ControlPlaneRef {
    pub(crate) namespace: String,
    pub(crate) name: String,
}

impl ControlPlaneRef {
    /// The Deployment of `revision`: `spec.controlPlane`'s `name` and `namespace` where
    /// set, else `istiod-<revision>` in `istio-system`. (Istio names the *default*
    /// revision's istiod plain `istiod`: such a revision must say so in
    /// `spec.controlPlane.name`, as `meshrev adopt` does.)
    pub(crate) fn resolve(revision: &str, name: Option<&str>, namespace: Option<&str>) -> Self {
        let non_empty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_string);
        ControlPlaneRef {
            namespace: non_empty(namespace).unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
            name: non_empty(name).unwrap_or_else(|| format!("istiod-{revision}")),
        }
    }
}

/// `istio-system/istiod-1-23-6`.
impl fmt::Display for ControlPlaneRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What readiness is judged from: a Deployment's generation, desired replicas and status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DeploymentSummary {
    /// `metadata.generation`.
    pub(crate) generation: Option<i64>,
    /// `status.observedGeneration`.
    pub(crate) observed_generation: Option<i64>,
    /// `spec.replicas` (Kubernetes' default is 1).
    pub(crate) replicas: i32,
    /// `status.availableReplicas`.
    pub(crate) available_replicas: i32,
    /// The `Available` condition's status: `Some(true)` for `True`, `Some(false)` for
    /// `False`/`Unknown`, `None` without the condition.
    pub(crate) available: Option<bool>,
}

impl DeploymentSummary {
    /// A Deployment with `replicas` replicas, all available (tests and fixtures).
    #[cfg(test)]
    pub(crate) fn ready(replicas: i32) -> Self {
        DeploymentSummary {
            generation: Some(1),
            observed_generation: Some(1),
            replicas,
            available_replicas: replicas,
            available: Some(true),
        }
    }

    /// A Deployment of one replica, none available yet (tests and fixtures).
    #[cfg(test)]
    pub(crate) fn unavailable() -> Self {
        DeploymentSummary {
            available_replicas: 0,
            available: Some(false),
            ..Self::ready(1)
        }
    }
}

/// A control plane's state, as shown (`Available 1/1`, `NotFound`, `Progressing 0/1
/// available`) and as the guards judge it ([`ControlPlaneState::ready`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ControlPlaneState {
    /// At least one replica available, the `Available` condition not false, and the status
    /// is of the current generation.
    Available { available: i32, desired: i32 },
    /// No such Deployment labelled `istio.io/rev` (absent, or unlabelled).
    NotFound,
    /// `spec.replicas: 0`.
    ScaledToZero,
    /// Not (yet) available: no replica available, or the `Available` condition false, or
    /// the status not yet observed for the current generation.
    Progressing {
        available: i32,
        desired: i32,
        /// `status.observedGeneration` trails `metadata.generation` (the Deployment
        /// controller has not looked at the latest spec yet).
        stale: bool,
    },
}

impl ControlPlaneState {
    /// Judges a Deployment (`None`: not found).
    pub(crate) fn of(d: Option<&DeploymentSummary>) -> Self {
        let Some(d) = d else {
            return ControlPlaneState::NotFound;
        };
        if d.replicas <= 0 {
            return ControlPlaneState::ScaledToZero;
        }
        let stale = match (d.generation, d.observed_generation) {
            (Some(g), Some(o)) => o < g,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !stale && d.available_replicas >= 1 && d.available != Some(false) {
            ControlPlaneState::Available {
                available: d.available_replicas,
                desired: d.replicas,
            }
        } else {
            ControlPlaneState::Progressing {
                available: d.available_replicas.max(0),
                desired: d.replicas,
                stale,
            }
        }
    }

    /// Ready to serve the revision's sidecars.
    pub(crate) fn ready(&self) -> bool {
        matches!(self, ControlPlaneState::Available { .. })
    }

    /// The condition's `reason` (and the `Control-Plane` column of `kubectl get mrev`).
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            ControlPlaneState::Available { .. } => "Available",
            ControlPlaneState::NotFound => "NotFound",
            ControlPlaneState::ScaledToZero => "ScaledToZero",
            ControlPlaneState::Progressing { .. } => "Progressing",
        }
    }
}

/// `Available 2/2`, `NotFound`, `ScaledToZero`, `Progressing 0/1 available`,
/// `Progressing 1/1 available, new spec not yet observed`.
impl fmt::Display for ControlPlaneState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlPlaneState::Available { available, desired } => {
                write!(f, "Available {available}/{desired}")
            }
            ControlPlaneState::NotFound => f.write_str("NotFound"),
            ControlPlaneState::ScaledToZero => f.write_str("ScaledToZero"),
            ControlPlaneState::Progressing {
                available,
                desired,
                stale,
            } => {
                write!(f, "Progressing {available}/{desired} available")?;
                if *stale {
                    f.write_str(", new spec not yet observed")?;
                }
                Ok(())
            }
        }
    }
}

/// A revision's control plane and its state: what the condition, the guards and
/// `meshrev upgrade status` show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ControlPlane {
    pub(crate) deployment: ControlPlaneRef,
    pub(crate) state: ControlPlaneState,
}

impl ControlPlane {
    pub(crate) fn ready(&self) -> bool {
        self.state.ready()
    }

    /// One sentence naming the Deployment and its state, for the condition's message and
    /// refusals: `Deployment istio-system/istiod-1-23-6: Progressing 0/1 available`. A
    /// Deployment not found says where meshrev looked and how to fix it.
    pub(crate) fn describe(&self) -> String {
        let d = &self.deployment;
        match &self.state {
            ControlPlaneState::NotFound => format!(
                "Deployment {d}: NotFound (no Deployment of that name labelled {CONTROL_PLANE_LABEL} in namespace {}; install the revision's istiod, label it {CONTROL_PLANE_LABEL}, or set spec.controlPlane)",
                d.namespace
            ),
            state => format!("Deployment {d}: {state}"),
        }
    }

    /// The warning the injection webhook adds for a pod of `revision` while this control
    /// plane is not ready. Built once per table (the controller republishes on readiness
    /// changes only), never per request. Names the state by its reason only, so a replica
    /// count changing does not call for a new table.
    pub(crate) fn injection_warning(&self, revision: &str) -> String {
        format!(
            "meshrev: revision {revision}'s control plane (Deployment {}) is not ready ({}): the sidecar was injected, but it gets no configuration until istiod is available",
            self.deployment,
            self.state.reason()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(replicas: i32, available: i32, cond: Option<bool>) -> DeploymentSummary {
        DeploymentSummary {
            generation: Some(2),
            observed_generation: Some(2),
            replicas,
            available_replicas: available,
            available: cond,
        }
    }

    #[test]
    fn default_and_explicit_refs() {
        let r = ControlPlaneRef::resolve("1-23-6", None, None);
        assert_eq!(r.to_string(), "istio-system/istiod-1-23-6");
        let r = ControlPlaneRef::resolve("default", Some("istiod"), None);
        assert_eq!(r.to_string(), "istio-system/istiod");
        let r = ControlPlaneRef::resolve("x", Some(""), Some("mesh"));
        assert_eq!(r.to_string(), "mesh/istiod-x", "empty means unset");
    }

    #[test]
    fn readiness_from_the_summary() {
        let st = |d: Option<DeploymentSummary>| ControlPlaneState::of(d.as_ref());
        assert_eq!(st(None), ControlPlaneState::NotFound);
        assert!(!st(None).ready());
        let ok = st(Some(summary(2, 2, Some(true))));
        assert!(ok.ready());
        assert_eq!(ok.to_string(), "Available 2/2");
        assert_eq!(ok.reason(), "Available");
        // No condition at all (a hand-written status): the count decides.
        assert!(st(Some(summary(1, 1, None))).ready());
        // Nothing available yet.
        let p = st(Some(summary(1, 0, Some(false))));
        assert!(!p.ready());
        assert_eq!(p.to_string(), "Progressing 0/1 available");
        assert_eq!(p.reason(), "Progressing");
        // Replicas available but Kubernetes says minimum availability is not met.
        assert!(!st(Some(summary(3, 1, Some(false)))).ready());
        // Scaled to zero: never ready, whatever the status says.
        let z = st(Some(summary(0, 1, Some(true))));
        assert_eq!(z, ControlPlaneState::ScaledToZero);
        assert!(!z.ready());
        // A status older than the spec (just scaled, just edited): not ready until seen.
        let mut d = summary(1, 1, Some(true));
        d.generation = Some(3);
        let s = st(Some(d.clone()));
        assert!(!s.ready());
        assert_eq!(
            s.to_string(),
            "Progressing 1/1 available, new spec not yet observed"
        );
        d.observed_generation = None;
        assert!(!st(Some(d)).ready(), "never observed");
    }

    #[test]
    fn descriptions_name_the_deployment_and_state() {
        let cp = ControlPlane {
            deployment: ControlPlaneRef::resolve("1-23-6", None, None),
            state: ControlPlaneState::NotFound,
        };
        let d = cp.describe();
        assert!(
            d.starts_with("Deployment istio-system/istiod-1-23-6: NotFound"),
            "{d}"
        );
        assert!(d.contains("label it istio.io/rev"), "{d}");
        let w = cp.injection_warning("1-23-6");
        assert!(
            w.contains("revision 1-23-6") && w.contains("istio-system/istiod-1-23-6"),
            "{w}"
        );
        let cp = ControlPlane {
            state: ControlPlaneState::of(Some(&summary(1, 0, Some(false)))),
            ..cp
        };
        assert_eq!(
            cp.describe(),
            "Deployment istio-system/istiod-1-23-6: Progressing 0/1 available"
        );
    }
}
