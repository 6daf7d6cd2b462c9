//! The injector: the sidecar of a revision as an RFC 6902 JSON Patch against the original pod.
//!
//! Per revision, the constant parts were rendered when the table was built
//! (`RevisionTemplate`); per request `patch` writes the patch straight into one buffer,
//! filling only the pod-dependent slots. Routing is not the injector's: the webhook's
//! [`crate::router::inject`] routes the pod, then calls `patch` with the chosen revision.

mod overrides;
pub mod pod;
mod probes;
mod template;
mod templates;
mod validate;

use std::borrow::Cow;

use serde::Deserialize;

pub(crate) use template::{
    INIT_CONTAINER, NEWEST_MINOR, OLDEST_MINOR, PROXY_CONTAINER, Part, ProxyResourceDefaults,
    RevisionTemplate, STATUS_PORT, Slot, json_str, pointer_escape,
};

use crate::core::ANNOTATION_STATUS;

/// Why the injector refuses a pod: the webhook denies it (HTTP 400 in the AdmissionReview)
/// and `meshrev inject` stops with the message. Made only on the refusal path; the message
/// is the whole of the display (users and tests read it as it is).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The pod's annotations ask for something invalid or unsupported; the message names
    /// each annotation and value.
    #[error("{0}")]
    Annotation(String),
    /// The injector's own patch did not apply to the pod (a bug): refused rather than
    /// admitted half-injected.
    #[error("{0}")]
    Internal(String),
}

impl Refusal {
    /// The message, moved out (no copy).
    pub(crate) fn into_message(self) -> String {
        match self {
            Refusal::Annotation(m) | Refusal::Internal(m) => m,
        }
    }
}
pub use crate::core::validate::quantity_value;
use pod::{Meta, Pod, Spec};

/// Appends to `out` (which must be empty) the JSON Patch that injects `tmpl` into `pod`
/// (created in `namespace`). Routing decided already that this revision injects the pod
/// ([`crate::router::inject`]).
///
/// `whole_pod` gives the pod as a `Value`; it is called only for the rare pods that need the
/// full-pod path (their own `istio-proxy`, or `inject.istio.io/templates`), see
/// `overrides`. A caller that cannot give it (returns `None`) gets the plain sidecar.
/// On an error (a malformed annotation; the message names it) `out` is left empty.
pub(crate) fn patch(
    tmpl: &RevisionTemplate,
    nodes_support_native_sidecars: Option<bool>,
    namespace: &str,
    pod: &Pod<'_>,
    out: &mut Vec<u8>,
    whole_pod: impl FnOnce() -> Option<serde_json::Value>,
) -> Result<(), Refusal> {
    static EMPTY: Spec<'static> = Spec {
        host_network: None,
        containers: Vec::new(),
        init_containers: None,
        volumes: None,
    };
    let spec = pod.spec.as_ref().unwrap_or(&EMPTY);
    write_patch(
        tmpl,
        nodes_support_native_sidecars,
        namespace,
        &pod.metadata,
        spec,
        out,
    )
    .and_then(|()| {
        if overrides::needed(&pod.metadata, spec) {
            full_pod_patch(tmpl, whole_pod, out)?;
        }
        Ok(())
    })
    .inspect_err(|_| out.clear())
}

/// The full-pod path: the fast path's patch applied to the whole pod, then Istio's handling
/// of the pod's own container definitions and templates, answered as the difference.
fn full_pod_patch(
    tmpl: &RevisionTemplate,
    whole_pod: impl FnOnce() -> Option<serde_json::Value>,
    patch: &mut Vec<u8>,
) -> Result<(), Refusal> {
    let Some(original) = whole_pod() else {
        return Ok(());
    };
    let ops: json_patch::Patch = serde_json::from_slice(patch).map_err(|e| {
        Refusal::Internal(format!(
            "internal error: the injector wrote an invalid patch: {e}"
        ))
    })?;
    let mut injected = original.clone();
    json_patch::patch(&mut injected, &ops).map_err(|e| {
        Refusal::Internal(format!(
            "internal error: the injector's patch does not apply: {e}"
        ))
    })?;
    if !templates::apply(tmpl, &original, &mut injected).map_err(Refusal::Annotation)? {
        overrides::apply(&original, &mut injected);
    }
    patch.clear();
    serde_json::to_writer(&mut *patch, &json_patch::diff(&original, &injected))
        .expect("writing a patch to a Vec must not fail");
    Ok(())
}

/// What `sidecar.istio.io/status` says was injected (only its volumes are read).
#[derive(Deserialize, Default)]
struct Status {
    #[serde(default)]
    volumes: Option<Vec<String>>,
}

fn st_volumes(st: &Option<Status>) -> Option<&Vec<String>> {
    st.as_ref().and_then(|s| s.volumes.as_ref())
}

/// Containers an injection adds (any revision, any template meshrev reproduces).
const INJECTED_CONTAINERS: [&str; 4] = [
    INIT_CONTAINER,
    PROXY_CONTAINER,
    "istio-validation",
    "enable-core-dump",
];

/// Volumes an injection adds besides a revision's own: Istio's optional ones and the
/// templates'.
const INJECTED_VOLUMES: [&str; 8] = [
    "istio-ca-crl",
    "istio-xds",
    "grpc-io-proxyless-bootstrap",
    "istio-certs",
    "lightstep-certs",
    "custom-bootstrap-volume",
    "gke-workload-certificate",
    "kube-ca-cert",
];

