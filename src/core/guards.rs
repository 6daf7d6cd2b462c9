//! The upgrade guards: pure functions over a [`MeshView`] that allow a step or refuse it
//! with a [`Refusal`] naming the objects that block it and the fix.
//!
//! The CLI checks them before it changes anything; the validating webhook
//! ([`crate::admission::validate`](mod@crate::admission::validate)) checks the same rules for plain `kubectl` users:
//! - the version skip policy whenever tag `canary` is created or moved, or the version of
//!   a revision under `stable`/`canary` changes ([`tag_write`], [`revision_write`]);
//! - no tag pointing at a missing revision, no tag shadowing a revision ([`tag_write`]);
//! - no deleting a tag or a revision while namespaces or pods use it ([`tag_delete`],
//!   [`revision_delete`]);
//! - no tag moving to, no namespace switching to, and no promotion of a revision whose
//!   control plane (its istiod Deployment) is not ready ([`control_plane_ready`], checked by
//!   [`tag_write`], [`switch`], [`promote`], [`canary`], [`namespace_write`]), and no
//!   revision in use repointed at a Deployment that is not ready ([`control_plane_write`]).
//!   `meshrev upgrade … --force` skips it ([`ControlPlanes::Force`]); the webhook skips it
//!   only for a write whose `meshrev.io/force-control-plane` annotation names the revision
//!   (what `--force` writes), and its refusals do not offer that.

use std::fmt;

use semver::Version;

use super::Error;
use super::control_plane::{ControlPlane, ControlPlaneRef};
use super::labels::{NamespaceLabels, NamespaceSelect};
use super::validate;
use super::view::{MeshView, parse_version};
use super::vocab::{
    ANNOTATION_FORCE_DELETE, LABEL_INJECTION, LABEL_REV, TAG_CANARY, TAG_STABLE,
    is_system_namespace,
};

/// How many blockers a message lists before "and N more".
pub(crate) const MAX_LISTED: usize = 20;

/// The kinds of object that block a step; displayed as messages name them (`namespace`,
/// `pod`, `RevisionTag`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum BlockerKind {
    Namespace,
    Pod,
    RevisionTag,
    /// A revision's istiod Deployment (`namespace/name`).
    Deployment,
}

impl fmt::Display for BlockerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlockerKind::Namespace => "namespace",
            BlockerKind::Pod => "pod",
            BlockerKind::RevisionTag => "RevisionTag",
            BlockerKind::Deployment => "Deployment",
        })
    }
}

/// One object that blocks a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Blocker {
    /// What it is.
    pub(crate) kind: BlockerKind,
    /// `name`, or `namespace/name` for a pod.
    pub(crate) name: String,
    /// Why it blocks (`istio.io/rev=canary`, `runs 1-23-6, Running`).
    pub(crate) detail: String,
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.kind, self.name, self.detail)
    }
}

/// A refused step: what, why, which objects block it, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// `cannot delete RevisionTag "canary"`.
    pub(crate) action: String,
    /// `2 namespaces still select it`.
    pub(crate) reason: String,
    pub(crate) blockers: Vec<Blocker>,
    /// What to do about it.
    pub(crate) fix: String,
}

impl Refusal {
    pub(crate) fn new(
        action: impl Into<String>,
        reason: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Refusal {
            action: action.into(),
            reason: reason.into(),
            blockers: Vec::new(),
            fix: fix.into(),
        }
    }
    fn with(mut self, blockers: Vec<Blocker>) -> Self {
        self.blockers = blockers;
        self
    }

    /// One line, for an AdmissionReview's `status.message` (kubectl prints it after
    /// `admission webhook "…" denied the request: `).
    pub(crate) fn one_line(&self) -> String {
        let mut s = format!("{}: {}", self.action, self.reason);
        if !self.blockers.is_empty() {
            s.push_str("; blocked by: ");
            let listed: Vec<String> = self
                .blockers
                .iter()
                .take(MAX_LISTED)
                .map(Blocker::to_string)
                .collect();
            s.push_str(&listed.join(", "));
            if self.blockers.len() > MAX_LISTED {
                s.push_str(&format!(" and {} more", self.blockers.len() - MAX_LISTED));
            }
        }
        if !self.fix.is_empty() {
            s.push_str(". Fix: ");
            s.push_str(&self.fix);
        }
        s
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.action, self.reason)?;
        if !self.blockers.is_empty() {
            f.write_str("\nblocked by:")?;
            for b in self.blockers.iter().take(MAX_LISTED) {
                write!(f, "\n  {b}")?;
            }
            if self.blockers.len() > MAX_LISTED {
                write!(f, "\n  … and {} more", self.blockers.len() - MAX_LISTED)?;
            }
        }
        if !self.fix.is_empty() {
            write!(f, "\nfix: {}", self.fix)?;
        }
        Ok(())
    }
}

impl std::error::Error for Refusal {}

/// The version skip policy: the canary must be newer than stable, of the same major
/// version, and at most one minor version ahead (1.22.x → 1.23.y, not → 1.24.z).
pub(crate) fn skip_policy(stable: &Version, canary: &Version) -> Result<(), Error> {
    let pair = || (stable.clone(), canary.clone());
    if canary <= stable {
        let (stable, canary) = pair();
        return Err(Error::NotNewer { stable, canary });
    }
    if canary.major != stable.major {
        let (stable, canary) = pair();
        return Err(Error::MajorVersion { stable, canary });
    }
    if canary.minor > stable.minor + 1 {
        let (stable, canary) = pair();
        return Err(Error::MinorSkip { stable, canary });
    }
    Ok(())
}

/// Checks the skip policy for `canary_version` against the revision of tag `stable`.
fn canary_against_stable(
    view: &MeshView,
    action: &str,
    canary_version: &str,
) -> Result<(), Refusal> {
    let canary = parse_version(canary_version)
        .map_err(|e| Refusal::new(action, e.to_string(), "use a semantic version like 1.23.6"))?;
    let Some(stable_tag) = view.tags.get(TAG_STABLE) else {
        return Err(Refusal::new(
            action,
            "there is no tag \"stable\" to check the version skip policy against",
            "create the current revision's tag first: a RevisionTag named stable",
        ));
    };
    let Some(stable_rev) = view.revisions.get(&stable_tag.revision) else {
        return Err(Refusal::new(
            action,
            format!(
                "tag \"stable\" points at MeshRevision {:?}, which does not exist",
                stable_tag.revision
            ),
            "point tag stable at an existing MeshRevision",
        ));
    };
    let stable = stable_rev.semver().map_err(|e| {
        Refusal::new(
            action,
            format!("MeshRevision {:?} (stable): {e}", stable_tag.revision),
            "fix its spec.version",
        )
    })?;
    skip_policy(&stable, &canary).map_err(|e| {
        Refusal::new(
            action,
            e.to_string(),
            format!(
                "upgrade to a {}.{}.x release first, promote it, then upgrade again",
                stable.major,
                stable.minor + 1
            ),
        )
    })
}

/// Whether a step that routes pods to a revision requires its control plane to be ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum ControlPlanes {
    /// Refuse while it is not ready (the default).
    #[default]
    Require,
    /// Skip the check (`meshrev upgrade … --force`, or a write the webhook sees carrying
    /// the force annotation for this revision).
    Force,
}

