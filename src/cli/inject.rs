//! `meshrev inject`: the webhook's injection, offline, for manifests.
//!
//! One document at a time: parse it, inject every pod template in it, write it. Memory is
//! the input text plus one document; time is linear in the input. A document that cannot
//! be injected fails the run with an error naming the document, the object and the field,
//! and nothing is written: `-o FILE` is replaced whole or not at all, and stdout gets
//! nothing because the output is spooled to an unlinked temporary file until the end.

use std::collections::HashMap;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};

use crate::injector::pod::Pod;
use crate::router::{self, Outcome};
use crate::table::{self, NamespaceLabels, Table};
use crate::yaml;

#[derive(clap::Args, Debug)]
pub(crate) struct InjectArgs {
    /// Manifests to inject: a file of multi-document YAML or JSON, or `-` for stdin.
    #[arg(short = 'f', long = "filename")]
    pub(crate) file: String,
    /// A table file (MeshRevision, RevisionTag and Namespace objects). Default: the
    /// embedded table (stable → 1-22-6, canary → 1-23-6).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Namespace of objects that do not name one (default: `default`); also overrides theirs.
    #[arg(short = 'n', long)]
    pub(crate) namespace: Option<String>,
    /// Labels of the namespace, `k=v,k=v`; else those of its Namespace object in the table.
    #[arg(long, value_name = "K=V,...")]
    pub(crate) namespace_labels: Option<String>,
    /// Write here instead of stdout (written whole, or not at all).
    #[arg(short = 'o', long)]
    pub(crate) output: Option<PathBuf>,
}

pub(crate) fn run(args: InjectArgs) -> anyhow::Result<()> {
    // Refuse a bad `-o` before doing any work.
    if let Some(path) = &args.output {
        output_dir(path)?;
    }
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
    let ns = args.namespace.as_deref();
    let mut note = |n: String| eprintln!("{n}");
    match &args.output {
        Some(path) => write_whole(path, |w| {
            inject_stream(&base, &input, ns, labels.as_ref(), w, &mut note)
        }),
        None => {
            // A pipe into `kubectl apply -f -` would apply the documents before a bad one:
            // spool the output to an unlinked temporary file (nothing can be left behind)
            // and copy it to stdout once every document is done.
            let mut out = std::io::stdout().lock();
            match spool() {
                Ok(mut file) => {
                    let mut w = BufWriter::new(&file);
                    inject_stream(&base, &input, ns, labels.as_ref(), &mut w, &mut note)?;
                    w.flush().context("writing the spool file")?;
                    drop(w);
                    file.seek(SeekFrom::Start(0))
                        .context("reading the spool file")?;
                    std::io::copy(&mut file, &mut out).context("writing to stdout")?;
                }
                Err(_) => {
                    // No temporary directory: check every document first, then print.
                    inject_stream(
                        &base,
                        &input,
                        ns,
                        labels.as_ref(),
                        &mut std::io::sink(),
                        &mut |_| {},
                    )?;
                    let mut w = BufWriter::new(&mut out);
                    inject_stream(&base, &input, ns, labels.as_ref(), &mut w, &mut note)?;
                    w.flush().context("writing to stdout")?;
                }
            }
            out.flush().context("writing to stdout")
        }
    }
}

/// An anonymous read-write file in the temporary directory (unlinked at once).
fn spool() -> anyhow::Result<std::fs::File> {
    let mut tmp = TempFile::create_in(&std::env::temp_dir())?;
    let file = tmp.file.take().context("temporary file")?;
    std::fs::remove_file(&tmp.path).with_context(|| format!("removing {}", tmp.path.display()))?;
    Ok(file)
}

/// The directory `-o PATH` will be written in; an error naming the fix when it cannot be.
fn output_dir(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_dir() {
        bail!(
            "-o {}: is a directory; give a file path, e.g. -o {}",
            path.display(),
            path.join("injected.yaml").display()
        );
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        bail!(
            "-o {}: directory {} does not exist; create it first",
            path.display(),
            dir.display()
        );
    }
    Ok(dir.to_path_buf())
}

/// A temporary file next to the output, removed on drop unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl TempFile {
    fn create_in(dir: &Path) -> anyhow::Result<TempFile> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut last = None;
        for attempt in 0..16u32 {
            let path = dir.join(format!(
                ".meshrev-inject-{}-{nanos:x}-{attempt}.tmp",
                std::process::id()
            ));
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        file: Some(file),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("creating a temporary file in {}", dir.display())
                    });
                }
            }
        }
        Err(anyhow::anyhow!("{last:?}"))
            .with_context(|| format!("creating a temporary file in {}", dir.display()))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `path` whole or not at all: into a temporary file beside it, renamed over it
