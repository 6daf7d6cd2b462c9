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
pub enum Slot {
    /// The proxy image (a JSON string).
    Image,
    /// The whole `args` array of `istio-init`.
    InitArgs,
    /// The `--proxyLogLevel=…` argument of `istio-proxy` (a JSON string).
    LogLevelArg,
    /// Pod-derived env vars of `istio-proxy`, written as `,{…},{…}` after the fixed ones.
    PodEnv,
    /// The `resources` object of `istio-proxy`.
    Resources,
}

const SLOTS: [(Slot, &str); 5] = [
    (Slot::Image, "@@SLOT:IMAGE@@"),
    (Slot::InitArgs, "@@SLOT:INIT_ARGS@@"),
    (Slot::LogLevelArg, "@@SLOT:LOG_LEVEL@@"),
    (Slot::PodEnv, "@@SLOT:POD_ENV@@"),
    (Slot::Resources, "@@SLOT:RESOURCES@@"),
];

/// A piece of pre-rendered JSON.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Lit(Box<str>),
    Slot(Slot),
}

/// JSON text with holes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fragment(pub Vec<Part>);

impl Fragment {
    /// Serializes `v` and cuts it at the slot markers. A marker stands for a whole JSON
    /// value (`"@@SLOT:X@@"`, quotes included); `PodEnv` is an array element whose comma
    /// before it is taken into the slot, so that it can expand to nothing.
    fn from_value(v: &Value) -> Fragment {
        let text = serde_json::to_string(v).expect("a template Value must serialize");
        let mut parts = Vec::new();
        let mut rest = text.as_str();
        loop {
            let next = SLOTS
                .iter()
                .filter_map(|(slot, m)| {
                    let quoted = format!("\"{m}\"");
                    rest.find(&quoted).map(|i| (i, *slot, quoted.len()))
                })
                .min_by_key(|(i, _, _)| *i);
            match next {
                Some((i, slot, len)) => {
                    let mut lit = &rest[..i];
                    if slot == Slot::PodEnv {
                        lit = lit
                            .strip_suffix(',')
                            .expect("the PodEnv marker must follow an env entry");
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

/// Names of what a revision injects, as recorded in `sidecar.istio.io/status`.
pub const INIT_CONTAINER: &str = "istio-init";
pub const PROXY_CONTAINER: &str = "istio-proxy";

/// Everything a revision injects, pre-rendered. Owned by a [`crate::table::Revision`];
/// immutable once built.
#[derive(Clone, Debug)]
pub struct RevisionTemplate {
    pub revision: String,
    pub image: String,
    /// The JSON string of the default image, quotes included.
    pub image_json: Box<str>,
    /// The default `resources` object of `istio-proxy`.
    pub resources_json: Box<str>,
    pub default_resources: ProxyResourceDefaults,
    pub init_container: Fragment,
    pub proxy_container: Fragment,
    /// Each injected volume as a JSON object.
    pub volumes: Vec<Box<str>>,
    pub volume_names: Vec<&'static str>,
    /// `sidecar.istio.io/status`, as a JSON string value (quotes included).
    pub status_json: Box<str>,
    /// `istio.io/rev`, as a JSON string value.
    pub revision_json: Box<str>,
    /// Extra annotations of the revision: (JSON-pointer-escaped key, JSON string value).
    pub extra_annotations: Vec<(Box<str>, Box<str>)>,
}

/// Default requests and limits of `istio-proxy` (after the revision's overrides).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyResourceDefaults {
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
}

impl ProxyResourceDefaults {
    /// Renders a `resources` object.
    pub fn to_json(&self) -> String {
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

pub const VOLUME_NAMES: [&str; 8] = [
    "workload-socket",
    "credential-socket",
    "workload-certs",
    "istio-envoy",
    "istio-data",
    "istio-podinfo",
    "istio-token",
    "istiod-ca-cert",
];

/// Escapes a key for use in a JSON Pointer (RFC 6901).
pub fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// A JSON string literal, quotes included.
pub fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string must serialize")
}

impl RevisionTemplate {
    /// Renders the templates of revision `name`. The spec must already be validated.
    pub fn render(name: &str, spec: &MeshRevisionSpec) -> RevisionTemplate {
        let image = spec
            .proxy_image
            .clone()
            .unwrap_or_else(|| format!("docker.io/istio/proxyv2:{}", spec.version));
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

        let init = json!({
            "name": INIT_CONTAINER,
            "image": "@@SLOT:IMAGE@@",
            "args": "@@SLOT:INIT_ARGS@@",
            "imagePullPolicy": "IfNotPresent",
            "resources": {
                "requests": {"cpu": "10m", "memory": "40Mi"},
                "limits": {"cpu": "2000m", "memory": "1024Mi"}
            },
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "privileged": false,
                "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                "readOnlyRootFilesystem": false,
                "runAsGroup": 0,
                "runAsNonRoot": false,
                "runAsUser": 0
            }
        });

        let mut env = vec![
            json!({"name": "PILOT_CERT_PROVIDER", "value": "istiod"}),
            json!({"name": "CA_ADDR", "value": discovery}),
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("INSTANCE_IP", "status.podIP"),
            field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            field_env("HOST_IP", "status.hostIP"),
            field_env("ISTIO_CPU_LIMIT", ""),
            json!({"name": "PROXY_CONFIG", "value": json!({"discoveryAddress": discovery}).to_string()}),
            json!({"name": "ISTIO_META_CLUSTER_ID", "value": "Kubernetes"}),
            field_env("ISTIO_META_NODE_NAME", "spec.nodeName"),
            json!({"name": "ISTIO_META_INTERCEPTION_MODE", "value": "REDIRECT"}),
            json!({"name": "ISTIO_META_MESH_ID", "value": "cluster.local"}),
            json!({"name": "TRUST_DOMAIN", "value": "cluster.local"}),
            json!({"name": "ISTIO_META_REVISION", "value": name}),
        ];
        // ISTIO_CPU_LIMIT comes from the container's own limit, not a field path.
        env[7] = json!({"name": "ISTIO_CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "0"}}});
        for EnvVar { name, value } in &overrides.env {
            env.push(json!({"name": name, "value": value}));
        }
        env.push(json!("@@SLOT:POD_ENV@@"));

        let proxy = json!({
            "name": PROXY_CONTAINER,
            "image": "@@SLOT:IMAGE@@",
            "args": [
                "proxy", "sidecar",
                "--domain", "$(POD_NAMESPACE).svc.cluster.local",
                "@@SLOT:LOG_LEVEL@@",
                "--proxyComponentLogLevel=misc:error",
                "--log_output_level=default:info"
            ],
            "env": env,
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
            "readinessProbe": {
                "failureThreshold": 4,
                "httpGet": {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"},
                "periodSeconds": 15,
                "timeoutSeconds": 3
            },
            "resources": "@@SLOT:RESOURCES@@",
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]},
                "privileged": false,
                "readOnlyRootFilesystem": true,
                "runAsGroup": 1337,
                "runAsNonRoot": true,
                "runAsUser": 1337
            },
            "volumeMounts": [
                {"mountPath": "/var/run/secrets/workload-spiffe-uds", "name": "workload-socket"},
                {"mountPath": "/var/run/secrets/credential-uds", "name": "credential-socket"},
                {"mountPath": "/var/run/secrets/workload-spiffe-credentials", "name": "workload-certs"},
                {"mountPath": "/var/run/secrets/istio", "name": "istiod-ca-cert"},
                {"mountPath": "/var/lib/istio/data", "name": "istio-data"},
                {"mountPath": "/etc/istio/proxy", "name": "istio-envoy"},
                {"mountPath": "/var/run/secrets/tokens", "name": "istio-token"},
                {"mountPath": "/etc/istio/pod", "name": "istio-podinfo"}
            ]
        });

        let volumes = [
            json!({"name": "workload-socket", "emptyDir": {}}),
            json!({"name": "credential-socket", "emptyDir": {}}),
            json!({"name": "workload-certs", "emptyDir": {}}),
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
        debug_assert!(
            volumes
                .iter()
                .zip(VOLUME_NAMES)
                .all(|(v, n)| v["name"] == n)
        );

        let status = json!({
            "initContainers": [INIT_CONTAINER],
            "containers": [PROXY_CONTAINER],
            "volumes": VOLUME_NAMES,
            "imagePullSecrets": null,
            "revision": name,
        })
        .to_string();

        RevisionTemplate {
            revision: name.to_string(),
            image_json: json_str(&image).into(),
            image,
            resources_json: res.to_json().into(),
            default_resources: res,
            init_container: Fragment::from_value(&init),
            proxy_container: Fragment::from_value(&proxy),
            volumes: volumes.iter().map(|v| v.to_string().into()).collect(),
            volume_names: VOLUME_NAMES.to_vec(),
            status_json: json_str(&status).into(),
            revision_json: json_str(name).into(),
            extra_annotations: overrides
                .annotations
                .iter()
                .map(|(k, v)| (pointer_escape(k).into(), json_str(v).into()))
                .collect(),
        }
    }
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}})
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
        assert_eq!(slots, ["Image", "LogLevelArg", "PodEnv", "Resources"]);
        assert_eq!(&*t.image_json, "\"docker.io/istio/proxyv2:1.23.6\"");
        assert!(t.status_json.contains("1-23-6"));
    }
}