/// Refuses to route pods to `revision` while its control plane is not ready: the refusal
/// names the Deployment and its state. `action` is the refused step, as its other
/// refusals name it.
pub(crate) fn control_plane_ready(
    view: &MeshView,
    revision: &str,
    action: &str,
    check: ControlPlanes,
) -> Result<(), Refusal> {
    if check == ControlPlanes::Force {
        return Ok(());
    }
    let cp: ControlPlane = view.control_plane(revision);
    if cp.ready() {
        return Ok(());
    }
    let d = &cp.deployment;
    Err(Refusal::new(
        action,
        format!(
            "the control plane of MeshRevision {revision} is not ready: {}",
            cp.describe()
        ),
        format!(
            "wait until istiod is available (kubectl -n {} rollout status deployment/{}), or point spec.controlPlane of MeshRevision {revision} at its istiod Deployment",
            d.namespace, d.name
        ),
    )
    .with(vec![Blocker {
        kind: BlockerKind::Deployment,
        name: d.to_string(),
        detail: cp.state.to_string(),
    }]))
}

/// Creating or moving tag `tag` to `revision` (webhook CREATE/UPDATE of a RevisionTag):
/// the revision exists, is not shadowed, keeps the skip policy, and its control plane is
/// ready (unless `check` is [`ControlPlanes::Force`]).
pub(crate) fn tag_write(
    view: &MeshView,
    tag: &str,
    revision: &str,
    check: ControlPlanes,
) -> Result<(), Refusal> {
    let action = format!("RevisionTag {tag:?} → {revision:?} refused");
    validate::name(tag).map_err(|e| Refusal::new(&action, e.to_string(), "rename the tag"))?;
    if view.revisions.contains_key(tag) {
        return Err(Refusal::new(
            &action,
            format!("a MeshRevision is named {tag:?}: a tag must not shadow a revision"),
            "choose another tag name",
        ));
    }
    let Some(rev) = view.revisions.get(revision) else {
        let known: Vec<&str> = view.revisions.keys().map(String::as_str).collect();
        return Err(Refusal::new(
            &action,
            format!("MeshRevision {revision:?} does not exist"),
            if known.is_empty() {
                "create the MeshRevision first".to_string()
            } else {
                format!(
                    "create the MeshRevision first, or point the tag at one of: {}",
                    known.join(", ")
                )
            },
        ));
    };
    if tag == TAG_CANARY {
        // During a promotion stable and canary point at the same revision: allowed.
        if view.stable() != Some(revision) {
            canary_against_stable(view, &action, &rev.version)?;
        }
    } else if tag == TAG_STABLE
        && let Some(canary) = view.tags.get(TAG_CANARY)
        && canary.revision != revision
        && let Some(crev) = view.revisions.get(&canary.revision)
    {
        // Moving stable under an existing canary: the pair must still obey the policy.
        let mut after = view.clone();
        after
            .tags
            .insert(TAG_STABLE.into(), super::view::TagInfo::new(revision));
        canary_against_stable(&after, &action, &crev.version).map_err(|mut r| {
            r.reason = format!(
                "tag canary → {} would break the skip policy against the new stable: {}",
                canary.revision, r.reason
            );
            r.fix = "promote the canary (meshrev upgrade promote --yes) or revoke it first".into();
            r
        })?;
    }
    control_plane_ready(view, revision, &action, check)
}

/// A namespace's injection labels changing from `before` (`None`: a new namespace) to
/// `after` (webhook CREATE/UPDATE of a Namespace, i.e. `kubectl label namespace …`): when
/// its new pods would get another revision than before, that revision's control plane
/// must be ready (the same rule as `meshrev upgrade switch`), unless `forced` names that
/// revision (the namespace's [`ANNOTATION_FORCE_CONTROL_PLANE`](super::vocab::ANNOTATION_FORCE_CONTROL_PLANE),
/// `switch --force`).
/// A label naming neither tag nor revision, or one that turns injection off, is not this
/// guard's business (`meshrev upgrade status` flags the former).
pub(crate) fn namespace_write(
    view: &MeshView,
    namespace: &str,
    before: Option<&NamespaceLabels>,
    after: &NamespaceLabels,
    forced: Option<&str>,
) -> Result<(), Refusal> {
    let route_with = |labels: Option<&NamespaceLabels>| {
        let mut v = view.clone();
        match labels {
            Some(l) => v.namespaces.insert(namespace.to_string(), l.clone()),
            None => v.namespaces.remove(namespace),
        };
        v.namespace_route(namespace).revision().map(str::to_string)
    };
    let Some(revision) = route_with(Some(after)) else {
        return Ok(());
    };
    if before.is_some() && route_with(before).as_deref() == Some(revision.as_str()) {
        return Ok(());
    }
    let action = format!(
        "namespace {namespace} labelled {} refused (its new pods would get revision {revision})",
        after.describe()
    );
    let check = if forced == Some(revision.as_str()) {
        ControlPlanes::Force
    } else {
        ControlPlanes::Require
    };
    control_plane_ready(view, &revision, &action, check)
}

/// Pointing revision `name`'s `spec.controlPlane` at `deployment` (webhook UPDATE of a
/// MeshRevision): while tags, namespaces or pods' own labels route pods to the revision,
/// the Deployment it now names must be ready, as for a tag moving to it. An unused
/// revision may name any Deployment (its condition shows the state).
pub(crate) fn control_plane_write(
    view: &MeshView,
    name: &str,
    deployment: &ControlPlaneRef,
) -> Result<(), Refusal> {
    let mut users: Vec<String> = view.tags_of(name).into_iter().map(str::to_string).collect();
    let mut namers: Vec<&str> = vec![name];
    namers.extend(view.tags_of(name));
    for n in &namers {
        users.extend(namespaces_naming(view, n).into_iter().map(|b| b.name));
        users.extend(pods_selecting(view, n).into_iter().map(|b| b.name));
    }
    if users.is_empty() {
        return Ok(());
    }
    let mut after = view.clone();
    if let Some(r) = after.revisions.get_mut(name) {
        r.control_plane = Some(deployment.clone());
    }
    let action = format!(
        "MeshRevision {name:?} spec.controlPlane → Deployment {deployment} refused (in use by {})",
        users.join(", ")
    );
    control_plane_ready(&after, name, &action, ControlPlanes::Require)
}

/// Namespaces whose labels name `name` (a tag or a revision), as blockers.
fn namespaces_naming(view: &MeshView, name: &str) -> Vec<Blocker> {
    view.namespaces
        .iter()
        .filter(|(_, l)| l.names(name))
        .map(|(n, l)| Blocker {
            kind: BlockerKind::Namespace,
            name: n.clone(),
            detail: l.describe(),
        })
        .collect()
}

/// Pods whose own labels select `name` (in namespaces without injection labels).
fn pods_selecting(view: &MeshView, name: &str) -> Vec<Blocker> {
    view.pods
        .iter()
        .filter(|p| view.pod_selects(p, name))
        .map(|p| Blocker {
            kind: BlockerKind::Pod,
            name: p.key(),
            detail: format!("pod label {LABEL_REV}={name}"),
        })
        .collect()
}

