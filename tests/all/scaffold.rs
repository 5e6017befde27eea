//! `switchyard new` makes a crate that builds and serves out of the box, anywhere (it depends
//! on the SDK the binary carries), quickly after the first (one shared target directory); and
//! `switchyard dev` keeps a node serving its latest save.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{switchyard_bin, switchyard_home, switchyard_in_home};

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
        .env("SWITCHYARD_HOME", switchyard_home())
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

    // It depends on the SDK the binary carries, written into Switchyard's home (no path into
    // a source checkout), and has serde.
    let cargo_toml = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    let home = switchyard_home().canonicalize().unwrap();
    assert!(
        cargo_toml.contains(&format!("path = \"{}/sdk/", home.display())),
        "{cargo_toml}"
    );
    assert!(cargo_toml.contains("serde = "), "{cargo_toml}");

    // Build it the way the README says.
    switchyard_in_home(&["build".as_ref(), crate_dir.as_os_str()]);
    // A second guest's first build reuses what the first compiled: only the crate itself.
    switchyard_in_home(&[
        "new".as_ref(),
        "second-svc".as_ref(),
        "--dir".as_ref(),
        dir.path().as_os_str(),
    ]);
    let second = switchyard_in_home(&["build".as_ref(), dir.path().join("second-svc").as_os_str()]);
    let compiled: Vec<&str> = second
        .lines()
        .filter(|line| line.trim_start().starts_with("Compiling"))
        .collect();
    assert_eq!(compiled.len(), 1, "{second}");
    assert!(compiled[0].contains("second-svc"), "{second}");

    // Serve it on free ports and ask it something.
    let manifest = on_free_ports(&crate_dir);
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

/// What `switchyard dev` must beat on a save of the hello guest: the aim is 2 s (measured on
/// an idle machine and reported in the note); this bound only catches a loop that
/// stopped working, since the test shares two cores with the rest of the suite.
const SAVE_TO_SERVING_BOUND: Duration = Duration::from_secs(20);

#[test]
fn dev_serves_each_save_and_keeps_the_last_good_build() {
    let dir = tempfile::tempdir().unwrap();
    switchyard_in_home(&[
        "new".as_ref(),
        "dev-hello".as_ref(),
        "--dir".as_ref(),
        dir.path().as_os_str(),
    ]);
    let project = dir.path().join("dev-hello");
    on_free_ports(&project);

    let dev = Command::new(switchyard_bin())
        .arg("dev")
        .arg(&project)
        .env("SWITCHYARD_HOME", switchyard_home())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut dev = KillOnDrop(dev);
    let lines = forward_lines(&mut dev.0);
    let serving = wait_for_line(&lines, "dev: serving", Duration::from_secs(300));
    let addr: std::net::SocketAddr = serving
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ask = || {
        runtime
            .block_on(crate::support::get(addr, "/dev-hello/ada"))
            .body
    };
    assert_eq!(ask(), "Hello, ada!\n");

    // A save: the new build answers soon after.
    let source = project.join("src/lib.rs");
    let code = std::fs::read_to_string(&source).unwrap();
    let saved = Instant::now();
    std::fs::write(
        &source,
        code.replace("{name}!", "{name}, from the new build!"),
    )
    .unwrap();
    while ask() != "Hello, ada, from the new build!\n" {
        assert!(
            saved.elapsed() < SAVE_TO_SERVING_BOUND,
            "the save never served"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "switchyard dev: save → new version answering in {} ms",
        saved.elapsed().as_millis()
    );

    // A save that does not compile: the error is printed, the last good build keeps serving.
    std::fs::write(&source, code.replace("struct", "strut")).unwrap();
    wait_for_line(&lines, "dev: build failed", Duration::from_secs(120));
    let error = wait_for_line(&lines, "error", Duration::from_secs(5));
    assert!(error.contains("error"), "{error}");
    assert_eq!(ask(), "Hello, ada, from the new build!\n");

    // Fixed again, it serves again.
    std::fs::write(&source, &code).unwrap();
    wait_for_line(&lines, "swapped to the new build", Duration::from_secs(120));
    assert_eq!(ask(), "Hello, ada!\n");
}

/// Moves the scaffold's manifest to free ports (its 8080 and 9090 may be taken); its path.
fn on_free_ports(project: &std::path::Path) -> std::path::PathBuf {
    let manifest = project.join("switchyard.toml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9090", "127.0.0.1:0");
    std::fs::write(&manifest, text).unwrap();
    manifest
}

/// The child's stderr, line by line, on a channel (so the child never blocks on a full pipe).
fn forward_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if sender.send(strip_ansi(&line)).is_err() {
                break;
            }
        }
    });
    receiver
}

/// The next line that contains `needle`, skipping the others.
fn wait_for_line(
    lines: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    within: Duration,
) -> String {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(err) => panic!(
                "no line with {needle:?} within {within:?} ({err}); the lines before:\n{}",
                seen.join("\n")
            ),
        }
    }
}
