//! gRPC through the ingress to a guest (`grpc /shop.Orders/...` routes), checked with gRPC's
//! reference implementation: Python's `grpcio` (the C core) as the client, over h2c and TLS.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::{TestManifest, repo_root, send_with, service};

/// Pinned: the reference client the interop tests speak to.
const GRPCIO: &str = "1.76.0";

/// A Python with grpcio and grpcio-tools (a venv under target/tools, made once), and the
/// directory of the stubs generated from examples/grpc/orders.proto.
fn grpcio() -> &'static (PathBuf, PathBuf) {
    static READY: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    READY.get_or_init(|| {
        let home = repo_root().join(format!("target/tools/grpcio-{GRPCIO}"));
        let python = home.join("venv/bin/python");
        let run = |command: &mut Command| {
            let output = command.output().unwrap();
            assert!(
                output.status.success(),
                "{command:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        if !python.is_file() {
            run(Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg(home.join("venv")));
            run(Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                &format!("grpcio=={GRPCIO}"),
                &format!("grpcio-tools=={GRPCIO}"),
            ]));
        }
        let stubs = home.join("stubs");
        std::fs::create_dir_all(&stubs).unwrap();
        let protos = repo_root().join("examples/grpc");
        run(Command::new(&python)
            .args(["-m", "grpc_tools.protoc"])
            .arg(format!("-I{}", protos.display()))
            .arg(format!("--python_out={}", stubs.display()))
            .arg(format!("--grpc_python_out={}", stubs.display()))
            .arg(protos.join("orders.proto")));
        (python, stubs)
    })
}

/// Runs tests/grpc/orders_client.py against `target` (with `ca`: over TLS) and returns what
/// it saw.
async fn python_client(target: String, ca: Option<PathBuf>) -> serde_json::Value {
    grpcio_script("orders_client.py", target, ca).await
}

