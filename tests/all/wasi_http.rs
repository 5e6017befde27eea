//! Standard `wasi:http/proxy` components, built from registry packages by `cargo xtask
//! build-guests` (wstd 0.6.8's published examples, Spin SDK 5's hello), served by the node
//! behind its routes and limits, and their outgoing requests as mesh calls.

use std::time::{Duration, Instant};

use crate::support::{TestManifest, admin_get, admin_post, guest, send, send_with, service};

fn manifest() -> TestManifest {
    TestManifest::new(&format!(
        "{}{}{}{}",
        service(
            "wstd",
            "http-wstd-server",
            &["* /", "* /{*rest}"],
            "timeout_ms = 700"
        ),
        service("spin", "http_spin", &["GET /spin/{*rest}"], ""),
        service(
            "gateway",
            "http-wstd-proxy",
            &["GET /proxy/{*rest}"],
            "env = { TARGET_URL = \"http://hello/\" }\nmay_call = [\"hello\"]",
        ),
        service("hello", "hello", &["GET /hello/{name}"], ""),
    ))
}

#[tokio::test]
async fn published_wasi_http_components_serve_behind_the_nodes_routes() {
    let manifest = manifest();
    let node = manifest.start().await;
    let addr = node.http_addr();

    let home = send(addr, "GET", "/", "").await;
    assert_eq!(
        (home.status, home.body.as_str()),
        (200, "Hello, wasi:http/proxy world!\n")
    );
    let echo = send(addr, "POST", "/echo", "a body, echoed").await;
    assert_eq!((echo.status, echo.body.as_str()), (200, "a body, echoed"));
    let headers = send_with(addr, "GET", "/echo-headers", "", &[("x-test", "kept")]).await;
    assert_eq!(headers.header("x-test"), Some("kept"));
    let status = send_with(
        addr,
        "GET",
        "/response-status",
        "",
        &[("x-response-status", "418")],
    )
    .await;
    assert_eq!(status.status, 418);
    // The body is written after the response is set, 5 chunks 100 ms apart: read as written.
    let streamed = send(addr, "GET", "/stream-body", "").await;
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.body.lines().count(), 5, "{}", streamed.body);
    assert_eq!(send(addr, "GET", "/nowhere", "").await.status, 404);

    // The service's timeout holds: the guest sleeps 1 s, the node answers 504 at 700 ms.
    let started = Instant::now();
    let slow = send(addr, "GET", "/wait-response", "").await;
    assert_eq!(slow.status, 504, "{}", slow.body);
    assert!(started.elapsed() < Duration::from_millis(950));

    let spin = send(addr, "GET", "/spin/anything?x=1", "").await;
    assert_eq!(
        (spin.status, spin.body.as_str()),
        (200, "Hello, Fermyon: GET /spin/anything"),
    );

    let services = admin_get(&node, "/services").await;
    assert!(services.body.contains("wstd"), "{}", services.body);
    node.shutdown().await;
}

#[tokio::test]
async fn outgoing_requests_to_a_service_are_mesh_calls_and_others_are_refused() {
    let manifest = manifest();
    let node = manifest.start().await;
    let addr = node.http_addr();

    // wstd's proxy example forwards /proxy/<rest> to $TARGET_URL<rest>: http://hello/...
    let proxied = send(addr, "GET", "/proxy/hello/ada", "").await;
    assert_eq!(
        (proxied.status, proxied.body.as_str()),
        (200, "Hello, ada!\n")
    );
    // A failed call answers as a proxy would (400: hello has no such route); wstd's example
    // passes on headers and body, though not the status.
    let proxied = send(addr, "GET", "/proxy/nothing-here", "").await;
    assert_eq!(proxied.header("x-switchyard-error"), Some("bad-request"));
    assert!(proxied.body.contains("has no route"), "{}", proxied.body);
    // It went as a call from gateway to hello, counted as one.
    let metrics = admin_get(&node, "/metrics").await.body;
    assert!(
        metrics.lines().any(|line| line.starts_with(
            "switchyard_calls_total{caller=\"gateway\",callee=\"hello\",outcome=\"ok\"}"
        )),
        "{metrics}"
    );
    node.shutdown().await;

    // Pointed outside the mesh the request is refused and the guest's own error handling
    // answers (wstd's example: 500); at a service it may not call, the call answers 403
    // (which the example passes on as a body and `x-switchyard-error: rejected`).
    for (target, status, refused) in [
        ("http://example.com/", 500, "example.com"),
        ("http://spin/", 200, "may not call `spin`"),
    ] {
        let manifest = TestManifest::new(&format!(
            "{}{}",
            service(
                "gateway",
                "http-wstd-proxy",
                &["GET /proxy/{*rest}"],
                &format!("env = {{ TARGET_URL = \"{target}\" }}\nmay_call = [\"hello\"]"),
            ),
            service("spin", "http_spin", &["GET /spin/{*rest}"], ""),
        ));
        crate::support::capture_logs();
        let node = manifest.start().await;
        let reply = send(node.http_addr(), "GET", "/proxy/x", "").await;
        assert_eq!(reply.status, status, "{target}: {}", reply.body);
        if status == 200 {
            assert_eq!(reply.header("x-switchyard-error"), Some("rejected"));
            assert!(reply.body.contains(refused), "{}", reply.body);
        }
        let logs = crate::support::logs();
        assert!(
            logs.lines()
                .any(|line| line.contains("outgoing HTTP") && line.contains(refused)),
            "no refusal naming {refused} in the log"
        );
        node.shutdown().await;
    }
}

#[tokio::test]
async fn a_wasi_http_component_swaps_in_for_an_sdk_guest_and_back() {
    let manifest = TestManifest::new(&service("hello", "hello", &["GET /{*rest}"], ""));
    let node = manifest.start().await;
    let addr = node.http_addr();
    assert_eq!(send(addr, "GET", "/hello/x", "").await.status, 200);
    let spin = std::fs::read(guest("http_spin")).unwrap();
    let (status, body) = admin_post(&node, "/services/hello", spin).await;
    assert_eq!(status, 200, "{body}");
    let reply = send(addr, "GET", "/after", "").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "Hello, Fermyon: GET /after")
    );
    let sdk = std::fs::read(guest("hello")).unwrap();
    let (status, body) = admin_post(&node, "/services/hello", sdk).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        send(addr, "GET", "/hello/x", "").await.body,
        "Hello, world!\n"
    );
    node.shutdown().await;
}

/// A queue cannot deliver to a component that takes no messages: `check` and `run` say so
/// with the service's place in the manifest.
#[test]
fn a_queue_naming_a_wasi_http_component_as_subscriber_is_refused() {
    let manifest = TestManifest::new(&format!(
        "{}[[queue]]\nname = \"jobs\"\nsubscriber = \"spin\"\n",
        service("spin", "http_spin", &["GET /spin/{*rest}"], ""),
    ));
    let loaded = switchyard::Manifest::load(&manifest.path).unwrap();
    let err = switchyard::node::check(&loaded)
        .expect_err("check refuses it")
        .to_string();
    assert!(
        err.contains("switchyard.toml:") && err.contains("service `spin`"),
        "{err}"
    );
    assert!(
        err.contains("wasi:http/proxy component, which takes no messages, but queue `jobs`"),
        "{err}"
    );
}
