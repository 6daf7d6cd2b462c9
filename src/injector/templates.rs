//! `inject.istio.io/templates`: Istio's built-in injection templates other than `sidecar`.
//!
//! - `gateway`: the pod runs the proxy as its (gateway) workload: `proxy router`, no
//!   `istio-init`, no app probes or drain hooks, a pod sysctl that lets it bind low ports.
//!   Istio's gateway charts use it with a container `istio-proxy` whose `image: auto`.
//! - `grpc-simple`: proxyless gRPC: no proxy at all, a bootstrap init container and the gRPC
//!   xDS env in every app container.
//! - `grpc-agent`: proxyless gRPC with the agent: the agent runs without Envoy and writes the
//!   gRPC xDS bootstrap and certificates for the app containers.
//!
//! Pods asking for templates take the full-pod path ([`super::overrides`]); the sidecar is
//! injected first and transformed here, as Istio applies templates in order over the pod.

use serde_json::{Value, json};

use super::{ANNOTATION_STATUS, INIT_CONTAINER, PROXY_CONTAINER, RevisionTemplate};
// The annotation naming the templates, comma-separated, applied in order.
use crate::core::ANNOTATION_TEMPLATES;

/// Templates meshrev reproduces.
pub(crate) const KNOWN: [&str; 4] = ["sidecar", "gateway", "grpc-agent", "grpc-simple"];

/// Lists of several templates that meshrev reproduces. Istio merges any list, in order;
/// these are the ones checked against Istio's injector (`tests/differential.rs`). Any other
/// list is refused rather than injected differently from Istio.
pub(crate) const LISTS: [&str; 4] = [
    "sidecar,grpc-agent",
    "grpc-agent,sidecar",
    "sidecar,gateway",
    "gateway,sidecar",
];

/// Checks the annotation's value: every name must be a template meshrev reproduces, and
/// several only in one of [`LISTS`].
pub(crate) fn validate(value: &str) -> Result<(), String> {
    let names: Vec<&str> = value.split(',').map(str::trim).collect();
    for t in &names {
        if !KNOWN.contains(t) {
            return Err(format!(
                "unknown injection template {t:?}; meshrev reproduces Istio's {}",
                KNOWN.join(", ")
            ));
        }
    }
    // A template applied again right after itself changes nothing (Istio's corpus asks for
    // "sidecar,sidecar,sidecar").
    let mut distinct = names;
    distinct.dedup();
    if distinct.len() > 1 && !LISTS.contains(&distinct.join(",").as_str()) {
        return Err(format!(
            "templates {:?} together: meshrev reproduces Istio's merge of one template, or of \
             the lists {}; ask for one of those",
            distinct.join(","),
            LISTS.join(", ")
        ));
    }
    Ok(())
}

/// Whether the templates a pod asks for read `sidecar.istio.io/userVolume[Mount]` and
/// `sidecar.istio.io/proxy{CPU,Memory}[Limit]`: `sidecar` (the default) and `grpc-agent` do,
/// `gateway` and `grpc-simple` never look at them, so a value that is not JSON, a negative
/// resource, or a request above its limit, is refused only when one of the first two is
/// applied. Called only when the pod has one of those annotations.
pub(crate) fn read_proxy_annotations(templates: Option<&str>) -> bool {
    templates.is_none_or(|list| {
        list.split(',')
            .map(str::trim)
            .any(|t| t == "sidecar" || t == "grpc-agent")
    })
}

/// Transforms the sidecar-injected pod for the templates the original pod asks for.
/// Returns whether the template already applied and recorded the pod's own containers
/// (`proxy.istio.io/overrides`): the proxyless gRPC templates list every container of the
/// pod, so every one is an override.
pub(crate) fn apply(
    tmpl: &RevisionTemplate,
    original: &Value,
    injected: &mut Value,
) -> Result<bool, String> {
    if tmpl.features.core_dump_container
        && original["metadata"]["annotations"]["sidecar.istio.io/enableCoreDump"] == "true"
    {
        core_dump(injected);
    }
    let Some(list) = original["metadata"]["annotations"][ANNOTATION_TEMPLATES].as_str() else {
        return Ok(false);
    };
    validate(list).map_err(|e| format!("annotation {ANNOTATION_TEMPLATES}: {e}"))?;
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    // Whether `sidecar` is in the list, and after `other`.
    let sidecar_with = |other: &str| {
        let at = names.iter().position(|n| *n == "sidecar")?;
        Some(names.iter().rposition(|n| *n == other) < Some(at))
    };
    if names.contains(&"gateway") {
        match sidecar_with("gateway") {
            Some(last) => sidecar_and(tmpl, original, injected, WithSidecar::Gateway, last)?,
            None => gateway(tmpl, original, injected),
        }
    } else if names.contains(&"grpc-agent") {
        match sidecar_with("grpc-agent") {
            Some(last) => sidecar_and(tmpl, original, injected, WithSidecar::GrpcAgent, last)?,
            None => grpc_agent(tmpl, original, injected),
        }
        return Ok(true);
    } else if names.contains(&"grpc-simple") {
        grpc_simple(tmpl, original, injected);
        return Ok(true);
    }
    Ok(false)
}

