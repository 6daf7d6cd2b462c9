//! The structural normaliser for comparing meshrev's injected objects with Istio's goldens.
//!
//! It removes only what depends on the installation or on serialization, nothing that a
//! workload would notice:
//! - **installation**: the proxy image's registry and tag (`…/proxyv2:T` → `proxyv2`), the
//!   revision name (`istio.io/rev`, the `revision` of `sidecar.istio.io/status`), the values
//!   of the env vars in [`INSTALL_ENV`], and `discoveryAddress` inside `PROXY_CONFIG`;
//! - **serialization**: env vars, volumes and volume mounts are sorted by name; `null`,
//!   `{}` and `[]` values are dropped (Go's omitempty and `creationTimestamp: null`; a volume
//!   with no source is an `emptyDir` once the API server defaults it); strings holding JSON
//!   (`ISTIO_META_POD_PORTS`, `ISTIO_KUBE_APP_PROBERS`, `sidecar.istio.io/status`, …) are
//!   compared as JSON; resource quantities are compared by value (`2000m` = `2`,
//!   `1024Mi` = `1Gi`).
#![allow(dead_code)]

use serde_json::{Map, Value};

/// Env vars whose values are the installation's, not the pod's.
pub const INSTALL_ENV: [&str; 6] = [
    "CA_ADDR",
    "PILOT_CERT_PROVIDER",
    "ISTIO_META_CLUSTER_ID",
    "ISTIO_META_MESH_ID",
    "TRUST_DOMAIN",
    "ISTIO_META_NETWORK",
];

/// Normalises a Kubernetes object (any kind) in place.
pub fn normalize(v: &mut Value) {
    zero_workload_fields(v);
    walk(v, None);
}

/// Go writes (or omits) the zero values of a workload's own typed fields as its struct tags
/// say: `status: {replicas: 0}`, `spec.test: false`, `spec.paused: false`,
/// `spec.minReadySeconds: 0`. These are dropped from the object's own `spec` and `status`
/// (and those of a List's items), except a Pod's, whose spec keeps every value, as do pod
/// templates.
fn zero_workload_fields(v: &mut Value) {
    let zero = |x: &Value| x == &Value::from(0) || x == &Value::Bool(false) || is_empty(x);
    if let Some(Value::Object(st)) = v.get("status")
        && st.values().all(zero)
        && let Some(m) = v.as_object_mut()
    {
        m.remove("status");
    }
    let is_pod = v.get("kind").and_then(Value::as_str) == Some("Pod");
    if !is_pod && let Some(Value::Object(spec)) = v.get_mut("spec") {
        spec.retain(|_, x| !(x == &Value::from(0) || x == &Value::Bool(false)));
    }
    if let Some(Value::Array(items)) = v.get_mut("items") {
        items.iter_mut().for_each(zero_workload_fields);
    }
}

fn walk(v: &mut Value, key: Option<&str>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                walk(child, Some(k.as_str()));
            }
            if matches!(key, Some("requests" | "limits")) {
                for q in m.values_mut() {
                    if let Value::String(s) = q
                        && let Some(c) = canonical_quantity(s)
                    {
                        *s = c;
                    } else if let Value::Number(n) = q {
                        *q = Value::String(canonical_quantity(&n.to_string()).unwrap_or_default());
                    }
                }
            }
            if let Some(Value::String(img)) = m.get_mut("image")
                && let Some(base) = proxy_image(img)
            {
                *img = base.to_string();
            }
            if let Some(Value::Object(ann)) = m.get_mut("annotations")
                && ann.contains_key("istio.io/rev")
            {
                ann.insert("istio.io/rev".into(), Value::String("<rev>".into()));
            }
            m.retain(|_, c| !is_empty(c));
        }
        Value::Array(a) => {
            for child in a.iter_mut() {
                walk(child, key);
            }
            match key {
                Some("env") => {
                    for e in a.iter_mut() {
                        normalize_env(e);
                    }
                    sort_by_name(a);
                }
                Some("volumes" | "volumeMounts") => sort_by_name(a),
                _ => {}
            }
        }
        Value::String(s) => {
            let t = s.trim();
            if (t.starts_with('{') || t.starts_with('['))
                && let Ok(mut parsed) = serde_json::from_str::<Value>(t)
            {
                if let Some(Value::String(r)) = parsed.get_mut("revision") {
                    *r = "<rev>".into();
                }
                walk(&mut parsed, None);
                let mut m = Map::new();
                m.insert("$json".into(), parsed);
                *v = Value::Object(m);
            }
        }
        _ => {}
    }
}

