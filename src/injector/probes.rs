//! App probe rewrite, as Istio's `app_probe.go` does it.
//!
//! With mTLS the kubelet cannot reach the app's own probe ports, so every httpGet, tcpSocket
//! and grpc probe (and, from 1.25, `postStart`/`preStop` httpGet and tcpSocket hooks) of the
//! app's containers is pointed at the agent: `GET :<status port>/app-health/<container>/<kind>`.
//! The originals go, keyed by that path, into the proxy's `ISTIO_KUBE_APP_PROBERS`, which the
//! agent uses to run them.
//!
//! Only pods that have such probes pay for this, and they pay little: the pod view keeps
//! probes as raw JSON slices of the request, and a probe is read here as a borrowed,
//! one-level [`Obj`] whose values stay raw. The rewritten probe is written back by splicing
//! those raw values; nothing is parsed into a `serde_json::Value`. Objects are written with
//! their keys in sorted order and a repeated key's last value wins, as a `Value` would.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::PROXY_CONTAINER;
use super::pod::{Container, Spec, Str};

/// What the rewrite produces: `replace` operations (path, JSON value) and the probers.
#[derive(Debug, Default)]
pub(crate) struct Rewrite {
    pub(crate) replaces: Vec<(String, String)>,
    /// `ISTIO_KUBE_APP_PROBERS` entries, keyed by `/app-health/<container>/<kind>`: each
    /// value is one prober as JSON text.
    pub(crate) probers: BTreeMap<String, String>,
}

impl Rewrite {
    /// The `ISTIO_KUBE_APP_PROBERS` value: the probers as one JSON object.
    pub(crate) fn probers_json(&self) -> String {
        let mut out = String::with_capacity(
            self.probers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum(),
        );
        out.push('{');
        for (i, (k, v)) in self.probers.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_str(&mut out, k);
            out.push(':');
            out.push_str(v);
        }
        out.push('}');
        out
    }
}

/// One JSON object, one level deep: keys in sorted order (a repeated key keeps its last
/// value), values as the raw JSON text they were in the request.
#[derive(Debug, Default)]
struct Obj<'a>(Vec<(Str<'a>, &'a RawValue)>);

impl<'a> Obj<'a> {
    /// `None` when `raw` is not a JSON object.
    fn parse(raw: &'a RawValue) -> Option<Self> {
        serde_json::from_str::<Obj<'a>>(raw.get()).ok()
    }
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.0[i].1)
    }
    fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Obj<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Obj<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut v: Vec<(Str<'de>, &'de RawValue)> = Vec::with_capacity(8);
                while let Some(entry) = m.next_entry::<Str<'de>, &'de RawValue>()? {
                    v.push(entry);
                }
                // Reversed, then a stable sort: among equal keys the last one read comes
                // first, and `dedup_by` keeps the first.
                v.reverse();
                v.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
                v.dedup_by(|later, earlier| later.0 == earlier.0);
                Ok(Obj(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// `parts` joined, in one allocation (cheaper than `format!` on the hot path).
fn concat(parts: &[&str]) -> String {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        s.push_str(p);
    }
    s
}

fn push_json_str(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).expect("a string must serialize"));
    }
}

/// Writes `obj` with `set` (sorted by key) put in, replacing or adding, and `drop` taken
/// out: keys in sorted order.
fn write_with(out: &mut String, obj: &Obj<'_>, set: &[(&str, &str)], drop: &str) {
    debug_assert!(set.is_sorted_by(|a, b| a.0 < b.0), "set must be sorted");
    let mut first = true;
    let mut entry = |out: &mut String, k: &str, v: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        push_json_str(out, k);
        out.push(':');
        out.push_str(v);
    };
    out.push('{');
    let mut s = 0;
    for (k, v) in &obj.0 {
        let k = k.as_str();
        while s < set.len() && set[s].0 < k {
            entry(out, set[s].0, set[s].1);
            s += 1;
        }
        if s < set.len() && set[s].0 == k {
            entry(out, set[s].0, set[s].1);
            s += 1;
        } else if k != drop {
            entry(out, k, v.get());
        }
    }
    for (k, v) in &set[s..] {
        entry(out, k, v);
    }
    out.push('}');
}

