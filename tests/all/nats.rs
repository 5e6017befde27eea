//! The NATS JetStream backend with a real `nats-server` (the semantic tests that run on both
//! backends are beside the embedded ones, `on_nats_*`): nodes that share nothing but NATS
//! talk through it; messages outlive the node that published them; NATS down at start, wrong
//! credentials and a stream of another kind are clear errors or wait it out.

use std::time::Duration;

use crate::support::{
    NatsServer, TestManifest, admin_get, count, free_port, get, send, send_with, service,
    start_binary, wait_for_entry,
};

fn mailroom(name: &str, routes: &[&str]) -> String {
    service(
        name,
        "mailroom",
        routes,
        &format!("config = {{ name = \"{name}\" }}"),
    )
}

/// Two nodes that share no mesh (no QUIC between them), only a NATS server: one requests,
/// the other's consumer replies (request/reply and a reply to a queue ride NATS).
#[tokio::test]
async fn nodes_that_share_only_nats_request_and_reply_through_it() {
    let nats = NatsServer::start().await;
    let queues = "[[queue]]\nname = \"jobs\"\nsubscriber = \"replier\"\nmax_attempts = 1\n\n\
                  [[queue]]\nname = \"answers\"\nsubscriber = \"mailroom\"\n\n\
                  [[topic]]\nname = \"quotes\"\n\n\
                  [[topic.subscription]]\nservice = \"replier\"\n\n\
                  [[topic.subscription]]\nservice = \"quoter\"\n\n";
    let asking = TestManifest::new(&format!(
        "{}{}{queues}",
        nats.section(),
        mailroom(
            "mailroom",
            &[
                "POST /send/{queue}",
                "POST /request/{queue}",
                "POST /request-all/{queue}"
            ]
        ),
    ));
    let answering = TestManifest::new(&format!(
        "{}{}{}{queues}",
        nats.section(),
        mailroom("replier", &[]),
        mailroom("quoter", &[]),
    ));
    let asker = asking.start().await;
    let replier = answering.start().await;

    let reply = send(asker.http_addr(), "POST", "/request/jobs", "reply to me").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "re: reply to me from replier")
    );
    // Publish/async responses: every subscriber of the topic answers within the window.
    let replies = send_with(
        asker.http_addr(),
        "POST",
        "/request-all/quotes",
        "reply with a quote",
        &[("x-window-ms", "1000")],
    )
    .await;
    assert_eq!(
        (replies.status, replies.body.as_str()),
        (
            200,
            "re: reply with a quote from quoter\nre: reply with a quote from replier"
        )
    );
    // Too slow: the requester gives up at its timeout.
    let reply = send_with(
        asker.http_addr(),
        "POST",
        "/request/jobs",
        "reply-after:800",
        &[("x-timeout-ms", "200")],
    )
    .await;
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert!(reply.body.contains("no reply"), "{}", reply.body);
    // A reply to a queue comes later, as a message of that queue, on the asking node.
    let sent = send_with(
        asker.http_addr(),
        "POST",
        "/send/jobs",
        "reply later",
        &[("x-reply-to", "answers")],
    )
    .await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    wait_for_entry(&asker, "/queues", "answers", Duration::from_secs(10), |q| {
        count(q, "delivered") == 1
    })
    .await;
    // The replier's node pulled `jobs`; the asker's, which does not run `replier`, did not.
    let jobs = wait_for_entry(&replier, "/queues", "jobs", Duration::from_secs(10), |q| {
        count(q, "delivered") == 3 && count(q, "depth") == 0
    })
    .await;
    assert_eq!(count(&jobs, "dead_lettered"), 0, "{jobs:#}");
    let theirs = crate::support::admin_entry(&asker, "/queues", "jobs").await;
    assert_eq!(count(&theirs, "delivered"), 0, "{theirs:#}");
    replier.shutdown().await;
    asker.shutdown().await;
}

