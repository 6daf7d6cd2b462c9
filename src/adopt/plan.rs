//! The pure part of `meshrev adopt`: an installed Istio (as plain data read by
//! [`super::cluster`]) → the `MeshRevision`/`RevisionTag` objects that reproduce its
//! injection, and every difference meshrev cannot express. No Kubernetes client, no I/O.
//!
//! What is read, per revision (Istio's names; `<rev>` is empty for the default revision):
//! - the `istio-sidecar-injector[-<rev>]` ConfigMap: `values` (JSON: hub, tag, proxy image,
//!   resources, log levels, … → the `MeshRevision` fields that model them; every other value
//!   that differs from Istio's default is a difference, named by its JSON path) and `config`
//!   (the injection templates: each must be one of Istio 1.22–1.30's own, by content);
//! - the `istio[-<rev>]` ConfigMap's `mesh` (`defaultConfig.discoveryAddress`,
//!   `defaultConfig.holdApplicationUntilProxyStarts`);
//! - the istiod Deployment and Service labelled `istio.io/rev`.
//!
//! Tags come from the `istio-revision-tag-<tag>` webhooks. Istio's `default` tag (what
//! `istio-injection=enabled` and `sidecar.istio.io/inject=true` select) becomes meshrev's
//! `stable` (meshrev's name for that role) and also a tag `default` (for namespaces labelled
//! `istio.io/rev=default`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::config::{
    ControlPlaneRef, MeshRevision, MeshRevisionSpec, ProxyResources, RevisionTag, RevisionTagSpec,
};
use crate::core::{INJECTION_ENABLED, LABEL_INJECTION, LABEL_REV, TAG_STABLE};

/// Istio's name for the tag behind `istio-injection=enabled`.
pub(crate) const ISTIO_DEFAULT_TAG: &str = "default";
/// The `MeshRevision` name of Istio's revisionless ("default") installation: the value Istio
/// writes into `istio.io/rev` for it.
pub(crate) const DEFAULT_REVISION: &str = "default";

/// One installed Istio control-plane revision, as read from the cluster.
#[derive(Clone, Debug, Default)]
pub(crate) struct InstalledRevision {
    /// Istio's revision name (`values.revision`); empty for the default revision.
    pub(crate) revision: String,
    /// Namespace of istiod and its ConfigMaps.
    pub(crate) namespace: String,
    /// The istiod Deployment labelled `istio.io/rev` (`None`: not found).
    pub(crate) deployment: Option<Istiod>,
    /// The istiod Service's name, when found.
    pub(crate) service: Option<String>,
    /// The injector ConfigMap's name.
    pub(crate) configmap: String,
    /// Its `values` (JSON text).
    pub(crate) values: String,
    /// Its `config` (YAML text: the templates and policy).
    pub(crate) config: String,
    /// The mesh config (`istio[-<rev>]` ConfigMap's `mesh`), when found.
    pub(crate) mesh: Option<String>,
}

/// An istiod Deployment.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Istiod {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) replicas: i32,
    pub(crate) available: i32,
}

/// An Istio revision tag (`istio-revision-tag-<tag>` webhook configuration).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct InstalledTag {
    pub(crate) tag: String,
    /// The revision its webhooks send to (label `istio.io/rev`; `default` for revisionless).
    pub(crate) revision: String,
    pub(crate) webhook: String,
}

/// Everything adopt reads.
#[derive(Clone, Debug, Default)]
pub(crate) struct Installation {
    pub(crate) revisions: Vec<InstalledRevision>,
    pub(crate) tags: Vec<InstalledTag>,
    /// Namespaces that carry `istio-injection` or `istio.io/rev`, with those labels.
    pub(crate) namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// meshrev objects already in the cluster.
    pub(crate) existing_revisions: Vec<MeshRevision>,
    pub(crate) existing_tags: Vec<RevisionTag>,
}

/// Something about the installation that the adopted objects would not reproduce.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Difference {
    /// The revision (meshrev's name) or object it concerns.
    pub(crate) subject: String,
    /// Where: a JSON path in the injector ConfigMap (`values.global.proxy.tracer`,
    /// `config.templates.sidecar`), or an object.
    pub(crate) path: String,
    pub(crate) what: String,
}

/// What happens to one meshrev object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Create,
    /// Exists with the same spec.
    Unchanged,
    /// Exists with another spec: applying overwrites it (a difference unless `--force`).
    Overwrite,
}

