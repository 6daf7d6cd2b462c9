//! meshrev as the API server sees it in end-to-end tests: the real binary (`meshrev serve`
//! in cluster mode) as a child process, its CRDs installed, and webhook configurations
//! registered with `clientConfig.url: https://127.0.0.1:PORT/...` and the caBundle of the
//! certificate meshrev generated.
//!
//! Use next to `cluster.rs`:
//! ```ignore
//! #[path = "support/cluster.rs"] mod cluster;
//! #[path = "support/meshrev.rs"] mod meshrev;
//! ```
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::Value;

/// A running `meshrev serve`. Killed on drop.
pub struct Meshrev {
    child: Option<Child>,
    pub port: u16,
    pub metrics_port: u16,
    pub cert_dir: PathBuf,
    pub log: PathBuf,
    kubeconfig: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Meshrev {
    /// Starts meshrev on `port` (0: pick one) with `dir` for its certs and log, and waits
    /// until `/readyz` says ready (every watch listed, table published).
    pub fn start(kubeconfig: &Path, dir: &Path, port: u16) -> Result<Meshrev> {
        let port = if port == 0 { free_port()? } else { port };
        let metrics_port = free_port()?;
        let cert_dir = dir.join("certs");
        std::fs::create_dir_all(&cert_dir)?;
        let log = dir.join(format!("meshrev-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_meshrev"))
            .args(["serve", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .arg("--cert-dir")
            .arg(&cert_dir)
            .env("MESHREV_LOG", "info,meshrev=debug")
            .env("POD_NAMESPACE", "default")
            // meshrev exits when this pipe closes: when this test process ends, however it
            // ends, no `meshrev serve` is left behind.
            .env("MESHREV_EXIT_ON_STDIN_EOF", "1")
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(
                dir.join(format!("meshrev-{port}.err")),
            )?)
            .spawn()
            .context("starting meshrev")?;
        let mut m = Meshrev {
            child: Some(child),
            port,
            metrics_port,
            cert_dir,
            log,
            kubeconfig: kubeconfig.to_path_buf(),
        };
        m.wait_ready(Duration::from_secs(60))?;
        Ok(m)
    }

    fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("meshrev exited early ({status}): {}", self.logs());
            }
            if let Ok(body) = self.metrics_get("/readyz")
                && body.starts_with("ok")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("meshrev not ready within {within:?}: {}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET on the plain-HTTP metrics listener (also serves /readyz? no: see `readyz`).
    pub fn metrics_get(&self, path: &str) -> Result<String> {
        http_get(self.metrics_port, path)
    }

    pub fn metrics(&self) -> Result<String> {
        self.metrics_get("/metrics")
    }

    /// The value of one sample line of /metrics (`name{labels}` as printed), 0 if absent.
    pub fn metric(&self, series: &str) -> Result<f64> {
        let text = self.metrics()?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    }

    /// The process id (part of the replica's Lease holder identity).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn ca_pem(&self) -> Result<Vec<u8>> {
        std::fs::read(self.cert_dir.join("ca.crt")).context("meshrev's ca.crt")
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for ext in ["log", "err"] {
            let p = self.log.with_extension(ext);
            if let Ok(t) = std::fs::read_to_string(&p) {
                let tail: Vec<&str> = t.lines().rev().take(40).collect();
                s.push_str(&format!("\n--- {} ---\n", p.display()));
                s.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            }
        }
        s
    }

    /// Stops meshrev (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops and starts again on the same ports and certificates.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let dir = self
            .cert_dir
            .parent()
            .context("cert dir has a parent")?
            .to_path_buf();
        let again = Meshrev::start(&self.kubeconfig.clone(), &dir, self.port)?;
        *self = again;
        Ok(())
    }
}

impl Drop for Meshrev {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A minimal HTTP/1.1 GET over plain TCP (the metrics listener).
pub fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").context("HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {head}");
    }
    Ok(body.to_string())
}

