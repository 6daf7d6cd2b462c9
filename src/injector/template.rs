//! Per-revision sidecar templates, rendered once when the table is built.
//!
//! A template is written as a `serde_json::Value` (readable, and in the shape Istio's
//! injection template produces), serialized once, and split at slot markers into literal
//! JSON text and [`Slot`]s. Per request the injector writes the literals and fills the slots:
//! no template engine and no `Value` on the request path.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::config::{EnvVar, MeshRevisionSpec};

/// The variable parts of the injected containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The proxy image (a JSON string).
    Image,
    /// The whole `args` array of `istio-init`.
    InitArgs,
    /// The whole `args` array of `istio-proxy`.
    ProxyArgs,
    /// The `resources` object of `istio-init` and `istio-proxy` (Istio renders both from its
    /// `resources` template).
    Resources,
    /// `PROXY_CONFIG`, `ISTIO_META_POD_PORTS`, `ISTIO_META_APP_CONTAINERS`: env entries,
    /// each written as `,{…}`.
    EnvPod,
    /// `ISTIO_META_INTERCEPTION_MODE`, `ISTIO_META_WORKLOAD_NAME`, `ISTIO_META_OWNER`.
    EnvWorkload,
    /// What Istio appends after rendering: `ISTIO_PROMETHEUS_ANNOTATIONS`,
    /// `ISTIO_KUBE_APP_PROBERS`.
    EnvTail,
    /// The `securityContext` of `istio-proxy` (TPROXY interception runs it as root).
    ProxySecurity,
    /// `,"lifecycle":{…}` or nothing.
    Lifecycle,
    /// `,"restartPolicy":"Always"` (native sidecar) or nothing.
    RestartPolicy,
    /// `,"readinessProbe":{…},"startupProbe":{…}` or nothing (status port 0).
    Probes,
    /// Extra volume mounts (`sidecar.istio.io/userVolumeMount`), each `,{…}`.
    MountsTail,
}

/// How a slot marker sits in the template `Value`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SlotKind {
    /// `"@@SLOT:X@@"` stands for a whole value.
    Value,
    /// `"@@SLOT:X@@"` is an array element after at least one other; the comma before it is
    /// taken into the slot, so it can expand to nothing or to several `,{…}` elements.
    Element,
    /// `"~slot:X":null` is an object member (the `~` makes it sort last, after a comma); the
    /// comma is taken into the slot, which writes `,"key":value` or nothing.
    Member,
}

const SLOTS: [(Slot, &str, SlotKind); 12] = [
    (
        Slot::ProxySecurity,
        "\"@@SLOT:PROXY_SECURITY@@\"",
        SlotKind::Value,
    ),
    (Slot::Image, "\"@@SLOT:IMAGE@@\"", SlotKind::Value),
    (Slot::InitArgs, "\"@@SLOT:INIT_ARGS@@\"", SlotKind::Value),
    (Slot::ProxyArgs, "\"@@SLOT:PROXY_ARGS@@\"", SlotKind::Value),
    (Slot::Resources, "\"@@SLOT:RESOURCES@@\"", SlotKind::Value),
    (Slot::EnvPod, "\"@@SLOT:ENV_POD@@\"", SlotKind::Element),
    (
        Slot::EnvWorkload,
        "\"@@SLOT:ENV_WORKLOAD@@\"",
        SlotKind::Element,
    ),
    (Slot::EnvTail, "\"@@SLOT:ENV_TAIL@@\"", SlotKind::Element),
    (
        Slot::MountsTail,
        "\"@@SLOT:MOUNTS_TAIL@@\"",
        SlotKind::Element,
    ),
    (
        Slot::Lifecycle,
        "\"~slot:lifecycle\":null",
        SlotKind::Member,
    ),
    (
        Slot::RestartPolicy,
        "\"~slot:restartPolicy\":null",
        SlotKind::Member,
    ),
    (Slot::Probes, "\"~slot:probes\":null", SlotKind::Member),
];