/// A revision to adopt.
#[derive(Clone, Debug)]
pub(crate) struct AdoptedRevision {
    pub(crate) object: MeshRevision,
    pub(crate) action: Action,
    /// Where it came from.
    pub(crate) source: InstalledRevision,
    /// The sidecar image meshrev will inject for it.
    pub(crate) image: String,
    /// The Istio release whose templates the ConfigMap holds, when recognised.
    pub(crate) templates_of: Option<String>,
}

/// A tag to adopt.
#[derive(Clone, Debug)]
pub(crate) struct AdoptedTag {
    pub(crate) object: RevisionTag,
    pub(crate) action: Action,
    /// Why it exists (which Istio tag or install it reproduces).
    pub(crate) why: String,
}

/// Which revision a labelled namespace gets, from Istio and from the adopted table.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NamespaceRoute {
    pub(crate) name: String,
    /// `istio-injection=enabled`, `istio.io/rev=canary`, …
    pub(crate) label: String,
    /// The revision Istio's webhooks send its pods to (`None`: not injected).
    pub(crate) istio: Option<String>,
    /// The revision meshrev's adopted table sends them to.
    pub(crate) meshrev: Option<String>,
}

/// The adoption plan. A snapshot the caller owns.
#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    pub(crate) revisions: Vec<AdoptedRevision>,
    pub(crate) tags: Vec<AdoptedTag>,
    pub(crate) namespaces: Vec<NamespaceRoute>,
    pub(crate) differences: Vec<Difference>,
    /// Istio's `sidecarInjectorWebhook.reinvocationPolicy` (the same in every revision), which
    /// meshrev's webhooks take over: it decides whether the API server's re-run of its own
    /// admission plugins after an injection (the ServiceAccount token mount it adds to the new
    /// containers) is followed by another injection that rebuilds the sidecar without it.
    pub(crate) reinvocation_policy: Option<String>,
}

impl Plan {
    /// Objects to write (create or overwrite).
    pub(crate) fn writes(&self) -> usize {
        self.revisions
            .iter()
            .filter(|r| r.action != Action::Unchanged)
            .count()
            + self
                .tags
                .iter()
                .filter(|t| t.action != Action::Unchanged)
                .count()
    }
}

/// The meshrev name of an Istio revision.
pub(crate) fn revision_name(istio_revision: &str) -> &str {
    if istio_revision.is_empty() {
        DEFAULT_REVISION
    } else {
        istio_revision
    }
}

/// The name Istio gives a revision's istiod Deployment and Service.
pub(crate) fn istiod_name(istio_revision: &str) -> String {
    if istio_revision.is_empty() {
        "istiod".into()
    } else {
        format!("istiod-{istio_revision}")
    }
}