/// when `write` succeeded; on any failure the temporary file is removed.
fn write_whole(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = output_dir(path)?;
    let mut tmp = TempFile::create_in(&dir)?;
    let file = tmp.file.as_ref().context("temporary file")?;
    let mut w = BufWriter::new(file);
    write(&mut w)?;
    w.flush()
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.path.display()))?;
    drop(w);
    std::fs::rename(&tmp.path, path).with_context(|| format!("writing {}", path.display()))?;
    tmp.file = None; // renamed: nothing to remove
    Ok(())
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

/// Where the pod template of a workload kind lives, or `None` for kinds passed through.
fn template_path(kind: &str, api_version: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        // OpenShift; `v1` is its pre-3.6 legacy group.
        "DeploymentConfig" if matches!(api_version, "apps.openshift.io/v1" | "v1") => {
            &["spec", "template"]
        }
        _ => return None,
    })
}

/// Injects every pod template in a multi-document input. Returns the YAML output and notes
/// (warnings, skips) for stderr. Any invalid document fails the whole run.
///
/// A wrapper over `inject_stream` that keeps the whole output in memory.
pub fn inject_documents(
    base: &Table,
    input: &str,
    namespace_flag: Option<&str>,
    ns_labels: Option<&HashMap<String, String>>,
) -> anyhow::Result<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    inject_stream(base, input, namespace_flag, ns_labels, &mut out, &mut |n| {
        notes.push(n)
    })?;
    let out = String::from_utf8(out).context("the output must be UTF-8")?;
    Ok((out, notes))
}

/// Injects a multi-document input one document at a time: each is parsed, injected and
/// written to `out` before the next is read. Notes (warnings, skips) go to `note`. The
/// first invalid document stops the run; what was written before it stays written.
pub(crate) fn inject_stream(
    base: &Table,
    input: &str,
    namespace_flag: Option<&str>,
    ns_labels: Option<&HashMap<String, String>>,
    out: &mut dyn Write,
    note: &mut dyn FnMut(String),
) -> anyhow::Result<()> {
    let mut walker = Walker {
        base,
        namespace_flag,
        ns_labels,
        tables: HashMap::new(),
        note,
    };
    let mut buf = String::new();
    for (index, doc) in yaml::documents(input).enumerate() {
        let mut doc = doc.with_context(|| format!("document {index}: not valid YAML or JSON"))?;
        if doc.is_null() {
            continue; // an empty document, e.g. a trailing `---`
        }
        walker.object(&mut doc, &format!("document {index}"))?;
        buf.clear();
        buf.push_str("---\n");
        yaml::write_document(&mut buf, &doc);
        out.write_all(buf.as_bytes())
            .context("writing the output")?;
    }
    Ok(())
}

struct Walker<'a, 'n> {
    base: &'a Table,
    namespace_flag: Option<&'a str>,
    ns_labels: Option<&'a HashMap<String, String>>,
    /// With `--namespace-labels`: the base table plus that namespace, per namespace.
    tables: HashMap<String, Table>,
    note: &'n mut dyn FnMut(String),
}

/// `a string`, `a list`, … for error messages.
fn a(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// The string at `field` of `m`: `Ok(None)` when absent or null, an error when not a string.
fn opt_str<'v>(
    m: &'v Map<String, Value>,
    field: &str,
    what: &str,
    path: &str,
) -> anyhow::Result<Option<&'v str>> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => bail!("{what}: field `{path}` must be a string, found {}", a(v)),
    }
}

impl Walker<'_, '_> {
    /// One Kubernetes object (a document, or an item of a `List`): injected in place.
    fn object(&mut self, doc: &mut Value, at: &str) -> anyhow::Result<()> {
        let Some(obj) = doc.as_object() else {
            bail!(
                "{at}: not a Kubernetes object: expected a mapping with `apiVersion` and `kind`, found {}",
                a(doc)
            );
        };
        let kind = match obj.get("kind") {
            None | Some(Value::Null) => bail!("{at}: missing field `kind`"),
            Some(Value::String(k)) if !k.is_empty() => k.clone(),
            Some(v) => bail!(
                "{at}: field `kind` must be a non-empty string, found {}",
                a(v)
            ),
        };
        let meta = match obj.get("metadata") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(v) => bail!(
                "{at} ({kind}): field `metadata` must be a mapping, found {}",
                a(v)
            ),
        };
        let here = format!("{at} ({kind})");
        let (name, namespace) = match meta {
            Some(m) => (
                opt_str(m, "name", &here, "metadata.name")?
                    .unwrap_or("")
                    .to_string(),
                opt_str(m, "namespace", &here, "metadata.namespace")?.map(str::to_string),
            ),
            None => (String::new(), None),
        };
        let api = opt_str(obj, "apiVersion", &here, "apiVersion")?
            .unwrap_or("")
            .to_string();
        let what = if name.is_empty() {
            here
        } else {
            format!("{at} ({kind} {name:?})")
        };
        if kind == "List" {
            return match doc.get_mut("items") {
                None | Some(Value::Null) => Ok(()),
                Some(Value::Array(items)) => {
                    for (i, item) in items.iter_mut().enumerate() {
                        self.object(item, &format!("{what} item {i}"))?;
                    }
                    Ok(())
                }
                Some(v) => bail!("{what}: field `items` must be a list, found {}", a(v)),
            };
        }
        let Some(path) = template_path(&kind, &api) else {
            return Ok(()); // not a workload: passed through
        };
        let namespace = self
            .namespace_flag
            .map(str::to_string)
            .or(namespace)
            .unwrap_or_else(|| "default".to_string());

