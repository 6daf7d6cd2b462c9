//! The canary upgrade of the seed (ASM's "Use canary mode to enhance upgrade stability"), end
//! to end on a real control plane, with `meshrev serve` injecting (`/inject`) and guarding
//! (`/validate`), and `meshrev upgrade …` run as the user would:
//!
//! 1. bookinfo in `default` (`istio-injection=enabled`) and an ingress gateway (pod label
//!    `sidecar.istio.io/inject=true`) on stable `1-22-6`, whose istiod
//!    (`istio-system/istiod-1-22-6`) is available;
//! 2. the readiness guards: canary `1-23-6`'s istiod deployed but not available, so the CLI,
//!    a RevisionTag and a namespace label are refused naming the Deployment (`--force`
//!    passes, its write carrying the force annotation the webhook honours), until its pod
//!    is ready;
//! 3. the rollback path: canary `1-23-6` → switch → redeploy reviews-v2 → rollback → revoke;
//! 4. the canary again → switch → redeploy reviews-v2 → verify → promote → rollout →
//!    unpublish;
//!
//! checking every pod's revision at each step, and each guard refusing, from the CLI (exit
//! code, blockers listed) and from plain API calls through the validating webhook (403,
//! blockers in the message).
//!
//! There is no scheduler or kubelet: pods stay Pending. A stand-in kubelet
//! ([`FakeKubelet`]) patches the pods' status (phase Running, condition Ready) through the
//! status subresource, as a kubelet would, so that Deployments roll (a new pod must become
//! available before the old one goes) and `verify` has readiness to judge. It can be paused
//! to see `verify` fail on Pending pods. Pods deleted before a node was bound go away at
//! once, so old pods vanish as soon as the ReplicaSet controller deletes them. The istiod
//! Deployments are made available the same way (their pods marked ready; the Deployment
//! controller then reports them available), by `support/meshrev.rs`'s `istiod_ready`.
//!
//! One test: the revisions and tags are cluster-scoped and the steps are sequential.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/meshrev.rs"]
mod meshrev_proc;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use meshrev::config::{MeshRevision, RevisionTag};
use meshrev_proc::{Meshrev, apply};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
const BOOKINFO: [(&str, i32); 6] = [
    ("productpage", 2),
    ("details", 1),
    ("ratings", 1),
    ("reviews-v1", 1),
    ("reviews-v2", 1),
    ("reviews-v3", 1),
];
const GATEWAY_NS: &str = "istio-ingress";
const GATEWAY: &str = "istio-ingressgateway";
/// Pods with this label are left alone by the stand-in kubelet.
const KUBELET_IGNORE: &str = "e2e.meshrev.io/no-kubelet";

/// The result of one `meshrev upgrade …` run.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `meshrev upgrade ARGS --kubeconfig KUBECONFIG`.
async fn meshrev_upgrade(kubeconfig: &Path, args: &[&str]) -> Result<Run> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshrev"))
        .arg("upgrade")
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("MESHREV_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .context("running meshrev upgrade")?;
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    println!(
        "$ meshrev upgrade {} → exit {}\n{}{}",
        args.join(" "),
        run.code,
        run.stdout,
        run.stderr
    );
    Ok(run)
}

/// Runs `kubectl meshrev upgrade status --kubeconfig KUBECONFIG` through kubectl's plugin
/// dispatch (the `kubectl-meshrev` binary's directory first on PATH) when kubectl is on
/// PATH, else the plugin binary itself; returns its stdout, after checking it succeeded.
async fn kubectl_meshrev_status(kubeconfig: &Path) -> Result<String> {
    let plugin = Path::new(env!("CARGO_BIN_EXE_kubectl-meshrev"));
    let path: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let kubectl = path.iter().map(|d| d.join("kubectl")).find(|k| k.is_file());
    let mut cmd = match &kubectl {
        Some(k) => {
            let mut c = tokio::process::Command::new(k);
            c.arg("meshrev");
            c
        }
        None => tokio::process::Command::new(plugin),
    };
    let dirs = std::iter::once(plugin.parent().context("plugin dir")?.to_path_buf()).chain(path);
    let out = cmd
        .args(["upgrade", "status", "--kubeconfig"])
        .arg(kubeconfig)
        .env("PATH", std::env::join_paths(dirs)?)
        .env("MESHREV_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .context("running kubectl meshrev upgrade status")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!(
        "$ kubectl meshrev upgrade status ({}) → {}\n{stdout}{}",
        if kubectl.is_some() {
            "through kubectl"
        } else {
            "no kubectl on PATH: the plugin binary itself"
        },
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        out.status.success(),
        "kubectl meshrev upgrade status failed"
    );
    Ok(stdout)
}