/// The names of the volumes `sidecar.istio.io/userVolume` adds.
fn user_volumes_names(meta: &Meta<'_>) -> Vec<String> {
    meta.annotation("sidecar.istio.io/userVolume")
        .and_then(|v| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(v).ok())
        .map(|m| m.into_iter().map(|(k, _)| k).collect())
        .unwrap_or_default()
}

/// Appends JSON Patch operations to a buffer.
struct Ops<'b> {
    out: &'b mut Vec<u8>,
    n: usize,
}

impl Ops<'_> {
    fn start(&mut self, op: &str, path: &[&str]) {
        self.out.push(if self.n == 0 { b'[' } else { b',' });
        self.n += 1;
        self.out.extend_from_slice(b"{\"op\":\"");
        self.out.extend_from_slice(op.as_bytes());
        self.out.extend_from_slice(b"\",\"path\":\"");
        for p in path {
            self.out.extend_from_slice(p.as_bytes());
        }
        self.out.push(b'"');
    }
    fn remove(&mut self, path: &[&str]) {
        self.start("remove", path);
        self.out.push(b'}');
    }
    /// `add` (or another op with a value) with the value written by `value`.
    fn with_value(&mut self, op: &str, path: &[&str], value: impl FnOnce(&mut Vec<u8>)) {
        self.start(op, path);
        self.out.extend_from_slice(b",\"value\":");
        value(self.out);
        self.out.push(b'}');
    }
    fn add(&mut self, path: &[&str], value: impl FnOnce(&mut Vec<u8>)) {
        self.with_value("add", path, value);
    }
    fn raw(&mut self, path: &[&str], json: &str) {
        self.add(path, |o| o.extend_from_slice(json.as_bytes()));
    }
    fn finish(self) {
        if self.n == 0 {
            self.out.extend_from_slice(b"[]");
        } else {
            self.out.push(b']');
        }
    }
}

/// `s` as a JSON string, exactly as serde_json writes it: a string with nothing to escape
/// (no `"`, `\` or control character, the common case) is copied between quotes without
/// going through the serializer.
fn push_str_json(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("writing a string to a Vec must not fail");
    }
}

/// Per-request values, validated before anything is written.
struct PodValues<'p> {
    image: Option<&'p str>,
    log_level: &'p str,
    component_log_level: &'p str,
    agent_log_level: &'p str,
    resources: Option<String>,
    init_args: Cow<'p, str>,
    app_containers: String,
    pod_ports: String,
    workload: String,
    owner: String,
    interception: &'p str,
    /// `PROXY_CONFIG` when the pod sets `proxy.istio.io/config`.
    proxy_config: Option<String>,
    lifecycle: Option<String>,
    native: bool,
    probes: Option<Cow<'p, str>>,
    prometheus_env: Option<String>,
    probers: Option<String>,
    user_mounts: Vec<String>,
    /// Env vars of an earlier injection's proxy that this template does not set: kept, as
    /// Istio's strategic merge of the template over the old container keeps them.
    carried_env: Vec<String>,
}

