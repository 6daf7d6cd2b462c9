//! The Helm chart (charts/meshrev): its default render is the objects of manifests/, its
//! values change what they say they change, its schema refuses bad values, and two releases
//! can live side by side. Renders with the `helm` built by tests/helm/build.sh.

#[path = "support/tools.rs"]
mod tools;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("charts/meshrev")
}

/// `helm template RELEASE charts/meshrev -n NAMESPACE ARGS…`: Ok(stdout) or Err(stderr).
fn template(release: &str, namespace: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tools::tool("helm"))
        .args(["template", release])
        .arg(chart())
        .args(["--namespace", namespace])
        .args(args)
        .output()
        .expect("helm must start");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("helm writes UTF-8"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn render(release: &str, namespace: &str, args: &[&str]) -> Vec<Value> {
    let text = template(release, namespace, args)
        .unwrap_or_else(|e| panic!("helm template {release} {args:?} failed:\n{e}"));
    parse(&text, "the render")
}

fn parse(text: &str, what: &str) -> Vec<Value> {
    meshrev::yaml::documents(text)
        .map(|d| d.unwrap_or_else(|e| panic!("{what}: {e}")))
        .filter(|d| !d.is_null())
        .collect()
}

/// `kind/namespace/name` of an object.
fn key(v: &Value) -> String {
    format!(
        "{}/{}/{}",
        v["kind"].as_str().unwrap_or("?"),
        v["metadata"]["namespace"].as_str().unwrap_or(""),
        v["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn by_key(objs: Vec<Value>) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for o in objs {
        let k = key(&o);
        assert!(out.insert(k.clone(), o).is_none(), "{k} twice");
    }
    out
}

/// The labels only the chart adds: its bookkeeping, and the release in selectors (which is
/// what lets two releases select only their own pods).
const CHART_ONLY_LABELS: [&str; 4] = [
    "helm.sh/chart",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
];

/// Drops [`CHART_ONLY_LABELS`] from every label map and selector, and a label map left empty.
fn strip_chart_labels(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for field in ["labels", "matchLabels", "selector"] {
                if let Some(Value::Object(labels)) = map.get_mut(field)
                    && labels.values().all(Value::is_string)
                {
                    for l in CHART_ONLY_LABELS {
                        labels.remove(l);
                    }
                    if labels.is_empty() {
                        map.remove(field);
                    }
                }
            }
            map.values_mut().for_each(strip_chart_labels);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_chart_labels),
        _ => {}
    }
}

fn manifest_file(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join("manifests").join(path))
        .unwrap_or_else(|e| panic!("manifests/{path}: {e}"));
    parse(&text, path)
}

/// What `kubectl apply -k manifests/` applies (the kustomization only lists files).
fn kustomize_manifests() -> Vec<Value> {
    let k = manifest_file("kustomization.yaml").remove(0);
    let files = k["resources"].as_array().expect("resources");
    files
        .iter()
        .flat_map(|f| manifest_file(f.as_str().expect("a path")))
        .collect()
}

/// Fails with the objects and fields that differ.
fn assert_same_objects(want: Vec<Value>, got: Vec<Value>, what: &str) {
    let want = by_key(want);
    let mut got = by_key(got);
    got.values_mut().for_each(strip_chart_labels);
    let wk: BTreeSet<_> = want.keys().collect();
    let gk: BTreeSet<_> = got.keys().collect();
    assert_eq!(
        wk, gk,
        "{what}: the chart renders other objects than manifests/"
    );
    for (k, w) in &want {
        let g = &got[k];
        if w != g {
            let diffs = json_patch::diff(w, g);
            panic!(
                "{what}: {k} differs from manifests/ (JSON Patch from manifests/ to the chart):\n{}",
                serde_json::to_string_pretty(&diffs).expect("a patch serializes")
            );
        }
    }
}

#[test]
fn default_render_is_the_manifests() {
    let got = render("meshrev", "meshrev-system", &["--include-crds"]);
    assert_same_objects(kustomize_manifests(), got, "default values");
}

