//! The `meshrev upgrade` operations as plan → execute → report.
//!
//! Each step has a `plan_*` function that reads the cluster (through [`cluster`]), checks
//! the step's guard ([`guards`]) and returns a plan: the mutating API calls it will make and
//! why ([`PlannedCall`]), plus what the report needs. `execute_*` makes those calls,
//! reporting each one as an [`Event`] to a sink as it happens (a rollout takes minutes),
//! and returns an outcome: what changed. Read-only steps (`status`, `verify`) return a
//! report. Nothing here prints, parses flags or knows clap: the CLI (`upgrade::cli`) builds
//! the options, renders events and outcomes, and asks for confirmation.
//!
//! State: none is kept between calls. The cluster owns every object; a plan is a snapshot
//! of what the cluster held when it was made, owned by the caller, and `execute_*` mutates
//! only the objects its plan names.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

// tokio's clock, so that tests with a paused clock pass deadlines without waiting.
use tokio::time::Instant;

use kube::Client;

use crate::config::MeshRevisionSpec;
use crate::core::{TAG_CANARY, TAG_STABLE};

use super::cluster::{self, ClusterError, Needs, PodDetail};
use super::guards::{self, BlockerKind, ControlPlanes, Refusal};
use super::rollout::Progress;
use super::status::StatusReport;
use super::view::{MeshView, NamespaceLabels, PodInfo, WorkloadId, WorkloadKind, WorkloadState};

/// A readiness refusal from the CLI also names `--force` (the webhook's does not: plain
/// `kubectl` gets no shortcut offered). `--force` skips the CLI's check and puts
/// [`ANNOTATION_FORCE_CONTROL_PLANE`](crate::core::ANNOTATION_FORCE_CONTROL_PLANE), naming
/// the revision, in the same write, so meshrev's validating webhook lets that write through.
fn force_hint(mut r: Refusal) -> Refusal {
    if r.blockers.iter().any(|b| b.kind == BlockerKind::Deployment) {
        r.fix.push_str(
            "; or rerun with --force to route to it anyway (the write then carries meshrev.io/force-control-plane, which meshrev's validating webhook honours for that revision only)",
        );
    }
    r
}

/// How long to wait for the injector to pick up a label or tag change before restarting.
pub(crate) const INJECTOR_DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(500);

/// Why an operation stopped. Each names the objects concerned and the fix.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpError {
    /// A guard refused the step (its blockers and fix are in the refusal).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A Kubernetes call failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(
        "no canary to verify: tag canary does not exist (deploy one: meshrev upgrade canary --revision R --version V)"
    )]
    NoCanary,
    #[error(
        "the canary {canary} is being promoted already; finish with meshrev upgrade promote --yes"
    )]
    CanaryBeingPromoted { canary: String },
    #[error(
        "no pod runs canary revision {canary} yet: switch a namespace (meshrev upgrade switch NAMESPACE --to canary) and redeploy a workload in it"
    )]
    NoCanaryPods { canary: String },
    #[error(
        "{} of {total} pod(s) on canary revision {canary} are not ready: {}\nfix: find out why (kubectl describe pod, the istio-proxy logs); if the canary is at fault: meshrev upgrade rollback NAMESPACE --restart",
        not_ready.len(),
        not_ready.join(", ")
    )]
    CanaryNotReady {
        canary: String,
        total: usize,
        /// `namespace/pod (phase)`.
        not_ready: Vec<String>,
    },
    #[error("namespace {namespace} does not exist\nfix: check the name (kubectl get namespaces)")]
    NamespaceNotFound { namespace: String },
    #[error("{}/{name} not found in the mesh{} (see meshrev upgrade status)", kind.as_str().to_ascii_lowercase(), namespace.as_ref().map(|n| format!(" in namespace {n}")).unwrap_or_default())]
    WorkloadNotFound {
        kind: WorkloadKind,
        name: String,
        namespace: Option<String>,
    },
    #[error("{}/{name} exists in {} namespaces ({}): pass --namespace", kind.as_str().to_ascii_lowercase(), namespaces.len(), namespaces.join(", "))]
    WorkloadAmbiguous {
        kind: WorkloadKind,
        name: String,
        namespaces: Vec<String>,
    },
    #[error(
        "not restarting {workload}: new pods would not get revision {expected}: {last} (checked with a dry-run pod for {}s)\nfix: check that meshrev is running and its MutatingWebhookConfiguration is installed, and meshrev upgrade status",
        INJECTOR_DEADLINE.as_secs()
    )]
    InjectorNotReady {
        workload: WorkloadId,
        expected: String,
        /// What the last dry-run pod showed.
        last: String,
    },
    #[error(
        "rollout of {workload} failed: {why}\nfix: see kubectl rollout status and the pods' events; rerun meshrev upgrade rollout once it is fixed"
    )]
    RolloutFailed { workload: WorkloadId, why: String },
    #[error(
        "timed out after {}s waiting for: {}\nfix: see kubectl rollout status and the pods' events; rerun meshrev upgrade rollout to continue",
        after.as_secs(),
        pending.join(", ")
    )]
    RolloutTimeout {
        after: Duration,
        /// `kind namespace/name (last progress)`.
        pending: Vec<String>,
    },
    #[error(
        "rolled out, but these pods do not run the expected revision: {}\nfix: check the injector (meshrev's logs and /metrics), then run meshrev upgrade rollout again",
        pods.join(", ")
    )]
    WrongRevision {
        /// `namespace/pod (revision)`.
        pods: Vec<String>,
    },
}