/// Pods running `revision`'s sidecar.
fn pods_running(view: &MeshView, revision: &str) -> Vec<Blocker> {
    view.pods_on(revision)
        .map(|p| Blocker {
            kind: BlockerKind::Pod,
            name: p.key(),
            detail: if p.phase.is_empty() {
                format!("runs {revision}")
            } else {
                format!("runs {revision}, {}", p.display_phase())
            },
        })
        .collect()
}

/// Deleting tag `tag` (webhook DELETE of a RevisionTag; `revoke`; `promote`'s last step).
pub(crate) fn tag_delete(view: &MeshView, tag: &str) -> Result<(), Refusal> {
    let mut blockers = namespaces_naming(view, tag);
    blockers.extend(pods_selecting(view, tag));
    if blockers.is_empty() {
        return Ok(());
    }
    let fix = if tag == TAG_CANARY {
        "switch those namespaces back (meshrev upgrade rollback NAMESPACE) or promote the canary (meshrev upgrade promote --yes)".to_string()
    } else if tag == TAG_STABLE {
        // Relabelling to stable, the usual fix, would not release this tag.
        format!(
            "move the tag instead of deleting it (meshrev upgrade promote, or kubectl patch revisiontag stable --type merge -p '{{\"spec\":{{\"revision\":\"REVISION\"}}}}'), or relabel them to a pinned revision first (kubectl label namespace NAME {LABEL_REV}=REVISION --overwrite)"
        )
    } else {
        format!(
            "relabel them to another tag first (kubectl label namespace NAME {LABEL_REV}=stable --overwrite)"
        )
    };
    Err(Refusal::new(
        format!("cannot delete RevisionTag {tag:?}"),
        format!(
            "{} object(s) still select it; their new pods would get no sidecar",
            blockers.len()
        ),
        fix,
    )
    .with(blockers))
}

/// Creating a revision or changing its version (webhook CREATE/UPDATE of a MeshRevision).
pub(crate) fn revision_write(view: &MeshView, name: &str, version: &str) -> Result<(), Refusal> {
    let action = format!("MeshRevision {name:?} (version {version}) refused");
    validate::name(name)
        .map_err(|e| Refusal::new(&action, e.to_string(), "rename the revision"))?;
    parse_version(version)
        .map_err(|e| Refusal::new(&action, e.to_string(), "use a semantic version like 1.23.6"))?;
    if view.tags.contains_key(name) {
        return Err(Refusal::new(
            &action,
            format!("a RevisionTag is named {name:?}: a revision must not be shadowed by a tag"),
            "choose another revision name (Istio's style: 1-23-6)",
        ));
    }
    let mut after = view.clone();
    after.revisions.entry(name.to_string()).or_default().version = version.to_string();
    let (stable, canary) = (after.stable(), after.canary());
    if let (Some(s), Some(c)) = (stable, canary)
        && s != c
        && (s == name || c == name)
    {
        let cver = after.revisions[c].version.clone();
        canary_against_stable(&after, &action, &cver).map_err(|mut r| {
            r.reason = format!(
                "with this version, tag canary → {c} against stable → {s}: {}",
                r.reason
            );
            r
        })?;
    }
    Ok(())
}

/// What deleting a revision would leave behind, when allowed: warnings.
pub(crate) type Warnings = Vec<String>;