fn take_container(pod: &mut Value, list: &str, name: &str) -> Option<Value> {
    let arr = pod["spec"][list].as_array_mut()?;
    let i = arr.iter().position(|c| c["name"] == name)?;
    Some(arr.remove(i))
}

/// Restores `key` of `pod.spec` to the original's when the injection left it empty.
fn drop_if_emptied(pod: &mut Value, original: &Value, list: &str) {
    if pod["spec"][list].as_array().is_some_and(Vec::is_empty)
        && original["spec"].get(list).is_none()
        && let Some(spec) = pod["spec"].as_object_mut()
    {
        spec.remove(list);
    }
}

fn set_status(pod: &mut Value, status: Value) {
    pod["metadata"]["annotations"][super::ANNOTATION_STATUS] = Value::String(status.to_string());
}

/// Whether the proxy must start before the app (Istio's `reorderPod`): the installation's
/// `holdApplicationUntilProxyStarts`, or the pod's `proxy.istio.io/config` setting it.
fn hold_application(tmpl: &RevisionTemplate, original: &Value) -> bool {
    tmpl.hold_application
        || original["metadata"]["annotations"]["proxy.istio.io/config"]
            .as_str()
            .and_then(|pc| {
                serde_json::from_str::<Value>(pc)
                    .ok()
                    .or_else(|| crate::yaml::from_str(pc).ok())
            })
            .is_some_and(|c| c["holdApplicationUntilProxyStarts"] == true)
}

/// The names a `sidecar.istio.io/userVolume[Mount]` annotation adds (a JSON object of name →
/// object; anything else adds none).
fn user_names(original: &Value, key: &str) -> Vec<String> {
    original["metadata"]["annotations"][key]
        .as_str()
        .and_then(|v| serde_json::from_str::<serde_json::Map<String, Value>>(v).ok())
        .map(|m| m.into_iter().map(|(k, _)| k).collect())
        .unwrap_or_default()
}

/// Removes the volumes the sidecar template added for `sidecar.istio.io/userVolume` (the
/// pod's own volumes of the same name stay).
fn drop_user_volumes(original: &Value, pod: &mut Value) {
    let user = user_names(original, "sidecar.istio.io/userVolume");
    if user.is_empty() {
        return;
    }
    let own = |n: &Value| {
        original["spec"]["volumes"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x["name"] == *n))
    };
    if let Some(vols) = pod["spec"]["volumes"].as_array_mut() {
        vols.retain(|v| own(&v["name"]) || !user.iter().any(|u| v["name"] == u.as_str()));
    }
}

/// Istio's `service.istio.io/canonical-name` without the sidecar template's truncation: the
/// label, else `app.kubernetes.io/name`, else `app`, else the workload name.
fn untruncated_canonical_name(original: &Value, workload: &str) -> String {
    let labels = &original["metadata"]["labels"];
    [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| labels[*k].as_str().filter(|v| !v.is_empty()))
    .unwrap_or(workload)
    .to_string()
}

/// The labels of the gateway and grpc-agent templates, which do not write the sidecar's:
/// `security.istio.io/tlsMode` only if the pod had it, and an untruncated canonical name.
fn template_labels(original: &Value, pod: &mut Value, workload: &str) {
    if let Some(l) = pod["metadata"]["labels"].as_object_mut() {
        if original["metadata"]["labels"]
            .get("security.istio.io/tlsMode")
            .is_none()
        {
            l.remove("security.istio.io/tlsMode");
        }
        l.insert(
            "service.istio.io/canonical-name".into(),
            Value::String(untruncated_canonical_name(original, workload)),
        );
    }
}

/// The value of env var `name` of a container.
fn env_value<'c>(container: &'c Value, name: &str) -> Option<&'c str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

