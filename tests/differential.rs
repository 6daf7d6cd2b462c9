//! Differential testing against Istio's own injector (issue 10, item 6).
//!
//! `tests/istio-oracle/` builds Istio's real injection handler (the Go code of the module in
//! its go.mod, the templates, values and mesh config rendered from Istio 1.30.3's charts in
//! `../shared/conformance/istio/1.30.3/chart`). This test generates pods with proptest across
//! the injection feature space, sends each one, as the same Pod CREATE review, to the oracle
//! and to meshrev (in process, a revision of version 1.30.3 behind a namespace labelled
//! `istio-injection=enabled`), applies each reply's patch, and requires: both refuse, or
//! both inject and the resulting pods are equal under `support/normalize.rs`.
//!
//! * The pod is first passed through the oracle's `/roundtrip` (Go's serialization, as the
//!   API server sends it: `resources: {}`, `creationTimestamp: null`, …), because Istio
//!   computes its patch against that form; both injectors get that same pod.
//! * A failing case shrinks to a minimal pod, written to `tests/differential/regressions/`
//!   (commit it); every file there is replayed on each run, before the generated cases.
//! * [`KNOWN`] lists the documented disagreements: a pod in such a class is not compared
//!   (it is counted), and each entry's minimal pod (`tests/differential/known/<id>.json`)
//!   must still disagree, so that a fix shows up as a failure asking to drop the entry.
//!
//! Environment: `DIFFERENTIAL_CASES=N` (default 2000), `DIFFERENTIAL_SURVEY=1` (do not stop
//! at the first disagreement: print the classes with an example each, then fail if any),
//! `DIFFERENTIAL_TEMPLATES=gateway` (every generated pod asks for these templates),
//! `DIFFERENTIAL_COMPARE_KNOWN=1` (compare the pods of documented classes too, and do not
//! fail on a known minimal pod that agrees),
//! `MESHREV_ORACLE_BIN` (use this oracle binary as is), `MESHREV_SKIP_E2E=1` (skip, never
//! under `CI=true`).
#[path = "support/istio.rs"]
mod istio;
#[path = "support/normalize.rs"]
mod normalize;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use base64::Engine;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde_json::{Value, json};

use meshrev::table::{NamespaceLabels, Table};

const NAMESPACE: &str = "diff";
const ISTIO_VERSION: &str = "1.30.3";
const READY_DEADLINE: Duration = Duration::from_secs(60);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------
// The documented disagreements.

/// A class of pods on which meshrev and the oracle are known to differ, and why.
struct Known {
    /// Also the name of its minimal pod, `tests/differential/known/<id>.json`.
    id: &'static str,
    /// One line: what differs and whose behaviour it is.
    reason: &'static str,
    /// Whether a pod belongs to the class.
    applies: fn(&Value) -> bool,
}

