//! The watches that keep the revision table in step with the cluster.
//!
//! Four kube-rs reflectors (MeshRevision, RevisionTag, Namespace metadata, and Nodes cut down
//! to their kubelet version, for Istio's native-sidecar `auto`) feed their
//! stores; every change wakes one builder task, which reads the three stores whole, builds
//! a [`Table`] and publishes it with one [`TableStore::publish`]. The reflector applies a
//! relist to its store only at `InitDone`, so a rebuild never sees half a relist.
//!
//! Ownership: the builder task is the table's only writer in cluster mode; the stores are
//! written only by their reflectors.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use kube::{Client, Resource};
use prometheus::{IntCounterVec, Opts};
use tokio::sync::Notify;

use super::status;
use crate::config::{MeshRevision, RevisionTag};
use crate::health::{CONTROLLER_GATE, Gate, Readiness};
use crate::table::{NamespaceLabels, Problem, Table, TableBuilder, TableStore};
use crate::telemetry::Telemetry;

/// Controller-side metrics, registered next to the server's.
#[derive(Clone)]
struct WatchMetrics {
    errors: IntCounterVec,
    last_sync: Arc<std::sync::Mutex<Instant>>,
}

impl WatchMetrics {
    fn new(registry: &prometheus::Registry) -> anyhow::Result<Self> {
        let errors = IntCounterVec::new(
            Opts::new(
                "meshrev_watch_errors_total",
                "Errors returned by the Kubernetes watches, by resource.",
            ),
            &["resource"],
        )?;
        for r in ["meshrevisions", "revisiontags", "namespaces", "nodes"] {
            errors.with_label_values(&[r]);
        }
        let last_sync = Arc::new(std::sync::Mutex::new(Instant::now()));
        let since = last_sync.clone();
        let gauge = prometheus::core::GenericGauge::<prometheus::core::AtomicF64>::new(
            "meshrev_seconds_since_last_sync",
            "Seconds since a watch last delivered an event or completed a list.",
        )?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(SinceCollector { gauge, since }))?;
        Ok(WatchMetrics { errors, last_sync })
    }
    fn synced(&self) {
        if let Ok(mut t) = self.last_sync.lock() {
            *t = Instant::now();
        }
    }
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

/// Runs the watches and the table builder until the client's streams end (never, normally).
pub async fn run(
    client: Client,
    store: Arc<TableStore>,
    telemetry: Telemetry,
    readiness: Arc<Readiness>,
) -> anyhow::Result<()> {
    let wm = WatchMetrics::new(&telemetry.registry)?;
    let changed = Arc::new(Notify::new());

    let (revs, rev_writer) = reflector::store::<MeshRevision>();
    let (tags, tag_writer) = reflector::store::<RevisionTag>();
    let (nss, ns_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    let cfg = watcher::Config::default();
    let rev_stream = watch(Api::<MeshRevision>::all(client.clone()), cfg.clone())
        .default_backoff()
        .reflect(rev_writer);
    let tag_stream = watch(Api::<RevisionTag>::all(client.clone()), cfg.clone())
        .default_backoff()
        .reflect(tag_writer);
    let ns_stream = watch(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        cfg.clone(),
    )
    .default_backoff()
    .reflect(ns_writer);
    // Nodes are kept as their name and kubelet version only.
    let (nodes, node_writer) = reflector::store::<Node>();
    let node_stream = watch(Api::<Node>::all(client.clone()), cfg)
        .default_backoff()
        .modify(slim_node)
        .reflect(node_writer);

    let drivers = [
        tokio::spawn(drive(
            rev_stream,
            "meshrevisions",
            readiness.gate("watch:meshrevisions"),
            changed.clone(),
            wm.clone(),
        )),
        tokio::spawn(drive(
            tag_stream,
            "revisiontags",
            readiness.gate("watch:revisiontags"),
            changed.clone(),
            wm.clone(),
        )),
        tokio::spawn(drive(
            ns_stream,
            "namespaces",
            readiness.gate("watch:namespaces"),
            changed.clone(),
            wm.clone(),
        )),
        tokio::spawn(drive(
            node_stream,
            "nodes",
            readiness.gate("watch:nodes"),
            changed.clone(),
            wm.clone(),
        )),
    ];
    let table_gate = readiness.gate(CONTROLLER_GATE);
    let problems_shared: Arc<std::sync::Mutex<Vec<Problem>>> = Arc::default();
    let status_changed = Arc::new(Notify::new());
    let ns_reader = nss.clone();
    tokio::spawn(status::run(
        client.clone(),
        store.clone(),
        move || {
            ns_reader
                .state()
                .iter()
                .filter_map(|n| n.meta().name.clone())
                .collect()
        },
        problems_shared.clone(),
        status_changed.clone(),
        status::Identity::from_env(),
    ));

    // Publish nothing until every watch has listed once: a table built from a partial view
    // would route pods wrongly.
    let _ = revs.wait_until_ready().await;
    let _ = tags.wait_until_ready().await;
    let _ = nss.wait_until_ready().await;
    let _ = nodes.wait_until_ready().await;

    let mut builder = TableBuilder::new();
    let mut last_problems: Vec<Problem> = Vec::new();
    loop {
        let (mut table, problems) = build(&mut builder, &revs, &tags, &nss);
        table.nodes_support_native_sidecars = Some(nodes_support_native_sidecars(
            nodes.state().iter().map(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.node_info.as_ref())
                    .map(|i| i.kubelet_version.as_str())
            }),
        ));
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
        status_changed.notify_one();
        changed.notified().await;
        if drivers.iter().all(|d| d.is_finished()) {
            anyhow::bail!("all watches ended");
        }
    }
}