/// Istio's `gateway` template, from the sidecar-injected pod. The template reads none of the
/// sidecar's per-pod annotations (readiness, interceptionMode, userVolume[Mount], status
/// port): its proxy is fixed apart from image, log levels and the proxy config; Istio's
/// post-processing (app probe rewrite, Prometheus merge, ordering) applies as to a sidecar.
fn gateway(tmpl: &RevisionTemplate, original: &Value, pod: &mut Value) {
    let proxy = take_container(pod, "initContainers", PROXY_CONTAINER)
        .or_else(|| take_container(pod, "containers", PROXY_CONTAINER));
    take_container(pod, "initContainers", INIT_CONTAINER);
    drop_if_emptied(pod, original, "initContainers");
    let Some(mut proxy) = proxy else { return };
    let user_mounts = user_names(original, "sidecar.istio.io/userVolumeMount");
    if let Some(p) = proxy.as_object_mut() {
        p.insert("args".into(), {
            let mut args = p["args"].clone();
            args[1] = json!("router");
            args
        });
        for k in ["lifecycle", "startupProbe", "restartPolicy", "resources"] {
            p.remove(k);
        }
        p.insert(
            "securityContext".into(),
            json!({"runAsUser": 1337, "runAsGroup": 1337}),
        );
        // The template's readiness probe takes the installation's values only, and is there
        // whatever the status port.
        p.insert(
            "readinessProbe".into(),
            json!({"httpGet": {"path": "/healthz/ready", "port": 15021}, "periodSeconds": 15,
                   "timeoutSeconds": 3, "failureThreshold": 4}),
        );
        if let Some(mounts) = p.get_mut("volumeMounts").and_then(Value::as_array_mut) {
            mounts.retain(|m| {
                m["name"] != "istio-ca-crl" && !user_mounts.iter().any(|u| m["name"] == u.as_str())
            });
        }
        // The mode of the proxy config, not the pod's annotation.
        if let Some(env) = p.get_mut("env").and_then(Value::as_array_mut)
            && let Some(e) = env
                .iter_mut()
                .find(|e| e["name"] == "ISTIO_META_INTERCEPTION_MODE")
        {
            e["value"] = json!("REDIRECT");
        }
    }
    let workload = env_value(&proxy, "ISTIO_META_WORKLOAD_NAME")
        .unwrap_or_default()
        .to_string();
    let containers = &mut pod["spec"]["containers"];
    match containers.as_array_mut() {
        Some(cs) if hold_application(tmpl, original) => cs.insert(0, proxy),
        Some(cs) => cs.push(proxy),
        None => *containers = json!([proxy]),
    }
    if let Some(vols) = pod["spec"]["volumes"].as_array_mut() {
        vols.retain(|v| v["name"] != "istio-ca-crl");
    }
    drop_user_volumes(original, pod);
    template_labels(original, pod, &workload);
    let sc = &mut pod["spec"]["securityContext"];
    if !sc.is_object() {
        *sc = json!({});
    }
    let sysctl = json!({"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"});
    match sc["sysctls"].as_array_mut() {
        Some(s) if !s.iter().any(|x| x["name"] == sysctl["name"]) => s.push(sysctl),
        Some(_) => {}
        None => sc["sysctls"] = json!([sysctl]),
    }
    let volumes: Vec<&str> = tmpl
        .volume_names
        .iter()
        .copied()
        .filter(|v| *v != "istio-ca-crl")
        .collect();
    set_status(
        pod,
        json!({"initContainers": null, "containers": [PROXY_CONTAINER], "volumes": volumes,
               "imagePullSecrets": null, "revision": tmpl.revision}),
    );
}

const GRPC_BOOTSTRAP: &str = r#"NODE_ID="sidecar~${INSTANCE_IP}~${POD_NAME}.${POD_NAMESPACE}~cluster.local"
SERVER_URI="dns:///istiod.${ISTIO_NAMESPACE}.svc:15010"
echo '
{
  "xds_servers": [
    {
      "server_uri": "'${SERVER_URI}'",
      "channel_creds": [{"type": "insecure"}],
      "server_features" : ["xds_v3"]
    }
  ],
  "node": {
    "id": "'${NODE_ID}'",
    "metadata": {
      "GENERATOR": "grpc"
    }
  }
}' > /var/lib/grpc/data/bootstrap.json"#;

