//! Istio conformance: every *plain* case of Istio's own injection corpus (nine releases,
//! 1.22.6 … 1.30.3, copied into `tests/conformance/istio/`, see its README) goes through the
//! code path of `meshrev inject`, with a revision of that release's version, and must give
//! Istio's expected output under the structural normaliser of `support/normalize.rs`.
//!
//! A case that still differs must be listed, with its reason, in
//! `tests/conformance/known-differences.tsv`; the test fails on a new difference and on a
//! listed case that now passes (so the list only shrinks). It prints the per-tag table.
#[path = "support/normalize.rs"]
mod normalize;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

use meshrev::table::Table;

const TAGS: [&str; 9] = [
    "1.22.6", "1.23.6", "1.24.6", "1.25.5", "1.26.8", "1.27.9", "1.28.10", "1.29.6", "1.30.3",
];

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/istio")
}

/// A table with one revision of Istio `version`, named as in Istio's tests, behind `stable`.
fn table_for(version: &str, revision: &str) -> Table {
    table_with(version, revision, "")
}

/// The same, with more `MeshRevision.spec` fields (`key: value`, one line).
fn table_with(version: &str, revision: &str, spec: &str) -> Table {
    let extra = if spec.is_empty() {
        String::new()
    } else {
        format!(", {spec}")
    };
    let text = format!(
        "apiVersion: meshrev.io/v1alpha1\nkind: MeshRevision\nmetadata: {{name: {revision}}}\n\
         spec: {{version: \"{version}\"{extra}}}\n---\n\
         apiVersion: meshrev.io/v1alpha1\nkind: RevisionTag\nmetadata: {{name: stable}}\n\
         spec: {{revision: {revision}}}\n"
    );
    meshrev::table::from_text(&text).expect("the conformance table must build")
}

struct Case {
    input: String,
    want: Option<String>,
    expected_error: Option<String>,
}

fn cases(tag: &str) -> Vec<Case> {
    let text = std::fs::read_to_string(corpus().join(tag).join("cases.tsv"))
        .expect("cases.tsv must exist for every tag");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let opt = |s: &str| (s != "-").then(|| s.to_string());
            Case {
                input: f[0].to_string(),
                want: opt(f[1]),
                expected_error: opt(f[2]),
            }
        })
        .collect()
}

