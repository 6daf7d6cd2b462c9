//! Status of MeshRevisions and RevisionTags, written off the webhook path by one replica.
//!
//! Ownership: only the replica holding the Lease ([`LeaseHandle`]) writes status. It
//! computes the desired status from the published table, the problems the last build
//! found, and the index (namespaces, live pods per revision), and compares it with the
//! status the index last observed on each object: only a difference is written, by
//! server-side apply with field manager [`FIELD_MANAGER`] on the status subresource. So with
//! nothing changing it writes nothing and calls nothing but the Lease renewal.
//!
//! It recomputes when the builder wakes it (the routing or status projection changed), at
//! most once per [`MIN_INTERVAL`] (a rollout's pod events are folded together), after it
//! becomes leader, and every [`RESYNC`] (from the index: no API call unless something
//! differs).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::lease::RENEW_EVERY;
use super::{ClusterView, LeaseHandle, Observed};
use crate::config::{Condition, MeshRevision, MeshRevisionStatus, RevisionTag, RevisionTagStatus};
use crate::core::control_plane::CONDITION;
use crate::router;
use crate::table::{ConfigKind, Problem, Table, TableStore};
use crate::upgrade::view::ControlPlane;

/// The field manager of status writes.
pub(crate) const FIELD_MANAGER: &str = "meshrev";
/// How often the writer recomputes without a wake-up (from the index; a write only if the
/// observed status differs, e.g. someone else edited it).
pub(crate) const RESYNC: Duration = Duration::from_secs(300);
/// The least time between two recomputations.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How long a write of ours that the watch has not shown yet is taken as in flight (not
/// written again); after that the observed status decides again, so someone else's edit
/// made meanwhile is corrected.
pub(crate) const IN_FLIGHT: Duration = Duration::from_secs(5);

/// Desired status of every revision and tag, from a table, the live pods' revisions and
/// each revision's control plane (`ControlPlaneReady`: `True` only when its istiod
/// Deployment is available; a Deployment not found is `False`, reason `NotFound`, not an
/// error). A revision missing from `control_planes` gets no such condition.
pub(crate) fn compute(
    table: &Table,
    namespaces: &[String],
    pod_revisions: &BTreeMap<String, u32>,
    problems: &[Problem],
    control_planes: &BTreeMap<String, ControlPlane>,
) -> (
    BTreeMap<String, MeshRevisionStatus>,
    BTreeMap<String, RevisionTagStatus>,
) {
    let mut ns_count: BTreeMap<&str, u32> = BTreeMap::new();
    for ns in namespaces {
        if let Some(rev) = router::resolve_namespace(table, ns) {
            *ns_count.entry(rev.name.as_str()).or_default() += 1;
        }
    }
    let tags = table.tags();
    let mut revs = BTreeMap::new();
    for rev in table.revisions() {
        let name = rev.name.as_str();
        let n = ns_count.get(name).copied().unwrap_or(0);
        let pods = pod_revisions.get(name).copied().unwrap_or(0);
        let in_use = n > 0 || pods > 0;
        revs.insert(
            name.to_string(),
            MeshRevisionStatus {
                tags: tags
                    .iter()
                    .filter(|(_, r)| **r == name)
                    .map(|(t, _)| t.to_string())
                    .collect(),
                namespaces: n,
                pods,
                conditions: vec![
                    condition(
                        "InUse",
                        in_use,
                        if in_use { "Selected" } else { "Unused" },
                        &format!("{n} namespaces select it, {pods} pods carry its sidecar"),
                    ),
                    match rev.version_warning() {
                        Some(w) => condition("Ready", true, "NewerThanKnown", &w),
                        None => condition(
                            "Ready",
                            true,
                            "Rendered",
                            "the sidecar template is built and served",
                        ),
                    },
                ]
                .into_iter()
                .chain(control_planes.get(name).map(control_plane_condition))
                .collect(),
                observed_generation: None,
            },
        );
    }
    for p in problems
        .iter()
        .filter(|p| p.kind == ConfigKind::MeshRevision)
    {
        revs.insert(
            p.name.clone(),
            MeshRevisionStatus {
                conditions: std::iter::once(condition("Ready", false, "Invalid", &p.message))
                    .chain(control_planes.get(&p.name).map(control_plane_condition))
                    .collect(),
                ..Default::default()
            },
        );
    }
    let mut tag_status: BTreeMap<String, RevisionTagStatus> = tags
        .iter()
        .map(|(t, r)| {
            (
                t.to_string(),
                RevisionTagStatus {
                    resolved_revision: Some(r.to_string()),
                    message: String::new(),
                },
            )
        })
        .collect();
    for p in problems
        .iter()
        .filter(|p| p.kind == ConfigKind::RevisionTag)
    {
        tag_status.insert(
            p.name.clone(),
            RevisionTagStatus {
                resolved_revision: None,
                message: p.message.clone(),
            },
        );
    }
    (revs, tag_status)
}

