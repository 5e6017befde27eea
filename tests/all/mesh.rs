//! Calls between nodes over QUIC with mutual TLS, discovery through seeds, dead peers.

use crate::support::admin_get;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use switchyard::Node;

use crate::support::{TestManifest, get, send, service, switchyard_bin, wait_for_in_flight};

fn faulty_routes() -> String {
    service(
        "faulty",
        "faulty",
        &["GET /f/{fault}", "POST /f/{fault}", "POST /f/{fault}/{arg}"],
        "",
    )
}

pub(crate) async fn wait_for_peer_service(admin: &Node, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let registry = admin_get(admin, "/registry").await.body;
        if registry.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{needle} never appeared: {registry}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts node A (the `faulty` guest, plus `extra` `[node]` lines) with `seed` as its seed,
/// and waits until it has learnt of `service` (e.g. `hello@1.0.0`) from the mesh.
async fn start_node_a(
    seed: SocketAddr,
    extra: &str,
    service: &str,
) -> (TestManifest, switchyard::Node) {
    let manifest = TestManifest::with_node(
        &format!("name = \"node-a\"\nquic = \"127.0.0.1:0\"\nseeds = [\"{seed}\"]\n{extra}"),
        &faulty_routes(),
    );
    let node = manifest.start().await;
    wait_for_peer_service(&node, service).await;
    (manifest, node)
}

#[tokio::test]
async fn a_call_reaches_a_service_on_another_node_and_a_dead_node_is_forgotten() {
    let b_manifest = TestManifest::with_node(
        "name = \"node-b\"\nquic = \"127.0.0.1:0\"",
        &format!(
            "{}{}",
            service("hello", "hello", &["GET /hello/{name}"], ""),
            service("echo-b", "faulty", &["GET /e/{fault}"], "")
        ),
    );
    let b = b_manifest.start().await;
    let b_quic = b.quic_addr().unwrap();
    let (_a_manifest, a) = start_node_a(b_quic, "", "hello@1.0.0").await;

    // Guests see the same picture through discovery.resolve.
    let resolved = get(a.http_addr(), "/f/resolve?hello@^1").await;
    let expected = serde_json::json!([["node-b", false, b_quic.to_string(), "1.0.0"]]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&resolved.body).unwrap(),
        expected
    );
    let resolved = get(a.http_addr(), "/f/resolve?faulty").await;
    assert!(
        resolved.body.contains("[\"node-a\",true,null,\"1.0.0\"]"),
        "{}",
        resolved.body
    );
    assert_eq!(get(a.http_addr(), "/f/resolve?hello@^9").await.body, "[]");
    assert_eq!(
        get(a.http_addr(), "/f/resolve?hello@nope").await.status,
        400
    );

    let reply = send(a.http_addr(), "POST", "/f/call", "hello\nGET /hello/mesh").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "Hello, mesh!\n"));
    // Over QUIC the callee still sees who called, the budget, and the caller's trace.
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = crate::support::send_with(
        a.http_addr(),
        "POST",
        "/f/call",
        "echo-b\nGET /e/echo\n400",
        &[("traceparent", trace)],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (trace_id, _) = crate::rpc::echoed_trace(&reply);
    assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    let echo: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert!(echo["deadline_ms"].as_u64().unwrap() <= 400, "{echo}");
    assert!(
        echo["headers"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["x-switchyard-caller", "faulty"])),
        "{echo}"
    );

    let reply = send(a.http_addr(), "POST", "/f/call", "hello@^2\nGET /hello/x").await;
    assert_eq!(reply.status, 503);
    assert!(
        reply.body.contains("no node runs service `hello` at `^2`"),
        "{}",
        reply.body
    );

    // Node B crashes (dropped: no goodbye): calls fail fast with `unavailable`, and B drops
    // out of the registry within the stated bound (TTL 2 s + one 0.5 s gossip round).
    drop(b);
    let gone = Instant::now();
    loop {
        let started = Instant::now();
        let reply = send(a.http_addr(), "POST", "/f/call", "hello\nGET /hello/x").await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a call to a dead node hung"
        );
        if reply.status == 503 && reply.body.contains("no service named `hello`") {
            break;
        }
        assert!(
            reply.status == 503 || reply.status == 504,
            "{}: {}",
            reply.status,
            reply.body
        );
        assert!(
            gone.elapsed() < Duration::from_secs(4),
            "B was never forgotten"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gone.elapsed() < Duration::from_millis(3500),
        "{:?}",
        gone.elapsed()
    );
    a.shutdown().await;
}