/// Builds the plan.
pub(crate) fn plan(inst: &Installation) -> Plan {
    let mut plan = Plan::default();
    for r in &inst.revisions {
        adopt_revision(r, inst, &mut plan);
    }
    let adopted: BTreeMap<&str, ()> = plan
        .revisions
        .iter()
        .map(|r| (r.object.metadata.name.as_deref().unwrap_or_default(), ()))
        .collect();

    // Tags: Istio's, plus stable for the default one.
    let mut tags: BTreeMap<String, (String, String)> = BTreeMap::new();
    for t in &inst.tags {
        if !adopted.contains_key(t.revision.as_str()) {
            plan.differences.push(Difference {
                subject: format!("tag {}", t.tag),
                path: format!("MutatingWebhookConfiguration {}", t.webhook),
                what: format!(
                    "points at revision {} whose injector configuration was not found or not adopted",
                    t.revision
                ),
            });
            continue;
        }
        tags.insert(
            t.tag.clone(),
            (t.revision.clone(), format!("from {}", t.webhook)),
        );
    }
    let default_target = tags
        .get(ISTIO_DEFAULT_TAG)
        .map(|(r, _)| {
            (
                r.clone(),
                format!("{LABEL_INJECTION}=enabled: Istio's default tag"),
            )
        })
        .or_else(|| {
            inst.revisions
                .iter()
                .find(|r| r.revision.is_empty())
                .map(|_| {
                    (
                        DEFAULT_REVISION.to_string(),
                        format!("{LABEL_INJECTION}=enabled: Istio's default revision"),
                    )
                })
        });
    if let Some((rev, why)) = default_target {
        match tags.get(TAG_STABLE) {
            Some((other, _)) if *other != rev => plan.differences.push(Difference {
                subject: format!("tag {TAG_STABLE}"),
                path: format!("MutatingWebhookConfiguration istio-revision-tag-{TAG_STABLE}"),
                what: format!(
                    "Istio has a tag named {TAG_STABLE} (→ {other}), but meshrev's {TAG_STABLE} is what {LABEL_INJECTION}=enabled selects (→ {rev})"
                ),
            }),
            _ => {
                tags.insert(TAG_STABLE.to_string(), (rev, why));
            }
        }
    }
    for (name, (revision, why)) in tags {
        let object = RevisionTag::new(&name, RevisionTagSpec { revision });
        let action = match inst
            .existing_tags
            .iter()
            .find(|t| t.metadata.name.as_deref() == Some(name.as_str()))
        {
            None => Action::Create,
            Some(t) if t.spec == object.spec => Action::Unchanged,
            Some(t) => {
                plan.differences.push(Difference {
                    subject: format!("tag {name}"),
                    path: format!("RevisionTag {name}"),
                    what: format!(
                        "exists and points at {} (adopting would move it to {})",
                        t.spec.revision, object.spec.revision
                    ),
                });
                Action::Overwrite
            }
        };
        plan.tags.push(AdoptedTag {
            object,
            action,
            why,
        });
    }

    // Namespaces: what Istio's webhooks select, and what the adopted table resolves.
    let tag_of = |t: &str| {
        plan.tags
            .iter()
            .find(|x| x.object.metadata.name.as_deref() == Some(t))
            .map(|x| x.object.spec.revision.clone())
    };
    let istio_tag_of = |t: &str| {
        inst.tags
            .iter()
            .find(|x| x.tag == t)
            .map(|x| x.revision.clone())
    };
    let mut routes = Vec::new();
    for (ns, labels) in &inst.namespaces {
        let (label, istio, meshrev) = if let Some(v) = labels.get(LABEL_INJECTION) {
            let enabled = v == INJECTION_ENABLED;
            let istio = enabled
                .then(|| {
                    istio_tag_of(ISTIO_DEFAULT_TAG).or_else(|| {
                        inst.revisions
                            .iter()
                            .any(|r| r.revision.is_empty())
                            .then(|| DEFAULT_REVISION.to_string())
                    })
                })
                .flatten();
            let meshrev = enabled.then(|| tag_of(TAG_STABLE)).flatten();
            (format!("{LABEL_INJECTION}={v}"), istio, meshrev)
        } else if let Some(v) = labels.get(LABEL_REV) {
            let istio = istio_tag_of(v).or_else(|| {
                inst.revisions
                    .iter()
                    .any(|r| revision_name(&r.revision) == v)
                    .then(|| v.clone())
            });
            let meshrev = tag_of(v).or_else(|| adopted.contains_key(v.as_str()).then(|| v.clone()));
            (format!("{LABEL_REV}={v}"), istio, meshrev)
        } else {
            continue;
        };
        if istio != meshrev {
            plan.differences.push(Difference {
                subject: format!("namespace {ns}"),
                path: label.clone(),
                what: format!(
                    "Istio injects {}, the adopted table would inject {}",
                    istio.as_deref().unwrap_or("nothing"),
                    meshrev.as_deref().unwrap_or("nothing")
                ),
            });
        }
        routes.push(NamespaceRoute {
            name: ns.clone(),
            label,
            istio,
            meshrev,
        });
    }
    plan.namespaces = routes;

    let mut policies: Vec<(String, String)> = inst
        .revisions
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_str(&r.values).unwrap_or(Value::Null);
            let p = v["sidecarInjectorWebhook"]["reinvocationPolicy"]
                .as_str()
                .unwrap_or("Never")
                .to_string();
            (revision_name(&r.revision).to_string(), p)
        })
        .collect();
    policies.sort_by(|a, b| a.1.cmp(&b.1));
    match (policies.first(), policies.last()) {
        (Some(a), Some(b)) if a.1 != b.1 => plan.differences.push(Difference {
            subject: format!("revisions {} and {}", a.0, b.0),
            path: "values.sidecarInjectorWebhook.reinvocationPolicy".into(),
            what: format!(
                "{} and {}: meshrev's one webhook configuration has one reinvocationPolicy",
                a.1, b.1
            ),
        }),
        (Some(a), _) => plan.reinvocation_policy = Some(a.1.clone()),
        _ => {}
    }
    plan
}

