//! `meshrev upgrade` as a binary, without a cluster: flags, and errors that name the fix.
//! (The lifecycle itself runs against a real control plane in tests/e2e_upgrade.rs.)

use std::process::{Command, Output};

fn meshrev(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshrev"))
        .args(args)
        .env_remove("KUBECONFIG")
        .env("MESHREV_LOG", "warn")
        .output()
        .expect("the meshrev binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A kubeconfig for a server nobody listens on.
fn unreachable_kubeconfig(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("kubeconfig");
    std::fs::write(
        &p,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
    )
    .expect("write kubeconfig");
    p
}

#[test]
fn help_lists_the_lifecycle() {
    let o = meshrev(&["upgrade", "--help"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for cmd in [
        "status",
        "canary",
        "switch",
        "verify",
        "promote",
        "rollout",
        "unpublish",
        "rollback",
        "revoke",
        "--kubeconfig",
    ] {
        assert!(out.contains(cmd), "{cmd} missing from:\n{out}");
    }
}

#[test]
fn a_missing_kubeconfig_is_named() {
    let o = meshrev(&[
        "upgrade",
        "status",
        "--kubeconfig",
        "/nonexistent/meshrev-kubeconfig",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("/nonexistent/meshrev-kubeconfig"), "{e}");
}

#[test]
fn an_unreachable_cluster_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = unreachable_kubeconfig(dir.path());
    let o = meshrev(&[
        "upgrade",
        "status",
        "--kubeconfig",
        kc.to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("error: listing MeshRevisions"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn bad_flags_are_refused_before_any_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kc = unreachable_kubeconfig(dir.path());
    let kc = kc.to_str().expect("utf-8");
    let o = meshrev(&[
        "upgrade",
        "rollout",
        "--workload",
        "job/x",
        "--kubeconfig",
        kc,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("deployment, statefulset or daemonset"),
        "{}",
        stderr(&o)
    );
    let o = meshrev(&[
        "upgrade",
        "rollout",
        "--workload",
        "reviews",
        "--kubeconfig",
        kc,
    ]);
    assert!(stderr(&o).contains("KIND/NAME"), "{}", stderr(&o));
    let o = meshrev(&["upgrade", "rollout", "--timeout", "10x", "--kubeconfig", kc]);
    assert!(stderr(&o).contains("duration"), "{}", stderr(&o));
    let o = meshrev(&[
        "upgrade",
        "canary",
        "--revision",
        "1-23-6",
        "--version",
        "1.23.6",
        "--proxy-image",
        "a b",
        "--kubeconfig",
        kc,
    ]);
    assert!(stderr(&o).contains("--proxy-image"), "{}", stderr(&o));
    // clap's own refusals: exit 2.
    assert_eq!(
        meshrev(&["upgrade", "rollout", "--max-in-flight", "0"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        meshrev(&["upgrade", "switch", "default", "--to", "beta"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        meshrev(&["upgrade", "canary", "--revision", "1-23-6"])
            .status
            .code(),
        Some(2)
    );
}
