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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::pod::{Container, Spec, Str};
use super::{PROXY_CONTAINER, pointer_escape};

/// What the rewrite produces: `replace` operations (path, JSON value) and the probers.
#[derive(Debug, Default)]
pub struct Rewrite {
    pub replaces: Vec<(String, String)>,
    /// `ISTIO_KUBE_APP_PROBERS` entries, keyed by `/app-health/<container>/<kind>`: each
    /// value is one prober as JSON text.
    pub probers: BTreeMap<String, Box<RawValue>>,
}

impl Rewrite {
    /// The `ISTIO_KUBE_APP_PROBERS` value: the probers as one JSON object.
    pub fn probers_json(&self) -> String {
        serde_json::to_string(&self.probers).expect("probers must serialize")
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
                // Stable: among equal keys the last one read ends up last, and wins.
                v.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
                let mut out: Vec<(Str<'de>, &'de RawValue)> = Vec::with_capacity(v.len());
                for (k, val) in v {
                    match out.last_mut() {
                        Some(last) if last.0 == k => last.1 = val,
                        _ => out.push((k, val)),
                    }
                }
                Ok(Obj(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A value to write: raw JSON from the request, or JSON text built here.
enum Val<'a> {
    Raw(&'a str),
    Own(String),
}

/// Writes `{"k":v,…}` with the keys in sorted order (`entries` must be sorted).
fn write_obj<'a>(out: &mut String, entries: impl IntoIterator<Item = (Cow<'a, str>, Val<'a>)>) {
    out.push('{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, &k);
        out.push(':');
        match v {
            Val::Raw(r) => out.push_str(r),
            Val::Own(s) => out.push_str(&s),
        }
    }
    out.push('}');
}

fn push_json_str(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).expect("a string must serialize"));
    }
}

