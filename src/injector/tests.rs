use std::collections::HashMap;

use serde_json::{Value, json};

use super::*;
use crate::injector::template::VOLUME_NAMES;
use crate::router::{Outcome, inject};
use crate::table::{NamespaceLabels, Table, embedded_default};

fn table() -> Table {
    let ns = |inj: Option<&str>, rev: Option<&str>| NamespaceLabels {
        injection: inj.map(Into::into),
        rev: rev.map(Into::into),
    };
    embedded_default().with_namespaces(HashMap::from([
        ("stable-ns".to_string(), ns(Some("enabled"), None)),
        ("canary-ns".to_string(), ns(None, Some("canary"))),
        ("pinned-ns".to_string(), ns(None, Some("1-23-6"))),
    ]))
}

fn fixture() -> Value {
    serde_json::from_str(include_str!("../../tests/fixtures/pod.json")).expect("fixture must parse")
}

/// Injects and applies the patch: (outcome label, patched pod when a patch was produced).
fn run(t: &Table, ns: &str, pod: &Value) -> (String, Option<Value>) {
    let text = pod.to_string();
    let view: Pod = serde_json::from_str(&text).expect("pod view must parse");
    let mut buf = Vec::new();
    match inject(t, ns, &view, &mut buf, || Some(pod.clone())) {
        Outcome::Injected { revision, .. } => {
            let patch: json_patch::Patch = serde_json::from_slice(&buf).unwrap_or_else(|e| {
                panic!(
                    "patch must be valid JSON Patch: {e}\n{}",
                    String::from_utf8_lossy(&buf)
                )
            });
            let mut doc = pod.clone();
            json_patch::patch(&mut doc, &patch).unwrap_or_else(|e| {
                panic!("patch must apply: {e}\n{}", String::from_utf8_lossy(&buf))
            });
            let _typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(doc.clone())
                .expect("patched pod must deserialize as a k8s Pod");
            (revision.name.clone(), Some(doc))
        }
        Outcome::Skipped { reason, .. } => {
            assert!(buf.is_empty(), "a skip writes no patch");
            (format!("skip:{}", reason.as_str()), None)
        }
        Outcome::Denied(m) => (format!("denied:{m}"), None),
    }
}

fn names(v: &Value, key: &str) -> Vec<String> {
    v["spec"][key]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn proxy(v: &Value) -> &Value {
    v["spec"]["containers"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "istio-proxy"))
        .expect("istio-proxy must be injected")
}

fn env<'v>(c: &'v Value, name: &str) -> &'v Value {
    c["env"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == name))
        .map(|e| &e["value"])
        .unwrap_or(&Value::Null)
}

