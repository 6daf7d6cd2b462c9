//! `meshrev adopt`: take an existing Istio installation over without relabelling anything or
//! changing a sidecar.
//!
//! - `meshrev adopt [--dry-run]`: read the installed revisions, tags and namespace labels,
//!   print the plan ([`plan`]): every object it will create, every difference it cannot
//!   express. Nothing is written.
//! - `--yes`: apply it (server-side apply, field manager `meshrev`); refused while the plan
//!   lists differences, unless `--force`. meshrev's own injector webhook configuration is
//!   *parked* meanwhile (see below), so Istio alone keeps injecting.
//! - `--takeover`: check that meshrev's webhook serves the adopted table, then switch
//!   injection from Istio's webhooks to meshrev's. `--release` switches it back.
//!
//! Layers: [`plan`] is pure (installed objects in, objects and differences out); [`cluster`]
//! reads and writes; this module sequences the steps and [`cli`] prints.
//!
//! # Parking, and why the switch never leaves a pod uninjected or doubly injected
//!
//! A webhook configuration is *parked* by adding, to every webhook's `namespaceSelector`,
//! the two expressions `meshrev.io/parked Exists` and `meshrev.io/parked DoesNotExist`: no
//! namespace satisfies both, so the API server calls none of its webhooks. The selectors it
//! had are recorded in the annotation `meshrev.io/parked-namespace-selectors` and restored
//! from it exactly; nothing is deleted. (An Istio upgrade that re-applies Istio's webhook
//! configurations unparks them: take over again afterwards.)
//!
//! While both injectors' configurations are live, meshrev's webhooks carry the *guard*, the
//! match condition `meshrev.io/adopt-not-yet-injected`:
//! `!('sidecar.istio.io/status' in object.metadata.annotations)`. The API server evaluates
//! match conditions against the pod as the earlier webhooks left it.
//!
//! `--takeover` writes three times, in this order: (1) meshrev's configuration unparked,
//! with the guard; (2) each of Istio's parked; (3) the guard removed. `--release`: (1) the
//! guard added; (2) Istio's unparked; (3) meshrev's parked, the guard removed.
//!
//! - **Never neither.** Every API server sees webhook configurations through one watch, in
//!   the order they were written (resourceVersion order), so none can see a later write
//!   before an earlier one: whenever Istio's webhooks stop matching a pod, meshrev's match it
//!   already, and whenever meshrev's stop, Istio's match again. meshrev's selectors are
//!   Istio's own four (`manifests/mutatingwebhook.yaml`), so every pod Istio's webhooks
//!   matched, meshrev's match. The guard excludes only pods that already carry a sidecar.
//! - **Never both.** While both are live (between (1) and (2) of either command), the API
//!   server calls mutating webhook configurations in name order: Istio's (`istio-…`) first.
//!   A pod Istio injects then carries `sidecar.istio.io/status`, and the guard keeps
//!   meshrev's webhooks from matching it. A pod Istio does not match reaches meshrev as it
//!   came. So each pod is injected by exactly one of them.
//! - **The same sidecar.** The takeover first checks that meshrev's webhook answers each
//!   adopted revision with exactly what meshrev's injector computes locally for it; the plan
//!   checked that the adopted table routes each labelled namespace as Istio does; the e2e
//!   test (`tests/e2e_adopt.rs`) that the pods are the ones Istio's injector gave. meshrev's
//!   webhooks take Istio's `reinvocationPolicy` (`Never` by default): with `IfNeeded`, the
//!   API server's re-run of its own admission plugins after an injection (the ServiceAccount
//!   plugin mounts its token into the new containers) is followed by a re-injection that
//!   rebuilds the sidecar without that mount, which Istio's sidecars carry.
//!
//! What the guard costs: while it is on (between (1) and (3), a few API writes), a pod
//! created with a sidecar already in it (e.g. `istioctl kube-inject` output) is not
//! re-injected by meshrev; Istio re-injects it until its webhooks are parked, and after
//! that, for the moment until (3), it keeps the sidecar it came with. Match conditions need
//! Kubernetes 1.28 or later (GA in 1.30).

