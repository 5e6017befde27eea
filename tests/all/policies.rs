//! Resilience policies (guests/policy-*) bound to real calls, and their hot swap.

use crate::support::admin_get;
use std::time::{Duration, Instant};

use crate::support::{TestManifest, admin_post, guest, send, service};

fn policy(name: &str, crate_name: &str, config: &str) -> String {
    format!(
        "[[policy]]\nname = \"{name}\"\ncomponent = {:?}\nconfig = {{ {config} }}\n",
        guest(crate_name).display().to_string()
    )
}

/// `faulty` calls `flaky` (also the faulty guest), with `policies` around calls to `flaky`.
fn node_with(policies: &str, bind: &str) -> TestManifest {
    TestManifest::new(&format!(
        "{}{}{policies}[[bind]]\n{bind}\n",
        service(
            "faulty",
            "faulty",
            &["POST /f/{fault}", "POST /f/{fault}/{arg}"],
            ""
        ),
        service(
            "flaky",
            "faulty",
            &["GET /flaky/{fault}", "GET /flaky/{fault}/{arg}"],
            ""
        ),
    ))
}

async fn call(node: &switchyard::Node, method: &str) -> (u16, String) {
    let reply = send(
        node.http_addr(),
        "POST",
        "/f/call",
        &format!("flaky\n{method}"),
    )
    .await;
    (reply.status, reply.body)
}

async fn served_by_flaky(node: &switchyard::Node) -> u64 {
    let services: serde_json::Value =
        serde_json::from_str(&admin_get(node, "/services").await.body).unwrap();
    let flaky = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "flaky")
        .unwrap()
        .clone();
    flaky["served"].as_u64().unwrap()
}

#[tokio::test]
async fn a_circuit_breaker_opens_probes_closes_and_stays_open_across_a_swap() {
    let manifest = node_with(
        &policy(
            "breaker",
            "policy_breaker",
            "consecutive_failures = \"3\", open_ms = \"400\"",
        ),
        "policies = [\"breaker\"]\ncalls_to = \"flaky\"",
    );
    let node = manifest.start().await;
    for _ in 0..3 {
        assert_eq!(call(&node, "GET /flaky/status/503").await.0, 503);
    }
    // Open: even a call that would succeed is refused, without reaching the callee.
    let served = served_by_flaky(&node).await;
    let (status, body) = call(&node, "GET /flaky/echo").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("rejected") && body.contains("circuit open"),
        "{body}"
    );
    assert_eq!(
        served_by_flaky(&node).await,
        served,
        "an open breaker let a call through"
    );

    // After open_ms one probe goes through; it succeeds, so the breaker closes.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(call(&node, "GET /flaky/echo").await.0, 200);
    assert_eq!(call(&node, "GET /flaky/echo").await.0, 200);

    // Open it again, then swap the breaker's code: the new generation starts open.
    for _ in 0..3 {
        call(&node, "GET /flaky/status/500").await;
    }
    assert!(
        call(&node, "GET /flaky/echo")
            .await
            .1
            .contains("circuit open")
    );
    let component = std::fs::read(guest("policy_breaker")).unwrap();
    let (status, report) = admin_post(&node, "/policies/breaker", component).await;
    assert_eq!(status, 200, "{report}");
    assert!(report.contains("\"generations\""), "{report}");
    let (status, body) = call(&node, "GET /flaky/echo").await;
    assert_eq!(status, 503, "the swap lost the open state: {body}");
    assert!(body.contains("circuit open"), "{body}");
    let policies = admin_get(&node, "/policies").await.body;
    assert!(policies.contains("\"generation\": 2"), "{policies}");

    // A component that is not a policy is refused and the old one keeps working.
    let (status, reason) = admin_post(&node, "/policies/breaker", b"not wasm".to_vec()).await;
    assert_eq!(status, 422, "{reason}");
    assert!(reason.contains("not a WebAssembly file"), "{reason}");
    let (status, reason) = admin_post(
        &node,
        "/policies/breaker",
        std::fs::read(guest("hello")).unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{reason}");
    assert!(reason.contains("resilience-policy"), "{reason}");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(call(&node, "GET /flaky/echo").await.0, 200);
    node.shutdown().await;
}

