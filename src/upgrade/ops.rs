//! The `meshrev upgrade` subcommands: load a view, check the guard, make the change, say
//! what happened and what comes next. Results go to stdout; a refusal is an error (the
//! binary prints it on stderr and exits 1).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kube::Client;

use crate::config::MeshRevisionSpec;
use crate::core::validate;
use crate::core::{LABEL_REV, TAG_CANARY, TAG_STABLE};

use super::args::{CanaryArgs, Output, RolloutArgs};
use super::cluster::{self, Needs, PodDetail};
use super::guards;
use super::rollout::Progress;
use super::status::{self, StatusReport};
use super::view::{MeshView, WorkloadKind, WorkloadState};

/// How long to wait for the injector to pick up a label or tag change before restarting.
pub const INJECTOR_DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(500);

/// `status`.
pub async fn status(client: &Client, output: Output) -> anyhow::Result<()> {
    let view = cluster::load_view(client, &Needs::all()).await?;
    let report = StatusReport::new(&view);
    match output {
        Output::Table => print!("{}", report.render_table()),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Yaml => print!("{}", crate::yaml::to_string_of(&report)?),
    }
    Ok(())
}

/// `canary`.
pub async fn canary(client: &Client, args: CanaryArgs) -> anyhow::Result<()> {
    if let Some(img) = &args.proxy_image {
        validate::image(img).map_err(|e| anyhow::anyhow!("--proxy-image {e}"))?;
    }
    let view = cluster::load_view(client, &Needs::config()).await?;
    let plan = guards::canary(&view, &args.revision, &args.version)?;
    let stable = view.stable().unwrap_or_default().to_string();
    let stable_version = view
        .revisions
        .get(&stable)
        .map(|r| r.version.clone())
        .unwrap_or_default();
    if plan.create_revision {
        let spec = MeshRevisionSpec {
            version: args.version.clone(),
            proxy_image: args.proxy_image.clone(),
            discovery_address: args.discovery_address.clone(),
            template: None,
            ..Default::default()
        };
        cluster::create_revision(client, &args.revision, spec).await?;
        println!(
            "MeshRevision {} created (version {}, proxy image {})",
            args.revision,
            args.version,
            args.proxy_image
                .clone()
                .unwrap_or_else(|| format!("docker.io/istio/proxyv2:{}", args.version))
        );
    } else {
        println!("MeshRevision {} exists already", args.revision);
    }
    if plan.create_tag {
        cluster::create_tag(client, TAG_CANARY, &args.revision).await?;
        println!("RevisionTag canary → {} created", args.revision);
    } else {
        println!("RevisionTag canary → {} exists already", args.revision);
    }
    println!(
        "Canary {} ({}) deployed next to stable {stable} ({stable_version}); no workload uses it yet.",
        args.revision, args.version
    );
    println!("Next: meshrev upgrade switch NAMESPACE --to canary, then redeploy a workload in it.");
    Ok(())
}

/// `switch NS --to TAG [--restart]`.
pub async fn switch(
    client: &Client,
    namespace: &str,
    to: &str,
    restart: bool,
) -> anyhow::Result<()> {
    let mut view = cluster::load_view(client, &Needs::namespace(namespace)).await?;
    let labels = guards::switch(&view, namespace, to)?;
    relabel(client, &mut view, namespace, labels).await?;
    redeploy_list(client, &view, namespace, restart, |w| w.needs_upgrade()).await
}

/// `rollback NS [--restart]`.
pub async fn rollback(client: &Client, namespace: &str, restart: bool) -> anyhow::Result<()> {
    let mut view = cluster::load_view(client, &Needs::namespace(namespace)).await?;
    let labels = guards::rollback(&view, namespace)?;
    let canary = view.canary().unwrap_or_default().to_string();
    relabel(client, &mut view, namespace, labels).await?;
    redeploy_list(client, &view, namespace, restart, |w| w.runs(&canary)).await?;
    println!(
        "When no namespace uses the canary any more: meshrev upgrade revoke (see meshrev upgrade status)."
    );
    Ok(())
}