fn yaml_docs(text: &str) -> Vec<Value> {
    meshrev::yaml::documents(text)
        .map(|d| d.expect("corpus YAML must parse"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn inject(table: &Table, input: &str) -> anyhow::Result<String> {
    let labels = HashMap::from([("istio-injection".to_string(), "enabled".to_string())]);
    meshrev::cli::inject::inject_documents(table, input, None, Some(&labels)).map(|(out, _)| out)
}

/// The feature behind a difference, for the table.
fn feature(d: &normalize::Diff) -> String {
    let p = d.path.as_str();
    let text = format!("{p} {:?} {:?}", d.want, d.got);
    let has = |s: &str| text.contains(s);
    if has("GOMEMLIMIT") || has("GOMAXPROCS") {
        "Go runtime env".into()
    } else if has("ISTIO_META_REVISION") {
        "extra env ISTIO_META_REVISION".into()
    } else if has("prometheus.io") || has("ISTIO_PROMETHEUS_ANNOTATIONS") {
        "Prometheus merge".into()
    } else if has("ISTIO_KUBE_APP_PROBERS") || has("app-health") {
        "probe rewrite".into()
    } else if p.contains("[istio-proxy]/startupProbe") {
        "proxy startupProbe".into()
    } else if has("istio-ca-crl") {
        "CRL volume".into()
    } else if p.ends_with("initContainers[names]") || p.ends_with("containers[names]") {
        "container set/order (native sidecar, templates, merge)".into()
    } else if p.contains("[istio-init]/resources") {
        "istio-init resources".into()
    } else if p.contains("[istio-proxy]/restartPolicy") || p.contains("preStop") {
        "native sidecar".into()
    } else if has("canonical-name") {
        "canonical-name".into()
    } else {
        let short: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
        let n = short.len().min(6);
        short[short.len() - n..].join("/")
    }
}

enum Outcome {
    Equivalent,
    Differs(Vec<String>),
}

fn run_case(tag: &str, table: &Table, c: &Case) -> Outcome {
    let dir = corpus().join(tag);
    let input = std::fs::read_to_string(dir.join(&c.input)).expect("input must exist");
    let got = inject(table, &input);
    if c.expected_error.is_some() {
        return match got {
            Err(_) => Outcome::Equivalent,
            Ok(_) => Outcome::Differs(vec!["refusal: Istio refuses, meshrev injected".into()]),
        };
    }
    let got = match got {
        Ok(g) => g,
        Err(e) => return Outcome::Differs(vec![format!("refusal: meshrev refused: {e:#}")]),
    };
    let want_text = std::fs::read_to_string(dir.join(c.want.as_deref().expect("want")))
        .expect("golden must exist");
    let mut want = yaml_docs(&want_text);
    let mut got = yaml_docs(&got);
    if want.len() != got.len() {
        return Outcome::Differs(vec![format!(
            "document count: Istio {} meshrev {}",
            want.len(),
            got.len()
        )]);
    }
    let mut features = BTreeSet::new();
    for (w, g) in want.iter_mut().zip(got.iter_mut()) {
        normalize::normalize(w);
        normalize::normalize(g);
        for d in normalize::diff(w, g) {
            if std::env::var_os("CONFORMANCE_VERBOSE").is_some() {
                eprintln!(
                    "  {tag} {}: {}\n    want {}\n    got  {}",
                    c.input,
                    d.path,
                    d.want.as_ref().map(Value::to_string).unwrap_or("-".into()),
                    d.got.as_ref().map(Value::to_string).unwrap_or("-".into())
                );
            }
            features.insert(feature(&d));
        }
    }
    if features.is_empty() {
        Outcome::Equivalent
    } else {
        Outcome::Differs(features.into_iter().collect())
    }
}

/// `tag \t want-or-input \t reason`.
fn known_differences() -> BTreeMap<(String, String), String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/known-differences.tsv");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut f = l.splitn(3, '\t');
            let tag = f.next().unwrap_or("").to_string();
            let case = f.next().unwrap_or("").to_string();
            let why = f.next().unwrap_or("").to_string();
            ((tag, case), why)
        })
        .collect()
}

fn case_id(c: &Case) -> String {
    c.want.clone().unwrap_or_else(|| c.input.clone())
}

#[test]
fn istio_plain_cases_at_every_tag() {
    let known = known_differences();
    let only = std::env::var("CONFORMANCE_TAG").ok();
    let mut report = String::from(
        "\n| tag | cases | equivalent | differences by feature |\n|---|---|---|---|\n",
    );
    let mut new_diffs = Vec::new();
    let mut now_passing = Vec::new();
    let mut all_failing = Vec::new();
    let (mut total, mut total_ok) = (0, 0);
    for tag in TAGS {
        if only.as_deref().is_some_and(|o| o != tag) {
            continue;
        }
        let table = table_for(tag, "default");
        let cs = cases(tag);
        let mut ok = 0;
        let mut by_feature: BTreeMap<String, usize> = BTreeMap::new();
        for c in &cs {
            let id = case_id(c);
            let listed = known.contains_key(&(tag.to_string(), id.clone()));
            match run_case(tag, &table, c) {
                Outcome::Equivalent => {
                    ok += 1;
                    if listed {
                        now_passing.push(format!("{tag}\t{id}"));
                    }
                }
                Outcome::Differs(fs) => {
                    for f in &fs {
                        *by_feature.entry(f.clone()).or_default() += 1;
                    }
                    all_failing.push(format!("{tag}\t{id}\t{}", fs.join("; ")));
                    if !listed {
                        new_diffs.push(format!("{tag}\t{id}\t{}", fs.join("; ")));
                    }
                }
            }
        }
        total += cs.len();
        total_ok += ok;
        let feats: Vec<String> = by_feature
            .iter()
            .map(|(f, n)| format!("{f} ({n})"))
            .collect();
        report.push_str(&format!(
            "| {tag} | {} | {ok} | {} |\n",
            cs.len(),
            feats.join(", ")
        ));
    }
    report.push_str(&format!("| all | {total} | {total_ok} | |\n"));
    eprintln!("{report}");
    if let Ok(path) = std::env::var("CONFORMANCE_WRITE_KNOWN") {
        std::fs::write(path, all_failing.join("\n") + "\n").expect("write known differences");
    }
    assert!(
        new_diffs.is_empty() && now_passing.is_empty(),
        "conformance changed.\nNew differences (fix them, or list them with a reason in \
         tests/conformance/known-differences.tsv):\n{}\nListed as known but now equivalent \
         (remove them from the list):\n{}",
        new_diffs.join("\n"),
        now_passing.join("\n")
    );
}