/// Proxyless gRPC: starts again from the original pod (the template injects no proxy).
fn grpc_simple(tmpl: &RevisionTemplate, original: &Value, pod: &mut Value) {
    let prom = [
        "prometheus.io/path",
        "prometheus.io/port",
        "prometheus.io/scrape",
    ];
    // Istio's Prometheus merge gives its env var to the pod's own istio-proxy, if any.
    let prom_env = ["containers", "initContainers"]
        .iter()
        .filter_map(|l| pod["spec"][*l].as_array())
        .flatten()
        .find(|c| c["name"] == PROXY_CONTAINER)
        .and_then(|c| c["env"].as_array())
        .and_then(|env| {
            env.iter()
                .find(|e| e["name"] == "ISTIO_PROMETHEUS_ANNOTATIONS")
                .cloned()
        });
    let mut out = original.clone();
    // Keep what Istio's post-processing adds to every injected pod.
    for k in prom {
        if let Some(v) = pod["metadata"]["annotations"].get(k) {
            out["metadata"]["annotations"][k] = v.clone();
        }
    }
    out["metadata"]["annotations"]["sidecar.istio.io/rewriteAppHTTPProbers"] = json!("false");
    let mount = json!({"mountPath": "/var/lib/grpc/data/", "name": "grpc-io-proxyless-bootstrap"});
    let field = |n: &str, p: &str| json!({"name": n, "valueFrom": {"fieldRef": {"fieldPath": p}}});
    let init = json!({
        "name": "grpc-bootstrap-init",
        "image": "busybox:1.28",
        "volumeMounts": [mount],
        "env": [field("INSTANCE_IP", "status.podIP"), field("POD_NAME", "metadata.name"),
                field("POD_NAMESPACE", "metadata.namespace"),
                {"name": "ISTIO_NAMESPACE", "value": "istio-system\n"}],
        "command": ["sh", "-c", GRPC_BOOTSTRAP],
    });
    let mut names = Vec::new();
    let mut overrides = Vec::new();
    if let Some(cs) = out["spec"]["containers"].as_array_mut() {
        for c in cs.iter_mut() {
            // The template lists every container, so Istio records each as the pod's override
            // of it (`image: auto` dropped, as for any override).
            let mut recorded = c.clone();
            if recorded["image"] == "auto"
                && let Some(r) = recorded.as_object_mut()
            {
                r.remove("image");
            }
            overrides.push(recorded);
            names.push(c["name"].clone());
            let tmpl_part = json!({
                "env": [
                    {"name": "GRPC_XDS_BOOTSTRAP", "value": "/var/lib/grpc/data/bootstrap.json"},
                    {"name": "GRPC_GO_LOG_VERBOSITY_LEVEL", "value": "99"},
                    {"name": "GRPC_GO_LOG_SEVERITY_LEVEL", "value": "info"},
                ],
                "volumeMounts": [mount],
            });
            // The template's container, with the pod's own fields over it (Istio reapplies
            // the pod's containers of the same name).
            let mut merged = tmpl_part;
            super::overrides::strategic_merge(&mut merged, c);
            *c = merged;
        }
        // The pod's own istio-proxy is Istio's "sidecar" for post-processing: it gets the
        // Prometheus env var, and goes last (first under holdApplicationUntilProxyStarts).
        if let Some(i) = cs.iter().position(|c| c["name"] == PROXY_CONTAINER) {
            let mut proxy = cs.remove(i);
            if let Some(e) = prom_env
                && let Some(env) = proxy["env"].as_array_mut()
            {
                env.push(e);
            }
            if hold_application(tmpl, original) {
                cs.insert(0, proxy);
            } else {
                cs.push(proxy);
            }
        }
    }
    // The template's init container comes first: Istio merges the pod over the template,
    // and the template lists it.
    match out["spec"]["initContainers"].as_array_mut() {
        Some(i) => i.insert(0, init),
        None => out["spec"]["initContainers"] = json!([init]),
    }
    let vol = json!({"name": "grpc-io-proxyless-bootstrap", "emptyDir": {}});
    match out["spec"]["volumes"].as_array_mut() {
        Some(v) => v.push(vol),
        None => out["spec"]["volumes"] = json!([vol]),
    }
    out["metadata"]["annotations"][super::overrides::ANNOTATION_OVERRIDES] =
        Value::String(json!({"containers": overrides}).to_string());
    set_status(
        &mut out,
        json!({"initContainers": ["grpc-bootstrap-init"], "containers": names,
               "volumes": ["grpc-io-proxyless-bootstrap"], "imagePullSecrets": null,
               "revision": tmpl.revision}),
    );
    *pod = out;
}