        // Istio's kube-inject reads and writes a CronJob's pod metadata at
        // `spec.jobTemplate.metadata` (its golden `cronjob.yaml.injected`), not on the pod
        // template: so does meshrev, for the same output. (In a cluster the webhook sees the
        // pods themselves, and this does not arise.)
        let cron_meta = if kind == "CronJob" {
            match doc.pointer_mut("/spec/jobTemplate/metadata") {
                None | Some(Value::Null) => Some(None),
                Some(Value::Object(m)) => Some(Some(std::mem::take(m))),
                Some(v) => bail!(
                    "{what}: field `spec.jobTemplate.metadata` must be a mapping, found {}",
                    a(v)
                ),
            }
        } else {
            None
        };

        // Walk to the pod template, naming the first field that is missing or no mapping.
        let mut tmpl = &mut *doc;
        let mut walked = String::new();
        for p in path {
            if !walked.is_empty() {
                walked.push('.');
            }
            walked.push_str(p);
            let next = match tmpl.get_mut(*p) {
                None | Some(Value::Null) => bail!("{what}: missing field `{walked}`"),
                Some(v) => v,
            };
            if !next.is_object() {
                bail!(
                    "{what}: field `{walked}` must be a mapping, found {}",
                    a(next)
                );
            }
            tmpl = next;
        }
        let prefix: String = path.iter().map(|p| format!("{p}.")).collect();
        check_template(tmpl, &what, &prefix, kind == "Pod")?;
        let Some(t) = tmpl.as_object_mut() else {
            bail!("{what}: the pod template must be a mapping");
        };

        // The pod as the API server would see it: the template plus the owner the
        // controller would set, so that the workload identity matches in-cluster injection.
        let mut meta = match &cron_meta {
            Some(m) => m.clone().unwrap_or_default(),
            None => match t.get_mut("metadata").map(Value::take) {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            },
        };
        let spec = t.get_mut("spec").map(Value::take).unwrap_or(Value::Null);
        let owned = kind != "Pod";
        let own_refs = if owned {
            meta.insert(
                "ownerReferences".into(),
                json!([{"apiVersion": if api.is_empty() { "apps/v1" } else { api.as_str() }, "kind": kind, "name": name, "controller": true}]),
            )
        } else {
            None
        };
        let mut pod = json!({"metadata": meta, "spec": spec});
        let outcome = self.inject_pod(&mut pod, &namespace, &what);
        // Put the template back (injected or not), without the owner reference we added.
        let (mut meta, spec) = match pod {
            Value::Object(mut p) => (
                p.remove("metadata").unwrap_or(Value::Null),
                p.remove("spec").unwrap_or(Value::Null),
            ),
            _ => (Value::Null, Value::Null),
        };
        if owned && let Some(m) = meta.as_object_mut() {
            match own_refs {
                Some(orig) => m.insert("ownerReferences".into(), orig),
                None => m.remove("ownerReferences"),
            };
        }
        t.insert("spec".into(), spec);
        match cron_meta {
            None => {
                let template_had_metadata = t.contains_key("metadata");
                if template_had_metadata || meta.as_object().is_some_and(|m| !m.is_empty()) {
                    t.insert("metadata".into(), meta);
                }
            }
            Some(had) => {
                if let Some(job) = doc
                    .pointer_mut("/spec/jobTemplate")
                    .and_then(Value::as_object_mut)
                    && (had.is_some() || meta.as_object().is_some_and(|m| !m.is_empty()))
                {
                    job.insert("metadata".into(), meta);
                }
            }
        }
        outcome
    }

    /// Injects `pod` (`{"metadata": …, "spec": …}`) in place, as the webhook would.
    fn inject_pod(&mut self, pod: &mut Value, namespace: &str, what: &str) -> anyhow::Result<()> {
        let table = match self.ns_labels {
            Some(l) => self.tables.entry(namespace.to_string()).or_insert_with(|| {
                let labels = NamespaceLabels::from_labels(|k| l.get(k).map(String::as_str));
                self.base
                    .with_namespaces(HashMap::from([(namespace.to_string(), labels)]))
            }),
            None => self.base,
        };
        let text = pod.to_string();
        let view: Pod = serde_json::from_str(&text)
            .with_context(|| format!("{what}: not a valid pod template"))?;
        let mut patch = Vec::new();
        match router::inject(table, namespace, &view, &mut patch, || Some(pod.clone())) {
            Outcome::Injected {
                revision,
                via,
                warning,
            } => {
                let ops: json_patch::Patch = serde_json::from_slice(&patch)
                    .context("the injector must produce a valid patch")?;
                json_patch::patch(pod, &ops)
                    .with_context(|| format!("{what}: applying the patch"))?;
                if let Some(w) = warning {
                    (self.note)(format!("warning: {what}: {w}"));
                }
                (self.note)(format!(
                    "{what}: injected revision {} (tag {})",
                    revision.name,
                    via.tag()
                ));
                Ok(())
            }
            Outcome::Skipped { reason, warning } => {
                if let Some(w) = warning {
                    (self.note)(format!("warning: {what}: {w}"));
                }
                (self.note)(format!("{what}: not injected ({})", reason.as_str()));
                Ok(())
            }
            Outcome::Denied(m) => bail!("{what}: {m}"),
        }
    }
}