#[test]
fn monitoring_objects_are_the_manifests_ones() {
    let all = render(
        "meshrev",
        "meshrev-system",
        &[
            "--set",
            "serviceMonitor.enabled=true,prometheusRule.enabled=true",
        ],
    );
    let monitoring: Vec<Value> = all
        .into_iter()
        .filter(|o| {
            o["apiVersion"]
                .as_str()
                .is_some_and(|a| a.starts_with("monitoring.coreos.com/"))
        })
        .collect();
    let mut want = manifest_file("servicemonitor.yaml");
    want.extend(manifest_file("monitoring/prometheusrule.yaml"));
    assert_same_objects(want, monitoring, "serviceMonitor and prometheusRule on");

    // And they are off by default (they need the Prometheus Operator's CRDs).
    let default = render("meshrev", "meshrev-system", &[]);
    assert!(
        !default.iter().any(|o| o["apiVersion"]
            .as_str()
            .unwrap_or("")
            .starts_with("monitoring.")),
        "monitoring objects must be opt-in"
    );
}

#[test]
fn chart_crds_are_the_generated_ones() {
    let text = std::fs::read_to_string(chart().join("crds/crds.yaml")).expect("chart CRDs");
    assert!(
        text == meshrev::config::crd_yaml(),
        "charts/meshrev/crds/crds.yaml drifted from the Rust types: run `cargo run -- crd > charts/meshrev/crds/crds.yaml`"
    );
}

fn find<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the render"))
}

fn webhooks(objs: &[Value], kind: &str) -> Vec<Value> {
    find(objs, kind)["webhooks"]
        .as_array()
        .expect("webhooks")
        .clone()
}

#[test]
fn values_change_what_they_say() {
    let objs = render(
        "edge",
        "mesh-ops",
        &[
            "--set",
            "image.repository=registry.example/meshrev,image.tag=9.9.9,image.pullPolicy=Always",
            "--set",
            "replicas=3,resources.requests.cpu=250m,resources.limits.memory=1Gi",
            "--set",
            "ports.webhook=8443,ports.metrics=8080",
            "--set",
            "webhook.failurePolicy=Ignore,webhook.timeoutSeconds=5",
            "--set",
            "guards.failurePolicy=Ignore,guards.timeoutSeconds=7",
            "--set",
            "webhook.namespaceSelector.matchExpressions[0].key=team",
            "--set",
            "webhook.namespaceSelector.matchExpressions[0].operator=In",
            "--set",
            "webhook.namespaceSelector.matchExpressions[0].values[0]=blue",
            "--set",
            "webhook.excludedNamespaces[0]=kube-system",
            "--set",
            "tls.caBundle=Q0E=,extraArgs[0]=--max-connections=2048",
        ],
    );
    let d = find(&objs, "Deployment");
    assert_eq!(d["metadata"]["name"], "edge-meshrev");
    assert_eq!(d["metadata"]["namespace"], "mesh-ops");
    assert_eq!(d["spec"]["replicas"], 3);
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "registry.example/meshrev:9.9.9");
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(c["resources"]["requests"]["cpu"], "250m");
    assert_eq!(c["resources"]["limits"]["memory"], "1Gi");
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "--listen=0.0.0.0:8443",
        "--metrics-listen=0.0.0.0:8080",
        "--max-connections=2048",
    ] {
        assert!(args.contains(&want), "{want} not in {args:?}");
    }
    assert_eq!(
        c["ports"],
        json!([{"name": "webhook", "containerPort": 8443}, {"name": "metrics", "containerPort": 8080}])
    );
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
        "8080"
    );
    assert_eq!(
        d["spec"]["selector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "meshrev", "app.kubernetes.io/instance": "edge"})
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "edge-meshrev-tls"
    );
    let svc = find(&objs, "Service");
    assert_eq!(svc["spec"]["ports"][1]["port"], 8080);

    let mutating = webhooks(&objs, "MutatingWebhookConfiguration");
    assert_eq!(mutating.len(), 4);
    for w in &mutating {
        let name = w["name"].as_str().expect("name");
        assert_eq!(w["failurePolicy"], "Ignore", "{name}");
        assert_eq!(w["timeoutSeconds"], 5, "{name}");
        assert_eq!(
            w["clientConfig"],
            json!({"service": {"name": "edge-meshrev", "namespace": "mesh-ops", "path": "/inject", "port": 443}, "caBundle": "Q0E="}),
            "{name}"
        );
        let exprs = w["namespaceSelector"]["matchExpressions"]
            .as_array()
            .expect("matchExpressions");
        assert!(
            exprs.contains(&json!({"key": "team", "operator": "In", "values": ["blue"]})),
            "{name}: the extra selector is ANDed in: {exprs:?}"
        );
        assert!(
            exprs.contains(&json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "mesh-ops"]})),
            "{name}: excluded namespaces plus the release's own: {exprs:?}"
        );
    }
    let guards = webhooks(&objs, "ValidatingWebhookConfiguration");
    assert_eq!(guards[0]["failurePolicy"], "Ignore");
    assert_eq!(guards[0]["timeoutSeconds"], 7);
    assert_eq!(guards[0]["clientConfig"]["service"]["path"], "/validate");
}

