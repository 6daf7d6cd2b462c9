//! App probe rewrite, as Istio's `app_probe.go` does it.
//!
//! With mTLS the kubelet cannot reach the app's own probe ports, so every httpGet, tcpSocket
//! and grpc probe (and, from 1.25, `postStart`/`preStop` httpGet and tcpSocket hooks) of the
//! app's containers is pointed at the agent: `GET :<status port>/app-health/<container>/<kind>`.
//! The originals go, keyed by that path, into the proxy's `ISTIO_KUBE_APP_PROBERS`, which the
//! agent uses to run them. Only pods that have such probes pay for this: the probes are kept as
//! raw JSON by the pod view and parsed here.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::pod::{Container, Spec};
use super::{PROXY_CONTAINER, pointer_escape};

/// What the rewrite produces: `replace` operations (path, JSON value) and the probers.
#[derive(Debug, Default)]
pub struct Rewrite {
    pub replaces: Vec<(String, String)>,
    /// `ISTIO_KUBE_APP_PROBERS` entries, keyed by `/app-health/<container>/<kind>`.
    pub probers: BTreeMap<String, Value>,
}

/// Rewrites the probes of every app container of `spec`. `status_port` is where the rewritten
/// probes point (the pod's `status.sidecar.istio.io/port`); probes already pointing at the
/// mesh's default status port are not listed as probers again (re-injection).
pub fn rewrite(spec: &Spec<'_>, status_port: i64, lifecycle: bool) -> Rewrite {
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
    let mut port_map =
        || -> BTreeMap<String, i64> { ports.get_or_insert_with(|| named_ports(c)).clone() };
    for (raw, field, kind) in probes {
        let Some(raw) = raw else { continue };
        let Ok(Value::Object(mut probe)) = serde_json::from_str::<Value>(raw.get()) else {
            continue;
        };
        let url = format!("/app-health/{name}/{kind}");
        if let Some(p) = prober(&probe, true, &mut port_map) {
            out.probers.insert(url.clone(), p);
        }
        if convert(&mut probe, &url, status_port) {
            out.replaces.push((
                format!("{path}/{}", pointer_escape(field)),
                Value::Object(probe).to_string(),
            ));
        }
    }
    if !lifecycle {
        return;
    }
    let Some(raw) = c.lifecycle else { return };
    let Ok(Value::Object(mut hooks)) = serde_json::from_str::<Value>(raw.get()) else {
        return;
    };
    let mut changed = false;
    for (hook, kind) in [("preStop", "prestopz"), ("postStart", "poststartz")] {
        let Some(Value::Object(h)) = hooks.get_mut(hook) else {
            continue;
        };
        if h.get("exec").is_some() || h.get("sleep").is_some() {
            continue;
        }
        let url = format!("/app-lifecycle/{name}/{kind}");
        if let Some(p) = prober(h, false, &mut port_map) {
            out.probers.insert(url.clone(), p);
        }
        if h.contains_key("httpGet") || h.contains_key("tcpSocket") {
            changed |= convert(h, &url, status_port);
        }
    }
    if changed {
        out.replaces.push((
            format!("{path}/lifecycle"),
            Value::Object(hooks).to_string(),
        ));
    }
}

fn named_ports(c: &Container<'_>) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    if let Some(raw) = c.ports
        && let Ok(Value::Array(ports)) = serde_json::from_str::<Value>(raw.get())
    {
        for p in ports {
            if let (Some(n), Some(port)) = (
                p.get("name").and_then(Value::as_str),
                p.get("containerPort").and_then(Value::as_i64),
            ) && !n.is_empty()
            {
                m.insert(n.to_string(), port);
            }
        }
    }
    m
}

/// The prober the agent runs for a probe or hook, or `None` when there is nothing to run
/// (no handler, a named port the container does not have, or a probe that already points
/// at the agent).
fn prober(
    probe: &Map<String, Value>,
    with_timeout: bool,
    port_map: &mut impl FnMut() -> BTreeMap<String, i64>,
) -> Option<Value> {
    let mut p = Map::new();
    if let Some(g) = probe.get("grpc") {
        p.insert("grpc".into(), g.clone());
    } else {
        let key = if probe.contains_key("httpGet") {
            "httpGet"
        } else if probe.contains_key("tcpSocket") {
            "tcpSocket"
        } else {
            return None;
        };
        let mut action = probe.get(key)?.clone();
        match action.get("port") {
            Some(Value::String(named)) => {
                let port = *port_map().get(named.as_str())?;
                action["port"] = json!(port);
            }
            Some(Value::Number(n)) if n.as_i64() == Some(i64::from(super::STATUS_PORT)) => {
                return None;
            }
            _ => {}
        }
        p.insert(key.into(), action);
    }
    if with_timeout
        && let Some(t) = probe.get("timeoutSeconds")
        && t.as_i64().is_some_and(|t| t != 0)
    {
        p.insert("timeoutSeconds".into(), t.clone());
    }
    Some(Value::Object(p))
}

/// Points a probe or hook at the agent. Returns whether it changed.
fn convert(probe: &mut Map<String, Value>, url: &str, status_port: i64) -> bool {
    if let Some(Value::Object(g)) = probe.get_mut("httpGet") {
        g.insert("port".into(), json!(status_port));
        g.insert("path".into(), json!(url));
        if g.get("scheme").and_then(Value::as_str) == Some("HTTPS") {
            g.insert("scheme".into(), json!("HTTP"));
        }
        return true;
    }
    for key in ["tcpSocket", "grpc"] {
        if probe.remove(key).is_some() {
            probe.insert("httpGet".into(), json!({"path": url, "port": status_port}));
            return true;
        }
    }
    false
}

/// Merges probers kept by an earlier injection (the old proxy's `ISTIO_KUBE_APP_PROBERS`)
/// into `new`: Istio keeps the earlier entries, since the probes they describe were already
/// rewritten and can no longer be read from the containers.
pub fn merge_previous(new: &mut BTreeMap<String, Value>, proxy_env: Option<&str>) {
    let Some(env) = proxy_env else { return };
    let Ok(Value::Array(vars)) = serde_json::from_str::<Value>(env) else {
        return;
    };
    let old = vars
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some("ISTIO_KUBE_APP_PROBERS"))
        .and_then(|v| v.get("value").and_then(Value::as_str))
        .and_then(|s| serde_json::from_str::<BTreeMap<String, Value>>(s).ok());
    if let Some(old) = old {
        new.extend(old);
    }
}
