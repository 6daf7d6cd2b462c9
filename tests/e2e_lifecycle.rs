//! meshrev's own lifecycle on a real control plane: restart rebuilds the same table from the
//! cluster; with meshrev down, `failurePolicy: Fail` blocks pod creation and `Ignore` lets
//! pods through uninjected. One sequential test: it stops the webhook everyone would share.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/meshrev.rs"]
mod meshrev_proc;

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use meshrev::config::MeshRevision;
use meshrev_proc::Meshrev;
use serde_json::json;

#[tokio::test]
async fn restart_rebuilds_and_failure_policy_decides_when_down() -> Result<()> {
    if cluster::skip_e2e() {
        return Ok(());
    }
    let c = cluster::shared();
    let client = c.client().await?;
    meshrev_proc::install_crds(&client).await?;
    meshrev_proc::apply_table(&client, meshrev::config::EMBEDDED_DEFAULT).await?;
    let dir = c.dir.join("meshrev");
    std::fs::create_dir_all(&dir)?;
    let t0 = std::time::Instant::now();
    let mut m = Meshrev::start(&c.kubeconfig, &dir, 0)?;
    println!(
        "meshrev ready (every watch listed, table published) in {:?}",
        t0.elapsed()
    );
    let ca = m.ca_pem()?;
    meshrev_proc::register_injector(&client, m.port, &ca, "Fail").await?;

    let ns = cluster::create_namespace(&client, "life", &[("istio-injection", "enabled")]).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let p = pods
        .create(&PostParams::default(), &meshrev_proc::pod("first")?)
        .await?;
    assert_eq!(meshrev_proc::revision_of(&p).as_deref(), Some("1-22-6"));

    let revisions = m.metric("meshrev_table_revisions")?;
    let tags_before = m.metrics()?;
    assert_eq!(revisions, 2.0);
    m.restart()?;
    assert_eq!(
        m.metric("meshrev_table_revisions")?,
        revisions,
        "the same table after a restart"
    );
    assert!(tags_before.contains("meshrev_table_revisions"));
    let p = pods
        .create(&PostParams::default(), &meshrev_proc::pod("after-restart")?)
        .await?;
    assert_eq!(meshrev_proc::revision_of(&p).as_deref(), Some("1-22-6"));

    m.stop();
    let err = pods
        .create(
            &PostParams::default(),
            &meshrev_proc::pod("while-down-fail")?,
        )
        .await
        .expect_err("failurePolicy Fail must block creation while meshrev is down");
    println!("with meshrev down and failurePolicy Fail: {err}");
    assert!(
        err.to_string().contains("meshrev.io"),
        "the error names the webhook: {err}"
    );

    meshrev_proc::register_injector(&client, m.port, &ca, "Ignore").await?;
    let p = meshrev_proc::eventually(
        "creation succeeds with failurePolicy Ignore",
        Duration::from_secs(30),
        || async {
            Ok(pods
                .create(
                    &PostParams::default(),
                    &meshrev_proc::pod("while-down-ignore")?,
                )
                .await
                .ok())
        },
    )
    .await?;
    assert_eq!(meshrev_proc::revision_of(&p), None, "admitted uninjected");
    assert!(p.spec.as_ref().is_some_and(|s| s.containers.len() == 1));

    m.restart()?;
    let p = pods
        .create(&PostParams::default(), &meshrev_proc::pod("back")?)
        .await?;
    assert_eq!(meshrev_proc::revision_of(&p).as_deref(), Some("1-22-6"));

    // Two replicas: one holds the status writer's Lease; when it goes, the other takes
    // over and status keeps being written.
    let mut m2 = Meshrev::start(&c.kubeconfig, &dir, 0)?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let holder = || async {
        let l = leases.get_opt("meshrev-status-writer").await?;
        anyhow::Ok(l.and_then(|l| l.spec?.holder_identity))
    };
    let ends_with_pid =
        |h: &str, m: &Meshrev| m.pid().is_some_and(|p| h.ends_with(&format!("-{p}")));
    // A replica that was stopped earlier may still hold an unexpired Lease: wait for a
    // live one.
    let live = [m.pid(), m2.pid()];
    let first = meshrev_proc::eventually(
        "one of the two live replicas holds the Lease",
        Duration::from_secs(60),
        || async {
            Ok(holder()
                .await?
                .filter(|h| live.iter().flatten().any(|p| h.ends_with(&format!("-{p}")))))
        },
    )
    .await?;
    let (leader, other) = if ends_with_pid(&first, &m) {
        (&mut m, &mut m2)
    } else {
        (&mut m2, &mut m)
    };
    let other_pid = other.pid();
    leader.stop();
    let t = std::time::Instant::now();
    let next = meshrev_proc::eventually(
        "the other replica takes the Lease over",
        Duration::from_secs(60),
        || async {
            Ok(holder()
                .await?
                .filter(|h| other_pid.is_some_and(|p| h.ends_with(&format!("-{p}")))))
        },
    )
    .await?;
    println!(
        "status writer: {first} → {next} in {:?} after the leader stopped",
        t.elapsed()
    );
    let revs: Api<MeshRevision> = Api::all(client.clone());
    meshrev_proc::apply(
        &revs,
        json!({"apiVersion": "meshrev.io/v1alpha1", "kind": "MeshRevision", "metadata": {"name": "1-19-0"}, "spec": {"version": "1.19.0"}}),
    )
    .await?;
    meshrev_proc::eventually(
        "the new leader writes status",
        Duration::from_secs(30),
        || async {
            Ok(revs
                .get("1-19-0")
                .await?
                .status
                .filter(|s| s.conditions.iter().any(|c| c.type_ == "Ready")))
        },
    )
    .await?;
    Ok(())
}