/// Deleting revision `name` (webhook DELETE; `unpublish`; `revoke`'s last step).
/// `force` (annotation `meshrev.io/force-delete: "true"`, `unpublish --force`) lets pods
/// that still run its sidecar not block; namespaces and tags always block.
pub(crate) fn revision_delete(
    view: &MeshView,
    name: &str,
    force: bool,
) -> Result<Warnings, Refusal> {
    let mut blockers: Vec<Blocker> = view
        .tags_of(name)
        .into_iter()
        .map(|t| Blocker {
            kind: BlockerKind::RevisionTag,
            name: t.to_string(),
            detail: format!("points at {name}"),
        })
        .collect();
    blockers.extend(namespaces_naming(view, name));
    blockers.extend(pods_selecting(view, name));
    let running = pods_running(view, name);
    let mut warnings = Vec::new();
    if force {
        if !running.is_empty() {
            warnings.push(format!(
                "{} pod(s) still run the sidecar of deleted MeshRevision {name}; restart them: {}",
                running.len(),
                running
                    .iter()
                    .take(MAX_LISTED)
                    .map(|b| b.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    } else {
        blockers.extend(running);
    }
    if blockers.is_empty() {
        return Ok(warnings);
    }
    let mut fixes = Vec::new();
    if blockers.iter().any(|b| b.kind == BlockerKind::RevisionTag) {
        fixes.push(
            "move or delete the tags first (a tag must not point at a missing revision)"
                .to_string(),
        );
    }
    if blockers.iter().any(|b| b.kind == BlockerKind::Namespace) {
        fixes.push(format!(
            "relabel those namespaces (kubectl label namespace NAME {LABEL_REV}=stable --overwrite)"
        ));
    }
    if blockers.iter().any(|b| b.kind == BlockerKind::Pod) {
        fixes.push(format!(
            "restart those workloads onto the current revision (meshrev upgrade rollout --wait), or, to delete anyway, annotate the revision {ANNOTATION_FORCE_DELETE}=true (meshrev upgrade unpublish --force)"
        ));
    }
    let fix = fixes.join("; ");
    Err(Refusal::new(
        format!("cannot delete MeshRevision {name:?}"),
        format!("{} object(s) still use it", blockers.len()),
        fix,
    )
    .with(blockers))
}

/// What `canary` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CanaryPlan {
    pub(crate) create_revision: bool,
    pub(crate) create_tag: bool,
}

/// `meshrev upgrade canary --revision R --version V`.
pub(crate) fn canary(
    view: &MeshView,
    revision: &str,
    version: &str,
    check: ControlPlanes,
) -> Result<CanaryPlan, Refusal> {
    let action = format!("cannot deploy canary revision {revision} ({version})");
    validate::name(revision)
        .map_err(|e| Refusal::new(&action, e.to_string(), "use Istio's style: 1-23-6"))?;
    if view.tags.contains_key(revision) {
        return Err(Refusal::new(
            &action,
            format!("a RevisionTag is named {revision:?}"),
            "choose another revision name (Istio's style: 1-23-6)",
        ));
    }
    if let Some(existing) = view.revisions.get(revision)
        && parse_version(&existing.version).ok() != parse_version(version).ok()
    {
        return Err(Refusal::new(
            &action,
            format!(
                "MeshRevision {revision} already exists with version {}",
                existing.version
            ),
            "choose another revision name, or delete that revision",
        ));
    }
    if let Some(tag) = view.tags.get(TAG_CANARY) {
        if view.stable() == Some(tag.revision.as_str()) {
            return Err(Refusal::new(
                &action,
                format!(
                    "a promotion of {} is unfinished (tags stable and canary both point at it)",
                    tag.revision
                ),
                "finish it: meshrev upgrade promote --yes",
            ));
        }
        if tag.revision != revision {
            let v = view
                .revisions
                .get(&tag.revision)
                .map(|r| r.version.as_str())
                .unwrap_or("missing");
            return Err(Refusal::new(
                &action,
                format!("a canary already exists: tag canary → {} ({v})", tag.revision),
                "finish that upgrade first: meshrev upgrade promote --yes, or roll back its namespaces and meshrev upgrade revoke",
            )
            .with(vec![Blocker {
                kind: BlockerKind::RevisionTag,
                name: TAG_CANARY.into(),
                detail: format!("points at {}", tag.revision),
            }]));
        }
    }
    canary_against_stable(view, &action, version)?;
    let create_tag = view.tags.get(TAG_CANARY).map(|t| t.revision.as_str()) != Some(revision);
    if create_tag {
        // Tag canary will route pods to it: its istiod must be up (deployed first, as in
        // Istio's canary upgrade).
        control_plane_ready(view, revision, &action, check)?;
    }
    Ok(CanaryPlan {
        create_revision: !view.revisions.contains_key(revision),
        create_tag,
    })
}

/// `meshrev upgrade switch NS --to TAG` (and `rollback NS`, which is `--to stable`).
pub(crate) fn switch(
    view: &MeshView,
    namespace: &str,
    to: &str,
    check: ControlPlanes,
) -> Result<NamespaceLabels, Refusal> {
    let action = format!("cannot switch namespace {namespace} to {to}");
    let Some(labels) = view.namespaces.get(namespace) else {
        return Err(Refusal::new(
            &action,
            format!("namespace {namespace} does not exist"),
            "check the name (kubectl get namespaces)",
        ));
    };
    if is_system_namespace(namespace) {
        return Err(Refusal::new(
            &action,
            "system namespaces are never injected",
            "",
        ));
    }
    let Some(revision) = view.tag_revision(to) else {
        return Err(Refusal::new(
            &action,
            format!("tag {to} does not exist (or points at a missing revision)"),
            if to == TAG_CANARY {
                "deploy one first: meshrev upgrade canary --revision R --version V"
            } else {
                "create tag stable first"
            },
        ));
    };
    if let NamespaceSelect::Disabled(v) = labels.select() {
        return Err(Refusal::new(
            &action,
            format!("it has {LABEL_INJECTION}={v}: injection is disabled there"),
            format!(
                "enable injection on purpose first: kubectl label namespace {namespace} {LABEL_INJECTION}-"
            ),
        ));
    }
    control_plane_ready(view, revision, &action, check)?;
    Ok(NamespaceLabels::rev(to))
}

/// `meshrev upgrade rollback NS`: allowed while a canary exists and is not promoted.
pub(crate) fn rollback(
    view: &MeshView,
    namespace: &str,
    check: ControlPlanes,
) -> Result<NamespaceLabels, Refusal> {
    let action = format!("cannot roll back namespace {namespace}");
    match (view.canary(), view.stable()) {
        (None, _) => {
            return Err(Refusal::new(
                &action,
                "there is no canary (tag canary): the upgrade was promoted or revoked",
                "after a promotion, upgrades go forward only",
            ));
        }
        (Some(c), Some(s)) if c == s => {
            return Err(Refusal::new(
                &action,
                format!("the canary {c} is being promoted (tag stable points at it)"),
                "finish the promotion: meshrev upgrade promote --yes",
            ));
        }
        _ => {}
    }
    switch(view, namespace, TAG_STABLE, check)
}

/// What `promote` still has to do (each step is skipped when already done).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PromotePlan {
    /// The revision being promoted.
    pub(crate) revision: String,
    /// What stable pointed at before (recorded in `meshrev.io/promoted-from`).
    pub(crate) previous: String,
    /// Step 1 is still to do: tag stable → `revision`.
    pub(crate) move_stable: bool,
    /// Step 2: namespaces with `istio.io/rev: canary` to relabel `stable`.
    pub(crate) relabel: Vec<String>,
    /// Step 3: delete tag canary.
    pub(crate) delete_canary: bool,
}

impl PromotePlan {
    pub(crate) fn is_done(&self) -> bool {
        !self.move_stable && self.relabel.is_empty() && !self.delete_canary
    }
}

/// `meshrev upgrade promote`. Resumable: the plan starts where an interrupted promotion
/// stopped (stable already moved, some namespaces relabelled, the tag still there). Refused
/// while the canary's control plane is not ready, unless `check` is
/// [`ControlPlanes::Force`].
pub(crate) fn promote(view: &MeshView, check: ControlPlanes) -> Result<PromotePlan, Refusal> {
    let action = "cannot promote";
    let Some(stable_tag) = view.tags.get(TAG_STABLE) else {
        return Err(Refusal::new(
            action,
            "there is no tag stable",
            "create tag stable first",
        ));
    };
    let Some(canary_tag) = view.tags.get(TAG_CANARY) else {
        if let Some(prev) = &stable_tag.promoted_from {
            // Already complete: nothing left.
            return Ok(PromotePlan {
                revision: stable_tag.revision.clone(),
                previous: prev.clone(),
                move_stable: false,
                relabel: Vec::new(),
                delete_canary: false,
            });
        }
        return Err(Refusal::new(
            action,
            "there is no canary (tag canary)",
            "deploy one first: meshrev upgrade canary --revision R --version V",
        ));
    };
    let revision = canary_tag.revision.clone();
    let Some(crev) = view.revisions.get(&revision) else {
        return Err(Refusal::new(
            action,
            format!("tag canary points at MeshRevision {revision:?}, which does not exist"),
            "meshrev upgrade revoke, then deploy the canary again",
        ));
    };
    let move_stable = stable_tag.revision != revision;
    let previous = if move_stable {
        canary_against_stable(view, action, &crev.version)?;
        stable_tag.revision.clone()
    } else {
        stable_tag
            .promoted_from
            .clone()
            .unwrap_or_else(|| "unknown".into())
    };
    // Pods that choose the canary tag by their own label would block deleting the tag.
    let pod_blockers = pods_selecting(view, TAG_CANARY);
    if !pod_blockers.is_empty() {
        return Err(Refusal::new(
            action,
            "pods select tag canary by their own label; deleting the tag would strand their workloads",
            format!("change those workloads' pod label {LABEL_REV} to stable (or remove it), then promote"),
        )
        .with(pod_blockers));
    }
    let relabel = view
        .namespaces
        .iter()
        .filter(|(_, l)| l.rev.as_deref() == Some(TAG_CANARY))
        .map(|(n, _)| n.clone())
        .collect();
    control_plane_ready(view, &revision, action, check)?;
    Ok(PromotePlan {
        revision,
        previous,
        move_stable,
        relabel,
        delete_canary: true,
    })
}

/// What `revoke` deletes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RevokePlan {
    /// Delete tag canary (false when an interrupted revoke already did).
    pub(crate) delete_tag: bool,
    /// The canary revision to delete.
    pub(crate) revision: String,
}

/// `meshrev upgrade revoke`: refused after promotion and while namespaces or pods use the
/// canary (its tag or its revision name).
pub(crate) fn revoke(view: &MeshView) -> Result<Option<RevokePlan>, Refusal> {
    let action = "cannot revoke the canary";
    let stable = view.stable();
    let Some(tag) = view.tags.get(TAG_CANARY) else {
        // An interrupted revoke leaves an untagged revision newer than stable: finish it,
        // under the same guard as any revision delete.
        if let Some(revision) = leftover_canary(view) {
            revision_delete(view, &revision, false).map_err(|mut r| {
                r.action = format!("{action} revision {revision}");
                r
            })?;
            return Ok(Some(RevokePlan {
                delete_tag: false,
                revision,
            }));
        }
        if let Some(prev) = view
            .tags
            .get(TAG_STABLE)
            .and_then(|t| t.promoted_from.as_ref())
            && view.stable().is_some()
            && view.revisions.contains_key(prev)
        {
            return Err(Refusal::new(
                action,
                format!(
                    "the upgrade was promoted (tag stable → {}, from {prev}); a promotion cannot be revoked",
                    view.tags[TAG_STABLE].revision
                ),
                "finish the data plane upgrade: meshrev upgrade rollout --wait, then meshrev upgrade unpublish",
            ));
        }
        return Ok(None);
    };
    if stable == Some(tag.revision.as_str()) {
        return Err(Refusal::new(
            action,
            format!(
                "the canary {} is being promoted (tag stable points at it); a promotion cannot be revoked",
                tag.revision
            ),
            "finish it: meshrev upgrade promote --yes",
        ));
    }
    let revision = tag.revision.clone();
    let mut blockers = namespaces_naming(view, TAG_CANARY);
    blockers.extend(namespaces_naming(view, &revision));
    blockers.extend(pods_selecting(view, TAG_CANARY));
    blockers.extend(pods_selecting(view, &revision));
    blockers.extend(
        view.tags_of(&revision)
            .into_iter()
            .filter(|t| *t != TAG_CANARY)
            .map(|t| Blocker {
                kind: BlockerKind::RevisionTag,
                name: t.to_string(),
                detail: format!("points at {revision}"),
            }),
    );
    blockers.extend(pods_running(view, &revision));
    if !blockers.is_empty() {
        return Err(Refusal::new(
            action,
            format!(
                "{} object(s) still use canary revision {revision}",
                blockers.len()
            ),
            "roll back each namespace and its workloads first: meshrev upgrade rollback NAMESPACE --restart",
        )
        .with(blockers));
    }
    Ok(Some(RevokePlan {
        delete_tag: true,
        revision,
    }))
}

/// An untagged revision newer than stable (what an interrupted revoke leaves), if exactly
/// one.
fn leftover_canary(view: &MeshView) -> Option<String> {
    let stable = view
        .stable()
        .and_then(|s| view.revisions.get(s))
        .and_then(|r| r.semver().ok())?;
    let newer: Vec<&str> = view
        .untagged_revisions()
        .into_iter()
        .filter(|r| view.revisions[*r].semver().is_ok_and(|v| v > stable))
        .collect();
    match newer.as_slice() {
        [one] => Some(one.to_string()),
        _ => None,
    }
}

/// What `unpublish` deletes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UnpublishPlan {
    pub(crate) revisions: Vec<String>,
    /// With `--force`: pods that still run them.
    pub(crate) warnings: Warnings,
}

