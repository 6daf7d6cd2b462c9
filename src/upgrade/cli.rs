//! `meshrev upgrade …`: flags, the kube client, and the rendering of what the operations
//! ([`super::ops`]) plan, report and return. The only layer that prints or knows clap.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use kube::Client;

use crate::core::{LABEL_REV, validate};

use super::guards::ControlPlanes;
use super::ops;
use super::status;
use super::view::WorkloadKind;

/// The name the user typed for this CLI (`meshrev`, or `kubectl meshrev` for the kubectl
/// plugin): set once by [`crate::cli::main`] through [`set_display_name`] before any output,
/// read by [`for_display`]. Unset (tests, the library) means `meshrev`.
static DISPLAY_NAME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Records how the CLI was invoked, so the commands it suggests can be typed as shown.
pub(crate) fn set_display_name(name: &'static str) {
    let _ = DISPLAY_NAME.set(name);
}

/// `text` with each suggested command `meshrev <subcommand>` written as the user invoked
/// the CLI: `kubectl meshrev upgrade …` under the kubectl plugin. The hints are written once,
/// as `meshrev …`, in the operations and guards (which also serve the webhook's messages).
pub(crate) fn for_display(text: &str) -> std::borrow::Cow<'_, str> {
    rename_commands(text, DISPLAY_NAME.get().copied().unwrap_or("meshrev"))
}

fn rename_commands<'a>(text: &'a str, name: &str) -> std::borrow::Cow<'a, str> {
    const SUBCOMMANDS: [&str; 6] = ["upgrade", "adopt", "certs", "inject", "crd", "serve"];
    if name == "meshrev" || !text.contains("meshrev ") {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(i) = rest.find("meshrev ") {
        let (before, at) = rest.split_at(i);
        out.push_str(before);
        let after = &at["meshrev ".len()..];
        let word_start = out
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || "-_./".contains(c)));
        let is_command = SUBCOMMANDS.iter().any(|s| {
            after
                .strip_prefix(s)
                .is_some_and(|t| t.chars().next().is_none_or(|c| !c.is_alphanumeric()))
        });
        if word_start && is_command && !out.ends_with(name.trim_end_matches("meshrev")) {
            out.push_str(name);
            out.push(' ');
        } else {
            out.push_str("meshrev ");
        }
        rest = after;
    }
    out.push_str(rest);
    out.into()
}

// Everything this module (and `adopt::cli`, which imports them) prints goes through
// `for_display`: these shadow the std macros where imported, so a hint added later cannot
// miss the kubectl plugin's name.
macro_rules! println {
    ($($arg:tt)*) => {{
        let line = format!($($arg)*);
        std::println!("{}", $crate::upgrade::cli::for_display(&line));
    }};
}
macro_rules! print {
    ($($arg:tt)*) => {{
        let text = format!($($arg)*);
        std::print!("{}", $crate::upgrade::cli::for_display(&text));
    }};
}
pub(crate) use {print, println};

/// `meshrev upgrade`.
#[derive(Args, Debug)]
#[command(
    about = "Canary upgrade of the mesh: status, canary, switch, verify, promote, rollout, unpublish; or rollback and revoke",
    after_help = "Lifecycle: canary → switch NS --to canary (+ redeploy) → verify → promote --yes → rollout --wait → unpublish.\nTo back out before promoting: rollback NS --restart → revoke."
)]
pub(crate) struct UpgradeArgs {
    /// Kubeconfig file; default: $KUBECONFIG, ~/.kube/config, or the in-cluster config.
    #[arg(long, global = true, value_name = "PATH")]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (default: the current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) context: Option<String>,
    /// Print the API calls the step would make, and why, and make none (after the same
    /// reads and guards as a real run).
    #[arg(long, global = true)]
    pub(crate) dry_run: bool,
    #[command(subcommand)]
    pub(crate) command: UpgradeCommand,
}

#[derive(Subcommand, Debug)]
pub(crate) enum UpgradeCommand {
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

/// How `status` prints its report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    #[default]
    Table,
    Json,
    Yaml,
}

