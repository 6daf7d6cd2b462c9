//! The watches that keep the [`Index`] (and through it the revision table and status) in
//! step with the cluster.
//!
//! Six kube-rs watches, one driver task each: MeshRevision, RevisionTag, Namespace
//! metadata, Nodes (projected to their kubelet version at once, for Istio's native-sidecar
//! `auto`), pod metadata (metadata-only watches, kube 5's form of `metadata_watcher`; only pods that are not Succeeded/Failed,
//! projected to a [`super::PodEntry`]) and the control-plane Deployments (see
//! [`CONTROL_PLANE_SELECTOR`]). A driver applies each event to the index; a relist is
//! collected and swapped in whole at `InitDone`, so the index never holds half a relist.
//!
//! One builder task waits for changes. When the index reports the routing projection dirty
//! it builds a [`Table`] from it and publishes it with one [`TableStore::publish`]; when the
//! status projection is dirty it wakes the status writer. Anything else (an annotation on a
//! namespace, a pod that keeps its revision) costs one index update and nothing more.
//!
//! Steady state: the watches stay open; no LIST, no status write. The status writer renews
//! its Lease every [`super::lease::RENEW_EVERY`].
//!
//! Ownership: the builder task is the table's only writer in cluster mode; the index is
//! written only by the drivers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::Client;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher as watch};

use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use tokio::sync::Notify;

use super::index::{COUNTED_PODS, Key, Kind, Object};
use super::{ClusterView, LeaseHandle, status};
use crate::config::{MeshRevision, RevisionTag};
use crate::health::{CONTROLLER_GATE, Gate, Readiness};
use crate::table::{Problem, TableBuilder, TableStore};
use crate::telemetry::Telemetry;

#[cfg(doc)]
use super::Index;
#[cfg(doc)]
use crate::table::Table;

/// The label selector of the control-plane watch: Deployments with the label
/// `istio.io/rev`, whatever its value.
///
/// Why this scope: Istio's `istio-discovery` chart (1.30.3, `templates/deployment.yaml`; the
/// chart `istioctl install` renders too) labels every istiod Deployment
/// `istio.io/rev: <revision>` (`default` for the default revision), so the selector sees
/// every Istio-installed control plane, in any namespace, while leaving out the thousands
/// of application Deployments a cluster has (a watch of every Deployment would stream each
/// of their rollouts' status updates). The few application Deployments that carry the
/// label on their own metadata are kept as small summaries and route nothing unless a
/// MeshRevision names them. A Deployment named in `spec.controlPlane` without the label is
/// not seen: its revision's `ControlPlaneReady` condition says `NotFound` and its message
/// says to label it (the CLI LISTs with the same selector, so both agree).
pub(crate) const CONTROL_PLANE_SELECTOR: &str = crate::core::control_plane::CONTROL_PLANE_LABEL;

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControllerError {
    /// Registering the watch metrics failed (a name already registered, an invalid
    /// label): a programming error caught at startup.
    #[error("registering the controller's metrics")]
    Metrics(#[from] prometheus::Error),
    /// Every watch stream ended; the index can no longer follow the cluster.
    #[error("all watches ended")]
    WatchesEnded,
}

/// Controller-side metrics, registered next to the server's.
#[derive(Clone)]
struct WatchMetrics {
    errors: IntCounterVec,
    /// Objects indexed, by resource.
    objects: IntGaugeVec,
    last_sync: Arc<std::sync::Mutex<Instant>>,
    revisions: RevisionGauges,
}

impl WatchMetrics {
    fn new(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let errors = IntCounterVec::new(
            Opts::new(
                "meshrev_watch_errors_total",
                "Errors returned by the Kubernetes watches, by resource.",
            ),
            &["resource"],
        )?;
        let objects = IntGaugeVec::new(
            Opts::new(
                "meshrev_index_objects",
                "Objects in the controller's index, by resource (pods: live pods only).",
            ),
            &["resource"],
        )?;
        for k in Kind::ALL {
            errors.with_label_values(&[k.resource()]);
        }
        let last_sync = Arc::new(std::sync::Mutex::new(Instant::now()));
        let since = last_sync.clone();
        let gauge = prometheus::core::GenericGauge::<prometheus::core::AtomicF64>::new(
            "meshrev_seconds_since_last_sync",
            "Seconds since a watch last delivered an event or completed a list.",
        )?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(objects.clone()))?;
        registry.register(Box::new(SinceCollector { gauge, since }))?;
        let revisions = RevisionGauges::register(registry)?;
        Ok(WatchMetrics {
            errors,
            objects,
            last_sync,
            revisions,
        })
    }
    fn synced(&self) {
        if let Ok(mut t) = self.last_sync.lock() {
            *t = Instant::now();
        }
    }
}

