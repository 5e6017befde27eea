//! Spans over OTLP, received by a collector built on OpenTelemetry's own protobuf types
//! (`opentelemetry-proto`): over HTTP/protobuf and over gRPC.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;

use crate::support::{TestManifest, admin_get, count, send, send_with, service, wait_for_entry};

/// One received span with the node (`service.instance.id`) that sent it.
#[derive(Debug, Clone)]
struct Received {
    node: String,
    span: opentelemetry_proto::tonic::trace::v1::Span,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(text) => Some(text.clone()),
                Value::IntValue(n) => Some(n.to_string()),
                other => Some(format!("{other:?}")),
            })
    }

    fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }
}

/// What a collector got, kept in arrival order.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<Received>>>);

impl Collected {
    fn take(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.resource_spans {
            let node = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|kv| kv.key == "service.instance.id")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(text) => Some(text.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                spans.extend(scope.spans.into_iter().map(|span| Received {
                    node: node.clone(),
                    span,
                }));
            }
        }
    }

    fn spans(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }
}

/// An OTLP/HTTP collector: `POST /v1/traces` with a protobuf body.
async fn http_collector() -> (SocketAddr, Collected) {
    use http_body_util::BodyExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collected = Collected::default();
    let sink = collected.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let sink = sink.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let sink = sink.clone();
                        async move {
                            assert_eq!(request.uri().path(), "/v1/traces");
                            assert_eq!(request.headers()["content-type"], "application/x-protobuf");
                            let body = request.into_body().collect().await?.to_bytes();
                            let export = ExportTraceServiceRequest::decode(body)
                                .expect("the body is an ExportTraceServiceRequest");
                            sink.take(export);
                            let reply = ExportTraceServiceResponse::default().encode_to_vec();
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .header("content-type", "application/x-protobuf")
                                    .body(http_body_util::Full::new(bytes::Bytes::from(reply)))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (addr, collected)
}

struct GrpcCollector(Collected);

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC collector: the `TraceService` of OpenTelemetry's proto, served by tonic.
async fn grpc_collector() -> (SocketAddr, Collected) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collected = Collected::default();
    let service = TraceServiceServer::new(GrpcCollector(collected.clone()));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
            });
        }
    });
    (addr, collected)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The one span of `spans` that `matches`, with all of them in the failure message.