pub(crate) mod cli;
pub(crate) mod cluster;
mod https;
pub(crate) mod plan;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::core::LABEL_REV;
use crate::table::{Table, TableBuilder};

/// The name of meshrev's injector webhook configuration (`manifests/mutatingwebhook.yaml`).
pub(crate) const MESHREV_WEBHOOK: &str = "meshrev-sidecar-injector";
/// The namespace named in the check reviews sent straight to meshrev's webhook: one that
/// need not exist, so only the pod's `istio.io/rev` label routes it.
const CHECK_NAMESPACE: &str = "meshrev-adopt-check";
/// How long `--takeover` waits for meshrev's webhook to serve the adopted table (its
/// watches trail the API server).
const CHECK_WITHIN: Duration = Duration::from_secs(30);

/// The check pod of a revision: one plain container, labelled for the revision.
pub(crate) fn check_pod(namespace: &str, revision: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("meshrev-adopt-check-{revision}"),
            "namespace": namespace,
            "labels": {LABEL_REV: revision, "app": "meshrev-adopt-check"},
        },
        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10", "resources": {}}]}
    })
}

/// The table the plan's objects make.
pub(crate) fn plan_table(plan: &plan::Plan, native: bool) -> anyhow::Result<Table> {
    let revisions: Vec<_> = plan.revisions.iter().map(|r| r.object.clone()).collect();
    let tags: Vec<_> = plan.tags.iter().map(|t| t.object.clone()).collect();
    let (mut table, problems) =
        TableBuilder::new().build_lenient(&revisions, &tags, HashMap::new());
    if let Some(p) = problems.first() {
        bail!("the adopted objects do not make a table: {p}");
    }
    table.nodes_support_native_sidecars = Some(native);
    Ok(table)
}

/// What meshrev's injector makes of `pod` in `namespace` under `table` (`None`: skipped).
pub(crate) fn expected(
    table: &Table,
    namespace: &str,
    pod: &Value,
) -> anyhow::Result<Option<Value>> {
    let text = pod.to_string();
    let view: crate::injector::pod::Pod = serde_json::from_str(&text)?;
    let mut patch = Vec::new();
    match crate::router::inject(table, namespace, &view, &mut patch, || Some(pod.clone())) {
        crate::router::Outcome::Injected { .. } => {
            let ops: json_patch::Patch = serde_json::from_slice(&patch)
                .context("the injector must produce a valid patch")?;
            let mut out = pod.clone();
            json_patch::patch(&mut out, &ops)?;
            Ok(Some(out))
        }
        crate::router::Outcome::Skipped { reason, .. } => {
            bail!("meshrev's injector skips the check pod ({reason:?})")
        }
        crate::router::Outcome::Denied(e) => bail!(
            "meshrev's injector refuses the check pod: {}",
            e.into_message()
        ),
    }
}

/// What happened, for the CLI to print.
pub(crate) type Events<'a> = &'a mut dyn FnMut(String);

/// Reads the cluster and plans.
pub(crate) async fn plan(client: &Client) -> anyhow::Result<(plan::Installation, plan::Plan)> {
    let inst = cluster::read_installation(client).await?;
    if inst.revisions.is_empty() {
        bail!(
            "no Istio revision found: no ConfigMap istio-sidecar-injector[-<rev>] labelled istio.io/rev in any namespace. Install Istio first (istioctl install --revision R), or check the kubeconfig's cluster"
        );
    }
    let p = plan::plan(&inst);
    Ok((inst, p))
}