/// A piece of pre-rendered JSON.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Part {
    Lit(Box<str>),
    Slot(Slot),
}

/// JSON text with holes.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Fragment(pub Vec<Part>);

impl Fragment {
    /// Serializes `v` and cuts it at the slot markers (see [`SlotKind`]).
    fn from_value(v: &Value) -> Fragment {
        let text = serde_json::to_string(v).expect("a template Value must serialize");
        let mut parts = Vec::new();
        let mut rest = text.as_str();
        loop {
            let next = SLOTS
                .iter()
                .filter_map(|(slot, m, kind)| rest.find(m).map(|i| (i, *slot, m.len(), *kind)))
                .min_by_key(|(i, _, _, _)| *i);
            match next {
                Some((i, slot, len, kind)) => {
                    let mut lit = &rest[..i];
                    if kind != SlotKind::Value {
                        lit = lit
                            .strip_suffix(',')
                            .expect("an element or member slot must follow another entry");
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Lit(lit.into()));
                    }
                    parts.push(Part::Slot(slot));
                    rest = &rest[i + len..];
                }
                None => {
                    if !rest.is_empty() {
                        parts.push(Part::Lit(rest.into()));
                    }
                    return Fragment(parts);
                }
            }
        }
    }
}

/// What changed across the Istio releases meshrev follows, for one revision's version.
/// Each switches on at the release where Istio's injector changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Features {
    /// 1.24+: the pod annotation `sidecar.istio.io/nativeSidecar` is read ("true" opts in,
    /// any other value opts out); 1.27+: any value but "false" opts in.
    pub(crate) native_annotation: NativeAnnotation,
    /// 1.27+: `istio-ca-crl` volume and mount.
    pub(crate) crl: bool,
    /// 1.29+: `resourceFieldRef` divisors are written as "1" (before: "0").
    pub(crate) divisor_one: bool,
    /// 1.25+: lifecycle hooks (`postStart`/`preStop` httpGet and tcpSocket) are rewritten
    /// like probes.
    pub(crate) lifecycle_rewrite: bool,
    /// 1.25+: `istio.io/reroute-virtual-interfaces`, the `service.istio.io/workload-name`
    /// label, and `-u 1337` under TPROXY.
    pub(crate) v1_25: bool,
    /// Before 1.24: `sidecar.istio.io/enableCoreDump` adds an `enable-core-dump` init
    /// container.
    pub(crate) core_dump_container: bool,
    /// 1.27+: only "true"/"false" are valid values of `sidecar.istio.io/inject`.
    pub(crate) strict_inject_values: bool,
}

/// How a version reads `sidecar.istio.io/nativeSidecar`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NativeAnnotation {
    Ignored,
    TrueOptsIn,
    NotFalseOptsIn,
}

/// The oldest Istio minor whose injection meshrev reproduces.
pub(crate) const OLDEST_MINOR: u64 = 22;
/// The newest Istio minor whose injection meshrev knows; newer versions get its behaviour.
pub(crate) const NEWEST_MINOR: u64 = 30;

impl Features {
    pub(crate) fn of(version: &semver::Version) -> Features {
        let m = version.minor.clamp(OLDEST_MINOR, NEWEST_MINOR);
        Features {
            native_annotation: if m >= 27 {
                NativeAnnotation::NotFalseOptsIn
            } else if m >= 24 {
                NativeAnnotation::TrueOptsIn
            } else {
                NativeAnnotation::Ignored
            },
            crl: m >= 27,
            divisor_one: m >= 29,
            lifecycle_rewrite: m >= 25,
            v1_25: m >= 25,
            core_dump_container: m < 24,
            strict_inject_values: m >= 27,
        }
    }
    /// Native sidecars when nothing overrides them: Istio's `auto` on a cluster whose
    /// kubelets support them (1.27+); off before.
    pub(crate) fn native_by_default(&self) -> bool {
        self.crl
    }
}

/// Names of what a revision injects, as recorded in `sidecar.istio.io/status`.
pub(crate) const INIT_CONTAINER: &str = "istio-init";
pub(crate) const PROXY_CONTAINER: &str = "istio-proxy";