const KNOWN: &[Known] = &[
    Known {
        id: "prometheus-port-validation",
        reason: "Istio master refuses prometheus.io/port that is not a port number; 1.30.3 \
                 injects (its merge just skips it), as meshrev does: a change after 1.30",
        applies: |pod| {
            annotation(pod, "prometheus.io/port").is_some_and(|p| p.parse::<u16>().is_err())
        },
    },
    Known {
        id: "resource-quantity-dash",
        reason: "deliberate (the hostile-input issue): meshrev refuses negative \
                 sidecar.istio.io/proxy{CPU,Memory}[Limit] values (\"-1\"), naming the \
                 annotation; Istio's check (ParseQuantity) accepts a sign and injects, and the API \
                 server then refuses the pod with a less direct message (templates sidecar and \
                 grpc-agent: gateway and grpc-simple write no proxy resources, and both inject)",
        applies: |pod| {
            writes_proxy_resources(pod)
                && [
                    "proxyCPU",
                    "proxyMemory",
                    "proxyCPULimit",
                    "proxyMemoryLimit",
                ]
                .iter()
                .any(|k| {
                    annotation(pod, &format!("sidecar.istio.io/{k}"))
                        .is_some_and(|v| v.starts_with('-'))
                })
        },
    },
    Known {
        id: "resource-request-above-limit",
        reason: "deliberate (the hostile-input issue): meshrev refuses a proxy request above its \
                 limit (sidecar.istio.io/proxyCPU > proxyCPULimit, or memory), naming both \
                 annotations; Istio injects and the API server then refuses the pod (templates \
                 sidecar and grpc-agent: gateway and grpc-simple write no proxy resources, and \
                 both inject)",
        applies: |pod| {
            writes_proxy_resources(pod) &&
            ["CPU", "Memory"].iter().any(|r| {
                let q = |k: String| annotation(pod, &k).and_then(meshrev::injector::quantity_value);
                matches!(
                    (q(format!("sidecar.istio.io/proxy{r}")), q(format!("sidecar.istio.io/proxy{r}Limit"))),
                    (Some(a), Some(b)) if a > b
                )
            })
        },
    },
    Known {
        id: "sidecar-and-grpc-agent-native",
        reason: "deliberate: for templates \"sidecar,grpc-agent\" with a native sidecar Istio's \
                 result has two containers named istio-proxy (the sidecar's in initContainers, \
                 grpc-agent's in containers), which the API server refuses; meshrev refuses the \
                 pod itself, naming the annotations and the fix (nativeSidecar \"false\")",
        applies: |pod| {
            sidecar_first(pod, "grpc-agent") == Some(true)
                && annotation(pod, "sidecar.istio.io/nativeSidecar") != Some("false")
        },
    },
    Known {
        id: "sidecar-and-gateway-native",
        reason: "deliberate: for templates \"sidecar,gateway\" with a native sidecar Istio's \
                 result has two containers named istio-proxy (the sidecar's in initContainers, \
                 gateway's in containers), which the API server refuses; meshrev refuses the \
                 pod itself, naming the annotations and the fix (nativeSidecar \"false\")",
        applies: |pod| {
            sidecar_first(pod, "gateway") == Some(true)
                && annotation(pod, "sidecar.istio.io/nativeSidecar") != Some("false")
        },
    },
    Known {
        id: "template-then-sidecar-native-own-proxy",
        reason: "deliberate: for templates \"gateway,sidecar\" or \"grpc-agent,sidecar\" with a \
                 native sidecar, on a pod with its own istio-proxy container, Istio moves the \
                 proxy into initContainers and leaves an istio-proxy container without an image, \
                 which the API server refuses; meshrev refuses the pod itself, naming the \
                 annotations and the fix (nativeSidecar \"false\")",
        applies: |pod| {
            ["gateway", "grpc-agent"]
                .iter()
                .any(|o| sidecar_first(pod, o) == Some(false))
                && annotation(pod, "sidecar.istio.io/nativeSidecar") != Some("false")
                && pod["spec"]["containers"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["name"] == "istio-proxy"))
        },
    },
    Known {
        id: "unreproduced-template-list",
        reason: "deliberate: Istio merges any list of templates in order; meshrev reproduces \
                 one template and the lists sidecar,grpc-agent, grpc-agent,sidecar, \
                 sidecar,gateway and gateway,sidecar, and refuses any other list (naming the \
                 lists it reproduces) rather than inject a pod that differs from Istio's",
        applies: |pod| {
            templates(pod).is_some_and(|t| {
                let mut names: Vec<&str> = t.split(',').map(str::trim).collect();
                names.dedup();
                names.len() > 1
                    && names
                        .iter()
                        .all(|n| ["sidecar", "gateway", "grpc-agent", "grpc-simple"].contains(n))
                    && ![
                        "sidecar,grpc-agent",
                        "grpc-agent,sidecar",
                        "sidecar,gateway",
                        "gateway,sidecar",
                    ]
                    .contains(&names.join(",").as_str())
            })
        },
    },
];

fn templates(pod: &Value) -> Option<&str> {
    annotation(pod, "inject.istio.io/templates")
}

/// When the pod's templates list both `sidecar` and `other`, whether `sidecar` comes first
/// (Istio then puts `other`'s istio-proxy in containers beside a native sidecar's; after
/// it, the two merge); `None` when one of them is missing.
fn sidecar_first(pod: &Value, other: &str) -> Option<bool> {
    let names: Vec<&str> = templates(pod)?.split(',').map(str::trim).collect();
    let s = names.iter().position(|n| *n == "sidecar")?;
    let o = names.iter().rposition(|n| *n == other)?;
    Some(s < o)
}

/// Whether a template the pod asks for writes the proxy's resources (`sidecar`, the
/// default, and `grpc-agent`; not `gateway` nor `grpc-simple`).
fn writes_proxy_resources(pod: &Value) -> bool {
    templates(pod).is_none_or(|t| {
        t.split(',')
            .any(|n| ["sidecar", "grpc-agent"].contains(&n.trim()))
    })
}

fn annotation<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    pod["metadata"]["annotations"][key].as_str()
}

// ---------------------------------------------------------------------------------------
// The oracle process.

struct Oracle {
    child: Child,
    /// Held open for the child's lifetime: the oracle exits when it reaches EOF.
    stdin: Option<ChildStdin>,
    port: u16,
}

