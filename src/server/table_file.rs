//! `--config TABLE`: serve a table file and reload it when its content changes.
//!
//! Like the certificates, the file is polled (ConfigMap volumes also change by a symlink
//! swap). One [`TableBuilder`] is kept across reloads, so revisions whose spec did not
//! change are not re-rendered.
//!
//! A changed file is published only when it cannot be a file caught mid-write:
//! - its content and modification time are the same across two reads [`settle`] apart
//!   (a file being rewritten in place — truncated, then written — changes between them);
//! - it parses completely and builds;
//! - it holds at least one `MeshRevision` (an empty file or a lone `---` is what a
//!   truncated file looks like; a table without revisions injects nothing).
//!
//! Every refusal is logged and counted (`meshrev_table_reloads_total{result="failure"}`)
//! and the last good table stays. A file that was still changing is read again at the next
//! poll; a file that is complete but invalid is not retried until it changes again.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::metrics::Metrics;
use crate::config::ParseError;
use crate::table::{BuildError, Table, TableBuilder, TableStore};

/// Why a table file was not served.
#[derive(Debug, thiserror::Error)]
pub enum TableFileError {
    #[error("reading table file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("table file {}: {source}", path.display())]
    Unusable { path: PathBuf, source: ReadError },
    #[error("table file {}", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: BuildFileError,
    },
}

/// Why a table file's content does not make a table.
#[derive(Debug, thiserror::Error)]
pub enum BuildFileError {
    #[error("not UTF-8 text: {0}")]
    NotUtf8(std::str::Utf8Error),
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(
        "no MeshRevision in it ({0} bytes: an empty or cut-off file?); a table file needs at least one MeshRevision"
    )]
    NoRevision(usize),
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// The gap between the two reads of a changed file: half the poll interval, at most 250ms.
pub(super) fn settle(interval: Duration) -> Duration {
    (interval / 2).min(Duration::from_millis(250))
}

/// One read of the file: its content and what `stat` said just before.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Snapshot {
    pub(crate) content: Vec<u8>,
    pub(crate) modified: Option<SystemTime>,
    pub(crate) len: u64,
}

/// Reads `path` (stat first, then the content).
pub(super) fn snapshot(path: &Path) -> io::Result<Snapshot> {
    let meta = std::fs::metadata(path)?;
    let content = std::fs::read(path)?;
    Ok(Snapshot {
        content,
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

/// Why a read was not usable.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    /// The file changed between the two reads: it is probably being written.
    Unstable,
}

impl std::error::Error for ReadError {}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Unstable => f.write_str(
                "the file changed while it was being read (still being written?); it is read again at the next poll — write table files by a rename, not in place",
            ),
        }
    }
}

/// The second read of a changed file, `pause` after `first`: the content if the file did
/// not change in between.
pub(super) fn confirm(
    first: Snapshot,
    read: &mut dyn FnMut() -> io::Result<Snapshot>,
    pause: &dyn Fn(),
) -> Result<Vec<u8>, ReadError> {
    pause();
    let second = read().map_err(ReadError::Io)?;
    if second != first {
        return Err(ReadError::Unstable);
    }
    Ok(second.content)
}

