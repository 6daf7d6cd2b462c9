//! A real Kubernetes control plane for end-to-end tests: embedded etcd,
//! kube-apiserver and kube-controller-manager, all from one Go binary built
//! from the Kubernetes modules (`tests/k8s/`, built by `tests/k8s/build.sh`
//! into `target/k8s/kube`; the first build is slow, later ones hit Go's cache).
//!
//! Use from an integration test file (`tests/<name>.rs`):
//!
//! ```ignore
//! #[path = "support/cluster.rs"]
//! mod cluster;
//!
//! #[tokio::test]
//! async fn works() -> anyhow::Result<()> {
//!     if cluster::skip_e2e() { return Ok(()); }
//!     let c = cluster::shared();            // one control plane per test binary
//!     let client = c.client().await?;       // a new client per test (per tokio runtime)
//!     let ns = cluster::create_namespace(&client, "demo", &[("env", "e2e")]).await?;
//!     # let _ = ns; Ok(())
//! }
//! ```
//!
//! `TestCluster::start()` gives a private control plane that is torn down on
//! drop (also when the test panics: unwinding drops it).
//!
//! No stray processes, however the test binary ends:
//! * every child is spawned with a stdin pipe whose write end only this process
//!   holds (Rust opens pipes close-on-exec) and with `MESHREV_WATCH_STDIN=1`;
//!   the Go binary then stops itself (SIGTERM to itself, hard exit 5s later)
//!   when its stdin reaches EOF, i.e. when this process is gone — even after
//!   SIGKILL or a panic=abort;
//! * `Drop` (and, for `shared()`, an `atexit` hook, since statics are never
//!   dropped) closes those pipes, waits up to 10s, SIGKILLs survivors, and
//!   removes the temp dir.
//!
//! Environment:
//! * `MESHREV_SKIP_E2E=1` — `skip_e2e()` returns true (never when `CI=true`).
//! * `MESHREV_KUBE_BIN` — use this control-plane binary as is (no build).
//! * `MESHREV_KEEP_CLUSTER_DIR=1` — keep the temp dir (logs, certs, etcd data).
//!
//! Logs of each component are in `<dir>/<component>.log`; startup errors carry
//! their tails.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Controllers run by kube-controller-manager (canonical names of v1.36).
/// Enough for Deployments/ReplicaSets to create Pods, for namespaces to get
/// their `default` ServiceAccount and `kube-root-ca.crt`, and for namespace
/// deletion and garbage collection to work. No scheduler or kubelet: Pods stay
/// Pending.
pub const DEFAULT_CONTROLLERS: &str = "deployment-controller,replicaset-controller,\
garbage-collector-controller,namespace-controller,serviceaccount-controller,\
serviceaccount-token-controller,root-ca-certificate-publisher-controller,\
clusterrole-aggregation-controller";

const STARTUP_DEADLINE: Duration = Duration::from_secs(90);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Extra knobs for [`TestCluster::start_with`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Appended to the kube-apiserver command line (later flags win).
    pub apiserver_args: Vec<String>,
    /// Extra environment for kube-apiserver (e.g. `DISABLE_HTTP2=1`).
    pub apiserver_env: Vec<(String, String)>,
    /// Appended to the kube-controller-manager command line.
    pub controller_manager_args: Vec<String>,
    /// `--controllers` value; `None` means [`DEFAULT_CONTROLLERS`].
    pub controllers: Option<String>,
}

struct Proc {
    name: &'static str,
    child: Child,
    /// Held open for the child's lifetime; closing it makes the child stop.
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

pub struct TestCluster {
    /// Admin kubeconfig (token in group system:masters, CA = `ca_cert`).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT`
    pub server_url: String,
    /// Bearer token of user `admin` in group `system:masters`.
    pub token: String,
    /// PEM CA certificate that signed the apiserver's serving certificate.
    pub ca_cert: PathBuf,
    /// Directory of this environment: logs, certs, etcd data.
    pub dir: PathBuf,
    /// Wall time `start()` took.
    pub start_time: Duration,
    tempdir: Mutex<Option<tempfile::TempDir>>,
    procs: Mutex<Vec<Proc>>,
}

impl TestCluster {
    /// Starts a private control plane (sync; fine to call from async tests,
    /// it blocks the calling thread for a few seconds).
    pub fn start() -> Result<TestCluster> {
        Self::start_with(Options::default())
    }

    /// Like [`start`](Self::start), off the async runtime's worker thread.
    pub async fn start_async() -> Result<TestCluster> {
        tokio::task::spawn_blocking(Self::start).await?
    }