fn normalize_env(e: &mut Value) {
    let Some(name) = e.get("name").and_then(Value::as_str).map(str::to_string) else {
        return;
    };
    if INSTALL_ENV.contains(&name.as_str()) && e.get("value").is_some() {
        e["value"] = Value::String("<install>".into());
    }
    if name == "PROXY_CONFIG"
        && let Some(Value::Object(j)) = e.get_mut("value")
        && let Some(Value::Object(cfg)) = j.get_mut("$json")
    {
        cfg.remove("discoveryAddress");
    }
}

fn sort_by_name(a: &mut [Value]) {
    a.sort_by(|x, y| {
        let n = |v: &Value| {
            v.get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        n(x).cmp(&n(y))
    });
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// `registry/…/proxyv2:tag` → `proxyv2`; other images are the pod's own and stay.
fn proxy_image(img: &str) -> Option<&'static str> {
    let last = img.rsplit('/').next()?;
    let repo = last.split([':', '@']).next()?;
    (repo == "proxyv2").then_some("proxyv2")
}

/// A quantity as a number of milli-units, written in decimal: `2000m`, `2` → `2000`.
fn canonical_quantity(q: &str) -> Option<String> {
    let v = meshrev::injector::quantity_value(q.trim())?;
    Some(format!("{}", (v * 1000.0).round() as i128))
}

/// One difference between two normalised values: the JSON path and both sides.
#[derive(Debug, Clone)]
pub struct Diff {
    pub path: String,
    pub want: Option<Value>,
    pub got: Option<Value>,
}

/// Lists the differences between two normalised values. Arrays of named objects are matched
/// by name (so one extra container is one difference, not a shifted list), other arrays by
/// index.
pub fn diff(want: &Value, got: &Value) -> Vec<Diff> {
    let mut out = Vec::new();
    diff_at("", want, got, &mut out);
    out
}

fn diff_at(path: &str, want: &Value, got: &Value, out: &mut Vec<Diff>) {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, av) in a {
                let p = format!("{path}/{k}");
                match b.get(k) {
                    Some(bv) => diff_at(&p, av, bv, out),
                    None => out.push(Diff {
                        path: p,
                        want: Some(av.clone()),
                        got: None,
                    }),
                }
            }
            for (k, bv) in b {
                if !a.contains_key(k) {
                    out.push(Diff {
                        path: format!("{path}/{k}"),
                        want: None,
                        got: Some(bv.clone()),
                    });
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if named(a) && named(b) => {
            let name = |v: &Value| v["name"].as_str().unwrap_or("").to_string();
            let an: Vec<String> = a.iter().map(name).collect();
            let bn: Vec<String> = b.iter().map(name).collect();
            if an != bn {
                out.push(Diff {
                    path: format!("{path}[names]"),
                    want: Some(Value::from(an.clone())),
                    got: Some(Value::from(bn.clone())),
                });
            }
            for av in a {
                let n = name(av);
                if let Some(bv) = b.iter().find(|bv| name(bv) == n) {
                    diff_at(&format!("{path}[{n}]"), av, bv, out);
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                out.push(Diff {
                    path: path.to_string(),
                    want: Some(want.clone()),
                    got: Some(got.clone()),
                });
                return;
            }
            for (i, (av, bv)) in a.iter().zip(b).enumerate() {
                diff_at(&format!("{path}/{i}"), av, bv, out);
            }
        }
        _ if want == got => {}
        _ => out.push(Diff {
            path: path.to_string(),
            want: Some(want.clone()),
            got: Some(got.clone()),
        }),
    }
}

/// Every element has a name, and the names are unique.
fn named(a: &[Value]) -> bool {
    let names: std::collections::BTreeSet<&str> = a
        .iter()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .collect();
    !a.is_empty() && names.len() == a.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_compare_by_value() {
        assert_eq!(canonical_quantity("2000m"), canonical_quantity("2"));
        assert_eq!(canonical_quantity("1024Mi"), canonical_quantity("1Gi"));
        assert_ne!(canonical_quantity("100m"), canonical_quantity("1"));
    }

    #[test]
    fn only_installation_and_serialization_are_ignored() {
        let mut a = json!({"image": "docker.io/istio/proxyv2:1.2.3", "env": [
            {"name": "CA_ADDR", "value": "x"}, {"name": "A", "value": "1"}]});
        let mut b = json!({"image": "gcr.io/x/proxyv2:9", "env": [
            {"name": "A", "value": "1"}, {"name": "CA_ADDR", "value": "y"}]});
        normalize(&mut a);
        normalize(&mut b);
        assert!(diff(&a, &b).is_empty());
        let mut c = json!({"image": "gcr.io/x/proxyv2:9", "env": [
            {"name": "A", "value": "2"}, {"name": "CA_ADDR", "value": "y"}]});
        normalize(&mut c);
        assert_eq!(diff(&a, &c).len(), 1);
    }
}
