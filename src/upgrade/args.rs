//! The flags of the `meshrev upgrade` subcommands that [`super::ops`] reads as they are.
//! Defined apart from [`super::cli`] (which dispatches to [`super::ops`]) so that `ops`
//! does not import the module that calls it.

use clap::{Args, ValueEnum};

/// How `status` prints its report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
    Yaml,
}

/// `meshrev upgrade canary`.
#[derive(Args, Debug)]
pub struct CanaryArgs {
    /// Name of the new MeshRevision (Istio's style: 1-23-6).
    #[arg(long)]
    pub revision: String,
    /// Its version (semver: 1.23.6). At most one minor version ahead of stable.
    #[arg(long)]
    pub version: String,
    /// Sidecar image; default docker.io/istio/proxyv2:VERSION.
    #[arg(long, value_name = "IMAGE")]
    pub proxy_image: Option<String>,
    /// istiod's address; default istiod-REVISION.istio-system.svc:15012.
    #[arg(long, value_name = "HOST:PORT")]
    pub discovery_address: Option<String>,
}

/// `meshrev upgrade rollout`.
#[derive(Args, Debug)]
pub struct RolloutArgs {
    /// Only workloads in this namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Only this workload: KIND/NAME (deployment/reviews-v1, statefulset/x, daemonset/y).
    #[arg(long, value_name = "KIND/NAME")]
    pub workload: Option<String>,
    /// Restart at most this many workloads at a time; each batch must complete before the
    /// next starts.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Wait for the last batch too (without it, the command returns once the last batch
    /// has started).
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting for a batch after this long (90s, 10m, 1h).
    #[arg(long, default_value = "10m")]
    pub timeout: String,
}
