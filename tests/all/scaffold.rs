//! `switchyard new` makes a crate that builds and serves out of the box.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{repo_root, switchyard_bin};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_new_guest_builds_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(switchyard_bin())
        .args(["new", "greeter-svc", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crate_dir = dir.path().join("greeter-svc");
    let user_lines = std::fs::read_to_string(crate_dir.join("src/lib.rs"))
        .unwrap()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .count();
    assert!(
        user_lines <= 15,
        "the scaffolded service has {user_lines} lines"
    );

    // A second `new` with the same name refuses to overwrite.
    let again = Command::new(switchyard_bin())
        .args(["new", "greeter-svc", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // Build it the way the README says (the xtask binary `cargo xtask test` built).
    let xtask = repo_root().join("target/release/xtask");
    let build = Command::new(&xtask)
        .args(["build-guests", "--path"])
        .arg(&crate_dir)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", xtask.display()));
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );

    // Serve it on free ports and ask it something.
    let manifest = crate_dir.join("switchyard.toml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9090", "127.0.0.1:0");
    std::fs::write(&manifest, text).unwrap();
    let node = Command::new(switchyard_bin())
        .arg("run")
        .arg(&manifest)
        .env("SWITCHYARD_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut node = KillOnDrop(node);
    let addr = read_http_addr(&mut node.0);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reply = runtime.block_on(crate::support::get(addr, "/greeter-svc/world"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, "Hello, world!\n");
}

/// Reads the node's log until the `node ready` line and returns its ingress address.
fn read_http_addr(node: &mut Child) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader};
    let stderr = node.stderr.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = BufReader::new(stderr).lines();
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        let plain = strip_ansi(&line);
        if let Some(rest) = plain
            .split("http=")
            .nth(1)
            .filter(|_| plain.contains("node ready"))
        {
            let addr = rest.split_whitespace().next().unwrap();
            // Keep draining the log so the node never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return addr.parse().unwrap();
        }
    }
    panic!("the node never said `node ready`");
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