/// The fields of a pod template that injection reads must have the right shape; the error
/// names the first that does not (`spec.template.metadata.labels.app`, …).
fn check_template(tmpl: &Value, what: &str, prefix: &str, is_pod: bool) -> anyhow::Result<()> {
    let Some(t) = tmpl.as_object() else {
        bail!(
            "{what}: the pod template must be a mapping, found {}",
            a(tmpl)
        );
    };
    match t.get("metadata") {
        None | Some(Value::Null) => {
            if is_pod {
                bail!("{what}: missing field `metadata.name` (or `metadata.generateName`)");
            }
        }
        Some(Value::Object(m)) => {
            for f in ["name", "generateName", "namespace"] {
                opt_str(m, f, what, &format!("{prefix}metadata.{f}"))?;
            }
            if is_pod
                && opt_str(m, "name", what, "metadata.name")?.is_none()
                && opt_str(m, "generateName", what, "metadata.generateName")?.is_none()
            {
                bail!("{what}: missing field `metadata.name` (or `metadata.generateName`)");
            }
            for f in ["labels", "annotations"] {
                match m.get(f) {
                    None | Some(Value::Null) => {}
                    Some(Value::Object(kv)) => {
                        for (k, v) in kv {
                            if !v.is_string() {
                                bail!(
                                    "{what}: field `{prefix}metadata.{f}.{k}` must be a string, found {} (quote it)",
                                    a(v)
                                );
                            }
                        }
                    }
                    Some(v) => bail!(
                        "{what}: field `{prefix}metadata.{f}` must be a mapping, found {}",
                        a(v)
                    ),
                }
            }
        }
        Some(v) => bail!(
            "{what}: field `{prefix}metadata` must be a mapping, found {}",
            a(v)
        ),
    }
    let spec = match t.get("spec") {
        None | Some(Value::Null) => bail!("{what}: missing field `{prefix}spec`"),
        Some(Value::Object(s)) => s,
        Some(v) => bail!(
            "{what}: field `{prefix}spec` must be a mapping, found {}",
            a(v)
        ),
    };
    match spec.get("hostNetwork") {
        None | Some(Value::Null | Value::Bool(_)) => {}
        Some(v) => bail!(
            "{what}: field `{prefix}spec.hostNetwork` must be a boolean, found {}",
            a(v)
        ),
    }
    for (f, required) in [
        ("containers", true),
        ("initContainers", false),
        ("volumes", false),
    ] {
        let items = match spec.get(f) {
            None | Some(Value::Null) if !required => continue,
            Some(Value::Array(items)) => items,
            _ => bail!("{what}: {prefix}spec.{f} must be a list"),
        };
        for (i, item) in items.iter().enumerate() {
            let Some(m) = item.as_object() else {
                bail!(
                    "{what}: field `{prefix}spec.{f}[{i}]` must be a mapping, found {}",
                    a(item)
                );
            };
            if opt_str(m, "name", what, &format!("{prefix}spec.{f}[{i}].name"))?.is_none() {
                bail!("{what}: missing field `{prefix}spec.{f}[{i}].name`");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
