//! `meshrev adopt`: flags and the rendering of the plan. The only layer of `adopt` that
//! prints or knows clap.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use kube::ResourceExt;

use super::plan::{Action, Plan};

// What this module prints names commands as the user invoked the CLI (`kubectl meshrev
// adopt …` under the kubectl plugin): `upgrade::cli`'s print macros shadow the std ones.
use crate::upgrade::cli::{print, println};

/// `meshrev adopt`.
#[derive(Args, Debug)]
#[command(
    about = "Adopt an installed Istio: its revisions and tags become MeshRevision/RevisionTag objects that inject the same sidecars",
    after_help = "Steps: meshrev adopt (the plan) → adopt --yes (create the objects; meshrev's webhook stays parked) → adopt --takeover (meshrev injects, Istio's injector webhooks are parked). adopt --release hands injection back to Istio."
)]
pub(crate) struct AdoptArgs {
    /// Kubeconfig file; default: $KUBECONFIG, ~/.kube/config, or the in-cluster config.
    #[arg(long, value_name = "PATH")]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (default: the current context).
    #[arg(long, value_name = "NAME")]
    pub(crate) context: Option<String>,
    /// Print the plan and write nothing (also what adopt does without --yes).
    #[arg(long, conflicts_with_all = ["yes", "takeover", "release"])]
    pub(crate) dry_run: bool,
    /// Apply the plan: server-side apply of the MeshRevision and RevisionTag objects.
    #[arg(long)]
    pub(crate) yes: bool,
    /// Apply even though the plan lists differences meshrev cannot express (those pods will
    /// get meshrev's sidecar, not the installation's), overwriting objects that exist.
    #[arg(long)]
    pub(crate) force: bool,
    /// Switch injection to meshrev: check its webhook serves the adopted table, unpark it,
    /// park Istio's injector webhooks.
    #[arg(long, conflicts_with_all = ["yes", "release"])]
    pub(crate) takeover: bool,
    /// Hand injection back to Istio: restore its injector webhooks, park meshrev's.
    #[arg(long, conflicts_with = "yes")]
    pub(crate) release: bool,
    /// meshrev's injector MutatingWebhookConfiguration.
    #[arg(long, value_name = "NAME", default_value = super::MESHREV_WEBHOOK)]
    pub(crate) webhook: String,
    /// Namespace for the dry-run check pods after a switch (without injection labels).
    #[arg(long, value_name = "NS", default_value = "default")]
    pub(crate) check_namespace: String,
}

/// Runs `meshrev adopt`.
pub(crate) async fn run(args: AdoptArgs) -> anyhow::Result<()> {
    let client = crate::upgrade::cli::client_as(
        args.kubeconfig.as_deref(),
        args.context.as_deref(),
        "adopt",
    )
    .await?;
    let mut print = |line: String| println!("{line}");
    let (_, plan) = super::plan(&client).await?;
    if args.release {
        println!("Releasing injection to Istio:");
        super::release(
            &client,
            &plan,
            &args.webhook,
            &args.check_namespace,
            &mut print,
            true,
        )
        .await?;
        println!(
            "Istio's injector serves every pod again; the adopted objects stay (meshrev adopt --takeover to switch back)."
        );
        return Ok(());
    }
    if args.takeover {
        println!("Taking injection over from Istio:");
        super::takeover(
            &client,
            &plan,
            &args.webhook,
            &args.check_namespace,
            &mut print,
        )
        .await?;
        println!(
            "meshrev injects every pod Istio's webhooks matched; meshrev adopt --release hands it back."
        );
        return Ok(());
    }
    print!("{}", render_plan(&plan));
    if !args.yes {
        println!(
            "Nothing written{}. To apply: meshrev adopt --yes",
            if args.dry_run { " (dry run)" } else { "" }
        );
        return Ok(());
    }
    super::apply(&client, &plan, args.force, &args.webhook, &mut print).await?;
    println!("Adopted. Next: meshrev adopt --takeover");
    Ok(())
}

/// The plan as the CLI prints it.
pub(crate) fn render_plan(plan: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Istio revisions found: {}", plan.revisions.len());
    for r in &plan.revisions {
        let src = &r.source;
        let istiod = match &src.deployment {
            Some(d) => format!(
                "Deployment {}/{} ({}/{} available)",
                d.namespace, d.name, d.available, d.replicas
            ),
            None => format!(
                "no istiod Deployment {} found",
                super::plan::istiod_name(&src.revision)
            ),
        };
        let _ = writeln!(
            s,
            "  {}: {istiod}, Service {}, ConfigMap {}/{}; sidecar {}{}",
            r.object.name_any(),
            src.service.as_deref().unwrap_or("(none)"),
            src.namespace,
            src.configmap,
            r.image,
            r.templates_of
                .as_deref()
                .map(|v| format!(", Istio {v}'s templates"))
                .unwrap_or_default()
        );
    }
    if !plan.namespaces.is_empty() {
        let _ = writeln!(
            s,
            "Namespaces (label → revision, Istio today / meshrev adopted):"
        );
        let w = plan
            .namespaces
            .iter()
            .map(|n| n.name.len())
            .max()
            .unwrap_or(0);
        let lw = plan
            .namespaces
            .iter()
            .map(|n| n.label.len())
            .max()
            .unwrap_or(0);
        for n in &plan.namespaces {
            let _ = writeln!(
                s,
                "  {:w$}  {:lw$}  {} / {}",
                n.name,
                n.label,
                n.istio.as_deref().unwrap_or("none"),
                n.meshrev.as_deref().unwrap_or("none"),
            );
        }
    }
    let verb = |a: Action| match a {
        Action::Create => "CREATE",
        Action::Unchanged => "UNCHANGED",
        Action::Overwrite => "OVERWRITE",
    };
    let _ = writeln!(
        s,
        "Objects ({} to write, server-side apply, field manager meshrev):",
        plan.writes()
    );
    for r in &plan.revisions {
        let spec = serde_json::to_string(&r.object.spec).unwrap_or_default();
        let _ = writeln!(
            s,
            "  {:9} MeshRevision {} {spec}",
            verb(r.action),
            r.object.name_any()
        );
    }
    for t in &plan.tags {
        let _ = writeln!(
            s,
            "  {:9} RevisionTag {} → {} ({})",
            verb(t.action),
            t.object.name_any(),
            t.object.spec.revision,
            t.why
        );
    }
    if let Some(p) = &plan.reinvocation_policy {
        let _ = writeln!(
            s,
            "meshrev's webhook configuration gets Istio's reinvocationPolicy: {p}"
        );
    }
    if plan.differences.is_empty() {
        let _ = writeln!(s, "Differences meshrev cannot express: none");
    } else {
        let _ = writeln!(
            s,
            "Differences meshrev cannot express ({}; adopt --yes refuses them without --force):",
            plan.differences.len()
        );
        for d in &plan.differences {
            let _ = writeln!(s, "  {}: {}: {}", d.subject, d.path, d.what);
        }
    }
    s
}