    pub fn start_with(opts: Options) -> Result<TestCluster> {
        let bin = kube_binary()?;
        // Ports are picked by binding :0 and released before use; another
        // process may grab one in between, so retry on "address in use".
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(&bin, &opts) {
                Ok(c) => return Ok(c),
                Err(e) if format!("{e:#}").contains("address already in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap())
    }

    fn try_start(bin: &Path, opts: &Options) -> Result<TestCluster> {
        let t0 = Instant::now();
        let tempdir = tempfile::Builder::new()
            .prefix("meshrev-k8s-")
            .tempdir()
            .context("creating temp dir")?;
        let dir = tempdir.path().to_path_buf();
        let [etcd_port, peer_port, api_port] = free_ports::<3>()?;
        let server_url = format!("https://127.0.0.1:{api_port}");
        let token = random_token()?;

        let pki = dir.join("pki");
        run_quiet(Command::new(bin).arg("gen-certs").arg("--dir").arg(&pki))
            .context("generating certificates (kube gen-certs)")?;
        let ca_cert = pki.join("ca.crt");
        let p = |f: &str| pki.join(f).display().to_string();

        fs::write(
            dir.join("tokens.csv"),
            format!("{token},admin,admin-uid,\"system:masters\"\n"),
        )?;
        let kubeconfig = dir.join("admin.kubeconfig");
        fs::write(&kubeconfig, kubeconfig_yaml(&server_url, &ca_cert, &token))?;

        let mut cluster = TestCluster {
            kubeconfig,
            server_url,
            token,
            ca_cert,
            dir: dir.clone(),
            start_time: Duration::ZERO,
            tempdir: Mutex::new(Some(tempdir)),
            procs: Mutex::new(Vec::new()),
        };
        let deadline = Instant::now() + STARTUP_DEADLINE;

        // etcd
        cluster.spawn(
            "etcd",
            Command::new(bin)
                .arg("etcd")
                .arg(format!("--data-dir={}", dir.join("etcd").display()))
                .arg(format!("--client-port={etcd_port}"))
                .arg(format!("--peer-port={peer_port}")),
        )?;
        cluster.wait_until("etcd ready", deadline, |c| {
            Ok(fs::read_to_string(c.log_path("etcd"))?.contains("etcd: ready"))
        })?;

        // kube-apiserver
        let mut api = Command::new(bin);
        api.arg("kube-apiserver").args([
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", dir.join("apiserver-certs").display()),
            format!("--tls-cert-file={}", p("serving.crt")),
            format!("--tls-private-key-file={}", p("serving.key")),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            "--authorization-mode=RBAC".into(),
            format!("--token-auth-file={}", dir.join("tokens.csv").display()),
            format!("--service-account-issuer={}", cluster.server_url),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
        ]);
        api.args(&opts.apiserver_args);
        api.envs(opts.apiserver_env.iter().map(|(k, v)| (k, v)));
        cluster.spawn("kube-apiserver", &mut api)?;
        cluster.wait_api("kube-apiserver /readyz", deadline, |client| async move {
            let req = http::Request::get("/readyz").body(Vec::new())?;
            let body = client.request_text(req).await?;
            Ok(body.trim() == "ok")
        })?;

        // kube-controller-manager
        let mut kcm = Command::new(bin);
        kcm.arg("kube-controller-manager").args([
            format!("--kubeconfig={}", cluster.kubeconfig.display()),
            "--leader-elect=false".into(),
            format!(
                "--controllers={}",
                opts.controllers.as_deref().unwrap_or(DEFAULT_CONTROLLERS)
            ),
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--root-ca-file={}", cluster.ca_cert.display()),
            "--secure-port=0".into(),
            "--profiling=false".into(),
        ]);
        kcm.args(&opts.controller_manager_args);
        cluster.spawn("kube-controller-manager", &mut kcm)?;
        // The serviceaccount controller creating default/default shows the
        // controller-manager is up and talking to the apiserver.
        cluster.wait_api(
            "ServiceAccount default/default",
            deadline,
            |client| async move {
                let sas: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
                    kube::Api::namespaced(client, "default");
                Ok(sas.get_opt("default").await?.is_some())
            },
        )?;

        cluster.start_time = t0.elapsed();
        Ok(cluster)
    }

    /// A new client for the admin kubeconfig. Create one per test: a client
    /// is tied to the tokio runtime it was first used on.
    pub async fn client(&self) -> Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// Path of a component's log file (`etcd`, `kube-apiserver`, `kube-controller-manager`).
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.dir.join(format!("{component}.log"))
    }

    /// Last `n` lines of every component's log, for error messages.
    pub fn log_tails(&self, n: usize) -> String {
        let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for p in procs.iter() {
            out.push_str(&format!("\n----- {} ({}) -----\n", p.name, p.log.display()));
            out.push_str(&tail(&p.log, n));
        }
        out
    }

    /// Stops all components and removes the directory (idempotent).
    pub fn shutdown(&self) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        // Stop in reverse start order (controller-manager, apiserver, etcd):
        // etcd waits for the apiserver's watch streams, and the apiserver
        // stalls without etcd. Closing a child's stdin makes it SIGTERM
        // itself (see module docs); SIGKILL after STOP_GRACE.
        for p in procs.iter_mut().rev() {
            let t = Instant::now();
            p.stdin.take();
            let deadline = t + STOP_GRACE;
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            if std::env::var_os("MESHREV_CLUSTER_DEBUG").is_some() {
                eprintln!("cluster: stopped {} in {:.2?}", p.name, t.elapsed());
            }
        }
        procs.clear();
        drop(procs);
        let mut td = self.tempdir.lock().unwrap_or_else(|e| e.into_inner());
        let keep = std::env::var("MESHREV_KEEP_CLUSTER_DIR").as_deref() == Ok("1");
        match td.take() {
            Some(td) if keep => eprintln!("cluster: keeping {}", td.keep().display()),
            _ => {} // dropping the TempDir removes the directory
        }
    }

