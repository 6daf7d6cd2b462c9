//! The injector: the sidecar of a revision as an RFC 6902 JSON Patch against the original pod.
//!
//! Per revision, the constant parts were rendered when the table was built
//! ([`RevisionTemplate`]); per request [`inject`] routes the pod and writes the patch straight
//! into one buffer, filling only the pod-dependent slots.

pub mod pod;
mod template;

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;

pub use template::{
    INIT_CONTAINER, PROXY_CONTAINER, Part, ProxyResourceDefaults, RevisionTemplate, Slot,
    VOLUME_NAMES, json_str, pointer_escape,
};

use crate::router::{self, Decision, SkipReason, Via};
use crate::table::{Revision, Table};
use pod::{Meta, Pod, Spec};

/// Annotation recording what was injected (Istio's format).
pub const ANNOTATION_STATUS: &str = "sidecar.istio.io/status";

/// What [`inject`] did.
#[derive(Debug)]
pub enum Outcome<'t> {
    /// A patch was written to the buffer.
    Injected {
        revision: &'t Arc<Revision>,
        via: Via<'t>,
        warning: Option<String>,
    },
    /// No patch; the pod is admitted as it is.
    Skipped {
        reason: SkipReason,
        warning: Option<String>,
    },
    /// The pod asks for something invalid (a malformed annotation); the message names it.
    Denied(String),
}