#[tokio::test]
async fn retries_back_off_within_a_budget_and_a_fallback_answers_for_an_open_breaker() {
    let manifest = node_with(
        &format!(
            "{}{}",
            policy(
                "retry",
                "policy_retry",
                "max_attempts = \"3\", base_ms = \"20\", budget_ratio = \"0\", budget_cap = \"2\""
            ),
            policy(
                "fallback",
                "policy_fallback",
                "status = \"200\", body = \"cached\""
            )
        ),
        "policies = [\"retry\"]\ncalls_to = \"flaky\"",
    );
    let node = manifest.start().await;
    let before = served_by_flaky(&node).await;
    let started = Instant::now();
    assert_eq!(call(&node, "GET /flaky/status/503").await.0, 503);
    let took = started.elapsed();
    // Three attempts, with two backoff pauses of 10..20 ms and 20..40 ms.
    assert_eq!(served_by_flaky(&node).await - before, 3);
    assert!(took >= Duration::from_millis(30), "no backoff: {took:?}");
    // The budget (2 tokens, none earned) is spent: the next failure is not retried.
    let before = served_by_flaky(&node).await;
    call(&node, "GET /flaky/status/503").await;
    assert_eq!(
        served_by_flaky(&node).await - before,
        1,
        "retried past the budget"
    );
    // Success is never retried.
    let before = served_by_flaky(&node).await;
    assert_eq!(call(&node, "GET /flaky/echo").await.0, 200);
    assert_eq!(served_by_flaky(&node).await - before, 1);
    node.shutdown().await;

    let manifest = node_with(
        &format!(
            "{}{}",
            policy(
                "fallback",
                "policy_fallback",
                "status = \"200\", body = \"cached\""
            ),
            policy(
                "breaker",
                "policy_breaker",
                "consecutive_failures = \"2\", open_ms = \"60000\""
            )
        ),
        "policies = [\"fallback\", \"breaker\"]\ncalls_to = \"flaky\"",
    );
    let node = manifest.start().await;
    assert_eq!(
        call(&node, "GET /flaky/status/502").await,
        (200, "cached".into())
    );
    assert_eq!(
        call(&node, "GET /flaky/status/502").await,
        (200, "cached".into())
    );
    let served = served_by_flaky(&node).await;
    // Breaker open: the fallback answers without the callee.
    assert_eq!(call(&node, "GET /flaky/echo").await, (200, "cached".into()));
    assert_eq!(served_by_flaky(&node).await, served);
    node.shutdown().await;
}