/// Reads and builds the table file at startup (a file still changing is read again, a few
/// times). Returns the table and the content it was built from.
pub(super) fn load(
    path: &Path,
    builder: &mut TableBuilder,
    interval: Duration,
) -> Result<(Table, Vec<u8>), TableFileError> {
    let pause = settle(interval).max(Duration::from_millis(20));
    let mut attempts = 0;
    let content = loop {
        attempts += 1;
        let mut read = || snapshot(path);
        let first = read().map_err(|source| TableFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        match confirm(first, &mut read, &|| std::thread::sleep(pause)) {
            Ok(c) => break c,
            Err(ReadError::Unstable) if attempts < 5 => continue,
            Err(source) => {
                return Err(TableFileError::Unusable {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    };
    let table = build(&content, builder).map_err(|source| TableFileError::Invalid {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((table, content))
}

fn build(content: &[u8], builder: &mut TableBuilder) -> Result<Table, BuildFileError> {
    let text = std::str::from_utf8(content).map_err(BuildFileError::NotUtf8)?;
    let objects = crate::config::parse_objects(text)?;
    if objects.revisions.is_empty() {
        return Err(BuildFileError::NoRevision(content.len()));
    }
    Ok(builder.build(&objects)?)
}

/// What one poll found.
enum Poll {
    Unchanged,
    Changed(Vec<u8>),
    Failed(ReadError),
}

/// Polls `path` every `interval`; publishes a new table when the content changes, is
/// stable across two reads, and builds.
pub(super) async fn watch(
    path: PathBuf,
    initial: Vec<u8>,
    mut builder: TableBuilder,
    interval: Duration,
    store: Arc<TableStore>,
    metrics: Arc<Metrics>,
) {
    let pause = settle(interval);
    // `None`: the file could not be read.
    let mut seen = Some(initial);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let p = path.clone();
        let last = seen.clone();
        let polled = tokio::task::spawn_blocking(move || {
            let mut read = || snapshot(&p);
            let first = match read() {
                Ok(s) => s,
                Err(e) => return Poll::Failed(ReadError::Io(e)),
            };
            if last.as_ref() == Some(&first.content) {
                return Poll::Unchanged;
            }
            match confirm(first, &mut read, &|| std::thread::sleep(pause)) {
                Ok(c) => Poll::Changed(c),
                Err(e) => Poll::Failed(e),
            }
        })
        .await;
        let content = match polled {
            Ok(Poll::Unchanged) | Err(_) => continue,
            Ok(Poll::Changed(c)) => c,
            Ok(Poll::Failed(ReadError::Unstable)) => {
                metrics.table_reloads.count(false);
                tracing::warn!(
                    "table file {} not reloaded, keeping the last good table: {}",
                    path.display(),
                    ReadError::Unstable
                );
                continue;
            }
            Ok(Poll::Failed(ReadError::Io(e))) => {
                if seen.is_some() {
                    metrics.table_reloads.count(false);
                    tracing::warn!(
                        "table file {} not reloaded, keeping the last good table: {e}",
                        path.display()
                    );
                }
                seen = None;
                continue;
            }
        };
        match build(&content, &mut builder) {
            Ok(table) => {
                let generation = store.publish(table);
                metrics.table_reloads.count(true);
                metrics.observe_table(&store.load());
                tracing::info!(
                    "table file {} reloaded (generation {generation})",
                    path.display()
                );
            }
            Err(e) => {
                metrics.table_reloads.count(false);
                tracing::warn!(
                    "table file {} not reloaded, keeping the last good table: {}",
                    path.display(),
                    crate::errors::Chain(&e)
                );
            }
        }
        seen = Some(content);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(content: &str, modified_s: u64) -> Snapshot {
        Snapshot {
            content: content.as_bytes().to_vec(),
            modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(modified_s)),
            len: content.len() as u64,
        }
    }

    /// A file rewritten in place between the two reads is refused, whether its content
    /// differs (caught mid-write) or is the same cut-off content written again.
    #[test]
    fn a_file_changing_between_reads_is_refused() {
        let full = "kind: MeshRevision\n---\nkind: Namespace\n";
        let cut = "kind: MeshRevision\n---\n";
        let mut reads = vec![snap(full, 2)].into_iter();
        let got = confirm(snap(cut, 1), &mut || Ok(reads.next().unwrap()), &|| {});
        assert!(matches!(got, Err(ReadError::Unstable)), "{got:?}");
        let mut reads = vec![snap(cut, 2)].into_iter();
        let got = confirm(snap(cut, 1), &mut || Ok(reads.next().unwrap()), &|| {});
        assert!(matches!(got, Err(ReadError::Unstable)), "{got:?}");
        let mut reads = vec![snap(full, 1)].into_iter();
        let got = confirm(snap(full, 1), &mut || Ok(reads.next().unwrap()), &|| {});
        assert_eq!(got.unwrap(), full.as_bytes());
    }

    #[test]
    fn a_file_without_a_revision_does_not_build() {
        let mut b = TableBuilder::new();
        for text in [
            "",
            "---\n",
            "---\n---\n",
            "# nothing\n",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {istio-injection: enabled}}\n",
        ] {
            let e = build(text.as_bytes(), &mut b).unwrap_err();
            assert!(
                format!("{e:#}").contains("no MeshRevision"),
                "{text:?}: {e:#}"
            );
        }
        assert!(build(crate::config::EMBEDDED_DEFAULT.as_bytes(), &mut b).is_ok());
    }
}
