//! Logging and tracing setup for the `switchyard` binary.
//!
//! The filter comes from `SWITCHYARD_LOG` (then `RUST_LOG`), in `tracing-subscriber`'s
//! `EnvFilter` syntax, default `info`. Guest log lines use target `guest`, so
//! `SWITCHYARD_LOG=info,guest=debug` shows guests' debug lines only.

mod trace;

pub(crate) use trace::{HEADER as TRACE_HEADER, TraceContext};

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
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}
