//! Topics: a guest publishes (guests/mailroom over HTTP), every subscribing service gets each
//! message at its own pace, the topic keeps its history within its retention for readers and
//! for subscriptions that start at the beginning or rewind; cursors and kept messages survive
//! a restart; on several nodes a topic lives on the node that declares it.

use std::time::{Duration, Instant};

use crate::support::{
    Backend, TestManifest, admin_entry, admin_get, admin_post, capture_logs, count, get, send,
    send_with, service, switchyard_cli, wait_for_entry,
};

/// A mailroom service called `name` (its replies say its name), with more `config` entries;
/// `front` and `edge` take the HTTP routes, the others only consume.
fn mailroom(name: &str, config: &str) -> String {
    let config = match config {
        "" => String::new(),
        more => format!(", {more}"),
    };
    let routes: &[&str] = match name {
        "front" | "edge" => &[
            "POST /publish/{queue}",
            "GET /read/{queue}",
            "POST /request-all/{queue}",
        ],
        _ => &[],
    };
    service(
        name,
        "mailroom",
        routes,
        &format!("config = {{ name = \"{name}\"{config} }}"),
    )
}

/// `[[topic]] name` with `extra` lines, then a `[[topic.subscription]]` per `(service, lines)`.
fn topic(name: &str, extra: &str, subscriptions: &[(&str, &str)]) -> String {
    let mut text = format!("[[topic]]\nname = \"{name}\"\n{extra}\n");
    for (service, lines) in subscriptions {
        text.push_str(&format!(
            "[[topic.subscription]]\nservice = \"{service}\"\n{lines}\n"
        ));
    }
    text
}

async fn publish(node: &switchyard::Node, topic: &str, key: Option<&str>, body: &str) -> u64 {
    let path = format!("/publish/{topic}");
    let reply = match key {
        Some(key) => send_with(node.http_addr(), "POST", &path, body, &[("x-key", key)]).await,
        None => send(node.http_addr(), "POST", &path, body).await,
    };
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.body.parse().unwrap()
}