/// Rewrites the probes of every app container of `spec`. `status_port` is where the rewritten
/// probes point (the pod's `status.sidecar.istio.io/port`); probes already pointing at the
/// mesh's default status port are not listed as probers again (re-injection).
pub(crate) fn rewrite(spec: &Spec<'_>, status_port: i64, lifecycle: bool) -> Rewrite {
    let mut out = Rewrite::default();
    let lists: [(&str, &[Container<'_>]); 2] = [
        (
            "/spec/initContainers/",
            spec.init_containers.as_deref().unwrap_or(&[]),
        ),
        ("/spec/containers/", &spec.containers),
    ];
    for (prefix, list) in lists {
        for (i, c) in list.iter().enumerate() {
            if c.name.as_str() == PROXY_CONTAINER {
                continue;
            }
            if c.readiness_probe.is_none()
                && c.liveness_probe.is_none()
                && c.startup_probe.is_none()
                && (!lifecycle || c.lifecycle.is_none())
            {
                continue;
            }
            rewrite_container(&mut out, &format!("{prefix}{i}"), c, status_port, lifecycle);
        }
    }
    out
}

fn rewrite_container(
    out: &mut Rewrite,
    path: &str,
    c: &Container<'_>,
    status_port: i64,
    lifecycle: bool,
) {
    let name = c.name.as_str();
    let probes = [
        (c.readiness_probe, "readinessProbe", "readyz"),
        (c.liveness_probe, "livenessProbe", "livez"),
        (c.startup_probe, "startupProbe", "startupz"),
    ];
    let mut ports: Option<BTreeMap<String, i64>> = None;
    let mut port_of = |named: &str| -> Option<i64> {
        ports
            .get_or_insert_with(|| named_ports(c))
            .get(named)
            .copied()
    };
    let port = status_port.to_string();
    for (raw, field, kind) in probes {
        let Some(probe) = raw.and_then(Obj::parse) else {
            continue;
        };
        let handler = Handler::of(&probe);
        let url = concat(&["/app-health/", name, "/", kind]);
        if let Some(p) = prober(&probe, &handler, true, &mut port_of) {
            out.probers.insert(url.clone(), p);
        }
        let mut json = String::with_capacity(raw.map_or(0, |r| r.get().len()) + url.len() + 16);
        if convert(&mut json, &probe, &handler, &url, &port) {
            out.replaces.push((concat(&[path, "/", field]), json));
        }
    }
    if !lifecycle {
        return;
    }
    let Some(hooks) = c.lifecycle.and_then(Obj::parse) else {
        return;
    };
    let mut changed: Vec<(&str, String)> = Vec::new();
    for (hook, kind) in [("postStart", "poststartz"), ("preStop", "prestopz")] {
        let Some(h) = hooks.get(hook).and_then(Obj::parse) else {
            continue;
        };
        if h.contains("exec") || h.contains("sleep") {
            continue;
        }
        let handler = Handler::of(&h);
        let url = concat(&["/app-lifecycle/", name, "/", kind]);
        if let Some(p) = prober(&h, &handler, false, &mut port_of) {
            out.probers.insert(url.clone(), p);
        }
        if h.contains("httpGet") || h.contains("tcpSocket") {
            let mut json = String::new();
            if convert(&mut json, &h, &handler, &url, &port) {
                changed.push((hook, json));
            }
        }
    }
    if !changed.is_empty() {
        // `changed` is in key order: postStart < preStop.
        let set: Vec<(&str, &str)> = changed.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut json = String::new();
        write_with(&mut json, &hooks, &set, "");
        out.replaces.push((concat(&[path, "/lifecycle"]), json));
    }
}

/// A probe's or hook's handler, each level read once for both the prober and the rewrite.
struct Handler<'a> {
    /// `httpGet`, `tcpSocket` or `grpc`, whichever the prober runs (grpc first).
    key: Option<&'static str>,
    raw: Option<&'a RawValue>,
    /// The handler as an object, when it is one.
    action: Option<Obj<'a>>,
    /// `httpGet` as an object when it is not the handler above (the rewrite keeps its
    /// other fields).
    other_http_get: Option<Obj<'a>>,
}

impl<'a> Handler<'a> {
    fn of(probe: &Obj<'a>) -> Self {
        let key = ["grpc", "httpGet", "tcpSocket"]
            .into_iter()
            .find(|k| probe.contains(k));
        let raw = key.and_then(|k| probe.get(k));
        let action = raw.and_then(Obj::parse);
        let other_http_get = if key == Some("httpGet") {
            None
        } else {
            probe.get("httpGet").and_then(Obj::parse)
        };
        Handler {
            key,
            raw,
            action,
            other_http_get,
        }
    }

    /// `httpGet`, when it is an object.
    fn http_get(&self) -> Option<&Obj<'a>> {
        if self.key == Some("httpGet") {
            self.action.as_ref()
        } else {
            self.other_http_get.as_ref()
        }
    }
}