fn adopt_revision(r: &InstalledRevision, inst: &Installation, plan: &mut Plan) {
    let name = revision_name(&r.revision).to_string();
    let subject = format!("revision {name}");
    let mut diff = |path: String, what: String| {
        plan.differences.push(Difference {
            subject: subject.clone(),
            path,
            what,
        })
    };
    let values: Value = match serde_json::from_str(&r.values) {
        Ok(v) => v,
        Err(e) => {
            diff(
                format!("ConfigMap {}/{} data.values", r.namespace, r.configmap),
                format!("not JSON ({e}); the revision cannot be adopted"),
            );
            return;
        }
    };
    let g = &values["global"];
    let p = &g["proxy"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let hub = s(&g["hub"]);
    let tag = s(&g["tag"]);
    let version = match semver::Version::parse(tag.trim_start_matches('v')) {
        Ok(v) if v.pre.is_empty() => format!("{}.{}.{}", v.major, v.minor, v.patch),
        _ => {
            diff(
                "values.global.tag".into(),
                format!(
                    "{tag:?} is not an Istio release version (X.Y.Z), so meshrev cannot tell which sidecar to reproduce; the revision cannot be adopted"
                ),
            );
            return;
        }
    };
    let mut spec = MeshRevisionSpec {
        version: version.clone(),
        ..Default::default()
    };
    // The proxy image, as Istio's template writes it.
    let variant = s(&g["variant"]);
    let image_name = match s(&p["image"]) {
        i if i.is_empty() => "proxyv2".to_string(),
        i => i,
    };
    let image = if image_name.contains('/') {
        image_name.clone()
    } else if variant.is_empty() {
        format!("{hub}/{image_name}:{tag}")
    } else {
        format!("{hub}/{image_name}:{tag}-{variant}")
    };
    if image_name != "proxyv2" || !variant.is_empty() {
        spec.proxy_image = Some(image.clone());
    } else {
        if hub != "docker.io/istio" {
            spec.hub = Some(hub.clone());
        }
        if tag != version {
            spec.tag = Some(tag.clone());
        }
    }
    let set_str = |field: &mut Option<String>, v: &Value, default: &str| {
        if let Some(x) = v.as_str()
            && x != default
        {
            *field = Some(x.to_string());
        }
    };
    set_str(&mut spec.image_pull_policy, &g["imagePullPolicy"], "");
    set_str(&mut spec.log_level, &p["logLevel"], "warning");
    set_str(
        &mut spec.component_log_level,
        &p["componentLogLevel"],
        "misc:error",
    );
    set_str(
        &mut spec.agent_log_level,
        &g["logging"]["level"],
        "default:info",
    );
    set_str(&mut spec.include_ip_ranges, &p["includeIPRanges"], "*");
    set_str(&mut spec.exclude_ip_ranges, &p["excludeIPRanges"], "");
    if p["privileged"] == true {
        spec.privileged = Some(true);
    }
    let mesh = r
        .mesh
        .as_deref()
        .and_then(|m| crate::yaml::from_str(m).ok())
        .unwrap_or(Value::Null);
    let dc = &mesh["defaultConfig"];
    if p["holdApplicationUntilProxyStarts"] == true || dc["holdApplicationUntilProxyStarts"] == true
    {
        spec.hold_application_until_proxy_starts = Some(true);
    }
    let default_discovery = format!("istiod-{name}.istio-system.svc:15012");
    if let Some(addr) = dc["discoveryAddress"].as_str()
        && addr != default_discovery
    {
        spec.discovery_address = Some(addr.to_string());
    } else if dc["discoveryAddress"].is_null()
        && (r.revision.is_empty() || r.namespace != "istio-system")
    {
        // Istio's template falls back to istiod[-rev].<namespace>.svc:15012.
        let addr = format!("{}.{}.svc:15012", istiod_name(&r.revision), r.namespace);
        if addr != default_discovery {
            spec.discovery_address = Some(addr);
        }
    }
    let resources = &p["resources"];
    if *resources != istio_default_values()["global"]["proxy"]["resources"] && resources.is_object()
    {
        let map = |v: &Value| -> BTreeMap<String, String> {
            v.as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| {
                            let q = match v {
                                Value::String(s) => s.clone(),
                                Value::Number(n) => n.to_string(),
                                _ => return None,
                            };
                            Some((k.clone(), q))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        spec.template.get_or_insert_with(Default::default).resources = Some(ProxyResources {
            requests: map(&resources["requests"]),
            limits: map(&resources["limits"]),
        });
    }
    // Every other value: the same as Istio's default, or a difference.
    let mut unmodelled = Vec::new();
    unmodelled_values(&values, istio_default_values(), "", &mut unmodelled);
    for (path, v) in unmodelled {
        diff(
            format!("values.{path}"),
            format!("set to {v}, which meshrev does not model (Istio's default differs)"),
        );
    }
    let templates_of = check_config(&r.config, &version, &mut diff);

    // The istiod Deployment found (Istio names it istiod-<rev>, or istiod for the default
    // revision), whose readiness the controller reports and the upgrade guards require.
    let (cp_name, cp_namespace) = match &r.deployment {
        Some(d) => (d.name.clone(), d.namespace.clone()),
        None => (istiod_name(&r.revision), r.namespace.clone()),
    };
    spec.control_plane = Some(ControlPlaneRef {
        name: Some(cp_name),
        namespace: Some(cp_namespace),
    });
    let mut object = MeshRevision::new(&name, spec);
    object.metadata.labels = Some(BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_string(),
        "meshrev-adopt".to_string(),
    )]));
    let action = match inst
        .existing_revisions
        .iter()
        .find(|e| e.metadata.name.as_deref() == Some(name.as_str()))
    {
        None => Action::Create,
        Some(e) if e.spec == object.spec => Action::Unchanged,
        Some(_) => {
            plan.differences.push(Difference {
                subject: format!("revision {name}"),
                path: format!("MeshRevision {name}"),
                what: "exists with another spec (adopting would overwrite it)".into(),
            });
            Action::Overwrite
        }
    };
    plan.revisions.push(AdoptedRevision {
        object,
        action,
        source: r.clone(),
        image,
        templates_of,
    });
}