/// Per-revision gauges, so an alert can find pods left on a revision nothing selects any
/// more: `meshrev_revision_pods{revision}` (live pods carrying its sidecar) and
/// `meshrev_revision_selectors{revision}` (tags plus namespaces that resolve to it). Set by
/// the builder loop of [`run`] on every replica whenever the status projection changes;
/// a revision with neither pods nor a table entry any more loses its series.
#[derive(Clone)]
struct RevisionGauges {
    pods: IntGaugeVec,
    selectors: IntGaugeVec,
    /// The revisions that have series now; only [`RevisionGauges::observe`] changes it.
    shown: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

impl RevisionGauges {
    fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let pods = IntGaugeVec::new(
            Opts::new(
                "meshrev_revision_pods",
                "Live pods carrying each revision's sidecar (revisions in the table or with pods).",
            ),
            &["revision"],
        )?;
        let selectors = IntGaugeVec::new(
            Opts::new(
                "meshrev_revision_selectors",
                "Tags plus namespaces that resolve to each revision; 0 with pods > 0 means pods left on a revision nothing selects.",
            ),
            &["revision"],
        )?;
        registry.register(Box::new(pods.clone()))?;
        registry.register(Box::new(selectors.clone()))?;
        Ok(RevisionGauges {
            pods,
            selectors,
            shown: Arc::default(),
        })
    }

    /// Sets the gauges from the table being served, the labelled namespaces and the live
    /// pods per revision (what the status writer counts, computed the same way).
    fn observe(
        &self,
        table: &crate::table::Table,
        namespaces: &[String],
        pod_revisions: &BTreeMap<String, u32>,
    ) {
        let (revs, _) = status::compute(table, namespaces, pod_revisions, &[], &BTreeMap::new());
        let mut now = std::collections::BTreeSet::new();
        for (name, st) in &revs {
            let selectors = st.tags.len() as u64 + u64::from(st.namespaces);
            self.set(name, i64::from(st.pods), selectors);
            now.insert(name.clone());
        }
        for (name, pods) in pod_revisions {
            if !revs.contains_key(name) {
                self.set(name, i64::from(*pods), 0);
                now.insert(name.clone());
            }
        }
        if let Ok(mut shown) = self.shown.lock() {
            for gone in shown.difference(&now) {
                let _ = self.pods.remove_label_values(&[gone]);
                let _ = self.selectors.remove_label_values(&[gone]);
            }
            *shown = now;
        }
    }

    fn set(&self, revision: &str, pods: i64, selectors: u64) {
        self.pods.with_label_values(&[revision]).set(pods);
        self.selectors
            .with_label_values(&[revision])
            .set(i64::try_from(selectors).unwrap_or(i64::MAX));
    }
}