/// The object a planned call acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Object {
    MeshRevision(String),
    RevisionTag(String),
    Namespace(String),
    Workload(WorkloadId),
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::MeshRevision(n) => write!(f, "MeshRevision {n}"),
            Object::RevisionTag(n) => write!(f, "RevisionTag {n}"),
            Object::Namespace(n) => write!(f, "namespace {n}"),
            Object::Workload(id) => write!(f, "{id}"),
        }
    }
}

/// The HTTP method of a planned call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verb {
    Create,
    Patch,
    Delete,
}

impl Verb {
    /// The HTTP method.
    pub(crate) fn method(self) -> &'static str {
        match self {
            Verb::Create => "POST",
            Verb::Patch => "PATCH",
            Verb::Delete => "DELETE",
        }
    }
}

/// One mutating API call a plan will make, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PlannedCall {
    pub(crate) verb: Verb,
    pub(crate) object: Object,
    pub(crate) why: String,
}

impl PlannedCall {
    fn new(verb: Verb, object: Object, why: impl Into<String>) -> Self {
        PlannedCall {
            verb,
            object,
            why: why.into(),
        }
    }
}

impl fmt::Display for PlannedCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.verb.method(), self.object, self.why)
    }
}

/// What happened during `execute_*`, reported as it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    RevisionCreated {
        name: String,
        version: String,
        proxy_image: String,
    },
    RevisionExists {
        name: String,
    },
    TagCreated {
        tag: String,
        revision: String,
    },
    TagExists {
        tag: String,
        revision: String,
    },
    /// A namespace's injection labels changed; new pods get `revision`.
    Relabelled {
        namespace: String,
        before: NamespaceLabels,
        after: NamespaceLabels,
        revision: String,
    },
    /// A namespace had the labels already.
    LabelsUnchanged {
        namespace: String,
        labels: NamespaceLabels,
        revision: String,
    },
    /// The workloads of `namespace` that must be redeployed for the change to reach them.
    Redeploy {
        namespace: String,
        targets: Vec<WorkloadState>,
    },
    /// Promotion step 1: tag stable moved (`previous`: where it pointed).
    StableMoved {
        revision: String,
        previous: String,
    },
    /// Promotion step 1 was done by an earlier run.
    StableAlreadyMoved {
        revision: String,
    },
    /// Promotion step 2: no namespace to relabel.
    NoCanaryNamespaces,
    /// Promotion step 2: a namespace relabelled `istio.io/rev=stable`.
    NamespacePromoted {
        namespace: String,
    },
    /// A tag deleted (`existed: false`: gone already).
    TagDeleted {
        tag: String,
        existed: bool,
    },
    /// A revision deleted (`existed: false`: gone already).
    RevisionDeleted {
        name: String,
        existed: bool,
    },
    /// Rolling restarts: batch `index` (1-based) of `count` starts.
    Batch {
        index: usize,
        count: usize,
    },
    /// A workload left alone: `why`.
    Skipped {
        workload: String,
        why: SkipWhy,
    },
    /// Restart `index` (1-based) of `total`: `workload` from revisions `from` to `to`.
    Restarted {
        index: usize,
        total: usize,
        workload: String,
        from: String,
        to: String,
    },
    /// A restarted workload completed its rollout, `after` the batch started.
    RolledOut {
        workload: WorkloadId,
        after: Duration,
    },
    /// A restarted workload is still rolling (reported when the reason changes).
    Waiting {
        workload: WorkloadId,
        why: String,
    },
}

/// Why a rollout skipped a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SkipWhy {
    /// The Deployment is paused.
    Paused,
    /// `updateStrategy: OnDelete`.
    OnDelete,
}

/// Where execution reports its [`Event`]s (the CLI prints them; tests collect them).
pub(crate) type Sink<'a> = &'a mut (dyn FnMut(Event) + Send);

/// `1-22-6`, or `1-22-6:1,1-23-6:2` when mixed: the revisions a workload's pods run.
pub(crate) fn describe_revisions(w: &WorkloadState) -> String {
    let m: BTreeMap<String, usize> = w
        .revisions
        .iter()
        .map(|(r, n)| (r.clone().unwrap_or_else(|| "no sidecar".into()), *n))
        .collect();
    super::status::sidecars(&m)
}

// ---- status ----

/// `status`: the phase, revisions, tags, namespaces and workloads.
pub(crate) async fn status(client: &Client) -> Result<StatusReport, OpError> {
    let view = cluster::load_view(client, &Needs::all()).await?;
    Ok(StatusReport::new(&view))
}

