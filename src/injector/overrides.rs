//! The full-pod path: pods that bring their own `istio-proxy`/`istio-init`, or ask for other
//! templates than `sidecar`.
//!
//! Istio lets a pod customise the injected containers by declaring a container of the same
//! name: its fields are merged over the injected one (a strategic merge: `env`, `ports` and
//! `volumeMounts` by key, everything else replaced), `image: auto` keeps the injected image,
//! and what the pod declared is kept in the `proxy.istio.io/overrides` annotation so that a
//! later re-injection can apply it again. A user `runAsUser` also becomes istio-iptables'
//! `-u`, so the proxy's own traffic is still recognised.
//!
//! These pods are rare, so this path works on `serde_json::Value`s: it applies the fast
//! path's patch to the whole pod, adjusts the result the way Istio's post-processing does, and
//! answers the difference as a JSON Patch. The common pod never comes here.

use serde_json::{Map, Value, json};

use super::{ANNOTATION_STATUS, INIT_CONTAINER, PROXY_CONTAINER};
use crate::injector::pod::{Meta, Spec};

/// Containers a template injects and a pod may override.
const OVERRIDABLE: [&str; 2] = [INIT_CONTAINER, PROXY_CONTAINER];

/// Annotation in which Istio keeps a pod's own versions of the injected containers.
pub(crate) const ANNOTATION_OVERRIDES: &str = "proxy.istio.io/overrides";

/// Whether `pod` needs the full-pod path: it declares an injected container itself (and was
/// not injected before), or it asks for templates.
pub(crate) fn needed(meta: &Meta<'_>, spec: &Spec<'_>) -> bool {
    if meta.annotation(crate::core::ANNOTATION_TEMPLATES).is_some()
        || meta.annotation("sidecar.istio.io/enableCoreDump").is_some()
    {
        return true;
    }
    if meta.annotation(ANNOTATION_STATUS).is_some() {
        return meta.annotation(ANNOTATION_OVERRIDES).is_some();
    }
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| OVERRIDABLE.contains(&c.name.as_str()))
}

/// The pod's own versions of the injected containers: from `proxy.istio.io/overrides` when
/// it was injected before, else from its spec. (list, container) with list `containers` or
/// `initContainers`, as Istio records them.
fn user_containers(original: &Value) -> Vec<(&'static str, Value)> {
    let ann = &original["metadata"]["annotations"];
    if ann.get(ANNOTATION_STATUS).is_some() {
        let Some(recorded) = ann
            .get(ANNOTATION_OVERRIDES)
            .and_then(Value::as_str)
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for list in ["containers", "initContainers"] {
            for c in recorded[list].as_array().into_iter().flatten() {
                out.push((
                    if list == "containers" {
                        "containers"
                    } else {
                        "initContainers"
                    },
                    c.clone(),
                ));
            }
        }
        return out;
    }
    let mut out = Vec::new();
    for name in OVERRIDABLE {
        let found = ["containers", "initContainers"].iter().find_map(|l| {
            original["spec"][*l]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        });
        if let Some(c) = found {
            out.push(("", c.clone()));
        }
    }
    out
}

/// Applies the pod's own container definitions over the injected pod (Istio's
/// `reapplyOverwrittenContainers` and `adjustInitContainerUser`).
pub(crate) fn apply(original: &Value, injected: &mut Value) {
    let users = user_containers(original);
    if users.is_empty() {
        return;
    }
    let first_injection = original["metadata"]["annotations"]
        .get(ANNOTATION_STATUS)
        .is_none();
    let mut recorded: Map<String, Value> = Map::new();
    let mut proxy_user: Option<Value> = None;
    for (_, user) in users {
        let Some(name) = user["name"].as_str().map(str::to_string) else {
            continue;
        };
        let mut overlay = user.clone();
        if overlay["image"] == "auto"
            && let Some(o) = overlay.as_object_mut()
        {
            o.remove("image");
        }
        // Where the injection put it decides which list the override is recorded under.
        let Some((list, target)) = find_mut(injected, &name) else {
            continue;
        };
        strategic_merge(target, &overlay);
        recorded
            .entry(list)
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .expect("an array was inserted")
            .push(overlay);
        if name == PROXY_CONTAINER {
            proxy_user = Some(user);
        }
    }
    if first_injection && !recorded.is_empty() {
        let annotations = &mut injected["metadata"]["annotations"];
        if !annotations.is_object() {
            *annotations = json!({});
        }
        annotations[ANNOTATION_OVERRIDES] = Value::String(Value::Object(recorded).to_string());
    }
    if let Some(user) = proxy_user {
        adjust_init_user(injected, &user);
    }
}

