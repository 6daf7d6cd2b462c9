//! The revision table: an immutable snapshot of revisions, tags and namespace labels.
//!
//! Ownership: a [`Table`] is built by `TableBuilder` (from a table file, or by the
//! controller from its reflector stores), never mutated afterwards, and published through a
//! [`TableStore`]. The webhook's request path only calls [`TableStore::load`]; every change
//! (a label, a tag move, a promotion) is one [`TableStore::publish`], so a request sees the
//! whole of a change or none of it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::config::{ConfigObjects, MeshRevision, MeshRevisionSpec, NamespaceObject, RevisionTag};
use crate::core::{Namespaces, Revisions, validate};
use crate::injector::RevisionTemplate;

/// Part of the table's API (namespace labels go in with [`Table::with_namespaces`] and
/// `TableBuilder::build_lenient`); defined in the core.
pub use crate::core::NamespaceLabels;

/// One revision, with its pre-rendered sidecar.
#[derive(Debug)]
pub struct Revision {
    /// The `MeshRevision`'s name (`istio.io/rev` value).
    pub(crate) name: String,
    /// Its Istio version.
    pub(crate) version: semver::Version,
    /// Its spec, as configured.
    pub(crate) spec: MeshRevisionSpec,
    pub(crate) template: RevisionTemplate,
}

impl Revision {
    /// A warning for a version newer than the newest Istio behaviour meshrev knows.
    pub(crate) fn version_warning(&self) -> Option<String> {
        let newest = crate::injector::NEWEST_MINOR;
        (self.version.major > 1 || self.version.minor > newest).then(|| {
            format!(
                "Istio {} is newer than the newest injection meshrev reproduces (1.{newest});                  its pods get 1.{newest}'s sidecar",
                self.version
            )
        })
    }
}

/// An immutable snapshot. Cheap to share (`Arc`), never mutated once published.
#[derive(Debug, Default)]
pub struct Table {
    /// Increases with every publish of a [`TableStore`]; 0 before publishing.
    pub(crate) generation: u64,
    revisions: HashMap<String, Arc<Revision>>,
    /// tag → revision.
    tags: HashMap<String, Arc<Revision>>,
    /// namespace name → its injection labels (only namespaces that have any).
    namespaces: Arc<HashMap<String, NamespaceLabels>>,
    /// Whether every node's kubelet runs native sidecars (Kubernetes 1.33+), as Istio's
    /// `auto` decides; `None` outside a cluster (file tables, `meshrev inject`), where a
    /// revision's version decides alone.
    pub(crate) nodes_support_native_sidecars: Option<bool>,
    /// Revision name → the AdmissionReview warning for its pods while its control plane
    /// (istiod Deployment) is not ready, rendered by the controller when it builds the
    /// table (`controller::Index::table`); empty outside a cluster and while every control
    /// plane is ready. The controller republishes when a revision's readiness changes.
    pub(crate) control_plane_warnings: HashMap<String, Box<str>>,
}

impl Table {
    pub(crate) fn revision(&self, name: &str) -> Option<&Arc<Revision>> {
        self.revisions.get(name)
    }
    #[cfg(test)]
    pub(crate) fn tag(&self, name: &str) -> Option<&Arc<Revision>> {
        self.tags.get(name)
    }
    /// The tag's own (table-owned) name and its revision.
    pub(crate) fn tag_entry(&self, name: &str) -> Option<(&str, &Arc<Revision>)> {
        self.tags.get_key_value(name).map(|(k, v)| (k.as_str(), v))
    }
    pub(crate) fn namespace(&self, name: &str) -> Option<&NamespaceLabels> {
        self.namespaces.get(name)
    }
    pub(crate) fn revisions(&self) -> impl Iterator<Item = &Arc<Revision>> {
        self.revisions.values()
    }
    /// Tags sorted by name, with the revision each points at.
    pub fn tags(&self) -> BTreeMap<&str, &str> {
        self.tags
            .iter()
            .map(|(t, r)| (t.as_str(), r.name.as_str()))
            .collect()
    }
    pub(crate) fn revision_count(&self) -> usize {
        self.revisions.len()
    }
    /// The warning for a pod injected with `revision` while its control plane is not ready.
    /// The request path's cost when every control plane is ready: one `is_empty`.
    #[inline]
    pub(crate) fn control_plane_warning(&self, revision: &str) -> Option<&str> {
        if self.control_plane_warnings.is_empty() {
            return None;
        }
        self.control_plane_warnings.get(revision).map(|w| &**w)
    }
    /// The same table with other namespace labels: revisions and tags are shared, not
    /// re-rendered.
    pub fn with_namespaces(&self, namespaces: HashMap<String, NamespaceLabels>) -> Table {
        Table {
            generation: self.generation,
            revisions: self.revisions.clone(),
            tags: self.tags.clone(),
            namespaces: Arc::new(namespaces),
            nodes_support_native_sidecars: self.nodes_support_native_sidecars,
            control_plane_warnings: self.control_plane_warnings.clone(),
        }
    }
}