impl<'p> PodValues<'p> {
    fn compute(
        tmpl: &'p RevisionTemplate,
        namespace: &str,
        meta: &'p Meta<'_>,
        spec: &Spec<'_>,
        settings: &PodSettings,
    ) -> Result<Self, String> {
        let ann = |k: &str| meta.annotation(k);
        // Values were checked by `validate::annotations` (Istio's checks, and no control
        // characters); Istio takes the image annotation only when it names a repository.
        let image = ann("sidecar.istio.io/proxyImage").filter(|i| i.contains('/'));
        let log_level = ann("sidecar.istio.io/logLevel").unwrap_or(&tmpl.log_level);
        let component_log_level =
            ann("sidecar.istio.io/componentLogLevel").unwrap_or(&tmpl.component_log_level);
        let agent_log_level =
            ann("sidecar.istio.io/agentLogLevel").unwrap_or(&tmpl.agent_log_level);
        let mut resources = None;
        let overrides = [
            ("sidecar.istio.io/proxyCPU", true, "cpu"),
            ("sidecar.istio.io/proxyMemory", true, "memory"),
            ("sidecar.istio.io/proxyCPULimit", false, "cpu"),
            ("sidecar.istio.io/proxyMemoryLimit", false, "memory"),
        ];
        if overrides.iter().any(|(k, _, _)| ann(k).is_some()) {
            // Istio's template: with any of these annotations, only the annotated values
            // are written (the installation's defaults are not merged in).
            let mut r = ProxyResourceDefaults::default();
            for (key, request, res) in overrides {
                if let Some(q) = ann(key) {
                    let map = if request {
                        &mut r.requests
                    } else {
                        &mut r.limits
                    };
                    map.insert(res.to_string(), q.to_string());
                }
            }
            for res in ["cpu", "memory"] {
                if let (Some(req), Some(lim)) = (r.requests.get(res), r.limits.get(res))
                    && let (Some(a), Some(b)) = (quantity_value(req), quantity_value(lim))
                    && a > b
                    // The gateway and grpc-simple templates write no proxy resources.
                    && templates::read_proxy_annotations(ann(crate::core::ANNOTATION_TEMPLATES))
                {
                    return Err(format!(
                        "annotations sidecar.istio.io/proxy{0} ({req}) and sidecar.istio.io/proxy{0}Limit ({lim}): the request is above the limit, which the API server refuses",
                        if res == "cpu" { "CPU" } else { "Memory" }
                    ));
                }
            }
            resources = Some(r.to_json());
        }
        let interception = ann("sidecar.istio.io/interceptionMode").unwrap_or("REDIRECT");
        let init_args = init_args(tmpl, meta, interception, agent_log_level);

        let mut app_containers = String::new();
        let mut pod_ports = String::from("[");
        for c in spec
            .containers
            .iter()
            .filter(|c| c.name.as_str() != PROXY_CONTAINER)
        {
            if !app_containers.is_empty() {
                app_containers.push(',');
            }
            app_containers.push_str(c.name.as_str());
            if let Some(raw) = c.ports {
                let inner = raw.get().trim();
                let inner = inner
                    .strip_prefix('[')
                    .and_then(|s| s.strip_suffix(']'))
                    .unwrap_or("")
                    .trim();
                if !inner.is_empty() {
                    if pod_ports.len() > 1 {
                        pod_ports.push(',');
                    }
                    pod_ports.push_str(inner);
                }
            }
        }
        pod_ports.push(']');
        let (mut workload, owner) = workload_identity(namespace, meta);
        if tmpl.features.v1_25
            && let Some(w) = meta.label("service.istio.io/workload-name")
        {
            workload = w.to_string();
        }

        let status_port = settings.status_port;
        let lifecycle = if settings.hold && !settings.native {
            Some(
                r#","lifecycle":{"postStart":{"exec":{"command":["pilot-agent","wait"]}}}"#
                    .to_string(),
            )
        } else if settings.native {
            Some(format!(
                r#","lifecycle":{{"preStop":{{"exec":{{"command":["pilot-agent","request","--debug-port={status_port}","POST","drain"]}}}}}}"#
            ))
        } else {
            None
        };
        let probes = if status_port == 0 {
            None
        } else {
            let get = |k: &str, d: u32| ann(k).and_then(|v| v.parse::<u32>().ok()).unwrap_or(d);
            let custom = [
                "readiness.status.sidecar.istio.io/initialDelaySeconds",
                "readiness.status.sidecar.istio.io/periodSeconds",
                "readiness.status.sidecar.istio.io/failureThreshold",
            ]
            .iter()
            .any(|k| ann(k).is_some());
            Some(if custom {
                Cow::Owned(template::render_probes(
                    get("readiness.status.sidecar.istio.io/initialDelaySeconds", 0),
                    get("readiness.status.sidecar.istio.io/periodSeconds", 15),
                    get("readiness.status.sidecar.istio.io/failureThreshold", 4),
                ))
            } else {
                Cow::Borrowed(&*tmpl.probes_json)
            })
        };
        let user_mounts = match ann("sidecar.istio.io/userVolumeMount") {
            Some(v) => named_objects("sidecar.istio.io/userVolumeMount", v)
                .or_else(|e| unread_user_volumes(meta, e))?,
            None => Vec::new(),
        };
        Ok(PodValues {
            image,
            log_level,
            component_log_level,
            agent_log_level,
            resources,
            init_args,
            app_containers,
            pod_ports,
            workload,
            owner,
            interception,
            proxy_config: settings.proxy_config.clone(),
            lifecycle,
            native: settings.native,
            probes,
            prometheus_env: None,
            probers: None,
            user_mounts,
            carried_env: Vec::new(),
        })
    }

    fn fill(&self, tmpl: &RevisionTemplate, slot: Slot, out: &mut Vec<u8>) {
        // Go omits an empty env value; so does meshrev.
        let env = |out: &mut Vec<u8>, name: &str, value: &str| {
            out.extend_from_slice(b",{\"name\":\"");
            out.extend_from_slice(name.as_bytes());
            out.push(b'"');
            if !value.is_empty() {
                out.extend_from_slice(b",\"value\":");
                push_str_json(out, value);
            }
            out.push(b'}');
        };
        match slot {
            Slot::Image => match self.image {
                Some(img) => push_str_json(out, img),
                None => out.extend_from_slice(tmpl.image_json.as_bytes()),
            },
            Slot::InitArgs => out.extend_from_slice(self.init_args.as_bytes()),
            Slot::ProxyArgs => {
                out.extend_from_slice(
                    b"[\"proxy\",\"sidecar\",\"--domain\",\"$(POD_NAMESPACE).svc.cluster.local\",",
                );
                for (i, (flag, v)) in [
                    ("--proxyLogLevel=", self.log_level),
                    ("--proxyComponentLogLevel=", self.component_log_level),
                    ("--log_output_level=", self.agent_log_level),
                ]
                .into_iter()
                .enumerate()
                {
                    if i > 0 {
                        out.push(b',');
                    }
                    // `"<flag><value>"`: the flag needs no escaping, the value may.
                    let at = out.len();
                    push_str_json(out, v);
                    out.splice(at + 1..at + 1, flag.bytes());
                }
                out.push(b']');
            }
            Slot::Resources => match &self.resources {
                Some(r) => out.extend_from_slice(r.as_bytes()),
                None => out.extend_from_slice(tmpl.resources_json.as_bytes()),
            },
            Slot::EnvPod => {
                match &self.proxy_config {
                    Some(pc) => env(out, "PROXY_CONFIG", pc),
                    None => {
                        out.extend_from_slice(b",{\"name\":\"PROXY_CONFIG\",\"value\":");
                        out.extend_from_slice(tmpl.proxy_config_json.as_bytes());
                        out.push(b'}');
                    }
                }
                env(out, "ISTIO_META_POD_PORTS", &self.pod_ports);
                env(out, "ISTIO_META_APP_CONTAINERS", &self.app_containers);
            }
            Slot::EnvWorkload => {
                env(out, "ISTIO_META_INTERCEPTION_MODE", self.interception);
                env(out, "ISTIO_META_WORKLOAD_NAME", &self.workload);
                env(out, "ISTIO_META_OWNER", &self.owner);
            }
            Slot::EnvTail => {
                if let Some(p) = &self.prometheus_env {
                    env(out, "ISTIO_PROMETHEUS_ANNOTATIONS", p);
                }
                if let Some(p) = &self.probers {
                    env(out, "ISTIO_KUBE_APP_PROBERS", p);
                }
                for e in &self.carried_env {
                    out.push(b',');
                    out.extend_from_slice(e.as_bytes());
                }
            }
            Slot::ProxySecurity => out.extend_from_slice(if self.interception == "TPROXY" {
                tmpl.proxy_security_tproxy_json.as_bytes()
            } else {
                tmpl.proxy_security_json.as_bytes()
            }),
            Slot::Lifecycle => {
                if let Some(l) = &self.lifecycle {
                    out.extend_from_slice(l.as_bytes());
                }
            }
            Slot::RestartPolicy => {
                if self.native {
                    out.extend_from_slice(b",\"restartPolicy\":\"Always\"");
                }
            }
            Slot::Probes => {
                if let Some(p) = &self.probes {
                    out.extend_from_slice(p.as_bytes());
                }
            }
            Slot::MountsTail => {
                for m in &self.user_mounts {
                    out.push(b',');
                    out.extend_from_slice(m.as_bytes());
                }
            }
        }
    }

