//! End to end on a real control plane: kube-apiserver calls meshrev over TLS on every pod
//! creation, meshrev follows namespace labels, tags and revisions through its watches.
//!
//! One control plane and one meshrev per test binary; every test uses its own namespaces,
//! and tests that move tags use their own tag names, so they can run in parallel.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/meshrev.rs"]
mod meshrev_proc;

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use meshrev::config::{MeshRevision, RevisionTag};
use meshrev_proc::{Meshrev, apply, eventually};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// The shared meshrev, started once: CRDs, the default revisions and tags, webhooks.
fn meshrev() -> &'static Mutex<Meshrev> {
    static M: OnceLock<Mutex<Meshrev>> = OnceLock::new();
    // Set up on a thread of its own: the caller is inside a test's runtime.
    M.get_or_init(|| {
        std::thread::spawn(setup_meshrev)
            .join()
            .expect("setup must not panic")
    })
}

fn setup_meshrev() -> Mutex<Meshrev> {
    {
        let c = cluster::shared();
        let rt = tokio::runtime::Runtime::new().expect("a runtime for setup");
        rt.block_on(async {
            let client = c.client().await.expect("client");
            meshrev_proc::install_crds(&client).await.expect("CRDs");
            meshrev_proc::apply_table(&client, meshrev::config::EMBEDDED_DEFAULT)
                .await
                .expect("default table");
            let dir = c.dir.join("meshrev");
            std::fs::create_dir_all(&dir).expect("dir");
            let m = Meshrev::start(&c.kubeconfig, &dir, 0)
                .expect("meshrev must start and become ready");
            meshrev_proc::register_injector(&client, m.port, &m.ca_pem().expect("ca"), "Fail")
                .await
                .expect("webhook");
            Mutex::new(m)
        })
    }
}

async fn setup() -> Result<Option<kube::Client>> {
    if cluster::skip_e2e() {
        return Ok(None);
    }
    let _ = meshrev();
    Ok(Some(cluster::shared().client().await?))
}

async fn namespace(client: &kube::Client, prefix: &str, labels: &[(&str, &str)]) -> Result<String> {
    cluster::create_namespace(client, prefix, labels).await
}

async fn label_namespace(client: &kube::Client, ns: &str, labels: serde_json::Value) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    api.patch(
        ns,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": labels}})),
    )
    .await?;
    Ok(())
}

fn pod_json(name: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "nginx:1.27", "ports": [{"containerPort": 8080}]}]}
    })
}

async fn create_pod(
    client: &kube::Client,
    ns: &str,
    name: &str,
    labels: serde_json::Value,
) -> Result<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    Ok(api
        .create(
            &PostParams::default(),
            &serde_json::from_value(pod_json(name, labels))?,
        )
        .await?)
}

/// The revision a pod was injected with, checked for consistency: the annotation, the
/// status annotation and the proxy image must agree. `None` when not injected.
fn injected_revision(p: &Pod) -> Option<String> {
    let ann = p.metadata.annotations.clone().unwrap_or_default();
    let spec = p.spec.as_ref()?;
    let proxies: Vec<_> = spec
        .containers
        .iter()
        .filter(|c| c.name == "istio-proxy")
        .collect();
    let inits = spec
        .init_containers
        .as_ref()
        .map_or(0, |v| v.iter().filter(|c| c.name == "istio-init").count());
    let Some(rev) = ann.get("istio.io/rev") else {
        assert!(
            proxies.is_empty() && inits == 0,
            "sidecar without istio.io/rev annotation"
        );
        return None;
    };
    assert_eq!(proxies.len(), 1, "exactly one istio-proxy");
    assert_eq!(inits, 1, "exactly one istio-init");
    let status: serde_json::Value = serde_json::from_str(
        ann.get("sidecar.istio.io/status")
            .expect("status annotation"),
    )
    .expect("status JSON");
    assert_eq!(
        status["revision"],
        rev.as_str(),
        "status and annotation agree"
    );
    let version = rev.replace('-', ".");
    let image = proxies[0].image.clone().unwrap_or_default();
    assert!(
        image.ends_with(&format!(":{version}")),
        "image {image} is revision {rev}'s"
    );
    Some(rev.clone())
}

