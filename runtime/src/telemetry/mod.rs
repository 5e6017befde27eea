//! What a node tells about itself: its log, request logs, trace context, spans over OTLP,
//! and metrics (Prometheus text).
//!
//! The log's filter comes from `SWITCHYARD_LOG` (then `RUST_LOG`), in `tracing-subscriber`'s
//! `EnvFilter` syntax, default `info`. Guest log lines use target `guest`, so
//! `SWITCHYARD_LOG=info,guest=debug` shows guests' debug lines only.

mod live;
mod metrics;
mod requests;
mod trace;
mod traces;

pub(crate) use live::{
    CallTraffic, LiveTraffic, LiveWindow, MAX_CALL_PAIRS, Sample, parse as parse_metrics,
};
pub(crate) use metrics::{
    CONTENT_TYPE as METRICS_CONTENT_TYPE, CallOutcome, Metrics, PolicyDecision, Scrape,
};
pub(crate) use opentelemetry::KeyValue;
pub(crate) use requests::RequestLog;
pub(crate) use trace::{HEADER as TRACE_HEADER, TraceContext};
pub(crate) use traces::{OtlpExport, OtlpProtocol, Span, SpanHandle, SpanKind, Traces};

/// How text log lines write their fields: the message and every value through [`OneLine`],
/// so text from a guest, a client or a peer (a guest's log line, its output, a panic message,
/// a path) can never start a line of its own that looks like the node's.
pub(crate) fn text_fields()
-> impl for<'writer> tracing_subscriber::fmt::FormatFields<'writer> + Send + Sync + 'static {
    use std::fmt::Write as _;

    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        if field.name() == "message" {
            write!(OneLine(writer), "{value:?}")
        } else {
            write!(OneLine(writer), "{field}={value:?}")
        }
    })
    .delimited(" ")
}

/// Writes through to the inner writer as one line: line breaks and other control characters
/// escaped (`\n`, `\u{1b}`) as they pass, tabs kept. No copy of the text is made.
struct OneLine<W>(W);

impl<W: std::fmt::Write> std::fmt::Write for OneLine<W> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let mut rest = text;
        while let Some((at, c)) = rest
            .char_indices()
            .find(|&(_, c)| c.is_control() && c != '\t')
        {
            self.0.write_str(&rest[..at])?;
            for escaped in c.escape_default() {
                self.0.write_char(escaped)?;
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// `text` as one line of the node's log, as [`text_fields`] writes it.
#[cfg(test)]
fn one_line(text: &str) -> String {
    use std::fmt::Write as _;
    let mut line = String::new();
    let _ = OneLine(&mut line).write_str(text);
    line
}

use tracing_subscriber::EnvFilter;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with span fields (for log shippers).
    Json,
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init(format: LogFormat) {
    let filter = std::env::var("SWITCHYARD_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.fmt_fields(text_fields()).init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut kept) = self.0.lock() {
                kept.extend_from_slice(bytes);
            }
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn text_from_outside_cannot_forge_a_line_of_the_node_log() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(text_fields())
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let forged = "paid\n2026-11-26T00:00:00Z  INFO switchyard: admin token rotated\r\x1b[2J";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "guest", service = "shop", "{forged}");
            tracing::warn!(reason = %forged, path = ?forged, "delivery failed");
        });
        let text = captured
            .0
            .lock()
            .map(|kept| String::from_utf8_lossy(&kept).into_owned())
            .unwrap_or_default();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("paid\\n2026-11-26"), "{text}");
        assert!(text.contains("\\r\\u{1b}[2J"), "{text}");
        assert!(text.contains("service=\"shop\""), "{text}");
        assert_eq!(one_line("plain\ttext"), "plain\ttext");
    }
}