    fn render(&self, tmpl: &RevisionTemplate, frag: &[Part], out: &mut Vec<u8>) {
        for p in frag {
            match p {
                Part::Lit(l) => out.extend_from_slice(l.as_bytes()),
                Part::Slot(s) => self.fill(tmpl, *s, out),
            }
        }
    }
}

/// `{"name": {...}, …}` (Istio's `userVolume`/`userVolumeMount`) → one JSON object per entry,
/// with its `name`.
fn named_objects(key: &str, v: &str) -> Result<Vec<String>, String> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(v)
        .map_err(|e| format!("annotation {key}: not a JSON object of name → object: {e}"))?;
    map.into_iter()
        .map(|(name, mut obj)| match &mut obj {
            serde_json::Value::Object(o) => {
                o.insert("name".into(), serde_json::Value::String(name));
                Ok(obj.to_string())
            }
            _ => Err(format!("annotation {key}: entry {name:?} is not an object")),
        })
        .collect()
}

/// A malformed `userVolume[Mount]` refuses the pod only when one of its templates reads it
/// (Istio's `gateway` and `grpc-simple` never do, and inject): else it adds nothing.
fn unread_user_volumes(meta: &Meta<'_>, refusal: String) -> Result<Vec<String>, String> {
    if templates::read_proxy_annotations(meta.annotation(crate::core::ANNOTATION_TEMPLATES)) {
        Err(refusal)
    } else {
        Ok(Vec::new())
    }
}

/// Env vars every sidecar sets (or meshrev set once); an earlier proxy's other env vars are
/// carried over on re-injection.
const SIDECAR_ENV: [&str; 23] = [
    "PILOT_CERT_PROVIDER",
    "CA_ADDR",
    "POD_NAME",
    "POD_NAMESPACE",
    "INSTANCE_IP",
    "SERVICE_ACCOUNT",
    "HOST_IP",
    "ISTIO_CPU_LIMIT",
    "PROXY_CONFIG",
    "ISTIO_META_POD_PORTS",
    "ISTIO_META_APP_CONTAINERS",
    "GOMEMLIMIT",
    "GOMAXPROCS",
    "ISTIO_META_CLUSTER_ID",
    "ISTIO_META_NODE_NAME",
    "ISTIO_META_INTERCEPTION_MODE",
    "ISTIO_META_WORKLOAD_NAME",
    "ISTIO_META_OWNER",
    "ISTIO_META_MESH_ID",
    "TRUST_DOMAIN",
    "ISTIO_PROMETHEUS_ANNOTATIONS",
    "ISTIO_KUBE_APP_PROBERS",
    "ISTIO_META_REVISION",
];

fn carried_env(tmpl: &RevisionTemplate, old: &str) -> Vec<String> {
    let Ok(vars) = serde_json::from_str::<Vec<serde_json::Value>>(old) else {
        return Vec::new();
    };
    vars.into_iter()
        .filter(|v| {
            let name = v
                .get("name")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            !name.is_empty()
                && !SIDECAR_ENV.contains(&name)
                && !tmpl.override_env_names.iter().any(|n| n == name)
        })
        .map(|v| v.to_string())
        .collect()
}

/// The value of env var `name` in a container's raw `env` array.
fn old_env_value(env: Option<&str>, name: &str) -> Option<String> {
    let vars: Vec<serde_json::Value> = serde_json::from_str(env?).ok()?;
    vars.iter()
        .find(|v| v.get("name").and_then(serde_json::Value::as_str) == Some(name))
        .and_then(|v| v.get("value").and_then(serde_json::Value::as_str))
        .map(str::to_string)
}

/// Per-pod settings decided before rendering.
struct PodSettings {
    native: bool,
    hold: bool,
    status_port: i64,
    proxy_config: Option<String>,
}