/// Routing resolves names against the table's revisions and tags ([`crate::core::route()`]).
impl Revisions for Table {
    type Revision = Arc<Revision>;
    fn tag(&self, name: &str) -> Option<(&str, &Arc<Revision>)> {
        self.tag_entry(name)
    }
    fn revision(&self, name: &str) -> Option<&Arc<Revision>> {
        Table::revision(self, name)
    }
}

impl Namespaces for Table {
    fn namespace_labels(&self, namespace: &str) -> Option<&NamespaceLabels> {
        self.namespace(namespace)
    }
}

/// The kinds of configuration object a table is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ConfigKind {
    /// A `MeshRevision`.
    MeshRevision,
    /// A `RevisionTag`.
    RevisionTag,
}

impl ConfigKind {
    /// The Kubernetes kind, as it appears in messages and objects.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ConfigKind::MeshRevision => "MeshRevision",
            ConfigKind::RevisionTag => "RevisionTag",
        }
    }
}

impl std::fmt::Display for ConfigKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something wrong with one configuration object. The message names the object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?}: {message}")]
pub struct Problem {
    /// The object's kind.
    pub(crate) kind: ConfigKind,
    /// The object's name.
    pub(crate) name: String,
    /// What is wrong with it.
    pub(crate) message: String,
}

/// A table file or object set that does not build. Lists every problem.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
pub struct BuildError(pub Vec<Problem>);

/// Builds tables and keeps rendered revisions between builds, so that a tag or label change
/// does not re-render sidecars. Owned by whoever feeds configuration in (the table-file
/// loader or the controller); not shared.
#[derive(Default)]
pub(crate) struct TableBuilder {
    cache: HashMap<String, Arc<Revision>>,
}

impl TableBuilder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Builds leniently: invalid objects are left out and returned as problems, the rest
    /// still builds (the controller's mode: one bad object must not break injection).
    pub(crate) fn build_lenient<'a>(
        &mut self,
        revisions: impl IntoIterator<Item = &'a MeshRevision>,
        tags: impl IntoIterator<Item = &'a RevisionTag>,
        namespaces: HashMap<String, NamespaceLabels>,
    ) -> (Table, Vec<Problem>) {
        let mut problems = Vec::new();
        let mut revs: HashMap<String, Arc<Revision>> = HashMap::new();
        for r in revisions {
            let name = r.metadata.name.clone().unwrap_or_default();
            if revs.contains_key(&name) {
                problems.push(problem(
                    ConfigKind::MeshRevision,
                    &name,
                    "defined twice".into(),
                ));
                continue;
            }
            match self.revision(&name, &r.spec) {
                Ok(rev) => {
                    revs.insert(name, rev);
                }
                Err(message) => problems.push(problem(ConfigKind::MeshRevision, &name, message)),
            }
        }
        let mut tag_map = HashMap::new();
        for t in tags {
            let name = t.metadata.name.clone().unwrap_or_default();
            if let Err(message) = tag_problem(&name, &t.spec.revision, &revs, &tag_map) {
                problems.push(problem(ConfigKind::RevisionTag, &name, message));
            } else if let Some(rev) = revs.get(&t.spec.revision) {
                tag_map.insert(name, rev.clone());
            }
        }
        self.cache = revs.clone();
        let table = Table {
            generation: 0,
            revisions: revs,
            tags: tag_map,
            namespaces: Arc::new(namespaces),
            nodes_support_native_sidecars: None,
            control_plane_warnings: HashMap::new(),
        };
        (table, problems)
    }

    /// Builds strictly: any problem fails the build (the table-file mode).
    pub(crate) fn build(&mut self, objects: &ConfigObjects) -> Result<Table, BuildError> {
        let (table, problems) = self.build_lenient(
            &objects.revisions,
            &objects.tags,
            namespace_map(&objects.namespaces),
        );
        if problems.is_empty() {
            Ok(table)
        } else {
            Err(BuildError(problems))
        }
    }

    fn revision(&self, name: &str, spec: &MeshRevisionSpec) -> Result<Arc<Revision>, String> {
        if let Some(cached) = self.cache.get(name)
            && cached.spec == *spec
        {
            return Ok(cached.clone());
        }
        validate::name(name).map_err(|e| e.to_string())?;
        let version = validate::version(&spec.version).map_err(|e| format!("spec.{e}"))?;
        if version.major < 1
            || (version.major == 1 && version.minor < crate::injector::OLDEST_MINOR)
        {
            return Err(format!(
                "spec.version {} is older than meshrev reproduces: Istio 1.{} through 1.{}                  (newer versions get 1.{}'s sidecar, with a warning)",
                spec.version,
                crate::injector::OLDEST_MINOR,
                crate::injector::NEWEST_MINOR,
                crate::injector::NEWEST_MINOR
            ));
        }
        if let Some(img) = &spec.proxy_image {
            validate::image(img).map_err(|e| format!("spec.proxyImage {e}"))?;
        }
        if let Some(res) = spec.template.as_ref().and_then(|t| t.resources.as_ref()) {
            for (k, v) in res.requests.iter().chain(&res.limits) {
                validate::quantity(v).map_err(|_| {
                    format!("spec.template.resources {k}={v:?} is not a Kubernetes quantity")
                })?;
            }
        }
        Ok(Arc::new(Revision {
            name: name.to_string(),
            version,
            spec: spec.clone(),
            template: RevisionTemplate::render(name, spec),
        }))
    }
}