// ---- canary ----

/// What `canary` deploys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CanaryOptions {
    /// Name of the new MeshRevision (`1-23-6`).
    pub(crate) revision: String,
    /// Its version (`1.23.6`).
    pub(crate) version: String,
    /// Sidecar image; default `docker.io/istio/proxyv2:VERSION`.
    pub(crate) proxy_image: Option<String>,
    /// istiod's address; default `istiod-REVISION.istio-system.svc:15012`.
    pub(crate) discovery_address: Option<String>,
    /// Whether the canary's istiod must be available first (`--force` skips it).
    pub(crate) control_planes: ControlPlanes,
}

impl CanaryOptions {
    /// The sidecar image the revision gets.
    pub(crate) fn proxy_image(&self) -> String {
        self.proxy_image
            .clone()
            .unwrap_or_else(|| format!("docker.io/istio/proxyv2:{}", self.version))
    }
}

/// The plan of `canary`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CanaryPlan {
    pub(crate) options: CanaryOptions,
    pub(crate) create_revision: bool,
    pub(crate) create_tag: bool,
    /// Stable's revision and version (for the report).
    pub(crate) stable: String,
    pub(crate) stable_version: String,
}

impl CanaryPlan {
    /// The calls `execute_canary` makes.
    pub(crate) fn calls(&self) -> Vec<PlannedCall> {
        let o = &self.options;
        let mut calls = Vec::new();
        if self.create_revision {
            calls.push(PlannedCall::new(
                Verb::Create,
                Object::MeshRevision(o.revision.clone()),
                format!(
                    "the canary control plane's revision (version {})",
                    o.version
                ),
            ));
        }
        if self.create_tag {
            calls.push(PlannedCall::new(
                Verb::Create,
                Object::RevisionTag(TAG_CANARY.into()),
                format!("tag canary → {}", o.revision),
            ));
        }
        calls
    }
}

/// Plans `canary`: guarded by the skip policy and an existing canary.
pub(crate) async fn plan_canary(
    client: &Client,
    options: CanaryOptions,
) -> Result<CanaryPlan, OpError> {
    let view = cluster::load_view(client, &Needs::config()).await?;
    let plan = guards::canary(
        &view,
        &options.revision,
        &options.version,
        options.control_planes,
    )
    .map_err(force_hint)?;
    let stable = view.stable().unwrap_or_default().to_string();
    let stable_version = view
        .revisions
        .get(&stable)
        .map(|r| r.version.clone())
        .unwrap_or_default();
    Ok(CanaryPlan {
        options,
        create_revision: plan.create_revision,
        create_tag: plan.create_tag,
        stable,
        stable_version,
    })
}

/// What `canary` created (`false`: it existed already).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CanaryOutcome {
    pub(crate) revision_created: bool,
    pub(crate) tag_created: bool,
}

/// Creates the canary's revision and tag (each only if the plan says so).
pub(crate) async fn execute_canary(
    client: &Client,
    plan: &CanaryPlan,
    sink: Sink<'_>,
) -> Result<CanaryOutcome, OpError> {
    let o = &plan.options;
    if plan.create_revision {
        let spec = MeshRevisionSpec {
            version: o.version.clone(),
            proxy_image: o.proxy_image.clone(),
            discovery_address: o.discovery_address.clone(),
            template: None,
            ..Default::default()
        };
        cluster::create_revision(client, &o.revision, spec).await?;
        sink(Event::RevisionCreated {
            name: o.revision.clone(),
            version: o.version.clone(),
            proxy_image: o.proxy_image(),
        });
    } else {
        sink(Event::RevisionExists {
            name: o.revision.clone(),
        });
    }
    if plan.create_tag {
        let forced = o.control_planes == ControlPlanes::Force;
        cluster::create_tag(client, TAG_CANARY, &o.revision, forced).await?;
        sink(Event::TagCreated {
            tag: TAG_CANARY.into(),
            revision: o.revision.clone(),
        });
    } else {
        sink(Event::TagExists {
            tag: TAG_CANARY.into(),
            revision: o.revision.clone(),
        });
    }
    Ok(CanaryOutcome {
        revision_created: plan.create_revision,
        tag_created: plan.create_tag,
    })
}

// ---- switch and rollback ----

/// The plan of `switch` and `rollback`: relabel one namespace, list (and optionally
/// restart) the workloads that must be redeployed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RelabelPlan {
    pub(crate) namespace: String,
    pub(crate) before: NamespaceLabels,
    pub(crate) after: NamespaceLabels,
    /// The revision new pods of the namespace get.
    pub(crate) revision: String,
    /// Workloads to redeploy (with the new labels in force).
    pub(crate) targets: Vec<WorkloadState>,
    /// Restart `targets` too.
    pub(crate) restart: bool,
    /// `--force`: the relabel names `revision` in the namespace's force annotation, so the
    /// validating webhook lets it through while that istiod is not ready.
    pub(crate) forced: bool,
}

