//! `meshrev adopt`'s Kubernetes calls: reading an installed Istio into a
//! [`plan::Installation`], applying the plan, parking and unparking webhook configurations,
//! and asking meshrev's webhook directly what it injects.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhook, MutatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::plan::{self, Installation, InstalledRevision, InstalledTag, Istiod};
use crate::config::{MeshRevision, RevisionTag};
use crate::core::{LABEL_INJECTION, LABEL_REV};

/// Field manager of everything adopt writes.
pub(crate) const FIELD_MANAGER: &str = "meshrev";
/// Annotation on a parked webhook configuration: JSON object, webhook name → its
/// `namespaceSelector` before parking (`null` when it had none). `--release`/`--takeover`
/// restore exactly these.
pub(crate) const ANNOTATION_PARKED: &str = "meshrev.io/parked-namespace-selectors";
/// The label key of the two contradictory expressions that park a webhook (`Exists` and
/// `DoesNotExist` on one key: no namespace can match both).
pub(crate) const PARK_KEY: &str = "meshrev.io/parked";
/// Suffix of the names of Istio's sidecar-injector webhooks (`rev.namespace.`, `object.`, …).
const ISTIO_WEBHOOK_SUFFIX: &str = "sidecar-injector.istio.io";
const INJECTOR_CM: &str = "istio-sidecar-injector";
const TAG_MWC: &str = "istio-revision-tag-";

/// Reads everything adopt plans from.
pub(crate) async fn read_installation(client: &Client) -> anyhow::Result<Installation> {
    let with_rev = ListParams::default().labels(LABEL_REV);
    let cms: Api<ConfigMap> = Api::all(client.clone());
    let cms = cms
        .list(&with_rev)
        .await
        .context("listing ConfigMaps labelled istio.io/rev (needs list configmaps)")?
        .items;
    let deploys: Api<Deployment> = Api::all(client.clone());
    let deploys = deploys
        .list(&ListParams::default().labels(&format!("app=istiod,{LABEL_REV}")))
        .await
        .context("listing istiod Deployments (needs list deployments)")?
        .items;
    let services: Api<Service> = Api::all(client.clone());
    let services = services
        .list(&ListParams::default().labels(&format!("app=istiod,{LABEL_REV},!istio.io/tag")))
        .await
        .context("listing istiod Services (needs list services)")?
        .items;
    let mut inst = Installation::default();
    for cm in &cms {
        let name = cm.name_any();
        let rev_suffix = match name.strip_prefix(INJECTOR_CM) {
            Some("") => "",
            Some(r) => match r.strip_prefix('-') {
                Some(r) => r,
                None => continue,
            },
            None => continue,
        };
        let ns = cm.namespace().unwrap_or_default();
        let data = cm.data.clone().unwrap_or_default();
        let values = data.get("values").cloned().unwrap_or_default();
        let revision = serde_json::from_str::<Value>(&values)
            .ok()
            .and_then(|v| v["revision"].as_str().map(str::to_string))
            .unwrap_or_else(|| rev_suffix.to_string());
        let mesh_name = if revision.is_empty() {
            "istio".to_string()
        } else {
            format!("istio-{revision}")
        };
        let mesh = cms
            .iter()
            .find(|c| c.name_any() == mesh_name && c.namespace().as_deref() == Some(&ns))
            .and_then(|c| c.data.as_ref()?.get("mesh").cloned());
        let rev_label = plan::revision_name(&revision);
        let deployment = deploys
            .iter()
            .find(|d| {
                d.namespace().as_deref() == Some(&ns)
                    && d.labels().get(LABEL_REV).map(String::as_str) == Some(rev_label)
            })
            .map(|d| Istiod {
                name: d.name_any(),
                namespace: ns.clone(),
                replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                available: d
                    .status
                    .as_ref()
                    .and_then(|s| s.available_replicas)
                    .unwrap_or(0),
            });
        let service = services
            .iter()
            .find(|s| {
                s.namespace().as_deref() == Some(&ns)
                    && s.labels().get(LABEL_REV).map(String::as_str) == Some(rev_label)
            })
            .map(|s| s.name_any());
        inst.revisions.push(InstalledRevision {
            revision,
            namespace: ns,
            deployment,
            service,
            configmap: name,
            values,
            config: data.get("config").cloned().unwrap_or_default(),
            mesh,
        });
    }
    inst.revisions.sort_by(|a, b| a.revision.cmp(&b.revision));

    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    for m in mwcs
        .list(&ListParams::default())
        .await
        .context(
            "listing MutatingWebhookConfigurations (needs list mutatingwebhookconfigurations)",
        )?
        .items
    {
        let name = m.name_any();
        if !name.starts_with(TAG_MWC) {
            continue;
        }
        let labels = m.labels();
        let tag = labels
            .get("istio.io/tag")
            .cloned()
            .unwrap_or_else(|| name.trim_start_matches(TAG_MWC).to_string());
        let revision = labels
            .get(LABEL_REV)
            .cloned()
            .unwrap_or_else(|| plan::DEFAULT_REVISION.to_string());
        inst.tags.push(InstalledTag {
            tag,
            revision,
            webhook: name,
        });
    }
    inst.tags.sort_by(|a, b| a.tag.cmp(&b.tag));

    let nss: Api<Namespace> = Api::all(client.clone());
    for n in nss
        .list(&ListParams::default())
        .await
        .context("listing namespaces (needs list namespaces)")?
        .items
    {
        let labels: BTreeMap<String, String> = n
            .labels()
            .iter()
            .filter(|(k, _)| *k == LABEL_INJECTION || *k == LABEL_REV)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !labels.is_empty() {
            inst.namespaces.insert(n.name_any(), labels);
        }
    }
    let revs: Api<MeshRevision> = Api::all(client.clone());
    inst.existing_revisions = revs
        .list(&ListParams::default())
        .await
        .context("listing MeshRevisions (are meshrev's CRDs installed? meshrev crd | kubectl apply -f -)")?
        .items;
    let tags: Api<RevisionTag> = Api::all(client.clone());
    inst.existing_tags = tags
        .list(&ListParams::default())
        .await
        .context("listing RevisionTags")?
        .items;
    Ok(inst)
}

