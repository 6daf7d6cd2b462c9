//! Route + patch cost on the webhook's hot path, per request.
//!
//! - `review/typical`: a whole `/inject` review of a ~5 KB pod CREATE (2 containers, managed
//!   fields): parse, route, patch, base64, reply.
//! - `review/env2000`: the same pod with 2000 env vars (Istio's worst case, istio#34799).
//! - `review/probes`: the same pod with httpGet readiness/liveness probes on both containers
//!   and `prometheus.io/*` annotations: probe rewrite and Prometheus merge on the hot path.
//! - `json_floor/*`: the least any review of the same body must do: check it is UTF-8 and
//!   valid JSON (serde_json skipping every value), reading nothing. `review` over
//!   `json_floor` is what routing, patching and the reply add to the parse a webhook cannot
//!   avoid.
//! - `istio_style_diff/*`: the design meshrev avoids, for a ratio measured in the same run:
//!   parse the pod into a `serde_json::Value`, mutate it, and diff the whole pod into a patch.
use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};

use meshrev::admission;
use meshrev::table::{NamespaceLabels, Table, embedded_default};

fn table() -> Table {
    embedded_default().with_namespaces(HashMap::from([(
        "default".to_string(),
        NamespaceLabels {
            injection: None,
            rev: Some("canary".into()),
        },
    )]))
}

fn reviews() -> Vec<(&'static str, Vec<u8>)> {
    let typical: Value =
        serde_json::from_str(include_str!("../tests/fixtures/admission-review.json"))
            .expect("fixture must parse");
    let mut big = typical.clone();
    let env: Vec<Value> = (0..2000)
        .map(|i| json!({"name": format!("VARIABLE_NUMBER_{i}"), "value": format!("value-{i}-abcdefghijklmnopqrstuvwxyz")}))
        .collect();
    big["request"]["object"]["spec"]["containers"][0]["env"] = Value::Array(env);
    let mut probes = typical.clone();
    let pod = &mut probes["request"]["object"];
    pod["metadata"]["annotations"]["prometheus.io/scrape"] = json!("true");
    pod["metadata"]["annotations"]["prometheus.io/port"] = json!("9080");
    pod["metadata"]["annotations"]["prometheus.io/path"] = json!("/metrics");
    if let Some(cs) = pod["spec"]["containers"].as_array_mut() {
        for c in cs {
            c["readinessProbe"] =
                json!({"httpGet": {"path": "/ready", "port": 9080}, "periodSeconds": 5});
            c["livenessProbe"] =
                json!({"httpGet": {"path": "/live", "port": 9080}, "timeoutSeconds": 2});
        }
    }
    vec![
        ("typical", serde_json::to_vec(&typical).expect("serialize")),
        ("env2000", serde_json::to_vec(&big).expect("serialize")),
        ("probes", serde_json::to_vec(&probes).expect("serialize")),
    ]
}

/// Istio's approach: mutate a whole `Value` and diff it against the original.
fn istio_style(table: &Table, body: &[u8]) -> Vec<u8> {
    let review: Value = serde_json::from_slice(body).expect("valid review");
    let original = review["request"]["object"].clone();
    // Use meshrev's own patch to produce the mutated pod, then pay for the diff as Istio does.
    let mut scratch = Vec::new();
    let text = original.to_string();
    let pod: meshrev::injector::pod::Pod = serde_json::from_str(&text).expect("pod");
    let _ = meshrev::router::inject(table, "default", &pod, &mut scratch, || None);
    let ops: json_patch::Patch = serde_json::from_slice(&scratch).expect("patch");
    let mut mutated = original.clone();
    json_patch::patch(&mut mutated, &ops).expect("apply");
    let diff = json_patch::diff(&original, &mutated);
    serde_json::to_vec(&diff).expect("serialize")
}

fn bench(c: &mut Criterion) {
    let table = table();
    let mut g = c.benchmark_group("review");
    for (name, body) in reviews() {
        g.throughput(Throughput::Bytes(body.len() as u64));
        let mut scratch = Vec::with_capacity(16 * 1024);
        g.bench_function(name, |b| {
            b.iter(|| {
                let r = admission::review(&table, black_box(&body), &mut scratch);
                assert_eq!(r.result, admission::ReviewResult::Injected);
                black_box(r.body.len())
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("json_floor");
    for (name, body) in reviews() {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let text = simdutf8::basic::from_utf8(black_box(&body)).expect("UTF-8");
                serde_json::from_str::<serde::de::IgnoredAny>(text).expect("JSON")
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("istio_style_diff");
    for (name, body) in reviews() {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| black_box(istio_style(&table, black_box(&body)).len()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
