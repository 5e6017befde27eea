//! The live page at the admin API's `/`, loaded in headless Chromium (Debian's `chromium`,
//! which the README's test command installs), and `switchyard top`.

use std::path::PathBuf;
use std::process::Command;

use std::time::Duration;

use crate::support::{TestManifest, admin_get, repo_root, send, service};

/// `faulty` calls `hello`; some of its requests trap.
fn manifest() -> TestManifest {
    TestManifest::new(&format!(
        "{}{}",
        service("faulty", "faulty", &["POST /f/{fault}"], ""),
        service("hello", "hello", &["GET /hello/{name}"], ""),
    ))
}

/// Traffic the page must show: 10 greetings, 4 calls faulty → hello (requests to faulty,
/// calls to hello), 2 traps.
async fn traffic(node: &switchyard::Node) {
    for _ in 0..10 {
        assert_eq!(
            send(node.http_addr(), "GET", "/hello/ada", "").await.status,
            200
        );
    }
    for _ in 0..4 {
        let reply = send(
            node.http_addr(),
            "POST",
            "/f/call",
            "hello\nGET /hello/call",
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    for _ in 0..2 {
        assert_eq!(
            send(node.http_addr(), "POST", "/f/trap", "").await.status,
            500
        );
    }
}

/// Runs Chromium headless on `url` with `extra` arguments, as the machine's notes say it runs
/// here (no sandbox as root, nothing fetched in the background), and answers its stdout.
fn chromium(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // Time for the script to fetch /live a few times (once a second) before the dump.
        .arg("--virtual-time-budget=3500")
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs (the README's test command installs Debian's chromium)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the first `<td data-field="field">` inside the element that carries `marker`.
fn field(dom: &str, marker: &str, field: &str) -> String {
    let start = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in the page:\n{dom}"));
    let row = &dom[start..];
    let row = &row[..row.find("</tr>").unwrap_or(row.len())];
    let cell = format!("data-field=\"{field}\"");
    let at = row
        .find(&cell)
        .unwrap_or_else(|| panic!("no {field} in {row}"));
    let text = &row[at..];
    let text = &text[text.find('>').unwrap() + 1..];
    text[..text.find('<').unwrap()].to_owned()
}

fn screenshot_path() -> PathBuf {
    let dir = repo_root().join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("live-page.png")
}

#[tokio::test]
async fn the_live_page_shows_the_traffic_in_headless_chromium() {
    let manifest = manifest();
    let node = manifest.start().await;
    traffic(&node).await;
    let token = std::fs::read_to_string(node.admin_token_file()).unwrap();
    let url = format!("http://{}/#token={}", node.admin_addr(), token.trim());

    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || chromium(&url, &["--dump-dom"])
    })
    .await
    .unwrap();
    // The page refreshed itself from /live at least twice.
    let refreshes: u32 = {
        let at = dom
            .find("data-refreshes=\"")
            .expect("the page has its refresh count")
            + 16;
        dom[at..at + dom[at..].find('"').unwrap()].parse().unwrap()
    };
    assert!(refreshes >= 2, "{refreshes} refreshes:\n{dom}");
    assert_eq!(
        field(&dom, "data-service=\"hello\"", "total"),
        "10",
        "{dom}"
    );
    let rate: f64 = field(&dom, "data-service=\"hello\"", "rps")
        .parse()
        .unwrap();
    assert!(rate > 0.0, "hello at {rate}/s");
    let p50: f64 = field(&dom, "data-service=\"hello\"", "p50")
        .parse()
        .unwrap();
    assert!(p50 > 0.0 && p50 < 5000.0, "p50 {p50} ms");
    assert_eq!(field(&dom, "data-service=\"hello\"", "errors"), "0.0%");
    // 2 of faulty's 6 requests trapped.
    assert_eq!(field(&dom, "data-service=\"faulty\"", "errors"), "33.3%");
    assert_eq!(field(&dom, "data-call=\"faulty/hello\"", "total"), "4");
    assert!(dom.contains("data-edge=\"faulty/hello\""), "{dom}");

    // The same page without the token asks for it and shows nothing.
    let bare = format!("http://{}/", node.admin_addr());
    let asked = tokio::task::spawn_blocking(move || chromium(&bare, &["--dump-dom"]))
        .await
        .unwrap();
    assert!(
        asked.contains("id=\"login\"") && !asked.contains("data-service="),
        "{asked}"
    );
    // /live itself needs the token; the page does not.
    let live = crate::support::get(node.admin_addr(), "/live").await;
    assert_eq!(live.status, 401);
    assert_eq!(
        crate::support::get(node.admin_addr(), "/").await.status,
        200
    );

    // A screenshot of the page, kept with the run's output.
    let shot = screenshot_path();
    let _ = std::fs::remove_file(&shot);
    let arg = format!("--screenshot={}", shot.display());
    tokio::task::spawn_blocking(move || chromium(&url, &[&arg, "--window-size=1280,900"]))
        .await
        .unwrap();
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    node.shutdown().await;
}

#[tokio::test]
async fn switchyard_top_shows_the_same_numbers() {
    let manifest = manifest();
    let node = manifest.start().await;
    traffic(&node).await;
    let live = admin_get(&node, "/live").await;
    assert_eq!(live.status, 200, "{}", live.body);
    let token_file = node.admin_token_file().display().to_string();
    let admin = node.admin_addr().to_string();
    let args = [
        "top",
        "--admin",
        &admin,
        "--token-file",
        &token_file,
        "--once",
    ];
    let top = crate::support::switchyard_cli(&args).await;
    assert!(top.success, "{}", top.stderr);
    let line = |start: &str| {
        top.stdout
            .lines()
            .find(|line| line.starts_with(start))
            .unwrap_or_else(|| panic!("no {start} line:\n{}", top.stdout))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let hello = line("hello ");
    assert_eq!(
        hello.last().map(String::as_str),
        Some("10"),
        "{}",
        top.stdout
    );
    let faulty = line("faulty ");
    assert_eq!(faulty[4], "33.3%", "{}", top.stdout);
    let call = line("faulty -> hello");
    // caller, ->, callee, calls/s, p50, p99, errors, total, then the nodes the callers run on.
    assert_eq!(call[7], "4", "{}", top.stdout);
    assert_eq!(
        call.get(8).map(String::as_str),
        Some("test"),
        "{}",
        top.stdout
    );
    node.shutdown().await;
}

/// The graph is the mesh's: the page of a node that makes no calls shows the calls its
/// peer's services make, with the node they came from.
#[tokio::test]
async fn the_call_graph_spans_the_mesh() {
    let b_manifest = TestManifest::with_node(
        "name = \"node-b\"\nquic = \"127.0.0.1:0\"",
        &service("hello", "hello", &["GET /hello/{name}"], ""),
    );
    let b = b_manifest.start().await;
    let a_manifest = TestManifest::with_node(
        &format!(
            "name = \"node-a\"\nquic = \"127.0.0.1:0\"\nseeds = [\"{}\"]",
            b.quic_addr().unwrap()
        ),
        &service("faulty", "faulty", &["POST /f/{fault}"], ""),
    );
    let a = a_manifest.start().await;
    crate::mesh::wait_for_peer_service(&a, "hello").await;
    crate::mesh::wait_for_peer_service(&b, "faulty").await;
    // B's first look hears A: what A counted before it is history, not the window's.
    let first = admin_get(&b, "/live").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let first: serde_json::Value = serde_json::from_str(&first.body).unwrap();
    assert_eq!(first["call_nodes"], serde_json::json!(["node-b", "node-a"]));

    for _ in 0..4 {
        let reply = send(a.http_addr(), "POST", "/f/call", "hello\nGET /hello/mesh").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let live = admin_get(&b, "/live").await;
    let live: serde_json::Value = serde_json::from_str(&live.body).unwrap();
    let calls = live["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{live}");
    assert_eq!(
        (&calls[0]["caller"], &calls[0]["callee"], &calls[0]["total"]),
        (
            &serde_json::json!("faulty"),
            &serde_json::json!("hello"),
            &serde_json::json!(4)
        ),
        "{live}"
    );
    assert_eq!(calls[0]["nodes"], serde_json::json!(["node-a"]), "{live}");
    assert!(calls[0]["per_second"].as_f64().unwrap() > 0.0, "{live}");
    assert_eq!(calls[0]["error_rate"], serde_json::json!(0.0), "{live}");

    // Chromium shows the edge on B's page, with where its callers run.
    let token = std::fs::read_to_string(b.admin_token_file()).unwrap();
    let url = format!("http://{}/#token={}", b.admin_addr(), token.trim());
    let dom = tokio::task::spawn_blocking(move || chromium(&url, &["--dump-dom"]))
        .await
        .unwrap();
    assert_eq!(
        field(&dom, "data-call=\"faulty/hello\"", "total"),
        "4",
        "{dom}"
    );
    assert_eq!(
        field(&dom, "data-call=\"faulty/hello\"", "nodes"),
        "node-a",
        "{dom}"
    );
    assert!(dom.contains("data-edge=\"faulty/hello\""), "{dom}");

    // A gone, B's graph keeps A's last totals only while A is a live member.
    a.shutdown().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let live = admin_get(&b, "/live").await;
        let live: serde_json::Value = serde_json::from_str(&live.body).unwrap();
        if live["call_nodes"] == serde_json::json!(["node-b"]) {
            assert_eq!(live["calls"], serde_json::json!([]), "{live}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B still draws A's calls after A left: {live}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.shutdown().await;
}