#[test]
fn injects_the_stable_revision_in_full() {
    let (rev, pod) = run(&table(), "stable-ns", &fixture());
    assert_eq!(rev, "1-22-6");
    let pod = pod.unwrap();
    assert_eq!(
        names(&pod, "containers"),
        ["reviews", "log-shipper", "istio-proxy"]
    );
    assert_eq!(names(&pod, "initContainers"), ["istio-init"]);
    let vols = names(&pod, "volumes");
    // Istio 1.22 has no istio-ca-crl volume yet.
    assert_eq!(vols.len(), 3 + VOLUME_NAMES.len() - 1);
    for v in &VOLUME_NAMES[..8] {
        assert!(vols.iter().any(|n| n == v), "volume {v} missing");
    }
    let p = proxy(&pod);
    assert_eq!(p["image"], "docker.io/istio/proxyv2:1.22.6");
    assert_eq!(p["args"][4], "--proxyLogLevel=warning");
    assert_eq!(p["securityContext"]["runAsUser"], 1337);
    assert_eq!(p["readinessProbe"]["httpGet"]["port"], 15021);
    assert_eq!(p["ports"][0]["name"], "http-envoy-prom");
    assert_eq!(env(p, "CA_ADDR"), "istiod-1-22-6.istio-system.svc:15012");
    assert_eq!(env(p, "ISTIO_META_WORKLOAD_NAME"), "reviews-v2");
    assert_eq!(
        env(p, "ISTIO_META_OWNER"),
        "kubernetes://apis/apps/v1/namespaces/stable-ns/deployments/reviews-v2"
    );
    assert_eq!(env(p, "ISTIO_META_APP_CONTAINERS"), "reviews,log-shipper");
    let ports: Value =
        serde_json::from_str(env(p, "ISTIO_META_POD_PORTS").as_str().unwrap()).unwrap();
    assert_eq!(ports.as_array().unwrap().len(), 2);
    let md = &pod["metadata"];
    assert_eq!(md["annotations"]["istio.io/rev"], "1-22-6");
    let status: Value = serde_json::from_str(
        md["annotations"]["sidecar.istio.io/status"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status["revision"], "1-22-6");
    assert_eq!(status["containers"], json!(["istio-proxy"]));
    assert_eq!(md["labels"]["security.istio.io/tlsMode"], "istio");
    assert_eq!(md["labels"]["service.istio.io/canonical-name"], "reviews");
    assert_eq!(md["labels"]["service.istio.io/canonical-revision"], "v2");
    assert_eq!(
        md["annotations"]["kubectl.kubernetes.io/default-container"],
        "reviews"
    );
    // Prometheus merge: the agent serves the app's metrics with Envoy's, and keeps the
    // app's scrape settings.
    assert_eq!(md["annotations"]["prometheus.io/port"], "15020");
    assert_eq!(md["annotations"]["prometheus.io/path"], "/stats/prometheus");
    let scrape: Value =
        serde_json::from_str(env(p, "ISTIO_PROMETHEUS_ANNOTATIONS").as_str().unwrap()).unwrap();
    assert_eq!(scrape["port"], "9080");
    let init = &pod["spec"]["initContainers"][0];
    assert_eq!(init["image"], "docker.io/istio/proxyv2:1.22.6");
    assert_eq!(init["args"][0], "istio-iptables");
}

#[test]
fn tags_and_pins_pick_the_image() {
    let t = table();
    for (ns, image) in [
        ("canary-ns", "1.23.6"),
        ("pinned-ns", "1.23.6"),
        ("stable-ns", "1.22.6"),
    ] {
        let (_, pod) = run(&t, ns, &fixture());
        assert_eq!(
            proxy(&pod.unwrap())["image"],
            format!("docker.io/istio/proxyv2:{image}"),
            "{ns}"
        );
    }
}

#[test]
fn injecting_an_injected_pod_again_changes_nothing() {
    // As Istio does, an injected pod is injected again (its spec may have changed since);
    // for an unchanged pod the result is the same pod.
    let t = table();
    let (_, once) = run(&t, "canary-ns", &fixture());
    let once = once.unwrap();
    let (again, pod) = run(&t, "canary-ns", &once);
    assert_eq!(again, "1-23-6");
    assert_eq!(pod.unwrap(), once);
}

#[test]
fn another_revision_replaces_the_sidecar_never_doubles_it() {
    let t = table();
    let (_, old) = run(&t, "stable-ns", &fixture());
    let (rev, new) = run(&t, "canary-ns", &old.unwrap());
    assert_eq!(rev, "1-23-6");
    let new = new.unwrap();
    assert_eq!(
        names(&new, "containers"),
        ["reviews", "log-shipper", "istio-proxy"]
    );
    assert_eq!(names(&new, "initContainers"), ["istio-init"]);
    assert_eq!(names(&new, "volumes").len(), 3 + VOLUME_NAMES.len() - 1);
    assert_eq!(proxy(&new)["image"], "docker.io/istio/proxyv2:1.23.6");
    assert_eq!(new["metadata"]["annotations"]["istio.io/rev"], "1-23-6");
    // And once more with the same revision: the same pod.
    assert_eq!(run(&t, "canary-ns", &new).1.unwrap(), new);
}

#[test]
fn patch_is_valid_on_a_bare_pod() {
    let bare = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"}, "spec": {"containers": [{"name": "app", "image": "nginx"}]}});
    let (rev, pod) = run(&table(), "stable-ns", &bare);
    assert_eq!(rev, "1-22-6");
    let pod = pod.unwrap();
    assert_eq!(
        pod["metadata"]["labels"]["service.istio.io/canonical-name"],
        "bare"
    );
    assert_eq!(
        pod["metadata"]["labels"]["service.istio.io/canonical-revision"],
        "latest"
    );
    assert_eq!(pod["metadata"]["annotations"]["istio.io/rev"], "1-22-6");
    assert_eq!(names(&pod, "volumes").len(), VOLUME_NAMES.len() - 1);
    assert_eq!(env(proxy(&pod), "ISTIO_META_POD_PORTS"), "[]");
    assert_eq!(
        env(proxy(&pod), "ISTIO_META_OWNER"),
        "kubernetes://apis/v1/namespaces/stable-ns/pods/bare"
    );
}

#[test]
fn existing_init_containers_are_kept_and_istio_init_appended() {
    let mut pod = fixture();
    pod["spec"]["initContainers"] = json!([{"name": "migrate", "image": "busybox"}]);
    let (_, out) = run(&table(), "stable-ns", &pod);
    assert_eq!(
        names(&out.unwrap(), "initContainers"),
        ["migrate", "istio-init"]
    );
}

#[test]
fn per_pod_overrides_are_honoured() {
    let mut pod = fixture();
    let ann = pod["metadata"]["annotations"].as_object_mut().unwrap();
    for (k, v) in [
        ("sidecar.istio.io/proxyImage", "registry.local/proxyv2:dev"),
        ("sidecar.istio.io/proxyCPU", "250m"),
        ("sidecar.istio.io/proxyMemory", "256Mi"),
        ("sidecar.istio.io/proxyCPULimit", "1"),
        ("sidecar.istio.io/proxyMemoryLimit", "1Gi"),
        ("sidecar.istio.io/logLevel", "debug"),
        ("traffic.sidecar.istio.io/includeInboundPorts", "9080"),
        ("traffic.sidecar.istio.io/excludeInboundPorts", "9999"),
        ("traffic.sidecar.istio.io/excludeOutboundPorts", "5432,6379"),
        ("traffic.sidecar.istio.io/includeOutboundPorts", "443"),
        (
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            "10.0.0.0/8",
        ),
        (
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "169.254.169.254/32",
        ),
    ] {
        ann.insert(k.into(), v.into());
    }
    let (_, out) = run(&table(), "stable-ns", &pod);
    let out = out.unwrap();
    let p = proxy(&out);
    assert_eq!(p["image"], "registry.local/proxyv2:dev");
    assert_eq!(p["args"][4], "--proxyLogLevel=debug");
    assert_eq!(
        p["resources"],
        json!({"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}})
    );
    let args: Vec<String> =
        serde_json::from_value(out["spec"]["initContainers"][0]["args"].clone()).unwrap();
    let after = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args[i + 1].clone())
    };
    assert_eq!(after("-b").as_deref(), Some("9080"));
    assert_eq!(after("-d").as_deref(), Some("15090,15021,9999,15020"));
    assert_eq!(after("-o").as_deref(), Some("5432,6379"));
    assert_eq!(after("-q").as_deref(), Some("443"));
    assert_eq!(after("-i").as_deref(), Some("10.0.0.0/8"));
    assert_eq!(after("-x").as_deref(), Some("169.254.169.254/32"));
    assert_eq!(
        out["spec"]["initContainers"][0]["image"],
        "registry.local/proxyv2:dev"
    );
}

#[test]
fn default_init_args_match_istio() {
    let (_, out) = run(&table(), "stable-ns", &fixture());
    let args: Vec<String> =
        serde_json::from_value(out.unwrap()["spec"]["initContainers"][0]["args"].clone()).unwrap();
    assert_eq!(
        args.join(" "),
        "istio-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i * -x  -b * -d 15090,15021,15020 --log_output_level=default:info"
    );
}

#[test]
fn invalid_annotations_are_denied_with_the_annotation_named() {
    for (k, v) in [
        ("sidecar.istio.io/proxyCPU", "lots"),
        ("traffic.sidecar.istio.io/includeInboundPorts", "80,http"),
        (
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "10.0.0.0/99",
        ),
        ("sidecar.istio.io/logLevel", "debug\n"),
        ("sidecar.istio.io/proxyImage", "registry.local/a\u{1b}b"),
        ("traffic.sidecar.istio.io/excludeInboundPorts", "*"),
        ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "*"),
        ("traffic.sidecar.istio.io/includeInboundPorts", "80\n"),
    ] {
        let mut pod = fixture();
        pod["metadata"]["annotations"][k] = json!(v);
        let (out, _) = run(&table(), "stable-ns", &pod);
        assert!(out.starts_with("denied:") && out.contains(k), "{k}: {out}");
    }
}

