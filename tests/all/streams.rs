//! `quic` streams between guests: on one node (in memory) and across nodes (QUIC), with the
//! callee's limits and clear errors.

use crate::support::admin_get;
use std::time::{Duration, Instant};

use crate::support::{TestManifest, send, service};

fn caller() -> String {
    service("faulty", "faulty", &["POST /f/{fault}"], "")
}

fn shouter(extra: &str) -> String {
    service("shouter", "faulty", &["GET /shouter/{fault}"], extra)
}

#[tokio::test]
async fn a_stream_on_one_node_carries_bytes_both_ways_and_errors_are_clear() {
    let old = crate::support::repo_root().join("tests/fixtures/hello-wit-0.1.0.wasm");
    let manifest = TestManifest::with_node(
        "name = \"solo\"",
        &format!(
            "{}{}[[service]]\nname = \"old\"\nversion = \"0.9.0\"\ncomponent = {:?}\n\
             routes = [\"GET /old/{{name}}\"]\n",
            caller(),
            shouter("timeout_ms = 300\nmax_instances = 1"),
            old.display().to_string()
        ),
    );
    let node = manifest.start().await;
    let http = node.http_addr();

    let reply = send(http, "POST", "/f/stream", "shouter\nhello, streams").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "solo\nfaulty:HELLO, STREAMS")
    );
    // More than the in-memory pipe holds: flow control, not loss.
    let big = "abc".repeat(100_000);
    let reply = send(http, "POST", "/f/stream", &format!("shouter@^1\n{big}")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, format!("solo\nfaulty:{}", big.to_uppercase()));

    let reply = send(http, "POST", "/f/stream", "nobody\nhi").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.body.contains("`nobody`"), "{}", reply.body);
    let reply = send(http, "POST", "/f/stream", "shouter@^2\nhi").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.body.contains("does not match `^2`"), "{}", reply.body);
    let reply = send(http, "POST", "/f/stream", "old\nhi").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        reply.body.contains("does not accept streams"),
        "{}",
        reply.body
    );

    // A callee that stalls is stopped at its own timeout (300 ms): the caller reads the end,
    // and the callee's instance is free again for the next stream (max_instances = 1).
    let started = Instant::now();
    let reply = send(http, "POST", "/f/stream", "shouter\nstall").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "solo\n"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let services: serde_json::Value =
        serde_json::from_str(&admin_get(&node, "/services").await.body).unwrap();
    let shouter = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "shouter")
        .unwrap();
    assert_eq!(shouter["errors"], 1, "{shouter}");
    let reply = send(http, "POST", "/f/stream", "shouter\nagain").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "solo\nfaulty:AGAIN")
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_stream_to_another_node_rides_quic() {
    let b_files =
        TestManifest::with_node("name = \"node-b\"\nquic = \"127.0.0.1:0\"", &shouter(""));
    let b = b_files.start().await;
    let a_files = TestManifest::with_node(
        &format!(
            "name = \"node-a\"\nquic = \"127.0.0.1:0\"\nseeds = [\"{}\"]",
            b.quic_addr().unwrap()
        ),
        &caller(),
    );
    let a = a_files.start().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !admin_get(&a, "/registry").await.body.contains("shouter@") {
        assert!(Instant::now() < deadline, "node-b never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let big = "xyz".repeat(200_000);
    let reply = send(
        a.http_addr(),
        "POST",
        "/f/stream",
        &format!("shouter\n{big}"),
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        &reply.body[..reply.body.len().min(300)]
    );
    assert_eq!(reply.body, format!("node-b\nfaulty:{}", big.to_uppercase()));
    let reply = send(a.http_addr(), "POST", "/f/stream", "shouter\nover quic").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "node-b\nfaulty:OVER QUIC")
    );
    a.shutdown().await;
    b.shutdown().await;
}