#[tokio::test]
async fn deployments_get_the_sidecar_their_namespace_selects() -> Result<()> {
    let Some(client) = setup().await? else {
        return Ok(());
    };
    // (namespace prefix, its labels, the revision its pods must get)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: &[Case] = &[
        ("enabled", &[("istio-injection", "enabled")], Some("1-22-6")),
        ("stable", &[("istio.io/rev", "stable")], Some("1-22-6")),
        ("canary", &[("istio.io/rev", "canary")], Some("1-23-6")),
        ("pinned", &[("istio.io/rev", "1-23-6")], Some("1-23-6")),
        ("disabled", &[("istio-injection", "disabled")], None),
        ("unlabelled", &[], None),
    ];
    let mut namespaces = Vec::new();
    for (prefix, labels, _) in cases {
        let ns = namespace(&client, prefix, labels).await?;
        let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "reviews-v2"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "reviews"}},
                "template": {
                    "metadata": {"labels": {"app": "reviews", "version": "v2"}},
                    "spec": {"containers": [{"name": "reviews", "image": "docker.io/istio/examples-bookinfo-reviews-v2:1.20.2", "ports": [{"containerPort": 9080}]}]}
                }
            }
        });
        deploys
            .create(&PostParams::default(), &serde_json::from_value(d)?)
            .await?;
        namespaces.push(ns);
    }
    for ((prefix, _, want), ns) in cases.iter().zip(&namespaces) {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let list = eventually(&format!("2 pods in {ns}"), WAIT, || async {
            let l = pods.list(&ListParams::default()).await?;
            Ok((l.items.len() == 2).then_some(l.items))
        })
        .await?;
        for p in &list {
            assert_eq!(
                injected_revision(p).as_deref(),
                *want,
                "{prefix}: pod {:?}",
                p.metadata.name
            );
            if want.is_some() {
                let env = &p.spec.as_ref().context("spec")?.containers[1]
                    .env
                    .clone()
                    .unwrap_or_default();
                let wl = env
                    .iter()
                    .find(|e| e.name == "ISTIO_META_WORKLOAD_NAME")
                    .and_then(|e| e.value.clone());
                assert_eq!(
                    wl.as_deref(),
                    Some("reviews-v2"),
                    "{prefix}: workload identity from the ReplicaSet"
                );
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn pod_labels_opt_in_and_out() -> Result<()> {
    let Some(client) = setup().await? else {
        return Ok(());
    };
    let plain = namespace(&client, "podlevel", &[]).await?;
    let p = create_pod(
        &client,
        &plain,
        "opt-in",
        json!({"sidecar.istio.io/inject": "true"}),
    )
    .await?;
    assert_eq!(injected_revision(&p).as_deref(), Some("1-22-6"));
    let p = create_pod(
        &client,
        &plain,
        "rev-canary",
        json!({"istio.io/rev": "canary"}),
    )
    .await?;
    assert_eq!(injected_revision(&p).as_deref(), Some("1-23-6"));
    let enabled = namespace(&client, "optout", &[("istio-injection", "enabled")]).await?;
    let p = create_pod(
        &client,
        &enabled,
        "opt-out",
        json!({"sidecar.istio.io/inject": "false"}),
    )
    .await?;
    assert_eq!(injected_revision(&p), None);
    Ok(())
}

/// Creates pods until one carries `want` (the change has reached meshrev's table), and
/// returns how long after `since` that pod was admitted.
async fn first_pod_with(
    client: &kube::Client,
    ns: &str,
    want: &str,
    since: Instant,
) -> Result<Duration> {
    let mut i = 0u32;
    eventually(&format!("a pod in {ns} with revision {want}"), WAIT, || {
        i += 1;
        let name = format!("probe-{}-{i}", since.elapsed().as_nanos());
        async move {
            let p = create_pod(client, ns, &name, json!({"app": "probe"})).await?;
            let at = since.elapsed();
            Ok((injected_revision(&p).as_deref() == Some(want)).then_some(at))
        }
    })
    .await
}

#[tokio::test]
async fn a_namespace_label_change_moves_the_next_pod() -> Result<()> {
    let Some(client) = setup().await? else {
        return Ok(());
    };
    let ns = namespace(&client, "relabel", &[("istio-injection", "enabled")]).await?;
    let p = create_pod(&client, &ns, "before", json!({})).await?;
    assert_eq!(injected_revision(&p).as_deref(), Some("1-22-6"));
    // The seed's "switch": istio-injection=enabled → istio.io/rev=canary.
    label_namespace(
        &client,
        &ns,
        json!({"istio-injection": null, "istio.io/rev": "canary"}),
    )
    .await?;
    first_pod_with(&client, &ns, "1-23-6", Instant::now()).await?;
    Ok(())
}

async fn set_tag(client: &kube::Client, tag: &str, revision: &str) -> Result<()> {
    let tags: Api<RevisionTag> = Api::all(client.clone());
    apply(
        &tags,
        json!({"apiVersion": "meshrev.io/v1alpha1", "kind": "RevisionTag", "metadata": {"name": tag}, "spec": {"revision": revision}}),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_tag_patch_promotes_and_reports_latency() -> Result<()> {
    let Some(client) = setup().await? else {
        return Ok(());
    };
    // Its own tag, so that parallel tests keep their `stable`.
    set_tag(&client, "promo", "1-22-6").await?;
    let ns = namespace(&client, "promo", &[("istio.io/rev", "promo")]).await?;
    first_pod_with(&client, &ns, "1-22-6", Instant::now()).await?;
    let tags: Api<RevisionTag> = Api::all(client.clone());
    let mut latencies = Vec::new();
    let mut current = "1-22-6";
    for _ in 0..20 {
        let next = if current == "1-22-6" {
            "1-23-6"
        } else {
            "1-22-6"
        };
        tags.patch(
            "promo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"revision": next}})),
        )
        .await?;
        let accepted = Instant::now();
        latencies.push(first_pod_with(&client, &ns, next, accepted).await?);
        current = next;
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "promotion-to-effect latency over {} trials: p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        pct(0.50),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
    Ok(())
}

#[tokio::test]
async fn concurrent_creations_during_promotion_get_one_revision_in_full() -> Result<()> {
    let Some(client) = setup().await? else {
        return Ok(());
    };
    set_tag(&client, "swap", "1-22-6").await?;
    let ns = namespace(&client, "swap", &[("istio.io/rev", "swap")]).await?;
    first_pod_with(&client, &ns, "1-22-6", Instant::now()).await?;
    let created = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let client = client.clone();
        let ns = ns.clone();
        let created = created.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..15 {
                let p = create_pod(&client, &ns, &format!("c{w}-{i}"), json!({})).await?;
                created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                seen.push(injected_revision(&p).context("every pod is injected")?);
            }
            anyhow::Ok(seen)
        }));
    }
    // Promote while creations are under way: after some pods, well before the last.
    eventually("creations under way", WAIT, || {
        let n = created.load(std::sync::atomic::Ordering::Relaxed);
        async move { Ok((n >= 8).then_some(())) }
    })
    .await?;
    let tags: Api<RevisionTag> = Api::all(client.clone());
    tags.patch(
        "swap",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"revision": "1-23-6"}})),
    )
    .await?;
    let mut counts = BTreeMap::new();
    for t in tasks {
        for rev in t.await?? {
            *counts.entry(rev).or_insert(0) += 1;
        }
    }
    println!("revisions seen during a promotion: {counts:?}");
    assert!(counts.keys().all(|r| r == "1-22-6" || r == "1-23-6"));
    assert!(
        counts.contains_key("1-22-6") && counts.contains_key("1-23-6"),
        "the promotion landed during the burst: {counts:?}"
    );
    assert_eq!(counts.values().sum::<i32>(), 60, "no creation failed");
    first_pod_with(&client, &ns, "1-23-6", Instant::now()).await?;
    Ok(())
}