/// Runs the grpcio client `script` of tests/grpc against `target` and returns what it saw.
async fn grpcio_script(
    script: &'static str,
    target: String,
    ca: Option<PathBuf>,
) -> serde_json::Value {
    tokio::task::spawn_blocking(move || {
        let (python, stubs) = grpcio();
        let mut command = Command::new(python);
        command
            .arg(repo_root().join("tests/grpc").join(script))
            .arg(stubs)
            .arg(&target);
        if let Some(ca) = &ca {
            command.arg(ca);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "the grpcio client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(&output.stdout)))
    })
    .await
    .unwrap()
}

/// `orders` serves Place and Track; `front` (the same component) serves PlaceUpstream by
/// calling `orders` through the mesh.
fn orders_service() -> String {
    service(
        "orders",
        "grpc_orders",
        &["grpc /shop.Orders/Place", "grpc /shop.Orders/Track"],
        "",
    ) + &service(
        "front",
        "grpc_orders",
        &[
            "grpc /shop.Orders/PlaceUpstream",
            "grpc /shop.Orders/TrackUpstream",
        ],
        "config = { upstream = \"orders\" }",
    )
}

fn check_what_grpcio_saw(seen: &serde_json::Value) {
    // Unary, with metadata in and the message typed both ways.
    assert_eq!(seen["place"]["code"], "OK", "{seen}");
    assert_eq!(seen["place"]["id"], "ada-2");
    assert_eq!(seen["place"]["total_items"], 3);
    assert_eq!(seen["place"]["note"], "gift wrap");
    // A Status from the handler, with its trailing metadata.
    assert_eq!(seen["no_items"]["code"], "INVALID_ARGUMENT", "{seen}");
    assert_eq!(
        seen["no_items"]["details"],
        "an order needs at least one item"
    );
    assert_eq!(seen["no_items"]["trailing"]["x-order-problem"], "no-items");
    // grpc-timeout is the guest's deadline.
    assert_eq!(seen["slow"]["code"], "DEADLINE_EXCEEDED", "{seen}");
    assert!(seen["slow"]["seconds"].as_f64().unwrap() < 4.0, "{seen}");
    // A panic is INTERNAL, without the guest's internals.
    assert_eq!(seen["gremlin"]["code"], "INTERNAL", "{seen}");
    assert!(
        !seen["gremlin"]["details"]
            .as_str()
            .unwrap()
            .contains("gremlin broke"),
        "{seen}"
    );
    // A method without a route.
    assert_eq!(seen["unknown_method"]["code"], "UNIMPLEMENTED", "{seen}");
    assert!(
        seen["unknown_method"]["details"]
            .as_str()
            .unwrap()
            .contains("/shop.Orders/Cancel")
    );
    // Server streaming: every message, each as it is produced (the first arrives well before
    // the last is made, 2 x 400 ms later).
    let track = seen["track"].as_array().unwrap();
    let steps: Vec<_> = track.iter().map(|p| p["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [1, 2, 3], "{seen}");
    assert_eq!(track[2]["state"], "delivered");
    let first = track[0]["at"].as_f64().unwrap();
    let last = track[2]["at"].as_f64().unwrap();
    assert!(last - first >= 0.7, "the messages came together: {seen}");
    // A stream that fails midway: the message sent before, then the code in the trailers.
    assert_eq!(seen["lost"]["steps"], serde_json::json!([1]), "{seen}");
    assert_eq!(seen["lost"]["code"], "DATA_LOSS", "{seen}");
    assert_eq!(seen["lost"]["details"], "the order was lost in transit");
    // A streaming method's error after no messages.
    assert_eq!(seen["too_many_steps"]["code"], "OUT_OF_RANGE", "{seen}");
    // A guest calling a gRPC method of another service: the answer, the callee's status and
    // the caller's deadline all cross the mesh.
    assert_eq!(seen["upstream"]["id"], "bob-2", "{seen}");
    assert_eq!(seen["upstream"]["note"], "via orders");
    assert_eq!(
        seen["upstream_no_items"]["code"], "INVALID_ARGUMENT",
        "{seen}"
    );
    assert_eq!(
        seen["upstream_no_items"]["details"],
        "an order needs at least one item"
    );
    // A guest calling a server-streaming method of another service gets every message, in
    // order, and a stream that failed midway as its status.
    assert_eq!(
        seen["track_upstream"],
        serde_json::json!([1, 2, 3]),
        "{seen}"
    );
    assert_eq!(seen["track_upstream_lost"]["code"], "DATA_LOSS", "{seen}");
    assert_eq!(
        seen["track_upstream_lost"]["details"],
        "the order was lost in transit"
    );
    assert_eq!(seen["upstream_slow"]["code"], "DEADLINE_EXCEEDED", "{seen}");
    assert!(
        seen["upstream_slow"]["seconds"].as_f64().unwrap() < 4.0,
        "{seen}"
    );
}

#[tokio::test]
async fn grpcio_calls_a_guest_over_h2c_unary_streaming_deadlines_statuses_and_metadata() {
    crate::support::capture_logs();
    let manifest = TestManifest::with_node("name = \"grpc\"", &orders_service());
    let node = manifest.start().await;
    let seen = python_client(node.http_addr().to_string(), None).await;
    check_what_grpcio_saw(&seen);
    // The deadline came from grpc-timeout (the service's own timeout is 30 s): the node
    // stopped the guest itself.
    assert!(
        crate::support::logs()
            .lines()
            .any(|line| line.contains("service `orders` did not answer within")),
        "the node did not stop the slow guest at the client's deadline"
    );
    // Failed calls count as the HTTP status their code means: INVALID_ARGUMENT 4xx,
    // DEADLINE_EXCEEDED and INTERNAL 5xx.
    let metrics = crate::support::admin_get(&node, "/metrics").await.body;
    for class in ["2xx", "4xx", "5xx"] {
        assert!(
            metrics
                .lines()
                .any(|line| line.starts_with("switchyard_requests_total{")
                    && line.contains("service=\"orders\"")
                    && line.contains("route=\"/shop.Orders/Place\"")
                    && line.contains(&format!("class=\"{class}\""))),
            "no {class} line for orders' Place in:\n{metrics}"
        );
    }
    // A streamed call counts when its trailers are sent: the order lost midway (300 ms after
    // its first message) under the status DATA_LOSS means (500), and the time of every call
    // spans its last message (the 3-step tracking sends for 800 ms).
    let track = |line: &str| line.contains("route=\"/shop.Orders/Track\"");
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("switchyard_requests_total{")
                && track(line)
                && line.contains("class=\"5xx\"")),
        "no 5xx line for orders' Track in:\n{metrics}"
    );
    let track_seconds: f64 = metrics
        .lines()
        .find(|line| line.starts_with("switchyard_request_duration_seconds_sum{") && track(line))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no duration of orders' Track in:\n{metrics}"));
    assert!(track_seconds >= 0.75, "Track took {track_seconds} s in all");
    node.shutdown().await;
}

#[tokio::test]
async fn grpcio_calls_a_guest_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::support::Pki::new("grpc test CA");
    let (ca_path, cert_path, key_path) = (
        dir.path().join("ca.pem"),
        dir.path().join("edge.pem"),
        dir.path().join("edge.key"),
    );
    pki.write_ca(&ca_path);
    pki.issue("edge", &cert_path, &key_path);
    let manifest = TestManifest::with_node(
        &format!(
            "name = \"grpc-tls\"\nhttp_tls = {{ cert = {:?}, key = {:?} }}",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
        &orders_service(),
    );
    let node = manifest.start().await;
    let target = format!("localhost:{}", node.http_addr().port());
    let seen = python_client(target, Some(ca_path)).await;
    check_what_grpcio_saw(&seen);
    node.shutdown().await;
}

/// One gRPC-shaped request over HTTP/2 with prior knowledge: status, headers and trailers.
async fn h2_call(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, hyper::HeaderMap, Option<hyper::HeaderMap>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = Request::post(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    (status, parts.headers, collected.trailers().cloned())
}

#[tokio::test]
async fn what_is_not_a_proper_grpc_call_gets_a_clear_answer() {
    let manifest = TestManifest::with_node("name = \"grpc-bad\"", &orders_service());
    let node = manifest.start().await;
    let addr = node.http_addr();
    // Plain HTTP to a gRPC method: 415, saying how to call it.
    let reply = send_with(addr, "POST", "/shop.Orders/Place", "{}", &[]).await;
    assert_eq!(reply.status, 415, "{}", reply.body);
    assert!(reply.body.contains("gRPC method"), "{}", reply.body);
    // gRPC over HTTP/1.1 cannot carry its status in trailers.
    let reply = send_with(
        addr,
        "POST",
        "/shop.Orders/Place",
        "",
        &[("content-type", "application/grpc")],
    )
    .await;
    assert_eq!(reply.header("grpc-status"), Some("13"), "{}", reply.body);
    assert!(reply.header("grpc-message").unwrap().contains("HTTP/2"));
    // A malformed grpc-timeout, and a body that is not a framed message.
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let (status, headers, _) = h2_call(
        addr,
        "/shop.Orders/Place",
        &[grpc[0], grpc[1], ("grpc-timeout", "soon")],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("grpc-status").unwrap(), "3", "{headers:?}");
    let (_, headers, _) = h2_call(addr, "/shop.Orders/Place", &grpc, b"junk".to_vec()).await;
    assert_eq!(headers.get("grpc-status").unwrap(), "3");
    assert!(
        headers
            .get("grpc-message")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("length-prefixed")
    );
    // A good call: the message in the body, the status in trailers.
    let order = [
        0x0a, 0x02, b'a', b'l', 0x12, 0x05, 0x0a, 0x01, b'x', 0x10, 0x04,
    ];
    let mut framed = vec![0, 0, 0, 0, order.len() as u8];
    framed.extend_from_slice(&order);
    let (status, headers, trailers) = h2_call(addr, "/shop.Orders/Place", &grpc, framed).await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("content-type").unwrap(), "application/grpc");
    assert!(headers.get("grpc-status").is_none());
    assert_eq!(trailers.unwrap().get("grpc-status").unwrap(), "0");
    node.shutdown().await;
}

/// tests/grpc/orders_server.py under grpcio, on a free port (over TLS with `tls`); killed
/// when dropped.
async fn python_server(tls: Option<(PathBuf, PathBuf)>) -> (tokio::process::Child, u16) {
    let (python, stubs) = tokio::task::spawn_blocking(|| grpcio().clone())
        .await
        .unwrap();
    let mut command = tokio::process::Command::new(python);
    command
        .arg(repo_root().join("tests/grpc/orders_server.py"))
        .arg(stubs)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some((cert, key)) = &tls {
        command.arg(cert).arg(key);
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .expect("the grpcio server starts")
        .unwrap()
        .expect("the grpcio server prints its port");
    let port = line.strip_prefix("port ").unwrap().parse().unwrap();
    (child, port)
}

/// `shop.Order { customer, items: [tea x 2, cup x 1] }` (or no items), framed.
fn framed_order(customer: &str, items: bool) -> Vec<u8> {
    let mut order = vec![0x0a, customer.len() as u8];
    order.extend_from_slice(customer.as_bytes());
    if items {
        order.extend_from_slice(&[0x12, 0x07, 0x0a, 0x03, b't', b'e', b'a', 0x10, 0x02]);
        order.extend_from_slice(&[0x12, 0x07, 0x0a, 0x03, b'c', b'u', b'p', 0x10, 0x01]);
    }
    let mut framed = vec![0, 0, 0, 0, order.len() as u8];
    framed.extend_from_slice(&order);
    framed
}

#[tokio::test]
async fn a_guest_calls_a_grpcio_server_outside_the_mesh_over_h2c_and_tls_only_where_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::support::Pki::new("partner CA");
    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("partner.pem"),
        dir.path().join("partner.key"),
    );
    pki.write_ca(&ca);
    pki.issue("partner", &cert, &key);
    let (_plain_server, plain_port) = python_server(None).await;
    let (_tls_server, tls_port) = python_server(Some((cert, key))).await;
    let front = |name: &str, route: &str, upstream: &str, allowed: &str| {
        service(
            name,
            "grpc_orders",
            &[route, "grpc /shop.Orders/TrackUpstream"],
            &format!(
                "config = {{ upstream = \"{upstream}\" }}\nallowed_outbound_hosts = [\"{allowed}\"]\n\
                 outbound_ca = {:?}",
                ca.display().to_string()
            ),
        )
    };
    // Each upstream gets its own node: the fronts share the one route.
    for (upstream, allowed) in [
        (
            format!("http://127.0.0.1:{plain_port}"),
            format!("http://127.0.0.1:{plain_port}"),
        ),
        (
            format!("https://localhost:{tls_port}"),
            format!("https://localhost:{tls_port}"),
        ),
    ] {
        let manifest = TestManifest::with_node(
            "name = \"outside\"",
            &front(
                "front",
                "grpc /shop.Orders/PlaceUpstream",
                &upstream,
                &allowed,
            ),
        );
        let node = manifest.start().await;
        let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
        let (status, _, trailers) = h2_call(
            node.http_addr(),
            "/shop.Orders/PlaceUpstream",
            &grpc,
            framed_order("ada", true),
        )
        .await;
        let trailers = trailers.unwrap_or_default();
        assert_eq!(status, 200);
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.to_str().unwrap()),
            Some("0"),
            "{upstream}: {trailers:?}"
        );
        // The answer came from Python, with the caller's deadline and trace context.
        let (_, _, body) = h2_body_call(
            node.http_addr(),
            "/shop.Orders/PlaceUpstream",
            framed_order("ada", true),
        )
        .await;
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("py-ada"), "{upstream}: {text}");
        assert!(
            text.contains("deadline set trace set"),
            "{upstream}: {text}"
        );
        assert!(
            text.contains(&format!("via {upstream}")),
            "{upstream}: {text}"
        );
        // A server-streaming method of Python's, called by the guest: every message, in
        // order, collected when the stream ended.
        let tracking = [0x0a, 0x02, b'p', b'y', 0x10, 0x03];
        let mut framed = vec![0, 0, 0, 0, tracking.len() as u8];
        framed.extend_from_slice(&tracking);
        let (_, trailers, body) =
            h2_body_call(node.http_addr(), "/shop.Orders/TrackUpstream", framed).await;
        assert_eq!(
            trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .unwrap(),
            "0",
            "{upstream}: {trailers:?}"
        );
        let text = String::from_utf8_lossy(&body);
        let steps: Vec<_> = ["py step 1", "py step 2", "py step 3"]
            .iter()
            .map(|step| text.find(step))
            .collect();
        assert!(
            steps.iter().all(Option::is_some) && steps.is_sorted(),
            "{upstream}: {text}"
        );
        // Python's status and message come back through the guest.
        let (_, headers, trailers) = h2_call(
            node.http_addr(),
            "/shop.Orders/PlaceUpstream",
            &grpc,
            framed_order("ada", false),
        )
        .await;
        let ended = trailers.unwrap_or(headers);
        assert_eq!(ended.get("grpc-status").unwrap(), "3", "{ended:?}");
        assert_eq!(ended.get("grpc-message").unwrap(), "python wants items");
        node.shutdown().await;
    }

    // A host the manifest does not list: refused before anything is sent.
    let manifest = TestManifest::with_node(
        "name = \"outside\"",
        &front(
            "front",
            "grpc /shop.Orders/PlaceUpstream",
            &format!("http://127.0.0.1:{plain_port}"),
            "http://127.0.0.1:1",
        ),
    );
    let node = manifest.start().await;
    let (_, headers, trailers) = h2_call(
        node.http_addr(),
        "/shop.Orders/PlaceUpstream",
        &[("content-type", "application/grpc"), ("te", "trailers")],
        framed_order("ada", true),
    )
    .await;
    let ended = trailers.unwrap_or(headers);
    assert_eq!(ended.get("grpc-status").unwrap(), "7", "{ended:?}");
    assert!(
        ended
            .get("grpc-message")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("allowed_outbound_hosts"),
        "{ended:?}"
    );
    node.shutdown().await;
}