/// Every object of `kubectl apply -k manifests/` is accepted by the real API server
/// (server-side dry run after the namespace and CRDs exist), so the manifests are valid
/// Kubernetes objects, not just YAML.
#[tokio::test]
async fn the_manifests_are_accepted_by_the_api_server() -> Result<()> {
    use kube::api::{DynamicObject, PostParams};
    use kube::core::GroupVersionKind;
    use kube::discovery::{Discovery, Scope};
    if cluster::skip_e2e() {
        return Ok(());
    }
    let client = cluster::shared().client().await?;
    meshrev_proc::install_crds(&client).await?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let kustomization =
        meshrev::yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml"))?)?;
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut checked = Vec::new();
    for file in kustomization["resources"].as_array().into_iter().flatten() {
        let file = file.as_str().unwrap_or_default();
        for doc in meshrev::yaml::documents(&std::fs::read_to_string(dir.join(file))?) {
            let obj: DynamicObject = serde_json::from_value(doc?)?;
            let types = obj
                .types
                .clone()
                .ok_or_else(|| anyhow::anyhow!("{file}: no apiVersion/kind"))?;
            let gvk = GroupVersionKind::try_from(&types)?;
            let (ar, caps) = discovery
                .resolve_gvk(&gvk)
                .ok_or_else(|| anyhow::anyhow!("{file}: the API server does not serve {gvk:?}"))?;
            let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
                let ns = obj
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                Api::namespaced_with(client.clone(), &ns, &ar)
            } else {
                Api::all_with(client.clone(), &ar)
            };
            // The namespace must exist for objects in it to be admitted, even in a dry run.
            let dry_run = gvk.kind != "Namespace";
            let pp = PostParams {
                dry_run,
                ..Default::default()
            };
            match api.create(&pp, &obj).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {} // already there (CRDs)
                Err(e) => {
                    anyhow::bail!("{file}: {} {:?} rejected: {e}", gvk.kind, obj.metadata.name)
                }
            }
            checked.push(format!(
                "{}/{}",
                gvk.kind,
                obj.metadata.name.unwrap_or_default()
            ));
        }
    }
    println!("accepted by the API server: {}", checked.join(", "));
    assert!(checked.len() >= 12, "{checked:?}");
    Ok(())
}
