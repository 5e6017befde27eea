//! State: a service's own keys (guests/outbox-orders), optimistic transactions, the
//! transactional outbox relayed to a topic that guests/outbox-billing consumes once per
//! message id, the admin API's view, export and import; across a hot swap, a restart and a
//! `kill -9` between commit and relay.

use std::time::{Duration, Instant};

use crate::support::{
    Backend, TestManifest, admin_get, admin_post, admin_request, free_port, get, guest, send,
    service, start_binary, switchyard_cli,
};

fn orders(extra: &str) -> String {
    service(
        "orders",
        "outbox_orders",
        &[
            "POST /orders/{id}",
            "GET /orders/{id}",
            "GET /orders",
            "PUT /kv/{key}",
            "GET /kv/{key}",
            "DELETE /kv/{key}",
            "POST /conflict/{key}",
            "POST /count/{key}",
        ],
        extra,
    )
}

fn billing() -> String {
    service(
        "billing",
        "outbox_billing",
        &["GET /billing", "POST /handle/{id}", "POST /forget"],
        "",
    )
}

const EVENTS: &str =
    "[[topic]]\nname = \"order-events\"\n\n[[topic.subscription]]\nservice = \"billing\"\n";

async fn until(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < within, "gave up waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_service_keeps_its_keys_across_a_swap_and_a_restart() {
    let manifest = TestManifest::new(&format!(
        "{}{}",
        orders("max_instances = 8\nrequests_per_instance = 1"),
        billing()
    ));
    let node = manifest.start().await;
    let http = node.http_addr();

    let put = send(http, "PUT", "/kv/greeting", "hello").await;
    assert_eq!(put.status, 200, "{}", put.body);
    let version: u64 = put.body.parse().unwrap();
    assert!(version > 0);
    assert_eq!(get(http, "/kv/greeting").await.body, "hello");
    // Billing has its own keys: it sees none of orders'.
    assert_eq!(get(http, "/billing").await.body, "0 0");

    // A transaction whose key changed after it read it gets the typed conflict, stores nothing.
    let raced = send(http, "POST", "/conflict/greeting", "").await;
    assert_eq!(raced.status, 409, "{}", raced.body);
    assert!(
        raced.body.contains("conflict") && raced.body.contains("greeting"),
        "{}",
        raced.body
    );
    assert_eq!(get(http, "/kv/greeting").await.body, "interloper");

    // Concurrent increments on fresh instances: transact retries conflicts, none is lost.
    let counts =
        (0..40).map(|_| tokio::spawn(async move { send(http, "POST", "/count/hits", "").await }));
    for count in counts {
        let reply = count.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(get(http, "/kv/hits").await.body, "40");

    // A hot swap (a new generation of the same code) sees the same keys.
    let component = std::fs::read(guest("outbox_orders")).unwrap();
    let (status, report) = admin_post(&node, "/services/orders", component).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(get(http, "/kv/hits").await.body, "40");
    assert_eq!(
        send(http, "DELETE", "/kv/greeting", "").await.body,
        "removed"
    );
    assert_eq!(
        send(http, "DELETE", "/kv/greeting", "").await.body,
        "absent"
    );
    assert_eq!(get(http, "/kv/greeting").await.status, 404);

    // GET /state counts what each service keeps.
    let view: serde_json::Value =
        serde_json::from_str(&admin_get(&node, "/state").await.body).unwrap();
    let usage = view["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "orders")
        .cloned()
        .unwrap();
    assert_eq!(usage["keys"], 1, "{view:#}");
    assert_eq!(usage["max_bytes"], 64 * 1024 * 1024, "{view:#}");
    node.shutdown().await;

    let node = manifest.start().await;
    assert_eq!(get(node.http_addr(), "/kv/hits").await.body, "40");
    node.shutdown().await;
}

#[tokio::test]
async fn an_order_and_its_event_commit_together_and_billing_bills_each_once() {
    order_and_event_commit_together(Backend::Embedded).await;
}

/// The same on NATS JetStream: the relay publishes to the topic's stream.
#[tokio::test]
async fn on_nats_an_order_and_its_event_commit_together_and_billing_bills_each_once() {
    order_and_event_commit_together(Backend::nats().await).await;
}

async fn order_and_event_commit_together(backend: Backend) {
    let manifest = TestManifest::new(&format!(
        "{}{}{}{EVENTS}",
        backend.section(),
        orders(""),
        billing()
    ));
    let node = manifest.start().await;
    let http = node.http_addr();
    for n in 1..=20 {
        let placed = send(
            http,
            "POST",
            &format!("/orders/o{n}"),
            &format!("{{\"total_cents\": {n}}}"),
        )
        .await;
        assert_eq!(placed.status, 201, "{}", placed.body);
    }
    // Placing an existing order again changes nothing and sends nothing.
    assert_eq!(
        send(http, "POST", "/orders/o1", "{\"total_cents\": 999}")
            .await
            .status,
        409
    );
    until(
        "billing has billed 20 orders",
        Duration::from_secs(10),
        async || get(http, "/billing").await.body == "20 210",
    )
    .await;
    let listed = get(http, "/orders").await.body;
    assert_eq!(listed.lines().count(), 20, "{listed}");
    let view: serde_json::Value =
        serde_json::from_str(&admin_get(&node, "/state").await.body).unwrap();
    assert_eq!(view["outbox"]["pending"], 0, "{view:#}");
    assert_eq!(view["outbox"]["relayed"], 20, "{view:#}");

    // The once-only check: the same message id a second time is a duplicate.
    assert_eq!(send(http, "POST", "/handle/m-1", "").await.body, "first");
    assert_eq!(
        send(http, "POST", "/handle/m-1", "").await.body,
        "duplicate"
    );
    assert_eq!(send(http, "POST", "/handle/m-2", "").await.body, "first");
    // Forgotten ids: none within a day; all with a window of 0 ms (then m-1 is new again).
    assert_eq!(
        send(http, "POST", "/forget?older_ms=86400000", "")
            .await
            .body,
        "0"
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let forgotten: usize = send(http, "POST", "/forget?older_ms=0", "")
        .await
        .body
        .parse()
        .unwrap();
    assert_eq!(forgotten, 22, "20 billed orders and m-1, m-2");
    assert_eq!(send(http, "POST", "/handle/m-1", "").await.body, "first");

    // Export and import: a backup of orders, restored after a change, and refused for billing.
    let export = admin_get(&node, "/state/orders/export").await;
    assert_eq!(export.status, 200, "{}", export.body);
    assert_eq!(export.body.lines().count(), 21, "a header and 20 orders");
    assert_eq!(send(http, "PUT", "/kv/scratch", "x").await.status, 200);
    let (status, reply) = admin_post(
        &node,
        "/state/orders/import",
        export.body.clone().into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        get(http, "/kv/scratch").await.status,
        404,
        "an import restores the backup"
    );
    assert_eq!(get(http, "/orders").await.body, listed);
    let (status, reply) =
        admin_post(&node, "/state/billing/import", export.body.into_bytes()).await;
    assert_eq!(status, 422, "{reply}");
    assert!(
        reply.contains("keys of service `orders`, not `billing`"),
        "{reply}"
    );
    // The same through the command line, and `status` shows the state.
    let (admin, token) = (
        node.admin_addr().to_string(),
        node.admin_token_file().display().to_string(),
    );
    let file = manifest.dir.path().join("orders.jsonl");
    let file_arg = file.display().to_string();
    let cli = async |args: &[&str]| {
        let admin_args = ["--admin", admin.as_str(), "--token-file", token.as_str()];
        switchyard_cli(&[args, &admin_args[..]].concat()).await
    };
    let exported = cli(&["state", "export", "orders", "--out", &file_arg]).await;
    assert!(exported.success, "{}", exported.stderr);
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 21);
    let imported = cli(&["state", "import", "billing", &file_arg]).await;
    assert!(!imported.success);
    assert!(
        imported.stderr.contains("not `billing`"),
        "{}",
        imported.stderr
    );
    let imported = cli(&["state", "import", "orders", &file_arg]).await;
    assert!(imported.success, "{}", imported.stderr);
    let status = cli(&["status"]).await;
    assert!(status.success, "{}", status.stderr);
    assert!(
        status.stdout.contains("outbox 0 pending"),
        "{}",
        status.stdout
    );
    let orders_line = status
        .stdout
        .lines()
        .find(|line| line.starts_with("orders") && line.split_whitespace().count() == 4)
        .unwrap_or_else(|| panic!("{}", status.stdout));
    assert_eq!(
        orders_line.split_whitespace().nth(1),
        Some("20"),
        "{orders_line}"
    );

    let nobody = admin_request(
        &node,
        "POST",
        "/state/nobody/import",
        b"{\"switchyard_state\":1,\"service\":\"nobody\",\"keys\":0}\n".to_vec(),
    )
    .await;
    assert_eq!(nobody.status, 404, "{}", nobody.body);
    node.shutdown().await;
}

#[tokio::test]
async fn a_value_over_the_services_limit_is_refused_and_nothing_is_stored() {
    let manifest = TestManifest::new(&orders("state_max_mb = 1"));
    let node = manifest.start().await;
    let http = node.http_addr();
    let half = "x".repeat(600 * 1024);
    assert_eq!(send(http, "PUT", "/kv/a", &half).await.status, 200);
    let over = send(http, "PUT", "/kv/b", &half).await;
    assert_eq!(over.status, 413, "{}", over.body);
    assert!(over.body.contains("state_max_mb"), "{}", over.body);
    assert_eq!(get(http, "/kv/b").await.status, 404);
    node.shutdown().await;

    let bad = TestManifest::new(&orders("state_max_mb = 0"));
    let err = switchyard::Manifest::load(&bad.path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("state_max_mb") && err.contains("switchyard.toml:"),
        "{err}"
    );
}

#[tokio::test]
async fn a_kill_9_between_commit_and_relay_loses_no_message() {
    let dir = tempfile::tempdir().unwrap();
    let (http, admin) = (free_port(), free_port());
    let manifest = dir.path().join("switchyard.toml");
    let log = dir.path().join("node.log");
    let node = format!(
        "[node]\nname = \"outbox\"\nhttp = \"{http}\"\nadmin = \"{admin}\"\ndata_dir = \"data\"\n\n"
    );
    // No topic yet: the orders commit, and their events wait in the outbox (the relay retries).
    std::fs::write(&manifest, format!("{node}{}{}", orders(""), billing())).unwrap();
    let mut running = start_binary(&manifest, &log, http).await;
    for n in 1..=10 {
        let placed = send(
            http,
            "POST",
            &format!("/orders/k{n}"),
            "{\"total_cents\": 5}",
        )
        .await;
        assert_eq!(placed.status, 201, "{}", placed.body);
    }
    running.start_kill().unwrap();
    running.wait().await.unwrap();

    // Restarted with the topic and its subscriber: what the crash left goes out, once each.
    std::fs::write(
        &manifest,
        format!("{node}{}{}{EVENTS}", orders(""), billing()),
    )
    .unwrap();
    let mut running = start_binary(&manifest, &log, http).await;
    until(
        "billing has billed the 10 orders",
        Duration::from_secs(20),
        async || get(http, "/billing").await.body == "10 50",
    )
    .await;
    assert_eq!(get(http, "/orders").await.body.lines().count(), 10);
    running.start_kill().unwrap();
    running.wait().await.unwrap();

    // Killed again right after relaying: whatever the relay sends twice is billed once.
    let mut running = start_binary(&manifest, &log, http).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(http, "/billing").await.body, "10 50");
    running.start_kill().unwrap();
    running.wait().await.unwrap();
}

#[tokio::test]
async fn an_outbox_reaches_a_topic_on_another_node_once_the_nodes_meet() {
    // The topic and billing live on `ledger`; orders commit on `shop`, possibly before the
    // nodes know each other: the relay retries until the topic's node is known.
    let ledger_manifest = TestManifest::with_node(
        "name = \"ledger\"\nquic = \"127.0.0.1:0\"",
        &format!("{}{EVENTS}", billing()),
    );
    let ledger = ledger_manifest.start().await;
    let shop_manifest = TestManifest::with_node(
        &format!(
            "name = \"shop\"\nquic = \"127.0.0.1:0\"\nseeds = [\"{}\"]",
            ledger.quic_addr().unwrap()
        ),
        &orders(""),
    );
    let shop = shop_manifest.start().await;
    for n in 1..=5 {
        let placed = send(
            shop.http_addr(),
            "POST",
            &format!("/orders/r{n}"),
            "{\"total_cents\": 7}",
        )
        .await;
        assert_eq!(placed.status, 201, "{}", placed.body);
    }
    let billed = ledger.http_addr();
    until(
        "billing on the other node billed 5",
        Duration::from_secs(15),
        async || get(billed, "/billing").await.body == "5 35",
    )
    .await;
    let view: serde_json::Value =
        serde_json::from_str(&admin_get(&shop, "/state").await.body).unwrap();
    assert_eq!(view["outbox"]["pending"], 0, "{view:#}");
    assert_eq!(view["outbox"]["relayed"], 5, "{view:#}");
    shop.shutdown().await;
    ledger.shutdown().await;
}
