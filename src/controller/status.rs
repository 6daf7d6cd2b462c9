//! Status of MeshRevisions and RevisionTags, written off the webhook path by one replica.
//!
//! Ownership: only the replica holding the Lease writes status; it recomputes from the
//! published table and a LIST of live pods (Succeeded and Failed pods do not count) every
//! [`RESYNC`] and whenever the table changes, and patches only what changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;

use crate::config::{Condition, MeshRevision, MeshRevisionStatus, RevisionTag, RevisionTagStatus};
use crate::router;
use crate::table::{Problem, Table, TableStore};

/// How often status is recomputed without a table change (pods come and go).
pub const RESYNC: Duration = Duration::from_secs(10);
const LEASE_NAME: &str = "meshrev-status-writer";
const LEASE_SECONDS: i32 = 15;

/// Who this replica is, and where the Lease lives.
#[derive(Clone, Debug)]
pub struct Identity {
    pub holder: String,
    pub namespace: String,
}

impl Identity {
    /// `POD_NAME`/`POD_NAMESPACE` (downward API), else the host name and `meshrev-system`.
    pub fn from_env() -> Self {
        let holder = std::env::var("POD_NAME")
            .ok()
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .unwrap_or_else(|| "meshrev".into());
        Identity {
            holder: format!("{holder}-{}", std::process::id()),
            namespace: std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "meshrev-system".into()),
        }
    }
}