/// Before 1.24, `sidecar.istio.io/enableCoreDump: "true"` adds a privileged init container
/// that sets the kernel's core pattern, and lets the proxy write its root filesystem.
fn core_dump(pod: &mut Value) {
    let Some(init) = pod["spec"]["initContainers"]
        .as_array()
        .and_then(|i| i.iter().find(|c| c["name"] == INIT_CONTAINER))
        .cloned()
    else {
        return;
    };
    let dump = json!({
        "name": "enable-core-dump",
        "args": ["-c", "sysctl -w kernel.core_pattern=/var/lib/istio/data/core.proxy && ulimit -c unlimited"],
        "command": ["/bin/sh"],
        "image": init["image"],
        "resources": init["resources"],
        "securityContext": {
            "allowPrivilegeEscalation": true,
            "capabilities": {"add": ["SYS_ADMIN"], "drop": ["ALL"]},
            "privileged": true,
            "readOnlyRootFilesystem": false,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "runAsUser": 0
        }
    });
    if let Some(inits) = pod["spec"]["initContainers"].as_array_mut() {
        inits.push(dump);
    }
    for list in ["containers", "initContainers"] {
        if let Some(p) = pod["spec"][list]
            .as_array_mut()
            .and_then(|cs| cs.iter_mut().find(|c| c["name"] == PROXY_CONTAINER))
        {
            p["securityContext"]["readOnlyRootFilesystem"] = json!(false);
        }
    }
    let status = pod["metadata"]["annotations"][super::ANNOTATION_STATUS]
        .as_str()
        .and_then(|s| serde_json::from_str::<Value>(s).ok());
    if let Some(mut st) = status {
        if let Some(i) = st["initContainers"].as_array_mut() {
            i.push(json!("enable-core-dump"));
        }
        set_status(pod, st);
    }
}