/// The name of every metric `run` registers, read from a throwaway registry (labelled
/// families with no series yet included), so alert rules and dashboards can be checked
/// against what the controller really exports.
pub fn metric_names() -> Vec<String> {
    use prometheus::core::Collector;
    let registry = prometheus::Registry::new();
    let Ok(wm) = WatchMetrics::new(&registry) else {
        return Vec::new();
    };
    let mut names: Vec<String> = registry
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .chain(wm.errors.desc().iter().map(|d| d.fq_name.clone()))
        .chain(wm.objects.desc().iter().map(|d| d.fq_name.clone()))
        .chain(wm.revisions.pods.desc().iter().map(|d| d.fq_name.clone()))
        .chain(
            wm.revisions
                .selectors
                .desc()
                .iter()
                .map(|d| d.fq_name.clone()),
        )
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A gauge computed at scrape time from the last sync instant.
struct SinceCollector {
    gauge: prometheus::Gauge,
    since: Arc<std::sync::Mutex<Instant>>,
}

impl prometheus::core::Collector for SinceCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauge.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let secs = self
            .since
            .lock()
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(f64::NAN);
        self.gauge.set(secs);
        self.gauge.collect()
    }
}

/// Runs the watches, the table builder and the status writer until the watches end
/// (never, normally). `cluster` is filled from the watches; `lease` elects the status
/// writer (release it on shutdown).
pub(crate) async fn run(
    client: Client,
    store: Arc<TableStore>,
    telemetry: Telemetry,
    readiness: Arc<Readiness>,
    cluster: ClusterView,
    lease: LeaseHandle,
) -> Result<(), ControllerError> {
    let wm = WatchMetrics::new(&telemetry.registry)?;
    let changed = Arc::new(Notify::new());
    let cfg = watcher::Config::default();
    let d = Driver {
        cluster: cluster.clone(),
        changed: changed.clone(),
        wm: wm.clone(),
    };
    let drivers = [
        tokio::spawn(d.clone().drive(
            watch(Api::<MeshRevision>::all(client.clone()), cfg.clone()).default_backoff(),
            Kind::Revisions,
            readiness.gate("watch:meshrevisions"),
            Object::revision,
        )),
        tokio::spawn(d.clone().drive(
            watch(Api::<RevisionTag>::all(client.clone()), cfg.clone()).default_backoff(),
            Kind::Tags,
            readiness.gate("watch:revisiontags"),
            Object::tag,
        )),
        tokio::spawn(
            d.clone().drive(
                watch(
                    Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                    cfg.clone(),
                )
                .default_backoff(),
                Kind::Namespaces,
                readiness.gate("watch:namespaces"),
                |n| Object::namespace(&n),
            ),
        ),
        tokio::spawn(d.clone().drive(
            watch(Api::<Node>::all(client.clone()), cfg.clone()).default_backoff(),
            Kind::Nodes,
            readiness.gate("watch:nodes"),
            |n| Object::node(&n),
        )),
        tokio::spawn(
            d.clone().drive(
                watch(
                    Api::<Deployment>::all(client.clone()),
                    cfg.clone().labels(CONTROL_PLANE_SELECTOR),
                )
                .default_backoff(),
                Kind::ControlPlanes,
                readiness.gate("watch:deployments"),
                |d| Object::control_plane(&d),
            ),
        ),
        // Completed and failed pods never count: the API server leaves them out, and a
        // pod that completes leaves the watch as a deletion.
        tokio::spawn(
            d.clone().drive(
                watch(
                    Api::<PartialObjectMeta<Pod>>::all(client.clone()),
                    cfg.fields(COUNTED_PODS),
                )
                .default_backoff(),
                Kind::Pods,
                readiness.gate("watch:pods"),
                |p| Object::pod(&p),
            ),
        ),
    ];
    let table_gate = readiness.gate(CONTROLLER_GATE);
    let problems_shared: Arc<std::sync::Mutex<Vec<Problem>>> = Arc::default();
    let status_changed = Arc::new(Notify::new());
    tokio::spawn(status::run(
        client.clone(),
        store.clone(),
        cluster.clone(),
        problems_shared.clone(),
        status_changed.clone(),
        lease,
    ));

    let mut builder = TableBuilder::new();
    let mut last_problems: Vec<Problem> = Vec::new();
    let mut published = false;
    loop {
        changed.notified().await;
        if drivers.iter().all(|d| d.is_finished()) {
            return Err(ControllerError::WatchesEnded);
        }
        // Publish nothing until every watch has listed once: a table built from a partial
        // view would route pods wrongly.
        let step = cluster.with(|ix| {
            if !ix.synced() {
                return None;
            }
            let dirty = ix.take_dirty();
            for k in Kind::ALL {
                wm.objects
                    .with_label_values(&[k.resource()])
                    .set(i64::try_from(ix.count(k)).unwrap_or(i64::MAX));
            }
            let table = (dirty.routing || !published).then(|| ix.table(&mut builder));
            Some((dirty, table))
        });
        let Some((dirty, table)) = step else {
            continue;
        };
        let recount = dirty.status || dirty.routing || table.is_some();
        if let Some((table, problems)) = table {
            if problems != last_problems {
                for p in &problems {
                    tracing::warn!(%p, "configuration object left out of the revision table");
                }
                if let Ok(mut shared) = problems_shared.lock() {
                    shared.clone_from(&problems);
                }
                last_problems = problems;
            }
            let generation = store.publish(table);
            telemetry.table.observe(&store.load());
            tracing::debug!(generation, "revision table published");
            table_gate.set_ready();
            published = true;
            status_changed.notify_one();
        } else if dirty.status {
            status_changed.notify_one();
        }
        if recount {
            let (namespaces, pods) =
                cluster.with(|ix| (ix.labelled_namespaces(), ix.pods_per_revision()));
            wm.revisions.observe(&store.load(), &namespaces, &pods);
        }
    }
}