/// A crashed replica costs at most the call that was on its way to it: the call that finds it
/// unreachable goes to the live replica instead (it never left the node), and the calls after
/// it skip the dead one while it is ejected rather than each waiting for a handshake.
#[tokio::test]
async fn calls_fail_over_to_a_live_replica_when_another_crashes() {
    let a_files = TestManifest::with_node(
        "name = \"node-a\"\nquic = \"127.0.0.1:0\"",
        &faulty_routes(),
    );
    let a = a_files.start().await;
    let a_quic = a.quic_addr().unwrap();
    let hello = service("hello", "hello", &["GET /hello/{name}"], "");
    let replica = |name: &str| {
        TestManifest::with_node(
            &format!("name = \"{name}\"\nquic = \"127.0.0.1:0\"\nseeds = [\"{a_quic}\"]"),
            &hello,
        )
    };
    let (b_manifest, c_manifest) = (replica("node-b"), replica("node-c"));
    let b = b_manifest.start().await;
    let c = c_manifest.start().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resolved = get(a.http_addr(), "/f/resolve?hello").await.body;
        let instances: Vec<serde_json::Value> = serde_json::from_str(&resolved).unwrap();
        if instances.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A never saw both replicas: {resolved}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both replicas take calls (round robin), so B's connection is in A's pool.
    for _ in 0..4 {
        let reply = send(a.http_addr(), "POST", "/f/call", "hello\nGET /hello/x").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    drop(b);
    let crashed = Instant::now();
    let mut failed = Vec::new();
    for _ in 0..20 {
        let reply = send(a.http_addr(), "POST", "/f/call", "hello\nGET /hello/x").await;
        if reply.status != 200 {
            failed.push(format!("{}: {}", reply.status, reply.body));
        }
    }
    let took = crashed.elapsed();
    // At most one call was already on the dead connection (sent, so never resent).
    assert!(failed.len() <= 1, "{failed:?}");
    assert!(failed.iter().all(|f| f.starts_with("503")), "{failed:?}");
    // Without ejection every other call would wait a 1 s handshake to B: 10 s or more.
    assert!(took < Duration::from_secs(4), "20 calls took {took:?}");
    c.shutdown().await;
    a.shutdown().await;
}

/// A node that listens on every interface (as in a container) tells peers the address they
/// can dial, and they reach it there.
#[tokio::test]
async fn a_node_listening_on_every_interface_is_reached_at_its_advertised_address() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().to_str().unwrap().to_owned();
    cert(&["ca", "--out", &dir]);
    cert(&["node", "node-a", "--ca-dir", &dir, "--out", &dir]);
    cert(&["node", "node-b", "--ca-dir", &dir, "--out", &dir]);
    let tls = |name: &str| {
        format!(
            "tls = {{ ca = \"{dir}/ca.pem\", cert = \"{dir}/{name}.pem\", key = \"{dir}/{name}.key\" }}"
        )
    };
    let b_manifest = TestManifest::with_node(
        &format!(
            "name = \"node-b\"\nquic = \"0.0.0.0:0\"\nadvertise = \"127.0.0.1:0\"\n{}",
            tls("node-b")
        ),
        &service("hello", "hello", &["GET /hello/{name}"], ""),
    );
    let b = b_manifest.start().await;
    let bound = b.quic_addr().unwrap();
    assert!(bound.ip().is_unspecified(), "{bound}");
    let dialed = SocketAddr::from(([127, 0, 0, 1], bound.port()));
    let (_a_manifest, a) = start_node_a(dialed, &tls("node-a"), "hello@1.0.0").await;
    let registry = admin_get(&a, "/registry").await.body;
    assert!(registry.contains(&dialed.to_string()), "{registry}");
    assert!(!registry.contains("0.0.0.0"), "{registry}");
    let reply = send(a.http_addr(), "POST", "/f/call", "hello\nGET /hello/there").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    a.shutdown().await;
    b.shutdown().await;
}