#[test]
fn tls_sources() {
    // Files from `meshrev certs`: the chart makes the Secret, the CA goes into both webhooks.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_meshrev"))
        .args(["certs", "--out"])
        .arg(dir.path())
        .args(["--service", "meshrev", "--namespace", "meshrev-system"])
        .output()
        .expect("meshrev certs");
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    let file = |value: &str, name: &str| format!("{value}={}", dir.path().join(name).display());
    let objs = render(
        "meshrev",
        "meshrev-system",
        &[
            "--set",
            "tls.source=certs",
            "--set-file",
            &file("tls.ca", "ca.crt"),
            "--set-file",
            &file("tls.cert", "tls.crt"),
            "--set-file",
            &file("tls.key", "tls.key"),
        ],
    );
    let secret = find(&objs, "Secret");
    assert_eq!(secret["metadata"]["name"], "meshrev-tls");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert!(secret["data"]["tls.crt"].is_string() && secret["data"]["tls.key"].is_string());
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        for w in webhooks(&objs, kind) {
            assert_eq!(
                w["clientConfig"]["caBundle"],
                printed.trim(),
                "{kind}: the CA `meshrev certs` printed"
            );
        }
    }

    // Without the files: one line that says which value and how to get it.
    let err = template("meshrev", "meshrev-system", &["--set", "tls.source=certs"])
        .expect_err("certs without files must fail");
    assert!(
        err.contains("tls.cert") && err.contains("meshrev certs"),
        "{err}"
    );

    // An existing Secret under another name.
    let objs = render(
        "meshrev",
        "meshrev-system",
        &["--set", "tls.secretName=my-tls,tls.caBundle=Q0E="],
    );
    assert!(!objs.iter().any(|o| o["kind"] == "Secret"));
    assert_eq!(
        find(&objs, "Deployment")["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "my-tls"
    );

    // cert-manager: a Certificate for the Service's names, its CA injected by annotation,
    // no caBundle field; a self-signed CA Issuer when no issuer is named.
    let objs = render(
        "meshrev",
        "meshrev-system",
        &["--set", "tls.source=certManager"],
    );
    let certs: Vec<&Value> = objs.iter().filter(|o| o["kind"] == "Certificate").collect();
    let serving = certs
        .iter()
        .find(|c| c["metadata"]["name"] == "meshrev-serving")
        .expect("the serving Certificate");
    assert_eq!(serving["spec"]["secretName"], "meshrev-tls");
    assert_eq!(
        serving["spec"]["dnsNames"],
        json!([
            "meshrev.meshrev-system.svc",
            "meshrev.meshrev-system.svc.cluster.local"
        ])
    );
    assert_eq!(serving["spec"]["issuerRef"]["name"], "meshrev-ca");
    assert_eq!(objs.iter().filter(|o| o["kind"] == "Issuer").count(), 2);
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        let cfg = find(&objs, kind);
        assert_eq!(
            cfg["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "meshrev-system/meshrev-serving",
            "{kind}"
        );
        for w in cfg["webhooks"].as_array().expect("webhooks") {
            assert!(w["clientConfig"].get("caBundle").is_none(), "{kind}: {w}");
        }
    }
    let objs = render(
        "meshrev",
        "meshrev-system",
        &[
            "--set",
            "tls.source=certManager,tls.certManager.issuerRef.name=corp-ca,tls.certManager.issuerRef.kind=ClusterIssuer",
        ],
    );
    assert_eq!(objs.iter().filter(|o| o["kind"] == "Issuer").count(), 0);
    let serving = find(&objs, "Certificate");
    assert_eq!(
        serving["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
}

#[test]
fn upgrade_unfinished_delay_is_a_value() {
    let objs = render(
        "meshrev",
        "meshrev-system",
        &[
            "--set",
            "prometheusRule.enabled=true,prometheusRule.upgradeUnfinishedFor=72h",
        ],
    );
    let rule = find(&objs, "PrometheusRule");
    let found: Vec<&Value> = rule["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .filter(|r| r["alert"] == "MeshrevUpgradeUnfinished")
        .collect();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["for"], "72h");
}

#[test]
fn two_releases_side_by_side_share_no_object() {
    let a = render("meshrev", "meshrev-system", &[]);
    let b = render(
        "meshrev-blue",
        "meshrev-blue",
        &[
            "--set",
            "samples.enabled=false",
            "--set",
            "webhook.namespaceSelector.matchExpressions[0].key=meshrev.io/instance",
            "--set",
            "webhook.namespaceSelector.matchExpressions[0].operator=In",
            "--set",
            "webhook.namespaceSelector.matchExpressions[0].values[0]=blue",
        ],
    );
    let ka: BTreeSet<String> = a.iter().map(key).collect();
    let kb: BTreeSet<String> = b.iter().map(key).collect();
    let shared: Vec<_> = ka.intersection(&kb).collect();
    assert!(shared.is_empty(), "both releases would own {shared:?}");
    assert_eq!(find(&b, "Deployment")["metadata"]["name"], "meshrev-blue");
    assert_eq!(
        find(&b, "Deployment")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        "meshrev-blue"
    );
    // The ClusterRoleBinding binds the blue release's own ServiceAccount.
    let crb = find(&b, "ClusterRoleBinding");
    assert_eq!(
        crb["subjects"][0],
        json!({"kind": "ServiceAccount", "name": "meshrev-blue", "namespace": "meshrev-blue"})
    );
    // fullnameOverride names everything.
    let c = render(
        "whatever",
        "x",
        &["--set", "fullnameOverride=mr,samples.enabled=false"],
    );
    assert_eq!(find(&c, "Deployment")["metadata"]["name"], "mr");
    assert_eq!(
        find(&c, "MutatingWebhookConfiguration")["metadata"]["name"],
        "mr-sidecar-injector"
    );
}

#[test]
fn schema_refuses_bad_values() {
    for (set, says) in [
        ("webhook.failurePolicy=Sometimes", "/webhook/failurePolicy"),
        ("webhook.timeoutSeconds=31", "/webhook/timeoutSeconds"),
        ("guards.timeoutSeconds=0", "/guards/timeoutSeconds"),
        ("tls.source=vault", "/tls/source"),
        ("ports.webhook=70000", "/ports/webhook"),
        ("replica=3", "replica"),
        ("webhook.url=http://insecure", "/webhook/url"),
        ("extraArgs[0]=serve", "/extraArgs/0"),
    ] {
        let err = template("meshrev", "meshrev-system", &["--set", set])
            .expect_err(&format!("--set {set} must be refused"));
        assert!(
            err.contains("schema") && err.contains(says),
            "--set {set}: {err}"
        );
    }
}

#[test]
fn helm_lint_is_clean_for_each_tls_source() {
    for set in [
        "tls.source=secret",
        "tls.source=certManager,serviceMonitor.enabled=true,prometheusRule.enabled=true",
        "tls.source=certs,tls.cert=x,tls.key=y,tls.caBundle=Q0E=",
    ] {
        let out = Command::new(tools::tool("helm"))
            .args(["lint", "--strict"])
            .arg(chart())
            .args(["--set", set])
            .output()
            .expect("helm lint");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "helm lint --set {set}:\n{text}");
        assert!(
            !text.contains("[WARNING]") && !text.contains("[ERROR]"),
            "{text}"
        );
    }
}