/// Everything a revision injects, pre-rendered. Owned by a [`crate::table::Revision`];
/// immutable once built.
#[derive(Clone, Debug)]
pub(crate) struct RevisionTemplate {
    pub(crate) revision: String,
    pub(crate) features: Features,
    /// Whether this revision injects native sidecars unless a pod says otherwise, when the
    /// cluster's nodes support them (see [`RevisionTemplate::native_for`]).
    pub(crate) native: bool,
    /// `nativeSidecars: auto`: the nodes decide too.
    pub(crate) native_auto: bool,
    /// `holdApplicationUntilProxyStarts` for the revision's pods.
    pub(crate) hold_application: bool,
    /// The installation's defaults that pod annotations override.
    pub(crate) log_level: String,
    pub(crate) component_log_level: String,
    pub(crate) agent_log_level: String,
    pub(crate) include_ip_ranges: String,
    pub(crate) exclude_ip_ranges: String,
    /// The JSON string of the default image, quotes included.
    pub(crate) image_json: Box<str>,
    /// The default `resources` object of `istio-init` and `istio-proxy`.
    pub(crate) resources_json: Box<str>,
    /// `istio-init`'s args for pods without traffic annotations (a JSON array).
    pub(crate) default_init_args: String,
    /// Names of the env vars the revision's overrides add to `istio-proxy`.
    pub(crate) override_env_names: Vec<String>,
    pub(crate) init_container: Fragment,
    pub(crate) proxy_container: Fragment,
    /// `istio-proxy`'s `securityContext`: as a user, and as root for TPROXY interception.
    pub(crate) proxy_security_json: Box<str>,
    pub(crate) proxy_security_tproxy_json: Box<str>,
    /// `,"readinessProbe":…,"startupProbe":…` for the default status port.
    pub(crate) probes_json: Box<str>,
    /// The `PROXY_CONFIG` env value for pods without `proxy.istio.io/config`.
    pub(crate) proxy_config_json: Box<str>,
    /// The discovery address, written into `PROXY_CONFIG`.
    pub(crate) discovery_address: String,
    /// Each injected volume as a JSON object.
    pub(crate) volumes: Vec<Box<str>>,
    pub(crate) volume_names: Vec<&'static str>,
    /// `sidecar.istio.io/status` (quotes included) for a native and a classic sidecar.
    pub(crate) status_json_native: Box<str>,
    pub(crate) status_json_classic: Box<str>,
    /// `istio.io/rev`, as a JSON string value.
    pub(crate) revision_json: Box<str>,
    /// Extra annotations of the revision: (JSON-pointer-escaped key, JSON string value).
    pub(crate) extra_annotations: Vec<(Box<str>, Box<str>)>,
}

/// Default requests and limits of `istio-proxy` (after the revision's overrides).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ProxyResourceDefaults {
    pub(crate) requests: BTreeMap<String, String>,
    pub(crate) limits: BTreeMap<String, String>,
}

impl ProxyResourceDefaults {
    /// Renders a `resources` object.
    pub(crate) fn to_json(&self) -> String {
        let mut v = serde_json::Map::new();
        if !self.requests.is_empty() {
            v.insert("requests".into(), json!(self.requests));
        }
        if !self.limits.is_empty() {
            v.insert("limits".into(), json!(self.limits));
        }
        Value::Object(v).to_string()
    }
}

/// The volumes of a sidecar, in Istio's order; `istio-ca-crl` from 1.27 on.
pub(crate) const VOLUME_NAMES: [&str; 9] = [
    "workload-socket",
    "credential-socket",
    "workload-certs",
    "istio-envoy",
    "istio-data",
    "istio-podinfo",
    "istio-token",
    "istiod-ca-cert",
    "istio-ca-crl",
];

/// Escapes a key for use in a JSON Pointer (RFC 6901).
pub(crate) fn pointer_escape(key: &str) -> std::borrow::Cow<'_, str> {
    if key.contains(['~', '/']) {
        key.replace('~', "~0").replace('/', "~1").into()
    } else {
        key.into()
    }
}

