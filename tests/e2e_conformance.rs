//! Istio fidelity on a real API server: a sample of Istio's corpus (1.30.3) is created as
//! Deployments; the controller-manager makes their pods, kube-apiserver calls meshrev over
//! TLS, and each stored pod must equal the corpus golden's pod template under the
//! conformance normaliser. The sample covers native sidecars, probe and lifecycle rewrite,
//! Prometheus merge, a gateway, a pod's own `istio-proxy` and `istio-init`, hold-application
//! via `proxy.istio.io/config`, and a pod opting out of native sidecars.
//!
//! What the API server adds by itself (defaults such as `terminationMessagePath`, the
//! ServiceAccount token volume, `pod-template-hash`, object metadata) is not in the golden:
//! the stored pod is compared on the golden's fields ([`project`]); labels and annotations
//! are compared whole.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/meshrev.rs"]
mod meshrev_proc;
#[path = "support/normalize.rs"]
mod normalize;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use meshrev_proc::{Meshrev, eventually};
use serde_json::{Value, json};

const TAG: &str = "1.30.3";
const CASES: [&str; 7] = [
    "hello-probes.yaml",
    "tcp-probes.yaml",
    "prometheus-scrape.yaml",
    "proxy-override.yaml",
    "gateway.yaml",
    "hello-probes-proxyHoldApplication-ProxyConfig.yaml",
    // Not user-volume.yaml: its configMap item path "/some-path" is absolute, which the API
    // server's validation refuses before any webhook runs.
    "native-sidecar-opt-out.yaml",
];
const TABLE: &str = "apiVersion: meshrev.io/v1alpha1
kind: MeshRevision
metadata: {name: 1-30-3}
spec: {version: 1.30.3}
---
apiVersion: meshrev.io/v1alpha1
kind: RevisionTag
metadata: {name: stable}
spec: {revision: 1-30-3}
";

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("corpus file");
    meshrev::yaml::documents(&text)
        .map(|d| d.expect("corpus YAML"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// `got` cut down to the fields `want` has, after both were normalised (so JSON held in
/// strings is cut too): objects keep `want`'s keys, lists of named objects keep `want`'s
/// names (so the API server's defaults, its token volume and mounts drop out). Labels and
/// annotations keep every key but `pod-template-hash`, so an extra one is a difference.
fn project(got: &Value, want: &Value, key: Option<&str>) -> Value {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) if matches!(key, Some("labels" | "annotations")) => {
            Value::Object(
                g.iter()
                    .filter(|(k, _)| k.as_str() != "pod-template-hash")
                    .map(|(k, v)| match w.get(k) {
                        Some(wv) => (k.clone(), project(v, wv, Some(k))),
                        None => (k.clone(), v.clone()),
                    })
                    .collect(),
            )
        }
        (Value::Object(g), Value::Object(w)) => Value::Object(
            g.iter()
                .filter(|(k, _)| w.contains_key(*k))
                .map(|(k, v)| (k.clone(), project(v, &w[k], Some(k))))
                .collect(),
        ),
        (Value::Array(g), Value::Array(w)) => {
            let named = |a: &Vec<Value>| a.iter().all(|v| v.get("name").is_some());
            if named(g) && named(w) && !w.is_empty() {
                g.iter()
                    .filter_map(|gv| {
                        let wv = w.iter().find(|wv| wv["name"] == gv["name"])?;
                        Some(project(gv, wv, None))
                    })
                    .collect()
            } else if g.len() == w.len() {
                g.iter()
                    .zip(w)
                    .map(|(gv, wv)| project(gv, wv, None))
                    .collect()
            } else {
                got.clone()
            }
        }
        _ => got.clone(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn corpus_pods_through_the_api_server_equal_istios() -> Result<()> {
    if cluster::skip_e2e() {
        return Ok(());
    }
    let c = cluster::shared();
    let client = c.client().await?;
    meshrev_proc::install_crds(&client).await?;
    meshrev_proc::apply_table(&client, TABLE).await?;
    let dir = c.dir.join("meshrev-conformance");
    std::fs::create_dir_all(&dir)?;
    let m = Meshrev::start(&c.kubeconfig, &dir, 0)?;
    meshrev_proc::register_injector(&client, m.port, &m.ca_pem()?, "Fail").await?;
    // The goldens were made for namespace `default`.
    Api::<Namespace>::all(client.clone())
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"istio-injection": "enabled"}}})),
        )
        .await?;

    let corpus = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/conformance/istio")
        .join(TAG);
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut failures = Vec::new();
    for case in CASES {
        let input = docs(&corpus.join(case)).remove(0);
        let golden = docs(&corpus.join(format!("{case}.injected"))).remove(0);
        let name = input["metadata"]["name"]
            .as_str()
            .context("name")?
            .to_string();
        let is_pod = input["kind"] == "Pod";
        let pod = if is_pod {
            pods.create(
                &PostParams::default(),
                &serde_json::from_value(input.clone())?,
            )
            .await
            .with_context(|| format!("{case}: the Pod must be admitted"))?
        } else {
            let dep: Deployment = serde_json::from_value(input.clone())?;
            let dep = deploys
                .create(&PostParams::default(), &dep)
                .await
                .with_context(|| format!("{case}: the Deployment must be accepted"))?;
            let uid = dep.metadata.uid.clone().context("uid")?;
            // The pod of this Deployment (through its ReplicaSet), not of an earlier case's
            // Deployment of the same name.
            let rs: Api<k8s_openapi::api::apps::v1::ReplicaSet> =
                Api::namespaced(client.clone(), "default");
            eventually(&format!("a pod of {case}"), Duration::from_secs(60), || {
                let (pods, rs, uid) = (pods.clone(), rs.clone(), uid.clone());
                async move {
                    let owned_rs: Vec<String> = rs
                        .list(&ListParams::default())
                        .await?
                        .items
                        .into_iter()
                        .filter(|r| {
                            r.metadata
                                .owner_references
                                .iter()
                                .flatten()
                                .any(|o| o.uid == uid)
                        })
                        .filter_map(|r| r.metadata.uid)
                        .collect();
                    let list = pods.list(&ListParams::default()).await?;
                    Ok(list.items.into_iter().find(|p| {
                        p.metadata
                            .owner_references
                            .iter()
                            .flatten()
                            .any(|o| owned_rs.contains(&o.uid))
                    }))
                }
            })
            .await?
        };
        let mut got = serde_json::to_value(&pod)?;
        let mut want = if is_pod {
            golden.clone()
        } else {
            golden["spec"]["template"].clone()
        };
        if !is_pod {
            got = json!({"metadata": got["metadata"], "spec": got["spec"]});
        }
        normalize::normalize(&mut got);
        normalize::normalize(&mut want);
        // The projection keeps only the golden's names; the lists themselves must match
        // (less the API server's token volume).
        for list in ["containers", "initContainers", "volumes"] {
            let names = |v: &Value| -> Vec<String> {
                v["spec"][list]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["name"].as_str())
                    .filter(|n| !n.starts_with("kube-api-access-"))
                    .map(str::to_string)
                    .collect()
            };
            if names(&got) != names(&want) {
                failures.push(format!(
                    "{case}: spec.{list}: want {:?} got {:?}",
                    names(&want),
                    names(&got)
                ));
            }
        }
        let got = project(&got, &want, None);
        let diffs = normalize::diff(&want, &got);
        println!(
            "{case}: pod {} admitted, {} difference(s)",
            name,
            diffs.len()
        );
        for d in &diffs {
            println!("  {}: want {:?} got {:?}", d.path, d.want, d.got);
        }
        for d in &diffs {
            failures.push(format!(
                "{case}: {} want {} got {}",
                d.path,
                d.want.as_ref().map(Value::to_string).unwrap_or("-".into()),
                d.got.as_ref().map(Value::to_string).unwrap_or("-".into())
            ));
        }
        if is_pod {
            pods.delete(&name, &Default::default()).await?;
        } else {
            deploys.delete(&name, &Default::default()).await?;
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nmeshrev log:\n{}",
        failures.join("\n"),
        m.logs()
    );
    Ok(())
}
