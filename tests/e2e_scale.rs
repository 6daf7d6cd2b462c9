//! Scale bench of `meshrev serve`'s controller on a real kube-apiserver: 1,000 namespaces and
//! 20,000 pods (pods exist only in the API: no scheduler, no kubelet).
//!
//! It measures and prints; it is not a timed test. What it asserts holds at any speed:
//! status gets written, and at steady state meshrev's only API requests are Lease
//! renewals. It reports:
//! - meshrev's RSS with an empty cluster and after syncing the big one, and the RSS
//!   extrapolated to 10,000 namespaces and 100,000 pods;
//! - meshrev's API requests per minute at steady state and during a promotion (tag
//!   `stable` moved, then 10% of the pods "restarted" onto the new revision), by verb and
//!   resource, counted from the API server's audit log by user agent;
//! - the time from the tag patch to the status that reflects it.
//!
//! Run: `CI=true cargo test --release --test e2e_scale -- --ignored --nocapture`.
//! Knobs: `MESHREV_SCALE_NAMESPACES` (1000), `MESHREV_SCALE_PODS_PER_NAMESPACE` (20),
//! `MESHREV_SCALE_WINDOW_SECS` (60: the steady-state measuring window; a bench's
//! window, not a wait for something to happen).

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/meshrev.rs"]
mod meshrev_proc;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use meshrev::config::{MeshRevision, RevisionTag};
use meshrev_proc::Meshrev;
use serde_json::{Value, json};

const BENCH_AGENT: &str = "meshrev-scale-bench";

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The bench's own client: a user agent of its own, so the audit log tells its requests
/// from meshrev's.
async fn bench_client(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let mut cfg =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    cfg.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(BENCH_AGENT),
    ));
    Ok(kube::Client::try_from(cfg)?)
}

/// Resident and peak memory of a process, in MiB, from /proc.
fn rss_mib(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> Result<f64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .with_context(|| format!("{key} in /proc/{pid}/status"))
    };
    Ok((kib("VmRSS:")? / 1024.0, kib("VmHWM:")? / 1024.0))
}

/// meshrev's requests in the audit log from byte `from` on: (verb resource) → count, and
/// the byte offset read to. meshrev's are those without a user agent: kube-rs sends none,
/// the bench's client sends [`BENCH_AGENT`], the control plane's components their own.
fn meshrev_requests(audit: &Path, from: usize) -> Result<(BTreeMap<String, u64>, usize)> {
    let text = std::fs::read(audit)?;
    let mut out = BTreeMap::new();
    for line in text[from.min(text.len())..].split(|b| *b == b'\n') {
        let Ok(ev) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        if ev["userAgent"].as_str().is_some_and(|a| !a.is_empty()) {
            continue;
        }
        let verb = ev["verb"].as_str().unwrap_or_default();
        // One event per request: a watch when it starts, anything else when it completes.
        let counted = match ev["stage"].as_str() {
            Some("ResponseStarted") => verb == "watch",
            Some("ResponseComplete") => verb != "watch",
            _ => false,
        };
        if counted {
            let resource = ev["objectRef"]["resource"].as_str().unwrap_or("-");
            let sub = ev["objectRef"]["subresource"]
                .as_str()
                .map(|s| format!("/{s}"))
                .unwrap_or_default();
            *out.entry(format!("{verb} {resource}{sub}")).or_default() += 1;
        }
    }
    Ok((out, text.len()))
}

fn per_minute(counts: &BTreeMap<String, u64>, over: Duration) -> String {
    let total: u64 = counts.values().sum();
    let scale = 60.0 / over.as_secs_f64();
    let parts: Vec<String> = counts
        .iter()
        .map(|(k, v)| format!("{k}: {:.1}", *v as f64 * scale))
        .collect();
    format!(
        "{:.1}/min over {:.0}s [{}]",
        total as f64 * scale,
        over.as_secs_f64(),
        parts.join(", ")
    )
}

fn pod(ns: &str, name: &str, revision: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns,
            "labels": {"app": "bench"},
            "annotations": {
                "istio.io/rev": revision,
                "sidecar.istio.io/status": format!("{{\"revision\":\"{revision}\"}}"),
            },
        },
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "bench:1"}, {"name": "istio-proxy", "image": "proxyv2:1"}],
        },
    })
}