/// A JSON string literal, quotes included.
pub(crate) fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string must serialize")
}

/// Istio's default status port (the agent's `/app-health` and `/stats/prometheus`).
pub(crate) const STATUS_PORT: u16 = 15020;

/// The `readinessProbe` and `startupProbe` members of `istio-proxy` (with a leading comma),
/// as Istio's template writes them for the given readiness settings.
pub(crate) fn render_probes(initial_delay: u32, period: u32, failure: u32) -> String {
    // Go omits zero probe fields (`omitempty`); so does meshrev, to write what Istio writes.
    let mut ready = json!({
        "httpGet": {"path": "/healthz/ready", "port": 15021},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failure,
    });
    if initial_delay != 0 {
        ready["initialDelaySeconds"] = json!(initial_delay);
    }
    for k in ["periodSeconds", "failureThreshold"] {
        if ready[k] == 0 {
            ready.as_object_mut().expect("an object").remove(k);
        }
    }
    let startup = json!({
        "httpGet": {"path": "/healthz/ready", "port": 15021},
        "periodSeconds": 1,
        "timeoutSeconds": 3,
        "failureThreshold": 600,
    });
    format!(",\"readinessProbe\":{ready},\"startupProbe\":{startup}")
}

impl RevisionTemplate {
    /// Native sidecars for a pod that does not say, given what the nodes support (Istio's
    /// `auto` requires every node's kubelet to be 1.33 or newer).
    pub(crate) fn native_for(&self, nodes_support: Option<bool>) -> bool {
        self.native && (!self.native_auto || nodes_support.unwrap_or(true))
    }

