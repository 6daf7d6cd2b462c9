//! Smoke test of the e2e control plane (tests/support/cluster.rs): a Deployment
//! gets its Pods from the real deployment and replicaset controllers.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, PostParams};

#[tokio::test]
async fn deployment_gets_pods_from_controller_manager() -> anyhow::Result<()> {
    if cluster::skip_e2e() {
        return Ok(());
    }
    let t0 = Instant::now();
    let c = cluster::shared();
    println!(
        "e2e environment: {} ready in {:.2?} (start() itself: {:.2?})",
        c.server_url,
        t0.elapsed(),
        c.start_time
    );

    let client = c.client().await?;
    let ns = cluster::create_namespace(&client, "smoke", &[("meshrev.io/e2e", "smoke")]).await?;

    let deploy: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "nginx", "image": "nginx:1.27" }] }
            }
        }
    }))?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments.create(&PostParams::default(), &deploy).await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let lp = ListParams::default().labels("app=web");
    let deadline = Instant::now() + Duration::from_secs(60);
    let t1 = Instant::now();
    loop {
        let list = pods.list(&lp).await?;
        if list.items.len() == 2 {
            for p in &list.items {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                assert_eq!(phase, Some("Pending"), "no kubelet, so Pods stay Pending");
                // ServiceAccount admission ran: the Pod got the default SA.
                assert_eq!(
                    p.spec
                        .as_ref()
                        .and_then(|s| s.service_account_name.as_deref()),
                    Some("default")
                );
            }
            println!("2 Pods created {:.2?} after the Deployment", t1.elapsed());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of 2 Pods after 60s; logs:{}",
            list.items.len(),
            c.log_tails(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
