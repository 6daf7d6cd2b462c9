//! The committed manifests stay in step with the code.

#[path = "support/tls_client.rs"]
mod tls_client;

use std::collections::BTreeSet;
use std::path::Path;

use http::StatusCode;
use meshrev::server::TableSource;
use tls_client::{FIXTURE, Proto, start, test_table};

fn manifests() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests"))
}

#[test]
fn committed_crds_match_the_rust_types() {
    let committed = std::fs::read_to_string(manifests().join("crds.yaml"))
        .expect("manifests/crds.yaml must exist");
    assert!(
        committed == meshrev::config::crd_yaml(),
        "manifests/crds.yaml drifted from the Rust types: run `cargo run -- crd > manifests/crds.yaml`"
    );
}

/// The documents of every resource `dir/kustomization.yaml` lists, checked to have a kind
/// and an apiVersion.
fn kustomization_documents(dir: &Path) -> Vec<(String, serde_json::Value)> {
    let k = meshrev::yaml::from_str(
        &std::fs::read_to_string(dir.join("kustomization.yaml")).expect("read"),
    )
    .expect("kustomization must parse");
    let resources = k["resources"].as_array().expect("resources must be a list");
    assert!(!resources.is_empty());
    let mut out = Vec::new();
    for r in resources {
        let name = r.as_str().expect("resource must be a path");
        let text =
            std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        for doc in meshrev::yaml::documents(&text) {
            let v = doc.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                v["kind"].is_string() && v["apiVersion"].is_string(),
                "{name}: every document needs kind and apiVersion"
            );
            out.push((name.to_string(), v));
        }
    }
    out
}

#[test]
fn kustomization_lists_files_that_parse() {
    for (name, v) in kustomization_documents(manifests()) {
        // `kubectl apply -k manifests/` must work on a cluster without the Prometheus
        // Operator: its kinds live in manifests/monitoring/.
        let api = v["apiVersion"].as_str().unwrap_or_default();
        assert!(
            !api.starts_with("monitoring.coreos.com/"),
            "{name}: {api} needs the Prometheus Operator's CRDs; list it in manifests/monitoring/"
        );
    }
    let monitoring = kustomization_documents(&manifests().join("monitoring"));
    assert!(
        monitoring
            .iter()
            .any(|(_, v)| v["kind"] == "PrometheusRule"),
        "manifests/monitoring/ must install the PrometheusRule"
    );
}

/// Every `meshrev_…` token in `text`.
fn meshrev_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("meshrev_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // A token only when not the tail of a longer word.
        let starts_word = rest[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        if starts_word && end > "meshrev_".len() {
            out.insert(tail[..end].to_string());
        }
        rest = &tail[end.max(1)..];
    }
    out
}

/// The series names a serving meshrev exposes (histograms as `_bucket`, `_sum`, `_count`),
/// after one injected pod so the labelled families have a series, plus the controller's.
async fn exported_names() -> BTreeSet<String> {
    let s = start(TableSource::Table(test_table()), |_| {}).await;
    let r = s.client.post(Proto::H2, "/inject", FIXTURE).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let text = s.metrics_text().await;
    let mut names: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    assert!(
        names.contains("meshrev_injections_total"),
        "the fixture must have been injected:\n{text}"
    );
    names.extend(meshrev::controller::metric_names());
    assert!(names.contains("meshrev_seconds_since_last_sync"));
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_and_dashboard_use_only_exported_metrics() {
    let exported = exported_names().await;
    let monitoring = manifests().join("monitoring");

    let rules_text =
        std::fs::read_to_string(monitoring.join("prometheusrule.yaml")).expect("read rules");
    let rules = meshrev::yaml::from_str(&rules_text).expect("the rule file must parse");
    assert_eq!(rules["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rules["kind"], "PrometheusRule");
    let mut alerts = BTreeSet::new();
    let mut in_exprs = BTreeSet::new();
    for group in rules["spec"]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let alert = rule["alert"].as_str().expect("every rule is an alert");
            assert!(alerts.insert(alert.to_string()), "{alert}: duplicate");
            let expr = rule["expr"].as_str().expect("expr");
            let used = meshrev_names(expr);
            assert!(!used.is_empty(), "{alert}: uses no meshrev metric");
            in_exprs.extend(used);
            assert!(
                rule["labels"]["severity"].is_string(),
                "{alert}: labels.severity"
            );
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{alert}: annotations.summary"
            );
            if let Some(f) = rule.get("for") {
                let f = f.as_str().expect("for is a duration");
                assert!(
                    f.len() > 1
                        && f[..f.len() - 1].chars().all(|c| c.is_ascii_digit())
                        && f.ends_with(['s', 'm', 'h', 'd']),
                    "{alert}: for: {f}"
                );
            }
        }
    }
    for want in [
        "MeshrevWebhookErrors",
        "MeshrevInjectLatencyHigh",
        "MeshrevNoTableSync",
        "MeshrevTableReloadFailing",
        "MeshrevTlsReloadFailing",
        "MeshrevCertificateExpiresSoon",
        "MeshrevUpgradeUnfinished",
        "MeshrevPodsOnUnselectedRevision",
    ] {
        assert!(alerts.contains(want), "alert {want} missing");
    }
    assert!(in_exprs.contains("meshrev_tls_certificate_expiry_timestamp_seconds"));

    let dashboard_text =
        std::fs::read_to_string(monitoring.join("grafana-dashboard.json")).expect("read dashboard");
    let dashboard: serde_json::Value =
        serde_json::from_str(&dashboard_text).expect("the dashboard must be JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id"
        );
        assert!(p["title"].is_string() && p["gridPos"]["w"].is_u64());
        for t in p["targets"].as_array().expect("targets") {
            assert!(t["expr"].is_string(), "{}: target without expr", p["title"]);
        }
    }

    for (file, used) in [
        ("prometheusrule.yaml", meshrev_names(&rules_text)),
        ("grafana-dashboard.json", meshrev_names(&dashboard_text)),
    ] {
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses {unknown:?}, which meshrev does not export (it exports {exported:?})"
        );
    }
}

#[test]
fn meshrev_names_finds_tokens() {
    let got =
        meshrev_names("rate(meshrev_a_total[5m]) / x_meshrev_b + meshrev_ meshrev_c{le=\"1\"}");
    assert_eq!(
        got,
        BTreeSet::from(["meshrev_a_total".to_string(), "meshrev_c".to_string()])
    );
}
