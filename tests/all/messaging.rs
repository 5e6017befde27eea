//! Durable queues: a guest sends (guests/mailroom over HTTP), the queue's subscriber consumes;
//! failed deliveries are redelivered by the policies bound to the queue or by its own rule and
//! dead-lettered when they give up; what is owed survives a restart.

use crate::support::admin_get;
use std::time::{Duration, Instant};

use crate::support::{
    Backend, TestManifest, admin_entry, admin_post, capture_logs, count, guest, logs, send,
    send_with, service, switchyard_cli, wait_for_entry,
};

/// The mailroom service (sends on `POST /send/{queue}`, consumes), then `rest`.
fn node(mailroom_extra: &str, rest: &str) -> TestManifest {
    TestManifest::new(&format!(
        "{}{rest}",
        service(
            "mailroom",
            "mailroom",
            &["POST /send/{queue}"],
            mailroom_extra
        )
    ))
}

/// [`node`] on `backend`'s messaging engine.
fn node_on(backend: &Backend, mailroom_extra: &str, rest: &str) -> TestManifest {
    node(mailroom_extra, &format!("{}{rest}", backend.section()))
}

/// Whether a queue's view shows its dead letters and no messages owed: on NATS the view of
/// the streams is refreshed a few times a second, after the counters of this node.
fn fresh(view: &serde_json::Value) -> bool {
    count(view, "depth") == 0
        && view["recent_dead_letters"]
            .as_array()
            .is_some_and(|dead| dead.len() as u64 == count(view, "dead_letters_total"))
        && count(view, "dead_letters_total") > 0
}

fn queue(name: &str, extra: &str) -> String {
    format!("[[queue]]\nname = \"{name}\"\nsubscriber = \"mailroom\"\n{extra}\n")
}

async fn send_to(node: &switchyard::Node, queue: &str, body: &str) -> (u16, String) {
    let reply = send(node.http_addr(), "POST", &format!("/send/{queue}"), body).await;
    (reply.status, reply.body)
}

async fn queue_view(node: &switchyard::Node, name: &str) -> serde_json::Value {
    admin_entry(node, "/queues", name).await
}

/// Polls `GET /queues` until `done` holds for queue `name`; fails with the last view.
async fn wait_for(
    node: &switchyard::Node,
    name: &str,
    within: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for_entry(node, "/queues", name, within, done).await
}

#[tokio::test]
async fn messages_a_guest_sends_are_delivered_to_the_subscriber_and_acknowledged() {
    delivered_and_acknowledged(Backend::Embedded).await;
}

#[tokio::test]
async fn on_nats_messages_a_guest_sends_are_delivered_to_the_subscriber_and_acknowledged() {
    delivered_and_acknowledged(Backend::nats().await).await;
}