/// `obj` with `set` entries put in (replacing or adding) and `drop` keys taken out, written
/// with sorted keys.
fn write_with(out: &mut String, obj: &Obj<'_>, set: &mut [(&str, Val<'_>)], drop: &[&str]) {
    set.sort_by(|a, b| a.0.cmp(b.0));
    let mut merged: Vec<(Cow<'_, str>, Val<'_>)> = Vec::with_capacity(obj.0.len() + set.len());
    let mut s = 0;
    for (k, v) in &obj.0 {
        let k = k.as_str();
        while s < set.len() && set[s].0 < k {
            let (sk, sv) = &mut set[s];
            merged.push((Cow::Borrowed(*sk), std::mem::replace(sv, Val::Raw("null"))));
            s += 1;
        }
        if s < set.len() && set[s].0 == k {
            let (sk, sv) = &mut set[s];
            merged.push((Cow::Borrowed(*sk), std::mem::replace(sv, Val::Raw("null"))));
            s += 1;
        } else if !drop.contains(&k) {
            merged.push((Cow::Borrowed(k), Val::Raw(v.get())));
        }
    }
    for (sk, sv) in &mut set[s..] {
        merged.push((Cow::Borrowed(*sk), std::mem::replace(sv, Val::Raw("null"))));
    }
    write_obj(out, merged);
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
    for (raw, field, kind) in probes {
        let Some(probe) = raw.and_then(Obj::parse) else {
            continue;
        };
        let url = format!("/app-health/{name}/{kind}");
        if let Some(p) = prober(&probe, true, &mut port_of) {
            out.probers.insert(url.clone(), p);
        }
        let mut json = String::with_capacity(raw.map_or(0, |r| r.get().len()) + url.len() + 16);
        if convert(&mut json, &probe, &url, status_port) {
            out.replaces
                .push((format!("{path}/{}", pointer_escape(field)), json));
        }
    }
    if !lifecycle {
        return;
    }
    let Some(hooks) = c.lifecycle.and_then(Obj::parse) else {
        return;
    };
    let mut changed: Vec<(&str, Val<'_>)> = Vec::new();
    for (hook, kind) in [("preStop", "prestopz"), ("postStart", "poststartz")] {
        let Some(h) = hooks.get(hook).and_then(Obj::parse) else {
            continue;
        };
        if h.contains("exec") || h.contains("sleep") {
            continue;
        }
        let url = format!("/app-lifecycle/{name}/{kind}");
        if let Some(p) = prober(&h, false, &mut port_of) {
            out.probers.insert(url.clone(), p);
        }
        if h.contains("httpGet") || h.contains("tcpSocket") {
            let mut json = String::new();
            if convert(&mut json, &h, &url, status_port) {
                changed.push((hook, Val::Own(json)));
            }
        }
    }
    if !changed.is_empty() {
        let mut json = String::new();
        write_with(&mut json, &hooks, &mut changed, &[]);
        out.replaces.push((format!("{path}/lifecycle"), json));
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
    with_timeout: bool,
    port_of: &mut impl FnMut(&str) -> Option<i64>,
) -> Option<Box<RawValue>> {
    let mut p = String::with_capacity(96);
    p.push('{');
    if let Some(g) = probe.get("grpc") {
        p.push_str("\"grpc\":");
        p.push_str(g.get());
    } else {
        let key = if probe.contains("httpGet") {
            "httpGet"
        } else if probe.contains("tcpSocket") {
            "tcpSocket"
        } else {
            return None;
        };
        let raw = probe.get(key)?;
        push_json_str(&mut p, key);
        p.push(':');
        match Obj::parse(raw) {
            Some(action) => match action.get("port") {
                Some(port) if port.get().starts_with('"') => {
                    let named = as_str(port)?;
                    let number = port_of(named.as_str())?;
                    write_with(
                        &mut p,
                        &action,
                        &mut [("port", Val::Own(number.to_string()))],
                        &[],
                    );
                }
                Some(port) if as_i64(port) == Some(i64::from(super::STATUS_PORT)) => {
                    return None;
                }
                _ => write_with(&mut p, &action, &mut [], &[]),
            },
            // Not an object: carried as it is.
            None => p.push_str(raw.get()),
        }
    }
    if with_timeout
        && let Some(t) = probe.get("timeoutSeconds")
        && as_i64(t).is_some_and(|t| t != 0)
    {
        p.push_str(",\"timeoutSeconds\":");
        p.push_str(t.get());
    }
    p.push('}');
    RawValue::from_string(p).ok()
}

/// Writes into `out` the probe or hook pointed at the agent. Returns whether it changed
/// (`out` is meaningful only then).
fn convert(out: &mut String, probe: &Obj<'_>, url: &str, status_port: i64) -> bool {
    if let Some(g) = probe.get("httpGet").and_then(Obj::parse) {
        let mut get = String::with_capacity(g.0.len() * 24 + url.len());
        let mut set = vec![
            ("port", Val::Own(status_port.to_string())),
            (
                "path",
                Val::Own(serde_json::to_string(url).expect("a string must serialize")),
            ),
        ];
        if g.get("scheme")
            .and_then(as_str)
            .is_some_and(|s| s.as_str() == "HTTPS")
        {
            set.push(("scheme", Val::Raw("\"HTTP\"")));
        }
        write_with(&mut get, &g, &mut set, &[]);
        write_with(out, probe, &mut [("httpGet", Val::Own(get))], &[]);
        return true;
    }
    for key in ["tcpSocket", "grpc"] {
        if probe.contains(key) {
            let get = format!(
                "{{\"path\":{},\"port\":{status_port}}}",
                serde_json::to_string(url).expect("a string must serialize")
            );
            write_with(out, probe, &mut [("httpGet", Val::Own(get))], &[key]);
            return true;
        }
    }
    false
}

/// Merges probers kept by an earlier injection (the old proxy's `ISTIO_KUBE_APP_PROBERS`)
/// into `new`: Istio keeps the earlier entries, since the probes they describe were already
/// rewritten and can no longer be read from the containers.
pub fn merge_previous(new: &mut BTreeMap<String, Box<RawValue>>, proxy_env: Option<&str>) {
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
        new.extend(old);
    }
}