fn named_ports(c: &Container<'_>) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    let Some(raw) = c.ports else { return m };
    let Ok(ports) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) else {
        return m;
    };
    for p in ports {
        let Some(p) = Obj::parse(p) else { continue };
        if let (Some(n), Some(port)) = (
            p.get("name").and_then(as_str),
            p.get("containerPort").and_then(as_i64),
        ) && !n.as_str().is_empty()
        {
            m.insert(n.as_str().to_string(), port);
        }
    }
    m
}

/// The string a raw JSON value holds, if it is one.
fn as_str<'a>(raw: &'a RawValue) -> Option<Str<'a>> {
    if raw.get().starts_with('"') {
        serde_json::from_str::<Str<'a>>(raw.get()).ok()
    } else {
        None
    }
}

/// The integer a raw JSON value holds, as `Value::as_i64` reads it (no floats).
fn as_i64(raw: &RawValue) -> Option<i64> {
    serde_json::from_str::<i64>(raw.get()).ok()
}

/// The prober the agent runs for a probe or hook, or `None` when there is nothing to run
/// (no handler, a named port the container does not have, or a probe that already points
/// at the agent).
fn prober(
    probe: &Obj<'_>,
    handler: &Handler<'_>,
    with_timeout: bool,
    port_of: &mut impl FnMut(&str) -> Option<i64>,
) -> Option<String> {
    let (key, raw) = (handler.key?, handler.raw?);
    let mut p = String::with_capacity(raw.get().len() + 32);
    p.push_str("{\"");
    p.push_str(key);
    p.push_str("\":");
    match &handler.action {
        Some(action) if key != "grpc" => match action.get("port") {
            Some(port) if port.get().starts_with('"') => {
                let named = as_str(port)?;
                let number = port_of(named.as_str())?.to_string();
                write_with(&mut p, action, &[("port", &number)], "");
            }
            Some(port) if as_i64(port) == Some(i64::from(super::STATUS_PORT)) => {
                return None;
            }
            _ => write_with(&mut p, action, &[], ""),
        },
        // grpc, or a handler that is not an object: carried as it is.
        _ => p.push_str(raw.get()),
    }
    if with_timeout
        && let Some(t) = probe.get("timeoutSeconds")
        && as_i64(t).is_some_and(|t| t != 0)
    {
        p.push_str(",\"timeoutSeconds\":");
        p.push_str(t.get());
    }
    p.push('}');
    Some(p)
}