impl RelabelPlan {
    /// The labels change (else the namespace has them already).
    pub(crate) fn relabels(&self) -> bool {
        self.before != self.after
    }

    /// The calls `execute_relabel` makes.
    pub(crate) fn calls(&self) -> Vec<PlannedCall> {
        let mut calls = Vec::new();
        if self.relabels() {
            calls.push(PlannedCall::new(
                Verb::Patch,
                Object::Namespace(self.namespace.clone()),
                format!(
                    "{} → {}: new pods get revision {}",
                    self.before.describe(),
                    self.after.describe(),
                    self.revision
                ),
            ));
        }
        if self.restart {
            calls.extend(restart_calls(&self.targets));
        }
        calls
    }
}

fn restart_calls(targets: &[WorkloadState]) -> Vec<PlannedCall> {
    targets
        .iter()
        .filter(|w| !w.paused && !w.on_delete)
        .filter_map(|w| {
            let id = w.id.clone()?;
            let to = w.target.revision()?;
            Some(PlannedCall::new(
                Verb::Patch,
                Object::Workload(id),
                format!("rolling restart: {} → {to}", describe_revisions(w)),
            ))
        })
        .collect()
}

/// Plans `switch NS --to TAG [--restart]`: the workloads whose pods run another revision
/// than the namespace will select are to be redeployed. Refused while the tag's revision
/// has no ready control plane, unless `check` is [`ControlPlanes::Force`].
pub(crate) async fn plan_switch(
    client: &Client,
    namespace: &str,
    to: &str,
    restart: bool,
    check: ControlPlanes,
) -> Result<RelabelPlan, OpError> {
    let view = cluster::load_view(client, &Needs::namespace(namespace)).await?;
    let labels = guards::switch(&view, namespace, to, check).map_err(force_hint)?;
    Ok(relabel_plan(view, namespace, labels, restart, check, |w| {
        w.needs_upgrade()
    }))
}

/// Plans `rollback NS [--restart]`: back to stable; the workloads that run the canary are
/// to be redeployed.
pub(crate) async fn plan_rollback(
    client: &Client,
    namespace: &str,
    restart: bool,
    check: ControlPlanes,
) -> Result<RelabelPlan, OpError> {
    let view = cluster::load_view(client, &Needs::namespace(namespace)).await?;
    let labels = guards::rollback(&view, namespace, check).map_err(force_hint)?;
    let canary = view.canary().unwrap_or_default().to_string();
    Ok(relabel_plan(view, namespace, labels, restart, check, |w| {
        w.runs(&canary)
    }))
}

fn relabel_plan(
    mut view: MeshView,
    namespace: &str,
    labels: NamespaceLabels,
    restart: bool,
    check: ControlPlanes,
    pick: impl Fn(&WorkloadState) -> bool,
) -> RelabelPlan {
    let before = view.namespace(namespace);
    let revision = labels
        .rev
        .as_deref()
        .and_then(|t| view.tag_revision(t))
        .unwrap_or_default()
        .to_string();
    view.namespaces
        .insert(namespace.to_string(), labels.clone());
    let targets = view
        .workload_states()
        .into_iter()
        .filter(|w| w.namespace == namespace && pick(w))
        .collect();
    RelabelPlan {
        namespace: namespace.to_string(),
        before,
        after: labels,
        revision,
        targets,
        restart,
        forced: check == ControlPlanes::Force,
    }
}

/// What `switch`/`rollback` changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RelabelOutcome {
    pub(crate) relabelled: bool,
    /// Restarted workloads and the revision their new pods get.
    pub(crate) restarted: Vec<(WorkloadId, String)>,
}

/// Relabels the namespace (if needed), reports the workloads to redeploy and, with
/// `restart`, restarts them all at once (not waiting for them).
pub(crate) async fn execute_relabel(
    client: &Client,
    plan: &RelabelPlan,
    sink: Sink<'_>,
) -> Result<RelabelOutcome, OpError> {
    let mut outcome = RelabelOutcome::default();
    if plan.relabels() {
        let forced = plan.forced.then_some(plan.revision.as_str());
        cluster::set_namespace_labels(client, &plan.namespace, &plan.after, forced).await?;
        outcome.relabelled = true;
        sink(Event::Relabelled {
            namespace: plan.namespace.clone(),
            before: plan.before.clone(),
            after: plan.after.clone(),
            revision: plan.revision.clone(),
        });
    } else {
        sink(Event::LabelsUnchanged {
            namespace: plan.namespace.clone(),
            labels: plan.after.clone(),
            revision: plan.revision.clone(),
        });
    }
    sink(Event::Redeploy {
        namespace: plan.namespace.clone(),
        targets: plan.targets.clone(),
    });
    if plan.restart && !plan.targets.is_empty() {
        let options = RestartOptions {
            max_in_flight: plan.targets.len(),
            wait: false,
            timeout: Duration::from_secs(600),
        };
        outcome.restarted = restart_workloads(client, &plan.targets, &options, sink).await?;
    }
    Ok(outcome)
}

