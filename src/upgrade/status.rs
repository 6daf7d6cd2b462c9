//! `meshrev upgrade status`: the phase of the upgrade, revisions and tags, namespaces and
//! the workloads whose pods run another revision than their namespace now selects.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::core::{Decision, TAG_CANARY, TAG_STABLE};

use super::view::{MeshView, NamespaceSelect, Route, WorkloadState};

/// Where an upgrade stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Phase {
    /// No tag stable (or it points at a missing revision).
    NotInstalled,
    /// One revision in use; no upgrade under way.
    StableOnly,
    /// Tag canary points at a newer revision than stable.
    CanaryDeployed,
    /// Tags stable and canary point at the same revision: a promotion is unfinished.
    Promoting,
    /// Promoted; pods still run an old revision.
    DataPlaneUpgrading,
    /// Promoted; no pod or namespace uses the old revision any more.
    ReadyToUnpublish,
}

impl Phase {
    pub(crate) fn text(self) -> &'static str {
        match self {
            Phase::NotInstalled => "not installed (no tag stable)",
            Phase::StableOnly => "stable only",
            Phase::CanaryDeployed => "canary deployed",
            Phase::Promoting => "promotion unfinished",
            Phase::DataPlaneUpgrading => "promoted, data plane upgrading",
            Phase::ReadyToUnpublish => "ready to unpublish",
        }
    }
}

/// The old revisions: no tag points at them and they are older than stable's.
pub(crate) fn old_revisions(view: &MeshView) -> Vec<String> {
    let Some(stable) = view
        .stable()
        .and_then(|s| view.revisions.get(s))
        .and_then(|r| r.semver().ok())
    else {
        return Vec::new();
    };
    view.untagged_revisions()
        .into_iter()
        .filter(|r| view.revisions[*r].semver().is_ok_and(|v| v < stable))
        .map(str::to_string)
        .collect()
}

