//! The Helm chart installed on a real API server: `helm template … --include-crds`, applied
//! object by object as `kubectl apply -f -` would, then a pod injected through the chart's
//! MutatingWebhookConfiguration and a tag deletion refused by its ValidatingWebhookConfiguration.
//!
//! This control plane has no kubelet, so the chart's Deployment cannot run meshrev: a
//! `meshrev serve` on loopback stands in for its pods, and the chart is rendered with
//! `webhook.url` pointing at it (the Service cannot be reached without a cluster network).
//! Everything else is the chart's: CRDs, namespace, RBAC, Service, PDB, the sample revision
//! and tag, the webhooks' rules, selectors and CA. The Deployment's ReplicaSet does create
//! its pods, which the namespace's Pod Security level `restricted` admits only if the chart's
//! pod template complies. A second release, installed with `helm install`, runs side by side
//! with its own namespace, names and namespaces to inject, then `helm uninstall` removes it.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/meshrev.rs"]
mod meshrev_proc;
#[path = "support/tools.rs"]
mod tools;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};
use kube::{Api, Client};
use meshrev_proc::Meshrev;
use serde_json::Value;

const RELEASE: &str = "chart-e2e";
const NAMESPACE: &str = "chart-e2e-system";
/// The namespace label the release is limited to (webhook.namespaceSelector), so this
/// release's webhook leaves every other namespace alone.
const SELECT: &str = "meshrev.io/chart-e2e";

/// `helm template` of the chart for this test, with the CA PEM file if given.
fn render(port: u16, ca: Option<&Path>) -> Result<Vec<Value>> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/meshrev");
    let mut cmd = Command::new(tools::tool("helm"));
    cmd.args(["template", RELEASE])
        .arg(&chart)
        .args(["--namespace", NAMESPACE, "--include-crds"])
        .args(["--set", &format!("webhook.url=https://127.0.0.1:{port}")])
        .args([
            "--set",
            &format!("webhook.namespaceSelector.matchExpressions[0].key={SELECT}"),
        ])
        .args([
            "--set",
            "webhook.namespaceSelector.matchExpressions[0].operator=Exists",
        ]);
    if let Some(ca) = ca {
        cmd.arg("--set-file")
            .arg(format!("tls.ca={}", ca.display()));
    }
    let out = cmd.output().context("running helm")?;
    if !out.status.success() {
        bail!("helm template: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let mut objs = Vec::new();
    for doc in meshrev::yaml::documents(&text) {
        let v = doc?;
        if !v.is_null() {
            objs.push(v);
        }
    }
    Ok(objs)
}

fn is_webhook_config(o: &Value) -> bool {
    o["kind"]
        .as_str()
        .is_some_and(|k| k.ends_with("WebhookConfiguration"))
}

/// Server-side applies `objs` in order (kubectl's field manager semantics), resolving each
/// kind through discovery. Returns `Kind/name` of each.
async fn apply_all(client: &Client, objs: &[Value]) -> Result<Vec<String>> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let pp = PatchParams::apply("helm-template-e2e").force();
    let mut done = Vec::new();
    for o in objs {
        let obj: DynamicObject = serde_json::from_value(o.clone())?;
        let types = obj.types.clone().context("apiVersion/kind")?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let (ar, caps) = discovery
            .resolve_gvk(&gvk)
            .with_context(|| format!("the API server does not serve {gvk:?}"))?;
        let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
            let ns = obj.metadata.namespace.as_deref().unwrap_or("default");
            Api::namespaced_with(client.clone(), ns, &ar)
        } else {
            Api::all_with(client.clone(), &ar)
        };
        let name = obj.metadata.name.clone().context("metadata.name")?;
        api.patch(&name, &pp, &Patch::Apply(&obj))
            .await
            .with_context(|| format!("applying {} {name}", gvk.kind))?;
        done.push(format!("{}/{name}", gvk.kind));
    }
    Ok(done)
}