#[tokio::test]
async fn a_fallback_answers_for_a_hung_callee_in_the_time_its_caller_keeps() {
    let node_keeping = |reserve: &str| {
        TestManifest::new(&format!(
            "{}{}{}[[bind]]\npolicies = [\"fallback\"]\ncalls_to = \"flaky\"\n{reserve}\n",
            service(
                "faulty",
                "faulty",
                &["POST /f/{fault}", "POST /f/{fault}/{arg}"],
                "timeout_ms = 1000"
            ),
            service(
                "flaky",
                "faulty",
                &["GET /flaky/{fault}", "GET /flaky/{fault}/{arg}"],
                ""
            ),
            policy(
                "fallback",
                "policy_fallback",
                "status = \"200\", body = \"cached\""
            ),
        ))
    };
    let timed = |node: &switchyard::Node, body: &'static str| {
        let addr = node.http_addr();
        async move {
            let started = Instant::now();
            let reply = send(addr, "POST", "/f/call", body).await;
            ((reply.status, reply.body), started.elapsed())
        }
    };
    // The caller has 1 s; its call gets 900 ms by default, and the fallback answers in the
    // 100 ms the caller kept (the client used to get the caller's own 504).
    let manifest = node_keeping("");
    let node = manifest.start().await;
    let (reply, took) = timed(&node, "flaky\nGET /flaky/sleep/60000").await;
    assert_eq!(reply, (200, "cached".into()), "after {took:?}");
    assert!(took >= Duration::from_millis(850), "{took:?}");
    // The call's own reserve: 500 ms kept, so the callee is cut off at about 500 ms.
    let (reply, took) = timed(&node, "flaky\nGET /flaky/sleep/60000\nreserve 500").await;
    assert_eq!(reply, (200, "cached".into()));
    assert!(took < Duration::from_millis(850), "{took:?}");
    // The reserve header is for the node; the callee never sees it.
    let (reply, _) = timed(&node, "flaky\nGET /flaky/echo\nreserve 5").await;
    assert!(reply.1.contains("x-probe"), "{}", reply.1);
    assert!(!reply.1.contains("x-switchyard-reserve-ms"), "{}", reply.1);
    node.shutdown().await;
    // Or the binding's: reserve_ms = 500 for every call to `flaky`.
    let manifest = node_keeping("reserve_ms = 500");
    let node = manifest.start().await;
    let (reply, took) = timed(&node, "flaky\nGET /flaky/sleep/60000").await;
    assert_eq!(reply, (200, "cached".into()));
    assert!(took < Duration::from_millis(850), "{took:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_token_bucket_and_a_bulkhead_refuse_what_is_over_their_limit() {
    let manifest = node_with(
        &policy("limit", "policy_rate_limit", "rate = \"1\", burst = \"3\""),
        "policies = [\"limit\"]\noutgoing_from = \"faulty\"",
    );
    let node = manifest.start().await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(call(&node, "GET /flaky/echo").await.0);
    }
    assert_eq!(statuses, vec![200, 200, 200, 503, 503]);
    let (_, body) = call(&node, "GET /flaky/echo").await;
    assert!(body.contains("rate limited"), "{body}");
    node.shutdown().await;

    // Four callers against a bulkhead of 2 and a 100 ms callee: refused calls return at
    // once and their callers move on, so most of the 12 are refused while two run.
    let manifest = TestManifest::new(&format!(
        "{}{}{}[[bind]]\npolicies = [\"bulkhead\"]\ncalls_to = \"slow\"\n",
        service(
            "faulty",
            "faulty",
            &["POST /f/{fault}", "POST /f/{fault}/{arg}"],
            ""
        ),
        service(
            "slow",
            "faulty",
            &["GET /slow/{fault}"],
            "config = { sleep_ms = \"100\" }"
        ),
        policy("bulkhead", "policy_bulkhead", "max_concurrent = \"2\""),
    ));
    let node = manifest.start().await;
    let reply = send(
        node.http_addr(),
        "POST",
        "/f/load/12",
        "slow\nGET /slow/nap",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let ok: usize = reply.body.trim().parse().unwrap();
    assert!(
        (2..=6).contains(&ok),
        "{ok} of 12 got through a bulkhead of 2 with 4 in flight"
    );
    let reply = send(node.http_addr(), "POST", "/f/load/2", "slow\nGET /slow/nap").await;
    assert_eq!(reply.body.trim(), "2", "two at a time fit");
    node.shutdown().await;
}

#[tokio::test]
async fn bad_policy_config_stops_the_node_with_the_policys_reason() {
    let manifest = node_with(
        &policy("breaker", "policy_breaker", "failure_rate = \"2\""),
        "policies = [\"breaker\"]\ncalls_to = \"flaky\"",
    );
    let error = switchyard::Node::start(&manifest.load())
        .await
        .err()
        .map(|err| err.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("policy `breaker` refused configure"),
        "{error}"
    );
    assert!(
        error.contains("failure_rate must be within 0..=1"),
        "{error}"
    );
}