/// Streams from one peer are answered in its connection's task when the callee does not wait;
/// a callee that computes must not hold that task (and every call behind it) until its
/// deadline. Two worker threads, so one spinning guest cannot block the node outright.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_callee_does_not_hold_up_other_calls_from_the_same_node() {
    let b_manifest = TestManifest::with_node(
        "name = \"node-b\"\nquic = \"127.0.0.1:0\"",
        &format!(
            "{}{}",
            service("hello", "hello", &["GET /hello/{name}"], ""),
            service(
                "spinner",
                "faulty",
                &["GET /e/{fault}"],
                "timeout_ms = 2500"
            )
        ),
    );
    let b = b_manifest.start().await;
    let b_quic = b.quic_addr().unwrap();
    let (_a_manifest, a) = start_node_a(b_quic, "", "spinner@1.0.0").await;
    let a_http = a.http_addr();
    let spinning =
        tokio::spawn(async move { send(a_http, "POST", "/f/call", "spinner\nGET /e/spin").await });
    wait_for_in_flight(
        &b,
        "spinner",
        1,
        Duration::from_secs(2),
        "the spinning call never arrived",
    )
    .await;
    // A takes its connections to B in turn, so some of these share the spinner's.
    for _ in 0..6 {
        let started = Instant::now();
        let reply = send(a_http, "POST", "/f/call", "hello\nGET /hello/x").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_millis(800),
            "a call waited {waited:?} behind a spinning callee"
        );
    }
    assert!(!spinning.is_finished(), "the spinning call ended early");
    let spun = spinning.await.unwrap();
    assert_ne!(spun.status, 200, "{}", spun.body);
    a.shutdown().await;
    b.shutdown().await;
}

/// Seeds only bootstrap: B and C each name only A, yet learn each other; a node that shuts
/// down says goodbye and is forgotten at once, well within the TTL.
#[tokio::test]
async fn gossip_spreads_beyond_seeds_and_a_goodbye_is_heard_at_once() {
    let a_files = TestManifest::with_node("name = \"node-a\"\nquic = \"127.0.0.1:0\"", "");
    let a = a_files.start().await;
    let a_quic = a.quic_addr().unwrap();
    let b_files = TestManifest::with_node(
        &format!("name = \"node-b\"\nquic = \"127.0.0.1:0\"\nseeds = [\"{a_quic}\"]"),
        &faulty_routes(),
    );
    let b = b_files.start().await;
    let c_files = TestManifest::with_node(
        &format!("name = \"node-c\"\nquic = \"127.0.0.1:0\"\nseeds = [\"{a_quic}\"]"),
        &service("hello", "hello", &["GET /hello/{name}"], ""),
    );
    let c = c_files.start().await;
    wait_for_peer_service(&b, "hello@1.0.0").await;
    wait_for_peer_service(&a, "faulty@1.0.0").await;
    let reply = send(b.http_addr(), "POST", "/f/call", "hello\nGET /hello/gossip").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "Hello, gossip!\n")
    );
    // C learned B without ever being told of it by a seed list.
    wait_for_peer_service(&c, "faulty@1.0.0").await;

    let leaving = Instant::now();
    c.shutdown().await;
    let told = leaving.elapsed();
    for admin in [&a, &b] {
        let registry = admin_get(admin, "/registry").await.body;
        assert!(!registry.contains("hello@"), "C still listed: {registry}");
    }
    assert!(told < Duration::from_secs(1), "goodbye took {told:?}");
    let reply = send(b.http_addr(), "POST", "/f/call", "hello\nGET /hello/x").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.body.contains("`hello`"), "{}", reply.body);
    // It stays gone: B's and A's later gossip does not bring it back from rumours.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let registry = admin_get(&b, "/registry").await.body;
    assert!(!registry.contains("hello@"), "C came back: {registry}");
    // B's metrics tell both peers' states.
    let metrics = admin_get(&b, "/metrics").await.body;
    for series in [
        "switchyard_mesh_peer_state{node=\"node-a\",state=\"live\"} 1",
        "switchyard_mesh_peer_state{node=\"node-c\",state=\"departed\"} 1",
    ] {
        assert!(
            metrics.lines().any(|line| line == series),
            "no {series}:\n{metrics}"
        );
    }
    b.shutdown().await;
    a.shutdown().await;
}