/// Only a replicated engine can pass this: the node that published is killed (`kill -9`)
/// before any subscriber ran, and a node started afterwards still gets every message.
#[tokio::test]
async fn a_topics_messages_outlive_the_node_that_published_them() {
    let nats = NatsServer::start().await;
    let topic = "[[topic]]\nname = \"events\"\n\n";
    let http = free_port();
    let publishing = TestManifest::new("");
    std::fs::write(
        &publishing.path,
        format!(
            "[node]\nname = \"publisher\"\nhttp = \"{http}\"\nadmin = \"127.0.0.1:0\"\n\
             data_dir = \"data\"\n\n{}{}{topic}",
            nats.section(),
            mailroom("front", &["POST /publish/{queue}"]),
        ),
    )
    .unwrap();
    let log = publishing.dir.path().join("node.log");
    let mut publisher = start_binary(&publishing.path, &log, http).await;
    for n in 0..20 {
        let reply = send(http, "POST", "/publish/events", &format!("event {n}")).await;
        assert_eq!(reply.status, 202, "{}", reply.body);
        assert_eq!(reply.body, n.to_string(), "offsets count from 0");
    }
    publisher.kill().await.unwrap();

    let subscribing = TestManifest::new(&format!(
        "{}{}{topic}[[topic.subscription]]\nservice = \"billing\"\nstart = \"beginning\"\n",
        nats.section(),
        mailroom("billing", &[]),
    ));
    let node = subscribing.start().await;
    let view = wait_for_entry(&node, "/topics", "events", Duration::from_secs(10), |t| {
        count(&t["subscriptions"][0], "delivered") == 20
            && count(&t["subscriptions"][0], "lag") == 0
    })
    .await;
    assert_eq!(count(&view, "messages"), 20, "{view:#}");
    node.shutdown().await;
}

/// NATS down at start: the node serves, sends answer `unavailable` naming NATS, and once
/// the server is up the node reconnects, makes its streams, and delivers.
#[tokio::test]
async fn a_node_whose_nats_is_down_serves_and_catches_up_when_it_comes() {
    let mut nats = NatsServer::start().await;
    nats.stop();
    let manifest = TestManifest::new(&format!(
        "{}{}[[queue]]\nname = \"jobs\"\nsubscriber = \"mailroom\"\n",
        nats.section(),
        mailroom("mailroom", &["POST /send/{queue}"]),
    ));
    let started = std::time::Instant::now();
    let node = manifest.start().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "start waited for NATS: {:?}",
        started.elapsed()
    );
    let refused = send(node.http_addr(), "POST", "/send/jobs", "early").await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused.body.contains("not connected") && refused.body.contains(&nats.url),
        "{}",
        refused.body
    );
    // The node is degraded, and says why.
    let health = crate::support::admin_get(&node, "/health").await;
    assert_eq!(health.status, 503, "{}", health.body);
    assert!(
        health.body.contains("is not connected")
            && health.body.contains("its NATS streams are not ready"),
        "{}",
        health.body
    );

    nats.restart().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = send(node.http_addr(), "POST", "/send/jobs", "ok later").await;
        if reply.status == 202 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reconnected: {} {}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for_entry(&node, "/queues", "jobs", Duration::from_secs(10), |q| {
        count(q, "delivered") == 1
    })
    .await;
    let health = crate::support::admin_get(&node, "/health").await;
    assert_eq!(health.status, 200, "{}", health.body);
    node.shutdown().await;
}