/// Writes into `out` the probe or hook pointed at the agent. Returns whether it changed
/// (`out` is meaningful only then).
fn convert(
    out: &mut String,
    probe: &Obj<'_>,
    handler: &Handler<'_>,
    url: &str,
    port: &str,
) -> bool {
    let mut path = String::with_capacity(url.len() + 2);
    push_json_str(&mut path, url);
    if let Some(g) = handler.http_get() {
        let https = g
            .get("scheme")
            .and_then(as_str)
            .is_some_and(|s| s.as_str() == "HTTPS");
        let set: &[(&str, &str)] = if https {
            &[("path", &path), ("port", port), ("scheme", "\"HTTP\"")]
        } else {
            &[("path", &path), ("port", port)]
        };
        let mut get = String::with_capacity(g.0.len() * 24 + url.len());
        write_with(&mut get, g, set, "");
        write_with(out, probe, &[("httpGet", &get)], "");
        return true;
    }
    for key in ["tcpSocket", "grpc"] {
        if probe.contains(key) {
            let get = concat(&["{\"path\":", &path, ",\"port\":", port, "}"]);
            write_with(out, probe, &[("httpGet", &get)], key);
            return true;
        }
    }
    false
}

/// Merges probers kept by an earlier injection (the old proxy's `ISTIO_KUBE_APP_PROBERS`)
/// into `new`: Istio keeps the earlier entries, since the probes they describe were already
/// rewritten and can no longer be read from the containers.
pub(crate) fn merge_previous(new: &mut BTreeMap<String, String>, proxy_env: Option<&str>) {
    let Some(env) = proxy_env else { return };
    let Ok(vars) = serde_json::from_str::<Vec<&RawValue>>(env) else {
        return;
    };
    let old = vars
        .into_iter()
        .filter_map(Obj::parse)
        .find(|v| {
            v.get("name")
                .and_then(as_str)
                .is_some_and(|n| n.as_str() == "ISTIO_KUBE_APP_PROBERS")
        })
        .and_then(|v| v.get("value").and_then(as_str))
        .and_then(|s| serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(s.as_str()).ok());
    if let Some(old) = old {
        new.extend(old.into_iter().map(|(k, v)| (k, v.get().to_string())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn run(containers: Value) -> Rewrite {
        let text = json!({ "containers": containers }).to_string();
        let spec: Spec<'_> = serde_json::from_str(&text).expect("a spec");
        rewrite(&spec, 15020, true)
    }

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).expect("written JSON must parse")
    }

    #[test]
    fn http_probe_points_at_the_agent_and_keeps_the_rest() {
        let r = run(json!([{
            "name": "app",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTPS"},
                               "periodSeconds": 5, "timeoutSeconds": 3}
        }]));
        assert_eq!(r.replaces.len(), 1);
        assert_eq!(r.replaces[0].0, "/spec/containers/0/readinessProbe");
        assert_eq!(
            parse(&r.replaces[0].1),
            json!({"httpGet": {"path": "/app-health/app/readyz", "port": 15020, "scheme": "HTTP"},
                   "periodSeconds": 5, "timeoutSeconds": 3})
        );
        // The named port is resolved for the agent; the scheme stays the app's.
        assert_eq!(
            parse(&r.probers["/app-health/app/readyz"]),
            json!({"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTPS"}, "timeoutSeconds": 3})
        );
        assert_eq!(
            parse(&r.probers_json()),
            json!({"/app-health/app/readyz": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTPS"}, "timeoutSeconds": 3}})
        );
    }

    #[test]
    fn tcp_and_grpc_become_http_gets_and_keys_are_read_as_a_value_reads_them() {
        let r = run(json!([{
            "name": "app",
            "livenessProbe": {"tcpSocket": {"port": 9000}, "timeoutSeconds": 0},
            "startupProbe": {"grpc": {"port": 9001}}
        }]));
        let by_path: BTreeMap<_, _> = r.replaces.iter().cloned().collect();
        assert_eq!(
            parse(&by_path["/spec/containers/0/livenessProbe"]),
            json!({"httpGet": {"path": "/app-health/app/livez", "port": 15020}, "timeoutSeconds": 0})
        );
        assert_eq!(
            parse(&by_path["/spec/containers/0/startupProbe"]),
            json!({"httpGet": {"path": "/app-health/app/startupz", "port": 15020}})
        );
        // A zero timeout is not carried to the agent.
        assert_eq!(
            parse(&r.probers["/app-health/app/livez"]),
            json!({"tcpSocket": {"port": 9000}})
        );
        assert_eq!(
            parse(&r.probers["/app-health/app/startupz"]),
            json!({"grpc": {"port": 9001}})
        );

        // A repeated key: the last one wins, as in a `serde_json::Value`; an escaped key
        // is the key it spells.
        let text = r#"{"containers":[{"name":"a","readinessProbe":{"httpGet":{"port":1},"h\u0074tpGet":{"port":2,"path":"/x"}}}]}"#;
        let spec: Spec<'_> = serde_json::from_str(text).expect("a spec");
        let r = rewrite(&spec, 15021, false);
        assert_eq!(
            parse(&r.probers["/app-health/a/readyz"]),
            json!({"httpGet": {"path": "/x", "port": 2}})
        );
        assert_eq!(
            parse(&r.replaces[0].1),
            json!({"httpGet": {"path": "/app-health/a/readyz", "port": 15021}})
        );
    }

    #[test]
    fn probes_already_at_the_agent_and_unknown_named_ports_give_no_prober() {
        let r = run(json!([{
            "name": "app",
            "readinessProbe": {"httpGet": {"path": "/app-health/app/readyz", "port": 15020}},
            "livenessProbe": {"httpGet": {"path": "/live", "port": "missing"}},
            "startupProbe": {"exec": {"command": ["true"]}}
        }]));
        assert!(r.probers.is_empty(), "{:?}", r.probers);
        // Both httpGet probes are still (re)pointed at the agent; exec is left alone.
        assert_eq!(r.replaces.len(), 2);
    }

    #[test]
    fn hooks_are_rewritten_from_1_25_and_exec_hooks_are_not() {
        let r = run(json!([{
            "name": "app",
            "lifecycle": {"preStop": {"httpGet": {"path": "/stop", "port": 80}},
                          "postStart": {"exec": {"command": ["x"]}}}
        }]));
        assert_eq!(r.replaces[0].0, "/spec/containers/0/lifecycle");
        assert_eq!(
            parse(&r.replaces[0].1),
            json!({"postStart": {"exec": {"command": ["x"]}},
                   "preStop": {"httpGet": {"path": "/app-lifecycle/app/prestopz", "port": 15020}}})
        );
        assert_eq!(
            parse(&r.probers["/app-lifecycle/app/prestopz"]),
            json!({"httpGet": {"path": "/stop", "port": 80}})
        );
        let text = json!({"containers": [{"name": "app",
            "lifecycle": {"preStop": {"httpGet": {"path": "/stop", "port": 80}}}}]})
        .to_string();
        let spec: Spec<'_> = serde_json::from_str(&text).expect("a spec");
        assert!(rewrite(&spec, 15020, false).replaces.is_empty());
    }

    #[test]
    fn earlier_probers_are_kept_on_reinjection() {
        let mut new = BTreeMap::from([("/app-health/a/readyz".to_string(), "{}".to_string())]);
        let env = json!([{"name": "X", "value": "1"},
            {"name": "ISTIO_KUBE_APP_PROBERS",
             "value": "{\"/app-health/b/livez\":{\"httpGet\":{\"port\":1}}}"}])
        .to_string();
        merge_previous(&mut new, Some(&env));
        assert_eq!(new.len(), 2);
        assert_eq!(
            parse(&new["/app-health/b/livez"]),
            json!({"httpGet": {"port": 1}})
        );
    }
}