/// `ControlPlaneReady`: reason `Available`, `NotFound`, `Progressing` or `ScaledToZero`;
/// the message names the Deployment and its state.
fn control_plane_condition(cp: &ControlPlane) -> Condition {
    condition(CONDITION, cp.ready(), cp.state.reason(), &cp.describe())
}

fn condition(type_: &str, status: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: None,
    }
}

/// Runs the status writer: takes part in the election, and while leading keeps status in
/// step. Returns once the Lease is released (shutdown).
pub(crate) async fn run(
    client: Client,
    store: Arc<TableStore>,
    cluster: ClusterView,
    problems: Arc<std::sync::Mutex<Vec<Problem>>>,
    changed: Arc<Notify>,
    lease: LeaseHandle,
) {
    let mut w = Writer {
        revs: Api::all(client.clone()),
        tags: Api::all(client),
        written_revs: BTreeMap::new(),
        written_tags: BTreeMap::new(),
    };
    let mut leader = false;
    let mut pending = true;
    let now = Instant::now();
    let (mut renew_at, mut resync_at, mut write_after) = (now, now + RESYNC, now);
    loop {
        if lease.is_released().await {
            return;
        }
        let now = Instant::now();
        if now >= renew_at {
            renew_at = now + RENEW_EVERY;
            let was = leader;
            leader = match lease.hold().await {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(error = %e, "status writer: lease unavailable");
                    false
                }
            };
            if leader && !was {
                tracing::info!(holder = lease.holder(), "status writer: leading");
                w.forget();
                pending = true;
            } else if was && !leader {
                tracing::info!("status writer: lost the lease");
            }
        }
        if now >= resync_at {
            resync_at = now + RESYNC;
            w.forget();
            pending = true;
        }
        if leader && pending && now >= write_after && cluster.with(|ix| ix.synced()) {
            pending = false;
            write_after = now + MIN_INTERVAL;
            let problems = problems.lock().map(|p| p.clone()).unwrap_or_default();
            match w.write(&store.load_full(), &cluster, &problems).await {
                Ok(Recheck(false)) => {}
                // Look again once our writes in flight have had time to show.
                Ok(Recheck(true)) => {
                    pending = true;
                    write_after = now + IN_FLIGHT;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "status writer: update failed; retrying");
                    w.forget();
                    pending = true;
                }
            }
        }
        let wake = if leader && pending {
            renew_at.min(write_after)
        } else {
            renew_at
        }
        .min(resync_at);
        tokio::select! {
            () = changed.notified() => pending = true,
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// A status this replica wrote: to which object (uid), and when.
#[derive(Clone, Debug)]
pub(crate) struct Written<S> {
    pub(crate) uid: Option<String>,
    pub(crate) status: S,
    pub(crate) at: Instant,
}

/// True when a write was skipped as in flight: look again after [`IN_FLIGHT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Recheck(bool);

/// The status writer's API handles and what it wrote, so that a wake-up before the watch
/// has delivered its own write does not write it again.
struct Writer {
    revs: Api<MeshRevision>,
    tags: Api<RevisionTag>,
    written_revs: BTreeMap<String, Written<MeshRevisionStatus>>,
    written_tags: BTreeMap<String, Written<RevisionTagStatus>>,
}

impl Writer {
    fn forget(&mut self) {
        self.written_revs.clear();
        self.written_tags.clear();
    }

    async fn write(
        &mut self,
        table: &Table,
        cluster: &ClusterView,
        problems: &[Problem],
    ) -> kube::Result<Recheck> {
        let (namespaces, pods, seen_revs, seen_tags, control_planes) = cluster.with(|ix| {
            (
                ix.labelled_namespaces(),
                ix.pods_per_revision(),
                ix.revision_statuses(),
                ix.tag_statuses(),
                ix.control_planes(),
            )
        });
        let (want_revs, want_tags) = compute(table, &namespaces, &pods, problems, &control_planes);
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let now = Instant::now();
        let (revs, recheck_revs) = to_write(&want_revs, &seen_revs, &self.written_revs, now);
        let (tags, recheck_tags) = to_write(&want_tags, &seen_tags, &self.written_tags, now);
        for (name, status) in revs {
            let body = json!({
                "apiVersion": "meshrev.io/v1alpha1",
                "kind": "MeshRevision",
                "metadata": {"name": name},
                "status": status,
            });
            if applied(
                self.revs
                    .patch_status(name, &pp, &Patch::Apply(&body))
                    .await,
            )? {
                let uid = seen_revs.get(name).and_then(|o| o.uid.clone());
                self.written_revs.insert(name.clone(), written(uid, status));
            }
        }
        for (name, status) in tags {
            // Under apply, a field this manager set before and leaves out now is removed
            // (a tag that stops resolving loses its `resolvedRevision`).
            let body = json!({
                "apiVersion": "meshrev.io/v1alpha1",
                "kind": "RevisionTag",
                "metadata": {"name": name},
                "status": status,
            });
            if applied(
                self.tags
                    .patch_status(name, &pp, &Patch::Apply(&body))
                    .await,
            )? {
                let uid = seen_tags.get(name).and_then(|o| o.uid.clone());
                self.written_tags.insert(name.clone(), written(uid, status));
            }
        }
        Ok(Recheck(recheck_revs || recheck_tags))
    }
}

fn written<S: Clone>(uid: Option<String>, status: &S) -> Written<S> {
    Written {
        uid,
        status: status.clone(),
        at: Instant::now(),
    }
}

/// The statuses to write: desired, on an object the index knows, and neither observed
/// there already nor written by us to that very object less than [`IN_FLIGHT`] ago. The
/// flag is true when a write was skipped as in flight.
pub(crate) fn to_write<'a, S: PartialEq>(
    want: &'a BTreeMap<String, S>,
    seen: &BTreeMap<String, Observed<S>>,
    written: &BTreeMap<String, Written<S>>,
    now: Instant,
) -> (Vec<(&'a String, &'a S)>, bool) {
    let mut in_flight = false;
    let out = want
        .iter()
        .filter(|(name, status)| {
            let Some(seen) = seen.get(*name) else {
                return false;
            };
            if seen.status.as_ref() == Some(*status) {
                return false;
            }
            let flying = written.get(*name).is_some_and(|w| {
                w.uid == seen.uid && w.status == **status && now.duration_since(w.at) < IN_FLIGHT
            });
            in_flight |= flying;
            !flying
        })
        .collect();
    (out, in_flight)
}