/// Runs `kubectl ARGS --kubeconfig KUBECONFIG` when kubectl is on PATH (`None` without
/// it); prints and returns its stdout, after checking it succeeded.
async fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<Option<String>> {
    let Some(kubectl) = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("kubectl"))
        .find(|k| k.is_file())
    else {
        println!("$ kubectl {}: no kubectl on PATH, skipped", args.join(" "));
        return Ok(None);
    };
    let out = tokio::process::Command::new(kubectl)
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .kill_on_drop(true)
        .output()
        .await
        .context("running kubectl")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!(
        "$ kubectl {} → {}\n{stdout}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "kubectl {} failed", args.join(" "));
    Ok(Some(stdout))
}

/// The test's view of things: client, kubeconfig, the kubelet switch.
struct Env {
    client: kube::Client,
    kubeconfig: std::path::PathBuf,
    kubelet: FakeKubelet,
}

impl Env {
    /// Runs a subcommand that must succeed; returns its stdout.
    async fn ok(&self, args: &[&str]) -> Result<String> {
        let r = meshrev_upgrade(&self.kubeconfig, args).await?;
        if r.code != 0 {
            bail!(
                "meshrev upgrade {} failed ({}):\n{}{}",
                args.join(" "),
                r.code,
                r.stdout,
                r.stderr
            );
        }
        Ok(r.stdout)
    }

    /// Runs a subcommand that must be refused: exit 1 and every needle in stderr.
    async fn refused(&self, args: &[&str], needles: &[&str]) -> Result<String> {
        let r = meshrev_upgrade(&self.kubeconfig, args).await?;
        assert_eq!(
            r.code,
            1,
            "meshrev upgrade {} must be refused:\n{}{}",
            args.join(" "),
            r.stdout,
            r.stderr
        );
        for n in needles {
            assert!(
                r.stderr.contains(n),
                "meshrev upgrade {}: {n:?} not in the refusal:\n{}",
                args.join(" "),
                r.stderr
            );
        }
        Ok(r.stderr)
    }

