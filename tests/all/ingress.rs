//! Requests reach the right guest with everything the manifest and the client gave them.

use crate::support::admin_get;
use crate::support::{TestManifest, capture_logs, get, logs, send, service};

#[tokio::test]
async fn hello_answers_from_wasm_with_path_params_and_config() {
    let manifest = TestManifest::new(&service(
        "hello",
        "hello",
        &["GET /hello/{name}"],
        "config = { greeting = \"Hi\" }",
    ));
    let node = manifest.start().await;
    let reply = get(node.http_addr(), "/hello/ada").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "Hi, ada!\n");
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(reply.header("x-request-id").is_some());
    // Path parameters reach the guest percent-decoded.
    let reply = get(node.http_addr(), "/hello/J%C3%BCrgen%20X").await;
    assert_eq!(reply.body, "Hi, Jürgen X!\n");
    node.shutdown().await;
}

#[tokio::test]
async fn the_guest_sees_request_params_config_and_only_the_granted_environment() {
    let manifest = TestManifest::new(&service(
        "faulty",
        "faulty",
        &["POST /echo/{fault}/{arg}"],
        "timeout_ms = 1500\nconfig = { a = \"1\", b = \"2\" }\nenv = { ONLY_THIS = \"yes\" }",
    ));
    let node = manifest.start().await;
    let reply = send(node.http_addr(), "POST", "/echo/echo/42?x=1&y", "payload").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echo: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/echo/echo/42");
    assert_eq!(echo["query"], "x=1&y");
    assert_eq!(
        echo["params"],
        serde_json::json!([["fault", "echo"], ["arg", "42"]])
    );
    assert_eq!(echo["body"], "payload");
    assert_eq!(echo["config"], serde_json::json!([["a", "1"], ["b", "2"]]));
    assert_eq!(echo["env"], serde_json::json!([["ONLY_THIS", "yes"]]));
    assert_eq!(
        echo["files_visible"], false,
        "WASI must grant no directories"
    );
    // The service's timeout counts from the request's arrival: the guest gets what is left.
    let deadline_ms = echo["deadline_ms"].as_u64().unwrap();
    assert!((1400..=1500).contains(&deadline_ms), "{deadline_ms}");
    assert_eq!(echo["request_id"].as_str(), reply.header("x-request-id"));
    // Headers only the node sets never come from a client.
    let reply = crate::support::send_with(
        node.http_addr(),
        "POST",
        "/echo/echo/42",
        "",
        &[
            ("x-switchyard-caller", "admin"),
            ("X-Switchyard-Sender", "billing"),
        ],
    )
    .await;
    let echo: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    let forged: Vec<_> = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|header| header[0].as_str().unwrap().starts_with("x-switchyard-"))
        .collect();
    assert!(forged.is_empty(), "{forged:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn unknown_paths_get_404_and_wrong_methods_get_405() {
    let manifest = TestManifest::new(&service("hello", "hello", &["GET /hello/{name}"], ""));
    let node = manifest.start().await;
    let reply = get(node.http_addr(), "/nothing/here").await;
    assert_eq!(reply.status, 404);
    assert!(
        reply.body.contains("no route for GET /nothing/here"),
        "{}",
        reply.body
    );
    let reply = send(node.http_addr(), "DELETE", "/hello/ada", "").await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET"));
    node.shutdown().await;
}

#[tokio::test]
async fn a_client_request_id_is_kept_and_each_request_has_one_span_with_its_outcome() {
    capture_logs();
    let manifest = TestManifest::new(&service("hello", "hello", &["GET /hello/{name}"], ""));
    let node = manifest.start().await;
    let addr = node.http_addr();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get("/hello/span")
        .header("host", "x")
        .header("x-request-id", "trace-me-123")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-123");
    node.shutdown().await;

    let line = logs()
        .lines()
        .find(|line| line.contains("request done") && line.contains("trace-me-123"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no `request done` event for the request:\n{}", logs()));
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    let span = &event["span"];
    assert_eq!(span["name"], "request");
    assert_eq!(span["service"], "hello");
    assert_eq!(span["route"], "/hello/{name}");
    assert_eq!(span["status"], 200);
    assert!(span["duration_us"].as_u64().is_some(), "{line}");
}

#[tokio::test]
async fn admin_reports_health_and_per_service_counters() {
    let manifest = TestManifest::new(&format!(
        "{}{}",
        service("hello", "hello", &["GET /hello/{name}"], ""),
        service("faulty", "faulty", &["GET /faulty/{fault}"], "")
    ));
    let node = manifest.start().await;
    for _ in 0..3 {
        assert_eq!(get(node.http_addr(), "/hello/x").await.status, 200);
    }
    assert_eq!(get(node.http_addr(), "/faulty/trap").await.status, 500);

    let health = admin_get(&node, "/health").await;
    assert_eq!(health.status, 200);
    let health: serde_json::Value = serde_json::from_str(&health.body).unwrap();
    assert_eq!(health["status"], "ok");

    let services = admin_get(&node, "/services").await;
    let services: serde_json::Value = serde_json::from_str(&services.body).unwrap();
    let hello = &services[0];
    assert_eq!(hello["name"], "hello");
    assert_eq!(hello["version"], "1.0.0");
    assert_eq!(hello["served"], 3);
    assert_eq!(hello["errors"], 0);
    assert_eq!(hello["in_flight"], 0);
    assert_eq!(hello["routes"], serde_json::json!(["GET /hello/{name}"]));
    assert_eq!(hello["component_hash"].as_str().map(str::len), Some(64));
    assert_eq!(services[1]["errors"], 1);
    assert_eq!(admin_get(&node, "/nope").await.status, 404);
    node.shutdown().await;
}

#[tokio::test]
async fn a_guest_cannot_set_framing_headers_or_an_informational_status() {
    let manifest = TestManifest::new(&service(
        "faulty",
        "faulty",
        &["POST /echo/{fault}/{arg}"],
        "",
    ));
    let node = manifest.start().await;
    let reply = send(node.http_addr(), "POST", "/echo/framing/200", "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, "short");
    assert_eq!(reply.header("content-length"), Some("5"));
    assert_eq!(reply.header("x-kept"), Some("yes"));
    for dropped in ["transfer-encoding", "connection", "upgrade"] {
        assert_eq!(reply.header(dropped), None, "{dropped}");
    }
    for informational in [101, 103] {
        let reply = send(
            node.http_addr(),
            "POST",
            &format!("/echo/framing/{informational}"),
            "",
        )
        .await;
        assert_eq!(reply.status, 500, "{informational}: {}", reply.body);
        assert!(reply.body.contains("200-599"), "{}", reply.body);
    }
    // The node still answers after them.
    let reply = send(node.http_addr(), "POST", "/echo/framing/200", "").await;
    assert_eq!(reply.status, 200);
    node.shutdown().await;
}