/// The phase of `view`.
pub(crate) fn phase(view: &MeshView) -> Phase {
    let Some(stable) = view.stable() else {
        return Phase::NotInstalled;
    };
    if let Some(canary) = view.tags.get(TAG_CANARY) {
        return if canary.revision == stable {
            Phase::Promoting
        } else {
            Phase::CanaryDeployed
        };
    }
    let old = old_revisions(view);
    if old.is_empty() {
        return Phase::StableOnly;
    }
    let in_use = old
        .iter()
        .any(|r| view.pods_on(r).next().is_some() || view.namespaces.values().any(|l| l.names(r)));
    if in_use {
        Phase::DataPlaneUpgrading
    } else {
        Phase::ReadyToUnpublish
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RevisionRow {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) tags: Vec<String>,
    /// Namespaces whose labels resolve to it.
    pub(crate) namespaces: usize,
    /// Pods that run its sidecar.
    pub(crate) pods: usize,
    /// Its istiod Deployment and that Deployment's state.
    pub(crate) control_plane: ControlPlaneRow,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ControlPlaneRow {
    /// `istio-system/istiod-1-23-6`.
    pub(crate) deployment: String,
    /// `Available 1/1`, `NotFound`, `Progressing 0/1 available`, `ScaledToZero`.
    pub(crate) state: String,
    pub(crate) ready: bool,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TagRow {
    pub(crate) name: String,
    pub(crate) revision: String,
    /// False when the revision does not exist.
    pub(crate) resolves: bool,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NamespaceRow {
    pub(crate) name: String,
    /// `istio-injection=enabled`, `istio.io/rev=canary`, or `-`.
    pub(crate) labels: String,
    /// The revision its labels resolve to (`None`: pods decide, or no injection).
    pub(crate) revision: Option<String>,
    /// `tag canary`, `revision`, `pod labels`, `disabled`, …
    pub(crate) via: String,
    /// Both labels set: which one wins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) conflict: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WorkloadRow {
    pub(crate) namespace: String,
    pub(crate) kind: String,
    pub(crate) name: String,
    pub(crate) pods: usize,
    pub(crate) ready: usize,
    /// Pods per sidecar revision (`none`: no sidecar).
    pub(crate) revisions: BTreeMap<String, usize>,
    /// The revision new pods get.
    pub(crate) target: Option<String>,
    pub(crate) needs_upgrade: bool,
    pub(crate) state: String,
    /// A gateway (Istio's `gateway` template): its proxy is the workload.
    pub(crate) gateway: bool,
}

/// Everything `status` prints.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatusReport {
    pub(crate) phase: Phase,
    pub(crate) phase_text: String,
    pub(crate) stable: Option<String>,
    pub(crate) canary: Option<String>,
    /// What to run next.
    pub(crate) next: String,
    pub(crate) revisions: Vec<RevisionRow>,
    pub(crate) tags: Vec<TagRow>,
    pub(crate) namespaces: Vec<NamespaceRow>,
    pub(crate) workloads: Vec<WorkloadRow>,
    /// Workloads flagged *needs upgrade*.
    pub(crate) needs_upgrade: usize,
    /// Things that are wrong (a tag to a missing revision, a label naming nothing).
    pub(crate) problems: Vec<String>,
}

impl StatusReport {
    pub(crate) fn new(view: &MeshView) -> Self {
        let phase = phase(view);
        let states = view.workload_states();
        let ns_route: BTreeMap<&str, Route> = view
            .namespaces
            .keys()
            .map(|n| (n.as_str(), view.namespace_route(n)))
            .collect();

        let revisions = view
            .revisions
            .iter()
            .map(|(name, r)| RevisionRow {
                name: name.clone(),
                version: r.version.clone(),
                tags: view.tags_of(name).into_iter().map(str::to_string).collect(),
                namespaces: view
                    .namespaces
                    .iter()
                    .filter(|(n, l)| {
                        !matches!(l.select(), NamespaceSelect::Unlabelled)
                            && ns_route[n.as_str()].revision() == Some(name)
                    })
                    .count(),
                pods: view.pods_on(name).count(),
                control_plane: {
                    let cp = view.control_plane(name);
                    ControlPlaneRow {
                        deployment: cp.deployment.to_string(),
                        state: cp.state.to_string(),
                        ready: cp.ready(),
                    }
                },
            })
            .collect::<Vec<RevisionRow>>();
        let tags = view
            .tags
            .iter()
            .map(|(name, t)| TagRow {
                name: name.clone(),
                revision: t.revision.clone(),
                resolves: view.revisions.contains_key(&t.revision),
            })
            .collect::<Vec<_>>();
        let mut problems: Vec<String> = tags
            .iter()
            .filter(|t| !t.resolves)
            .map(|t| {
                format!(
                    "tag {} points at MeshRevision {}, which does not exist",
                    t.name, t.revision
                )
            })
            .collect();
        // A revision that tags or namespaces route pods to, whose istiod is not up.
        for r in &revisions {
            if !r.control_plane.ready && (!r.tags.is_empty() || r.namespaces > 0) {
                problems.push(format!(
                    "revision {}'s control plane is not ready (Deployment {}: {}): its new pods get a sidecar without configuration; tags and switches to it are refused",
                    r.name, r.control_plane.deployment, r.control_plane.state
                ));
            }
        }

        let mesh_namespaces: std::collections::BTreeSet<&str> =
            states.iter().map(|s| s.namespace.as_str()).collect();
        let mut namespaces = Vec::new();
        for (name, labels) in &view.namespaces {
            if labels.is_empty() && !mesh_namespaces.contains(name.as_str()) {
                continue;
            }
            let (revision, via) = match (&labels.select(), &ns_route[name.as_str()]) {
                (NamespaceSelect::Unlabelled, _) => (None, "pod labels".to_string()),
                (_, Decision::Inject { revision, via, .. }) => (
                    Some(revision.clone()),
                    match via.tag_name() {
                        Some(t) => format!("tag {t}"),
                        None => "revision".into(),
                    },
                ),
                (_, skip) => (None, skip.skip_text().unwrap_or_default()),
            };
            if let (NamespaceSelect::Name { name: n, .. }, None) = (&labels.select(), &revision) {
                problems.push(format!(
                    "namespace {name} selects {n}, which is neither a tag nor a revision: its new pods get no sidecar"
                ));
            }
            let conflict = match labels.select() {
                NamespaceSelect::Name {
                    ignored_rev: Some(r),
                    ..
                } => Some(format!(
                    "istio-injection=enabled wins over istio.io/rev={r}; remove one (meshrev upgrade switch {name} --to {})",
                    if r == TAG_CANARY {
                        TAG_CANARY
                    } else {
                        TAG_STABLE
                    }
                )),
                _ => None,
            };
            namespaces.push(NamespaceRow {
                name: name.clone(),
                labels: labels.describe(),
                revision,
                via,
                conflict,
            });
        }

        let workloads: Vec<WorkloadRow> = states.iter().map(row).collect();
        let needs_upgrade = workloads.iter().filter(|w| w.needs_upgrade).count();
        let next = next_step(view, phase, &states);
        StatusReport {
            phase,
            phase_text: phase.text().to_string(),
            stable: view.stable().map(str::to_string),
            canary: view.canary().map(str::to_string),
            next,
            revisions,
            tags,
            namespaces,
            workloads,
            needs_upgrade,
            problems,
        }
    }

    /// The human-readable report.
    pub(crate) fn render_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "PHASE: {}", self.phase_text);
        let _ = writeln!(out, "NEXT:  {}", self.next);
        out.push('\n');
        out.push_str(&table(
            &[
                "REVISION",
                "VERSION",
                "TAGS",
                "NAMESPACES",
                "PODS",
                "CONTROL PLANE",
                "ISTIOD",
            ],
            self.revisions
                .iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        r.version.clone(),
                        dash(r.tags.join(",")),
                        r.namespaces.to_string(),
                        r.pods.to_string(),
                        r.control_plane.state.clone(),
                        r.control_plane.deployment.clone(),
                    ]
                })
                .collect(),
        ));
        out.push('\n');
        out.push_str(&table(
            &["NAMESPACE", "LABELS", "REVISION", "VIA", "CONFLICT"],
            self.namespaces
                .iter()
                .map(|n| {
                    vec![
                        n.name.clone(),
                        n.labels.clone(),
                        n.revision.clone().unwrap_or_else(|| "-".into()),
                        n.via.clone(),
                        n.conflict.clone().unwrap_or_default(),
                    ]
                })
                .collect(),
        ));
        out.push('\n');
        out.push_str(&table(
            &[
                "NAMESPACE",
                "WORKLOAD",
                "PODS",
                "READY",
                "SIDECARS",
                "TARGET",
                "STATUS",
            ],
            self.workloads
                .iter()
                .map(|w| {
                    vec![
                        w.namespace.clone(),
                        format!(
                            "{}/{}{}",
                            w.kind.to_ascii_lowercase(),
                            w.name,
                            if w.gateway { " (gateway)" } else { "" }
                        ),
                        w.pods.to_string(),
                        w.ready.to_string(),
                        sidecars(&w.revisions),
                        w.target.clone().unwrap_or_else(|| "-".into()),
                        w.state.clone(),
                    ]
                })
                .collect(),
        ));
        if self.needs_upgrade > 0 {
            let _ = writeln!(out, "\n{} workload(s) need upgrade.", self.needs_upgrade);
        }
        if !self.problems.is_empty() {
            out.push_str("\nPROBLEMS:\n");
            for p in &self.problems {
                let _ = writeln!(out, "  {p}");
            }
        }
        out
    }
}