fn one<'a>(spans: &'a [Received], what: &str, matches: impl Fn(&Received) -> bool) -> &'a Received {
    let found: Vec<&Received> = spans.iter().filter(|s| matches(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {what} span, got {}: {spans:#?}",
        found.len()
    );
    found[0]
}

/// A request to node A whose guest calls node B over QUIC, where the callee sends a message
/// that B delivers: one trace, five spans on two nodes, each naming its parent.
#[tokio::test]
async fn a_request_across_two_nodes_and_a_queue_is_one_trace() {
    let (collector, collected) = http_collector().await;
    let telemetry = format!(
        "[telemetry]\notlp = \"http://{collector}\"\n\
         [telemetry.resource]\n\"deployment.environment\" = \"test\"\n"
    );
    let b_manifest = TestManifest::with_node(
        "name = \"node-b\"\nquic = \"127.0.0.1:0\"",
        &format!(
            "{}[[queue]]\nname = \"traced\"\nsubscriber = \"mailroom\"\n{telemetry}",
            service("mailroom", "mailroom", &["POST /send/{queue}"], ""),
        ),
    );
    let b = b_manifest.start().await;
    let a_manifest = TestManifest::with_node(
        &format!(
            "name = \"node-a\"\nquic = \"127.0.0.1:0\"\nseeds = [\"{}\"]",
            b.quic_addr().unwrap()
        ),
        &format!(
            "{}{telemetry}",
            service("faulty", "faulty", &["POST /f/{fault}"], "")
        ),
    );
    let a = a_manifest.start().await;
    crate::mesh::wait_for_peer_service(&a, "mailroom").await;

    let reply = send(
        a.http_addr(),
        "POST",
        "/f/call",
        "mailroom\nPOST /send/traced\n2000\nok",
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    wait_for_entry(&b, "/queues", "traced", Duration::from_secs(10), |queue| {
        count(queue, "delivered") >= 1
    })
    .await;
    // The QUIC hop shows in both nodes' metrics: A opened a connection and a stream to B.
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    let a_metrics = admin_get(&a, "/metrics").await.body;
    let b_metrics = admin_get(&b, "/metrics").await.body;
    assert!(
        value(
            &a_metrics,
            "switchyard_transport_connections{direction=\"out\"}"
        ) >= 1.0
    );
    assert!(
        value(
            &a_metrics,
            "switchyard_transport_streams_total{direction=\"out\"}"
        ) >= 1.0
    );
    assert!(
        value(
            &b_metrics,
            "switchyard_transport_connections{direction=\"in\"}"
        ) >= 1.0
    );
    assert!(
        value(
            &b_metrics,
            "switchyard_transport_streams_total{direction=\"in\"}"
        ) >= 1.0
    );
    // Shutting down flushes what the batch exporter holds.
    a.shutdown().await;
    b.shutdown().await;

    let spans = collected.spans();
    let request = one(&spans, "ingress server", |s| {
        s.node == "node-a" && s.kind() == SpanKind::Server && s.span.name == "POST /f/{fault}"
    });
    assert!(request.span.parent_span_id.is_empty(), "{request:#?}");
    assert_eq!(
        request.attribute("http.route").as_deref(),
        Some("/f/{fault}")
    );
    assert_eq!(request.attribute("url.path").as_deref(), Some("/f/call"));
    assert_eq!(
        request.attribute("http.response.status_code").as_deref(),
        Some("202")
    );
    let trace_id = request.span.trace_id.clone();
    let in_trace: Vec<Received> = spans
        .iter()
        .filter(|s| s.span.trace_id == trace_id)
        .cloned()
        .collect();
    let call = one(&in_trace, "client", |s| s.kind() == SpanKind::Client);
    assert_eq!(
        (call.node.as_str(), call.span.name.as_str()),
        ("node-a", "call mailroom")
    );
    assert_eq!(call.span.parent_span_id, request.span.span_id);
    assert_eq!(
        call.attribute("switchyard.caller").as_deref(),
        Some("faulty")
    );
    let served = one(&in_trace, "callee's server", |s| {
        s.kind() == SpanKind::Server && s.node == "node-b"
    });
    assert_eq!(served.span.name, "POST /send/{queue}");
    assert_eq!(served.span.parent_span_id, call.span.span_id);
    assert_eq!(
        served.attribute("switchyard.peer").as_deref(),
        Some("node-a")
    );
    let sent = one(&in_trace, "producer", |s| s.kind() == SpanKind::Producer);
    assert_eq!(
        (sent.node.as_str(), sent.span.name.as_str()),
        ("node-b", "send traced")
    );
    assert_eq!(sent.span.parent_span_id, served.span.span_id);
    let delivered = one(&in_trace, "consumer", |s| s.kind() == SpanKind::Consumer);
    assert_eq!(delivered.span.name, "deliver traced");
    assert_eq!(delivered.span.parent_span_id, sent.span.span_id);
    assert_eq!(
        delivered.attribute("switchyard.subscriber").as_deref(),
        Some("mailroom")
    );
    // The guest's log line, as an event of the delivery's span.
    let logged = delivered
        .span
        .events
        .iter()
        .flat_map(|event| &event.attributes)
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(text) if kv.key == "log.message" => Some(text.clone()),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert!(
        logged
            .iter()
            .any(|line| line.contains("attempt 1 on traced: ok")),
        "{logged:?}"
    );
    assert_eq!(
        in_trace.len(),
        5,
        "request, call, serve, send, deliver: {in_trace:#?}"
    );
    // Every span of the trace but the first names a parent that is in the trace.
    let ids: Vec<&Vec<u8>> = in_trace.iter().map(|s| &s.span.span_id).collect();
    for span in &in_trace {
        assert!(
            span.span.parent_span_id.is_empty() || ids.contains(&&span.span.parent_span_id),
            "{} has a parent outside the trace {}",
            span.span.name,
            hex(&trace_id)
        );
    }
    let _ = (a_manifest, b_manifest);
}

/// Over gRPC, with new traces never sampled: a request that arrives in a trace its client
/// sampled is recorded under the client's span; one that starts a trace is not.
#[tokio::test]
async fn grpc_export_follows_the_callers_sampling() {
    let (collector, collected) = grpc_collector().await;
    let manifest = TestManifest::new(&format!(
        "{}[telemetry]\notlp = \"http://{collector}\"\notlp_protocol = \"grpc\"\n\
         trace_sampling = 0\n",
        service("hello", "hello", &["GET /hello/{name}"], ""),
    ));
    let node = manifest.start().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let reply = send_with(
        node.http_addr(),
        "GET",
        "/hello/sampled",
        "",
        &[("traceparent", &format!("00-{trace_id}-{parent}-01"))],
    )
    .await;
    assert_eq!(reply.status, 200);
    let reply = send(node.http_addr(), "GET", "/hello/unsampled", "").await;
    assert_eq!(reply.status, 200);
    node.shutdown().await;
    let spans = collected.spans();
    let span = one(&spans, "server", |_| true);
    assert_eq!(hex(&span.span.trace_id), trace_id);
    assert_eq!(hex(&span.span.parent_span_id), parent);
    assert_eq!(
        span.attribute("url.path").as_deref(),
        Some("/hello/sampled")
    );
    assert_eq!(span.node, "test");
}

/// A bad `otlp` is refused with where it is and what to write.
#[tokio::test]
async fn a_bad_otlp_setting_is_refused_with_its_place() {
    for (telemetry, says) in [
        ("otlp = \"collector:4318\"", "is not a collector's address"),
        ("otlp = \"https://collector:4318\"", "plain HTTP only"),
        (
            "otlp = \"http://127.0.0.1:4318\"\notlp_protocol = \"thrift\"",
            "is not an OTLP protocol",
        ),
        (
            "otlp = \"http://127.0.0.1:4318\"\ntrace_sampling = 2",
            "not a probability",
        ),
        ("trace_sampling = 0.5", "`telemetry.otlp` is not"),
    ] {
        let manifest = TestManifest::new(&format!(
            "{}[telemetry]\n{telemetry}\n",
            service("hello", "hello", &["GET /hello/{name}"], ""),
        ));
        let err = switchyard::Manifest::load(&manifest.path)
            .err()
            .unwrap_or_else(|| panic!("{telemetry} was taken"))
            .to_string();
        assert!(err.contains(says), "{telemetry}: {err}");
        assert!(err.contains("switchyard.toml:"), "{telemetry}: {err}");
    }
}

/// A collector that is not there costs the spans, not the requests, and the log says so.
#[tokio::test]
async fn an_absent_collector_is_reported_in_the_log_and_requests_go_on() {
    crate::support::capture_logs();
    let nobody = crate::support::free_port();
    let manifest = TestManifest::new(&format!(
        "{}[telemetry]\notlp = \"http://{nobody}\"\n",
        service("hello", "hello", &["GET /hello/{name}"], ""),
    ));
    let node = manifest.start().await;
    for _ in 0..3 {
        assert_eq!(
            send(node.http_addr(), "GET", "/hello/x", "").await.status,
            200
        );
    }
    node.shutdown().await;
    let logs = crate::support::logs();
    assert!(
        logs.lines()
            .any(|line| line.contains("spans could not be exported")
                && line.contains(&nobody.to_string())),
        "{logs}"
    );
}