    fn spawn(&self, name: &'static str, cmd: &mut Command) -> Result<()> {
        let log = self.log_path(name);
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut child = cmd
            .env("MESHREV_WATCH_STDIN", "1")
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        let stdin = child.stdin.take();
        self.procs.lock().unwrap().push(Proc {
            name,
            child,
            stdin,
            log,
        });
        Ok(())
    }

    /// Fails if a child has exited.
    fn check_alive(&self) -> Result<()> {
        let mut procs = self.procs.lock().unwrap();
        for p in procs.iter_mut() {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} exited early ({status})", p.name);
            }
        }
        Ok(())
    }

    fn startup_error(&self, what: &str, cause: impl std::fmt::Display) -> anyhow::Error {
        anyhow!(
            "test cluster: waiting for {what}: {cause}\nlogs in {}:{}",
            self.dir.display(),
            self.log_tails(40)
        )
    }

    /// Polls `ready` (sync) every 50ms until it returns true.
    fn wait_until(
        &self,
        what: &str,
        deadline: Instant,
        mut ready: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        let mut last_err = String::from("timed out");
        loop {
            if let Err(e) = self.check_alive() {
                return Err(self.startup_error(what, e));
            }
            match ready(self) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last_err = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                return Err(self.startup_error(what, format!("deadline passed; last: {last_err}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls an async check against the apiserver every 100ms until true.
    /// Runs on its own thread and runtime, so it works inside or outside tokio.
    fn wait_api<F, Fut>(&self, what: &str, deadline: Instant, check: F) -> Result<()>
    where
        F: Fn(kube::Client) -> Fut + Send + Sync,
        Fut: std::future::Future<Output = Result<bool>> + Send,
    {
        let kubeconfig = self.kubeconfig.clone();
        std::thread::scope(|s| {
            s.spawn(|| -> Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let client = client_from_kubeconfig(&kubeconfig).await?;
                    let mut last_err = String::from("not ready");
                    loop {
                        if let Err(e) = self.check_alive() {
                            return Err(self.startup_error(what, e));
                        }
                        let attempt =
                            tokio::time::timeout(Duration::from_secs(5), check(client.clone()));
                        match attempt.await {
                            Ok(Ok(true)) => return Ok(()),
                            Ok(Ok(false)) => {}
                            Ok(Err(e)) => last_err = format!("{e:#}"),
                            Err(_) => last_err = "request timed out".into(),
                        }
                        if Instant::now() >= deadline {
                            return Err(self.startup_error(
                                what,
                                format!("deadline passed; last: {last_err}"),
                            ));
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            })
            .join()
            .map_err(|_| anyhow!("readiness thread panicked"))?
        })
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

static SHARED: OnceLock<std::result::Result<TestCluster, String>> = OnceLock::new();

/// The control plane shared by all tests of this test binary: started on
/// first use, stopped (and its dir removed) when the process exits. Panics
/// with the startup error (logs included) if it cannot start.
pub fn shared() -> &'static TestCluster {
    let r = SHARED.get_or_init(|| {
        let r = TestCluster::start().map_err(|e| format!("{e:#}"));
        if let Ok(c) = &r {
            eprintln!(
                "cluster: shared control plane at {} started in {:.2?} (dir {})",
                c.server_url,
                c.start_time,
                c.dir.display()
            );
            register_atexit();
        }
        r
    });
    match r {
        Ok(c) => c,
        Err(e) => panic!("shared test cluster failed to start: {e}"),
    }
}

fn register_atexit() {
    unsafe extern "C" {
        fn atexit(cb: extern "C" fn()) -> std::os::raw::c_int;
    }
    extern "C" fn stop_shared() {
        if let Some(Ok(c)) = SHARED.get() {
            c.shutdown();
        }
    }
    // SAFETY: registers a plain `extern "C" fn()` with the C runtime; it runs
    // at `exit()` (libtest returns from main or calls process::exit).
    unsafe {
        atexit(stop_shared);
    }
}

/// True (with a notice) when `MESHREV_SKIP_E2E=1` and `CI` is not `true`.
pub fn skip_e2e() -> bool {
    let skip = std::env::var("MESHREV_SKIP_E2E").as_deref() == Ok("1")
        && std::env::var("CI").as_deref() != Ok("true");
    if skip {
        println!("SKIPPED e2e: MESHREV_SKIP_E2E=1");
    }
    skip
}

/// Creates a namespace `<prefix>-<unique suffix>` with `labels` and waits
/// (up to 30s) for its `default` ServiceAccount, so Pods can be created in it
/// right away (the ServiceAccount admission plugin is on). Returns the name.
pub async fn create_namespace(
    client: &kube::Client,
    prefix: &str,
    labels: &[(&str, &str)],
) -> Result<String> {
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let suffix = format!(
        "{:x}{:x}{:x}",
        std::process::id() % 0x1000,
        nanos % 0x10000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let prefix: String = prefix.chars().take(62 - suffix.len()).collect();
    let name = format!("{prefix}-{suffix}");

    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.clone());
    ns.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    );
    let api: kube::Api<Namespace> = kube::Api::all(client.clone());
    api.create(&Default::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;

    let sas: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), &name);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if sas.get_opt("default").await?.is_some() {
            return Ok(name);
        }
        if Instant::now() >= deadline {
            bail!(
                "namespace {name}: no default ServiceAccount after 30s (controller-manager down?)"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client for a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await?;
    Ok(kube::Client::try_from(cfg)?)
}

/// The control-plane binary: `$MESHREV_KUBE_BIN` as is, else
/// `target/k8s/kube`, (re)built by `tests/k8s/build.sh` when missing or stale.
/// Built at most once per process.
fn kube_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MESHREV_KUBE_BIN") {
        return Ok(PathBuf::from(p));
    }
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let bin = root.join("target/k8s/kube");
            let missing = !bin.exists();
            if missing {
                progress(&format!(
                    "building the test control plane {} with tests/k8s/build.sh: several minutes on a fresh clone, seconds later (Go's cache); progress every 30 s",
                    bin.display()
                ));
            }
            // build.sh is a no-op when the binary is newer than its sources.
            // Its output goes to our stderr (not captured by libtest) so a
            // long build shows progress.
            let t0 = Instant::now();
            let mut child = Command::new("bash")
                .arg(root.join("tests/k8s/build.sh"))
                .env("MESHREV_KUBE_BIN", &bin)
                .stdout(std::io::stderr())
                .spawn()
                .map_err(|e| format!("running tests/k8s/build.sh: {e}"))?;
            // A heartbeat while it runs, so a long build is not mistaken for a hang.
            let (done, finished) = std::sync::mpsc::channel::<()>();
            let heartbeat = std::thread::spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    finished.recv_timeout(Duration::from_secs(30))
                {
                    progress(&format!(
                        "still building the test control plane ({} s)",
                        t0.elapsed().as_secs()
                    ));
                }
            });
            let status = child.wait();
            drop(done);
            let _ = heartbeat.join();
            let status = status.map_err(|e| format!("running tests/k8s/build.sh: {e}"))?;
            let took = t0.elapsed();
            if missing || took > Duration::from_secs(5) {
                progress(&format!(
                    "tests/k8s/build.sh {} after {} s",
                    if status.success() { "finished" } else { "failed" },
                    took.as_secs()
                ));
            }
            if !status.success() {
                return Err(format!("tests/k8s/build.sh failed ({status})"));
            }
            Ok(bin)
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// One line to the test process's real stderr: libtest captures `eprintln!` of a passing
/// test, and these lines are for the person waiting on the first build.
fn progress(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "cluster: {line}");
}

fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0u16; N];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr()?.port();
    }
    Ok(ports)
}

fn random_token() -> Result<String> {
    let mut buf = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn kubeconfig_yaml(server: &str, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: meshrev-test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: meshrev-test
  context:
    cluster: meshrev-test
    user: admin
current-context: meshrev-test
",
        ca = ca.display()
    )
}

fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let mut s = lines[lines.len().saturating_sub(n)..].join("\n");
            s.push('\n');
            s
        }
        Err(e) => format!("(cannot read: {e})\n"),
    }
}