async fn relabel(
    client: &Client,
    view: &mut MeshView,
    namespace: &str,
    labels: super::view::NamespaceLabels,
) -> anyhow::Result<()> {
    let before = view.namespace(namespace);
    let rev = labels
        .rev
        .as_deref()
        .and_then(|t| view.tag_revision(t))
        .unwrap_or_default()
        .to_string();
    if before == labels {
        println!(
            "namespace {namespace} has {} already (revision {rev})",
            labels.describe()
        );
    } else {
        cluster::set_namespace_labels(client, namespace, &labels).await?;
        println!(
            "namespace {namespace}: {} → {} (new pods get revision {rev})",
            before.describe(),
            labels.describe()
        );
    }
    view.namespaces.insert(namespace.to_string(), labels);
    Ok(())
}

/// Lists (and with `restart`, restarts) the workloads of `namespace` that `pick` selects.
async fn redeploy_list(
    client: &Client,
    view: &MeshView,
    namespace: &str,
    restart: bool,
    pick: impl Fn(&WorkloadState) -> bool,
) -> anyhow::Result<()> {
    let targets: Vec<WorkloadState> = view
        .workload_states()
        .into_iter()
        .filter(|w| w.namespace == namespace && pick(w))
        .collect();
    if targets.is_empty() {
        println!("No workload in {namespace} needs a redeploy.");
        return Ok(());
    }
    println!(
        "{} workload(s) in {namespace} must be redeployed for their pods to get the new sidecar:",
        targets.len()
    );
    for w in &targets {
        println!(
            "  {}/{}: {} → {}",
            w.kind.to_ascii_lowercase(),
            w.name,
            describe_revisions(w),
            w.target.revision().unwrap_or("-")
        );
    }
    if restart {
        let opts = RolloutOptions {
            max_in_flight: targets.len(),
            wait: false,
            timeout: Duration::from_secs(600),
        };
        restart_workloads(client, targets, &opts).await?;
        println!("Follow with: meshrev upgrade status");
    } else {
        println!(
            "Redeploy with: meshrev upgrade rollout --namespace {namespace} [--workload KIND/NAME] (or --restart here)"
        );
    }
    Ok(())
}

fn describe_revisions(w: &WorkloadState) -> String {
    let m: BTreeMap<String, usize> = w
        .revisions
        .iter()
        .map(|(r, n)| (r.clone().unwrap_or_else(|| "no sidecar".into()), *n))
        .collect();
    status::sidecars(&m)
}

