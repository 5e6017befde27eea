//! examples/shop as shipped: three nodes on 127.0.0.1-3; a node dies, a service turns slow,
//! the node comes back. The gateway always answers, with a clear error, and recovers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use switchyard::{Manifest, Node};

use crate::support::{Reply, admin_get, repo_root, send};

fn example(name: &str) -> PathBuf {
    repo_root().join("examples/shop").join(name)
}

/// Starts the node of `file` (with `edit` applied to its text), retrying while a previous
/// incarnation's ports are still being released.
async fn start(file: &str, edit: impl Fn(String) -> String) -> Node {
    let path = example(file);
    let text = edit(std::fs::read_to_string(&path).unwrap());
    let manifest = Manifest::parse(&text, &path).unwrap_or_else(|err| panic!("{err}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Node::start(&manifest).await {
            Ok(node) => return node,
            Err(err) if Instant::now() < deadline => {
                eprintln!("retrying {file}: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("{file}: {err}"),
        }
    }
}

async fn checkout(path: &str) -> (Reply, Duration) {
    let started = Instant::now();
    let reply = send("127.0.0.1:8080".parse().unwrap(), "POST", path, "").await;
    (reply, started.elapsed())
}

/// Retries a checkout until it answers `status` (discovery needs a moment), within 10 s.
async fn eventually(path: &str, status: u16) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (reply, took) = checkout(path).await;
        assert!(
            took < Duration::from_secs(3),
            "the gateway took {took:?}: {}",
            reply.body
        );
        if reply.status == status {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "never got {status}; last: {} {}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_shop_survives_a_dead_node_a_slow_service_and_a_restart() {
    let stock = start("stock.toml", |t| t).await;
    let orders = start("orders.toml", |t| t).await;
    let edge = start("edge.toml", |t| t).await;

    let reply = eventually("/checkout/widget/2", 200).await;
    let order: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(order["reserved"], "reserved 2 x widget");
    assert_eq!(order["charged"], "charged 500 cents");
    let (reply, _) = checkout("/checkout/gadget/5").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (409, "only 3 of gadget in stock\n")
    );

    // The stock node dies: a clear 503 that names what is missing, fast.
    stock.shutdown().await;
    let reply = eventually("/checkout/widget/1", 503).await;
    assert!(
        reply.body.contains("inventory") || reply.body.contains("payments"),
        "{}",
        reply.body
    );

    // It comes back with a slow payments service: the orders deadline (1 s) bounds the wait.
    let slow = start("stock.toml", |t| {
        t.replace("delay_ms = \"0\"", "delay_ms = \"5000\"")
    })
    .await;
    let reply = eventually("/checkout/widget/1", 504).await;
    assert!(reply.body.contains("timed out"), "{}", reply.body);
    slow.shutdown().await;

    // Back to normal: orders flow again.
    let stock = start("stock.toml", |t| t).await;
    eventually("/checkout/widget/1", 200).await;
    let registry = admin_get(&orders, "/registry").await.body;
    assert!(
        registry.contains("inventory@1.0.0") && registry.contains("payments@1.0.0"),
        "{registry}"
    );
    for node in [edge, orders, stock] {
        node.shutdown().await;
    }
}
