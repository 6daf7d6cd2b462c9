//! `promtool test rules` over the alerts of manifests/monitoring/prometheusrule.yaml, with the
//! synthetic series of tests/alerts/rules.test.yaml. The PrometheusRule stays the one source
//! of the rules: its `spec.groups` are written to a temporary rule file for promtool (which
//! reads plain rule groups, not the Prometheus Operator's object). promtool is built from the
//! Prometheus Go module by tests/promtool/build.sh (target/tools/promtool).

#[path = "support/tools.rs"]
mod tools;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_file(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    meshrev::yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The rule groups of the PrometheusRule, as promtool's rule file (JSON is YAML).
fn rule_groups() -> Value {
    let rule = yaml_file("manifests/monitoring/prometheusrule.yaml");
    assert_eq!(rule["kind"], "PrometheusRule");
    serde_json::json!({"groups": rule["spec"]["groups"].clone()})
}

fn alerts_of(groups: &Value) -> BTreeSet<String> {
    groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect()
}

/// promtool `args` in a directory holding rules.json and the test file; Ok(output) when it
/// exits 0, Err(output) otherwise.
fn promtool(args: &[&str]) -> Result<String, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("rules.json"),
        serde_json::to_string_pretty(&rule_groups()).expect("JSON"),
    )
    .expect("write rules.json");
    std::fs::copy(
        root().join("tests/alerts/rules.test.yaml"),
        dir.path().join("rules.test.yaml"),
    )
    .expect("copy the test file");
    let out = Command::new(tools::tool("promtool"))
        .args(args)
        .current_dir(dir.path())
        .output()
        .expect("promtool must start");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[test]
fn promtool_checks_the_rules() {
    let out = promtool(&["check", "rules", "rules.json"])
        .unwrap_or_else(|e| panic!("promtool check rules:\n{e}"));
    println!("{out}");
    let n = alerts_of(&rule_groups()).len();
    assert!(out.contains(&format!("SUCCESS: {n} rules found")), "{out}");
}

#[test]
fn promtool_test_rules_passes() {
    let out = promtool(&["test", "rules", "rules.test.yaml"])
        .unwrap_or_else(|e| panic!("promtool test rules tests/alerts/rules.test.yaml:\n{e}"));
    println!("{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Each alert has a case where it fires and one where it must stay quiet, so a rule that
/// never fires, or always does, fails `promtool test rules`.
#[test]
fn every_alert_fires_and_stays_quiet_somewhere() {
    let alerts = alerts_of(&rule_groups());
    let tests = yaml_file("tests/alerts/rules.test.yaml");
    let mut fires: BTreeMap<String, usize> = BTreeMap::new();
    let mut quiet: BTreeMap<String, usize> = BTreeMap::new();
    for t in tests["tests"].as_array().expect("tests") {
        for case in t["alert_rule_test"].as_array().into_iter().flatten() {
            let name = case["alertname"].as_str().expect("alertname").to_string();
            assert!(alerts.contains(&name), "tests name an unknown alert {name}");
            let expected = case["exp_alerts"].as_array().map_or(0, Vec::len);
            let counter = if expected > 0 { &mut fires } else { &mut quiet };
            *counter.entry(name).or_default() += 1;
        }
    }
    for a in &alerts {
        assert!(fires.contains_key(a), "{a}: no case where it fires");
        assert!(quiet.contains_key(a), "{a}: no case where it stays quiet");
    }
}