/// `adopt --yes`: applies the plan, then parks meshrev's webhook configuration while Istio
/// still injects (so the two never both inject before `--takeover`).
pub(crate) async fn apply(
    client: &Client,
    plan: &plan::Plan,
    force: bool,
    webhook: &str,
    ev: Events<'_>,
) -> anyhow::Result<()> {
    if !plan.differences.is_empty() && !force {
        bail!(
            "the plan lists {} difference(s) meshrev cannot express (above); applying it would change what some pods get. Fix: resolve them in the Istio installation, or pass --force to adopt anyway",
            plan.differences.len()
        );
    }
    cluster::apply_plan(client, plan, force, &mut *ev).await?;
    let istio = cluster::istio_injectors(client).await?;
    let istio_active = istio.iter().any(|m| !cluster::is_parked(m));
    if let Some(mut m) = cluster::webhook_config(client, webhook).await? {
        let mut what = Vec::new();
        if let Some(policy) = &plan.reinvocation_policy
            && let Some(r) = cluster::with_reinvocation(&m, policy)
        {
            m = r;
            what.push(format!(
                "reinvocationPolicy {policy}, as Istio's injector webhooks"
            ));
        }
        if istio_active && let Some(p) = cluster::parked(&m) {
            m = p;
            what.push(
                "parked: Istio's injector keeps injecting until meshrev adopt --takeover".into(),
            );
        }
        if !what.is_empty() {
            cluster::replace_webhook_config(client, &m).await?;
            ev(format!(
                "MutatingWebhookConfiguration {webhook}: {}",
                what.join("; ")
            ));
        }
    }
    Ok(())
}

/// Checks that meshrev's webhook answers each adopted revision's check pod with exactly what
/// meshrev's injector computes from the adopted objects, retrying until [`CHECK_WITHIN`].
async fn check_meshrev_serves(
    client: &Client,
    plan: &plan::Plan,
    hooks: &[k8s_openapi::api::admissionregistration::v1::MutatingWebhook],
    ev: Events<'_>,
) -> anyhow::Result<()> {
    let native = cluster::nodes_support_native_sidecars(client).await?;
    let table = plan_table(plan, native)?;
    let hook = hooks
        .first()
        .context("meshrev's webhook configuration has no webhooks")?;
    for r in &plan.revisions {
        let rev = r.object.name_any();
        let pod = check_pod(CHECK_NAMESPACE, &rev);
        let want = expected(&table, CHECK_NAMESPACE, &pod)?;
        let deadline = Instant::now() + CHECK_WITHIN;
        loop {
            let got = cluster::ask_webhook(client, hook, CHECK_NAMESPACE, &pod).await;
            match got {
                Ok(g) if g == want => break,
                other if Instant::now() >= deadline => {
                    let why = match other {
                        Ok(None) => "it left the pod uninjected".to_string(),
                        Ok(Some(g)) => format!(
                            "its sidecar differs from the adopted revision's ({})",
                            first_difference(want.as_ref().unwrap_or(&Value::Null), &g)
                        ),
                        Err(e) => format!("{e:#}"),
                    };
                    bail!(
                        "meshrev's webhook ({}) does not serve revision {rev} as adopted within {}s: {why}. Fix: check that meshrev serve runs against this cluster and is ready (its table follows the MeshRevision objects), then run --takeover again",
                        hook.name,
                        CHECK_WITHIN.as_secs()
                    );
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        ev(format!(
            "checked: meshrev's webhook injects revision {rev} as adopted ({})",
            r.image
        ));
    }
    Ok(())
}

/// The first JSON path where two values differ.
pub(crate) fn first_difference(a: &Value, b: &Value) -> String {
    fn walk(a: &Value, b: &Value, path: &mut String) -> bool {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    if walk(
                        &x.get(k).cloned().unwrap_or(Value::Null),
                        &y.get(k).cloned().unwrap_or(Value::Null),
                        path,
                    ) {
                        return true;
                    }
                    path.truncate(len);
                }
                false
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (i, (p, q)) in x.iter().zip(y).enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    if walk(p, q, path) {
                        return true;
                    }
                    path.truncate(len);
                }
                false
            }
            _ => a != b,
        }
    }
    let mut path = String::new();
    if walk(a, b, &mut path) {
        if path.is_empty() {
            "the whole pod".into()
        } else {
            path
        }
    } else {
        "none".into()
    }
}