#[test]
fn values_istio_accepts_are_not_refused() {
    // Istio validates neither of these; neither does meshrev (beyond control characters).
    for (k, v) in [
        ("sidecar.istio.io/logLevel", "loud"),
        ("sidecar.istio.io/proxyImage", "no-repository"),
        ("traffic.sidecar.istio.io/includeOutboundPorts", "80,http"),
        (
            "sidecar.istio.io/componentLogLevel",
            "misc:error,rbac:debug",
        ),
    ] {
        let mut pod = fixture();
        pod["metadata"]["annotations"][k] = json!(v);
        let (out, _) = run(&table(), "stable-ns", &pod);
        assert_eq!(out, "1-22-6", "{k}: {out}");
    }
}

#[test]
fn tproxy_interception_runs_the_proxy_as_istio_does() {
    let mut pod = fixture();
    pod["metadata"]["annotations"]["sidecar.istio.io/interceptionMode"] = json!("TPROXY");
    let (_, out) = run(&table(), "stable-ns", &pod);
    let out = out.unwrap();
    let p = proxy(&out);
    assert_eq!(p["securityContext"]["runAsUser"], 0);
    assert_eq!(p["securityContext"]["runAsGroup"], 1337);
    assert_eq!(
        p["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN"])
    );
    assert_eq!(env(p, "ISTIO_META_INTERCEPTION_MODE"), "TPROXY");
    let args = out["spec"]["initContainers"][0]["args"].to_string();
    assert!(args.contains(r#""-m","TPROXY""#), "{args}");
}

#[test]
fn escaped_strings_round_trip() {
    let mut pod = fixture();
    pod["metadata"]["labels"]["app"] = json!("we\"ird\\app");
    let (_, out) = run(&table(), "stable-ns", &pod);
    assert_eq!(
        out.unwrap()["metadata"]["labels"]["service.istio.io/canonical-name"],
        "we\"ird\\app"
    );
}

#[test]
fn revision_overrides_reach_the_sidecar() {
    let text = r#"
apiVersion: meshrev.io/v1alpha1
kind: MeshRevision
metadata: {name: 1-24-0}
spec:
  version: 1.24.0
  proxyImage: my.registry/proxyv2:1.24.0-distroless
  discoveryAddress: istiod.custom:15012
  template:
    resources: {requests: {cpu: 50m}, limits: {memory: 2Gi}}
    env: [{name: EXTRA, value: "1"}]
    annotations: {example.com/team: mesh}
---
apiVersion: v1
kind: Namespace
metadata: {name: n, labels: {istio.io/rev: 1-24-0}}
"#;
    let t = crate::table::from_text(text).unwrap();
    let (_, out) = run(&t, "n", &fixture());
    let out = out.unwrap();
    let p = proxy(&out);
    assert_eq!(p["image"], "my.registry/proxyv2:1.24.0-distroless");
    assert_eq!(env(p, "CA_ADDR"), "istiod.custom:15012");
    assert_eq!(env(p, "EXTRA"), "1");
    assert_eq!(p["resources"]["requests"]["cpu"], "50m");
    assert_eq!(p["resources"]["limits"]["memory"], "2Gi");
    assert_eq!(out["metadata"]["annotations"]["example.com/team"], "mesh");
}

#[test]
fn prometheus_keys_match_as_prometheus_sanitizes_them() {
    assert!(sanitizes_to("prometheus.io/scrape", "prometheus_io_scrape"));
    assert!(sanitizes_to("prometheus-io.scrape", "prometheus_io_scrape"));
    assert!(!sanitizes_to(
        "prometheus.io/scrapes",
        "prometheus_io_scrape"
    ));
    assert!(!sanitizes_to("prometheus.io/port", "prometheus_io_scrape"));
}

#[test]
fn a_forged_status_cannot_take_the_apps_containers_or_volumes() {
    let mut pod = fixture();
    pod["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    pod["metadata"]["annotations"]["sidecar.istio.io/status"] = json!(
        r#"{"initContainers":["istio-init"],"containers":["reviews","log-shipper"],"volumes":["data"],"revision":"x"}"#
    );
    let (_, out) = run(&table(), "stable-ns", &pod);
    let out = out.unwrap();
    assert_eq!(
        names(&out, "containers"),
        ["reviews", "log-shipper", "istio-proxy"]
    );
    assert!(names(&out, "volumes").contains(&"data".to_string()));
}

#[test]
fn proxy_requests_above_limits_are_refused() {
    for (req, lim) in [
        (
            ("sidecar.istio.io/proxyCPU", "2"),
            ("sidecar.istio.io/proxyCPULimit", "500m"),
        ),
        (
            ("sidecar.istio.io/proxyMemory", "1Gi"),
            ("sidecar.istio.io/proxyMemoryLimit", "512Mi"),
        ),
    ] {
        let mut pod = fixture();
        pod["metadata"]["annotations"][req.0] = json!(req.1);
        pod["metadata"]["annotations"][lim.0] = json!(lim.1);
        let (out, _) = run(&table(), "stable-ns", &pod);
        assert!(out.starts_with("denied:") && out.contains(req.0), "{out}");
    }
    let mut pod = fixture();
    pod["metadata"]["annotations"]["sidecar.istio.io/proxyCPU"] = json!("-1");
    assert!(run(&table(), "stable-ns", &pod).0.starts_with("denied:"));
}

/// A malformed annotation is a `Refusal::Annotation` whose display is exactly the message
/// the webhook and `meshrev inject` show (naming the annotation, its value and why).
#[test]
fn a_bad_annotation_is_an_annotation_refusal_with_the_message_as_its_display() {
    let mut pod = fixture();
    pod["metadata"]["annotations"]["status.sidecar.istio.io/port"] = json!("99999");
    let text = pod.to_string();
    let view: Pod = serde_json::from_str(&text).expect("pod view must parse");
    let mut buf = Vec::new();
    let Outcome::Denied(refusal) = inject(&table(), "stable-ns", &view, &mut buf, || None) else {
        panic!("a port above 65535 must be refused");
    };
    assert!(buf.is_empty(), "a refusal leaves no patch");
    assert!(matches!(refusal, Refusal::Annotation(_)), "{refusal:?}");
    let shown = refusal.to_string();
    assert!(
        shown.starts_with("annotation status.sidecar.istio.io/port: \"99999\": "),
        "{shown}"
    );
    assert_eq!(refusal.into_message(), shown);
}

#[test]
fn strings_are_written_as_serde_json_writes_them() {
    for s in [
        "",
        "plain",
        "a\"b",
        "back\\slash",
        "tab\there",
        "nl\n",
        "\u{1}",
        "\u{7f}",
        "é ☃ 😀",
        "</script>",
        "\u{2028}",
    ] {
        let mut out = Vec::new();
        push_str_json(&mut out, s);
        assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
    }
}

/// A 1.30.3 revision `default`, injecting namespace `n` (the differential test's setting).
fn table_1_30() -> Table {
    crate::table::from_text(
        "apiVersion: meshrev.io/v1alpha1\nkind: MeshRevision\nmetadata: {name: default}\n\
         spec: {version: \"1.30.3\"}\n---\napiVersion: v1\nkind: Namespace\n\
         metadata: {name: n, labels: {istio.io/rev: default}}\n",
    )
    .expect("the table must build")
}

fn container<'v>(pod: &'v Value, name: &str) -> &'v Value {
    pod["spec"]["containers"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("container {name} must be there"))
}