#[tokio::test]
async fn a_hedged_call_takes_the_second_attempt_when_the_first_is_slower_than_usual() {
    let manifest = node_with(
        &policy(
            "hedge",
            "policy_hedge",
            "percentile = \"0.5\", min_samples = \"5\"",
        ),
        "policies = [\"hedge\"]\ncalls_to = \"flaky\"",
    );
    let node = manifest.start().await;
    // Too few samples yet: no hedge, the slow first attempt answers.
    let started = Instant::now();
    assert_eq!(
        call(&node, "GET /flaky/slowfirst/300").await,
        (200, "first attempt".into())
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    for _ in 0..5 {
        assert_eq!(call(&node, "GET /flaky/echo").await.0, 200);
    }
    // Usual latency is now a few ms, so the slow call is hedged long before its 800 ms.
    let started = Instant::now();
    assert_eq!(
        call(&node, "GET /flaky/slowfirst/800").await,
        (200, "second attempt".into())
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(200),
        "hedge came late: {took:?}"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_policy_picks_the_instance_a_call_goes_to() {
    let work = service("work", "faulty", &["GET /w/{fault}"], "");
    let b1_files = TestManifest::with_node("name = \"b1\"\nquic = \"127.0.0.1:0\"", &work);
    let b1 = b1_files.start().await;
    let b2_files = TestManifest::with_node("name = \"b2\"\nquic = \"127.0.0.1:0\"", &work);
    let b2 = b2_files.start().await;
    let a_files = TestManifest::with_node(
        &format!(
            "name = \"a\"\nquic = \"127.0.0.1:0\"\nseeds = [\"{}\", \"{}\"]",
            b1.quic_addr().unwrap(),
            b2.quic_addr().unwrap()
        ),
        &format!(
            "{}{}[[bind]]\npolicies = [\"zone\"]\ncalls_to = \"work\"\n",
            service(
                "faulty",
                "faulty",
                &["POST /f/{fault}", "POST /f/{fault}/{arg}"],
                ""
            ),
            policy("zone", "policy_prefer_node", "node = \"b2\""),
        ),
    );
    let a = a_files.start().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let registry = admin_get(&a, "/registry").await.body;
        if registry.contains("\"b1\"") && registry.contains("\"b2\"") {
            break;
        }
        assert!(Instant::now() < deadline, "{registry}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = send(a.http_addr(), "POST", "/f/load/20", "work\nGET /w/echo").await;
    assert_eq!(reply.body.trim(), "20", "{}", reply.body);
    let served = async |node: &switchyard::Node| {
        let services: serde_json::Value =
            serde_json::from_str(&admin_get(node, "/services").await.body).unwrap();
        services[0]["served"].as_u64().unwrap()
    };
    assert_eq!((served(&b1).await, served(&b2).await), (0, 20));
    for node in [a, b1, b2] {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn editing_policies_in_a_watched_manifest_applies_config_and_bindings_keeping_state() {
    // Wall-clock margins a loaded machine keeps: the breaker stays open 2 s (a reload takes
    // far less), and the limit earns one call per 10 s (three calls take far less).
    let breaker = |config: &str| policy("breaker", "policy_breaker", config);
    let limit = policy(
        "limit",
        "policy_rate_limit",
        "rate = \"0.1\", burst = \"2\"",
    );
    let bind_breaker = "policies = [\"breaker\"]\ncalls_to = \"flaky\"";
    let manifest = node_with(
        &breaker("consecutive_failures = \"3\", open_ms = \"2000\""),
        bind_breaker,
    );
    let mut node = manifest.start().await;
    let (reports, mut reported) = tokio::sync::mpsc::unbounded_channel();
    node.watch_manifest(Some(reports)).unwrap();
    let mut edit = async |policies: &str, bind: &str| {
        let text = std::fs::read_to_string(node_with(policies, bind).path).unwrap();
        // Keep this node's ports: only the services and policies part changes.
        let original = std::fs::read_to_string(&manifest.path).unwrap();
        let head = &original[..original.find("[[service]]").unwrap()];
        let tail = &text[text.find("[[service]]").unwrap()..];
        manifest.edit(&format!("{head}{tail}"));
        crate::support::next_reload(&mut reported).await
    };
    let open = async |node: &switchyard::Node| {
        call(node, "GET /flaky/echo")
            .await
            .1
            .contains("circuit open")
    };

    for _ in 0..3 {
        assert_eq!(call(&node, "GET /flaky/status/503").await.0, 503);
    }
    assert!(open(&node).await);

    // New config: fresh instances that carry the state over, so the breaker is still open.
    let report = edit(
        &breaker("consecutive_failures = \"1\", open_ms = \"2000\""),
        bind_breaker,
    )
    .await;
    assert_eq!(report.applied.len(), 1, "{report:?}");
    assert!(
        report.applied[0].contains("policy `breaker`: new config"),
        "{report:?}"
    );
    assert!(
        report.needs_restart.is_empty() && report.refused.is_empty(),
        "{report:?}"
    );
    assert!(open(&node).await, "the new config lost the open state");
    // ... and the new config counts: one failure now opens it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(call(&node, "GET /flaky/echo").await.0, 200);
    assert_eq!(call(&node, "GET /flaky/status/503").await.0, 503);
    assert!(open(&node).await, "consecutive_failures = 1 did not apply");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(call(&node, "GET /flaky/echo").await.0, 200);

    // A new policy and binding: it starts, the breaker's binding keeps its instance.
    let both = format!(
        "{}{limit}",
        breaker("consecutive_failures = \"1\", open_ms = \"2000\"")
    );
    let report = edit(
        &both,
        &format!("{bind_breaker}\n[[bind]]\npolicies = [\"limit\"]\noutgoing_from = \"faulty\""),
    )
    .await;
    assert_eq!(
        report.applied,
        vec![
            "policy `limit` declared".to_owned(),
            "binding started: limit (calls from `faulty`)".to_owned()
        ],
        "{report:?}"
    );
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(call(&node, "GET /flaky/echo").await.0);
    }
    assert_eq!(
        statuses,
        vec![200, 200, 503],
        "the new rate limit does not apply"
    );
    let policies: serde_json::Value =
        serde_json::from_str(&admin_get(&node, "/policies").await.body).unwrap();
    let generations: Vec<_> = policies
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["policy"].as_str().unwrap().to_owned(),
                b["generation"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        generations,
        vec![("breaker".to_owned(), 2), ("limit".to_owned(), 1)],
        "the breaker's binding was restarted, not kept"
    );

    // The binding goes away again.
    let report = edit(&both, bind_breaker).await;
    assert_eq!(
        report.applied,
        vec!["binding dropped: limit (calls from `faulty`)".to_owned()],
        "{report:?}"
    );
    for _ in 0..4 {
        assert_eq!(call(&node, "GET /flaky/echo").await.0, 200);
    }

    // A config the policy refuses is reported and changes nothing.
    let report = edit(&breaker("failure_rate = \"2\""), bind_breaker).await;
    assert_eq!(
        report.applied,
        vec!["policy `limit` removed".to_owned()],
        "{report:?}"
    );
    assert_eq!(report.refused.len(), 1, "{report:?}");
    assert!(
        report.refused[0].contains("refused configure"),
        "{report:?}"
    );
    assert_eq!(call(&node, "GET /flaky/status/503").await.0, 503);
    assert!(open(&node).await, "the refused config replaced the old one");

    // Reading the manifest (as the reload itself does) is not an edit.
    std::fs::read_to_string(&manifest.path).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(reported.try_recv().is_err(), "a reload without an edit");
    node.shutdown().await;
}

/// Each binding's `(scope, generation, last_swap.state)` from `GET /policies`.
async fn swap_states(node: &switchyard::Node) -> Vec<(String, u64, String)> {
    let policies: serde_json::Value =
        serde_json::from_str(&admin_get(node, "/policies").await.body).unwrap();
    policies
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["scope"].as_str().unwrap().to_owned(),
                b["generation"].as_u64().unwrap(),
                b["last_swap"]["state"]
                    .as_str()
                    .unwrap_or("none")
                    .to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_policy_release_that_fails_its_decisions_is_rolled_back_everywhere_with_its_state() {
    // One breaker policy, bound twice on the same call path.
    let manifest = node_with(
        &policy(
            "breaker",
            "policy_breaker",
            "consecutive_failures = \"3\", open_ms = \"60000\"",
        ),
        "policies = [\"breaker\"]\ncalls_to = \"flaky\"\n\n\
         [[bind]]\npolicies = [\"breaker\"]\noutgoing_from = \"faulty\"",
    );
    let node = manifest.start().await;
    for _ in 0..3 {
        assert_eq!(call(&node, "GET /flaky/status/503").await.0, 503);
    }
    assert!(
        call(&node, "GET /flaky/echo")
            .await
            .1
            .contains("circuit open")
    );

    // A release that instantiates and restores fine, then traps in every decision.
    let broken = std::fs::read(guest("policy_broken")).unwrap();
    let swapped = Instant::now();
    let (status, report) = admin_post(&node, "/policies/breaker", broken).await;
    assert_eq!(status, 200, "{report}");
    let states = swap_states(&node).await;
    assert_eq!(states.len(), 2, "{states:?}");
    assert!(
        states
            .iter()
            .all(|(_, generation, state)| *generation == 2 && state == "probation"),
        "{states:?}"
    );

    // While it runs, a failed decision lets the call through (a broken policy must not take
    // the service down); after a few, it is rolled back to the old instances, still open.
    let mut let_through = 0;
    let rolled_back = loop {
        let (status, body) = call(&node, "GET /flaky/echo").await;
        if body.contains("circuit open") {
            break true;
        }
        assert_eq!(status, 200, "{body}");
        let_through += 1;
        if let_through == 10 {
            break false;
        }
    };
    assert!(
        rolled_back,
        "10 calls after the swap, the broken policy still runs"
    );
    assert!(let_through <= 3, "{let_through} calls before the rollback");
    assert!(
        swapped.elapsed() < Duration::from_secs(3),
        "the rollback came after probation"
    );
    let policies = admin_get(&node, "/policies").await.body;
    let states = swap_states(&node).await;
    assert!(
        states
            .iter()
            .all(|(_, generation, state)| *generation == 1 && state == "rolled-back"),
        "both bindings should be back on generation 1: {states:?}\n{policies}"
    );
    assert!(policies.contains("decisions failed"), "{policies}");

    // The open state came back with the old instances, and a later swap starts from them;
    // `swap --wait` follows it through probation.
    let admin = node.admin_addr().to_string();
    let token = std::fs::read_to_string(node.admin_token_file()).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(crate::support::switchyard_bin())
            .args(["swap", "policy", "breaker"])
            .arg(guest("policy_breaker"))
            .args(["--admin", &admin, "--wait"])
            .env("SWITCHYARD_ADMIN_TOKEN", token)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("`breaker` generation 2 passed its probation"),
        "{stdout}"
    );
    let (status, body) = call(&node, "GET /flaky/echo").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("circuit open"), "{body}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_policy_that_floods_the_log_is_cut_at_its_per_decision_budget() {
    crate::support::capture_logs();
    let manifest = node_with(
        &policy("chatty", "policy_broken", "logs_per_call = \"20\""),
        "policies = [\"chatty\"]\ncalls_to = \"flaky\"",
    );
    let node = manifest.start().await;
    let (status, body) = call(&node, "GET /flaky/echo").await;
    assert_eq!(status, 200, "the call goes through: {body}");
    let logged = crate::support::logs();
    let kept = logged
        .lines()
        .filter(|line| line.contains("policy:chatty") && line.contains("before flaky"))
        .count();
    // 4 KiB a decision: three lines of 1 KiB and a bit fit, the other 17 are dropped, and
    // one line says so.
    assert_eq!(kept, 3, "{logged}");
    let warning = logged
        .lines()
        .find(|line| line.contains("per-decision budget"))
        .unwrap_or_else(|| panic!("no budget warning:\n{logged}"));
    assert!(warning.contains("\"dropped_lines\":17"), "{warning}");
    node.shutdown().await;
}
