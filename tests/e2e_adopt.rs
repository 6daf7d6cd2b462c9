//! `meshrev adopt` end to end, on real Istio objects (issue 12):
//!
//! 1. Istio's own charts (1.30.3's) rendered for two revisions, `1-30-2` with tag `default`
//!    and `1-30-3` with tag `canary`, applied to the test API server, with Istio's own
//!    injector serving their webhooks (`support/istio.rs`).
//! 2. meshrev installed: its CRDs, `meshrev serve`, its webhook configuration.
//! 3. Namespaces labelled as an Istio user would; pods created: Istio injects them.
//! 4. `meshrev adopt --dry-run` (plan checked), `adopt --yes`, `--takeover` while pods are
//!    created concurrently, pods before and after compared, `--release`.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/istio.rs"]
mod istio;
#[path = "support/meshrev.rs"]
mod meshrev_proc;
#[path = "support/normalize.rs"]
mod normalize;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use meshrev::config::{MeshRevision, RevisionTag};
use meshrev_proc::{Meshrev, eventually};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
/// (revision, proxy tag, revision tag)
const REVISIONS: [(&str, &str, &str); 2] = [
    ("1-30-2", "1.30.2", "default"),
    ("1-30-3", "1.30.3", "canary"),
];
const WEBHOOK: &str = "meshrev-sidecar-injector";

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web", "version": "v1"}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 8080}]}]}
    })
}

async fn create_pod(client: &kube::Client, ns: &str, name: &str) -> Result<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &serde_json::from_value(pod(name))?)
        .await
        .with_context(|| format!("creating pod {ns}/{name}"))
}

/// The pod's sidecar revision; fails unless it has exactly one `istio-proxy` (and, when
/// injected, one proxy of that revision's image).
fn sidecar(p: &Pod) -> Result<Option<String>> {
    let v = serde_json::to_value(p)?;
    let proxies: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|l| v["spec"][l].as_array())
        .flatten()
        .filter(|c| c["name"] == "istio-proxy")
        .collect();
    let rev = v["metadata"]["annotations"]["istio.io/rev"].as_str();
    match (proxies.len(), rev) {
        (0, None) => Ok(None),
        (1, Some(rev)) => {
            let version = rev.replace('-', ".");
            let image = proxies[0]["image"].as_str().unwrap_or_default();
            ensure!(
                image == format!("docker.io/istio/proxyv2:{version}"),
                "pod {:?}: image {image} is not revision {rev}'s",
                p.metadata.name
            );
            Ok(Some(rev.to_string()))
        }
        (n, rev) => bail!(
            "pod {:?}: {n} istio-proxy container(s), revision annotation {rev:?}",
            p.metadata.name
        ),
    }
}

/// The pod as a workload sees it: spec, labels and annotations, normalised (env, volumes
/// and mounts sorted by name, JSON strings as JSON, empty values dropped; see
/// tests/support/normalize.rs), without the fields that differ per pod object: uid,
/// resourceVersion, creationTimestamp, managedFields, and the random suffix of the
/// ServiceAccount token volume the API server adds (`kube-api-access-<5 random>`).
fn comparable(p: &Pod) -> Result<Value> {
    comparable_as(p, "web")
}

/// [`comparable`] of a pod named otherwise, as if it were named `name`: its own name
/// (also in `ISTIO_META_WORKLOAD_NAME` and `ISTIO_META_OWNER` of a bare pod) replaced.
fn comparable_as(p: &Pod, name: &str) -> Result<Value> {
    let own = p.metadata.name.clone().unwrap_or_default();
    let mut text = serde_json::to_string(p)?;
    if own != name {
        text = text
            .replace(&format!("\"{own}\""), &format!("\"{name}\""))
            .replace(&format!("/pods/{own}\""), &format!("/pods/{name}\""));
    }
    let re = regex::Regex::new("kube-api-access-[a-z0-9]{5}")?;
    let v: Value = serde_json::from_str(&re.replace_all(&text, "kube-api-access-xxxxx"))?;
    let mut out = json!({
        "labels": v["metadata"]["labels"],
        "annotations": v["metadata"]["annotations"],
        "spec": v["spec"],
    });
    // normalize() also erases the image tag and revision; they are checked by sidecar().
    normalize::normalize(&mut out);
    Ok(out)
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn adopt(kubeconfig: &Path, args: &[&str]) -> Result<Run> {
    meshrev_cli(kubeconfig, "adopt", args).await
}

/// Runs `meshrev COMMAND ARGS --kubeconfig KUBECONFIG` and prints what it said.
async fn meshrev_cli(kubeconfig: &Path, command: &str, args: &[&str]) -> Result<Run> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshrev"))
        .arg(command)
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .kill_on_drop(true)
        .output()
        .await?;
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    };
    println!(
        "$ meshrev {command} {} → exit {}\n{}{}",
        args.join(" "),
        run.code,
        run.stdout,
        run.stderr
    );
    Ok(run)
}

