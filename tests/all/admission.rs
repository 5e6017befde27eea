//! The ingress as slow, greedy or silent clients meet it: admission before the body, a body
//! deadline, a node-wide byte budget for bodies, a connection limit, an idle deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{TestManifest, get, send, service, wait_for_in_flight};

fn manifest(node: &str, extra: &str) -> TestManifest {
    TestManifest::with_node(
        &format!("name = \"test\"\n{node}"),
        &service(
            "faulty",
            "faulty",
            &["GET /f/{fault}/{arg}", "POST /f/{fault}"],
            extra,
        ),
    )
}

/// Sends a POST's head declaring `length` body bytes, then `sent` of them; the connection
/// stays open, the rest never comes.
async fn partial_post(addr: SocketAddr, length: usize, sent: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("POST /f/echo HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {length}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b'x'; sent]).await.unwrap();
    stream
}

/// The status line (and what follows) the server wrote on `stream` within `within`.
async fn answer_on(stream: &mut TcpStream, within: Duration) -> String {
    let mut buffer = vec![0; 4096];
    let read = tokio::time::timeout(within, stream.read(&mut buffer))
        .await
        .expect("no answer in time")
        .unwrap();
    String::from_utf8_lossy(&buffer[..read]).into_owned()
}

#[tokio::test]
async fn a_full_service_answers_503_before_a_slow_body_arrives() {
    let manifest = manifest("", "max_instances = 1\ntimeout_ms = 10000");
    let node = manifest.start().await;
    let addr = node.http_addr();
    let sleeping = tokio::spawn(async move { get(addr, "/f/sleep/3000").await.status });
    wait_for_in_flight(&node, "faulty", 1, Duration::from_secs(2), "the sleeper").await;

    // 2 MB declared, 1 KB sent: the answer comes now, not after the body.
    let started = Instant::now();
    let mut upload = partial_post(addr, 2_000_000, 1024).await;
    let answer = answer_on(&mut upload, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("faulty"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(sleeping.await.unwrap(), 200);
    // A body declared larger than the limit is refused from its head too.
    let mut huge = partial_post(addr, 17 * 1024 * 1024, 0).await;
    let answer = answer_on(&mut huge, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_body_slower_than_the_services_timeout_gets_408_and_frees_its_instance() {
    let manifest = manifest("", "max_instances = 1\ntimeout_ms = 300");
    let node = manifest.start().await;
    let addr = node.http_addr();
    let started = Instant::now();
    let mut upload = partial_post(addr, 10_000, 100).await;
    let answer = answer_on(&mut upload, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("300 ms"), "{answer}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    // Its place was given back: the one instance serves the next request.
    let reply = send(addr, "POST", "/f/echo", "quick").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("\"body\":\"quick\""), "{}", reply.body);
    node.shutdown().await;
}

#[tokio::test]
async fn bodies_past_the_nodes_byte_budget_get_503_until_the_budget_is_free_again() {
    let manifest = manifest("body_budget_mb = 1", "timeout_ms = 10000");
    let node = manifest.start().await;
    let addr = node.http_addr();
    let holder = partial_post(addr, 1_000_000, 600_000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = partial_post(addr, 1_000_000, 600_000).await;
    let answer = answer_on(&mut second, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("body_budget_mb"), "{answer}");
    // The holder goes away: its bytes count no more.
    drop(holder);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = "y".repeat(600_000);
    let reply = send(addr, "POST", "/f/echo", &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    node.shutdown().await;
}

#[tokio::test]
async fn connections_past_max_connections_are_closed_at_once_and_idle_ones_after_the_deadline() {
    let manifest = manifest("max_connections = 2\nidle_timeout_ms = 500", "");
    let node = manifest.start().await;
    let addr = node.http_addr();
    let first = TcpStream::connect(addr).await.unwrap();
    let second = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A third is closed without a word.
    let mut third = TcpStream::connect(addr).await.unwrap();
    let mut buffer = [0; 16];
    let read = tokio::time::timeout(Duration::from_secs(1), third.read(&mut buffer))
        .await
        .expect("the third connection was kept open")
        .unwrap_or(0);
    assert_eq!(read, 0);
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(addr, "/f/echo/x").await.status, 200);

    // A connection that says nothing is closed after idle_timeout_ms.
    drop(second);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut buffer))
        .await
        .expect("the silent connection was kept open")
        .unwrap_or(0);
    assert_eq!(read, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    node.shutdown().await;
}