impl PodSettings {
    fn of(
        tmpl: &RevisionTemplate,
        nodes_native: Option<bool>,
        meta: &Meta<'_>,
    ) -> Result<PodSettings, String> {
        let ann = |k: &str| meta.annotation(k);
        let native = match (
            tmpl.features.native_annotation,
            ann("sidecar.istio.io/nativeSidecar"),
        ) {
            (template::NativeAnnotation::Ignored, _) | (_, None) => tmpl.native_for(nodes_native),
            (template::NativeAnnotation::TrueOptsIn, Some(v)) => v == "true",
            (template::NativeAnnotation::NotFalseOptsIn, Some(v)) => v != "false",
        };
        let mut hold = tmpl.hold_application;
        let mut proxy_config = None;
        if let Some(pc) = ann("proxy.istio.io/config") {
            let parsed: serde_json::Value = serde_json::from_str(pc)
                .or_else(|_| crate::yaml::from_str(pc).map_err(|e| e.to_string()))
                .map_err(|e| format!("annotation proxy.istio.io/config: not a ProxyConfig: {e}"))?;
            let serde_json::Value::Object(mut m) = parsed else {
                return Err(
                    "annotation proxy.istio.io/config: must be a ProxyConfig object".to_string(),
                );
            };
            // Istio ORs the pod's setting with the installation's.
            if m.get("holdApplicationUntilProxyStarts") == Some(&serde_json::Value::Bool(true)) {
                hold = true;
            }
            m.entry("discoveryAddress")
                .or_insert_with(|| tmpl.discovery_address.clone().into());
            proxy_config = Some(serde_json::Value::Object(m).to_string() + "\n");
        }
        let status_port = match ann("status.sidecar.istio.io/port") {
            Some(p) => i64::from(p.trim().parse::<u16>().map_err(|_| {
                format!("annotation status.sidecar.istio.io/port: {p:?} is not a port number")
            })?),
            None => i64::from(STATUS_PORT),
        };
        Ok(PodSettings {
            native,
            hold,
            status_port,
            proxy_config,
        })
    }
}

/// Istio's `prometheus.io/*` handling ("metrics merge"): the app's scrape settings move into
/// `ISTIO_PROMETHEUS_ANNOTATIONS` and the pod's annotations point Prometheus at the agent,
/// which scrapes the app and Envoy and serves both.
struct PrometheusMerge<'m> {
    /// Annotation keys to remove (every spelling Prometheus' relabelling would read).
    remove: Vec<&'m str>,
    env: Option<String>,
}

/// Whether `key`, sanitized as Prometheus sanitizes label names (every character outside
/// `[a-zA-Z0-9_]`, and a leading digit, becomes `_`), equals `target` (which is already
/// sanitized). No allocation: this runs for every annotation of every injected pod.
fn sanitizes_to(key: &str, target: &str) -> bool {
    key.len() == target.len()
        && key
            .bytes()
            .zip(target.bytes())
            .enumerate()
            .all(|(i, (k, t))| {
                let keep = k.is_ascii_alphabetic() || k == b'_' || (i > 0 && k.is_ascii_digit());
                (if keep { k } else { b'_' }) == t
            })
}

fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn prometheus_merge<'m>(meta: &'m Meta<'_>) -> Option<PrometheusMerge<'m>> {
    if let Some(v) = meta.annotation("prometheus.istio.io/merge-metrics")
        && parse_go_bool(v) == Some(false)
    {
        return None;
    }
    let anns = meta
        .annotations
        .as_ref()
        .map(|a| a.0.as_slice())
        .unwrap_or(&[]);
    let (mut scrape, mut path, mut port) = (None, None, None);
    let mut remove = Vec::new();
    for (k, v) in anns {
        let (k, v) = (k.as_str(), v.as_str());
        let which = [
            "prometheus_io_scrape",
            "prometheus_io_path",
            "prometheus_io_port",
        ]
        .into_iter()
        .find(|t| sanitizes_to(k, t));
        match which {
            Some("prometheus_io_scrape") => {
                if parse_go_bool(v) == Some(false) {
                    return None;
                }
                scrape = Some(v);
            }
            Some("prometheus_io_path") => path = Some(v),
            Some("prometheus_io_port") => port = Some(v),
            _ => continue,
        }
        remove.push(k);
    }
    if port == Some("15020") {
        // Already pointing at the agent: re-injected, or the user's choice.
        return None;
    }
    // `ISTIO_PROMETHEUS_ANNOTATIONS`: the app's settings, as the JSON object Istio writes
    // (keys in the order a `serde_json::Value` prints them).
    let env = (scrape.is_some() || path.is_some() || port.is_some()).then(|| {
        let mut env = Vec::with_capacity(48);
        for (i, (k, v)) in [("path", path), ("port", port), ("scrape", scrape)]
            .into_iter()
            .enumerate()
        {
            env.extend_from_slice(if i == 0 { b"{\"" } else { b",\"" });
            env.extend_from_slice(k.as_bytes());
            env.extend_from_slice(b"\":");
            push_str_json(&mut env, v.unwrap_or(""));
        }
        env.push(b'}');
        String::from_utf8(env).expect("JSON written from strings must be UTF-8")
    });
    Some(PrometheusMerge { remove, env })
}

/// Istio's `service.istio.io/canonical-name` rule: the label, else `app.kubernetes.io/name`,
/// else `app`, else the workload name; at most 63 characters, no trailing `-`.
fn canonical_name<'v>(meta: &'v Meta<'_>, workload: &'v str) -> &'v str {
    let name = [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| meta.label(k).filter(|v| !v.is_empty()))
    .unwrap_or(workload);
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].trim_end_matches('-')
}