async fn istio_webhooks(client: &kube::Client) -> Result<Vec<Value>> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mut out: Vec<Value> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|m| m.metadata.name.as_deref().is_some_and(|n| n.starts_with("istio-")))
        .map(|m| json!({"name": m.metadata.name, "annotations": m.metadata.annotations, "webhooks": m.webhooks}))
        .collect();
    out.sort_by_key(|v| v["name"].to_string());
    Ok(out)
}

fn parked(m: &MutatingWebhookConfiguration) -> bool {
    m.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("meshrev.io/parked-namespace-selectors"))
}

#[tokio::test]
async fn adopt_takeover_and_release_a_real_istio_installation() -> Result<()> {
    if cluster::skip_e2e() {
        return Ok(());
    }
    let c = cluster::shared();
    let client = c.client().await?;
    let dir = c.dir.join("adopt");
    std::fs::create_dir_all(&dir)?;
    let istio = istio::install(&client, &dir, &REVISIONS).await?;

    // Namespaces as an Istio user labels them, and the revision Istio gives each.
    let cases = [
        ("enabled", ("istio-injection", "enabled"), "1-30-2"),
        ("tagdefault", ("istio.io/rev", "default"), "1-30-2"),
        ("canary", ("istio.io/rev", "canary"), "1-30-3"),
        ("pinned", ("istio.io/rev", "1-30-3"), "1-30-3"),
    ];
    let mut nss = Vec::new();
    for (prefix, label, _) in cases {
        nss.push(cluster::create_namespace(&client, prefix, &[label]).await?);
    }
    // Before meshrev: Istio's injector (its webhook configuration reaches the API server's
    // informer within moments; wait for the first injected pod).
    let mut before = Vec::new();
    for ((_, _, want), ns) in cases.iter().zip(&nss) {
        let mut i = 0;
        let p = eventually(&format!("Istio injects a pod in {ns}"), WAIT, || {
            i += 1;
            let name = format!("probe-{i}");
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let p = create_pod(&client, &ns, &name).await?;
                Ok(sidecar(&p)?.is_some().then_some(p))
            }
        })
        .await?;
        assert_eq!(
            sidecar(&p)?.as_deref(),
            Some(*want),
            "Istio's routing in {ns}"
        );
        let p = create_pod(&client, ns, "web").await?;
        assert_eq!(sidecar(&p)?.as_deref(), Some(*want));
        before.push(p);
    }

    // meshrev installed as the manifests install it: CRDs, `meshrev serve`, its webhook
    // configuration (matching; adopt --yes parks it).
    meshrev_proc::install_crds(&client).await?;
    let m = Meshrev::start(&c.kubeconfig, &dir, 0)?;
    // Pods created meanwhile get both injectors until adopt --yes parks meshrev's: the test
    // creates none in that window.
    meshrev_proc::register_injector(&client, m.port, &m.ca_pem()?, "Fail").await?;
    let istio_original = istio_webhooks(&client).await?;

    let plan = adopt(&c.kubeconfig, &["--dry-run"]).await?;
    ensure!(plan.code == 0, "adopt --dry-run failed");
    for line in [
        "CREATE    MeshRevision 1-30-2 {\"version\":\"1.30.2\",\"controlPlane\":{\"name\":\"istiod-1-30-2\",\"namespace\":\"istio-system\"}}",
        "CREATE    MeshRevision 1-30-3 {\"version\":\"1.30.3\",\"controlPlane\":{\"name\":\"istiod-1-30-3\",\"namespace\":\"istio-system\"}}",
        "CREATE    RevisionTag canary → 1-30-3",
        "CREATE    RevisionTag default → 1-30-2",
        "CREATE    RevisionTag stable → 1-30-2",
        "Differences meshrev cannot express: none",
        "Deployment istio-system/istiod-1-30-2 (1/1 available)",
        "Istio 1.30.3's templates",
        "meshrev's webhook configuration gets Istio's reinvocationPolicy: Never",
    ] {
        ensure!(plan.stdout.contains(line), "the plan shows {line:?}");
    }
    for ((_, (k, v), want), ns) in cases.iter().zip(&nss) {
        let row = plan
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(ns.as_str()))
            .with_context(|| format!("the plan lists namespace {ns}"))?;
        ensure!(
            row.contains(&format!("{k}={v}")) && row.contains(&format!("{want} / {want}")),
            "namespace row {row:?}"
        );
    }
    let revs: Api<MeshRevision> = Api::all(client.clone());
    ensure!(
        revs.list(&ListParams::default()).await?.items.is_empty(),
        "--dry-run writes nothing"
    );

    let yes = adopt(&c.kubeconfig, &["--yes"]).await?;
    ensure!(yes.code == 0, "adopt --yes failed");
    ensure!(revs.get("1-30-2").await?.spec.version == "1.30.2");
    let tags: Api<RevisionTag> = Api::all(client.clone());
    ensure!(tags.get("stable").await?.spec.revision == "1-30-2");
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    ensure!(
        parked(&mwcs.get(WEBHOOK).await?),
        "adopt --yes parks meshrev's webhook"
    );
    // The adopted revisions name Istio's istiod Deployments: meshrev's controller reports
    // them ready.
    for (rev, _, _) in REVISIONS {
        eventually(
            &format!("MeshRevision {rev} ControlPlaneReady"),
            WAIT,
            || async {
                let r = revs.get(rev).await?;
                Ok(r.status
                    .and_then(|s| {
                        s.conditions
                            .into_iter()
                            .find(|c| c.type_ == "ControlPlaneReady")
                    })
                    .filter(|c| c.status == "True"))
            },
        )
        .await?;
    }
    let again = adopt(&c.kubeconfig, &["--dry-run"]).await?;
    ensure!(
        again.stdout.contains("Objects (0 to write"),
        "a second plan writes nothing"
    );

    // Takeover while pods are created in every namespace.
    let injected_by_meshrev = || m.metric("meshrev_injection_requests_total{result=\"injected\"}");
    let meshrev_before = injected_by_meshrev()?;
    let istio_before = istio::istio_calls(&istio)?;
    let created = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Each pod, renamed, must be the pod Istio's injector gave `web` in its namespace.
    let reference = Arc::new(before.iter().map(comparable).collect::<Result<Vec<_>>>()?);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (client, created, stop) = (client.clone(), created.clone(), stop.clone());
        let reference = reference.clone();
        let targets: Vec<(String, &str)> =
            nss.iter().cloned().zip(cases.iter().map(|c| c.2)).collect();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let k = (w + i) % targets.len();
                let (ns, want) = &targets[k];
                let p = create_pod(&client, ns, &format!("c{w}-{i}")).await?;
                created.fetch_add(1, Ordering::SeqCst);
                let got = sidecar(&p)?;
                ensure!(
                    got.as_deref() == Some(*want),
                    "pod {ns}/c{w}-{i}: {got:?}, want {want}"
                );
                let diffs = normalize::diff(&reference[k], &comparable_as(&p, "web")?);
                ensure!(
                    diffs.is_empty(),
                    "pod {ns}/c{w}-{i} differs from the pod Istio's injector gave: {diffs:?}"
                );
                seen.push(got.unwrap_or_default());
                i += 1;
            }
            anyhow::Ok(seen.len())
        }));
    }
    // A worker that failed stops creating: stop waiting then, its error is reported below.
    let _ = eventually("creations under way", WAIT, || {
        let n = created.load(Ordering::SeqCst);
        let failed = tasks.iter().any(|t| t.is_finished());
        async move { Ok((n >= 12 || failed).then_some(())) }
    })
    .await;
    let during = created.load(Ordering::SeqCst);
    let takeover = adopt(&c.kubeconfig, &["--takeover"]).await?;
    ensure!(takeover.code == 0, "adopt --takeover failed");
    let switched = created.load(Ordering::SeqCst);
    // A worker that failed stops creating: stop waiting then, its error is reported below.
    let _ = eventually("creations after the takeover", WAIT, || {
        let n = created.load(Ordering::SeqCst);
        let failed = tasks.iter().any(|t| t.is_finished());
        async move { Ok((n >= switched + 12 || failed).then_some(())) }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    println!(
        "{total} pods created concurrently ({during} before the takeover started, {} during it, {} after): each has exactly one istio-proxy of its namespace's revision, and is the pod Istio's injector gives",
        switched - during,
        total - switched
    );
    ensure!(total >= 24);
    // Never both: every pod of the burst went through exactly one injector. Besides them,
    // meshrev answered the takeover's own checks: one review per revision sent straight to
    // it, one dry-run pod per revision after the switch.
    let checks = 2 * REVISIONS.len();
    let counts = || -> Result<(usize, usize)> {
        Ok((
            istio::istio_calls(&istio)? - istio_before,
            (injected_by_meshrev()? - meshrev_before) as usize,
        ))
    };
    // meshrev counts a request once it has answered: wait for the last ones.
    let _ = eventually("injection counts settle", Duration::from_secs(10), || {
        let c = counts();
        async move {
            let (i, m) = c?;
            Ok((i + m >= total + checks).then_some(()))
        }
    })
    .await;
    let (istio_n, meshrev_n) = counts()?;
    println!(
        "injections during the burst: {istio_n} by Istio's injector, {meshrev_n} by meshrev ({checks} of them the takeover's checks), for {total} pods"
    );
    ensure!(
        istio_n + meshrev_n == total + checks,
        "no pod went through both injectors: {istio_n} + {meshrev_n} != {total} + {checks}"
    );
    ensure!(
        meshrev_before == 0.0,
        "meshrev injected nothing while parked"
    );
    ensure!(
        injected_by_meshrev()? > 0.0,
        "meshrev injects after the takeover"
    );
    for m in istio_webhooks(&client).await? {
        ensure!(
            m["annotations"]["meshrev.io/parked-namespace-selectors"].is_string(),
            "{} parked",
            m["name"]
        );
    }
    ensure!(
        !parked(&mwcs.get(WEBHOOK).await?),
        "meshrev's webhook matches"
    );

    // The same pods after the takeover: delete each `web` and create it again, so that
    // everything derived from the pod's name and namespace is the same.
    let injected_now = injected_by_meshrev()?;
    for ((_, _, want), (ns, old)) in cases.iter().zip(nss.iter().zip(&before)) {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        api.delete("web", &DeleteParams::default()).await?;
        eventually("web deleted", WAIT, || async {
            Ok(api.get_opt("web").await?.is_none().then_some(()))
        })
        .await?;
        let new = create_pod(&client, ns, "web").await?;
        assert_eq!(sidecar(&new)?.as_deref(), Some(*want));
        let (a, b) = (comparable(old)?, comparable(&new)?);
        let diffs = normalize::diff(&a, &b);
        ensure!(
            diffs.is_empty(),
            "namespace {ns}: the sidecar Istio injected and the one meshrev injects differ: {diffs:?}"
        );
    }
    ensure!(
        injected_by_meshrev()? >= injected_now + 4.0,
        "those were meshrev's"
    );
    println!(
        "pods before (Istio's injector) and after the takeover (meshrev's) are identical in {} namespaces",
        nss.len()
    );

    // Release: Istio's webhooks exactly as they were, meshrev's parked, Istio injects.
    let release = adopt(&c.kubeconfig, &["--release"]).await?;
    ensure!(release.code == 0, "adopt --release failed");
    ensure!(
        istio_webhooks(&client).await? == istio_original,
        "Istio's webhooks restored exactly"
    );
    ensure!(parked(&mwcs.get(WEBHOOK).await?));
    // The API server's webhook informer trails the write by moments: poll for a pod that
    // only Istio injected.
    let mut i = 0;
    eventually(
        "a pod injected by Istio alone after --release",
        WAIT,
        || {
            i += 1;
            let (client, ns) = (client.clone(), nss[2].clone());
            let before = injected_by_meshrev();
            async move {
                let before = before?;
                let p = create_pod(&client, &ns, &format!("after-release-{i}")).await?;
                ensure!(sidecar(&p)?.as_deref() == Some("1-30-3"));
                Ok((injected_by_meshrev()? == before).then_some(()))
            }
        },
    )
    .await?;

    // The readiness guards on Istio's own istiod: scaled to zero, the canary's control
    // plane is not ready, and moving a namespace to it is refused, naming the Deployment.
    let deploys: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), istio::ISTIO_NS);
    let scale = |n: i32| {
        let deploys = deploys.clone();
        async move {
            deploys
                .patch(
                    "istiod-1-30-3",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"replicas": n}})),
                )
                .await
        }
    };
    scale(0).await?;
    eventually("1-30-3's control plane not ready", WAIT, || async {
        let r = revs.get("1-30-3").await?;
        Ok(r.status
            .and_then(|s| {
                s.conditions
                    .into_iter()
                    .find(|c| c.type_ == "ControlPlaneReady")
            })
            .filter(|c| c.status == "False"))
    })
    .await?;
    let status = meshrev_cli(&c.kubeconfig, "upgrade", &["status"]).await?;
    ensure!(
        status
            .stdout
            .lines()
            .any(|l| l.starts_with("1-30-3") && l.contains("istio-system/istiod-1-30-3")),
        "upgrade status shows the adopted revision's control plane"
    );
    let refused = meshrev_cli(
        &c.kubeconfig,
        "upgrade",
        &["switch", &nss[0], "--to", "canary"],
    )
    .await?;
    ensure!(
        refused.code != 0 && refused.stderr.contains("istio-system/istiod-1-30-3"),
        "switching to a revision whose istiod is scaled to zero is refused, naming it"
    );
    scale(1).await?;
    meshrev_proc::istiod_ready(&client, "1-30-3").await?;
    eventually(
        "the switch passes once istiod is available",
        WAIT,
        || async {
            let r = meshrev_cli(
                &c.kubeconfig,
                "upgrade",
                &["switch", &nss[0], "--to", "canary"],
            )
            .await?;
            Ok((r.code == 0).then_some(()))
        },
    )
    .await?;

    // A value meshrev does not model and a custom template, as an operator might have set
    // them with `istioctl install --set …`: the plan names them, --yes refuses.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), istio::ISTIO_NS);
    let name = "istio-sidecar-injector-1-30-3";
    let cm = cms.get(name).await?;
    let data = cm.data.clone().unwrap_or_default();
    let mut values: Value = serde_json::from_str(data.get("values").context("values")?)?;
    values["global"]["proxy"]["tracer"] = json!("zipkin");
    let mut config = meshrev::yaml::from_str(data.get("config").context("config")?)?;
    config["templates"]["company-sidecar"] = json!("spec:\n  containers: []\n");
    cms.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"data": {"values": values.to_string(), "config": config.to_string()}}),
        ),
    )
    .await?;
    let plan = adopt(&c.kubeconfig, &["--dry-run"]).await?;
    for line in [
        "Differences meshrev cannot express (2; adopt --yes refuses them without --force):",
        "revision 1-30-3: values.global.proxy.tracer: set to \"zipkin\"",
        "revision 1-30-3: config.templates.company-sidecar: a custom template",
    ] {
        ensure!(plan.stdout.contains(line), "the plan shows {line:?}");
    }
    let refused = adopt(&c.kubeconfig, &["--yes"]).await?;
    ensure!(
        refused.code != 0
            && refused.stderr.contains("2 difference(s)")
            && refused.stderr.contains("--force"),
        "adopt --yes refuses differences, naming the fix"
    );
    drop(m);
    Ok(())
}
