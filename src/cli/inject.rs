//! `meshrev inject`: the webhook's injection, offline, for manifests.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::json;

use crate::injector::{self, Outcome, pod::Pod};
use crate::table::{self, NamespaceLabels, Table};

#[derive(clap::Args, Debug)]
pub struct InjectArgs {
    /// Manifests to inject: a file of multi-document YAML or JSON, or `-` for stdin.
    #[arg(short = 'f', long = "filename")]
    pub file: String,
    /// A table file (MeshRevision, RevisionTag and Namespace objects). Default: the
    /// embedded table (stable → 1-22-6, canary → 1-23-6).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Namespace of objects that do not name one (default: `default`); also overrides theirs.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Labels of the namespace, `k=v,k=v`; else those of its Namespace object in the table.
    #[arg(long, value_name = "K=V,...")]
    pub namespace_labels: Option<String>,
    /// Write here instead of stdout (written whole, or not at all).
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
}

pub fn run(args: InjectArgs) -> anyhow::Result<()> {
    let input = if args.file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        s
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file))?
    };
    let base = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading table file {}", p.display()))?;
            table::from_text(&text).with_context(|| format!("table file {}", p.display()))?
        }
        None => table::embedded_default(),
    };
    let labels = args
        .namespace_labels
        .as_deref()
        .map(parse_labels)
        .transpose()?;
    let (out, notes) = inject_documents(&base, &input, args.namespace.as_deref(), labels.as_ref())?;
    for n in notes {
        eprintln!("{n}");
    }
    match &args.output {
        Some(path) => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let mut tmp = tempfile_in(dir)?;
            tmp.1.write_all(out.as_bytes())?;
            tmp.1.sync_all()?;
            std::fs::rename(&tmp.0, path).with_context(|| format!("writing {}", path.display()))?;
        }
        None => std::io::stdout().write_all(out.as_bytes())?,
    }
    Ok(())
}

fn tempfile_in(dir: &std::path::Path) -> anyhow::Result<(PathBuf, std::fs::File)> {
    let path = dir.join(format!(".meshrev-inject-{}.tmp", std::process::id()));
    let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok((path, f))
}

fn parse_labels(s: &str) -> anyhow::Result<HashMap<String, String>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => bail!("--namespace-labels: {p:?} is not key=value"),
        })
        .collect()
}

/// Where the pod template of a workload kind lives.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    })
}

/// Injects every pod template in a multi-document input. Returns the YAML output and notes
/// (warnings, skips) for stderr. Any invalid document fails the whole run.
pub fn inject_documents(
    base: &Table,
    input: &str,
    namespace_flag: Option<&str>,
    ns_labels: Option<&HashMap<String, String>>,
) -> anyhow::Result<(String, Vec<String>)> {
    let mut docs = Vec::new();
    let mut notes = Vec::new();
    let mut tables: HashMap<String, Table> = HashMap::new();
    for (index, doc) in crate::yaml::documents(input).enumerate() {
        let mut doc = doc.with_context(|| format!("document {index}: not valid YAML or JSON"))?;
        if doc.is_null() {
            continue;
        }
        let kind = doc["kind"].as_str().unwrap_or("").to_string();
        let name = doc["metadata"]["name"].as_str().unwrap_or("").to_string();
        let what = format!("document {index} ({kind} {name:?})");
        if kind.is_empty() {
            bail!("document {index}: missing field `kind`");
        }
        let Some(path) = template_path(&kind) else {
            docs.push(doc);
            continue;
        };
        let namespace = namespace_flag
            .or(doc["metadata"]["namespace"].as_str())
            .unwrap_or("default")
            .to_string();
        let table = match ns_labels {
            Some(l) => tables.entry(namespace.clone()).or_insert_with(|| {
                let labels = NamespaceLabels::from_labels(|k| l.get(k).map(String::as_str));
                base.with_namespaces(HashMap::from([(namespace.clone(), labels)]))
            }),
            None => base,
        };
        let api = doc["apiVersion"].as_str().unwrap_or("apps/v1").to_string();
        let mut tmpl = &mut doc;
        for p in path {
            tmpl = tmpl
                .get_mut(*p)
                .with_context(|| format!("{what}: missing field `{}`", path.join(".")))?;
        }
        if !tmpl["spec"]["containers"].is_array() {
            bail!(
                "{what}: {}spec.containers must be a list",
                path.iter().map(|p| format!("{p}.")).collect::<String>()
            );
        }
        // The pod as the API server would see it: the template plus the owner the
        // controller would set, so that the workload identity matches in-cluster injection.
        let mut pod = json!({"metadata": tmpl.get("metadata").cloned().unwrap_or(json!({})), "spec": tmpl["spec"].clone()});
        let owned = kind != "Pod";
        if owned {
            pod["metadata"]["ownerReferences"] =
                json!([{"apiVersion": api, "kind": kind, "name": name, "controller": true}]);
        } else if pod["metadata"]["name"].is_null() {
            bail!("{what}: missing field `metadata.name`");
        }
        let text = pod.to_string();
        let view: Pod = serde_json::from_str(&text)
            .with_context(|| format!("{what}: not a valid pod template"))?;
        let mut patch = Vec::new();
        match injector::inject(table, &namespace, &view, &mut patch) {
            Outcome::Injected {
                revision,
                via,
                warning,
            } => {
                let ops: json_patch::Patch = serde_json::from_slice(&patch)
                    .context("the injector must produce a valid patch")?;
                json_patch::patch(&mut pod, &ops)
                    .with_context(|| format!("{what}: applying the patch"))?;
                if owned && let Some(m) = pod["metadata"].as_object_mut() {
                    m.remove("ownerReferences");
                }
                if let Some(w) = warning {
                    notes.push(format!("warning: {what}: {w}"));
                }
                notes.push(format!(
                    "{what}: injected revision {} (tag {})",
                    revision.name,
                    via.tag()
                ));
                if let Some(t) = tmpl.as_object_mut() {
                    t.insert("metadata".into(), pod["metadata"].take());
                    t.insert("spec".into(), pod["spec"].take());
                }
            }
            Outcome::Skipped { reason, warning } => {
                if let Some(w) = warning {
                    notes.push(format!("warning: {what}: {w}"));
                }
                notes.push(format!("{what}: not injected ({})", reason.as_str()));
            }
            Outcome::Denied(m) => bail!("{what}: {m}"),
        }
        docs.push(doc);
    }
    let mut out = String::new();
    for d in &docs {
        out.push_str("---\n");
        crate::yaml::write_document(&mut out, d);
    }
    Ok((out, notes))
}