/// What every watch driver shares.
#[derive(Clone)]
struct Driver {
    cluster: ClusterView,
    changed: Arc<Notify>,
    wm: WatchMetrics,
}

impl Driver {
    /// Drives one watch into the index: applies changes as they come, swaps a relist in
    /// whole at `InitDone`, marks the gate ready after the first complete list, wakes the
    /// builder when something it reads changed, and counts errors (the watcher backs off
    /// and relists by itself, including after 410 Gone).
    async fn drive<K>(
        self,
        stream: impl Stream<Item = Result<Event<K>, watcher::Error>>,
        kind: Kind,
        gate: Gate,
        project: impl Fn(K) -> Object,
    ) {
        let resource = kind.resource();
        futures::pin_mut!(stream);
        let mut relist: Vec<Object> = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(Event::Init) => relist.clear(),
                Ok(Event::InitApply(o)) => relist.push(project(o)),
                Ok(Event::InitDone) => {
                    let objects = std::mem::take(&mut relist);
                    let n = objects.len();
                    self.cluster.with(|ix| ix.reset(kind, objects));
                    gate.set_ready();
                    self.wm.synced();
                    // Always: the builder may be waiting for the last kind to list.
                    self.changed.notify_one();
                    tracing::debug!(resource, objects = n, "watch listed");
                }
                Ok(Event::Apply(o)) => {
                    let d = self.cluster.with(|ix| ix.apply(project(o)));
                    self.wm.synced();
                    if d.any() {
                        self.changed.notify_one();
                    }
                }
                Ok(Event::Delete(o)) => {
                    let key = Key::from(&project(o));
                    let d = self.cluster.with(|ix| ix.delete(&key));
                    self.wm.synced();
                    if d.any() {
                        self.changed.notify_one();
                    }
                }
                Err(e) => {
                    self.wm.errors.with_label_values(&[resource]).inc();
                    let missing = matches!(
                        &e,
                        watcher::Error::InitialListFailed(kube::Error::Api(s))
                            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
                            if s.code == 404
                    );
                    let forbidden = matches!(
                        &e,
                        watcher::Error::InitialListFailed(kube::Error::Api(s))
                            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
                            if s.code == 403
                    );
                    if forbidden && kind == Kind::ControlPlanes {
                        tracing::warn!(
                            resource,
                            error = %e,
                            "watch error: meshrev's ClusterRole must allow get/list/watch of apps/v1 deployments (manifests/rbac.yaml); /readyz stays not ready until it lists them; backing off"
                        );
                    } else if missing && matches!(kind, Kind::Revisions | Kind::Tags) {
                        tracing::warn!(
                            resource,
                            error = %e,
                            "watch error: are meshrev's CRDs installed? `meshrev crd | kubectl apply -f -` (or kubectl apply -f manifests/crds.yaml); backing off"
                        );
                    } else {
                        tracing::warn!(resource, error = %e, "watch error; backing off");
                    }
                }
            }
        }
        self.changed.notify_one();
        tracing::error!(resource, "watch stream ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A metrics registration failure reaches the runtime as a typed error whose chain
    /// names the cause (the runtime logs it with `errors::Chain`).
    #[test]
    fn registering_the_metrics_twice_is_a_typed_error() {
        let registry = prometheus::Registry::new();
        assert!(WatchMetrics::new(&registry).is_ok());
        let err = ControllerError::from(
            WatchMetrics::new(&registry)
                .err()
                .expect("a second registration of the same names must fail"),
        );
        assert!(matches!(err, ControllerError::Metrics(_)), "{err:?}");
        let chain = crate::errors::Chain(&err).to_string();
        assert!(
            chain.starts_with("registering the controller's metrics: "),
            "{chain}"
        );
        assert!(chain.contains("Duplicate"), "{chain}");
    }
}