/// Writes the patch that injects `tmpl` into the pod.
fn write_patch(
    tmpl: &RevisionTemplate,
    nodes_native: Option<bool>,
    namespace: &str,
    meta: &Meta<'_>,
    spec: &Spec<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Refusal> {
    let status: Option<Status> = meta
        .annotation(ANNOTATION_STATUS)
        .map(|s| serde_json::from_str(s).unwrap_or_default());
    // An injected pod is injected again, as Istio does: its spec may have changed since (a
    // container added to the template), and the result of re-injecting an unchanged pod is
    // the same pod.
    validate::annotations(meta).map_err(Refusal::Annotation)?;
    let settings = PodSettings::of(tmpl, nodes_native, meta).map_err(Refusal::Annotation)?;
    let mut values =
        PodValues::compute(tmpl, namespace, meta, spec, &settings).map_err(Refusal::Annotation)?;
    let old_proxy_env = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name.as_str() == PROXY_CONTAINER)
        .and_then(|c| c.env)
        .map(|e| e.get());

    let rewrite_probes = meta
        .annotation("sidecar.istio.io/rewriteAppHTTPProbers")
        .and_then(parse_go_bool)
        .unwrap_or(true);
    let mut rewrite = probes::Rewrite::default();
    if rewrite_probes {
        rewrite = probes::rewrite(spec, settings.status_port, tmpl.features.lifecycle_rewrite);
        if status.is_some() {
            probes::merge_previous(&mut rewrite.probers, old_proxy_env);
        }
        if !rewrite.probers.is_empty() {
            values.probers = Some(rewrite.probers_json());
        }
    }
    if status.is_some()
        && let Some(old) = old_proxy_env
    {
        values.carried_env = carried_env(tmpl, old);
    }
    let prom = prometheus_merge(meta);
    match &prom {
        Some(p) => values.prometheus_env = p.env.clone(),
        // Re-injection: the annotations already point at the agent; the app's settings
        // live on in the old proxy's env.
        None if status.is_some() => {
            values.prometheus_env = old_env_value(old_proxy_env, "ISTIO_PROMETHEUS_ANNOTATIONS");
        }
        None => {}
    }
    let user_volumes = match meta.annotation("sidecar.istio.io/userVolume") {
        Some(v) => named_objects("sidecar.istio.io/userVolume", v)
            .or_else(|e| unread_user_volumes(meta, e))
            .map_err(Refusal::Annotation)?,
        None => Vec::new(),
    };

    let mut ops = Ops { out, n: 0 };

    // Rewritten probes first: their paths use the indices of the pod as it came.
    for (path, value) in &rewrite.replaces {
        ops.with_value("replace", &[path], |o| {
            o.extend_from_slice(value.as_bytes())
        });
    }

    // Remove what an earlier injection left, so nothing is doubled. Only what an injection
    // adds is removed: `sidecar.istio.io/status` is the pod's own text, so a name it lists is
    // trusted only for a container or volume that is a sidecar's (a forged status must not
    // take the app's own containers or volumes away).
    let user_volume_names = user_volumes_names(meta);
    let old_volume = |n: &str| {
        tmpl.volume_names.contains(&n)
            || INJECTED_VOLUMES.contains(&n)
            || (user_volume_names.iter().any(|u| u == n)
                && st_volumes(&status).is_some_and(|v| v.iter().any(|x| x == n)))
    };
    if let Some(inits) = &spec.init_containers {
        remove_named(
            &mut ops,
            "/spec/initContainers/",
            inits.iter().map(|c| c.name.as_str()),
            |n| INJECTED_CONTAINERS.contains(&n),
        );
    }
    remove_named(
        &mut ops,
        "/spec/containers/",
        spec.containers.iter().map(|c| c.name.as_str()),
        |n| INJECTED_CONTAINERS.contains(&n),
    );
    if let Some(vols) = &spec.volumes {
        remove_named(
            &mut ops,
            "/spec/volumes/",
            vols.iter().map(|v| v.name.as_str()),
            old_volume,
        );
    }

    // Containers. Native: initContainers = istio-init, istio-proxy, the pod's own. Classic:
    // istio-init after the pod's init containers; istio-proxy last (first when the app
    // waits for it).
    let init = |o: &mut Vec<u8>| values.render(tmpl, &tmpl.init_container.0, o);
    let proxy = |o: &mut Vec<u8>| values.render(tmpl, &tmpl.proxy_container.0, o);
    let no_init = values.interception == "NONE" && !values.native;
    if values.native {
        if spec.init_containers.is_some() {
            ops.add(&["/spec/initContainers/0"], proxy);
            if values.interception != "NONE" {
                ops.add(&["/spec/initContainers/0"], init);
            }
        } else {
            ops.add(&["/spec/initContainers"], |o| {
                o.push(b'[');
                if values.interception != "NONE" {
                    init(o);
                    o.push(b',');
                }
                proxy(o);
                o.push(b']');
            });
        }
    } else {
        if !no_init {
            if spec.init_containers.is_some() {
                ops.add(&["/spec/initContainers/-"], init);
            } else {
                ops.add(&["/spec/initContainers"], |o| {
                    o.push(b'[');
                    init(o);
                    o.push(b']');
                });
            }
        }
        let at = if settings.hold {
            "/spec/containers/0"
        } else {
            "/spec/containers/-"
        };
        ops.add(&[at], proxy);
    }
    let all_volumes = tmpl
        .volumes
        .iter()
        .map(|v| &**v)
        .chain(user_volumes.iter().map(String::as_str));
    if spec.volumes.is_some() {
        for v in all_volumes {
            ops.raw(&["/spec/volumes/-"], v);
        }
    } else {
        ops.add(&["/spec/volumes"], |o| {
            o.push(b'[');
            for (i, v) in all_volumes.enumerate() {
                if i > 0 {
                    o.push(b',');
                }
                o.extend_from_slice(v.as_bytes());
            }
            o.push(b']');
        });
    }

    // Labels.
    let canonical_rev = [
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| meta.label(k).filter(|v| !v.is_empty()))
    .unwrap_or("latest");
    let tls_mode = meta
        .label("security.istio.io/tlsMode")
        .filter(|v| !v.is_empty())
        .unwrap_or("istio");
    let labels: [(&str, Cow<str>); 3] = [
        ("security.istio.io~1tlsMode", json_str(tls_mode).into()),
        (
            "service.istio.io~1canonical-name",
            json_str(canonical_name(meta, &values.workload)).into(),
        ),
        (
            "service.istio.io~1canonical-revision",
            json_str(canonical_rev).into(),
        ),
    ];
    write_map(&mut ops, "/metadata/labels", meta.labels.is_some(), &labels);

    // Annotations.
    let mut anns: Vec<(Cow<str>, Cow<str>)> = Vec::with_capacity(8 + tmpl.extra_annotations.len());
    for (k, v) in &tmpl.extra_annotations {
        anns.push((Cow::Borrowed(k), Cow::Borrowed(v)));
    }
    if let Some(first) = spec
        .containers
        .iter()
        .find(|c| c.name.as_str() != PROXY_CONTAINER)
    {
        for (k, key) in [
            (
                "kubectl.kubernetes.io/default-container",
                "kubectl.kubernetes.io~1default-container",
            ),
            (
                "kubectl.kubernetes.io/default-logs-container",
                "kubectl.kubernetes.io~1default-logs-container",
            ),
        ] {
            if meta.annotation(k).is_none() {
                anns.push((Cow::Borrowed(key), json_str(first.name.as_str()).into()));
            }
        }
    }
    if let Some(p) = &prom {
        if meta.annotations.is_some() {
            for k in &p.remove {
                let key = pointer_escape(k);
                ops.remove(&["/metadata/annotations/", &key]);
            }
        }
        anns.push((
            Cow::Borrowed("prometheus.io~1port"),
            Cow::Borrowed("\"15020\""),
        ));
        anns.push((
            Cow::Borrowed("prometheus.io~1path"),
            Cow::Borrowed("\"/stats/prometheus\""),
        ));
        anns.push((
            Cow::Borrowed("prometheus.io~1scrape"),
            Cow::Borrowed("\"true\""),
        ));
    }
    anns.push((
        Cow::Borrowed("istio.io~1rev"),
        Cow::Borrowed(&tmpl.revision_json),
    ));
    let default_shape = values.interception != "NONE" && user_volumes.is_empty();
    let status_json: Cow<str> = match (default_shape, values.native) {
        (true, true) => Cow::Borrowed(&tmpl.status_json_native),
        (true, false) => Cow::Borrowed(&tmpl.status_json_classic),
        (false, native) => {
            // What this pod actually got, in Istio's format.
            let init = values.interception != "NONE";
            let mut inits: Vec<&str> = Vec::new();
            if init {
                inits.push(INIT_CONTAINER);
            }
            if native {
                inits.push(PROXY_CONTAINER);
            }
            let mut vols: Vec<&str> = tmpl.volume_names.clone();
            let user_names: Vec<String> = user_volumes
                .iter()
                .filter_map(|v| {
                    serde_json::from_str::<serde_json::Value>(v)
                        .ok()
                        .and_then(|v| v["name"].as_str().map(str::to_string))
                })
                .collect();
            vols.extend(user_names.iter().map(String::as_str));
            let status = serde_json::json!({
                "initContainers": if inits.is_empty() { serde_json::Value::Null } else { serde_json::json!(inits) },
                "containers": if native { serde_json::Value::Null } else { serde_json::json!([PROXY_CONTAINER]) },
                "volumes": vols,
                "imagePullSecrets": null,
                "revision": tmpl.revision,
            });
            Cow::Owned(json_str(&status.to_string()))
        }
    };
    anns.push((Cow::Borrowed("sidecar.istio.io~1status"), status_json));
    write_map(
        &mut ops,
        "/metadata/annotations",
        meta.annotations.is_some(),
        &anns,
    );
    let _ = no_init;
    ops.finish();
    Ok(())
}

