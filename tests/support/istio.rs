//! A real Istio installation for end-to-end tests (issue 12): Istio's own charts rendered by
//! istioctl's render package (`tests/istio-oracle`, `oracle render`) and applied to the test
//! API server, with Istio's own injection handler (the oracle, one per revision, configured
//! from the revision's installed `istio-sidecar-injector-<rev>` and `istio-<rev>` ConfigMaps)
//! serving its webhooks over HTTPS.
//!
//! The one change to Istio's rendered objects: each injector webhook's `clientConfig` is that
//! handler's URL and CA instead of the istiod Service (nothing serves Services here). Kinds
//! the test API server does not serve are skipped and listed. Nothing runs istiod (no
//! kubelet): its pods are marked Ready through the status subresource until each istiod
//! Deployment is available.
//!
//! ```ignore
//! #[path = "support/istio.rs"] mod istio;
//! let injectors = istio::install(&client, &dir, &[("1-30-2", "1.30.2", "default")]).await?;
//! ```
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::Api;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

/// Istio's namespace.
pub const ISTIO_NS: &str = "istio-system";
const WAIT: Duration = Duration::from_secs(90);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Istio 1.30.3's charts (`manifests/`), from the shared directory beside the repository.
pub fn charts() -> PathBuf {
    let dir = root().join("../shared/conformance/istio/1.30.3/chart");
    assert!(
        dir.join("charts").is_dir() && dir.join("profiles").is_dir(),
        "Istio 1.30.3's charts are missing: expected {} (the shared/ directory beside the \
         repository) to hold charts/ and profiles/",
        dir.display()
    );
    dir
}

/// The oracle binary: `$MESHREV_ORACLE_BIN` as is, else built (if out of date) by
/// `tests/istio-oracle/build.sh` into `target/istio-oracle/oracle`.
pub fn oracle_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MESHREV_ORACLE_BIN") {
        return PathBuf::from(p);
    }
    let bin = root().join("target/istio-oracle/oracle");
    let status = Command::new("bash")
        .arg(root().join("tests/istio-oracle/build.sh"))
        .env("MESHREV_ORACLE_BIN", &bin)
        .stdout(std::io::stderr())
        .status()
        .expect("running tests/istio-oracle/build.sh");
    assert!(
        status.success(),
        "tests/istio-oracle/build.sh failed ({status})"
    );
    bin
}

/// `oracle render` for one revision: Istio's objects as multi-document YAML.
pub fn render(revision: &str, tag: &str, revision_tag: &str) -> Result<String> {
    let out = Command::new(oracle_binary())
        .arg("render")
        .arg("--charts")
        .arg(charts())
        .args([
            "--revision",
            revision,
            "--tag",
            tag,
            "--revision-tag",
            revision_tag,
        ])
        .output()
        .context("running oracle render")?;
    ensure!(
        out.status.success(),
        "oracle render failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Istio's injection handler for one installed revision, over HTTPS.
pub struct IstioInjector {
    child: Child,
    _stdin: Option<ChildStdin>,
    /// `https://127.0.0.1:PORT/inject`
    pub url: String,
    /// The PEM CA of its serving certificate.
    pub ca: Vec<u8>,
    log: PathBuf,
}

impl Drop for IstioInjector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl IstioInjector {
    /// Serves revision `rev` from the ConfigMaps installed in the cluster.
    pub async fn start(client: &kube::Client, rev: &str, dir: &Path) -> Result<IstioInjector> {
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ISTIO_NS);
        let injector = cms.get(&format!("istio-sidecar-injector-{rev}")).await?;
        let mesh = cms.get(&format!("istio-{rev}")).await?;
        let d = injector.data.unwrap_or_default();
        let dir = dir.join(format!("istio-injector-{rev}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("config"), d.get("config").context("config")?)?;
        std::fs::write(dir.join("values"), d.get("values").context("values")?)?;
        std::fs::write(
            dir.join("mesh"),
            mesh.data.unwrap_or_default().get("mesh").context("mesh")?,
        )?;
        let mut child = Command::new(oracle_binary())
            .arg("--injector-dir")
            .arg(&dir)
            .args(["--revision", rev, "--port", "0"])
            .arg("--tls-dir")
            .arg(dir.join("tls"))
            .env("MESHREV_WATCH_STDIN", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("log"))?)
            .spawn()
            .context("starting the Istio injector")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("stdout")?;
        let addr = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let addr = lines
                .by_ref()
                .map_while(std::result::Result::ok)
                .find_map(|l| l.trim().strip_prefix("ready ").map(str::to_string));
            std::thread::spawn(move || for _ in lines {});
            addr
        })
        .await?
        .with_context(|| {
            format!(
                "the Istio injector for {rev} did not start; see {}",
                dir.join("log").display()
            )
        })?;
        Ok(IstioInjector {
            child,
            _stdin: stdin,
            url: format!("https://{addr}/inject"),
            ca: std::fs::read(dir.join("tls/ca.crt"))?,
            log: dir.join("log"),
        })
    }

    /// How many injection requests it has received (it logs each before answering).
    pub fn calls(&self) -> Result<usize> {
        Ok(std::fs::read_to_string(&self.log)?
            .matches("oracle: /inject request ")
            .count())
    }
}