/// `GET /read/{topic}?from&max` through the guest: `(offset, key, body)` per message.
async fn read(node: &switchyard::Node, topic: &str, from: u64, max: u32) -> Vec<String> {
    let reply = get(
        node.http_addr(),
        &format!("/read/{topic}?from={from}&max={max}"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply
        .body
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn topic_view(node: &switchyard::Node, name: &str) -> serde_json::Value {
    admin_entry(node, "/topics", name).await
}

fn subscription<'a>(view: &'a serde_json::Value, service: &str) -> &'a serde_json::Value {
    view["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == service)
        .unwrap_or_else(|| panic!("no subscription {service} in {view:#}"))
}

/// Polls `GET /topics` until `done` holds for topic `name`; fails with the last view.
async fn wait_for(
    node: &switchyard::Node,
    name: &str,
    within: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for_entry(node, "/topics", name, within, done).await
}

/// Each subscribing service gets every message; the topic keeps them for readers; a
/// subscription that starts at the beginning gets what was published before it existed; a
/// rewind (`switchyard replay`) delivers the kept messages again from an offset.
#[tokio::test]
async fn a_topic_fans_out_to_every_subscriber_keeps_its_history_and_replays_it() {
    fans_out_keeps_history_replays(Backend::Embedded).await;
}

#[tokio::test]
async fn on_nats_a_topic_fans_out_to_every_subscriber_keeps_its_history_and_replays_it() {
    fans_out_keeps_history_replays(Backend::nats().await).await;
}

async fn fans_out_keeps_history_replays(backend: Backend) {
    capture_logs();
    let services = format!(
        "{}{}{}{}",
        backend.section(),
        mailroom("front", ""),
        mailroom("billing", ""),
        mailroom("shipping", "")
    );
    let subscribed = format!(
        "{services}{}",
        topic(
            "events",
            "",
            &[
                ("billing", "concurrency = 4"),
                ("shipping", "start = \"latest\"")
            ]
        )
    );
    let manifest = TestManifest::new(&subscribed);
    let node = manifest.start().await;
    for n in 0..5 {
        let offset = publish(&node, "events", None, &format!("order {n}")).await;
        assert_eq!(offset, n);
    }
    // On NATS the view of the streams is refreshed a few times a second: wait for all of it.
    let view = wait_for(&node, "events", Duration::from_secs(10), |t| {
        count(t, "messages") == 5
            && t["subscriptions"].as_array().is_some_and(|subs| {
                subs.iter().all(|s| {
                    count(s, "delivered") == 5 && count(s, "lag") == 0 && count(s, "cursor") == 5
                })
            })
    })
    .await;
    assert_eq!(
        (
            count(&view, "next_offset"),
            count(&view, "messages"),
            count(&view, "first_offset")
        ),
        (5, 5, 0),
        "{view:#}"
    );
    for service in ["billing", "shipping"] {
        let sub = subscription(&view, service);
        assert_eq!((count(sub, "lag"), count(sub, "cursor")), (0, 5), "{sub:#}");
    }

    // Its history, for a guest that rebuilds state: from an offset, at most `max`.
    assert_eq!(
        read(&node, "events", 2, 2).await,
        ["2 - order 2", "3 - order 3"]
    );
    assert_eq!(read(&node, "events", 5, 10).await, Vec::<String>::new());

    // A subscription added later, from the beginning: it gets the history too.
    let with_audit = format!(
        "{}{}",
        mailroom("audit", ""),
        subscribed.replace(
            "[[topic.subscription]]\nservice = \"billing\"",
            "[[topic.subscription]]\nservice = \"audit\"\nstart = \"beginning\"\n\n\
             [[topic.subscription]]\nservice = \"billing\""
        )
    );
    node.shutdown().await;
    manifest.edit(&format!(
        "[node]\nname = \"test\"\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         data_dir = \"data\"\n\n{with_audit}"
    ));
    let node = manifest.start().await;
    let view = wait_for(&node, "events", Duration::from_secs(10), |t| {
        count(subscription(t, "audit"), "delivered") == 5
            && count(subscription(t, "billing"), "cursor") == 5
    })
    .await;
    // The others kept their cursors across the restart: nothing again for them.
    assert_eq!(count(subscription(&view, "billing"), "delivered"), 0);
    assert_eq!(count(subscription(&view, "billing"), "cursor"), 5);

    // A rewind delivers the kept messages again from an offset, to that subscription only.
    let (admin, token) = (
        node.admin_addr().to_string(),
        node.admin_token_file().display().to_string(),
    );
    let replay = switchyard_cli(&[
        "replay",
        "events",
        "--subscriber",
        "billing",
        "--from",
        "3",
        "--admin",
        &admin,
        "--token-file",
        &token,
    ])
    .await;
    assert!(replay.success, "{}", replay.stderr);
    assert!(replay.stdout.contains("\"offset\": 3"), "{}", replay.stdout);
    let view = wait_for(&node, "events", Duration::from_secs(10), |t| {
        count(subscription(t, "billing"), "delivered") == 2
    })
    .await;
    assert_eq!(count(subscription(&view, "shipping"), "delivered"), 0);
    // From the beginning, through the admin API: all five again.
    let (status, body) = admin_post(
        &node,
        "/topics/events/replay?subscriber=billing&from=beginning",
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    wait_for(&node, "events", Duration::from_secs(10), |t| {
        count(subscription(t, "billing"), "delivered") == 7
    })
    .await;
    // A rewind of a subscription that does not exist names the ones that do.
    let (status, body) = admin_post(
        &node,
        "/topics/events/replay?subscriber=nobody&from=0",
        Vec::new(),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("audit, billing, shipping"), "{body}");

    // `switchyard status` shows the topic and each subscription's cursor and lag.
    wait_for(&node, "events", Duration::from_secs(10), |t| {
        count(subscription(t, "shipping"), "cursor") == 5
            && count(subscription(t, "billing"), "lag") == 0
    })
    .await;
    let status = switchyard_cli(&["status", "--admin", &admin, "--token-file", &token]).await;
    assert!(status.success, "{}", status.stderr);
    let line = status
        .stdout
        .lines()
        .find(|line| line.starts_with(' ') && line.contains("shipping"))
        .unwrap_or_else(|| panic!("{}", status.stdout));
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(columns[..3], ["shipping", "5", "0"], "{line}");
    node.shutdown().await;
}

/// What a subscription owes survives a restart: messages published while its subscriber
/// failed are delivered after the node comes back. Retention drops old messages by size and
/// by age; a `compact` topic keeps the latest message of each key, also after a restart.
#[tokio::test]
async fn cursors_retention_and_compaction_survive_a_restart() {
    let topics = format!(
        "{}{}{}",
        topic(
            "owed",
            "",
            &[("billing", "max_attempts = 1000\nredeliver_ms = 60000")]
        ),
        topic("sized", "retain_mb = 1", &[]),
        topic("latest", "compact = true", &[])
    );
    let refusing = TestManifest::new(&format!(
        "{}{}{topics}",
        mailroom("front", ""),
        mailroom("billing", "mode = \"refuse\""),
    ));
    let node = refusing.start().await;
    for n in 0..3 {
        publish(&node, "owed", None, &format!("owed {n}")).await;
    }
    wait_for(&node, "owed", Duration::from_secs(10), |t| {
        count(subscription(t, "billing"), "redelivered") == 3
    })
    .await;
    // Size: three messages of 400 KiB do not fit in 1 MiB; the oldest goes.
    let big = "x".repeat(400 * 1024);
    for _ in 0..3 {
        publish(&node, "sized", None, &big).await;
    }
    let view = topic_view(&node, "sized").await;
    assert_eq!(
        (count(&view, "first_offset"), count(&view, "messages")),
        (1, 2),
        "{view:#}"
    );
    // Compaction: a later message of a key replaces the earlier one.
    publish(&node, "latest", Some("a"), "a1").await;
    publish(&node, "latest", Some("b"), "b1").await;
    publish(&node, "latest", Some("a"), "a2").await;
    assert_eq!(read(&node, "latest", 0, 10).await, ["1 b b1", "2 a a2"]);
    node.shutdown().await;

    // Back with a subscriber that takes them: what was owed is delivered.
    let dir = refusing.dir.path().to_path_buf();
    let text = std::fs::read_to_string(&refusing.path)
        .unwrap()
        .replace(", mode = \"refuse\"", "");
    refusing.edit(&text);
    let node = refusing.start().await;
    let view = wait_for(&node, "owed", Duration::from_secs(10), |t| {
        count(subscription(t, "billing"), "delivered") == 3
    })
    .await;
    assert_eq!(count(subscription(&view, "billing"), "lag"), 0, "{view:#}");
    assert_eq!(read(&node, "latest", 0, 10).await, ["1 b b1", "2 a a2"]);
    let view = topic_view(&node, "sized").await;
    assert_eq!(count(&view, "first_offset"), 1, "{view:#}");
    assert!(
        !segment_files(&dir, "owed").is_empty(),
        "the topic's log is a folder of segments"
    );
    node.shutdown().await;

    // Age: a topic that keeps messages 300 ms drops them after that, offsets going on.
    let aging = TestManifest::new(&format!(
        "{}{}",
        mailroom("front", ""),
        topic("brief", "retain_ms = 300", &[])
    ));
    let node = aging.start().await;
    publish(&node, "brief", None, "soon gone").await;
    let view = wait_for(&node, "brief", Duration::from_secs(5), |t| {
        count(t, "messages") == 0
    })
    .await;
    assert!(view["first_offset"].is_null(), "{view:#}");
    assert_eq!(publish(&node, "brief", None, "next").await, 1);
    node.shutdown().await;
}

/// The `.seg` files of log `name` under the node's data dir: `(number, bytes)`, in order.
fn segment_files(dir: &std::path::Path, name: &str) -> Vec<(u64, u64)> {
    let mut segments: Vec<(u64, u64)> = std::fs::read_dir(dir.join("data/queues").join(name))
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let number = entry
                .file_name()
                .to_str()?
                .strip_suffix(".seg")?
                .parse()
                .ok()?;
            Some((number, entry.metadata().ok()?.len()))
        })
        .collect();
    segments.sort_unstable();
    segments
}

fn total_bytes(segments: &[(u64, u64)]) -> u64 {
    segments.iter().map(|(_, bytes)| bytes).sum()
}

/// A topic's log is segments of an eighth of its retention: size retention removes whole old
/// segments, a `compact` topic's segments of superseded messages are removed or rewritten,
/// a queue's segments go once their messages are acknowledged; a restart reads the same.
#[tokio::test]
async fn retention_removes_whole_segments_and_compaction_rewrites_them() {
    let text = format!(
        "{}{}{}{}{}",
        mailroom("front", ""),
        mailroom("billing", ""),
        topic("sized", "retain_mb = 1", &[]),
        topic("latest", "retain_mb = 1\ncompact = true", &[]),
        "[[queue]]\nname = \"jobs\"\nsubscriber = \"billing\"\nmax_bytes_mb = 1\n",
    );
    let manifest = TestManifest::new(&text);
    let dir = manifest.dir.path().to_path_buf();
    let node = manifest.start().await;
    // 2 MiB through a topic that keeps 1 MiB in segments of 128 KiB.
    let body = "s".repeat(64 * 1024);
    for _ in 0..32 {
        publish(&node, "sized", None, &body).await;
    }
    let sized = segment_files(&dir, "sized");
    assert!(sized[0].0 > 0, "the oldest segments are gone: {sized:?}");
    let kept = total_bytes(&sized);
    assert!(
        (1024 * 1024..=(1024 + 3 * 128) * 1024).contains(&kept),
        "about the 1 MiB retained is on disk, {kept} bytes: {sized:?}"
    );
    let view = topic_view(&node, "sized").await;
    let first = count(&view, "first_offset");
    assert!(first > 10, "{view:#}");
    let read_back = read(&node, "sized", 0, 1).await;
    assert!(
        read_back[0].starts_with(&format!("{first} ")),
        "{read_back:?}"
    );

    // Two keys, 1.5 MiB of updates: only the latest of each key needs to stay.
    let update = "c".repeat(48 * 1024);
    for n in 0..32 {
        let key = if n % 2 == 0 { "a" } else { "b" };
        publish(&node, "latest", Some(key), &format!("{n} {update}")).await;
    }
    let latest = segment_files(&dir, "latest");
    assert!(
        total_bytes(&latest) <= 3 * 128 * 1024,
        "superseded updates are not kept on disk: {latest:?}"
    );
    let heads = |lines: Vec<String>| -> Vec<String> {
        lines
            .iter()
            .map(|line| line.splitn(4, ' ').take(3).collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(
        heads(read(&node, "latest", 0, 10).await),
        ["30 a 30", "31 b 31"]
    );

    // A queue's acknowledged messages leave with their segments.
    for n in 0..32 {
        let reply = send(
            node.http_addr(),
            "POST",
            "/publish/jobs",
            &format!("{n} {body}"),
        )
        .await;
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let jobs = loop {
        let jobs = segment_files(&dir, "jobs");
        let queue = admin_entry(&node, "/queues", "jobs").await;
        if count(&queue, "depth") == 0 && jobs[0].0 > 0 {
            break jobs;
        }
        assert!(Instant::now() < deadline, "{queue:#} {jobs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        total_bytes(&jobs) < 1024 * 1024,
        "the acknowledged 2 MiB are mostly gone: {jobs:?}"
    );
    node.shutdown().await;

    // A restart reads the same from what is left.
    let node = manifest.start().await;
    let view = topic_view(&node, "sized").await;
    assert_eq!(count(&view, "first_offset"), first, "{view:#}");
    assert_eq!(count(&view, "next_offset"), 32, "{view:#}");
    assert_eq!(
        heads(read(&node, "latest", 0, 10).await),
        ["30 a 30", "31 b 31"]
    );
    assert_eq!(publish(&node, "latest", Some("a"), "next").await, 32);
    let queue = admin_entry(&node, "/queues", "jobs").await;
    assert_eq!(count(&queue, "depth"), 0, "{queue:#}");
    node.shutdown().await;
}

/// A topic lives on the node that declares it: a guest on another node publishes and reads
/// by name, subscribers on another node get every message, and a request to every subscriber
/// collects the replies that come within its window.
#[tokio::test]
async fn a_topic_takes_publishes_from_and_delivers_to_other_nodes() {
    let owner_manifest = TestManifest::with_node(
        "name = \"owner\"\nquic = \"127.0.0.1:0\"",
        &format!(
            "{}{}",
            mailroom("front", ""),
            topic(
                "events",
                "",
                &[("billing", "concurrency = 2"), ("shipping", "")]
            )
        ),
    );
    let owner = owner_manifest.start().await;
    let worker_manifest = TestManifest::with_node(
        &format!(
            "name = \"worker\"\nquic = \"127.0.0.1:0\"\nseeds = [\"{}\"]",
            owner.quic_addr().unwrap()
        ),
        &format!(
            "{}{}{}",
            mailroom("edge", ""),
            mailroom("billing", ""),
            mailroom("shipping", "")
        ),
    );
    let worker = worker_manifest.start().await;
    let started = Instant::now();
    while !admin_get(&owner, "/registry")
        .await
        .body
        .contains("shipping@")
        || !admin_get(&worker, "/registry")
            .await
            .body
            .contains("\"events\"")
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "nodes never met: {} / {}",
            admin_get(&owner, "/registry").await.body,
            admin_get(&worker, "/registry").await.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in 0..4 {
        assert_eq!(publish(&worker, "events", None, &format!("e{n}")).await, n);
    }
    wait_for(&owner, "events", Duration::from_secs(10), |t| {
        t["subscriptions"]
            .as_array()
            .is_some_and(|subs| subs.iter().all(|s| count(s, "delivered") == 4))
    })
    .await;
    assert_eq!(read(&worker, "events", 3, 10).await, ["3 - e3"]);

    // Publish/async responses: each subscriber answers; both replies come within the window.
    let reply = send_with(
        worker.http_addr(),
        "POST",
        "/request-all/events",
        "reply please",
        &[("x-window-ms", "1500")],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.body.lines().collect::<Vec<_>>(),
        [
            "re: reply please from billing",
            "re: reply please from shipping"
        ]
    );
    // None answers a message that asks for no reply: an empty list once the window is over.
    let asked = Instant::now();
    let reply = send_with(
        worker.http_addr(),
        "POST",
        "/request-all/events",
        "no answer",
        &[("x-window-ms", "300")],
    )
    .await;
    assert_eq!((reply.status, reply.body.as_str()), (200, ""));
    assert!(asked.elapsed() >= Duration::from_millis(300));

    // An owner that is gone makes a publish fail at once.
    drop(owner);
    let sent_at = Instant::now();
    let reply = send(worker.http_addr(), "POST", "/publish/events", "too late").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(sent_at.elapsed() < Duration::from_secs(3));
    worker.shutdown().await;
}

/// Bad topics are refused where they are written, and a publish to a topic nobody declares
/// names the ones there are.
#[tokio::test]
async fn bad_topics_are_refused_with_their_place_and_a_fix() {
    let refused = |text: &str| {
        let manifest = TestManifest::new(&format!("{}{text}", mailroom("front", "")));
        switchyard::Manifest::load(&manifest.path)
            .err()
            .map(|err| err.to_string())
            .unwrap_or_else(|| panic!("accepted: {text}"))
    };
    let error = refused(&topic("events", "", &[("ghost", "")]));
    assert!(
        error.contains("its subscriber `ghost` is not a service of this node")
            && error.contains("switchyard.toml:"),
        "{error}"
    );
    let error = refused(&topic("events", "", &[("front", "start = \"yesterday\"")]));
    assert!(
        error.contains("not a place in a topic") && error.contains("\"beginning\""),
        "{error}"
    );
    let error = refused(&format!(
        "{}[[queue]]\nname = \"events\"\nsubscriber = \"front\"\n",
        topic("events", "", &[])
    ));
    assert!(
        error.contains("queues and topics share one namespace"),
        "{error}"
    );
    let error = refused(&topic("events", "retain_mb = 0", &[]));
    assert!(error.contains("`retain_mb` = 0 is out of range"), "{error}");
    let error = refused(&topic("events", "", &[("front", ""), ("front", "")]));
    assert!(error.contains("subscribes twice"), "{error}");

    let manifest = TestManifest::new(&format!(
        "{}{}",
        mailroom("front", ""),
        topic("events", "", &[])
    ));
    let node = manifest.start().await;
    let reply = send(node.http_addr(), "POST", "/publish/nope", "lost").await;
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(
        reply
            .body
            .contains("no queue or topic named `nope` (it has: events)"),
        "{}",
        reply.body
    );
    // Larger than a message may be: refused, saying the limit.
    let big = "x".repeat(1024 * 1024 + 1);
    let reply = send(node.http_addr(), "POST", "/publish/events", &big).await;
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(
        reply.body.contains("message too large") && reply.body.contains("1048576"),
        "{}",
        reply.body
    );
    let (status, body) = admin_post(&node, "/queues/events/redrive", Vec::new()).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("switchyard replay events"), "{body}");
    node.shutdown().await;
}

/// `examples/events` as shipped (ports, seeds and data_dir rewritten so tests run side by
/// side): the README's walk-through, then `analytics` uncommented on both nodes replays the
/// history from the beginning.
#[tokio::test]
async fn the_events_example_runs_as_the_readme_says() {
    let data = tempfile::tempdir().unwrap();
    let example = |file: &str, with_analytics: bool, seed: Option<std::net::SocketAddr>| {
        let path = crate::support::repo_root()
            .join("examples/events")
            .join(file);
        let mut text = std::fs::read_to_string(&path).unwrap();
        for port in ["8081", "8082", "9091", "9092", "7401", "7402"] {
            text = text.replace(&format!("\"127.0.0.1:{port}\""), "\"127.0.0.1:0\"");
        }
        if let Some(seed) = seed {
            text = text.replace(
                "seeds = [\"127.0.0.1:0\"]",
                &format!("seeds = [\"{seed}\"]"),
            );
        }
        let dir = data.path().join(file);
        text = text
            .lines()
            .map(|line| match line.starts_with("data_dir") {
                true => format!("data_dir = {:?}", dir.display().to_string()),
                false => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        if with_analytics {
            let at = text.find("# [[").unwrap();
            let uncommented: Vec<&str> = text[at..]
                .lines()
                .map(|line| line.strip_prefix("# ").unwrap_or(line))
                .collect();
            text = format!("{}{}", &text[..at], uncommented.join("\n"));
        }
        switchyard::Manifest::parse(&text, &path).unwrap_or_else(|err| panic!("{err}"))
    };
    let start = |with_analytics: bool| async move {
        let orders = switchyard::Node::start(&example("orders.toml", with_analytics, None))
            .await
            .unwrap();
        let seed = orders.quic_addr();
        let fulfilment = switchyard::Node::start(&example("fulfilment.toml", with_analytics, seed))
            .await
            .unwrap();
        let started = Instant::now();
        while !admin_get(&orders, "/registry")
            .await
            .body
            .contains("shipping@")
        {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "nodes never met"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (orders, fulfilment)
    };
    let (orders, fulfilment) = start(false).await;
    for n in 1..=3 {
        let key = format!("order-{n}");
        assert_eq!(
            publish(
                &orders,
                "order-events",
                Some(&key),
                &format!("{key} placed")
            )
            .await,
            n - 1
        );
    }
    assert_eq!(
        publish(&orders, "order-events", Some("order-1"), "order-1 paid").await,
        3
    );
    assert_eq!(
        read(&orders, "order-events", 1, 2).await,
        ["1 order-2 order-2 placed", "2 order-3 order-3 placed"]
    );
    let reply = send(
        orders.http_addr(),
        "POST",
        "/request/order-events",
        "reply-from:billing is order-2 billed?",
    )
    .await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (
            200,
            "re: reply-from:billing is order-2 billed? from billing"
        )
    );
    let reply = send_with(
        orders.http_addr(),
        "POST",
        "/request-all/order-events",
        "reply: who handles order-3?",
        &[("x-window-ms", "500")],
    )
    .await;
    assert_eq!(
        reply.body.lines().collect::<Vec<_>>(),
        [
            "re: reply: who handles order-3? from billing",
            "re: reply: who handles order-3? from shipping"
        ]
    );
    wait_for(&orders, "order-events", Duration::from_secs(10), |t| {
        t["subscriptions"]
            .as_array()
            .is_some_and(|subs| subs.iter().all(|s| count(s, "delivered") == 6))
    })
    .await;
    fulfilment.shutdown().await;
    orders.shutdown().await;

    // analytics, added later, gets the whole history; the others keep their cursors.
    let (orders, fulfilment) = start(true).await;
    let view = wait_for(&orders, "order-events", Duration::from_secs(10), |t| {
        count(subscription(t, "analytics"), "delivered") == 6
    })
    .await;
    assert_eq!(count(subscription(&view, "billing"), "delivered"), 0);
    fulfilment.shutdown().await;
    orders.shutdown().await;
}

/// A subscribing service's instances compete for the topic's messages wherever they run:
/// with one instance per node busy, deliveries go to the other node's; when a subscriber's
/// node dies, its share goes to the instances that are left, and nothing is lost.
#[tokio::test]
async fn a_subscriptions_instances_on_several_nodes_share_its_messages_and_survive_one_dying() {
    let owner_manifest = TestManifest::with_node(
        "name = \"owner\"\nquic = \"127.0.0.1:0\"",
        &format!(
            "{}{}",
            mailroom("front", ""),
            topic("jobs", "", &[("billing", "concurrency = 4")])
        ),
    );
    let owner = owner_manifest.start().await;
    let seed = owner.quic_addr().unwrap();
    let worker = |name: &str| {
        TestManifest::with_node(
            &format!("name = \"{name}\"\nquic = \"127.0.0.1:0\"\nseeds = [\"{seed}\"]"),
            &mailroom("billing", "").replace("config = {", "max_instances = 1\nconfig = {"),
        )
    };
    let (a_manifest, b_manifest) = (worker("worker-a"), worker("worker-b"));
    let (a, b) = (a_manifest.start().await, b_manifest.start().await);
    let started = Instant::now();
    loop {
        let registry = admin_get(&owner, "/registry").await.body;
        if registry.contains("worker-a") && registry.contains("worker-b") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "nodes never met"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in 0..12 {
        publish(&owner, "jobs", None, &format!("hold:100 job {n}")).await;
    }
    wait_for(&owner, "jobs", Duration::from_secs(20), |t| {
        count(subscription(t, "billing"), "delivered") == 12
    })
    .await;
    let served_by = |services: &str| -> u64 {
        let services: serde_json::Value = serde_json::from_str(services).unwrap();
        services[0]["served"].as_u64().unwrap()
    };
    let on_a = served_by(&admin_get(&a, "/services").await.body);
    let on_b = served_by(&admin_get(&b, "/services").await.body);
    assert!(
        on_a > 0 && on_b > 0,
        "one node took them all: {on_a} / {on_b}"
    );
    assert_eq!(on_a + on_b, 12);

    // Worker A dies without a goodbye, in the middle of a burst: its share goes to B.
    for n in 0..10 {
        publish(&owner, "jobs", None, &format!("hold:50 later {n}")).await;
    }
    drop(a);
    let view = wait_for(&owner, "jobs", Duration::from_secs(30), |t| {
        count(subscription(t, "billing"), "delivered") >= 22
            && count(subscription(t, "billing"), "lag") == 0
    })
    .await;
    assert_eq!(count(subscription(&view, "billing"), "dead_lettered"), 0);
    assert!(served_by(&admin_get(&b, "/services").await.body) > on_b);
    b.shutdown().await;
    owner.shutdown().await;
}

/// Editing a running node's topics: a subscription added starts where it says; a topic turned
/// into a queue of the same name is refused (a queue would owe all the topic kept) and the
/// topic goes on as it was.
#[tokio::test]
async fn editing_topics_in_a_watched_manifest_applies_them_and_refuses_a_queue_on_a_topic() {
    let services = format!("{}{}", mailroom("front", ""), mailroom("billing", ""));
    let manifest = TestManifest::new(&format!("{services}{}", topic("events", "", &[])));
    let mut node = manifest.start().await;
    let (reports, mut reported) = tokio::sync::mpsc::unbounded_channel();
    node.watch_manifest(Some(reports)).unwrap();
    let original = std::fs::read_to_string(&manifest.path).unwrap();
    let head = original[..original.find("[[topic]]").unwrap()].to_owned();
    for n in 0..3 {
        publish(&node, "events", None, &format!("before {n}")).await;
    }

    // A subscription added from offset 1.
    manifest.edit(&format!(
        "{head}{}",
        topic("events", "", &[("billing", "start = 1")])
    ));
    let report = crate::support::next_reload(&mut reported).await;
    assert_eq!(
        report.applied,
        ["topic `events`: settings changed"],
        "{report:?}"
    );
    wait_for(&node, "events", Duration::from_secs(5), |t| {
        count(subscription(t, "billing"), "delivered") == 2
    })
    .await;

    // The topic made a queue: refused, the topic stays.
    manifest.edit(&format!(
        "{head}[[queue]]\nname = \"events\"\nsubscriber = \"billing\"\n"
    ));
    let report = crate::support::next_reload(&mut reported).await;
    let refused = format!("{report:?}");
    assert!(
        refused.contains("a queue of that name would owe every message"),
        "{refused}"
    );
    assert_eq!(publish(&node, "events", None, "after").await, 3);
    wait_for(&node, "events", Duration::from_secs(5), |t| {
        count(subscription(t, "billing"), "delivered") == 3
    })
    .await;
    node.shutdown().await;
}