/// Installs meshrev's CRDs (generated from the Rust types) and waits until established.
pub async fn install_crds(client: &kube::Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = PatchParams::apply("meshrev-e2e").force();
    for doc in meshrev::yaml::documents(&meshrev::config::crd_yaml()) {
        let crd: CustomResourceDefinition = serde_json::from_value(doc?)?;
        let name = crd.metadata.name.clone().context("CRD name")?;
        api.patch(&name, &pp, &Patch::Apply(&crd)).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let c = api.get(&name).await?;
            let established = c.status.and_then(|s| s.conditions).is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            if Instant::now() > deadline {
                bail!("CRD {name} not established");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

fn manifest(name: &str) -> Result<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("manifests")
        .join(name);
    Ok(meshrev::yaml::from_str(&std::fs::read_to_string(&path)?)?)
}

/// Registers the committed webhook configuration `file` (from manifests/) pointing at
/// `https://127.0.0.1:port<path>`, with `failure_policy` if given.
fn register(file: &str, port: u16, ca_pem: &[u8], failure_policy: Option<&str>) -> Result<Value> {
    let mut cfg = manifest(file)?;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    for wh in cfg["webhooks"].as_array_mut().context("webhooks")? {
        let path = wh["clientConfig"]["service"]["path"]
            .as_str()
            .unwrap_or("/inject")
            .to_string();
        wh["clientConfig"] =
            serde_json::json!({"url": format!("https://127.0.0.1:{port}{path}"), "caBundle": ca});
        if let Some(fp) = failure_policy {
            wh["failurePolicy"] = fp.into();
        }
    }
    Ok(cfg)
}

/// The mutating webhook (`/inject`) with the manifests' selectors.
pub async fn register_injector(
    client: &kube::Client,
    port: u16,
    ca_pem: &[u8],
    failure_policy: &str,
) -> Result<()> {
    let cfg = register("mutatingwebhook.yaml", port, ca_pem, Some(failure_policy))?;
    apply(
        &Api::<MutatingWebhookConfiguration>::all(client.clone()),
        cfg,
    )
    .await?;
    Ok(())
}

/// The validating webhook (`/validate`, the upgrade guards).
pub async fn register_guards(client: &kube::Client, port: u16, ca_pem: &[u8]) -> Result<()> {
    let cfg = register("validatingwebhook.yaml", port, ca_pem, None)?;
    apply(
        &Api::<ValidatingWebhookConfiguration>::all(client.clone()),
        cfg,
    )
    .await?;
    Ok(())
}

/// Applies the MeshRevision and RevisionTag objects of a table file to the cluster.
pub async fn apply_table(client: &kube::Client, text: &str) -> Result<()> {
    let objs = meshrev::config::parse_objects(text)?;
    let revs: Api<meshrev::config::MeshRevision> = Api::all(client.clone());
    for r in objs.revisions {
        apply(&revs, serde_json::to_value(&r)?).await?;
    }
    let tags: Api<meshrev::config::RevisionTag> = Api::all(client.clone());
    for t in objs.tags {
        apply(&tags, serde_json::to_value(&t)?).await?;
    }
    Ok(())
}

pub async fn unregister_injector(client: &kube::Client) -> Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let _ = api
        .delete("meshrev-sidecar-injector", &DeleteParams::default())
        .await;
    Ok(())
}

/// Applies a YAML/JSON object given as a `serde_json::Value` with server-side apply.
pub async fn apply<K>(api: &Api<K>, obj: Value) -> Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = obj["metadata"]["name"]
        .as_str()
        .context("metadata.name")?
        .to_string();
    Ok(api
        .patch(
            &name,
            &PatchParams::apply("meshrev-e2e").force(),
            &Patch::Apply(&obj),
        )
        .await?)
}

/// Polls `f` until it returns `Some`, or fails after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    let mut last_err = None;
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {within:?} (last error: {last_err:?})");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The namespace of every revision's istiod (meshrev's default for `spec.controlPlane`).
pub const ISTIO_SYSTEM: &str = "istio-system";