fn json_annotation(pod: &Value, key: &str) -> Value {
    let text = pod["metadata"]["annotations"][key]
        .as_str()
        .unwrap_or_else(|| panic!("annotation {key} must be set"));
    serde_json::from_str(text).expect("the annotation must be JSON")
}

/// Istio's 1.30.3 `gateway` template reads none of the sidecar's per-pod annotations; Istio's
/// post-processing still orders the proxy and rewrites app probes. Expected values are Istio's
/// injector's output for this pod (the differential test's oracle).
#[test]
fn gateway_template_ignores_sidecar_annotations_as_istio_does() {
    const LONG: &str =
        "a-very-long-application-name-that-goes-well-past-the-sixty-three-char-limit";
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "n", "labels": {"app": LONG},
            "annotations": {
                "inject.istio.io/templates": "gateway",
                "readiness.status.sidecar.istio.io/failureThreshold": "10",
                "sidecar.istio.io/interceptionMode": "TPROXY",
                "status.sidecar.istio.io/port": "0",
                "proxy.istio.io/config": "holdApplicationUntilProxyStarts: true",
                "sidecar.istio.io/userVolume": r#"{"extra":{"emptyDir":{}}}"#,
                "sidecar.istio.io/userVolumeMount": r#"{"extra":{"mountPath":"/extra"}}"#}},
        "spec": {"containers": [{"name": "app", "image": "example/app:1",
            "readinessProbe": {"httpGet": {"port": 8080, "path": "/ready"}}}]}});
    let (_, out) = run(&table_1_30(), "n", &pod);
    let out = out.expect("injected");
    // holdApplicationUntilProxyStarts: the proxy first.
    assert_eq!(names(&out, "containers"), ["istio-proxy", "app"]);
    assert_eq!(out["spec"].get("initContainers"), None);
    let p = container(&out, "istio-proxy");
    assert_eq!(
        p["readinessProbe"],
        json!({"httpGet": {"path": "/healthz/ready", "port": 15021}, "failureThreshold": 4,
               "timeoutSeconds": 3, "periodSeconds": 15})
    );
    assert_eq!(
        p["securityContext"],
        json!({"runAsGroup": 1337, "runAsUser": 1337})
    );
    assert_eq!(env(p, "ISTIO_META_INTERCEPTION_MODE"), "REDIRECT");
    let mounts: Vec<&str> = p["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| m["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        mounts,
        [
            "workload-socket",
            "credential-socket",
            "workload-certs",
            "istiod-ca-cert",
            "istio-data",
            "istio-envoy",
            "istio-token",
            "istio-podinfo"
        ]
    );
    let volumes = [
        "workload-socket",
        "credential-socket",
        "workload-certs",
        "istio-envoy",
        "istio-data",
        "istio-podinfo",
        "istio-token",
        "istiod-ca-cert",
    ];
    assert_eq!(names(&out, "volumes"), volumes);
    // App probes are rewritten, to the annotation's status port even when it is 0.
    let probers: Value =
        serde_json::from_str(env(p, "ISTIO_KUBE_APP_PROBERS").as_str().expect("probers"))
            .expect("probers JSON");
    assert_eq!(
        probers,
        json!({"/app-health/app/readyz": {"httpGet": {"path": "/ready", "port": 8080}}})
    );
    assert_eq!(
        container(&out, "app")["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/app/readyz", "port": 0}})
    );
    // The canonical name is not truncated.
    assert_eq!(
        out["metadata"]["labels"]["service.istio.io/canonical-name"],
        LONG
    );
    assert_eq!(
        json_annotation(&out, "sidecar.istio.io/status"),
        json!({"initContainers": null, "containers": ["istio-proxy"], "volumes": volumes,
               "imagePullSecrets": null, "revision": "default"})
    );
}

