//! `--config TABLE`: serve a table file and reload it when its content changes.
//!
//! Like the certificates, the file is polled (ConfigMap volumes also change by a symlink
//! swap). One [`TableBuilder`] is kept across reloads, so revisions whose spec did not
//! change are not re-rendered. A file that does not parse or build is logged and counted
//! (`meshrev_table_reloads_total{result="failure"}`) and the last good table stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::metrics::Metrics;
use crate::table::{Table, TableBuilder, TableStore};

/// Reads and builds the table file. Returns the table and the content it was built from.
pub(super) fn load(path: &Path, builder: &mut TableBuilder) -> anyhow::Result<(Table, Vec<u8>)> {
    let content = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let table =
        build(&content, builder).with_context(|| format!("table file {}", path.display()))?;
    Ok((table, content))
}

fn build(content: &[u8], builder: &mut TableBuilder) -> anyhow::Result<Table> {
    let text = std::str::from_utf8(content).context("not UTF-8 text")?;
    let objects = crate::config::parse_objects(text)?;
    Ok(builder.build(&objects)?)
}

/// Polls `path` every `interval`; publishes a new table when the content changes and builds.
pub(super) async fn watch(
    path: PathBuf,
    initial: Vec<u8>,
    mut builder: TableBuilder,
    interval: Duration,
    store: Arc<TableStore>,
    metrics: Arc<Metrics>,
) {
    // `None`: the file could not be read.
    let mut seen = Some(initial);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let p = path.clone();
        let now = match tokio::task::spawn_blocking(move || std::fs::read(p)).await {
            Ok(Ok(c)) => Some(c),
            Ok(Err(e)) => {
                if seen.is_some() {
                    metrics.table_reload(false);
                    tracing::warn!(
                        "table file {} not reloaded, keeping the last good table: {e}",
                        path.display()
                    );
                }
                None
            }
            Err(_) => continue,
        };
        if now == seen {
            continue;
        }
        if let Some(content) = &now {
            match build(content, &mut builder) {
                Ok(table) => {
                    let generation = store.publish(table);
                    metrics.table_reload(true);
                    metrics.observe_table(&store.load());
                    tracing::info!(
                        "table file {} reloaded (generation {generation})",
                        path.display()
                    );
                }
                Err(e) => {
                    metrics.table_reload(false);
                    tracing::warn!(
                        "table file {} not reloaded, keeping the last good table: {e:#}",
                        path.display()
                    );
                }
            }
        }
        seen = now;
    }
}