fn cert(args: &[&str]) {
    let out = Command::new(switchyard_bin())
        .arg("cert")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn nodes_with_cluster_certificates_talk_and_a_foreign_ca_is_refused() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().to_str().unwrap().to_owned();
    let evil = format!("{dir}/evil");
    cert(&["ca", "--out", &dir]);
    cert(&["node", "node-a", "--ca-dir", &dir, "--out", &dir]);
    cert(&["node", "node-b", "--ca-dir", &dir, "--out", &dir]);
    cert(&["ca", "--out", &evil, "--name", "evil"]);
    cert(&["node", "node-c", "--ca-dir", &evil, "--out", &evil]);
    // The key is private to its owner.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(format!("{dir}/node-a.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let tls = |ca: &str, name: &str| {
        format!(
            "tls = {{ ca = \"{ca}/ca.pem\", cert = \"{ca}/{name}.pem\", key = \"{ca}/{name}.key\" }}"
        )
    };
    let b_manifest = TestManifest::with_node(
        &format!(
            "name = \"node-b\"\nquic = \"127.0.0.1:0\"\n{}",
            tls(&dir, "node-b")
        ),
        &service("hello", "hello", &["GET /hello/{name}"], ""),
    );
    let b = b_manifest.start().await;
    let b_quic = b.quic_addr().unwrap();

    let (_a_manifest, a) = start_node_a(b_quic, &tls(&dir, "node-a"), "hello@1.0.0").await;
    let reply = send(a.http_addr(), "POST", "/f/call", "hello\nGET /hello/tls").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Each knows the other as the node its certificate names.
    let registry = admin_get(&a, "/registry").await.body;
    assert!(registry.contains("\"node-b\""), "{registry}");

    // A node is its certificate: node-b's certificate does not start a node named otherwise.
    let impostor = TestManifest::with_node(
        &format!(
            "name = \"node-x\"\nquic = \"127.0.0.1:0\"\n{}",
            tls(&dir, "node-b")
        ),
        &service("hello", "hello", &["GET /hello/{name}"], ""),
    );
    let refused = switchyard::Node::start(&impostor.load())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        refused.contains("is for node `node-b`, but this manifest's node is `node-x`")
            && refused.contains("switchyard cert node node-x"),
        "{refused}"
    );

    // A node whose certificate comes from another CA learns nothing and reaches nothing.
    let c_manifest = TestManifest::with_node(
        &format!(
            "name = \"node-c\"\nquic = \"127.0.0.1:0\"\nseeds = [\"{b_quic}\"]\n{}",
            tls(&evil, "node-c")
        ),
        &faulty_routes(),
    );
    let c = c_manifest.start().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let registry = admin_get(&c, "/registry").await.body;
    assert!(!registry.contains("hello"), "{registry}");
    let reply = send(c.http_addr(), "POST", "/f/call", "hello\nGET /hello/x").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

/// Node A calls `work`, which runs on a slow node (300 ms) and a fast one, 40 calls with 4 in
/// flight; returns how many calls each node served.
async fn spread(strategy: &str) -> (u64, u64) {
    let work = |sleep: u64| {
        service(
            "work",
            "faulty",
            &["GET /w/{fault}"],
            &format!("config = {{ sleep_ms = \"{sleep}\" }}"),
        )
    };
    let slow_manifest =
        TestManifest::with_node("name = \"slow\"\nquic = \"127.0.0.1:0\"", &work(300));
    let fast_manifest =
        TestManifest::with_node("name = \"fast\"\nquic = \"127.0.0.1:0\"", &work(0));
    let (slow, fast) = (slow_manifest.start().await, fast_manifest.start().await);
    let a_manifest = TestManifest::with_node(
        &format!(
            "name = \"node-a\"\nquic = \"127.0.0.1:0\"\nseeds = [\"{}\", \"{}\"]",
            slow.quic_addr().unwrap(),
            fast.quic_addr().unwrap()
        ),
        &format!(
            "{}\n[balance.work]\nstrategy = \"{strategy}\"\n",
            faulty_routes()
        ),
    );
    let a = a_manifest.start().await;
    wait_for_peer_service(&a, "\"slow\"").await;
    wait_for_peer_service(&a, "\"fast\"").await;
    let reply = send(a.http_addr(), "POST", "/f/load/40", "work\nGET /w/nap").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "40"),
        "{}",
        reply.body
    );
    async fn served(node: &switchyard::Node) -> u64 {
        let services = admin_get(node, "/services").await.body;
        serde_json::from_str::<serde_json::Value>(&services).unwrap()[0]["served"]
            .as_u64()
            .unwrap()
    }
    let counts = (served(&slow).await, served(&fast).await);
    for node in [a, slow, fast] {
        node.shutdown().await;
    }
    counts
}