/// Values paths `MeshRevision` models (read above) or that do not change an injected pod
/// (istiod's own settings, gateways, webhooks, other components).
const NOT_A_DIFFERENCE: &[&str] = &[
    "revision",
    "global.hub",
    "global.tag",
    "global.variant",
    "global.imagePullPolicy",
    "global.logging.level",
    "global.proxy.image",
    "global.proxy.privileged",
    "global.proxy.logLevel",
    "global.proxy.componentLogLevel",
    "global.proxy.includeIPRanges",
    "global.proxy.excludeIPRanges",
    "global.proxy.holdApplicationUntilProxyStarts",
    "global.proxy.resources",
    // not part of an injected pod
    "gateways",
    "global.waypoint",
    "global.istiod",
    "global.defaultResources",
    "global.defaultPodDisruptionBudget",
    "global.configValidation",
    "global.operatorManageWebhooks",
    "global.omitSidecarInjectorConfigMap",
    "global.resourceScope",
    "global.priorityClassName",
    "global.networkPolicy",
    "global.externalIstiod",
    "global.configCluster",
    "global.certSigners",
    "sidecarInjectorWebhook.reinvocationPolicy",
    "sidecarInjectorWebhook.enableNamespacesByDefault",
];

fn skipped(path: &str) -> bool {
    NOT_A_DIFFERENCE
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('.')))
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty),
    }
}

/// Leaves of `v` that differ from `default` (a leaf missing from `default` differs when it
/// is set to anything but an empty value), as (JSON path, value).
fn unmodelled_values(v: &Value, default: &Value, path: &str, out: &mut Vec<(String, String)>) {
    if skipped(path) {
        return;
    }
    match (v, default) {
        (Value::Object(m), Value::Object(d)) => {
            for (k, x) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match d.get(k) {
                    Some(dx) => unmodelled_values(x, dx, &p, out),
                    None if !is_empty(x) && !skipped(&p) => out.push((p, x.to_string())),
                    None => {}
                }
            }
        }
        (Value::Object(_), Value::Null) if is_empty(v) => {}
        _ if v == default => {}
        _ if is_empty(v) && is_empty(default) => {}
        _ => out.push((path.to_string(), v.to_string())),
    }
}

