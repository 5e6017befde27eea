//! Service-to-service calls on one node: routing, versions, errors, deadlines, fan-out.

use std::time::{Duration, Instant};

use crate::support::{Reply, TestManifest, get, send, service};

fn node_with(extra_faulty: &str) -> TestManifest {
    TestManifest::new(&format!(
        "{}{}",
        service(
            "faulty",
            "faulty",
            &["GET /f/{fault}", "GET /f/{fault}/{arg}", "POST /f/{fault}"],
            extra_faulty
        ),
        service("hello", "hello", &["GET /hello/{name}"], "")
    ))
}

async fn call(addr: std::net::SocketAddr, body: &str) -> Reply {
    send(addr, "POST", "/f/call", body).await
}

#[tokio::test]
async fn a_guest_calls_another_service_through_its_routes() {
    let manifest = node_with("");
    let node = manifest.start().await;
    let reply = call(node.http_addr(), "hello\nGET /hello/rpc").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "Hello, rpc!\n"));
    let reply = call(node.http_addr(), "hello@^1\nGET /hello/ranged").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "Hello, ranged!\n")
    );
    node.shutdown().await;
}

#[tokio::test]
async fn failed_calls_come_back_as_typed_errors_that_name_the_cause() {
    let manifest = node_with("");
    let node = manifest.start().await;
    let addr = node.http_addr();
    for (body, status, needle) in [
        (
            "hello@^2\nGET /hello/x",
            503,
            "runs version 1.0.0, which does not match `^2`",
        ),
        ("nobody\nGET /x", 503, "no service named `nobody`"),
        (
            "hello\nPOST /hello/x",
            500,
            "has no route for POST /hello/x",
        ),
        ("hello\nhello", 500, "is not `METHOD /path`"),
        ("hello@what\nGET /hello/x", 500, "not a semver range"),
        ("faulty\nGET /f/trap", 502, "the callee failed"),
    ] {
        let reply = call(addr, body).await;
        assert_eq!(reply.status, status, "{body:?}: {}", reply.body);
        assert!(reply.body.contains(needle), "{body:?}: {}", reply.body);
    }
    // A trapped callee's caller learns its panic message, not a wasm backtrace.
    let reply = call(addr, "faulty\nGET /f/trap").await;
    assert!(
        reply
            .body
            .contains("panicked: faulty guest: trap requested"),
        "{}",
        reply.body
    );
    assert!(
        !reply.body.contains("backtrace") && reply.body.len() < 400,
        "{}",
        reply.body
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_call_never_waits_past_its_timeout_or_the_callers_deadline() {
    let manifest = node_with("timeout_ms = 600");
    let node = manifest.start().await;
    let addr = node.http_addr();

    let started = Instant::now();
    let reply = call(addr, "faulty\nGET /f/sleep/5000\n150").await;
    assert_eq!(reply.status, 504, "{}", reply.body);
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(550), "{elapsed:?}");

    // No explicit timeout: the caller's own deadline (600 ms) bounds the call, and the
    // caller still answers (with the call's timeout) before its own deadline.
    let started = Instant::now();
    let reply = call(addr, "faulty\nGET /f/sleep/5000").await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 504);
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");

    // The callee sees the shrunken deadline, who called, and a request id derived from ours.
    let reply = call(addr, "faulty\nGET /f/echo\n250").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echo: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert!(echo["deadline_ms"].as_u64().unwrap() <= 250, "{echo}");
    let headers = echo["headers"].as_array().unwrap();
    let callers: Vec<_> = headers
        .iter()
        .filter(|header| header[0] == "x-switchyard-caller")
        .collect();
    assert_eq!(
        callers,
        [&serde_json::json!(["x-switchyard-caller", "faulty"])],
        "only the node names the caller (the guest tried `forged`): {echo}"
    );
    assert!(
        headers.contains(&serde_json::json!(["x-probe", "1"])),
        "{echo}"
    );
    let id = echo["request_id"].as_str().unwrap();
    assert!(id.ends_with(".1") && id.len() > 2, "{id}");

    // The budget carries on down a chain: a callee given 250 ms passes what is left of it to
    // its own call (which names no timeout), not its service's 600 ms.
    let reply = call(addr, "faulty\nPOST /f/call\n250\nfaulty\nGET /f/echo").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echo: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert!(echo["deadline_ms"].as_u64().unwrap() <= 250, "{echo}");
    // ... and stops that callee at it: a nested sleep ends with the outer budget.
    let started = Instant::now();
    let reply = call(addr, "faulty\nPOST /f/call\n200\nfaulty\nGET /f/sleep/5000").await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn calls_started_together_run_in_parallel() {
    let manifest = node_with("");
    let node = manifest.start().await;
    let reply = get(node.http_addr(), "/f/fanout/3").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (ok, elapsed_ms): (u64, u64) = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(ok, 3);
    assert!(
        (100..250).contains(&elapsed_ms),
        "three 100 ms calls took {elapsed_ms} ms"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn calls_started_past_max_pending_calls_answer_unavailable_at_once() {
    let manifest = node_with("max_pending_calls = 4");
    let node = manifest.start().await;
    // Ten started together: four run, six are refused before they start.
    let reply = get(node.http_addr(), "/f/fanout/10").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (ok, elapsed_ms): (u64, u64) = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(ok, 4, "{}", reply.body);
    assert!(elapsed_ms < 1000, "{elapsed_ms} ms");
    // Dropped calls count no more: the next request's instance starts four again.
    let reply = get(node.http_addr(), "/f/fanout/4").await;
    let (ok, _): (u64, u64) = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(ok, 4, "{}", reply.body);
    node.shutdown().await;
}

#[tokio::test]
async fn a_guest_built_against_wit_0_1_0_still_runs() {
    let old = crate::support::repo_root().join("tests/fixtures/hello-wit-0.1.0.wasm");
    let manifest = TestManifest::new(&format!(
        "[[service]]\nname = \"old\"\nversion = \"0.9.0\"\ncomponent = {:?}\nroutes = [\"GET /old/{{name}}\"]\n",
        old.display().to_string()
    ));
    let node = manifest.start().await;
    let reply = get(node.http_addr(), "/old/timer").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "Hello, timer!\n")
    );
    node.shutdown().await;
}

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

/// The `traceparent` an echoed request carried, split into (trace id, parent id).
pub(crate) fn echoed_trace(reply: &Reply) -> (String, String) {
    let echo: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    let header = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pair| pair[0] == "traceparent")
        .and_then(|pair| pair[1].as_str())
        .unwrap_or_else(|| panic!("no traceparent reached the callee: {echo}"))
        .to_owned();
    let parts: Vec<&str> = header.split('-').collect();
    (parts[1].to_owned(), parts[2].to_owned())
}

#[tokio::test]
async fn the_callers_trace_continues_in_the_callee() {
    let manifest = node_with("");
    let node = manifest.start().await;
    let incoming = format!("00-{TRACE_ID}-b7ad6b7169203331-01");
    let reply = crate::support::send_with(
        node.http_addr(),
        "POST",
        "/f/call",
        "faulty\nGET /f/echo",
        &[("traceparent", &incoming)],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (trace_id, parent_id) = echoed_trace(&reply);
    assert_eq!(trace_id, TRACE_ID);
    assert_ne!(
        parent_id, "b7ad6b7169203331",
        "each hop needs its own parent id"
    );
    node.shutdown().await;
}