#[tokio::test]
async fn a_deleted_revision_makes_its_namespaces_skip_with_a_warning() -> Result<()> {
    let Some(client) = setup().await? else {
        return Ok(());
    };
    let revs: Api<MeshRevision> = Api::all(client.clone());
    apply(
        &revs,
        json!({"apiVersion": "meshrev.io/v1alpha1", "kind": "MeshRevision", "metadata": {"name": "1-24-9"}, "spec": {"version": "1.24.9"}}),
    )
    .await?;
    let ns = namespace(&client, "doomed", &[("istio.io/rev", "1-24-9")]).await?;
    first_pod_with(&client, &ns, "1-24-9", Instant::now()).await?;
    revs.delete("1-24-9", &DeleteParams::default()).await?;
    let mut i = 0;
    let warnings = eventually(
        "a pod in the namespace of a deleted revision is admitted uninjected",
        WAIT,
        || {
            i += 1;
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let (p, w) = meshrev_proc::create_pod_with_warnings::<Pod>(
                    &client,
                    &ns,
                    &pod_json(&format!("after-delete-{i}"), json!({})),
                )
                .await?;
                Ok(injected_revision(&p).is_none().then_some(w))
            }
        },
    )
    .await?;
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("1-24-9") && w.contains("not injected")),
        "the API server relays meshrev's warning: {warnings:?}"
    );
    let skips = meshrev()
        .lock()
        .map_err(|_| anyhow::anyhow!("meshrev mutex poisoned"))?
        .metric("meshrev_injection_skips_total{reason=\"unknown-revision\"}")?;
    assert!(skips >= 1.0, "the skip is counted as unknown-revision");
    Ok(())
}