/// Istio's default injector values (1.30.3's charts, profile default, rendered by
/// tests/istio-oracle; hub, tag and revision are read, not compared).
pub(crate) fn istio_default_values() -> &'static Value {
    static V: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        serde_json::from_str(include_str!("istio-default-values.json"))
            .expect("the embedded Istio default values must be JSON")
    })
}

/// Checks the injector's `config`: policy, selectors, default templates and every template
/// (each must be Istio's own). Returns the release whose sidecar template it holds.
fn check_config(
    config: &str,
    version: &str,
    diff: &mut impl FnMut(String, String),
) -> Option<String> {
    let cfg = match crate::yaml::from_str(config) {
        Ok(v) => v,
        Err(e) => {
            diff("config".into(), format!("not YAML ({e})"));
            return None;
        }
    };
    if let Some(p) = cfg["policy"].as_str()
        && p != "enabled"
    {
        diff(
            "config.policy".into(),
            format!("{p:?}: meshrev injects as Istio's policy \"enabled\" does"),
        );
    }
    if cfg["defaultTemplates"] != json!(["sidecar"]) && !cfg["defaultTemplates"].is_null() {
        diff(
            "config.defaultTemplates".into(),
            format!(
                "{}: meshrev's default is [sidecar]",
                cfg["defaultTemplates"]
            ),
        );
    }
    for key in [
        "alwaysInjectSelector",
        "neverInjectSelector",
        "injectedAnnotations",
    ] {
        if !is_empty(&cfg[key]) {
            diff(
                format!("config.{key}"),
                format!("{}: not modelled by meshrev", cfg[key]),
            );
        }
    }
    if let Some(t) = cfg["template"].as_str()
        && !t.is_empty()
        && !t.contains("Template_Version_And_Istio_Version_Mismatched_Check_Installation")
    {
        diff(
            "config.template".into(),
            "a custom legacy template: meshrev reproduces only Istio's own templates".into(),
        );
    }
    let mut sidecar_of = None;
    if let Some(templates) = cfg["templates"].as_object() {
        for (name, text) in templates {
            let text = text.as_str().unwrap_or_default();
            match known_template(name, text, version) {
                Some(release) => {
                    if name == "sidecar" {
                        sidecar_of = Some(release.to_string());
                    }
                }
                None => diff(
                    format!("config.templates.{name}"),
                    format!(
                        "a custom template (not Istio {}'s {name:?}): meshrev reproduces only Istio's own templates",
                        release_range()
                    ),
                ),
            }
        }
    }
    if let Some(release) = &sidecar_of
        && minor(release) != minor(version)
    {
        diff(
            "config.templates.sidecar".into(),
            format!(
                "Istio {release}'s template with proxy version {version}: meshrev would inject {}'s sidecar",
                minor(version)
            ),
        );
    }
    sidecar_of
}

fn release_range() -> String {
    format!(
        "{}–{}",
        KNOWN_TEMPLATES[0].0,
        KNOWN_TEMPLATES[KNOWN_TEMPLATES.len() - 1].0
    )
}

/// The Istio release whose built-in template `name` has exactly this text (trailing
/// whitespace aside), if any: one of `version`'s minor when that minor's text is this
/// (templates often stay the same across releases), else the newest that has it.
pub(crate) fn known_template(name: &str, text: &str, version: &str) -> Option<&'static str> {
    let h = fnv1a(text.trim_end().as_bytes());
    let mut matches = KNOWN_TEMPLATES
        .iter()
        .rev()
        .filter(|(_, n, hash)| *n == name && *hash == h)
        .map(|(v, _, _)| *v);
    let newest = matches.next()?;
    let same_minor = |v: &str| minor(v) == minor(version);
    if same_minor(newest) {
        return Some(newest);
    }
    Some(matches.find(|v| same_minor(v)).unwrap_or(newest))
}

