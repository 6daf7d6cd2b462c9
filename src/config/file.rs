use std::collections::BTreeMap;

use serde::Deserialize;

use super::{MeshRevision, RevisionTag};

/// The built-in table: revisions `1-22-6` and `1-23-6`, `stable → 1-22-6`,
/// `canary → 1-23-6`. Used by `meshrev inject` and `meshrev serve` without `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("default-table.yaml");

/// A `Namespace` object of a table file: only its name and labels matter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamespaceObject {
    /// `metadata.name`.
    pub(crate) name: String,
    /// `metadata.labels`.
    pub(crate) labels: BTreeMap<String, String>,
}

/// The objects of a table file, in file order.
#[derive(Clone, Debug, Default)]
pub struct ConfigObjects {
    /// The `MeshRevision` documents.
    pub revisions: Vec<MeshRevision>,
    /// The `RevisionTag` documents.
    pub tags: Vec<RevisionTag>,
    /// The `Namespace` documents.
    pub(crate) namespaces: Vec<NamespaceObject>,
}

/// A table file that could not be read. The message names the document and the field.
#[derive(Debug, thiserror::Error)]
#[error("document {index}{what}: {message}")]
pub struct ParseError {
    /// 0-based index of the YAML document in the file.
    pub(crate) index: usize,
    /// ` (Kind name)` when the document got that far, else empty.
    pub(crate) what: String,
    /// What is wrong, naming the field.
    pub(crate) message: String,
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: HeadMeta,
}

#[derive(Deserialize, Default)]
struct HeadMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

/// Parses a multi-document YAML (or JSON) table file. `List` documents are flattened.
/// Nesting deeper than `crate::yaml::MAX_DEPTH` is refused while parsing (linear time).
/// Unknown kinds are errors: a table file holds configuration only.
pub fn parse_objects(text: &str) -> Result<ConfigObjects, ParseError> {
    let mut out = ConfigObjects::default();
    for (index, doc) in crate::yaml::documents(text).enumerate() {
        let value = doc.map_err(|e| ParseError {
            index,
            what: String::new(),
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue; // an empty document, e.g. a trailing `---`
        }
        add_value(&mut out, index, value)?;
    }
    Ok(out)
}

fn add_value(
    out: &mut ConfigObjects,
    index: usize,
    value: serde_json::Value,
) -> Result<(), ParseError> {
    let err = |what: String, message: String| ParseError {
        index,
        what,
        message,
    };
    let head: Head = serde_json::from_value(value.clone())
        .map_err(|e| err(String::new(), format!("not a Kubernetes object: {e}")))?;
    let kind = head
        .kind
        .ok_or_else(|| err(String::new(), "missing field `kind`".into()))?;
    let name = head.metadata.name.clone().unwrap_or_default();
    let what = format!(" ({kind} {name:?})");
    if name.is_empty() && kind != "List" {
        return Err(err(what, "missing field `metadata.name`".into()));
    }
    let api = head.api_version.unwrap_or_default();
    match kind.as_str() {
        "MeshRevision" | "RevisionTag" if api != format!("{}/{}", super::GROUP, super::VERSION) => {
            Err(err(
                what,
                format!(
                    "apiVersion is {api:?}; expected \"{}/{}\"",
                    super::GROUP,
                    super::VERSION
                ),
            ))
        }
        "MeshRevision" => {
            let rev: MeshRevision =
                serde_json::from_value(value).map_err(|e| err(what, e.to_string()))?;
            out.revisions.push(rev);
            Ok(())
        }
        "RevisionTag" => {
            let tag: RevisionTag =
                serde_json::from_value(value).map_err(|e| err(what, e.to_string()))?;
            out.tags.push(tag);
            Ok(())
        }
        "Namespace" => {
            out.namespaces.push(NamespaceObject {
                name,
                labels: head.metadata.labels.unwrap_or_default(),
            });
            Ok(())
        }
        "List" => {
            let items = value
                .get("items")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default();
            for item in items {
                add_value(out, index, item)?;
            }
            Ok(())
        }
        other => Err(err(
            what,
            format!(
                "kind {other:?} does not belong in a table file (MeshRevision, RevisionTag, Namespace)"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses() {
        let objs = parse_objects(EMBEDDED_DEFAULT).expect("the embedded table must parse");
        assert_eq!(objs.revisions.len(), 2);
        assert_eq!(objs.tags.len(), 2);
    }

    #[test]
    fn errors_name_document_and_field() {
        let text = "apiVersion: meshrev.io/v1alpha1\nkind: MeshRevision\nmetadata: {name: a}\nspec: {version: 1.2.3}\n---\napiVersion: meshrev.io/v1alpha1\nkind: MeshRevision\nmetadata: {name: b}\nspec: {proxyImage: x}\n";
        let e = parse_objects(text).unwrap_err();
        assert_eq!(e.index, 1);
        let s = e.to_string();
        assert!(s.contains("MeshRevision \"b\""), "{s}");
        assert!(s.contains("version"), "{s}");
    }

    #[test]
    fn deep_documents_are_refused_while_parsing() {
        for deep in [
            format!("labels: {}", "[".repeat(100_000)),
            format!("labels: {}", "{a: ".repeat(100_000)),
            format!("labels:\n  {}x", "- ".repeat(100_000)),
        ] {
            let text = format!(
                "{EMBEDDED_DEFAULT}---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  {deep}\n"
            );
            let e = parse_objects(&text).expect_err("too deep");
            let s = e.to_string();
            assert!(s.starts_with("document 4: line "), "{s}");
            assert!(
                s.contains("nested deeper than 128") || s.contains("recursion limit"),
                "{s}"
            );
        }
    }

    #[test]
    fn unknown_kind_is_named() {
        let e =
            parse_objects("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n").unwrap_err();
        assert!(e.to_string().contains("ConfigMap"), "{e}");
    }
}