/// Removes, highest index first (so earlier indices stay valid), the elements whose name
/// matches.
fn remove_named<'n>(
    ops: &mut Ops<'_>,
    prefix: &str,
    names: impl Iterator<Item = &'n str>,
    hit: impl Fn(&str) -> bool,
) {
    let idx: Vec<usize> = names
        .enumerate()
        .filter(|(_, n)| hit(n))
        .map(|(i, _)| i)
        .collect();
    for i in idx.into_iter().rev() {
        let i = i.to_string();
        ops.remove(&[prefix, &i]);
    }
}

/// Sets keys of a labels/annotations map: one `add` per key when the map exists, else one
/// `add` of the whole map. Values are JSON text.
fn write_map<K: AsRef<str>>(
    ops: &mut Ops<'_>,
    path: &str,
    exists: bool,
    entries: &[(K, Cow<str>)],
) {
    if exists {
        for (k, v) in entries {
            ops.raw(&[path, "/", k.as_ref()], v);
        }
    } else {
        ops.add(&[path], |o| {
            o.push(b'{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    o.push(b',');
                }
                // Keys were pointer-escaped for paths; undo that for an object key.
                push_str_json(o, &k.as_ref().replace("~1", "/").replace("~0", "~"));
                o.push(b':');
                o.extend_from_slice(v.as_bytes());
            }
            o.push(b'}');
        });
    }
}