/// `meshrev upgrade canary`.
#[derive(Args, Debug)]
pub(crate) struct CanaryArgs {
    /// Name of the new MeshRevision (Istio's style: 1-23-6).
    #[arg(long)]
    pub(crate) revision: String,
    /// Its version (semver: 1.23.6). At most one minor version ahead of stable.
    #[arg(long)]
    pub(crate) version: String,
    /// Sidecar image; default docker.io/istio/proxyv2:VERSION.
    #[arg(long, value_name = "IMAGE")]
    pub(crate) proxy_image: Option<String>,
    /// istiod's address; default istiod-REVISION.istio-system.svc:15012.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) discovery_address: Option<String>,
    /// Skip the control-plane readiness check (the revision's istiod Deployment need not be
    /// available). meshrev's validating webhook never skips it: where it is installed, the
    /// tag or namespace label write is still refused.
    #[arg(long)]
    pub(crate) force: bool,
}

/// `meshrev upgrade rollout`.
#[derive(Args, Debug)]
pub(crate) struct RolloutArgs {
    /// Only workloads in this namespace.
    #[arg(short = 'n', long)]
    pub(crate) namespace: Option<String>,
    /// Only this workload: KIND/NAME (deployment/reviews-v1, statefulset/x, daemonset/y).
    #[arg(long, value_name = "KIND/NAME")]
    pub(crate) workload: Option<String>,
    /// Restart at most this many workloads at a time; each batch must complete before the
    /// next starts.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_in_flight: u32,
    /// Wait for the last batch too (without it, the command returns once the last batch
    /// has started).
    #[arg(long)]
    pub(crate) wait: bool,
    /// Give up waiting for a batch after this long (90s, 10m, 1h).
    #[arg(long, default_value = "10m")]
    pub(crate) timeout: String,
}

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum SwitchTo {
    Canary,
    Stable,
}