// ---- verify ----

/// What `verify` found: the pods on the canary revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VerifyReport {
    pub(crate) canary: String,
    pub(crate) pods: Vec<PodInfo>,
}

impl VerifyReport {
    /// `Ok` when every pod on the canary is ready; else the pods that are not.
    pub(crate) fn check(&self) -> Result<(), OpError> {
        let not_ready: Vec<String> = self
            .pods
            .iter()
            .filter(|p| !p.ready || p.terminating)
            .map(|p| format!("{} ({})", p.key(), p.display_phase()))
            .collect();
        if not_ready.is_empty() {
            return Ok(());
        }
        Err(OpError::CanaryNotReady {
            canary: self.canary.clone(),
            total: self.pods.len(),
            not_ready,
        })
    }
}

/// `verify`: the pods on the canary revision (call [`VerifyReport::check`] for the verdict).
pub(crate) async fn verify(client: &Client) -> Result<VerifyReport, OpError> {
    let needs = Needs {
        namespaces: false,
        pods: PodDetail::Full,
        workloads: false,
        control_planes: false,
        namespace: None,
    };
    let view = cluster::load_view(client, &needs).await?;
    let Some(canary) = view.canary().map(str::to_string) else {
        return Err(OpError::NoCanary);
    };
    if view.stable() == Some(canary.as_str()) {
        return Err(OpError::CanaryBeingPromoted { canary });
    }
    let pods: Vec<PodInfo> = view.pods_on(&canary).cloned().collect();
    if pods.is_empty() {
        return Err(OpError::NoCanaryPods { canary });
    }
    Ok(VerifyReport { canary, pods })
}

// ---- promote ----

/// The plan of `promote`: the guard's plan and the namespaces' labels after step 2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PromotePlan {
    pub(crate) steps: guards::PromotePlan,
    /// The labels each namespace of `steps.relabel` gets.
    pub(crate) relabel: Vec<(String, NamespaceLabels)>,
    /// `--force`: tag stable's move names the canary's revision in its force annotation.
    pub(crate) forced: bool,
}

impl PromotePlan {
    /// An earlier run finished the promotion: nothing to do.
    pub(crate) fn is_done(&self) -> bool {
        self.steps.is_done()
    }

    /// The calls `execute_promote` makes.
    pub(crate) fn calls(&self) -> Vec<PlannedCall> {
        let s = &self.steps;
        let mut calls = Vec::new();
        if s.move_stable {
            calls.push(PlannedCall::new(
                Verb::Patch,
                Object::RevisionTag(TAG_STABLE.into()),
                format!("tag stable → {} (from {})", s.revision, s.previous),
            ));
        }
        for (ns, _) in &self.relabel {
            calls.push(PlannedCall::new(
                Verb::Patch,
                Object::Namespace(ns.clone()),
                "istio.io/rev=canary → istio.io/rev=stable",
            ));
        }
        if s.delete_canary {
            calls.push(PlannedCall::new(
                Verb::Delete,
                Object::RevisionTag(TAG_CANARY.into()),
                "the canary is stable now",
            ));
        }
        calls
    }
}

/// Plans `promote`; resumes where an interrupted promotion stopped. Refused while the
/// canary's control plane is not ready, unless `check` is [`ControlPlanes::Force`].
pub(crate) async fn plan_promote(
    client: &Client,
    check: ControlPlanes,
) -> Result<PromotePlan, OpError> {
    let view = cluster::load_view(client, &Needs::all()).await?;
    let steps = guards::promote(&view, check).map_err(force_hint)?;
    let relabel = steps
        .relabel
        .iter()
        .map(|ns| {
            let mut labels = view.namespace(ns);
            labels.rev = Some(TAG_STABLE.into());
            (ns.clone(), labels)
        })
        .collect();
    Ok(PromotePlan {
        steps,
        relabel,
        forced: check == ControlPlanes::Force,
    })
}

/// What `promote` left to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PromoteOutcome {
    /// Workloads whose pods still run an old revision.
    pub(crate) needs_upgrade: usize,
}

/// Promotes: tag stable → the canary's revision (recording the previous one), the
/// namespaces on tag canary relabelled stable, tag canary deleted.
pub(crate) async fn execute_promote(
    client: &Client,
    plan: &PromotePlan,
    sink: Sink<'_>,
) -> Result<PromoteOutcome, OpError> {
    let s = &plan.steps;
    if s.move_stable {
        let forced = plan.forced;
        cluster::move_tag(client, TAG_STABLE, &s.revision, Some(&s.previous), forced).await?;
        sink(Event::StableMoved {
            revision: s.revision.clone(),
            previous: s.previous.clone(),
        });
    } else {
        sink(Event::StableAlreadyMoved {
            revision: s.revision.clone(),
        });
    }
    if plan.relabel.is_empty() {
        sink(Event::NoCanaryNamespaces);
    }
    for (ns, labels) in &plan.relabel {
        // Same revision before and after (stable now points at it): never forced.
        cluster::set_namespace_labels(client, ns, labels, None).await?;
        sink(Event::NamespacePromoted {
            namespace: ns.clone(),
        });
    }
    let existed = cluster::delete_tag(client, TAG_CANARY).await?;
    sink(Event::TagDeleted {
        tag: TAG_CANARY.into(),
        existed,
    });
    let after = cluster::load_view(client, &Needs::all()).await?;
    let needs_upgrade = after
        .workload_states()
        .iter()
        .filter(|w| w.needs_upgrade())
        .count();
    Ok(PromoteOutcome { needs_upgrade })
}