/// Injection requests received by all of them.
pub fn istio_calls(injectors: &[IstioInjector]) -> Result<usize> {
    injectors.iter().map(IstioInjector::calls).sum()
}

/// Applies one rendered document; kinds the test API server does not serve are skipped
/// (returned as the reason).
pub async fn apply_doc(client: &kube::Client, doc: &Value) -> Result<Option<String>> {
    let api_version = doc["apiVersion"].as_str().context("apiVersion")?;
    let kind = doc["kind"].as_str().context("kind")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = match kube::discovery::pinned_kind(client, &gvk).await {
        Ok(x) => x,
        Err(e) => return Ok(Some(format!("{api_version} {kind} is not served ({e})"))),
    };
    let name = doc["metadata"]["name"].as_str().context("name")?;
    let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
        Api::namespaced_with(
            client.clone(),
            doc["metadata"]["namespace"].as_str().unwrap_or(ISTIO_NS),
            &ar,
        )
    } else {
        Api::all_with(client.clone(), &ar)
    };
    api.patch(
        name,
        &PatchParams::apply("istioctl").force(),
        &Patch::Apply(doc),
    )
    .await
    .with_context(|| format!("applying {kind} {name}"))?;
    Ok(None)
}

/// Istio's objects, installed; returns Istio's injectors (kept running).
/// Installs Istio's objects for `revisions` (revision, proxy tag, revision tag) and returns
/// their injectors (running until dropped).
pub async fn install(
    client: &kube::Client,
    dir: &Path,
    revisions: &[(&str, &str, &str)],
) -> Result<Vec<IstioInjector>> {
    let nss: Api<Namespace> = Api::all(client.clone());
    if nss.get_opt(ISTIO_NS).await?.is_none() {
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ISTIO_NS}}))?,
        )
        .await?;
    }
    let mut webhooks = Vec::new();
    let mut skipped = Vec::new();
    for &(rev, tag, rtag) in revisions {
        let yaml = render(rev, tag, rtag)?;
        assert_eq!(yaml, render(rev, tag, rtag)?, "rendering is deterministic");
        for doc in meshrev::yaml::documents(&yaml) {
            let doc = doc?;
            if doc.is_null() {
                continue;
            }
            if doc["kind"] == "MutatingWebhookConfiguration" {
                webhooks.push((rev, doc));
                continue;
            }
            if let Some(why) = apply_doc(client, &doc).await? {
                skipped.push(format!(
                    "{} {}: {why}",
                    doc["kind"], doc["metadata"]["name"]
                ));
            }
        }
    }
    println!("Istio objects not applied (kinds this API server does not serve): {skipped:?}");
    let mut injectors = Vec::new();
    for &(rev, _, _) in revisions {
        injectors.push(IstioInjector::start(client, rev, dir).await?);
    }
    for (rev, mut doc) in webhooks {
        let i = revisions
            .iter()
            .position(|r| r.0 == rev)
            .context("revision")?;
        let ca = base64::engine::general_purpose::STANDARD.encode(&injectors[i].ca);
        for w in doc["webhooks"].as_array_mut().context("webhooks")? {
            // The one change to Istio's objects: its injector, not the istiod Service.
            w["clientConfig"] = json!({"url": injectors[i].url, "caBundle": ca});
        }
        assert!(apply_doc(client, &doc).await?.is_none());
    }
    // Stand in for the kubelet until each istiod Deployment is available.
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), ISTIO_NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ISTIO_NS);
    poll("istiod Deployments available", || async {
        for p in pods.list(&ListParams::default().fields("status.phase=Pending")).await?.items {
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
            let _ = pods
                .patch_status(
                    p.metadata.name.as_deref().unwrap_or_default(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"phase": "Running", "startTime": now,
                        "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")]}})),
                )
                .await;
        }
        let mut all = true;
        for &(rev, _, _) in revisions {
            let d = deploys.get(&format!("istiod-{rev}")).await?;
            all &= d.status.and_then(|s| s.available_replicas).unwrap_or(0) >= 1;
        }
        Ok(all)
    })
    .await?;
    Ok(injectors)
}

/// Polls `f` every 50 ms until it returns true, failing after 90 s.
async fn poll<F, Fut>(what: &str, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    loop {
        match f().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = Some(e),
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {WAIT:?} (last error: {last:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
