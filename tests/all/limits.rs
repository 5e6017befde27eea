//! A misbehaving guest costs one request, never the node.

use crate::support::admin_get;
use std::time::{Duration, Instant};

use crate::support::{TestManifest, capture_logs, get, logs, service, wait_for_in_flight};

fn faulty(extra: &str) -> TestManifest {
    TestManifest::new(&format!(
        "{}{}",
        service(
            "faulty",
            "faulty",
            &["GET /f/{fault}", "GET /f/{fault}/{arg}"],
            extra
        ),
        service("hello", "hello", &["GET /hello/{name}"], "")
    ))
}

#[tokio::test]
async fn a_trap_is_a_500_with_the_request_id_logged_and_the_node_keeps_serving() {
    capture_logs();
    let manifest = faulty("");
    let node = manifest.start().await;
    let reply = get(node.http_addr(), "/f/trap").await;
    assert_eq!(reply.status, 500);
    let id = reply.header("x-request-id").unwrap().to_owned();
    assert!(
        reply.body.contains(&id),
        "the body names the request id: {}",
        reply.body
    );
    let logged = logs();
    let failure = logged
        .lines()
        .find(|line| line.contains("request failed") && line.contains(&id))
        .unwrap_or_else(|| panic!("no failure logged for {id}:\n{logged}"));
    assert!(failure.contains("faulty"), "{failure}");
    // The guest's own panic message reaches the log under the same id.
    assert!(
        logged
            .lines()
            .any(|line| line.contains(&id) && line.contains("trap requested")),
        "guest panic message not logged for {id}"
    );
    assert_eq!(get(node.http_addr(), "/f/echo").await.status, 200);
    assert_eq!(get(node.http_addr(), "/hello/still-up").await.status, 200);
    node.shutdown().await;
}

#[tokio::test]
async fn a_guest_past_its_deadline_gets_504_near_the_deadline() {
    let manifest = faulty("timeout_ms = 300");
    let node = manifest.start().await;
    let started = Instant::now();
    let reply = get(node.http_addr(), "/f/spin").await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert!(
        reply.body.contains("did not answer within 30") || reply.body.contains("within 29"),
        "{}",
        reply.body
    );
    // A deadline travels as whole milliseconds, rounded down (so that a callee ends inside
    // its caller's budget): the guest may be stopped up to a millisecond before 300 ms.
    assert!(elapsed >= Duration::from_millis(299), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(3),
        "the deadline was not enforced: {elapsed:?}"
    );
    // A guest sleeping in a host call (not burning CPU) is stopped too.
    let reply = get(node.http_addr(), "/f/sleep/5000").await;
    assert_eq!(reply.status, 504);
    assert_eq!(get(node.http_addr(), "/hello/alive").await.status, 200);
    node.shutdown().await;
}

#[tokio::test]
async fn a_guest_computing_in_a_loop_shares_its_thread_with_other_requests() {
    // The test's runtime has one thread: a guest that held it until its deadline would keep
    // every other request (and the node's own tasks) waiting for those 3 s.
    let manifest = faulty("timeout_ms = 3000");
    let node = manifest.start().await;
    let addr = node.http_addr();
    let spinning = tokio::spawn(async move { get(addr, "/f/spin").await.status });
    wait_for_in_flight(
        &node,
        "faulty",
        1,
        Duration::from_secs(2),
        "the spinning request never showed as in flight (or the admin API could not answer while it ran)",
    )
    .await;
    let started = Instant::now();
    assert_eq!(get(addr, "/hello/meanwhile").await.status, 200);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(1000),
        "a request waited {waited:?} for a spinning guest"
    );
    assert!(!spinning.is_finished(), "the spinning guest ended early");
    assert_eq!(spinning.await.unwrap(), 504);
    node.shutdown().await;
}

/// WASI sockets are linked (std needs the interfaces) but refuse everything: a guest talks to
/// the world only through the node's own interfaces (rpc, quic, messaging).
#[tokio::test]
async fn a_guest_cannot_open_sockets_or_look_up_names() {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let manifest = faulty("");
    let node = manifest.start().await;
    for target in [tcp.local_addr().unwrap(), udp.local_addr().unwrap()] {
        let reply = get(node.http_addr(), &format!("/f/socket?{target}")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let outcomes: Vec<(String, String)> = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(outcomes.len(), 4, "{outcomes:?}");
        for (attempt, outcome) in &outcomes {
            assert!(
                outcome.starts_with("refused"),
                "{attempt} was {outcome}: {outcomes:?}"
            );
        }
    }
    // Nothing reached the host's sockets either.
    let accepted = tokio::time::timeout(Duration::from_millis(200), tcp.accept()).await;
    assert!(accepted.is_err(), "a guest connected: {accepted:?}");
    let mut buf = [0u8; 16];
    let received = tokio::time::timeout(Duration::from_millis(200), udp.recv(&mut buf)).await;
    assert!(received.is_err(), "a guest sent a datagram: {received:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_guest_over_its_memory_limit_gets_500_and_the_next_request_is_fine() {
    let manifest = faulty("memory_limit_mb = 16");
    let node = manifest.start().await;
    let reply = get(node.http_addr(), "/f/oom/64").await;
    assert_eq!(reply.status, 500);
    assert!(
        reply.body.contains("exceeded its memory limit of 16 MiB"),
        "{}",
        reply.body
    );
    let reply = get(node.http_addr(), "/f/oom/4").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    node.shutdown().await;
}

#[tokio::test]
async fn at_max_instances_the_next_request_gets_503_at_once() {
    let manifest = faulty("max_instances = 2");
    let node = manifest.start().await;
    let addr = node.http_addr();
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, "/f/sleep/1500").await.status }))
        .collect();
    // Let both slow requests take their instances.
    wait_for_in_flight(
        &node,
        "faulty",
        2,
        Duration::from_secs(5),
        "slow requests never started",
    )
    .await;
    let started = Instant::now();
    let reply = get(addr, "/f/echo").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(
        reply.body.contains("limit of 2 concurrent requests"),
        "{}",
        reply.body
    );
    for request in slow {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(get(addr, "/f/echo").await.status, 200);
    let services = admin_get(&node, "/services").await;
    let services: serde_json::Value = serde_json::from_str(&services.body).unwrap();
    assert_eq!(services[0]["rejected"], 1);
    node.shutdown().await;
}

