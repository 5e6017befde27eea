//! Spans exported over OTLP (`[telemetry] otlp`), one tracer per node.
//!
//! A node records a server span per request, a client span per call and a server span where
//! the call is served (on the callee's node), a producer span per message sent, a consumer
//! span per delivery, and a short span per policy decision that changed a call's course;
//! guest log lines become events of the span their work runs in. Each hop names the span
//! before it in `traceparent` (see [`TraceContext`]), so spans join across nodes and queues.
//!
//! Sampling is parent-based: a trace a caller sampled is recorded, one it did not is not, and a
//! new trace is recorded with the manifest's probability. An unrecorded span costs its ids and
//! nothing else; with no exporter, [`Traces::off`], a span is only its [`TraceContext`].
//! Spans leave in batches from a background thread (OpenTelemetry's batch processor), so a
//! slow or absent collector never holds up a request: when its buffer is full, spans are
//! dropped, never the work.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use super::TraceContext;

pub(crate) use opentelemetry::trace::SpanKind;

/// How spans reach the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OtlpProtocol {
    /// Protobuf over HTTP (`POST <endpoint>/v1/traces`), the OTLP default.
    HttpProtobuf,
    /// The `TraceService/Export` gRPC call.
    Grpc,
}

/// Where and how a node exports its spans.
#[derive(Debug, Clone)]
pub(crate) struct OtlpExport {
    /// The collector's address: `http://host:4318` (the `/v1/traces` path is added when the
    /// address has no path) or `http://host:4317` for gRPC.
    pub(crate) endpoint: String,
    pub(crate) protocol: OtlpProtocol,
    /// The probability that a new trace is recorded.
    pub(crate) sampling: f64,
    /// Resource attributes: `service.name`, `service.instance.id` and the operator's own.
    pub(crate) resource: Vec<(String, String)>,
}

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("the OTLP exporter for `{endpoint}` could not be built: {reason}")]
pub(crate) struct ExportError {
    endpoint: String,
    reason: String,
}

/// The node's tracer. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Traces {
    exporting: Option<Arc<Exporting>>,
}

struct Exporting {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// The probability that a new trace is recorded.
    sampling: f64,
}

impl Traces {
    /// Whether spans are exported (or only carried on).
    pub(crate) fn is_on(&self) -> bool {
        self.exporting.is_some()
    }

    /// Records nothing; spans only carry their context on.
    pub(crate) fn off() -> Self {
        Self::default()
    }