#[tokio::test]
async fn status_reports_tags_namespaces_pods_and_broken_tags() -> Result<()> {
    let Some(client) = setup().await? else {
        return Ok(());
    };
    let revs: Api<MeshRevision> = Api::all(client.clone());
    apply(
        &revs,
        json!({"apiVersion": "meshrev.io/v1alpha1", "kind": "MeshRevision", "metadata": {"name": "1-25-1"}, "spec": {"version": "1.25.1"}}),
    )
    .await?;
    set_tag(&client, "statustag", "1-25-1").await?;
    // A tag to a missing revision is left out of the table and reported, not fatal.
    set_tag(&client, "broken", "9-9-9").await?;
    let ns = namespace(&client, "status", &[("istio.io/rev", "statustag")]).await?;
    first_pod_with(&client, &ns, "1-25-1", Instant::now()).await?;
    let status = eventually("MeshRevision 1-25-1 status", WAIT, || async {
        let r = revs.get("1-25-1").await?;
        Ok(r.status
            .filter(|s| s.pods >= 1 && s.namespaces == 1 && s.tags == ["statustag"]))
    })
    .await?;
    let in_use = status
        .conditions
        .iter()
        .find(|c| c.type_ == "InUse")
        .context("InUse condition")?;
    assert_eq!(in_use.status, "True");
    // The same counts as metrics, for the "pods on a revision nothing selects" alert:
    // one tag plus one namespace select 1-25-1.
    eventually("meshrev_revision_* gauges of 1-25-1", WAIT, || async {
        let m = meshrev()
            .lock()
            .map_err(|_| anyhow::anyhow!("meshrev mutex poisoned"))?;
        let pods = m.metric("meshrev_revision_pods{revision=\"1-25-1\"}")?;
        let selectors = m.metric("meshrev_revision_selectors{revision=\"1-25-1\"}")?;
        Ok((pods >= 1.0 && selectors == 2.0).then_some(()))
    })
    .await?;
    let tags: Api<RevisionTag> = Api::all(client.clone());
    let broken = eventually("RevisionTag broken status", WAIT, || async {
        Ok(tags
            .get("broken")
            .await?
            .status
            .filter(|s| !s.message.is_empty()))
    })
    .await?;
    assert!(
        broken.resolved_revision.is_none() && broken.message.contains("9-9-9"),
        "{broken:?}"
    );
    let ok = eventually("RevisionTag statustag status", WAIT, || async {
        Ok(tags
            .get("statustag")
            .await?
            .status
            .and_then(|s| s.resolved_revision))
    })
    .await?;
    assert_eq!(ok, "1-25-1");
    tags.delete("broken", &DeleteParams::default()).await?;
    Ok(())
}
