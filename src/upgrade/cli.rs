//! `meshrev upgrade …`: flags, and dispatch to [`super::ops`].

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::args::{CanaryArgs, Output, RolloutArgs};
use super::ops;

/// `meshrev upgrade`.
#[derive(Args, Debug)]
#[command(
    about = "Canary upgrade of the mesh: status, canary, switch, verify, promote, rollout, unpublish; or rollback and revoke",
    after_help = "Lifecycle: canary → switch NS --to canary (+ redeploy) → verify → promote --yes → rollout --wait → unpublish.\nTo back out before promoting: rollback NS --restart → revoke."
)]
pub struct UpgradeArgs {
    /// Kubeconfig file; default: $KUBECONFIG, ~/.kube/config, or the in-cluster config.
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (default: the current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    #[command(subcommand)]
    pub command: UpgradeCommand,
}

#[derive(Subcommand, Debug)]
pub enum UpgradeCommand {
    /// Phase of the upgrade, revisions and tags, namespaces, and workloads that need upgrade.
    Status(StatusArgs),
    /// Deploy a canary: create the MeshRevision and point tag canary at it.
    Canary(CanaryArgs),
    /// Relabel a namespace to the canary (or stable) and list what must be redeployed.
    Switch(SwitchArgs),
    /// Check every pod on the canary revision is ready (non-zero exit otherwise).
    Verify(VerifyArgs),
    /// Make the canary stable. Cannot be revoked afterwards.
    Promote(PromoteArgs),
    /// Rolling restart of the workloads still on an old revision.
    Rollout(RolloutArgs),
    /// Delete the old revision once no pod runs it.
    Unpublish(UnpublishArgs),
    /// Switch a namespace back to stable (before promotion).
    Rollback(RollbackArgs),
    /// Delete the canary tag and revision (before promotion).
    Revoke(RevokeArgs),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SwitchTo {
    Canary,
    Stable,
}

impl SwitchTo {
    pub fn tag(self) -> &'static str {
        match self {
            SwitchTo::Canary => crate::core::TAG_CANARY,
            SwitchTo::Stable => crate::core::TAG_STABLE,
        }
    }
}

#[derive(Args, Debug)]
pub struct SwitchArgs {
    /// The namespace to relabel.
    pub namespace: String,
    /// The tag its new pods get.
    #[arg(long, value_enum)]
    pub to: SwitchTo,
    /// Also restart the workloads that run another revision (a rolling restart each).
    #[arg(long)]
    pub restart: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {}

#[derive(Args, Debug)]
pub struct PromoteArgs {
    /// Confirm: the promotion cannot be revoked.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Args, Debug)]
pub struct UnpublishArgs {
    /// The revision to delete; default: every revision older than stable that no tag
    /// points at.
    #[arg(long)]
    pub revision: Option<String>,
    /// Delete even while pods still run its sidecar (they lose their control plane).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The namespace to switch back to stable.
    pub namespace: String,
    /// Also restart its workloads that run the canary revision.
    #[arg(long)]
    pub restart: bool,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {}

/// Runs one `meshrev upgrade` subcommand.
pub async fn run(args: UpgradeArgs) -> anyhow::Result<()> {
    let client =
        super::cluster::client(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    match args.command {
        UpgradeCommand::Status(a) => ops::status(&client, a.output).await,
        UpgradeCommand::Canary(a) => ops::canary(&client, a).await,
        UpgradeCommand::Switch(a) => {
            ops::switch(&client, &a.namespace, a.to.tag(), a.restart).await
        }
        UpgradeCommand::Verify(_) => ops::verify(&client).await,
        UpgradeCommand::Promote(a) => ops::promote(&client, a.yes).await,
        UpgradeCommand::Rollout(a) => ops::rollout(&client, a).await,
        UpgradeCommand::Unpublish(a) => {
            ops::unpublish(&client, a.revision.as_deref(), a.force).await
        }
        UpgradeCommand::Rollback(a) => ops::rollback(&client, &a.namespace, a.restart).await,
        UpgradeCommand::Revoke(_) => ops::revoke(&client).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: UpgradeArgs,
    }

    #[test]
    fn flags_parse() {
        let t = T::try_parse_from([
            "x",
            "rollout",
            "--kubeconfig",
            "/k",
            "-n",
            "default",
            "--workload",
            "deployment/reviews-v2",
            "--max-in-flight",
            "2",
            "--wait",
        ])
        .unwrap();
        assert_eq!(
            t.args.kubeconfig.as_deref(),
            Some(std::path::Path::new("/k"))
        );
        let UpgradeCommand::Rollout(r) = t.args.command else {
            panic!("not rollout")
        };
        assert_eq!(r.max_in_flight, 2);
        assert!(r.wait);
        assert!(T::try_parse_from(["x", "rollout", "--max-in-flight", "0"]).is_err());
        let t =
            T::try_parse_from(["x", "switch", "default", "--to", "canary", "--restart"]).unwrap();
        assert!(matches!(
            t.args.command,
            UpgradeCommand::Switch(SwitchArgs {
                to: SwitchTo::Canary,
                restart: true,
                ..
            })
        ));
        assert!(T::try_parse_from(["x", "status", "-o", "yaml"]).is_ok());
        assert!(T::try_parse_from(["x", "status", "-o", "xml"]).is_err());
    }
}
