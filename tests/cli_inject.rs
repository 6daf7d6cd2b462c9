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

fn meshrev_in(dir: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshrev"))
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshrev must start");
    // A refusal may come before stdin is read: ignore a broken pipe.
    let _ = child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes());
    child.wait_with_output().expect("meshrev must finish")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit code 1 with a message, never a panic (101).
fn assert_refused(out: &Output, want: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for w in want {
        assert!(err.contains(w), "want {w:?} in: {err}");
    }
}

#[test]
fn malformed_template_metadata_is_an_error_not_a_panic() {
    for (input, want) in [
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    metadata: just-a-string\n    spec: {containers: [{name: a, image: b}]}\n",
            &[
                "document 0 (Deployment \"d\")",
                "`spec.template.metadata` must be a mapping",
            ][..],
        ),
        (
            "kind: Service\nmetadata: {name: s}\n---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec: {jobTemplate: {spec: {template: {metadata: [1], spec: {containers: []}}}}}\n",
            &[
                "document 1 (CronJob \"c\")",
                "`spec.jobTemplate.spec.template.metadata`",
            ][..],
        ),
        (
            "kind: Pod\nmetadata: {name: p, annotations: {a: {b: c}}}\nspec: {containers: []}\n",
            &[
                "document 0 (Pod \"p\")",
                "`metadata.annotations.a` must be a string",
            ][..],
        ),
        ("[1, 2]\n", &["document 0: not a Kubernetes object"][..]),
    ] {
        let out = meshrev(
            &[
                "inject",
                "-f",
                "-",
                "--namespace-labels",
                "istio-injection=enabled",
            ],
            input,
        );
        assert_refused(&out, want);
        assert!(out.stdout.is_empty(), "nothing on stdout after an error");
    }
}

/// Strings that kubectl's YAML 1.1 reader (or a YAML 1.2 one) takes for booleans, numbers,
/// nulls or timestamps when written plain.
const LOOKALIKES: &[&str] = &[
    "on",
    "off",
    "yes",
    "no",
    "y",
    "n",
    "1_000",
    "True",
    "NO",
    "0x1F",
    "1e3",
    ".inf",
    "~",
    "null",
    "012",
    "On",
    "Y",
    "0o17",
    "0b11",
    "+1",
    "1.",
    ".5",
    "1:30",
    "2024-01-02",
    "<<",
    "",
];