/// Server-side applies the plan's revisions, then its tags (a tag needs its revision).
pub(crate) async fn apply_plan(
    client: &Client,
    plan: &plan::Plan,
    force: bool,
    mut event: impl FnMut(String),
) -> anyhow::Result<()> {
    let mut pp = PatchParams::apply(FIELD_MANAGER);
    pp.force = force;
    let revs: Api<MeshRevision> = Api::all(client.clone());
    for r in plan
        .revisions
        .iter()
        .filter(|r| r.action != plan::Action::Unchanged)
    {
        let name = r.object.name_any();
        revs.patch(&name, &pp, &Patch::Apply(&r.object))
            .await
            .with_context(|| format!("applying MeshRevision {name}"))?;
        event(format!(
            "MeshRevision {name} applied (version {})",
            r.object.spec.version
        ));
    }
    let tags: Api<RevisionTag> = Api::all(client.clone());
    for t in plan
        .tags
        .iter()
        .filter(|t| t.action != plan::Action::Unchanged)
    {
        let name = t.object.name_any();
        tags.patch(&name, &pp, &Patch::Apply(&t.object))
            .await
            .with_context(|| format!("applying RevisionTag {name}"))?;
        event(format!(
            "RevisionTag {name} → {} applied",
            t.object.spec.revision
        ));
    }
    Ok(())
}

/// Istio's injector webhook configurations: every configuration with a webhook named
/// `…sidecar-injector.istio.io` (`istio-sidecar-injector[-<rev>]`, `istio-revision-tag-<tag>`).
pub(crate) async fn istio_injectors(
    client: &Client,
) -> anyhow::Result<Vec<MutatingWebhookConfiguration>> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mut out: Vec<_> = api
        .list(&ListParams::default())
        .await
        .context("listing MutatingWebhookConfigurations")?
        .items
        .into_iter()
        .filter(|m| {
            m.webhooks
                .iter()
                .flatten()
                .any(|w| w.name.ends_with(ISTIO_WEBHOOK_SUFFIX))
        })
        .collect();
    out.sort_by_key(ResourceExt::name_any);
    Ok(out)
}

/// Gets a webhook configuration by name.
pub(crate) async fn webhook_config(
    client: &Client,
    name: &str,
) -> anyhow::Result<Option<MutatingWebhookConfiguration>> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    api.get_opt(name)
        .await
        .with_context(|| format!("reading MutatingWebhookConfiguration {name}"))
}

/// Whether the configuration is parked by meshrev.
pub(crate) fn is_parked(m: &MutatingWebhookConfiguration) -> bool {
    m.annotations().contains_key(ANNOTATION_PARKED)
}