/// Ok(true) when written; Ok(false) when the object is gone (404).
fn applied<T>(r: kube::Result<T>) -> kube::Result<bool> {
    match r {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{NamespaceLabels, embedded_default};
    use std::collections::HashMap;

    #[test]
    fn counts_namespaces_pods_and_tags_per_revision() {
        let t = embedded_default().with_namespaces(HashMap::from([
            (
                "a".to_string(),
                NamespaceLabels {
                    injection: Some("enabled".into()),
                    rev: None,
                },
            ),
            (
                "b".to_string(),
                NamespaceLabels {
                    injection: None,
                    rev: Some("canary".into()),
                },
            ),
            (
                "c".to_string(),
                NamespaceLabels {
                    injection: None,
                    rev: Some("1-23-6".into()),
                },
            ),
        ]));
        let names: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let pods = BTreeMap::from([("1-22-6".to_string(), 3)]);
        let problems = vec![Problem {
            kind: ConfigKind::RevisionTag,
            name: "old".into(),
            message: "spec.revision \"x\" names no MeshRevision".into(),
        }];
        use crate::upgrade::view::{ControlPlaneRef, ControlPlaneState, DeploymentSummary};
        let cp = |rev: &str, d: Option<DeploymentSummary>| ControlPlane {
            deployment: ControlPlaneRef::resolve(rev, None, None),
            state: ControlPlaneState::of(d.as_ref()),
        };
        let down = DeploymentSummary::unavailable();
        let control_planes = BTreeMap::from([
            ("1-22-6".to_string(), cp("1-22-6", Some(down))),
            ("1-23-6".to_string(), cp("1-23-6", None)),
        ]);
        let (revs, tags) = compute(&t, &names, &pods, &problems, &control_planes);
        let cond = |rev: &str| {
            revs[rev]
                .conditions
                .iter()
                .find(|c| c.type_ == "ControlPlaneReady")
                .cloned()
                .expect("a ControlPlaneReady condition")
        };
        let c = cond("1-22-6");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Progressing")
        );
        assert_eq!(
            c.message,
            "Deployment istio-system/istiod-1-22-6: Progressing 0/1 available"
        );
        let c = cond("1-23-6");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NotFound")
        );
        assert!(
            c.message.contains("istio-system/istiod-1-23-6"),
            "{}",
            c.message
        );
        let stable = &revs["1-22-6"];
        assert_eq!(
            (stable.namespaces, stable.pods, stable.tags.clone()),
            (1, 3, vec!["stable".to_string()])
        );
        let canary = &revs["1-23-6"];
        assert_eq!((canary.namespaces, canary.pods), (2, 0));
        assert_eq!(canary.conditions[0].status, "True");
        assert_eq!(tags["canary"].resolved_revision.as_deref(), Some("1-23-6"));
        assert!(tags["old"].resolved_revision.is_none() && tags["old"].message.contains("x"));
    }

    #[test]
    fn writes_only_what_differs_from_what_was_observed_or_written() {
        let st = |pods: u32| MeshRevisionStatus {
            pods,
            ..Default::default()
        };
        let seen = |uid: &str, status: Option<MeshRevisionStatus>| Observed {
            uid: Some(uid.to_string()),
            status,
        };
        let want = BTreeMap::from([
            ("same".to_string(), st(1)),
            ("differs".to_string(), st(2)),
            ("never-written".to_string(), st(3)),
            ("in-flight".to_string(), st(4)),
            ("recreated".to_string(), st(5)),
            ("not-indexed".to_string(), st(6)),
        ]);
        let observed = BTreeMap::from([
            ("same".to_string(), seen("u1", Some(st(1)))),
            ("differs".to_string(), seen("u2", Some(st(0)))),
            ("never-written".to_string(), seen("u3", None)),
            ("in-flight".to_string(), seen("u4", Some(st(0)))),
            ("recreated".to_string(), seen("u5-new", None)),
        ]);
        let now = Instant::now();
        let w = |uid: &str, status| Written {
            uid: Some(uid.to_string()),
            status,
            at: now,
        };
        let written = BTreeMap::from([
            ("in-flight".to_string(), w("u4", st(4))),
            ("recreated".to_string(), w("u5", st(5))),
        ]);
        let (names, recheck) = to_write(&want, &observed, &written, now);
        let names: Vec<&str> = names.into_iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["differs", "never-written", "recreated"]);
        assert!(recheck, "in-flight was skipped: look again later");
        // Long after: the write never showed (someone else wrote meanwhile): written again.
        let (names, recheck) = to_write(&want, &observed, &written, now + IN_FLIGHT);
        assert_eq!(names.len(), 4);
        assert!(!recheck);
    }

    /// The writer against a fake API server: server-side apply of what differs, with
    /// field manager `meshrev` and force, on the status subresource; nothing once the
    /// watch shows it; nothing for an object the index does not know.
    #[tokio::test]
    async fn applies_only_differences_by_server_side_apply() {
        use crate::config::{MeshRevisionSpec, RevisionTagSpec};
        use crate::controller::fake_api::fake;
        use crate::controller::index::{Kind, Object};
        use crate::table::TableBuilder;

        let rev = |status: Option<MeshRevisionStatus>| {
            let mut r = MeshRevision::new(
                "1-22-6",
                MeshRevisionSpec {
                    version: "1.22.6".into(),
                    ..Default::default()
                },
            );
            r.metadata.uid = Some("uid-1".into());
            r.status = status;
            Object::revision(r)
        };
        let tag = |status: Option<RevisionTagStatus>| {
            let mut t = RevisionTag::new(
                "stable",
                RevisionTagSpec {
                    revision: "1-22-6".into(),
                },
            );
            t.metadata.uid = Some("uid-2".into());
            t.status = status;
            Object::tag(t)
        };
        let cluster = ClusterView::new();
        cluster.with(|ix| {
            ix.reset(Kind::Revisions, vec![rev(None)]);
            ix.reset(Kind::Tags, vec![tag(None)]);
            for k in [
                Kind::Namespaces,
                Kind::Nodes,
                Kind::Pods,
                Kind::ControlPlanes,
            ] {
                ix.reset(k, Vec::new());
            }
        });
        let (table, problems) = cluster.with(|ix| ix.table(&mut TableBuilder::new()));
        let control_planes = cluster.with(|ix| ix.control_planes());
        let (want_revs, want_tags) =
            compute(&table, &[], &BTreeMap::new(), &problems, &control_planes);

        let reply = |o: Object| match o {
            Object::Revision(r) => serde_json::to_value(*r).unwrap(),
            Object::Tag(t) => serde_json::to_value(*t).unwrap(),
            _ => unreachable!(),
        };
        let (client, api) = fake(vec![(200, reply(rev(None))), (200, reply(tag(None)))]);
        let mut w = Writer {
            revs: Api::all(client.clone()),
            tags: Api::all(client),
            written_revs: BTreeMap::new(),
            written_tags: BTreeMap::new(),
        };
        w.write(&table, &cluster, &problems).await.unwrap();
        let calls = api.requests();
        assert_eq!(calls.len(), 2, "{calls:?}");
        let base = "/apis/meshrev.io/v1alpha1";
        assert_eq!(
            (calls[0].method.as_str(), calls[0].path.as_str()),
            ("PATCH", &*format!("{base}/meshrevisions/1-22-6/status"))
        );
        assert_eq!(calls[1].path, format!("{base}/revisiontags/stable/status"));
        for c in &calls {
            assert!(
                c.query.contains("fieldManager=meshrev") && c.query.contains("force=true"),
                "{}",
                c.query
            );
        }
        assert_eq!(calls[0].body["kind"], "MeshRevision");
        assert_eq!(calls[0].body["metadata"]["name"], "1-22-6");
        assert_eq!(calls[1].body["status"]["resolvedRevision"], "1-22-6");

        // Before the watch delivers the write: not written again, but looked at later.
        assert_eq!(
            w.write(&table, &cluster, &problems).await.unwrap(),
            Recheck(true)
        );
        assert_eq!(api.requests().len(), 2);
        // The watch shows it; even after forgetting what was written, nothing to do.
        cluster.with(|ix| {
            ix.apply(rev(Some(want_revs["1-22-6"].clone())));
            ix.apply(tag(Some(want_tags["stable"].clone())));
        });
        w.forget();
        assert_eq!(
            w.write(&table, &cluster, &problems).await.unwrap(),
            Recheck(false)
        );
        assert_eq!(api.requests().len(), 2, "no call at steady state");
    }
}