/// The method at `path` with the framed `message`: status, trailers and the answer's bytes.
async fn h2_body_call(
    addr: std::net::SocketAddr,
    path: &str,
    message: Vec<u8>,
) -> (u16, Option<hyper::HeaderMap>, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(message)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (status, trailers, collected.to_bytes().to_vec())
}

#[tokio::test]
async fn grpcio_calls_a_plain_wasi_http_component_serving_grpc() {
    // grpc-wstd knows nothing of Switchyard: wstd, prost, the framing and trailers by hand.
    let manifest = TestManifest::with_node(
        "name = \"grpc-wasi-http\"",
        &service(
            "orders",
            "grpc-wstd",
            &["grpc /shop.Orders/Place", "grpc /shop.Orders/Track"],
            "",
        ),
    );
    let node = manifest.start().await;
    let seen = grpcio_script("wasi_http_client.py", node.http_addr().to_string(), None).await;
    assert_eq!(
        seen["place"],
        serde_json::json!({"id": "wasi-http-ada", "total_items": 5, "note": "by wasi:http", "code": "OK"}),
        "{seen}"
    );
    // Its status and message, written as response trailers, reach the client as gRPC's.
    assert_eq!(
        seen["no_items"],
        serde_json::json!({"code": "INVALID_ARGUMENT", "details": "an order needs items"}),
        "{seen}"
    );
    // Messages written 400 ms apart arrive as they are written, not all at the end.
    let track = seen["track"].as_array().unwrap();
    let steps: Vec<_> = track.iter().map(|p| p["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [1, 2, 3], "{seen}");
    assert_eq!(track[2]["state"], "step 3 of 3");
    let (first, last) = (
        track[0]["at"].as_f64().unwrap(),
        track[2]["at"].as_f64().unwrap(),
    );
    assert!(last - first >= 0.7, "the stream arrived at once: {seen}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_guests_grpc_calls_go_through_the_policies_bound_to_them_judged_by_their_code() {
    // A breaker around the calls to orders (front makes them): orders answers UNAVAILABLE (HTTP 200 with
    // grpc-status 14), which the breaker counts as a failure; after two it opens.
    let breaker = format!(
        "[[policy]]\nname = \"breaker\"\ncomponent = {:?}\n\
         config = {{ consecutive_failures = \"2\", open_ms = \"60000\" }}\n\
         [[bind]]\npolicies = [\"breaker\"]\ncalls_to = \"orders\"\n",
        crate::support::guest("policy_breaker")
            .display()
            .to_string()
    );
    let manifest = TestManifest::with_node(
        "name = \"grpc-policies\"",
        &format!("{}{breaker}", orders_service()),
    );
    let node = manifest.start().await;
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (status, headers, trailers) = h2_call(
            node.http_addr(),
            "/shop.Orders/PlaceUpstream",
            &grpc,
            framed_order("paused", true),
        )
        .await;
        assert_eq!(status, 200);
        let status = trailers.unwrap_or(headers);
        let text = |name: &str| {
            status
                .get(name)
                .map(|value| value.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        seen.push((text("grpc-status"), text("grpc-message")));
    }
    assert_eq!(seen[0], ("14".to_owned(), "orders are paused".to_owned()));
    assert_eq!(seen[1], seen[0]);
    // The third never reached orders: the breaker refused it.
    assert_ne!(seen[2].0, "0", "{seen:?}");
    assert!(seen[2].1.contains("circuit open"), "{seen:?}");
    // A good order is refused too while the breaker is open.
    let (_, headers, trailers) = h2_call(
        node.http_addr(),
        "/shop.Orders/PlaceUpstream",
        &grpc,
        framed_order("ada", true),
    )
    .await;
    let status = trailers.unwrap_or(headers);
    assert!(
        status
            .get("grpc-message")
            .is_some_and(|message| message.to_str().unwrap().contains("circuit open")),
        "{status:?}"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn the_grpc_example_runs_as_the_readme_says() {
    let data = tempfile::tempdir().unwrap();
    let path = repo_root().join("examples/grpc/switchyard.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"127.0.0.1:8080\"", "\"127.0.0.1:0\"")
        .replace("\"127.0.0.1:9090\"", "\"127.0.0.1:0\"")
        .replace(
            "data_dir = \"../../target/switchyard-data\"",
            &format!("data_dir = {:?}", data.path().display().to_string()),
        );
    let manifest = switchyard::Manifest::parse(&text, &path).unwrap_or_else(|err| panic!("{err}"));
    let node = switchyard::Node::start(&manifest).await.unwrap();
    let target = node.http_addr().to_string();
    let output = tokio::task::spawn_blocking(move || {
        let (python, _) = grpcio();
        Command::new(python)
            .arg(repo_root().join("examples/grpc/client.py"))
            .arg(target)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // What the README shows, line for line.
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let shown = readme
        .split("```text\nPlace: ")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .map(|rest| format!("Place: {rest}"))
        .expect("the README shows the example's output");
    assert_eq!(printed, shown);
    node.shutdown().await;
}
