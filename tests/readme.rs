//! The README's first lines promise two commands that work on a fresh clone: one serves the
//! embedded default, one runs the tests. This runs the first one as written (in the dev
//! profile: CI has no release build) on free ports until it reports ready, and checks the
//! second is the command CI runs, so a change that breaks either (say, a second `[[bin]]`
//! without `default-run`, which makes `cargo run` ask which binary) fails here.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(180);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The commands of the README's first code block, comments stripped.
fn first_commands() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let block = readme
        .split("```")
        .nth(1)
        .expect("the README must start with a code block");
    block
        .lines()
        .skip(1) // the info string (`sh`)
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

fn ready(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200")
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_readmes_first_two_commands() {
    let cmds = first_commands();
    assert_eq!(
        cmds.len(),
        2,
        "the README's first block must hold two commands: {cmds:?}"
    );
    assert_eq!(
        cmds[1],
        ["cargo", "test"],
        "the second must be the test command CI runs"
    );

    let serve = &cmds[0];
    assert_eq!(
        serve[..2],
        ["cargo", "run"],
        "the first must be a cargo run: {serve:?}"
    );
    assert!(
        serve.iter().any(|a| a == "serve"),
        "the first must serve: {serve:?}"
    );
    let (admin, webhook) = (free_port(), free_port());
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root())
        .args(serve[1..].iter().filter(|a| *a != "--release"))
        .args(["--listen", &format!("127.0.0.1:{webhook}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{admin}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = Killed(cmd.spawn().expect("cargo must run"));
    let start = Instant::now();
    while !ready(admin) {
        if let Ok(Some(status)) = child.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!(
                "`{}` exited ({status}) before it was ready:\n{err}",
                serve.join(" ")
            );
        }
        assert!(
            start.elapsed() < DEADLINE,
            "`{}` not ready on :{admin}/readyz after {DEADLINE:?}",
            serve.join(" ")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