/// Tries to take or renew the Lease; true while this replica holds it.
async fn hold_lease(api: &Api<Lease>, me: &str) -> kube::Result<bool> {
    match api.get_opt(LEASE_NAME).await? {
        None => {
            let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.to_string()),
                    lease_duration_seconds: Some(LEASE_SECONDS),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            let mine = spec.holder_identity.as_deref() == Some(me);
            let expired = spec.renew_time.as_ref().is_none_or(|t| {
                let age = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
                age.as_secs() > i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS))
            });
            if !mine && !expired {
                return Ok(false);
            }
            if !mine {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                spec.acquire_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
            }
            spec.holder_identity = Some(me.to_string());
            spec.lease_duration_seconds = Some(LEASE_SECONDS);
            spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
            // A replace carries the resourceVersion: two replicas cannot both win.
            match api
                .replace(LEASE_NAME, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Set once the process gives its Lease up: the writer must not take it again.
static RELEASED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Gives the Lease up if this replica holds it (on shutdown), so another replica takes
/// over at its next renewal instead of after the lease expires.
pub async fn release(client: &Client, me: &Identity) {
    RELEASED.store(true, std::sync::atomic::Ordering::Release);
    let api: Api<Lease> = Api::namespaced(client.clone(), &me.namespace);
    let Ok(Some(mut lease)) = api.get_opt(LEASE_NAME).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(me.holder.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    match api
        .replace(LEASE_NAME, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => tracing::info!("status writer: lease released"),
        Err(e) => {
            tracing::warn!(error = %e, "status writer: releasing the lease failed; it will expire")
        }
    }
}

/// Desired status of every revision and tag, from a table and the live pods' revisions.
pub fn compute(
    table: &Table,
    namespaces: &[String],
    pod_revisions: &BTreeMap<String, u32>,
    problems: &[Problem],
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
                ],
                observed_generation: None,
            },
        );
    }
    for p in problems.iter().filter(|p| p.kind == "MeshRevision") {
        revs.insert(
            p.name.clone(),
            MeshRevisionStatus {
                conditions: vec![condition("Ready", false, "Invalid", &p.message)],
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
    for p in problems.iter().filter(|p| p.kind == "RevisionTag") {
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

fn condition(type_: &str, status: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: None,
    }
}

/// Counts live pods by the revision they run ([`crate::core::pod_revision`]).
async fn pod_revisions(client: &Client) -> kube::Result<BTreeMap<String, u32>> {
    let api: Api<PartialObjectMeta<Pod>> = Api::all(client.clone());
    // Field selectors work on metadata lists too: Succeeded and Failed pods are left out.
    let lp = ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed");
    let mut out = BTreeMap::new();
    for p in api.list_metadata(&lp).await?.items {
        let annotations = p.annotations();
        if let Some(rev) = crate::core::pod_revision(|k| annotations.get(k).map(String::as_str)) {
            *out.entry(rev.into_owned()).or_default() += 1;
        }
    }
    Ok(out)
}

/// Runs the status writer: waits for the Lease, then keeps status in step.
pub async fn run(
    client: Client,
    store: Arc<TableStore>,
    namespaces: impl Fn() -> Vec<String> + Send + 'static,
    problems: Arc<std::sync::Mutex<Vec<Problem>>>,
    changed: Arc<Notify>,
    me: Identity,
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &me.namespace);
    let revs: Api<MeshRevision> = Api::all(client.clone());
    let tags: Api<RevisionTag> = Api::all(client.clone());
    let mut written_revs: BTreeMap<String, MeshRevisionStatus> = BTreeMap::new();
    let mut written_tags: BTreeMap<String, RevisionTagStatus> = BTreeMap::new();
    let mut leader = false;
    loop {
        if RELEASED.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        match hold_lease(&leases, &me.holder).await {
            Ok(true) => {
                if !leader {
                    tracing::info!(holder = %me.holder, namespace = %me.namespace, "status writer: leading");
                    written_revs.clear();
                    written_tags.clear();
                }
                leader = true;
            }
            Ok(false) => {
                if leader {
                    tracing::info!("status writer: lost the lease");
                }
                leader = false;
            }
            Err(e) => {
                tracing::warn!(error = %e, namespace = %me.namespace, "status writer: lease unavailable");
                leader = false;
            }
        }
        if leader
            && let Err(e) = write_once(
                &client,
                &store,
                &namespaces,
                &problems,
                &revs,
                &tags,
                &mut written_revs,
                &mut written_tags,
            )
            .await
        {
            tracing::warn!(error = %e, "status writer: update failed; retrying");
            written_revs.clear();
            written_tags.clear();
        }
        let wait = Duration::from_secs(u64::try_from(LEASE_SECONDS / 3).unwrap_or(5)).min(RESYNC);
        let _ = tokio::time::timeout(wait, changed.notified()).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_once(
    client: &Client,
    store: &TableStore,
    namespaces: &impl Fn() -> Vec<String>,
    problems: &std::sync::Mutex<Vec<Problem>>,
    revs: &Api<MeshRevision>,
    tags: &Api<RevisionTag>,
    written_revs: &mut BTreeMap<String, MeshRevisionStatus>,
    written_tags: &mut BTreeMap<String, RevisionTagStatus>,
) -> anyhow::Result<()> {
    let table = store.load_full();
    let pods = pod_revisions(client).await?;
    let problems = problems.lock().map(|p| p.clone()).unwrap_or_default();
    let (want_revs, want_tags) = compute(&table, &namespaces(), &pods, &problems);
    let pp = PatchParams::default();
    for (name, status) in &want_revs {
        if written_revs.get(name) != Some(status) {
            match revs
                .patch_status(name, &pp, &Patch::Merge(json!({"status": status})))
                .await
            {
                Ok(_) => {
                    written_revs.insert(name.clone(), status.clone());
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    for (name, status) in &want_tags {
        if written_tags.get(name) != Some(status) {
            // `resolvedRevision: null` clears a stale value under a merge patch.
            let body = json!({"status": {"resolvedRevision": status.resolved_revision, "message": status.message}});
            match tags.patch_status(name, &pp, &Patch::Merge(body)).await {
                Ok(_) => {
                    written_tags.insert(name.clone(), status.clone());
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
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
            kind: "RevisionTag",
            name: "old".into(),
            message: "spec.revision \"x\" names no MeshRevision".into(),
        }];
        let (revs, tags) = compute(&t, &names, &pods, &problems);
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
}