/// The annotations that change `istio-init`'s args.
const INIT_ARG_ANNOTATIONS: [&str; 11] = [
    "traffic.sidecar.istio.io/includeOutboundIPRanges",
    "traffic.sidecar.istio.io/excludeOutboundIPRanges",
    "traffic.sidecar.istio.io/includeInboundPorts",
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "traffic.sidecar.istio.io/includeOutboundPorts",
    "traffic.sidecar.istio.io/excludeOutboundPorts",
    "traffic.sidecar.istio.io/kubevirtInterfaces",
    "traffic.sidecar.istio.io/excludeInterfaces",
    "istio.io/reroute-virtual-interfaces",
    "status.sidecar.istio.io/port",
    "sidecar.istio.io/interceptionMode",
];

/// The args of `istio-init` (Istio's template), honouring the traffic annotations. The
/// values were validated by [`validate::annotations`].
fn init_args<'t>(
    tmpl: &'t RevisionTemplate,
    meta: &Meta<'_>,
    interception: &str,
    agent_log_level: &str,
) -> Cow<'t, str> {
    // Most pods set none of these annotations: their args were rendered with the revision.
    if agent_log_level == tmpl.agent_log_level
        && INIT_ARG_ANNOTATIONS
            .iter()
            .all(|k| meta.annotation(k).is_none())
    {
        return Cow::Borrowed(&tmpl.default_init_args);
    }
    Cow::Owned(render_init_args(tmpl, meta, interception, agent_log_level))
}

/// Istio's `excludeInboundPort`: adds the status port to the excluded inbound ports unless
/// it is there already (or is 0).
fn exclude_inbound_port(port: &str, excluded: &str) -> String {
    let port = port.trim();
    if port.is_empty() || port == "0" {
        return excluded.to_string();
    }
    let mut out = Vec::new();
    for p in excluded.split(',') {
        if p == port {
            return excluded.to_string();
        }
        let p = p.trim();
        if !p.is_empty() {
            out.push(p);
        }
    }
    out.push(port);
    out.join(",")
}

/// Renders `istio-init`'s args (a JSON array) for a pod.
pub(crate) fn render_init_args(
    tmpl: &RevisionTemplate,
    meta: &Meta<'_>,
    interception: &str,
    agent_log_level: &str,
) -> String {
    let get = |k: &str| meta.annotation(k);
    let excluded = exclude_inbound_port(
        get("status.sidecar.istio.io/port").unwrap_or("15020"),
        get("traffic.sidecar.istio.io/excludeInboundPorts").unwrap_or(""),
    );
    let d = if excluded.is_empty() {
        "15090,15021".to_string()
    } else {
        format!("15090,15021,{excluded}")
    };
    let mut args: Vec<&str> = vec![
        "istio-iptables",
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        "1337",
        "-m",
        interception,
        "-i",
        get("traffic.sidecar.istio.io/includeOutboundIPRanges").unwrap_or(&tmpl.include_ip_ranges),
        "-x",
        get("traffic.sidecar.istio.io/excludeOutboundIPRanges").unwrap_or(&tmpl.exclude_ip_ranges),
        "-b",
        get("traffic.sidecar.istio.io/includeInboundPorts").unwrap_or("*"),
        "-d",
        &d,
    ];
    if let Some(q) = get("traffic.sidecar.istio.io/includeOutboundPorts") {
        args.extend(["-q", q]);
    }
    if let Some(o) = get("traffic.sidecar.istio.io/excludeOutboundPorts") {
        args.extend(["-o", o]);
    }
    if let Some(k) = get("istio.io/reroute-virtual-interfaces")
        .or_else(|| get("traffic.sidecar.istio.io/kubevirtInterfaces"))
    {
        args.extend(["-k", k]);
    }
    if let Some(c) = get("traffic.sidecar.istio.io/excludeInterfaces") {
        args.extend(["-c", c]);
    }
    let log = format!("--log_output_level={agent_log_level}");
    args.push(&log);
    serde_json::to_string(&args).expect("strings must serialize")
}

/// The workload name and Istio's `ISTIO_META_OWNER` for a pod.
fn workload_identity(namespace: &str, meta: &Meta<'_>) -> (String, String) {
    let owner = meta.owner_references.as_ref().and_then(|refs| {
        refs.iter()
            .find(|r| r.controller == Some(true))
            .or_else(|| refs.first())
    });
    if let Some(o) = owner {
        let (kind, name) = (o.kind.as_str(), o.name.as_str());
        if kind == "ReplicaSet"
            && let Some(hash) = meta.label("pod-template-hash")
            && let Some(dep) = name.strip_suffix(hash).and_then(|n| n.strip_suffix('-'))
        {
            return (
                dep.to_string(),
                format!("kubernetes://apis/apps/v1/namespaces/{namespace}/deployments/{dep}"),
            );
        }
        let api = o.api_version.as_str();
        let api = if api.is_empty() { "v1" } else { api };
        return (
            name.to_string(),
            format!(
                "kubernetes://apis/{api}/namespaces/{namespace}/{}s/{name}",
                kind.to_ascii_lowercase()
            ),
        );
    }
    let name = meta
        .name
        .as_ref()
        .map(|n| n.as_str().to_string())
        .or_else(|| {
            meta.generate_name
                .as_ref()
                .map(|g| g.as_str().trim_end_matches('-').to_string())
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    let owner = format!("kubernetes://apis/v1/namespaces/{namespace}/pods/{name}");
    (name, owner)
}

#[cfg(test)]
mod tests;