/// The pod templates (or pods) of an object, for checks over every workload kind.
fn pod_specs(doc: &Value) -> Vec<&Value> {
    let kind = doc["kind"].as_str().unwrap_or("");
    match kind {
        "Pod" => vec![doc],
        "CronJob" => vec![&doc["spec"]["jobTemplate"]["spec"]["template"]],
        "List" => doc["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(pod_specs)
            .collect(),
        _ if doc["spec"]["template"].is_object() => vec![&doc["spec"]["template"]],
        _ => vec![],
    }
}

/// Each of Istio's expected outputs, re-injected for another revision (as after a
/// promotion), must give one `istio-proxy` and probes that the proxy can still run: every
/// probe or hook pointing at the agent has its original in `ISTIO_KUBE_APP_PROBERS`.
#[test]
fn istio_goldens_reinjected_for_another_revision_stay_consistent() {
    let mut checked = 0;
    let mut problems = Vec::new();
    for tag in TAGS {
        let table = table_for(tag, "other");
        for c in cases(tag) {
            let Some(want) = &c.want else { continue };
            let golden = std::fs::read_to_string(corpus().join(tag).join(want)).expect("golden");
            if !golden.contains("istio-proxy") {
                continue;
            }
            let out = match inject(&table, &golden) {
                Ok(o) => o,
                Err(e) => {
                    problems.push(format!("{tag} {want}: refused: {e:#}"));
                    continue;
                }
            };
            for doc in yaml_docs(&out) {
                for pod in pod_specs(&doc) {
                    checked += 1;
                    if let Err(e) = consistent(pod) {
                        problems.push(format!("{tag} {want}: {e}"));
                    }
                }
            }
        }
    }
    eprintln!("re-injected {checked} pod templates of Istio's goldens");
    assert!(checked > 400, "too few pods checked: {checked}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn consistent(pod: &Value) -> Result<(), String> {
    let spec = &pod["spec"];
    let all: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| spec[*l].as_array().into_iter().flatten())
        .collect();
    let proxies: Vec<&&Value> = all.iter().filter(|c| c["name"] == "istio-proxy").collect();
    if proxies.len() != 1 {
        return Err(format!("{} istio-proxy containers", proxies.len()));
    }
    let probers: BTreeMap<String, Value> = proxies[0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "ISTIO_KUBE_APP_PROBERS")
        .and_then(|e| e["value"].as_str())
        .map(|v| serde_json::from_str(v).expect("probers must be JSON"))
        .unwrap_or_default();
    for c in all.iter().filter(|c| c["name"] != "istio-proxy") {
        let mut paths = Vec::new();
        for p in ["readinessProbe", "livenessProbe", "startupProbe"] {
            paths.push(c[p]["httpGet"]["path"].as_str());
        }
        for h in ["preStop", "postStart"] {
            paths.push(c["lifecycle"][h]["httpGet"]["path"].as_str());
        }
        for path in paths.into_iter().flatten() {
            let agent = path.starts_with("/app-health/") || path.starts_with("/app-lifecycle/");
            if agent && !probers.contains_key(path) {
                return Err(format!(
                    "container {}: probe {path} points at the agent but ISTIO_KUBE_APP_PROBERS lacks it",
                    c["name"]
                ));
            }
        }
    }
    Ok(())
}

/// A sample through the webhook's own entry point: every single-Deployment plain case, sent as
/// the Pod CREATE review the API server would send for one of its pods (owned by a
/// ReplicaSet, with its pod-template-hash), must give the golden's pod template.
#[test]
fn istio_cases_through_inject_reviews() {
    let mut checked = 0;
    let mut failing = Vec::new();
    let known = known_differences();
    for tag in TAGS {
        let labels = meshrev::table::NamespaceLabels {
            injection: Some("enabled".into()),
            rev: None,
        };
        let base = table_for(tag, "default");
        for c in cases(tag) {
            let Some(want) = &c.want else { continue };
            if known.contains_key(&(tag.to_string(), want.clone())) {
                continue;
            }
            let dir = corpus().join(tag);
            let input = yaml_docs(&std::fs::read_to_string(dir.join(&c.input)).expect("input"));
            let golden = yaml_docs(&std::fs::read_to_string(dir.join(want)).expect("golden"));
            if input.len() != 1 || input[0]["kind"] != "Deployment" {
                continue;
            }
            let dep = &input[0];
            let name = dep["metadata"]["name"].as_str().unwrap_or("x");
            let ns = dep["metadata"]["namespace"].as_str().unwrap_or("default");
            let table = base.with_namespaces(HashMap::from([(ns.to_string(), labels.clone())]));
            let hash = "5d8c7b9f4";
            let mut pod = serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": dep["spec"]["template"]["metadata"].clone(),
                "spec": dep["spec"]["template"]["spec"].clone(),
            });
            pod["metadata"]["generateName"] = format!("{name}-{hash}-").into();
            pod["metadata"]["labels"]["pod-template-hash"] = hash.into();
            pod["metadata"]["ownerReferences"] = serde_json::json!([{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-{hash}"),
                "uid": "u", "controller": true}]);
            let review = serde_json::json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "r1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": ns, "operation": "CREATE", "object": pod}});
            let body = serde_json::to_vec(&review).expect("review");
            let mut scratch = Vec::new();
            let reply = meshrev::admission::review(&table, &body, &mut scratch);
            let reply: Value = serde_json::from_slice(&reply.body).expect("reply is JSON");
            assert_eq!(reply["response"]["uid"], "r1");
            let mut got = review["request"]["object"].clone();
            if let Some(p) = reply["response"]["patch"].as_str() {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(p)
                    .expect("patch is base64");
                let ops: json_patch::Patch = serde_json::from_slice(&bytes).expect("JSON Patch");
                json_patch::patch(&mut got, &ops).expect("the patch must apply");
            }
            let m = got["metadata"].as_object_mut().expect("metadata");
            m.remove("ownerReferences");
            m.remove("generateName");
            if let Some(l) = m.get_mut("labels").and_then(Value::as_object_mut) {
                l.remove("pod-template-hash");
            }
            let mut got = serde_json::json!({"metadata": got["metadata"], "spec": got["spec"]});
            let mut want_pod = golden[0]["spec"]["template"].clone();
            normalize::normalize(&mut got);
            normalize::normalize(&mut want_pod);
            let diffs = normalize::diff(&want_pod, &got);
            checked += 1;
            if !diffs.is_empty() {
                failing.push(format!(
                    "{tag} {want}: {:?}",
                    diffs.iter().map(|d| &d.path).collect::<Vec<_>>()
                ));
            }
        }
    }
    eprintln!(
        "{checked} cases through /inject reviews, {} differ",
        failing.len()
    );
    assert!(checked > 300, "too few cases: {checked}");
    assert!(failing.is_empty(), "{}", failing.join("\n"));
}