async fn delivered_and_acknowledged(backend: Backend) {
    let manifest = node(
        "",
        &format!("{}{}", backend.section(), queue("jobs", "concurrency = 4")),
    );
    let node = manifest.start().await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let (status, id) = send_to(&node, "jobs", &format!("ok {n}")).await;
        assert_eq!(status, 202, "{id}");
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "ids are unique: {ids:?}");
    // On NATS the view of the stream is refreshed a few times a second: wait for both.
    let view = wait_for(&node, "jobs", Duration::from_secs(10), |q| {
        count(q, "delivered") == 20 && count(q, "depth") == 0
    })
    .await;
    assert_eq!(count(&view, "sent"), 20, "{view:#}");
    assert_eq!(count(&view, "redelivered"), 0, "{view:#}");
    assert_eq!(count(&view, "dead_lettered"), 0, "{view:#}");
    // The subscriber's key header reached it too.
    let (status, _) = {
        let reply = send_with(
            node.http_addr(),
            "POST",
            "/send/jobs",
            "ok keyed",
            &[("x-key", "customer-7")],
        )
        .await;
        (reply.status, reply.body)
    };
    assert_eq!(status, 202);
    wait_for(&node, "jobs", Duration::from_secs(5), |q| {
        count(q, "delivered") == 21
    })
    .await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_delivery_has_a_span_that_continues_the_senders_trace() {
    capture_logs();
    let manifest = node("", &queue("traced", ""));
    let node = manifest.start().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let reply = send_with(
        node.http_addr(),
        "POST",
        "/send/traced",
        "ok",
        &[("traceparent", parent.as_str())],
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    wait_for(&node, "traced", Duration::from_secs(5), |q| {
        count(q, "delivered") == 1
    })
    .await;
    node.shutdown().await;
    let line = logs()
        .lines()
        .find(|line| line.contains("delivery done") && line.contains("\"queue\":\"traced\""))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no `delivery done` event:\n{}", logs()));
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    let span = &event["span"];
    assert_eq!(span["name"], "delivery", "{line}");
    assert_eq!(span["trace_id"], trace_id, "{line}");
    assert_eq!(span["subscriber"], "mailroom", "{line}");
    assert_eq!(span["id"], reply.body.as_str(), "{line}");
    assert_eq!(event["fields"]["outcome"], "acked", "{line}");
}

#[tokio::test]
async fn the_queues_retry_policy_spaces_redeliveries_and_dead_letters_when_it_gives_up() {
    retry_policy_then_dead_letter(Backend::Embedded).await;
}

#[tokio::test]
async fn on_nats_the_queues_retry_policy_spaces_redeliveries_and_dead_letters_when_it_gives_up() {
    retry_policy_then_dead_letter(Backend::nats().await).await;
}

async fn retry_policy_then_dead_letter(backend: Backend) {
    let policy = format!(
        "[[policy]]\nname = \"retry\"\ncomponent = {:?}\n\
         config = {{ max_attempts = \"3\", base_ms = \"200\", max_ms = \"1000\" }}\n\n\
         [[bind]]\npolicies = [\"retry\"]\nqueue = \"jobs\"\n",
        guest("policy_retry").display().to_string()
    );
    // The queue's own limit is higher: the policy decides.
    let manifest = node_on(
        &backend,
        "",
        &format!("{}{policy}", queue("jobs", "max_attempts = 10")),
    );
    let node = manifest.start().await;
    let started = Instant::now();
    assert_eq!(send_to(&node, "jobs", "fail-until:3").await.0, 202);
    let (status, doomed) = send_to(&node, "jobs", "always-fail").await;
    assert_eq!(status, 202);
    let view = wait_for(&node, "jobs", Duration::from_secs(10), |q| {
        count(q, "delivered") == 1 && count(q, "dead_lettered") == 1 && fresh(q)
    })
    .await;
    // Two pauses, each at least half of 200 ms x 2^(attempt-1): 100 + 200 ms at the least.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "redelivered too soon: {:?}",
        started.elapsed()
    );
    assert_eq!(count(&view, "redelivered"), 4, "{view:#}");
    assert_eq!(count(&view, "depth"), 0, "{view:#}");
    let dead = &view["recent_dead_letters"][0];
    assert_eq!(dead["id"], doomed.as_str(), "{view:#}");
    assert_eq!(dead["attempts"], 3, "{view:#}");
    let reason = dead["reason"].as_str().unwrap();
    assert!(reason.contains("policy `retry`"), "{reason}");
    assert!(reason.contains("max_attempts = 3"), "{reason}");
    let last_error = dead["last_error"].as_str().unwrap();
    assert!(
        last_error.contains("always fails (attempt 3)"),
        "{last_error}"
    );
    assert_eq!(dead["body_preview"], "always-fail");
    assert_eq!(dead["sender"], "mailroom");
    // `switchyard status` shows the queue: depth 0, 1 delivered, 4 redelivered, 1 dead, no
    // loop stopped.
    let (admin, token_file) = (
        node.admin_addr().to_string(),
        node.admin_token_file().display().to_string(),
    );
    let stdout = switchyard_cli(&["status", "--admin", &admin, "--token-file", &token_file])
        .await
        .stdout;
    let line = stdout
        .lines()
        .find(|l| l.starts_with("jobs"))
        .unwrap_or_default();
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        columns,
        ["jobs", "mailroom", "0", "0", "1", "4", "1", "0"],
        "{stdout}"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn without_a_policy_a_trapping_subscriber_gets_max_attempts_and_the_node_goes_on() {
    trapping_subscriber_gets_max_attempts(Backend::Embedded).await;
}

#[tokio::test]
async fn on_nats_without_a_policy_a_trapping_subscriber_gets_max_attempts_and_the_node_goes_on() {
    trapping_subscriber_gets_max_attempts(Backend::nats().await).await;
}

async fn trapping_subscriber_gets_max_attempts(backend: Backend) {
    let manifest = node_on(
        &backend,
        "",
        &queue("jobs", "max_attempts = 2\nredeliver_ms = 20"),
    );
    let node = manifest.start().await;
    assert_eq!(send_to(&node, "jobs", "panic").await.0, 202);
    let view = wait_for(&node, "jobs", Duration::from_secs(5), |q| {
        count(q, "dead_lettered") == 1 && fresh(q)
    })
    .await;
    let dead = &view["recent_dead_letters"][0];
    assert_eq!(dead["attempts"], 2, "{view:#}");
    assert!(
        dead["reason"]
            .as_str()
            .unwrap()
            .contains("failed 2 times, its max_attempts"),
        "{view:#}"
    );
    assert!(
        dead["last_error"].as_str().unwrap().contains("failed"),
        "{view:#}"
    );
    // The node and the queue go on.
    assert_eq!(send_to(&node, "jobs", "ok after").await.0, 202);
    wait_for(&node, "jobs", Duration::from_secs(5), |q| {
        count(q, "delivered") == 1
    })
    .await;
    node.shutdown().await;
}

#[tokio::test]
async fn messages_owed_and_dead_letters_survive_a_restart() {
    let queues = format!(
        "{}{}",
        queue("jobs", "redeliver_ms = 60000"),
        queue("once", "max_attempts = 1")
    );
    let refusing = node("config = { mode = \"refuse\" }", &queues);
    let first = refusing.start().await;
    for n in 0..3 {
        assert_eq!(send_to(&first, "jobs", &format!("ok {n}")).await.0, 202);
    }
    assert_eq!(send_to(&first, "once", "dropped").await.0, 202);
    // Each failed once and now waits a minute; `once` dead-lettered at once.
    wait_for(&first, "jobs", Duration::from_secs(5), |q| {
        count(q, "redelivered") == 3
    })
    .await;
    wait_for(&first, "once", Duration::from_secs(5), |q| {
        count(q, "dead_lettered") == 1
    })
    .await;
    first.shutdown().await;

    // Same data_dir, a subscriber that acknowledges.
    let text = std::fs::read_to_string(&refusing.path)
        .unwrap()
        .replace("config = { mode = \"refuse\" }", "");
    refusing.edit(&text);
    let second = refusing.start().await;
    let view = wait_for(&second, "jobs", Duration::from_secs(5), |q| {
        count(q, "delivered") == 3
    })
    .await;
    assert_eq!(count(&view, "depth"), 0, "{view:#}");
    let once = queue_view(&second, "once").await;
    assert_eq!(count(&once, "dead_letters_total"), 1, "{once:#}");
    assert_eq!(once["recent_dead_letters"][0]["body_preview"], "dropped");
    assert_eq!(count(&once, "delivered"), 0, "{once:#}");
    // New ids continue after the old ones.
    let (_, id) = send_to(&second, "jobs", "ok again").await;
    assert_eq!(id, "jobs-3");
    second.shutdown().await;
}

#[tokio::test]
async fn bad_sends_are_refused_with_the_reason() {
    let manifest = node(
        "config = { mode = \"refuse\" }",
        &queue("jobs", "max_depth = 2\nredeliver_ms = 60000"),
    );
    let node = manifest.start().await;
    let (status, body) = send_to(&node, "nope", "x").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("no queue or topic named `nope`"), "{body}");
    assert!(body.contains("jobs"), "{body}");
    assert_eq!(send_to(&node, "jobs", "one").await.0, 202);
    assert_eq!(send_to(&node, "jobs", "two").await.0, 202);
    let (status, body) = send_to(&node, "jobs", "three").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("max_depth"), "{body}");
    let too_big = "x".repeat(1024 * 1024 + 1);
    let (status, body) = send_to(&node, "jobs", &too_big).await;
    assert_eq!(status, 500, "{}", &body[..body.len().min(200)]);
    assert!(body.contains("at most 1048576"), "{body}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_queue_refuses_sends_past_its_max_bytes_also_after_a_restart() {
    let manifest = node(
        "config = { mode = \"refuse\" }",
        &queue("big", "max_bytes_mb = 1\nredeliver_ms = 60000"),
    );
    let node = manifest.start().await;
    let large = "x".repeat(600 * 1024);
    assert_eq!(send_to(&node, "big", &large).await.0, 202);
    let (status, body) = send_to(&node, "big", &large).await;
    assert_eq!(status, 503, "{}", &body[..body.len().min(300)]);
    assert!(body.contains("max_bytes_mb"), "{body}");
    // Small ones still fit beside it.
    assert_eq!(send_to(&node, "big", "small").await.0, 202);
    node.shutdown().await;
    // What the log gives back counts too.
    let node = manifest.start().await;
    let (status, body) = send_to(&node, "big", &large).await;
    assert_eq!(status, 503, "{}", &body[..body.len().min(300)]);
    node.shutdown().await;
}

