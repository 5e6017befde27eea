//! The node's instance pool is sized from its own budget (`[node] max_instances`,
//! `max_memory_mb`), not from the sum of its services' limits: many services fit, a full
//! budget answers 503 at once naming the key, and `check` refuses what can never fit.

use std::time::{Duration, Instant};

use crate::support::{TestManifest, get, service, switchyard_bin, wait_for_in_flight};

#[tokio::test]
async fn a_node_starts_and_serves_a_thousand_services_of_the_default_size() {
    // Each has the default max_instances (64) and memory_limit_mb (64): their limits add up
    // to 64,000 instances, which the old pool (twice that, 4 GiB of address space each) could
    // not reserve past about 80 services.
    let services: String = (0..1000)
        .map(|n| {
            service(
                &format!("s{n}"),
                "hello",
                &[&format!("GET /s{n}/{{name}}")],
                "",
            )
        })
        .collect();
    let manifest = TestManifest::new(&services);
    let started = Instant::now();
    let node = manifest.start().await;
    let start_time = started.elapsed();
    let addr = node.http_addr();
    for n in (0..1000).step_by(7).chain([999]) {
        let reply = get(addr, &format!("/s{n}/ada")).await;
        assert_eq!(reply.status, 200, "s{n}: {}", reply.body);
        assert!(reply.body.contains("ada"), "s{n}: {}", reply.body);
    }
    eprintln!("1000 services started in {start_time:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_full_node_budget_answers_503_at_once_naming_the_key() {
    // Two services of 64 MiB each on a node whose instances may hold 100 MiB together.
    let manifest = TestManifest::with_node(
        "name = \"test\"\nmax_memory_mb = 100",
        &format!(
            "{}{}",
            service(
                "faulty",
                "faulty",
                &["GET /f/{fault}", "GET /f/{fault}/{arg}"],
                ""
            ),
            service("hello", "hello", &["GET /hello/{name}"], "")
        ),
    );
    let node = manifest.start().await;
    let addr = node.http_addr();
    let slow = tokio::spawn(async move { get(addr, "/f/sleep/1500").await.status });
    wait_for_in_flight(
        &node,
        "faulty",
        1,
        Duration::from_secs(5),
        "the slow request",
    )
    .await;
    let started = Instant::now();
    let reply = get(addr, "/hello/ada").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(
        reply.body.contains("max_memory_mb = 100") && reply.body.contains("service `hello`"),
        "{}",
        reply.body
    );
    assert_eq!(slow.await.unwrap(), 200);
    // Given back: the next request runs.
    assert_eq!(get(addr, "/hello/ada").await.status, 200);
    node.shutdown().await;
}

/// `switchyard check` on `manifest`: refused, and its stderr.
fn check_refuses(manifest: &TestManifest) -> String {
    let out = std::process::Command::new(switchyard_bin())
        .arg("check")
        .arg(&manifest.path)
        .env("SWITCHYARD_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "accepted:\n{stderr}");
    stderr
}

#[test]
fn check_refuses_what_the_budget_can_never_hold_with_the_numbers_and_the_key() {
    let hello = |extra: &str| service("hello", "hello", &["GET /hello/{name}"], extra);
    let err = check_refuses(&TestManifest::with_node(
        "max_memory_mb = 1000",
        &hello("memory_limit_mb = 4000\n"),
    ));
    let err = err.replace('\n', " ");
    assert!(
        err.contains("memory_limit_mb = 4000")
            && err.contains("1000 MiB")
            && err.contains("raise [node] max_memory_mb")
            && err.contains("switchyard.toml:"),
        "{err}"
    );
    let err = check_refuses(&TestManifest::with_node(
        "max_instances = 8",
        &hello("max_instances = 9\n"),
    ));
    assert!(
        err.contains("max_instances = 9") && err.contains("the 8 instances"),
        "{err}"
    );
    // 200,000 instances of 4 GiB each: more address space than a machine has.
    let err = check_refuses(&TestManifest::with_node(
        "max_instances = 200000\nmax_memory_mb = 1000000",
        &hello("memory_limit_mb = 4096\n"),
    ));
    assert!(
        err.contains("address space") && err.contains("lower [node] max_instances"),
        "{err}"
    );
}

/// The pool's slots are shaped for the components the manifest names; a swap to one that
/// needs more core instances per instance (componentize-py's need 14) is refused with the
/// numbers and what to do, and the old version keeps serving.
#[tokio::test]
async fn a_component_bigger_than_the_pools_slots_is_refused_at_load() {
    let manifest = TestManifest::new(&service("hello", "hello", &["GET /hello/{name}"], ""));
    let node = manifest.start().await;
    let instances: String = (0..12)
        .map(|_| "(core instance (instantiate $m))")
        .collect();
    let big = wat::parse_str(format!(
        "(component (core module $m (memory 1)) {instances})"
    ))
    .unwrap();
    let (status, reason) = crate::support::admin_post(&node, "/services/hello", big).await;
    assert_eq!(status, 422, "{reason}");
    assert!(
        reason.contains("needs 12 core instances")
            && reason.contains("sized at start for 8 core instances")
            && reason.contains("restart the node"),
        "{reason}"
    );
    assert_eq!(get(node.http_addr(), "/hello/still").await.status, 200);
    node.shutdown().await;
}
