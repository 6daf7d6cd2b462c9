//! A borrowed, field-selective view of a Pod: only what routing and injection read.
//!
//! Everything else in the pod (env vars, probes, managedFields, …) is skipped by the
//! deserializer without being materialised, which is what keeps a pod with thousands of
//! env vars cheap (istio#34799). Strings borrow from the request body when they contain no
//! escapes.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A string that borrows from the input when it can.
#[derive(Clone, PartialEq, Eq, Default)]
pub(crate) struct Str<'a>(pub Cow<'a, str>);

impl<'a> Str<'a> {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Str<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Labels or annotations, in document order. Small maps: a linear scan beats hashing.
#[derive(Clone, Debug, Default)]
pub(crate) struct StrMap<'a>(pub Vec<(Str<'a>, Str<'a>)>);

impl<'a> StrMap<'a> {
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v.as_str())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for StrMap<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrMap<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(StrMap::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(m.size_hint().unwrap_or(4));
                while let Some(entry) = m.next_entry::<Str<'de>, Str<'de>>()? {
                    v.push(entry);
                }
                Ok(StrMap(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// The parts of a Pod that meshrev reads.
#[derive(Debug, Deserialize, Default)]
pub struct Pod<'a> {
    #[serde(borrow, default)]
    pub(crate) metadata: Meta<'a>,
    #[serde(borrow)]
    pub(crate) spec: Option<Spec<'a>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Meta<'a> {
    #[serde(borrow, default)]
    pub(crate) name: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub(crate) generate_name: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub(crate) namespace: Option<Str<'a>>,
    /// `None` when the pod has no `labels` field (or it is null): patches must then
    /// create the map instead of adding keys to it.
    #[serde(borrow, default)]
    pub(crate) labels: Option<StrMap<'a>>,
    #[serde(borrow, default)]
    pub(crate) annotations: Option<StrMap<'a>>,
    #[serde(borrow, default)]
    pub(crate) owner_references: Option<Vec<OwnerRef<'a>>>,
}

impl Meta<'_> {
    pub(crate) fn label(&self, k: &str) -> Option<&str> {
        self.labels.as_ref().and_then(|l| l.get(k))
    }
    pub(crate) fn annotation(&self, k: &str) -> Option<&str> {
        self.annotations.as_ref().and_then(|a| a.get(k))
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OwnerRef<'a> {
    #[serde(borrow, default)]
    pub(crate) api_version: Str<'a>,
    #[serde(borrow, default)]
    pub(crate) kind: Str<'a>,
    #[serde(borrow, default)]
    pub(crate) name: Str<'a>,
    #[serde(default)]
    pub(crate) controller: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Spec<'a> {
    #[serde(default)]
    pub(crate) host_network: Option<bool>,
    #[serde(borrow, default)]
    pub(crate) containers: Vec<Container<'a>>,
    #[serde(borrow, default)]
    pub(crate) init_containers: Option<Vec<Container<'a>>>,
    #[serde(borrow, default)]
    pub(crate) volumes: Option<Vec<Named<'a>>>,
}

/// A container: its name, and the parts injection reads kept as raw JSON (borrowed slices
/// of the request, parsed only when a rewrite needs them): `ports` is spliced into
/// `ISTIO_META_POD_PORTS` as it is; probes and lifecycle hooks are rewritten to the agent's
/// `/app-health` endpoints; `env` is read only on an already injected `istio-proxy`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Container<'a> {
    #[serde(borrow, default)]
    pub(crate) name: Str<'a>,
    #[serde(borrow, default)]
    pub(crate) ports: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(crate) readiness_probe: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(crate) liveness_probe: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(crate) startup_probe: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(crate) lifecycle: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(crate) env: Option<&'a RawValue>,
}

/// Anything identified by its `name` (volumes).
#[derive(Debug, Deserialize, Default)]
pub(crate) struct Named<'a> {
    #[serde(borrow, default)]
    pub(crate) name: Str<'a>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrows_plain_strings_and_skips_the_rest() {
        let body = br#"{"metadata":{"name":"p","labels":{"app":"x","esc":"a\"b"},"annotations":null},
            "spec":{"containers":[{"name":"c","env":[{"name":"A","value":"1"}],"ports":[{"containerPort":80}]}]}}"#;
        let pod: Pod = serde_json::from_slice(body).unwrap();
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert!(matches!(labels.0[0].1.0, Cow::Borrowed("x")));
        assert_eq!(labels.get("esc"), Some("a\"b"));
        assert!(pod.metadata.annotations.is_none(), "null means absent");
        let spec = pod.spec.unwrap();
        assert_eq!(
            spec.containers[0].ports.unwrap().get(),
            r#"[{"containerPort":80}]"#
        );
        assert!(spec.init_containers.is_none());
    }
}