/// Wrong credentials stop the start with an error naming the servers; a stream of the same
/// name made for a queue cannot serve a topic, and the error names it and the difference.
#[tokio::test]
async fn wrong_credentials_and_a_stream_of_another_kind_are_named() {
    let nats = NatsServer::start_with(&["--user", "orders", "--pass", "right"]).await;
    let manifest = TestManifest::new("");
    let password = manifest.dir.path().join("nats.password");
    let with = |password_text: &str, rest: &str| {
        std::fs::write(&password, password_text).unwrap();
        TestManifest::new(&format!(
            "[messaging]\nbackend = \"nats\"\nservers = [\"{}\"]\nuser = \"orders\"\n\
             password_file = {:?}\n\n{}{rest}",
            nats.url,
            password.display().to_string(),
            mailroom("mailroom", &["POST /send/{queue}"]),
        ))
    };
    let wrong = with("wrong", "");
    let err = switchyard::Node::start(&wrong.load())
        .await
        .err()
        .map(|err| err.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("refused this node's credentials") && err.contains(&nats.url),
        "{err}"
    );

    let queue = with(
        "right",
        "[[queue]]\nname = \"events\"\nsubscriber = \"mailroom\"\n",
    );
    let node = queue.start().await;
    node.shutdown().await;
    let topic = with("right", "[[topic]]\nname = \"events\"\n");
    let err = switchyard::Node::start(&topic.load())
        .await
        .err()
        .map(|err| err.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("NATS stream `sy-events`")
            && err.contains("retention is WorkQueue")
            && err.contains("rename the topic"),
        "{err}"
    );
}