    /// Exports to `export.endpoint`. Call within a tokio runtime (gRPC's client needs one).
    pub(crate) fn export(export: &OtlpExport) -> Result<Self, ExportError> {
        let failed = |reason: String| ExportError {
            endpoint: export.endpoint.clone(),
            reason,
        };
        let timeout = Duration::from_secs(10);
        let exporter = match export.protocol {
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(http_traces_endpoint(&export.endpoint))
                .with_timeout(timeout)
                .build(),
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(export.endpoint.clone())
                .with_timeout(timeout)
                .build(),
        }
        .map_err(|err| failed(err.to_string()))?;
        let exporter = Reporting {
            inner: exporter,
            endpoint: export.endpoint.clone(),
            failing: AtomicBool::new(false),
        };
        let resource = opentelemetry_sdk::Resource::builder()
            .with_attributes(
                export
                    .resource
                    .iter()
                    .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            // `start` samples before it asks the SDK (an unsampled span then costs no more
            // than with tracing off): whatever reaches the SDK is recorded.
            .with_sampler(Sampler::AlwaysOn)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("switchyard");
        Ok(Self {
            exporting: Some(Arc::new(Exporting {
                provider,
                tracer,
                sampling: export.sampling,
            })),
        })
    }

    /// Starts a span of `kind` under `parent` (a new trace without one). Its `name` and
    /// `attributes` are asked only if the span is recorded.
    pub(crate) fn start(
        &self,
        name: impl FnOnce() -> Cow<'static, str>,
        kind: SpanKind,
        parent: Option<&TraceContext>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Span {
        let Some(exporting) = &self.exporting else {
            return Span::unrecorded(parent);
        };
        // Parent-based: the caller's decision holds; a new trace is drawn.
        let sampled = match parent {
            Some(parent) => parent.is_sampled(),
            None => exporting.sampling >= 1.0 || fastrand::f64() < exporting.sampling,
        };
        if !sampled {
            return Span::unrecorded(parent);
        }
        let parent_cx = match parent {
            Some(parent) => Context::new().with_remote_span_context(parent.as_remote_parent()),
            None => Context::new(),
        };
        let builder = exporting.tracer.span_builder(name()).with_kind(kind);
        let mut span = exporting.tracer.build_with_context(builder, &parent_cx);
        let trace = TraceContext::of(span.span_context());
        span.set_attributes(attributes());
        Span {
            trace,
            recording: Some(Context::new().with_span(span)),
        }
    }

    /// Exports what is buffered and stops the exporter; blocks for at most a few seconds.
    pub(crate) fn shutdown(&self) {
        if let Some(exporting) = &self.exporting
            && let Err(err) = exporting
                .provider
                .shutdown_with_timeout(Duration::from_secs(5))
        {
            tracing::warn!(error = %err, "the OTLP exporter did not flush every span");
        }
    }
}

/// The OTLP exporter, saying in the node's log when spans do not get through (the SDK says
/// nothing without its internal-logs feature): once when exports start failing, once when
/// they work again.
#[derive(Debug)]
struct Reporting {
    inner: opentelemetry_otlp::SpanExporter,
    endpoint: String,
    failing: AtomicBool,
}

impl opentelemetry_sdk::trace::SpanExporter for Reporting {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        let spans = batch.len();
        let export = self.inner.export(batch);
        async move {
            let result = export.await;
            match &result {
                Err(error) if !self.failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                    endpoint = %self.endpoint,
                    %error,
                    spans,
                    "spans could not be exported to the OTLP collector and were dropped; \
                     check [telemetry] otlp and the collector (said again when it recovers)"
                ),
                Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                    tracing::info!(endpoint = %self.endpoint, "spans reach the OTLP collector again");
                }
                _ => {}
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// `endpoint` with OTLP/HTTP's trace path when it names none.
fn http_traces_endpoint(endpoint: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    let has_path = endpoint
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('/'));
    if has_path {
        endpoint.to_owned()
    } else {
        format!("{endpoint}/v1/traces")
    }
}

/// A span in progress; it ends when dropped.
pub(crate) struct Span {
    trace: TraceContext,
    recording: Option<Context>,
}

impl Span {
    /// A span this node does not record: a new hop of `parent`'s trace, or a new trace.
    fn unrecorded(parent: Option<&TraceContext>) -> Self {
        Self {
            trace: parent.map_or_else(TraceContext::root, TraceContext::child),
            recording: None,
        }
    }

    /// What this span's children name as their parent.
    pub(crate) fn trace(&self) -> &TraceContext {
        &self.trace
    }

    /// Adds attributes, asked only if the span is recorded.
    pub(crate) fn record(&self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(cx) = &self.recording {
            cx.span().set_attributes(attributes());
        }
    }

    /// Renames the span (the ingress knows its route only after it started), the name asked
    /// only if the span is recorded.
    pub(crate) fn rename(&self, name: impl FnOnce() -> String) {
        if let Some(cx) = &self.recording {
            cx.span().update_name(name());
        }
    }

    /// Records the HTTP status the work answered; a 5xx marks the span failed.
    pub(crate) fn answered(&self, status: u16) {
        self.record(|| {
            vec![KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            )]
        });
        if status >= 500 {
            self.fail(|| format!("answered {status}"));
        }
    }

    /// Marks the span failed, with why.
    pub(crate) fn fail(&self, description: impl FnOnce() -> String) {
        if let Some(cx) = &self.recording {
            cx.span()
                .set_status(opentelemetry::trace::Status::error(description()));
        }
    }

    /// A handle the guest's store keeps for the span's events.
    pub(crate) fn handle(&self) -> SpanHandle {
        SpanHandle {
            trace: Some(self.trace),
            recording: self.recording.clone(),
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(cx) = &self.recording {
            cx.span().end();
        }
    }
}

/// Where a guest's work adds events (its log lines) and whose context its calls and messages
/// continue. Clones share the span; only the [`Span`] ends it.
#[derive(Clone, Default)]
pub(crate) struct SpanHandle {
    trace: Option<TraceContext>,
    recording: Option<Context>,
}

impl SpanHandle {
    /// The context of the work, if it has one.
    pub(crate) fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }

    /// Whether the span is recorded (its events go somewhere).
    pub(crate) fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    /// Adds an event, its attributes asked only if the span is recorded.
    pub(crate) fn event(&self, name: &'static str, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(cx) = &self.recording {
            cx.span().add_event(name, attributes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::http_traces_endpoint;

    #[test]
    fn the_trace_path_is_added_only_to_a_bare_address() {
        assert_eq!(
            http_traces_endpoint("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            http_traces_endpoint("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            http_traces_endpoint("https://collector/otlp/v1/traces"),
            "https://collector/otlp/v1/traces"
        );
    }
}