impl Drop for Oracle {
    fn drop(&mut self) {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Oracle {
    fn start() -> Oracle {
        let charts = istio::charts();
        let bin = istio::oracle_binary();
        let mut child = Command::new(&bin)
            .arg("--charts")
            .arg(&charts)
            .args(["--port", "0"])
            .env("MESHREV_WATCH_STDIN", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        // Istio logs every request at info: keep only the tail, for startup errors.
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let log = Arc::clone(&tail);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut t = log.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() == 20 {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        // "ready 127.0.0.1:PORT" once it serves.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let port = lines.by_ref().map_while(Result::ok).find_map(|l| {
                let addr = l.trim().strip_prefix("ready ")?.to_string();
                addr.rsplit(':').next()?.parse::<u16>().ok()
            });
            let _ = tx.send(port);
            for _ in lines {}
        });
        match rx.recv_timeout(READY_DEADLINE) {
            Ok(Some(port)) => Oracle { child, stdin, port },
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                panic!(
                    "the Istio oracle exited or did not print ready within {READY_DEADLINE:?}; its last log lines:\n{}",
                    tail.iter().cloned().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }

    /// One HTTP/1.1 POST (a connection per request: simple, and cheap on loopback).
    fn post(&self, path: &str, body: &[u8]) -> Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the oracle");
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: oracle\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).expect("write request");
        s.write_all(body).expect("write body");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read reply");
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("HTTP reply head");
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut payload = raw[split + 4..].to_vec();
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "oracle {path}: {head}\n{}",
            String::from_utf8_lossy(&payload)
        );
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            payload = dechunk(&payload);
        }
        serde_json::from_slice(&payload).expect("the oracle answers JSON")
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").expect("chunk size");
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16)
            .expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

// ---------------------------------------------------------------------------------------
// One comparison.

fn table() -> Table {
    let text = format!(
        "apiVersion: meshrev.io/v1alpha1\nkind: MeshRevision\nmetadata: {{name: default}}\n\
         spec: {{version: \"{ISTIO_VERSION}\"}}\n---\n\
         apiVersion: meshrev.io/v1alpha1\nkind: RevisionTag\nmetadata: {{name: stable}}\n\
         spec: {{revision: default}}\n"
    );
    let labels = NamespaceLabels {
        injection: Some("enabled".into()),
        rev: None,
    };
    meshrev::table::from_text(&text)
        .expect("the table must build")
        .with_namespaces(HashMap::from([(NAMESPACE.to_string(), labels)]))
}

/// What an injector did with a pod.
#[derive(Debug)]
enum Answer {
    Refused(String),
    Injected(Value),
}

fn review_of(pod: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "d1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": NAMESPACE, "operation": "CREATE", "object": pod}
    }))
    .expect("review")
}

fn answer(who: &str, pod: &Value, reply: &Value) -> Answer {
    let resp = &reply["response"];
    if resp["allowed"] != true {
        return Answer::Refused(resp["status"]["message"].as_str().unwrap_or("").to_string());
    }
    let mut out = pod.clone();
    if let Some(p) = resp["patch"].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(p)
            .unwrap_or_else(|e| panic!("{who}: patch is not base64: {e}"));
        let ops: json_patch::Patch = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{who}: patch is not a JSON Patch: {e}"));
        if let Err(e) = json_patch::patch(&mut out, &ops) {
            return Answer::Refused(format!("{who}'s patch does not apply: {e}"));
        }
    }
    Answer::Injected(out)
}

struct Harness {
    oracle: Oracle,
    table: Table,
}

