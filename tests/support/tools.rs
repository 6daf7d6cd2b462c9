//! Go tools the tests run, built from their Go modules into target/tools/ by
//! `tests/<tool>/build.sh` (a no-op when the binary is newer than that folder's go.mod/go.sum):
//! `helm` (tests/chart.rs, tests/e2e_chart.rs) and `promtool` (tests/alert_rules.rs).
//!
//! Use with `#[path = "support/tools.rs"] mod tools;`.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// The path of `name` (`helm` or `promtool`), built first if missing or stale. Panics with
/// one line naming the fix when it cannot be built (e.g. no Go toolchain).
pub fn tool(name: &str) -> PathBuf {
    // One build at a time, and one check per tool, in this process (tests run in threads).
    static CHECKED: OnceLock<Mutex<BTreeSet<String>>> = OnceLock::new();
    let mut checked = CHECKED
        .get_or_init(|| Mutex::new(BTreeSet::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = root.join("target/tools").join(name);
    if checked.contains(name) {
        return bin;
    }
    let script = root.join("tests").join(name).join("build.sh");
    let t0 = Instant::now();
    let fresh = !bin.exists();
    if fresh {
        progress(&format!(
            "building {} with {} (a few minutes on a fresh clone, seconds with Go's cache)",
            bin.display(),
            script.display()
        ));
    }
    // Its output goes to our real stderr, so a long build shows its own lines.
    let status = Command::new("bash")
        .arg(&script)
        .stdout(std::io::stderr())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        status.success(),
        "{} failed ({status}): it needs the Go toolchain (go >= 1.26 on PATH or in /usr/local/go) and the Go module proxy",
        script.display()
    );
    if fresh {
        progress(&format!(
            "built {} in {} s",
            bin.display(),
            t0.elapsed().as_secs()
        ));
    }
    checked.insert(name.to_string());
    bin
}

fn progress(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "tools: {line}");
}
