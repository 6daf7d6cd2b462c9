//! `meshrev inject` as a user runs it: the real binary on manifest files.
use std::io::Write;
use std::process::{Command, Output, Stdio};

const DEPLOY: &str = include_str!("fixtures/reviews-v2.yaml");

fn meshrev(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshrev"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshrev must start");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("meshrev must finish")
}

fn proxy_images(yaml: &str) -> Vec<String> {
    let mut out = Vec::new();
    for doc in meshrev::yaml::documents(yaml) {
        let v = doc.expect("output must be YAML");
        if let Some(cs) = v["spec"]["template"]["spec"]["containers"].as_array() {
            for c in cs.iter().filter(|c| c["name"] == "istio-proxy") {
                out.push(c["image"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    out
}

#[test]
fn namespace_labels_pick_the_revision() {
    for (labels, want) in [
        (
            "istio.io/rev=canary",
            vec!["docker.io/istio/proxyv2:1.23.6"],
        ),
        (
            "istio-injection=enabled",
            vec!["docker.io/istio/proxyv2:1.22.6"],
        ),
        (
            "istio.io/rev=1-23-6",
            vec!["docker.io/istio/proxyv2:1.23.6"],
        ),
        ("istio-injection=disabled", vec![]),
    ] {
        let out = meshrev(&["inject", "-f", "-", "--namespace-labels", labels], DEPLOY);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{labels}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(proxy_images(&stdout), want, "{labels}");
        // The Service passes through unchanged.
        assert!(stdout.contains("kind: Service"), "{labels}");
    }
}

#[test]
fn disabled_namespace_output_equals_input_semantically() {
    let out = meshrev(
        &[
            "inject",
            "-f",
            "-",
            "--namespace-labels",
            "istio-injection=disabled",
        ],
        DEPLOY,
    );
    assert!(out.status.success());
    let parse = |s: &str| -> Vec<serde_json::Value> {
        meshrev::yaml::documents(s)
            .map(|d| d.expect("yaml"))
            .collect()
    };
    assert_eq!(parse(&String::from_utf8_lossy(&out.stdout)), parse(DEPLOY));
}

#[test]
fn table_file_namespace_objects_supply_labels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = dir.path().join("table.yaml");
    std::fs::write(
        &table,
        format!(
            "{}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: bookinfo, labels: {{istio.io/rev: canary}}}}\n",
            meshrev::config::EMBEDDED_DEFAULT
        ),
    )
    .expect("write table");
    let out = meshrev(
        &[
            "inject",
            "-f",
            "-",
            "--config",
            table.to_str().expect("utf-8 path"),
            "-n",
            "bookinfo",
        ],
        DEPLOY,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        proxy_images(&String::from_utf8_lossy(&out.stdout)),
        ["docker.io/istio/proxyv2:1.23.6"]
    );
}

#[test]
fn bad_input_names_the_document_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_file = dir.path().join("out.yaml");
    let bad = format!(
        "{DEPLOY}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: broken}}\nspec: {{replicas: 1}}\n"
    );
    let out = meshrev(
        &[
            "inject",
            "-f",
            "-",
            "--namespace-labels",
            "istio-injection=enabled",
            "-o",
            out_file.to_str().expect("utf-8"),
        ],
        &bad,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("document 2") && err.contains("broken") && err.contains("spec.template"),
        "{err}"
    );
    assert!(!out_file.exists(), "nothing may be written on error");
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        0,
        "no temp file left"
    );
}

#[test]
fn crd_prints_both_definitions() {
    let out = meshrev(&["crd"], "");
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("meshrevisions.meshrev.io") && s.contains("revisiontags.meshrev.io"));
    assert!(s.contains("mrev") && s.contains("rtag"));
}
