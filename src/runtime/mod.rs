//! `meshrev serve` as a process: the runtime owns the flags ([`ServeArgs`]), the
//! Kubernetes client, the stop signal, the server ([`crate::server::serve_with`]), the
//! controller ([`crate::controller::run`]) and the Lease hand-off at exit.
//!
//! Dependencies go runtime → {server, controller}; the server and the controller share
//! only [`crate::health`] and [`crate::telemetry`], handed over here.
//!
//! Order of a run: client (cluster mode) → server (table, certificate, listeners) →
//! controller (publishes into the server's table store and opens its readiness gates) →
//! wait for SIGTERM/SIGINT or the controller's end → the server drains → the Lease is
//! released so another replica takes over at once.

mod args;
mod signal;

pub(crate) use args::ServeArgs;

use std::path::PathBuf;

use kube::Client;

use crate::server::{ServeError, TableSource, serve_with};

/// Why `meshrev serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RuntimeError {
    #[error("in-cluster Kubernetes configuration")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("reading kubeconfig {}", .0.display())]
    ReadKubeconfig(PathBuf, #[source] kube::config::KubeconfigError),
    #[error("kubeconfig {}", .0.display())]
    Kubeconfig(PathBuf, #[source] kube::config::KubeconfigError),
    #[error("building the Kubernetes client")]
    Client(#[source] kube::Error),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("the controller failed")]
    Controller(#[source] crate::controller::ControllerError),
    #[error("the controller task failed")]
    ControllerTask(#[source] tokio::task::JoinError),
}

/// `meshrev serve`: the server until SIGTERM or SIGINT, and in cluster mode the
/// controller that feeds its table.
pub(crate) async fn run(args: ServeArgs) -> Result<(), RuntimeError> {
    // kube's client uses rustls too; make ring the process default (ignore "already set").
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match &args {
        a if a.in_cluster => Some(kube_client(None).await?),
        ServeArgs {
            kubeconfig: Some(path),
            ..
        } => Some(kube_client(Some(path.clone())).await?),
        _ => None,
    };
    // The controller's index (read by /validate) and the status writer's Lease (released
    // on shutdown), made before the server so both can hold them.
    let wiring = client.map(|c| {
        let lease = crate::controller::LeaseHandle::new(
            c.clone(),
            &crate::controller::Identity::from_env(),
        );
        (c, crate::controller::ClusterView::new(), lease)
    });
    let mut cfg = args.to_config();
    cfg.validator = wiring.as_ref().map(|(_, view, _)| view.clone());
    let table_desc = match &cfg.table {
        TableSource::File(p) => format!("table file {} (reloaded on change)", p.display()),
        TableSource::Controller => "from the cluster (controller)".to_string(),
        _ => "embedded default".to_string(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        tokio::select! {
            () = signal::shutdown() => {}
            // Only a sent stop counts: without a controller the sender is simply dropped.
            Ok(()) = stop_rx => {}
        }
    };
    let server = serve_with(cfg, shutdown).await?;
    println!(
        "meshrev: serving https://{} (POST /inject, GET /healthz, GET /readyz)",
        server.addr
    );
    if let Some(m) = server.metrics_addr {
        println!("meshrev: metrics on http://{m}/metrics");
    }
    if let Some(ca) = &server.ca_path {
        println!("meshrev: self-signed CA bundle: {}", ca.display());
    }
    let t = server.store.load();
    println!(
        "meshrev: table: {table_desc}; {} revisions, tags {:?}",
        t.revision_count(),
        t.tags()
    );
    drop(t);
    let releaser = wiring.as_ref().map(|(_, _, lease)| lease.clone());
    let controller = wiring.map(|(client, cluster, lease)| {
        let (store, telemetry, readiness) = (
            server.store.clone(),
            server.metrics.telemetry().clone(),
            server.readiness.clone(),
        );
        tokio::spawn(async move {
            let result =
                crate::controller::run(client, store, telemetry, readiness, cluster, lease).await;
            match &result {
                Ok(()) => tracing::warn!("the controller stopped; shutting down"),
                Err(e) => tracing::error!(
                    "the controller failed, shutting down: {}",
                    crate::errors::Chain(e)
                ),
            }
            let _ = stop_tx.send(());
            result
        })
    });
    server.wait().await?;
    if let Some(lease) = releaser {
        // Hand the status writer's Lease over now instead of after it expires.
        lease.release().await;
    }
    if let Some(c) = controller
        && c.is_finished()
    {
        c.await
            .map_err(RuntimeError::ControllerTask)?
            .map_err(RuntimeError::Controller)?;
    }
    Ok(())
}

/// The client of `--kubeconfig PATH`, or of the pod's service account (`None`).
async fn kube_client(kubeconfig: Option<PathBuf>) -> Result<Client, RuntimeError> {
    let mut config = match kubeconfig {
        None => kube::Config::incluster().map_err(RuntimeError::InCluster)?,
        Some(path) => {
            let kubeconfig = match kube::config::Kubeconfig::read_from(&path) {
                Ok(k) => k,
                Err(e) => return Err(RuntimeError::ReadKubeconfig(path, e)),
            };
            match kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            {
                Ok(c) => c,
                Err(e) => return Err(RuntimeError::Kubeconfig(path, e)),
            }
        }
    };
    crate::upgrade::identify(&mut config, "serve");
    Client::try_from(config).map_err(RuntimeError::Client)
}