/// Corpus cases whose only special setting is an installation value that `MeshRevision.spec`
/// models (`values.tsv`): with that field set, meshrev must give Istio's output.
#[test]
fn istio_values_cases_via_meshrevision_spec() {
    let mut failing = Vec::new();
    let mut n = 0;
    let known = known_differences();
    for tag in TAGS {
        let text =
            std::fs::read_to_string(corpus().join(tag).join("values.tsv")).expect("values.tsv");
        for l in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let f: Vec<&str> = l.split('\t').collect();
            let table = table_with(tag, "default", f[2]);
            let c = Case {
                input: f[0].to_string(),
                want: Some(f[1].to_string()),
                expected_error: None,
            };
            n += 1;
            let listed = known.contains_key(&(tag.to_string(), f[1].to_string()));
            match run_case(tag, &table, &c) {
                Outcome::Differs(d) if !listed => {
                    failing.push(format!("{tag} {} ({}): {}", f[1], f[2], d.join("; ")))
                }
                Outcome::Equivalent if listed => failing.push(format!(
                    "{tag} {}: listed as known but now equivalent",
                    f[1]
                )),
                _ => {}
            }
        }
    }
    eprintln!("{n} values cases, {} differ", failing.len());
    assert!(n >= 50, "too few values cases: {n}");
    assert!(failing.is_empty(), "{}", failing.join("\n"));
}