// ---- rollout ----

/// What `rollout` restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RolloutOptions {
    /// Only workloads in this namespace.
    pub(crate) namespace: Option<String>,
    /// Only this workload.
    pub(crate) workload: Option<(WorkloadKind, String)>,
    pub(crate) restart: RestartOptions,
}

/// How a batch of rolling restarts runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RestartOptions {
    pub(crate) max_in_flight: usize,
    /// Wait for the last batch too.
    pub(crate) wait: bool,
    /// Per batch.
    pub(crate) timeout: Duration,
}

/// The plan of `rollout`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RolloutPlan {
    pub(crate) options: RolloutOptions,
    /// Workloads on an old revision that `rollout` restarts, in order.
    pub(crate) targets: Vec<WorkloadState>,
    /// Workloads on an old revision that no Deployment, StatefulSet or DaemonSet owns.
    pub(crate) unowned: Vec<WorkloadState>,
    /// `--workload` names a workload that runs its target revision already.
    pub(crate) up_to_date: Option<WorkloadState>,
}

impl RolloutPlan {
    /// The calls `execute_rollout` makes (after a dry-run pod per workload checks the
    /// injector).
    pub(crate) fn calls(&self) -> Vec<PlannedCall> {
        restart_calls(&self.targets)
    }

    /// The scope is narrowed by `--namespace` or `--workload`.
    pub(crate) fn scoped(&self) -> bool {
        self.options.namespace.is_some() || self.options.workload.is_some()
    }
}

/// What `rollout` lists: one namespace, or the whole cluster.
fn rollout_needs(namespace: Option<&str>) -> Needs {
    let needs = match namespace {
        Some(ns) => Needs::namespace(ns),
        None => Needs::all(),
    };
    // Restarts route pods by the revisions already chosen: no readiness check here.
    Needs {
        control_planes: false,
        ..needs
    }
}

/// Plans `rollout`: the workloads in scope whose pods run another revision than new pods
/// would get.
pub(crate) async fn plan_rollout(
    client: &Client,
    options: RolloutOptions,
) -> Result<RolloutPlan, OpError> {
    let view = cluster::load_view(client, &rollout_needs(options.namespace.as_deref())).await?;
    if let Some(ns) = &options.namespace
        && !view.namespaces.contains_key(ns)
    {
        return Err(OpError::NamespaceNotFound {
            namespace: ns.clone(),
        });
    }
    let states: Vec<WorkloadState> = view
        .workload_states()
        .into_iter()
        .filter(|w| {
            options
                .namespace
                .as_ref()
                .is_none_or(|ns| &w.namespace == ns)
        })
        .filter(|w| {
            options.workload.as_ref().is_none_or(|(k, n)| {
                w.id.as_ref()
                    .is_some_and(|id| id.kind == *k && &id.name == n)
            })
        })
        .collect();
    let mut plan = RolloutPlan {
        options,
        targets: Vec::new(),
        unowned: Vec::new(),
        up_to_date: None,
    };
    if let Some((kind, name)) = &plan.options.workload {
        match states.as_slice() {
            [] => {
                return Err(OpError::WorkloadNotFound {
                    kind: *kind,
                    name: name.clone(),
                    namespace: plan.options.namespace.clone(),
                });
            }
            [one] if !one.needs_upgrade() => {
                plan.up_to_date = Some(one.clone());
                return Ok(plan);
            }
            [_] => {}
            many => {
                return Err(OpError::WorkloadAmbiguous {
                    kind: *kind,
                    name: name.clone(),
                    namespaces: many.iter().map(|w| w.namespace.clone()).collect(),
                });
            }
        }
    }
    (plan.targets, plan.unowned) = states
        .into_iter()
        .filter(WorkloadState::needs_upgrade)
        .partition(WorkloadState::restartable);
    Ok(plan)
}

/// What `rollout` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RolloutOutcome {
    /// Restarted workloads and the revision their new pods get.
    pub(crate) restarted: Vec<(WorkloadId, String)>,
    /// With `wait`: workloads in scope still needing upgrade afterwards.
    pub(crate) left: Option<usize>,
}