#[cfg(test)]
mod revision_gauge_tests {
    use super::*;
    use crate::table::{NamespaceLabels, embedded_default};
    use std::collections::HashMap;

    fn sample(text: &str, series: &str) -> Option<i64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn pods_and_selectors_per_revision_follow_the_cluster() {
        let registry = prometheus::Registry::new();
        let g = RevisionGauges::register(&registry).unwrap();
        let encode = || {
            let mut out = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &registry.gather(),
                &mut out,
            )
            .unwrap();
            String::from_utf8(out).unwrap()
        };
        // Namespace b selects tag canary.
        let t = embedded_default().with_namespaces(HashMap::from([(
            "b".to_string(),
            NamespaceLabels {
                injection: None,
                rev: Some("canary".into()),
            },
        )]));
        let namespaces = vec!["b".to_string()];
        // 1-22-6 (tag stable) and 1-23-6 (tag canary, namespace b) in the table; pods also
        // on 1-20-0, which nothing selects.
        let pods = BTreeMap::from([("1-22-6".to_string(), 3), ("1-20-0".to_string(), 2)]);
        g.observe(&t, &namespaces, &pods);
        let text = encode();
        let get = |name: &str, rev: &str| sample(&text, &format!("{name}{{revision=\"{rev}\"}}"));
        assert_eq!(get("meshrev_revision_pods", "1-22-6"), Some(3), "{text}");
        assert_eq!(get("meshrev_revision_selectors", "1-22-6"), Some(1));
        assert_eq!(get("meshrev_revision_pods", "1-23-6"), Some(0));
        assert_eq!(get("meshrev_revision_selectors", "1-23-6"), Some(2));
        assert_eq!(get("meshrev_revision_pods", "1-20-0"), Some(2));
        assert_eq!(get("meshrev_revision_selectors", "1-20-0"), Some(0));

        // The old pods are gone: 1-20-0 loses its series.
        let pods = BTreeMap::from([("1-22-6".to_string(), 3)]);
        g.observe(&t, &namespaces, &pods);
        let text = encode();
        assert!(!text.contains("1-20-0"), "{text}");
        assert!(
            text.contains("meshrev_revision_pods{revision=\"1-22-6\"} 3"),
            "{text}"
        );
    }
}