#[tokio::test]
async fn a_node_dropped_without_shutdown_releases_its_queues_to_the_next_one() {
    let manifest = node(
        "config = { mode = \"refuse\" }",
        &queue("jobs", "redeliver_ms = 60000"),
    );
    let first = manifest.start().await;
    assert_eq!(send_to(&first, "jobs", "owed").await.0, 202);
    wait_for(&first, "jobs", Duration::from_secs(5), |q| {
        count(q, "redelivered") == 1
    })
    .await;
    drop(first); // like a crash: no goodbye, no drain
    let started = Instant::now();
    let second = loop {
        match switchyard::Node::start(&manifest.load()).await {
            Ok(node) => break node,
            Err(err) => {
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "the dropped node kept its queue: {err}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let view = queue_view(&second, "jobs").await;
    assert_eq!(count(&view, "depth"), 1, "{view:#}");
    second.shutdown().await;
}

#[tokio::test]
async fn a_second_node_on_the_same_queue_files_is_refused() {
    let manifest = node("", &queue("jobs", ""));
    let first = manifest.start().await;
    let err = match switchyard::Node::start(&manifest.load()).await {
        Ok(_) => panic!("two nodes opened one queue"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("queue `jobs`"), "{err}");
    assert!(err.contains("held by another running node"), "{err}");
    assert!(err.contains("data_dir"), "{err}");
    first.shutdown().await;
}

#[tokio::test]
async fn swapping_the_subscriber_and_the_queues_policy_while_messages_flow_loses_none() {
    let retry = format!(
        "[[policy]]\nname = \"retry\"\ncomponent = {:?}\n\n\
         [[bind]]\npolicies = [\"retry\"]\nqueue = \"jobs\"\n",
        guest("policy_retry").display().to_string()
    );
    let manifest = node("", &format!("{}{retry}", queue("jobs", "concurrency = 4")));
    let node = manifest.start().await;
    let http = node.http_addr();
    let sender = tokio::spawn(async move {
        for n in 0..300 {
            let reply = send(http, "POST", "/send/jobs", &format!("ok {n}")).await;
            assert_eq!(reply.status, 202, "{}", reply.body);
        }
    });
    let mailroom = std::fs::read(guest("mailroom")).unwrap();
    let policy = std::fs::read(guest("policy_retry")).unwrap();
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, body) = admin_post(&node, "/services/mailroom", mailroom.clone()).await;
        assert_eq!(status, 200, "service swap {round}: {body}");
        let (status, body) = admin_post(&node, "/policies/retry", policy.clone()).await;
        assert_eq!(status, 200, "policy swap {round}: {body}");
    }
    sender.await.unwrap();
    let view = wait_for(&node, "jobs", Duration::from_secs(20), |q| {
        count(q, "delivered") == 300
    })
    .await;
    assert_eq!(count(&view, "redelivered"), 0, "{view:#}");
    assert_eq!(count(&view, "dead_lettered"), 0, "{view:#}");
    assert_eq!(count(&view, "depth"), 0, "{view:#}");
    let services: serde_json::Value =
        serde_json::from_str(&admin_get(&node, "/services").await.body).unwrap();
    assert_eq!(services[0]["generation"], 4, "{services:#}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_queue_delivered_one_at_a_time_keeps_its_order_while_the_subscriber_is_busy() {
    capture_logs();
    // One instance for both the senders' HTTP requests and the deliveries: both meet `busy`.
    let manifest = node("max_instances = 1", &queue("ordered", ""));
    let node = manifest.start().await;
    let http = node.http_addr();
    let mut senders = Vec::new();
    for _ in 0..3 {
        senders.push(tokio::spawn(async move {
            let mut sent = 0;
            while sent < 15 {
                let reply =
                    send_with(http, "POST", "/send/ordered", "ok", &[("x-hold-ms", "3")]).await;
                match reply.status {
                    202 => sent += 1,
                    503 => tokio::time::sleep(Duration::from_millis(2)).await,
                    other => panic!("send failed: {other} {}", reply.body),
                }
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    wait_for(&node, "ordered", Duration::from_secs(20), |q| {
        count(q, "delivered") == 45
    })
    .await;
    node.shutdown().await;
    let delivered: Vec<u64> = logs()
        .lines()
        .filter_map(|line| {
            let rest = line.split("ordered-").nth(1)?;
            rest.contains("attempt 1 on ordered")
                .then(|| rest.split(' ').next()?.parse().ok())?
        })
        .collect();
    let busy = logs()
        .lines()
        .filter(|line| line.contains("ordered-") && line.contains("cannot take the message now"))
        .count();
    assert!(
        busy > 0,
        "no delivery met a busy subscriber, so order under contention was not tested"
    );
    assert_eq!(delivered.len(), 45, "{delivered:?}");
    assert!(
        delivered.windows(2).all(|pair| pair[0] < pair[1]),
        "delivered out of order: {delivered:?}"
    );
}

/// `ordered_by_key`: one key's messages in the order sent, also when one fails and waits for
/// its redelivery; other keys go on meanwhile.
#[tokio::test]
async fn ordered_by_key_a_failing_message_holds_back_the_later_ones_of_its_key_only() {
    ordered_by_key_holds_back_its_key(Backend::Embedded).await;
}

#[tokio::test]
async fn on_nats_ordered_by_key_a_failing_message_holds_back_the_later_ones_of_its_key_only() {
    ordered_by_key_holds_back_its_key(Backend::nats().await).await;
}

async fn ordered_by_key_holds_back_its_key(backend: Backend) {
    capture_logs();
    // Its own name on each backend: both runs log to the one captured log.
    let name = if backend.is_nats() {
        "keyed-nats"
    } else {
        "keyed"
    };
    let manifest = node_on(
        &backend,
        "",
        &queue(
            name,
            "concurrency = 4\nordered_by_key = true\nredeliver_ms = 150",
        ),
    );
    let node = manifest.start().await;
    let http = node.http_addr();
    let sends = [
        ("a", "fail-until:3 a1"),
        ("a", "a2"),
        ("b", "b1"),
        ("a", "a3"),
        ("b", "b2"),
    ];
    for (key, body) in sends {
        let reply = send_with(
            http,
            "POST",
            &format!("/send/{name}"),
            body,
            &[("x-key", key)],
        )
        .await;
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
    wait_for(&node, name, Duration::from_secs(10), |q| {
        count(q, "delivered") == 5
    })
    .await;
    node.shutdown().await;
    // Every delivery attempt, in the order the subscriber saw them.
    let seen: Vec<String> = logs()
        .lines()
        .filter(|line| line.contains(&format!(" on {name}: ")))
        .filter_map(|line| {
            let body = line.split(&format!(" on {name}: ")).nth(1)?;
            Some(body.split(['"', '\\']).next()?.to_owned())
        })
        .collect();
    let at = |body: &str| {
        seen.iter()
            .rposition(|seen| seen == body)
            .unwrap_or_else(|| panic!("{body} never delivered: {seen:?}"))
    };
    let a1_done = at("fail-until:3 a1");
    assert_eq!(
        seen.iter().filter(|s| *s == "fail-until:3 a1").count(),
        3,
        "{seen:?}"
    );
    assert!(a1_done < at("a2") && at("a2") < at("a3"), "{seen:?}");
    // b went on while a1 waited for its redeliveries.
    assert!(at("b2") < a1_done, "b waited for a: {seen:?}");
}

/// The loop guard: a subscriber that sends each message it gets back to its own queue makes
/// a chain that would never end; past `max_causation_depth` the message is dead-lettered with
/// the chain named.
#[tokio::test]
async fn the_loop_guard_dead_letters_a_message_at_the_end_of_too_long_a_chain() {
    loop_guard_dead_letters(Backend::Embedded).await;
}

#[tokio::test]
async fn on_nats_the_loop_guard_dead_letters_a_message_at_the_end_of_too_long_a_chain() {
    loop_guard_dead_letters(Backend::nats().await).await;
}

async fn loop_guard_dead_letters(backend: Backend) {
    let manifest = node_on(&backend, "", &queue("ping", "max_causation_depth = 5"));
    let node = manifest.start().await;
    assert_eq!(send_to(&node, "ping", "forward:ping").await.0, 202);
    let view = wait_for(&node, "ping", Duration::from_secs(10), |q| {
        count(q, "loops_stopped") == 1 && fresh(q)
    })
    .await;
    // Depths 1 (sent over HTTP) to 5 were delivered, each sending the next; the 6th was not.
    assert_eq!(count(&view, "delivered"), 5, "{view:#}");
    assert_eq!(count(&view, "dead_lettered"), 1, "{view:#}");
    let dead = &view["recent_dead_letters"][0];
    let reason = dead["reason"].as_str().unwrap();
    assert!(
        reason.contains("loop guard")
            && reason.contains("depth 6")
            && reason.contains("mailroom → mailroom → mailroom → mailroom → mailroom → mailroom")
            && reason.contains("max_causation_depth"),
        "{reason}"
    );
    // Nothing more goes round.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&queue_view(&node, "ping").await, "delivered"), 5);
    node.shutdown().await;

    // The same loop through a call: the subscriber calls `relay`, which sends the next
    // message; the chain follows the call.
    let looping = node_on(
        &backend,
        "",
        &format!(
            "{}{}",
            service("relay", "mailroom", &["POST /relay/{queue}"], ""),
            queue("ping", "max_causation_depth = 4")
        ),
    );
    let node = looping.start().await;
    assert_eq!(send_to(&node, "ping", "call-forward:ping").await.0, 202);
    // On NATS the first loop's dead letter is still in the stream: wait for this one's.
    let view = wait_for(&node, "ping", Duration::from_secs(10), |q| {
        count(q, "loops_stopped") == 1
            && fresh(q)
            && q["recent_dead_letters"][0]["reason"]
                .as_str()
                .is_some_and(|reason| reason.contains("depth 5"))
    })
    .await;
    assert_eq!(count(&view, "delivered"), 4, "{view:#}");
    let reason = view["recent_dead_letters"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("depth 5") && reason.contains("mailroom → relay → relay → relay → relay"),
        "{reason}"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn editing_queues_in_a_watched_manifest_adds_reconfigures_and_removes_them() {
    let jobs = |max_attempts: u32| {
        queue(
            "jobs",
            &format!("max_attempts = {max_attempts}\nredeliver_ms = 20"),
        )
    };
    let later = queue("later", "redeliver_ms = 60000");
    let manifest = node("", &jobs(5));
    let mut node = manifest.start().await;
    let (reports, mut reported) = tokio::sync::mpsc::unbounded_channel();
    node.watch_manifest(Some(reports)).unwrap();
    let original = std::fs::read_to_string(&manifest.path).unwrap();
    let mut edit = async |queues: &str| {
        let head = &original[..original.find("[[queue]]").unwrap()];
        manifest.edit(&format!("{head}{queues}"));
        crate::support::next_reload(&mut reported).await
    };
    assert_eq!(send_to(&node, "later", "x").await.0, 500);

    // A queue added, another's max_attempts lowered.
    let report = edit(&format!("{}{later}", jobs(1))).await;
    assert_eq!(
        report.applied,
        vec![
            "queue `jobs`: settings changed".to_owned(),
            "queue `later` added".to_owned()
        ],
        "{report:?}"
    );
    assert!(report.needs_restart.is_empty(), "{report:?}");
    assert_eq!(send_to(&node, "later", "ok").await.0, 202);
    wait_for(&node, "later", Duration::from_secs(5), |q| {
        count(q, "delivered") == 1
    })
    .await;
    assert_eq!(send_to(&node, "jobs", "always-fail").await.0, 202);
    let view = wait_for(&node, "jobs", Duration::from_secs(5), |q| {
        count(q, "dead_lettered") == 1 && fresh(q)
    })
    .await;
    assert_eq!(view["recent_dead_letters"][0]["attempts"], 1, "{view:#}");

    // A queue with a message owed is removed: sends to it fail; back, it owes it still.
    assert_eq!(send_to(&node, "later", "always-fail").await.0, 202);
    wait_for(&node, "later", Duration::from_secs(5), |q| {
        count(q, "redelivered") == 1
    })
    .await;
    let report = edit(&jobs(1)).await;
    assert_eq!(
        report.applied,
        vec!["queue `later` removed (what it owes stays in its files)".to_owned()],
        "{report:?}"
    );
    let (status, body) = send_to(&node, "later", "x").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("no queue or topic named `later`"), "{body}");
    let report = edit(&format!("{}{later}", jobs(1))).await;
    assert_eq!(
        report.applied,
        vec!["queue `later` added".to_owned()],
        "{report:?}"
    );
    let view = queue_view(&node, "later").await;
    assert_eq!(count(&view, "depth"), 1, "{view:#}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_redrive_sends_the_dead_letters_again_once_the_subscriber_is_fixed() {
    redrive_after_fix(Backend::Embedded).await;
}

#[tokio::test]
async fn on_nats_a_redrive_sends_the_dead_letters_again_once_the_subscriber_is_fixed() {
    redrive_after_fix(Backend::nats().await).await;
}

async fn redrive_after_fix(backend: Backend) {
    let manifest = node_on(
        &backend,
        "config = { mode = \"refuse\" }",
        &queue("jobs", "max_attempts = 1"),
    );
    let mut node = manifest.start().await;
    let (reports, mut reported) = tokio::sync::mpsc::unbounded_channel();
    node.watch_manifest(Some(reports)).unwrap();
    for body in ["first", "second"] {
        assert_eq!(send_to(&node, "jobs", body).await.0, 202);
    }
    wait_for(&node, "jobs", Duration::from_secs(5), |q| {
        count(q, "dead_lettered") == 2
    })
    .await;
    let (status, body) = admin_post(&node, "/queues/nope/redrive", Vec::new()).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no queue or topic named `nope`"), "{body}");

    // The subscriber is fixed (its config edited), then the dead letters are sent again.
    let text = std::fs::read_to_string(&manifest.path)
        .unwrap()
        .replace("config = { mode = \"refuse\" }", "");
    manifest.edit(&text);
    crate::support::next_reload(&mut reported).await;
    // The token comes from the manifest (the node created it in its data_dir).
    let (admin, manifest_path) = (
        node.admin_addr().to_string(),
        manifest.path.display().to_string(),
    );
    let redrive = switchyard_cli(&[
        "redrive",
        "jobs",
        "--manifest",
        &manifest_path,
        "--admin",
        &admin,
    ])
    .await;
    assert!(redrive.success, "{}{}", redrive.stdout, redrive.stderr);
    assert!(
        redrive.stdout.contains("\"redriven\": 2"),
        "{}",
        redrive.stdout
    );
    let view = wait_for(&node, "jobs", Duration::from_secs(5), |q| {
        count(q, "delivered") == 2 && count(q, "dead_letters_total") == 0
    })
    .await;
    assert_eq!(
        view["recent_dead_letters"],
        serde_json::json!([]),
        "{view:#}"
    );
    if !backend.is_nats() {
        let dead_file = manifest.dir.path().join("data/queues/jobs.dead");
        assert_eq!(std::fs::metadata(&dead_file).unwrap().len(), 0);
    }
    // Nothing is left to send again.
    let (status, body) = admin_post(&node, "/queues/jobs/redrive", Vec::new()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"redriven\": 0"), "{body}");
    node.shutdown().await;
}

/// Node `owner` (with `owner_services`, declaring queue `jobs`) and node `worker` (with
/// `worker_services`, seeded with the owner), once each knows the other: the owner has heard
/// of `worker_runs` (e.g. `mailroom@`) and the worker of the owner's queue.
async fn owner_and_worker(
    owner_services: &str,
    worker_services: &str,
    worker_runs: &str,
) -> ([TestManifest; 2], switchyard::Node, switchyard::Node) {
    let owner_manifest =
        TestManifest::with_node("name = \"owner\"\nquic = \"127.0.0.1:0\"", owner_services);
    let owner = owner_manifest.start().await;
    let worker_manifest = TestManifest::with_node(
        &format!(
            "name = \"worker\"\nquic = \"127.0.0.1:0\"\nseeds = [\"{}\"]",
            owner.quic_addr().unwrap()
        ),
        worker_services,
    );
    let worker = worker_manifest.start().await;
    let started = Instant::now();
    while !admin_get(&owner, "/registry")
        .await
        .body
        .contains(worker_runs)
        || !admin_get(&worker, "/registry")
            .await
            .body
            .contains("\"jobs\"")
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "nodes never met"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ([owner_manifest, worker_manifest], owner, worker)
}

/// A queue lives on the node that declares it; a guest on another node sends to it by name,
/// and a subscriber on another node gets its messages, all over the mesh's QUIC. An owner
/// that is gone makes a send fail at once, never hang.
#[tokio::test]
async fn a_queue_takes_sends_from_and_delivers_to_other_nodes() {
    capture_logs();
    // The owner declares `jobs`, consumed by `mailroom`, which runs only on the other node.
    let (_manifests, owner, worker) = owner_and_worker(
        &format!(
            "{}{}{}",
            service("hello", "hello", &["GET /hello/{name}"], ""),
            queue("jobs", "max_attempts = 2\nredeliver_ms = 10"),
            "[[queue]]\nname = \"orphans\"\nsubscriber = \"ghost\"\n"
        ),
        &service("mailroom", "mailroom", &["POST /send/{queue}"], ""),
        "mailroom@",
    )
    .await;

    // The worker's guest sends to the owner's queue; the owner delivers to the worker's guest.
    let (status, id) = send_to(&worker, "jobs", "remote job").await;
    assert_eq!(status, 202, "{id}");
    assert_eq!(id, "jobs-0");
    let view = wait_for(&owner, "jobs", Duration::from_secs(10), |q| {
        count(q, "delivered") == 1
    })
    .await;
    assert_eq!(count(&view, "depth"), 0, "{view:#}");
    assert!(
        logs().contains("jobs-0 attempt 1 on jobs: remote job"),
        "the worker's mailroom never got it"
    );
    // Failed deliveries on the other node count attempts and dead-letter like local ones.
    assert_eq!(send_to(&worker, "jobs", "always-fail").await.0, 202);
    let view = wait_for(&owner, "jobs", Duration::from_secs(20), |q| {
        count(q, "dead_lettered") == 1
    })
    .await;
    let error = view["recent_dead_letters"][0]["last_error"]
        .as_str()
        .unwrap();
    assert!(error.contains("always fails"), "{error}");

    // A queue whose subscriber runs nowhere: its messages wait, and GET /queues says why.
    let (status, reason) = send_to(&worker, "orphans", "for nobody").await;
    assert_eq!(status, 202, "{reason}");
    let view = wait_for(&owner, "orphans", Duration::from_secs(5), |q| {
        q["waiting_for"].is_string()
    })
    .await;
    let why = view["waiting_for"].as_str().unwrap();
    assert!(
        why.contains("`ghost` runs neither on this node nor on a peer it knows"),
        "{why}"
    );
    assert_eq!(count(&view, "depth"), 1);

    // A queue no node declares: refused, saying so.
    let (status, reason) = send_to(&worker, "nope", "lost").await;
    assert_eq!(status, 500, "{reason}");
    assert!(
        reason.contains("no queue or topic named `nope`")
            && reason.contains("nor does a node of the mesh"),
        "{reason}"
    );

    // The owner dies without a goodbye: a send fails with `unavailable` well within the
    // sender's deadline.
    drop(owner);
    let sent_at = Instant::now();
    let (status, reason) = send_to(&worker, "jobs", "too late").await;
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("queue unavailable"), "{reason}");
    assert!(
        sent_at.elapsed() < Duration::from_secs(3),
        "{:?}",
        sent_at.elapsed()
    );
    worker.shutdown().await;
}

/// Request/response over messages across nodes: the requester waits for the first reply,
/// which the consumer on another node sends to its reply address; a request nobody answers in
/// time ends in 504, and the late reply is refused; a reply to a queue arrives later as a
/// message (asynchronous request/response).
#[tokio::test]
async fn a_request_gets_the_first_reply_from_a_consumer_on_another_node() {
    capture_logs();
    // `owner` runs the requester (mailroom) and declares `jobs`, consumed by `replier` (the
    // mailroom guest too), which runs only on `worker`, and `answers`, consumed here.
    let (_manifests, owner, worker) = owner_and_worker(
        &format!(
            "{}{}{}",
            service(
                "mailroom",
                "mailroom",
                &["POST /send/{queue}", "POST /request/{queue}"],
                ""
            ),
            "[[queue]]\nname = \"jobs\"\nsubscriber = \"replier\"\nmax_attempts = 1\n",
            queue("answers", "")
        ),
        &service("replier", "mailroom", &["POST /send/{queue}"], ""),
        "replier@",
    )
    .await;

    let reply = send(owner.http_addr(), "POST", "/request/jobs", "reply to me").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "re: reply to me")
    );

    // Too slow: the requester gives up at its timeout, and the late reply is refused.
    let asked = Instant::now();
    let reply = send_with(
        owner.http_addr(),
        "POST",
        "/request/jobs",
        "reply-after:800",
        &[("x-timeout-ms", "200")],
    )
    .await;
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert!(reply.body.contains("no reply"), "{}", reply.body);
    assert!(
        asked.elapsed() < Duration::from_millis(700),
        "{:?}",
        asked.elapsed()
    );
    // The replier learns it was too late (and the mailroom, having nothing to redo, takes
    // the message as handled).
    let started = Instant::now();
    while !logs().contains("the reply came too late: nobody waits for a reply") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the late reply was not refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A reply to a queue comes later, as a message of that queue.
    let sent = send_with(
        owner.http_addr(),
        "POST",
        "/send/jobs",
        "reply later",
        &[("x-reply-to", "answers")],
    )
    .await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    wait_for(&owner, "answers", Duration::from_secs(5), |q| {
        count(q, "delivered") == 1
    })
    .await;
    assert!(
        logs().contains("on answers: re: reply later"),
        "no async reply"
    );
    worker.shutdown().await;
    owner.shutdown().await;
}

/// A queue's subscriber runs on two other nodes: deliveries go to both, and when one of them
/// dies (no goodbye), its share goes to the other, with no attempt counted and nothing lost.
#[tokio::test]
async fn a_dead_subscriber_node_s_messages_go_to_the_service_s_other_nodes() {
    let (_manifests, owner, first) = owner_and_worker(
        &format!(
            "{}{}",
            service("sender", "mailroom", &["POST /send/{queue}"], ""),
            queue("jobs", "concurrency = 4")
        ),
        &service("mailroom", "mailroom", &["POST /send/{queue}"], ""),
        "mailroom@",
    )
    .await;
    let second_manifest = TestManifest::with_node(
        &format!(
            "name = \"second\"\nquic = \"127.0.0.1:0\"\nseeds = [\"{}\"]",
            owner.quic_addr().unwrap()
        ),
        &service("mailroom", "mailroom", &["POST /send/{queue}"], ""),
    );
    let second = second_manifest.start().await;
    let started = Instant::now();
    while !admin_get(&owner, "/registry")
        .await
        .body
        .contains("\"second\"")
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "second never met"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in 0..10 {
        assert_eq!(send_to(&owner, "jobs", &format!("before {n}")).await.0, 202);
    }
    wait_for(&owner, "jobs", Duration::from_secs(10), |q| {
        count(q, "delivered") == 10
    })
    .await;
    // Both took a share.
    let shares = [
        admin_get(&first, "/services").await.body,
        admin_get(&second, "/services").await.body,
    ];
    for share in &shares {
        let services: serde_json::Value = serde_json::from_str(share).unwrap();
        assert!(services[0]["served"].as_u64().unwrap() > 0, "{share}");
    }

    // `first` dies: the owner still believes in it for a moment, and delivers there in vain.
    drop(first);
    for n in 0..20 {
        assert_eq!(send_to(&owner, "jobs", &format!("after {n}")).await.0, 202);
    }
    let view = wait_for(&owner, "jobs", Duration::from_secs(15), |q| {
        count(q, "delivered") == 30
    })
    .await;
    assert_eq!(count(&view, "redelivered"), 0, "{view:#}");
    assert_eq!(count(&view, "dead_lettered"), 0, "{view:#}");
    second.shutdown().await;
    owner.shutdown().await;
}

/// A service that only consumes needs no route: it takes no requests, and gets its queue's
/// messages.
#[tokio::test]
async fn a_service_that_only_consumes_needs_no_route() {
    capture_logs();
    let consumer = format!(
        "[[service]]\nname = \"consumer\"\nversion = \"1.0.0\"\ncomponent = \"{}\"\n",
        guest("mailroom").display()
    );
    let manifest = node(
        "",
        &format!("{consumer}[[queue]]\nname = \"quiet\"\nsubscriber = \"consumer\"\n"),
    );
    let node = manifest.start().await;
    assert_eq!(send_to(&node, "quiet", "no route needed").await.0, 202);
    wait_for(&node, "quiet", Duration::from_secs(5), |q| {
        count(q, "delivered") == 1
    })
    .await;
    assert!(logs().contains("quiet-0 attempt 1 on quiet: no route needed"));
    node.shutdown().await;
}