#[tokio::test]
async fn round_robin_spreads_evenly_and_p2c_and_peak_ewma_avoid_the_slow_node() {
    let (slow, fast) = spread("round-robin").await;
    assert_eq!((slow, fast), (20, 20));
    let (slow, fast) = spread("power-of-two-choices").await;
    assert_eq!(slow + fast, 40);
    assert!(slow <= 8, "p2c sent {slow} of 40 calls to the slow node");
    // Peak EWMA learns from the first slow answer; before it, in-flight counts steer.
    let (slow, fast) = spread("peak-ewma").await;
    assert_eq!(slow + fast, 40);
    assert!(
        slow <= 6,
        "peak EWMA sent {slow} of 40 calls to the slow node"
    );
}

/// Services added to or removed from a running node's manifest reach its peers: a call from
/// another node finds the added one, and the removed one drops out of the registry.
#[tokio::test]
async fn peers_learn_of_services_added_and_removed_by_a_manifest_edit() {
    let hello = service("hello", "hello", &["GET /hello/{name}"], "");
    let b_manifest = TestManifest::with_node("name = \"node-b\"\nquic = \"127.0.0.1:0\"", &hello);
    let mut b = b_manifest.start().await;
    let (reports, mut reported) = tokio::sync::mpsc::unbounded_channel();
    b.watch_manifest(Some(reports)).unwrap();
    let b_quic = b.quic_addr().unwrap();
    let (_a_manifest, a) = start_node_a(b_quic, "", "hello@1.0.0").await;
    let reply = send(a.http_addr(), "POST", "/f/call", "echo-b\nGET /e/echo").await;
    assert_eq!(reply.status, 503, "{}", reply.body);

    // B's manifest gains echo-b (keeping its ports): A learns of it and calls it over QUIC.
    let original = std::fs::read_to_string(&b_manifest.path).unwrap();
    let echo = service("echo-b", "faulty", &["GET /e/{fault}"], "");
    b_manifest.edit(&format!("{original}{echo}"));
    let report = crate::support::next_reload(&mut reported).await;
    assert_eq!(
        report.applied,
        vec!["service `echo-b` added".to_owned()],
        "{report:?}"
    );
    wait_for_peer_service(&a, "echo-b@1.0.0").await;
    let reply = send(a.http_addr(), "POST", "/f/call", "echo-b\nGET /e/echo").await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // Without hello: A forgets it within a gossip round or two, and says so to callers.
    b_manifest.edit(&format!("{}{echo}", original.replace(&hello, "")));
    let report = crate::support::next_reload(&mut reported).await;
    assert_eq!(
        report.applied,
        vec!["service `hello` removed".to_owned()],
        "{report:?}"
    );
    let removed = Instant::now();
    loop {
        let registry = admin_get(&a, "/registry").await.body;
        if !registry.contains("hello@") {
            break;
        }
        assert!(
            removed.elapsed() < Duration::from_secs(3),
            "A still lists hello: {registry}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = send(a.http_addr(), "POST", "/f/call", "hello\nGET /hello/x").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        reply.body.contains("no service named `hello`"),
        "{}",
        reply.body
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Renewed certificate files are taken while the node runs; files that are not a certificate
/// of the cluster's CA are refused and the old one stays.
#[tokio::test]
async fn a_node_takes_renewed_certificate_files_without_a_restart() {
    crate::support::capture_logs();
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().to_str().unwrap().to_owned();
    cert(&["ca", "--out", &dir]);
    cert(&["node", "node-r", "--ca-dir", &dir, "--out", &dir]);
    let manifest = TestManifest::with_node(
        &format!(
            "name = \"node-r\"\nquic = \"127.0.0.1:0\"\n\
             tls = {{ ca = \"{dir}/ca.pem\", cert = \"{dir}/node-r.pem\", key = \"{dir}/node-r.key\" }}"
        ),
        &service("hello", "hello", &["GET /hello/{name}"], ""),
    );
    let node = manifest.start().await;
    let wait_for = |needle: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if crate::support::logs().contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("never logged {needle:?}:\n{}", crate::support::logs());
    };
    // Another CA's certificate over the node's files: refused.
    let other = tempfile::tempdir().unwrap();
    let other_dir = other.path().to_str().unwrap().to_owned();
    cert(&["ca", "--out", &other_dir]);
    cert(&[
        "node", "node-r", "--ca-dir", &other_dir, "--out", &other_dir,
    ]);
    for ext in ["pem", "key"] {
        std::fs::copy(
            format!("{other_dir}/node-r.{ext}"),
            format!("{dir}/node-r.{ext}"),
        )
        .unwrap();
    }
    wait_for("were not taken").await;
    // A renewed one from the cluster's CA: taken.
    let renewed = tempfile::tempdir().unwrap();
    let renewed_dir = renewed.path().to_str().unwrap().to_owned();
    cert(&[
        "node",
        "node-r",
        "--ca-dir",
        &dir,
        "--out",
        &renewed_dir,
        "--days",
        "30",
    ]);
    for ext in ["pem", "key"] {
        std::fs::copy(
            format!("{renewed_dir}/node-r.{ext}"),
            format!("{dir}/node-r.{ext}"),
        )
        .unwrap();
    }
    wait_for("node certificate reloaded").await;
    assert_eq!(get(node.http_addr(), "/hello/still").await.status, 200);
    node.shutdown().await;
}

/// `accepts_from` holds for calls from other nodes too: the caller is the service the calling
/// node names, and it is believed only if that node (as its certificate names it) announces
/// that service.
#[tokio::test]
async fn accepts_from_refuses_a_peer_node_s_caller_it_does_not_list() {
    let b_manifest = TestManifest::with_node(
        "name = \"node-b\"\nquic = \"127.0.0.1:0\"",
        &format!(
            "{}{}{}",
            service(
                "hello",
                "hello",
                &["GET /hello/{name}"],
                "accepts_from = [\"someone-else\"]"
            ),
            service(
                "open",
                "hello",
                &["GET /open/{name}"],
                "accepts_from = [\"faulty\"]"
            ),
            service("free", "hello", &["GET /free/{name}"], ""),
        ),
    );
    let b = b_manifest.start().await;
    let b_quic = b.quic_addr().unwrap();
    let (_a_manifest, a) = start_node_a(b_quic, "", "open@1.0.0").await;
    let reply = send(a.http_addr(), "POST", "/f/call", "open\nGET /open/x").await;
    assert_eq!(reply.status, 200, "a listed caller: {}", reply.body);
    let reply = send(a.http_addr(), "POST", "/f/call", "hello\nGET /hello/x").await;
    assert_ne!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.contains("does not take calls from `faulty`"),
        "{}",
        reply.body
    );

    // Another member of the cluster claims to call as `faulty`, which it does not run.
    let rogue = switchyard::bench::Identity::development("rogue").unwrap();
    let claim = |service: &'static str, method: &'static str| {
        switchyard::bench::call_claiming(&rogue, b_quic, service, method, "faulty")
    };
    let refused = claim("open", "GET /open/x").await.unwrap_err();
    assert!(
        refused.starts_with("Rejected")
            && refused.contains("the calling node `rogue` does not announce `faulty`"),
        "{refused}"
    );
    // A service that does not pick its callers takes the call (the claim is only a name).
    let taken = claim("free", "GET /free/x").await;
    assert_eq!(taken.map(|(status, _)| status), Ok(200));
    a.shutdown().await;
    b.shutdown().await;
}