/// A gateway pod's own `istio-proxy` keeps its `runAsUser` under TPROXY: Istio's
/// `adjustInitContainerUser` stops when the pod has no istio-init (Istio's output).
#[test]
fn gateway_keeps_the_pods_proxy_user_under_tproxy() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "n", "annotations": {
            "inject.istio.io/templates": "gateway",
            "sidecar.istio.io/interceptionMode": "TPROXY"}},
        "spec": {"containers": [{"name": "app", "image": "example/app:1"},
            {"name": "istio-proxy", "image": "auto", "securityContext": {"runAsUser": 2000}}]}});
    let (_, out) = run(&table_1_30(), "n", &pod);
    let out = out.expect("injected");
    let p = container(&out, "istio-proxy");
    assert_eq!(p["securityContext"]["runAsUser"], 2000);
    assert_eq!(env(p, "ISTIO_META_INTERCEPTION_MODE"), "REDIRECT");
}

/// `grpc-simple` lists every container of the pod, so Istio records each in
/// `proxy.istio.io/overrides`; the pod's own `istio-proxy` is the "sidecar" of Istio's
/// post-processing (Prometheus env, first under holdApplicationUntilProxyStarts); a
/// `userVolume` that is not JSON is never read. Expected values are Istio's output.
#[test]
fn grpc_simple_records_every_container_and_post_processes_the_pods_proxy() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "n", "annotations": {
            "inject.istio.io/templates": "grpc-simple",
            "prometheus.io/port": "9090",
            "sidecar.istio.io/userVolume": "{",
            "proxy.istio.io/config": "holdApplicationUntilProxyStarts: true"}},
        "spec": {"containers": [{"name": "app", "image": "example/app:1"},
            {"name": "istio-proxy", "image": "auto", "args": ["proxy", "router"]}]}});
    let (outcome, out) = run(&table_1_30(), "n", &pod);
    let out = out.unwrap_or_else(|| panic!("injected, not {outcome}"));
    assert_eq!(names(&out, "containers"), ["istio-proxy", "app"]);
    assert_eq!(
        json_annotation(&out, "proxy.istio.io/overrides"),
        json!({"containers": [{"name": "app", "image": "example/app:1"},
                              {"name": "istio-proxy", "args": ["proxy", "router"]}]})
    );
    let p = container(&out, "istio-proxy");
    let prom: Value = serde_json::from_str(
        env(p, "ISTIO_PROMETHEUS_ANNOTATIONS")
            .as_str()
            .expect("prometheus env"),
    )
    .expect("JSON");
    assert_eq!(prom, json!({"scrape": "", "path": "", "port": "9090"}));
    assert_eq!(p["image"], "auto");
    assert_eq!(
        env(container(&out, "app"), "ISTIO_PROMETHEUS_ANNOTATIONS"),
        &Value::Null
    );
    assert_eq!(
        out["metadata"]["annotations"]["prometheus.io/port"],
        "15020"
    );
}