async fn revision_status(revs: &Api<MeshRevision>, name: &str) -> Result<(Vec<String>, u32)> {
    let s = revs.get(name).await?.status.unwrap_or_default();
    Ok((s.tags, s.pods))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scale bench, minutes long: CI=true cargo test --release --test e2e_scale -- --ignored --nocapture"]
async fn scale_bench_1000_namespaces_20000_pods() -> Result<()> {
    if cluster::skip_e2e() {
        return Ok(());
    }
    let namespaces = knob("MESHREV_SCALE_NAMESPACES", 1000);
    let per_ns = knob("MESHREV_SCALE_PODS_PER_NAMESPACE", 20);
    let window = Duration::from_secs(knob("MESHREV_SCALE_WINDOW_SECS", 60) as u64);
    let pods_total = namespaces * per_ns;

    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("audit-policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
    )?;
    let audit = dir.path().join("audit.log");
    let opts = cluster::Options {
        apiserver_args: vec![
            format!("--audit-policy-file={}", policy.display()),
            format!("--audit-log-path={}", audit.display()),
            "--audit-log-maxsize=0".into(),
            // Pods are created bare, before any service account exists.
            "--disable-admission-plugins=ServiceAccount".into(),
        ],
        ..Default::default()
    };
    let c = tokio::task::spawn_blocking(move || cluster::TestCluster::start_with(opts)).await??;
    let client = bench_client(&c.kubeconfig).await?;
    meshrev_proc::install_crds(&client).await?;
    let revs: Api<MeshRevision> = Api::all(client.clone());
    let tags: Api<RevisionTag> = Api::all(client.clone());
    for (name, version) in [("1-22-6", "1.22.6"), ("1-23-6", "1.23.6")] {
        meshrev_proc::apply(
            &revs,
            json!({"apiVersion": "meshrev.io/v1alpha1", "kind": "MeshRevision",
                   "metadata": {"name": name}, "spec": {"version": version}}),
        )
        .await?;
    }
    for (name, rev) in [("stable", "1-22-6"), ("canary", "1-23-6")] {
        meshrev_proc::apply(
            &tags,
            json!({"apiVersion": "meshrev.io/v1alpha1", "kind": "RevisionTag",
                   "metadata": {"name": name}, "spec": {"revision": rev}}),
        )
        .await?;
    }

    // RSS of a meshrev that synced the cluster as it is now (started, measured, stopped).
    let rss_now = |label: &'static str| {
        let kubeconfig = c.kubeconfig.clone();
        let d = dir.path().join(label);
        async move {
            std::fs::create_dir_all(&d)?;
            tokio::task::spawn_blocking(move || -> Result<f64> {
                let mut m = Meshrev::start(&kubeconfig, &d, 0)?;
                let (rss, _) = rss_mib(m.pid().context("meshrev's pid")?)?;
                m.stop();
                Ok(rss)
            })
            .await?
        }
    };
    let rss_empty = rss_now("empty").await?;

    // The cluster: every namespace on tag stable, its pods on stable's revision.
    let t = Instant::now();
    let ns_api: Api<Namespace> = Api::all(client.clone());
    futures::stream::iter(0..namespaces)
        .map(|i| {
            let ns_api = ns_api.clone();
            async move {
                let ns: Namespace = serde_json::from_value(json!({
                    "metadata": {"name": format!("bench-{i:05}"), "labels": {"istio.io/rev": "stable"}}
                }))?;
                ns_api.create(&PostParams::default(), &ns).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    let rss_ns = rss_now("namespaces").await?;
    let create_pods = |range: std::ops::Range<usize>| {
        futures::stream::iter(range)
            .map(|i| {
                let client = client.clone();
                async move {
                    let ns = format!("bench-{:05}", i / per_ns);
                    let api: Api<Pod> = Api::namespaced(client, &ns);
                    let p: Pod = serde_json::from_value(pod(&ns, &format!("p-{i:06}"), "1-22-6"))?;
                    api.create(&PostParams::default(), &p).await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(64)
            .try_collect::<Vec<()>>()
    };
    let half = pods_total / 2;
    create_pods(0..half).await?;
    let rss_half = rss_now("half").await?;
    create_pods(half..pods_total).await?;
    println!(
        "scale: created {namespaces} namespaces and {pods_total} pods in {:.1?}",
        t.elapsed()
    );

    // meshrev against the full cluster: time to ready (every watch listed), RSS.
    let kubeconfig = c.kubeconfig.clone();
    let d = dir.path().join("full");
    std::fs::create_dir_all(&d)?;
    let t = Instant::now();
    let m = tokio::task::spawn_blocking(move || Meshrev::start(&kubeconfig, &d, 0)).await??;
    let ready_in = t.elapsed();
    let pid = m.pid().context("meshrev's pid")?;
    let stable_pods = u32::try_from(pods_total)?;
    let status_in = meshrev_proc::eventually(
        "status counts every pod",
        Duration::from_secs(120),
        || async {
            let (_, pods) = revision_status(&revs, "1-22-6").await?;
            Ok((pods == stable_pods).then(|| t.elapsed()))
        },
    )
    .await?;
    let (rss, hwm) = rss_mib(pid)?;
    println!(
        "scale: meshrev ready (all watches listed) {ready_in:.1?} after start, status written after {status_in:.1?}"
    );
    let indexed = m.metric("meshrev_index_objects{resource=\"pods\"}")?;
    assert_eq!(indexed as usize, pods_total, "every pod indexed");
    let per_ns_kib = (rss_ns - rss_empty) * 1024.0 / namespaces as f64;
    let per_pod_kib = (rss - rss_half) * 1024.0 / (pods_total - half) as f64;
    println!(
        "scale: RSS after sync: empty cluster {rss_empty:.1} MiB; {namespaces} namespaces {rss_ns:.1} MiB; +{half} pods {rss_half:.1} MiB; +{pods_total} pods {rss:.1} MiB (peak {hwm:.1} MiB)"
    );
    println!(
        "scale: marginal cost {per_ns_kib:.2} KiB/namespace, {per_pod_kib:.2} KiB/pod (between {half} and {pods_total} pods)"
    );
    println!(
        "scale: RSS extrapolated to 10,000 namespaces / 100,000 pods: {:.1} MiB",
        rss + per_pod_kib * (100_000 - pods_total) as f64 / 1024.0
            + per_ns_kib * 10_000usize.saturating_sub(namespaces) as f64 / 1024.0
    );

    // Steady state: nothing changes for `window`; meshrev may only renew its Lease.
    let (_, mut offset) = meshrev_requests(&audit, 0)?;
    tokio::time::sleep(window).await;
    let (steady, end) = meshrev_requests(&audit, offset)?;
    offset = end;
    println!("scale: steady state: {}", per_minute(&steady, window));
    // Besides Lease renewals only a watch that kube-rs re-opens when the API server
    // ends it (every ~5 min per watch) is allowed: no LIST, no status write.
    assert!(
        steady
            .keys()
            .all(|k| k.ends_with(" leases") || k.starts_with("watch ")),
        "at steady state meshrev only renews its Lease: {steady:?}"
    );
    assert!(
        steady.values().sum::<u64>() > 0,
        "the Lease is renewed (the audit log sees meshrev)"
    );

    // A promotion: tag stable moves to 1-23-6, then 10% of the pods restart onto it.
    let t = Instant::now();
    tags.patch(
        "stable",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"revision": "1-23-6"}})),
    )
    .await?;
    let tag_to_status = meshrev_proc::eventually(
        "status follows the tag patch",
        Duration::from_secs(60),
        || async {
            let (tags, _) = revision_status(&revs, "1-23-6").await?;
            Ok(tags.iter().any(|t| t == "stable").then(|| t.elapsed()))
        },
    )
    .await?;
    println!("scale: tag patch → MeshRevision status updated: {tag_to_status:.2?}");
    let restarted = pods_total / 10;
    futures::stream::iter(0..restarted)
        .map(|i| {
            let client = client.clone();
            async move {
                let ns = format!("bench-{:05}", i / per_ns);
                let api: Api<Pod> = Api::namespaced(client, &ns);
                let old = format!("p-{i:06}");
                api.delete(&old, &DeleteParams::default().grace_period(0))
                    .await?;
                let p: Pod = serde_json::from_value(pod(&ns, &format!("{old}-r"), "1-23-6"))?;
                api.create(&PostParams::default(), &p).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    let want = u32::try_from(restarted)?;
    meshrev_proc::eventually(
        "status counts the restarted pods",
        Duration::from_secs(120),
        || async {
            let (_, pods) = revision_status(&revs, "1-23-6").await?;
            Ok((pods == want).then_some(()))
        },
    )
    .await?;
    let promotion = t.elapsed();
    let (during, _) = meshrev_requests(&audit, offset)?;
    println!(
        "scale: during the promotion ({restarted} pods restarted): {}",
        per_minute(&during, promotion)
    );
    let lists: u64 = during
        .iter()
        .filter(|(k, _)| k.starts_with("list "))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(lists, 0, "no LIST during a promotion either: {during:?}");
    let (rss, hwm) = rss_mib(pid)?;
    println!("scale: RSS after the promotion {rss:.1} MiB (peak {hwm:.1} MiB)");
    drop(m);
    Ok(())
}