/// Restarts the plan's targets in batches; with `wait`, checks afterwards that the new
/// pods run the expected revisions.
pub(crate) async fn execute_rollout(
    client: &Client,
    plan: &RolloutPlan,
    sink: Sink<'_>,
) -> Result<RolloutOutcome, OpError> {
    let opts = &plan.options.restart;
    let restarted = restart_workloads(client, &plan.targets, opts, sink).await?;
    if !opts.wait {
        return Ok(RolloutOutcome {
            restarted,
            left: None,
        });
    }
    // Every rollout completed: check the new pods run the revision that was expected.
    let after =
        cluster::load_view(client, &rollout_needs(plan.options.namespace.as_deref())).await?;
    let mut wrong = Vec::new();
    for (id, expected) in &restarted {
        for p in after
            .pods
            .iter()
            .filter(|p| !p.terminating && p.workload().as_ref() == Some(id))
        {
            if p.revision.as_deref() != Some(expected.as_str()) {
                wrong.push(format!(
                    "{} ({})",
                    p.key(),
                    p.revision.as_deref().unwrap_or("no sidecar")
                ));
            }
        }
    }
    if !wrong.is_empty() {
        return Err(OpError::WrongRevision { pods: wrong });
    }
    let left = after
        .workload_states()
        .iter()
        .filter(|w| w.needs_upgrade())
        .count();
    Ok(RolloutOutcome {
        restarted,
        left: Some(left),
    })
}

/// Restarts `targets` in batches of `max_in_flight`, waiting for each batch to complete
/// before the next (and for the last one with `wait`). Before each restart, waits until a
/// dry-run pod of the workload gets the expected revision from the injector, so a label or
/// tag change the injector has not seen yet cannot give new pods the old sidecar.
/// Returns the restarted workloads with their expected revision.
async fn restart_workloads(
    client: &Client,
    targets: &[WorkloadState],
    opts: &RestartOptions,
    sink: Sink<'_>,
) -> Result<Vec<(WorkloadId, String)>, OpError> {
    let mut restarted = Vec::new();
    let batches: Vec<&[WorkloadState]> = targets.chunks(opts.max_in_flight.max(1)).collect();
    let n = batches.len();
    let total = targets.len();
    for (i, batch) in batches.into_iter().enumerate() {
        if n > 1 {
            sink(Event::Batch {
                index: i + 1,
                count: n,
            });
        }
        let mut in_flight = Vec::new();
        for w in batch {
            let Some(id) = w.id.clone() else { continue };
            let Some(expected) = w.target.revision().map(str::to_string) else {
                continue;
            };
            let skip = if w.paused {
                Some(SkipWhy::Paused)
            } else if w.on_delete {
                Some(SkipWhy::OnDelete)
            } else {
                None
            };
            if let Some(why) = skip {
                sink(Event::Skipped {
                    workload: w.label(),
                    why,
                });
                continue;
            }
            wait_for_injector(client, &id, &expected).await?;
            cluster::restart(client, &id).await?;
            sink(Event::Restarted {
                index: restarted.len() + in_flight.len() + 1,
                total,
                workload: w.label(),
                from: describe_revisions(w),
                to: expected.clone(),
            });
            in_flight.push((id, expected));
        }
        let last = i + 1 == n;
        if !in_flight.is_empty() && (!last || opts.wait) {
            wait_batch(client, &in_flight, opts.timeout, sink).await?;
        }
        restarted.extend(in_flight);
    }
    Ok(restarted)
}