fn mount_names(c: &Value) -> Vec<&str> {
    c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| m["name"].as_str().unwrap_or(""))
        .collect()
}

/// Istio's 1.30.3 `grpc-agent` template applies the readiness and userVolume[Mount]
/// annotations, lists the proxy and every app container (so the pod's own versions are
/// merged and recorded in `proxy.istio.io/overrides`, proxy first), does not truncate the
/// canonical name, and Istio puts the proxy first under holdApplicationUntilProxyStarts.
/// Expected values are Istio's injector's output for this pod.
#[test]
fn grpc_agent_template_as_istio_renders_it() {
    const NAME: &str =
        "a-very-long-application-name-that-goes-well-past-the-sixty-three-char-limit-pod";
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": NAME, "namespace": "n", "annotations": {
            "inject.istio.io/templates": "grpc-agent",
            "readiness.status.sidecar.istio.io/failureThreshold": "10",
            "readiness.status.sidecar.istio.io/initialDelaySeconds": "5",
            "proxy.istio.io/config": "holdApplicationUntilProxyStarts: true",
            "sidecar.istio.io/userVolumeMount": r#"{"extra":{"mountPath":"/extra"}}"#,
            "sidecar.istio.io/userVolume": r#"{"extra":{"emptyDir":{}}}"#}},
        "spec": {"containers": [{"name": "app", "image": "example/app:1"},
            {"name": "istio-proxy", "image": "auto", "resources": {"requests": {"cpu": "50m"}}}]}});
    let (outcome, out) = run(&table_1_30(), "n", &pod);
    let out = out.unwrap_or_else(|| panic!("injected, not {outcome}"));
    assert_eq!(names(&out, "containers"), ["istio-proxy", "app"]);
    let p = container(&out, "istio-proxy");
    assert_eq!(p["image"], "docker.io/istio/proxyv2:1.30.3");
    assert_eq!(
        p["readinessProbe"],
        json!({"failureThreshold": 10, "httpGet": {"path": "/healthz/ready", "port": 15020},
               "initialDelaySeconds": 5, "periodSeconds": 15, "timeoutSeconds": 3})
    );
    assert_eq!(p["resources"]["requests"]["cpu"], "50m");
    assert_eq!(
        mount_names(p),
        [
            "workload-socket",
            "workload-certs",
            "istiod-ca-cert",
            "istio-data",
            "istio-xds",
            "istio-token",
            "istio-podinfo",
            "extra"
        ]
    );
    assert_eq!(
        p["volumeMounts"][7],
        json!({"mountPath": "/extra", "name": "extra"})
    );
    let volumes = [
        "workload-socket",
        "workload-certs",
        "istio-xds",
        "istio-data",
        "istio-podinfo",
        "istio-token",
        "istiod-ca-cert",
        "extra",
    ];
    assert_eq!(names(&out, "volumes"), volumes);
    assert_eq!(
        json_annotation(&out, "sidecar.istio.io/status"),
        json!({"initContainers": null, "containers": ["istio-proxy", "app"], "volumes": volumes,
               "imagePullSecrets": null, "revision": "default"})
    );
    assert_eq!(
        json_annotation(&out, "proxy.istio.io/overrides"),
        json!({"containers": [
            {"name": "istio-proxy", "resources": {"requests": {"cpu": "50m"}}},
            {"name": "app", "image": "example/app:1"}]})
    );
    assert_eq!(
        out["metadata"]["labels"]["service.istio.io/canonical-name"],
        NAME
    );
    assert_eq!(
        out["metadata"]["labels"].get("security.istio.io/tlsMode"),
        None
    );
    assert_eq!(
        out["metadata"]["annotations"]["sidecar.istio.io/rewriteAppHTTPProbers"],
        "false"
    );
}