#[tokio::test]
async fn every_request_gets_a_fresh_instance_unless_reuse_is_asked_for() {
    let fresh = faulty("");
    let node = fresh.start().await;
    for _ in 0..3 {
        assert_eq!(get(node.http_addr(), "/f/count").await.body, "1\n");
    }
    node.shutdown().await;

    let reused = faulty("requests_per_instance = 3");
    let node = reused.start().await;
    let addr = node.http_addr();
    let mut counts = Vec::new();
    for _ in 0..4 {
        counts.push(get(addr, "/f/count").await.body);
    }
    // One instance serves three requests, then a fresh one takes over.
    assert_eq!(counts, ["1\n", "2\n", "3\n", "1\n"]);
    // A trap discards the instance: the next request starts from scratch.
    assert_eq!(get(addr, "/f/count").await.body, "2\n");
    assert_eq!(get(addr, "/f/trap").await.status, 500);
    assert_eq!(get(addr, "/f/count").await.body, "1\n");
    node.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_stops_accepting() {
    let manifest = faulty("");
    let node = manifest.start().await;
    let addr = node.http_addr();
    let slow = tokio::spawn(async move { get(addr, "/f/sleep/600").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    node.shutdown().await;
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the node still accepts connections after shutdown"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413() {
    let manifest = faulty("");
    let node = manifest.start().await;
    let body = "x".repeat(16 * 1024 * 1024 + 1);
    let reply = crate::support::send(node.http_addr(), "GET", "/f/echo", &body).await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    node.shutdown().await;
}

#[tokio::test]
async fn a_guest_logging_without_end_is_cut_at_its_per_request_budget_with_one_line_saying_so() {
    capture_logs();
    let manifest = faulty("");
    let node = manifest.start().await;
    // 1,000 lines of 1 KiB: 64 of them fit the 64 KiB budget. The request id is the test's
    // own: other tests' nodes in this process number their requests the same way.
    let reply = crate::support::send_with(
        node.http_addr(),
        "GET",
        "/f/chatty/1000",
        "",
        &[("x-request-id", "limits-chatty-1")],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = reply.header("x-request-id").unwrap().to_owned();
    let lines: Vec<serde_json::Value> = logs()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|line: &serde_json::Value| line["fields"]["request_id"] == id.as_str())
        .collect();
    let logged = lines
        .iter()
        .filter(|line| line["level"] == "INFO" && line["target"] == "guest")
        .count();
    assert!((60..=64).contains(&logged), "{logged} lines were logged");
    let cut: Vec<_> = lines
        .iter()
        .filter(|line| line["fields"]["dropped_lines"].is_u64())
        .collect();
    assert_eq!(cut.len(), 1, "{cut:?}");
    assert_eq!(
        cut[0]["fields"]["dropped_lines"].as_u64().unwrap() + logged as u64,
        1000
    );
    // The next request has its own budget.
    let reply = get(node.http_addr(), "/f/chatty/3").await;
    assert_eq!(reply.status, 200);
    node.shutdown().await;
}

/// A faulty guest `holder` with `limits`, beside `callee`.
fn holder(limits: &str, callee: &str) -> TestManifest {
    TestManifest::new(&format!(
        "{}{callee}",
        service(
            "holder",
            "faulty",
            &["* /f/{fault}", "* /f/{fault}/{arg}"],
            limits
        )
    ))
}

#[tokio::test]
async fn replies_that_pending_calls_hold_unread_are_bounded_by_the_memory_limit() {
    let manifest = holder(
        "memory_limit_mb = 8",
        &service("big", "faulty", &["GET /b/{fault}/{arg}"], ""),
    );
    let node = manifest.start().await;
    // Twelve replies of 1 MiB, all arrived before the guest reads any: at most 8 MiB of them
    // are held for it, the others answer unavailable.
    let reply = crate::support::send(
        node.http_addr(),
        "POST",
        "/f/hold/12",
        "big\nGET /b/big/1024",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (ok, errors): (usize, Vec<String>) = serde_json::from_str(&reply.body).unwrap();
    assert!((4..=8).contains(&ok), "{ok} held: {errors:?}");
    assert_eq!(ok + errors.len(), 12);
    assert!(
        errors
            .iter()
            .all(|error| error.contains("8 MiB that this instance's pending calls may hold unread")),
        "{errors:?}"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn an_instance_opens_at_most_max_open_streams() {
    let manifest = holder(
        "max_open_streams = 3",
        &service("shouter", "faulty", &["GET /shouter/{fault}"], ""),
    );
    let node = manifest.start().await;
    let reply = crate::support::send(node.http_addr(), "POST", "/f/streams/5", "shouter").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (opened, error): (usize, Option<String>) = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(opened, 3);
    let error = error.unwrap_or_default();
    assert!(
        error.contains("holds 3 open streams already (max_open_streams"),
        "{error}"
    );
    node.shutdown().await;
}