/// How two answers differ: `None` when they agree; else a short class and the details.
fn compare(istio: &Answer, meshrev: &Answer) -> Option<(String, String)> {
    match (istio, meshrev) {
        (Answer::Refused(_), Answer::Refused(_)) => None,
        (Answer::Refused(e), Answer::Injected(_)) => Some((
            format!("Istio refuses, meshrev injects: {}", gist(e)),
            format!("Istio: {e}"),
        )),
        (Answer::Injected(_), Answer::Refused(e)) => Some((
            format!("meshrev refuses, Istio injects: {}", gist(e)),
            format!("meshrev: {e}"),
        )),
        (Answer::Injected(a), Answer::Injected(b)) => {
            let (mut a, mut b) = (a.clone(), b.clone());
            normalize::normalize(&mut a);
            normalize::normalize(&mut b);
            let diffs = normalize::diff(&a, &b);
            if diffs.is_empty() {
                return None;
            }
            let mut paths: Vec<String> = diffs.iter().map(|d| class_path(&d.path)).collect();
            paths.dedup();
            let detail = diffs
                .iter()
                .take(6)
                .map(|d| {
                    let s = |v: &Option<Value>| {
                        let t = v.as_ref().map(Value::to_string).unwrap_or("-".into());
                        if t.len() > 300 && !d.path.ends_with("[names]") {
                            format!("{}…", &t[..300])
                        } else {
                            t
                        }
                    };
                    format!(
                        "  {}\n    Istio   {}\n    meshrev {}",
                        d.path,
                        s(&d.want),
                        s(&d.got)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            Some((paths.join(" "), detail))
        }
    }
}

/// A refusal's message without its quoted values, for grouping.
fn gist(msg: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for ch in msg.chars().take(160) {
        if ch == '"' {
            quoted = !quoted;
            if quoted {
                out.push_str("\"…\"");
            }
        } else if !quoted {
            out.push(ch);
        }
    }
    out
}

/// A diff path without container names and indices, for grouping.
fn class_path(p: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for ch in p.chars() {
        match ch {
            '[' => {
                depth += 1;
                out.push_str("[*");
            }
            ']' => {
                depth -= 1;
                out.push(']');
            }
            _ if depth > 0 => {}
            _ => out.push(ch),
        }
    }
    out.split('/')
        .map(|s| if s.parse::<usize>().is_ok() { "#" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

impl Harness {
    fn new() -> Harness {
        Harness {
            oracle: Oracle::start(),
            table: table(),
        }
    }

    /// The pod as the API server would send it (Go's serialization).
    fn as_sent(&self, pod: &Value) -> Value {
        self.oracle
            .post("/roundtrip", &serde_json::to_vec(pod).expect("pod"))
    }

    /// Both answers for one generated pod.
    fn run(&self, pod: &Value) -> (Value, Answer, Answer) {
        let sent = self.as_sent(pod);
        let body = review_of(&sent);
        let istio = self.oracle.post("/inject", &body);
        let mut scratch = Vec::new();
        let reply = meshrev::admission::review(&self.table, &body, &mut scratch);
        let ours: Value = serde_json::from_slice(&reply.body).expect("meshrev answers JSON");
        assert_eq!(ours["response"]["uid"], "d1");
        let a = answer("Istio", &sent, &istio);
        let b = answer("meshrev", &sent, &ours);
        (sent, a, b)
    }

    fn check(&self, pod: &Value) -> Option<(String, String)> {
        let (_, istio, ours) = self.run(pod);
        compare(&istio, &ours)
    }
}

// ---------------------------------------------------------------------------------------
// The pod generator.

fn pick(values: &'static [&'static str]) -> BoxedStrategy<String> {
    prop::sample::select(values)
        .prop_map(str::to_string)
        .boxed()
}

/// Values of the generated annotations that some injector may refuse. They are drawn a quarter
/// as often as the others, so that most pods get injected and compared in full.
const SUSPECT: &[&str] = &[
    "",
    "abc",
    "lots",
    "x",
    "-",
    "bad",
    "bad/cidr",
    "10.0.0.0/33",
    "70000",
    "99999",
    "0",
    "-1",
    "bogus",
    "{",
    "nope",
];

/// An annotation that is present with probability 1/10, with one of `values`.
fn maybe(
    key: &'static str,
    values: &'static [&'static str],
) -> BoxedStrategy<Option<(String, String)>> {
    let (bad, good): (Vec<&'static str>, Vec<&'static str>) =
        values.iter().partition(|v| SUSPECT.contains(v));
    let value = match (good.is_empty(), bad.is_empty()) {
        (false, false) => prop_oneof![
            4 => prop::sample::select(good),
            1 => prop::sample::select(bad),
        ]
        .boxed(),
        (false, true) => prop::sample::select(good).boxed(),
        _ => prop::sample::select(bad).boxed(),
    };
    prop::option::weighted(
        0.1,
        value.prop_map(move |v| (key.to_string(), v.to_string())),
    )
    .boxed()
}

fn annotations() -> impl Strategy<Value = BTreeMap<String, String>> {
    let all: Vec<BoxedStrategy<Option<(String, String)>>> = vec![
        maybe(
            "sidecar.istio.io/proxyCPU",
            &["100m", "2", "0.5", "abc", "", "-1"],
        ),
        maybe("sidecar.istio.io/proxyMemory", &["128Mi", "1Gi", "lots"]),
        maybe("sidecar.istio.io/proxyCPULimit", &["1", "500m", "x"]),
        maybe("sidecar.istio.io/proxyMemoryLimit", &["512Mi", "1G", "-"]),
        maybe(
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
            &[
                "*",
                "10.0.0.0/8",
                "10.0.0.0/8,192.168.0.0/16",
                "",
                "10.0.0.0/33",
                "bad",
                "fd00::/8",
            ],
        ),
        maybe(
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            &["*", "169.254.169.254/32", "1.1.1.1", "bad/cidr", ""],
        ),
        maybe(
            "traffic.sidecar.istio.io/includeInboundPorts",
            &["*", "80,8080", "", "abc", "70000", "9090"],
        ),
        maybe(
            "traffic.sidecar.istio.io/excludeInboundPorts",
            &["15020", "8080", "x", "*", ""],
        ),
        maybe(
            "traffic.sidecar.istio.io/includeOutboundPorts",
            &["443", "x", "80,443"],
        ),
        maybe(
            "traffic.sidecar.istio.io/excludeOutboundPorts",
            &["3306", "bad", "5432,6379"],
        ),
        maybe(
            "traffic.sidecar.istio.io/excludeInterfaces",
            &["eth1", "eth1,eth2"],
        ),
        maybe("traffic.sidecar.istio.io/kubevirtInterfaces", &["net1"]),
        maybe(
            "status.sidecar.istio.io/port",
            &["15020", "0", "8080", "99999", "x", "15021"],
        ),
        maybe(
            "readiness.status.sidecar.istio.io/initialDelaySeconds",
            &["1", "5", "x", "-1"],
        ),
        maybe(
            "readiness.status.sidecar.istio.io/periodSeconds",
            &["2", "15", "x"],
        ),
        maybe(
            "readiness.status.sidecar.istio.io/failureThreshold",
            &["3", "10", "x"],
        ),
        maybe(
            "readiness.status.sidecar.istio.io/applicationPorts",
            &["80", "", "x", "80,8080"],
        ),
        maybe(
            "sidecar.istio.io/interceptionMode",
            &["REDIRECT", "TPROXY", "NONE", "bogus"],
        ),
        maybe("prometheus.io/scrape", &["true", "false"]),
        maybe("prometheus.io/port", &["9090", "8080", "x"]),
        maybe("prometheus.io/path", &["/metrics", "/stats"]),
        maybe(
            "sidecar.istio.io/rewriteAppHTTPProbers",
            &["true", "false", "bogus"],
        ),
        maybe(
            "proxy.istio.io/config",
            &[
                "holdApplicationUntilProxyStarts: true",
                "holdApplicationUntilProxyStarts: false",
                "concurrency: 2",
                "{",
            ],
        ),
        maybe(
            "inject.istio.io/templates",
            &[
                "sidecar",
                "gateway",
                "grpc-agent",
                "grpc-simple",
                "sidecar,grpc-agent",
                "grpc-agent,sidecar",
                "sidecar,gateway",
                "gateway,sidecar",
                "gateway,grpc-agent",
                "sidecar,grpc-simple",
                "nope",
            ],
        ),
        maybe("sidecar.istio.io/nativeSidecar", &["true", "false"]),
        maybe("sidecar.istio.io/logLevel", &["debug", "warning"]),
        maybe("sidecar.istio.io/agentLogLevel", &["debug", "default:info"]),
        maybe(
            "sidecar.istio.io/componentLogLevel",
            &["misc:error,upstream:debug"],
        ),
        maybe(
            "sidecar.istio.io/proxyImage",
            &["example/proxyv2:custom", "proxyv2"],
        ),
        maybe("sidecar.istio.io/enableCoreDump", &["true", "false"]),
        maybe("prometheus.istio.io/merge-metrics", &["false", "true"]),
        maybe(
            "istio.io/reroute-virtual-interfaces",
            &["net1", "net1,net2"],
        ),
        maybe(
            "sidecar.istio.io/userVolume",
            &[r#"{"extra":{"emptyDir":{}}}"#, "{"],
        ),
        maybe(
            "sidecar.istio.io/userVolumeMount",
            &[r#"{"extra":{"mountPath":"/extra"}}"#],
        ),
    ];
    all.prop_map(|v| v.into_iter().flatten().collect())
}

const PORT_NAMES: &[&str] = &["http", "grpc", "metrics", "tcp-db", "http-admin"];

fn port() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(&[80u16, 8080, 9090, 3000, 15020, 15021, 15090][..]),
        prop::option::weighted(0.6, prop::sample::select(PORT_NAMES)),
        prop::option::weighted(0.2, pick(&["TCP", "UDP"])),
    )
        .prop_map(|(p, name, proto)| {
            let mut v = json!({ "containerPort": p });
            if let Some(n) = name {
                v["name"] = n.into();
            }
            if let Some(pr) = proto {
                v["protocol"] = pr.into();
            }
            v
        })
}

/// A probe or hook target port: a number, a name of a generated port, or an unknown name.
fn target_port() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(&[80u16, 8080, 9090, 15021][..]).prop_map(Value::from),
        prop::sample::select(PORT_NAMES).prop_map(Value::from),
        Just(Value::from("unknown")),
    ]
}

fn probe() -> impl Strategy<Value = Value> {
    let handler = prop_oneof![
        (
            target_port(),
            pick(&["/healthz", "/ready", ""]),
            prop::option::of(pick(&["HTTP", "HTTPS"]))
        )
            .prop_map(|(port, path, scheme)| {
                let mut h = json!({ "port": port });
                if !path.is_empty() {
                    h["path"] = path.into();
                }
                if let Some(s) = scheme {
                    h["scheme"] = s.into();
                }
                json!({ "httpGet": h })
            }),
        target_port().prop_map(|port| json!({ "tcpSocket": { "port": port } })),
        (
            prop::sample::select(&[9090u16, 8080][..]),
            prop::option::of(pick(&["", "svc"]))
        )
            .prop_map(|(port, service)| {
                let mut g = json!({ "port": port });
                if let Some(s) = service {
                    g["service"] = s.into();
                }
                json!({ "grpc": g })
            }),
        Just(json!({ "exec": { "command": ["cat", "/tmp/ok"] } })),
    ];
    (handler, prop::option::of(1u8..5), prop::option::of(1u8..30)).prop_map(
        |(mut p, timeout, period)| {
            if let Some(t) = timeout {
                p["timeoutSeconds"] = t.into();
            }
            if let Some(t) = period {
                p["periodSeconds"] = t.into();
            }
            p
        },
    )
}

fn hook() -> impl Strategy<Value = Value> {
    prop_oneof![
        (target_port(), pick(&["/drain", "/start"]))
            .prop_map(|(port, path)| json!({ "httpGet": { "port": port, "path": path } })),
        target_port().prop_map(|port| json!({ "tcpSocket": { "port": port } })),
        Just(json!({ "exec": { "command": ["sh", "-c", "sleep 1"] } })),
        Just(json!({ "sleep": { "seconds": 2 } })),
    ]
}

fn app_container(name: String) -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(port(), 0..3),
        prop::option::weighted(0.3, probe()),
        prop::option::weighted(0.3, probe()),
        prop::option::weighted(0.2, probe()),
        prop::option::weighted(0.15, hook()),
        prop::option::weighted(0.15, hook()),
    )
        .prop_map(
            move |(ports, readiness, liveness, startup, post_start, pre_stop)| {
                let mut c = json!({ "name": name, "image": "example/app:1" });
                // Ports of one container must be unique by number and by name.
                let mut seen_num = Vec::new();
                let mut seen_name = Vec::new();
                let ports: Vec<Value> = ports
                    .into_iter()
                    .filter(|p| {
                        let n = p["containerPort"].as_u64();
                        let nm = p["name"].as_str().map(str::to_string);
                        let fresh = !seen_num.contains(&n)
                            && nm.as_ref().is_none_or(|x| !seen_name.contains(x));
                        if fresh {
                            seen_num.push(n);
                            if let Some(x) = nm {
                                seen_name.push(x);
                            }
                        }
                        fresh
                    })
                    .collect();
                if !ports.is_empty() {
                    c["ports"] = ports.into();
                }
                for (k, p) in [
                    ("readinessProbe", readiness),
                    ("livenessProbe", liveness),
                    ("startupProbe", startup),
                ] {
                    if let Some(p) = p {
                        c[k] = p;
                    }
                }
                let mut lc = serde_json::Map::new();
                if let Some(h) = post_start {
                    lc.insert("postStart".into(), h);
                }
                if let Some(h) = pre_stop {
                    lc.insert("preStop".into(), h);
                }
                if !lc.is_empty() {
                    c["lifecycle"] = Value::Object(lc);
                }
                c
            },
        )
}