fn row(s: &WorkloadState) -> WorkloadRow {
    WorkloadRow {
        namespace: s.namespace.clone(),
        kind: s.kind.clone(),
        name: s.name.clone(),
        pods: s.pods,
        ready: s.ready,
        revisions: s
            .revisions
            .iter()
            .map(|(r, n)| (r.clone().unwrap_or_else(|| "none".into()), *n))
            .collect(),
        target: s.target.revision().map(str::to_string),
        needs_upgrade: s.needs_upgrade(),
        state: s.state(),
        gateway: s.gateway,
    }
}

/// `1-22-6`, or `1-22-6:1,1-23-6:2` when mixed; `-` without pods.
pub(crate) fn sidecars(revisions: &BTreeMap<String, usize>) -> String {
    match revisions.len() {
        0 => "-".into(),
        1 => revisions.keys().next().cloned().unwrap_or_default(),
        _ => revisions
            .iter()
            .map(|(r, n)| format!("{r}:{n}"))
            .collect::<Vec<_>>()
            .join(","),
    }
}

fn dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

fn next_step(view: &MeshView, phase: Phase, states: &[WorkloadState]) -> String {
    match phase {
        Phase::NotInstalled => {
            "create a MeshRevision and tag stable (kubectl apply -f manifests/samples.yaml)".into()
        }
        Phase::StableOnly => {
            "to upgrade: meshrev upgrade canary --revision REV --version VERSION".into()
        }
        Phase::CanaryDeployed => {
            let canary = view.canary().unwrap_or_default();
            let ns_on_canary = view
                .namespaces
                .keys()
                .any(|n| view.namespace_route(n).revision() == Some(canary));
            if !ns_on_canary {
                "meshrev upgrade switch NAMESPACE --to canary, then redeploy a workload".into()
            } else if view.pods_on(canary).next().is_none() {
                "redeploy a workload: meshrev upgrade rollout --namespace NAMESPACE --workload deployment/NAME".into()
            } else {
                "meshrev upgrade verify, then meshrev upgrade promote --yes (or: meshrev upgrade rollback NAMESPACE --restart, then meshrev upgrade revoke)".into()
            }
        }
        Phase::Promoting => "finish the promotion: meshrev upgrade promote --yes".into(),
        Phase::DataPlaneUpgrading => {
            let n = states.iter().filter(|s| s.needs_upgrade()).count();
            format!("{n} workload(s) need upgrade: meshrev upgrade rollout --wait")
        }
        Phase::ReadyToUnpublish => "meshrev upgrade unpublish".into(),
    }
}