/// With `status.sidecar.istio.io/port: "0"` the `grpc-agent` template writes no readiness
/// probe, resources or volume mounts for the agent, and the userVolumeMount entries it then
/// writes fall into the env list as env vars named after them (Istio's output).
#[test]
fn grpc_agent_with_status_port_zero_as_istio_renders_it() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "n", "annotations": {
            "inject.istio.io/templates": "grpc-agent",
            "status.sidecar.istio.io/port": "0",
            "sidecar.istio.io/userVolumeMount":
                r#"{"extra":{"mountPath":"/extra"},"b":{"mountPath":"/b","readOnly":true}}"#,
            "sidecar.istio.io/userVolume": r#"{"extra":{"emptyDir":{}}}"#}},
        "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}});
    let (outcome, out) = run(&table_1_30(), "n", &pod);
    let out = out.unwrap_or_else(|| panic!("injected, not {outcome}"));
    assert_eq!(names(&out, "containers"), ["app", "istio-proxy"]);
    let p = container(&out, "istio-proxy");
    for k in ["readinessProbe", "resources", "volumeMounts"] {
        assert_eq!(p.get(k), None, "{k}");
    }
    let env = p["env"].as_array().expect("env");
    assert_eq!(
        env[env.len() - 4..],
        [
            json!({"name": "ISTIO_META_DNS_CAPTURE", "value": "false"}),
            json!({"name": "DISABLE_ENVOY", "value": "true"}),
            json!({"name": "b"}),
            json!({"name": "extra"}),
        ]
    );
    assert_eq!(
        names(&out, "volumes").last().map(String::as_str),
        Some("extra")
    );
    assert_eq!(
        json_annotation(&out, "proxy.istio.io/overrides"),
        json!({"containers": [{"name": "app", "image": "example/app:1"}]})
    );
}

/// `sidecar,grpc-agent` (classic sidecar): Istio merges both templates, so the sidecar's
/// istio-init, volumes and tlsMode label stay and the proxy is the sidecar's with
/// grpc-agent's fields merged in; grpc-agent turns the app probe rewrite off. Expected values
/// are Istio's injector's output for this pod.
#[test]
fn sidecar_and_grpc_agent_merge_as_istio_merges_them() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "n", "annotations": {
            "inject.istio.io/templates": "sidecar,grpc-agent",
            "sidecar.istio.io/nativeSidecar": "false"}},
        "spec": {"containers": [{"name": "app", "image": "example/app:1",
            "readinessProbe": {"httpGet": {"port": 8080}}}]}});
    let (outcome, out) = run(&table_1_30(), "n", &pod);
    let out = out.unwrap_or_else(|| panic!("injected, not {outcome}"));
    assert_eq!(names(&out, "initContainers"), ["istio-init"]);
    assert_eq!(names(&out, "containers"), ["app", "istio-proxy"]);
    assert_eq!(
        out["metadata"]["labels"]["security.istio.io/tlsMode"],
        "istio"
    );
    let app = container(&out, "app");
    assert_eq!(app["readinessProbe"], json!({"httpGet": {"port": 8080}}));
    let p = container(&out, "istio-proxy");
    let ports: Vec<&Value> = p["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| &p["containerPort"])
        .collect();
    assert_eq!(ports, [15020, 15090]);
    assert_eq!(
        p["readinessProbe"],
        json!({"failureThreshold": 4, "httpGet": {"path": "/healthz/ready", "port": 15020},
               "periodSeconds": 15, "timeoutSeconds": 3})
    );
    assert_eq!(p["startupProbe"]["httpGet"]["port"], 15021);
    assert_eq!(p["securityContext"]["runAsUser"], 1337);
    assert_eq!(
        p["lifecycle"],
        json!({"postStart": {"exec": {"command": ["pilot-agent", "wait",
            "--url=http://localhost:15020/healthz/ready"]}}})
    );
    for (name, value) in [
        ("DISABLE_ENVOY", json!("true")),
        ("ISTIO_META_GENERATOR", json!("grpc")),
        ("ISTIO_META_INTERCEPTION_MODE", json!("REDIRECT")),
        ("ISTIO_KUBE_APP_PROBERS", Value::Null),
    ] {
        assert_eq!(env(p, name), &value, "{name}");
    }
    let mut mounts = mount_names(p);
    mounts.sort_unstable();
    assert_eq!(
        mounts,
        [
            "credential-socket",
            "istio-ca-crl",
            "istio-data",
            "istio-podinfo",
            "istio-token",
            "istio-xds",
            "istiod-ca-cert",
            "workload-certs",
            "workload-socket"
        ]
    );
    assert_eq!(
        json_annotation(&out, "sidecar.istio.io/status"),
        json!({"initContainers": ["istio-init"], "containers": ["istio-proxy", "app"],
               "volumes": ["workload-socket", "credential-socket", "workload-certs", "istio-xds",
                           "istio-envoy", "istio-data", "istio-podinfo", "istio-token",
                           "istiod-ca-cert", "istio-ca-crl"],
               "imagePullSecrets": null, "revision": "default"})
    );
}