#[test]
fn yaml_1_1_lookalike_strings_are_quoted() {
    let labels: Vec<String> = LOOKALIKES
        .iter()
        .enumerate()
        .map(|(i, v)| format!("l{i}: {}", serde_json::to_string(v).expect("json")))
        .collect();
    let input = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\nspec:\n  template:\n    metadata:\n      labels: {{{}}}\n    spec:\n      containers: [{{name: a, image: b, args: {}}}]\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\ndata: {{{}}}\n",
        labels.join(", "),
        serde_json::to_string(LOOKALIKES).expect("json"),
        labels.join(", "),
    );
    let out = meshrev(
        &[
            "inject",
            "-f",
            "-",
            "--namespace-labels",
            "istio-injection=enabled",
        ],
        &input,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    // No lookalike is written as a plain scalar.
    for ev in saphyr_parser::Parser::new_from_str(&text) {
        let (ev, span) = ev.expect("output must be YAML");
        if let saphyr_parser::Event::Scalar(v, saphyr_parser::ScalarStyle::Plain, ..) = ev {
            assert!(
                !LOOKALIKES.contains(&v.as_ref()),
                "{v:?} written plain at line {}:\n{text}",
                span.start.line()
            );
        }
    }
    // And they read back as the same strings.
    let docs: Vec<serde_json::Value> = meshrev::yaml::documents(&text)
        .map(|d| d.expect("yaml"))
        .collect();
    let args = &docs[0]["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(args, &serde_json::json!(LOOKALIKES));
    for (i, v) in LOOKALIKES.iter().enumerate() {
        assert_eq!(docs[1]["data"][format!("l{i}")], *v);
    }
    // A real YAML 1.1 reader, where there is one (PyYAML), reads the same values.
    let py = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    match py {
        Ok(mut child) => {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write");
            let o = child.wait_with_output().expect("python3");
            if o.status.success() {
                let read: Vec<serde_json::Value> =
                    serde_json::from_slice(&o.stdout).expect("python's JSON");
                assert_eq!(read, docs, "PyYAML (YAML 1.1) reads the output differently");
            } else {
                eprintln!(
                    "PyYAML cross-check skipped: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
        Err(e) => eprintln!("PyYAML cross-check skipped: python3: {e}"),
    }
}

fn deep_flow(depth: usize) -> String {
    format!(
        "kind: ConfigMap\nmetadata: {{name: c}}\ndata: {}\n",
        "{a: ".repeat(depth)
    )
}

fn deep_block(depth: usize) -> String {
    format!(
        "kind: ConfigMap\nmetadata: {{name: c}}\ndata:\n{}x\n",
        "- ".repeat(depth)
    )
}

#[test]
fn deep_nesting_is_refused_with_the_limit_named() {
    for input in [deep_flow(100_000), deep_block(100_000), deep_block(130)] {
        let out = meshrev(
            &["inject", "-f", "-"],
            &format!("kind: Service\nmetadata: {{name: s}}\n---\n{input}"),
        );
        assert_refused(&out, &["document 1"]);
        let err = stderr(&out);
        assert!(
            err.contains("nested deeper than 128") || err.contains("recursion limit"),
            "{err}"
        );
    }
    // 120 levels are fine.
    let out = meshrev(&["inject", "-f", "-"], &deep_block(120));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn deep_table_file_is_refused_with_the_limit_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = dir.path().join("table.yaml");
    std::fs::write(
        &table,
        format!(
            "{}---\napiVersion: meshrev.io/v1alpha1\nkind: MeshRevision\nmetadata: {{name: x}}\nspec: {}\n",
            meshrev::config::EMBEDDED_DEFAULT,
            "[".repeat(100_000)
        ),
    )
    .expect("write table");
    let out = meshrev(
        &[
            "inject",
            "-f",
            "-",
            "--config",
            table.to_str().expect("utf-8"),
        ],
        DEPLOY,
    );
    assert_refused(&out, &["table file", "table.yaml"]);
}

#[test]
fn output_to_a_directory_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("out")).expect("mkdir");
    let out = meshrev_in(
        dir.path(),
        &[
            "inject",
            "-f",
            "-",
            "--namespace-labels",
            "istio-injection=enabled",
            "-o",
            "out",
        ],
        DEPLOY,
    );
    assert_refused(&out, &["-o out", "is a directory", "out/injected.yaml"]);
    let out2 = meshrev_in(
        dir.path(),
        &["inject", "-f", "-", "-o", "missing/x.yaml"],
        DEPLOY,
    );
    assert_refused(&out2, &["-o missing/x.yaml", "does not exist"]);
    let left: Vec<_> = walk(dir.path());
    assert_eq!(left, [dir.path().join("out")], "no temp file may be left");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn output_file_is_replaced_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("injected.yaml");
    std::fs::write(&path, "old\n").expect("write");
    let out = meshrev_in(
        dir.path(),
        &[
            "inject",
            "-f",
            "-",
            "--namespace-labels",
            "istio-injection=enabled",
            "-o",
            "injected.yaml",
        ],
        DEPLOY,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(proxy_images(&text), ["docker.io/istio/proxyv2:1.22.6"]);
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
}

fn istio_fixture(name: &str) -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/istio")
            .join(name),
    )
    .expect("fixture")
}

fn count_proxies(v: &serde_json::Value) -> usize {
    let mut n = 0;
    if let Some(cs) = v["spec"]["template"]["spec"]["containers"].as_array() {
        n += cs.iter().filter(|c| c["name"] == "istio-proxy").count();
    }
    if let Some(items) = v["items"].as_array() {
        n += items.iter().map(count_proxies).sum::<usize>();
    }
    n
}

#[test]
fn istio_list_and_deploymentconfig_are_injected() {
    // (fixture, workloads injected, kinds that must pass through unchanged)
    for (name, want, passthrough) in [
        ("list.yaml", 2, 0),
        ("list-frontend.yaml", 1, 1),
        ("deploymentconfig.yaml", 1, 0),
        ("deploymentconfig-multi.yaml", 1, 1),
    ] {
        let input = istio_fixture(name);
        let out = meshrev(
            &[
                "inject",
                "-f",
                "-",
                "--namespace-labels",
                "istio-injection=enabled",
            ],
            &input,
        );
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        let docs: Vec<serde_json::Value> = meshrev::yaml::documents(&text)
            .map(|d| d.expect("yaml"))
            .collect();
        let inputs: Vec<serde_json::Value> = meshrev::yaml::documents(&input)
            .map(|d| d.expect("yaml"))
            .filter(|d| !d.is_null())
            .collect();
        assert_eq!(
            docs.iter().map(count_proxies).sum::<usize>(),
            want,
            "{name}:\n{text}"
        );
        assert_eq!(
            stderr(&out).matches("injected revision").count(),
            want,
            "{name}: {}",
            stderr(&out)
        );
        // Items that are no workload come out as they went in, in place.
        let items = |d: &[serde_json::Value]| -> Vec<serde_json::Value> {
            d.iter()
                .flat_map(|d| {
                    d["items"]
                        .as_array()
                        .cloned()
                        .unwrap_or_else(|| vec![d.clone()])
                })
                .filter(|i| i["kind"] == "Service")
                .collect()
        };
        assert_eq!(items(&docs).len(), passthrough, "{name}");
        assert_eq!(items(&docs), items(&inputs), "{name}");
    }
}

/// Figures for the report: time and peak memory of `meshrev inject` on N Deployments and
/// on deeply nested input. `cargo test --release --test cli_inject -- --ignored --nocapture`.
#[test]
#[ignore = "measures; prints figures, asserts nothing about time"]
fn measure_scale_and_depth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |label: &str, input: &str| {
        let file = dir.path().join("in.yaml");
        std::fs::write(&file, input).expect("write");
        let start = std::time::Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_meshrev"))
            .args([
                "inject",
                "-f",
                file.to_str().expect("utf-8"),
                "--namespace-labels",
                "istio-injection=enabled",
                "-o",
            ])
            .arg(dir.path().join("out.yaml"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start");
        let status = format!("/proc/{}/status", child.id());
        let mut peak_kb = 0u64;
        while child.try_wait().expect("wait").is_none() {
            if let Ok(s) = std::fs::read_to_string(&status)
                && let Some(kb) = s
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            {
                peak_kb = kb;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        println!(
            "{label}: input {:.1} MB, {:.2} s, peak RSS >= {:.1} MB",
            input.len() as f64 / 1e6,
            start.elapsed().as_secs_f64(),
            peak_kb as f64 / 1024.0
        );
    };
    let deploy = |i: usize| {
        format!(
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app-{i}\n  namespace: ns\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: app-{i}}}\n  template:\n    metadata:\n      labels: {{app: app-{i}, version: v1}}\n    spec:\n      containers:\n      - name: app\n        image: docker.io/example/app:1.0\n        ports: [{{containerPort: 8080}}]\n        env: [{{name: A, value: 'on'}}, {{name: B, value: '1'}}]\n"
        )
    };
    for n in [5_000, 20_000] {
        run(
            &format!("{n} Deployments"),
            &(0..n).map(deploy).collect::<String>(),
        );
    }
    for depth in [10_000, 100_000] {
        run(&format!("flow depth {depth}"), &deep_flow(depth));
        run(&format!("block depth {depth}"), &deep_block(depth));
    }
}