impl SwitchTo {
    pub(crate) fn tag(self) -> &'static str {
        match self {
            SwitchTo::Canary => crate::core::TAG_CANARY,
            SwitchTo::Stable => crate::core::TAG_STABLE,
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct SwitchArgs {
    /// The namespace to relabel.
    pub(crate) namespace: String,
    /// The tag its new pods get.
    #[arg(long, value_enum)]
    pub(crate) to: SwitchTo,
    /// Also restart the workloads that run another revision (a rolling restart each).
    #[arg(long)]
    pub(crate) restart: bool,
    /// Skip the control-plane readiness check (the revision's istiod Deployment need not be
    /// available). meshrev's validating webhook never skips it: where it is installed, the
    /// tag or namespace label write is still refused.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Args, Debug)]
pub(crate) struct VerifyArgs {}

#[derive(Args, Debug)]
pub(crate) struct PromoteArgs {
    /// Confirm: the promotion cannot be revoked.
    #[arg(long)]
    pub(crate) yes: bool,
    /// Skip the control-plane readiness check (the revision's istiod Deployment need not be
    /// available). meshrev's validating webhook never skips it: where it is installed, the
    /// tag or namespace label write is still refused.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Args, Debug)]
pub(crate) struct UnpublishArgs {
    /// The revision to delete; default: every revision older than stable that no tag
    /// points at.
    #[arg(long)]
    pub(crate) revision: Option<String>,
    /// Delete even while pods still run its sidecar (they lose their control plane).
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Args, Debug)]
pub(crate) struct RollbackArgs {
    /// The namespace to switch back to stable.
    pub(crate) namespace: String,
    /// Also restart its workloads that run the canary revision.
    #[arg(long)]
    pub(crate) restart: bool,
    /// Skip the control-plane readiness check (the revision's istiod Deployment need not be
    /// available). meshrev's validating webhook never skips it: where it is installed, the
    /// tag or namespace label write is still refused.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Args, Debug)]
pub(crate) struct RevokeArgs {}

/// Runs one `meshrev upgrade` subcommand: flags are checked before any call, then the
/// operation plans, executes and reports ([`super::ops`]); this layer prints.
pub(crate) async fn run(args: UpgradeArgs) -> anyhow::Result<()> {
    let command = Command::parse(args.command)?;
    let client = client(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    command.run(&client, args.dry_run).await
}

/// A subcommand with its flags checked and turned into the operation's plain options.
enum Command {
    Status(Output),
    Canary(ops::CanaryOptions),
    Switch {
        namespace: String,
        to: &'static str,
        restart: bool,
        check: ControlPlanes,
    },
    Verify,
    Promote {
        yes: bool,
        check: ControlPlanes,
    },
    Rollout(ops::RolloutOptions),
    Unpublish {
        revision: Option<String>,
        force: bool,
    },
    Rollback {
        namespace: String,
        restart: bool,
        check: ControlPlanes,
    },
    Revoke,
}

/// `--force` → skip the control-plane readiness check.
fn check(force: bool) -> ControlPlanes {
    if force {
        ControlPlanes::Force
    } else {
        ControlPlanes::Require
    }
}

impl Command {
    fn parse(command: UpgradeCommand) -> anyhow::Result<Self> {
        Ok(match command {
            UpgradeCommand::Status(a) => Command::Status(a.output),
            UpgradeCommand::Canary(a) => {
                if let Some(img) = &a.proxy_image {
                    validate::image(img).map_err(|e| anyhow::anyhow!("--proxy-image {e}"))?;
                }
                Command::Canary(ops::CanaryOptions {
                    revision: a.revision,
                    version: a.version,
                    proxy_image: a.proxy_image,
                    discovery_address: a.discovery_address,
                    control_planes: check(a.force),
                })
            }
            UpgradeCommand::Switch(a) => Command::Switch {
                namespace: a.namespace,
                to: a.to.tag(),
                restart: a.restart,
                check: check(a.force),
            },
            UpgradeCommand::Verify(_) => Command::Verify,
            UpgradeCommand::Promote(a) => Command::Promote {
                yes: a.yes,
                check: check(a.force),
            },
            UpgradeCommand::Rollout(a) => Command::Rollout(rollout_options(a)?),
            UpgradeCommand::Unpublish(a) => Command::Unpublish {
                revision: a.revision,
                force: a.force,
            },
            UpgradeCommand::Rollback(a) => Command::Rollback {
                namespace: a.namespace,
                restart: a.restart,
                check: check(a.force),
            },
            UpgradeCommand::Revoke(_) => Command::Revoke,
        })
    }

    async fn run(self, client: &Client, dry_run: bool) -> anyhow::Result<()> {
        match self {
            Command::Status(output) => {
                let report = ops::status(client).await?;
                match output {
                    Output::Table => print!("{}", report.render_table()),
                    Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                    Output::Yaml => print!("{}", crate::yaml::to_string_of(&report)?),
                }
            }
            Command::Canary(options) => {
                let plan = ops::plan_canary(client, options).await?;
                if dry_run {
                    print_plan(&plan.calls());
                    return Ok(());
                }
                ops::execute_canary(client, &plan, &mut print_event).await?;
                let o = &plan.options;
                println!(
                    "Canary {} ({}) deployed next to stable {} ({}); no workload uses it yet.",
                    o.revision, o.version, plan.stable, plan.stable_version
                );
                println!(
                    "Next: meshrev upgrade switch NAMESPACE --to canary, then redeploy a workload in it."
                );
            }
            Command::Switch {
                namespace,
                to,
                restart,
                check,
            } => {
                let plan = ops::plan_switch(client, &namespace, to, restart, check).await?;
                if dry_run {
                    print_plan(&plan.calls());
                    return Ok(());
                }
                relabel(client, &plan).await?;
            }
            Command::Rollback {
                namespace,
                restart,
                check,
            } => {
                let plan = ops::plan_rollback(client, &namespace, restart, check).await?;
                if dry_run {
                    print_plan(&plan.calls());
                    return Ok(());
                }
                relabel(client, &plan).await?;
                println!(
                    "When no namespace uses the canary any more: meshrev upgrade revoke (see meshrev upgrade status)."
                );
            }
            Command::Verify => verify(client).await?,
            Command::Promote { yes, check } => promote(client, yes, check, dry_run).await?,
            Command::Rollout(options) => rollout(client, options, dry_run).await?,
            Command::Unpublish { revision, force } => {
                let plan = ops::plan_unpublish(client, revision.as_deref(), force).await?;
                if plan.revisions.is_empty() {
                    println!(
                        "Nothing to unpublish: no revision older than stable ({}) is left.",
                        plan.stable
                    );
                    return Ok(());
                }
                for w in &plan.warnings {
                    println!("warning: {w}");
                }
                if dry_run {
                    print_plan(&plan.calls());
                    return Ok(());
                }
                ops::execute_unpublish(client, &plan, &mut print_event).await?;
                println!(
                    "The upgrade is complete: {} is the only revision in use.",
                    plan.stable
                );
            }
            Command::Revoke => {
                let Some(plan) = ops::plan_revoke(client).await? else {
                    println!("Nothing to revoke: there is no canary.");
                    return Ok(());
                };
                if dry_run {
                    print_plan(&plan.calls());
                    return Ok(());
                }
                ops::execute_revoke(client, &plan, &mut |e| match e {
                    // Revoke says nothing of a revision an earlier run deleted already.
                    ops::Event::RevisionDeleted { existed: false, .. } => {}
                    ops::Event::TagDeleted { tag, .. } => println!("RevisionTag {tag} deleted"),
                    other => print_event(other),
                })
                .await?;
                println!(
                    "Canary {} revoked; stable stays {}. To try again: meshrev upgrade canary --revision R --version V",
                    plan.steps.revision, plan.stable
                );
            }
        }
        Ok(())
    }
}

/// `--workload KIND/NAME` and `--timeout`, checked before any call.
fn rollout_options(a: RolloutArgs) -> anyhow::Result<ops::RolloutOptions> {
    let timeout = validate::duration(&a.timeout)?;
    let workload = match &a.workload {
        Some(w) => {
            let (kind, name) = w.split_once('/').with_context(|| {
                format!("--workload {w:?}: expected KIND/NAME, e.g. deployment/reviews-v1")
            })?;
            let kind = WorkloadKind::parse(kind).with_context(|| {
                format!("--workload {w:?}: kind must be deployment, statefulset or daemonset")
            })?;
            Some((kind, name.to_string()))
        }
        None => None,
    };
    Ok(ops::RolloutOptions {
        namespace: a.namespace,
        workload,
        restart: ops::RestartOptions {
            max_in_flight: a.max_in_flight.max(1) as usize,
            wait: a.wait,
            timeout,
        },
    })
}

async fn relabel(client: &Client, plan: &ops::RelabelPlan) -> anyhow::Result<()> {
    ops::execute_relabel(client, plan, &mut print_event).await?;
    if plan.targets.is_empty() {
        return Ok(());
    }
    if plan.restart {
        println!("Follow with: meshrev upgrade status");
    } else {
        println!(
            "Redeploy with: meshrev upgrade rollout --namespace {} [--workload KIND/NAME] (or --restart here)",
            plan.namespace
        );
    }
    Ok(())
}

async fn verify(client: &Client) -> anyhow::Result<()> {
    let report = ops::verify(client).await?;
    println!("Pods on canary revision {}:", report.canary);
    print!(
        "{}",
        status::table(
            &["NAMESPACE", "POD", "WORKLOAD", "PHASE", "READY"],
            report
                .pods
                .iter()
                .map(|p| {
                    vec![
                        p.namespace.clone(),
                        p.name.clone(),
                        p.owner
                            .as_ref()
                            .map(|(k, n)| format!("{}/{n}", k.to_ascii_lowercase()))
                            .unwrap_or_else(|| "-".into()),
                        p.display_phase().to_string(),
                        if p.ready { "true" } else { "false" }.to_string(),
                    ]
                })
                .collect(),
        )
    );
    report.check()?;
    println!(
        "All {} pod(s) on canary revision {} are ready. Next: meshrev upgrade promote --yes",
        report.pods.len(),
        report.canary
    );
    Ok(())
}

/// `promote` asks for `--yes` (the promotion cannot be revoked), showing what it would do.
async fn promote(
    client: &Client,
    yes: bool,
    check: ControlPlanes,
    dry_run: bool,
) -> anyhow::Result<()> {
    let plan = ops::plan_promote(client, check).await?;
    let s = &plan.steps;
    if plan.is_done() {
        println!(
            "Promotion of {} is complete already (tag stable → {}, promoted from {}). Next: meshrev upgrade rollout --wait",
            s.revision, s.revision, s.previous
        );
        return Ok(());
    }
    if dry_run {
        print_plan(&plan.calls());
        return Ok(());
    }
    if !yes {
        bail!(
            "promote makes canary {rev} the stable revision: tag stable → {rev} (from {prev}), the {n} namespace(s) labelled {LABEL_REV}=canary relabelled stable, and tag canary deleted. Every namespace on stable gets {rev} for its new pods at once, and the upgrade cannot be revoked afterwards (no rollback to {prev}).\nfix: verify first (meshrev upgrade verify), then run meshrev upgrade promote --yes",
            rev = s.revision,
            prev = s.previous,
            n = s.relabel.len()
        );
    }
    println!(
        "Promoting {} (from {}). This cannot be revoked afterwards.",
        s.revision, s.previous
    );
    let outcome = ops::execute_promote(client, &plan, &mut print_event).await?;
    println!(
        "Promoted: {} is stable. Existing pods keep their sidecar until restarted; {} workload(s) need upgrade.",
        s.revision, outcome.needs_upgrade
    );
    println!("Next: meshrev upgrade rollout --wait, then meshrev upgrade unpublish");
    Ok(())
}

async fn rollout(
    client: &Client,
    options: ops::RolloutOptions,
    dry_run: bool,
) -> anyhow::Result<()> {
    let plan = ops::plan_rollout(client, options).await?;
    if let Some(one) = &plan.up_to_date {
        println!(
            "{} runs {} already: nothing to roll out",
            one.label(),
            one.target.revision().unwrap_or("no sidecar")
        );
        return Ok(());
    }
    for w in &plan.unowned {
        println!(
            "warning: {} runs an old revision but no Deployment, StatefulSet or DaemonSet owns it: recreate it by hand (pods {})",
            w.label(),
            w.stale_pods.join(", ")
        );
    }
    if plan.targets.is_empty() {
        println!("Nothing to roll out: every workload runs the revision its namespace selects.");
        return Ok(());
    }
    if dry_run {
        print_plan(&plan.calls());
        println!("(each restart waits until a dry-run pod of the workload gets its new revision)");
        return Ok(());
    }
    println!(
        "Rolling out {} workload(s), at most {} at a time:",
        plan.targets.len(),
        plan.options.restart.max_in_flight
    );
    let outcome = ops::execute_rollout(client, &plan, &mut print_event).await?;
    let Some(left) = outcome.left else {
        println!("Follow with: meshrev upgrade status (or rerun with --wait)");
        return Ok(());
    };
    println!(
        "Rolled out {} workload(s); {left} still need upgrade{}.",
        outcome.restarted.len(),
        if plan.scoped() { " in this scope" } else { "" }
    );
    if left == 0 && !plan.scoped() {
        println!("Next: meshrev upgrade unpublish");
    }
    Ok(())
}

/// `--dry-run`: the calls a plan would make, and why.
fn print_plan(calls: &[ops::PlannedCall]) {
    print!("{}", render_plan(calls));
}

fn render_plan(calls: &[ops::PlannedCall]) -> String {
    if calls.is_empty() {
        return "Dry run: no change to make.\n".into();
    }
    let mut out = format!("Dry run: {} API call(s) would be made:\n", calls.len());
    for c in calls {
        out.push_str(&format!("  {c}\n"));
    }
    out
}

/// Prints one event as the lines the user sees.
fn print_event(event: ops::Event) {
    println!("{}", render_event(&event));
}

/// The lines the user sees for one event (without the final newline).
fn render_event(event: &ops::Event) -> String {
    use ops::Event as E;
    match event {
        E::RevisionCreated {
            name,
            version,
            proxy_image,
        } => format!("MeshRevision {name} created (version {version}, proxy image {proxy_image})"),
        E::RevisionExists { name } => format!("MeshRevision {name} exists already"),
        E::TagCreated { tag, revision } => format!("RevisionTag {tag} → {revision} created"),
        E::TagExists { tag, revision } => format!("RevisionTag {tag} → {revision} exists already"),
        E::Relabelled {
            namespace,
            before,
            after,
            revision,
        } => format!(
            "namespace {namespace}: {} → {} (new pods get revision {revision})",
            before.describe(),
            after.describe()
        ),
        E::LabelsUnchanged {
            namespace,
            labels,
            revision,
        } => format!(
            "namespace {namespace} has {} already (revision {revision})",
            labels.describe()
        ),
        E::Redeploy { namespace, targets } => {
            if targets.is_empty() {
                return format!("No workload in {namespace} needs a redeploy.");
            }
            let mut out = format!(
                "{} workload(s) in {namespace} must be redeployed for their pods to get the new sidecar:",
                targets.len()
            );
            for w in targets {
                out.push_str(&format!(
                    "\n  {}/{}: {} → {}",
                    w.kind.to_ascii_lowercase(),
                    w.name,
                    ops::describe_revisions(w),
                    w.target.revision().unwrap_or("-")
                ));
            }
            out
        }
        E::StableMoved { revision, previous } => {
            format!("[1/3] tag stable → {revision} (was {previous})")
        }
        E::StableAlreadyMoved { revision } => {
            format!("[1/3] tag stable → {revision}: done already")
        }
        E::NoCanaryNamespaces => format!("[2/3] no namespace is labelled {LABEL_REV}=canary"),
        E::NamespacePromoted { namespace } => {
            format!("[2/3] namespace {namespace}: {LABEL_REV}=canary → {LABEL_REV}=stable")
        }
        E::TagDeleted { tag, existed: true } => format!("[3/3] tag {tag} deleted"),
        E::TagDeleted {
            tag,
            existed: false,
        } => format!("[3/3] tag {tag}: deleted already"),
        E::RevisionDeleted {
            name,
            existed: true,
        } => format!("MeshRevision {name} deleted"),
        E::RevisionDeleted {
            name,
            existed: false,
        } => format!("MeshRevision {name}: deleted already"),
        E::Batch { index, count } => format!("batch {index}/{count}:"),
        E::Skipped {
            workload,
            why: ops::SkipWhy::Paused,
        } => format!(
            "  skipped {workload}: the Deployment is paused (kubectl rollout resume, then rerun)"
        ),
        E::Skipped {
            workload,
            why: ops::SkipWhy::OnDelete,
        } => format!(
            "  skipped {workload}: updateStrategy OnDelete; delete its pods by hand to upgrade them"
        ),
        E::Restarted {
            index,
            total,
            workload,
            from,
            to,
        } => format!("  [{index}/{total}] restarted {workload}: {from} → {to}"),
        E::RolledOut { workload, after } => {
            format!("      {workload}: rolled out ({:.1}s)", after.as_secs_f64())
        }
        E::Waiting { workload, why } => format!("      {workload}: {why}"),
    }
}

/// A client: from `kubeconfig` when given, else the usual inference (`$KUBECONFIG`,
/// `~/.kube/config`, in-cluster).
async fn client(kubeconfig: Option<&Path>, context: Option<&str>) -> anyhow::Result<Client> {
    client_as(kubeconfig, context, "upgrade").await
}

/// [`client`] for the command `command` (its User-Agent says which: `meshrev/<v> (adopt)`).
pub(crate) async fn client_as(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
    command: &str,
) -> anyhow::Result<Client> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .context("loading the kubeconfig ($KUBECONFIG or ~/.kube/config)")?,
        None => kube::Config::infer().await.context(
            "no cluster configured: pass --kubeconfig PATH, set KUBECONFIG, or run inside a pod",
        )?,
    };
    super::identify(&mut config, command);
    Ok(Client::try_from(config)?)
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
    fn suggested_commands_use_the_name_the_user_typed() {
        let k = "kubectl meshrev";
        assert_eq!(
            rename_commands(
                "NEXT:  meshrev upgrade verify, then meshrev upgrade promote --yes",
                k
            ),
            "NEXT:  kubectl meshrev upgrade verify, then kubectl meshrev upgrade promote --yes"
        );
        assert_eq!(
            rename_commands(
                "fix: verify first (meshrev upgrade verify)\nmeshrev certs --out D",
                k
            ),
            "fix: verify first (kubectl meshrev upgrade verify)\nkubectl meshrev certs --out D"
        );
        // Not commands: names, other words, already prefixed, other binaries.
        for same in [
            "admission webhook meshrev-upgrade-guards",
            "meshrev upgraded 3 pods",
            "meshrev injects every pod",
            "the meshrev ClusterRole",
            "kubectl meshrev upgrade status",
            "/usr/bin/meshrev upgrade status",
            "x-meshrev upgrade",
        ] {
            assert_eq!(rename_commands(same, k), same);
        }
        assert_eq!(
            rename_commands("Adopted. Next: meshrev adopt --takeover", k),
            "Adopted. Next: kubectl meshrev adopt --takeover"
        );
        let plain = "Next: meshrev upgrade unpublish";
        assert_eq!(rename_commands(plain, "meshrev"), plain);
        assert!(matches!(
            rename_commands(plain, "meshrev"),
            std::borrow::Cow::Borrowed(_)
        ));
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

    #[test]
    fn flags_become_plain_options_before_any_call() {
        let parse = |args: &[&str]| {
            let t = T::try_parse_from(args).expect("clap accepts it");
            Command::parse(t.args.command)
        };
        let Ok(Command::Rollout(o)) = parse(&[
            "x",
            "rollout",
            "-n",
            "default",
            "--workload",
            "statefulset/db",
            "--timeout",
            "1h30m",
            "--max-in-flight",
            "3",
        ]) else {
            panic!("rollout options")
        };
        assert_eq!(o.namespace.as_deref(), Some("default"));
        assert_eq!(
            o.workload,
            Some((WorkloadKind::StatefulSet, "db".to_string()))
        );
        assert_eq!(o.restart.timeout, std::time::Duration::from_secs(5400));
        assert_eq!(o.restart.max_in_flight, 3);
        let err = |args: &[&str]| match parse(args) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{args:?} must be refused"),
        };
        assert!(
            err(&["x", "rollout", "--workload", "job/x"])
                .contains("deployment, statefulset or daemonset")
        );
        assert!(err(&["x", "rollout", "--workload", "x"]).contains("KIND/NAME"));
        assert!(err(&["x", "rollout", "--timeout", "10x"]).contains("duration"));
        assert!(
            err(&[
                "x",
                "canary",
                "--revision",
                "r",
                "--version",
                "1.23.6",
                "--proxy-image",
                "a b"
            ])
            .contains("--proxy-image")
        );
    }

    #[test]
    fn dry_run_is_global_and_prints_the_plan() {
        let t = T::try_parse_from(["x", "promote", "--dry-run"]).expect("parses");
        assert!(t.args.dry_run);
        let t = T::try_parse_from(["x", "--dry-run", "revoke"]).expect("parses");
        assert!(t.args.dry_run);
        assert_eq!(render_plan(&[]), "Dry run: no change to make.\n");
        let calls = [ops::PlannedCall {
            verb: ops::Verb::Delete,
            object: ops::Object::RevisionTag("canary".into()),
            why: "the canary is stable now".into(),
        }];
        assert_eq!(
            render_plan(&calls),
            "Dry run: 1 API call(s) would be made:\n  DELETE RevisionTag canary: the canary is stable now\n"
        );
    }

    /// The lines the end-to-end test looks for, from the events that produce them.
    #[test]
    fn events_render_as_before() {
        use crate::upgrade::view::NamespaceLabels;
        use ops::Event as E;
        let cases = [
            (
                E::TagCreated {
                    tag: "canary".into(),
                    revision: "1-23-6".into(),
                },
                "RevisionTag canary → 1-23-6 created",
            ),
            (
                E::Relabelled {
                    namespace: "default".into(),
                    before: NamespaceLabels::injection_enabled(),
                    after: NamespaceLabels::rev("canary"),
                    revision: "1-23-6".into(),
                },
                "namespace default: istio-injection=enabled → istio.io/rev=canary (new pods get revision 1-23-6)",
            ),
            (
                E::Redeploy {
                    namespace: "legacy".into(),
                    targets: Vec::new(),
                },
                "No workload in legacy needs a redeploy.",
            ),
            (
                E::StableMoved {
                    revision: "1-23-6".into(),
                    previous: "1-22-6".into(),
                },
                "[1/3] tag stable → 1-23-6 (was 1-22-6)",
            ),
            (
                E::NamespacePromoted {
                    namespace: "default".into(),
                },
                "[2/3] namespace default: istio.io/rev=canary → istio.io/rev=stable",
            ),
            (
                E::TagDeleted {
                    tag: "canary".into(),
                    existed: true,
                },
                "[3/3] tag canary deleted",
            ),
            (
                E::RevisionDeleted {
                    name: "1-22-6".into(),
                    existed: true,
                },
                "MeshRevision 1-22-6 deleted",
            ),
            (
                E::Restarted {
                    index: 1,
                    total: 6,
                    workload: "deployment default/reviews-v2".into(),
                    from: "1-23-6".into(),
                    to: "1-22-6".into(),
                },
                "  [1/6] restarted deployment default/reviews-v2: 1-23-6 → 1-22-6",
            ),
        ];
        for (event, line) in cases {
            assert_eq!(render_event(&event), line);
        }
    }
}