/// With a native sidecar, Istio's `sidecar,grpc-agent` pod has two containers named
/// istio-proxy, which the API server refuses: meshrev refuses it, naming the fix.
#[test]
fn sidecar_and_grpc_agent_with_a_native_sidecar_is_refused_with_the_fix() {
    for templates in ["sidecar,grpc-agent", "sidecar,gateway"] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "n", "annotations": {
                "inject.istio.io/templates": templates}},
            "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}});
        let (outcome, out) = run(&table_1_30(), "n", &pod);
        assert_eq!(out, None, "{templates}");
        assert!(
            outcome.starts_with("denied:")
                && outcome.contains("inject.istio.io/templates")
                && outcome.contains("sidecar.istio.io/nativeSidecar: \"false\""),
            "{templates}: {outcome}"
        );
    }
}

/// A list of templates meshrev has not checked against Istio's merge is refused, naming the
/// lists it reproduces; names are trimmed as Istio trims them, and a template repeated right
/// after itself counts once (Istio's corpus has "sidecar,sidecar,sidecar").
#[test]
fn template_lists_not_reproduced_are_refused_naming_those_that_are() {
    let pod = |templates: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "n", "annotations": {
                "inject.istio.io/templates": templates,
                "sidecar.istio.io/nativeSidecar": "false"}},
            "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}})
    };
    for t in [
        "gateway,grpc-agent",
        "sidecar,grpc-simple",
        "sidecar,gateway,sidecar",
    ] {
        let (outcome, out) = run(&table_1_30(), "n", &pod(t));
        assert!(
            out.is_none() && outcome.contains("sidecar,gateway, gateway,sidecar"),
            "{t}: {outcome}"
        );
    }
    for t in [" gateway , sidecar", "sidecar,sidecar,sidecar"] {
        let (outcome, out) = run(&table_1_30(), "n", &pod(t));
        assert!(out.is_some(), "{t}: {outcome}");
    }
}

/// `gateway,sidecar` or `grpc-agent,sidecar` with a native sidecar: Istio moves the first
/// template's istio-proxy into initContainers and merges the sidecar over it, so the pod has
/// one istio-proxy, a native sidecar (Istio's injector gives `istio-init`, `istio-proxy` for
/// this pod). With the pod's own istio-proxy container, Istio leaves that container behind
/// without an image: refused, with the fix.
#[test]
fn a_template_then_sidecar_merge_into_one_native_sidecar() {
    for templates in ["gateway,sidecar", "grpc-agent,sidecar"] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "n", "annotations": {
                "inject.istio.io/templates": templates}},
            "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}});
        let (outcome, out) = run(&table_1_30(), "n", &pod);
        let out = out.unwrap_or_else(|| panic!("{templates}: injected, not {outcome}"));
        assert_eq!(
            names(&out, "initContainers"),
            ["istio-init", "istio-proxy"],
            "{templates}"
        );
        assert_eq!(names(&out, "containers"), ["app"], "{templates}");
        let proxy = &out["spec"]["initContainers"][1];
        assert_eq!(proxy["restartPolicy"], "Always", "{templates}");
        assert_eq!(
            proxy["args"][1], "sidecar",
            "{templates}: the sidecar's args win"
        );

        let mut own = pod.clone();
        own["spec"]["containers"]
            .as_array_mut()
            .expect("containers")
            .push(json!({"name": "istio-proxy", "image": "auto"}));
        let (outcome, out) = run(&table_1_30(), "n", &own);
        assert!(
            out.is_none()
                && outcome.contains("without an image")
                && outcome.contains("sidecar.istio.io/nativeSidecar: \"false\""),
            "{templates}: {outcome}"
        );
    }
}

/// The gateway and grpc-simple templates write no proxy resources and never read
/// userVolume[Mount]: a request above its limit, a negative resource, or a userVolume that
/// is not JSON, does not stop Istio from injecting them, nor meshrev. The sidecar template
/// reads them: refused. What Istio refuses for every template (a resource that is not a
/// quantity at all) stays refused.
#[test]
fn annotations_a_template_never_reads_do_not_refuse_it() {
    let pod = |templates: Option<&str>| {
        let mut anns = json!({"sidecar.istio.io/proxyMemory": "1Gi",
            "sidecar.istio.io/proxyMemoryLimit": "512Mi",
            "sidecar.istio.io/proxyCPU": "-1",
            "sidecar.istio.io/userVolume": "{"});
        if let Some(t) = templates {
            anns["inject.istio.io/templates"] = json!(t);
        }
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "n", "annotations": anns},
            "spec": {"containers": [{"name": "app", "image": "example/app:1"}]}})
    };
    for t in ["gateway", "grpc-simple"] {
        let (outcome, out) = run(&table_1_30(), "n", &pod(Some(t)));
        assert!(out.is_some(), "{t}: {outcome}");
    }
    for t in [None, Some("grpc-agent")] {
        let (outcome, out) = run(&table_1_30(), "n", &pod(t));
        assert!(
            out.is_none() && outcome.starts_with("denied:") && outcome.contains("proxyCPU"),
            "{t:?}: {outcome}"
        );
    }
    let mut not_a_quantity = pod(Some("gateway"));
    not_a_quantity["metadata"]["annotations"]["sidecar.istio.io/proxyCPU"] = json!("lots");
    let (outcome, out) = run(&table_1_30(), "n", &not_a_quantity);
    assert!(out.is_none() && outcome.contains("proxyCPU"), "{outcome}");
}