/// The outbox relay publishes an entry with its id fixed; on NATS the id is `Nats-Msg-Id`,
/// so an entry relayed twice (the node died after publishing, before marking it relayed) is
/// stored, and delivered, once.
#[tokio::test]
async fn a_message_published_twice_with_one_id_is_stored_once() {
    let nats = NatsServer::start().await;
    let manifest = TestManifest::new(&format!(
        "{}{}[[topic]]\nname = \"events\"\n\n[[topic.subscription]]\nservice = \"billing\"\n",
        nats.section(),
        mailroom("billing", &[]),
    ));
    let node = manifest.start().await;
    let publisher = switchyard::bench::NodePublisher::of(&node);
    let first = publisher
        .publish_as("events", "0123456789abcdef-1", b"order 1".to_vec())
        .await
        .unwrap();
    let again = publisher
        .publish_as("events", "0123456789abcdef-1", b"order 1".to_vec())
        .await
        .unwrap();
    let other = publisher
        .publish_as("events", "0123456789abcdef-2", b"order 2".to_vec())
        .await
        .unwrap();
    assert_eq!(
        (first, again, other),
        (0, 0, 1),
        "the same id is the same message"
    );
    let view = wait_for_entry(&node, "/topics", "events", Duration::from_secs(10), |t| {
        count(&t["subscriptions"][0], "delivered") == 2 && count(t, "messages") == 2
    })
    .await;
    assert_eq!(count(&view, "next_offset"), 2, "{view:#}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let view = crate::support::admin_entry(&node, "/topics", "events").await;
    assert_eq!(count(&view["subscriptions"][0], "delivered"), 2, "{view:#}");
    node.shutdown().await;
}

/// Editing a watched manifest on NATS: a queue added gets its streams and is pulled; a
/// queue's settings changed take effect (its stream's limits updated); a queue removed stops
/// being pulled here, and its stream keeps what it owes for the nodes that still declare it.
#[tokio::test]
async fn editing_queues_on_nats_adds_reconfigures_and_stops_pulling_them() {
    let nats = NatsServer::start().await;
    let jobs = |max_attempts: u32| {
        format!(
            "[[queue]]\nname = \"jobs\"\nsubscriber = \"mailroom\"\nmax_attempts = \
             {max_attempts}\nredeliver_ms = 20\n\n"
        )
    };
    let later = "[[queue]]\nname = \"later\"\nsubscriber = \"mailroom\"\nmax_depth = 5\n\n";
    let manifest = TestManifest::new(&format!(
        "{}{}{}",
        nats.section(),
        mailroom("mailroom", &["POST /send/{queue}"]),
        jobs(5)
    ));
    let mut node = manifest.start().await;
    let (reports, mut reported) = tokio::sync::mpsc::unbounded_channel();
    node.watch_manifest(Some(reports)).unwrap();
    let original = std::fs::read_to_string(&manifest.path).unwrap();
    let mut edit = async |queues: &str| {
        let head = &original[..original.find("[[queue]]").unwrap()];
        manifest.edit(&format!("{head}{queues}"));
        crate::support::next_reload(&mut reported).await
    };
    let unknown = send(node.http_addr(), "POST", "/send/later", "x").await;
    assert_eq!(unknown.status, 500, "{}", unknown.body);
    assert!(
        unknown
            .body
            .contains("no queue or topic named `later` exists on NATS"),
        "{}",
        unknown.body
    );

    let report = edit(&format!("{}{later}", jobs(1))).await;
    assert_eq!(
        report.applied,
        vec![
            "queue `jobs`: settings changed".to_owned(),
            "queue `later` added".to_owned()
        ],
        "{report:?}"
    );
    assert_eq!(
        send(node.http_addr(), "POST", "/send/later", "ok")
            .await
            .status,
        202
    );
    assert_eq!(
        send(node.http_addr(), "POST", "/send/jobs", "always-fail")
            .await
            .status,
        202
    );
    let view = wait_for_entry(&node, "/queues", "jobs", Duration::from_secs(10), |q| {
        count(q, "dead_lettered") == 1 && count(q, "dead_letters_total") == 1
    })
    .await;
    assert_eq!(view["recent_dead_letters"][0]["attempts"], 1, "{view:#}");
    wait_for_entry(&node, "/queues", "later", Duration::from_secs(10), |q| {
        count(q, "delivered") == 1
    })
    .await;

    // Removed here: no longer pulled; what is sent to it waits in its stream.
    let report = edit(&jobs(1)).await;
    assert_eq!(
        report.applied,
        vec!["queue `later` removed (its stream keeps its messages)".to_owned()],
        "{report:?}"
    );
    assert_eq!(
        send(node.http_addr(), "POST", "/send/later", "kept")
            .await
            .status,
        202
    );
    let report = edit(&format!("{}{later}", jobs(1))).await;
    assert_eq!(report.applied, vec!["queue `later` added".to_owned()]);
    wait_for_entry(&node, "/queues", "later", Duration::from_secs(10), |q| {
        count(q, "delivered") == 1 && count(q, "depth") == 0
    })
    .await;
    node.shutdown().await;
}

/// `[messaging] tls`: a server that speaks only TLS, verified against the manifest's CA (one
/// from another CA is refused at start, naming `tls`); and a token read from `token_file`.
#[tokio::test]
async fn nats_over_tls_with_a_token() {
    use rcgen::{CertificateParams, Issuer, KeyPair};
    let files = tempfile::tempdir().unwrap();
    let path = |name: &str| files.path().join(name).display().to_string();
    let ca = switchyard::cert::generate_ca("nats-test").unwrap();
    std::fs::write(path("ca.pem"), &ca.cert).unwrap();
    let stranger = switchyard::cert::generate_ca("stranger").unwrap();
    std::fs::write(path("stranger.pem"), &stranger.cert).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, KeyPair::from_pem(&ca.key).unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(path("server.pem"), server.pem()).unwrap();
    std::fs::write(path("server.key"), key.serialize_pem()).unwrap();
    std::fs::write(path("token"), "s3cret-token\n").unwrap();
    let nats = NatsServer::start_with(&[
        "--tls",
        "--tlscert",
        &path("server.pem"),
        "--tlskey",
        &path("server.key"),
        "--auth",
        "s3cret-token",
    ])
    .await;
    let manifest = |ca: &str| {
        TestManifest::new(&format!(
            "[messaging]\nbackend = \"nats\"\nservers = [\"tls://{}\"]\ntoken_file = {:?}\n\
             tls = {{ ca = {:?} }}\n\n{}[[queue]]\nname = \"jobs\"\nsubscriber = \"mailroom\"\n",
            nats.addr,
            path("token"),
            path(ca),
            mailroom("mailroom", &["POST /send/{queue}"]),
        ))
    };
    let trusted = manifest("ca.pem");
    let node = trusted.start().await;
    let sent = send(node.http_addr(), "POST", "/send/jobs", "ok over tls").await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    wait_for_entry(&node, "/queues", "jobs", Duration::from_secs(10), |q| {
        count(q, "delivered") == 1
    })
    .await;
    node.shutdown().await;

    let untrusted = manifest("stranger.pem");
    let err = switchyard::Node::start(&untrusted.load())
        .await
        .err()
        .map(|err| err.to_string())
        .unwrap_or_default();
    assert!(err.contains("check `tls` in [messaging]"), "{err}");
}

/// A topic's retention on NATS is its stream's limits: by size (the oldest go), by age, and
/// `compact` (the latest message of each key); offsets go on past what was dropped, as on
/// the embedded broker; and it all survives a restart of the node.
#[tokio::test]
async fn retention_and_compaction_are_the_streams_limits() {
    let nats = NatsServer::start().await;
    let topics = "[[topic]]\nname = \"sized\"\nretain_mb = 1\n\n\
                  [[topic]]\nname = \"latest\"\ncompact = true\n\n\
                  [[topic]]\nname = \"brief\"\nretain_ms = 300\n\n";
    let manifest = TestManifest::new(&format!(
        "{}{}{topics}",
        nats.section(),
        mailroom("front", &["POST /publish/{queue}", "GET /read/{queue}"]),
    ));
    let publish = async |node: &switchyard::Node, topic: &str, key: Option<&str>, body: &str| {
        let path = format!("/publish/{topic}");
        let headers: Vec<(&str, &str)> = key.map(|key| ("x-key", key)).into_iter().collect();
        let reply = send_with(node.http_addr(), "POST", &path, body, &headers).await;
        assert_eq!(reply.status, 202, "{}", reply.body);
        reply.body.parse::<u64>().unwrap()
    };
    let read = async |node: &switchyard::Node, topic: &str| {
        let reply =
            crate::support::get(node.http_addr(), &format!("/read/{topic}?from=0&max=10")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body
    };
    let node = manifest.start().await;
    let big = "x".repeat(400 * 1024);
    for _ in 0..3 {
        publish(&node, "sized", None, &big).await;
    }
    let view = wait_for_entry(&node, "/topics", "sized", Duration::from_secs(5), |t| {
        count(t, "published") == 3 && count(t, "next_offset") == 3
    })
    .await;
    assert_eq!(
        (count(&view, "first_offset"), count(&view, "messages")),
        (1, 2),
        "{view:#}"
    );
    publish(&node, "latest", Some("a"), "a1").await;
    publish(&node, "latest", Some("b"), "b1").await;
    publish(&node, "latest", Some("a"), "a2").await;
    assert_eq!(read(&node, "latest").await, "1 b b1\n2 a a2");
    publish(&node, "brief", None, "soon gone").await;
    let view = wait_for_entry(&node, "/topics", "brief", Duration::from_secs(5), |t| {
        count(t, "next_offset") == 1 && count(t, "messages") == 0
    })
    .await;
    assert!(view["first_offset"].is_null(), "{view:#}");
    assert_eq!(publish(&node, "brief", None, "next").await, 1);
    node.shutdown().await;

    let node = manifest.start().await;
    assert_eq!(read(&node, "latest").await, "1 b b1\n2 a a2");
    node.shutdown().await;
}

/// `examples/outbox/outbox-nats.toml` as the README runs it (on this test's server, ports
/// and data dir): an order and its event commit together, billing bills it from the stream.
#[tokio::test]
async fn the_outbox_example_runs_on_nats() {
    let nats = NatsServer::start().await;
    let root = crate::support::repo_root();
    let example = std::fs::read_to_string(root.join("examples/outbox/outbox-nats.toml")).unwrap();
    let text = example
        .replace("nats://127.0.0.1:4222", &nats.url)
        .replace("127.0.0.1:8083", "127.0.0.1:0")
        .replace("127.0.0.1:9093", "127.0.0.1:0")
        .replace("../../target/switchyard-data/outbox-nats", "data")
        .replace("../../target/", &format!("{}/target/", root.display()));
    assert!(
        text.contains(&nats.url),
        "the example names its NATS server"
    );
    let manifest = TestManifest::new("");
    manifest.edit(&text);
    let node = manifest.start().await;
    let http = node.http_addr();
    for n in 1..=3 {
        let placed = send(
            http,
            "POST",
            &format!("/orders/o{n}"),
            &format!("{{\"total_cents\": {n}00}}"),
        )
        .await;
        assert_eq!(placed.status, 201, "{}", placed.body);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while crate::support::get(http, "/billing").await.body != "3 600" {
        assert!(
            std::time::Instant::now() < deadline,
            "billing never billed the orders"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every event is in the stream, and billing's cursor is past them.
    wait_for_entry(
        &node,
        "/topics",
        "order-events",
        Duration::from_secs(5),
        |t| {
            count(t, "messages") == 3
                && count(&t["subscriptions"][0], "lag") == 0
                && count(&t["subscriptions"][0], "cursor") == 3
        },
    )
    .await;
    node.shutdown().await;
}

/// A NATS server without JetStream cannot keep queues: the start fails and says so.
#[tokio::test]
async fn a_server_without_jetstream_is_named() {
    let nats = NatsServer::start_without_jetstream().await;
    let manifest = TestManifest::new(&format!(
        "{}{}[[queue]]\nname = \"jobs\"\nsubscriber = \"mailroom\"\n",
        nats.section(),
        mailroom("mailroom", &["POST /send/{queue}"]),
    ));
    let err = switchyard::Node::start(&manifest.load())
        .await
        .err()
        .map(|err| err.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("NATS stream `sy-jobs`")
            && err.contains("must run JetStream")
            && err.contains(&nats.url),
        "{err}"
    );
}

/// A node asks JetStream about its streams (for `/topics`, `/queues` and `/metrics`) every
/// 200 ms only while someone reads those; unread, every 2 s: each look costs the servers API
/// requests per topic, from every node. Counted by the server itself (`/jsz`, `api.total`).
#[tokio::test]
async fn a_node_asks_jetstream_about_its_streams_often_only_while_someone_looks() {
    let monitor = free_port();
    let nats = NatsServer::start_with(&["-m", &monitor.port().to_string()]).await;
    let manifest = TestManifest::new(&format!(
        "{}{}[[topic]]\nname = \"a\"\n\n[[topic]]\nname = \"b\"\n\n",
        nats.section(),
        mailroom("front", &["POST /publish/{queue}"]),
    ));
    let node = manifest.start().await;
    let api_requests = async || {
        let reply = get(monitor, "/jsz").await;
        let jsz: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        count(&jsz["api"], "total")
    };
    // The streams are made at start; the first looks follow.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = api_requests().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let unread = api_requests().await - before;

    let before = api_requests().await;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert_eq!(admin_get(&node, "/topics").await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let read = api_requests().await - before;
    eprintln!("JetStream API requests in 3 s: {unread} unread, {read} while read");

    // A look is two requests per topic here (its stream, its dead letters' stream): unread,
    // one look every 2 s (at 200 ms it was 15 looks, 60 requests, in 3 s); read, one per
    // 200 ms tick.
    assert!(
        unread <= 3 * 4,
        "{unread} API requests in 3 s while nobody looked"
    );
    assert!(
        read >= 30 && read > 2 * unread,
        "{read} API requests in 3 s while /topics was read every 50 ms ({unread} unread)"
    );
    node.shutdown().await;
}