/// The entries of a `sidecar.istio.io/userVolume[Mount]` annotation as Istio's templates
/// write them: `{"name": key, …value}`, by key (Go ranges over a map in key order).
fn user_entries(original: &Value, key: &str) -> Vec<Value> {
    original["metadata"]["annotations"][key]
        .as_str()
        .and_then(|v| serde_json::from_str::<serde_json::Map<String, Value>>(v).ok())
        .map(|m| {
            m.into_iter()
                .map(|(name, v)| {
                    let mut e = json!({"name": name});
                    if let (Some(e), Value::Object(fields)) = (e.as_object_mut(), v) {
                        for (k, f) in fields {
                            e.entry(k).or_insert(f);
                        }
                    }
                    e
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The pod's own container of that name with `image: auto` dropped: what Istio merges over
/// the template's and records in `proxy.istio.io/overrides`.
fn overlay_of(c: &Value) -> Value {
    let mut overlay = c.clone();
    if overlay["image"] == "auto"
        && let Some(o) = overlay.as_object_mut()
    {
        o.remove("image");
    }
    overlay
}

/// The app containers of the original pod, each merged over the template's version of it
/// (Istio reapplies the pod's own containers of the same name), and what Istio records of
/// them in `proxy.istio.io/overrides`.
fn merged_app_containers(original: &Value, tmpl_part: &Value) -> (Vec<Value>, Vec<Value>) {
    let mut merged = Vec::new();
    let mut originals = Vec::new();
    for c in original["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if c["name"] == PROXY_CONTAINER {
            continue;
        }
        originals.push(overlay_of(c));
        let mut m = tmpl_part.clone();
        m["name"] = c["name"].clone();
        super::overrides::strategic_merge(&mut m, c);
        merged.push(m);
    }
    (merged, originals)
}

/// Proxyless gRPC with the agent (Istio's `grpc-agent` template): the proxy container runs
/// only the agent (`DISABLE_ENVOY`), the app containers read its xDS bootstrap. The template
/// lists the proxy and every app container, so the pod's own versions of all of them are
/// merged over it and recorded in `proxy.istio.io/overrides` here.
fn grpc_agent(tmpl: &RevisionTemplate, original: &Value, pod: &mut Value) {
    let Some(mut proxy) = take_container(pod, "initContainers", PROXY_CONTAINER)
        .or_else(|| take_container(pod, "containers", PROXY_CONTAINER))
    else {
        return;
    };
    take_container(pod, "initContainers", INIT_CONTAINER);
    drop_if_emptied(pod, original, "initContainers");
    let ann = &original["metadata"]["annotations"];
    // The template compares the annotation's text with "0": with status port 0 it writes no
    // readiness probe, no resources and no volume mounts; the userVolumeMount entries it then
    // writes land in the env list (as env vars of that name) - Istio's output, reproduced.
    let status_port_zero = ann["status.sidecar.istio.io/port"] == "0";
    let user_mounts = user_entries(original, "sidecar.istio.io/userVolumeMount");
    if let Some(p) = proxy.as_object_mut() {
        let drop_env = [
            "ISTIO_CPU_LIMIT",
            "GOMEMLIMIT",
            "GOMAXPROCS",
            "ISTIO_META_INTERCEPTION_MODE",
            "ISTIO_KUBE_APP_PROBERS",
        ];
        let mut env = vec![
            json!({"name": "ISTIO_META_GENERATOR", "value": "grpc"}),
            json!({"name": "OUTPUT_CERTS", "value": "/var/lib/istio/data"}),
        ];
        env.extend(
            p["env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| !drop_env.iter().any(|d| e["name"] == *d))
                .cloned(),
        );
        env.push(json!({"name": "ISTIO_META_DNS_CAPTURE", "value": "false"}));
        env.push(json!({"name": "DISABLE_ENVOY", "value": "true"}));
        if status_port_zero {
            env.extend(user_mounts.iter().map(|m| json!({"name": m["name"]})));
        }
        p.insert("env".into(), Value::Array(env));
        p.insert(
            "lifecycle".into(),
            json!({"postStart": {"exec": {"command": ["pilot-agent", "wait", "--url=http://localhost:15020/healthz/ready"]}}}),
        );
        p.insert(
            "ports".into(),
            json!([{"containerPort": 15020, "name": "mesh-metrics", "protocol": "TCP"}]),
        );
        for k in [
            "startupProbe",
            "restartPolicy",
            "securityContext",
            "readinessProbe",
        ] {
            p.remove(k);
        }
        if status_port_zero {
            p.remove("resources");
            p.remove("volumeMounts");
        } else {
            // The readiness annotations apply (validated as integers); Go omits zeros.
            let get = |k: &str, d: u64| {
                ann[format!("readiness.status.sidecar.istio.io/{k}")]
                    .as_str()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(d)
            };
            let mut ready = serde_json::Map::new();
            ready.insert(
                "httpGet".into(),
                json!({"path": "/healthz/ready", "port": 15020}),
            );
            for (k, v) in [
                ("initialDelaySeconds", get("initialDelaySeconds", 0)),
                ("periodSeconds", get("periodSeconds", 15)),
                ("timeoutSeconds", 3),
                ("failureThreshold", get("failureThreshold", 4)),
            ] {
                if v != 0 {
                    ready.insert(k.into(), json!(v));
                }
            }
            p.insert("readinessProbe".into(), Value::Object(ready));
            let mut mounts = vec![
                json!({"mountPath": "/var/run/secrets/workload-spiffe-uds", "name": "workload-socket"}),
                json!({"mountPath": "/var/run/secrets/workload-spiffe-credentials", "name": "workload-certs"}),
                json!({"mountPath": "/var/run/secrets/istio", "name": "istiod-ca-cert"}),
                json!({"mountPath": "/var/lib/istio/data", "name": "istio-data"}),
                json!({"mountPath": "/etc/istio/proxy", "name": "istio-xds"}),
                json!({"mountPath": "/var/run/secrets/tokens", "name": "istio-token"}),
                json!({"mountPath": "/etc/istio/pod", "name": "istio-podinfo"}),
            ];
            mounts.extend(user_mounts.iter().cloned());
            p.insert("volumeMounts".into(), Value::Array(mounts));
        }
    }
    let app = json!({
        "env": [
            {"name": "GRPC_XDS_EXPERIMENTAL_SECURITY_SUPPORT", "value": "true"},
            {"name": "GRPC_XDS_BOOTSTRAP", "value": "/etc/istio/proxy/grpc-bootstrap.json"},
        ],
        "volumeMounts": [
            {"mountPath": "/var/lib/istio/data", "name": "istio-data"},
            {"mountPath": "/etc/istio/proxy", "name": "istio-xds"},
            {"mountPath": "/var/run/secrets/workload-spiffe-credentials", "name": "workload-certs"},
        ],
    });
    // The pod's own istio-proxy, merged over the template's (and recorded first: the
    // template lists the proxy before the app containers).
    let mut recorded = Vec::new();
    if let Some(own) = original["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == PROXY_CONTAINER))
    {
        let overlay = overlay_of(own);
        super::overrides::strategic_merge(&mut proxy, &overlay);
        recorded.push(overlay);
    }
    let (mut containers, originals) = merged_app_containers(original, &app);
    recorded.extend(originals);
    let mut names = vec![json!(PROXY_CONTAINER)];
    names.extend(containers.iter().map(|c| c["name"].clone()));
    if hold_application(tmpl, original) {
        containers.insert(0, proxy);
    } else {
        containers.push(proxy);
    }
    pod["spec"]["containers"] = Value::Array(containers);
    let gone = ["credential-socket", "istio-envoy", "istio-ca-crl"];
    let mut vols: Vec<Value> = original["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let own: Vec<Value> = vec![
        json!({"name": "workload-socket"}),
        json!({"name": "workload-certs"}),
        json!({"name": "istio-xds", "emptyDir": {"medium": "Memory"}}),
        json!({"name": "istio-data", "emptyDir": {}}),
    ];
    let kept: Vec<Value> = ["istio-podinfo", "istio-token", "istiod-ca-cert"]
        .iter()
        .filter_map(|n| {
            pod["spec"]["volumes"]
                .as_array()
                .and_then(|vs| vs.iter().find(|v| v["name"] == *n))
                .cloned()
        })
        .collect();
    let user_volumes = user_entries(original, "sidecar.istio.io/userVolume");
    let added: Vec<Value> = own.into_iter().chain(kept).chain(user_volumes).collect();
    let vol_names: Vec<Value> = added.iter().map(|v| v["name"].clone()).collect();
    vols.retain(|v| !added.iter().any(|a| a["name"] == v["name"]));
    vols.extend(added);
    vols.retain(|v| !gone.iter().any(|g| v["name"] == *g));
    pod["spec"]["volumes"] = Value::Array(vols);
    let workload = env_value(
        pod["spec"]["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == PROXY_CONTAINER))
            .unwrap_or(&Value::Null),
        "ISTIO_META_WORKLOAD_NAME",
    )
    .unwrap_or_default()
    .to_string();
    template_labels(original, pod, &workload);
    let ann = &mut pod["metadata"]["annotations"];
    ann["sidecar.istio.io/rewriteAppHTTPProbers"] = json!("false");
    if original["metadata"]["annotations"]
        .get(ANNOTATION_STATUS)
        .is_none()
        && !recorded.is_empty()
    {
        ann[super::overrides::ANNOTATION_OVERRIDES] =
            Value::String(json!({"containers": recorded}).to_string());
    }
    set_status(
        pod,
        json!({"initContainers": null, "containers": names, "volumes": vol_names,
               "imagePullSecrets": null, "revision": tmpl.revision}),
    );
}

/// A template that Istio merges with `sidecar` when a pod asks for both.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WithSidecar {
    Gateway,
    GrpcAgent,
}

/// `sidecar` and `gateway` or `grpc-agent` together: Istio merges both rendered templates
/// over the pod, in the annotation's order, so the proxy is the sidecar's with the other
/// template's fields merged in (env and volume mounts by key, the other's ports first) and
/// the sidecar's istio-init, volumes and tlsMode label stay; grpc-agent's
/// `rewriteAppHTTPProbers: "false"` turns the app probe rewrite off whatever the order.
///
/// With a native sidecar and the sidecar last, Istio first moves the other template's
/// proxy into initContainers and merges the sidecar over it there: one native proxy. With
/// the sidecar first, Istio's result has two containers named istio-proxy (the sidecar's in
/// initContainers, the other template's in containers), and with the sidecar last on a pod
/// with its own istio-proxy, an istio-proxy container without an image: the API server
/// refuses both, so meshrev refuses the pod instead, saying so.
fn sidecar_and(
    tmpl: &RevisionTemplate,
    original: &Value,
    pod: &mut Value,
    other: WithSidecar,
    sidecar_last: bool,
) -> Result<(), String> {
    let name = match other {
        WithSidecar::Gateway => "gateway",
        WithSidecar::GrpcAgent => "grpc-agent",
    };
    let in_list = |p: &Value, list: &str| {
        p["spec"][list]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == PROXY_CONTAINER))
    };
    // Native: Istio moves the other template's proxy into initContainers when the sidecar
    // comes after it (and merges the sidecar over it there); when the sidecar comes first,
    // the other's proxy lands in containers beside the sidecar's.
    let native = in_list(pod, "initContainers");
    if native && !sidecar_last {
        return Err(format!(
            "annotation {ANNOTATION_TEMPLATES}: templates \"sidecar\" and \"{name}\" with a \
             native sidecar give two containers named istio-proxy (the sidecar's in \
             initContainers, {name}'s in containers), which the API server refuses; set \
             sidecar.istio.io/nativeSidecar: \"false\" on the pod, or use {name} alone"
        ));
    }
    let own_proxy = original["spec"]["containers"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["name"] == PROXY_CONTAINER));
    if native && own_proxy {
        return Err(format!(
            "annotation {ANNOTATION_TEMPLATES}: templates \"{name}\" then \"sidecar\" with a \
             native sidecar and the pod's own istio-proxy container: Istio moves the proxy into \
             initContainers and leaves an istio-proxy container without an image, which the \
             API server refuses; set sidecar.istio.io/nativeSidecar: \"false\" on the pod, or \
             use {name} alone"
        ));
    }
    let sidecar = pod.clone();
    match other {
        WithSidecar::Gateway => gateway(tmpl, original, pod),
        WithSidecar::GrpcAgent => grpc_agent(tmpl, original, pod),
    }
    let find = |p: &Value, list: &str| {
        p["spec"][list]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == PROXY_CONTAINER))
            .cloned()
    };
    let s_list = if native {
        "initContainers"
    } else {
        "containers"
    };
    let (Some(mut s_proxy), Some(g_proxy)) = (find(&sidecar, s_list), find(pod, "containers"))
    else {
        return Ok(());
    };
    // grpc-agent turns the probe rewrite off: the fast path's probers go.
    if other == WithSidecar::GrpcAgent
        && let Some(env) = s_proxy["env"].as_array_mut()
    {
        env.retain(|e| e["name"] != "ISTIO_KUBE_APP_PROBERS");
    }
    let (mut base, over) = if sidecar_last {
        (g_proxy.clone(), &s_proxy)
    } else {
        (s_proxy.clone(), &g_proxy)
    };
    super::overrides::strategic_merge(&mut base, over);
    // The sidecar and gateway templates both write every field of the proxy's readiness
    // probe, zeros included (which the pod then omits): the later template's probe is the
    // result, not a merge of the fields each one kept.
    if other == WithSidecar::Gateway
        && let Some(probe) = over.get("readinessProbe")
    {
        base["readinessProbe"] = probe.clone();
    }
    // Ports in the order Kubernetes' strategic merge gives them.
    let under = if sidecar_last { &g_proxy } else { &s_proxy };
    let port_of = |l: &Value| -> Vec<Value> {
        l["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["containerPort"].clone())
            .collect()
    };
    let order = smp_order(&port_of(under), &port_of(over));
    if let Some(ports) = base["ports"].as_array_mut() {
        ports.sort_by_key(|p| order.iter().position(|k| *k == p["containerPort"]));
    }
    // The pod's own istio-proxy is applied last, over both.
    if let Some(own) = original["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == PROXY_CONTAINER))
    {
        super::overrides::strategic_merge(&mut base, &overlay_of(own));
    }
    // The sidecar's istio-init and volumes stay; grpc-agent adds its own volumes.
    match sidecar["spec"].get("initContainers") {
        Some(i) => pod["spec"]["initContainers"] = i.clone(),
        None => {
            if let Some(spec) = pod["spec"].as_object_mut() {
                spec.remove("initContainers");
            }
        }
    }
    if native {
        take_container(pod, "containers", PROXY_CONTAINER);
    }
    if let Some(slot) = pod["spec"][s_list]
        .as_array_mut()
        .and_then(|cs| cs.iter_mut().find(|c| c["name"] == PROXY_CONTAINER))
    {
        *slot = base;
    }
    let mut vols: Vec<Value> = sidecar["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        if !vols.iter().any(|x| x["name"] == v["name"]) {
            vols.push(v.clone());
        }
    }
    pod["spec"]["volumes"] = Value::Array(vols);
    let status = |p: &Value| {
        p["metadata"]["annotations"][ANNOTATION_STATUS]
            .as_str()
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
            .unwrap_or_default()
    };
    let (s_status, mut st) = (status(&sidecar), status(pod));
    let names = |st: &Value| st["volumes"].as_array().cloned().unwrap_or_default();
    // Istio lists the volumes of its merged templates, in the strategic merge's order.
    st["volumes"] = Value::Array(if sidecar_last {
        smp_order(&names(&st), &names(&s_status))
    } else {
        smp_order(&names(&s_status), &names(&st))
    });
    st["initContainers"] = s_status["initContainers"].clone();
    set_status(pod, st);
    // Istio's adjustInitContainerUser: the pod's proxy user becomes istio-iptables' -u.
    if let Some(own) = original["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == PROXY_CONTAINER))
    {
        super::overrides::adjust_init_user(pod, own);
    }
    // Labels: the sidecar's tlsMode stays; the last template's canonical name wins.
    let labels = &sidecar["metadata"]["labels"];
    let mut keep = vec!["security.istio.io/tlsMode"];
    if sidecar_last {
        keep.push("service.istio.io/canonical-name");
    }
    for k in keep {
        if let Some(v) = labels.get(k) {
            pod["metadata"]["labels"][k] = v.clone();
        }
    }
    Ok(())
}

/// The order of a list's keys after Kubernetes' strategic merge of `patch` over `server`
/// (`mergeSortedSlice`): the patch's items in their order, with the server's other items
/// inserted where the server's order puts them.
fn smp_order(server: &[Value], patch: &[Value]) -> Vec<Value> {
    let left: Vec<&Value> = server.iter().filter(|k| !patch.contains(k)).collect();
    let at = |k: &Value| server.iter().position(|x| x == k);
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(left.len() + patch.len());
    while i < left.len() || j < patch.len() {
        let take_left = if i >= left.len() {
            false
        } else if j >= patch.len() {
            true
        } else {
            matches!((at(left[i]), at(&patch[j])), (Some(l), Some(r)) if l < r)
        };
        if take_left {
            out.push(left[i].clone());
            i += 1;
        } else {
            out.push(patch[j].clone());
            j += 1;
        }
    }
    out
}