/// `meshrev upgrade unpublish [--revision R] [--force]`: the old revisions (no tag points
/// at them, older than stable), refused while pods run them unless `force`.
pub(crate) fn unpublish(
    view: &MeshView,
    revision: Option<&str>,
    force: bool,
) -> Result<UnpublishPlan, Refusal> {
    let action = "cannot unpublish";
    let Some(stable) = view.stable() else {
        return Err(Refusal::new(
            action,
            "there is no tag stable",
            "create tag stable first",
        ));
    };
    if let Some(c) = view.canary() {
        return Err(Refusal::new(
            action,
            if c == stable {
                format!("the promotion of {c} is unfinished")
            } else {
                format!("a canary ({c}) is deployed and not promoted")
            },
            if c == stable {
                "finish it: meshrev upgrade promote --yes"
            } else {
                "promote it (meshrev upgrade promote --yes) or revoke it (meshrev upgrade revoke) first"
            },
        ));
    }
    let stable_version = view.revisions[stable].semver().ok();
    let candidates: Vec<String> = match revision {
        Some(r) => {
            if !view.revisions.contains_key(r) {
                return Err(Refusal::new(
                    action,
                    format!("MeshRevision {r:?} does not exist"),
                    "see meshrev upgrade status",
                ));
            }
            vec![r.to_string()]
        }
        None => view
            .untagged_revisions()
            .into_iter()
            .filter(|r| match (&stable_version, view.revisions[*r].semver()) {
                (Some(s), Ok(v)) => v < *s,
                _ => false,
            })
            .map(str::to_string)
            .collect(),
    };
    let mut blockers = Vec::new();
    let mut warnings = Vec::new();
    for r in &candidates {
        match revision_delete(view, r, force) {
            Ok(w) => warnings.extend(w),
            Err(refusal) => blockers.extend(refusal.blockers),
        }
    }
    if blockers.is_empty() {
        return Ok(UnpublishPlan {
            revisions: candidates,
            warnings,
        });
    }
    let names = candidates.join(", ");
    let tagged = blockers.iter().any(|b| b.kind == BlockerKind::RevisionTag);
    let pods = blockers
        .iter()
        .filter(|b| b.kind == BlockerKind::Pod)
        .count();
    let fix = if tagged {
        "an old revision must have no tag: move or delete the tag first".to_string()
    } else if pods > 0 {
        format!(
            "upgrade them first (meshrev upgrade rollout --wait restarts them onto {stable}), or pass --force to delete anyway (their sidecars lose their control plane)"
        )
    } else {
        format!(
            "relabel those namespaces to a tag (kubectl label namespace NAME {LABEL_REV}=stable --overwrite)"
        )
    };
    Err(Refusal::new(
        format!("cannot unpublish MeshRevision {names}"),
        format!("{} object(s) still use it", blockers.len()),
        fix,
    )
    .with(blockers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::control_plane::{ControlPlaneRef, DeploymentSummary};
    use crate::core::view::{PodInfo, RevisionInfo, TagInfo};

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    /// stable → 1-22-6; optionally canary → 1-23-6.
    fn view(canary: bool) -> MeshView {
        let mut m = MeshView::default();
        m.revisions
            .insert("1-22-6".into(), RevisionInfo::new("1.22.6"));
        m.tags.insert("stable".into(), TagInfo::new("1-22-6"));
        if canary {
            m.revisions
                .insert("1-23-6".into(), RevisionInfo::new("1.23.6"));
            m.tags.insert("canary".into(), TagInfo::new("1-23-6"));
        }
        m.namespaces
            .insert("default".into(), NamespaceLabels::injection_enabled());
        m.namespaces
            .insert("plain".into(), NamespaceLabels::default());
        m.with_ready_control_planes()
    }

    /// Sets the default istiod Deployment of `rev` (`istio-system/istiod-<rev>`).
    fn istiod(m: &mut MeshView, rev: &str, d: DeploymentSummary) {
        m.deployments
            .insert(ControlPlaneRef::resolve(rev, None, None), d);
    }

    #[test]
    fn control_plane_readiness_guards_tags_switches_promotion_and_canary() {
        let mut m = view(true);
        m.namespaces
            .insert("default".into(), NamespaceLabels::rev("canary"));
        m.revisions
            .insert("1-23-7".into(), RevisionInfo::new("1.23.7"));
        istiod(&mut m, "1-23-6", DeploymentSummary::unavailable());
        let require = ControlPlanes::Require;
        let e = tag_write(&m, "prod", "1-23-6", require).unwrap_err();
        let line = e.one_line();
        assert!(
            line.contains("Deployment istio-system/istiod-1-23-6 (Progressing 0/1 available)"),
            "{line}"
        );
        assert!(
            line.contains("rollout status deployment/istiod-1-23-6"),
            "{line}"
        );
        assert!(
            !line.contains("--force"),
            "the refusal does not offer a force: {line}"
        );
        assert_eq!(e.blockers[0].kind, BlockerKind::Deployment);
        // Not found: named too, with where meshrev looked.
        let e = tag_write(&m, "prod", "1-23-7", require).unwrap_err();
        assert!(e.reason.contains("istiod-1-23-7: NotFound"), "{e}");
        assert!(e.reason.contains("labelled istio.io/rev"), "{e}");
        assert!(tag_write(&m, "prod", "1-23-6", ControlPlanes::Force).is_ok());
        // Stable's control plane is up: other rules only.
        assert!(tag_write(&m, "prod", "1-22-6", require).is_ok());
        // switch to the canary (by tag) and to the revision itself.
        let e = switch(&m, "plain", "canary", require).unwrap_err();
        assert!(e.one_line().contains("istiod-1-23-6"), "{e}");
        assert!(switch(&m, "plain", "canary", ControlPlanes::Force).is_ok());
        let mut pinned = m.clone();
        pinned.tags.insert("pin".into(), TagInfo::new("1-23-6"));
        assert!(switch(&pinned, "plain", "pin", require).is_err());
        assert!(rollback(&m, "default", require).is_ok(), "stable is up");
        // promote: refused while the canary's istiod is down, whatever step remains.
        let e = promote(&m, require).unwrap_err();
        assert!(
            e.one_line()
                .contains("Deployment istio-system/istiod-1-23-6"),
            "{e}"
        );
        assert!(promote(&m, ControlPlanes::Force).is_ok());
        // canary: the new revision's istiod (by default name) must be up.
        let mut fresh = view(false);
        let e = canary(&fresh, "1-23-6", "1.23.6", require).unwrap_err();
        assert!(e.reason.contains("NotFound"), "{e}");
        assert!(canary(&fresh, "1-23-6", "1.23.6", ControlPlanes::Force).is_ok());
        istiod(&mut fresh, "1-23-6", DeploymentSummary::ready(2));
        assert!(canary(&fresh, "1-23-6", "1.23.6", require).is_ok());
        // Available now: everything passes.
        istiod(&mut m, "1-23-6", DeploymentSummary::ready(1));
        assert!(tag_write(&m, "prod", "1-23-6", require).is_ok());
        assert!(switch(&m, "plain", "canary", require).is_ok());
        assert!(promote(&m, require).is_ok());
    }

    #[test]
    fn namespace_labels_to_a_revision_whose_istiod_is_down_are_refused() {
        let mut m = view(true);
        istiod(&mut m, "1-23-6", DeploymentSummary::unavailable());
        let before = NamespaceLabels::injection_enabled();
        let e = namespace_write(
            &m,
            "default",
            Some(&before),
            &NamespaceLabels::rev("canary"),
            None,
        )
        .unwrap_err();
        let line = e.one_line();
        assert!(
            line.starts_with("namespace default labelled istio.io/rev=canary refused"),
            "{line}"
        );
        assert!(
            line.contains("Deployment istio-system/istiod-1-23-6 (Progressing 0/1 available)"),
            "{line}"
        );
        // By revision name, and on a new namespace.
        assert!(namespace_write(&m, "new", None, &NamespaceLabels::rev("1-23-6"), None).is_err());
        // To stable (up), or unchanged routing, or injection off: allowed.
        assert!(namespace_write(&m, "new", None, &NamespaceLabels::rev("stable"), None).is_ok());
        let canary = NamespaceLabels::rev("canary");
        assert!(
            namespace_write(
                &m,
                "default",
                Some(&canary),
                &NamespaceLabels::rev("1-23-6"),
                None
            )
            .is_ok()
        );
        let off = NamespaceLabels {
            injection: Some("disabled".into()),
            rev: None,
        };
        assert!(namespace_write(&m, "default", Some(&before), &off, None).is_ok());
        // A name that resolves to nothing: not this guard's refusal.
        assert!(
            namespace_write(
                &m,
                "default",
                Some(&before),
                &NamespaceLabels::rev("nope"),
                None
            )
            .is_ok()
        );
        // System namespaces are never injected.
        assert!(namespace_write(&m, "kube-system", None, &canary, None).is_ok());
        // The force annotation passes exactly the revision it names.
        assert!(namespace_write(&m, "default", Some(&before), &canary, Some("1-23-6")).is_ok());
        assert!(namespace_write(&m, "default", Some(&before), &canary, Some("canary")).is_err());
        istiod(&mut m, "1-23-6", DeploymentSummary::ready(1));
        assert!(namespace_write(&m, "default", Some(&before), &canary, None).is_ok());
    }

    #[test]
    fn repointing_a_used_revision_needs_a_ready_deployment() {
        let mut m = view(true);
        let elsewhere = ControlPlaneRef::resolve("1-22-6", Some("istiod-new"), None);
        // Tag stable routes to 1-22-6: the new Deployment must be ready.
        let e = control_plane_write(&m, "1-22-6", &elsewhere).unwrap_err();
        let line = e.one_line();
        assert!(line.contains("in use by stable"), "{line}");
        assert!(
            line.contains("Deployment istio-system/istiod-new (NotFound)"),
            "{line}"
        );
        m.deployments
            .insert(elsewhere.clone(), DeploymentSummary::ready(1));
        assert!(control_plane_write(&m, "1-22-6", &elsewhere).is_ok());
        // An unused revision may point anywhere.
        m.revisions
            .insert("1-24-0".into(), RevisionInfo::new("1.24.0"));
        let nowhere = ControlPlaneRef::resolve("1-24-0", Some("nope"), None);
        assert!(control_plane_write(&m, "1-24-0", &nowhere).is_ok());
        // ... unless a namespace pins it by name.
        m.namespaces
            .insert("pin".into(), NamespaceLabels::rev("1-24-0"));
        let e = control_plane_write(&m, "1-24-0", &nowhere).unwrap_err();
        let line = e.one_line();
        assert!(line.contains("in use by pin"), "{line}");
        assert!(
            line.contains("Deployment istio-system/nope (NotFound)"),
            "{line}"
        );
    }

    #[test]
    fn an_explicit_control_plane_is_the_one_judged() {
        let mut m = view(false);
        m.revisions.insert(
            "default".into(),
            RevisionInfo {
                control_plane: Some(ControlPlaneRef::resolve("default", Some("istiod"), None)),
                ..RevisionInfo::new("1.22.6")
            },
        );
        // A ready istiod-default does not count: the revision names plain istiod.
        istiod(&mut m, "default", DeploymentSummary::ready(1));
        let e = tag_write(&m, "prod", "default", ControlPlanes::Require).unwrap_err();
        assert_eq!(e.blockers[0].name, "istio-system/istiod");
        m.deployments.insert(
            ControlPlaneRef::resolve("default", Some("istiod"), None),
            DeploymentSummary::ready(1),
        );
        assert!(tag_write(&m, "prod", "default", ControlPlanes::Require).is_ok());
    }

    fn pod(ns: &str, name: &str, rev: &str) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            revision: Some(rev.into()),
            phase: "Running".into(),
            ready: true,
            ..Default::default()
        }
    }

    #[test]
    fn skip_policy_allows_one_minor_ahead() {
        assert!(skip_policy(&v("1.22.6"), &v("1.23.6")).is_ok());
        assert!(skip_policy(&v("1.22.6"), &v("1.23.0")).is_ok());
        assert!(skip_policy(&v("1.22.6"), &v("1.22.7")).is_ok());
        let e = skip_policy(&v("1.22.6"), &v("1.24.0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("skip policy") && e.contains("1.23.x"), "{e}");
        assert!(
            skip_policy(&v("1.22.6"), &v("1.22.6"))
                .unwrap_err()
                .to_string()
                .contains("not newer")
        );
        assert!(
            skip_policy(&v("1.22.6"), &v("1.21.9"))
                .unwrap_err()
                .to_string()
                .contains("not newer")
        );
        assert!(
            skip_policy(&v("1.22.6"), &v("2.0.0"))
                .unwrap_err()
                .to_string()
                .contains("major")
        );
        assert!(skip_policy(&v("1.22.6"), &v("1.23.0-rc.1")).is_ok());
    }

    #[test]
    fn canary_plan_and_refusals() {
        let mut m = view(false);
        istiod(&mut m, "1-23-6", DeploymentSummary::ready(1));
        assert_eq!(
            canary(&m, "1-23-6", "1.23.6", ControlPlanes::Require).unwrap(),
            CanaryPlan {
                create_revision: true,
                create_tag: true
            }
        );
        let e = canary(&m, "1-24-0", "1.24.0", ControlPlanes::Require).unwrap_err();
        assert!(e.to_string().contains("skip policy"), "{e}");
        assert!(
            canary(&m, "1-21-0", "1.21.0", ControlPlanes::Require)
                .unwrap_err()
                .reason
                .contains("not newer")
        );
        assert!(canary(&m, "Bad_Name", "1.23.6", ControlPlanes::Require).is_err());
        assert!(
            canary(&m, "x", "one", ControlPlanes::Require)
                .unwrap_err()
                .reason
                .contains("semantic")
        );

        let m = view(true);
        // Same canary again: nothing to do.
        assert_eq!(
            canary(&m, "1-23-6", "1.23.6", ControlPlanes::Require).unwrap(),
            CanaryPlan {
                create_revision: false,
                create_tag: false
            }
        );
        let e = canary(&m, "1-23-7", "1.23.7", ControlPlanes::Require).unwrap_err();
        assert!(e.reason.contains("a canary already exists"), "{e}");
        assert_eq!(e.blockers[0].name, "canary");
        // A revision of that name with another version.
        let e = canary(&m, "1-23-6", "1.23.5", ControlPlanes::Require).unwrap_err();
        assert!(e.reason.contains("already exists with version"), "{e}");
    }

    #[test]
    fn tag_write_rules() {
        let mut m = view(false);
        m.revisions
            .insert("1-24-0".into(), RevisionInfo::new("1.24.0"));
        m.revisions
            .insert("1-23-6".into(), RevisionInfo::new("1.23.6"));
        let mut m = m.with_ready_control_planes();
        assert!(tag_write(&m, "canary", "1-23-6", ControlPlanes::Require).is_ok());
        let e = tag_write(&m, "canary", "1-24-0", ControlPlanes::Require).unwrap_err();
        assert!(e.one_line().contains("skip policy"), "{}", e.one_line());
        let e = tag_write(&m, "canary", "1-99-0", ControlPlanes::Require).unwrap_err();
        assert!(
            e.reason.contains("does not exist") && e.fix.contains("1-22-6"),
            "{e}"
        );
        assert!(
            tag_write(&m, "1-22-6", "1-22-6", ControlPlanes::Require)
                .unwrap_err()
                .reason
                .contains("shadow")
        );
        // Other tags: only existence.
        assert!(tag_write(&m, "prod", "1-24-0", ControlPlanes::Require).is_ok());
        // Promotion: stable → canary's revision, then canary stays pointing there.
        m.tags.insert("canary".into(), TagInfo::new("1-23-6"));
        assert!(tag_write(&m, "stable", "1-23-6", ControlPlanes::Require).is_ok());
        let mut promoted = m.clone();
        promoted
            .tags
            .insert("stable".into(), TagInfo::new("1-23-6"));
        assert!(tag_write(&promoted, "canary", "1-23-6", ControlPlanes::Require).is_ok());
        // Stable moved elsewhere under a canary that would then break the policy.
        m.revisions
            .insert("1-21-0".into(), RevisionInfo::new("1.21.0"));
        let m = m.with_ready_control_planes();
        let e = tag_write(&m, "stable", "1-21-0", ControlPlanes::Require).unwrap_err();
        assert!(e.reason.contains("skip policy"), "{e}");
    }

    #[test]
    fn tag_delete_lists_namespaces_and_pod_level_users() {
        let mut m = view(true);
        m.namespaces
            .insert("default".into(), NamespaceLabels::rev("canary"));
        assert!(tag_delete(&m, "prod").is_ok());
        let e = tag_delete(&m, "canary").unwrap_err();
        assert_eq!(e.blockers.len(), 1);
        assert_eq!(
            e.blockers[0].to_string(),
            "namespace default (istio.io/rev=canary)"
        );
        assert!(
            e.one_line().contains("namespace default"),
            "{}",
            e.one_line()
        );
        // Pod labels count only in namespaces without injection labels.
        let mut p = pod("plain", "gw-1", "1-23-6");
        p.selector.rev_label = Some("canary".into());
        m.pods.push(p.clone());
        p.namespace = "default".into();
        m.pods.push(p);
        let e = tag_delete(&m, "canary").unwrap_err();
        let names: Vec<&str> = e.blockers.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["default", "plain/gw-1"]);
        // A pod that opts out (istiod's own pods: istio.io/rev=<rev> and inject=false) never
        // gets a sidecar: it does not use the tag or revision its label names.
        let mut istiod = pod("istio-system", "istiod-1-23-6-x", "none");
        istiod.revision = None;
        istiod.selector.rev_label = Some("1-23-6".into());
        istiod.selector.inject_label = Some("false".into());
        let mut m2 = view(true);
        m2.pods.push(istiod);
        assert!(revoke(&m2).is_ok(), "{:?}", revoke(&m2));
        // Stable: istio-injection=enabled counts.
        let m = view(false);
        let e = tag_delete(&m, "stable").unwrap_err();
        assert!(e.blockers[0].detail.contains("istio-injection=enabled"));
        // Its fix never suggests relabelling to the tag being deleted.
        assert!(!e.fix.contains("rev=stable"), "{}", e.fix);
        assert!(e.fix.contains("move the tag"), "{}", e.fix);
        let mut m = view(false);
        m.tags.insert("prod".into(), TagInfo::new("1-22-6"));
        m.namespaces
            .insert("shop".into(), NamespaceLabels::rev("prod"));
        assert!(
            tag_delete(&m, "prod")
                .unwrap_err()
                .fix
                .contains("rev=stable")
        );
    }

    #[test]
    fn revision_delete_and_force() {
        let mut m = view(true);
        m.pods.push(pod("default", "a", "1-22-6"));
        let e = revision_delete(&m, "1-22-6", false).unwrap_err();
        let names: Vec<&str> = e.blockers.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["stable", "default/a"]);
        assert!(e.fix.contains("move or delete the tags"), "{e}");
        m.tags.insert("stable".into(), TagInfo::new("1-23-6"));
        m.tags.remove("canary");
        let e = revision_delete(&m, "1-22-6", false).unwrap_err();
        assert_eq!(e.blockers.len(), 1);
        assert!(e.blockers[0].detail.contains("Running"));
        let w = revision_delete(&m, "1-22-6", true).unwrap();
        assert!(w[0].contains("default/a"), "{w:?}");
        // A namespace pinning it blocks even with force.
        m.namespaces
            .insert("pinned".into(), NamespaceLabels::rev("1-22-6"));
        assert!(revision_delete(&m, "1-22-6", true).is_err());
    }

    #[test]
    fn revision_write_rechecks_the_pair() {
        let m = view(true);
        assert!(revision_write(&m, "1-23-6", "1.23.7").is_ok());
        let e = revision_write(&m, "1-23-6", "1.25.0").unwrap_err();
        assert!(e.reason.contains("skip policy"), "{e}");
        assert!(
            revision_write(&m, "canary", "1.23.0")
                .unwrap_err()
                .reason
                .contains("RevisionTag")
        );
        assert!(revision_write(&m, "new", "nope").is_err());
        assert!(
            revision_write(&m, "1-30-0", "1.30.0").is_ok(),
            "untagged: free"
        );
    }

    #[test]
    fn promote_is_resumable() {
        let mut m = view(true);
        m.namespaces
            .insert("default".into(), NamespaceLabels::rev("canary"));
        m.namespaces
            .insert("other".into(), NamespaceLabels::rev("canary"));
        let p = promote(&m, ControlPlanes::Require).unwrap();
        assert!(p.move_stable && p.delete_canary);
        assert_eq!(p.previous, "1-22-6");
        assert_eq!(p.relabel, ["default", "other"]);
        // Interrupted after step 1 and one relabel.
        m.tags.insert(
            "stable".into(),
            TagInfo {
                revision: "1-23-6".into(),
                promoted_from: Some("1-22-6".into()),
            },
        );
        m.namespaces
            .insert("default".into(), NamespaceLabels::rev("stable"));
        let p = promote(&m, ControlPlanes::Require).unwrap();
        assert!(!p.move_stable && p.delete_canary);
        assert_eq!(p.relabel, ["other"]);
        assert_eq!(p.previous, "1-22-6");
        // Done.
        m.tags.remove("canary");
        m.namespaces
            .insert("other".into(), NamespaceLabels::rev("stable"));
        assert!(promote(&m, ControlPlanes::Require).unwrap().is_done());
        // Never deployed.
        assert!(promote(&view(false), ControlPlanes::Require).is_err());
    }

    #[test]
    fn revoke_rules() {
        let mut m = view(true);
        m.namespaces
            .insert("default".into(), NamespaceLabels::rev("canary"));
        m.namespaces
            .insert("pin".into(), NamespaceLabels::rev("1-23-6"));
        m.pods.push(pod("default", "reviews-v2-x", "1-23-6"));
        let e = revoke(&m).unwrap_err();
        let names: Vec<&str> = e.blockers.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["default", "pin", "default/reviews-v2-x"]);
        let mut ok = view(true);
        assert_eq!(
            revoke(&ok).unwrap(),
            Some(RevokePlan {
                delete_tag: true,
                revision: "1-23-6".into()
            })
        );
        // Interrupted after the tag was deleted.
        ok.tags.remove("canary");
        assert_eq!(
            revoke(&ok).unwrap(),
            Some(RevokePlan {
                delete_tag: false,
                revision: "1-23-6".into()
            })
        );
        // ... but not while a pod still runs it.
        let mut busy = ok.clone();
        busy.pods.push(pod("default", "r-1", "1-23-6"));
        assert_eq!(revoke(&busy).unwrap_err().blockers[0].name, "default/r-1");
        // Nothing left.
        assert_eq!(revoke(&view(false)).unwrap(), None);
        // After promotion (interrupted or not): refused.
        let mut p = view(true);
        p.tags.insert(
            "stable".into(),
            TagInfo {
                revision: "1-23-6".into(),
                promoted_from: Some("1-22-6".into()),
            },
        );
        assert!(revoke(&p).unwrap_err().reason.contains("cannot be revoked"));
        p.tags.remove("canary");
        assert!(revoke(&p).unwrap_err().reason.contains("cannot be revoked"));
    }

    #[test]
    fn unpublish_rules() {
        assert!(
            unpublish(&view(true), None, false)
                .unwrap_err()
                .reason
                .contains("not promoted")
        );
        let mut m = view(true);
        m.tags.remove("canary");
        m.tags.insert("stable".into(), TagInfo::new("1-23-6"));
        m.pods.push(pod("default", "details-1", "1-22-6"));
        m.pods.push(pod("default", "reviews-1", "1-23-6"));
        let e = unpublish(&m, None, false).unwrap_err();
        assert_eq!(e.blockers.len(), 1);
        assert_eq!(e.blockers[0].name, "default/details-1");
        assert!(e.fix.contains("--force"));
        let p = unpublish(&m, None, true).unwrap();
        assert_eq!(p.revisions, ["1-22-6"]);
        assert_eq!(p.warnings.len(), 1);
        m.pods.remove(0);
        assert_eq!(unpublish(&m, None, false).unwrap().revisions, ["1-22-6"]);
        // Stable cannot be unpublished.
        assert!(
            unpublish(&m, Some("1-23-6"), false).unwrap_err().blockers[0].kind
                == BlockerKind::RevisionTag
        );
        // Nothing old.
        assert!(
            unpublish(&view(false), None, false)
                .unwrap()
                .revisions
                .is_empty()
        );
    }

    #[test]
    fn switch_and_rollback() {
        let mut m = view(true);
        assert_eq!(
            switch(&m, "default", "canary", ControlPlanes::Require).unwrap(),
            NamespaceLabels::rev("canary")
        );
        assert!(
            switch(&m, "nope", "canary", ControlPlanes::Require)
                .unwrap_err()
                .reason
                .contains("does not exist")
        );
        assert!(
            switch(&view(false), "default", "canary", ControlPlanes::Require)
                .unwrap_err()
                .reason
                .contains("tag canary")
        );
        m.namespaces.insert(
            "off".into(),
            NamespaceLabels {
                injection: Some("disabled".into()),
                rev: None,
            },
        );
        assert!(switch(&m, "off", "canary", ControlPlanes::Require).is_err());
        assert_eq!(
            rollback(&m, "default", ControlPlanes::Require).unwrap(),
            NamespaceLabels::rev("stable")
        );
        assert!(rollback(&view(false), "default", ControlPlanes::Require).is_err());
    }
}