/// The parking expressions: `Exists` and `DoesNotExist` on one key, so no namespace matches.
fn park_expressions() -> [LabelSelectorRequirement; 2] {
    [
        LabelSelectorRequirement {
            key: PARK_KEY.into(),
            operator: "Exists".into(),
            values: None,
        },
        LabelSelectorRequirement {
            key: PARK_KEY.into(),
            operator: "DoesNotExist".into(),
            values: None,
        },
    ]
}

/// `m` parked: every webhook's `namespaceSelector` gains [`park_expressions`], the
/// originals are recorded in [`ANNOTATION_PARKED`]. Pure; `None` if already parked.
pub(crate) fn parked(m: &MutatingWebhookConfiguration) -> Option<MutatingWebhookConfiguration> {
    if is_parked(m) {
        return None;
    }
    let mut m = m.clone();
    let mut originals = serde_json::Map::new();
    for w in m.webhooks.iter_mut().flatten() {
        originals.insert(
            w.name.clone(),
            serde_json::to_value(&w.namespace_selector).unwrap_or(Value::Null),
        );
        let sel = w
            .namespace_selector
            .get_or_insert_with(LabelSelector::default);
        sel.match_expressions
            .get_or_insert_with(Vec::new)
            .extend(park_expressions());
    }
    m.annotations_mut().insert(
        ANNOTATION_PARKED.into(),
        Value::Object(originals).to_string(),
    );
    Some(m)
}

/// `m` unparked: each webhook's recorded `namespaceSelector` restored, the annotation
/// removed. Pure; `None` if not parked. Fails if the record is unreadable or names a webhook
/// the configuration no longer has (someone changed it meanwhile: restore by hand).
pub(crate) fn unparked(
    m: &MutatingWebhookConfiguration,
) -> anyhow::Result<Option<MutatingWebhookConfiguration>> {
    let Some(record) = m.annotations().get(ANNOTATION_PARKED) else {
        return Ok(None);
    };
    let name = m.name_any();
    let originals: serde_json::Map<String, Value> = serde_json::from_str(record)
        .with_context(|| format!("MutatingWebhookConfiguration {name}: annotation {ANNOTATION_PARKED} is not a JSON object; restore its namespaceSelectors by hand and remove the annotation"))?;
    let mut m = m.clone();
    for w in m.webhooks.iter_mut().flatten() {
        let Some(orig) = originals.get(&w.name) else {
            bail!(
                "MutatingWebhookConfiguration {name}: webhook {} has no recorded selector in {ANNOTATION_PARKED} (changed since it was parked); restore it by hand",
                w.name
            );
        };
        w.namespace_selector = serde_json::from_value(orig.clone()).with_context(|| {
            format!(
                "MutatingWebhookConfiguration {name}: the recorded selector of {}",
                w.name
            )
        })?;
    }
    m.annotations_mut().remove(ANNOTATION_PARKED);
    if m.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.is_empty())
    {
        m.metadata.annotations = None;
    }
    Ok(Some(m))
}

/// `m` with every webhook's `reinvocationPolicy` set to `policy`; `None` if it has it.
pub(crate) fn with_reinvocation(
    m: &MutatingWebhookConfiguration,
    policy: &str,
) -> Option<MutatingWebhookConfiguration> {
    let mut m = m.clone();
    let mut changed = false;
    for w in m.webhooks.iter_mut().flatten() {
        if w.reinvocation_policy.as_deref() != Some(policy) {
            w.reinvocation_policy = Some(policy.to_string());
            changed = true;
        }
    }
    changed.then_some(m)
}

/// The name of the match condition that keeps meshrev's webhooks off pods that already carry
/// a sidecar while both injectors' configurations are live (see the module docs of
/// [`super`]).
pub(crate) const GUARD_CONDITION: &str = "meshrev.io/adopt-not-yet-injected";
/// Its CEL expression: the pod, as the earlier webhooks left it, has no sidecar status.
const GUARD_EXPRESSION: &str = "!has(object.metadata.annotations) || !('sidecar.istio.io/status' in object.metadata.annotations)";

