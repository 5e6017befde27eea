//! Standard `wasi:http/proxy` components, built from registry packages (by `cargo xtask
//! build-guests`: wstd 0.6.8's published examples, Spin SDK 5's hello; by `switchyard build`:
//! a componentize-py app and a ComponentizeJS fetch-event app), served by the node behind its
//! routes and limits, and their outgoing requests as mesh calls.

use std::time::{Duration, Instant};

use crate::support::{
    TestManifest, admin_get, admin_post, built_project, guest, send, send_with, service,
    service_at, wstd_proxy,
};

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
            wstd_proxy("gateway", target, "may_call = [\"hello\"]"),
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

/// A componentize-py (PyPI) wasi:http app and a ComponentizeJS (npm) fetch-event app, built by
/// `switchyard build` from `guests/http-python` and `guests/http-js`, serve behind the node's
/// routes; the JS app's `fetch("http://hello/...")` is a mesh call. Which components tolerate
/// an instance reused for many requests (`requests_per_instance`): the Python app, wstd's and
/// Spin's do (checked here); the ComponentizeJS fetch-event app does not (its second request
/// in one instance never answers: seen here, so it keeps the default, fresh per request).
#[tokio::test(flavor = "multi_thread")]
async fn python_and_javascript_wasi_http_components_serve_and_fetch_through_the_mesh() {
    let (python, js) =
        tokio::task::spawn_blocking(|| (built_project("http-python"), built_project("http-js")))
            .await
            .unwrap();
    let reuse = "requests_per_instance = 50";
    let manifest = TestManifest::new(&format!(
        "{}{}{}{}{}{}",
        service_at("py-http", &python, &["* /py-http/{*rest}"], ""),
        service_at("py-reused", &python, &["GET /py-reused/{*rest}"], reuse),
        service_at(
            "js-http",
            &js,
            &["GET /js-http/{*rest}"],
            "may_call = [\"hello\"]"
        ),
        service(
            "wstd-reused",
            "http-wstd-server",
            &["GET /echo-headers"],
            reuse
        ),
        service("spin-reused", "http_spin", &["GET /spin/{*rest}"], reuse),
        service("hello", "hello", &["GET /hello/{name}"], ""),
    ));
    let node = manifest.start().await;
    let addr = node.http_addr();

    let reply = send(addr, "POST", "/py-http/orders?page=2", "ignored").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "Hello from Python: POST /py-http/orders?page=2\n")
    );
    assert_eq!(reply.header("x-guest-language"), Some("python"));
    let reply = send(addr, "GET", "/js-http/hi", "").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "Hello from JavaScript: GET /js-http/hi\n")
    );
    assert_eq!(reply.header("x-guest-language"), Some("js"));

    // JS `fetch` of http://hello/... goes to the mesh's hello service, as a call.
    let reply = send(addr, "GET", "/js-http/via/hello/hello/ada", "").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "hello said (200): Hello, ada!\n")
    );
    // With a version range (the `x-switchyard-version` header): hello is 1.0.0.
    for (range, status) in [("^1", 200), ("2", 503)] {
        let reply = send_with(
            addr,
            "GET",
            "/js-http/via/hello/hello/ada",
            "",
            &[("x-want-version", range)],
        )
        .await;
        assert!(
            reply.body.starts_with(&format!("hello said ({status})")),
            "{range}: {}",
            reply.body
        );
    }

    // Reused instances answer right, request after request.
    for round in 0..20 {
        let py = send(addr, "GET", &format!("/py-reused/{round}"), "").await;
        assert_eq!(
            py.body,
            format!("Hello from Python: GET /py-reused/{round}\n")
        );
        let round_header = round.to_string();
        let wstd = send_with(
            addr,
            "GET",
            "/echo-headers",
            "",
            &[("x-round", &round_header)],
        )
        .await;
        assert_eq!(wstd.header("x-round"), Some(round_header.as_str()));
        let spin = send(addr, "GET", "/spin/again", "").await;
        assert_eq!(spin.status, 200, "{}", spin.body);
    }
    node.shutdown().await;
}

/// An outgoing request names the versions that may answer: as the URL's user and host
/// (`http://hello@1/`, for clients whose URL parser takes it, like Rust's `http`).
#[tokio::test]
async fn an_outgoing_request_can_name_a_version_range() {
    // wstd's example forwards only /proxy/...: one node per range.
    for (range, answers) in [("1", true), ("~1.0", true), ("2", false)] {
        let manifest = TestManifest::new(&format!(
            "{}{}",
            wstd_proxy("gateway", &format!("http://hello@{range}/"), ""),
            service("hello", "hello", &["GET /hello/{name}"], ""),
        ));
        let node = manifest.start().await;
        let reply = send(node.http_addr(), "GET", "/proxy/hello/ada", "").await;
        if answers {
            assert_eq!(reply.body, "Hello, ada!\n", "hello@{range}");
        } else {
            assert_eq!(
                reply.header("x-switchyard-error"),
                Some("unavailable"),
                "hello@{range}: {}",
                reply.body
            );
        }
        node.shutdown().await;
    }
}