/// Deploys revision `rev`'s control plane as Istio's `istio-discovery` chart names and
/// labels it: Deployment `istio-system/istiod-<rev>` with `app: istiod` and
/// `istio.io/rev: <rev>` (the label meshrev's controller watches), one replica, pods
/// labelled `sidecar.istio.io/inject: "false"`. Nothing runs it (no kubelet): its pod stays
/// Pending and the Deployment unavailable until [`istiod_ready`]. Idempotent.
pub async fn istiod_deploy(client: &kube::Client, rev: &str) -> Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    let nss: Api<Namespace> = Api::all(client.clone());
    if nss.get_opt(ISTIO_SYSTEM).await?.is_none() {
        apply(
            &nss,
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ISTIO_SYSTEM}}),
        )
        .await?;
    }
    // The ReplicaSet's pods need the namespace's default ServiceAccount.
    eventually(
        "default ServiceAccount in istio-system",
        Duration::from_secs(60),
        || async {
            let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ISTIO_SYSTEM);
            Ok(sas.get_opt("default").await?.map(|_| ()))
        },
    )
    .await?;
    let labels = serde_json::json!({"app": "istiod", "istio.io/rev": rev});
    let mut pod_labels = labels.clone();
    pod_labels["sidecar.istio.io/inject"] = "false".into();
    apply(
        &Api::<Deployment>::namespaced(client.clone(), ISTIO_SYSTEM),
        serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": format!("istiod-{rev}"), "namespace": ISTIO_SYSTEM, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": pod_labels},
                    "spec": {"containers": [{"name": "discovery", "image": "docker.io/istio/pilot:1.30.3"}]}
                }
            }
        }),
    )
    .await?;
    Ok(())
}

/// Makes `istiod-<rev>` available the way a kubelet would make it: marks its pods Running
/// and Ready through the pods' status subresource (as the e2e tests' stand-in kubelet does)
/// and waits until kube-controller-manager's Deployment controller reports the Deployment
/// available (`status.availableReplicas` ≥ 1, condition `Available` True, status of the
/// current generation). The Deployment's own status is not written: that controller
/// recomputes it from the ReplicaSets on every change and would overwrite it at once.
pub async fn istiod_ready(client: &kube::Client, rev: &str) -> Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ListParams;
    let name = format!("istiod-{rev}");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ISTIO_SYSTEM);
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), ISTIO_SYSTEM);
    let selector = format!("app=istiod,istio.io/rev={rev}");
    eventually(
        &format!("Deployment {ISTIO_SYSTEM}/{name} available"),
        Duration::from_secs(90),
        || async {
            for p in pods.list(&ListParams::default().labels(&selector)).await?.items {
                let ready = p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(
                    |cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"),
                );
                if ready || p.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let now = k8s_openapi::jiff::Timestamp::now().to_string();
                let cond = |t: &str| {
                    serde_json::json!({"type": t, "status": "True", "lastTransitionTime": now})
                };
                let status = serde_json::json!({"status": {
                    "phase": "Running",
                    "startTime": now,
                    "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
                }});
                let pod = p.metadata.name.clone().unwrap_or_default();
                pods.patch_status(&pod, &PatchParams::default(), &Patch::Merge(status))
                    .await?;
            }
            let d = deploys.get(&name).await?;
            let available = d.status.as_ref().is_some_and(|s| {
                s.available_replicas.unwrap_or(0) >= 1
                    && s.observed_generation >= d.metadata.generation
                    && s.conditions.as_ref().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Available" && c.status == "True")
                    })
            });
            Ok(available.then_some(()))
        },
    )
    .await
}

/// Revision `rev`'s istiod deployed and available: what every revision a test routes pods
/// to needs before meshrev's readiness guards let a tag or namespace point at it.
pub async fn control_plane(client: &kube::Client, rev: &str) -> Result<()> {
    istiod_deploy(client, rev).await?;
    istiod_ready(client, rev).await
}

/// A one-container pod (`app`, nginx) named `name`, as the tests create them.
pub fn pod(name: &str) -> Result<k8s_openapi::api::core::v1::Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}
    }))?)
}

/// The revision meshrev injected into `p` (its `istio.io/rev` annotation).
pub fn revision_of(p: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("istio.io/rev").cloned())
}

/// Creates `pod` in `ns` with a raw request, to read the `Warning` headers the API server
/// relays from the webhook's `warnings`; returns the created pod and the warnings.
pub async fn create_pod_with_warnings<T: serde::de::DeserializeOwned>(
    client: &kube::Client,
    ns: &str,
    pod: &Value,
) -> Result<(T, Vec<String>)> {
    let req = http::Request::post(format!("/api/v1/namespaces/{ns}/pods"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(pod)?)?;
    let resp = client.send(req.map(kube::client::Body::from)).await?;
    let warnings = resp
        .headers()
        .get_all("warning")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let status = resp.status();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await?
        .to_bytes();
    anyhow::ensure!(
        status.is_success(),
        "create pod: {status}: {}",
        String::from_utf8_lossy(&bytes)
    );
    Ok((serde_json::from_slice(&bytes)?, warnings))
}