async fn wait_established(client: &Client, names: &[String]) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in names {
        meshrev_proc::eventually(
            &format!("CRD {name} established"),
            Duration::from_secs(30),
            || async {
                let c = api.get(name).await?;
                let ok = c.status.and_then(|s| s.conditions).is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
                Ok(ok.then_some(()))
            },
        )
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn helm_template_installs_and_its_webhook_injects() -> Result<()> {
    if cluster::skip_e2e() {
        return Ok(());
    }
    let c = cluster::shared();
    let client = c.client().await?;
    let dir = c.dir.join("chart");
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // The sample revision's istiod, available: the guards refuse a tag or namespace label
    // pointing at a revision whose control plane is not ready.
    meshrev_proc::control_plane(&client, "1-22-6").await?;

    // 1. CRDs first (as Helm installs crds/), then everything but the webhook configurations:
    //    meshrev needs its CRDs to start, and the webhooks need meshrev's CA.
    let first = render(port, None)?;
    let (crds, rest): (Vec<Value>, Vec<Value>) = first
        .into_iter()
        .partition(|o| o["kind"] == "CustomResourceDefinition");
    assert_eq!(crds.len(), 2, "the chart ships both CRDs");
    apply_all(&client, &crds).await?;
    let crd_names: Vec<String> = crds
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    wait_established(&client, &crd_names).await?;
    let rest: Vec<Value> = rest.into_iter().filter(|o| !is_webhook_config(o)).collect();
    let applied = apply_all(&client, &rest).await?;
    println!("applied from the chart: {}", applied.join(", "));

    // 2. meshrev, standing in for the Deployment's pods.
    let m = Meshrev::start(&c.kubeconfig, &dir, port)?;
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, m.ca_pem()?)?;

    // 3. The whole render again, now with the CA: what `helm template … | kubectl apply -f -`
    //    installs.
    let full = render(port, Some(&ca))?;
    let webhook_configs = full.iter().filter(|o| is_webhook_config(o)).count();
    assert_eq!(webhook_configs, 2, "injector and guards");
    let applied = apply_all(&client, &full).await?;
    println!("installed: {}", applied.join(", "));
    let injector: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let cfg = injector
        .get(&format!("{RELEASE}-meshrev-sidecar-injector"))
        .await?;
    assert_eq!(cfg.webhooks.as_ref().map(Vec::len), Some(4));

    // 4. A pod in a namespace the release selects is injected, with the chart's sample
    //    revision (tag stable → 1-22-6).
    let ns = cluster::create_namespace(
        &client,
        "chart-app",
        &[("istio-injection", "enabled"), (SELECT, "yes")],
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let p = meshrev_proc::eventually(
        "a pod injected through the chart's webhook",
        Duration::from_secs(30),
        || async {
            let p = pods
                .create(&PostParams::default(), &meshrev_proc::pod("web")?)
                .await?;
            if meshrev_proc::revision_of(&p).is_some() {
                return Ok(Some(p));
            }
            // The table may not have the sample tag yet: try again with a new pod.
            pods.delete("web", &DeleteParams::default()).await?;
            Ok(None)
        },
    )
    .await?;
    assert_eq!(meshrev_proc::revision_of(&p).as_deref(), Some("1-22-6"));
    let containers: Vec<String> = p
        .spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .map(|c| c.name.clone())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        containers.iter().any(|c| c == "istio-proxy"),
        "{containers:?}"
    );
    println!("pod {ns}/web injected by the chart's webhook: {containers:?}");

    // The namespaceSelector override keeps the release away from other namespaces.
    let other =
        cluster::create_namespace(&client, "chart-other", &[("istio-injection", "enabled")])
            .await?;
    let p = Api::<Pod>::namespaced(client.clone(), &other)
        .create(&PostParams::default(), &meshrev_proc::pod("web")?)
        .await?;
    assert_eq!(
        meshrev_proc::revision_of(&p),
        None,
        "not selected by this release"
    );

    // 5. The chart's guards: tag stable is in use by the namespace above.
    let tags: Api<meshrev::config::RevisionTag> = Api::all(client.clone());
    let err = tags
        .delete("stable", &DeleteParams::default())
        .await
        .expect_err("the chart's validating webhook must refuse deleting a tag in use");
    assert!(err.to_string().contains("guards.meshrev.io"), "{err}");
    println!("deleting tag stable: {err}");

    // 6. The Deployment's ReplicaSet creates its pods in the release namespace, whose Pod
    //    Security level is `restricted`: the chart's pod template passes it.
    let system_pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}"));
    let n = meshrev_proc::eventually(
        "the chart's Deployment has its 2 pods",
        Duration::from_secs(60),
        || async {
            let n = system_pods.list(&lp).await?.items.len();
            Ok((n == 2).then_some(n))
        },
    )
    .await?;
    println!("{n} meshrev pods created in {NAMESPACE} (Pending: no kubelet here)");

    // 7. A second release side by side, installed by `helm install` itself: its own names,
    //    its own namespace (Helm creates it), its own namespaces to inject, its own meshrev.
    let blue_dir = dir.join("blue");
    std::fs::create_dir_all(&blue_dir)?;
    let blue = Meshrev::start(&c.kubeconfig, &blue_dir, 0)?;
    let blue_ca = blue_dir.join("ca.crt");
    std::fs::write(&blue_ca, blue.ca_pem()?)?;
    let helm = |args: &[&str]| -> Result<String> {
        let out = Command::new(tools::tool("helm"))
            .args(args)
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .output()
            .context("running helm")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "helm {args:?}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(text)
    };
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/meshrev");
    let chart = chart.to_str().context("chart path")?;
    let out = helm(&[
        "install",
        "meshrev-blue",
        chart,
        "--namespace",
        "meshrev-blue",
        "--create-namespace",
        "--set",
        "namespace.create=false,samples.enabled=false",
        "--set",
        &format!("webhook.url=https://127.0.0.1:{}", blue.port),
        "--set",
        "webhook.namespaceSelector.matchExpressions[0].key=meshrev.io/blue",
        "--set",
        "webhook.namespaceSelector.matchExpressions[0].operator=Exists",
        "--set-file",
        &format!("tls.ca={}", blue_ca.display()),
    ])?;
    println!("$ helm install meshrev-blue …\n{out}");
    let status = helm(&["status", "meshrev-blue", "-n", "meshrev-blue", "-o", "json"])?;
    let status: Value = serde_json::from_str(&status)?;
    assert_eq!(status["info"]["status"], "deployed", "{status}");
    let blue_ns = cluster::create_namespace(
        &client,
        "blue-app",
        &[("istio-injection", "enabled"), ("meshrev.io/blue", "yes")],
    )
    .await?;
    let p = Api::<Pod>::namespaced(client.clone(), &blue_ns)
        .create(&PostParams::default(), &meshrev_proc::pod("web")?)
        .await?;
    assert_eq!(meshrev_proc::revision_of(&p).as_deref(), Some("1-22-6"));
    assert!(
        blue.metric("meshrev_injections_total{revision=\"1-22-6\",tag=\"stable\"}")? >= 1.0,
        "the blue release's meshrev injected it"
    );
    println!("pod {blue_ns}/web injected through the helm-installed release meshrev-blue");
    let configs: Vec<String> = injector
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert!(
        configs.contains(&format!("{RELEASE}-meshrev-sidecar-injector"))
            && configs.contains(&"meshrev-blue-sidecar-injector".to_string()),
        "{configs:?}"
    );

    // `helm uninstall` takes the release's webhooks away again.
    helm(&["uninstall", "meshrev-blue", "-n", "meshrev-blue"])?;
    assert!(
        injector
            .get_opt("meshrev-blue-sidecar-injector")
            .await?
            .is_none(),
        "uninstalled"
    );
    drop(blue);
    drop(m);
    Ok(())
}