async fn wait_for_injector(
    client: &Client,
    id: &WorkloadId,
    expected: &str,
) -> Result<(), OpError> {
    let template = cluster::template(client, id).await?;
    let deadline = Instant::now() + INJECTOR_DEADLINE;
    loop {
        let last = match cluster::probe_injection(client, &id.namespace, &template).await {
            Ok(Some(r)) if r == expected => return Ok(()),
            Ok(Some(r)) => format!("it injects {r}"),
            Ok(None) => "it does not inject the pod".to_string(),
            Err(e) => format!("the dry-run pod was refused: {}", e.detail()),
        };
        if Instant::now() >= deadline {
            return Err(OpError::InjectorNotReady {
                workload: id.clone(),
                expected: expected.to_string(),
                last,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_batch(
    client: &Client,
    batch: &[(WorkloadId, String)],
    timeout: Duration,
    sink: Sink<'_>,
) -> Result<(), OpError> {
    let start = Instant::now();
    let mut pending: Vec<&WorkloadId> = batch.iter().map(|(id, _)| id).collect();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in pending {
            match cluster::progress(client, id).await? {
                Progress::Done => sink(Event::RolledOut {
                    workload: id.clone(),
                    after: start.elapsed(),
                }),
                Progress::Failed(why) => {
                    return Err(OpError::RolloutFailed {
                        workload: id.clone(),
                        why,
                    });
                }
                Progress::Waiting(why) => {
                    let key = id.to_string();
                    if last.get(&key) != Some(&why) {
                        sink(Event::Waiting {
                            workload: id.clone(),
                            why: why.clone(),
                        });
                        last.insert(key, why);
                    }
                    still.push(id);
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if start.elapsed() >= timeout {
            return Err(OpError::RolloutTimeout {
                after: timeout,
                pending: pending
                    .iter()
                    .map(|id| {
                        format!(
                            "{id} ({})",
                            last.get(&id.to_string()).cloned().unwrap_or_default()
                        )
                    })
                    .collect(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

// ---- unpublish ----

/// The plan of `unpublish`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UnpublishPlan {
    pub(crate) stable: String,
    /// Revisions to delete, each with whether it is forced (pods still run it).
    pub(crate) revisions: Vec<(String, bool)>,
    /// With `force`: the pods that lose their control plane.
    pub(crate) warnings: Vec<String>,
}

impl UnpublishPlan {
    /// The calls `execute_unpublish` makes.
    pub(crate) fn calls(&self) -> Vec<PlannedCall> {
        let mut calls = Vec::new();
        for (r, forced) in &self.revisions {
            if *forced {
                calls.push(PlannedCall::new(
                    Verb::Patch,
                    Object::MeshRevision(r.clone()),
                    "annotate meshrev.io/force-delete: pods still run it",
                ));
            }
            calls.push(PlannedCall::new(
                Verb::Delete,
                Object::MeshRevision(r.clone()),
                format!("older than stable {}, and no tag points at it", self.stable),
            ));
        }
        calls
    }
}

/// Plans `unpublish [--revision R] [--force]`: refused while pods run an old revision,
/// unless forced.
pub(crate) async fn plan_unpublish(
    client: &Client,
    revision: Option<&str>,
    force: bool,
) -> Result<UnpublishPlan, OpError> {
    let needs = Needs {
        workloads: false,
        ..Needs::all()
    };
    let view = cluster::load_view(client, &needs).await?;
    let plan = guards::unpublish(&view, revision, force)?;
    Ok(UnpublishPlan {
        stable: view.stable().unwrap_or_default().to_string(),
        revisions: plan
            .revisions
            .into_iter()
            .map(|r| {
                let forced = force && view.pods_on(&r).next().is_some();
                (r, forced)
            })
            .collect(),
        warnings: plan.warnings,
    })
}

/// Deletes the plan's revisions; returns those this run deleted (the others were gone
/// already).
pub(crate) async fn execute_unpublish(
    client: &Client,
    plan: &UnpublishPlan,
    sink: Sink<'_>,
) -> Result<Vec<String>, OpError> {
    let mut deleted = Vec::new();
    for (r, forced) in &plan.revisions {
        let existed = cluster::delete_revision(client, r, *forced).await?;
        if existed {
            deleted.push(r.clone());
        }
        sink(Event::RevisionDeleted {
            name: r.clone(),
            existed,
        });
    }
    Ok(deleted)
}

// ---- revoke ----

/// The plan of `revoke`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RevokePlan {
    pub(crate) steps: guards::RevokePlan,
    pub(crate) stable: String,
}

impl RevokePlan {
    /// The calls `execute_revoke` makes.
    pub(crate) fn calls(&self) -> Vec<PlannedCall> {
        let mut calls = Vec::new();
        if self.steps.delete_tag {
            calls.push(PlannedCall::new(
                Verb::Delete,
                Object::RevisionTag(TAG_CANARY.into()),
                "the canary is revoked",
            ));
        }
        calls.push(PlannedCall::new(
            Verb::Delete,
            Object::MeshRevision(self.steps.revision.clone()),
            "the canary's revision; nothing uses it",
        ));
        calls
    }
}

/// Plans `revoke`: `None` when there is no canary. Refused after promotion and while
/// namespaces or pods use the canary.
pub(crate) async fn plan_revoke(client: &Client) -> Result<Option<RevokePlan>, OpError> {
    let view = cluster::load_view(client, &Needs::all()).await?;
    let Some(steps) = guards::revoke(&view)? else {
        return Ok(None);
    };
    Ok(Some(RevokePlan {
        steps,
        stable: view.stable().unwrap_or_default().to_string(),
    }))
}

/// What `revoke` deleted (`false`: gone already, or not planned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RevokeOutcome {
    pub(crate) tag_deleted: bool,
    pub(crate) revision_deleted: bool,
}

/// Deletes tag canary and the canary's revision.
pub(crate) async fn execute_revoke(
    client: &Client,
    plan: &RevokePlan,
    sink: Sink<'_>,
) -> Result<RevokeOutcome, OpError> {
    let mut tag_deleted = false;
    if plan.steps.delete_tag {
        tag_deleted = cluster::delete_tag(client, TAG_CANARY).await?;
        sink(Event::TagDeleted {
            tag: TAG_CANARY.into(),
            existed: tag_deleted,
        });
    }
    let revision_deleted = cluster::delete_revision(client, &plan.steps.revision, false).await?;
    sink(Event::RevisionDeleted {
        name: plan.steps.revision.clone(),
        existed: revision_deleted,
    });
    Ok(RevokeOutcome {
        tag_deleted,
        revision_deleted,
    })
}

#[cfg(test)]
#[path = "ops_tests.rs"]
mod tests;