/// Why a table file's text did not become a table. The message is the underlying error's.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// The text is not a valid set of configuration objects.
    #[error(transparent)]
    Parse(#[from] crate::config::ParseError),
    /// The objects do not make a table (every problem listed).
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Builds a table from a table file's text (strict).
pub fn from_text(text: &str) -> Result<Table, TextError> {
    let objects = crate::config::parse_objects(text)?;
    Ok(TableBuilder::new().build(&objects)?)
}

/// The embedded default table.
pub fn embedded_default() -> Table {
    from_text(crate::config::EMBEDDED_DEFAULT).expect("the embedded default table must build")
}

/// Namespace objects → the router's view of them.
pub(crate) fn namespace_map(namespaces: &[NamespaceObject]) -> HashMap<String, NamespaceLabels> {
    namespaces
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                NamespaceLabels::from_labels(|k| n.labels.get(k).map(String::as_str)),
            )
        })
        .filter(|(_, l)| !l.is_empty())
        .collect()
}

/// Why a tag cannot go into the table, if it cannot.
fn tag_problem(
    name: &str,
    target: &str,
    revs: &HashMap<String, Arc<Revision>>,
    tags: &HashMap<String, Arc<Revision>>,
) -> Result<(), String> {
    validate::name(name).map_err(|e| e.to_string())?;
    if tags.contains_key(name) {
        return Err("defined twice".into());
    }
    if revs.contains_key(name) {
        return Err(format!(
            "a MeshRevision is named {name:?} too; a tag must not shadow a revision (rename the tag)"
        ));
    }
    if !revs.contains_key(target) {
        return Err(format!(
            "spec.revision {target:?} names no MeshRevision (create it first, or point the tag at one of: {})",
            sorted_names(revs)
        ));
    }
    Ok(())
}

fn problem(kind: ConfigKind, name: &str, message: String) -> Problem {
    Problem {
        kind,
        name: name.to_string(),
        message,
    }
}

fn sorted_names(revs: &HashMap<String, Arc<Revision>>) -> String {
    let mut v: Vec<&str> = revs.keys().map(String::as_str).collect();
    v.sort();
    if v.is_empty() {
        "none defined".into()
    } else {
        v.join(", ")
    }
}

/// Publishes tables. Shared by the server (readers) and whoever loads configuration
/// (the single writer: the table-file watcher or the controller).
pub struct TableStore {
    current: ArcSwap<Table>,
    generation: AtomicU64,
}

impl TableStore {
    pub(crate) fn new(mut table: Table) -> Self {
        table.generation = 1;
        TableStore {
            current: ArcSwap::from_pointee(table),
            generation: AtomicU64::new(1),
        }
    }
    /// The current table. The request path's only access.
    pub fn load(&self) -> arc_swap::Guard<Arc<Table>> {
        self.current.load()
    }
    pub(crate) fn load_full(&self) -> Arc<Table> {
        self.current.load_full()
    }
    /// Publishes `table` as the next generation with one atomic store.
    pub fn publish(&self, mut table: Table) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        table.generation = generation;
        self.current.store(Arc::new(table));
        generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_objects;