    /// `(status, reason, message)` of a MeshRevision's `ControlPlaneReady` condition.
    async fn control_plane_condition(&self, rev: &str) -> Result<Option<(String, String, String)>> {
        let r = self.revs().get(rev).await?;
        Ok(r.status.and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.type_ == "ControlPlaneReady")
                .map(|c| (c.status, c.reason, c.message))
        }))
    }

    /// Waits until the condition has `status` and `reason` (the status writer runs after
    /// the controller's watch saw the Deployment, so `/validate` sees it too).
    async fn expect_control_plane(&self, rev: &str, status: &str, reason: &str) -> Result<String> {
        meshrev_proc::eventually(
            &format!("MeshRevision {rev}: ControlPlaneReady {status} ({reason})"),
            WAIT,
            || async {
                Ok(self
                    .control_plane_condition(rev)
                    .await?
                    .filter(|(s, r, _)| s == status && r == reason)
                    .map(|(_, _, m)| m))
            },
        )
        .await
    }

    async fn status(&self) -> Result<Value> {
        Ok(serde_json::from_str(
            &self.ok(&["status", "-o", "json"]).await?,
        )?)
    }

    fn revs(&self) -> Api<MeshRevision> {
        Api::all(self.client.clone())
    }
    fn tags(&self) -> Api<RevisionTag> {
        Api::all(self.client.clone())
    }

    async fn tag_names(&self) -> Result<BTreeMap<String, String>> {
        Ok(self
            .tags()
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|t| (t.metadata.name.unwrap_or_default(), t.spec.revision))
            .collect())
    }

    async fn revision_names(&self) -> Result<Vec<String>> {
        Ok(self
            .revs()
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|r| r.metadata.name)
            .collect())
    }

    async fn ns_labels(&self, ns: &str) -> Result<BTreeMap<String, String>> {
        let n = Api::<Namespace>::all(self.client.clone()).get(ns).await?;
        let mut l = n.metadata.labels.unwrap_or_default();
        l.retain(|k, _| k == "istio-injection" || k == "istio.io/rev");
        Ok(l)
    }

    /// Pods per workload (label `app`) in `ns` with their revision, terminating ones left out.
    async fn pod_revisions(&self, ns: &str) -> Result<BTreeMap<String, Vec<String>>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in pods.list(&ListParams::default()).await?.items {
            if p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            if phase == "Succeeded" || phase == "Failed" {
                continue;
            }
            let labels = p.metadata.labels.clone().unwrap_or_default();
            let Some(app) = labels.get("app") else {
                continue;
            };
            let rev = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("istio.io/rev").cloned())
                .unwrap_or_else(|| "none".into());
            out.entry(app.clone()).or_default().push(rev);
        }
        for v in out.values_mut() {
            v.sort();
        }
        Ok(out)
    }

    /// Waits until each listed workload of `ns` has exactly its replicas, all on `rev`.
    async fn expect_revisions(&self, ns: &str, want: &[(&str, i32, &str)]) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.pod_revisions(ns).await?;
            let ok = want.iter().all(|(w, n, rev)| {
                got.get(*w)
                    .is_some_and(|v| v.len() == *n as usize && v.iter().all(|r| r == rev))
            });
            if ok {
                println!("pods in {ns}: {got:?}");
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("pods in {ns}: want {want:?}, have {got:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Bookinfo with every workload on `rev`, except those in `except`.
    async fn expect_bookinfo(&self, rev: &str, except: &[(&str, &str)]) -> Result<()> {
        let want: Vec<(&str, i32, &str)> = BOOKINFO
            .iter()
            .map(|(w, n)| {
                let r = except
                    .iter()
                    .find(|(e, _)| e == w)
                    .map(|(_, r)| *r)
                    .unwrap_or(rev);
                (*w, *n, r)
            })
            .collect();
        self.expect_revisions("default", &want).await
    }
}

/// Stands in for the kubelet: marks Pending pods of some namespaces Running and Ready
/// through the status subresource. Paused and resumed by the test.
#[derive(Clone)]
struct FakeKubelet {
    on: Arc<AtomicBool>,
}

impl FakeKubelet {
    fn start(client: kube::Client, namespaces: Vec<String>) -> FakeKubelet {
        let on = Arc::new(AtomicBool::new(true));
        let flag = on.clone();
        tokio::spawn(async move {
            loop {
                if flag.load(Ordering::SeqCst) {
                    for ns in &namespaces {
                        if let Err(e) = mark_ready(&client, ns).await {
                            eprintln!("fake kubelet: {ns}: {e:#}");
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        FakeKubelet { on }
    }
    fn pause(&self) {
        self.on.store(false, Ordering::SeqCst);
    }
    fn resume(&self) {
        self.on.store(true, Ordering::SeqCst);
    }
}

async fn mark_ready(client: &kube::Client, ns: &str) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields("status.phase=Pending");
    for p in pods.list(&lp).await?.items {
        let ignore = p
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(KUBELET_IGNORE));
        if ignore || p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = p.metadata.name.clone().unwrap_or_default();
        let _ = pods
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(running_ready()),
            )
            .await;
    }
    Ok(())
}

fn running_ready() -> Value {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
    json!({"status": {
        "phase": "Running",
        "startTime": now,
        "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
    }})
}

fn deployment(name: &str, replicas: i32, pod_labels: Value) -> Result<Deployment> {
    let mut labels = json!({"app": name});
    if let (Some(l), Some(extra)) = (labels.as_object_mut(), pod_labels.as_object()) {
        l.extend(extra.clone());
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": name, "image": format!("docker.io/istio/examples-bookinfo-{name}:1.20.2"),
                                         "ports": [{"containerPort": 9080}]}]}
            }
        }
    }))?)
}