/// Keeps only what native-sidecar detection reads: the name and the kubelet version.
fn slim_node(n: &mut Node) {
    let version = n
        .status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.kubelet_version.clone());
    n.metadata.managed_fields = None;
    n.metadata.annotations = None;
    n.metadata.labels = None;
    n.spec = None;
    n.status = version.map(|v| k8s_openapi::api::core::v1::NodeStatus {
        node_info: Some(k8s_openapi::api::core::v1::NodeSystemInfo {
            kubelet_version: v,
            ..Default::default()
        }),
        ..Default::default()
    });
}

/// Istio's native-sidecar `auto`: every node's kubelet is 1.33 or newer (where sidecar
/// containers are stable); a node whose version does not parse counts as too old. No nodes:
/// supported.
pub fn nodes_support_native_sidecars<'a>(versions: impl Iterator<Item = Option<&'a str>>) -> bool {
    const MIN_MINOR: u64 = 33;
    versions.into_iter().all(|v| {
        v.and_then(|v| {
            let mut parts = v.trim_start_matches('v').split(['.', '-', '+']);
            let major: u64 = parts.next()?.parse().ok()?;
            let minor: u64 = parts.next()?.parse().ok()?;
            Some(major > 1 || minor >= MIN_MINOR)
        })
        .unwrap_or(false)
    })
}

/// Builds a table from the revision, tag and namespace stores (each read whole).
fn build(
    builder: &mut TableBuilder,
    revs: &Store<MeshRevision>,
    tags: &Store<RevisionTag>,
    nss: &Store<PartialObjectMeta<Namespace>>,
) -> (Table, Vec<Problem>) {
    let revs = revs.state();
    let tags = tags.state();
    let namespaces: HashMap<String, NamespaceLabels> = nss
        .state()
        .iter()
        .filter_map(|ns| {
            let meta = ns.meta();
            let labels = meta.labels.as_ref()?;
            let l = NamespaceLabels::from_labels(|k| labels.get(k).map(String::as_str));
            (!l.is_empty()).then(|| (meta.name.clone().unwrap_or_default(), l))
        })
        .collect();
    builder.build_lenient(
        revs.iter().map(|r| r.as_ref()),
        tags.iter().map(|t| t.as_ref()),
        namespaces,
    )
}

/// Drives one reflector stream: wakes the builder on every applied change, marks the gate
/// ready after the first complete list, and counts errors (the watcher backs off and
/// relists by itself, including after 410 Gone).
async fn drive<K>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    resource: &'static str,
    gate: Gate,
    changed: Arc<Notify>,
    wm: WatchMetrics,
) {
    futures::pin_mut!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(Event::InitDone) => {
                gate.set_ready();
                wm.synced();
                changed.notify_one();
                tracing::debug!(resource, "watch listed");
            }
            Ok(Event::Apply(_) | Event::Delete(_)) => {
                wm.synced();
                changed.notify_one();
            }
            Ok(Event::Init | Event::InitApply(_)) => {}
            Err(e) => {
                wm.errors.with_label_values(&[resource]).inc();
                let text = e.to_string();
                if resource != "namespaces" && (text.contains("404") || text.contains("not found"))
                {
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
    changed.notify_one();
    tracing::error!(resource, "watch stream ended");
}

#[cfg(test)]
mod tests {
    #[test]
    fn native_sidecars_need_every_kubelet_at_1_33() {
        use super::nodes_support_native_sidecars as f;
        assert!(f([Some("v1.33.0"), Some("v1.34.1-gke.2")].into_iter()));
        assert!(!f([Some("v1.33.0"), Some("v1.28.0")].into_iter()));
        assert!(!f([None].into_iter()));
        assert!(f(std::iter::empty()));
    }
}