    fn table(text: &str) -> Result<Table, BuildError> {
        TableBuilder::new().build(&parse_objects(text).unwrap())
    }

    const REV: &str = "apiVersion: meshrev.io/v1alpha1\nkind: MeshRevision\nmetadata: {name: 1-22-6}\nspec: {version: 1.22.6}\n---\n";

    #[test]
    fn default_table_resolves_tags() {
        let t = embedded_default();
        assert_eq!(t.tag("stable").unwrap().name, "1-22-6");
        assert_eq!(t.tag("canary").unwrap().name, "1-23-6");
        assert_eq!(
            t.revision("1-23-6").unwrap().version,
            semver::Version::new(1, 23, 6)
        );
    }

    #[test]
    fn tag_to_missing_revision_is_named() {
        let e = table(&format!("{REV}apiVersion: meshrev.io/v1alpha1\nkind: RevisionTag\nmetadata: {{name: canary}}\nspec: {{revision: 1-99-0}}\n")).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("RevisionTag \"canary\""), "{s}");
        assert!(s.contains("1-99-0") && s.contains("1-22-6"), "{s}");
    }

    #[test]
    fn tag_shadowing_revision_is_refused() {
        let e = table(&format!("{REV}apiVersion: meshrev.io/v1alpha1\nkind: RevisionTag\nmetadata: {{name: 1-22-6}}\nspec: {{revision: 1-22-6}}\n")).unwrap_err();
        assert!(e.to_string().contains("shadow"), "{e}");
    }

    #[test]
    fn invalid_version_is_named() {
        let e = table("apiVersion: meshrev.io/v1alpha1\nkind: MeshRevision\nmetadata: {name: x}\nspec: {version: one}\n").unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("MeshRevision \"x\"") && s.contains("spec.version"),
            "{s}"
        );
    }

    #[test]
    fn versions_outside_the_known_range() {
        let rev = |v: &str| {
            format!(
                "apiVersion: meshrev.io/v1alpha1\nkind: MeshRevision\nmetadata: {{name: x}}\nspec: {{version: \"{v}\"}}\n"
            )
        };
        let e = table(&rev("1.21.9")).unwrap_err().to_string();
        assert!(e.contains("1.22 through 1.30"), "{e}");
        let t = table(&rev("1.31.0")).expect("a newer version is served");
        let w = t
            .revision("x")
            .unwrap()
            .version_warning()
            .expect("with a warning");
        assert!(w.contains("1.30"), "{w}");
        assert!(
            table(&rev("1.30.3"))
                .unwrap()
                .revision("x")
                .unwrap()
                .version_warning()
                .is_none()
        );
    }

    #[test]
    fn lenient_build_keeps_the_good_objects() {
        let objs = parse_objects(&format!("{REV}apiVersion: meshrev.io/v1alpha1\nkind: RevisionTag\nmetadata: {{name: stable}}\nspec: {{revision: 1-22-6}}\n---\napiVersion: meshrev.io/v1alpha1\nkind: RevisionTag\nmetadata: {{name: canary}}\nspec: {{revision: nope}}\n")).unwrap();
        let (t, problems) =
            TableBuilder::new().build_lenient(&objs.revisions, &objs.tags, HashMap::new());
        assert_eq!(problems.len(), 1);
        assert!(t.tag("stable").is_some());
        assert!(t.tag("canary").is_none());
    }

    #[test]
    fn rebuild_reuses_rendered_revisions() {
        let objs = parse_objects(crate::config::EMBEDDED_DEFAULT).unwrap();
        let mut b = TableBuilder::new();
        let t1 = b.build(&objs).unwrap();
        let t2 = b.build(&objs).unwrap();
        assert!(Arc::ptr_eq(
            t1.revision("1-22-6").unwrap(),
            t2.revision("1-22-6").unwrap()
        ));
    }

    #[test]
    fn publish_is_one_swap_with_increasing_generation() {
        let store = TableStore::new(embedded_default());
        let before = store.load_full();
        let g = store.publish(embedded_default());
        assert_eq!(before.generation, 1);
        assert_eq!(g, 2);
        assert_eq!(store.load().generation, 2);
    }
}