/// `1.30` of `1.30.3`.
fn minor(v: &str) -> String {
    v.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// FNV-1a, 64 bits: a fingerprint of a template's text (not a security boundary: a custom
/// template is the operator's own, not an adversary's).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// (release, template name, FNV-1a of the text) of Istio's built-in injection templates,
/// from the conformance corpus (`../shared/conformance/istio/<release>/templates/`;
/// `plan_tests` recomputes them from there).
pub(crate) const KNOWN_TEMPLATES: &[(&str, &str, u64)] = &[
    ("1.22.6", "sidecar", 0xb6f06c0c98afd25e),
    ("1.22.6", "gateway", 0xf4f5d6dd99dcf416),
    ("1.22.6", "grpc-simple", 0xdb8ec4b269263512),
    ("1.22.6", "grpc-agent", 0xa7d877fc1e4fda06),
    ("1.22.6", "waypoint", 0xfe501ad1becab3d1),
    ("1.22.6", "kube-gateway", 0x5ff6525c6bc15356),
    ("1.23.6", "sidecar", 0x65273bc2d9218de1),
    ("1.23.6", "gateway", 0x9091af4efd1180d8),
    ("1.23.6", "grpc-simple", 0xdb8ec4b269263512),
    ("1.23.6", "grpc-agent", 0xa7d877fc1e4fda06),
    ("1.23.6", "waypoint", 0x3459d6a0c16ada91),
    ("1.23.6", "kube-gateway", 0x2ac1d9528a24fabd),
    ("1.24.6", "sidecar", 0x8f6a04da43187b81),
    ("1.24.6", "gateway", 0x9091af4efd1180d8),
    ("1.24.6", "grpc-simple", 0xdb8ec4b269263512),
    ("1.24.6", "grpc-agent", 0xa7d877fc1e4fda06),
    ("1.24.6", "waypoint", 0x8542da77faa0125e),
    ("1.24.6", "kube-gateway", 0x953b8be2fc6baab6),
    ("1.25.5", "sidecar", 0x539996649640271b),
    ("1.25.5", "gateway", 0x9091af4efd1180d8),
    ("1.25.5", "grpc-simple", 0xdb8ec4b269263512),
    ("1.25.5", "grpc-agent", 0xa7d877fc1e4fda06),
    ("1.25.5", "waypoint", 0x00ac6e1b1ff203eb),
    ("1.25.5", "kube-gateway", 0x953b8be2fc6baab6),
    ("1.26.8", "sidecar", 0x4bb16c25e90776ab),
    ("1.26.8", "gateway", 0x16d6a8e613ab655e),
    ("1.26.8", "grpc-simple", 0xdb8ec4b269263512),
    ("1.26.8", "grpc-agent", 0x35c268bf1b645f4a),
    ("1.26.8", "waypoint", 0x95be4a7ced1df9ea),
    ("1.26.8", "kube-gateway", 0xf8138c4f48ac21f8),
    ("1.27.9", "sidecar", 0x94ce108d555caef9),
    ("1.27.9", "gateway", 0x39ed419769423221),
    ("1.27.9", "grpc-simple", 0xdb8ec4b269263512),
    ("1.27.9", "grpc-agent", 0xa391c83a61bab25b),
    ("1.27.9", "waypoint", 0x376d0a9fdcc09ff4),
    ("1.27.9", "kube-gateway", 0x98b40614cce65fac),
    ("1.28.10", "sidecar", 0x48f7975145dafb8e),
    ("1.28.10", "gateway", 0x39ed419769423221),
    ("1.28.10", "grpc-simple", 0xdb8ec4b269263512),
    ("1.28.10", "grpc-agent", 0x53d2010fdde3d0b8),
    ("1.28.10", "waypoint", 0x63d6d3005c6b66bc),
    ("1.28.10", "kube-gateway", 0xf28718e9fdfd7163),
    ("1.28.10", "agentgateway", 0x970c042fda89fc37),
    ("1.29.6", "sidecar", 0xd4c5ac2ea42c1f4a),
    ("1.29.6", "gateway", 0xaa475fe3c9ce5eca),
    ("1.29.6", "grpc-simple", 0xdb8ec4b269263512),
    ("1.29.6", "grpc-agent", 0x53d2010fdde3d0b8),
    ("1.29.6", "waypoint", 0xeed1ba410ef86a20),
    ("1.29.6", "kube-gateway", 0x32835af85a5ff921),
    ("1.29.6", "agentgateway", 0x970c042fda89fc37),
    ("1.30.3", "sidecar", 0x11bb84e27b09aae7),
    ("1.30.3", "gateway", 0xaa475fe3c9ce5eca),
    ("1.30.3", "grpc-simple", 0xdb8ec4b269263512),
    ("1.30.3", "grpc-agent", 0x53d2010fdde3d0b8),
    ("1.30.3", "waypoint", 0xeed1ba410ef86a20),
    ("1.30.3", "kube-gateway", 0x32835af85a5ff921),
    ("1.30.3", "agentgateway", 0xbaea7504244c9172),
];

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