/// `verify`.
pub async fn verify(client: &Client) -> anyhow::Result<()> {
    let needs = Needs {
        namespaces: false,
        pods: PodDetail::Full,
        workloads: false,
        namespace: None,
    };
    let view = cluster::load_view(client, &needs).await?;
    let Some(canary) = view.canary().map(str::to_string) else {
        bail!(
            "no canary to verify: tag canary does not exist (deploy one: meshrev upgrade canary --revision R --version V)"
        );
    };
    if view.stable() == Some(canary.as_str()) {
        bail!(
            "the canary {canary} is being promoted already; finish with meshrev upgrade promote --yes"
        );
    }
    let pods: Vec<_> = view.pods_on(&canary).collect();
    if pods.is_empty() {
        bail!(
            "no pod runs canary revision {canary} yet: switch a namespace (meshrev upgrade switch NAMESPACE --to canary) and redeploy a workload in it"
        );
    }
    println!("Pods on canary revision {canary}:");
    print!(
        "{}",
        status::table(
            &["NAMESPACE", "POD", "WORKLOAD", "PHASE", "READY"],
            pods.iter()
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
    let not_ready: Vec<String> = pods
        .iter()
        .filter(|p| !p.ready || p.terminating)
        .map(|p| format!("{} ({})", p.key(), p.display_phase()))
        .collect();
    if !not_ready.is_empty() {
        bail!(
            "{} of {} pod(s) on canary revision {canary} are not ready: {}\nfix: find out why (kubectl describe pod, the istio-proxy logs); if the canary is at fault: meshrev upgrade rollback NAMESPACE --restart",
            not_ready.len(),
            pods.len(),
            not_ready.join(", ")
        );
    }
    println!(
        "All {} pod(s) on canary revision {canary} are ready. Next: meshrev upgrade promote --yes",
        pods.len()
    );
    Ok(())
}

/// `promote --yes`.
pub async fn promote(client: &Client, yes: bool) -> anyhow::Result<()> {
    let view = cluster::load_view(client, &Needs::all()).await?;
    let plan = guards::promote(&view)?;
    if plan.is_done() {
        println!(
            "Promotion of {} is complete already (tag stable → {}, promoted from {}). Next: meshrev upgrade rollout --wait",
            plan.revision, plan.revision, plan.previous
        );
        return Ok(());
    }
    if !yes {
        bail!(
            "promote makes canary {rev} the stable revision: tag stable → {rev} (from {prev}), the {n} namespace(s) labelled {LABEL_REV}=canary relabelled stable, and tag canary deleted. Every namespace on stable gets {rev} for its new pods at once, and the upgrade cannot be revoked afterwards (no rollback to {prev}).\nfix: verify first (meshrev upgrade verify), then run meshrev upgrade promote --yes",
            rev = plan.revision,
            prev = plan.previous,
            n = plan.relabel.len()
        );
    }
    println!(
        "Promoting {} (from {}). This cannot be revoked afterwards.",
        plan.revision, plan.previous
    );
    if plan.move_stable {
        cluster::move_tag(client, TAG_STABLE, &plan.revision, Some(&plan.previous)).await?;
        println!(
            "[1/3] tag stable → {} (was {})",
            plan.revision, plan.previous
        );
    } else {
        println!("[1/3] tag stable → {}: done already", plan.revision);
    }
    if plan.relabel.is_empty() {
        println!("[2/3] no namespace is labelled {LABEL_REV}=canary");
    }
    for ns in &plan.relabel {
        let mut labels = view.namespace(ns);
        labels.rev = Some(TAG_STABLE.into());
        cluster::set_namespace_labels(client, ns, &labels).await?;
        println!("[2/3] namespace {ns}: {LABEL_REV}=canary → {LABEL_REV}=stable");
    }
    if cluster::delete_tag(client, TAG_CANARY).await? {
        println!("[3/3] tag canary deleted");
    } else {
        println!("[3/3] tag canary: deleted already");
    }
    let after = cluster::load_view(client, &Needs::all()).await?;
    let stale = after
        .workload_states()
        .iter()
        .filter(|w| w.needs_upgrade())
        .count();
    println!(
        "Promoted: {} is stable. Existing pods keep their sidecar until restarted; {stale} workload(s) need upgrade.",
        plan.revision
    );
    println!("Next: meshrev upgrade rollout --wait, then meshrev upgrade unpublish");
    Ok(())
}

/// Options of a batch of rolling restarts.
#[derive(Clone, Debug)]
pub struct RolloutOptions {
    pub max_in_flight: usize,
    /// Wait for the last batch too.
    pub wait: bool,
    /// Per batch.
    pub timeout: Duration,
}

/// `rollout`.
pub async fn rollout(client: &Client, args: RolloutArgs) -> anyhow::Result<()> {
    let timeout = validate::duration(&args.timeout)?;
    let filter = match &args.workload {
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
    let needs = match &args.namespace {
        Some(ns) => Needs::namespace(ns),
        None => Needs::all(),
    };
    let view = cluster::load_view(client, &needs).await?;
    if let Some(ns) = &args.namespace
        && !view.namespaces.contains_key(ns)
    {
        bail!("namespace {ns} does not exist");
    }
    let states: Vec<WorkloadState> = view
        .workload_states()
        .into_iter()
        .filter(|w| args.namespace.as_ref().is_none_or(|ns| &w.namespace == ns))
        .filter(|w| {
            filter.as_ref().is_none_or(|(k, n)| {
                w.id.as_ref()
                    .is_some_and(|id| id.kind == *k && &id.name == n)
            })
        })
        .collect();
    if let Some((kind, name)) = &filter {
        match states.as_slice() {
            [] => bail!(
                "{}/{name} not found in the mesh{} (see meshrev upgrade status)",
                kind.as_str().to_ascii_lowercase(),
                args.namespace
                    .as_ref()
                    .map(|n| format!(" in namespace {n}"))
                    .unwrap_or_default()
            ),
            [one] if !one.needs_upgrade() => {
                println!(
                    "{} runs {} already: nothing to roll out",
                    one.label(),
                    one.target.revision().unwrap_or("no sidecar")
                );
                return Ok(());
            }
            [_] => {}
            many => bail!(
                "{}/{name} exists in {} namespaces ({}): pass --namespace",
                kind.as_str().to_ascii_lowercase(),
                many.len(),
                many.iter()
                    .map(|w| w.namespace.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    let (targets, loose): (Vec<WorkloadState>, Vec<WorkloadState>) = states
        .into_iter()
        .filter(WorkloadState::needs_upgrade)
        .partition(WorkloadState::restartable);
    for w in &loose {
        println!(
            "warning: {} runs an old revision but no Deployment, StatefulSet or DaemonSet owns it: recreate it by hand (pods {})",
            w.label(),
            w.stale_pods.join(", ")
        );
    }
    if targets.is_empty() {
        println!("Nothing to roll out: every workload runs the revision its namespace selects.");
        return Ok(());
    }
    let opts = RolloutOptions {
        max_in_flight: args.max_in_flight.max(1) as usize,
        wait: args.wait,
        timeout,
    };
    println!(
        "Rolling out {} workload(s), at most {} at a time:",
        targets.len(),
        opts.max_in_flight
    );
    let restarted = restart_workloads(client, targets, &opts).await?;
    if !opts.wait {
        println!("Follow with: meshrev upgrade status (or rerun with --wait)");
        return Ok(());
    }
    // Every rollout completed: check the new pods run the revision that was expected.
    let after = cluster::load_view(client, &needs).await?;
    let mut wrong = Vec::new();
    for (id, expected) in &restarted {
        for p in after
            .pods
            .iter()
            .filter(|p| !p.terminating && p.workload().as_ref() == Some(id))
        {
            if p.revision.as_deref() != Some(expected.as_str()) {
                wrong.push(format!(
                    "{} ({})",
                    p.key(),
                    p.revision.as_deref().unwrap_or("no sidecar")
                ));
            }
        }
    }
    if !wrong.is_empty() {
        bail!(
            "rolled out, but these pods do not run the expected revision: {}\nfix: check the injector (meshrev's logs and /metrics), then run meshrev upgrade rollout again",
            wrong.join(", ")
        );
    }
    let left = after
        .workload_states()
        .iter()
        .filter(|w| w.needs_upgrade())
        .count();
    println!(
        "Rolled out {} workload(s); {left} still need upgrade{}.",
        restarted.len(),
        if args.namespace.is_some() || args.workload.is_some() {
            " in this scope"
        } else {
            ""
        }
    );
    if left == 0 && args.workload.is_none() && args.namespace.is_none() {
        println!("Next: meshrev upgrade unpublish");
    }
    Ok(())
}

/// Restarts `targets` in batches of `max_in_flight`, waiting for each batch to complete
/// before the next (and for the last one with `wait`). Before each restart, waits until a
/// dry-run pod of the workload gets the expected revision from the injector, so a label or
/// tag change the injector has not seen yet cannot give new pods the old sidecar.
/// Returns the restarted workloads with their expected revision.
pub async fn restart_workloads(
    client: &Client,
    targets: Vec<WorkloadState>,
    opts: &RolloutOptions,
) -> anyhow::Result<Vec<(super::view::WorkloadId, String)>> {
    let mut restarted = Vec::new();
    let batches: Vec<&[WorkloadState]> = targets.chunks(opts.max_in_flight.max(1)).collect();
    let n = batches.len();
    let total = targets.len();
    let mut done = 0usize;
    for (i, batch) in batches.into_iter().enumerate() {
        if n > 1 {
            println!("batch {}/{n}:", i + 1);
        }
        let mut in_flight = Vec::new();
        for w in batch {
            let Some(id) = w.id.clone() else { continue };
            let Some(expected) = w.target.revision().map(str::to_string) else {
                continue;
            };
            if w.paused {
                println!(
                    "  skipped {}: the Deployment is paused (kubectl rollout resume, then rerun)",
                    w.label()
                );
                continue;
            }
            if w.on_delete {
                println!(
                    "  skipped {}: updateStrategy OnDelete; delete its pods by hand to upgrade them",
                    w.label()
                );
                continue;
            }
            wait_for_injector(client, &id, &expected).await?;
            cluster::restart(client, &id).await?;
            println!(
                "  [{}/{total}] restarted {}: {} → {expected}",
                done + in_flight.len() + 1,
                w.label(),
                describe_revisions(w)
            );
            in_flight.push((id, expected));
        }
        let last = i + 1 == n;
        if !in_flight.is_empty() && (!last || opts.wait) {
            wait_batch(client, &in_flight, opts.timeout).await?;
        }
        done += in_flight.len();
        restarted.extend(in_flight);
    }
    Ok(restarted)
}

async fn wait_for_injector(
    client: &Client,
    id: &super::view::WorkloadId,
    expected: &str,
) -> anyhow::Result<()> {
    let template = cluster::template(client, id).await?;
    let deadline = Instant::now() + INJECTOR_DEADLINE;
    loop {
        let last = match cluster::probe_injection(client, &id.namespace, &template).await {
            Ok(Some(r)) if r == expected => return Ok(()),
            Ok(Some(r)) => format!("it injects {r}"),
            Ok(None) => "it does not inject the pod".to_string(),
            Err(e) => format!("the dry-run pod was refused: {}", cluster::api_error(&e)),
        };
        if Instant::now() >= deadline {
            bail!(
                "not restarting {id}: new pods would not get revision {expected}: {last} (checked with a dry-run pod for {}s)\nfix: check that meshrev is running and its MutatingWebhookConfiguration is installed, and meshrev upgrade status",
                INJECTOR_DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_batch(
    client: &Client,
    batch: &[(super::view::WorkloadId, String)],
    timeout: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut pending: Vec<&super::view::WorkloadId> = batch.iter().map(|(id, _)| id).collect();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in pending {
            match cluster::progress(client, id).await? {
                Progress::Done => println!(
                    "      {id}: rolled out ({:.1}s)",
                    start.elapsed().as_secs_f64()
                ),
                Progress::Failed(why) => bail!("rollout of {id} failed: {why}"),
                Progress::Waiting(why) => {
                    let key = id.to_string();
                    if last.get(&key) != Some(&why) {
                        println!("      {id}: {why}");
                        last.insert(key, why);
                    }
                    still.push(id);
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if start.elapsed() >= timeout {
            bail!(
                "timed out after {}s waiting for: {}\nfix: see kubectl rollout status and the pods' events; rerun meshrev upgrade rollout to continue",
                timeout.as_secs(),
                pending
                    .iter()
                    .map(|id| format!(
                        "{id} ({})",
                        last.get(&id.to_string()).cloned().unwrap_or_default()
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// `unpublish [--revision R] [--force]`.
pub async fn unpublish(client: &Client, revision: Option<&str>, force: bool) -> anyhow::Result<()> {
    let needs = Needs {
        workloads: false,
        ..Needs::all()
    };
    let view = cluster::load_view(client, &needs).await?;
    let plan = guards::unpublish(&view, revision, force)?;
    let stable = view.stable().unwrap_or_default();
    if plan.revisions.is_empty() {
        println!("Nothing to unpublish: no revision older than stable ({stable}) is left.");
        return Ok(());
    }
    for w in &plan.warnings {
        println!("warning: {w}");
    }
    for r in &plan.revisions {
        let forced = force && view.pods_on(r).next().is_some();
        if cluster::delete_revision(client, r, forced).await? {
            println!("MeshRevision {r} deleted");
        } else {
            println!("MeshRevision {r}: deleted already");
        }
    }
    println!("The upgrade is complete: {stable} is the only revision in use.");
    Ok(())
}

/// `revoke`.
pub async fn revoke(client: &Client) -> anyhow::Result<()> {
    let view = cluster::load_view(client, &Needs::all()).await?;
    let Some(plan) = guards::revoke(&view)? else {
        println!("Nothing to revoke: there is no canary.");
        return Ok(());
    };
    if plan.delete_tag {
        cluster::delete_tag(client, TAG_CANARY).await?;
        println!("RevisionTag canary deleted");
    }
    if cluster::delete_revision(client, &plan.revision, false).await? {
        println!("MeshRevision {} deleted", plan.revision);
    }
    println!(
        "Canary {} revoked; stable stays {}. To try again: meshrev upgrade canary --revision R --version V",
        plan.revision,
        view.stable().unwrap_or_default()
    );
    Ok(())
}