/// After a switch: a server-side dry-run pod per revision must come back injected with
/// exactly one `istio-proxy` of that revision.
async fn check_dry_run(
    client: &Client,
    plan: &plan::Plan,
    namespace: &str,
    ev: Events<'_>,
) -> anyhow::Result<()> {
    for r in &plan.revisions {
        let rev = r.object.name_any();
        let pod = check_pod(namespace, &rev);
        let mut pod = pod;
        pod["metadata"]["name"] = Value::Null;
        pod["metadata"]["generateName"] = json!("meshrev-adopt-check-");
        let created = cluster::dry_run_create(client, namespace, &pod).await?;
        let v = serde_json::to_value(&created)?;
        let proxies = ["containers", "initContainers"]
            .iter()
            .flat_map(|l| v["spec"][l].as_array().cloned().unwrap_or_default())
            .filter(|c| c["name"] == "istio-proxy")
            .count();
        let got = v["metadata"]["annotations"][crate::core::ANNOTATION_REV].as_str();
        if proxies != 1 || got != Some(rev.as_str()) {
            bail!(
                "a dry-run pod labelled istio.io/rev={rev} in namespace {namespace} came back with {proxies} istio-proxy container(s) and revision {got:?}"
            );
        }
        ev(format!(
            "checked: a dry-run pod for {rev} gets one {rev} sidecar"
        ));
    }
    Ok(())
}

/// "Never both" rests on the API server calling mutating webhook configurations in name
/// order, Istio's before meshrev's (see the module docs): refuses a meshrev configuration
/// whose name sorts before one of Istio's (a Helm release named `a-…`, say), naming both.
fn called_after_istio(
    meshrev: &str,
    istio: impl IntoIterator<Item = String>,
) -> anyhow::Result<()> {
    let mut later: Vec<String> = istio.into_iter().filter(|i| i.as_str() > meshrev).collect();
    if later.is_empty() {
        return Ok(());
    }
    later.sort();
    bail!(
        "MutatingWebhookConfiguration {meshrev} sorts before Istio's {}: the API server would call meshrev's webhook first, and a pod could be injected by both while they are switched. Fix: install meshrev's webhook configuration under a name that sorts after Istio's (the default meshrev-sidecar-injector does; with Helm, a release name or fullnameOverride after \"istio-\"), and pass it with --webhook",
        later.join(", ")
    )
}

/// `adopt --takeover`.
pub(crate) async fn takeover(
    client: &Client,
    plan: &plan::Plan,
    webhook: &str,
    check_namespace: &str,
    ev: Events<'_>,
) -> anyhow::Result<()> {
    if plan.writes() > 0 {
        bail!(
            "{} adopted object(s) are not in the cluster as planned (see the plan above). Fix: meshrev adopt --yes first",
            plan.writes()
        );
    }
    let meshrev = cluster::webhook_config(client, webhook)
        .await?
        .with_context(|| format!("MutatingWebhookConfiguration {webhook} not found. Fix: install meshrev's webhook (kubectl apply -k manifests/; it may stay parked: adopt --yes parks it), or name yours with --webhook"))?;
    let istio = cluster::istio_injectors(client).await?;
    called_after_istio(webhook, istio.iter().map(|m| m.name_any()))?;
    let hooks = meshrev.webhooks.clone().unwrap_or_default();
    check_meshrev_serves(client, plan, &hooks, ev).await?;
    // (1) meshrev's webhook matches, guarded; (2) Istio's stop; (3) the guard goes: see
    // the module docs. Its reinvocationPolicy is Istio's (adopt --yes set it; set again in
    // case the configuration was re-applied since).
    let mut m = meshrev;
    if let Some(policy) = &plan.reinvocation_policy {
        m = cluster::with_reinvocation(&m, policy).unwrap_or(m);
    }
    m = cluster::with_guard(&m, true).unwrap_or(m);
    m = cluster::unparked(&m)?.unwrap_or(m);
    cluster::replace_webhook_config(client, &m).await?;
    ev(format!(
        "[1/3] MutatingWebhookConfiguration {webhook} matches, except pods that already carry a sidecar (condition {})",
        cluster::GUARD_CONDITION
    ));
    let mut parked = Vec::new();
    for m in &istio {
        if let Some(p) = cluster::parked(m) {
            cluster::replace_webhook_config(client, &p).await?;
            parked.push(m.name_any());
        }
    }
    ev(format!(
        "[2/3] Istio's injector webhooks parked (selectors recorded in {}): {}",
        cluster::ANNOTATION_PARKED,
        if parked.is_empty() {
            "none left to park".to_string()
        } else {
            parked.join(", ")
        }
    ));
    set_guard(client, webhook, false).await?;
    ev(format!(
        "[3/3] MutatingWebhookConfiguration {webhook}: condition {} removed, meshrev injects",
        cluster::GUARD_CONDITION
    ));
    if let Err(e) = check_dry_run(client, plan, check_namespace, ev).await {
        ev(format!(
            "the check after the switch failed ({e:#}); handing injection back to Istio"
        ));
        release(client, plan, webhook, check_namespace, ev, false).await?;
        bail!("takeover undone: {e:#}");
    }
    Ok(())
}