/// Routes `pod` (created in `namespace`) and, when it is to be injected, appends the JSON
/// Patch to `patch` (which must be empty).
pub fn inject<'t>(
    table: &'t Table,
    namespace: &str,
    pod: &Pod<'_>,
    patch: &mut Vec<u8>,
) -> Outcome<'t> {
    static EMPTY: Spec<'static> = Spec {
        host_network: None,
        containers: Vec::new(),
        init_containers: None,
        volumes: None,
    };
    let spec = pod.spec.as_ref().unwrap_or(&EMPTY);
    match router::route(
        table,
        namespace,
        spec.host_network.unwrap_or(false),
        &pod.metadata,
    ) {
        Decision::Skip { reason, warning } => Outcome::Skipped { reason, warning },
        Decision::Inject {
            revision,
            via,
            warning,
        } => match write_patch(&revision.template, namespace, &pod.metadata, spec, patch) {
            Ok(true) => Outcome::Injected {
                revision,
                via,
                warning,
            },
            Ok(false) => Outcome::Skipped {
                reason: SkipReason::AlreadyInjected,
                warning,
            },
            Err(e) => {
                patch.clear();
                Outcome::Denied(e)
            }
        },
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Status {
    #[serde(default)]
    init_containers: Option<Vec<String>>,
    #[serde(default)]
    containers: Option<Vec<String>>,
    #[serde(default)]
    volumes: Option<Vec<String>>,
    #[serde(default)]
    revision: Option<String>,
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
    /// `add` with a value written by `value`.
    fn add(&mut self, path: &[&str], value: impl FnOnce(&mut Vec<u8>)) {
        self.start("add", path);
        self.out.extend_from_slice(b",\"value\":");
        value(self.out);
        self.out.push(b'}');
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

fn push_str_json(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing a string to a Vec must not fail");
}

/// Per-request values, validated before anything is written.
struct PodValues<'p> {
    image: Option<&'p str>,
    log_level: &'p str,
    resources: Option<String>,
    init_args: Cow<'static, str>,
    app_containers: String,
    pod_ports: String,
    workload: String,
    owner: String,
}

const LOG_LEVELS: [&str; 7] = [
    "trace", "debug", "info", "warning", "error", "critical", "off",
];

impl<'p> PodValues<'p> {
    fn compute(
        tmpl: &RevisionTemplate,
        namespace: &str,
        meta: &'p Meta<'_>,
        spec: &Spec<'_>,
    ) -> Result<Self, String> {
        let ann = |k: &str| meta.annotation(k);
        let image = ann("sidecar.istio.io/proxyImage");
        if let Some(img) = image
            && (img.is_empty() || img.chars().any(char::is_whitespace))
        {
            return Err(format!(
                "annotation sidecar.istio.io/proxyImage: {img:?} is not an image reference"
            ));
        }
        let log_level = ann("sidecar.istio.io/logLevel").unwrap_or("warning");
        if !LOG_LEVELS.contains(&log_level) {
            return Err(format!(
                "annotation sidecar.istio.io/logLevel: {log_level:?} is not one of {}",
                LOG_LEVELS.join(", ")
            ));
        }
        let mut resources = None;
        let overrides = [
            ("sidecar.istio.io/proxyCPU", true, "cpu"),
            ("sidecar.istio.io/proxyMemory", true, "memory"),
            ("sidecar.istio.io/proxyCPULimit", false, "cpu"),
            ("sidecar.istio.io/proxyMemoryLimit", false, "memory"),
        ];
        if overrides.iter().any(|(k, _, _)| ann(k).is_some()) {
            let mut r = tmpl.default_resources.clone();
            for (key, request, res) in overrides {
                if let Some(q) = ann(key) {
                    if !is_quantity(q) {
                        return Err(format!(
                            "annotation {key}: {q:?} is not a Kubernetes quantity (e.g. 100m, 128Mi)"
                        ));
                    }
                    let map = if request {
                        &mut r.requests
                    } else {
                        &mut r.limits
                    };
                    map.insert(res.to_string(), q.to_string());
                }
            }
            resources = Some(r.to_json());
        }
        let init_args = init_args(meta)?;

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
        let (workload, owner) = workload_identity(namespace, meta);
        Ok(PodValues {
            image,
            log_level,
            resources,
            init_args,
            app_containers,
            pod_ports,
            workload,
            owner,
        })
    }

    fn fill(&self, tmpl: &RevisionTemplate, slot: Slot, out: &mut Vec<u8>) {
        match slot {
            Slot::Image => match self.image {
                Some(img) => push_str_json(out, img),
                None => out.extend_from_slice(tmpl.image_json.as_bytes()),
            },
            Slot::InitArgs => out.extend_from_slice(self.init_args.as_bytes()),
            Slot::LogLevelArg => {
                out.extend_from_slice(b"\"--proxyLogLevel=");
                out.extend_from_slice(self.log_level.as_bytes());
                out.push(b'"');
            }
            Slot::Resources => match &self.resources {
                Some(r) => out.extend_from_slice(r.as_bytes()),
                None => out.extend_from_slice(tmpl.resources_json.as_bytes()),
            },
            Slot::PodEnv => {
                for (name, value) in [
                    ("ISTIO_META_POD_PORTS", self.pod_ports.as_str()),
                    ("ISTIO_META_APP_CONTAINERS", &self.app_containers),
                    ("ISTIO_META_WORKLOAD_NAME", &self.workload),
                    ("ISTIO_META_OWNER", &self.owner),
                ] {
                    out.extend_from_slice(b",{\"name\":\"");
                    out.extend_from_slice(name.as_bytes());
                    out.extend_from_slice(b"\",\"value\":");
                    push_str_json(out, value);
                    out.push(b'}');
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

/// Writes the patch that injects `tmpl` into the pod. Returns `Ok(false)` (and writes
/// nothing) when the pod already carries this revision's sidecar.
fn write_patch(
    tmpl: &RevisionTemplate,
    namespace: &str,
    meta: &Meta<'_>,
    spec: &Spec<'_>,
    out: &mut Vec<u8>,
) -> Result<bool, String> {
    let status: Option<Status> = meta
        .annotation(ANNOTATION_STATUS)
        .map(|s| serde_json::from_str(s).unwrap_or_default());
    if let Some(st) = &status
        && st.revision.as_deref() == Some(tmpl.revision.as_str())
        && spec
            .containers
            .iter()
            .any(|c| c.name.as_str() == PROXY_CONTAINER)
    {
        return Ok(false);
    }
    let values = PodValues::compute(tmpl, namespace, meta, spec)?;
    let mut ops = Ops { out, n: 0 };

    // Remove what an earlier injection (of another revision) left, so nothing is doubled.
    let listed = |l: &Option<Vec<String>>, name: &str| {
        l.as_ref().is_some_and(|v| v.iter().any(|n| n == name))
    };
    let st = status.unwrap_or_default();
    if let Some(inits) = &spec.init_containers {
        remove_named(
            &mut ops,
            "/spec/initContainers/",
            inits.iter().map(|c| c.name.as_str()),
            |n| n == INIT_CONTAINER || listed(&st.init_containers, n),
        );
    }
    remove_named(
        &mut ops,
        "/spec/containers/",
        spec.containers.iter().map(|c| c.name.as_str()),
        |n| n == PROXY_CONTAINER || listed(&st.containers, n),
    );
    if let Some(vols) = &spec.volumes {
        remove_named(
            &mut ops,
            "/spec/volumes/",
            vols.iter().map(|v| v.name.as_str()),
            |n| tmpl.volume_names.contains(&n) || listed(&st.volumes, n),
        );
    }

    // Containers: istio-init first in initContainers, istio-proxy last in containers.
    let init = |o: &mut Vec<u8>| values.render(tmpl, &tmpl.init_container.0, o);
    if spec.init_containers.is_some() {
        ops.add(&["/spec/initContainers/-"], init);
    } else {
        ops.add(&["/spec/initContainers"], |o| {
            o.push(b'[');
            init(o);
            o.push(b']');
        });
    }
    ops.add(&["/spec/containers/-"], |o| {
        values.render(tmpl, &tmpl.proxy_container.0, o)
    });
    if spec.volumes.is_some() {
        for v in &tmpl.volumes {
            ops.raw(&["/spec/volumes/-"], v);
        }
    } else {
        ops.add(&["/spec/volumes"], |o| {
            o.push(b'[');
            for (i, v) in tmpl.volumes.iter().enumerate() {
                if i > 0 {
                    o.push(b',');
                }
                o.extend_from_slice(v.as_bytes());
            }
            o.push(b']');
        });
    }

    // Labels.
    let canonical_name = [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| meta.label(k))
    .unwrap_or(&values.workload);
    let canonical_rev = [
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| meta.label(k))
    .unwrap_or("latest");
    let mut labels: Vec<(&str, Cow<str>)> =
        vec![("security.istio.io~1tlsMode", Cow::Borrowed("\"istio\""))];
    if meta.label("service.istio.io/canonical-name").is_none() {
        labels.push((
            "service.istio.io~1canonical-name",
            json_str(canonical_name).into(),
        ));
    }
    if meta.label("service.istio.io/canonical-revision").is_none() {
        labels.push((
            "service.istio.io~1canonical-revision",
            json_str(canonical_rev).into(),
        ));
    }
    write_map(&mut ops, "/metadata/labels", meta.labels.is_some(), &labels);

    // Annotations.
    let mut anns: Vec<(&str, Cow<str>)> = Vec::with_capacity(4 + tmpl.extra_annotations.len());
    for (k, v) in &tmpl.extra_annotations {
        anns.push((k, Cow::Borrowed(v)));
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
                anns.push((key, json_str(first.name.as_str()).into()));
            }
        }
    }
    anns.push(("istio.io~1rev", Cow::Borrowed(&tmpl.revision_json)));
    anns.push(("sidecar.istio.io~1status", Cow::Borrowed(&tmpl.status_json)));
    write_map(
        &mut ops,
        "/metadata/annotations",
        meta.annotations.is_some(),
        &anns,
    );
    ops.finish();
    Ok(true)
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
fn write_map(ops: &mut Ops<'_>, path: &str, exists: bool, entries: &[(&str, Cow<str>)]) {
    if exists {
        for (k, v) in entries {
            ops.raw(&[path, "/", k], v);
        }
    } else {
        ops.add(&[path], |o| {
            o.push(b'{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    o.push(b',');
                }
                // Keys were pointer-escaped for paths; undo that for an object key.
                push_str_json(o, &k.replace("~1", "/").replace("~0", "~"));
                o.push(b':');
                o.extend_from_slice(v.as_bytes());
            }
            o.push(b'}');
        });
    }
}

/// The args of `istio-init`, honouring the `traffic.sidecar.istio.io/*` annotations.
/// The annotations that change `istio-init`'s args.
const TRAFFIC_ANNOTATIONS: [&str; 6] = [
    "traffic.sidecar.istio.io/includeOutboundIPRanges",
    "traffic.sidecar.istio.io/excludeOutboundIPRanges",
    "traffic.sidecar.istio.io/includeInboundPorts",
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "traffic.sidecar.istio.io/includeOutboundPorts",
    "traffic.sidecar.istio.io/excludeOutboundPorts",
];

fn init_args(meta: &Meta<'_>) -> Result<Cow<'static, str>, String> {
    // Most pods set none of the traffic annotations: their args are rendered once.
    static DEFAULT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        render_init_args(&Meta::default()).expect("the default init args must render")
    });
    if TRAFFIC_ANNOTATIONS
        .iter()
        .all(|k| meta.annotation(k).is_none())
    {
        return Ok(Cow::Borrowed(DEFAULT.as_str()));
    }
    render_init_args(meta).map(Cow::Owned)
}

fn render_init_args(meta: &Meta<'_>) -> Result<String, String> {
    let get = |k: &str| meta.annotation(k);
    let ports = |key: &str| -> Result<Option<&str>, String> {
        match get(key) {
            Some(v) if !is_port_list(v) => Err(format!(
                "annotation {key}: {v:?} is not '*' or a comma-separated list of ports"
            )),
            v => Ok(v),
        }
    };
    let ranges = |key: &str| -> Result<Option<&str>, String> {
        match get(key) {
            Some(v) if !is_cidr_list(v) => Err(format!(
                "annotation {key}: {v:?} is not '*' or a comma-separated list of CIDRs"
            )),
            v => Ok(v),
        }
    };
    let include_ranges = ranges("traffic.sidecar.istio.io/includeOutboundIPRanges")?.unwrap_or("*");
    let exclude_ranges = ranges("traffic.sidecar.istio.io/excludeOutboundIPRanges")?.unwrap_or("");
    let include_in = ports("traffic.sidecar.istio.io/includeInboundPorts")?.unwrap_or("*");
    let exclude_in = ports("traffic.sidecar.istio.io/excludeInboundPorts")?;
    let include_out = ports("traffic.sidecar.istio.io/includeOutboundPorts")?;
    let exclude_out = ports("traffic.sidecar.istio.io/excludeOutboundPorts")?;
    let mut excluded_in = String::from("15090,15021,15020");
    if let Some(e) = exclude_in.filter(|e| !e.is_empty()) {
        excluded_in.push(',');
        excluded_in.push_str(e);
    }
    let mut args: Vec<&str> = vec![
        "istio-iptables",
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        "1337",
        "-m",
        "REDIRECT",
        "-i",
        include_ranges,
        "-x",
        exclude_ranges,
        "-b",
        include_in,
        "-d",
        &excluded_in,
    ];
    if let Some(q) = include_out {
        args.extend(["-q", q]);
    }
    if let Some(o) = exclude_out {
        args.extend(["-o", o]);
    }
    args.push("--log_output_level=default:info");
    Ok(serde_json::to_string(&args).expect("strings must serialize"))
}

fn is_port_list(v: &str) -> bool {
    v == "*"
        || v.is_empty()
        || v.split(',')
            .all(|p| p.trim().parse::<u16>().is_ok_and(|p| p > 0))
}

fn is_cidr_list(v: &str) -> bool {
    v == "*"
        || v.is_empty()
        || v.split(',').all(|c| {
            let c = c.trim();
            let (ip, prefix) = c.split_once('/').unwrap_or((c, "32"));
            match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => prefix.parse::<u8>().is_ok_and(|p| p <= 32),
                Ok(std::net::IpAddr::V6(_)) => {
                    prefix.parse::<u8>().is_ok_and(|p| p <= 128) || !c.contains('/')
                }
                Err(_) => false,
            }
        })
}

/// Whether `q` is a Kubernetes resource quantity (`100m`, `1.5`, `128Mi`, `1e3`).
pub fn is_quantity(q: &str) -> bool {
    let q = q.strip_prefix(['+', '-']).unwrap_or(q);
    let digits_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(digits_end);
    let num_ok = !num.is_empty() && num != "." && num.matches('.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || (suffix.len() > 1
        && (suffix.starts_with('e') || suffix.starts_with('E'))
        && suffix[1..]
            .strip_prefix(['+', '-'])
            .unwrap_or(&suffix[1..])
            .bytes()
            .all(|b| b.is_ascii_digit())
        && suffix.len() > 1 + usize::from(suffix[1..].starts_with(['+', '-'])));
    num_ok && suffix_ok
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