/// The pod's own `istio-proxy` container, merged over the injected one.
fn user_proxy() -> impl Strategy<Value = Value> {
    (
        pick(&["auto", "example/proxyv2:custom"]),
        prop::option::of(Just(
            json!({"requests": {"cpu": "50m"}, "limits": {"memory": "256Mi"}}),
        )),
        prop::option::of(Just(json!(["proxy", "router"]))),
        prop::option::of(prop::sample::select(&[1337i64, 2000, 0][..])),
    )
        .prop_map(|(image, res, args, uid)| {
            let mut c = json!({ "name": "istio-proxy", "image": image });
            if let Some(r) = res {
                c["resources"] = r;
            }
            if let Some(a) = args {
                c["args"] = a;
            }
            if let Some(u) = uid {
                c["securityContext"] = json!({ "runAsUser": u });
            }
            c
        })
}

const LONG: &str = "a-very-long-application-name-that-goes-well-past-the-sixty-three-char-limit";

fn pod() -> impl Strategy<Value = Value> {
    let containers = (1usize..=3).prop_flat_map(|n| {
        (0..n)
            .map(|i| app_container(["app", "sidecar-helper", "db"][i].to_string()).boxed())
            .collect::<Vec<_>>()
    });
    let inits = prop::collection::vec(Just(()), 0..=2).prop_map(|v| {
        v.iter()
            .enumerate()
            .map(|(i, _)| json!({"name": format!("init-{i}"), "image": "busybox", "command": ["true"]}))
            .collect::<Vec<_>>()
    });
    (
        containers,
        inits,
        prop::option::weighted(0.15, user_proxy()),
        annotations(),
        prop::option::of(pick(&["web", LONG])),
        prop::option::of(pick(&["v1", "v2"])),
        prop::option::weighted(0.2, pick(&["istio", "disabled"])),
        prop_oneof![Just("plain"), Just("replicaset"), Just("long")],
    )
        .prop_map(|(mut containers, inits, proxy, ann, app, version, tls, naming)| {
            if let Some(p) = proxy {
                containers.push(p);
            }
            let mut labels = serde_json::Map::new();
            if let Some(a) = app {
                labels.insert("app".into(), a.into());
            }
            if let Some(v) = version {
                labels.insert("version".into(), v.into());
            }
            if let Some(t) = tls {
                labels.insert("security.istio.io/tlsMode".into(), t.into());
            }
            let mut meta = json!({ "namespace": NAMESPACE });
            match naming {
                "replicaset" => {
                    meta["generateName"] = "web-5d8c7b9f4-".into();
                    labels.insert("pod-template-hash".into(), "5d8c7b9f4".into());
                    meta["ownerReferences"] = json!([{ "apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "name": "web-5d8c7b9f4", "uid": "u1", "controller": true }]);
                }
                "long" => meta["name"] = format!("{LONG}-pod").into(),
                _ => meta["name"] = "web-0".into(),
            }
            if !labels.is_empty() {
                meta["labels"] = Value::Object(labels);
            }
            if !ann.is_empty() {
                meta["annotations"] = json!(ann);
            }
            let mut spec = json!({ "containers": containers });
            if !inits.is_empty() {
                spec["initContainers"] = inits.into();
            }
            json!({ "apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec })
        })
}

// ---------------------------------------------------------------------------------------
// The test.

fn skip() -> bool {
    let skip = std::env::var("MESHREV_SKIP_E2E").as_deref() == Ok("1")
        && std::env::var("CI").as_deref() != Ok("true");
    if skip {
        println!("SKIPPED differential test against Istio's injector: MESHREV_SKIP_E2E=1");
    }
    skip
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn read_pod(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).expect("read pod")).expect("pod JSON")
}

fn known_class(pod: &Value) -> Option<&'static Known> {
    KNOWN.iter().find(|k| (k.applies)(pod))
}

#[test]
fn meshrev_agrees_with_istios_injector_on_generated_pods() {
    if skip() {
        return;
    }
    let started = Instant::now();
    let h = Harness::new();
    let regressions = root().join("tests/differential/regressions");
    let known_dir = root().join("tests/differential/known");

    // 1. Every documented disagreement still disagrees on its minimal pod.
    let mut stale = Vec::new();
    for k in KNOWN {
        let path = known_dir.join(format!("{}.json", k.id));
        let pod = read_pod(&path);
        assert!(
            (k.applies)(&pod),
            "{}: its minimal pod is not in its class",
            k.id
        );
        match h.check(&pod) {
            None => stale.push(format!("{}: {}", k.id, k.reason)),
            Some((class, detail)) => eprintln!("known {}: {class}\n{detail}", k.id),
        }
    }
    let compare_known = std::env::var_os("DIFFERENTIAL_COMPARE_KNOWN").is_some();
    assert!(
        stale.is_empty() || compare_known,
        "documented disagreements that now agree (remove them from KNOWN and \
         tests/differential/known/):\n{}",
        stale.join("\n")
    );

    // 2. The saved regression inputs.
    let mut replayed = 0;
    for p in json_files(&regressions) {
        let pod = read_pod(&p);
        replayed += 1;
        if known_class(&pod).is_some() {
            continue;
        }
        if let Some((class, detail)) = h.check(&pod) {
            panic!(
                "regression input {} disagrees: {class}\n{detail}",
                p.display()
            );
        }
    }

    // 3. Generated pods.
    let cases: u32 = std::env::var("DIFFERENTIAL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let survey = std::env::var_os("DIFFERENTIAL_SURVEY").is_some();
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let stats = std::cell::RefCell::new((0u32, 0u32, 0u32, 0u32)); // compared, agreed, known, refused both
    let classes: std::cell::RefCell<BTreeMap<String, (u32, String, String)>> = Default::default();
    // Debugging aids: every generated pod asks for these templates; compare the pods of the
    // documented classes too (to see what still differs in them).
    let force_templates = std::env::var("DIFFERENTIAL_TEMPLATES").ok();
    let per_known: std::cell::RefCell<BTreeMap<&str, u32>> = Default::default();
    let result = runner.run(&pod(), |mut pod| {
        if let Some(t) = &force_templates {
            pod["metadata"]["annotations"]["inject.istio.io/templates"] = t.as_str().into();
        }
        if !compare_known && let Some(k) = known_class(&pod) {
            stats.borrow_mut().2 += 1;
            *per_known.borrow_mut().entry(k.id).or_insert(0) += 1;
            return Ok(());
        }
        let (_, istio, ours) = h.run(&pod);
        let mut st = stats.borrow_mut();
        st.0 += 1;
        if matches!((&istio, &ours), (Answer::Refused(_), Answer::Refused(_))) {
            st.3 += 1;
        }
        match compare(&istio, &ours) {
            None => {
                st.1 += 1;
                Ok(())
            }
            Some((class, detail)) if survey => {
                let mut c = classes.borrow_mut();
                // Keep the smallest example of each class.
                let text = serde_json::to_string(&pod).unwrap_or_default();
                let e = c
                    .entry(class)
                    .or_insert_with(|| (0, text.clone(), detail.clone()));
                e.0 += 1;
                if text.len() < e.1.len() {
                    (e.1, e.2) = (text, detail);
                }
                Ok(())
            }
            Some((class, detail)) => Err(TestCaseError::fail(format!("{class}\n{detail}"))),
        }
    });
    let (compared, agreed, known, both_refused) = *stats.borrow();
    eprintln!(
        "differential: {} regression inputs replayed; {cases} generated pods: {compared} compared, \
         {agreed} agree ({both_refused} refused by both), {known} in documented disagreements \
         ({} classes); {:.1?}",
        replayed,
        KNOWN.len(),
        started.elapsed()
    );
    for (id, n) in per_known.borrow().iter() {
        eprintln!("  documented {id}: {n}");
    }
    for (class, (n, pod, detail)) in classes.borrow().iter() {
        eprintln!("\n== {n} × {class}\n{pod}\n{detail}");
    }
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, mut minimal)) => {
            // The pod as it was compared, with the templates DIFFERENTIAL_TEMPLATES forced on
            // it (else the saved pod would not disagree when replayed).
            if let Some(t) = &force_templates {
                minimal["metadata"]["annotations"]["inject.istio.io/templates"] = t.as_str().into();
            }
            std::fs::create_dir_all(&regressions).expect("create the regressions directory");
            let text = serde_json::to_string_pretty(&minimal).expect("pod JSON");
            let name = format!("{:016x}.json", fnv(&text));
            std::fs::write(regressions.join(&name), text + "\n").expect("save the minimal pod");
            panic!(
                "meshrev and Istio's injector disagree; minimal pod saved as \
                 tests/differential/regressions/{name} (commit it; it is replayed on every run):\n\
                 {}\n{why}",
                serde_json::to_string(&minimal).unwrap_or_default()
            );
        }
        Err(e) => panic!("{e}"),
    }
    assert!(
        classes.borrow().is_empty(),
        "{} classes of disagreement (see above)",
        classes.borrow().len()
    );
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// A debugging aid: `DIFFERENTIAL_SHOW=pod.json cargo test --test differential show -- --nocapture`
/// prints how the two injectors differ on that pod (nothing to do without the variable).
#[test]
fn show() {
    let Some(path) = std::env::var_os("DIFFERENTIAL_SHOW") else {
        return;
    };
    let h = Harness::new();
    let pod = read_pod(Path::new(&path));
    match h.check(&pod) {
        None => eprintln!("agree"),
        Some((class, detail)) => eprintln!("{class}\n{detail}"),
    }
}