    /// Renders the templates of revision `name`. The spec must already be validated.
    pub(crate) fn render(name: &str, spec: &MeshRevisionSpec) -> RevisionTemplate {
        let version = semver::Version::parse(&spec.version)
            .unwrap_or_else(|_| semver::Version::new(1, NEWEST_MINOR, 0));
        let features = Features::of(&version);
        let image = spec.proxy_image.clone().unwrap_or_else(|| {
            format!(
                "{}/proxyv2:{}",
                spec.hub.as_deref().unwrap_or("docker.io/istio"),
                spec.tag.as_deref().unwrap_or(&spec.version)
            )
        });
        let privileged = spec.privileged.unwrap_or(false);
        let discovery = spec
            .discovery_address
            .clone()
            .unwrap_or_else(|| format!("istiod-{name}.istio-system.svc:15012"));
        let overrides = spec.template.clone().unwrap_or_default();
        let mut res = ProxyResourceDefaults {
            requests: [("cpu", "100m"), ("memory", "128Mi")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            limits: [("cpu", "2000m"), ("memory", "1024Mi")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        if let Some(r) = &overrides.resources {
            res.requests.extend(r.requests.clone());
            res.limits.extend(r.limits.clone());
        }
        let native_auto =
            spec.native_sidecars.unwrap_or_default() == crate::config::NativeSidecars::Auto;
        let native = match spec.native_sidecars.unwrap_or_default() {
            crate::config::NativeSidecars::Auto => features.native_by_default(),
            crate::config::NativeSidecars::Enabled => true,
            crate::config::NativeSidecars::Disabled => false,
        };
        let hold_application = spec.hold_application_until_proxy_starts.unwrap_or(false);

        let init = json!({
            "name": INIT_CONTAINER,
            "image": "@@SLOT:IMAGE@@",
            "args": "@@SLOT:INIT_ARGS@@",
            "resources": "@@SLOT:RESOURCES@@",
            "securityContext": {
                "allowPrivilegeEscalation": privileged,
                "privileged": privileged,
                "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                "readOnlyRootFilesystem": false,
                "runAsGroup": 0,
                "runAsNonRoot": false,
                "runAsUser": 0
            }
        });

        let divisor = if features.divisor_one { "1" } else { "0" };
        let resource_env = |name: &str, resource: &str| json!({"name": name, "valueFrom": {"resourceFieldRef": {"resource": resource, "divisor": divisor}}});
        let mut env = vec![
            json!({"name": "PILOT_CERT_PROVIDER", "value": "istiod"}),
            json!({"name": "CA_ADDR", "value": discovery}),
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("INSTANCE_IP", "status.podIP"),
            field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            field_env("HOST_IP", "status.hostIP"),
            resource_env("ISTIO_CPU_LIMIT", "limits.cpu"),
            json!("@@SLOT:ENV_POD@@"),
            resource_env("GOMEMLIMIT", "limits.memory"),
            resource_env("GOMAXPROCS", "limits.cpu"),
            json!({"name": "ISTIO_META_CLUSTER_ID", "value": "Kubernetes"}),
            field_env("ISTIO_META_NODE_NAME", "spec.nodeName"),
            json!("@@SLOT:ENV_WORKLOAD@@"),
            json!({"name": "ISTIO_META_MESH_ID", "value": "cluster.local"}),
            json!({"name": "TRUST_DOMAIN", "value": "cluster.local"}),
        ];
        for EnvVar { name, value } in &overrides.env {
            env.push(json!({"name": name, "value": value}));
        }
        env.push(json!("@@SLOT:ENV_TAIL@@"));

        let mut mounts = vec![
            json!({"mountPath": "/var/run/secrets/workload-spiffe-uds", "name": "workload-socket"}),
            json!({"mountPath": "/var/run/secrets/credential-uds", "name": "credential-socket"}),
            json!({"mountPath": "/var/run/secrets/workload-spiffe-credentials", "name": "workload-certs"}),
            json!({"mountPath": "/var/run/secrets/istio", "name": "istiod-ca-cert"}),
        ];
        if features.crl {
            mounts.push(json!({"mountPath": "/var/run/secrets/istio/crl", "name": "istio-ca-crl"}));
        }
        mounts.extend([
            json!({"mountPath": "/var/lib/istio/data", "name": "istio-data"}),
            json!({"mountPath": "/etc/istio/proxy", "name": "istio-envoy"}),
            json!({"mountPath": "/var/run/secrets/tokens", "name": "istio-token"}),
            json!({"mountPath": "/etc/istio/pod", "name": "istio-podinfo"}),
            json!("@@SLOT:MOUNTS_TAIL@@"),
        ]);

        let proxy = json!({
            "name": PROXY_CONTAINER,
            "image": "@@SLOT:IMAGE@@",
            "args": "@@SLOT:PROXY_ARGS@@",
            "env": env,
            "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
            "resources": "@@SLOT:RESOURCES@@",
            "securityContext": "@@SLOT:PROXY_SECURITY@@",
            "volumeMounts": mounts,
            "~slot:lifecycle": null,
            "~slot:probes": null,
            "~slot:restartPolicy": null,
        });

        let (mut init, mut proxy) = (init, proxy);
        if let Some(policy) = &spec.image_pull_policy {
            init["imagePullPolicy"] = json!(policy);
            proxy["imagePullPolicy"] = json!(policy);
        }

        let mut volumes = vec![
            json!({"name": "workload-socket"}),
            json!({"name": "credential-socket"}),
            json!({"name": "workload-certs"}),
            json!({"name": "istio-envoy", "emptyDir": {"medium": "Memory"}}),
            json!({"name": "istio-data", "emptyDir": {}}),
            json!({"name": "istio-podinfo", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}
            ]}}),
            json!({"name": "istio-token", "projected": {"sources": [
                {"serviceAccountToken": {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}
            ]}}),
            json!({"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}}),
        ];
        if features.crl {
            volumes.push(json!({"name": "istio-ca-crl", "configMap": {"name": "istio-ca-crl", "optional": true}}));
        }
        let volume_names: Vec<&'static str> = VOLUME_NAMES[..volumes.len()].to_vec();
        debug_assert!(
            volumes
                .iter()
                .zip(&volume_names)
                .all(|(v, n)| v["name"] == *n)
        );

        let status = |native: bool| {
            let (inits, containers) = if native {
                (json!([INIT_CONTAINER, PROXY_CONTAINER]), Value::Null)
            } else {
                (json!([INIT_CONTAINER]), json!([PROXY_CONTAINER]))
            };
            json_str(
                &json!({
                    "initContainers": inits,
                    "containers": containers,
                    "volumes": volume_names,
                    "imagePullSecrets": null,
                    "revision": name,
                })
                .to_string(),
            )
            .into()
        };

        let mut t = RevisionTemplate {
            default_init_args: String::new(),
            override_env_names: overrides.env.iter().map(|e| e.name.clone()).collect(),
            revision: name.to_string(),
            features,
            native,
            native_auto,
            hold_application,
            log_level: spec.log_level.clone().unwrap_or_else(|| "warning".into()),
            component_log_level: spec
                .component_log_level
                .clone()
                .unwrap_or_else(|| "misc:error".into()),
            agent_log_level: spec
                .agent_log_level
                .clone()
                .unwrap_or_else(|| "default:info".into()),
            include_ip_ranges: spec.include_ip_ranges.clone().unwrap_or_else(|| "*".into()),
            exclude_ip_ranges: spec.exclude_ip_ranges.clone().unwrap_or_default(),
            image_json: json_str(&image).into(),
            resources_json: res.to_json().into(),
            init_container: Fragment::from_value(&init),
            proxy_container: Fragment::from_value(&proxy),
            probes_json: render_probes(0, 15, 4).into(),
            proxy_security_json: json!({
                "allowPrivilegeEscalation": privileged,
                "capabilities": {"drop": ["ALL"]},
                "privileged": privileged,
                "readOnlyRootFilesystem": true,
                "runAsGroup": 1337,
                "runAsNonRoot": true,
                "runAsUser": 1337
            })
            .to_string()
            .into(),
            proxy_security_tproxy_json: json!({
                "allowPrivilegeEscalation": privileged,
                "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
                "privileged": privileged,
                "readOnlyRootFilesystem": true,
                "runAsGroup": 1337,
                "runAsNonRoot": false,
                "runAsUser": 0
            })
            .to_string()
            .into(),
            proxy_config_json: json_str(
                &(json!({"discoveryAddress": discovery}).to_string() + "\n"),
            )
            .into(),
            discovery_address: discovery,
            volumes: volumes.iter().map(|v| v.to_string().into()).collect(),
            status_json_native: status(true),
            status_json_classic: status(false),
            volume_names,
            revision_json: json_str(name).into(),
            extra_annotations: overrides
                .annotations
                .iter()
                .map(|(k, v)| (pointer_escape(k).into(), json_str(v).into()))
                .collect(),
        };
        t.default_init_args = super::render_init_args(
            &t,
            &super::pod::Meta::default(),
            "REDIRECT",
            &t.agent_log_level,
        );
        t
    }
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_cut_at_every_slot() {
        let spec = MeshRevisionSpec {
            version: "1.23.6".into(),
            ..Default::default()
        };
        let t = RevisionTemplate::render("1-23-6", &spec);
        let mut slots: Vec<String> = t
            .proxy_container
            .0
            .iter()
            .filter_map(|p| match p {
                Part::Slot(s) => Some(format!("{s:?}")),
                Part::Lit(l) => {
                    assert!(!l.contains("@@SLOT"), "marker left in literal: {l}");
                    None
                }
            })
            .collect();
        slots.sort();
        assert_eq!(
            slots,
            [
                "EnvPod",
                "EnvTail",
                "EnvWorkload",
                "Image",
                "Lifecycle",
                "MountsTail",
                "Probes",
                "ProxyArgs",
                "ProxySecurity",
                "Resources",
                "RestartPolicy"
            ]
        );
        assert_eq!(&*t.image_json, "\"docker.io/istio/proxyv2:1.23.6\"");
        assert!(t.status_json_classic.contains("1-23-6"));
    }
}