/// Adds or removes [`cluster::GUARD_CONDITION`] on meshrev's webhook configuration.
async fn set_guard(client: &Client, webhook: &str, on: bool) -> anyhow::Result<()> {
    let m = cluster::webhook_config(client, webhook)
        .await?
        .with_context(|| format!("MutatingWebhookConfiguration {webhook} disappeared meanwhile"))?;
    if let Some(g) = cluster::with_guard(&m, on) {
        cluster::replace_webhook_config(client, &g).await?;
    }
    Ok(())
}

/// `adopt --release` (and the undo of a failed takeover): (1) meshrev's webhooks guarded,
/// (2) Istio's unparked, (3) meshrev's parked and unguarded.
pub(crate) async fn release(
    client: &Client,
    plan: &plan::Plan,
    webhook: &str,
    check_namespace: &str,
    ev: Events<'_>,
    check: bool,
) -> anyhow::Result<()> {
    let meshrev = cluster::webhook_config(client, webhook).await?;
    let istio = cluster::istio_injectors(client).await?;
    if meshrev.is_some() {
        called_after_istio(webhook, istio.iter().map(|m| m.name_any()))?;
    }
    if let Some(m) = &meshrev
        && !cluster::is_parked(m)
    {
        set_guard(client, webhook, true).await?;
        ev(format!(
            "[1/3] MutatingWebhookConfiguration {webhook}: pods that already carry a sidecar excluded (condition {})",
            cluster::GUARD_CONDITION
        ));
    } else {
        ev(format!(
            "[1/3] MutatingWebhookConfiguration {webhook} parked or absent already"
        ));
    }
    let mut restored = Vec::new();
    for m in &istio {
        if let Some(u) = cluster::unparked(m)? {
            cluster::replace_webhook_config(client, &u).await?;
            restored.push(m.name_any());
        }
    }
    ev(format!(
        "[2/3] Istio's injector webhooks restored: {}",
        if restored.is_empty() {
            "none were parked".to_string()
        } else {
            restored.join(", ")
        }
    ));
    match cluster::webhook_config(client, webhook).await? {
        Some(m) => {
            let mut p = cluster::parked(&m).unwrap_or_else(|| m.clone());
            p = cluster::with_guard(&p, false).unwrap_or(p);
            if p != m {
                cluster::replace_webhook_config(client, &p).await?;
            }
            ev(format!(
                "[3/3] MutatingWebhookConfiguration {webhook} parked: Istio injects"
            ));
        }
        None => ev(format!(
            "[3/3] MutatingWebhookConfiguration {webhook} not found; nothing to park"
        )),
    }
    if check {
        check_dry_run(client, plan, check_namespace, ev).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{MESHREV_WEBHOOK, called_after_istio};

    #[test]
    fn meshrevs_webhook_must_be_called_after_istios() {
        let istio = || {
            [
                "istio-revision-tag-default",
                "istio-sidecar-injector-1-30-3",
            ]
            .map(String::from)
        };
        assert!(called_after_istio(MESHREV_WEBHOOK, istio()).is_ok());
        let e = called_after_istio("agent-sidecar-injector", istio())
            .expect_err("sorts before istio-…")
            .to_string();
        assert!(
            e.contains(
                "sorts before Istio's istio-revision-tag-default, istio-sidecar-injector-1-30-3"
            ),
            "{e}"
        );
        assert!(e.contains("--webhook"), "{e}");
    }
}