/// The injected container `name`: (its list, the container).
fn find_mut<'v>(pod: &'v mut Value, name: &str) -> Option<(String, &'v mut Value)> {
    for list in ["initContainers", "containers"] {
        let idx = pod["spec"][list]
            .as_array()
            .and_then(|cs| cs.iter().position(|c| c["name"] == name));
        if let Some(i) = idx {
            return Some((list.to_string(), &mut pod["spec"][list][i]));
        }
    }
    None
}

/// A user `runAsUser` on `istio-proxy` becomes istio-iptables' `-u` (not 0, which would
/// exempt root's traffic instead of the proxy's). Under TPROXY the proxy itself must run as
/// root: its `runAsUser` goes back to 0 (`-u` still names the pod's user, as in Istio).
pub(crate) fn adjust_init_user(pod: &mut Value, user: &Value) {
    let Some(uid) = user["securityContext"]["runAsUser"].as_i64() else {
        return;
    };
    // Istio stops here when the pod has no istio-init (a gateway, a proxyless template):
    // even under TPROXY the proxy keeps the pod's user.
    if find_mut(pod, INIT_CONTAINER).is_none() {
        return;
    }
    let tproxy = pod["metadata"]["annotations"]["sidecar.istio.io/interceptionMode"] == "TPROXY";
    if tproxy && let Some((_, proxy)) = find_mut(pod, PROXY_CONTAINER) {
        proxy["securityContext"]["runAsUser"] = json!(0);
    }
    if uid == 0 {
        return;
    }
    let Some((_, init)) = find_mut(pod, INIT_CONTAINER) else {
        return;
    };
    if let Some(args) = init["args"].as_array_mut()
        && let Some(i) = args.iter().position(|a| a == "-u")
        && i + 1 < args.len()
    {
        args[i + 1] = Value::String(uid.to_string());
    }
}

/// The merge key of a container list field, as Kubernetes' strategic merge patch has it.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "env" => Some("name"),
        "ports" => Some("containerPort"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        _ => None,
    }
}

/// A strategic merge of `patch` over `base` for container-shaped objects: objects merge,
/// lists with a merge key merge by it, anything else is replaced; `null` removes.
pub(crate) fn strategic_merge(base: &mut Value, patch: &Value) {
    let (Value::Object(b), Value::Object(p)) = (&mut *base, patch) else {
        *base = patch.clone();
        return;
    };
    for (k, pv) in p {
        if pv.is_null() {
            b.remove(k);
            continue;
        }
        match (b.get_mut(k), pv) {
            (Some(bv @ Value::Object(_)), Value::Object(_)) => strategic_merge(bv, pv),
            (Some(Value::Array(ba)), Value::Array(pa)) if merge_key(k).is_some() => {
                let key = merge_key(k).expect("checked above");
                for item in pa {
                    match ba.iter_mut().find(|x| x.get(key) == item.get(key)) {
                        Some(existing) => strategic_merge(existing, item),
                        None => ba.push(item.clone()),
                    }
                }
            }
            _ => {
                b.insert(k.clone(), pv.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_fields_win_and_lists_merge_by_key() {
        let mut base = json!({"name": "istio-proxy", "image": "x/proxyv2:1", "args": ["a"],
            "env": [{"name": "A", "value": "1"}], "securityContext": {"runAsUser": 1337, "privileged": false}});
        let patch = json!({"name": "istio-proxy", "args": ["b"], "env": [{"name": "A", "value": "2"}, {"name": "B", "value": "3"}],
            "securityContext": {"runAsUser": 1234}});
        strategic_merge(&mut base, &patch);
        assert_eq!(base["args"], json!(["b"]));
        assert_eq!(
            base["env"],
            json!([{"name": "A", "value": "2"}, {"name": "B", "value": "3"}])
        );
        assert_eq!(
            base["securityContext"],
            json!({"runAsUser": 1234, "privileged": false})
        );
        assert_eq!(base["image"], "x/proxyv2:1");
    }
}