/// A refusal from the validating webhook: 403 and every needle in the message.
fn assert_denied<T: std::fmt::Debug>(what: &str, r: kube::Result<T>, needles: &[&str]) {
    match r {
        Err(kube::Error::Api(s)) => {
            println!(
                "{what}: refused by the API server ({}): {}",
                s.code, s.message
            );
            assert_eq!(s.code, 403, "{what}: {}", s.message);
            assert!(
                s.message.contains("guards.meshrev.io"),
                "{what}: {}",
                s.message
            );
            for n in needles {
                assert!(s.message.contains(n), "{what}: {n:?} not in: {}", s.message);
            }
        }
        other => panic!("{what}: expected a 403 from the validating webhook, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_upgrade_rollback_and_promotion() -> Result<()> {
    if cluster::skip_e2e() {
        return Ok(());
    }
    let c = cluster::shared();
    let client = c.client().await?;

    // The mesh before the upgrade: revision 1-22-6 and tag stable (manifests/samples.yaml).
    meshrev_proc::install_crds(&client).await?;
    let samples = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/manifests/samples.yaml"
    ))?;
    let objs = meshrev::config::parse_objects(&samples)?;
    for r in &objs.revisions {
        apply(
            &Api::<MeshRevision>::all(client.clone()),
            serde_json::to_value(r)?,
        )
        .await?;
    }
    for t in &objs.tags {
        apply(
            &Api::<RevisionTag>::all(client.clone()),
            serde_json::to_value(t)?,
        )
        .await?;
    }
    // Stable's control plane, as Istio installs it, available.
    meshrev_proc::control_plane(&client, "1-22-6").await?;

    let dir = c.dir.join("meshrev");
    std::fs::create_dir_all(&dir)?;
    let m = Meshrev::start(&c.kubeconfig, &dir, 0)?;
    let ca = m.ca_pem()?;
    meshrev_proc::register_injector(&client, m.port, &ca, "Fail").await?;
    meshrev_proc::register_guards(&client, m.port, &ca).await?;
    let env = Env {
        client: client.clone(),
        kubeconfig: c.kubeconfig.clone(),
        kubelet: FakeKubelet::start(client.clone(), vec!["default".into(), GATEWAY_NS.into()]),
    };
    // /validate must answer before anything else: a harmless tag goes through it.
    let probe = RevisionTag::new(
        "e2e-preflight",
        meshrev::config::RevisionTagSpec {
            revision: "1-22-6".into(),
        },
    );
    if let Err(e) = env.tags().create(&PostParams::default(), &probe).await {
        panic!(
            "creating a RevisionTag through the validating webhook failed: is /validate served by meshrev serve (crate::admission::validate)? {e}{}",
            m.logs()
        );
    }
    env.tags()
        .delete("e2e-preflight", &DeleteParams::default())
        .await?;

    // Bookinfo in default (istio-injection=enabled) and a gateway that opts in by pod label.
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.patch(
        "default",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"istio-injection": "enabled"}}})),
    )
    .await?;
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": GATEWAY_NS}}))?,
    )
    .await?;
    meshrev_proc::eventually(
        "default ServiceAccount in the gateway namespace",
        WAIT,
        || async {
            let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
                Api::namespaced(client.clone(), GATEWAY_NS);
            Ok(sas.get_opt("default").await?.map(|_| ()))
        },
    )
    .await?;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    for (name, replicas) in BOOKINFO {
        deploys
            .create(
                &PostParams::default(),
                &deployment(name, replicas, json!({}))?,
            )
            .await?;
    }
    // The gateway as Istio's gateway chart deploys it: Istio's `gateway` template, and a
    // container `istio-proxy` with `image: auto` that the injector fills in.
    let mut gateway = deployment(
        GATEWAY,
        1,
        json!({"sidecar.istio.io/inject": "true", "istio": "ingressgateway"}),
    )?;
    let tmpl = gateway.spec.as_mut().context("spec")?.template.clone();
    let mut tmpl = serde_json::to_value(tmpl)?;
    tmpl["metadata"]["annotations"] = json!({"inject.istio.io/templates": "gateway"});
    tmpl["spec"]["containers"] = json!([{"name": "istio-proxy", "image": "auto"}]);
    gateway.spec.as_mut().context("spec")?.template = serde_json::from_value(tmpl)?;
    Api::<Deployment>::namespaced(client.clone(), GATEWAY_NS)
        .create(&PostParams::default(), &gateway)
        .await?;
    // A completed pod on the old revision: it must never count (status, verify, unpublish).
    let done: Pod = serde_json::from_value(json!({
        "metadata": {"name": "migration-done", "labels": {"sidecar.istio.io/inject": "true", KUBELET_IGNORE: "true"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "job", "image": "busybox"}]}
    }))?;
    let gw_pods: Api<Pod> = Api::namespaced(client.clone(), GATEWAY_NS);
    let done = gw_pods.create(&PostParams::default(), &done).await?;
    assert_eq!(
        done.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("istio.io/rev"))
            .map(String::as_str),
        Some("1-22-6")
    );
    gw_pods
        .patch_status(
            "migration-done",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await?;

    env.expect_bookinfo("1-22-6", &[]).await?;
    env.expect_revisions(GATEWAY_NS, &[(GATEWAY, 1, "1-22-6")])
        .await?;
    let s = env.status().await?;
    assert_eq!(s["phase"], "stable-only", "{s:#}");
    assert_eq!(s["needsUpgrade"], 0, "{s:#}");
    assert_eq!(s["workloads"].as_array().map(Vec::len), Some(7), "{s:#}");
    let text = env.ok(&["status"]).await?;
    assert!(text.contains("PHASE: stable only"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("1-22-6")
            && l.contains("Available 1/1")
            && l.contains("istio-system/istiod-1-22-6")),
        "{text}"
    );
    let msg = env
        .expect_control_plane("1-22-6", "True", "Available")
        .await?;
    assert_eq!(msg, "Deployment istio-system/istiod-1-22-6: Available 1/1");
    let plugin = kubectl_meshrev_status(&env.kubeconfig).await?;
    assert!(plugin.contains("PHASE: stable only"), "{plugin}");
    // The hint is a command the user can type as they invoked the CLI.
    assert!(
        plugin.contains("NEXT:  to upgrade: kubectl meshrev upgrade canary --revision"),
        "{plugin}"
    );
    assert!(
        text.contains("NEXT:  to upgrade: meshrev upgrade canary --revision"),
        "{text}"
    );
    assert!(
        plugin.contains("deployment/istio-ingressgateway (gateway)"),
        "{plugin}"
    );
    assert!(
        text.contains("deployment/istio-ingressgateway (gateway)"),
        "{text}"
    );
    // The gateway started as a gateway: `proxy router`, its own proxy, no istio-init.
    let gw = Api::<Pod>::namespaced(env.client.clone(), GATEWAY_NS)
        .list(&ListParams::default().labels("istio=ingressgateway"))
        .await?;
    let gw = serde_json::to_value(gw.items.first().context("a gateway pod")?)?;
    let proxy = &gw["spec"]["containers"][0];
    assert_eq!(proxy["name"], "istio-proxy", "{gw:#}");
    assert_eq!(proxy["args"][1], "router", "{gw:#}");
    assert_ne!(proxy["image"], "auto", "{gw:#}");
    assert!(gw["spec"]["initContainers"].is_null(), "{gw:#}");

    // ---- Guards on deploying a canary ----
    env.refused(
        &["canary", "--revision", "1-24-0", "--version", "1.24.0"],
        &["skip policy", "1.23.x"],
    )
    .await?;
    // Through the webhook: a revision may be created, a canary tag skipping a minor may not.
    apply(
        &env.revs(),
        json!({"apiVersion": "meshrev.io/v1alpha1", "kind": "MeshRevision",
        "metadata": {"name": "1-24-0"}, "spec": {"version": "1.24.0"}}),
    )
    .await?;
    let skip = RevisionTag::new(
        "canary",
        meshrev::config::RevisionTagSpec {
            revision: "1-24-0".into(),
        },
    );
    assert_denied(
        "tag canary → 1-24-0",
        env.tags().create(&PostParams::default(), &skip).await,
        &["skip policy"],
    );
    env.revs()
        .delete("1-24-0", &DeleteParams::default())
        .await?;
    let dangling = RevisionTag::new(
        "prod",
        meshrev::config::RevisionTagSpec {
            revision: "1-99-0".into(),
        },
    );
    assert_denied(
        "tag prod → missing revision",
        env.tags().create(&PostParams::default(), &dangling).await,
        &["1-99-0", "does not exist"],
    );

    // ---- Readiness guards: the canary's istiod is deployed but not available yet ----
    meshrev_proc::istiod_deploy(&client, "1-23-6").await?;
    env.refused(
        &["canary", "--revision", "1-23-6", "--version", "1.23.6"],
        &[
            "the control plane of MeshRevision 1-23-6 is not ready",
            "Deployment istio-system/istiod-1-23-6 (Progressing 0/1 available",
            "--force",
        ],
    )
    .await?;
    // The revision itself may be created; its condition says why it cannot be used yet.
    apply(
        &env.revs(),
        json!({"apiVersion": "meshrev.io/v1alpha1", "kind": "MeshRevision",
        "metadata": {"name": "1-23-6"}, "spec": {"version": "1.23.6"}}),
    )
    .await?;
    let msg = env
        .expect_control_plane("1-23-6", "False", "Progressing")
        .await?;
    assert!(
        msg.starts_with("Deployment istio-system/istiod-1-23-6: Progressing 0/1 available"),
        "{msg}"
    );
    let text = env.ok(&["status"]).await?;
    assert!(
        text.lines().any(|l| l.starts_with("1-23-6")
            && l.contains("Progressing 0/1 available")
            && l.contains("istio-system/istiod-1-23-6")),
        "{text}"
    );
    // kubectl's own view: the Control-Plane column (where kubectl is on PATH).
    if let Some(out) = kubectl(&env.kubeconfig, &["get", "mrev"]).await? {
        assert!(
            out.lines()
                .next()
                .is_some_and(|h| h.contains("CONTROL-PLANE")),
            "{out}"
        );
        assert!(
            out.lines()
                .any(|l| l.starts_with("1-23-6") && l.contains("Progressing")),
            "{out}"
        );
    }
    // Plain API calls (what kubectl patch/create/label send) through /validate.
    let canary_tag = RevisionTag::new(
        "canary",
        meshrev::config::RevisionTagSpec {
            revision: "1-23-6".into(),
        },
    );
    assert_denied(
        "tag canary → 1-23-6 while its istiod is not available",
        env.tags().create(&PostParams::default(), &canary_tag).await,
        &["Deployment istio-system/istiod-1-23-6 (Progressing 0/1 available"],
    );
    let prod = RevisionTag::new(
        "prod",
        meshrev::config::RevisionTagSpec {
            revision: "1-22-6".into(),
        },
    );
    env.tags().create(&PostParams::default(), &prod).await?;
    assert_denied(
        "patch tag prod → 1-23-6",
        env.tags()
            .patch(
                "prod",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"revision": "1-23-6"}})),
            )
            .await,
        &["RevisionTag \"prod\" → \"1-23-6\" refused", "istiod-1-23-6"],
    );
    env.tags().delete("prod", &DeleteParams::default()).await?;
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "shop"}}))?,
    )
    .await?;
    assert_denied(
        "label namespace shop istio.io/rev=1-23-6",
        nss.patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"istio.io/rev": "1-23-6"}}})),
        )
        .await,
        &[
            "namespace shop labelled istio.io/rev=1-23-6 refused",
            "Deployment istio-system/istiod-1-23-6 (Progressing 0/1 available",
        ],
    );
    // The injector still injects a pod pinned to 1-23-6 (pods must stay creatable), with a
    // warning that names the revision and its Deployment.
    let (pinned, warnings): (Value, _) = meshrev_proc::create_pod_with_warnings(
        &client,
        GATEWAY_NS,
        &json!({"metadata": {"name": "pinned-to-canary",
                "labels": {"istio.io/rev": "1-23-6", KUBELET_IGNORE: "true"}},
               "spec": {"containers": [{"name": "app", "image": "app"}]}}),
    )
    .await?;
    println!("pod pinned to 1-23-6: warnings {warnings:?}");
    assert_eq!(
        pinned["metadata"]["annotations"]["istio.io/rev"], "1-23-6",
        "{pinned:#}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("revision 1-23-6")
            && w.contains("istio-system/istiod-1-23-6")
            && w.contains("not ready")),
        "{warnings:?}"
    );
    let gw_pods: Api<Pod> = Api::namespaced(client.clone(), GATEWAY_NS);
    gw_pods
        .delete("pinned-to-canary", &DeleteParams::default())
        .await?;
    meshrev_proc::eventually("pod pinned-to-canary gone", WAIT, || async {
        Ok(gw_pods
            .get_opt("pinned-to-canary")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    // --force: the tag's write names the revision in meshrev.io/force-control-plane, which
    // the webhook honours for that revision only (plain kubectl without it stays refused,
    // above). Deleted again so the lifecycle below starts from stable alone.
    let forced = env
        .ok(&[
            "canary",
            "--revision",
            "1-23-6",
            "--version",
            "1.23.6",
            "--force",
        ])
        .await?;
    assert!(forced.contains("canary"), "{forced}");
    let tag = env.tags().get("canary").await?;
    assert_eq!(tag.spec.revision, "1-23-6");
    assert_eq!(
        tag.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("meshrev.io/force-control-plane"))
            .map(String::as_str),
        Some("1-23-6")
    );
    env.tags()
        .delete("canary", &DeleteParams::default())
        .await?;
    meshrev_proc::eventually("tag canary gone", WAIT, || async {
        Ok((!env.tag_names().await?.contains_key("canary")).then_some(()))
    })
    .await?;
    // Its pod becomes ready: the Deployment is available, the condition flips, the guards pass.
    meshrev_proc::istiod_ready(&client, "1-23-6").await?;
    let msg = env
        .expect_control_plane("1-23-6", "True", "Available")
        .await?;
    assert_eq!(msg, "Deployment istio-system/istiod-1-23-6: Available 1/1");
    let text = env.ok(&["status"]).await?;
    assert!(
        text.lines()
            .any(|l| l.starts_with("1-23-6") && l.contains("Available 1/1")),
        "{text}"
    );
    // The namespace label now passes. Removed again before the namespace goes, so that it
    // does not hold the revision while it terminates (revoke would wait for it).
    for label in [json!("1-23-6"), Value::Null] {
        nss.patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"istio.io/rev": label}}})),
        )
        .await?;
    }
    nss.delete("shop", &DeleteParams::default()).await?;

    // ---- The rollback path: canary, switch, redeploy reviews-v2, rollback, revoke ----
    let out = env
        .ok(&["canary", "--revision", "1-23-6", "--version", "1.23.6"])
        .await?;
    assert!(out.contains("RevisionTag canary → 1-23-6 created"), "{out}");
    assert_eq!(
        env.tag_names().await?.get("canary").map(String::as_str),
        Some("1-23-6")
    );
    env.refused(
        &["canary", "--revision", "1-23-7", "--version", "1.23.7"],
        &["a canary already exists", "RevisionTag canary"],
    )
    .await?;
    assert_eq!(env.status().await?["phase"], "canary-deployed");

    let out = env.ok(&["switch", "default", "--to", "canary"]).await?;
    assert!(
        out.contains("istio-injection=enabled → istio.io/rev=canary"),
        "{out}"
    );
    assert!(
        out.contains("6 workload(s) in default must be redeployed"),
        "{out}"
    );
    assert_eq!(
        env.ns_labels("default").await?,
        BTreeMap::from([("istio.io/rev".into(), "canary".into())])
    );
    env.ok(&[
        "rollout",
        "--namespace",
        "default",
        "--workload",
        "deployment/reviews-v2",
        "--wait",
    ])
    .await?;
    env.expect_bookinfo("1-22-6", &[("reviews-v2", "1-23-6")])
        .await?;
    env.expect_revisions(GATEWAY_NS, &[(GATEWAY, 1, "1-22-6")])
        .await?;

    // Revoking while default uses the canary: refused, blockers listed, CLI and webhook.
    env.refused(
        &["revoke"],
        &[
            "namespace default (istio.io/rev=canary)",
            "pod default/reviews-v2-",
        ],
    )
    .await?;
    assert_denied(
        "delete tag canary in use",
        env.tags().delete("canary", &DeleteParams::default()).await,
        &["namespace default"],
    );
    assert_denied(
        "delete revision 1-23-6 in use",
        env.revs().delete("1-23-6", &DeleteParams::default()).await,
        &["RevisionTag canary", "pod default/reviews-v2-"],
    );

    let out = env.ok(&["rollback", "default", "--restart"]).await?;
    assert!(
        out.contains("istio.io/rev=canary → istio.io/rev=stable"),
        "{out}"
    );
    assert!(
        out.contains("restarted deployment default/reviews-v2"),
        "{out}"
    );
    assert_eq!(
        env.ns_labels("default").await?,
        BTreeMap::from([("istio.io/rev".into(), "stable".into())])
    );
    env.expect_bookinfo("1-22-6", &[]).await?;
    let out = env.ok(&["revoke"]).await?;
    assert!(out.contains("MeshRevision 1-23-6 deleted"), "{out}");
    assert_eq!(
        env.tag_names().await?,
        BTreeMap::from([("stable".into(), "1-22-6".into())])
    );
    assert_eq!(env.revision_names().await?, vec!["1-22-6".to_string()]);
    assert_eq!(env.status().await?["phase"], "stable-only");

    // ---- The canary again, through to promotion ----
    env.ok(&["canary", "--revision", "1-23-6", "--version", "1.23.6"])
        .await?;
    let out = env.ok(&["switch", "default", "--to", "canary"]).await?;
    assert!(
        out.contains("istio.io/rev=stable → istio.io/rev=canary"),
        "{out}"
    );
    // A namespace with both labels: istio-injection wins, status flags the conflict, and
    // switch resolves it by removing istio-injection.
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "legacy",
            "labels": {"istio-injection": "enabled", "istio.io/rev": "canary"}}}))?,
    )
    .await?;
    let s = env.status().await?;
    let legacy = s["namespaces"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "legacy"))
        .cloned()
        .context("namespace legacy in status")?;
    assert_eq!(legacy["revision"], "1-22-6", "{legacy:#}");
    assert!(
        legacy["conflict"]
            .as_str()
            .is_some_and(|c| c.contains("wins")),
        "{legacy:#}"
    );
    let out = env.ok(&["switch", "legacy", "--to", "canary"]).await?;
    assert!(
        out.contains("No workload in legacy needs a redeploy"),
        "{out}"
    );
    assert_eq!(
        env.ns_labels("legacy").await?,
        BTreeMap::from([("istio.io/rev".into(), "canary".into())])
    );
    // The canary's pod stays Pending for a while: verify must say so.
    env.kubelet.pause();
    env.ok(&[
        "rollout",
        "--namespace",
        "default",
        "--workload",
        "deployment/reviews-v2",
    ])
    .await?;
    meshrev_proc::eventually("a reviews-v2 pod on 1-23-6", WAIT, || async {
        let got = env.pod_revisions("default").await?;
        Ok(got
            .get("reviews-v2")
            .is_some_and(|v| v.contains(&"1-23-6".to_string()))
            .then_some(()))
    })
    .await?;
    env.refused(
        &["verify"],
        &["not ready", "default/reviews-v2-", "(Pending)"],
    )
    .await?;
    env.kubelet.resume();
    env.expect_bookinfo("1-22-6", &[("reviews-v2", "1-23-6")])
        .await?;
    let out = env.ok(&["verify"]).await?;
    assert!(
        out.contains("All 1 pod(s) on canary revision 1-23-6 are ready"),
        "{out}"
    );
    let text = env.ok(&["status"]).await?;
    assert!(text.contains("PHASE: canary deployed"), "{text}");
    assert!(text.contains("needs upgrade"), "{text}");

    // Not before the canary is promoted; not without --yes.
    env.refused(&["unpublish"], &["not promoted"]).await?;
    env.refused(&["promote"], &["cannot be revoked", "--yes"])
        .await?;
    assert_eq!(
        env.tag_names().await?.get("stable").map(String::as_str),
        Some("1-22-6")
    );
    // A dry run shows the calls and makes none.
    let out = env.ok(&["promote", "--dry-run"]).await?;
    for call in [
        "PATCH RevisionTag stable: tag stable → 1-23-6 (from 1-22-6)",
        "PATCH namespace default: istio.io/rev=canary → istio.io/rev=stable",
        "PATCH namespace legacy",
        "DELETE RevisionTag canary",
    ] {
        assert!(out.contains(call), "{call:?} not in:\n{out}");
    }
    assert_eq!(
        env.tag_names().await?,
        BTreeMap::from([
            ("canary".into(), "1-23-6".into()),
            ("stable".into(), "1-22-6".into())
        ])
    );

    let out = env.ok(&["promote", "--yes"]).await?;
    assert!(out.contains("cannot be revoked"), "{out}");
    assert!(
        out.contains("[1/3] tag stable → 1-23-6 (was 1-22-6)"),
        "{out}"
    );
    assert!(out.contains("[2/3] namespace default"), "{out}");
    assert!(out.contains("[2/3] namespace legacy"), "{out}");
    assert!(out.contains("[3/3] tag canary deleted"), "{out}");
    assert_eq!(
        env.tag_names().await?,
        BTreeMap::from([("stable".into(), "1-23-6".into())])
    );
    let stable = env.tags().get("stable").await?;
    assert_eq!(
        stable
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("meshrev.io/promoted-from"))
            .map(String::as_str),
        Some("1-22-6")
    );
    assert_eq!(
        env.ns_labels("default").await?,
        BTreeMap::from([("istio.io/rev".into(), "stable".into())])
    );
    // Existing pods keep their sidecar; promote is idempotent; revoke is over.
    env.expect_bookinfo("1-22-6", &[("reviews-v2", "1-23-6")])
        .await?;
    let out = env.ok(&["promote", "--yes"]).await?;
    assert!(out.contains("complete already"), "{out}");
    env.refused(&["revoke"], &["cannot be revoked"]).await?;

    let text = env.ok(&["status"]).await?;
    assert!(
        text.contains("PHASE: promoted, data plane upgrading"),
        "{text}"
    );
    let s = env.status().await?;
    assert_eq!(s["phase"], "data-plane-upgrading", "{s:#}");
    assert_eq!(
        s["needsUpgrade"], 6,
        "5 bookinfo workloads and the gateway: {s:#}"
    );

    // The old revision cannot go while pods run it.
    env.refused(
        &["unpublish"],
        &[
            "pod default/details-",
            "pod istio-ingress/istio-ingressgateway-",
            "--force",
        ],
    )
    .await?;
    assert_denied(
        "delete revision 1-22-6 in use",
        env.revs().delete("1-22-6", &DeleteParams::default()).await,
        &["pod default/details-"],
    );

    let out = env
        .ok(&["rollout", "--max-in-flight", "2", "--wait"])
        .await?;
    assert!(
        out.contains("Rolling out 6 workload(s), at most 2 at a time"),
        "{out}"
    );
    assert!(out.contains("0 still need upgrade"), "{out}");
    env.expect_bookinfo("1-23-6", &[]).await?;
    env.expect_revisions(GATEWAY_NS, &[(GATEWAY, 1, "1-23-6")])
        .await?;
    let text = env.ok(&["status"]).await?;
    assert!(text.contains("PHASE: ready to unpublish"), "{text}");

    let out = env.ok(&["unpublish"]).await?;
    assert!(out.contains("MeshRevision 1-22-6 deleted"), "{out}");
    assert_eq!(env.revision_names().await?, vec!["1-23-6".to_string()]);
    let s = env.status().await?;
    assert_eq!(s["phase"], "stable-only", "{s:#}");
    assert_eq!(s["stable"], "1-23-6", "{s:#}");
    assert_eq!(
        env.ok(&["unpublish"]).await?.trim(),
        "Nothing to unpublish: no revision older than stable (1-23-6) is left."
    );
    let yaml = meshrev::yaml::from_str(&env.ok(&["status", "-o", "yaml"]).await?)?;
    assert_eq!(yaml["phase"].as_str(), Some("stable-only"));
    drop(m);
    Ok(())
}