/// Left-aligned columns separated by two spaces.
pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let pad = widths[i] - c.chars().count();
                s.push_str(c);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut out, headers.to_vec());
    for r in &rows {
        line(&mut out, r.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::view::{
        NamespaceLabels, PodInfo, PodSelector, RevisionInfo, TagInfo, WorkloadId, WorkloadInfo,
        WorkloadKind,
    };

    fn base() -> MeshView {
        let mut m = MeshView::default();
        m.revisions
            .insert("1-22-6".into(), RevisionInfo::new("1.22.6"));
        m.tags.insert("stable".into(), TagInfo::new("1-22-6"));
        m.namespaces
            .insert("default".into(), NamespaceLabels::injection_enabled());
        m.workloads.push(WorkloadInfo {
            id: WorkloadId {
                namespace: "default".into(),
                kind: WorkloadKind::Deployment,
                name: "details".into(),
            },
            selector: PodSelector::default(),
            replicas: 1,
            paused: false,
            on_delete: false,
            gateway: false,
        });
        m.pods.push(PodInfo {
            namespace: "default".into(),
            name: "details-1".into(),
            revision: Some("1-22-6".into()),
            phase: "Running".into(),
            ready: true,
            owner: Some(("Deployment".into(), "details".into())),
            ..Default::default()
        });
        m
    }

    #[test]
    fn phases_through_the_lifecycle() {
        let mut m = base();
        assert_eq!(phase(&m), Phase::StableOnly);
        m.revisions
            .insert("1-23-6".into(), RevisionInfo::new("1.23.6"));
        m.tags.insert("canary".into(), TagInfo::new("1-23-6"));
        assert_eq!(phase(&m), Phase::CanaryDeployed);
        m.tags.insert("stable".into(), TagInfo::new("1-23-6"));
        assert_eq!(phase(&m), Phase::Promoting);
        m.tags.remove("canary");
        assert_eq!(phase(&m), Phase::DataPlaneUpgrading);
        let r = StatusReport::new(&m);
        assert_eq!(r.needs_upgrade, 1);
        assert!(r.next.contains("rollout"), "{}", r.next);
        m.pods[0].revision = Some("1-23-6".into());
        assert_eq!(phase(&m), Phase::ReadyToUnpublish);
        m.revisions.remove("1-22-6");
        assert_eq!(phase(&m), Phase::StableOnly);
        m.tags.clear();
        assert_eq!(phase(&m), Phase::NotInstalled);
    }

    #[test]
    fn report_flags_conflicts_and_needs_upgrade() {
        let mut m = base();
        m.revisions
            .insert("1-23-6".into(), RevisionInfo::new("1.23.6"));
        m.tags.insert("canary".into(), TagInfo::new("1-23-6"));
        m.namespaces.insert(
            "both".into(),
            NamespaceLabels {
                injection: Some("enabled".into()),
                rev: Some("canary".into()),
            },
        );
        m.namespaces
            .insert("default".into(), NamespaceLabels::rev("canary"));
        let r = StatusReport::new(&m);
        assert_eq!(r.phase, Phase::CanaryDeployed);
        let both = r.namespaces.iter().find(|n| n.name == "both").unwrap();
        assert_eq!(both.revision.as_deref(), Some("1-22-6"));
        assert!(both.conflict.as_ref().unwrap().contains("wins"));
        let w = &r.workloads[0];
        assert!(w.needs_upgrade);
        assert_eq!(w.target.as_deref(), Some("1-23-6"));
        let text = r.render_table();
        assert!(text.contains("PHASE: canary deployed"), "{text}");
        assert!(text.contains("deployment/details"), "{text}");
        assert!(text.contains("needs upgrade"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["phase"], "canary-deployed");
        assert_eq!(json["workloads"][0]["revisions"]["1-22-6"], 1);
    }

    #[test]
    fn each_revision_shows_its_control_plane() {
        use crate::upgrade::view::{ControlPlaneRef, DeploymentSummary};
        let mut m = base();
        m.revisions
            .insert("1-23-6".into(), RevisionInfo::new("1.23.6"));
        m.tags.insert("canary".into(), TagInfo::new("1-23-6"));
        m.deployments.insert(
            ControlPlaneRef::resolve("1-22-6", None, None),
            DeploymentSummary::ready(2),
        );
        let r = StatusReport::new(&m);
        let cp = |name: &str| {
            r.revisions
                .iter()
                .find(|x| x.name == name)
                .map(|x| x.control_plane.clone())
                .unwrap()
        };
        assert_eq!(cp("1-22-6").state, "Available 2/2");
        assert!(cp("1-22-6").ready);
        assert_eq!(cp("1-23-6").state, "NotFound");
        assert_eq!(cp("1-23-6").deployment, "istio-system/istiod-1-23-6");
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("revision 1-23-6's control plane is not ready")),
            "{:?}",
            r.problems
        );
        let text = r.render_table();
        assert!(text.contains("CONTROL PLANE"), "{text}");
        assert!(
            text.lines().any(|l| l.starts_with("1-22-6")
                && l.contains("Available 2/2")
                && l.contains("istio-system/istiod-1-22-6")),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["revisions"][1]["controlPlane"]["state"], "NotFound");
        assert_eq!(json["revisions"][1]["controlPlane"]["ready"], false);
    }

    #[test]
    fn table_aligns() {
        let t = table(&["A", "BB"], vec![vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
    }
}