/// `m` with [`GUARD_CONDITION`] on every webhook (`on`) or on none; `None` if already so.
pub(crate) fn with_guard(
    m: &MutatingWebhookConfiguration,
    on: bool,
) -> Option<MutatingWebhookConfiguration> {
    let mut m = m.clone();
    let mut changed = false;
    for w in m.webhooks.iter_mut().flatten() {
        let conds = w.match_conditions.get_or_insert_with(Vec::new);
        let has = conds.iter().any(|c| c.name == GUARD_CONDITION);
        if on && !has {
            conds.push(MatchCondition {
                name: GUARD_CONDITION.into(),
                expression: GUARD_EXPRESSION.into(),
            });
            changed = true;
        } else if !on && has {
            conds.retain(|c| c.name != GUARD_CONDITION);
            changed = true;
        }
        if conds.is_empty() {
            w.match_conditions = None;
        }
    }
    changed.then_some(m)
}

/// Replaces a webhook configuration (optimistic concurrency on its resourceVersion).
pub(crate) async fn replace_webhook_config(
    client: &Client,
    m: &MutatingWebhookConfiguration,
) -> anyhow::Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let name = m.name_any();
    let pp = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    api.replace(&name, &pp, m).await.with_context(|| {
        format!("updating MutatingWebhookConfiguration {name} (changed meanwhile? run again)")
    })?;
    Ok(())
}

/// Whether every node's kubelet supports native sidecars (meshrev's `auto`, as its
/// controller decides it from the same nodes).
pub(crate) async fn nodes_support_native_sidecars(client: &Client) -> anyhow::Result<bool> {
    let nodes: Api<Node> = Api::all(client.clone());
    let full = nodes
        .list(&ListParams::default())
        .await
        .context("listing nodes (needs list nodes)")?;
    Ok(full.items.iter().all(|n| {
        crate::controller::node_supports_native_sidecars(
            n.status
                .as_ref()
                .and_then(|s| s.node_info.as_ref())
                .map(|i| i.kubelet_version.as_str()),
        )
    }))
}

/// Sends an AdmissionReview to the webhook `w` directly (its `clientConfig.url`, or its
/// Service through the API server's service proxy) and returns the pod with the returned
/// patch applied (`None`: admitted without a patch).
pub(crate) async fn ask_webhook(
    client: &Client,
    w: &MutatingWebhook,
    namespace: &str,
    pod: &Value,
) -> anyhow::Result<Option<Value>> {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "meshrev-adopt-check",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "meshrev-adopt"},
            "object": pod,
            "dryRun": true,
        }
    });
    let body = serde_json::to_vec(&review)?;
    let cc = &w.client_config;
    let reply: Vec<u8> = if let Some(url) = &cc.url {
        let ca = cc.ca_bundle.as_ref().map(|b| b.0.clone());
        super::https::post(url, ca.as_deref(), &body)
            .await
            .with_context(|| format!("POST {url} (webhook {})", w.name))?
    } else if let Some(svc) = &cc.service {
        let path = format!(
            "/api/v1/namespaces/{}/services/https:{}:{}/proxy{}",
            svc.namespace,
            svc.name,
            svc.port.unwrap_or(443),
            svc.path.as_deref().unwrap_or("/")
        );
        let req = http::Request::post(&path)
            .header("content-type", "application/json")
            .body(body)?;
        client
            .request_text(req)
            .await
            .with_context(|| format!("POST {path} (webhook {} through the API server's service proxy; needs create services/proxy)", w.name))?
            .into_bytes()
    } else {
        bail!(
            "webhook {} has neither clientConfig.url nor clientConfig.service",
            w.name
        );
    };
    let reply: Value = serde_json::from_slice(&reply).context("the webhook's reply is not JSON")?;
    let resp = &reply["response"];
    if resp["allowed"] != true {
        bail!(
            "webhook {} refused the check pod: {}",
            w.name,
            resp["status"]["message"]
        );
    }
    let Some(patch) = resp["patch"].as_str() else {
        return Ok(None);
    };
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .context("the webhook's patch is not base64")?;
    let ops: json_patch::Patch =
        serde_json::from_slice(&bytes).context("the webhook's patch is not a JSON Patch")?;
    let mut out = pod.clone();
    json_patch::patch(&mut out, &ops).context("the webhook's patch does not apply")?;
    Ok(Some(out))
}

/// A server-side dry-run pod create: what the API server's webhooks make of `pod` now.
pub(crate) async fn dry_run_create(
    client: &Client,
    namespace: &str,
    pod: &Value,
) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pp = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    let pod: Pod = serde_json::from_value(pod.clone())?;
    pods.create(&pp, &pod)
        .await
        .with_context(|| format!("dry-run creating a check pod in namespace {namespace}"))
}
