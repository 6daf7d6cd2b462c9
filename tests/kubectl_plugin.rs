//! The kubectl plugin binary: `kubectl-meshrev` is the same CLI, naming itself
//! `kubectl meshrev` in help and usage, and kubectl finds it on PATH.

use std::path::Path;
use std::process::{Command, Output};

const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-meshrev");

fn run(exe: &str, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .expect("the binary must start")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn plugin_help_names_kubectl_meshrev() {
    let o = run(PLUGIN, &["--help"]);
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    assert!(out.contains("Usage: kubectl meshrev <COMMAND>"), "{out}");
    assert!(out.contains("upgrade"), "{out}");

    let o = run(PLUGIN, &["upgrade", "--help"]);
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    assert!(out.contains("Usage: kubectl meshrev upgrade"), "{out}");
    assert!(out.contains("status"), "{out}");

    let o = run(PLUGIN, &["upgrade", "status", "--help"]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        stdout(&o).contains("Usage: kubectl meshrev upgrade status"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn plugin_errors_name_kubectl_meshrev() {
    let o = run(PLUGIN, &["no-such-command"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("kubectl meshrev"), "{err}");
}

#[test]
fn the_meshrev_binary_keeps_its_name() {
    let o = run(env!("CARGO_BIN_EXE_meshrev"), &["upgrade", "--help"]);
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    assert!(out.contains("Usage: meshrev upgrade"), "{out}");
    assert!(!out.contains("kubectl"), "{out}");
}

/// kubectl itself dispatches `kubectl meshrev …` to the plugin on PATH. Needs a kubectl
/// on PATH; without one there is nothing to check against, and the test says so.
#[test]
fn kubectl_runs_the_plugin_from_path() {
    let Some(kubectl) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("kubectl"))
            .find(|k| k.is_file())
    }) else {
        eprintln!("no kubectl on PATH: not checking kubectl's plugin dispatch");
        return;
    };
    let plugin_dir = Path::new(PLUGIN)
        .parent()
        .expect("the plugin binary has a directory");
    let path = std::env::join_paths(
        std::iter::once(plugin_dir.to_path_buf()).chain(
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default(),
        ),
    )
    .expect("PATH entries must join");
    let o = Command::new(&kubectl)
        .args(["meshrev", "upgrade", "status", "--help"])
        .env("PATH", path)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .expect("kubectl must start");
    assert!(o.status.success(), "{o:?}");
    let out = stdout(&o);
    assert!(
        out.contains("Usage: kubectl meshrev upgrade status"),
        "{out}"
    );
}
